//! ResourceQuota: object counts and compute requests/limits per namespace. Admission checks
//! `status.used + requested <= hard` and charges the quota (a guarded status write, so
//! concurrent creates cannot both take the last unit); a background loop recomputes
//! `status.used` from the watch caches after every change, as Kubernetes' quota controller does.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::quantity::Quantity;
use crate::cacher::{Broadcast, WatchStart};
use crate::error::{ApiError, ApiResult};
use crate::handlers::{UpdateScope, get_current, write_update};
use crate::registry::resources::RESOURCEQUOTAS;
use crate::registry::{self, ResourceDef, fields};
use crate::server::AppState;

const COMPUTE: &[&str] = &[
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

fn is_pod(def: &ResourceDef) -> bool {
    def.group.is_empty() && def.plural == "pods"
}

fn terminal(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded") | Some("Failed")
    )
}

/// Sum of containers' `field` (`requests`/`limits`) for `res`, max'd with each init container.
fn pod_resource(pod: &Value, field: &str, res: &str) -> Quantity {
    let get = |c: &Value| {
        c.pointer(&format!("/resources/{field}/{res}"))
            .and_then(Quantity::from_json)
            .unwrap_or_default()
    };
    let mut sum = Quantity::default();
    for c in pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        sum = sum.plus(get(c));
    }
    for c in pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let v = get(c);
        if v.milli > sum.milli {
            sum = v;
        }
    }
    sum
}

/// What one object adds to quota `key`, or None when the key does not track it.
fn usage_of(def: &ResourceDef, obj: &Value, key: &str) -> Option<Quantity> {
    let one = Quantity {
        milli: 1000,
        binary: false,
    };
    if let Some(r) = key.strip_prefix("count/") {
        let (plural, group) = r.split_once('.').unwrap_or((r, ""));
        return (def.plural == plural && def.group == group).then_some(one);
    }
    if is_pod(def) {
        if terminal(obj) {
            return None;
        }
        return match key {
            "pods" => Some(one),
            "cpu" | "requests.cpu" => Some(pod_resource(obj, "requests", "cpu")),
            "memory" | "requests.memory" => Some(pod_resource(obj, "requests", "memory")),
            "limits.cpu" => Some(pod_resource(obj, "limits", "cpu")),
            "limits.memory" => Some(pod_resource(obj, "limits", "memory")),
            _ => None,
        };
    }
    if !def.group.is_empty() {
        return None;
    }
    match (key, def.plural) {
        ("services", "services")
        | ("configmaps", "configmaps")
        | ("secrets", "secrets")
        | ("resourcequotas", "resourcequotas")
        | ("persistentvolumeclaims", "persistentvolumeclaims")
        | ("replicationcontrollers", "replicationcontrollers") => Some(one),
        ("services.loadbalancers", "services") => {
            (obj.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer"))
                .then_some(one)
        }
        ("services.nodeports", "services") => {
            let t = obj
                .pointer("/spec/type")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !matches!(t, "NodePort" | "LoadBalancer") {
                return None;
            }
            let n = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|a| a.len())
                .unwrap_or(0);
            Some(Quantity {
                milli: n as i128 * 1000,
                binary: false,
            })
        }
        _ => None,
    }
}

/// The resource definitions a quota key counts.
fn defs_for(key: &str) -> Vec<&'static ResourceDef> {
    let (group, plural) = match key.strip_prefix("count/") {
        Some(r) => {
            let (plural, group) = r.split_once('.').unwrap_or((r, ""));
            (group, plural)
        }
        None if key == "pods" || COMPUTE.contains(&key) => ("", "pods"),
        None => ("", key.split('.').next().unwrap_or(key)),
    };
    registry::all()
        .iter()
        .filter(|d| d.namespaced && d.group == group && d.plural == plural)
        .collect()
}

async fn objects(state: &AppState, def: &ResourceDef, ns: &str) -> ApiResult<Vec<Value>> {
    let cacher = state.cacher(def)?;
    let prefix = format!("/registry/{}/{ns}/", def.storage_prefix);
    let list = cacher.list(&prefix, None, 0, &|_| true).await;
    Ok(list
        .items
        .iter()
        .filter_map(|o| serde_json::from_slice(&o.raw).ok())
        .collect())
}

/// Current usage of `hard`'s keys in `ns`, computed from the caches.
async fn live_usage(
    state: &AppState,
    ns: &str,
    hard: &Map<String, Value>,
) -> ApiResult<BTreeMap<String, Quantity>> {
    let mut used = BTreeMap::new();
    for (key, h) in hard {
        let binary = Quantity::from_json(h).is_some_and(|q| q.binary);
        let mut total = Quantity { milli: 0, binary };
        for def in defs_for(key) {
            for o in objects(state, def, ns).await? {
                if let Some(u) = usage_of(def, &o, key) {
                    total = total.plus(u);
                }
            }
        }
        used.insert(key.clone(), total);
    }
    Ok(used)
}

async fn quotas(state: &AppState, ns: &str) -> ApiResult<Vec<Value>> {
    objects(state, &RESOURCEQUOTAS, ns).await
}

