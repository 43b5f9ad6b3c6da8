//! One object and one event as the watch caches hold them: the JSON bytes served to clients
//! (with the resourceVersion spliced in place, no re-encoding) plus what selectors need, and the
//! encoded watch line shared by every watcher.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use crate::registry::{ResourceDef, fields};
use crate::storage::Revision;

/// One object as the cache holds it: the JSON bytes served to clients plus what filters need.
#[derive(Debug)]
pub struct CachedObject {
    /// Storage key.
    pub key: String,
    /// JSON with `metadata.resourceVersion` set.
    pub raw: Bytes,
    /// resourceVersion (the key's mod revision, or the delete revision for deleted objects).
    pub rv: Revision,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// Values of the resource's selectable fields.
    pub fields: Vec<(&'static str, String)>,
}

impl CachedObject {
    /// Decodes a stored value, injecting `resourceVersion` (and converting it when `def` is a
    /// view of objects stored in another group/version's shape).
    ///
    /// Storage holds objects as compact `serde_json` output without `metadata.resourceVersion`
    /// (writers strip it), so the bytes served are the stored bytes with the field spliced into
    /// `metadata` where inserting it into the decoded value would put it: one parse per event
    /// and no re-encoding. Anything laid out otherwise takes the decode-and-encode path.
    pub fn decode(
        def: &ResourceDef,
        key: &str,
        value: &[u8],
        rv: Revision,
    ) -> Result<Self, String> {
        let mut obj: Value =
            serde_json::from_slice(value).map_err(|e| format!("corrupt object at {key}: {e}"))?;
        if def.converts() {
            // Another group/version's view of the stored object: converted, so re-encoded.
            let mut obj = def.from_storage(obj);
            return Ok(Self::from_value(def, key, &mut obj, rv));
        }
        let spliced = obj
            .pointer("/metadata")
            .and_then(Value::as_object)
            .filter(|m| !m.contains_key("resourceVersion"))
            .and_then(|_| splice_resource_version(value, rv));
        match spliced {
            Some(raw) => {
                set_resource_version(&mut obj, rv);
                // Debug builds (every test run) check the splice against a full re-encoding and
                // fall back to the re-encoded bytes, with a log line, should they ever differ.
                #[cfg(debug_assertions)]
                if serde_json::to_vec(&obj).ok().as_deref() != Some(raw.as_slice()) {
                    tracing::error!(%key, "spliced resourceVersion differs from re-encoding");
                    return Ok(Self::from_value(def, key, &mut obj, rv));
                }
                Ok(Self::with_raw(def, key, &obj, Bytes::from(raw), rv))
            }
            None => Ok(Self::from_value(def, key, &mut obj, rv)),
        }
    }

    /// Builds a cached object from a decoded value (sets its `resourceVersion`).
    pub fn from_value(def: &ResourceDef, key: &str, obj: &mut Value, rv: Revision) -> Self {
        set_resource_version(obj, rv);
        let raw = Bytes::from(serde_json::to_vec(obj).unwrap_or_default());
        Self::with_raw(def, key, obj, raw, rv)
    }

    /// A cached object serving `raw` (the encoding of `obj`).
    fn with_raw(def: &ResourceDef, key: &str, obj: &Value, raw: Bytes, rv: Revision) -> Self {
        let labels = obj
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let fields_vals = def
            .selectable_fields
            .iter()
            .map(|f| (*f, (def.field)(obj, f).unwrap_or_default()))
            .collect();
        CachedObject {
            key: key.to_string(),
            raw,
            rv,
            namespace: fields::namespace(obj).to_string(),
            name: fields::name(obj).to_string(),
            labels,
            fields: fields_vals,
        }
    }

