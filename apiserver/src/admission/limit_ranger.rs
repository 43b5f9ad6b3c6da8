//! LimitRanger: container defaults (`default`, `defaultRequest`) and the `Container`, `Pod` and
//! `PersistentVolumeClaim` constraints (`min`, `max`, `maxLimitRequestRatio`) of the namespace's
//! LimitRanges, with Kubernetes' messages.
//!
//! As in Kubernetes, pods are defaulted and checked on create only (container resources are
//! immutable afterwards and Lotse serves no `pods/resize`); claims on create and update.

use std::collections::{BTreeMap, BTreeSet};

use lotse_core::Quantity;
use lotse_core::qos::pod_qos_class;
use serde_json::{Map, Value, json};

use crate::cache::reader::CacheReader;
use crate::error::{ApiError, ApiResult};
use crate::registry::ResourceDef;
use crate::registry::fields;
use crate::registry::resources::LIMITRANGES;

use super::Operation;
use super::{Admit, Handles, Request};
use async_trait::async_trait;

/// A resource list (`cpu` → `500m`).
pub(crate) type ResourceList = BTreeMap<String, Quantity>;

/// The `spec.limits` of every LimitRange in `ns`, one entry per LimitRange.
async fn limit_ranges(reader: &CacheReader, ns: &str) -> ApiResult<Vec<Vec<Value>>> {
    let cacher = reader.cacher(&LIMITRANGES)?;
    // Read your own writes: a LimitRange created just before applies.
    cacher.wait_local().await?;
    let prefix = format!("/registry/{}/{ns}/", LIMITRANGES.storage_prefix);
    let list = cacher.list(&prefix, None, 0, &|_| true).await;
    Ok(list
        .items
        .iter()
        .filter_map(|o| serde_json::from_slice::<Value>(&o.raw).ok())
        .map(|v| {
            v.pointer("/spec/limits")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .collect())
}

fn list_of(v: Option<&Value>) -> ResourceList {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), Quantity::from_json(v)?)))
                .collect()
        })
        .unwrap_or_default()
}

fn item_list(item: &Value, key: &str) -> Option<Map<String, Value>> {
    item.get(key).and_then(Value::as_object).cloned()
}

fn item_type(item: &Value) -> &str {
    item.get("type").and_then(Value::as_str).unwrap_or_default()
}

/// The container defaults of one LimitRange after Kubernetes' LimitRange defaulting: a missing
/// `default` falls back to `max`, a missing `defaultRequest` to `default`, then to `min`.
fn container_defaults(limits: &[Value]) -> (Map<String, Value>, Map<String, Value>) {
    let (mut lim, mut req) = (Map::new(), Map::new());
    for item in limits.iter().filter(|i| item_type(i) == "Container") {
        let mut default = item_list(item, "default").unwrap_or_default();
        for (k, v) in item_list(item, "max").unwrap_or_default() {
            default.entry(k).or_insert(v);
        }
        let mut default_request = item_list(item, "defaultRequest").unwrap_or_default();
        for (k, v) in default
            .iter()
            .chain(item_list(item, "min").unwrap_or_default().iter())
        {
            default_request.entry(k.clone()).or_insert(v.clone());
        }
        lim.extend(default);
        req.extend(default_request);
    }
    (lim, req)
}

/// Sets missing requests/limits of one container; returns the annotation notes.
fn merge_container(
    c: &mut Value,
    lim: &Map<String, Value>,
    req: &Map<String, Value>,
    kind: &str,
    notes: &mut Vec<String>,
) {
    let cname = c
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let resources = fields::ensure_object(c, &["resources"]);
    let mut set = |field: &str, defaults: &Map<String, Value>| -> BTreeSet<String> {
        let mut done = BTreeSet::new();
        let entry = resources.entry(field).or_insert_with(|| json!({}));
        if !entry.is_object() {
            *entry = json!({});
        }
        if let Some(m) = entry.as_object_mut() {
            for (k, v) in defaults {
                if !m.contains_key(k) {
                    m.insert(k.clone(), v.clone());
                    done.insert(k.clone());
                }
            }
        }
        done
    };
    let set_lim = set("limits", lim);
    let set_req = set("requests", req);
    for k in ["limits", "requests"] {
        if resources
            .get(k)
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
        {
            resources.remove(k);
        }
    }
    for (set, what) in [(set_req, "request"), (set_lim, "limit")] {
        if !set.is_empty() {
            let names: Vec<String> = set.into_iter().collect();
            notes.push(format!("{} {what} for {kind} {cname}", names.join(", ")));
        }
    }
}

