//! Whole-process tests of the StatefulSet controller: the real `apiserver` and `controllers`
//! binaries, driven with the real kubectl 1.33. No kubelet runs: the test plays its part,
//! first by hand (to see that `OrderedReady` waits for each pod), then with `fake_kubelet`,
//! which marks every pod Running/Ready through the API and finishes graceful deletions.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use e2e::{ApiServer, Backend, Component, Kubectl, mark_pod_ready, pod_ready, wait_true};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

/// Marks every pod in `ns` Running and Ready and finishes graceful deletions; records, in
/// order, the names of pods as their deletion is first seen.
/// Returns once its watch has listed the namespace.
async fn fake_kubelet(
    client: Client,
    ns: &str,
    deleted: Arc<Mutex<Vec<String>>>,
) -> Result<tokio::task::JoinHandle<()>> {
    let api: Api<Pod> = Api::namespaced(client, ns);
    let (listed_tx, listed) = tokio::sync::oneshot::channel();
    let mut listed_tx = Some(listed_tx);
    let handle = tokio::spawn(async move {
        let stream = watcher(api.clone(), watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            let pod = match ev {
                Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => p,
                Ok(watcher::Event::Delete(p)) => {
                    note_deleted(&deleted, &p.name_any());
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = listed_tx.take() {
                        let _ = tx.send(());
                    }
                    continue;
                }
                Ok(_) => continue,
                Err(e) => {
                    eprintln!("fake kubelet watch: {e}");
                    continue;
                }
            };
            if pod.metadata.deletion_timestamp.is_some() {
                note_deleted(&deleted, &pod.name_any());
                let _ = api
                    .delete(
                        &pod.name_any(),
                        &kube::api::DeleteParams {
                            grace_period_seconds: Some(0),
                            ..Default::default()
                        },
                    )
                    .await;
                continue;
            }
            if !pod_ready(&pod)
                && let Err(e) = mark_pod_ready(&api, &pod.name_any(), Some("10.244.77.2")).await
            {
                eprintln!("fake kubelet: marking {} Ready: {e}", pod.name_any());
            }
        }
    });
    tokio::time::timeout(WAIT, listed)
        .await
        .context("fake kubelet watch did not list")??;
    Ok(handle)
}

/// Records `name` once per deletion (a later pod of the same name may be deleted again).
fn note_deleted(deleted: &Mutex<Vec<String>>, name: &str) {
    if let Ok(mut d) = deleted.lock()
        && d.last().map(String::as_str) != Some(name)
    {
        d.push(name.to_string());
    }
}

fn statefulset_yaml(ns: &str, name: &str, image: &str, replicas: i32, extra: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {name}
  namespace: {ns}
spec:
  serviceName: {name}-svc
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
{extra}  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: {name}
        image: {image}
"#
    )
}

async fn pod_names(pods: &Api<Pod>) -> Result<Vec<String>> {
    let mut names: Vec<String> = pods
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.name_any())
        .collect();
    names.sort();
    Ok(names)
}

async fn wait_pods(pods: &Api<Pod>, want: &[&str]) -> Result<()> {
    wait_true(&format!("pods {want:?}"), WAIT, || async {
        Ok(pod_names(pods).await? == want)
    })
    .await
}

async fn create_ns(client: &Client, name: &str) -> Result<()> {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&Default::default(), &ns)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver and controllers binaries"]
async fn statefulset_ordering_scaling_rolling_update_and_parallel() -> Result<()> {
    let api = ApiServer::start(Backend::Sqlite).await?;
    let client = api.client().await?;
    let k: Kubectl = api.kubectl(33);
    let controllers = Component::start(
        &api,
        "controllers",
        "info,controllers=debug",
        &["--leader-elect=false"],
    )?;
    let result = scenario(&client, &k).await;
    if result.is_err() {
        eprintln!("controllers log:\n{}", controllers.log());
        for ns in ["db", "par"] {
            let pods = k.run(&[
                "-n",
                ns,
                "get",
                "pods,statefulsets,controllerrevisions",
                "-o",
                "yaml",
            ]);
            eprintln!("{ns}:\n{:?}", pods.map(|o| o.stdout));
        }
    }
    drop(controllers);
    result
}

