//! Lotse scheduler: places pending pods on nodes the way kube-scheduler's default profile does.
//!
//! Watches pending pods (`spec.nodeName=`) addressed to this scheduler, assigned pods and nodes;
//! keeps per-node aggregates in a [`cache::Cache`]; several worker threads take pods from the
//! [`queue::SchedulingQueue`] and decide in parallel against the cache, each decision being
//! *assumed* in the cache (re-validated if the cache changed meanwhile) before its binding is
//! sent, so parallel decisions never overcommit a node. Bindings run concurrently.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod algorithm;
pub mod binder;
pub mod cache;
pub mod events;
pub mod framework;
pub mod plugins;
pub mod queue;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Api, Client};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::algorithm::Profile;
use crate::binder::BindOutcome;
use crate::cache::Cache;
use crate::events::{EventSink, EventType, PodEvent};
use crate::framework::PodInfo;
use crate::queue::{QueuedPod, SchedulingQueue};

/// Scheduler settings (the flags of the `scheduler` binary).
#[derive(Debug, Clone)]
pub struct Config {
    /// Pods whose `spec.schedulerName` equals this are ours.
    pub scheduler_name: String,
    /// Number of pods decided in parallel (worker threads).
    pub parallelism: usize,
    /// Maximum binding requests in flight.
    pub bind_concurrency: usize,
    /// Run only while holding the Lease (kube-scheduler's `--leader-elect`, default true).
    pub leader_elect: bool,
    /// Namespace of the Lease.
    pub lease_namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// Holder identity for the Lease and event reporting instance.
    pub identity: String,
    /// Lease duration, renew deadline and retry period.
    pub leader_election: client_tools::leaderelection::Timings,
}

impl Default for Config {
    fn default() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        Config {
            scheduler_name: "default-scheduler".into(),
            parallelism: 2,
            bind_concurrency: 256,
            leader_elect: true,
            lease_namespace: "kube-system".into(),
            lease_name: "kube-scheduler".into(),
            identity: format!("{host}_{}", uuid::Uuid::new_v4()),
            leader_election: client_tools::leaderelection::Timings::default(),
        }
    }
}

