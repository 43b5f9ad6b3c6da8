//! ReplicaSet controller: keeps `spec.replicas` active pods for every ReplicaSet, adopting
//! matching orphans and releasing pods that no longer match, and fills in `status`. The same
//! logic runs ReplicationControllers (as Kubernetes' replication manager wraps its ReplicaSet
//! controller): [`run`] is generic over [`ReplicaOwner`], implemented by both kinds.
//!
//! As kube-controller-manager's, it works from informer caches: reflector stores of all
//! ReplicaSets and all pods, fed by one watch each. A sync reads the owned pods from the pod
//! store (by controller ownerReference, and orphans by selector) and never lists the API.
//! Because the store lags the controller's own writes, every create and delete is recorded in
//! [`Expectations`]; an owner with unobserved writes does not create or delete again until the
//! watch has caught up, so a lagging cache never doubles a burst. A restarted process starts
//! with empty expectations and a freshly listed cache, so it converges without duplicates.
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::Error;
use crate::events::{EventType, Recorder};
use crate::expectations::{Cached, Expectations};
use crate::util;

/// A workload that keeps a number of pods from a template: ReplicaSets and
/// ReplicationControllers.
pub trait ReplicaOwner:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// The event source, e.g. `replicaset-controller`.
    const COMPONENT: &'static str;
    /// Whether the selector selects a pod with these labels (an empty selector selects none).
    fn selects(&self, labels: &BTreeMap<String, String>) -> bool;
    /// `spec.replicas` (default 1).
    fn replicas(&self) -> i32;
    /// `spec.minReadySeconds`.
    fn min_ready_seconds(&self) -> i32;
    /// `spec.template`.
    fn template(&self) -> Option<PodTemplateSpec>;
    /// `status` in ReplicaSet shape (the two kinds' statuses have the same fields).
    fn replica_status(&self) -> Option<ReplicaSetStatus>;
    /// Turns a computed status into this kind's (ReplicationControllers have no
    /// `terminatingReplicas`).
    fn own_status(status: ReplicaSetStatus) -> ReplicaSetStatus {
        status
    }
}

impl ReplicaOwner for ReplicaSet {
    const COMPONENT: &'static str = "replicaset-controller";
    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.spec
            .as_ref()
            .is_some_and(|s| util::selector_matches(&s.selector, labels))
    }
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn template(&self) -> Option<PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.clone())
    }
    fn replica_status(&self) -> Option<ReplicaSetStatus> {
        self.status.clone()
    }
}

impl ReplicaOwner for ReplicationController {
    const COMPONENT: &'static str = "replication-controller";
    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        // labels.SelectorFromSet: every pair must match; an RC without a selector selects none.
        self.spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .filter(|sel| !sel.is_empty())
            .is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn template(&self) -> Option<PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.clone())
    }
    fn replica_status(&self) -> Option<ReplicaSetStatus> {
        let s = self.status.as_ref()?;
        Some(ReplicaSetStatus {
            replicas: s.replicas,
            fully_labeled_replicas: s.fully_labeled_replicas,
            ready_replicas: s.ready_replicas,
            available_replicas: s.available_replicas,
            observed_generation: s.observed_generation,
            conditions: s.conditions.as_ref().map(|cs| {
                cs.iter()
                    .map(|c| ReplicaSetCondition {
                        type_: c.type_.clone(),
                        status: c.status.clone(),
                        reason: c.reason.clone(),
                        message: c.message.clone(),
                        last_transition_time: c.last_transition_time.clone(),
                    })
                    .collect()
            }),
            terminating_replicas: None,
        })
    }
    fn own_status(status: ReplicaSetStatus) -> ReplicaSetStatus {
        ReplicaSetStatus {
            terminating_replicas: None,
            ..status
        }
    }
}
/// Most pods created or deleted in one sync, as Kubernetes' `BurstReplicas`.
pub const BURST_REPLICAS: usize = 500;
/// First batch of the slow start; each successful batch doubles the next one.
pub const SLOW_START_INITIAL_BATCH: usize = 1;

struct Ctx {
    client: Client,
    recorder: Recorder,
    pods: Store<Pod>,
    /// The pod store holds its first list (see [`util::Ready`]).
    pods_ready: util::Ready,
    expectations: Arc<Expectations>,
}

