//! In-process handler tests: the real router and registry over a temporary SQLite store,
//! driven with HTTP requests through tower (no network, no TLS).

use std::sync::Arc;

use apiserver::server;
use apiserver::state::AppState;
use apiserver::storage::Storage;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

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

    async fn call(
        &self,
        method: &str,
        uri: &str,
        content_type: &str,
        body: Vec<u8>,
        accept: Option<&str>,
    ) -> (StatusCode, Vec<u8>, axum::http::HeaderMap) {
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, content_type);
        if let Some(a) = accept {
            b = b.header(header::ACCEPT, a);
        }
        let mut req = b.body(Body::from(body)).expect("request");
        req.extensions_mut().insert(common::admin());
        let (status, headers, bytes) = common::send(&self.state, req).await;
        (status, bytes, headers)
    }

    /// POSTs `body` as `content_type` to the default namespace's configmaps.
    async fn post_configmap(
        &self,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Vec<u8>, axum::http::HeaderMap) {
        let uri = "/api/v1/namespaces/default/configmaps";
        self.call("POST", uri, content_type, body, None).await
    }

    /// Creates ConfigMap `name` (labels `labels`) in the default namespace.
    async fn create_cm(&self, name: &str, labels: Value) -> (StatusCode, Value) {
        let uri = "/api/v1/namespaces/default/configmaps";
        self.json("POST", uri, Some(cm(name, labels))).await
    }

    /// The events of a watch `uri` that ends by itself (`timeoutSeconds`).
    async fn watch_events(&self, uri: &str) -> Vec<Value> {
        let (s, body, _) = self.get(uri, None).await;
        assert_eq!(s, StatusCode::OK);
        body.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("event"))
            .collect()
    }

    /// GETs `uri`, raw, with an optional Accept header.
    async fn get(
        &self,
        uri: &str,
        accept: Option<&str>,
    ) -> (StatusCode, Vec<u8>, axum::http::HeaderMap) {
        self.call("GET", uri, "application/json", vec![], accept)
            .await
    }

    async fn json(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let bytes = body
            .map(|b| serde_json::to_vec(&b).expect("encode"))
            .unwrap_or_default();
        let (s, b, _) = self
            .call(method, uri, "application/json", bytes, None)
            .await;
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }
}

fn cm(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
}

