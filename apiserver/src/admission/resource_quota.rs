//! ResourceQuota: Kubernetes' quota evaluators (pods, services, persistentvolumeclaims, the
//! legacy core counts and `count/<resource>.<group>` for every resource), quota scopes
//! (`spec.scopes` and `spec.scopeSelector`), and admission: `status.used + delta <= hard` for
//! every matching quota, charged with a guarded status write so concurrent creates cannot both
//! take the last unit. A background loop recomputes `status.used` from the watch caches after
//! every change, as Kubernetes' quota controller does.
//!
//! Admission evaluates creates of everything and spec updates of services and claims (where
//! usage can grow: a type change, a resize), charging only the growth. Pods are charged on
//! create only: their resources change only through `pods/resize`, which Lotse does not serve.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use lotse_core::Quantity;
use lotse_core::qos::{QosClass, pod_qos_class};
use serde_json::{Map, Value, json};

use super::Operation;
use super::limit_ranger::{ResourceList, pod_totals};
use super::{Admit, Handles, Request};
use crate::cache::cacher::{Broadcast, WatchStart};
use crate::cache::reader::CacheReader;
use crate::error::{ApiError, ApiResult};
use crate::registry::resources::RESOURCEQUOTAS;
use crate::registry::{self, ResourceDef, fields};
use crate::write::{ObjectWriter, UpdateScope};
use async_trait::async_trait;

/// Quota names the pod evaluator tracks besides hugepages and extended resources.
const POD_RESOURCES: &[&str] = &[
    "count/pods",
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "pods",
];

/// Quota names that oblige every container to state the resource (Kubernetes keeps this for
/// backward compatibility, for cpu and memory only).
const VALIDATION_SET: &[&str] = &[
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

/// `<storage-class>.storageclass.storage.k8s.io/<resource>` quotas claims per storage class.
const STORAGE_CLASS_SUFFIX: &str = ".storageclass.storage.k8s.io/";

const ONE: Quantity = Quantity {
    milli: 1000,
    binary: false,
};

fn is_core(def: &ResourceDef, plural: &str) -> bool {
    def.group.is_empty() && def.plural == plural
}

fn is_pod(def: &ResourceDef) -> bool {
    is_core(def, "pods")
}

/// `count/<resource>` for core resources, `count/<resource>.<group>` otherwise.
fn object_count_name(def: &ResourceDef) -> String {
    if def.group.is_empty() {
        format!("count/{}", def.plural)
    } else {
        format!("count/{}.{}", def.plural, def.group)
    }
}

/// Kubernetes' `IsExtendedResourceName`: a domain-prefixed name outside `kubernetes.io/`.
fn is_extended(name: &str) -> bool {
    let native = !name.contains('/') || name.contains("kubernetes.io/");
    if native || name.starts_with("requests.") {
        return false;
    }
    let (prefix, rest) = name.split_once('/').unwrap_or(("", name));
    !prefix.is_empty()
        && !rest.is_empty()
        && rest.len() <= 63
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && rest.starts_with(|c: char| c.is_ascii_alphanumeric())
        && rest.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Whether quota key `key` tracks objects of `def` (the evaluators' `MatchingResources`).
fn matches_resource(def: &ResourceDef, key: &str) -> bool {
    if key == object_count_name(def) {
        return true;
    }
    if !def.group.is_empty() {
        return false;
    }
    match def.plural {
        "pods" => {
            POD_RESOURCES.contains(&key)
                || key.starts_with("hugepages-")
                || key.starts_with("requests.hugepages-")
                || key.strip_prefix("requests.").is_some_and(is_extended)
        }
        "services" => matches!(
            key,
            "services" | "services.nodeports" | "services.loadbalancers"
        ),
        "persistentvolumeclaims" => {
            matches!(key, "persistentvolumeclaims" | "requests.storage")
                || ["persistentvolumeclaims", "requests.storage"]
                    .iter()
                    .any(|r| key.ends_with(&format!("{STORAGE_CLASS_SUFFIX}{r}")))
        }
        "configmaps" | "secrets" | "resourcequotas" | "replicationcontrollers" => key == def.plural,
        _ => false,
    }
}

/// Kubernetes' `QuotaV1Pod`: terminal pods, and pods past their deletion grace period, no
/// longer use compute quota (they still count in `count/pods`).
fn pod_uses_compute(pod: &Value) -> bool {
    if matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded") | Some("Failed")
    ) {
        return false;
    }
    if let (Some(ts), Some(grace)) = (
        pod.pointer("/metadata/deletionTimestamp")
            .and_then(Value::as_str),
        pod.pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64),
    ) && let Ok(ts) = ts.parse::<jiff::Timestamp>()
        && let Ok(deadline) = ts.checked_add(jiff::SignedDuration::from_secs(grace))
        && jiff::Timestamp::now() > deadline
    {
        return false;
    }
    true
}

fn add(u: &mut ResourceList, k: &str, q: Quantity) {
    let e = u.entry(k.to_string()).or_default();
    *e = e.plus(q);
}

/// The pod evaluator's usage (`PodUsageFunc` + `podComputeUsageHelper`).
fn pod_usage(pod: &Value, u: &mut ResourceList) {
    if !pod_uses_compute(pod) {
        return;
    }
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    let mut requests = pod_totals(spec, "requests");
    let mut limits = pod_totals(spec, "limits");
    for (k, v) in spec
        .get("overhead")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if let Some(q) = Quantity::from_json(v) {
            add(&mut requests, k, q);
            if let Some(l) = limits.get_mut(k) {
                *l = l.plus(q);
            }
        }
    }
    u.insert("pods".into(), ONE);
    for res in ["cpu", "memory", "ephemeral-storage"] {
        if let Some(r) = requests.get(res) {
            u.insert(res.into(), *r);
            u.insert(format!("requests.{res}"), *r);
        }
        if let Some(l) = limits.get(res) {
            u.insert(format!("limits.{res}"), *l);
        }
    }
    for (res, r) in &requests {
        if res.starts_with("hugepages-") {
            u.insert(res.clone(), *r);
            u.insert(format!("requests.{res}"), *r);
        }
        if is_extended(res) {
            u.insert(format!("requests.{res}"), *r);
        }
    }
}