/// Runs the ReplicaSet controller until its watch streams end.
pub async fn run(client: Client, recorder: Recorder) -> Result<(), Error> {
    run_for::<ReplicaSet>(client, recorder, "replicaset").await
}

/// Runs the ReplicationController controller (the replication manager) until its watch streams
/// end.
pub async fn run_replication_controllers(client: Client, recorder: Recorder) -> Result<(), Error> {
    run_for::<ReplicationController>(client, recorder, "replicationcontroller").await
}

async fn run_for<K: ReplicaOwner>(
    client: Client,
    recorder: Recorder,
    name: &'static str,
) -> Result<(), Error> {
    let wc = watcher::Config::default();
    let (rs_store, rs_writer) = reflector::store::<K>();
    let (pod_store, pod_writer) = reflector::store::<Pod>();
    let expectations = Arc::new(Expectations::default());

    let exp = expectations.clone();
    let replicasets = reflector::reflector(
        rs_writer,
        watcher(Api::<K>::all(client.clone()), wc.clone()),
    )
    .default_backoff()
    .inspect_ok(move |ev| {
        if let watcher::Event::Delete(rs) = ev {
            exp.forget(&rs.uid().unwrap_or_default());
        }
    })
    .applied_objects();
    let exp = expectations.clone();
    let (pods_ready_setter, pods_ready) = util::readiness();
    let pods = reflector::reflector(pod_writer, watcher(Api::<Pod>::all(client.clone()), wc))
        .default_backoff()
        .inspect_ok(move |ev| {
            pods_ready_setter.observe(ev);
            observe_pod_event(&exp, ev);
        })
        .touched_objects();

    let ctx = Arc::new(Ctx {
        client,
        recorder,
        pods: pod_store,
        pods_ready,
        expectations,
    });
    let store = rs_store.clone();
    Controller::for_stream(replicasets, rs_store)
        .watches_stream(pods, move |pod| pod_to_replicasets(&store, &pod))
        .run(reconcile, error_policy, ctx)
        .for_each(|r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, controller = name, "reconcile");
            }
            futures::future::ready(())
        })
        .await;
    Err(Error::Stopped(name))
}

/// Lowers the expectations of a pod's controller when the watch reports the pod (creation
/// observed) or its deletion (deletion observed), as the informer handlers in Kubernetes do.
fn observe_pod_event(exp: &Expectations, ev: &watcher::Event<Pod>) {
    let (pod, cached) = match ev {
        watcher::Event::Apply(p) | watcher::Event::InitApply(p) => (
            p,
            if util::is_deleting(p) {
                Cached::Terminating
            } else {
                Cached::Present
            },
        ),
        watcher::Event::Delete(p) => (p, Cached::Absent),
        watcher::Event::Init | watcher::Event::InitDone => return,
    };
    if let Some(owner) = util::controller_ref(pod) {
        exp.observe(&owner.uid, &pod.name_any(), cached);
    }
}

/// The ReplicaSets a pod event concerns: its controller, or, for an orphan, every ReplicaSet
/// in its namespace whose selector matches (one of them may adopt it).
fn pod_to_replicasets<K: ReplicaOwner>(store: &Store<K>, pod: &Pod) -> Vec<ObjectRef<K>> {
    util::controllers_of(store, pod, |rs| rs.selects(pod.labels()))
}

