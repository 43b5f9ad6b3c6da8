//! Whole-process tests of the `scheduler` binary against the real `apiserver`: Node objects
//! and pods are created through the API; the scheduler binds pods with `pods/binding`.
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use e2e::{ApiServer, Backend, Component, wait_until, wait_until_every};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// Starts the scheduler under its own identity (`system:kube-scheduler`, from the
/// `scheduler.kubeconfig` the apiserver writes), so missing RBAC rules show up as failures.
/// Without `--leader-elect` in `args` it runs alone (`--leader-elect=false`: a restarted
/// scheduler must not wait for its predecessor's Lease to expire).
fn scheduler(api: &ApiServer, args: &[&str]) -> Result<Component> {
    let alone = ["--leader-elect=false"];
    let elect = args.iter().any(|a| a.starts_with("--leader-elect"));
    let args: Vec<&str> = if elect { &[][..] } else { &alone[..] }
        .iter()
        .chain(args)
        .copied()
        .collect();
    Component::start(api, "scheduler", "scheduler=debug", &args)
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
    wait_until(
        &format!("pod {name} to be bound"),
        Duration::from_secs(20),
        || async {
            let p = pods.get(name).await?;
            Ok(p.spec.and_then(|s| s.node_name).filter(|n| !n.is_empty()))
        },
    )
    .await
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
    let what = format!("a FailedScheduling event for {pod}");
    wait_until_every(
        &what,
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async {
            let list = events.list(&ListParams::default()).await?;
            Ok(list
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("FailedScheduling")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pod)
                })
                .map(|e| e.note.unwrap_or_default()))
        },
    )
    .await
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
    let _sched = scheduler(&api, &[])?;

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
    let _sched = scheduler(&api, &[])?;
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

/// `pod name -> node name` for every pod in `default` (empty node while pending).
async fn placements(client: &Client) -> Result<HashMap<String, String>> {
    let list = Api::<Pod>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await?;
    Ok(list
        .items
        .into_iter()
        .map(|p| {
            (
                p.metadata.name.unwrap_or_default(),
                p.spec.and_then(|s| s.node_name).unwrap_or_default(),
            )
        })
        .collect())
}

/// Waits until every pod whose name starts with `prefix` is bound; returns their placements.
async fn wait_all_bound(
    client: &Client,
    prefix: &str,
    count: usize,
    timeout: Duration,
) -> Result<HashMap<String, String>> {
    wait_until(
        &format!("{count} {prefix}* pods bound"),
        timeout,
        || async {
            let ours: HashMap<String, String> = placements(client)
                .await?
                .into_iter()
                .filter(|(name, _)| name.starts_with(prefix))
                .collect();
            let bound = ours.values().filter(|n| !n.is_empty()).count();
            if ours.len() == count && bound == count {
                return Ok(Some(ours));
            }
            bail!("{bound}/{count} {prefix}* pods bound")
        },
    )
    .await
}

/// `(pod, reportingInstance)` of every `Scheduled` event in `default`.
async fn scheduled_events(client: &Client) -> Result<Vec<(String, String)>> {
    let list = Api::<Event>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Scheduled"))
        .map(|e| {
            (
                e.regarding.and_then(|r| r.name).unwrap_or_default(),
                e.reporting_instance.unwrap_or_default(),
            )
        })
        .collect())
}

/// Waits (up to 10 s: events are asynchronous) until at least `n` `Scheduled` events name
/// pods starting with `prefix`; returns those events.
async fn wait_scheduled(client: &Client, prefix: &str, n: usize) -> Result<Vec<(String, String)>> {
    wait_until(
        &format!("{n} Scheduled events for {prefix}*"),
        Duration::from_secs(10),
        || async {
            let evs: Vec<_> = scheduled_events(client)
                .await?
                .into_iter()
                .filter(|(p, _)| p.starts_with(prefix))
                .collect();
            if evs.len() < n {
                bail!("only {} Scheduled events for {prefix}*: {evs:?}", evs.len());
            }
            Ok(Some(evs))
        },
    )
    .await
}