/// The service evaluator's usage: node ports by intent (allocated ones may not exist yet).
fn service_usage(svc: &Value, u: &mut ResourceList) {
    u.insert("services".into(), ONE);
    let ports: Vec<&Value> = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let count = |n: usize| Quantity {
        milli: n as i128 * 1000,
        binary: false,
    };
    let (mut node_ports, mut lbs) = (Quantity::default(), Quantity::default());
    match svc.pointer("/spec/type").and_then(Value::as_str) {
        Some("NodePort") => node_ports = count(ports.len()),
        Some("LoadBalancer") => {
            let allocate = svc
                .pointer("/spec/allocateLoadBalancerNodePorts")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            node_ports = if allocate {
                count(ports.len())
            } else {
                count(
                    ports
                        .iter()
                        .filter(|p| p.get("nodePort").and_then(Value::as_i64).unwrap_or(0) != 0)
                        .count(),
                )
            };
            lbs = ONE;
        }
        _ => {}
    }
    u.insert("services.nodeports".into(), node_ports);
    u.insert("services.loadbalancers".into(), lbs);
}

/// The claim evaluator's usage: the larger of the requested and the allocated size, in whole
/// bytes, also charged to the claim's storage class.
fn claim_usage(pvc: &Value, u: &mut ResourceList) {
    u.insert("persistentvolumeclaims".into(), ONE);
    let class = pvc
        .pointer("/metadata/annotations/volume.beta.kubernetes.io~1storage-class")
        .or_else(|| pvc.pointer("/spec/storageClassName"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !class.is_empty() {
        u.insert(
            format!("{class}{STORAGE_CLASS_SUFFIX}persistentvolumeclaims"),
            ONE,
        );
    }
    let requested = pvc
        .pointer("/spec/resources/requests/storage")
        .and_then(Quantity::from_json);
    let allocated = pvc
        .pointer("/status/allocatedResources/storage")
        .and_then(Quantity::from_json);
    let storage = match (requested, allocated) {
        (Some(r), Some(a)) if a.milli > r.milli => Some(a),
        (Some(r), _) => Some(r),
        (None, a) => a,
    };
    if let Some(mut s) = storage {
        s.milli = (s.milli + 999).div_euclid(1000) * 1000;
        u.insert("requests.storage".into(), s);
        if !class.is_empty() {
            u.insert(format!("{class}{STORAGE_CLASS_SUFFIX}requests.storage"), s);
        }
    }
}

/// What one object uses, by quota name (the evaluators' `Usage`).
fn usage(def: &ResourceDef, obj: &Value) -> ResourceList {
    let mut u = ResourceList::new();
    u.insert(object_count_name(def), ONE);
    if !def.group.is_empty() {
        return u;
    }
    match def.plural {
        "pods" => pod_usage(obj, &mut u),
        "services" => service_usage(obj, &mut u),
        "persistentvolumeclaims" => claim_usage(obj, &mut u),
        "configmaps" | "secrets" | "resourcequotas" | "replicationcontrollers" => {
            u.insert(def.plural.to_string(), ONE);
        }
        _ => {}
    }
    u
}

/// One `spec.scopes` entry (operator Exists) or `spec.scopeSelector.matchExpressions` entry.
#[derive(Debug)]
struct ScopeSelector {
    scope: String,
    operator: String,
    values: Vec<String>,
}

fn scope_selectors(quota: &Value) -> Vec<ScopeSelector> {
    let mut out: Vec<ScopeSelector> = quota
        .pointer("/spec/scopes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|s| ScopeSelector {
            scope: s.to_string(),
            operator: "Exists".into(),
            values: Vec::new(),
        })
        .collect();
    for e in quota
        .pointer("/spec/scopeSelector/matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default();
        out.push(ScopeSelector {
            scope: s("scopeName").to_string(),
            operator: s("operator").to_string(),
            values: e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
        });
    }
    out
}

fn uses_cross_namespace_affinity(spec: &Value) -> bool {
    let cross = |term: &Value| {
        term.get("namespaces")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
            || term.get("namespaceSelector").is_some_and(|s| !s.is_null())
    };
    ["podAffinity", "podAntiAffinity"].iter().any(|kind| {
        let Some(a) = spec.pointer(&format!("/affinity/{kind}")) else {
            return false;
        };
        let required = a
            .get("requiredDuringSchedulingIgnoredDuringExecution")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        let preferred = a
            .get("preferredDuringSchedulingIgnoredDuringExecution")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|w| w.get("podAffinityTerm"));
        required.chain(preferred).any(cross)
    })
}

