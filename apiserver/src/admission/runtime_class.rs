//! RuntimeClass admission (pods, create): a pod's `spec.runtimeClassName` must name an existing
//! RuntimeClass; the class's `overhead.podFixed` becomes the pod's `spec.overhead` (a pod that
//! sets another overhead, or an overhead without such a class, is refused) and its
//! `scheduling` nodeSelector and tolerations are merged into the pod's.

use lotse_core::Quantity;
use serde_json::{Map, Value};

use super::Operation;
use super::{Admit, Handles, Request};
use crate::cache::reader::CacheReader;
use crate::error::{ApiError, ApiResult};
use crate::registry::resources::RUNTIMECLASSES;
use crate::registry::{ResourceDef, fields};
use async_trait::async_trait;

const OVERHEAD_MISMATCH: &str =
    "pod rejected: Pod's Overhead doesn't match RuntimeClass's defined Overhead";
const OVERHEAD_WITHOUT_CLASS: &str =
    "pod rejected: Pod Overhead set without corresponding RuntimeClass defined Overhead";

/// `admission.NewForbidden` for a pod that may have no name yet (generateName).
fn forbidden(def: &ResourceDef, name: &str, why: &str) -> ApiError {
    if name.is_empty() {
        let mut e = ApiError::forbidden(def, name, why);
        e.message = format!("{} is forbidden: {why}", def.group_resource());
        e
    } else {
        ApiError::forbidden(def, name, why)
    }
}

fn is_pod_create(def: &ResourceDef, op: Operation) -> bool {
    def.group.is_empty() && def.plural == "pods" && op == Operation::Create
}

/// `prepareObjects`: the pod's RuntimeClass (None without `runtimeClassName`), read from the
/// watch cache once it holds this apiserver's own writes; a missing class is refused.
async fn class_of(
    reader: &CacheReader,
    def: &ResourceDef,
    pod: &Value,
) -> ApiResult<Option<Value>> {
    let Some(class) = fields::str_at(pod, &["spec", "runtimeClassName"]) else {
        return Ok(None);
    };
    let cacher = reader.cacher(&RUNTIMECLASSES)?;
    cacher.wait_local().await?;
    let key = format!("/registry/{}/{class}", RUNTIMECLASSES.storage_prefix);
    let list = cacher.list(&key, None, 0, &|_| true).await;
    let found = list
        .items
        .iter()
        .filter_map(|o| serde_json::from_slice::<Value>(&o.raw).ok())
        .find(|o| fields::name(o) == class);
    match found {
        Some(c) => Ok(Some(c)),
        None => Err(forbidden(
            def,
            fields::name(pod),
            &format!("pod rejected: RuntimeClass {} not found", go_quote(class)),
        )),
    }
}

