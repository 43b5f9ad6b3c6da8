//! CustomResourceDefinitions end to end: the real kubectl (1.27, 1.30, 1.33) and a kube-rs
//! `#[derive(CustomResource)]` type against the real apiserver binary, on SQLite and etcd. Only
//! the apiserver is started (no node), so these are quick.

use std::sync::Arc;
use std::time::Duration;

use e2e::{ApiServer, Backend, Kubectl, testdata};
use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{WatchStreamExt, conditions, reflector, wait::await_condition, watcher};
use kube::{CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

fn path(name: &str) -> String {
    testdata(&format!("crd/{name}"))
        .to_str()
        .expect("utf-8 path")
        .to_string()
}

#[track_caller]
fn assert_has(text: &str, want: &str) {
    assert!(text.contains(want), "output lacks {want:?}:\n{text}");
}

fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&name))
        .unwrap_or_default()
}

/// Retries a kubectl command for a few seconds (discovery of a just-established CRD).
fn ok_soon(k: &Kubectl, args: &[&str]) -> String {
    let mut last = String::new();
    for _ in 0..50 {
        match k.run(args).and_then(|o| o.success()) {
            Ok(o) => return o.stdout,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("kubectl {args:?} kept failing: {last}");
}

/// The kubectl walk-through of a CRD and its custom resources.
fn walk_through(k: &Kubectl) {
    let crd = path("crontab-crd.yaml");
    assert_has(
        &k.ok(&["apply", "-f", &crd]).expect("apply CRD"),
        "customresourcedefinition.apiextensions.k8s.io/crontabs.stable.example.com created",
    );
    k.ok(&[
        "wait",
        "--for=condition=established",
        "crd/crontabs.stable.example.com",
        "--timeout=30s",
    ])
    .expect("CRD established");
    let crds = k.ok(&["get", "crd"]).expect("get crd");
    assert!(
        !row(&crds, "crontabs.stable.example.com").is_empty(),
        "{crds}"
    );

    // Client-side apply: create, then a change (kubectl sends a merge patch for CRs).
    assert_has(
        &ok_soon(k, &["apply", "-f", &path("crontab.yaml")]),
        "crontab.stable.example.com/my-cron created",
    );
    assert_has(
        &k.ok(&["apply", "-f", &path("crontab-v2.yaml")])
            .expect("apply change"),
        "crontab.stable.example.com/my-cron configured",
    );
    assert_has(
        &k.ok(&["apply", "--server-side", "-f", &path("crontab-ssa.yaml")])
            .expect("server-side apply"),
        "crontab.stable.example.com/ssa-cron serverside-applied",
    );

    // Printer columns, short name, category `all`, the other version.
    let table = k.ok(&["get", "crontabs"]).expect("get crontabs");
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, vec!["NAME", "SPEC", "REPLICAS", "AGE"], "{table}");
    let r = row(&table, "my-cron");
    assert_eq!(
        r.get(1..7).map(|c| c.join(" ")),
        Some("*/10 * * * * 1".into()),
        "{table}"
    );
    assert!(!row(&k.ok(&["get", "ct"]).expect("short name"), "ssa-cron").is_empty());
    assert_has(
        &k.ok(&["get", "all"]).expect("get all"),
        "crontab.stable.example.com/my-cron",
    );
    let beta = k
        .ok(&[
            "get",
            "crontabs.v1beta1.stable.example.com",
            "my-cron",
            "-o",
            "jsonpath={.apiVersion}",
        ])
        .expect("v1beta1");
    assert_eq!(beta, "stable.example.com/v1beta1");

    // explain reads the CRD's schema from OpenAPI.
    let explain = k.ok(&["explain", "crontab.spec"]).expect("explain");
    assert_has(&explain, "cronSpec");
    assert_has(&explain, "When to run, in cron syntax.");

    // Bad input: schema errors and unknown fields.
    let bad = k
        .run(&["apply", "-f", &path("crontab-bad.yaml")])
        .and_then(|o| o.failure())
        .expect("bad CR refused");
    assert_has(
        &bad.stderr,
        "spec.replicas: Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\"",
    );
    let unknown = k
        .run(&["apply", "-f", &path("crontab-unknown.yaml")])
        .and_then(|o| o.failure())
        .expect("unknown field refused");
    assert_has(
        &unknown.stderr,
        "strict decoding error: unknown field \"spec.replicaz\"",
    );

    // patch (merge), the status subresource, scale.
    assert_has(
        &k.ok(&[
            "patch",
            "crontab",
            "my-cron",
            "--type=merge",
            "-p",
            r#"{"spec":{"image":"patched"}}"#,
        ])
        .expect("merge patch"),
        "crontab.stable.example.com/my-cron patched",
    );
    k.ok(&[
        "patch",
        "crontab",
        "my-cron",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":1,"selector":"app=my-cron"}}"#,
    ])
    .expect("status patch");
    assert_has(
        &k.ok(&["scale", "crontab", "my-cron", "--replicas=4"])
            .expect("scale"),
        "crontab.stable.example.com/my-cron scaled",
    );
    let got = k
        .ok(&[
            "get",
            "crontab",
            "my-cron",
            "-o",
            "jsonpath={.spec.replicas} {.spec.image} {.status.replicas}",
        ])
        .expect("get");
    assert_eq!(got, "4 patched 1");

    // Deleting the CRD deletes its objects and the resource type.
    assert_has(
        &k.ok(&["delete", "-f", &crd]).expect("delete CRD"),
        "customresourcedefinition.apiextensions.k8s.io \"crontabs.stable.example.com\" deleted",
    );
    let mut gone = String::new();
    for _ in 0..50 {
        if let Ok(o) = k.run(&["get", "crontabs"]).and_then(|o| o.failure()) {
            gone = o.stderr;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Which one depends on whether kubectl's discovery cache still lists the type.
    assert!(
        gone.contains("the server doesn't have a resource type \"crontabs\"")
            || gone.contains(
                "Unable to list \"stable.example.com/v1, Resource=crontabs\": the server could not find the requested resource"
            ),
        "{gone}"
    );
}

async fn kubectl_run(backend: Backend, minor: u32) {
    let server = ApiServer::start(backend).await.expect("start apiserver");
    let k = server.kubectl(minor);
    let result = tokio::task::block_in_place(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| walk_through(&k)))
    });
    if let Err(panic) = result {
        eprintln!("--- apiserver log ---\n{}", server.log());
        std::panic::resume_unwind(panic);
    }
}

