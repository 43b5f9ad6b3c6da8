//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`): the magic bytes
//! `k8s\0`, then a `runtime.Unknown` whose `typeMeta` names the kind and whose `raw` holds the
//! object's message.
//!
//! Objects are decoded by walking the protobuf wire format with the message layouts of
//! `protobuf_fields.txt` (generated from the k8s-pb crate's prost types by
//! `tools/gen-protobuf-fields.py`), producing the JSON Kubernetes serves: property names from the
//! OpenAPI schemas, `Time` as RFC 3339, `IntOrString` as a number or string, `Quantity` as its
//! string, `bytes` as base64, `RawExtension`/`FieldsV1` as embedded JSON. Go's protobuf encoder
//! writes every non-pointer scalar, so zero values are left out as Kubernetes' JSON `omitempty`
//! does, except for the pointer fields where zero or `false` means something.

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine;
use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};
use crate::registry;
use crate::schema_strategy::{self, Node};

/// The magic prefix of Kubernetes protobuf bodies.
pub const MAGIC: &[u8] = b"k8s\0";

const FIELDS: &str = include_str!("protobuf_fields.txt");
const MAX_DEPTH: usize = 64;

/// Pointer integer fields whose zero is meaningful (`*int32`/`*int64` in k8s.io/api).
const ZERO_INTS: &[&str] = &[
    "replicas",
    "terminationGracePeriodSeconds",
    "activeDeadlineSeconds",
    "backoffLimit",
    "parallelism",
    "completions",
    "revisionHistoryLimit",
    "runAsUser",
    "runAsGroup",
    "fsGroup",
    "defaultMode",
    "mode",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
    "startingDeadlineSeconds",
    "ttlSecondsAfterFinished",
    "expirationSeconds",
    "priority",
    "deletionGracePeriodSeconds",
    "gracePeriodSeconds",
    "partition",
    "maxSkew",
];

/// Pointer bool fields whose `false` is meaningful (`*bool` in k8s.io/api).
const FALSE_BOOLS: &[&str] = &[
    "automountServiceAccountToken",
    "readOnlyRootFilesystem",
    "runAsNonRoot",
    "allowPrivilegeEscalation",
    "privileged",
    "hostUsers",
    "enableServiceLinks",
    "immutable",
    "optional",
    "suspend",
    "setHostnameAsFQDN",
    "shareProcessNamespace",
    "blockOwnerDeletion",
    "controller",
    "allocateLoadBalancerNodePorts",
    "publishNotReadyAddresses",
    "ready",
    "serving",
    "terminating",
    "manualSelector",
];

#[derive(Debug)]
struct Field {
    tag: u32,
    json: String,
    kind: Kind,
    repeated: bool,
    message: &'static str,
    /// A Go struct embedded with `json:",inline"` (`Volume.VolumeSource`,
    /// `Probe.ProbeHandler`, `EphemeralContainer.EphemeralContainerCommon`, ...): its fields
    /// are the parent's in JSON.
    inline: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    String,
    Bytes,
    Bool,
    Int32,
    Int64,
    Double,
    Message,
    /// map<string, V>
    Map(MapValue),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum MapValue {
    String,
    Bytes,
    Message,
}

type Layouts = HashMap<&'static str, Vec<Field>>;

fn snake_to_camel(s: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in s.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn layouts() -> &'static Layouts {
    static LAYOUTS: OnceLock<Layouts> = OnceLock::new();
    LAYOUTS.get_or_init(|| {
        let mut out: Layouts = HashMap::new();
        let mut current: Option<&'static str> = None;
        let mut names: Vec<&'static str> = Vec::new();
        for line in FIELDS.lines() {
            let parts: Vec<&'static str> = line.split(' ').collect();
            match parts.as_slice() {
                ["M", name] => {
                    current = Some(name);
                    names = schema_strategy::property_names(name);
                    out.entry(name).or_default();
                }
                ["F", tag, rust, kind, rep, msg] => {
                    let Some(cur) = current else { continue };
                    let Ok(tag) = tag.parse() else { continue };
                    let kind = match *kind {
                        "string" => Kind::String,
                        "bytes" => Kind::Bytes,
                        "bool" => Kind::Bool,
                        "int32" => Kind::Int32,
                        "int64" => Kind::Int64,
                        "double" => Kind::Double,
                        "message" => Kind::Message,
                        "map:string,string" => Kind::Map(MapValue::String),
                        "map:string,bytes" => Kind::Map(MapValue::Bytes),
                        "map:string,message" => Kind::Map(MapValue::Message),
                        _ => continue,
                    };
                    let flat = rust.replace('_', "");
                    let known = names.iter().find(|n| n.eq_ignore_ascii_case(&flat));
                    let json = known
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| snake_to_camel(rust));
                    let repeated = *rep == "r";
                    out.entry(cur).or_default().push(Field {
                        tag,
                        json,
                        kind,
                        repeated,
                        message: msg,
                        inline: kind == Kind::Message
                            && !repeated
                            && known.is_none()
                            && !names.is_empty(),
                    });
                }
                _ => {}
            }
        }
        out
    })
}

