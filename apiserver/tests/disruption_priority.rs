//! PodDisruptionBudgets, `pods/eviction` and PriorityClasses in-process, through the real
//! router, write pipeline, admission and watch caches: the system classes after bootstrap, the
//! Priority admission (class resolved into the pod, unknown class refused, one global default),
//! PDB validation and status, and evictions refused with 429 while the budget allows none,
//! spending the budget (disruptedPods) when it allows one, and refused with 500 under two
//! budgets.

use std::sync::Arc;

use apiserver::state::AppState;
use apiserver::storage::Storage;
use axum::body::Body;
use axum::http::{Request, header};
use serde_json::{Value, json};

mod common;

struct Api {
    state: Arc<AppState>,
    _store: Arc<dyn Storage>,
}

impl Api {
    async fn new() -> Api {
        let (state, store) = common::state().await;
        Api {
            state,
            _store: store,
        }
    }

    async fn send(&self, method: &str, uri: &str, body: Option<Value>) -> (u16, Value) {
        let bytes = body
            .map(|b| serde_json::to_vec(&b).expect("encode"))
            .unwrap_or_default();
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(bytes))
            .expect("request");
        req.extensions_mut().insert(common::admin());
        let (status, _, bytes) = common::send(&self.state, req).await;
        (
            status.as_u16(),
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn ok(&self, method: &str, uri: &str, body: Option<Value>) -> Value {
        let (code, v) = self.send(method, uri, body).await;
        assert!((200..300).contains(&code), "{method} {uri}: {code} {v}");
        v
    }
}

const PODS: &str = "/api/v1/namespaces/default/pods";
const PDBS: &str = "/apis/policy/v1/namespaces/default/poddisruptionbudgets";
const PCS: &str = "/apis/scheduling.k8s.io/v1/priorityclasses";

fn pod(name: &str, labels: Value, spec_extra: Value) -> Value {
    let mut spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), spec_extra.as_object()) {
        s.extend(e.clone());
    }
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels}, "spec": spec})
}

/// Creates a pod and reports it Running and Ready through `pods/status`.
async fn running_pod(api: &Api, name: &str, labels: Value) {
    api.ok("POST", PODS, Some(pod(name, labels, json!({}))))
        .await;
    let mut p = api.ok("GET", &format!("{PODS}/{name}"), None).await;
    p["status"]["phase"] = json!("Running");
    p["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
    api.ok("PUT", &format!("{PODS}/{name}/status"), Some(p))
        .await;
}

fn eviction(name: &str) -> Value {
    json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name}})
}

/// Writes the budget's status as the disruption controller would.
async fn set_budget(api: &Api, name: &str, allowed: i64, current: i64, desired: i64) {
    let mut b = api.ok("GET", &format!("{PDBS}/{name}"), None).await;
    let generation = b["metadata"]["generation"].clone();
    b["status"] = json!({"disruptionsAllowed": allowed, "currentHealthy": current,
        "desiredHealthy": desired, "expectedPods": 2, "observedGeneration": generation});
    api.ok("PUT", &format!("{PDBS}/{name}/status"), Some(b))
        .await;
}

#[tokio::test]
async fn system_priority_classes_and_priority_admission() {
    let api = Api::new().await;
    let node = api
        .ok("GET", &format!("{PCS}/system-node-critical"), None)
        .await;
    assert_eq!(node["value"], json!(2000001000));
    assert_eq!(node["preemptionPolicy"], json!("PreemptLowerPriority"));
    let cluster = api
        .ok("GET", &format!("{PCS}/system-cluster-critical"), None)
        .await;
    assert_eq!(cluster["value"], json!(2000000000));

    let (code, v) = api
        .send(
            "POST",
            PCS,
            Some(
                json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": "too-high"}, "value": 1_000_000_001}),
            ),
        )
        .await;
    assert_eq!(code, 422, "{v}");
    assert_eq!(
        v["message"],
        json!(
            "PriorityClass.scheduling.k8s.io \"too-high\" is invalid: value: Forbidden: maximum allowed value of a user defined priority is 1000000000"
        )
    );

    api.ok(
        "POST",
        PCS,
        Some(
            json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": {"name": "batch"}, "value": 100, "preemptionPolicy": "Never"}),
        ),
    )
    .await;
    let p = api
        .ok(
            "POST",
            PODS,
            Some(pod(
                "classy",
                json!({}),
                json!({"priorityClassName": "batch"}),
            )),
        )
        .await;
    assert_eq!(p["spec"]["priority"], json!(100));
    assert_eq!(p["spec"]["preemptionPolicy"], json!("Never"));
    let p = api
        .ok("POST", PODS, Some(pod("plain", json!({}), json!({}))))
        .await;
    assert_eq!(p["spec"]["priority"], json!(0));

    let (code, v) = api
        .send(
            "POST",
            PODS,
            Some(pod("lost", json!({}), json!({"priorityClassName": "nope"}))),
        )
        .await;
    assert_eq!(code, 403, "{v}");
    assert_eq!(
        v["message"],
        json!("pods \"lost\" is forbidden: no PriorityClass with name nope was found")
    );

    api.ok(
        "POST",
        PCS,
        Some(
            json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": {"name": "normal"}, "value": 10, "globalDefault": true}),
        ),
    )
    .await;
    let (code, v) = api
        .send(
            "POST",
            PCS,
            Some(
                json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": "other"}, "value": 20, "globalDefault": true}),
            ),
        )
        .await;
    assert_eq!(code, 403, "{v}");
    assert_eq!(
        v["message"],
        json!(
            "priorityclasses.scheduling.k8s.io \"other\" is forbidden: PriorityClass normal is already marked as default. Only one default can exist"
        )
    );
    let p = api
        .ok("POST", PODS, Some(pod("defaulted", json!({}), json!({}))))
        .await;
    assert_eq!(p["spec"]["priorityClassName"], json!("normal"));
    assert_eq!(p["spec"]["priority"], json!(10));
}

