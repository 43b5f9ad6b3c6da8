//! ResourceQuota and LimitRanger admission in-process, through the real router, write pipeline
//! and watch caches: a class namespace with scoped quotas, object-count and node-port quotas,
//! a service update that grows usage, LimitRange Pod/Container limits and ratios, defaults on
//! init containers, and `status.used` following deletes (the usage loop).

use std::sync::Arc;
use std::time::Duration;

use apiserver::state::AppState;
use apiserver::storage::Storage;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};

mod common;

struct Api {
    state: Arc<AppState>,
    _store: Arc<dyn Storage>,
}

impl Api {
    async fn new() -> Api {
        let (state, store) = common::state().await;
        state.start_loops();
        Api {
            state,
            _store: store,
        }
    }

    async fn send(&self, method: &str, uri: &str, ct: &str, body: Option<Value>) -> (u16, Value) {
        let bytes = body
            .map(|b| serde_json::to_vec(&b).expect("encode"))
            .unwrap_or_default();
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, ct)
            .body(Body::from(bytes))
            .expect("request");
        req.extensions_mut().insert(common::admin());
        let (status, _, bytes) = common::send(&self.state, req).await;
        (
            status.as_u16(),
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn post(&self, uri: &str, body: Value) -> (u16, Value) {
        self.send("POST", uri, "application/json", Some(body)).await
    }

    /// POST that must succeed.
    async fn create(&self, uri: &str, body: Value) -> Value {
        let (code, v) = self.post(uri, body).await;
        assert_eq!(code, StatusCode::CREATED.as_u16(), "POST {uri}: {v}");
        v
    }

    /// POST that must be refused with 403 Forbidden; returns the message.
    async fn forbidden(&self, uri: &str, body: Value) -> String {
        let (code, v) = self.post(uri, body).await;
        assert_eq!(code, 403, "POST {uri} should be forbidden: {v}");
        assert_eq!(v["reason"], "Forbidden", "{v}");
        v["message"].as_str().unwrap_or_default().to_string()
    }

    async fn get(&self, uri: &str) -> Value {
        let (code, v) = self.send("GET", uri, "application/json", None).await;
        assert_eq!(code, 200, "GET {uri}: {v}");
        v
    }
}

const NS: &str = "/api/v1/namespaces/klasse-5a";

fn pod(name: &str, containers: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"containers": containers}})
}

fn container(name: &str, requests: Value, limits: Value) -> Value {
    json!({"name": name, "image": "busybox", "resources": {"requests": requests, "limits": limits}})
}