fn bad(what: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("error decoding protobuf body: {what}"))
}

/// One wire-format value.
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32,
    Bytes(&'a [u8]),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> ApiResult<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| bad("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> ApiResult<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| bad("truncated message"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn next(&mut self) -> ApiResult<Option<(u32, Wire<'a>)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| bad("field number out of range"))?;
        if tag == 0 {
            return Err(bad("field number 0"));
        }
        let w = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                Wire::Fixed64(u64::from_le_bytes(
                    b.try_into().map_err(|_| bad("truncated fixed64"))?,
                ))
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| bad("length out of range"))?;
                Wire::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed32
            }
            t => return Err(bad(format!("unsupported wire type {t} for field {tag}"))),
        };
        Ok(Some((tag, w)))
    }
}

fn fields_of(buf: &[u8]) -> ApiResult<Vec<(u32, Wire<'_>)>> {
    let mut r = Reader { buf, pos: 0 };
    let mut out = Vec::new();
    while let Some(f) = r.next()? {
        out.push(f);
    }
    Ok(out)
}

fn bytes_of<'a>(w: &Wire<'a>, what: &str) -> ApiResult<&'a [u8]> {
    match w {
        Wire::Bytes(b) => Ok(b),
        _ => Err(bad(format!("{what}: expected a length-delimited field"))),
    }
}

fn varint_of(w: &Wire<'_>, what: &str) -> ApiResult<u64> {
    match w {
        Wire::Varint(v) => Ok(*v),
        _ => Err(bad(format!("{what}: expected a varint"))),
    }
}

fn utf8(b: &[u8], what: &str) -> ApiResult<String> {
    String::from_utf8(b.to_vec()).map_err(|_| bad(format!("{what}: invalid UTF-8")))
}

/// `Time`/`MicroTime` (`seconds`, `nanos`) as Kubernetes writes them.
fn time(buf: &[u8], micro: bool) -> ApiResult<Option<Value>> {
    let (mut secs, mut nanos) = (0i64, 0i64);
    for (tag, w) in fields_of(buf)? {
        match tag {
            1 => secs = varint_of(&w, "Time.seconds")? as i64,
            2 => nanos = i64::from(varint_of(&w, "Time.nanos")? as i32),
            _ => {}
        }
    }
    if secs == 0 && nanos == 0 {
        return Ok(None);
    }
    let ts = jiff::Timestamp::new(
        secs,
        if micro {
            (nanos / 1000 * 1000) as i32
        } else {
            0
        },
    )
    .map_err(|e| bad(format!("time out of range: {e}")))?;
    let s = if micro {
        format!("{ts:.6}")
    } else {
        ts.to_string()
    };
    Ok(Some(Value::String(s)))
}