/// Applies container defaults (regular containers, then init containers) and records what was
/// set in the `kubernetes.io/limit-ranger` annotation; recomputes `status.qosClass`.
pub async fn default_pod(reader: &CacheReader, pod: &mut Value) -> ApiResult<()> {
    let ns = fields::namespace(pod).to_string();
    let mut changed = false;
    for limits in limit_ranges(reader, &ns).await? {
        let (lim, req) = container_defaults(&limits);
        if lim.is_empty() && req.is_empty() {
            continue;
        }
        let mut notes = Vec::new();
        for (key, kind) in [
            ("containers", "container"),
            ("initContainers", "init container"),
        ] {
            if let Some(cs) = pod
                .pointer_mut(&format!("/spec/{key}"))
                .and_then(Value::as_array_mut)
            {
                for c in cs {
                    merge_container(c, &lim, &req, kind, &mut notes);
                }
            }
        }
        if !notes.is_empty() {
            changed = true;
            fields::ensure_object(pod, &["metadata", "annotations"]).insert(
                "kubernetes.io/limit-ranger".into(),
                json!(format!("LimitRanger plugin set: {}", notes.join("; "))),
            );
        }
    }
    if changed && pod.pointer("/status/qosClass").is_some() {
        let qos = pod_qos_class(pod.get("spec").unwrap_or(&Value::Null)).as_str();
        fields::ensure_object(pod, &["status"]).insert("qosClass".into(), json!(qos));
    }
    Ok(())
}

fn containers<'a>(spec: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    spec.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn add_to(list: &mut ResourceList, k: &str, q: Quantity) {
    let e = list.entry(k.to_string()).or_default();
    *e = e.plus(q);
}

fn add_list(to: &mut ResourceList, from: &ResourceList) {
    for (k, v) in from {
        add_to(to, k, *v);
    }
}

fn max_list(to: &mut ResourceList, from: &ResourceList) {
    for (k, v) in from {
        match to.get(k) {
            Some(cur) if cur.milli >= v.milli => {}
            _ => {
                to.insert(k.clone(), *v);
            }
        }
    }
}

/// A pod's effective `field` (`requests` or `limits`) as Kubernetes computes it: the sum over
/// regular containers and restartable (sidecar) init containers, max'd with each ordinary init
/// container plus the sidecars started before it. Resources no container names are absent.
pub(crate) fn pod_totals(spec: &Value, field: &str) -> ResourceList {
    let mut total = ResourceList::new();
    for c in containers(spec, "containers") {
        add_list(
            &mut total,
            &list_of(c.pointer(&format!("/resources/{field}"))),
        );
    }
    let mut sidecars = ResourceList::new();
    let mut init = ResourceList::new();
    for c in containers(spec, "initContainers") {
        let own = list_of(c.pointer(&format!("/resources/{field}")));
        if c.get("restartPolicy").and_then(Value::as_str) == Some("Always") {
            add_list(&mut total, &own);
            add_list(&mut sidecars, &own);
            max_list(&mut init, &sidecars);
        } else {
            let mut tmp = own;
            add_list(&mut tmp, &sidecars);
            max_list(&mut init, &tmp);
        }
    }
    max_list(&mut total, &init);
    total
}

/// `minConstraint`: the request must exist and, like the limit, be at least `enforced`.
fn min_constraint(
    kind: &str,
    res: &str,
    enforced: Quantity,
    req: &ResourceList,
    lim: &ResourceList,
) -> Option<String> {
    let Some(r) = req.get(res) else {
        return Some(format!(
            "minimum {res} usage per {kind} is {enforced}.  No request is specified"
        ));
    };
    if r.milli < enforced.milli {
        return Some(format!(
            "minimum {res} usage per {kind} is {enforced}, but request is {r}"
        ));
    }
    match lim.get(res) {
        Some(l) if l.milli < enforced.milli => Some(format!(
            "minimum {res} usage per {kind} is {enforced}, but limit is {l}"
        )),
        _ => None,
    }
}

/// `maxConstraint`: the limit must exist and, like the request, be at most `enforced`.
fn max_constraint(
    kind: &str,
    res: &str,
    enforced: Quantity,
    req: &ResourceList,
    lim: &ResourceList,
) -> Option<String> {
    let Some(l) = lim.get(res) else {
        return Some(format!(
            "maximum {res} usage per {kind} is {enforced}.  No limit is specified"
        ));
    };
    if l.milli > enforced.milli {
        return Some(format!(
            "maximum {res} usage per {kind} is {enforced}, but limit is {l}"
        ));
    }
    match req.get(res) {
        Some(r) if r.milli > enforced.milli => Some(format!(
            "maximum {res} usage per {kind} is {enforced}, but request is {r}"
        )),
        _ => None,
    }
}

