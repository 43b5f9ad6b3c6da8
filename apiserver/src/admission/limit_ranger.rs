//! LimitRanger: container defaults (`default`, `defaultRequest`) and min/max constraints from
//! the namespace's LimitRanges, with Kubernetes' messages.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::quantity::Quantity;
use crate::error::{ApiError, ApiResult};
use crate::registry::fields;
use crate::registry::resources::{LIMITRANGES, PODS};
use crate::server::AppState;

async fn container_limits(state: &AppState, ns: &str) -> ApiResult<Vec<Value>> {
    let cacher = state.cacher(&LIMITRANGES)?;
    let prefix = format!("/registry/{}/{ns}/", LIMITRANGES.storage_prefix);
    let list = cacher.list(&prefix, None, 0, &|_| true).await;
    let mut out = Vec::new();
    for o in list.items {
        let Ok(v) = serde_json::from_slice::<Value>(&o.raw) else {
            continue;
        };
        for item in v
            .pointer("/spec/limits")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            if item.get("type").and_then(Value::as_str) == Some("Container") {
                out.push(item);
            }
        }
    }
    Ok(out)
}

fn map_of<'a>(v: &'a Value, key: &str) -> Option<&'a Map<String, Value>> {
    v.get(key).and_then(Value::as_object)
}

/// Applies container defaults and records what was set in `kubernetes.io/limit-ranger`.
pub async fn default_pod(state: &AppState, pod: &mut Value) -> ApiResult<()> {
    let ns = fields::namespace(pod).to_string();
    let items = container_limits(state, &ns).await?;
    if items.is_empty() {
        return Ok(());
    }
    let mut notes = Vec::new();
    for item in &items {
        // LimitRange defaulting: default falls back to max, defaultRequest to default, then min.
        let default = map_of(item, "default")
            .or_else(|| map_of(item, "max"))
            .cloned()
            .unwrap_or_default();
        let mut default_request = map_of(item, "defaultRequest").cloned().unwrap_or_default();
        for (k, v) in default
            .iter()
            .chain(map_of(item, "min").into_iter().flatten())
        {
            default_request.entry(k.clone()).or_insert(v.clone());
        }
        for key in ["initContainers", "containers"] {
            let Some(cs) = pod
                .pointer_mut(&format!("/spec/{key}"))
                .and_then(Value::as_array_mut)
            else {
                continue;
            };
            for c in cs {
                let cname = c
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let resources = fields::ensure_object(c, &["resources"]);
                let mut set_req = BTreeSet::new();
                let mut set_lim = BTreeSet::new();
                let limits = resources.entry("limits").or_insert_with(|| json!({}));
                if let Some(l) = limits.as_object_mut() {
                    for (k, v) in &default {
                        if !l.contains_key(k) {
                            l.insert(k.clone(), v.clone());
                            set_lim.insert(k.clone());
                        }
                    }
                }
                let requests = resources.entry("requests").or_insert_with(|| json!({}));
                if let Some(r) = requests.as_object_mut() {
                    for (k, v) in &default_request {
                        if !r.contains_key(k) {
                            r.insert(k.clone(), v.clone());
                            set_req.insert(k.clone());
                        }
                    }
                }
                for k in ["limits", "requests"] {
                    if resources
                        .get(k)
                        .and_then(Value::as_object)
                        .is_some_and(|m| m.is_empty())
                    {
                        resources.remove(k);
                    }
                }
                if !set_req.is_empty() {
                    notes.push(format!(
                        "{} request for {} {cname}",
                        set_req.into_iter().collect::<Vec<_>>().join(", "),
                        if key == "containers" {
                            "container"
                        } else {
                            "init container"
                        }
                    ));
                }
                if !set_lim.is_empty() {
                    notes.push(format!(
                        "{} limit for {} {cname}",
                        set_lim.into_iter().collect::<Vec<_>>().join(", "),
                        if key == "containers" {
                            "container"
                        } else {
                            "init container"
                        }
                    ));
                }
            }
        }
    }
    if !notes.is_empty() {
        let ann = fields::ensure_object(pod, &["metadata", "annotations"]);
        ann.insert(
            "kubernetes.io/limit-ranger".into(),
            json!(format!("LimitRanger plugin set: {}", notes.join("; "))),
        );
    }
    Ok(())
}

fn q(v: Option<&Value>) -> Option<Quantity> {
    v.and_then(Quantity::from_json)
}

/// Enforces `min`/`max` per container.
pub async fn validate_pod(state: &AppState, pod: &Value) -> ApiResult<()> {
    let ns = fields::namespace(pod);
    let items = container_limits(state, ns).await?;
    let mut errs = Vec::new();
    let spec = pod.get("spec").cloned().unwrap_or_default();
    for item in &items {
        for c in ["initContainers", "containers"]
            .iter()
            .filter_map(|k| spec.get(*k).and_then(Value::as_array))
            .flatten()
        {
            let req = c.pointer("/resources/requests");
            let lim = c.pointer("/resources/limits");
            for (res, min) in map_of(item, "min").into_iter().flatten() {
                let Some(enforced) = Quantity::from_json(min) else {
                    continue;
                };
                let r = q(req.and_then(|m| m.get(res)));
                let l = q(lim.and_then(|m| m.get(res)));
                match r {
                    None => errs.push(format!(
                        "minimum {res} usage per Container is {enforced}.  No request is specified"
                    )),
                    Some(r) if r.milli < enforced.milli => errs.push(format!(
                        "minimum {res} usage per Container is {enforced}, but request is {r}"
                    )),
                    _ => {
                        if let Some(l) = l
                            && l.milli < enforced.milli
                        {
                            errs.push(format!(
                                "minimum {res} usage per Container is {enforced}, but limit is {l}"
                            ));
                        }
                    }
                }
            }
            for (res, max) in map_of(item, "max").into_iter().flatten() {
                let Some(enforced) = Quantity::from_json(max) else {
                    continue;
                };
                let r = q(req.and_then(|m| m.get(res)));
                let l = q(lim.and_then(|m| m.get(res)));
                match l {
                    None => errs.push(format!(
                        "maximum {res} usage per Container is {enforced}.  No limit is specified"
                    )),
                    Some(l) if l.milli > enforced.milli => errs.push(format!(
                        "maximum {res} usage per Container is {enforced}, but limit is {l}"
                    )),
                    _ => {
                        if let Some(r) = r
                            && r.milli > enforced.milli
                        {
                            errs.push(format!("maximum {res} usage per Container is {enforced}, but request is {r}"));
                        }
                    }
                }
            }
        }
    }
    match errs.len() {
        0 => Ok(()),
        1 => Err(ApiError::forbidden(&PODS, fields::name(pod), &errs[0])),
        _ => Err(ApiError::forbidden(
            &PODS,
            fields::name(pod),
            &format!("[{}]", errs.join(", ")),
        )),
    }
}
