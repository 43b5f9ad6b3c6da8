//! Control-plane faults with the components in processes of their own (issue 18, point 6; the
//! one-process `lotse up` is `component_faults.rs`): an apiserver, the `controllers` and
//! `scheduler` binaries and a `kubelet --runtime simulated` (status transitions, no containers,
//! so no root is needed). While a Deployment rolls out, the controllers or the scheduler is
//! killed with SIGKILL at a random moment and started again, in a varying order over six
//! rounds. After each round the rollout completes with exactly the declared replicas, all on
//! the node and of the new template; throughout, the Deployment's ReplicaSets never ask for
//! more than `replicas + maxSurge` pods together (the bound Kubernetes' deployment controller
//! keeps: a scaled-down set's pods may still be on their way out while the new set's come),
//! no ReplicaSet ever has more pods that are not being deleted than it ever asked for (no
//! duplicates from a restarted controller), and there is never more than one new ReplicaSet
//! per template. `LOTSE_FAULTS_SEED` replays a run's order and delays.
//!
//! Needs the built apiserver, controllers, scheduler and kubelet binaries (~40 s).
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::{ApiServer, Backend, Component, Kubectl, free_port};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, watcher};

const NODE: &str = "sim-node";
const REPLICAS: usize = 4;
const MAX_SURGE: usize = 1;

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 4
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 1}}
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 0
      containers: [{name: web, image: busybox, env: [{name: ROUND, value: start}]}]
"#;

#[derive(Clone, Copy, Debug)]
enum Fault {
    Controllers,
    Scheduler,
}

/// The controllers, scheduler and simulated kubelet, each its own process.
struct ControlPlane {
    controllers: Component,
    scheduler: Component,
    kubelet: Component,
}

fn controllers(api: &ApiServer) -> anyhow::Result<Component> {
    Component::start(api, "controllers", "info", &["--leader-elect=false"])
}

fn scheduler(api: &ApiServer) -> anyhow::Result<Component> {
    Component::start(api, "scheduler", "info", &["--leader-elect=false"])
}

impl ControlPlane {
    fn start(api: &ApiServer, root: &std::path::Path) -> anyhow::Result<Self> {
        // The simulated kubelet acts as the node with the admin's credentials.
        std::fs::copy(api.kubeconfig(), api.data_dir().join("kubelet.kubeconfig"))?;
        let kubelet = Component::start(
            api,
            "kubelet",
            "info",
            &[
                "--node-name",
                NODE,
                "--runtime",
                "simulated",
                "--root-dir",
                &root.to_string_lossy(),
                "--port",
                &free_port()?.to_string(),
                "--pod-cidr",
                "10.244.99.0/24",
            ],
        )?;
        Ok(Self {
            controllers: controllers(api)?,
            scheduler: scheduler(api)?,
            kubelet,
        })
    }

    fn logs(&self) -> String {
        format!(
            "controllers:\n{}\nscheduler:\n{}\nkubelet:\n{}",
            self.controllers.log(),
            self.scheduler.log(),
            self.kubelet.log()
        )
    }
}

/// Pods of the Deployment that are not being deleted.
fn live(pods: &[Pod]) -> usize {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .count()
}

/// What the watches saw over the whole run.
#[derive(Default)]
struct Surge {
    /// The most pods the Deployment's ReplicaSets asked for together.
    most_asked: usize,
    /// Per ReplicaSet (uid): the most replicas it ever asked for, and the most of its pods
    /// that were live at once.
    per_set: BTreeMap<String, (usize, usize)>,
    /// The most live pods at once (for the report; may exceed `replicas + maxSurge` while a
    /// scaled-down set's pods are being deleted, as in Kubernetes).
    most_live: usize,
}

impl Surge {
    /// ReplicaSets whose live pods outnumbered anything they asked for: (uid, asked, live).
    fn duplicates(&self) -> Vec<(String, usize, usize)> {
        self.per_set
            .iter()
            .filter(|(_, (asked, live))| live > asked)
            .map(|(uid, (asked, live))| (uid.clone(), *asked, *live))
            .collect()
    }
}