macro_rules! kubectl_tests {
    ($($name:ident: $backend:ident, $minor:literal, $why:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = $why]
        async fn $name() {
            kubectl_run(Backend::$backend, $minor).await;
        }
    )*};
}

kubectl_tests! {
    crd_kubectl_1_27_sqlite: Sqlite, 27, "needs built apiserver binary; run via .ci/test";
    crd_kubectl_1_30_sqlite: Sqlite, 30, "needs built apiserver binary; run via .ci/test";
    crd_kubectl_1_33_sqlite: Sqlite, 33, "needs built apiserver binary; run via .ci/test";
    crd_kubectl_1_33_etcd: Etcd, 33, "needs built apiserver binary and etcd (Debian etcd-server); run via .ci/test";
}

/// A kube-rs custom resource, unmodified: its CRD comes from `CustomResourceExt::crd()`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "kube.example.com",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus",
    shortname = "wd",
    printcolumn = r#"{"name":"Size","type":"integer","jsonPath":".spec.size"}"#
)]
pub struct WidgetSpec {
    size: i32,
    #[serde(default)]
    tags: Vec<String>,
    label: Option<String>,
}

/// Status of a Widget.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
pub struct WidgetStatus {
    ready: bool,
}

/// Marks a Widget ready (generation-tracked) through its status subresource.
async fn reconcile(w: Arc<Widget>, api: Arc<Api<Widget>>) -> Result<Action, kube::Error> {
    if w.status.as_ref().is_some_and(|s| s.ready) {
        return Ok(Action::await_change());
    }
    let status = serde_json::json!({
        "apiVersion": "kube.example.com/v1", "kind": "Widget",
        "status": {"ready": true},
    });
    api.patch_status(
        &w.name_any(),
        &PatchParams::apply("widget-controller").force(),
        &Patch::Apply(status),
    )
    .await?;
    Ok(Action::await_change())
}

fn error_policy(_: Arc<Widget>, e: &kube::Error, _: Arc<Api<Widget>>) -> Action {
    eprintln!("widget reconcile failed: {e}");
    Action::requeue(Duration::from_millis(500))
}

async fn kube_rs_run(backend: Backend) {
    let server = ApiServer::start(backend).await.expect("start apiserver");
    let result = kube_rs_walk(&server).await;
    if let Err(e) = result {
        eprintln!("--- apiserver log ---\n{}", server.log());
        panic!("{e:#}");
    }
}

