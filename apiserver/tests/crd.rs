//! CustomResourceDefinitions in-process: the real router over a temporary SQLite store. Every
//! test uses its own API group (served custom resources are process-wide).

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
        body: Value,
        accept: Option<&str>,
    ) -> (StatusCode, Value, axum::http::HeaderMap) {
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, content_type);
        if let Some(a) = accept {
            b = b.header(header::ACCEPT, a);
        }
        let bytes = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(&body).expect("json")
        };
        let mut req = b.body(Body::from(bytes)).expect("request");
        req.extensions_mut().insert(common::admin());
        let (status, headers, bytes) = common::send(&self.state, req).await;
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, v, headers)
    }

    /// A request as a client-certificate user without groups.
    async fn call_as(
        &self,
        user: &str,
        method: &str,
        uri: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let bytes = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(&body).expect("json")
        };
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(bytes))
            .expect("request");
        req.extensions_mut()
            .insert(apiserver::auth::ClientCertIdentity(
                apiserver::auth::UserInfo::from_cert(user.into(), vec![]),
            ));
        let (status, _, bytes) = common::send(&self.state, req).await;
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, v)
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        let (s, v, _) = self
            .call("GET", uri, "application/json", Value::Null, None)
            .await;
        (s, v)
    }

    async fn post(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        let (s, v, _) = self.call("POST", uri, "application/json", body, None).await;
        (s, v)
    }

    async fn patch(&self, uri: &str, ct: &str, body: Value) -> (StatusCode, Value) {
        let (s, v, _) = self.call("PATCH", uri, ct, body, None).await;
        (s, v)
    }

    /// Creates a CRD and waits until it is Established and its resource is served.
    async fn establish(&self, crd: Value) -> Value {
        let (s, v) = self
            .post(
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                crd.clone(),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let name = crd["metadata"]["name"].as_str().expect("name").to_string();
        let group = crd["spec"]["group"].as_str().expect("group").to_string();
        let version = crd["spec"]["versions"][0]["name"]
            .as_str()
            .expect("version")
            .to_string();
        for _ in 0..100 {
            let (_, got) = self
                .get(&format!(
                    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
                ))
                .await;
            let established = got["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Established" && c["status"] == "True")
            });
            let (served, _) = self.get(&format!("/apis/{group}/{version}")).await;
            if established && served == StatusCode::OK {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("CRD {name} not established");
    }
}

fn crontab_crd(group: &str, scope: &str) -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": format!("crontabs.{group}")},
    "spec": {"group": group, "scope": scope,
        "names": {"plural": "crontabs", "singular": "crontab", "kind": "CronTab", "shortNames": ["ct"], "categories": ["all"]},
        "versions": [
            {"name": "v1", "served": true, "storage": true,
             "selectableFields": [{"jsonPath": ".spec.image"}],
             "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector"}},
             "additionalPrinterColumns": [
                {"name": "Spec", "type": "string", "jsonPath": ".spec.cronSpec"},
                {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
             "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "required": ["cronSpec"], "properties": {
                    "cronSpec": {"type": "string", "pattern": "^(\\S+ ){4}\\S+$"},
                    "image": {"type": "string"},
                    "replicas": {"type": "integer", "minimum": 0, "default": 1}}},
                "status": {"type": "object", "properties": {
                    "replicas": {"type": "integer"}, "selector": {"type": "string"}}}}}}},
            {"name": "v1beta1", "served": true, "storage": false,
             "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}
        ]}})
}

fn crontab(name: &str, group: &str, version: &str) -> Value {
    json!({"apiVersion": format!("{group}/{version}"), "kind": "CronTab",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"cronSpec": "* * * * */5", "image": "my-cron-image"}})
}

