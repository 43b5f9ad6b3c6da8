//! kube-apiserver's autoregister and APIService availability controllers: one
//! `apiregistration.k8s.io/v1` APIService per served group version (built-in ones registered
//! at start with kube-apiserver's priorities, custom resource ones kept in step with the
//! established CRDs), and the `Available` condition of every APIService. Lotse serves every
//! group itself and does not proxy aggregated APIs: an APIService naming a service is stored but
//! reported `Available=False`. The APIServices are read and written through an
//! [`ApiServiceStore`] the server hands in.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::registry::resources::apiregistration::{available_condition, local_available, now};

/// The label of APIServices the apiserver manages (`AutoRegisterManagedLabel`).
pub const AUTOMANAGED_LABEL: &str = "kube-aggregator.kubernetes.io/automanaged";
/// Label value of built-in group versions, registered at start (`manageOnStart`).
pub const MANAGE_ON_START: &str = "onstart";
/// Label value of custom resource group versions, kept in step continuously
/// (`manageContinuously`).
pub const MANAGE_CONTINUOUSLY: &str = "true";
/// Reason of the `Available=False` condition of an APIService naming a service.
pub const NOT_PROXIED_REASON: &str = "AggregationNotSupported";

/// kube-apiserver's `apiVersionPriorities`: (group, version, groupPriorityMinimum,
/// versionPriority).
pub const API_VERSION_PRIORITIES: &[(&str, &str, i64, i64)] = &[
    ("", "v1", 18000, 1),
    ("apiregistration.k8s.io", "v1", 18000, 15),
    ("apps", "v1", 17800, 15),
    ("events.k8s.io", "v1", 17750, 15),
    ("authentication.k8s.io", "v1", 17700, 15),
    ("authorization.k8s.io", "v1", 17600, 15),
    ("autoscaling", "v1", 17500, 15),
    ("autoscaling", "v2", 17500, 30),
    ("batch", "v1", 17400, 15),
    ("certificates.k8s.io", "v1", 17300, 15),
    ("networking.k8s.io", "v1", 17200, 15),
    ("policy", "v1", 17100, 15),
    ("rbac.authorization.k8s.io", "v1", 17000, 15),
    ("storage.k8s.io", "v1", 16800, 15),
    ("apiextensions.k8s.io", "v1", 16700, 15),
    ("admissionregistration.k8s.io", "v1", 16700, 15),
    ("scheduling.k8s.io", "v1", 16600, 15),
    ("coordination.k8s.io", "v1", 16500, 15),
    ("node.k8s.io", "v1", 16300, 15),
    ("discovery.k8s.io", "v1", 16200, 15),
    ("flowcontrol.apiserver.k8s.io", "v1", 16100, 21),
    ("resource.k8s.io", "v1beta1", 15900, 9),
];

/// The built-in resource metrics API's group and priorities (those metrics-server registers
/// with).
pub const METRICS: (&str, i64, i64) = ("metrics.k8s.io", 100, 100);
/// Priorities of a custom resource group version (`crdregistration_controller.go`).
pub const CRD_PRIORITY: (i64, i64) = (1000, 100);

/// How often the APIServices are brought in step with the served group versions.
const RESYNC: Duration = Duration::from_secs(5);

/// The APIServices as the server stores them, and what it serves.
#[async_trait::async_trait]
pub trait ApiServiceStore: Send + Sync {
    /// Every served group version ("" is the core group), with whether it is custom resources'.
    fn served(&self) -> Vec<(String, String, bool)>;
    /// Every stored APIService (with its resourceVersion).
    async fn list(&self) -> Vec<Value>;
    /// Creates an APIService (as a POST would).
    async fn create(&self, obj: Value) -> Result<(), String>;
    /// Replaces `current` by `new`: its spec, or with `status` only its status.
    async fn update(&self, current: &Value, new: Value, status: bool) -> Result<(), String>;
    /// Deletes an APIService.
    async fn delete(&self, name: &str) -> Result<(), String>;
}

fn str_at<'a>(o: &'a Value, pointer: &str) -> &'a str {
    o.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn name(o: &Value) -> &str {
    str_at(o, "/metadata/name")
}