/// `maxRequestConstraint` (claims): the request must exist and be at most `enforced`.
fn max_request_constraint(
    kind: &str,
    res: &str,
    enforced: Quantity,
    req: &ResourceList,
) -> Option<String> {
    match req.get(res) {
        None => Some(format!(
            "maximum {res} usage per {kind} is {enforced}.  No request is specified"
        )),
        Some(r) if r.milli > enforced.milli => Some(format!(
            "maximum {res} usage per {kind} is {enforced}, but request is {r}"
        )),
        _ => None,
    }
}

/// `limitRequestRatioConstraint`: limit / request must not exceed `enforced`.
fn ratio_constraint(
    kind: &str,
    res: &str,
    enforced: Quantity,
    req: &ResourceList,
    lim: &ResourceList,
) -> Option<String> {
    let r = req.get(res).map(|q| q.milli).unwrap_or(0);
    if r == 0 {
        return Some(format!(
            "{res} max limit to request ratio per {kind} is {enforced}, but no request is specified or request is 0"
        ));
    }
    let l = lim.get(res).map(|q| q.milli).unwrap_or(0);
    if l == 0 {
        return Some(format!(
            "{res} max limit to request ratio per {kind} is {enforced}, but no limit is specified or limit is 0"
        ));
    }
    let observed = l as f64 / r as f64;
    // Compare in milli-units, as Kubernetes does while values fit.
    if observed * 1000.0 > enforced.milli as f64 {
        return Some(format!(
            "{res} max limit to request ratio per {kind} is {enforced}, but provided ratio is {observed:.6}"
        ));
    }
    None
}

/// Min, max and ratio constraints of one limit item against a request/limit pair.
fn check_item(
    item: &Value,
    kind: &str,
    req: &ResourceList,
    lim: &ResourceList,
    errs: &mut Vec<String>,
) {
    for (res, enforced) in list_of(item.get("min")) {
        errs.extend(min_constraint(kind, &res, enforced, req, lim));
    }
    for (res, enforced) in list_of(item.get("max")) {
        errs.extend(max_constraint(kind, &res, enforced, req, lim));
    }
    for (res, enforced) in list_of(item.get("maxLimitRequestRatio")) {
        errs.extend(ratio_constraint(kind, &res, enforced, req, lim));
    }
}

/// Every violation of `limits` by a pod, in Kubernetes' order.
fn pod_violations(limits: &[Value], pod: &Value) -> Vec<String> {
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    let mut errs = Vec::new();
    for item in limits {
        match item_type(item) {
            "Container" => {
                for c in containers(spec, "containers").chain(containers(spec, "initContainers")) {
                    let req = list_of(c.pointer("/resources/requests"));
                    let lim = list_of(c.pointer("/resources/limits"));
                    check_item(item, "Container", &req, &lim, &mut errs);
                }
            }
            "Pod" => {
                let req = pod_totals(spec, "requests");
                let lim = pod_totals(spec, "limits");
                check_item(item, "Pod", &req, &lim, &mut errs);
            }
            _ => {}
        }
    }
    errs
}

/// Every violation of `limits` by a PersistentVolumeClaim (its requests; limits are ignored).
fn claim_violations(limits: &[Value], pvc: &Value) -> Vec<String> {
    let req = list_of(pvc.pointer("/spec/resources/requests"));
    let mut errs = Vec::new();
    for item in limits
        .iter()
        .filter(|i| item_type(i) == "PersistentVolumeClaim")
    {
        for (res, enforced) in list_of(item.get("min")) {
            errs.extend(min_constraint(
                "PersistentVolumeClaim",
                &res,
                enforced,
                &req,
                &ResourceList::new(),
            ));
        }
        for (res, enforced) in list_of(item.get("max")) {
            errs.extend(max_request_constraint(
                "PersistentVolumeClaim",
                &res,
                enforced,
                &req,
            ));
        }
    }
    errs
}

/// Kubernetes' error aggregate: one message as is, several (deduplicated) as `[a, b]`.
fn aggregate(errs: Vec<String>) -> Option<String> {
    let mut seen = BTreeSet::new();
    let unique: Vec<String> = errs
        .into_iter()
        .filter(|e| seen.insert(e.clone()))
        .collect();
    match unique.len() {
        0 => None,
        1 => unique.into_iter().next(),
        _ => Some(format!("[{}]", unique.join(", "))),
    }
}

/// Enforces the namespace's LimitRanges on pods (create) and PersistentVolumeClaims (create
/// and update).
pub async fn validate(
    reader: &CacheReader,
    def: &ResourceDef,
    op: Operation,
    obj: &Value,
) -> ApiResult<()> {
    if !def.group.is_empty() {
        return Ok(());
    }
    let check: fn(&[Value], &Value) -> Vec<String> = match (def.plural, op) {
        ("pods", Operation::Create) => pod_violations,
        ("persistentvolumeclaims", _) => claim_violations,
        _ => return Ok(()),
    };
    let mut errs = Vec::new();
    for limits in limit_ranges(reader, fields::namespace(obj)).await? {
        errs.extend(check(&limits, obj));
    }
    match aggregate(errs) {
        None => Ok(()),
        Some(why) => Err(ApiError::forbidden(def, fields::name(obj), &why)),
    }
}

