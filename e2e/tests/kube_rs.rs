//! Unmodified kube-rs runtime against the real apiserver binary: a watcher + reflector over pods
//! that sees changes in order and survives a forced compaction (re-list after the in-stream
//! 410), and a `Controller` reconciling a ConfigMap-driven toy resource.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use e2e::{ApiServer, Backend, free_port, wait_until, wait_until_every};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

/// Retries every 200 ms, so a watcher reconnects promptly after an apiserver restart.
struct Every200ms;

impl Iterator for Every200ms {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(Duration::from_millis(200))
    }
}

impl Backoff for Every200ms {
    fn reset(&mut self) {}
}

/// What the watcher stream yielded, reduced to comparable facts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Init,
    InitApply(String),
    InitDone,
    Apply(String, String),
    Delete(String),
    Error(String),
}

fn pod(name: &str, version: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "watch-test", "version": version}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}
    }))
    .expect("pod")
}

fn label(p: &Pod) -> String {
    p.labels().get("version").cloned().unwrap_or_default()
}

async fn next_seen(rx: &mut mpsc::UnboundedReceiver<Seen>, what: &str) -> Seen {
    match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
        Ok(Some(seen)) => seen,
        other => panic!("waiting for {what}: {other:?}"),
    }
}

/// Skips events until `want` arrives (fails on timeout), returning what was skipped.
async fn expect_seen(rx: &mut mpsc::UnboundedReceiver<Seen>, want: Seen) -> Vec<Seen> {
    let mut skipped = Vec::new();
    loop {
        let seen = next_seen(rx, &format!("{want:?} (after {skipped:?})")).await;
        if seen == want {
            return skipped;
        }
        skipped.push(seen);
    }
}

fn names(store: &Store<Pod>) -> BTreeSet<String> {
    store.state().iter().map(|p| p.name_any()).collect()
}

