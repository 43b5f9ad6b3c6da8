//! core/v1 and events.k8s.io/v1 Events are two views of one stored object: what is written
//! through one API is read, listed, watched, updated and deleted through the other. In-process:
//! the real router, registry and watch cache over a temporary SQLite store.

use std::sync::Arc;

use apiserver::state::AppState;
use apiserver::storage::Storage;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};

mod common;

const CORE: &str = "/api/v1/namespaces/default/events";
const V1: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

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

    async fn raw(
        &self,
        method: &str,
        uri: &str,
        ct: &str,
        body: Option<Value>,
    ) -> (StatusCode, Vec<u8>) {
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
        (status, bytes.to_vec())
    }

    async fn json(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (s, b) = self.raw(method, uri, "application/json", body).await;
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    /// A bounded watch's events.
    async fn watch(&self, uri: &str) -> Vec<Value> {
        let (s, body) = self.raw("GET", uri, "application/json", None).await;
        assert_eq!(s, StatusCode::OK);
        body.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("watch event"))
            .collect()
    }
}

fn rv(o: &Value) -> String {
    o["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion")
        .to_string()
}

fn names(list: &Value) -> Vec<&str> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect()
}

#[tokio::test]
async fn an_events_k8s_io_event_is_a_core_event_and_back() {
    let api = Api::new().await;
    let start = rv(&api.json("GET", CORE, None).await.1);

    // events.k8s.io/v1 → core/v1
    let (s, created) = api
        .json(
            "POST",
            V1,
            Some(json!({
                "apiVersion": "events.k8s.io/v1", "kind": "Event",
                "metadata": {"name": "from-v1"},
                "eventTime": "2025-01-01T00:00:00.000000Z",
                "regarding": {"kind": "Pod", "namespace": "default", "name": "web"},
                "note": "pulled the image", "reason": "Pulled", "type": "Normal", "action": "Pull",
                "reportingController": "example.com/ctl", "reportingInstance": "ctl-1",
                "series": {"count": 2, "lastObservedTime": "2025-01-01T00:00:05.000000Z"},
            })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["apiVersion"], "events.k8s.io/v1");
    let (s, core) = api.json("GET", &format!("{CORE}/from-v1"), None).await;
    assert_eq!(s, StatusCode::OK, "{core}");
    assert_eq!(core["apiVersion"], "v1");
    assert_eq!(core["kind"], "Event");
    assert_eq!(core["involvedObject"]["name"], "web");
    assert_eq!(core["message"], "pulled the image");
    assert_eq!(core["reportingComponent"], "example.com/ctl");
    assert_eq!(core["reportingInstance"], "ctl-1");
    assert_eq!(core["series"]["count"], 2);
    assert_eq!(core["eventTime"], "2025-01-01T00:00:00.000000Z");
    assert_eq!(core["metadata"]["uid"], created["metadata"]["uid"]);
    assert_eq!(rv(&core), rv(&created));
    assert!(core.get("regarding").is_none() && core.get("note").is_none());

    // core/v1 → events.k8s.io/v1
    let (s, c2) = api
        .json(
            "POST",
            CORE,
            Some(json!({
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": "from-core"},
                "involvedObject": {"kind": "Node", "name": "n1"},
                "message": "node is ready", "reason": "NodeReady", "type": "Normal",
                "source": {"component": "kubelet", "host": "n1"},
                "count": 3, "firstTimestamp": "2025-01-01T00:00:00Z",
                "lastTimestamp": "2025-01-01T00:01:00Z",
            })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{c2}");
    let (s, v1) = api.json("GET", &format!("{V1}/from-core"), None).await;
    assert_eq!(s, StatusCode::OK, "{v1}");
    assert_eq!(v1["apiVersion"], "events.k8s.io/v1");
    assert_eq!(v1["regarding"]["name"], "n1");
    assert_eq!(v1["note"], "node is ready");
    assert_eq!(v1["deprecatedSource"]["component"], "kubelet");
    assert_eq!(v1["deprecatedSource"]["host"], "n1");
    assert_eq!(v1["deprecatedCount"], 3);
    assert_eq!(v1["deprecatedFirstTimestamp"], "2025-01-01T00:00:00Z");
    assert_eq!(v1["deprecatedLastTimestamp"], "2025-01-01T00:01:00Z");

    // Both lists hold both events, each in its own shape; field selectors use each view's names.
    let (_, core_list) = api.json("GET", CORE, None).await;
    assert_eq!(names(&core_list), ["from-core", "from-v1"]);
    assert!(
        core_list["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|i| i["apiVersion"] == "v1")
    );
    let (_, v1_list) = api.json("GET", V1, None).await;
    assert_eq!(v1_list["kind"], "EventList");
    assert_eq!(names(&v1_list), ["from-core", "from-v1"]);
    assert!(
        v1_list["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|i| i["apiVersion"] == "events.k8s.io/v1" && i.get("message").is_none())
    );
    let (_, sel) = api
        .json(
            "GET",
            &format!("{V1}?fieldSelector=regarding.name%3Dn1"),
            None,
        )
        .await;
    assert_eq!(names(&sel), ["from-core"]);
    let (_, sel) = api
        .json(
            "GET",
            &format!("{CORE}?fieldSelector=involvedObject.name%3Dweb"),
            None,
        )
        .await;
    assert_eq!(names(&sel), ["from-v1"]);
    // A storage-consistent paged list converts too.
    let (_, page) = api.json("GET", &format!("{V1}?limit=1"), None).await;
    assert_eq!(names(&page), ["from-core"]);
    assert_eq!(page["items"][0]["regarding"]["name"], "n1");

    // An update through events.k8s.io (a series bump) is seen through core/v1.
    let mut upd = v1.clone();
    upd["series"] = json!({"count": 4, "lastObservedTime": "2025-01-01T00:02:00.000000Z"});
    let (s, updated) = api.json("PUT", &format!("{V1}/from-core"), Some(upd)).await;
    assert_eq!(s, StatusCode::OK, "{updated}");
    let (_, core2) = api.json("GET", &format!("{CORE}/from-core"), None).await;
    assert_eq!(core2["series"]["count"], 4);
    assert_eq!(core2["count"], 3);
    assert_eq!(rv(&core2), rv(&updated));
    // What an event reported cannot change through the new API.
    let mut bad = updated.clone();
    bad["note"] = json!("rewritten");
    let (s, err) = api.json("PUT", &format!("{V1}/from-core"), Some(bad)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap_or("")
            .contains("message: Invalid value: \"rewritten\": field is immutable"),
        "{err}"
    );

    // Delete through core; both watches saw everything, each in its own shape.
    let (s, _) = api.json("DELETE", &format!("{CORE}/from-v1"), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = api.json("GET", &format!("{V1}/from-v1"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let v1_watch = api
        .watch(&format!(
            "{V1}?watch=true&resourceVersion={start}&timeoutSeconds=1"
        ))
        .await;
    let seen: Vec<(&str, &str)> = v1_watch
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or(""),
                e["object"]["metadata"]["name"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("ADDED", "from-v1"),
            ("ADDED", "from-core"),
            ("MODIFIED", "from-core"),
            ("DELETED", "from-v1")
        ]
    );
    assert!(
        v1_watch
            .iter()
            .all(|e| e["object"]["apiVersion"] == "events.k8s.io/v1")
    );
    assert_eq!(v1_watch[1]["object"]["regarding"]["name"], "n1");
    assert_eq!(v1_watch[3]["object"]["note"], "pulled the image");

    let core_watch = api
        .watch(&format!(
            "{CORE}?watch=true&resourceVersion={start}&timeoutSeconds=1"
        ))
        .await;
    assert_eq!(core_watch.len(), 4);
    assert!(core_watch.iter().all(|e| e["object"]["apiVersion"] == "v1"));
    assert_eq!(core_watch[0]["object"]["involvedObject"]["name"], "web");
    assert_eq!(core_watch[2]["object"]["series"]["count"], 4);
}

#[tokio::test]
async fn one_name_one_object_across_both_apis() {
    let api = Api::new().await;
    let (s, _) = api
        .json(
            "POST",
            CORE,
            Some(
                json!({"metadata": {"name": "same"}, "involvedObject": {"kind": "Pod", "name": "p"},
                "message": "m", "reason": "R", "type": "Normal"}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, err) = api
        .json(
            "POST",
            V1,
            Some(
                json!({"metadata": {"name": "same"}, "eventTime": "2025-01-01T00:00:00.000000Z",
                "regarding": {"kind": "Pod", "name": "p"}, "reason": "R", "type": "Normal",
                "action": "A", "reportingController": "c", "reportingInstance": "i"}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["reason"], "AlreadyExists");
    assert_eq!(err["details"]["group"], "events.k8s.io");
    // Deleting through events.k8s.io removes the core event.
    let (s, _) = api.json("DELETE", &format!("{V1}/same"), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = api.json("GET", &format!("{CORE}/same"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
