//! Kubernetes protobuf bodies; the magic is prepended half of the time so the decoder is reached.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut with_magic = apiserver::protobuf::MAGIC.to_vec();
    with_magic.extend_from_slice(data);
    for body in [data, &with_magic[..]] {
        if let Some(e) = apiserver::fuzzing::protobuf_bytes(body) {
            assert!((400..500).contains(&e.code), "{} {}", e.code, e.message);
        }
    }
});