#[tokio::test]
async fn create_get_list_with_server_metadata() {
    let api = Api::new().await;
    let (s, created) = api.create_cm("a", json!({"app": "x"})).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert!(
        created["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| u.len() == 36)
    );
    assert!(
        created["metadata"]["creationTimestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let (s, got) = api
        .json("GET", "/api/v1/namespaces/default/configmaps/a", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["metadata"]["resourceVersion"], rv.as_str());
    api.create_cm("b", json!({"app": "y"})).await;
    let (s, list) = api
        .json(
            "GET",
            "/api/v1/namespaces/default/configmaps?labelSelector=app%3Dx",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["kind"], "ConfigMapList");
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, vec!["a"]);
    assert!(
        list["metadata"]["resourceVersion"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
}

#[tokio::test]
async fn paging_with_limit_and_continue_is_consistent() {
    let api = Api::new().await;
    for i in 0..7 {
        api.create_cm(&format!("p{i}"), json!({})).await;
    }
    let mut names = Vec::new();
    let mut uri = "/api/v1/namespaces/default/configmaps?limit=3".to_string();
    let mut first_rv = None;
    loop {
        let (s, page) = api.json("GET", &uri, None).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        let rv = page["metadata"]["resourceVersion"]
            .as_str()
            .expect("rv")
            .to_string();
        if first_rv.is_none() {
            first_rv = Some(rv.clone());
            // A write between pages must not show up in later pages.
            api.create_cm("p9", json!({})).await;
        }
        assert_eq!(Some(rv), first_rv);
        names.extend(
            page["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string)),
        );
        match page["metadata"]["continue"].as_str() {
            Some(c) if !c.is_empty() => {
                uri = format!("/api/v1/namespaces/default/configmaps?limit=3&continue={c}")
            }
            _ => break,
        }
    }
    assert_eq!(names, vec!["p0", "p1", "p2", "p3", "p4", "p5", "p6"]);
}

#[tokio::test]
async fn errors_are_kubernetes_statuses() {
    let api = Api::new().await;
    // duplicate
    api.create_cm("dup", json!({})).await;
    let (s, e) = api.create_cm("dup", json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(e["reason"], "AlreadyExists");
    assert_eq!(e["message"], "configmaps \"dup\" already exists");
    // invalid name
    let (s, e) = api.create_cm("Bad_Name", json!({})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(e["reason"], "Invalid");
    assert_eq!(e["details"]["causes"][0]["field"], "metadata.name");
    assert!(e["message"].as_str().expect("msg").starts_with(
        "ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\""
    ));
    // missing namespace
    let (s, e) = api
        .json(
            "POST",
            "/api/v1/namespaces/nope/configmaps",
            Some(cm("x", json!({}))),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(e["message"], "namespaces \"nope\" not found");
    assert_eq!(e["details"]["kind"], "namespaces");
    // not found
    let (s, e) = api
        .json("GET", "/api/v1/namespaces/default/configmaps/missing", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(e["reason"], "NotFound");
    // unknown resource
    let (s, e) = api
        .json("GET", "/api/v1/namespaces/default/widgets", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(e["kind"], "Status");
    // malformed JSON
    let (s, b, _) = api
        .post_configmap("application/json", b"{not json".to_vec())
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let e: Value = serde_json::from_slice(&b).expect("status");
    assert_eq!(e["reason"], "BadRequest");
    // malformed YAML
    let (s, _, _) = api
        .post_configmap("application/yaml", b"a: [b".to_vec())
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // unknown field, strict
    let mut bad = cm("strict", json!({}));
    bad["dataz"] = json!({"a": "b"});
    let (s, e) = api
        .json(
            "POST",
            "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
            Some(bad.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        e["message"]
            .as_str()
            .expect("msg")
            .contains("strict decoding error: unknown field \"dataz\""),
        "{e}"
    );
    // unknown field, warn (default): created with a Warning header
    let (s, _, h) = api
        .post_configmap("application/json", serde_json::to_vec(&bad).expect("enc"))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(h.get_all(header::WARNING).iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .contains("unknown field \\\"dataz\\\"")
    }));
    // body too large
    let big = vec![b' '; 3 * 1024 * 1024 + 10];
    let (s, b, _) = api.post_configmap("application/json", big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let e: Value = serde_json::from_slice(&b).expect("status");
    assert_eq!(e["reason"], "RequestEntityTooLarge");
    // bad selector
    let (s, e) = api
        .json("GET", "/api/v1/pods?fieldSelector=spec.bogus%3Dx", None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(e["message"], "field label not supported: spec.bogus");
}

#[tokio::test]
async fn stale_update_conflicts_and_noop_update_keeps_revision() {
    let api = Api::new().await;
    let (_, created) = api.create_cm("u", json!({})).await;
    let mut v1 = created.clone();
    v1["data"] = json!({"k": "v2"});
    let (s, updated) = api
        .json("PUT", "/api/v1/namespaces/default/configmaps/u", Some(v1))
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut stale = created.clone();
    stale["data"] = json!({"k": "v3"});
    let (s, e) = api
        .json(
            "PUT",
            "/api/v1/namespaces/default/configmaps/u",
            Some(stale),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(
        e["message"],
        "Operation cannot be fulfilled on configmaps \"u\": the object has been modified; please apply your changes to the latest version and try again"
    );
    let (s, same) = api
        .json(
            "PUT",
            "/api/v1/namespaces/default/configmaps/u",
            Some(updated.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        same["metadata"]["resourceVersion"],
        updated["metadata"]["resourceVersion"]
    );
}

#[tokio::test]
async fn deployment_defaults_generation_and_scale() {
    let api = Api::new().await;
    let d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}},
    });
    let (s, created) = api
        .json(
            "POST",
            "/apis/apps/v1/namespaces/default/deployments",
            Some(d),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["metadata"]["generation"], 1);
    assert_eq!(created["spec"]["replicas"], 1);
    assert_eq!(created["spec"]["revisionHistoryLimit"], 10);
    assert_eq!(
        created["spec"]["strategy"]["rollingUpdate"]["maxSurge"],
        "25%"
    );
    assert_eq!(
        created["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
        "Always"
    );
    assert_eq!(
        created["spec"]["template"]["spec"]["restartPolicy"],
        "Always"
    );
    let (s, b, _) = api
        .call(
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/web/scale",
            "application/merge-patch+json",
            br#"{"spec":{"replicas":3}}"#.to_vec(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let scale: Value = serde_json::from_slice(&b).expect("scale");
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 3);
    assert_eq!(scale["status"]["selector"], "app=web");
    let (_, got) = api
        .json(
            "GET",
            "/apis/apps/v1/namespaces/default/deployments/web",
            None,
        )
        .await;
    assert_eq!(got["metadata"]["generation"], 2);
    // status writes do not bump generation and main writes cannot change status
    let mut st = got.clone();
    st["status"] = json!({"replicas": 3, "observedGeneration": 2});
    let (s, after) = api
        .json(
            "PUT",
            "/apis/apps/v1/namespaces/default/deployments/web/status",
            Some(st),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{after}");
    assert_eq!(after["status"]["replicas"], 3);
    assert_eq!(after["metadata"]["generation"], 2);
    // immutable selector
    let mut changed = after.clone();
    changed["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
    changed["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
    let (s, e) = api
        .json(
            "PUT",
            "/apis/apps/v1/namespaces/default/deployments/web",
            Some(changed),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert!(
        e["message"]
            .as_str()
            .expect("msg")
            .contains("field is immutable"),
        "{e}"
    );
}

#[tokio::test]
async fn services_get_cluster_ips_and_node_ports() {
    let api = Api::new().await;
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "np"}, "spec": {"type": "NodePort", "selector": {"a": "b"}, "ports": [{"port": 80}]}});
    let (s, created) = api
        .json("POST", "/api/v1/namespaces/default/services", Some(svc))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let ip: std::net::Ipv4Addr = created["spec"]["clusterIP"]
        .as_str()
        .expect("ip")
        .parse()
        .expect("ipv4");
    let net: ipnet::Ipv4Net = "10.96.0.0/12".parse().expect("net");
    assert!(net.contains(&ip));
    assert_ne!(
        ip.to_string(),
        "10.96.0.1",
        "reserved for the kubernetes service"
    );
    let np = created["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .expect("nodePort");
    assert!((30000..=32767).contains(&np));
    assert_eq!(created["spec"]["ports"][0]["targetPort"], 80);
    // the same IP cannot be requested twice
    let dup = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dup"}, "spec": {"clusterIP": ip.to_string(), "ports": [{"port": 80}]}});
    let (s, e) = api
        .json("POST", "/api/v1/namespaces/default/services", Some(dup))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert!(
        e["message"]
            .as_str()
            .expect("msg")
            .contains("provided IP is already allocated")
    );
}

#[tokio::test]
async fn an_object_leaving_a_selector_is_deleted_at_the_new_revision() {
    let api = Api::new().await;
    let (_, a) = api.create_cm("leaver", json!({"w": "yes"})).await;
    let rv = a["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let mut upd = a.clone();
    upd["metadata"]["labels"] = json!({"w": "no"});
    let (s, updated) = api
        .json(
            "PUT",
            "/api/v1/namespaces/default/configmaps/leaver",
            Some(upd),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{updated}");
    let uri = format!(
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&labelSelector=w%3Dyes&timeoutSeconds=1"
    );
    let events = api.watch_events(&uri).await;
    assert_eq!(events.len(), 1, "{events:?}");
    // Kubernetes' cacheWatcher: the last state that matched, at the update's revision.
    assert_eq!(events[0]["type"], "DELETED");
    let obj = &events[0]["object"];
    assert_eq!(obj["metadata"]["labels"]["w"], "yes");
    assert_eq!(
        obj["metadata"]["resourceVersion"],
        updated["metadata"]["resourceVersion"]
    );
    let mut want = a.clone();
    want["metadata"]["resourceVersion"] = updated["metadata"]["resourceVersion"].clone();
    assert_eq!(obj, &want);
}

#[tokio::test]
async fn watch_replays_from_a_revision_and_filters() {
    let api = Api::new().await;
    let (_, a) = api.create_cm("w1", json!({"w": "yes"})).await;
    let rv = a["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    api.create_cm("w2", json!({"w": "no"})).await;
    let mut upd = a.clone();
    upd["data"] = json!({"k": "changed"});
    api.json("PUT", "/api/v1/namespaces/default/configmaps/w1", Some(upd))
        .await;
    api.json("DELETE", "/api/v1/namespaces/default/configmaps/w1", None)
        .await;
    let uri = format!(
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&labelSelector=w%3Dyes&timeoutSeconds=1"
    );
    let events = api.watch_events(&uri).await;
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, vec!["MODIFIED", "DELETED"]);
    assert_eq!(events[0]["object"]["data"]["k"], "changed");
    // a watch from a revision older than the window gets an in-stream 410
    api.state.caches().for_each(|_| {});
    for c in api.state.caches() {
        c.compacted(i64::MAX / 2).await;
    }
    let (s, body, _) = api
        .get(
            &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let e: Value =
        serde_json::from_slice(body.split(|b| *b == b'\n').next().expect("line")).expect("event");
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["object"]["code"], 410);
    assert_eq!(e["object"]["reason"], "Expired");
}

#[tokio::test]
async fn table_and_discovery() {
    let api = Api::new().await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let (s, created) = api
        .json("POST", "/api/v1/namespaces/default/pods", Some(pod))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["status"]["phase"], "Pending");
    let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
    let (s, b, _) = api
        .get("/api/v1/namespaces/default/pods?limit=500", Some(accept))
        .await;
    assert_eq!(s, StatusCode::OK);
    let t: Value = serde_json::from_slice(&b).expect("table");
    assert_eq!(t["kind"], "Table");
    let cols: Vec<(&str, i64)> = t["columnDefinitions"]
        .as_array()
        .expect("cols")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or(""),
                c["priority"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    let visible: Vec<&str> = cols
        .iter()
        .filter(|(_, p)| *p == 0)
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(visible, vec!["Name", "Ready", "Status", "Restarts", "Age"]);
    assert_eq!(t["rows"][0]["cells"][0], "p");
    assert_eq!(t["rows"][0]["cells"][1], "0/1");
    assert_eq!(t["rows"][0]["cells"][2], "Pending");
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    let (s, b, h) = api
        .get("/apis", Some("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        Some("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")
    );
    let d: Value = serde_json::from_slice(&b).expect("discovery");
    assert!(
        d["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|g| g["metadata"]["name"] == "apps")
    );
    let (s, v) = api.json("GET", "/version", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["minor"], "33");
}

#[tokio::test]
async fn anonymous_requests_are_authorized_like_any_other() {
    // kube-apiserver's default --anonymous-auth=true: no credentials is system:anonymous in
    // system:unauthenticated, and RBAC says no (403, not 401) to what it may not see.
    let api = Api::new().await;
    let req = Request::builder()
        .uri("/api/v1/namespaces")
        .body(Body::empty())
        .expect("req");
    let resp = server::router(api.state.clone())
        .oneshot(req)
        .await
        .expect("resp");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains(r#"User \"system:anonymous\" cannot list resource \"namespaces\""#),
        "{body}"
    );
    let req = Request::builder()
        .uri("/healthz")
        .body(Body::empty())
        .expect("req");
    let resp = server::router(api.state.clone())
        .oneshot(req)
        .await
        .expect("resp");
    assert_eq!(resp.status(), StatusCode::OK);
}
