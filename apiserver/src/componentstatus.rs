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

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::handlers::json_response;
use crate::registry::fields;
use crate::registry::resources::{COMPONENTSTATUSES, LEASES};
use crate::request::{Query, ResponseFormat};
use crate::server::AppState;

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
const DEPRECATION: &str = "v1 ComponentStatus is deprecated in v1.19+";

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

fn object(name: &str, healthy: Result<(), String>) -> Value {
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

/// Whether the Lease `kube-system/<name>` was renewed within its duration.
async fn lease_fresh(state: &AppState, name: &str) -> bool {
    let key = crate::handlers::object_key(&LEASES, Some("kube-system"), name);
    let Ok(Some(kv)) = state.storage.get(&key).await else {
        return false;
    };
    let Ok(lease) = serde_json::from_slice::<Value>(&kv.value) else {
        return false;
    };
    let renewed = fields::str_at(&lease, &["spec", "renewTime"])
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let duration = fields::i64_at(&lease, &["spec", "leaseDurationSeconds"]).unwrap_or(15);
    renewed.is_some_and(|t| jiff::Timestamp::now().as_second() - t.as_second() <= duration)
}

async fn check(state: &AppState, name: &str) -> Option<Value> {
    if name == ETCD {
        let healthy = state
            .storage
            .current_revision()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        return Some(object(name, healthy));
    }
    let (_, user, lease) = COMPONENTS.iter().find(|(n, _, _)| *n == name)?;
    let healthy = if lease_fresh(state, lease).await || seen_within(user, SEEN_WINDOW).is_some() {
        Ok(())
    } else {
        Err(format!(
            "no request from {user} in the last {}s and no fresh Lease kube-system/{lease}",
            SEEN_WINDOW.as_secs()
        ))
    };
    Some(object(name, healthy))
}

/// Serves `GET /api/v1/componentstatuses[/<name>]` (JSON or Table); other verbs are refused.
pub async fn handle(
    state: &Arc<AppState>,
    method: &Method,
    headers: &HeaderMap,
    rest: &[&str],
    query: &Query,
) -> ApiResult<Response> {
    if method != Method::GET {
        return Err(ApiError::method_not_allowed());
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = crate::request::response_format(accept);
    let body = match rest {
        ["componentstatuses"] => {
            let mut items = Vec::new();
            for name in COMPONENTS.iter().map(|(n, _, _)| *n).chain([ETCD]) {
                items.extend(check(state, name).await);
            }
            match format {
                ResponseFormat::Table => {
                    crate::table::build(&COMPONENTSTATUSES, &items, query, None, None, true)
                }
                _ => json!({
                    "kind": "ComponentStatusList",
                    "apiVersion": "v1",
                    "metadata": {},
                    "items": items,
                }),
            }
        }
        ["componentstatuses", name] => {
            let obj = check(state, name).await.ok_or_else(|| {
                // Kubernetes answers an unknown component with a plain error (500).
                ApiError::internal(format!("Component not found: {name}"))
            })?;
            match format {
                ResponseFormat::Table => crate::table::build(
                    &COMPONENTSTATUSES,
                    std::slice::from_ref(&obj),
                    query,
                    None,
                    None,
                    true,
                ),
                _ => obj,
            }
        }
        _ => return Err(ApiError::no_such_resource()),
    };
    let mut r = json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    );
    // As Kubernetes since 1.19.
    crate::handlers::add_warnings(&mut r, &[DEPRECATION.to_string()]);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_cells(o: &Value) -> Vec<Value> {
        (COMPONENTSTATUSES.cells)(o)
    }

    #[test]
    fn rows_as_kubectl_prints_them() {
        let ok = object("scheduler", Ok(()));
        assert_eq!(
            status_cells(&ok),
            [json!("scheduler"), json!("Healthy"), json!("ok"), json!("")]
        );
        let bad = object("etcd-0", Err("connection refused".into()));
        assert_eq!(
            status_cells(&bad),
            [
                json!("etcd-0"),
                json!("Unhealthy"),
                json!(""),
                json!("connection refused")
            ]
        );
        assert_eq!(ok["conditions"][0]["message"], "ok");
        assert!(ok["conditions"][0].get("error").is_none());
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
