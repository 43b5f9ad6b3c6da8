//! Every patch type (JSON patch, merge, strategic merge, server-side apply) over a Deployment.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for e in apiserver::fuzzing::patch_bytes(data) {
        assert!((400..500).contains(&e.code), "{} {}", e.code, e.message);
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        for e in apiserver::fuzzing::patch_value(&v) {
            assert!((400..500).contains(&e.code), "{} {}", e.code, e.message);
        }
    }
});