async fn kube_rs_walk(server: &ApiServer) -> anyhow::Result<()> {
    let client = server.client().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &Widget::crd()).await?;
    let established = await_condition(
        crds.clone(),
        "widgets.kube.example.com",
        conditions::is_crd_established(),
    );
    tokio::time::timeout(Duration::from_secs(20), established).await??;

    let widgets: Api<Widget> = Api::namespaced(client.clone(), "default");
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(widgets.clone(), watcher::Config::default()))
        .applied_objects()
        .boxed();
    let watch = tokio::spawn(async move {
        let mut stream = stream;
        let mut seen = Vec::new();
        while let Some(ev) = stream.next().await {
            if let Ok(w) = ev {
                seen.push((w.name_any(), w.status.as_ref().is_some_and(|s| s.ready)));
                if seen.iter().any(|(n, ready)| n == "w1" && *ready) {
                    return seen;
                }
            }
        }
        seen
    });

    // Server-side apply creates it.
    let applied = widgets
        .patch(
            "w1",
            &PatchParams::apply("e2e-test"),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "kube.example.com/v1", "kind": "Widget",
                "metadata": {"name": "w1"},
                "spec": {"size": 3, "tags": ["a"]},
            })),
        )
        .await?;
    anyhow::ensure!(applied.spec.size == 3, "applied spec {:?}", applied.spec);
    anyhow::ensure!(
        applied.metadata.generation == Some(1),
        "generation {:?}",
        applied.metadata.generation
    );
    // A schema violation comes back as a 422 with Kubernetes' message.
    let bad = widgets
        .patch(
            "w2",
            &PatchParams::apply("e2e-test"),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "kube.example.com/v1", "kind": "Widget",
                "metadata": {"name": "w2"}, "spec": {"size": "big"},
            })),
        )
        .await;
    match bad {
        Err(kube::Error::Api(s)) => {
            anyhow::ensure!(s.code == 422, "status {s:?}");
            anyhow::ensure!(
                s.message.contains("spec.size: Invalid value: \"string\": spec.size in body must be of type integer: \"string\""),
                "message {}",
                s.message
            );
        }
        other => anyhow::bail!("bad widget accepted: {other:?}"),
    }
    // A kube-runtime Controller over the type reconciles it: status through the status
    // subresource (server-side apply), observed by the watcher above.
    let controller = tokio::spawn(
        Controller::new(widgets.clone(), watcher::Config::default())
            .run(reconcile, error_policy, Arc::new(widgets.clone()))
            .for_each(|_| async {}),
    );
    let seen = tokio::time::timeout(Duration::from_secs(20), watch).await??;
    controller.abort();
    anyhow::ensure!(
        seen.iter().any(|(n, ready)| n == "w1" && *ready),
        "watcher saw {seen:?}"
    );
    anyhow::ensure!(
        reader
            .state()
            .iter()
            .any(|w| w.name_any() == "w1" && w.spec.tags == vec!["a".to_string()]),
        "reflector store lacks w1"
    );

    // Deleting the CRD removes its objects and the resource.
    crds.delete("widgets.kube.example.com", &DeleteParams::default())
        .await?;
    e2e::wait_true("widgets gone", Duration::from_secs(20), || {
        let crds = crds.clone();
        async move { Ok(crds.get_opt("widgets.kube.example.com").await?.is_none()) }
    })
    .await?;
    anyhow::ensure!(
        widgets.get_opt("w1").await?.is_none(),
        "w1 still served after its CRD was deleted"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver binary; run via .ci/test"]
async fn crd_kube_rs_sqlite() {
    kube_rs_run(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver binary and etcd (Debian etcd-server); run via .ci/test"]
async fn crd_kube_rs_etcd() {
    kube_rs_run(Backend::Etcd).await;
}

/// Custom resources are served again after a restart (the CRD controller re-reads the stored
/// CRDs), and a deprecated version warns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver binary; run via .ci/test"]
async fn crd_survives_restart_sqlite() {
    let mut server = ApiServer::start(Backend::Sqlite)
        .await
        .expect("start apiserver");
    let k = server.kubectl(33);
    tokio::task::block_in_place(|| {
        k.ok(&["apply", "-f", &path("crontab-crd.yaml")])
            .expect("apply CRD");
        k.ok(&[
            "wait",
            "--for=condition=established",
            "crd/crontabs.stable.example.com",
            "--timeout=30s",
        ])
        .expect("established");
        ok_soon(&k, &["apply", "-f", &path("crontab.yaml")]);
    });
    server.start_again().await.expect("restart");
    let k = server.kubectl(33);
    let out = tokio::task::block_in_place(|| {
        ok_soon(
            &k,
            &[
                "get",
                "crontab",
                "my-cron",
                "-o",
                "jsonpath={.spec.cronSpec}",
            ],
        )
    });
    assert_eq!(out, "* * * * */5", "{}", server.log());
    // Deprecating v1beta1 makes every request to it warn.
    let warned = tokio::task::block_in_place(|| {
        k.ok(&[
            "patch",
            "crd",
            "crontabs.stable.example.com",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/spec/versions/1/deprecated","value":true}]"#,
        ])
        .expect("deprecate v1beta1");
        let mut stderr = String::new();
        for _ in 0..50 {
            let o = k
                .run(&["get", "crontabs.v1beta1.stable.example.com", "my-cron"])
                .expect("run");
            stderr = o.stderr;
            if stderr.contains("deprecated") {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        stderr
    });
    assert_has(
        &warned,
        "Warning: stable.example.com/v1beta1 CronTab is deprecated",
    );
}
