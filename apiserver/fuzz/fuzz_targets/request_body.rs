//! Request bodies of every media type, and label/field selector parsing.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for e in apiserver::fuzzing::request_bytes(data) {
        assert!((400..500).contains(&e.code), "{} {}", e.code, e.message);
    }
});