/// Whether `obj` is in one scope (`podMatchesScopeFunc`); only pods are ever in a scope.
fn matches_scope(def: &ResourceDef, obj: &Value, sel: &ScopeSelector) -> bool {
    if !is_pod(def) {
        return false;
    }
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let terminating = spec
        .get("activeDeadlineSeconds")
        .and_then(Value::as_i64)
        .is_some_and(|s| s >= 0);
    let best_effort = || pod_qos_class(spec) == QosClass::BestEffort;
    match sel.scope.as_str() {
        "Terminating" => terminating,
        "NotTerminating" => !terminating,
        "BestEffort" => best_effort(),
        "NotBestEffort" => !best_effort(),
        "PriorityClass" => {
            let class = spec
                .get("priorityClassName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            // The pod's class is matched as the label `PriorityClass=<class>`, which always
            // exists (possibly empty) except for the plain Exists test.
            match sel.operator.as_str() {
                "Exists" => !class.is_empty(),
                "In" => sel.values.iter().any(|v| v == class),
                "NotIn" => !sel.values.iter().any(|v| v == class),
                _ => false,
            }
        }
        "CrossNamespacePodAffinity" => uses_cross_namespace_affinity(spec),
        _ => false,
    }
}

fn hard_of(quota: &Value) -> Map<String, Value> {
    quota
        .pointer("/spec/hard")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// Kubernetes' `Matches`: the quota names a resource of `def` and `obj` is in all its scopes.
fn matches_quota(def: &ResourceDef, obj: &Value, quota: &Value) -> bool {
    hard_of(quota).keys().any(|k| matches_resource(def, k))
        && scope_selectors(quota)
            .iter()
            .all(|s| matches_scope(def, obj, s))
}

async fn objects(reader: &CacheReader, def: &ResourceDef, ns: &str) -> ApiResult<Vec<Value>> {
    let cacher = reader.cacher(def)?;
    // An object created just before through this apiserver counts.
    cacher.wait_local().await?;
    let prefix = format!("/registry/{}/{ns}/", def.storage_prefix);
    let list = cacher.list(&prefix, None, 0, &|_| true).await;
    Ok(list
        .items
        .iter()
        .filter_map(|o| serde_json::from_slice(&o.raw).ok())
        .collect())
}

/// Current usage of `quota`'s hard keys in `ns` (objects in its scopes), from the caches.
async fn live_usage(reader: &CacheReader, ns: &str, quota: &Value) -> ApiResult<ResourceList> {
    let hard = hard_of(quota);
    let mut used: ResourceList = hard
        .iter()
        .map(|(k, h)| {
            let binary = Quantity::from_json(h).is_some_and(|q| q.binary);
            (k.clone(), Quantity { milli: 0, binary })
        })
        .collect();
    let selectors = scope_selectors(quota);
    for def in registry::catalog::all()
        .iter()
        .filter(|d| d.namespaced && hard.keys().any(|k| matches_resource(d, k)))
    {
        for o in objects(reader, def, ns).await? {
            if !selectors.iter().all(|s| matches_scope(def, &o, s)) {
                continue;
            }
            for (k, q) in usage(def, &o) {
                if let Some(total) = used.get_mut(&k) {
                    *total = total.plus(q);
                }
            }
        }
    }
    Ok(used)
}

/// The quotas of `ns`, read from the watch cache once it holds this apiserver's own writes (a
/// quota created just before is seen; charges re-read each quota from storage).
async fn quotas(reader: &CacheReader, ns: &str) -> ApiResult<Vec<Value>> {
    reader.cacher(&RESOURCEQUOTAS)?.wait_local().await?;
    objects(reader, &RESOURCEQUOTAS, ns).await
}

fn pretty(m: &ResourceList) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Kubernetes' pod constraint: a quota on cpu/memory requires every container to state it
/// (`must specify limits.cpu for: a,b; requests.memory for: a`).
fn missing_specs(pod: &Value, hard: &Map<String, Value>) -> Option<String> {
    let required: Vec<&str> = hard
        .keys()
        .map(String::as_str)
        .filter(|k| VALIDATION_SET.contains(k))
        .collect();
    let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for c in ["containers", "initContainers"]
        .iter()
        .filter_map(|k| pod.pointer(&format!("/spec/{k}")).and_then(Value::as_array))
        .flatten()
    {
        for key in &required {
            let (field, res) = match *key {
                "cpu" | "requests.cpu" => ("requests", "cpu"),
                "memory" | "requests.memory" => ("requests", "memory"),
                "limits.cpu" => ("limits", "cpu"),
                _ => ("limits", "memory"),
            };
            if c.pointer(&format!("/resources/{field}/{res}")).is_none() {
                let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
                missing.entry(key).or_default().insert(name.to_string());
            }
        }
    }
    if missing.is_empty() {
        return None;
    }
    let parts: Vec<String> = missing
        .iter()
        .map(|(k, names)| {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            format!("{k} for: {}", names.join(","))
        })
        .collect();
    Some(format!("must specify {}", parts.join("; ")))
}

fn used_of(quota: &Value) -> ResourceList {
    quota
        .pointer("/status/used")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), Quantity::from_json(v)?)))
                .collect()
        })
        .unwrap_or_default()
}