fn label(o: &Value) -> &str {
    o.pointer("/metadata/labels")
        .and_then(|l| l.get(AUTOMANAGED_LABEL))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn has_service(o: &Value) -> bool {
    o.pointer("/spec/service").is_some_and(Value::is_object)
}

/// The `Available` condition Lotse reports for an APIService: local ones are available; one
/// naming a service is not, since Lotse does not proxy aggregated APIs. The transition time is
/// kept while the status stays the same.
pub fn wanted_available(o: &Value, now: &str) -> Value {
    let mut c = if has_service(o) {
        let (g, v) = (str_at(o, "/spec/group"), str_at(o, "/spec/version"));
        let gv = if g.is_empty() {
            v.to_string()
        } else {
            format!("{g}/{v}")
        };
        json!({"type": "Available", "status": "False", "lastTransitionTime": now,
        "reason": NOT_PROXIED_REASON,
        "message": format!(
            "Lotse does not proxy aggregated APIs: requests for {gv} are not forwarded to service {}/{}",
            str_at(o, "/spec/service/namespace"),
            str_at(o, "/spec/service/name"),
        )})
    } else {
        local_available(now)
    };
    if let Some(cur) = available_condition(o)
        && cur.get("status") == c.get("status")
        && let Some(t) = cur.get("lastTransitionTime").filter(|t| !t.is_null())
    {
        c["lastTransitionTime"] = t.clone();
    }
    c
}

/// The APIService autoregister keeps for a served group version, or None for a group version
/// it does not register (one missing from [`API_VERSION_PRIORITIES`]). `custom` marks a group
/// of custom resources.
pub fn desired(group: &str, version: &str, custom: bool) -> Option<Value> {
    let (gp, vp, label) = if custom {
        (CRD_PRIORITY.0, CRD_PRIORITY.1, Some(MANAGE_CONTINUOUSLY))
    } else if group == METRICS.0 {
        (METRICS.1, METRICS.2, None)
    } else {
        let &(_, _, gp, vp) = API_VERSION_PRIORITIES
            .iter()
            .find(|(g, v, _, _)| *g == group && *v == version)?;
        (gp, vp, Some(MANAGE_ON_START))
    };
    let mut spec = json!({"groupPriorityMinimum": gp, "version": version, "versionPriority": vp});
    if !group.is_empty() {
        spec["group"] = json!(group);
    }
    let mut o = json!({
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": format!("{version}.{group}")},
        "spec": spec,
    });
    if let Some(l) = label {
        o["metadata"]["labels"] = json!({AUTOMANAGED_LABEL: l});
    }
    Some(o)
}

/// One pass: creates missing APIServices (and, for managed ones, restores their spec: the
/// `onstart` ones only at start), deletes the continuously managed ones whose group version is
/// no longer served, and writes each APIService's `Available` condition when it changes.
pub async fn sync(store: &dyn ApiServiceStore, at_start: bool) {
    let existing = store.list().await;
    let wanted: Vec<Value> = store
        .served()
        .iter()
        .filter_map(|(g, v, custom)| desired(g, v, *custom))
        .collect();
    for d in &wanted {
        let n = name(d);
        match existing.iter().find(|e| name(e) == n) {
            None => {
                if let Err(e) = store.create(d.clone()).await {
                    tracing::warn!(apiservice = n, error = %e, "could not register");
                }
            }
            Some(cur) => {
                let managed = match label(cur) {
                    MANAGE_CONTINUOUSLY => true,
                    MANAGE_ON_START => at_start,
                    _ => false,
                };
                if managed && cur.get("spec") != d.get("spec") {
                    let mut new = cur.clone();
                    new["spec"] = d["spec"].clone();
                    if let Err(e) = store.update(cur, new, false).await {
                        tracing::warn!(apiservice = n, error = %e, "could not update");
                    }
                }
            }
        }
    }
    for e in &existing {
        let n = name(e);
        if label(e) == MANAGE_CONTINUOUSLY
            && !wanted.iter().any(|d| name(d) == n)
            && let Err(err) = store.delete(n).await
        {
            tracing::warn!(apiservice = n, error = %err, "could not unregister");
        }
    }
    // Availability (the re-read list includes the ones just created).
    let now = now();
    for e in store.list().await {
        let c = wanted_available(&e, &now);
        let conditions = e
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if conditions.contains(&c) {
            continue;
        }
        let mut kept: Vec<Value> = conditions
            .into_iter()
            .filter(|x| x.get("type") != c.get("type"))
            .collect();
        kept.push(c);
        let mut new = e.clone();
        if let Value::Object(m) = &mut new {
            m.insert("status".into(), json!({"conditions": kept}));
        }
        if let Err(err) = store.update(&e, new, true).await {
            tracing::warn!(apiservice = name(&e), error = %err, "could not update status");
        }
    }
}

/// Registers the served group versions now, then keeps the APIServices in step in the
/// background.
pub async fn start(store: Arc<dyn ApiServiceStore>) {
    sync(store.as_ref(), true).await;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RESYNC);
        tick.tick().await;
        loop {
            tick.tick().await;
            sync(store.as_ref(), false).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn built_in_group_versions_have_kubernetes_priorities() {
        let apps = desired("apps", "v1", false).unwrap();
        assert_eq!(apps["metadata"]["name"], "v1.apps");
        assert_eq!(apps["metadata"]["labels"][AUTOMANAGED_LABEL], "onstart");
        assert_eq!(apps["spec"]["groupPriorityMinimum"], 17800);
        assert_eq!(apps["spec"]["versionPriority"], 15);
        let core = desired("", "v1", false).unwrap();
        assert_eq!(core["metadata"]["name"], "v1.");
        assert!(core["spec"].get("group").is_none());
        assert_eq!(
            desired("autoscaling", "v2", false).unwrap()["spec"]["versionPriority"],
            30
        );
        let metrics = desired("metrics.k8s.io", "v1beta1", false).unwrap();
        assert_eq!(metrics["spec"]["groupPriorityMinimum"], 100);
        assert!(metrics["metadata"].get("labels").is_none());
        let crd = desired("example.com", "v1", true).unwrap();
        assert_eq!(crd["metadata"]["labels"][AUTOMANAGED_LABEL], "true");
        assert_eq!(crd["spec"]["groupPriorityMinimum"], 1000);
        assert!(desired("unknown.example", "v1", false).is_none());
    }

    #[test]
    fn remote_ones_are_unavailable_and_keep_their_transition_time() {
        let mut remote = json!({"metadata": {"name": "v1beta1.custom.metrics.k8s.io"},
            "spec": {"group": "custom.metrics.k8s.io", "version": "v1beta1",
                "service": {"namespace": "monitoring", "name": "adapter", "port": 443}}});
        let c = wanted_available(&remote, "2026-01-01T00:00:00Z");
        assert_eq!(c["status"], "False");
        assert_eq!(c["reason"], NOT_PROXIED_REASON);
        assert_eq!(
            c["message"],
            "Lotse does not proxy aggregated APIs: requests for custom.metrics.k8s.io/v1beta1 are not forwarded to service monitoring/adapter"
        );
        remote["status"] = json!({"conditions": [c]});
        let again = wanted_available(&remote, "2027-01-01T00:00:00Z");
        assert_eq!(again["lastTransitionTime"], "2026-01-01T00:00:00Z");
    }

    /// An in-memory store.
    #[derive(Default)]
    struct Mem {
        served: Mutex<Vec<(String, String, bool)>>,
        objs: Mutex<Vec<Value>>,
    }

    #[async_trait::async_trait]
    impl ApiServiceStore for Mem {
        fn served(&self) -> Vec<(String, String, bool)> {
            self.served.lock().unwrap().clone()
        }
        async fn list(&self) -> Vec<Value> {
            self.objs.lock().unwrap().clone()
        }
        async fn create(&self, obj: Value) -> Result<(), String> {
            self.objs.lock().unwrap().push(obj);
            Ok(())
        }
        async fn update(&self, cur: &Value, new: Value, _: bool) -> Result<(), String> {
            let mut objs = self.objs.lock().unwrap();
            for o in objs.iter_mut() {
                if name(o) == name(cur) {
                    *o = new.clone();
                }
            }
            Ok(())
        }
        async fn delete(&self, n: &str) -> Result<(), String> {
            self.objs.lock().unwrap().retain(|o| name(o) != n);
            Ok(())
        }
    }

    #[tokio::test]
    async fn sync_follows_the_served_group_versions() {
        let store = Mem::default();
        *store.served.lock().unwrap() = vec![
            (String::new(), "v1".into(), false),
            ("apps".into(), "v1".into(), false),
            ("example.com".into(), "v1".into(), true),
        ];
        sync(&store, true).await;
        let names: Vec<String> = store.list().await.iter().map(|o| name(o).into()).collect();
        assert_eq!(names, ["v1.", "v1.apps", "v1.example.com"]);
        assert!(
            store
                .list()
                .await
                .iter()
                .all(|o| available_condition(o).is_some_and(|c| c["reason"] == "Local"))
        );
        // The CRD goes: its APIService goes; a user's edit of an onstart one stays until the
        // next start.
        store.served.lock().unwrap().pop();
        store.objs.lock().unwrap()[1]["spec"]["versionPriority"] = json!(1);
        sync(&store, false).await;
        let objs = store.list().await;
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[1]["spec"]["versionPriority"], 1);
        sync(&store, true).await;
        assert_eq!(store.list().await[1]["spec"]["versionPriority"], 15);
    }
}