fn message(type_name: &str, buf: &[u8], depth: usize) -> ApiResult<Option<Value>> {
    if depth > MAX_DEPTH {
        return Err(bad("message nested too deeply"));
    }
    match type_name {
        "io.k8s.apimachinery.pkg.apis.meta.v1.Time" => return time(buf, false),
        "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime" => return time(buf, true),
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString" => {
            let (mut ty, mut i, mut s) = (0u64, 0i64, String::new());
            for (tag, w) in fields_of(buf)? {
                match tag {
                    1 => ty = varint_of(&w, "IntOrString.type")?,
                    2 => i = i64::from(varint_of(&w, "IntOrString.intVal")? as i32),
                    3 => s = utf8(bytes_of(&w, "IntOrString.strVal")?, "IntOrString.strVal")?,
                    _ => {}
                }
            }
            return Ok(Some(if ty == 1 {
                Value::String(s)
            } else {
                Value::from(i)
            }));
        }
        "io.k8s.apimachinery.pkg.api.resource.Quantity" => {
            for (tag, w) in fields_of(buf)? {
                if tag == 1 {
                    return Ok(Some(Value::String(utf8(
                        bytes_of(&w, "Quantity")?,
                        "Quantity",
                    )?)));
                }
            }
            return Ok(Some(Value::String("0".into())));
        }
        "io.k8s.apimachinery.pkg.runtime.RawExtension"
        | "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1" => {
            for (tag, w) in fields_of(buf)? {
                if tag == 1 {
                    let raw = bytes_of(&w, type_name)?;
                    return serde_json::from_slice(raw)
                        .map(Some)
                        .map_err(|e| bad(format!("{type_name}: embedded JSON: {e}")));
                }
            }
            return Ok(Some(Value::Object(Map::new())));
        }
        "io.k8s.apimachinery.pkg.apis.meta.v1.Duration" => {
            for (tag, w) in fields_of(buf)? {
                if tag == 1 {
                    let ns = varint_of(&w, "Duration")? as i64;
                    return Ok(Some(Value::String(format!("{}s", ns as f64 / 1e9))));
                }
            }
            return Ok(None);
        }
        _ => {}
    }
    let Some(layout) = layouts().get(type_name) else {
        return Err(bad(format!("no protobuf layout for {type_name}")));
    };
    let mut out = Map::new();
    for (tag, w) in fields_of(buf)? {
        let Some(f) = layout.iter().find(|f| f.tag == tag) else {
            continue;
        };
        let what = || format!("{type_name}.{}", f.json);
        let v: Option<Value> = match f.kind {
            Kind::String => Some(Value::String(utf8(bytes_of(&w, &what())?, &what())?)),
            Kind::Bytes => Some(Value::String(
                base64::engine::general_purpose::STANDARD.encode(bytes_of(&w, &what())?),
            )),
            Kind::Bool => Some(Value::Bool(varint_of(&w, &what())? != 0)),
            Kind::Int32 => match &w {
                Wire::Bytes(b) if f.repeated => {
                    // Packed repeated ints.
                    let mut r = Reader { buf: b, pos: 0 };
                    let arr = out
                        .entry(f.json.clone())
                        .or_insert_with(|| Value::Array(Vec::new()));
                    while r.pos < b.len() {
                        if let Value::Array(a) = arr {
                            a.push(Value::from(r.varint()? as i32));
                        }
                    }
                    continue;
                }
                _ => Some(Value::from(varint_of(&w, &what())? as i32)),
            },
            Kind::Int64 => Some(Value::from(varint_of(&w, &what())? as i64)),
            Kind::Double => match w {
                Wire::Fixed64(v) => Some(Value::from(f64::from_bits(v))),
                _ => return Err(bad(format!("{}: expected a double", what()))),
            },
            Kind::Message if f.inline => {
                if let Some(Value::Object(m)) =
                    message(f.message, bytes_of(&w, &what())?, depth + 1)?
                {
                    out.extend(m);
                }
                continue;
            }
            Kind::Message => message(f.message, bytes_of(&w, &what())?, depth + 1)?,
            Kind::Map(vt) => {
                let entry = bytes_of(&w, &what())?;
                let (mut k, mut v) = (String::new(), None);
                for (t, ew) in fields_of(entry)? {
                    match t {
                        1 => k = utf8(bytes_of(&ew, &what())?, &what())?,
                        2 => {
                            let b = bytes_of(&ew, &what())?;
                            v = Some(match vt {
                                MapValue::String => Value::String(utf8(b, &what())?),
                                MapValue::Bytes => Value::String(
                                    base64::engine::general_purpose::STANDARD.encode(b),
                                ),
                                MapValue::Message => {
                                    message(f.message, b, depth + 1)?.unwrap_or(Value::Null)
                                }
                            });
                        }
                        _ => {}
                    }
                }
                let v = v.unwrap_or_else(|| match vt {
                    MapValue::Message => Value::Object(Map::new()),
                    _ => Value::String(String::new()),
                });
                if let Value::Object(m) = out
                    .entry(f.json.clone())
                    .or_insert_with(|| Value::Object(Map::new()))
                {
                    m.insert(k, v);
                }
                continue;
            }
        };
        let Some(v) = v else { continue };
        if f.repeated {
            if let Value::Array(a) = out
                .entry(f.json.clone())
                .or_insert_with(|| Value::Array(Vec::new()))
            {
                a.push(v);
            }
        } else {
            let zero = match &v {
                Value::String(s) => s.is_empty(),
                Value::Bool(b) => !b && !FALSE_BOOLS.contains(&f.json.as_str()),
                Value::Number(n) => {
                    n.as_f64() == Some(0.0) && !ZERO_INTS.contains(&f.json.as_str())
                }
                _ => false,
            };
            if zero && f.kind != Kind::Message {
                out.remove(&f.json);
            } else {
                out.insert(f.json.clone(), v);
            }
        }
    }
    Ok(Some(Value::Object(out)))
}

