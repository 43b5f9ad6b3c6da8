//! `componentstatuses` (`kubectl get cs`): the read-only core/v1 ComponentStatus list
//! Kubernetes serves for `scheduler`, `controller-manager` and `etcd-0`, each with one
//! `Healthy` condition (`True` with message `ok`, else `False` with the error).
//!
//! Kubernetes probes the components' `/healthz` ports; Lotse's scheduler and controllers serve
//! none (in `lotse up` they run inside the same process), so their health is judged by what the
//! apiserver sees of them: a fresh leader-election Lease, or a request authenticated as the
//! component's user (`system:kube-scheduler`, `system:kube-controller-manager`) within the last
//! [`SEEN_WINDOW`] (their informers re-list or re-watch at least every 290 s). `etcd-0` is a
//! read of the storage backend (etcd or SQLite).
//!
//! This module decides and builds the objects; the apiserver hands it a narrow [`Probe`] (read
//! a Lease, read the storage backend) and turns an [`Answer`] or a [`Refusal`] into the HTTP
//! response (JSON or Table, with the [`DEPRECATION`] warning), as `eviction` does.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};

/// How recent a component's last request must be for it to count as healthy.
pub const SEEN_WINDOW: Duration = Duration::from_secs(300);

/// The served components, in the order they are listed: (name, user, Lease in kube-system).
const COMPONENTS: &[(&str, &str, &str)] = &[
    ("scheduler", "system:kube-scheduler", "kube-scheduler"),
    (
        "controller-manager",
        "system:kube-controller-manager",
        "kube-controller-manager",
    ),
];
const ETCD: &str = "etcd-0";
/// The Warning header Kubernetes sends with every componentstatuses response.
pub const DEPRECATION: &str = "v1 ComponentStatus is deprecated in v1.19+";

/// What the statuses are judged from.
#[async_trait]
pub trait Probe: Send + Sync {
    /// The Lease `kube-system/<name>`, when it exists and can be read.
    async fn lease(&self, name: &str) -> Option<Value>;
    /// A read of the storage backend: `Err` with the error's text when it fails.
    async fn storage(&self) -> Result<(), String>;
}

/// What a `GET` under `componentstatuses` answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `componentstatuses`: every component.
    List(Vec<Value>),
    /// `componentstatuses/<name>`.
    One(Value),
}

impl Answer {
    /// The objects (the rows of a Table).
    pub fn items(&self) -> &[Value] {
        match self {
            Answer::List(items) => items,
            Answer::One(obj) => std::slice::from_ref(obj),
        }
    }

    /// The JSON body: a `ComponentStatusList` or the one object.
    pub fn into_json(self) -> Value {
        match self {
            Answer::List(items) => json!({
                "kind": "ComponentStatusList",
                "apiVersion": "v1",
                "metadata": {},
                "items": items,
            }),
            Answer::One(obj) => obj,
        }
    }
}

/// Why a `GET` is not answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// An unknown component: Kubernetes answers with a plain error (500) and this message.
    UnknownComponent(String),
    /// A path below a component (404 as for any unknown resource).
    NoSuchResource,
}