/// Watches the Deployment's ReplicaSets and pods and records into `surge` what they asked for
/// and what was live. Maxima over the whole run, so the order in which the two watches deliver
/// does not matter.
fn watch_surge(
    pods: Api<Pod>,
    sets: Api<ReplicaSet>,
    surge: Arc<Mutex<Surge>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (pod_reader, pod_writer) = kube::runtime::reflector::store();
        let (set_reader, set_writer) = kube::runtime::reflector::store();
        let cfg = || watcher::Config::default().labels("app=web");
        let pod_events = kube::runtime::reflector::reflector(pod_writer, watcher(pods, cfg()))
            .default_backoff()
            .map(|_| ());
        let set_events = kube::runtime::reflector::reflector(set_writer, watcher(sets, cfg()))
            .default_backoff()
            .map(|_| ());
        let mut events = std::pin::pin!(futures::stream::select(pod_events, set_events));
        while events.next().await.is_some() {
            let Ok(mut s) = surge.lock() else { return };
            let mut asked_now = 0;
            for rs in set_reader.state() {
                let asked = rs
                    .spec
                    .as_ref()
                    .and_then(|sp| sp.replicas)
                    .unwrap_or(0)
                    .max(0) as usize;
                asked_now += asked;
                let uid = rs.metadata.uid.clone().unwrap_or_default();
                let e = s.per_set.entry(uid).or_default();
                e.0 = e.0.max(asked);
            }
            s.most_asked = s.most_asked.max(asked_now);
            let pods: Vec<Pod> = pod_reader.state().iter().map(|p| (**p).clone()).collect();
            s.most_live = s.most_live.max(live(&pods));
            let mut live_per_set: BTreeMap<String, usize> = BTreeMap::new();
            for p in pods
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
            {
                if let Some(owner) = p
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .find(|o| o.controller == Some(true))
                {
                    *live_per_set.entry(owner.uid.clone()).or_default() += 1;
                }
            }
            for (uid, n) in live_per_set {
                let e = s.per_set.entry(uid).or_default();
                e.1 = e.1.max(n);
            }
        }
    })
}

