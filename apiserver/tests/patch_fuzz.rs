//! Stable, bounded fuzzing (runs in CI; the cargo-fuzz targets in `apiserver/fuzz/` need
//! nightly): a seeded generator of random bytes, mutated valid inputs and random JSON documents
//! full of patch directives is fed to the patch engines, the protobuf decoder, the request-body
//! decoders and the selector parsers. Nothing may panic and every error must be a 4xx.

use std::time::{Duration, Instant};

use apiserver::fuzzing;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

const BUDGET: Duration = Duration::from_secs(3);

fn assert_4xx(
    errors: impl IntoIterator<Item = apiserver::error::ApiError>,
    input: &dyn std::fmt::Debug,
) {
    for e in errors {
        assert!(
            (400..500).contains(&e.code),
            "error {} ({}) for input {input:?}",
            e.code,
            e.message
        );
    }
}

const KEYS: &[&str] = &[
    "metadata",
    "spec",
    "template",
    "containers",
    "name",
    "image",
    "env",
    "value",
    "ports",
    "containerPort",
    "labels",
    "finalizers",
    "replicas",
    "strategy",
    "rollingUpdate",
    "selector",
    "matchLabels",
    "command",
    "$patch",
    "$retainKeys",
    "$setElementOrder/containers",
    "$setElementOrder/env",
    "$deleteFromPrimitiveList/finalizers",
    "$deleteFromPrimitiveList/command",
    "apiVersion",
    "kind",
    "status",
    "a",
    "b",
    "X",
];

fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..if depth > 4 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => json!(rng.random_range(-3..100)),
        3 => Value::String(
            [
                "replace",
                "delete",
                "merge",
                "a",
                "b",
                "",
                "nginx",
                "apps/v1",
                "Deployment",
            ][rng.random_range(0..9)]
            .into(),
        ),
        4 => Value::String(KEYS[rng.random_range(0..KEYS.len())].into()),
        5 | 6 => {
            let mut m = Map::new();
            for _ in 0..rng.random_range(0..5) {
                m.insert(
                    KEYS[rng.random_range(0..KEYS.len())].into(),
                    random_value(rng, depth + 1),
                );
            }
            Value::Object(m)
        }
        _ => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
    }
}

/// Random edits of a valid document: replace subtrees with random values.
fn mutate(rng: &mut StdRng, v: &mut Value) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = &keys[rng.random_range(0..keys.len())];
            if rng.random_range(0..3) == 0 {
                m.insert(k.clone(), random_value(rng, 2));
            } else if let Some(c) = m.get_mut(k) {
                mutate(rng, c);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let i = rng.random_range(0..a.len());
            mutate(rng, &mut a[i]);
        }
        _ => *v = random_value(rng, 3),
    }
}

fn random_bytes(rng: &mut StdRng) -> Vec<u8> {
    (0..rng.random_range(0..64)).map(|_| rng.random()).collect()
}

fn flip(rng: &mut StdRng, mut b: Vec<u8>) -> Vec<u8> {
    if b.is_empty() {
        return b;
    }
    match rng.random_range(0..3) {
        0 => b.truncate(rng.random_range(0..b.len())),
        1 => {
            let i = rng.random_range(0..b.len());
            b[i] = rng.random();
        }
        _ => {
            let i = rng.random_range(0..b.len());
            b.insert(i, rng.random());
        }
    }
    b
}

/// A valid protobuf Namespace body, built by hand (tags from k8s.io/api).
fn valid_protobuf() -> Vec<u8> {
    fn ld(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag << 3 | 2, body.len() as u8];
        v.extend_from_slice(body);
        v
    }
    let meta = [ld(1, b"ns"), ld(11, &[ld(1, b"a"), ld(2, b"b")].concat())].concat();
    let obj = ld(1, &meta);
    let type_meta = [ld(1, b"v1"), ld(2, b"Namespace")].concat();
    let mut out = b"k8s\0".to_vec();
    out.extend([ld(1, &type_meta), ld(2, &obj)].concat());
    out
}

#[test]
fn patch_fuzz_no_panics_and_only_4xx() {
    let mut rng = StdRng::seed_from_u64(0x10753);
    let start = Instant::now();
    let mut runs = 0u64;
    let base = fuzzing::sample_deployment();
    let seeds: Vec<Vec<u8>> = vec![
        serde_json::to_vec(&base).unwrap_or_default(),
        br#"{"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"b"},{"name":"a"}],"containers":[{"name":"a","$patch":"delete"}]}}}}"#.to_vec(),
        br#"[{"op":"replace","path":"/spec/replicas","value":3},{"op":"test","path":"/x","value":1}]"#.to_vec(),
        b"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 2\n".to_vec(),
        valid_protobuf(),
    ];
    while start.elapsed() < BUDGET {
        runs += 1;
        // Structured: random documents and mutations of the live object as patches.
        let doc = if rng.random() {
            random_value(&mut rng, 0)
        } else {
            let mut d = base.clone();
            for _ in 0..rng.random_range(1..4) {
                mutate(&mut rng, &mut d);
            }
            d
        };
        assert_4xx(fuzzing::patch_value(&doc), &doc);
        // Bytes: random, and flipped seeds.
        let bytes = if rng.random_range(0..4) == 0 {
            random_bytes(&mut rng)
        } else {
            let seed = seeds[rng.random_range(0..seeds.len())].clone();
            flip(&mut rng, seed)
        };
        assert_4xx(
            fuzzing::patch_bytes(&bytes),
            &String::from_utf8_lossy(&bytes),
        );
        assert_4xx(fuzzing::protobuf_bytes(&bytes), &bytes);
        let mut magic = b"k8s\0".to_vec();
        magic.extend_from_slice(&bytes);
        assert_4xx(fuzzing::protobuf_bytes(&magic), &magic);
        assert_4xx(fuzzing::request_bytes(&bytes), &bytes);
    }
    println!("patch_fuzz: {runs} iterations in {:?}", start.elapsed());
    assert!(runs > 50, "too few iterations: {runs}");
}

#[test]
fn patch_fuzz_valid_protobuf_seed_decodes() {
    let v = apiserver::protobuf::decode_object(&valid_protobuf()).expect("valid body decodes");
    assert_eq!(
        v,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns", "labels": {"a": "b"}}})
    );
}