async fn scenario(client: &Client, k: &Kubectl) -> Result<()> {
    let ns = "db";
    create_ns(client, ns).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);

    // OrderedReady: web-1 only once web-0 is Ready, web-2 only once web-1 is.
    k.ok_stdin(
        &["apply", "-f", "-"],
        &statefulset_yaml(ns, "web", "busybox:1", 3, ""),
    )?;
    for (i, name) in ["web-0", "web-1", "web-2"].into_iter().enumerate() {
        let want: Vec<String> = (0..=i).map(|o| format!("web-{o}")).collect();
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        wait_pods(&pods, &want).await?;
        // Long enough for the controller to have gone on, had it not waited.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        ensure!(
            pod_names(&pods).await? == want,
            "a later ordinal was created before {name} was Ready"
        );
        mark_pod_ready(&pods, name, Some("10.244.77.3")).await?;
    }
    let host = k.ok(&[
        "-n",
        ns,
        "get",
        "pod",
        "web-1",
        "-o",
        "jsonpath={.spec.hostname}/{.spec.subdomain}/{.metadata.labels.statefulset\\.kubernetes\\.io/pod-name}/{.metadata.labels.apps\\.kubernetes\\.io/pod-index}",
    ])?;
    ensure!(host == "web-1/web-svc/web-1/1", "identity of web-1: {host}");
    let owner = k.ok(&[
        "-n",
        ns,
        "get",
        "pod",
        "web-0",
        "-o",
        "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].controller}",
    ])?;
    ensure!(owner == "StatefulSet/true", "owner of web-0: {owner}");
    wait_true("readyReplicas 3", WAIT, || async {
        let s = sets.get_status("web").await?.status.unwrap_or_default();
        Ok(s.ready_replicas == Some(3) && s.replicas == 3)
    })
    .await?;

    let deleted = Arc::new(Mutex::new(Vec::new()));
    let kubelet = fake_kubelet(client.clone(), ns, deleted.clone()).await?;

    // Scale 3 -> 1: web-2 goes first, then web-1.
    k.ok(&["-n", ns, "scale", "statefulset/web", "--replicas=1"])?;
    wait_pods(&pods, &["web-0"]).await?;
    let order = deleted.lock().map(|d| d.clone()).unwrap_or_default();
    ensure!(order == ["web-2", "web-1"], "scale-down order: {order:?}");

    // Back to 3, then a template change rolls web-2, web-1, web-0 in that order.
    k.ok(&["-n", ns, "scale", "statefulset/web", "--replicas=3"])?;
    k.ok(&[
        "-n",
        ns,
        "rollout",
        "status",
        "statefulset/web",
        "--timeout=20s",
    ])?;
    if let Ok(mut d) = deleted.lock() {
        d.clear();
    }
    k.ok(&["-n", ns, "set", "image", "statefulset/web", "web=busybox:2"])?;
    let out = k.ok(&[
        "-n",
        ns,
        "rollout",
        "status",
        "statefulset/web",
        "--timeout=30s",
    ])?;
    // With `partition` set (the apiserver defaults it to 0) kubectl reports a partitioned
    // roll out, as against Kubernetes.
    ensure!(
        out.contains("roll out complete: 3 new pods have been updated")
            || out.contains("rolling update complete 3 pods"),
        "rollout status: {out}"
    );
    let order = deleted.lock().map(|d| d.clone()).unwrap_or_default();
    ensure!(
        order == ["web-2", "web-1", "web-0"],
        "rolling update order: {order:?}"
    );
    let images = k.ok(&[
        "-n",
        ns,
        "get",
        "pods",
        "-o",
        "jsonpath={.items[*].spec.containers[0].image}",
    ])?;
    ensure!(
        images == "busybox:2 busybox:2 busybox:2",
        "images after rollout: {images}"
    );
    let s = sets.get_status("web").await?.status.unwrap_or_default();
    ensure!(
        s.current_revision == s.update_revision
            && s.updated_replicas == Some(3)
            && s.current_replicas == Some(3),
        "status after rollout: {s:?}"
    );
    let history = k.ok(&["-n", ns, "rollout", "history", "statefulset/web"])?;
    ensure!(
        history.contains('1') && history.contains('2'),
        "history: {history}"
    );
    kubelet.abort();

    // Parallel: all pods at once, none of them Ready; claim templates get a Warning.
    let par = "par";
    create_ns(client, par).await?;
    let par_pods: Api<Pod> = Api::namespaced(client.clone(), par);
    let extra = "  podManagementPolicy: Parallel\n  volumeClaimTemplates:\n  - metadata: {name: data}\n    spec:\n      accessModes: [ReadWriteOnce]\n      resources: {requests: {storage: 1Gi}}\n";
    k.ok_stdin(
        &["apply", "-f", "-"],
        &statefulset_yaml(par, "pdb", "busybox:1", 3, extra),
    )?;
    wait_pods(&par_pods, &["pdb-0", "pdb-1", "pdb-2"]).await?;
    // Each replica gets its claim `<template>-<set>-<ordinal>`, labelled with the selector, as
    // Kubernetes' StatefulSet controller makes them (binding is the storage tests' business).
    wait_true("the replicas' PersistentVolumeClaims", WAIT, || async {
        let pvcs = k.ok(&["-n", par, "get", "pvc", "-l", "app=pdb", "-o", "name"])?;
        Ok(["data-pdb-0", "data-pdb-1", "data-pdb-2"]
            .iter()
            .all(|n| pvcs.contains(&format!("persistentvolumeclaim/{n}"))))
    })
    .await
    .context("no claims for volumeClaimTemplates")?;
    let ev = k.ok(&["-n", par, "get", "events"])?;
    assert!(!ev.contains("PersistentVolumeClaimsUnsupported"), "{ev}");
    Ok(())
}
