//! One Event, two APIs, against the real apiserver binary: an event published by kube-rs's
//! unmodified `Recorder` (events.k8s.io/v1, create then a series patch) is what `kubectl get
//! events` (core/v1) and `kubectl get events.v1.events.k8s.io` both show.

use std::time::Duration;

use e2e::{ApiServer, Backend, wait_until};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event as EventsV1;
use kube::Resource;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver binary; run via .ci/test"]
async fn recorder_event_shows_in_both_kubectl_views() {
    let server = ApiServer::start(Backend::Sqlite)
        .await
        .expect("apiserver starts");
    let client = server.client().await.expect("client");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm = cms
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("settings".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("configmap");

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "views-test-controller".into(),
            instance: Some("views-test-0".into()),
        },
    );
    let event = Event {
        type_: EventType::Normal,
        reason: "SettingsChecked".into(),
        note: Some("settings look fine".into()),
        action: "Check".into(),
        secondary: None,
    };
    let reference = cm.object_ref(&());
    // The first publish creates the event, the second bumps its series with a merge patch.
    recorder.publish(&event, &reference).await.expect("publish");
    recorder
        .publish(&event, &reference)
        .await
        .expect("publish again");
    let v1: Api<EventsV1> = Api::namespaced(client.clone(), "default");
    let published = wait_until("the recorder's event", Duration::from_secs(10), || {
        let v1 = v1.clone();
        async move {
            let list = v1.list(&ListParams::default()).await?;
            Ok(list
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("SettingsChecked")))
        }
    })
    .await
    .expect("event listed through events.k8s.io/v1");
    assert_eq!(published.series.as_ref().map(|s| s.count), Some(2));
    let name = published.metadata.name.clone().unwrap_or_default();

    let k = server.kubectl(33);
    // core/v1: the default `kubectl get events` table.
    let core_table = k
        .ok(&["get", "events", "-n", "default"])
        .expect("get events");
    let row = core_table
        .lines()
        .find(|l| l.contains("SettingsChecked"))
        .unwrap_or_else(|| panic!("no core row:\n{core_table}"));
    assert!(row.contains("configmap/settings"), "{row}");
    assert!(row.contains("settings look fine"), "{row}");
    // events.k8s.io/v1 by its full name.
    let v1_table = k
        .ok(&["get", "events.v1.events.k8s.io", "-n", "default"])
        .expect("get events.v1.events.k8s.io");
    let row = v1_table
        .lines()
        .find(|l| l.contains("SettingsChecked"))
        .unwrap_or_else(|| panic!("no events.k8s.io row:\n{v1_table}"));
    assert!(row.contains("configmap/settings"), "{row}");
    let names = k
        .ok(&[
            "get",
            "events.v1.events.k8s.io",
            "-n",
            "default",
            "-o",
            "name",
        ])
        .expect("get -o name");
    assert!(
        names
            .lines()
            .any(|l| l == format!("event.events.k8s.io/{name}")),
        "{names}"
    );

    // The same object in each shape.
    let core: Value = serde_json::from_str(
        &k.ok(&["get", "events", "-n", "default", &name, "-o", "json"])
            .expect("core json"),
    )
    .expect("json");
    assert_eq!(core["apiVersion"], "v1");
    assert_eq!(core["involvedObject"]["kind"], "ConfigMap");
    assert_eq!(core["involvedObject"]["name"], "settings");
    assert_eq!(core["message"], "settings look fine");
    assert_eq!(core["reportingComponent"], "views-test-controller");
    assert_eq!(core["reportingInstance"], "views-test-0");
    assert_eq!(core["series"]["count"], 2);
    let v1_json: Value = serde_json::from_str(
        &k.ok(&[
            "get",
            "events.v1.events.k8s.io",
            "-n",
            "default",
            &name,
            "-o",
            "json",
        ])
        .expect("v1 json"),
    )
    .expect("json");
    assert_eq!(v1_json["apiVersion"], "events.k8s.io/v1");
    assert_eq!(v1_json["regarding"]["name"], "settings");
    assert_eq!(v1_json["note"], "settings look fine");
    assert_eq!(v1_json["reportingController"], "views-test-controller");
    assert_eq!(v1_json["metadata"]["uid"], core["metadata"]["uid"]);
    assert_eq!(
        v1_json["metadata"]["resourceVersion"],
        core["metadata"]["resourceVersion"]
    );

    // Deleted through core/v1, gone from events.k8s.io/v1.
    k.ok(&["delete", "events", "-n", "default", &name])
        .expect("delete");
    let gone = k
        .fails(&["get", "events.v1.events.k8s.io", "-n", "default", &name])
        .expect("get fails");
    assert!(
        gone.contains("NotFound") || gone.contains("not found"),
        "{gone}"
    );
}
