//! Structural `openAPIV3Schema` of a custom resource version: parsing, pruning of unknown
//! fields, defaulting and validation, worded as Kubernetes' apiextensions-apiserver words them
//! (kube-openapi's validation errors converted to field errors).
//!
//! Order on every write, as Kubernetes: prune (unknown fields dropped and reported for
//! `fieldValidation`), default, validate.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::{Map, Value};

use super::Cause;

/// One node of a structural schema.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    /// `type`: object, array, string, integer, number, boolean (None: any, e.g. int-or-string).
    pub type_: Option<String>,
    /// `properties`.
    pub properties: BTreeMap<String, Schema>,
    /// `additionalProperties` as a schema (maps).
    pub additional_properties: Option<Box<Schema>>,
    /// `additionalProperties: true`.
    pub additional_any: bool,
    /// `items`.
    pub items: Option<Box<Schema>>,
    /// `required`.
    pub required: Vec<String>,
    /// `enum`.
    pub enum_: Vec<Value>,
    /// `pattern`, compiled.
    pub pattern: Option<(String, Regex)>,
    /// `minimum`.
    pub minimum: Option<f64>,
    /// `maximum`.
    pub maximum: Option<f64>,
    /// `exclusiveMinimum`.
    pub exclusive_minimum: bool,
    /// `exclusiveMaximum`.
    pub exclusive_maximum: bool,
    /// `multipleOf`.
    pub multiple_of: Option<f64>,
    /// `minLength`.
    pub min_length: Option<u64>,
    /// `maxLength`.
    pub max_length: Option<u64>,
    /// `minItems`.
    pub min_items: Option<u64>,
    /// `maxItems`.
    pub max_items: Option<u64>,
    /// `minProperties`.
    pub min_properties: Option<u64>,
    /// `maxProperties`.
    pub max_properties: Option<u64>,
    /// `nullable`.
    pub nullable: bool,
    /// `default`.
    pub default: Option<Value>,
    /// `x-kubernetes-preserve-unknown-fields`.
    pub preserve_unknown: bool,
    /// `x-kubernetes-int-or-string`.
    pub int_or_string: bool,
    /// `x-kubernetes-embedded-resource`.
    pub embedded: bool,
    /// `x-kubernetes-list-type`.
    pub list_type: Option<String>,
    /// `x-kubernetes-list-map-keys`.
    pub list_map_keys: Vec<String>,
    /// `allOf`, `anyOf`, `oneOf` (value validation only in structural schemas).
    pub all_of: Vec<Schema>,
    /// `anyOf`.
    pub any_of: Vec<Schema>,
    /// `oneOf`.
    pub one_of: Vec<Schema>,
    /// `not`.
    pub not: Option<Box<Schema>>,
}

fn u64_of(m: &Map<String, Value>, k: &str) -> Option<u64> {
    m.get(k).and_then(Value::as_u64)
}

fn f64_of(m: &Map<String, Value>, k: &str) -> Option<f64> {
    m.get(k).and_then(Value::as_f64)
}

fn flag(m: &Map<String, Value>, k: &str) -> bool {
    m.get(k).and_then(Value::as_bool).unwrap_or(false)
}