/// Why the scheduler stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Leadership was lost; the process should exit so another replica takes over.
    #[error("lost leader election lease")]
    LeadershipLost,
    /// Leader election could not start (e.g. timings client-go refuses).
    #[error("leader election: {0}")]
    LeaderElection(#[source] client_tools::Error),
    /// A background task ended unexpectedly.
    #[error("scheduler task ended: {0}")]
    TaskEnded(&'static str),
}

/// What a worker decided for one pod.
enum Outcome {
    Bind {
        qp: QueuedPod,
        node: String,
    },
    Unschedulable {
        qp: QueuedPod,
        message: String,
    },
    /// Unschedulable, but evicting `candidate`'s victims makes room on its node.
    Preempt {
        qp: QueuedPod,
        message: String,
        candidate: plugins::default_preemption::Candidate,
    },
}

struct Shared {
    config: Config,
    cache: RwLock<Cache>,
    queue: SchedulingQueue,
    profile: Profile,
    next_start: AtomicUsize,
    stop: AtomicBool,
    /// Every PodDisruptionBudget, for preemption's choice of victims.
    pdbs: RwLock<Vec<PodDisruptionBudget>>,
    /// Bumped after each change to the cache's claims and volumes: VolumeBinding's PreBind
    /// waits on it for the PV controller's binding instead of asking the apiserver.
    storage_changed: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn cache_read(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }
    fn cache_write(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs the scheduler until leadership is lost (or forever).
pub async fn run(config: Config, client: Client) -> Result<(), Error> {
    let elector = if config.leader_elect {
        Some(
            client_tools::leaderelection::LeaderElector::new(
                client.clone(),
                &config.lease_namespace,
                &config.lease_name,
                &config.identity,
                config.leader_election,
            )
            .map_err(Error::LeaderElection)?,
        )
    } else {
        None
    };
    let shared = Arc::new(Shared {
        config: config.clone(),
        cache: RwLock::new(Cache::default()),
        queue: SchedulingQueue::default(),
        profile: Profile::default(),
        next_start: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        pdbs: RwLock::new(Vec::new()),
        storage_changed: tokio::sync::watch::Sender::new(0),
    });
    let work = schedule(shared.clone(), client);
    let result = match &elector {
        Some(e) => match e.run(work).await {
            Ok(result) => result,
            Err(client_tools::Error::LeadershipLost) => Err(Error::LeadershipLost),
            Err(e) => Err(Error::LeaderElection(e)),
        },
        None => work.await,
    };
    shared.stop.store(true, Ordering::SeqCst);
    shared.queue.close();
    result
}

async fn schedule(shared: Arc<Shared>, client: Client) -> Result<(), Error> {
    let (synced_tx, mut synced_rx) = watch::channel(0u8);
    let synced_tx = Arc::new(synced_tx);
    let nodes = tokio::spawn(watch_nodes(
        shared.clone(),
        client.clone(),
        synced_tx.clone(),
    ));
    let assigned = tokio::spawn(watch_assigned_pods(
        shared.clone(),
        client.clone(),
        synced_tx.clone(),
    ));
    let namespaces = tokio::spawn(watch_namespaces(shared.clone(), client.clone()));
    let storage = tokio::spawn(watch_storage(shared.clone(), client.clone()));
    let budgets = tokio::spawn(watch_pdbs(shared.clone(), client.clone()));
    // Decide nothing before nodes and assigned pods are known (a restart must not overcommit).
    while *synced_rx.borrow() < 2 {
        if synced_rx.changed().await.is_err() {
            return Err(Error::TaskEnded("cache sync"));
        }
    }
    tracing::info!(
        nodes = shared.cache_read().nodes().len(),
        pods = shared.cache_read().pod_count(),
        "caches synced"
    );
    let pending = tokio::spawn(watch_pending_pods(shared.clone(), client.clone()));

    let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
    for i in 0..shared.config.parallelism.max(1) {
        let shared = shared.clone();
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("sched-worker-{i}"))
            .spawn(move || worker(shared, tx))
            .map_err(|_| Error::TaskEnded("worker thread"))?;
    }
    drop(tx);

    let events = EventSink::start(
        client.clone(),
        shared.config.scheduler_name.clone(),
        shared.config.identity.clone(),
    );
    let binds = Arc::new(Semaphore::new(shared.config.bind_concurrency.max(1)));
    let outcomes = async {
        while let Some(outcome) = rx.recv().await {
            match outcome {
                Outcome::Bind { qp, node } => {
                    let Ok(permit) = binds.clone().acquire_owned().await else {
                        break;
                    };
                    let (shared, client, events) = (shared.clone(), client.clone(), events.clone());
                    tokio::spawn(async move {
                        let _permit = permit;
                        finish_binding(&shared, &client, &events, qp, node).await;
                    });
                }
                Outcome::Preempt {
                    qp,
                    message,
                    candidate,
                } => {
                    let (client, events) = (client.clone(), events.clone());
                    let name = shared.config.scheduler_name.clone();
                    tokio::spawn(async move {
                        tracing::info!(pod = %qp.info.name, node = %candidate.node,
                            victims = candidate.victims.len(), "preempting");
                        plugins::default_preemption::prepare_candidate(
                            &client, &events, &name, &qp.pod, &candidate,
                        )
                        .await;
                        if let Err(e) =
                            events::set_unschedulable_condition(&client, &qp.pod, &message).await
                        {
                            tracing::debug!(error = %e, "could not update PodScheduled condition");
                        }
                        events.emit(PodEvent {
                            pod: qp.pod,
                            type_: EventType::Warning,
                            reason: "FailedScheduling",
                            action: "Scheduling",
                            note: message,
                        });
                    });
                }
                Outcome::Unschedulable { qp, message } => {
                    let (client, events) = (client.clone(), events.clone());
                    tokio::spawn(async move {
                        tracing::debug!(pod = %qp.info.name, %message, "unschedulable");
                        if let Err(e) =
                            events::set_unschedulable_condition(&client, &qp.pod, &message).await
                        {
                            tracing::debug!(error = %e, "could not update PodScheduled condition");
                        }
                        events.emit(PodEvent {
                            pod: qp.pod,
                            type_: EventType::Warning,
                            reason: "FailedScheduling",
                            action: "Scheduling",
                            note: message,
                        });
                    });
                }
            }
        }
    };
    tokio::select! {
        _ = outcomes => Err(Error::TaskEnded("workers")),
        _ = nodes => Err(Error::TaskEnded("node watch")),
        _ = assigned => Err(Error::TaskEnded("assigned pod watch")),
        _ = pending => Err(Error::TaskEnded("pending pod watch")),
        _ = namespaces => Err(Error::TaskEnded("namespace watch")),
        _ = storage => Err(Error::TaskEnded("storage watches")),
        _ = budgets => Err(Error::TaskEnded("disruption budget watch")),
    }
}

async fn finish_binding(
    shared: &Shared,
    client: &Client,
    events: &EventSink,
    qp: QueuedPod,
    node: String,
) {
    // VolumeBinding's PreBind: the pod's unbound WaitForFirstConsumer claims.
    let delayed: Vec<String> = {
        let cache = shared.cache_read();
        qp.info
            .claims
            .iter()
            .filter(|c| {
                cache
                    .volumes
                    .claims
                    .get(&(qp.info.namespace.clone(), (*c).clone()))
                    .and_then(|pvc| pvc.spec.as_ref())
                    .is_some_and(|s| s.volume_name.as_deref().unwrap_or("").is_empty())
            })
            .cloned()
            .collect()
    };
    let claim_state = |name: &str| {
        let cache = shared.cache_read();
        cache
            .volumes
            .claims
            .get(&(qp.info.namespace.clone(), name.to_string()))
            .map(binder::ClaimState::of)
    };
    let changed = shared.storage_changed.subscribe();
    if let Err(e) = binder::bind_volumes(
        client,
        &qp.info.namespace,
        &delayed,
        &node,
        claim_state,
        changed,
    )
    .await
    {
        tracing::warn!(pod = %qp.info.name, error = %e, "binding volumes failed; retrying");
        shared.cache_write().forget(&qp.info.uid);
        shared.queue.retry(qp);
        return;
    }
    match binder::bind(client, &qp.pod, &node).await {
        BindOutcome::Bound => {
            let note = format!(
                "Successfully assigned {}/{} to {}",
                qp.info.namespace, qp.info.name, node
            );
            events.emit(PodEvent {
                pod: qp.pod,
                type_: EventType::Normal,
                reason: "Scheduled",
                action: "Binding",
                note,
            });
        }
        BindOutcome::Gone => {
            shared.cache_write().forget(&qp.info.uid);
            shared.queue.move_all_to_active_or_backoff();
        }
        BindOutcome::Retry(e) => {
            tracing::warn!(pod = %qp.info.name, error = %e, "binding failed; retrying");
            shared.cache_write().forget(&qp.info.uid);
            shared.queue.retry(qp);
        }
    }
}

/// A scheduling worker: pops, decides, assumes, hands the binding to the async side.
fn worker(shared: Arc<Shared>, tx: mpsc::UnboundedSender<Outcome>) {
    let mut rng = rand::rng();
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(qp) = shared.queue.pop(Duration::from_millis(500)) else {
            continue;
        };
        let outcome = decide(&shared, &qp, &mut rng);
        let out = match outcome {
            Ok(node) => {
                shared.queue.done(&qp.info.uid);
                Outcome::Bind { qp, node }
            }
            Err(Some((message, None))) => {
                shared.queue.unschedulable(&qp.info.uid);
                Outcome::Unschedulable { qp, message }
            }
            Err(Some((message, Some(candidate)))) => {
                shared.queue.unschedulable(&qp.info.uid);
                Outcome::Preempt {
                    qp,
                    message,
                    candidate,
                }
            }
            Err(None) => {
                shared.queue.retry(qp);
                continue;
            }
        };
        if tx.send(out).is_err() {
            return;
        }
    }
}

/// Why a pod was not placed: the FailedScheduling message and, when preemption makes room
/// somewhere, the victims to evict.
type Unplaced = (String, Option<plugins::default_preemption::Candidate>);

/// Ok(node) when assumed; Err(Some(..)) when unschedulable; Err(None) to retry later.
fn decide(
    shared: &Shared,
    qp: &QueuedPod,
    rng: &mut impl rand::Rng,
) -> Result<String, Option<Unplaced>> {
    for _ in 0..3 {
        let start = shared.next_start.load(Ordering::Relaxed);
        let (result, generation) = {
            let cache = shared.cache_read();
            if cache.contains_pod(&qp.info.uid) {
                // Already assumed or bound (duplicate event); nothing to do.
                return Err(None);
            }
            let result = shared
                .profile
                .schedule(&cache, &qp.info, start, rng)
                .map_err(|fit| {
                    // PostFilter: DefaultPreemption.
                    let pdbs = shared.pdbs.read().unwrap_or_else(|e| e.into_inner());
                    match plugins::default_preemption::find_candidate(
                        &shared.profile,
                        &cache,
                        &qp.info,
                        &pdbs,
                    ) {
                        Some(c) => (fit.filter_message(), Some(c)),
                        None if plugins::default_preemption::waits_for_victims(
                            &qp.info, &cache,
                        ) =>
                        {
                            (
                                format!(
                                    "{} preemption: {}.",
                                    fit.filter_message(),
                                    plugins::default_preemption::WAITING_FOR_VICTIMS
                                ),
                                None,
                            )
                        }
                        None => (fit.message(), None),
                    }
                });
            (result, cache.generation())
        };
        let decision = match result {
            Ok(d) => d,
            Err(unplaced) => return Err(Some(unplaced)),
        };
        shared
            .next_start
            .store(decision.next_start, Ordering::Relaxed);
        let mut cache = shared.cache_write();
        if cache.generation() != generation {
            // Something changed since we looked: the node must still pass every filter.
            let still_fits = cache.node(&decision.node).is_some_and(|n| {
                let state = shared.profile.pre_filter(&cache, &qp.info);
                shared.profile.filter_node(&state, &qp.info, n).is_ok()
            });
            if !still_fits {
                continue;
            }
        }
        cache.assume(qp.info.clone(), &decision.node);
        return Ok(decision.node);
    }
    Err(None)
}

fn is_ours(config: &Config, pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    let name = spec
        .and_then(|s| s.scheduler_name.as_deref())
        .unwrap_or("default-scheduler");
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    name == config.scheduler_name
        && pod.metadata.deletion_timestamp.is_none()
        && spec
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or("")
            .is_empty()
        && spec
            .and_then(|s| s.scheduling_gates.as_ref())
            .is_none_or(|g| g.is_empty())
        && !matches!(phase, Some("Succeeded") | Some("Failed"))
}

/// What the queue keeps of a pending pod besides its [`PodInfo`]: the identity that bindings and
/// events name, and the conditions the `PodScheduled` status patch rewrites. Dropping spec and
/// the rest keeps thousands of queued pods (and their queued events) small.
fn slim_pending_pod(pod: Pod) -> Pod {
    let md = pod.metadata;
    Pod {
        metadata: kube::api::ObjectMeta {
            name: md.name,
            namespace: md.namespace,
            uid: md.uid,
            resource_version: md.resource_version,
            ..Default::default()
        },
        spec: None,
        status: pod.status.map(|s| k8s_openapi::api::core::v1::PodStatus {
            conditions: s.conditions,
            ..Default::default()
        }),
    }
}

async fn watch_pending_pods(shared: Arc<Shared>, client: Client) {
    let api: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields("spec.nodeName=");
    let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(WatchEvent::Apply(pod)) | Ok(WatchEvent::InitApply(pod)) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if is_ours(&shared.config, &pod) {
                    if !shared.cache_read().contains_pod(&uid) {
                        let info = Arc::new(PodInfo::new(&pod));
                        shared.cache_write().set_nominated(info.clone());
                        shared
                            .queue
                            .add_or_update(Arc::new(slim_pending_pod(pod)), info);
                    }
                } else {
                    shared.queue.delete(&uid);
                    shared.cache_write().remove_nominated(&uid);
                }
            }
            Ok(WatchEvent::Delete(pod)) => {
                // Also sent when the pod gets bound (it leaves the field selector).
                let uid = pod.metadata.uid.as_deref().unwrap_or_default();
                shared.queue.delete(uid);
                shared.cache_write().remove_nominated(uid);
            }
            Ok(WatchEvent::Init) => shared.cache_write().clear_nominated(),
            Ok(WatchEvent::InitDone) => {}
            Err(e) => tracing::warn!(error = %e, "pending pod watch error"),
        }
    }
}