fn go_quote(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// The mutating half (`Admit`), run with the other mutating plugins.
pub async fn admit(
    reader: &CacheReader,
    def: &ResourceDef,
    op: Operation,
    pod: &mut Value,
) -> ApiResult<()> {
    if !is_pod_create(def, op) {
        return Ok(());
    }
    let class = class_of(reader, def, pod).await?;
    mutate(def, pod, class.as_ref())
}

/// The validating half (`Validate`), run with the other validating plugins.
pub async fn validate(
    reader: &CacheReader,
    def: &ResourceDef,
    op: Operation,
    pod: &Value,
) -> ApiResult<()> {
    if !is_pod_create(def, op) {
        return Ok(());
    }
    let class = class_of(reader, def, pod).await?;
    check_overhead(def, pod, class.as_ref())
}

/// Quantities compared by value (`apiequality.Semantic`), as a map of resource → milli-units.
fn resource_map(v: Option<&Value>) -> Option<Vec<(String, Option<i128>)>> {
    let m = v?.as_object()?;
    let mut out: Vec<(String, Option<i128>)> = m
        .iter()
        .map(|(k, q)| (k.clone(), Quantity::from_json(q).map(|q| q.milli)))
        .collect();
    out.sort();
    Some(out)
}

/// `setOverhead` and `setScheduling`.
pub fn mutate(def: &ResourceDef, pod: &mut Value, class: Option<&Value>) -> ApiResult<()> {
    let Some(class) = class else {
        return Ok(());
    };
    let name = fields::name(pod).to_string();
    if let Some(fixed) = class.pointer("/overhead/podFixed").filter(|v| !v.is_null()) {
        let given = pod.pointer("/spec/overhead").filter(|v| !v.is_null());
        if given
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
            && resource_map(given) != resource_map(Some(fixed))
        {
            return Err(forbidden(def, &name, OVERHEAD_MISMATCH));
        }
        fields::ensure_object(pod, &["spec"]).insert("overhead".into(), fixed.clone());
    }
    let Some(scheduling) = class.get("scheduling").filter(|v| v.is_object()) else {
        return Ok(());
    };
    let spec = fields::ensure_object(pod, &["spec"]);
    if let Some(Value::Object(rc_sel)) = scheduling.get("nodeSelector") {
        let mut sel: Map<String, Value> = match spec.get("nodeSelector") {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        for (k, v) in rc_sel {
            if let Some(pv) = sel.get(k)
                && pv != v
            {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                return Err(forbidden(
                    def,
                    &name,
                    &format!(
                        "conflict: runtimeClass.scheduling.nodeSelector[{k}] = {}; pod.spec.nodeSelector[{k}] = {}",
                        s(v),
                        s(pv)
                    ),
                ));
            }
            sel.insert(k.clone(), v.clone());
        }
        spec.insert("nodeSelector".into(), Value::Object(sel));
    }
    if let Some(Value::Array(extra)) = scheduling.get("tolerations") {
        let first: Vec<Value> = spec
            .get("tolerations")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        spec.insert(
            "tolerations".into(),
            Value::Array(merge_tolerations(&first, extra)),
        );
    }
    Ok(())
}

/// `validateOverhead`.
pub fn check_overhead(def: &ResourceDef, pod: &Value, class: Option<&Value>) -> ApiResult<()> {
    let name = fields::name(pod);
    let given = pod.pointer("/spec/overhead").filter(|v| !v.is_null());
    match class
        .and_then(|c| c.pointer("/overhead/podFixed"))
        .filter(|v| !v.is_null())
    {
        Some(fixed) => {
            if resource_map(given) != resource_map(Some(fixed)) {
                return Err(forbidden(def, name, OVERHEAD_MISMATCH));
            }
        }
        None => {
            if given.is_some() {
                return Err(forbidden(def, name, OVERHEAD_WITHOUT_CLASS));
            }
        }
    }
    Ok(())
}

fn t_str<'a>(t: &'a Value, k: &str) -> &'a str {
    t.get(k).and_then(Value::as_str).unwrap_or("")
}

fn norm(t: &Value) -> Value {
    let mut t = t.clone();
    if let Value::Object(m) = &mut t {
        m.retain(|_, v| !v.is_null() && v.as_str() != Some(""));
    }
    t
}

/// `isSuperset` (pkg/util/tolerations): `ss` tolerates everything `t` does.
fn is_superset(ss: &Value, t: &Value) -> bool {
    if norm(ss) == norm(t) {
        return true;
    }
    if t_str(t, "key") != t_str(ss, "key")
        && (!t_str(ss, "key").is_empty() || t_str(ss, "operator") != "Exists")
    {
        return false;
    }
    if t_str(t, "effect") != t_str(ss, "effect") && !t_str(ss, "effect").is_empty() {
        return false;
    }
    if t_str(ss, "effect") == "NoExecute"
        && let Some(ss_secs) = ss.get("tolerationSeconds").and_then(Value::as_i64)
    {
        match t.get("tolerationSeconds").and_then(Value::as_i64) {
            Some(t_secs) if t_secs <= ss_secs => {}
            _ => return false,
        }
    }
    match t_str(ss, "operator") {
        "Equal" | "" => t_str(t, "operator") == "Equal" && t_str(t, "value") == t_str(ss, "value"),
        "Exists" => true,
        _ => false,
    }
}

/// `tolerations.MergeTolerations`: both lists, without a toleration another one covers (of
/// equal ones the first stays).
pub fn merge_tolerations(first: &[Value], second: &[Value]) -> Vec<Value> {
    let all: Vec<&Value> = first.iter().chain(second).collect();
    let mut merged: Vec<Value> = Vec::new();
    'next: for (i, t) in all.iter().enumerate() {
        if merged.iter().any(|m| is_superset(m, t)) {
            continue;
        }
        for t2 in &all[i + 1..] {
            if norm(t) != norm(t2) && is_superset(t2, t) {
                continue 'next;
            }
        }
        merged.push((*t).clone());
    }
    merged
}