#[tokio::test]
async fn budgets_validate_and_guard_evictions() {
    let api = Api::new().await;
    let (code, v) = api
        .send("POST", PDBS, Some(json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "both"},
            "spec": {"minAvailable": 1, "maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}}})))
        .await;
    assert_eq!(code, 422, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or("")
            .ends_with("minAvailable and maxUnavailable cannot be both set"),
        "{v}"
    );

    let b = api
        .ok(
            "POST",
            PDBS,
            Some(
                json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "web"},
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}}),
            ),
        )
        .await;
    assert_eq!(b["metadata"]["generation"], json!(1));
    assert_eq!(b["status"]["disruptionsAllowed"], json!(0));

    running_pod(&api, "web-a", json!({"app": "web"})).await;
    running_pod(&api, "web-b", json!({"app": "web"})).await;
    set_budget(&api, "web", 0, 2, 2).await;

    let (code, v) = api
        .send(
            "POST",
            &format!("{PODS}/web-a/eviction"),
            Some(eviction("web-b")),
        )
        .await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(
        v["message"],
        json!("name in URL does not match name in Eviction object")
    );

    let (code, v) = api
        .send(
            "POST",
            &format!("{PODS}/web-a/eviction"),
            Some(eviction("web-a")),
        )
        .await;
    assert_eq!(code, 429, "{v}");
    assert_eq!(
        v,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "Cannot evict pod as it would violate the pod's disruption budget.",
            "reason": "TooManyRequests",
            "details": {"causes": [{"reason": "DisruptionBudget",
                "message": "The disruption budget web needs 2 healthy pods and has 2 currently"}]},
            "code": 429})
    );
    api.ok("GET", &format!("{PODS}/web-a"), None).await;

    // One disruption allowed: the eviction spends it and records the pod.
    set_budget(&api, "web", 1, 2, 1).await;
    let (code, v) = api
        .send(
            "POST",
            &format!("{PODS}/web-a/eviction"),
            Some(eviction("web-a")),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["status"], json!("Success"));
    let (code, _) = api.send("GET", &format!("{PODS}/web-a"), None).await;
    assert_eq!(code, 404, "an unbound pod is deleted at once");
    let b = api.ok("GET", &format!("{PDBS}/web"), None).await;
    assert_eq!(b["status"]["disruptionsAllowed"], json!(0));
    assert!(b["status"]["disruptedPods"]["web-a"].is_string(), "{b}");
    assert_eq!(
        b["status"]["conditions"][0]["reason"],
        json!("InsufficientPods")
    );

    // The budget is spent: the next one waits.
    let (code, _) = api
        .send(
            "POST",
            &format!("{PODS}/web-b/eviction"),
            Some(eviction("web-b")),
        )
        .await;
    assert_eq!(code, 429);

    // A finished pod is evicted whatever the budget says.
    let mut p = api.ok("GET", &format!("{PODS}/web-b"), None).await;
    p["status"]["phase"] = json!("Succeeded");
    api.ok("PUT", &format!("{PODS}/web-b/status"), Some(p))
        .await;
    let (code, v) = api
        .send(
            "POST",
            &format!("{PODS}/web-b/eviction"),
            Some(eviction("web-b")),
        )
        .await;
    assert_eq!(code, 201, "{v}");

    // Two budgets over one pod: 500, nothing deleted.
    running_pod(&api, "web-c", json!({"app": "web"})).await;
    api.ok(
        "POST",
        PDBS,
        Some(
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "all"}, "spec": {"maxUnavailable": "50%", "selector": {}}}),
        ),
    )
    .await;
    let (code, v) = api
        .send(
            "POST",
            &format!("{PODS}/web-c/eviction"),
            Some(eviction("web-c")),
        )
        .await;
    assert_eq!(code, 500, "{v}");
    assert_eq!(
        v["message"],
        json!(
            "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."
        )
    );
    api.ok("GET", &format!("{PODS}/web-c"), None).await;
}