async fn watch_assigned_pods(shared: Arc<Shared>, client: Client, synced: Arc<watch::Sender<u8>>) {
    let api: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields("spec.nodeName!=");
    let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
    let mut seen: Option<HashSet<String>> = None;
    let mut first = true;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(WatchEvent::Init) => seen = Some(HashSet::new()),
            Ok(WatchEvent::InitApply(pod)) => {
                if let Some(s) = seen.as_mut() {
                    s.insert(pod.metadata.uid.clone().unwrap_or_default());
                }
                apply_assigned(&shared, &pod);
            }
            Ok(WatchEvent::InitDone) => {
                if let Some(s) = seen.take() {
                    shared.cache_write().retain_assigned_pods(&s);
                }
                shared.queue.move_all_to_active_or_backoff();
                if first {
                    first = false;
                    synced.send_modify(|n| *n += 1);
                }
            }
            Ok(WatchEvent::Apply(pod)) => {
                if apply_assigned(&shared, &pod) {
                    shared.queue.move_all_to_active_or_backoff();
                }
            }
            Ok(WatchEvent::Delete(pod)) => {
                shared
                    .cache_write()
                    .remove_pod(pod.metadata.uid.as_deref().unwrap_or_default());
                shared.queue.move_all_to_active_or_backoff();
            }
            Err(e) => tracing::warn!(error = %e, "assigned pod watch error"),
        }
    }
}