async fn class_namespace(api: &Api) {
    api.create(
        "/api/v1/namespaces",
        json!({"metadata": {"name": "klasse-5a"}}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_quotas_constraints_and_messages() {
    let api = Api::new().await;
    class_namespace(&api).await;
    api.create(
        &format!("{NS}/resourcequotas"),
        json!({"metadata": {"name": "best-effort"},
               "spec": {"hard": {"pods": "1"}, "scopes": ["BestEffort"]}}),
    )
    .await;
    api.create(
        &format!("{NS}/resourcequotas"),
        json!({"metadata": {"name": "compute"},
               "spec": {"hard": {"requests.cpu": "2", "limits.cpu": "2"}, "scopes": ["NotBestEffort"]}}),
    )
    .await;
    api.create(
        &format!("{NS}/resourcequotas"),
        json!({"metadata": {"name": "high-priority"},
               "spec": {"hard": {"pods": "0"},
                        "scopeSelector": {"matchExpressions": [
                            {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}}),
    )
    .await;
    let pods = format!("{NS}/pods");

    // BestEffort pods count only against the BestEffort quota.
    api.create(
        &pods,
        pod("be-1", json!([{"name": "app", "image": "busybox"}])),
    )
    .await;
    let msg = api
        .forbidden(
            &pods,
            pod("be-2", json!([{"name": "app", "image": "busybox"}])),
        )
        .await;
    assert_eq!(
        msg,
        "pods \"be-2\" is forbidden: exceeded quota: best-effort, requested: pods=1, used: pods=1, limited: pods=1"
    );

    // The NotBestEffort quota constrains cpu: every container must state requests and limits.
    let msg = api
        .forbidden(
            &pods,
            pod(
                "no-limits",
                json!([
                    container("app", json!({"cpu": "500m"}), json!({})),
                    container("sidecar", json!({"cpu": "100m"}), json!({"cpu": "100m"}))
                ]),
            ),
        )
        .await;
    assert_eq!(
        msg,
        "pods \"no-limits\" is forbidden: failed quota: compute: must specify limits.cpu for: app"
    );
    api.create(
        &pods,
        pod(
            "web",
            json!([container("app", json!({"cpu": "1"}), json!({"cpu": "1"}))]),
        ),
    )
    .await;
    let msg = api
        .forbidden(
            &pods,
            pod(
                "big",
                json!([container(
                    "app",
                    json!({"cpu": "1500m"}),
                    json!({"cpu": "1500m"})
                )]),
            ),
        )
        .await;
    assert_eq!(
        msg,
        "pods \"big\" is forbidden: exceeded quota: compute, requested: limits.cpu=1500m,requests.cpu=1500m, used: limits.cpu=1,requests.cpu=1, limited: limits.cpu=2,requests.cpu=2"
    );

    // scopeSelector: only pods of PriorityClass "high" are limited (to none).
    let mut high = pod(
        "urgent",
        json!([container(
            "app",
            json!({"cpu": "100m"}),
            json!({"cpu": "100m"})
        )]),
    );
    high["spec"]["priorityClassName"] = json!("high");
    // The class must exist: the Priority admission plugin refuses unknown classes first.
    api.create(
        "/apis/scheduling.k8s.io/v1/priorityclasses",
        json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": "high"}, "value": 1000}),
    )
    .await;
    let msg = api.forbidden(&pods, high).await;
    assert_eq!(
        msg,
        "pods \"urgent\" is forbidden: exceeded quota: high-priority, requested: pods=1, used: pods=0, limited: pods=0"
    );

    // status.used is charged by admission and follows deletes (the usage loop).
    let q = api.get(&format!("{NS}/resourcequotas/compute")).await;
    assert_eq!(
        q["status"]["used"],
        json!({"limits.cpu": "1", "requests.cpu": "1"}),
        "{q}"
    );
    let (code, v) = api
        .send("DELETE", &format!("{pods}/web"), "application/json", None)
        .await;
    assert_eq!(code, 200, "{v}");
    let mut used = Value::Null;
    for _ in 0..100 {
        used = api.get(&format!("{NS}/resourcequotas/compute")).await["status"]["used"].clone();
        if used == json!({"limits.cpu": "0", "requests.cpu": "0"}) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(used, json!({"limits.cpu": "0", "requests.cpu": "0"}));
    let be = api.get(&format!("{NS}/resourcequotas/best-effort")).await;
    assert_eq!(be["status"]["used"], json!({"pods": "1"}), "{be}");
    // Now the large pod fits.
    api.create(
        &pods,
        pod(
            "big",
            json!([container(
                "app",
                json!({"cpu": "1500m"}),
                json!({"cpu": "1500m"})
            )]),
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_counts_and_service_updates() {
    let api = Api::new().await;
    class_namespace(&api).await;
    api.create(
        &format!("{NS}/resourcequotas"),
        json!({"metadata": {"name": "objects"},
               "spec": {"hard": {"count/deployments.apps": "1", "count/configmaps": "1",
                                 "services.nodeports": "1", "services.loadbalancers": "0"}}}),
    )
    .await;
    let deployment = |name: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
               "spec": {"selector": {"matchLabels": {"app": name}},
                        "template": {"metadata": {"labels": {"app": name}},
                                     "spec": {"containers": [{"name": "app", "image": "busybox"}]}}}})
    };
    let deployments = "/apis/apps/v1/namespaces/klasse-5a/deployments";
    api.create(deployments, deployment("one")).await;
    let msg = api.forbidden(deployments, deployment("two")).await;
    assert_eq!(
        msg,
        "deployments.apps \"two\" is forbidden: exceeded quota: objects, requested: count/deployments.apps=1, used: count/deployments.apps=1, limited: count/deployments.apps=1"
    );
    let cms = format!("{NS}/configmaps");
    api.create(&cms, json!({"metadata": {"name": "a"}})).await;
    let msg = api
        .forbidden(&cms, json!({"metadata": {"name": "b"}}))
        .await;
    assert!(
        msg.ends_with(
            "requested: count/configmaps=1, used: count/configmaps=1, limited: count/configmaps=1"
        ),
        "{msg}"
    );

    // A ClusterIP service uses no node ports; turning it into a NodePort service would use
    // two, and the update is refused like a create.
    let svcs = format!("{NS}/services");
    api.create(
        &svcs,
        json!({"metadata": {"name": "web"},
               "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]}}),
    )
    .await;
    let (code, v) = api
        .send(
            "PATCH",
            &format!("{svcs}/web"),
            "application/merge-patch+json",
            Some(json!({"spec": {"type": "NodePort"}})),
        )
        .await;
    assert_eq!(code, 403, "{v}");
    assert_eq!(
        v["message"],
        "services \"web\" is forbidden: exceeded quota: objects, requested: services.nodeports=2, used: services.nodeports=0, limited: services.nodeports=1"
    );
    let svc = api.get(&format!("{svcs}/web")).await;
    assert_eq!(
        svc["spec"]["type"], "ClusterIP",
        "the refused update left nothing behind"
    );
    // One port fits: the update is charged.
    let (code, v) = api
        .send(
            "PATCH",
            &format!("{svcs}/web"),
            "application/merge-patch+json",
            Some(json!({"spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80}]}})),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    let q = api.get(&format!("{NS}/resourcequotas/objects")).await;
    assert_eq!(q["status"]["used"]["services.nodeports"], "1", "{q}");
    let msg = api
        .forbidden(
            &svcs,
            json!({"metadata": {"name": "lb"},
                   "spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false,
                            "ports": [{"port": 80}]}}),
        )
        .await;
    assert_eq!(
        msg,
        "services \"lb\" is forbidden: exceeded quota: objects, requested: services.loadbalancers=1, used: services.loadbalancers=0, limited: services.loadbalancers=0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_ranges_default_and_constrain() {
    let api = Api::new().await;
    class_namespace(&api).await;
    api.create(
        &format!("{NS}/limitranges"),
        json!({"metadata": {"name": "limits"},
               "spec": {"limits": [
                   {"type": "Container", "max": {"cpu": "1"}, "maxLimitRequestRatio": {"cpu": "2"},
                    "default": {"cpu": "500m", "memory": "128Mi"}, "defaultRequest": {"cpu": "250m", "memory": "64Mi"}},
                   {"type": "Pod", "max": {"cpu": "2"}, "maxLimitRequestRatio": {"memory": "4"}}]}}),
    )
    .await;
    let pods = format!("{NS}/pods");

    // Defaults reach init containers too and are recorded in the annotation.
    let mut p = pod("defaulted", json!([{"name": "app", "image": "busybox"}]));
    p["spec"]["initContainers"] = json!([{"name": "setup", "image": "busybox"}]);
    let created = api.create(&pods, p).await;
    assert_eq!(
        created["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu, memory request for container app; cpu, memory limit for container app; cpu, memory request for init container setup; cpu, memory limit for init container setup"
    );
    assert_eq!(
        created["spec"]["initContainers"][0]["resources"],
        json!({"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "250m", "memory": "64Mi"}})
    );
    assert_eq!(created["status"]["qosClass"], "Burstable", "{created}");

    // Pod max: the sum of the containers' limits.
    let three = json!([
        container("a", json!({"cpu": "1"}), json!({"cpu": "1"})),
        container("b", json!({"cpu": "1"}), json!({"cpu": "1"})),
        container("c", json!({"cpu": "1"}), json!({"cpu": "1"}))
    ]);
    let msg = api.forbidden(&pods, pod("three", three)).await;
    assert_eq!(
        msg,
        "pods \"three\" is forbidden: maximum cpu usage per Pod is 2, but limit is 3"
    );

    // Container ratio.
    let msg = api
        .forbidden(
            &pods,
            pod(
                "greedy",
                json!([container(
                    "app",
                    json!({"cpu": "250m"}),
                    json!({"cpu": "1"})
                )]),
            ),
        )
        .await;
    assert_eq!(
        msg,
        "pods \"greedy\" is forbidden: cpu max limit to request ratio per Container is 2, but provided ratio is 4.000000"
    );

    // Several violations are reported together (Container max and Pod ratio).
    let msg = api
        .forbidden(
            &pods,
            pod(
                "both",
                json!([container(
                    "app",
                    json!({"cpu": "2", "memory": "32Mi"}),
                    json!({"cpu": "2", "memory": "256Mi"})
                )]),
            ),
        )
        .await;
    assert_eq!(
        msg,
        "pods \"both\" is forbidden: [maximum cpu usage per Container is 1, but limit is 2, memory max limit to request ratio per Pod is 4, but provided ratio is 8.000000]"
    );
}