fn error_policy<K: ReplicaOwner>(rs: Arc<K>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(kind = %K::kind(&()), name = %rs.name_any(), error = %err, "sync failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile<K: ReplicaOwner>(rs: Arc<K>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    // Never act on a half-filled cache: a sync before the first pod list would see no pods.
    if !ctx.pods_ready.wait().await {
        return Err(Error::Stopped("replicaset pod informer"));
    }
    let ns = rs.namespace().unwrap_or_default();
    let name = rs.name_any();
    let uid = rs.uid().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    // Checked before reading the pods, as Kubernetes does: whatever is observed by now is in
    // the snapshot below.
    let lookup = |pod: &str| match ctx.pods.get(&ObjectRef::new(pod).within(&ns)) {
        None => Cached::Absent,
        Some(p) if util::is_deleting(p.as_ref()) => Cached::Terminating,
        Some(_) => Cached::Present,
    };
    let expectations_met = ctx.expectations.satisfied(&uid, lookup);
    let in_namespace = ctx
        .pods
        .state_filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()));
    let mut owned: Vec<Pod> = Vec::new();
    for pod in in_namespace {
        let matches = rs.selects(pod.labels());
        match util::controller_ref(pod.as_ref()) {
            Some(r) if r.uid == uid => {
                if matches || util::is_deleting(pod.as_ref()) {
                    owned.push(Pod::clone(&pod));
                } else if !util::is_deleting(rs.as_ref()) {
                    util::release(&pods_api, pod.as_ref(), &uid).await?;
                }
            }
            None if matches
                && !util::is_deleting(pod.as_ref())
                && !util::is_deleting(rs.as_ref()) =>
            {
                if let Some(p) = util::adopt(&pods_api, pod.as_ref(), rs.as_ref()).await? {
                    owned.push(p);
                }
            }
            _ => {}
        }
    }
    let active: Vec<Pod> = owned.into_iter().filter(util::is_pod_active).collect();
    let mut failure = None;
    if util::is_deleting(rs.as_ref()) {
        ctx.expectations.forget(&uid);
    } else if expectations_met {
        failure = manage_replicas(&ctx, rs.as_ref(), &pods_api, &active).await?;
    } else {
        let (creates, deletes) = ctx.expectations.pending(&uid);
        tracing::debug!(replicaset = %name, creates, deletes, "waiting for the pod cache to observe earlier writes");
    }
    let min_ready = rs.min_ready_seconds();
    let now = jiff::Timestamp::now();
    let status = K::own_status(calculate_status(rs.as_ref(), &active, failure, now));
    if rs.replica_status().as_ref() != Some(&status) {
        util::patch_status(&ctx.client, rs.as_ref(), &status).await?;
    }
    // Pods that are Ready but not yet available become available by time alone; unobserved
    // writes are normally released by pod events, the requeue only guards a missed one.
    let next = active
        .iter()
        .filter_map(|p| util::seconds_until_available(p, min_ready, now))
        .min()
        .map(|s| Duration::from_secs(s.unsigned_abs() + 1));
    let guard = (!expectations_met).then_some(Duration::from_secs(10));
    Ok(match next.into_iter().chain(guard).min() {
        Some(d) => Action::requeue(d),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

/// Creates or deletes pods so that `active` reaches `spec.replicas`, recording every write in
/// the expectations. Returns a creation failure message for the ReplicaFailure condition.
async fn manage_replicas<K: ReplicaOwner>(
    ctx: &Ctx,
    rs: &K,
    api: &Api<Pod>,
    active: &[Pod],
) -> Result<Option<String>, Error> {
    let uid = rs.uid().unwrap_or_default();
    let want = rs.replicas().max(0) as usize;
    let have = active.len();
    if have < want {
        let count = (want - have).min(BURST_REPLICAS);
        let pod = pod_from_template(rs)?;
        let (created, err) = slow_start(count, SLOW_START_INITIAL_BATCH, || {
            let pod = pod.clone();
            async move { api.create(&PostParams::default(), &pod).await }
        })
        .await;
        ctx.expectations
            .expect_creations(&uid, created.iter().map(|p| p.name_any()));
        for p in &created {
            ctx.recorder.record(
                rs,
                K::COMPONENT,
                EventType::Normal,
                "SuccessfulCreate",
                format!("Created pod: {}", p.name_any()),
            );
        }
        if let Some(e) = err {
            let msg = e.to_string();
            ctx.recorder.record(
                rs,
                K::COMPONENT,
                EventType::Warning,
                "FailedCreate",
                format!("Error creating: {msg}"),
            );
            return Ok(Some(msg));
        }
    } else if have > want {
        let count = (have - want).min(BURST_REPLICAS);
        let victims = pods_to_delete(active, count);
        let results = futures::future::join_all(victims.iter().map(|p| async move {
            let r = api.delete(&p.name_any(), &DeleteParams::default()).await;
            (p, r)
        }))
        .await;
        let mut deleted = Vec::new();
        let mut first_err = None;
        for (p, r) in results {
            match r {
                Ok(_) => {
                    deleted.push(p.name_any());
                    ctx.recorder.record(
                        rs,
                        K::COMPONENT,
                        EventType::Normal,
                        "SuccessfulDelete",
                        format!("Deleted pod: {}", p.name_any()),
                    );
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    ctx.recorder.record(
                        rs,
                        K::COMPONENT,
                        EventType::Warning,
                        "FailedDelete",
                        format!("Error deleting: {e}"),
                    );
                    first_err = first_err.or(Some(e));
                }
            }
        }
        ctx.expectations.expect_deletions(&uid, deleted);
        if let Some(e) = first_err {
            return Err(e.into());
        }
    }
    Ok(None)
}

/// Runs `create` `count` times in batches of 1, 2, 4, … (Kubernetes' slowStartBatch): a
/// failing batch stops the rest, so a broken template costs one request, not hundreds.
pub async fn slow_start<T, E, F, Fut>(
    count: usize,
    initial: usize,
    create: F,
) -> (Vec<T>, Option<E>)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut done = Vec::with_capacity(count);
    let mut batch = initial.max(1).min(count);
    let mut remaining = count;
    while remaining > 0 {
        let results = futures::future::join_all((0..batch).map(|_| create())).await;
        let mut first_err = None;
        for r in results {
            match r {
                Ok(t) => done.push(t),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        if first_err.is_some() {
            return (done, first_err);
        }
        remaining -= batch;
        batch = (batch * 2).min(remaining);
    }
    (done, None)
}

fn pod_from_template<K: ReplicaOwner>(rs: &K) -> Result<Pod, Error> {
    let template = rs
        .template()
        .ok_or_else(|| Error::Invalid(format!("{} without pod template", K::kind(&()))))?;
    let tmeta = template.metadata.unwrap_or_default();
    Ok(Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.name_any())),
            namespace: rs.namespace(),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![util::owner_ref(rs)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    })
}

/// What the delete ordering looks at, so it can be tested without whole pods.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodRank {
    /// `spec.nodeName` is set.
    pub assigned: bool,
    /// Pending = 0, Unknown = 1, Running = 2.
    pub phase_rank: u8,
    /// Ready condition True.
    pub ready: bool,
    /// `controller.kubernetes.io/pod-deletion-cost` annotation.
    pub deletion_cost: i32,
    /// Active pods of this ReplicaSet on the same node.
    pub colocated: usize,
    /// When the pod became Ready (seconds).
    pub ready_since: Option<i64>,
    /// Sum of container restart counts.
    pub restarts: i32,
    /// Creation time (seconds).
    pub created: Option<i64>,
}