/// Returns true if resources were freed (pod finished).
fn apply_assigned(shared: &Shared, pod: &Pod) -> bool {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded") | Some("Failed")) {
        let mut c = shared.cache_write();
        let had = c.contains_pod(&uid);
        c.remove_pod(&uid);
        return had;
    }
    let info = Arc::new(PodInfo::new(pod).for_assigned());
    shared.cache_write().upsert_assigned_pod(info);
    false
}

async fn watch_nodes(shared: Arc<Shared>, client: Client, synced: Arc<watch::Sender<u8>>) {
    let api: Api<Node> = Api::all(client);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut seen: Option<HashSet<String>> = None;
    let mut first = true;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(WatchEvent::Init) => seen = Some(HashSet::new()),
            Ok(WatchEvent::InitApply(node)) => {
                if let Some(s) = seen.as_mut() {
                    s.insert(node.metadata.name.clone().unwrap_or_default());
                }
                shared.cache_write().upsert_node(&node);
            }
            Ok(WatchEvent::InitDone) => {
                if let Some(s) = seen.take() {
                    shared.cache_write().retain_nodes(&s);
                }
                shared.queue.move_all_to_active_or_backoff();
                if first {
                    first = false;
                    synced.send_modify(|n| *n += 1);
                }
            }
            Ok(WatchEvent::Apply(node)) => {
                if shared.cache_write().upsert_node(&node) {
                    shared.queue.move_all_to_active_or_backoff();
                }
            }
            Ok(WatchEvent::Delete(node)) => {
                shared
                    .cache_write()
                    .remove_node(node.metadata.name.as_deref().unwrap_or_default());
            }
            Err(e) => tracing::warn!(error = %e, "node watch error"),
        }
    }
}