/// The LimitRanger plugin: a new pod's resources default from its namespace's LimitRanges, and
/// every write is checked against them.
pub struct LimitRanger;

#[async_trait]
impl Admit for LimitRanger {
    fn name(&self) -> &'static str {
        "LimitRanger"
    }

    async fn admit(&self, h: Handles<'_>, r: &Request<'_>, obj: &mut Value) -> ApiResult<()> {
        if r.is_pod_create() {
            default_pod(h.reader, obj).await?;
        }
        Ok(())
    }

    async fn validate(&self, h: Handles<'_>, r: &Request<'_>, obj: &Value) -> ApiResult<()> {
        validate(h.reader, r.def, r.op, obj).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap()
    }

    #[test]
    fn defaults_fall_back_per_key() {
        let limits = vec![
            json!({"type": "Container", "max": {"cpu": "2", "memory": "1Gi"},
            "default": {"cpu": "1"}, "min": {"cpu": "100m"}}),
        ];
        let (lim, req) = container_defaults(&limits);
        assert_eq!(json!(lim), json!({"cpu": "1", "memory": "1Gi"}));
        assert_eq!(json!(req), json!({"cpu": "1", "memory": "1Gi"}));
        let mut pod = json!({"spec": {
            "containers": [{"name": "app", "resources": {"requests": {"cpu": "200m"}}}],
            "initContainers": [{"name": "setup"}]}});
        let mut notes = Vec::new();
        for (key, kind) in [
            ("containers", "container"),
            ("initContainers", "init container"),
        ] {
            for c in pod["spec"][key].as_array_mut().unwrap() {
                merge_container(c, &lim, &req, kind, &mut notes);
            }
        }
        assert_eq!(
            notes,
            [
                "memory request for container app",
                "cpu, memory limit for container app",
                "cpu, memory request for init container setup",
                "cpu, memory limit for init container setup"
            ]
        );
        assert_eq!(
            pod["spec"]["initContainers"][0]["resources"]["limits"]["cpu"],
            "1"
        );
    }

    #[test]
    fn pod_limits_sum_containers_and_respect_sidecars() {
        let spec = json!({
            "containers": [
                {"name": "a", "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "500m"}}},
                {"name": "b", "resources": {"limits": {"cpu": "2"}, "requests": {"cpu": "1"}}}],
            "initContainers": [
                {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "250m"}}},
                {"name": "big", "resources": {"requests": {"cpu": "4"}}}]});
        assert_eq!(pod_totals(&spec, "limits")["cpu"].to_string(), "3");
        // max(0.5 + 1 + 0.25, 4 + 0.25)
        assert_eq!(pod_totals(&spec, "requests")["cpu"].to_string(), "4250m");
        let pod = json!({"spec": spec});
        let limits = vec![json!({"type": "Pod", "max": {"cpu": "2"}})];
        assert_eq!(
            pod_violations(&limits, &pod),
            ["maximum cpu usage per Pod is 2, but limit is 3"]
        );
    }

    #[test]
    fn ratio_and_min_messages_match_kubernetes() {
        let req = ResourceList::from([("cpu".to_string(), q("250m"))]);
        let lim = ResourceList::from([("cpu".to_string(), q("1"))]);
        assert_eq!(
            ratio_constraint("Container", "cpu", q("2"), &req, &lim).unwrap(),
            "cpu max limit to request ratio per Container is 2, but provided ratio is 4.000000"
        );
        assert!(ratio_constraint("Container", "cpu", q("4"), &req, &lim).is_none());
        assert_eq!(
            ratio_constraint("Pod", "memory", q("2"), &req, &lim).unwrap(),
            "memory max limit to request ratio per Pod is 2, but no request is specified or request is 0"
        );
        assert_eq!(
            min_constraint("Container", "cpu", q("500m"), &req, &lim).unwrap(),
            "minimum cpu usage per Container is 500m, but request is 250m"
        );
        assert_eq!(
            max_request_constraint(
                "PersistentVolumeClaim",
                "storage",
                q("1Gi"),
                &ResourceList::from([("storage".to_string(), q("2Gi"))])
            )
            .unwrap(),
            "maximum storage usage per PersistentVolumeClaim is 1Gi, but request is 2Gi"
        );
        assert_eq!(
            aggregate(vec!["a".into(), "b".into(), "a".into()]).unwrap(),
            "[a, b]"
        );
        assert_eq!(aggregate(vec!["a".into(), "a".into()]).unwrap(), "a");
    }
}
