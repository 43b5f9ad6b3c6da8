//! The storage API in-process, through the real router, admission and write pipeline:
//! DefaultStorageClass (newest default class wins; an explicit `""` is left alone), the
//! protection finalizers, PVC validation and spec immutability messages, the status
//! subresource, kubectl's tables for pv/pvc/sc, and per-class storage quota.

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

const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

impl Api {
    async fn new() -> Api {
        let (state, store) = common::state().await;
        Api {
            state,
            _store: store,
        }
    }

    async fn send(
        &self,
        method: &str,
        uri: &str,
        ct: &str,
        accept: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let bytes = body
            .map(|b| serde_json::to_vec(&b).expect("encode"))
            .unwrap_or_default();
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, ct)
            .header(header::ACCEPT, accept)
            .body(Body::from(bytes))
            .expect("request");
        req.extensions_mut().insert(common::admin());
        let (status, _, bytes) = common::send(&self.state, req).await;
        (
            status.as_u16(),
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn create(&self, uri: &str, body: Value) -> Value {
        let (code, v) = self
            .send(
                "POST",
                uri,
                "application/json",
                "application/json",
                Some(body),
            )
            .await;
        assert_eq!(code, 201, "POST {uri}: {v}");
        v
    }

    async fn post(&self, uri: &str, body: Value) -> (u16, Value) {
        self.send(
            "POST",
            uri,
            "application/json",
            "application/json",
            Some(body),
        )
        .await
    }

    async fn patch(&self, uri: &str, body: Value) -> (u16, Value) {
        self.send(
            "PATCH",
            uri,
            "application/merge-patch+json",
            "application/json",
            Some(body),
        )
        .await
    }

    async fn table_row(&self, uri: &str) -> (Vec<String>, Vec<Value>) {
        let (code, t) = self.send("GET", uri, "application/json", TABLE, None).await;
        assert_eq!(code, 200, "{t}");
        let cols = t["columnDefinitions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["name"].as_str().unwrap_or_default().to_string())
            .collect();
        let cells = t["rows"][0]["cells"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (cols, cells)
    }
}

fn class(name: &str, default: bool) -> Value {
    let mut c = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": name}, "provisioner": "example.com/disk"});
    if default {
        c["metadata"]["annotations"] =
            json!({"storageclass.kubernetes.io/is-default-class": "true"});
    }
    c
}

fn claim(name: &str, class: Option<&str>, size: &str) -> Value {
    let mut c = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}});
    if let Some(cl) = class {
        c["spec"]["storageClassName"] = json!(cl);
    }
    c
}

const CLAIMS: &str = "/api/v1/namespaces/lab/persistentvolumeclaims";