/// The RuntimeClass plugin: pods get their RuntimeClass's overhead and scheduling, and are
/// refused when the class is missing or the overhead was set by hand.
pub struct RuntimeClass;

#[async_trait]
impl Admit for RuntimeClass {
    fn name(&self) -> &'static str {
        "RuntimeClass"
    }

    async fn admit(&self, h: Handles<'_>, r: &Request<'_>, obj: &mut Value) -> ApiResult<()> {
        admit(h.reader, r.def, r.op, obj).await
    }

    async fn validate(&self, h: Handles<'_>, r: &Request<'_>, obj: &Value) -> ApiResult<()> {
        validate(h.reader, r.def, r.op, obj).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::resources::PODS;
    use serde_json::json;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default"}, "spec": spec})
    }

    fn class() -> Value {
        json!({"metadata": {"name": "gvisor"}, "handler": "runsc",
            "overhead": {"podFixed": {"cpu": "250m", "memory": "120Mi"}},
            "scheduling": {"nodeSelector": {"runtime": "gvisor"},
                "tolerations": [{"key": "runtime", "operator": "Equal", "value": "gvisor", "effect": "NoSchedule"}]}})
    }

    #[test]
    fn overhead_and_scheduling_come_from_the_class() {
        let mut p = pod(
            json!({"runtimeClassName": "gvisor", "nodeSelector": {"disk": "ssd"},
            "tolerations": [{"key": "a", "operator": "Exists"}]}),
        );
        mutate(&PODS, &mut p, Some(&class())).unwrap();
        assert_eq!(
            p["spec"]["overhead"],
            json!({"cpu": "250m", "memory": "120Mi"})
        );
        assert_eq!(
            p["spec"]["nodeSelector"],
            json!({"disk": "ssd", "runtime": "gvisor"})
        );
        assert_eq!(p["spec"]["tolerations"].as_array().map(Vec::len), Some(2));
        check_overhead(&PODS, &p, Some(&class())).unwrap();
        // Merging again adds nothing.
        mutate(&PODS, &mut p, Some(&class())).unwrap();
        assert_eq!(p["spec"]["tolerations"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn contradictions_are_refused_with_kubernetes_messages() {
        let mut p = pod(json!({"runtimeClassName": "gvisor", "overhead": {"cpu": "1"}}));
        let e = mutate(&PODS, &mut p, Some(&class())).unwrap_err();
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "pods \"p\" is forbidden: pod rejected: Pod's Overhead doesn't match RuntimeClass's defined Overhead"
        );
        // The same quantities written differently are equal.
        let mut p = pod(json!({"runtimeClassName": "gvisor",
            "overhead": {"cpu": "0.25", "memory": "120Mi"}}));
        mutate(&PODS, &mut p, Some(&class())).unwrap();
        let mut p = pod(json!({"runtimeClassName": "gvisor", "nodeSelector": {"runtime": "runc"}}));
        assert_eq!(
            mutate(&PODS, &mut p, Some(&class())).unwrap_err().message,
            "pods \"p\" is forbidden: conflict: runtimeClass.scheduling.nodeSelector[runtime] = gvisor; pod.spec.nodeSelector[runtime] = runc"
        );
        let p = pod(json!({"overhead": {"cpu": "1"}}));
        assert_eq!(
            check_overhead(&PODS, &p, None).unwrap_err().message,
            "pods \"p\" is forbidden: pod rejected: Pod Overhead set without corresponding RuntimeClass defined Overhead"
        );
    }

    #[test]
    fn merged_tolerations_drop_covered_ones() {
        let first =
            [json!({"key": "a", "operator": "Equal", "value": "1", "effect": "NoSchedule"})];
        let second = [
            json!({"key": "a", "operator": "Exists"}),
            json!({"key": "b", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}),
            json!({"key": "b", "operator": "Exists", "effect": "NoExecute"}),
        ];
        assert_eq!(
            merge_tolerations(&first, &second),
            [
                json!({"key": "a", "operator": "Exists"}),
                json!({"key": "b", "operator": "Exists", "effect": "NoExecute"}),
            ]
        );
    }
}