/// Waits until the rollout to `round` is complete: exactly [`REPLICAS`] live pods, all
/// scheduled on the node, Running and of the current template, and the Deployment's status
/// says so.
async fn converged(
    deployments: &Api<Deployment>,
    pods: &Api<Pod>,
    round: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut last = String::new();
    while t0.elapsed() < timeout {
        let d = deployments.get("web").await?;
        let generation = d.metadata.generation.unwrap_or_default();
        let s = d.status.unwrap_or_default();
        let list = pods
            .list(&ListParams::default().labels("app=web"))
            .await?
            .items;
        let current = |p: &Pod| {
            p.spec.as_ref().is_some_and(|s| {
                s.node_name.as_deref() == Some(NODE)
                    && s.containers[0]
                        .env
                        .as_ref()
                        .is_some_and(|e| e[0].value.as_deref() == Some(round))
            }) && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        };
        let done = s.observed_generation == Some(generation)
            && s.updated_replicas == Some(REPLICAS as i32)
            && s.ready_replicas == Some(REPLICAS as i32)
            && s.available_replicas == Some(REPLICAS as i32)
            && s.replicas == Some(REPLICAS as i32)
            && list.len() == REPLICAS
            && list.iter().all(current);
        if done {
            return Ok(());
        }
        last = format!(
            "status {s:?}, {} pods ({} live, {} current)",
            list.len(),
            live(&list),
            list.iter().filter(|p| current(p)).count()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("rollout to {round} not complete within {timeout:?}: {last}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the built apiserver, controllers, scheduler and kubelet binaries"]
async fn killed_controllers_and_scheduler_converge_without_duplicates() -> anyhow::Result<()> {
    let api = ApiServer::start(Backend::Sqlite).await?;
    let root = tempfile::tempdir()?;
    let mut cp = ControlPlane::start(&api, root.path())?;
    let result = scenario(&api, &mut cp).await;
    if result.is_err() {
        eprintln!("{}", cp.logs());
    }
    result
}

async fn scenario(api: &ApiServer, cp: &mut ControlPlane) -> anyhow::Result<()> {
    let client = api.client().await?;
    let k: Kubectl = api.kubectl(33);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    k.ok_stdin(&["apply", "-f", "-"], DEPLOYMENT)?;
    converged(&deployments, &pods, "start", Duration::from_secs(60)).await?;
    let surge = Arc::new(Mutex::new(Surge::default()));
    let watch = watch_surge(pods.clone(), sets.clone(), surge.clone());

    // LOTSE_FAULTS_SEED replays a failed run's order and delays (printed below).
    let seed = std::env::var("LOTSE_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(std::process::id() as usize);
    eprintln!("LOTSE_FAULTS_SEED={seed}");
    let mut order = [
        Fault::Controllers,
        Fault::Scheduler,
        Fault::Controllers,
        Fault::Scheduler,
        Fault::Controllers,
        Fault::Scheduler,
    ];
    order.rotate_left(seed % 3);
    if seed % 2 == 1 {
        order.swap(1, 2);
    }
    let mut templates = BTreeSet::new();
    for (round, fault) in order.into_iter().enumerate() {
        let value = format!("round-{round}");
        k.ok(&["set", "env", "deployment/web", &format!("ROUND={value}")])?;
        let delay = (seed * 7919 + round * 104_729) % 800;
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
        let down = 100 + (seed * 31 + round * 977) % 1500;
        match fault {
            Fault::Controllers => {
                cp.controllers.kill();
                tokio::time::sleep(Duration::from_millis(down as u64)).await;
                cp.controllers = controllers(api)?;
            }
            Fault::Scheduler => {
                cp.scheduler.kill();
                tokio::time::sleep(Duration::from_millis(down as u64)).await;
                cp.scheduler = scheduler(api)?;
            }
        }
        eprintln!("round {round}: {fault:?} killed after {delay} ms, down {down} ms");
        converged(&deployments, &pods, &value, Duration::from_secs(60))
            .await
            .with_context(|| format!("round {round} ({fault:?})"))?;
        templates.insert(value);
    }
    watch.abort();
    let (most_asked, most_live, duplicates) = {
        let s = surge
            .lock()
            .map_err(|_| anyhow::anyhow!("surge record poisoned"))?;
        (s.most_asked, s.most_live, s.duplicates())
    };
    anyhow::ensure!(
        most_asked <= REPLICAS + MAX_SURGE,
        "the ReplicaSets may ask for at most {} pods together, asked for {most_asked}",
        REPLICAS + MAX_SURGE
    );
    anyhow::ensure!(
        duplicates.is_empty(),
        "ReplicaSets with more live pods than they ever asked for (uid, asked, live): {duplicates:?}"
    );
    // One ReplicaSet per template: a restarted controller adopted the one it had made.
    let rs = sets
        .list(&ListParams::default().labels("app=web"))
        .await?
        .items;
    let hashes: BTreeSet<String> = rs
        .iter()
        .filter_map(|r| {
            r.metadata
                .labels
                .as_ref()?
                .get("pod-template-hash")
                .cloned()
        })
        .collect();
    anyhow::ensure!(
        hashes.len() == rs.len() && rs.len() <= templates.len() + 1,
        "ReplicaSets: {:?}",
        rs.iter()
            .map(|r| r.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    let with_pods = rs
        .iter()
        .filter(|r| r.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) > 0)
        .count();
    anyhow::ensure!(with_pods == 1, "only the newest ReplicaSet keeps replicas");
    eprintln!(
        "six rounds converged; the ReplicaSets asked for at most {most_asked} pods together (limit {}), at most {most_live} live pods at once",
        REPLICAS + MAX_SURGE
    );
    Ok(())
}