    /// Value of a field for field selectors.
    pub fn field(&self, f: &str) -> Option<String> {
        match f {
            "metadata.name" => Some(self.name.clone()),
            "metadata.namespace" => Some(self.namespace.clone()),
            _ => self
                .fields
                .iter()
                .find(|(k, _)| *k == f)
                .map(|(_, v)| v.clone()),
        }
    }
}

fn set_resource_version(obj: &mut Value, rv: Revision) {
    fields::ensure_object(obj, &["metadata"])
        .insert("resourceVersion".into(), Value::String(rv.to_string()));
}

/// `raw` (a compact JSON object whose top-level `metadata` object has no `resourceVersion`)
/// with `"resourceVersion":"<rv>"` appended to `metadata`, as `serde_json` with
/// `preserve_order` encodes the value after inserting it. None when `raw` is not compact JSON
/// or has no `metadata` object.
fn splice_resource_version(raw: &[u8], rv: Revision) -> Option<Vec<u8>> {
    let close = metadata_close(raw)?;
    let rv = rv.to_string();
    let mut out = Vec::with_capacity(raw.len() + rv.len() + 22);
    out.extend_from_slice(&raw[..close]);
    if raw[close - 1] != b'{' {
        out.push(b',');
    }
    out.extend_from_slice(b"\"resourceVersion\":\"");
    out.extend_from_slice(rv.as_bytes());
    out.push(b'"');
    out.extend_from_slice(&raw[close..]);
    Some(out)
}

/// `raw` (compact JSON of an object with a top-level `metadata` object) with metadata's
/// `resourceVersion` set to `rv`, as re-encoding the decoded value after setting it would give
/// (replaced in place, or appended to `metadata`). None when `raw` is not laid out so.
pub fn replace_resource_version(raw: &[u8], rv: Revision) -> Option<Vec<u8>> {
    let (open, _) = member(raw, 0, b"metadata")?;
    if raw[open] != b'{' {
        return None;
    }
    let Some((start, end)) = member(raw, open, b"resourceVersion") else {
        return splice_resource_version(raw, rv);
    };
    let rv = rv.to_string();
    let mut out = Vec::with_capacity(raw.len() + rv.len());
    out.extend_from_slice(&raw[..start]);
    out.push(b'"');
    out.extend_from_slice(rv.as_bytes());
    out.push(b'"');
    out.extend_from_slice(&raw[end..]);
    Some(out)
}

/// Index of the `}` closing the top-level `metadata` object of compact JSON `raw`.
fn metadata_close(raw: &[u8]) -> Option<usize> {
    let (start, end) = member(raw, 0, b"metadata")?;
    (raw[start] == b'{').then_some(end - 1)
}

/// The span (start, end exclusive) of member `name`'s value in the compact JSON object that
/// starts at `object` in `raw`. None when absent or when `raw` is not compact JSON.
fn member(raw: &[u8], object: usize, name: &[u8]) -> Option<(usize, usize)> {
    if raw.get(object) != Some(&b'{') || raw.get(object + 1) == Some(&b'}') {
        return None;
    }
    let mut pos = object + 1;
    loop {
        let key_end = skip_string(raw, pos)?;
        let key = &raw[pos + 1..key_end - 1];
        if raw.get(key_end) != Some(&b':') {
            return None;
        }
        let start = key_end + 1;
        let end = skip_value(raw, start)?;
        if key == name {
            return Some((start, end));
        }
        match raw.get(end) {
            Some(b',') => pos = end + 1,
            _ => return None,
        }
    }
}

/// End (exclusive) of the JSON string starting at `pos`.
fn skip_string(raw: &[u8], pos: usize) -> Option<usize> {
    if raw.get(pos) != Some(&b'"') {
        return None;
    }
    let mut i = pos + 1;
    while let Some(&c) = raw.get(i) {
        match c {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// End (exclusive) of the compact JSON value starting at `pos`.
fn skip_value(raw: &[u8], pos: usize) -> Option<usize> {
    match *raw.get(pos)? {
        b'"' => skip_string(raw, pos),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = pos;
            while let Some(&c) = raw.get(i) {
                match c {
                    b'"' => {
                        i = skip_string(raw, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let len = raw[pos..]
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']'))?;
            Some(pos + len)
        }
    }
}

/// One watch line: `{"type":"<t>","object":<raw>}` and a newline.
pub fn watch_line(event_type: &str, raw: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(raw.len() + 32);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(event_type.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(raw);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

/// Kind of a cached event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheEventType {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Deleted.
    Deleted,
}

/// An event in the ring buffer.
#[derive(Debug)]
pub struct CacheEvent {
    /// The JSON watch line (`{"type":..,"object":..}\n`) for watchers without selectors that
    /// change the event type, encoded once and shared by every such watcher.
    pub line: Bytes,
    /// What happened.
    pub event_type: CacheEventType,
    /// The new state (for deletes: the last state, with the delete's revision).
    pub object: Arc<CachedObject>,
    /// The previous state (updates and deletes).
    pub prev: Option<Arc<CachedObject>>,
}

impl CacheEvent {
    /// An event whose object's bytes are a slice of its watch line: one allocation holds both
    /// (the ring and the cache would otherwise keep every recent object twice).
    pub fn new(
        event_type: CacheEventType,
        mut object: CachedObject,
        prev: Option<Arc<CachedObject>>,
    ) -> Self {
        let name = match event_type {
            CacheEventType::Added => "ADDED",
            CacheEventType::Modified => "MODIFIED",
            CacheEventType::Deleted => "DELETED",
        };
        let line = watch_line(name, &object.raw);
        let start = line.len() - object.raw.len() - 2;
        object.raw = line.slice(start..line.len() - 2);
        CacheEvent {
            line,
            event_type,
            object: Arc::new(object),
            prev,
        }
    }

    /// The event's revision.
    pub fn rv(&self) -> Revision {
        self.object.rv
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reencoded(raw: &[u8], rv: Revision) -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(raw).expect("json");
        set_resource_version(&mut v, rv);
        serde_json::to_vec(&v).expect("encode")
    }

    #[test]
    fn splice_matches_reencoding() {
        let objects = [
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "d", "labels": {"x": "}{\"]"}}, "spec": {"containers": [{"name": "c", "args": ["\\", "\"{", "[]"]}]}}),
            json!({"metadata": {}, "kind": "ConfigMap", "data": {"k": "\u{1}\n\t é"}}),
            json!({"kind": "X", "n": 1.5, "b": true, "z": null, "arr": [[1, {}], []], "metadata": {"name": "m", "managedFields": [{"f:x": {}}]}, "tail": -3}),
        ];
        for o in objects {
            let raw = serde_json::to_vec(&o).expect("encode");
            for rv in [1, 42, 1_234_567_890] {
                let spliced = splice_resource_version(&raw, rv).expect("splices");
                assert_eq!(
                    String::from_utf8_lossy(&spliced),
                    String::from_utf8_lossy(&reencoded(&raw, rv))
                );
            }
        }
    }

    #[test]
    fn replacing_the_resource_version_matches_reencoding() {
        let objects = [
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "a", "resourceVersion": "12", "labels": {"resourceVersion": "x"}}, "involvedObject": {"resourceVersion": "3"}}),
            json!({"kind": "X", "metadata": {"resourceVersion": "5"}, "tail": [1, {"a": "}"}]}),
            json!({"kind": "X", "metadata": {"name": "no-rv", "annotations": {"k": "\"resourceVersion\":\"1\""}}}),
            json!({"metadata": {}, "kind": "ConfigMap"}),
        ];
        for o in objects {
            let raw = serde_json::to_vec(&o).expect("encode");
            for rv in [1, 42, 1_234_567_890] {
                let replaced = replace_resource_version(&raw, rv);
                let want = reencoded(&raw, rv);
                if o["metadata"].as_object().is_some_and(|m| m.is_empty()) {
                    // `{}` has no member to replace and is appended to by the splice.
                    assert_eq!(replaced.as_deref(), Some(want.as_slice()));
                    continue;
                }
                assert_eq!(
                    String::from_utf8_lossy(&replaced.expect("replaces")),
                    String::from_utf8_lossy(&want)
                );
            }
        }
        assert_eq!(replace_resource_version(b"{\"metadata\":[]}", 1), None);
        assert_eq!(replace_resource_version(b"{ \"metadata\": {}}", 1), None);
    }