async fn wait_store(store: &Store<Pod>, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    wait_until_every(
        "the store",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            let have = names(store);
            if have != want {
                anyhow::bail!("store {have:?}, want {want:?}");
            }
            Ok(Some(()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}

async fn watcher_survives_compaction(backend: Backend) {
    let mut server = ApiServer::start(backend).await.expect("start apiserver");
    let client = server.client().await.expect("client");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    let (store, writer) = reflector::store();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cfg = watcher::Config::default().labels("app=watch-test");
    let stream = watcher(pods.clone(), cfg)
        .backoff(Every200ms)
        .reflect(writer);
    let watch_task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            let seen = match item {
                Ok(watcher::Event::Init) => Seen::Init,
                Ok(watcher::Event::InitApply(p)) => Seen::InitApply(p.name_any()),
                Ok(watcher::Event::InitDone) => Seen::InitDone,
                Ok(watcher::Event::Apply(p)) => Seen::Apply(p.name_any(), label(&p)),
                Ok(watcher::Event::Delete(p)) => Seen::Delete(p.name_any()),
                Err(watcher::Error::WatchError(status)) => {
                    Seen::Error(format!("{} {}", status.code, status.reason))
                }
                Err(_) => continue, // connection errors while the apiserver is down
            };
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    assert_eq!(next_seen(&mut rx, "Init").await, Seen::Init);
    assert_eq!(next_seen(&mut rx, "InitDone").await, Seen::InitDone);

    // Creates, updates and deletes arrive in order.
    let pp = PostParams::default();
    pods.create(&pp, &pod("a", "1")).await.expect("create a");
    pods.create(&pp, &pod("b", "1")).await.expect("create b");
    let patch = Patch::Merge(json!({"metadata": {"labels": {"version": "2"}}}));
    pods.patch("a", &PatchParams::default(), &patch)
        .await
        .expect("patch a");
    pods.delete("b", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete b");
    let mut events = Vec::new();
    for _ in 0..4 {
        events.push(next_seen(&mut rx, "pod events").await);
    }
    assert_eq!(
        events,
        [
            Seen::Apply("a".into(), "1".into()),
            Seen::Apply("b".into(), "1".into()),
            Seen::Apply("a".into(), "2".into()),
            Seen::Delete("b".into()),
        ]
    );
    wait_store(&store, &["a"]).await;
    // The store's revision now (a list's): the watcher has seen nothing newer, not even in a
    // bookmark.
    let last_seen_rv: u64 = pods
        .list(&ListParams::default())
        .await
        .expect("list pods")
        .metadata
        .resource_version
        .and_then(|v| v.parse().ok())
        .expect("rv");

    // The apiserver goes away; meanwhile another apiserver on the same storage (another port,
    // compacting every second) changes the pods and writes enough to compact the watcher's
    // resourceVersion away.
    let port = server.port();
    server.stop();
    server.set_port(free_port().expect("port"));
    server.set_extra_args(&["--compaction-interval-seconds", "1"]);
    server.start_again().await.expect("restart on another port");
    let other = server.client().await.expect("client");
    let other_pods: Api<Pod> = Api::namespaced(other.clone(), "default");
    other_pods
        .create(&pp, &pod("c", "1"))
        .await
        .expect("create c");
    other_pods
        .delete("a", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete a");
    let cms: Api<ConfigMap> = Api::namespaced(other.clone(), "default");
    futures::stream::iter(0..1100)
        .map(|i| {
            let cms = cms.clone();
            async move {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(format!("filler-{i}")),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                cms.create(&PostParams::default(), &cm).await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .expect("filler writes");
    // Wait until the history the watcher needs is compacted: it resumes after `last_seen_rv`,
    // i.e. from `last_seen_rv + 1`, which stays watchable while compaction is at most there
    // (as in etcd); an exact read at `last_seen_rv + 1` answering 410 proves it is gone.
    let first_needed = last_seen_rv + 1;
    let path = format!(
        "/api/v1/namespaces/default/pods?resourceVersion={first_needed}&resourceVersionMatch=Exact"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = e2e::raw_request(&other, "GET", &path, None, vec![])
            .await
            .expect("exact list");
        if code == 410 {
            let status: serde_json::Value = serde_json::from_slice(&body).expect("Status");
            assert_eq!(status["reason"], "Expired", "{status}");
            break;
        }
        assert_eq!(
            code,
            200,
            "exact list at {first_needed}: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "revision {first_needed} never compacted:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Back on the original port: the watcher resumes at its old resourceVersion, gets the
    // in-stream 410, re-lists, and the store matches the truth.
    server.stop();
    server.set_port(port);
    server
        .start_again()
        .await
        .expect("restart on the original port");
    let skipped = expect_seen(&mut rx, Seen::Error("410 Expired".into())).await;
    assert!(skipped.is_empty(), "events before the 410: {skipped:?}");
    assert_eq!(next_seen(&mut rx, "re-list Init").await, Seen::Init);
    assert_eq!(
        next_seen(&mut rx, "re-list InitApply").await,
        Seen::InitApply("c".into())
    );
    assert_eq!(next_seen(&mut rx, "re-list InitDone").await, Seen::InitDone);
    wait_store(&store, &["c"]).await;

    // And it keeps watching after the re-list.
    let pods: Api<Pod> = Api::namespaced(server.client().await.expect("client"), "default");
    pods.create(&pp, &pod("d", "1")).await.expect("create d");
    assert_eq!(
        next_seen(&mut rx, "d").await,
        Seen::Apply("d".into(), "1".into())
    );
    wait_store(&store, &["c", "d"]).await;
    watch_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver binary; run via .ci/test"]
async fn watcher_reflector_survive_compaction_sqlite() {
    watcher_survives_compaction(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver binary and etcd (Debian etcd-server); run via .ci/test"]
async fn watcher_reflector_survive_compaction_etcd() {
    watcher_survives_compaction(Backend::Etcd).await;
}

// ---- Controller: for each ConfigMap labelled lotse.dev/toy=true, an owned "<name>-generated"
// ConfigMap holding the source's data plus a count of keys, applied with server-side apply.

const TOY_LABEL: &str = "lotse.dev/toy";
const GENERATED_LABEL: &str = "lotse.dev/generated-by";
const MANAGER: &str = "toy-controller";

#[derive(Debug, thiserror::Error)]
enum ToyError {
    #[error("source ConfigMap has no namespace or owner reference data")]
    Incomplete,
    #[error("applying the generated ConfigMap: {0}")]
    Apply(#[source] kube::Error),
}

struct Ctx {
    client: kube::Client,
}

async fn reconcile(src: Arc<ConfigMap>, ctx: Arc<Ctx>) -> Result<Action, ToyError> {
    let ns = src.namespace().ok_or(ToyError::Incomplete)?;
    let owner = src.controller_owner_ref(&()).ok_or(ToyError::Incomplete)?;
    let mut data = src.data.clone().unwrap_or_default();
    data.insert("keys".into(), data.len().to_string());
    let name = format!("{}-generated", src.name_any());
    let child = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {GENERATED_LABEL: src.name_any()},
            "ownerReferences": [owner],
        },
        "data": data,
    });
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&child),
    )
    .await
    .map_err(ToyError::Apply)?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

fn error_policy(_src: Arc<ConfigMap>, err: &ToyError, _ctx: Arc<Ctx>) -> Action {
    eprintln!("toy reconcile failed: {err}");
    Action::requeue(Duration::from_millis(500))
}

async fn controller_reconciles(backend: Backend) {
    let server = ApiServer::start(backend).await.expect("start apiserver");
    let client = server.client().await.expect("client");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let sources = watcher::Config::default().labels(&format!("{TOY_LABEL}=true"));
    let children = watcher::Config::default().labels(GENERATED_LABEL);
    let controller = Controller::new(cms.clone(), sources)
        .owns(cms.clone(), children)
        .run(
            reconcile,
            error_policy,
            Arc::new(Ctx {
                client: client.clone(),
            }),
        )
        .for_each(|_| async {});
    let controller = tokio::spawn(controller);

    let source = |name: &str, toy: bool, data: serde_json::Value| -> ConfigMap {
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "labels": {TOY_LABEL: toy.to_string()}},
            "data": data,
        }))
        .expect("configmap")
    };
    let pp = PostParams::default();
    let toy = cms
        .create(&pp, &source("toy", true, json!({"colour": "blue"})))
        .await
        .expect("create toy");
    cms.create(&pp, &source("plain", false, json!({"a": "b"})))
        .await
        .expect("create plain");

    let wait_child = |want: serde_json::Value| {
        let cms = cms.clone();
        async move {
            let what = format!("the child to become {want}");
            wait_until(&what, Duration::from_secs(30), || async {
                let child = cms.get_opt("toy-generated").await?;
                Ok(child.filter(|c| serde_json::to_value(&c.data).ok().as_ref() == Some(&want)))
            })
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
        }
    };
    let child = wait_child(json!({"colour": "blue", "keys": "1"})).await;
    let owners = child.owner_references();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(owners[0].uid, toy.uid().expect("uid"));
    assert_eq!(owners[0].kind, "ConfigMap");
    assert_eq!(owners[0].name, "toy");
    assert_eq!(owners[0].controller, Some(true));
    let managers: Vec<_> = child
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.contains(&MANAGER.to_string()),
        "managedFields: {managers:?}"
    );

    // A change to the source is reconciled (level-triggered, through the watch).
    let patch = Patch::Merge(json!({"data": {"size": "xl"}}));
    cms.patch("toy", &PatchParams::default(), &patch)
        .await
        .expect("patch toy");
    wait_child(json!({"colour": "blue", "size": "xl", "keys": "2"})).await;
    // Drift in the child is repaired: the controller owns it.
    let drift = Patch::Merge(json!({"data": {"colour": "red"}}));
    cms.patch("toy-generated", &PatchParams::default(), &drift)
        .await
        .expect("patch child");
    wait_child(json!({"colour": "blue", "size": "xl", "keys": "2"})).await;

    // Unlabelled ConfigMaps get no child.
    let all = cms
        .list(&ListParams::default().labels(GENERATED_LABEL))
        .await
        .expect("list children");
    let names: Vec<_> = all.items.iter().map(|c| c.name_any()).collect();
    assert_eq!(names, ["toy-generated"]);
    controller.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver binary; run via .ci/test"]
async fn controller_reconciles_toy_sqlite() {
    controller_reconciles(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver binary and etcd (Debian etcd-server); run via .ci/test"]
async fn controller_reconciles_toy_etcd() {
    controller_reconciles(Backend::Etcd).await;
}