impl Schema {
    /// Parses a JSONSchemaProps object. Errors name the offending field relative to `path`
    /// (e.g. an invalid `pattern`).
    pub fn parse(v: &Value, path: &str) -> Result<Schema, Cause> {
        let Some(m) = v.as_object() else {
            return Ok(Schema::default());
        };
        let mut s = Schema {
            type_: m.get("type").and_then(Value::as_str).map(str::to_string),
            required: m
                .get("required")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            enum_: m
                .get("enum")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            minimum: f64_of(m, "minimum"),
            maximum: f64_of(m, "maximum"),
            exclusive_minimum: flag(m, "exclusiveMinimum"),
            exclusive_maximum: flag(m, "exclusiveMaximum"),
            multiple_of: f64_of(m, "multipleOf"),
            min_length: u64_of(m, "minLength"),
            max_length: u64_of(m, "maxLength"),
            min_items: u64_of(m, "minItems"),
            max_items: u64_of(m, "maxItems"),
            min_properties: u64_of(m, "minProperties"),
            max_properties: u64_of(m, "maxProperties"),
            nullable: flag(m, "nullable"),
            default: m.get("default").cloned(),
            preserve_unknown: flag(m, "x-kubernetes-preserve-unknown-fields"),
            int_or_string: flag(m, "x-kubernetes-int-or-string"),
            embedded: flag(m, "x-kubernetes-embedded-resource"),
            list_type: m
                .get("x-kubernetes-list-type")
                .and_then(Value::as_str)
                .map(str::to_string),
            list_map_keys: m
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            ..Schema::default()
        };
        if let Some(p) = m.get("pattern").and_then(Value::as_str) {
            let re = Regex::new(p).map_err(|e| {
                Cause::invalid(
                    format!("{path}.pattern"),
                    &Value::String(p.to_string()),
                    &format!("must be a valid regular expression, but isn't: {e}"),
                )
            })?;
            s.pattern = Some((p.to_string(), re));
        }
        if let Some(props) = m.get("properties").and_then(Value::as_object) {
            for (k, pv) in props {
                s.properties.insert(
                    k.clone(),
                    Schema::parse(pv, &format!("{path}.properties[{k}]"))?,
                );
            }
        }
        match m.get("additionalProperties") {
            Some(Value::Bool(true)) => s.additional_any = true,
            Some(ap @ Value::Object(_)) => {
                s.additional_properties = Some(Box::new(Schema::parse(
                    ap,
                    &format!("{path}.additionalProperties"),
                )?))
            }
            _ => {}
        }
        if let Some(items) = m.get("items") {
            s.items = Some(Box::new(Schema::parse(items, &format!("{path}.items"))?));
        }
        for (key, out) in [
            ("allOf", &mut s.all_of),
            ("anyOf", &mut s.any_of),
            ("oneOf", &mut s.one_of),
        ] {
            if let Some(a) = m.get(key).and_then(Value::as_array) {
                for (i, sub) in a.iter().enumerate() {
                    out.push(Schema::parse(sub, &format!("{path}.{key}[{i}]"))?);
                }
            }
        }
        if let Some(n) = m.get("not") {
            s.not = Some(Box::new(Schema::parse(n, &format!("{path}.not"))?));
        }
        Ok(s)
    }

    /// True when fields not named in `properties` are kept at this node.
    fn keeps_unknown(&self) -> bool {
        self.preserve_unknown || self.additional_any
    }
}