    #[test]
    fn splice_declines_what_it_cannot_place() {
        for raw in [
            &b"{\"kind\":\"X\"}"[..],
            b"{\"metadata\":null}",
            b"{\"metadata\":[]}",
            b"{ \"metadata\": {}}",
            b"[]",
            b"{\"a\":\"unterminated",
        ] {
            assert_eq!(
                splice_resource_version(raw, 7),
                None,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn decode_serves_the_resource_version_either_way() {
        let def = crate::registry::catalog::all()
            .iter()
            .find(|d| d.kind == "ConfigMap")
            .expect("configmaps");
        for raw in [
            &br#"{"kind":"ConfigMap","metadata":{"name":"a","namespace":"d"}}"#[..],
            // Laid out otherwise (whitespace, a stale resourceVersion): decoded and re-encoded.
            br#"{ "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "d"} }"#,
            br#"{"kind":"ConfigMap","metadata":{"resourceVersion":"3","name":"a","namespace":"d"}}"#,
        ] {
            let o = CachedObject::decode(def, "/registry/configmaps/d/a", raw, 9).expect("decodes");
            let v: Value = serde_json::from_slice(&o.raw).expect("json");
            assert_eq!(v["metadata"]["resourceVersion"], "9");
            assert_eq!((o.name.as_str(), o.namespace.as_str(), o.rv), ("a", "d", 9));
        }
    }
}