impl PodRank {
    fn of(pod: &Pod, colocated: usize) -> Self {
        let status = pod.status.as_ref();
        let phase_rank = match status.and_then(|s| s.phase.as_deref()) {
            Some("Pending") | None => 0,
            Some("Unknown") => 1,
            _ => 2,
        };
        PodRank {
            assigned: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| !n.is_empty()),
            phase_rank,
            ready: util::is_pod_ready(pod),
            deletion_cost: pod
                .annotations()
                .get("controller.kubernetes.io/pod-deletion-cost")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            colocated,
            ready_since: util::pod_ready_since(pod).map(|t| t.as_second()),
            restarts: status
                .and_then(|s| s.container_statuses.as_ref())
                .map(|cs| cs.iter().map(|c| c.restart_count).sum())
                .unwrap_or(0),
            created: pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second()),
        }
    }
}

/// Kubernetes' `ActivePodsWithRanks.Less`: `Less` means "delete first". Unassigned before
/// assigned, Pending before Unknown before Running, not ready before ready, lower deletion
/// cost first, more doubled-up first, more recently ready first, more restarts first, newer first.
pub fn delete_order(a: &PodRank, b: &PodRank) -> Ordering {
    a.assigned
        .cmp(&b.assigned)
        .then(a.phase_rank.cmp(&b.phase_rank))
        .then(a.ready.cmp(&b.ready))
        .then(a.deletion_cost.cmp(&b.deletion_cost))
        .then(b.colocated.cmp(&a.colocated))
        .then_with(
            || match (a.ready && b.ready, a.ready_since, b.ready_since) {
                (true, Some(x), Some(y)) => y.cmp(&x),
                _ => Ordering::Equal,
            },
        )
        .then(b.restarts.cmp(&a.restarts))
        .then_with(|| match (a.created, b.created) {
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (Some(x), Some(y)) => y.cmp(&x),
            (None, None) => Ordering::Equal,
        })
}