fn to_json(m: &ResourceList) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| (k.clone(), json!(v.to_string())))
            .collect(),
    )
}

/// Whether admission evaluates this write (the evaluators' `Handles`): every create; spec
/// updates of services (a type change adds node ports) and claims (a resize). Status writes
/// never change the spec, so they are left alone as Kubernetes skips subresources.
fn handles(def: &ResourceDef, op: Operation, obj: &Value, old: Option<&Value>) -> bool {
    match op {
        Operation::Create => true,
        Operation::Update => {
            (is_core(def, "services") || is_core(def, "persistentvolumeclaims"))
                && old.is_some_and(|o| o.get("spec") != obj.get("spec"))
        }
    }
}

/// What the write adds: the object's usage, less the old object's on update (never negative),
/// without zeros.
fn delta_usage(def: &ResourceDef, obj: &Value, old: Option<&Value>) -> ResourceList {
    let mut delta = usage(def, obj);
    if let Some(old) = old {
        let prev = usage(def, old);
        for (k, v) in delta.iter_mut() {
            let p = prev.get(k).map(|q| q.milli).unwrap_or(0);
            v.milli = (v.milli - p).max(0);
        }
    }
    delta.retain(|_, v| v.milli != 0);
    delta
}

/// Checks `delta` against one quota; Ok(new status.used) or the `exceeded quota` error text.
async fn charge(
    reader: &CacheReader,
    ns: &str,
    quota: &Value,
    delta: &ResourceList,
) -> ApiResult<Result<ResourceList, String>> {
    let hard = hard_of(quota);
    let requested: ResourceList = delta
        .iter()
        .filter(|(k, _)| hard.contains_key(*k))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let mut used = used_of(quota);
    if hard.keys().any(|k| !used.contains_key(k)) {
        used = live_usage(reader, ns, quota).await?;
    }
    let mut new_used = used.clone();
    let (mut f_req, mut f_used, mut f_hard) = (
        ResourceList::new(),
        ResourceList::new(),
        ResourceList::new(),
    );
    for (k, r) in &requested {
        let u = used.get(k).copied().unwrap_or_default();
        let h = hard
            .get(k)
            .and_then(Quantity::from_json)
            .unwrap_or_default();
        let n = u.plus(*r);
        if n.milli > h.milli {
            f_req.insert(k.clone(), *r);
            f_used.insert(k.clone(), u);
            f_hard.insert(k.clone(), h);
        }
        new_used.insert(k.clone(), n);
    }
    if !f_req.is_empty() {
        return Ok(Err(format!(
            "exceeded quota: {}, requested: {}, used: {}, limited: {}",
            fields::name(quota),
            pretty(&f_req),
            pretty(&f_used),
            pretty(&f_hard)
        )));
    }
    Ok(Ok(new_used))
}

