//! Strategic merge patch (`application/strategic-merge-patch+json`) as Kubernetes applies it
//! (`k8s.io/apimachinery/pkg/util/strategicpatch`): maps merge, `null` deletes, lists follow the
//! field's patch strategy from [`crate::schema_strategy`] (merge by key, merge primitives, or
//! replace), and the directives `$patch` (`replace`, `delete`, `merge`), `$retainKeys`,
//! `$setElementOrder/<list>` and `$deleteFromPrimitiveList/<list>` are honoured.

use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};
use crate::registry::ResourceDef;
use crate::schema_strategy::Node;

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

/// Applies a strategic merge patch to `current` (an object of kind `def`).
pub fn apply(def: &ResourceDef, current: &Value, patch: &Value) -> ApiResult<Value> {
    apply_with(Node::root(def), current, patch)
}

/// Applies a strategic merge patch with the rules found from `root` (use [`Node::unknown`] for
/// plain merge semantics).
pub fn apply_with(root: Node, current: &Value, patch: &Value) -> ApiResult<Value> {
    let Value::Object(p) = patch else {
        return Err(bad("", "the patch is not a JSON object"));
    };
    let mut doc = current.clone();
    if !doc.is_object() {
        doc = Value::Object(Map::new());
    }
    merge_map(&mut doc, p, root, "")?;
    if doc.is_null() {
        return Err(bad("", "the patch deletes the whole object"));
    }
    Ok(doc)
}