/// The OpenAPI type name of a kind (`io.k8s.api.apps.v1.Deployment`).
fn type_name_of(api_version: &str, kind: &str) -> String {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    if let Some(def) = registry::catalog::lookup_kind(group, kind)
        && let Some(t) = Node::root(def).type_name()
    {
        return t.to_string();
    }
    let package = if group.is_empty() {
        "core"
    } else {
        group.split('.').next().unwrap_or(group)
    };
    format!("io.k8s.api.{package}.{version}.{kind}")
}

/// Converts an object in served shape to the bytes storage holds.
/// Fields are stored in Kubernetes' (Go's) order, so every read served from the stored
/// bytes has Kubernetes' byte layout.
pub fn encode_for_storage(
    def: &registry::ResourceDef,
    obj: &Value,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut stored = match (&def.storage_view, def.custom) {
        (Some(view), _) => (view.to_storage)(obj),
        (None, Some(c)) => registry::with_api_version(obj.clone(), &c.group, &c.storage_version),
        (None, None) => obj.clone(),
    };
    go_field_order(&mut stored);
    serde_json::to_vec(&stored)
}

/// Puts an object's fields in the order Kubernetes writes them (Go's `encoding/json` over the
/// `k8s.io/api` structs): `kind`, `apiVersion`, then each struct's fields in declaration order —
/// the order of `generated.proto`, which the field table keeps — with map keys sorted (Go sorts
/// them). Fields the table does not know keep their relative order after the known ones;
/// free-form JSON (RawExtension, FieldsV1, custom resources' bodies) is left as it is. Clients
/// compare response bytes, so this is part of compatibility.
pub fn go_field_order(obj: &mut Value) {
    let type_name = match (
        obj.get("apiVersion").and_then(Value::as_str),
        obj.get("kind").and_then(Value::as_str),
    ) {
        // Status is the one meta.k8s.io kind served as core v1.
        (Some("v1"), Some("Status")) => "io.k8s.apimachinery.pkg.apis.meta.v1.Status".to_string(),
        (Some(av), Some(kind)) => type_name_of(av, kind),
        _ => return,
    };
    if layouts().contains_key(type_name.as_str()) {
        order_message(obj, &type_name, 0);
    }
    type_meta_first(obj);
}

