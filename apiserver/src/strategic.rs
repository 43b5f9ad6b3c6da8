//! Strategic merge patch (`application/strategic-merge-patch+json`) with Kubernetes' patch
//! strategies and merge keys.

use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};
use crate::registry::ResourceDef;

/// Merge key of a list field by its name, as Kubernetes' Go struct tags declare
/// (`patchStrategy:"merge" patchMergeKey:"..."`).
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers" | "initContainers" | "ephemeralContainers" | "volumes" | "env" | "imagePullSecrets"
        | "volumeMounts" | "resourceClaims" | "conditions" | "ownerReferences" | "secrets" => match field {
            "volumeMounts" => "mountPath",
            "conditions" => "type",
            "ownerReferences" => "uid",
            "imagePullSecrets" | "secrets" => "name",
            _ => "name",
        },
        "ports" => "containerPort",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        "finalizers" => return None,
        _ => return None,
    })
}

/// Lists merged as sets of primitives (`patchStrategy:"merge"` on []string).
fn is_primitive_merge_list(field: &str) -> bool {
    matches!(field, "finalizers")
}

/// Applies a strategic merge patch to `current`.
pub fn apply(_def: &ResourceDef, current: &Value, patch: &Value) -> ApiResult<Value> {
    let Value::Object(p) = patch else {
        return Err(ApiError::bad_request("error decoding strategic merge patch: the patch is not a JSON object"));
    };
    let mut doc = current.clone();
    merge_object(&mut doc, p, "")?;
    Ok(doc)
}

fn merge_object(target: &mut Value, patch: &Map<String, Value>, path: &str) -> ApiResult<()> {
    if let Some(Value::String(d)) = patch.get("$patch") {
        match d.as_str() {
            "replace" => {
                let mut m = patch.clone();
                m.remove("$patch");
                *target = Value::Object(m);
                return Ok(());
            }
            "delete" => {
                *target = Value::Null;
                return Ok(());
            }
            "merge" => {}
            other => return Err(ApiError::bad_request(format!("unknown patch type {other:?} at {path}"))),
        }
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return Ok(()) };
    let retain: Option<Vec<String>> = patch.get("$retainKeys").and_then(Value::as_array).map(|a| {
        a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()
    });
    for (k, pv) in patch {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(del)) = (t.get_mut(field), pv) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        let child_path = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
        if pv.is_null() {
            t.remove(k);
            continue;
        }
        match pv {
            Value::Object(pm) => {
                let entry = t.entry(k.clone()).or_insert(Value::Null);
                merge_object(entry, pm, &child_path)?;
                if entry.is_null() {
                    t.remove(k);
                }
            }
            Value::Array(pa) => {
                let order = patch.get(&format!("$setElementOrder/{k}")).and_then(Value::as_array);
                let merged = merge_list(k, t.get(k), pa, order, &child_path)?;
                t.insert(k.clone(), merged);
            }
            other => {
                t.insert(k.clone(), other.clone());
            }
        }
    }
    if let Some(keys) = retain {
        t.retain(|k, _| keys.contains(k));
    }
    Ok(())
}

fn merge_list(field: &str, current: Option<&Value>, patch: &[Value], order: Option<&Vec<Value>>, path: &str) -> ApiResult<Value> {
    let cur: Vec<Value> = current.and_then(Value::as_array).cloned().unwrap_or_default();
    if patch.iter().any(|v| v.get("$patch").and_then(Value::as_str) == Some("replace")) {
        return Ok(Value::Array(
            patch.iter().filter(|v| v.get("$patch").is_none()).cloned().collect(),
        ));
    }
    if is_primitive_merge_list(field) {
        let mut out = cur;
        for v in patch {
            if !out.contains(v) {
                out.push(v.clone());
            }
        }
        return Ok(Value::Array(out));
    }
    let Some(key) = merge_key(field) else {
        return Ok(Value::Array(patch.to_vec()));
    };
    let mut out = cur;
    for (i, pv) in patch.iter().enumerate() {
        let Value::Object(pm) = pv else {
            return Err(ApiError::bad_request(format!("{path}[{i}]: expected an object in a list merged by {key:?}")));
        };
        let Some(kv) = pm.get(key) else {
            return Err(ApiError::bad_request(format!("map: {pv} does not contain declared merge key: {key}")));
        };
        let pos = out.iter().position(|e| e.get(key) == Some(kv));
        if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(p) = pos {
                out.remove(p);
            }
            continue;
        }
        match pos {
            Some(p) => merge_object(&mut out[p], pm, &format!("{path}[{i}]"))?,
            None => {
                let mut n = Value::Null;
                merge_object(&mut n, pm, &format!("{path}[{i}]"))?;
                out.push(n);
            }
        }
    }
    if let Some(order) = order {
        let keys: Vec<&Value> = order.iter().filter_map(|o| o.get(key)).collect();
        out.sort_by_key(|e| e.get(key).and_then(|k| keys.iter().position(|o| *o == k)).unwrap_or(usize::MAX));
    }
    Ok(Value::Array(out))
}