/// Checks every quota of the object's namespace that matches it and charges them.
pub async fn admit(
    reader: &CacheReader,
    writer: &dyn ObjectWriter,
    def: &'static ResourceDef,
    op: Operation,
    obj: &Value,
    old: Option<&Value>,
    dry_run: bool,
) -> ApiResult<()> {
    if !def.namespaced || !handles(def, op, obj, old) {
        return Ok(());
    }
    let ns = fields::namespace(obj).to_string();
    let name = fields::name(obj).to_string();
    let mut matching = Vec::new();
    for quota in quotas(reader, &ns).await? {
        if !matches_quota(def, obj, &quota) {
            continue;
        }
        if is_pod(def)
            && op == Operation::Create
            && let Some(msg) = missing_specs(obj, &hard_of(&quota))
        {
            let why = format!("failed quota: {}: {msg}", fields::name(&quota));
            return Err(ApiError::forbidden(def, &name, &why));
        }
        matching.push(quota);
    }
    if matching.is_empty() {
        return Ok(());
    }
    let delta = delta_usage(def, obj, old.filter(|_| op == Operation::Update));
    if delta.is_empty() {
        return Ok(());
    }
    // Every quota must admit the write before any is charged.
    for quota in &matching {
        if let Err(why) = charge(reader, &ns, quota, &delta).await? {
            return Err(ApiError::forbidden(def, &name, &why));
        }
    }
    if dry_run {
        return Ok(());
    }
    note_charge(&ns);
    for quota in &matching {
        let qname = fields::name(quota).to_string();
        for _attempt in 0..5 {
            let (current, rv) = match writer.get_stored(&RESOURCEQUOTAS, Some(&ns), &qname).await {
                Ok(x) => x,
                Err(e) if e.code == 404 => break,
                Err(e) => return Err(e),
            };
            let new_used = match charge(reader, &ns, &current, &delta).await? {
                Ok(u) => u,
                Err(why) => return Err(ApiError::forbidden(def, &name, &why)),
            };
            let mut updated = current.clone();
            let status = fields::ensure_object(&mut updated, &["status"]);
            status.insert("hard".into(), Value::Object(hard_of(&current)));
            status.insert("used".into(), to_json(&new_used));
            match writer
                .update_object(
                    &RESOURCEQUOTAS,
                    Some(&ns),
                    &qname,
                    current,
                    rv,
                    updated,
                    UpdateScope::Status,
                )
                .await
            {
                Ok(_) => break,
                Err(e) if e.code == 409 => continue,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// When each namespace's quotas were last charged by admission. The object being admitted is
/// stored only after its charge, so for a moment `status.used` is ahead of what the caches hold;
/// recomputing from the caches then would undo the charge (and let the next create through).
static LAST_CHARGE: std::sync::LazyLock<std::sync::Mutex<HashMap<String, std::time::Instant>>> =
    std::sync::LazyLock::new(Default::default);

/// How long after a charge the usage loop leaves a namespace alone.
const CHARGE_SETTLE: Duration = Duration::from_secs(2);

fn note_charge(ns: &str) {
    if let Ok(mut m) = LAST_CHARGE.lock() {
        let now = std::time::Instant::now();
        m.retain(|_, t| now.duration_since(*t) < CHARGE_SETTLE);
        m.insert(ns.to_string(), now);
    }
}

/// Whether `ns` was charged within the last [`CHARGE_SETTLE`].
fn recently_charged(ns: &str) -> bool {
    LAST_CHARGE
        .lock()
        .ok()
        .and_then(|m| m.get(ns).map(|t| t.elapsed() < CHARGE_SETTLE))
        .unwrap_or(false)
}

async fn recompute_namespace(
    reader: &CacheReader,
    writer: &dyn ObjectWriter,
    ns: &str,
) -> ApiResult<()> {
    for quota in quotas(reader, ns).await? {
        let qname = fields::name(&quota).to_string();
        let used = live_usage(reader, ns, &quota).await?;
        let want = json!({"hard": hard_of(&quota), "used": to_json(&used)});
        if quota.get("status") == Some(&want) {
            continue;
        }
        let (current, rv) = match writer.get_stored(&RESOURCEQUOTAS, Some(ns), &qname).await {
            Ok(x) => x,
            Err(e) if e.code == 404 => continue,
            Err(e) => return Err(e),
        };
        let mut updated = current.clone();
        if let Value::Object(m) = &mut updated {
            m.insert("status".into(), want);
        }
        match writer
            .update_object(
                &RESOURCEQUOTAS,
                Some(ns),
                &qname,
                current,
                rv,
                updated,
                UpdateScope::Status,
            )
            .await
        {
            Ok(_) | Err(ApiError { code: 409, .. }) | Err(ApiError { code: 404, .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Keeps every quota's `status.used` current: any change in a namespace recomputes its quotas.
pub fn spawn_usage_loop(reader: Arc<CacheReader>, writer: Arc<dyn ObjectWriter>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for cacher in reader.all() {
        let def = cacher.def();
        if !def.namespaced {
            continue;
        }
        let cacher = cacher.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                let mut brx = match cacher.watch_from(None).await {
                    Ok(WatchStart::Snapshot(objs, _, brx)) => {
                        let nss: HashSet<String> =
                            objs.iter().map(|o| o.namespace.clone()).collect();
                        for ns in nss {
                            let _ = tx.send(ns);
                        }
                        brx
                    }
                    Ok(WatchStart::Replay(_, brx)) => brx,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                loop {
                    match brx.recv().await {
                        Ok(Broadcast::Event(ev)) => {
                            if tx.send(ev.object.namespace.clone()).is_err() {
                                return;
                            }
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
    }
    let requeue = tx.clone();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut dirty = BTreeSet::from([first]);
            tokio::time::sleep(Duration::from_millis(100)).await;
            while let Ok(ns) = rx.try_recv() {
                dirty.insert(ns);
            }
            for ns in dirty {
                if recently_charged(&ns) {
                    // Come back once the admitted objects have landed in the caches.
                    let requeue = requeue.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(CHARGE_SETTLE).await;
                        let _ = requeue.send(ns);
                    });
                    continue;
                }
                if let Err(e) = recompute_namespace(&reader, writer.as_ref(), &ns).await {
                    tracing::warn!(namespace = %ns, error = %e, "recomputing quota usage failed");
                }
            }
        }
    });
}

/// The ResourceQuota plugin: a write that would exceed a quota of its namespace is refused;
/// an admitted one is charged to the quotas' `status.used` at once.
pub struct ResourceQuota;

#[async_trait]
impl Admit for ResourceQuota {
    fn name(&self) -> &'static str {
        "ResourceQuota"
    }

    async fn validate(&self, h: Handles<'_>, r: &Request<'_>, obj: &Value) -> ApiResult<()> {
        admit(h.reader, h.writer, r.def, r.op, obj, r.old, r.dry_run).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::resources::{PODS, SERVICES};

    fn s(u: &ResourceList, k: &str) -> String {
        u.get(k).map(|q| q.to_string()).unwrap_or_default()
    }

    #[test]
    fn pod_usage_and_constraints() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "64Mi", "example.com/gpu": "1"}, "limits": {"cpu": "1"}}},
            {"name": "b", "resources": {"requests": {"cpu": "1500m", "hugepages-2Mi": "4Mi"}}}
        ]}});
        let u = usage(&PODS, &pod);
        assert_eq!(s(&u, "requests.cpu"), "2");
        assert_eq!(s(&u, "cpu"), "2");
        assert_eq!(s(&u, "limits.cpu"), "1");
        assert_eq!(s(&u, "pods"), "1");
        assert_eq!(s(&u, "count/pods"), "1");
        assert_eq!(s(&u, "requests.example.com/gpu"), "1");
        assert_eq!(s(&u, "requests.hugepages-2Mi"), "4Mi");
        assert!(!u.contains_key("limits.memory"));
        assert!(matches_resource(&PODS, "requests.example.com/gpu"));
        assert!(!matches_resource(&PODS, "services"));
        let hard = json!({"requests.cpu": "4", "limits.cpu": "4", "requests.memory": "1Gi"});
        assert_eq!(
            missing_specs(&pod, hard.as_object().unwrap()).unwrap(),
            "must specify limits.cpu for: b; requests.memory for: b"
        );
        let done =
            json!({"spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Succeeded"}});
        let u = usage(&PODS, &done);
        assert_eq!(u.keys().collect::<Vec<_>>(), ["count/pods"]);
        let mut m = ResourceList::new();
        m.insert("requests.cpu".to_string(), Quantity::parse("2").unwrap());
        assert_eq!(pretty(&m), "requests.cpu=2");
    }

    #[test]
    fn scopes_select_pods() {
        let quota = |spec: Value| json!({"spec": spec});
        let best_effort = json!({"spec": {"containers": [{"name": "a"}]}});
        let burstable = json!({"spec": {"activeDeadlineSeconds": 30, "priorityClassName": "high",
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]}});
        let be = quota(json!({"hard": {"pods": "1"}, "scopes": ["BestEffort"]}));
        assert!(matches_quota(&PODS, &best_effort, &be));
        assert!(!matches_quota(&PODS, &burstable, &be));
        let term =
            quota(json!({"hard": {"pods": "1"}, "scopes": ["Terminating", "NotBestEffort"]}));
        assert!(matches_quota(&PODS, &burstable, &term));
        assert!(!matches_quota(&PODS, &best_effort, &term));
        let prio = |op: &str, values: Value| {
            quota(
                json!({"hard": {"pods": "1"}, "scopeSelector": {"matchExpressions": [
                {"scopeName": "PriorityClass", "operator": op, "values": values}]}}),
            )
        };
        assert!(matches_quota(
            &PODS,
            &burstable,
            &prio("In", json!(["high"]))
        ));
        assert!(!matches_quota(
            &PODS,
            &best_effort,
            &prio("In", json!(["high"]))
        ));
        assert!(matches_quota(
            &PODS,
            &best_effort,
            &prio("NotIn", json!(["high"]))
        ));
        assert!(matches_quota(&PODS, &burstable, &prio("Exists", json!([]))));
        assert!(!matches_quota(
            &PODS,
            &best_effort,
            &prio("Exists", json!([]))
        ));
        let cross = json!({"spec": {"containers": [{"name": "a"}], "affinity": {"podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "podAffinityTerm": {
                "topologyKey": "kubernetes.io/hostname", "namespaceSelector": {}}}]}}}});
        let cq = quota(json!({"hard": {"pods": "1"}, "scopes": ["CrossNamespacePodAffinity"]}));
        assert!(matches_quota(&PODS, &cross, &cq));
        assert!(!matches_quota(&PODS, &best_effort, &cq));
        let not_term = quota(json!({"hard": {"pods": "1"}, "scopes": ["NotTerminating"]}));
        assert!(matches_quota(&PODS, &best_effort, &not_term));
        assert!(!matches_quota(&PODS, &burstable, &not_term));
        // A quota naming no pod resource does not match pods.
        assert!(!matches_quota(
            &PODS,
            &best_effort,
            &quota(json!({"hard": {"services": "1"}}))
        ));
        // A scoped quota never matches other resources; an unscoped one does.
        let svc = json!({"spec": {"type": "ClusterIP"}});
        assert!(!matches_quota(
            &SERVICES,
            &svc,
            &quota(json!({"hard": {"services": "1"}, "scopes": ["BestEffort"]}))
        ));
        assert!(matches_quota(
            &SERVICES,
            &svc,
            &quota(json!({"hard": {"services": "1"}}))
        ));
    }

    #[test]
    fn service_update_charges_only_growth() {
        let cluster_ip =
            json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80}, {"port": 443}]}});
        let node_port =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 443}]}});
        let lb = json!({"spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false,
            "ports": [{"port": 80, "nodePort": 30080}, {"port": 443}]}});
        let d = delta_usage(&SERVICES, &node_port, Some(&cluster_ip));
        assert_eq!(pretty(&d), "services.nodeports=2");
        let d = delta_usage(&SERVICES, &lb, Some(&node_port));
        assert_eq!(pretty(&d), "services.loadbalancers=1");
        let d = delta_usage(&SERVICES, &cluster_ip, None);
        assert_eq!(pretty(&d), "count/services=1,services=1");
        assert!(handles(
            &SERVICES,
            Operation::Update,
            &node_port,
            Some(&cluster_ip)
        ));
        assert!(!handles(
            &SERVICES,
            Operation::Update,
            &cluster_ip,
            Some(&cluster_ip)
        ));
        assert!(!handles(
            &PODS,
            Operation::Update,
            &node_port,
            Some(&cluster_ip)
        ));
    }

    #[test]
    fn claims_by_storage_class() {
        let mut def = SERVICES;
        def.plural = "persistentvolumeclaims";
        def.kind = "PersistentVolumeClaim";
        let pvc = json!({"spec": {"storageClassName": "gold", "resources": {"requests": {"storage": "1.5"}}},
            "status": {"allocatedResources": {"storage": "1"}}});
        let u = usage(&def, &pvc);
        assert_eq!(s(&u, "requests.storage"), "2");
        assert_eq!(
            s(&u, "gold.storageclass.storage.k8s.io/requests.storage"),
            "2"
        );
        assert_eq!(
            s(
                &u,
                "gold.storageclass.storage.k8s.io/persistentvolumeclaims"
            ),
            "1"
        );
        assert!(matches_resource(
            &def,
            "gold.storageclass.storage.k8s.io/requests.storage"
        ));
        let bigger = json!({"spec": {"storageClassName": "gold", "resources": {"requests": {"storage": "5Gi"}}}});
        let small = json!({"spec": {"storageClassName": "gold", "resources": {"requests": {"storage": "1Gi"}}}});
        assert_eq!(
            pretty(&delta_usage(&def, &bigger, Some(&small))),
            "gold.storageclass.storage.k8s.io/requests.storage=4Gi,requests.storage=4Gi"
        );
    }
}