async fn watch_pdbs(shared: Arc<Shared>, client: Client) {
    let api: Api<PodDisruptionBudget> = Api::all(client);
    let (store, writer) = kube::runtime::reflector::store::<PodDisruptionBudget>();
    let mut stream = kube::runtime::reflector(
        writer,
        watcher::watcher(api, watcher::Config::default()).default_backoff(),
    )
    .boxed();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(_) => {
                let all: Vec<PodDisruptionBudget> =
                    store.state().iter().map(|b| b.as_ref().clone()).collect();
                *shared.pdbs.write().unwrap_or_else(|e| e.into_inner()) = all;
            }
            Err(e) => tracing::debug!(error = %e, "disruption budget watch error"),
        }
    }
}

async fn watch_namespaces(shared: Arc<Shared>, client: Client) {
    let api: Api<Namespace> = Api::all(client);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(WatchEvent::Apply(ns)) | Ok(WatchEvent::InitApply(ns)) => {
                let name = ns.metadata.name.clone().unwrap_or_default();
                shared
                    .cache_write()
                    .namespaces
                    .insert(name, ns.metadata.labels.clone().unwrap_or_default());
            }
            Ok(WatchEvent::Delete(ns)) => {
                shared
                    .cache_write()
                    .namespaces
                    .remove(ns.metadata.name.as_deref().unwrap_or_default());
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "namespace watch error"),
        }
    }
}