/// `kind` then `apiVersion` at the front (Go's `TypeMeta` comes first in every object).
fn type_meta_first(obj: &mut Value) {
    let Value::Object(map) = obj else { return };
    for key in ["apiVersion", "kind"] {
        if let Some(v) = map.shift_remove(key) {
            map.shift_insert(0, key.to_string(), v);
        }
    }
}

fn order_message(v: &mut Value, type_name: &str, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    let Value::Object(map) = v else { return };
    let Some(fields) = layouts().get(type_name) else {
        return;
    };
    if !fields.iter().any(|f| map.contains_key(&f.json)) {
        // Not this struct's JSON form (Quantity, Time, RawExtension, FieldsV1, ...).
        return;
    }
    let mut rest = std::mem::take(map);
    for f in fields {
        let Some(mut val) = rest.shift_remove(&f.json) else {
            continue;
        };
        match f.kind {
            Kind::Message if f.repeated => {
                if let Value::Array(items) = &mut val {
                    for item in items {
                        order_message(item, f.message, depth + 1);
                    }
                }
            }
            Kind::Message => order_message(&mut val, f.message, depth + 1),
            Kind::Map(mv) => {
                if let Value::Object(m) = &mut val {
                    m.sort_keys();
                    if mv == MapValue::Message {
                        for item in m.values_mut() {
                            order_message(item, f.message, depth + 1);
                        }
                    }
                }
            }
            _ => {}
        }
        map.insert(f.json.clone(), val);
    }
    map.extend(rest);
}