static SEEN: LazyLock<Mutex<HashMap<String, Instant>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Notes an authenticated request from `user` (only the components' users are kept).
pub fn observe_user(user: &str) {
    if COMPONENTS.iter().any(|(_, u, _)| *u == user)
        && let Ok(mut seen) = SEEN.lock()
    {
        seen.insert(user.to_string(), Instant::now());
    }
}

fn seen_within(user: &str, window: Duration) -> Option<Duration> {
    let seen = SEEN.lock().ok()?;
    seen.get(user)
        .map(Instant::elapsed)
        .filter(|age| *age <= window)
}

/// Whether `/api/v1/<rest>` is served here.
pub fn is_path(group: &str, version: &str, rest: &[&str]) -> bool {
    group.is_empty() && version == "v1" && rest.first() == Some(&"componentstatuses")
}

/// The `/api/v1` discovery entry.
pub fn extra_resources(group: &str, version: &str) -> Vec<Value> {
    if !group.is_empty() || version != "v1" {
        return Vec::new();
    }
    vec![json!({
        "name": "componentstatuses", "singularName": "componentstatus", "namespaced": false,
        "kind": "ComponentStatus", "verbs": ["get", "list"], "shortNames": ["cs"],
    })]
}

/// The aggregated-discovery entry of core/v1.
pub fn extra_aggregated_resources(group: &str, version: &str) -> Vec<Value> {
    if !group.is_empty() || version != "v1" {
        return Vec::new();
    }
    vec![json!({
        "resource": "componentstatuses",
        "responseKind": {"group": "", "version": "v1", "kind": "ComponentStatus"},
        "scope": "Cluster",
        "singularResource": "componentstatus",
        "verbs": ["get", "list"],
        "shortNames": ["cs"],
    })]
}

/// A ComponentStatus with its one `Healthy` condition (`Err` carries the error text).
pub fn object(name: &str, healthy: Result<(), String>) -> Value {
    let condition = match healthy {
        Ok(()) => json!({"type": "Healthy", "status": "True", "message": "ok"}),
        Err(e) => json!({"type": "Healthy", "status": "False", "error": e}),
    };
    json!({
        "kind": "ComponentStatus",
        "apiVersion": "v1",
        "metadata": {"name": name},
        "conditions": [condition],
    })
}

/// Whether `lease` was renewed within its duration.
fn lease_fresh(lease: &Value) -> bool {
    let renewed = lease
        .pointer("/spec/renewTime")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let duration = lease
        .pointer("/spec/leaseDurationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(15);
    renewed.is_some_and(|t| jiff::Timestamp::now().as_second() - t.as_second() <= duration)
}

async fn check(probe: &dyn Probe, name: &str) -> Option<Value> {
    if name == ETCD {
        return Some(object(name, probe.storage().await));
    }
    let (_, user, lease) = COMPONENTS.iter().find(|(n, _, _)| *n == name)?;
    let fresh = probe.lease(lease).await.is_some_and(|l| lease_fresh(&l));
    let healthy = if fresh || seen_within(user, SEEN_WINDOW).is_some() {
        Ok(())
    } else {
        Err(format!(
            "no request from {user} in the last {}s and no fresh Lease kube-system/{lease}",
            SEEN_WINDOW.as_secs()
        ))
    };
    Some(object(name, healthy))
}

/// Answers `GET /api/v1/<rest>` (`rest` starts with `componentstatuses`).
pub async fn get(probe: &dyn Probe, rest: &[&str]) -> Result<Answer, Refusal> {
    match rest {
        ["componentstatuses"] => {
            let mut items = Vec::new();
            for name in COMPONENTS.iter().map(|(n, _, _)| *n).chain([ETCD]) {
                items.extend(check(probe, name).await);
            }
            Ok(Answer::List(items))
        }
        ["componentstatuses", name] => check(probe, name)
            .await
            .map(Answer::One)
            .ok_or_else(|| Refusal::UnknownComponent(format!("Component not found: {name}"))),
        _ => Err(Refusal::NoSuchResource),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend with (or without) a Lease renewed `age_s` seconds ago and a storage result.
    struct Fake {
        lease_age_s: Option<i64>,
        storage: Result<(), String>,
    }

    #[async_trait]
    impl Probe for Fake {
        async fn lease(&self, _name: &str) -> Option<Value> {
            let age = self.lease_age_s?;
            let renewed =
                jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() - age).ok()?;
            Some(json!({"spec": {"renewTime": renewed.to_string(), "leaseDurationSeconds": 15}}))
        }
        async fn storage(&self) -> Result<(), String> {
            self.storage.clone()
        }
    }

    #[test]
    fn objects_carry_one_healthy_condition() {
        let ok = object("scheduler", Ok(()));
        assert_eq!(ok["conditions"][0]["message"], "ok");
        assert_eq!(ok["conditions"][0]["status"], "True");
        assert!(ok["conditions"][0].get("error").is_none());
        let bad = object("etcd-0", Err("connection refused".into()));
        assert_eq!(bad["conditions"][0]["status"], "False");
        assert_eq!(bad["conditions"][0]["error"], "connection refused");
    }

    #[tokio::test]
    async fn fresh_leases_and_storage_make_healthy_components() {
        let fake = Fake {
            lease_age_s: Some(2),
            storage: Err("connection refused".into()),
        };
        let Ok(Answer::List(items)) = get(&fake, &["componentstatuses"]).await else {
            panic!("a list");
        };
        let names: Vec<&str> = items
            .iter()
            .filter_map(|o| o["metadata"]["name"].as_str())
            .collect();
        assert_eq!(names, ["scheduler", "controller-manager", "etcd-0"]);
        assert_eq!(items[1]["conditions"][0]["status"], "True");
        assert_eq!(items[2]["conditions"][0]["error"], "connection refused");
        let stale = Fake {
            lease_age_s: Some(60),
            storage: Ok(()),
        };
        let Ok(Answer::One(cm)) = get(&stale, &["componentstatuses", "controller-manager"]).await
        else {
            panic!("one object");
        };
        assert_eq!(cm["conditions"][0]["status"], "False");
        assert_eq!(
            get(&stale, &["componentstatuses", "kubelet"]).await,
            Err(Refusal::UnknownComponent(
                "Component not found: kubelet".into()
            ))
        );
        assert_eq!(
            get(&stale, &["componentstatuses", "etcd-0", "x"]).await,
            Err(Refusal::NoSuchResource)
        );
        let list = Answer::List(Vec::new()).into_json();
        assert_eq!(list["kind"], "ComponentStatusList");
    }

    #[test]
    fn components_are_healthy_once_seen() {
        assert!(seen_within("system:kube-scheduler", SEEN_WINDOW).is_none());
        observe_user("system:kube-scheduler");
        observe_user("alice");
        assert!(seen_within("system:kube-scheduler", SEEN_WINDOW).is_some());
        assert!(seen_within("alice", SEEN_WINDOW).is_none());
    }
}