/// Creates a Running pod that is not Ready.
async fn unready_pod(api: &Api, name: &str, labels: Value) {
    api.ok("POST", PODS, Some(pod(name, labels, json!({}))))
        .await;
    let mut p = api.ok("GET", &format!("{PODS}/{name}"), None).await;
    p["status"]["phase"] = json!("Running");
    p["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    api.ok("PUT", &format!("{PODS}/{name}/status"), Some(p))
        .await;
}

async fn budget(api: &Api, name: &str, app: &str, policy: Option<&str>) {
    let mut spec = json!({"minAvailable": 2, "selector": {"matchLabels": {"app": app}}});
    if let Some(p) = policy {
        spec["unhealthyPodEvictionPolicy"] = json!(p);
    }
    api.ok(
        "POST",
        PDBS,
        Some(
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": name}, "spec": spec}),
        ),
    )
    .await;
}

#[tokio::test]
async fn unready_pods_and_dry_runs() {
    let api = Api::new().await;

    // IfHealthyBudget (the default): an unready pod goes without spending the budget while the
    // application is healthy, and waits while it is not.
    budget(&api, "healthy", "healthy", None).await;
    unready_pod(&api, "healthy-sick", json!({"app": "healthy"})).await;
    set_budget(&api, "healthy", 0, 2, 2).await;
    let (code, v) = api
        .send(
            "POST",
            &format!("{PODS}/healthy-sick/eviction"),
            Some(eviction("healthy-sick")),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    let b = api.ok("GET", &format!("{PDBS}/healthy"), None).await;
    assert!(b["status"].get("disruptedPods").is_none(), "{b}");

    budget(&api, "degraded", "degraded", None).await;
    unready_pod(&api, "degraded-sick", json!({"app": "degraded"})).await;
    set_budget(&api, "degraded", 0, 1, 2).await;
    let (code, v) = api
        .send(
            "POST",
            &format!("{PODS}/degraded-sick/eviction"),
            Some(eviction("degraded-sick")),
        )
        .await;
    assert_eq!(code, 429, "{v}");

    // AlwaysAllow: unready pods always go.
    budget(&api, "always", "always", Some("AlwaysAllow")).await;
    unready_pod(&api, "always-sick", json!({"app": "always"})).await;
    set_budget(&api, "always", 0, 1, 2).await;
    let (code, v) = api
        .send(
            "POST",
            &format!("{PODS}/always-sick/eviction"),
            Some(eviction("always-sick")),
        )
        .await;
    assert_eq!(code, 201, "{v}");

    // A dry run decides but changes nothing.
    running_pod(&api, "dry", json!({"app": "dryrun"})).await;
    budget(&api, "dryrun", "dryrun", None).await;
    set_budget(&api, "dryrun", 1, 2, 1).await;
    let (code, v) = api
        .send(
            "POST",
            &format!("{PODS}/dry/eviction?dryRun=All"),
            Some(eviction("dry")),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    api.ok("GET", &format!("{PODS}/dry"), None).await;
    let b = api.ok("GET", &format!("{PDBS}/dryrun"), None).await;
    assert_eq!(b["status"]["disruptionsAllowed"], json!(1));

    // A budget changed since the controller last looked asks the client to come back.
    api.ok(
        "PUT",
        &format!("{PDBS}/dryrun"),
        Some({
            let mut b = b.clone();
            b["spec"]["minAvailable"] = json!(1);
            b
        }),
    )
    .await;
    let (code, v) = api
        .send(
            "POST",
            &format!("{PODS}/dry/eviction"),
            Some(eviction("dry")),
        )
        .await;
    assert_eq!(code, 429, "{v}");
    assert_eq!(
        v["details"]["causes"][0]["message"],
        json!("The disruption budget dryrun is still being processed by the server.")
    );
    assert_eq!(v["details"]["retryAfterSeconds"], json!(10));
}

#[tokio::test]
async fn concurrent_evictions_never_spend_one_disruption_twice() {
    let api = Api::new().await;
    budget(&api, "one", "race", None).await;
    for i in 0..4 {
        running_pod(&api, &format!("race-{i}"), json!({"app": "race"})).await;
    }
    set_budget(&api, "one", 1, 4, 3).await;
    let uris: Vec<String> = (0..4)
        .map(|i| format!("{PODS}/race-{i}/eviction"))
        .collect();
    let results = futures::future::join_all(
        (0..4).map(|i| api.send("POST", &uris[i], Some(eviction(&format!("race-{i}"))))),
    )
    .await;
    let mut codes: Vec<u16> = results.iter().map(|(c, _)| *c).collect();
    codes.sort_unstable();
    assert_eq!(codes, [201, 429, 429, 429], "{results:?}");
    let b = api.ok("GET", &format!("{PDBS}/one"), None).await;
    assert_eq!(b["status"]["disruptionsAllowed"], json!(0));
    assert_eq!(
        b["status"]["disruptedPods"].as_object().map(|m| m.len()),
        Some(1),
        "{b}"
    );
}