#[tokio::test]
async fn crd_lifecycle_serves_and_removes_the_resource() {
    let api = Api::new().await;
    let group = "life.example.com";
    let crd = api.establish(crontab_crd(group, "Namespaced")).await;
    assert_eq!(crd["status"]["acceptedNames"]["kind"], "CronTab");
    assert_eq!(crd["status"]["storedVersions"], json!(["v1"]));
    assert_eq!(
        crd["metadata"]["finalizers"],
        json!(["customresourcecleanup.apiextensions.k8s.io"])
    );
    let (_, conds) = (0, crd["status"]["conditions"].clone());
    assert_eq!(conds[0]["type"], "NamesAccepted");
    assert_eq!(conds[0]["reason"], "NoConflicts");

    // Discovery: legacy and aggregated.
    let (s, list) = api.get(&format!("/apis/{group}/v1")).await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<&str> = list["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, vec!["crontabs", "crontabs/status", "crontabs/scale"]);
    assert_eq!(list["resources"][0]["shortNames"], json!(["ct"]));
    assert_eq!(list["resources"][0]["categories"], json!(["all"]));
    let (_, g) = api.get(&format!("/apis/{group}")).await;
    assert_eq!(g["preferredVersion"]["version"], "v1");
    let (_, agg, _) = api
        .call(
            "GET",
            "/apis",
            "application/json",
            Value::Null,
            Some("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"),
        )
        .await;
    let item = agg["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["metadata"]["name"] == group)
        .cloned()
        .expect("group in aggregated discovery");
    assert_eq!(item["versions"][0]["resources"][0]["resource"], "crontabs");

    // CRUD in two versions, stored once.
    let base = format!("/apis/{group}/v1/namespaces/default/crontabs");
    let (s, created) = api.post(&base, crontab("c1", group, "v1")).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["spec"]["replicas"], 1, "defaulted");
    assert_eq!(created["metadata"]["generation"], 1);
    let (s, beta) = api
        .get(&format!(
            "/apis/{group}/v1beta1/namespaces/default/crontabs/c1"
        ))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(beta["apiVersion"], format!("{group}/v1beta1"));
    let (s, l) = api.get(&format!("{base}?labelSelector=app%3Dc1")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(l["kind"], "CronTabList");
    assert_eq!(l["items"].as_array().map(Vec::len), Some(1));
    let (_, l) = api
        .get(&format!("{base}?fieldSelector=metadata.name%3Dother"))
        .await;
    assert_eq!(l["items"].as_array().map(Vec::len), Some(0));

    // selectableFields work as field selectors; other fields are refused.
    let (s, l) = api
        .get(&format!("{base}?fieldSelector=spec.image%3Dmy-cron-image"))
        .await;
    assert_eq!(s, StatusCode::OK, "{l}");
    assert_eq!(l["items"].as_array().map(Vec::len), Some(1));
    let (_, l) = api
        .get(&format!("{base}?fieldSelector=spec.image%3Dother"))
        .await;
    assert_eq!(l["items"].as_array().map(Vec::len), Some(0));
    let (s, e) = api
        .get(&format!("{base}?fieldSelector=spec.cronSpec%3Dx"))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(e["message"], "field label not supported: spec.cronSpec");

    // Table with printer columns.
    let (_, t, _) = api
        .call(
            "GET",
            &base,
            "application/json",
            Value::Null,
            Some("application/json;as=Table;v=v1;g=meta.k8s.io"),
        )
        .await;
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(cols, vec!["Name", "Spec", "Replicas", "Age"]);
    assert_eq!(t["rows"][0]["cells"][0], "c1");
    assert_eq!(t["rows"][0]["cells"][1], "* * * * */5");
    assert_eq!(t["rows"][0]["cells"][2], 1);

    // Merge patch bumps generation on spec changes; status is ignored on the main resource.
    let (s, p) = api
        .patch(
            &format!("{base}/c1"),
            "application/merge-patch+json",
            json!({"spec": {"replicas": 3}, "status": {"replicas": 9}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["metadata"]["generation"], 2);
    assert!(p.get("status").is_none());
    // Status subresource: only status changes, generation stays.
    let (s, p) = api
        .patch(
            &format!("{base}/c1/status"),
            "application/merge-patch+json",
            json!({"spec": {"replicas": 7}, "status": {"replicas": 2, "selector": "app=c1"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["status"]["replicas"], 2);
    assert_eq!(p["spec"]["replicas"], 3);
    assert_eq!(p["metadata"]["generation"], 2);
    // Server-side apply through the status subresource (what a kube-runtime controller does).
    let (s, p, _) = api
        .call(
            "PATCH",
            &format!("{base}/c1/status?fieldManager=ctl&force=true"),
            "application/apply-patch+yaml",
            json!({"apiVersion": format!("{group}/v1"), "kind": "CronTab",
                "status": {"replicas": 2, "selector": "app=c1"}}),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["status"]["selector"], "app=c1", "{p}");
    // Scale subresource.
    let (s, sc) = api.get(&format!("{base}/c1/scale")).await;
    assert_eq!(s, StatusCode::OK, "{sc}");
    assert_eq!(sc["kind"], "Scale");
    assert_eq!(sc["spec"]["replicas"], 3);
    assert_eq!(sc["status"]["replicas"], 2);
    assert_eq!(sc["status"]["selector"], "app=c1");
    let (s, sc) = api
        .patch(
            &format!("{base}/c1/scale"),
            "application/merge-patch+json",
            json!({"spec": {"replicas": 5}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{sc}");
    let (_, got) = api.get(&format!("{base}/c1")).await;
    assert_eq!(got["spec"]["replicas"], 5);

    // Strategic merge patch: 415, as Kubernetes.
    let (s, e) = api
        .patch(
            &format!("{base}/c1"),
            "application/strategic-merge-patch+json",
            json!({"spec": {"replicas": 4}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        e["message"],
        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
    );

    // Server-side apply creates and updates.
    let (s, a, _) = api
        .call(
            "PATCH",
            &format!("{base}/c2?fieldManager=test"),
            "application/apply-patch+yaml",
            crontab("c2", group, "v1"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{a}");
    assert_eq!(a["metadata"]["managedFields"][0]["manager"], "test");

    // OpenAPI v3 (index + document from the CRD's schema) and v2.
    let (_, index) = api.get("/openapi/v3").await;
    let url = index["paths"][format!("apis/{group}/v1")]["serverRelativeURL"]
        .as_str()
        .expect("group-version in the OpenAPI v3 index")
        .to_string();
    let (s, doc) = api.get(&url).await;
    assert_eq!(s, StatusCode::OK);
    let schema_name = "com.example.life.v1.CronTab";
    let schema = &doc["components"]["schemas"][schema_name];
    assert_eq!(
        schema["x-kubernetes-group-version-kind"],
        json!([{"group": group, "version": "v1", "kind": "CronTab"}])
    );
    assert_eq!(
        schema["properties"]["spec"]["properties"]["replicas"]["type"],
        "integer"
    );
    let patch = &doc["paths"]
        [format!("/apis/{group}/v1/namespaces/{{namespace}}/crontabs/{{name}}")]["patch"];
    assert!(patch["requestBody"]["content"]["application/merge-patch+json"].is_object());
    assert!(patch["requestBody"]["content"]["application/strategic-merge-patch+json"].is_null());
    assert!(
        patch["parameters"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "fieldValidation"))
    );
    let (_, v2) = api.get("/openapi/v2").await;
    assert!(v2["definitions"][schema_name].is_object());

    // Editing the CRD (a new printer column, a stricter schema) takes effect without a restart.
    let crd_uri =
        format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/crontabs.{group}");
    let (s, v) = api
        .patch(
            &crd_uri,
            "application/json-patch+json",
            json!([
                {"op": "add", "path": "/spec/versions/0/additionalPrinterColumns/-",
                 "value": {"name": "Image", "type": "string", "jsonPath": ".spec.image", "priority": 1}},
                {"op": "add", "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/image/maxLength",
                 "value": 3}
            ]),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut cols = Vec::new();
    for _ in 0..100 {
        let (_, t, _) = api
            .call(
                "GET",
                &base,
                "application/json",
                Value::Null,
                Some("application/json;as=Table;v=v1;g=meta.k8s.io"),
            )
            .await;
        cols = t["columnDefinitions"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if cols.len() == 5 {
            assert_eq!(t["rows"][0]["cells"][4], "my-cron-image");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cols, vec!["Name", "Spec", "Replicas", "Age", "Image"]);
    let (s, e) = api.post(&base, crontab("c9", group, "v1")).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(
        e["message"],
        format!(
            "CronTab.{group} \"c9\" is invalid: spec.image: Too long: may not be more than 3 bytes"
        )
    );

    // Deleting the CRD deletes its objects and stops serving the resource.
    let (s, _, _) = api
        .call(
            "DELETE",
            &format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/crontabs.{group}"),
            "application/json",
            Value::Null,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut gone = false;
    for _ in 0..100 {
        let (s, _) = api.get(&format!("/apis/{group}/v1")).await;
        let (c, _) = api
            .get(&format!(
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/crontabs.{group}"
            ))
            .await;
        if s == StatusCode::NOT_FOUND && c == StatusCode::NOT_FOUND {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "resource still served after its CRD was deleted");
    let (_, index) = api.get("/openapi/v3").await;
    assert!(index["paths"][format!("apis/{group}/v1")].is_null());
    let left = api
        .state
        .storage
        .list(&format!("/registry/{group}/crontabs/"), Default::default())
        .await
        .expect("list");
    assert!(left.items.is_empty(), "objects left behind");
}

#[tokio::test]
async fn schema_validation_and_pruning_errors() {
    let api = Api::new().await;
    let group = "valid.example.com";
    api.establish(crontab_crd(group, "Cluster")).await;
    let base = format!("/apis/{group}/v1/crontabs");
    let mut bad = crontab("bad", group, "v1");
    bad["spec"]["replicas"] = json!("three");
    let (s, e) = api.post(&base, bad).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        e["message"],
        format!(
            "CronTab.{group} \"bad\" is invalid: spec.replicas: Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\""
        )
    );
    assert_eq!(e["details"]["causes"][0]["field"], "spec.replicas");
    let mut bad = crontab("bad", group, "v1");
    bad["spec"]["cronSpec"] = json!("nope");
    let (s, e) = api.post(&base, bad).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        e["message"],
        format!(
            "CronTab.{group} \"bad\" is invalid: spec.cronSpec: Invalid value: \"nope\": spec.cronSpec in body should match '^(\\S+ ){{4}}\\S+$'"
        )
    );
    // Unknown fields: Strict refuses, Warn warns, Ignore prunes.
    let mut extra = crontab("x", group, "v1");
    extra["spec"]["bogus"] = json!(1);
    let (s, e, _) = api
        .call(
            "POST",
            &format!("{base}?fieldValidation=Strict"),
            "application/json",
            extra.clone(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        e["message"],
        "CronTab in version \"v1\" cannot be handled as a CronTab: strict decoding error: unknown field \"spec.bogus\""
    );
    let (s, o, h) = api
        .call(
            "POST",
            &format!("{base}?fieldValidation=Warn"),
            "application/json",
            extra,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(o["spec"].get("bogus").is_none(), "pruned");
    let warning = h
        .get(header::WARNING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        warning.contains("unknown field \\\"spec.bogus\\\""),
        "{warning}"
    );
    // Cluster-scoped: no namespace in the path or the object.
    assert!(o["metadata"].get("namespace").is_none());
    // Protobuf bodies are refused for custom resources.
    let (s, _, _) = api
        .call(
            "POST",
            &base,
            "application/vnd.kubernetes.protobuf",
            json!({}),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn invalid_crds_are_refused_with_kubernetes_messages() {
    let api = Api::new().await;
    let mut crd = crontab_crd("bad.example.com", "Namespaced");
    crd["metadata"]["name"] = json!("crontab.bad.example.com");
    let (s, e) = api
        .post(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            crd,
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        e["message"],
        "CustomResourceDefinition.apiextensions.k8s.io \"crontab.bad.example.com\" is invalid: metadata.name: Invalid value: \"crontab.bad.example.com\": must be spec.names.plural+\".\"+spec.group"
    );
    let mut crd = crontab_crd("cel.example.com", "Namespaced");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"] =
        json!([{"rule": "self.replicas < 10"}]);
    let (s, e) = api
        .post(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            crd,
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("x-kubernetes-validations: Forbidden")),
        "{e}"
    );
}

#[tokio::test]
async fn a_second_crd_with_taken_names_is_not_established() {
    let api = Api::new().await;
    let group = "conflict.example.com";
    api.establish(crontab_crd(group, "Namespaced")).await;
    let mut rival = crontab_crd(group, "Namespaced");
    rival["metadata"]["name"] = json!(format!("crons.{group}"));
    rival["spec"]["names"] = json!({"plural": "crons", "singular": "cron", "kind": "CronTab"});
    let (s, _) = api
        .post(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            rival,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let mut cond = Value::Null;
    for _ in 0..100 {
        let (_, got) = api
            .get(&format!(
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/crons.{group}"
            ))
            .await;
        if got["status"]["conditions"].is_array() {
            cond = got["status"]["conditions"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cond[0]["type"], "NamesAccepted");
    assert_eq!(cond[0]["status"], "False");
    assert_eq!(cond[0]["reason"], "KindConflict");
    assert_eq!(cond[0]["message"], "\"CronTab\" is already in use");
    assert_eq!(cond[1]["type"], "Established");
    assert_eq!(cond[1]["status"], "False");
    let (s, _) = api.get(&format!("/apis/{group}/v1/crons")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn server_side_apply_merges_list_maps_by_their_keys() {
    let api = Api::new().await;
    let group = "ssa.example.com";
    let mut crd = crontab_crd(group, "Namespaced");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["ports"] = json!({"type": "array", "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            "items": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}, "port": {"type": "integer"}}}});
    api.establish(crd).await;
    let uri = format!("/apis/{group}/v1/namespaces/default/crontabs/web");
    let apply = |manager: &'static str, port: Value| {
        let uri = format!("{uri}?fieldManager={manager}");
        let body = json!({"apiVersion": format!("{group}/v1"), "kind": "CronTab",
            "metadata": {"name": "web"},
            "spec": {"cronSpec": "* * * * *", "ports": [port]}});
        let api = &api;
        async move {
            api.call("PATCH", &uri, "application/apply-patch+yaml", body, None)
                .await
        }
    };
    let (s, v, _) = apply("a", json!({"name": "http", "port": 80})).await;
    assert!(s.is_success(), "{v}");
    let (s, v, _) = apply("b", json!({"name": "https", "port": 443})).await;
    assert!(s.is_success(), "{v}");
    let names: Vec<&str> = v["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, vec!["http", "https"], "{v}");
    // A third manager changing a's item conflicts on that item only.
    let (s, v, _) = apply("c", json!({"name": "http", "port": 8080})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    // Duplicate keys are invalid.
    let (s, v) = api
        .patch(
            &uri,
            "application/merge-patch+json",
            json!({"spec": {"ports": [{"name": "x", "port": 1}, {"name": "x", "port": 2}]}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["message"].as_str().is_some_and(|m| m
            .contains("spec.ports[1]: Duplicate value: map[string]interface {}{\"name\":\"x\"}")),
        "{v}"
    );
}

#[tokio::test]
async fn rbac_applies_to_custom_resources_and_aggregates_into_edit() {
    let api = Api::new().await;
    api.state.start_loops();
    let group = "rbac.example.com";
    api.establish(crontab_crd(group, "Namespaced")).await;
    let base = format!("/apis/{group}/v1/namespaces/default/crontabs");
    let (s, _) = api.post(&base, crontab("c1", group, "v1")).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, e) = api.call_as("bob", "GET", &base, Value::Null).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        e["message"],
        format!(
            "crontabs.{group} is forbidden: User \"bob\" cannot list resource \"crontabs\" in API group \"{group}\" in the namespace \"default\""
        )
    );
    // A Role naming the CRD's group and resource.
    let (s, v) = api
        .post(
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "crontab-reader"},
                "rules": [{"apiGroups": [group], "resources": ["crontabs"], "verbs": ["get", "list"]}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = api
        .post(
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "bob-reads"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "crontab-reader"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, l) = api.call_as("bob", "GET", &base, Value::Null).await;
    assert_eq!(s, StatusCode::OK, "{l}");
    assert_eq!(l["items"].as_array().map(Vec::len), Some(1));
    let (s, _) = api
        .call_as("bob", "POST", &base, crontab("c2", group, "v1"))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // The built-in edit role does not cover custom resources until a ClusterRole aggregates
    // into it, as in Kubernetes.
    let (s, v) = api
        .post(
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "carol-edits"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "carol"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, _) = api
        .call_as("carol", "POST", &base, crontab("c3", group, "v1"))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = api
        .post(
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "crontab-edit", "labels": {"rbac.authorization.k8s.io/aggregate-to-edit": "true"}},
                "rules": [{"apiGroups": [group], "resources": ["crontabs"], "verbs": ["*"]}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let mut created = StatusCode::FORBIDDEN;
    for _ in 0..100 {
        let (s, _) = api
            .call_as("carol", "POST", &base, crontab("c3", group, "v1"))
            .await;
        created = s;
        if s == StatusCode::CREATED {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(created, StatusCode::CREATED);
}

#[tokio::test]
async fn status_apply_by_a_second_manager_keeps_status() {
    let api = Api::new().await;
    let crd: Value = serde_json::from_str(r#"{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition","metadata":{"name":"widgets.derive.example.com"},"spec":{"group":"derive.example.com","names":{"kind":"Widget","plural":"widgets","shortNames":["wd"],"singular":"widget"},"scope":"Namespaced","versions":[{"additionalPrinterColumns":[{"jsonPath":".spec.size","name":"Size","type":"integer"}],"name":"v1","schema":{"openAPIV3Schema":{"description":"x","properties":{"spec":{"properties":{"label":{"nullable":true,"type":"string"},"size":{"format":"int32","type":"integer"},"tags":{"default":[],"items":{"type":"string"},"type":"array"}},"required":["size"],"type":"object"},"status":{"nullable":true,"properties":{"ready":{"type":"boolean"}},"required":["ready"],"type":"object"}},"required":["spec"],"title":"Widget","type":"object"}},"served":true,"storage":true,"subresources":{"status":{}}}]}}"#).expect("crd");
    api.establish(crd).await;
    let uri = "/apis/derive.example.com/v1/namespaces/default/widgets/w1";
    let (s, v, _) = api
        .call(
            "PATCH",
            &format!("{uri}?fieldManager=e2e-test"),
            "application/apply-patch+yaml",
            json!({"apiVersion": "derive.example.com/v1", "kind": "Widget",
                "metadata": {"name": "w1"}, "spec": {"size": 3, "tags": ["a"]}}),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v, _) = api
        .call(
            "PATCH",
            &format!("{uri}/status?fieldManager=widget-controller&force=true"),
            "application/apply-patch+yaml",
            json!({"apiVersion": "derive.example.com/v1", "kind": "Widget",
                "status": {"ready": true}}),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"]["ready"], true, "{v}");
    let (_, got) = api.get(uri).await;
    assert_eq!(got["status"]["ready"], true, "{got}");
}

/// Benchmark (prints, never asserts): CRD create → Established and its resource served.
#[tokio::test]
async fn crd_create_to_served_latency() {
    let api = Api::new().await;
    let mut times = Vec::new();
    for i in 0..20 {
        let group = format!("bench{i}.example.com");
        let started = std::time::Instant::now();
        api.establish(crontab_crd(&group, "Namespaced")).await;
        times.push(started.elapsed());
    }
    times.sort();
    let p50 = times[times.len() / 2];
    let p99 = times[times.len() - 1];
    println!(
        "CRD create → served (20 CRDs, in-process, SQLite): p50 {:?}, p99 {:?} (goal: well under 1 s)",
        p50, p99
    );
}