/// Applies one watch event of a storage object to the cache's volume listers; pending pods are
/// retried when something changed (a claim appeared or got bound, a volume became available).
fn apply_storage<K, F>(shared: &Shared, ev: WatchEvent<K>, apply: F)
where
    F: Fn(&mut plugins::volume_binding::VolumeListers, K, bool),
{
    let (obj, deleted) = match ev {
        WatchEvent::Apply(o) | WatchEvent::InitApply(o) => (o, false),
        WatchEvent::Delete(o) => (o, true),
        WatchEvent::Init | WatchEvent::InitDone => {
            shared.queue.move_all_to_active_or_backoff();
            return;
        }
    };
    {
        let mut cache = shared.cache_write();
        apply(&mut cache.volumes, obj, deleted);
        cache.touch();
    }
    shared
        .storage_changed
        .send_modify(|n| *n = n.wrapping_add(1));
    shared.queue.move_all_to_active_or_backoff();
}

async fn watch_storage(shared: Arc<Shared>, client: Client) {
    let cfg = watcher::Config::default;
    let mut claims = watcher::watcher(Api::<PersistentVolumeClaim>::all(client.clone()), cfg())
        .default_backoff()
        .boxed();
    let mut volumes = watcher::watcher(Api::<PersistentVolume>::all(client.clone()), cfg())
        .default_backoff()
        .boxed();
    let mut classes = watcher::watcher(Api::<StorageClass>::all(client), cfg())
        .default_backoff()
        .boxed();
    loop {
        tokio::select! {
            Some(ev) = claims.next() => match ev {
                Ok(ev) => apply_storage(&shared, ev, |l, c: PersistentVolumeClaim, deleted| {
                    let key = (c.metadata.namespace.clone().unwrap_or_default(), c.metadata.name.clone().unwrap_or_default());
                    if deleted { l.claims.remove(&key); } else { l.claims.insert(key, c); }
                }),
                Err(e) => tracing::debug!(error = %e, "claim watch error"),
            },
            Some(ev) = volumes.next() => match ev {
                Ok(ev) => apply_storage(&shared, ev, |l, v: PersistentVolume, deleted| {
                    let key = v.metadata.name.clone().unwrap_or_default();
                    if deleted { l.volumes.remove(&key); } else { l.volumes.insert(key, v); }
                }),
                Err(e) => tracing::debug!(error = %e, "volume watch error"),
            },
            Some(ev) = classes.next() => match ev {
                Ok(ev) => apply_storage(&shared, ev, |l, c: StorageClass, deleted| {
                    let key = c.metadata.name.clone().unwrap_or_default();
                    if deleted { l.classes.remove(&key); } else { l.classes.insert(key, c); }
                }),
                Err(e) => tracing::debug!(error = %e, "storage class watch error"),
            },
            else => return,
        }
    }
}
