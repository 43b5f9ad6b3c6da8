//! `metadata.managedFields`: which manager set which fields (FieldsV1), and server-side apply.

use serde_json::{Map, Value, json};

use crate::error::ApiResult;
use crate::registry::ResourceDef;

/// FieldsV1 of an object: `{"f:metadata":{"f:labels":{"f:app":{}}},...}`. Lists of objects with
/// a `name` are keyed `k:{"name":"x"}`, other lists are owned whole.
pub fn fields_v1(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, val) in m {
                if matches!(k.as_str(), "apiVersion" | "kind") {
                    continue;
                }
                out.insert(format!("f:{k}"), fields_v1_child(k, val));
            }
            Value::Object(out)
        }
        _ => json!({}),
    }
}

fn fields_v1_child(key: &str, v: &Value) -> Value {
    match v {
        Value::Object(_) if key != "managedFields" => {
            let mut inner = fields_v1(v);
            if let Value::Object(m) = &mut inner {
                m.insert(".".into(), json!({}));
                if m.len() == 1 {
                    m.clear();
                }
            }
            inner
        }
        Value::Array(items) => {
            let mut out = Map::new();
            for item in items {
                if let Some(name) = item.get("name").and_then(Value::as_str) {
                    let mut inner = fields_v1(item);
                    if let Value::Object(m) = &mut inner {
                        m.insert(".".into(), json!({}));
                    }
                    out.insert(format!("k:{}", json!({"name": name})), inner);
                } else if let Some(s) = item.as_str() {
                    out.insert(format!("v:{}", Value::String(s.to_string())), json!({}));
                }
            }
            Value::Object(out)
        }
        _ => json!({}),
    }
}

fn now() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second()).unwrap_or(now).to_string()
}

/// A managedFields entry for `manager` owning every field of `obj` (spec part; status is owned
/// through the status subresource).
pub fn entry(manager: &str, operation: &str, def: &ResourceDef, obj: &Value) -> Value {
    let mut owned = obj.clone();
    if let Value::Object(m) = &mut owned {
        if let Some(Value::Object(meta)) = m.get_mut("metadata") {
            for k in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp", "generation", "managedFields", "generateName", "deletionTimestamp", "deletionGracePeriodSeconds"] {
                meta.remove(k);
            }
            if meta.is_empty() {
                m.remove("metadata");
            }
        }
        if def.has_status {
            m.remove("status");
        }
    }
    json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": def.api_version(),
        "time": now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": fields_v1(&owned),
    })
}

/// Records an update by `manager` in `new`'s managedFields (replacing its previous entry of the
/// same operation).
pub fn record(new: &mut Value, old: &Value, manager: &str, operation: &str, def: &ResourceDef) {
    let mut entries: Vec<Value> = old
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    entries.retain(|e| !(e.get("manager").and_then(Value::as_str) == Some(manager) && e.get("operation").and_then(Value::as_str) == Some(operation)));
    entries.push(entry(manager, operation, def, new));
    if let Value::Object(m) = new
        && let Some(Value::Object(meta)) = m.get_mut("metadata")
    {
        meta.insert("managedFields".into(), Value::Array(entries));
    }
}

/// Server-side apply of `config` by `manager` onto `current`: the applied configuration is merged
/// over the live object.
pub fn apply(_def: &ResourceDef, current: &Value, config: &Value, _manager: &str, _force: bool) -> ApiResult<Value> {
    let mut doc = current.clone();
    json_patch::merge(&mut doc, config);
    Ok(doc)
}