/// Structural-schema checks Kubernetes makes on a CRD version's schema (the common ones): a
/// type everywhere fields are specified, `object` at the root, no `x-kubernetes-validations`
/// (CEL is not supported by Lotse: such a CRD is refused rather than its rules ignored).
pub fn check_structural(v: &Value, path: &str, root: bool, out: &mut Vec<Cause>) {
    let Some(m) = v.as_object() else { return };
    let type_ = m.get("type").and_then(Value::as_str).unwrap_or("");
    if root {
        if type_.is_empty() {
            out.push(Cause::required(
                format!("{path}.type"),
                "must not be empty at the root",
            ));
        } else if type_ != "object" {
            out.push(Cause::invalid(
                format!("{path}.type"),
                &Value::String(type_.to_string()),
                "must be object at the root",
            ));
        }
    } else if type_.is_empty()
        && !flag(m, "x-kubernetes-int-or-string")
        && !flag(m, "x-kubernetes-preserve-unknown-fields")
    {
        out.push(Cause::required(
            format!("{path}.type"),
            "must not be empty for specified object fields",
        ));
    }
    if m.contains_key("x-kubernetes-validations") {
        out.push(Cause::forbidden(
            format!("{path}.x-kubernetes-validations"),
            "CEL validation rules are not supported by this server (Lotse); remove x-kubernetes-validations",
        ));
    }
    if flag(m, "uniqueItems") {
        out.push(Cause::forbidden(
            format!("{path}.uniqueItems"),
            "uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
        ));
    }
    if let Some(lt) = m.get("x-kubernetes-list-type").and_then(Value::as_str) {
        if !matches!(lt, "atomic" | "set" | "map") {
            out.push(Cause::not_supported(
                format!("{path}.x-kubernetes-list-type"),
                &Value::String(lt.to_string()),
                &["atomic", "set", "map"],
            ));
        }
        if lt == "map"
            && m.get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .is_none_or(|a| a.is_empty())
        {
            out.push(Cause::required(
                format!("{path}.x-kubernetes-list-map-keys"),
                "must not be empty if x-kubernetes-list-type is map",
            ));
        }
    }
    if let Some(p) = m.get("pattern").and_then(Value::as_str)
        && let Err(e) = Regex::new(p)
    {
        out.push(Cause::invalid(
            format!("{path}.pattern"),
            &Value::String(p.to_string()),
            &format!("must be a valid regular expression, but isn't: {e}"),
        ));
    }
    if let Some(props) = m.get("properties").and_then(Value::as_object) {
        for (k, pv) in props {
            check_structural(pv, &format!("{path}.properties[{k}]"), false, out);
        }
    }
    if let Some(ap @ Value::Object(_)) = m.get("additionalProperties") {
        check_structural(ap, &format!("{path}.additionalProperties"), false, out);
    }
    if let Some(items) = m.get("items") {
        check_structural(items, &format!("{path}.items"), false, out);
    }
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

/// Drops fields the schema does not know (keeping `apiVersion`, `kind` and `metadata` of the
/// root and of embedded resources) and records their paths in `unknown`.
pub fn prune(v: &mut Value, s: &Schema, path: &str, unknown: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if s.keeps_unknown() && s.properties.is_empty() && s.additional_properties.is_none() {
                return;
            }
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let p = join(path, &k);
                if let Some(ps) = s.properties.get(&k) {
                    if let Some(child) = m.get_mut(&k) {
                        prune(child, ps, &p, unknown);
                    }
                } else if let Some(ap) = &s.additional_properties {
                    if let Some(child) = m.get_mut(&k) {
                        prune(child, ap, &p, unknown);
                    }
                } else if s.embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                } else if !s.keeps_unknown() {
                    m.remove(&k);
                    unknown.push(p);
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = &s.items {
                for (i, item) in a.iter_mut().enumerate() {
                    prune(item, items, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// Applies `default`s of missing (or null, when not nullable) properties, recursively.
pub fn apply_defaults(v: &mut Value, s: &Schema) {
    match v {
        Value::Object(m) => {
            for (k, ps) in &s.properties {
                let missing = match m.get(k) {
                    None => true,
                    Some(Value::Null) => !ps.nullable,
                    Some(_) => false,
                };
                if missing && let Some(d) = &ps.default {
                    m.insert(k.clone(), d.clone());
                }
                if let Some(child) = m.get_mut(k) {
                    apply_defaults(child, ps);
                }
            }
            if let Some(ap) = &s.additional_properties {
                for (k, child) in m.iter_mut() {
                    if !s.properties.contains_key(k) {
                        apply_defaults(child, ap);
                    }
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = &s.items {
                for item in a.iter_mut() {
                    apply_defaults(item, items);
                }
            }
        }
        _ => {}
    }
}

/// The JSON type name kube-openapi reports for a value.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(want: &str, v: &Value) -> bool {
    match want {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "number" => v.is_number(),
        "integer" => type_name(v) == "integer",
        _ => true,
    }
}

/// Go's `%v` of a float64 in these messages: `1`, `1.5`.
fn num(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        format!("{f}")
    }
}

/// Validates `v` against `s`; `path` is the field path (`spec.replicas`).
pub fn validate(v: &Value, s: &Schema, path: &str, out: &mut Vec<Cause>) {
    if v.is_null() {
        if s.nullable || (s.type_.is_none() && !s.int_or_string) {
            return;
        }
        let want = if s.int_or_string {
            "integer,string"
        } else {
            s.type_.as_deref().unwrap_or("")
        };
        out.push(type_error(path, want, "null"));
        return;
    }
    if s.int_or_string {
        if !(v.is_string() || type_name(v) == "integer") {
            out.push(type_error(path, "integer,string", type_name(v)));
            return;
        }
    } else if let Some(t) = &s.type_
        && !type_matches(t, v)
    {
        out.push(type_error(path, t, type_name(v)));
        return;
    }
    if !s.enum_.is_empty() && !s.enum_.contains(v) {
        let supported: Vec<String> = s.enum_.iter().map(render).collect();
        out.push(Cause {
            reason: "FieldValueNotSupported",
            field: path.to_string(),
            message: format!(
                "{path}: Unsupported value: {}: supported values: {}",
                render(v),
                supported.join(", ")
            ),
        });
    }
    match v {
        Value::String(st) => validate_string(st, v, s, path, out),
        Value::Number(n) => {
            if let Some(f) = n.as_f64() {
                validate_number(f, v, s, path, out);
            }
        }
        Value::Array(a) => validate_array(a, v, s, path, out),
        Value::Object(m) => validate_object(m, v, s, path, out),
        _ => {}
    }
    for sub in &s.all_of {
        validate(v, sub, path, out);
    }
    if !s.any_of.is_empty()
        && !s.any_of.iter().any(|sub| {
            let mut e = Vec::new();
            validate(v, sub, path, &mut e);
            e.is_empty()
        })
    {
        out.push(Cause::invalid(
            path.to_string(),
            v,
            &format!(
                "{path} in body must be of type {}",
                s.type_.as_deref().unwrap_or("")
            ),
        ));
    }
    if !s.one_of.is_empty() {
        let passing = s
            .one_of
            .iter()
            .filter(|sub| {
                let mut e = Vec::new();
                validate(v, sub, path, &mut e);
                e.is_empty()
            })
            .count();
        if passing != 1 {
            out.push(Cause::invalid(
                path.to_string(),
                v,
                &format!("{path} in body must validate one and only one schema (oneOf)"),
            ));
        }
    }
    if let Some(n) = &s.not {
        let mut e = Vec::new();
        validate(v, n, path, &mut e);
        if e.is_empty() {
            out.push(Cause::invalid(
                path.to_string(),
                v,
                &format!("{path} in body must not validate the schema (not)"),
            ));
        }
    }
}

fn type_error(path: &str, want: &str, actual: &str) -> Cause {
    Cause::invalid(
        path.to_string(),
        &Value::String(actual.to_string()),
        &format!("{path} in body must be of type {want}: \"{actual}\""),
    )
}

fn validate_string(st: &str, v: &Value, s: &Schema, path: &str, out: &mut Vec<Cause>) {
    let len = st.chars().count() as u64;
    if let Some(max) = s.max_length
        && len > max
    {
        out.push(Cause {
            reason: "FieldValueTooLong",
            field: path.to_string(),
            message: format!(
                "{path}: Too long: may not be more than {max} {}",
                if max == 1 { "byte" } else { "bytes" }
            ),
        });
    }
    if let Some(min) = s.min_length
        && len < min
    {
        out.push(Cause::invalid(
            path.to_string(),
            v,
            &format!("{path} in body should be at least {min} chars long"),
        ));
    }
    if let Some((src, re)) = &s.pattern
        && !re.is_match(st)
    {
        out.push(Cause::invalid(
            path.to_string(),
            v,
            &format!("{path} in body should match '{src}'"),
        ));
    }
}

fn validate_number(f: f64, v: &Value, s: &Schema, path: &str, out: &mut Vec<Cause>) {
    if let Some(min) = s.minimum {
        let bad = if s.exclusive_minimum {
            f <= min
        } else {
            f < min
        };
        if bad {
            let op = if s.exclusive_minimum {
                "greater than"
            } else {
                "greater than or equal to"
            };
            out.push(Cause::invalid(
                path.to_string(),
                v,
                &format!("{path} in body should be {op} {}", num(min)),
            ));
        }
    }
    if let Some(max) = s.maximum {
        let bad = if s.exclusive_maximum {
            f >= max
        } else {
            f > max
        };
        if bad {
            let op = if s.exclusive_maximum {
                "less than"
            } else {
                "less than or equal to"
            };
            out.push(Cause::invalid(
                path.to_string(),
                v,
                &format!("{path} in body should be {op} {}", num(max)),
            ));
        }
    }
    if let Some(m) = s.multiple_of
        && m > 0.0
        && (f / m).fract() != 0.0
    {
        out.push(Cause::invalid(
            path.to_string(),
            v,
            &format!("{path} in body should be a multiple of {}", num(m)),
        ));
    }
}

fn validate_array(a: &[Value], _v: &Value, s: &Schema, path: &str, out: &mut Vec<Cause>) {
    let n = a.len() as u64;
    if let Some(max) = s.max_items
        && n > max
    {
        out.push(Cause {
            reason: "FieldValueTooMany",
            field: path.to_string(),
            message: format!("{path}: Too many: {n}: must have at most {max} items"),
        });
    }
    if let Some(min) = s.min_items
        && n < min
    {
        out.push(Cause::invalid(
            path.to_string(),
            &Value::from(n),
            &format!("{path} in body should have at least {min} items"),
        ));
    }
    if let Some(items) = &s.items {
        for (i, item) in a.iter().enumerate() {
            validate(item, items, &format!("{path}[{i}]"), out);
        }
    }
    match s.list_type.as_deref() {
        Some("set") => {
            for (i, item) in a.iter().enumerate() {
                if a[..i].contains(item) {
                    out.push(Cause::duplicate(format!("{path}[{i}]"), item));
                }
            }
        }
        Some("map") => {
            let key_of = |item: &Value| -> Vec<Value> {
                s.list_map_keys
                    .iter()
                    .map(|k| item.get(k).cloned().unwrap_or(Value::Null))
                    .collect()
            };
            for (i, item) in a.iter().enumerate() {
                let key = key_of(item);
                if a[..i].iter().any(|o| key_of(o) == key) {
                    let shown: Map<String, Value> =
                        s.list_map_keys.iter().cloned().zip(key).collect();
                    // Go's `%#v` of the key map, as Kubernetes prints it.
                    let mut parts: Vec<String> = shown
                        .iter()
                        .map(|(k, v)| format!("\"{k}\":{}", render(v)))
                        .collect();
                    parts.sort();
                    let field = format!("{path}[{i}]");
                    out.push(Cause {
                        reason: "FieldValueDuplicate",
                        message: format!(
                            "{field}: Duplicate value: map[string]interface {{}}{{{}}}",
                            parts.join(", ")
                        ),
                        field,
                    });
                }
            }
        }
        _ => {}
    }
}

fn validate_object(
    m: &Map<String, Value>,
    v: &Value,
    s: &Schema,
    path: &str,
    out: &mut Vec<Cause>,
) {
    for r in &s.required {
        if !m.contains_key(r) {
            out.push(Cause::required(join(path, r), ""));
        }
    }
    let n = m.len() as u64;
    if let Some(max) = s.max_properties
        && n > max
    {
        out.push(Cause {
            reason: "FieldValueTooMany",
            field: path.to_string(),
            message: format!("{path}: Too many: {n}: must have at most {max} items"),
        });
    }
    if let Some(min) = s.min_properties
        && n < min
    {
        out.push(Cause::invalid(
            path.to_string(),
            v,
            &format!("{path} in body should have at least {min} properties"),
        ));
    }
    if s.embedded {
        for k in ["apiVersion", "kind"] {
            if m.get(k).and_then(Value::as_str).is_none_or(str::is_empty) {
                out.push(Cause::required(join(path, k), "must not be empty"));
            }
        }
    }
    for (k, child) in m {
        let p = join(path, k);
        if let Some(ps) = s.properties.get(k) {
            validate(child, ps, &p, out);
        } else if let Some(ap) = &s.additional_properties {
            validate(child, ap, &p, out);
        }
    }
}

/// Renders a value as Kubernetes' field errors print it.
pub fn render(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(v: Value) -> Schema {
        Schema::parse(&v, "").expect("parses")
    }

    fn messages(v: &Value, s: &Schema) -> Vec<String> {
        let mut out = Vec::new();
        validate(v, s, "", &mut out);
        out.into_iter().map(|c| c.message).collect()
    }

    fn crontab() -> Schema {
        schema(
            json!({"type": "object", "properties": {"spec": {"type": "object",
            "required": ["image"],
            "properties": {
                "replicas": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
                "image": {"type": "string", "pattern": "^[a-z]+$", "minLength": 2, "maxLength": 8},
                "mode": {"type": "string", "enum": ["a", "b"]},
                "port": {"x-kubernetes-int-or-string": true},
                "tags": {"type": "array", "maxItems": 2, "minItems": 1, "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "maybe": {"type": "string", "nullable": true},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                    "items": {"type": "object", "properties": {"name": {"type": "string"}, "n": {"type": "integer", "default": 80}}}},
                "template": {"type": "object", "x-kubernetes-embedded-resource": true, "x-kubernetes-preserve-unknown-fields": true}
            }}}}),
        )
    }

    #[test]
    fn type_errors_are_worded_as_kube_openapi() {
        let s = crontab();
        assert_eq!(
            messages(&json!({"spec": {"replicas": "three", "image": "ab"}}), &s),
            vec![
                "spec.replicas: Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\""
            ]
        );
        assert_eq!(
            messages(&json!({"spec": {"image": "ab", "port": true}}), &s),
            vec![
                "spec.port: Invalid value: \"boolean\": spec.port in body must be of type integer,string: \"boolean\""
            ]
        );
        assert_eq!(
            messages(&json!({"spec": {"image": null}}), &s),
            vec![
                "spec.image: Invalid value: \"null\": spec.image in body must be of type string: \"null\""
            ]
        );
        assert!(
            messages(
                &json!({"spec": {"image": "ab", "maybe": null, "port": "http"}}),
                &s
            )
            .is_empty()
        );
        assert!(messages(&json!({"spec": {"image": "ab", "replicas": 2.0}}), &s).is_empty());
    }

    #[test]
    fn value_constraints() {
        let s = crontab();
        assert_eq!(
            messages(
                &json!({"spec": {"replicas": 0, "image": "A", "mode": "c", "tags": [], "labels": {"x": 1}}}),
                &s
            ),
            vec![
                "spec.replicas: Invalid value: 0: spec.replicas in body should be greater than or equal to 1",
                "spec.image: Invalid value: \"A\": spec.image in body should be at least 2 chars long",
                "spec.image: Invalid value: \"A\": spec.image in body should match '^[a-z]+$'",
                "spec.mode: Unsupported value: \"c\": supported values: \"a\", \"b\"",
                "spec.tags: Invalid value: 0: spec.tags in body should have at least 1 items",
                "spec.labels.x: Invalid value: \"integer\": spec.labels.x in body must be of type string: \"integer\"",
            ]
        );
        assert_eq!(
            messages(
                &json!({"spec": {"replicas": 11, "image": "abcdefghi", "tags": ["a", "b", "a"]}}),
                &s
            ),
            vec![
                "spec.replicas: Invalid value: 11: spec.replicas in body should be less than or equal to 10",
                "spec.image: Too long: may not be more than 8 bytes",
                "spec.tags: Too many: 3: must have at most 2 items",
                "spec.tags[2]: Duplicate value: \"a\"",
            ]
        );
        assert_eq!(
            messages(&json!({"spec": {}}), &s),
            vec!["spec.image: Required value"]
        );
        assert_eq!(
            messages(
                &json!({"spec": {"image": "ab", "template": {"spec": {}}}}),
                &s
            ),
            vec![
                "spec.template.apiVersion: Required value: must not be empty",
                "spec.template.kind: Required value: must not be empty",
            ]
        );
        assert_eq!(
            messages(
                &json!({"spec": {"image": "ab", "ports": [{"name": "a"}, {"name": "a"}]}}),
                &s
            ),
            vec!["spec.ports[1]: Duplicate value: map[string]interface {}{\"name\":\"a\"}"]
        );
    }

    #[test]
    fn pruning_keeps_known_and_preserved_fields() {
        let s = crontab();
        let mut v = json!({"apiVersion": "x/v1", "kind": "C", "metadata": {"name": "a"},
            "spec": {"image": "ab", "bogus": 1, "free": {"any": {"thing": 1}},
                "ports": [{"name": "a", "extra": true}],
                "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"x": 1}}},
            "status": {"y": 1}});
        let root = Schema {
            properties: {
                let mut p = s.properties.clone();
                for k in ["apiVersion", "kind"] {
                    p.insert(k.to_string(), Schema::default());
                }
                p.insert(
                    "metadata".to_string(),
                    Schema {
                        preserve_unknown: true,
                        ..Schema::default()
                    },
                );
                p
            },
            ..s.clone()
        };
        let mut unknown = Vec::new();
        prune(&mut v, &root, "", &mut unknown);
        assert_eq!(unknown, vec!["spec.bogus", "spec.ports[0].extra", "status"]);
        assert_eq!(v["spec"]["free"]["any"]["thing"], 1);
        assert_eq!(v["spec"]["template"]["spec"]["x"], 1);
        assert_eq!(v["metadata"]["name"], "a");
    }

    #[test]
    fn defaults_fill_missing_and_null_fields() {
        let s = crontab();
        let mut v = json!({"spec": {"image": "ab", "ports": [{"name": "a"}], "replicas": null}});
        apply_defaults(&mut v, &s);
        assert_eq!(v["spec"]["replicas"], 1);
        assert_eq!(v["spec"]["ports"][0]["n"], 80);
        assert!(v["spec"].get("mode").is_none());
    }

    #[test]
    fn structural_checks() {
        let mut out = Vec::new();
        check_structural(
            &json!({"properties": {"spec": {"properties": {"a": {"type": "string"}}},
                "x": {"type": "string", "x-kubernetes-validations": [{"rule": "self == 'a'"}]}}}),
            "spec.versions[0].schema.openAPIV3Schema",
            true,
            &mut out,
        );
        let msgs: Vec<String> = out.into_iter().map(|c| c.message).collect();
        assert_eq!(
            msgs,
            vec![
                "spec.versions[0].schema.openAPIV3Schema.type: Required value: must not be empty at the root",
                "spec.versions[0].schema.openAPIV3Schema.properties[spec].type: Required value: must not be empty for specified object fields",
                "spec.versions[0].schema.openAPIV3Schema.properties[x].x-kubernetes-validations: Forbidden: CEL validation rules are not supported by this server (Lotse); remove x-kubernetes-validations",
            ]
        );
    }
}
