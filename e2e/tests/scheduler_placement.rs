//! Whole-process tests of the `scheduler` binary against the real `apiserver`: Node objects
//! and pods are created through the API; the scheduler binds pods with `pods/binding`.
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use e2e::{ApiServer, Backend, bin_dir};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

struct Scheduler(Child);

impl Scheduler {
    fn start(api: &ApiServer) -> Result<Self> {
        let child = Command::new(bin_dir().join("scheduler"))
            .arg("--kubeconfig")
            .arg(api.kubeconfig())
            .env("RUST_LOG", "scheduler=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting target/debug/scheduler (cargo build --bins first)")?;
        Ok(Scheduler(child))
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn create_node(
    client: &Client,
    name: &str,
    labels: Value,
    spec: Value,
    cpu: &str,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = labels;
    labels["kubernetes.io/hostname"] = json!(name);
    let status = json!({"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"}, "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"}});
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels}, "spec": spec, "status": status.clone()
    }))?;
    nodes.create(&PostParams::default(), &node).await?;
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
    Ok(())
}

async fn create_pod(client: &Client, name: &str, labels: Value, spec: Value) -> Result<()> {
    let mut spec = spec;
    if spec.get("containers").is_none() {
        spec["containers"] = json!([{"name": "c", "image": "busybox"}]);
    }
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": spec
    }))?;
    Api::<Pod>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await?;
    Ok(())
}

async fn wait_bound(client: &Client, name: &str) -> Result<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = pods.get(name).await?;
        if let Some(n) = p.spec.and_then(|s| s.node_name).filter(|n| !n.is_empty()) {
            return Ok(n);
        }
        if Instant::now() > deadline {
            bail!("pod {name} not bound within 20s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn assert_pending(client: &Client, name: &str, for_: Duration) -> Result<()> {
    tokio::time::sleep(for_).await;
    let p = Api::<Pod>::namespaced(client.clone(), "default")
        .get(name)
        .await?;
    let node = p.spec.and_then(|s| s.node_name).unwrap_or_default();
    if !node.is_empty() {
        bail!("pod {name} unexpectedly bound to {node}");
    }
    Ok(())
}

async fn failed_scheduling_note(client: &Client, pod: &str) -> Result<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = events.list(&ListParams::default()).await?;
        let found = list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("FailedScheduling")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pod)
        });
        if let Some(e) = found {
            return Ok(e.note.unwrap_or_default());
        }
        if Instant::now() > deadline {
            bail!("no FailedScheduling event for {pod}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
#[ignore = "needs built apiserver and scheduler binaries"]
async fn selector_taints_anti_affinity_and_cordon() -> Result<()> {
    let api = ApiServer::start(Backend::Sqlite).await?;
    let client = api.client().await?;
    create_node(&client, "n1", json!({"disk": "ssd"}), json!({}), "4").await?;
    create_node(
        &client,
        "n2",
        json!({"gpu": "true"}),
        json!({"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}),
        "4",
    )
    .await?;
    create_node(&client, "n3", json!({}), json!({}), "4").await?;
    let _sched = Scheduler::start(&api)?;

    create_pod(
        &client,
        "ssd",
        json!({}),
        json!({"nodeSelector": {"disk": "ssd"}}),
    )
    .await?;
    assert_eq!(wait_bound(&client, "ssd").await?, "n1");

    // Without a toleration the gpu node is off limits.
    create_pod(
        &client,
        "gpu-no-tol",
        json!({}),
        json!({"nodeSelector": {"gpu": "true"}}),
    )
    .await?;
    assert_pending(&client, "gpu-no-tol", Duration::from_secs(1)).await?;
    let note = failed_scheduling_note(&client, "gpu-no-tol").await?;
    assert_eq!(
        note,
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 node(s) didn't match Pod's node affinity/selector. \
         preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.."
    );
    create_pod(&client, "gpu", json!({}), json!({"nodeSelector": {"gpu": "true"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]})).await?;
    assert_eq!(wait_bound(&client, "gpu").await?, "n2");

    // Three replicas with required anti-affinity on the hostname land on three nodes.
    let anti = json!({"tolerations": [{"key": "dedicated", "operator": "Exists"}],
        "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
    for i in 0..3 {
        create_pod(
            &client,
            &format!("web-{i}"),
            json!({"app": "web"}),
            anti.clone(),
        )
        .await?;
    }
    let mut placed = HashSet::new();
    for i in 0..3 {
        placed.insert(wait_bound(&client, &format!("web-{i}")).await?);
    }
    assert_eq!(placed.len(), 3, "replicas share a node: {placed:?}");
    create_pod(&client, "web-3", json!({"app": "web"}), anti.clone()).await?;
    assert_pending(&client, "web-3", Duration::from_secs(1)).await?;

    // Cordon: the ssd node takes no new pods until uncordoned.
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    create_pod(
        &client,
        "ssd-2",
        json!({}),
        json!({"nodeSelector": {"disk": "ssd"}}),
    )
    .await?;
    assert_pending(&client, "ssd-2", Duration::from_secs(1)).await?;
    let note = failed_scheduling_note(&client, "ssd-2").await?;
    assert_eq!(
        note,
        "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {dedicated: gpu}, \
         1 node(s) were unschedulable. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.."
    );
    nodes
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": null}})),
        )
        .await?;
    assert_eq!(wait_bound(&client, "ssd-2").await?, "n1");
    Ok(())
}

#[tokio::test]
#[ignore = "needs built apiserver and scheduler binaries"]
async fn fits_nowhere_then_scheduled_when_a_node_is_added() -> Result<()> {
    let api = ApiServer::start(Backend::Sqlite).await?;
    let client = api.client().await?;
    create_node(&client, "cp", json!({}), json!({"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}), "4").await?;
    create_node(&client, "w1", json!({}), json!({}), "1").await?;
    create_node(&client, "w2", json!({}), json!({}), "1").await?;
    // Pods already running on the workers (assigned directly, as a kubelet-created static pod would be).
    for w in ["w1", "w2"] {
        create_pod(&client, &format!("busy-{w}"), json!({}), json!({"nodeName": w,
            "containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "600m"}}}]})).await?;
    }
    let _sched = Scheduler::start(&api)?;
    create_pod(
        &client,
        "big",
        json!({}),
        json!({"containers": [{"name": "c", "image": "busybox",
        "resources": {"requests": {"cpu": "500m"}}}]}),
    )
    .await?;
    let note = failed_scheduling_note(&client, "big").await?;
    assert_eq!(
        note,
        "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, 2 Insufficient cpu. \
         preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod.."
    );
    let pod = Api::<Pod>::namespaced(client.clone(), "default")
        .get("big")
        .await?;
    let cond = pod
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled");
    let cond = cond.context("PodScheduled condition missing")?;
    assert_eq!(
        (
            cond.status.as_str(),
            cond.reason.as_deref(),
            cond.message.as_deref()
        ),
        ("False", Some("Unschedulable"), Some(note.as_str()))
    );

    let t = Instant::now();
    create_node(&client, "w3", json!({}), json!({}), "2").await?;
    assert_eq!(wait_bound(&client, "big").await?, "w3");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "a node add must retry at once, took {:?}",
        t.elapsed()
    );
    Ok(())
}