/// The `count` pods to delete first.
pub fn pods_to_delete(active: &[Pod], count: usize) -> Vec<Pod> {
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for p in active {
        if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            *per_node.entry(n).or_default() += 1;
        }
    }
    let mut ranked: Vec<(PodRank, &Pod)> = active
        .iter()
        .map(|p| {
            let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
            (
                PodRank::of(p, node.and_then(|n| per_node.get(n)).copied().unwrap_or(0)),
                p,
            )
        })
        .collect();
    ranked.sort_by(|a, b| delete_order(&a.0, &b.0));
    ranked
        .into_iter()
        .take(count)
        .map(|(_, p)| p.clone())
        .collect()
}

fn calculate_status<K: ReplicaOwner>(
    rs: &K,
    active: &[Pod],
    failure: Option<String>,
    now: jiff::Timestamp,
) -> ReplicaSetStatus {
    let min_ready = rs.min_ready_seconds();
    let template_labels: BTreeMap<String, String> = rs
        .template()
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labeled = active
        .iter()
        .filter(|p| {
            template_labels
                .iter()
                .all(|(k, v)| p.labels().get(k) == Some(v))
        })
        .count();
    let ready = active.iter().filter(|p| util::is_pod_ready(p)).count();
    let available = active
        .iter()
        .filter(|p| util::is_pod_available(p, min_ready, now))
        .count();
    let old = rs.replica_status().unwrap_or_default();
    let mut conditions: Vec<ReplicaSetCondition> = old
        .conditions
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != "ReplicaFailure")
        .collect();
    if let Some(msg) = failure {
        conditions.push(ReplicaSetCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some("FailedCreate".into()),
            message: Some(msg),
            last_transition_time: Some(util::now()),
        });
    }
    ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(fully_labeled as i32),
        ready_replicas: Some(ready as i32),
        available_replicas: Some(available as i32),
        observed_generation: rs.meta().generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
        terminating_replicas: old.terminating_replicas,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(f: impl FnOnce(&mut PodRank)) -> PodRank {
        let mut r = PodRank {
            assigned: true,
            phase_rank: 2,
            ready: true,
            ready_since: Some(100),
            created: Some(50),
            ..Default::default()
        };
        f(&mut r);
        r
    }

    #[test]
    fn delete_order_follows_kubernetes() {
        let base = rank(|_| {});
        // Each of these goes before the fully healthy base pod.
        let earlier = [
            rank(|r| r.assigned = false),
            rank(|r| r.phase_rank = 0),
            rank(|r| r.phase_rank = 1),
            rank(|r| r.ready = false),
            rank(|r| r.deletion_cost = -1),
            rank(|r| r.colocated = 3),
            rank(|r| r.ready_since = Some(200)),
            rank(|r| r.restarts = 2),
            rank(|r| r.created = Some(60)),
        ];
        for e in &earlier {
            assert_eq!(delete_order(e, &base), Ordering::Less, "{e:?}");
            assert_eq!(delete_order(&base, e), Ordering::Greater, "{e:?}");
        }
        // Precedence: unassigned beats everything after it.
        let unassigned_ready = rank(|r| {
            r.assigned = false;
            r.restarts = 0;
        });
        let assigned_pending = rank(|r| r.phase_rank = 0);
        assert_eq!(
            delete_order(&unassigned_ready, &assigned_pending),
            Ordering::Less
        );
    }

    #[tokio::test]
    async fn slow_start_doubles_and_stops_on_failure() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let (ok, err) = slow_start(10, 1, || {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { if n == 4 { Err("boom") } else { Ok(n) } }
        })
        .await;
        // Batches 1, 2, 4: the third batch holds call 4, which fails; nothing after it runs.
        assert_eq!(err, Some("boom"));
        assert_eq!(ok.len(), 6);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 7);
        let (ok, err) = slow_start(10, 1, || async { Ok::<_, ()>(()) }).await;
        assert_eq!((ok.len(), err), (10, None));
    }
}