/// Decodes a protobuf-encoded object (`k8s\0` + `runtime.Unknown`) into Kubernetes JSON.
pub fn decode_object(body: &[u8]) -> ApiResult<Value> {
    let Some(rest) = body.strip_prefix(MAGIC) else {
        return Err(bad(
            "the body does not start with the Kubernetes protobuf magic \"k8s\\x00\"",
        ));
    };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), None);
    for (tag, w) in fields_of(rest)? {
        match tag {
            1 => {
                for (t, tw) in fields_of(bytes_of(&w, "Unknown.typeMeta")?)? {
                    match t {
                        1 => {
                            api_version =
                                utf8(bytes_of(&tw, "TypeMeta.apiVersion")?, "TypeMeta.apiVersion")?
                        }
                        2 => kind = utf8(bytes_of(&tw, "TypeMeta.kind")?, "TypeMeta.kind")?,
                        _ => {}
                    }
                }
            }
            2 => raw = Some(bytes_of(&w, "Unknown.raw")?),
            3 => {
                let enc = utf8(
                    bytes_of(&w, "Unknown.contentEncoding")?,
                    "Unknown.contentEncoding",
                )?;
                if !enc.is_empty() {
                    return Err(bad(format!("unsupported content encoding {enc:?}")));
                }
            }
            _ => {}
        }
    }
    if kind.is_empty() || api_version.is_empty() {
        return Err(bad("runtime.Unknown has no apiVersion/kind in typeMeta"));
    }
    let type_name = type_name_of(&api_version, &kind);
    if !layouts().contains_key(type_name.as_str()) {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("no protobuf decoding for {kind} in {api_version}; send application/json"),
        ));
    }
    let mut obj = match message(&type_name, raw.unwrap_or_default(), 0)? {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::String(api_version));
    out.insert("kind".into(), Value::String(kind));
    out.append(&mut obj);
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {

    #[test]
    fn objects_are_written_in_go_field_order() {
        let mut cm = json!({
            "apiVersion": "v1",
            "data": {"b": "2", "a": "1"},
            "kind": "ConfigMap",
            "metadata": {"uid": "u", "annotations": {"z": "1", "a": "2"}, "name": "c", "namespace": "d",
                "managedFields": [{"fieldsV1": {"f:data": {"f:b": {}, "f:a": {}}}, "manager": "m", "apiVersion": "v1"}]},
            "immutable": false,
        });
        go_field_order(&mut cm);
        assert_eq!(
            serde_json::to_string(&cm).unwrap(),
            r#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"c","namespace":"d","uid":"u","annotations":{"a":"2","z":"1"},"managedFields":[{"manager":"m","apiVersion":"v1","fieldsV1":{"f:data":{"f:b":{},"f:a":{}}}}]},"immutable":false,"data":{"a":"1","b":"2"}}"#
        );
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "status": {"phase": "Running"},
            "spec": {"containers": [{"image": "busybox", "name": "c", "resources": {"limits": {"memory": "1Gi", "cpu": "1"}}}]},
            "metadata": {"name": "p"}, "x-unknown": 1});
        go_field_order(&mut pod);
        assert_eq!(
            serde_json::to_string(&pod).unwrap(),
            r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"busybox","resources":{"limits":{"cpu":"1","memory":"1Gi"}}}]},"status":{"phase":"Running"},"x-unknown":1}"#
        );
        // Unknown kinds: only TypeMeta moves.
        let mut cr = json!({"apiVersion": "x.io/v1", "spec": {"b": 1, "a": 2}, "kind": "Thing"});
        go_field_order(&mut cr);
        assert_eq!(
            serde_json::to_string(&cr).unwrap(),
            r#"{"kind":"Thing","apiVersion":"x.io/v1","spec":{"b":1,"a":2}}"#
        );
    }
    use k8s_pb::api::apps::v1 as apps;
    use k8s_pb::api::core::v1 as core;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
    use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
    use prost::Message;
    use serde_json::json;

    use super::*;

    fn wrap(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let u = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut out = MAGIC.to_vec();
        out.extend(u.encode_to_vec());
        out
    }

    fn meta(name: &str) -> meta::ObjectMeta {
        meta::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(String::new()),
            generation: Some(0),
            creation_timestamp: Some(meta::Time {
                seconds: Some(0),
                nanos: Some(0),
            }),
            labels: [("app".to_string(), "web".to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn inline_structs_are_the_parents_fields() {
        let pod = core::Pod {
            metadata: Some(meta("p")),
            spec: Some(core::PodSpec {
                containers: vec![core::Container {
                    name: Some("c".into()),
                    readiness_probe: Some(core::Probe {
                        handler: Some(core::ProbeHandler {
                            exec: Some(core::ExecAction {
                                command: vec!["true".into()],
                            }),
                            ..Default::default()
                        }),
                        period_seconds: Some(3),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                volumes: vec![core::Volume {
                    name: Some("host-root".into()),
                    volume_source: Some(core::VolumeSource {
                        host_path: Some(core::HostPathVolumeSource {
                            path: Some("/".into()),
                            r#type: None,
                        }),
                        ..Default::default()
                    }),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = decode_object(&wrap("v1", "Pod", pod.encode_to_vec())).expect("decodes");
        assert_eq!(
            v["spec"]["volumes"],
            json!([{"name": "host-root", "hostPath": {"path": "/"}}])
        );
        assert_eq!(
            v["spec"]["containers"][0]["readinessProbe"],
            json!({"exec": {"command": ["true"]}, "periodSeconds": 3})
        );
    }

    #[test]
    fn secret_bytes_are_base64_and_zero_values_omitted() {
        let s = core::Secret {
            metadata: Some(meta("s")),
            data: [("k".to_string(), b"hi\x00".to_vec())].into(),
            r#type: Some("Opaque".into()),
            immutable: None,
            ..Default::default()
        };
        let v = decode_object(&wrap("v1", "Secret", s.encode_to_vec())).expect("decodes");
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "labels": {"app": "web"}},
                "data": {"k": "aGkA"}, "type": "Opaque"})
        );
    }

    #[test]
    fn deployment_with_int_or_string_quantities_and_zero_replicas() {
        use k8s_pb::apimachinery::pkg::api::resource::Quantity;
        use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
        let d = apps::Deployment {
            metadata: Some(meta("web")),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(0),
                selector: Some(meta::LabelSelector {
                    match_labels: [("app".to_string(), "web".to_string())].into(),
                    ..Default::default()
                }),
                strategy: Some(apps::DeploymentStrategy {
                    r#type: Some("RollingUpdate".into()),
                    rolling_update: Some(apps::RollingUpdateDeployment {
                        max_unavailable: Some(IntOrString {
                            r#type: Some(1),
                            int_val: Some(0),
                            str_val: Some("25%".into()),
                        }),
                        max_surge: Some(IntOrString {
                            r#type: Some(0),
                            int_val: Some(2),
                            str_val: Some(String::new()),
                        }),
                    }),
                }),
                template: Some(core::PodTemplateSpec {
                    metadata: Some(meta("")),
                    spec: Some(core::PodSpec {
                        containers: vec![core::Container {
                            name: Some("nginx".into()),
                            image: Some("nginx".into()),
                            resources: Some(core::ResourceRequirements {
                                limits: [(
                                    "memory".to_string(),
                                    Quantity {
                                        string: Some("64Mi".into()),
                                    },
                                )]
                                .into(),
                                ..Default::default()
                            }),
                            ports: vec![core::ContainerPort {
                                container_port: Some(80),
                                host_port: Some(0),
                                ..Default::default()
                            }],
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        };
        let v = decode_object(&wrap("apps/v1", "Deployment", d.encode_to_vec())).expect("decodes");
        assert_eq!(v["spec"]["replicas"], 0);
        assert_eq!(
            v["spec"]["strategy"]["rollingUpdate"],
            json!({"maxUnavailable": "25%", "maxSurge": 2})
        );
        let c = &v["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["resources"], json!({"limits": {"memory": "64Mi"}}));
        assert_eq!(c["ports"], json!([{"containerPort": 80}]));
        assert_eq!(
            v["spec"]["selector"],
            json!({"matchLabels": {"app": "web"}})
        );
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let mut m = meta("n");
        m.creation_timestamp = Some(meta::Time {
            seconds: Some(1_700_000_000),
            nanos: Some(0),
        });
        let ns = core::Namespace {
            metadata: Some(m),
            ..Default::default()
        };
        let v = decode_object(&wrap("v1", "Namespace", ns.encode_to_vec())).expect("decodes");
        assert_eq!(v["metadata"]["creationTimestamp"], "2023-11-14T22:13:20Z");
    }

    #[test]
    fn bad_bodies_are_400() {
        let ns = core::Namespace {
            metadata: Some(meta("n")),
            ..Default::default()
        };
        let good = wrap("v1", "Namespace", ns.encode_to_vec());
        for (body, want) in [
            (b"k9s\0xx".to_vec(), "magic"),
            (good[..good.len() - 3].to_vec(), "truncated"),
            (wrap("", "", vec![]), "no apiVersion/kind"),
            (wrap("v1", "Namespace", vec![0x0a, 0xff]), "truncated"),
        ] {
            let e = decode_object(&body).expect_err("must fail");
            assert_eq!(e.code, 400, "{want}");
            assert!(e.message.contains(want), "{}: {want}", e.message);
        }
    }
}