fn bad(path: &str, what: &str) -> ApiError {
    let at = if path.is_empty() {
        String::new()
    } else {
        format!(" at {path}")
    };
    ApiError::bad_request(format!("error applying strategic merge patch{at}: {what}"))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Merges patch map `patch` into `target` (which becomes an object, or Null when deleted).
fn merge_map(
    target: &mut Value,
    patch: &Map<String, Value>,
    node: Node,
    path: &str,
) -> ApiResult<()> {
    match patch.get(PATCH) {
        None => {}
        Some(Value::String(d)) => match d.as_str() {
            "replace" => {
                let mut m = patch.clone();
                m.remove(PATCH);
                *target = Value::Object(Map::new());
                return merge_map(target, &m, node, path);
            }
            "delete" => {
                *target = Value::Null;
                return Ok(());
            }
            "merge" => {}
            other => return Err(bad(path, &format!("unknown patch type: {other:?} in map"))),
        },
        Some(other) => {
            return Err(bad(
                path,
                &format!("invalid $patch directive {other}: must be a string"),
            ));
        }
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        return Ok(());
    };

    if let Some(retain) = patch.get(RETAIN_KEYS) {
        let Value::Array(keys) = retain else {
            return Err(bad(path, "$retainKeys must be a list of field names"));
        };
        let keys: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
        if keys.len() != retain.as_array().map_or(0, Vec::len) {
            return Err(bad(path, "$retainKeys must be a list of strings"));
        }
        for k in patch.keys().filter(|k| !k.starts_with('$')) {
            if !keys.contains(&k.as_str()) {
                return Err(bad(
                    path,
                    &format!("field {k:?} is in the patch but not in $retainKeys"),
                ));
            }
        }
        t.retain(|k, _| keys.contains(&k.as_str()));
    }

    for (k, pv) in patch {
        if k == PATCH || k == RETAIN_KEYS {
            continue;
        }
        if let Some(field) = k.strip_prefix(DELETE_PRIMITIVE) {
            let Value::Array(del) = pv else {
                return Err(bad(&join(path, field), &format!("{k} must be a list")));
            };
            match t.get_mut(field) {
                Some(Value::Array(list)) => list.retain(|x| !del.contains(x)),
                None | Some(Value::Null) => {}
                Some(_) => {
                    return Err(bad(
                        &join(path, field),
                        &format!("{k}: {field} is not a list"),
                    ));
                }
            }
            continue;
        }
        if let Some(field) = k.strip_prefix(SET_ORDER) {
            if !pv.is_array() {
                return Err(bad(&join(path, field), &format!("{k} must be a list")));
            }
            if let Some(cur) = t.get(field)
                && !cur.is_array()
                && !cur.is_null()
            {
                return Err(bad(
                    &join(path, field),
                    &format!("{k}: {field} is not a list"),
                ));
            }
            continue;
        }
        if k.starts_with('$') {
            return Err(bad(path, &format!("unknown directive {k:?}")));
        }
        let child_path = join(path, k);
        match pv {
            Value::Null => {
                t.remove(k);
            }
            Value::Object(pm) => {
                let entry = t.entry(k.clone()).or_insert(Value::Null);
                merge_map(entry, pm, node.child(k), &child_path)?;
                if entry.is_null() {
                    t.remove(k);
                }
            }
            Value::Array(pa) => {
                let order = patch
                    .get(&format!("{SET_ORDER}{k}"))
                    .and_then(Value::as_array);
                let merged = merge_list(node, k, t.get(k), pa, order, &child_path)?;
                t.insert(k.clone(), merged);
            }
            other => {
                t.insert(k.clone(), other.clone());
            }
        }
    }
    // `$setElementOrder` alone (reordering without other changes).
    for (k, order) in patch {
        if let (Some(field), Value::Array(order)) = (k.strip_prefix(SET_ORDER), order)
            && !patch.contains_key(field)
            && let Some(Value::Array(cur)) = t.get(field)
        {
            let key = node.rule(field).map(|r| r.merge_key).unwrap_or_default();
            let reordered = set_order(cur.clone(), cur, order, key);
            t.insert(field.to_string(), Value::Array(reordered));
        }
    }
    Ok(())
}

fn merge_list(
    parent: Node,
    field: &str,
    current: Option<&Value>,
    patch: &[Value],
    order: Option<&Vec<Value>>,
    path: &str,
) -> ApiResult<Value> {
    let original: Vec<Value> = match current {
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    let rule = parent.rule(field);
    let merge = rule.is_some_and(|r| r.patch_strategy.split(',').any(|s| s == "merge"));
    // `{"$patch": "replace"}` as an element replaces the whole list.
    let mut replace = false;
    for el in patch {
        if let Some(d) = el.get(PATCH) {
            match d.as_str() {
                Some("replace") => replace = true,
                Some("delete") | Some("merge") if merge => {}
                _ => {
                    return Err(bad(
                        path,
                        &format!("invalid $patch directive {d} in a list"),
                    ));
                }
            }
        }
    }
    if replace || !merge {
        let items = patch.iter().filter(|v| v.get(PATCH).is_none());
        if !merge && patch.iter().any(|v| v.get(PATCH).is_some()) && !replace {
            return Err(bad(path, "$patch directive in a list that is not merged"));
        }
        return Ok(Value::Array(items.cloned().collect()));
    }
    let key = rule.map(|r| r.merge_key).unwrap_or_default();
    let items = parent.child(field).items();
    let mut out = original.clone();
    if key.is_empty() {
        // Primitive list merged as a set, keeping the original order.
        for v in patch {
            if v.is_object() || v.is_array() {
                return Err(bad(
                    path,
                    &format!("list of primitives has a non-primitive element {v}"),
                ));
            }
            if !out.contains(v) {
                out.push(v.clone());
            }
        }
    } else {
        for (i, pv) in patch.iter().enumerate() {
            let Value::Object(pm) = pv else {
                return Err(bad(
                    &format!("{path}[{i}]"),
                    &format!("element {pv} of a list merged by {key:?} is not an object"),
                ));
            };
            let Some(kv) = pm.get(key) else {
                return Err(bad(
                    &format!("{path}[{i}]"),
                    &format!("map: {pv} does not contain declared merge key: {key}"),
                ));
            };
            let pos = out.iter().position(|e| e.get(key) == Some(kv));
            if pm.get(PATCH).and_then(Value::as_str) == Some("delete") {
                out.retain(|e| e.get(key) != Some(kv));
                continue;
            }
            match pos {
                Some(p) => {
                    merge_map(&mut out[p], pm, items, &format!("{path}[{i}]"))?;
                    if out[p].is_null() {
                        out.remove(p);
                    }
                }
                None => {
                    let mut n = Value::Object(Map::new());
                    let mut pm = pm.clone();
                    pm.remove(PATCH);
                    merge_map(&mut n, &pm, items, &format!("{path}[{i}]"))?;
                    out.push(n);
                }
            }
        }
    }
    if let Some(order) = order {
        out = set_order(out, &original, order, key);
    }
    Ok(Value::Array(out))
}

/// Kubernetes' `normalizeElementOrder`: elements named in `order` come in that order, elements
/// only on the server keep their place relative to them (by their original positions).
fn set_order(merged: Vec<Value>, original: &[Value], order: &[Value], key: &str) -> Vec<Value> {
    let id = |v: &Value| -> Value {
        if key.is_empty() {
            v.clone()
        } else {
            v.get(key).cloned().unwrap_or(Value::Null)
        }
    };
    let order_ids: Vec<Value> = order.iter().map(&id).collect();
    let server_ids: Vec<Value> = original.iter().map(&id).collect();
    let (mut in_patch, server_only): (Vec<Value>, Vec<Value>) =
        merged.into_iter().partition(|v| order_ids.contains(&id(v)));
    in_patch.sort_by_key(|v| {
        order_ids
            .iter()
            .position(|o| *o == id(v))
            .unwrap_or(usize::MAX)
    });
    let index = |v: &Value| server_ids.iter().position(|s| *s == id(v));
    let (left, right) = (server_only, in_patch);
    let mut out = Vec::with_capacity(left.len() + right.len());
    let (mut i, mut j) = (0, 0);
    while i < left.len() || j < right.len() {
        if i >= left.len() {
            out.push(right[j].clone());
            j += 1;
        } else if j >= right.len() {
            out.push(left[i].clone());
            i += 1;
        } else {
            match (index(&left[i]), index(&right[j])) {
                (Some(l), Some(r)) if l < r => {
                    out.push(left[i].clone());
                    i += 1;
                }
                _ => {
                    out.push(right[j].clone());
                    j += 1;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::registry;

    fn deploy() -> &'static ResourceDef {
        registry::catalog::lookup_kind("apps", "Deployment").expect("deployments served")
    }

    fn smp(cur: Value, patch: Value) -> Value {
        apply(deploy(), &cur, &patch).expect("patch applies")
    }

    fn containers(cs: Value) -> Value {
        json!({"spec": {"template": {"spec": {"containers": cs}}}})
    }

    #[test]
    fn table() {
        // (name, current, patch, expected)
        let cases: Vec<(&str, Value, Value, Value)> = vec![
            (
                "map merge",
                json!({"metadata": {"labels": {"a": "1"}}}),
                json!({"metadata": {"labels": {"b": "2"}}}),
                json!({"metadata": {"labels": {"a": "1", "b": "2"}}}),
            ),
            (
                "null deletes",
                json!({"metadata": {"labels": {"a": "1", "b": "2"}}}),
                json!({"metadata": {"labels": {"a": null}}}),
                json!({"metadata": {"labels": {"b": "2"}}}),
            ),
            (
                "scalar replace",
                json!({"spec": {"replicas": 1}}),
                json!({"spec": {"replicas": 3}}),
                json!({"spec": {"replicas": 3}}),
            ),
            (
                "containers merge by name",
                containers(json!([{"name": "a", "image": "x"}, {"name": "b", "image": "y"}])),
                containers(json!([{"name": "b", "image": "z"}])),
                containers(json!([{"name": "a", "image": "x"}, {"name": "b", "image": "z"}])),
            ),
            (
                "new container appended",
                containers(json!([{"name": "a", "image": "x"}])),
                containers(json!([{"name": "c", "image": "q"}])),
                containers(json!([{"name": "a", "image": "x"}, {"name": "c", "image": "q"}])),
            ),
            (
                "$patch delete element",
                containers(json!([{"name": "a", "image": "x"}, {"name": "b", "image": "y"}])),
                containers(json!([{"name": "a", "$patch": "delete"}])),
                containers(json!([{"name": "b", "image": "y"}])),
            ),
            (
                "$patch replace list",
                containers(json!([{"name": "a", "image": "x"}, {"name": "b", "image": "y"}])),
                containers(json!([{"name": "c", "image": "z"}, {"$patch": "replace"}])),
                containers(json!([{"name": "c", "image": "z"}])),
            ),
            (
                "$patch replace map",
                json!({"metadata": {"labels": {"a": "1"}}}),
                json!({"metadata": {"labels": {"b": "2", "$patch": "replace"}}}),
                json!({"metadata": {"labels": {"b": "2"}}}),
            ),
            (
                "$patch delete map",
                json!({"metadata": {"labels": {"a": "1"}, "name": "n"}}),
                json!({"metadata": {"labels": {"$patch": "delete"}}}),
                json!({"metadata": {"name": "n"}}),
            ),
            (
                "env merge and delete by null-key",
                containers(
                    json!([{"name": "a", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}]),
                ),
                containers(json!([{"name": "a", "env": [{"name": "X", "$patch": "delete"}]}])),
                containers(json!([{"name": "a", "env": [{"name": "Y", "value": "2"}]}])),
            ),
            (
                "ports merge by containerPort",
                containers(json!([{"name": "a", "ports": [{"containerPort": 80}]}])),
                containers(json!([{"name": "a", "ports": [{"containerPort": 443}]}])),
                containers(
                    json!([{"name": "a", "ports": [{"containerPort": 80}, {"containerPort": 443}]}]),
                ),
            ),
            (
                "command is atomic",
                containers(json!([{"name": "a", "command": ["x", "y"]}])),
                containers(json!([{"name": "a", "command": ["z"]}])),
                containers(json!([{"name": "a", "command": ["z"]}])),
            ),
            (
                "finalizers merge as set",
                json!({"metadata": {"finalizers": ["a", "b"]}}),
                json!({"metadata": {"finalizers": ["c", "a"]}}),
                json!({"metadata": {"finalizers": ["a", "b", "c"]}}),
            ),
            (
                "$deleteFromPrimitiveList",
                json!({"metadata": {"finalizers": ["a", "b", "c"]}}),
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b"]}}),
                json!({"metadata": {"finalizers": ["a", "c"]}}),
            ),
            (
                "$setElementOrder reorders",
                containers(json!([{"name": "a"}, {"name": "b"}])),
                json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]}}}}),
                containers(json!([{"name": "b"}, {"name": "a"}])),
            ),
            (
                "$setElementOrder with server-only element kept in place",
                containers(json!([{"name": "a"}, {"name": "s"}, {"name": "b"}])),
                json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}], "containers": [{"name": "b", "image": "i"}]}}}}),
                // Kubernetes' mergeSortedSlice: "s" (server index 1) precedes "b" (server index 2).
                containers(json!([{"name": "s"}, {"name": "b", "image": "i"}, {"name": "a"}])),
            ),
            (
                "$retainKeys clears the other strategy",
                json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}}),
                json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
                json!({"spec": {"strategy": {"type": "Recreate"}}}),
            ),
            (
                "list without strategy replaced",
                json!({"spec": {"template": {"spec": {"tolerations": [{"key": "a"}]}}}}),
                json!({"spec": {"template": {"spec": {"tolerations": [{"key": "b"}]}}}}),
                json!({"spec": {"template": {"spec": {"tolerations": [{"key": "b"}]}}}}),
            ),
            (
                "volumes merge by name",
                json!({"spec": {"template": {"spec": {"volumes": [{"name": "v", "emptyDir": {}}]}}}}),
                json!({"spec": {"template": {"spec": {"volumes": [{"name": "w", "emptyDir": {}}]}}}}),
                json!({"spec": {"template": {"spec": {"volumes": [{"name": "v", "emptyDir": {}}, {"name": "w", "emptyDir": {}}]}}}}),
            ),
            (
                "$patch merge is the default",
                json!({"metadata": {"labels": {"a": "1"}}}),
                json!({"metadata": {"labels": {"b": "2", "$patch": "merge"}}}),
                json!({"metadata": {"labels": {"a": "1", "b": "2"}}}),
            ),
        ];
        for (name, cur, patch, want) in cases {
            assert_eq!(smp(cur, patch), want, "case {name}");
        }
    }

    #[test]
    fn service_ports_merge_by_port() {
        let svc = registry::catalog::lookup_kind("", "Service").expect("services served");
        let cur = json!({"spec": {"ports": [{"port": 80, "name": "http"}]}});
        let p = json!({"spec": {"ports": [{"port": 443, "name": "https"}]}});
        assert_eq!(
            apply(svc, &cur, &p).expect("applies"),
            json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}})
        );
    }

    #[test]
    fn bad_patches_are_400_naming_the_problem() {
        let cases = [
            (json!([1, 2]), "not a JSON object"),
            (
                containers(json!([{"image": "x"}])),
                "does not contain declared merge key: name",
            ),
            (containers(json!(["x"])), "is not an object"),
            (
                json!({"metadata": {"$deleteFromPrimitiveList/labels": ["a"]}}),
                "labels is not a list",
            ),
            (
                json!({"metadata": {"$setElementOrder/finalizers": "x"}}),
                "must be a list",
            ),
            (
                json!({"metadata": {"$patch": "explode"}}),
                "unknown patch type",
            ),
            (
                json!({"spec": {"strategy": {"$retainKeys": "type"}}}),
                "$retainKeys",
            ),
            (
                json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {}}}}),
                "not in $retainKeys",
            ),
            (json!({"$bogus": 1}), "unknown directive"),
        ];
        let cur = json!({"metadata": {"labels": {"a": "1"}, "finalizers": ["f"]}, "spec": {}});
        for (p, want) in cases {
            let err = apply(deploy(), &cur, &p).expect_err("patch must fail");
            assert_eq!(err.code, 400, "{p}");
            assert!(err.message.contains(want), "{p}: {}", err.message);
        }
    }
}