/// Waits until the kube-system/kube-scheduler Lease is held by someone other than `not`.
async fn wait_lease_holder(
    client: &Client,
    not: Option<&str>,
    timeout: Duration,
) -> Result<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let what = format!("a new kube-scheduler lease holder (previous: {not:?})");
    wait_until(&what, timeout, || async {
        let holder = leases
            .get_opt("kube-scheduler")
            .await?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty());
        Ok(holder.filter(|h| Some(h.as_str()) != not))
    })
    .await
}

async fn create_pods(
    client: &Client,
    prefix: &str,
    range: std::ops::Range<usize>,
    spec: Value,
) -> Result<()> {
    use futures::{StreamExt, TryStreamExt};
    futures::stream::iter(range)
        .map(|i| {
            let spec = spec.clone();
            async move {
                let name = format!("{prefix}{i}");
                create_pod(
                    client,
                    &name,
                    json!({"app": prefix.trim_end_matches('-')}),
                    spec,
                )
                .await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Short leases keep the test fast; the protocol is the one the 15 s defaults run.
const FAST_LEASE: [&str; 7] = [
    "--leader-elect",
    "--leader-elect-lease-duration",
    "4s",
    "--leader-elect-renew-deadline",
    "3s",
    "--leader-elect-retry-period",
    "500ms",
];

#[tokio::test]
#[ignore = "needs built apiserver and scheduler binaries"]
async fn leader_election_one_binds_and_a_standby_takes_over() -> Result<()> {
    let api = ApiServer::start(Backend::Sqlite).await?;
    let client = api.client().await?;
    create_node(&client, "n1", json!({}), json!({}), "4").await?;
    create_node(&client, "n2", json!({}), json!({}), "4").await?;
    let mut leader = scheduler(&api, &FAST_LEASE)?;
    let first = wait_lease_holder(&client, None, Duration::from_secs(20)).await?;
    let mut standby = scheduler(&api, &FAST_LEASE)?;

    create_pods(&client, "a-", 0..10, json!({})).await?;
    wait_all_bound(&client, "a-", 10, Duration::from_secs(20)).await?;
    // Every binding came from the leader (events are asynchronous: wait for all ten).
    let evs = wait_scheduled(&client, "", 10).await?;
    assert!(
        evs.iter().all(|(_, inst)| *inst == first),
        "a non-leader scheduled pods: {evs:?} (leader {first})"
    );
    assert!(
        !standby.log().contains("acquired leadership"),
        "standby took the lease while the leader renewed it:\n{}",
        standby.log()
    );

    leader.kill();
    let killed = Instant::now();
    create_pods(&client, "b-", 0..10, json!({})).await?;
    let second = wait_lease_holder(&client, Some(&first), Duration::from_secs(15)).await?;
    wait_all_bound(&client, "b-", 10, Duration::from_secs(15)).await?;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(15), "takeover took {took:?}");
    println!("standby took over and bound 10 pending pods {took:?} after the leader was killed");
    let b = wait_scheduled(&client, "b-", 10).await?;
    assert!(
        b.iter().all(|(_, inst)| *inst == second),
        "b-* not all scheduled by the new leader {second}: {b:?}"
    );
    assert!(standby.is_running(), "standby exited:\n{}", standby.log());
    Ok(())
}

#[tokio::test]
#[ignore = "needs built apiserver and scheduler binaries"]
async fn kill_9_with_pending_pods_loses_none_and_binds_none_twice() -> Result<()> {
    let api = ApiServer::start(Backend::Sqlite).await?;
    let client = api.client().await?;
    // 5 x 4 CPUs hold exactly 200 pods of 100m: a lost assigned pod in the rebuilt cache would
    // overcommit a node, a pod counted twice would leave another pending forever.
    for i in 0..5 {
        create_node(&client, &format!("w{i}"), json!({}), json!({}), "4").await?;
    }
    let small = json!({"containers": [{"name": "c", "image": "busybox",
        "resources": {"requests": {"cpu": "100m"}}}]});
    let mut sched = scheduler(&api, &[])?;
    create_pods(&client, "p-", 0..100, small.clone()).await?;
    // Poll fast: the kill must land while most of the first 100 are still pending.
    wait_until_every(
        "20 bound pods",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || async {
            let bound = placements(&client)
                .await?
                .values()
                .filter(|n| !n.is_empty())
                .count();
            Ok((bound >= 20).then_some(()))
        },
    )
    .await
    .with_context(|| {
        format!(
            "scheduler bound fewer than 20 pods in 20s:\n{}",
            sched.log()
        )
    })?;
    sched.kill();
    create_pods(&client, "p-", 100..200, small).await?;
    let pending = placements(&client)
        .await?
        .values()
        .filter(|n| n.is_empty())
        .count();
    assert!(pending >= 100, "only {pending} pending pods after the kill");

    let _sched = scheduler(&api, &[])?;
    let placed = wait_all_bound(&client, "p-", 200, Duration::from_secs(30)).await?;
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for node in placed.values() {
        *per_node.entry(node.as_str()).or_default() += 1;
    }
    assert!(
        per_node.values().all(|n| *n == 40),
        "nodes must hold exactly 40 pods each: {per_node:?}"
    );
    // A pod reported Scheduled twice would mean two bindings were attempted as successes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (pod, _) in scheduled_events(&client).await? {
        *counts.entry(pod).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "pods scheduled twice: {twice:?}");
    Ok(())
}

#[tokio::test]
#[ignore = "needs built apiserver and scheduler binaries"]
async fn impossible_pods_never_stall_normal_ones() -> Result<()> {
    let api = ApiServer::start(Backend::Sqlite).await?;
    let client = api.client().await?;
    create_node(&client, "n1", json!({}), json!({}), "4").await?;
    create_node(&client, "n2", json!({}), json!({}), "4").await?;
    let mut sched = scheduler(&api, &[])?;
    let c = |res: Value| json!([{"name": "c", "image": "busybox", "resources": res}]);
    let impossible = [
        (
            "huge",
            json!({"containers": c(json!({"requests": {"cpu": "1000"}}))}),
        ),
        (
            "gpu",
            json!({"containers": c(json!({"requests": {"example.com/gpu": "1"}, "limits": {"example.com/gpu": "1"}}))}),
        ),
        ("selector", json!({"nodeSelector": {"no-such": "label"}})),
        (
            "field-affinity",
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["ghost"]}]}]}}}}),
        ),
        (
            "ghost-affinity",
            json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "ghost"}}, "topologyKey": "kubernetes.io/hostname"}]}}}),
        ),
        (
            "spread-no-key",
            json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "no.such/zone",
            "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "spread-no-key"}}}]}),
        ),
    ];
    for (name, spec) in &impossible {
        create_pod(&client, name, json!({"app": name}), spec.clone()).await?;
    }
    let t = Instant::now();
    create_pods(&client, "ok-", 0..20, json!({})).await?;
    wait_all_bound(&client, "ok-", 20, Duration::from_secs(10)).await?;
    println!(
        "20 normal pods bound {:?} after creation next to 6 impossible ones",
        t.elapsed()
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "normal pods stalled: {:?}",
        t.elapsed()
    );
    for (name, _) in &impossible {
        let note = failed_scheduling_note(&client, name).await?;
        assert!(
            note.starts_with("0/2 nodes are available: "),
            "{name}: {note}"
        );
    }
    // Retries (node changes flush the unschedulable pool) keep the scheduler alive and pods pending.
    create_node(&client, "n3", json!({}), json!({}), "4").await?;
    create_pods(&client, "late-", 0..5, json!({})).await?;
    wait_all_bound(&client, "late-", 5, Duration::from_secs(10)).await?;
    let now = placements(&client).await?;
    for (name, _) in &impossible {
        assert_eq!(
            now.get(*name).map(String::as_str),
            Some(""),
            "{name} got bound"
        );
    }
    assert!(sched.is_running(), "scheduler exited:\n{}", sched.log());
    // system:kube-scheduler's RBAC covers everything the scheduler does (watches, events, status).
    assert!(
        !sched.log().contains("forbidden"),
        "scheduler hit 403s:\n{}",
        sched.log()
    );
    Ok(())
}