fn pretty(m: &BTreeMap<String, Quantity>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Kubernetes' pod constraint: quota on cpu/memory requires every container to state it.
fn missing_specs(pod: &Value, hard: &Map<String, Value>) -> Option<String> {
    let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for key in hard.keys().filter(|k| COMPUTE.contains(&k.as_str())) {
        let (field, res) = match key.as_str() {
            "cpu" | "requests.cpu" => ("requests", "cpu"),
            "memory" | "requests.memory" => ("requests", "memory"),
            "limits.cpu" => ("limits", "cpu"),
            _ => ("limits", "memory"),
        };
        for c in ["containers", "initContainers"]
            .iter()
            .filter_map(|k| pod.pointer(&format!("/spec/{k}")).and_then(Value::as_array))
            .flatten()
        {
            if c.pointer(&format!("/resources/{field}/{res}")).is_none() {
                let name = c
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                missing.entry(key.as_str()).or_default().insert(name);
            }
        }
    }
    if missing.is_empty() {
        return None;
    }
    let parts: Vec<String> = missing
        .iter()
        .map(|(k, names)| {
            format!(
                "{k} for: {}",
                names.iter().cloned().collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    Some(format!("must specify {}", parts.join("; ")))
}

fn used_of(quota: &Value) -> BTreeMap<String, Quantity> {
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

fn to_json(m: &BTreeMap<String, Quantity>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| (k.clone(), json!(v.to_string())))
            .collect(),
    )
}

/// Checks every quota of the object's namespace and charges it.
pub async fn admit(
    state: &AppState,
    def: &'static ResourceDef,
    obj: &Value,
    dry_run: bool,
) -> ApiResult<()> {
    if !def.namespaced {
        return Ok(());
    }
    let ns = fields::namespace(obj).to_string();
    let name = fields::name(obj).to_string();
    for quota in quotas(state, &ns).await? {
        let qname = fields::name(&quota).to_string();
        for _attempt in 0..5 {
            let (current, rv) = match get_current(state, &RESOURCEQUOTAS, Some(&ns), &qname).await {
                Ok(x) => x,
                Err(e) if e.code == 404 => break,
                Err(e) => return Err(e),
            };
            let hard = current
                .pointer("/spec/hard")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let requested: BTreeMap<String, Quantity> = hard
                .keys()
                .filter_map(|k| Some((k.clone(), usage_of(def, obj, k)?)))
                .collect();
            if requested.is_empty() {
                break;
            }
            if is_pod(def)
                && let Some(msg) = missing_specs(obj, &hard)
            {
                return Err(ApiError::forbidden(
                    def,
                    &name,
                    &format!("failed quota: {qname}: {msg}"),
                ));
            }
            let mut used = used_of(&current);
            if requested.keys().any(|k| !used.contains_key(k)) {
                used = live_usage(state, &ns, &hard).await?;
            }
            let mut new_used = used.clone();
            let (mut f_req, mut f_used, mut f_hard) =
                (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
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
                let why = format!(
                    "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                    pretty(&f_req),
                    pretty(&f_used),
                    pretty(&f_hard)
                );
                return Err(ApiError::forbidden(def, &name, &why));
            }
            if dry_run {
                break;
            }
            let mut updated = current.clone();
            let status = fields::ensure_object(&mut updated, &["status"]);
            status.insert("hard".into(), Value::Object(hard.clone()));
            status.insert("used".into(), to_json(&new_used));
            match write_update(
                state,
                &RESOURCEQUOTAS,
                Some(&ns),
                &qname,
                current,
                rv,
                updated,
                UpdateScope::Status,
                false,
                None,
                "Update",
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

async fn recompute_namespace(state: &AppState, ns: &str) -> ApiResult<()> {
    for quota in quotas(state, ns).await? {
        let qname = fields::name(&quota).to_string();
        let hard = quota
            .pointer("/spec/hard")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let used = live_usage(state, ns, &hard).await?;
        let want = json!({"hard": hard, "used": to_json(&used)});
        if quota.get("status") == Some(&want) {
            continue;
        }
        let (current, rv) = match get_current(state, &RESOURCEQUOTAS, Some(ns), &qname).await {
            Ok(x) => x,
            Err(e) if e.code == 404 => continue,
            Err(e) => return Err(e),
        };
        let mut updated = current.clone();
        if let Value::Object(m) = &mut updated {
            m.insert("status".into(), want);
        }
        match write_update(
            state,
            &RESOURCEQUOTAS,
            Some(ns),
            &qname,
            current,
            rv,
            updated,
            UpdateScope::Status,
            false,
            None,
            "Update",
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
pub fn spawn_usage_loop(state: Arc<AppState>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for cacher in state.caches() {
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
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut dirty = BTreeSet::from([first]);
            tokio::time::sleep(Duration::from_millis(100)).await;
            while let Ok(ns) = rx.try_recv() {
                dirty.insert(ns);
            }
            for ns in dirty {
                if let Err(e) = recompute_namespace(&state, &ns).await {
                    tracing::warn!(namespace = %ns, error = %e, "recomputing quota usage failed");
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::resources::PODS;

    #[test]
    fn pod_usage_and_constraints() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "64Mi"}, "limits": {"cpu": "1"}}},
            {"name": "b", "resources": {"requests": {"cpu": "1500m"}}}
        ]}});
        assert_eq!(
            usage_of(&PODS, &pod, "requests.cpu").unwrap().to_string(),
            "2"
        );
        assert_eq!(usage_of(&PODS, &pod, "pods").unwrap().to_string(), "1");
        assert_eq!(
            usage_of(&PODS, &pod, "count/pods").unwrap().to_string(),
            "1"
        );
        let hard = json!({"requests.cpu": "4", "limits.cpu": "4", "requests.memory": "1Gi"});
        assert_eq!(
            missing_specs(&pod, hard.as_object().unwrap()).unwrap(),
            "must specify limits.cpu for: b; requests.memory for: b"
        );
        let mut m = BTreeMap::new();
        m.insert("requests.cpu".to_string(), Quantity::parse("2").unwrap());
        assert_eq!(pretty(&m), "requests.cpu=2");
    }
}