#[tokio::test]
async fn default_class_finalizers_validation_and_tables() {
    let api = Api::new().await;
    api.create(
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "lab"}}),
    )
    .await;
    let sc = api
        .create(
            "/apis/storage.k8s.io/v1/storageclasses",
            class("old-default", true),
        )
        .await;
    assert_eq!(sc["reclaimPolicy"], "Delete");
    assert_eq!(sc["volumeBindingMode"], "Immediate");
    // Created later: the newest default wins.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    api.create(
        "/apis/storage.k8s.io/v1/storageclasses",
        class("new-default", true),
    )
    .await;
    api.create(
        "/apis/storage.k8s.io/v1/storageclasses",
        class("plain", false),
    )
    .await;

    let c = api.create(CLAIMS, claim("a", None, "1Gi")).await;
    assert_eq!(c["spec"]["storageClassName"], "new-default");
    assert_eq!(c["spec"]["volumeMode"], "Filesystem");
    assert_eq!(c["status"]["phase"], "Pending");
    assert_eq!(
        c["metadata"]["finalizers"],
        json!(["kubernetes.io/pvc-protection"])
    );
    let c = api.create(CLAIMS, claim("b", Some(""), "1Gi")).await;
    assert_eq!(
        c["spec"]["storageClassName"], "",
        "an explicit empty class is kept"
    );

    // Validation and immutability, worded as Kubernetes.
    let (code, v) = api
        .post(
            CLAIMS,
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "bad"}, "spec": {}}),
        )
        .await;
    assert_eq!(code, 422, "{v}");
    assert_eq!(
        v["message"],
        "PersistentVolumeClaim \"bad\" is invalid: [spec.accessModes: Required value: at least 1 access mode is required, spec.resources[storage]: Required value]"
    );
    let (code, v) = api
        .patch(
            &format!("{CLAIMS}/a"),
            json!({"spec": {"accessModes": ["ReadWriteMany"]}}),
        )
        .await;
    assert_eq!(code, 422, "{v}");
    assert!(
        v["message"].as_str().unwrap_or_default().contains("spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"),
        "{v}"
    );

    // Status through the subresource; the main resource ignores it.
    let (code, v) = api.patch(&format!("{CLAIMS}/a/status"), json!({"status": {"phase": "Bound", "capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteOnce"]}})).await;
    assert_eq!(code, 200, "{v}");
    let (code, v) = api
        .patch(
            &format!("{CLAIMS}/a"),
            json!({"spec": {"volumeName": "pv-a"}, "status": {"phase": "Lost"}}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"]["phase"], "Bound");

    let (cols, cells) = api
        .table_row(&format!("{CLAIMS}?fieldSelector=metadata.name=a"))
        .await;
    assert_eq!(
        cols,
        [
            "Name",
            "Status",
            "Volume",
            "Capacity",
            "Access Modes",
            "StorageClass",
            "VolumeAttributesClass",
            "Age",
            "VolumeMode"
        ]
    );
    assert_eq!(
        cells[..7],
        [
            json!("a"),
            json!("Bound"),
            json!("pv-a"),
            json!("2Gi"),
            json!("RWO"),
            json!("new-default"),
            json!("<unset>")
        ]
    );

    let pv = api.create("/api/v1/persistentvolumes", json!({"apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": "pv-a"}, "spec": {"capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteOnce"],
        "hostPath": {"path": "/srv/a"}, "storageClassName": "new-default"}})).await;
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
    assert_eq!(
        pv["metadata"]["finalizers"],
        json!(["kubernetes.io/pv-protection"])
    );
    let (cols, cells) = api.table_row("/api/v1/persistentvolumes").await;
    assert_eq!(
        cols,
        [
            "Name",
            "Capacity",
            "Access Modes",
            "Reclaim Policy",
            "Status",
            "Claim",
            "StorageClass",
            "VolumeAttributesClass",
            "Reason",
            "Age",
            "VolumeMode"
        ]
    );
    assert_eq!(
        cells[..7],
        [
            json!("pv-a"),
            json!("2Gi"),
            json!("RWO"),
            json!("Retain"),
            json!("Pending"),
            json!(""),
            json!("new-default")
        ]
    );

    let (_, cells) = api
        .table_row("/apis/storage.k8s.io/v1/storageclasses?fieldSelector=metadata.name=new-default")
        .await;
    assert_eq!(
        cells[..5],
        [
            json!("new-default (default)"),
            json!("example.com/disk"),
            json!("Delete"),
            json!("Immediate"),
            json!(false)
        ]
    );
}

#[tokio::test]
async fn storage_quota_per_class_refuses_with_kubernetes_message() {
    let api = Api::new().await;
    api.create(
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "lab"}}),
    )
    .await;
    api.create(
        "/apis/storage.k8s.io/v1/storageclasses",
        class("gold", true),
    )
    .await;
    api.create("/api/v1/namespaces/lab/resourcequotas", json!({"apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "q"}, "spec": {"hard": {"gold.storageclass.storage.k8s.io/requests.storage": "1Gi"}}})).await;
    // The claim gets its class from DefaultStorageClass before quota counts it.
    let (code, v) = api.post(CLAIMS, claim("big", None, "2Gi")).await;
    assert_eq!(code, 403, "{v}");
    assert_eq!(
        v["message"],
        "persistentvolumeclaims \"big\" is forbidden: exceeded quota: q, requested: gold.storageclass.storage.k8s.io/requests.storage=2Gi, used: gold.storageclass.storage.k8s.io/requests.storage=0, limited: gold.storageclass.storage.k8s.io/requests.storage=1Gi"
    );
}
