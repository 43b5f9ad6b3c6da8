//! Disruption controller: keeps every PodDisruptionBudget's status — `expectedPods`,
//! `desiredHealthy`, `currentHealthy`, `disruptionsAllowed`, `disruptedPods`,
//! `observedGeneration` and the `DisruptionAllowed` condition — as kube-controller-manager's.
//!
//! `minAvailable` as a number counts the selected pods; a percentage, or `maxUnavailable`,
//! is resolved over the scale of the pods' controllers (read through their `/scale`
//! subresource; a ReplicaSet of a Deployment counts as the Deployment). Pods the eviction API
//! has recorded in `disruptedPods` are not healthy until they are gone, or until
//! [`DELETION_TIMEOUT`] has passed without their deletion. A sync that fails leaves the budget
//! at zero disruptions (`SyncFailed`), so evictions stop rather than guess.
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::Error;
use crate::events::{EventType, Recorder};
use crate::util;

const COMPONENT: &str = "controllermanager";
/// How long a pod the eviction API approved may take to be deleted before the budget counts
/// it again (`DeletionTimeout`).
pub const DELETION_TIMEOUT: Duration = Duration::from_secs(120);
/// The condition type the controller maintains.
pub const DISRUPTION_ALLOWED: &str = "DisruptionAllowed";

struct Ctx {
    client: Client,
    recorder: Recorder,
    pods: Store<Pod>,
    pods_ready: util::Ready,
}

/// Runs the disruption controller until its watch streams end.
pub async fn run(client: Client, recorder: Recorder) -> Result<(), Error> {
    let wc = watcher::Config::default();
    let (pdb_store, pdb_writer) = reflector::store::<PodDisruptionBudget>();
    let (pod_store, pod_writer) = reflector::store::<Pod>();
    let budgets = reflector::reflector(
        pdb_writer,
        watcher(Api::<PodDisruptionBudget>::all(client.clone()), wc.clone()),
    )
    .default_backoff()
    .applied_objects();
    let (pods_ready_setter, pods_ready) = util::readiness();
    let pods = reflector::reflector(pod_writer, watcher(Api::<Pod>::all(client.clone()), wc))
        .default_backoff()
        .inspect_ok(move |ev| pods_ready_setter.observe(ev))
        .touched_objects();
    let ctx = Arc::new(Ctx {
        client,
        recorder,
        pods: pod_store,
        pods_ready,
    });
    let store = pdb_store.clone();
    Controller::for_stream(budgets, pdb_store)
        .watches_stream(pods, move |pod| budgets_of_pod(&store, &pod))
        .run(reconcile, error_policy, ctx)
        .for_each(|r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, "disruption reconcile");
            }
            futures::future::ready(())
        })
        .await;
    Err(Error::Stopped("disruption"))
}

/// Whether a budget selects pods with `labels`: a missing selector selects nothing, an empty
/// one everything (policy/v1).
fn selects(pdb: &PodDisruptionBudget, labels: &BTreeMap<String, String>) -> bool {
    pdb.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|sel| util::selector_matches(sel, labels))
}

fn budgets_of_pod(
    store: &Store<PodDisruptionBudget>,
    pod: &Pod,
) -> Vec<ObjectRef<PodDisruptionBudget>> {
    let ns = pod.namespace().unwrap_or_default();
    store
        .state()
        .iter()
        .filter(|b| b.namespace().as_deref() == Some(ns.as_str()))
        .filter(|b| selects(b, pod.labels()))
        .map(|b| ObjectRef::from_obj(b.as_ref()))
        .collect()
}

fn error_policy(pdb: Arc<PodDisruptionBudget>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(pdb = %pdb.name_any(), error = %err, "disruption sync failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Why the expected pod count could not be computed.
#[derive(Debug, thiserror::Error)]
enum CountError {
    #[error("found no controllers for pod {0:?}")]
    NoController(String),
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Percent(String),
}

async fn reconcile(pdb: Arc<PodDisruptionBudget>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if !ctx.pods_ready.wait().await {
        return Err(Error::Stopped("disruption pod informer"));
    }
    match try_sync(&pdb, &ctx).await {
        Ok(action) => Ok(action),
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 409 => {
            Ok(Action::requeue(Duration::from_millis(200)))
        }
        Err(e) => {
            fail_safe(&pdb, &ctx, &e.to_string()).await?;
            Err(e)
        }
    }
}

async fn try_sync(pdb: &PodDisruptionBudget, ctx: &Ctx) -> Result<Action, Error> {
    let ns = pdb.namespace().unwrap_or_default();
    let pods: Vec<Arc<Pod>> = ctx.pods.state_filter(|p| {
        p.metadata.namespace.as_deref() == Some(ns.as_str()) && selects(pdb, p.labels())
    });
    if pods.is_empty() {
        ctx.recorder.record(
            pdb,
            COMPONENT,
            EventType::Normal,
            "NoPods",
            "No matching pods found".into(),
        );
    }
    let counts = match expected_counts(pdb, &pods, &ctx.client).await {
        Ok(c) => c,
        Err(e) => {
            ctx.recorder.record(
                pdb,
                COMPONENT,
                EventType::Warning,
                "CalculateExpectedPodCountFailed",
                format!("Failed to calculate the number of expected pods: {e}"),
            );
            return Err(Error::Invalid(e.to_string()));
        }
    };
    if counts.unmanaged > 0 {
        ctx.recorder.record(
            pdb,
            COMPONENT,
            EventType::Warning,
            "UnmanagedPods",
            format!(
                "Pods selected by this PodDisruptionBudget (selector: {}) were found to be unmanaged. As a result, the status of the PDB cannot be calculated correctly, which may result in undefined behavior. To account for these pods please set \".spec.minAvailable\" field of the PDB to an integer value.",
                go_selector(pdb.spec.as_ref().and_then(|s| s.selector.as_ref()))
            ),
        );
    }
    let now = jiff::Timestamp::now();
    let old = pdb.status.clone().unwrap_or_default();
    let (disrupted, recheck) = disrupted_pods(&pods, old.disrupted_pods.as_ref(), now);
    for name in expired_disruptions(&pods, old.disrupted_pods.as_ref(), now) {
        if let Some(pod) = pods.iter().find(|p| p.name_any() == name) {
            ctx.recorder.record(
                pod.as_ref(),
                COMPONENT,
                EventType::Warning,
                "NotDeleted",
                format!("Pod was expected by PDB {ns}/{ns} to be deleted but it wasn't"),
            );
        }
    }
    let current = count_healthy(&pods, &disrupted);
    let generation = pdb.metadata.generation.unwrap_or(0);
    let status = next_status(&old, current, counts, disrupted, generation, now);
    if status != old {
        write_status(pdb, status, &ctx.client).await?;
    }
    Ok(match recheck {
        Some(at) => {
            let wait = at.as_second() - now.as_second();
            Action::requeue(Duration::from_secs(wait.max(1) as u64))
        }
        None => Action::await_change(),
    })
}

/// `updatePdbStatus`: the new status, or the old one when nothing changed (so no write).
fn next_status(
    old: &PodDisruptionBudgetStatus,
    current: i32,
    counts: Counts,
    disrupted: BTreeMap<String, Time>,
    generation: i64,
    now: jiff::Timestamp,
) -> PodDisruptionBudgetStatus {
    // No expected pods means no disruptions: a budget whose pods appear before this
    // controller has looked at them again must not allow any.
    let mut allowed = current - counts.desired;
    if counts.expected <= 0 || allowed <= 0 {
        allowed = 0;
    }
    let disrupted = (!disrupted.is_empty()).then_some(disrupted);
    let same_disrupted =
        old.disrupted_pods.as_ref().filter(|m| !m.is_empty()) == disrupted.as_ref();
    if old.current_healthy == current
        && old.desired_healthy == counts.desired
        && old.expected_pods == counts.expected
        && old.disruptions_allowed == allowed
        && same_disrupted
        && old.observed_generation == Some(generation)
        && conditions_up_to_date(old, generation)
    {
        return old.clone();
    }
    let mut status = PodDisruptionBudgetStatus {
        current_healthy: current,
        desired_healthy: counts.desired,
        expected_pods: counts.expected,
        disruptions_allowed: allowed,
        disrupted_pods: disrupted,
        observed_generation: Some(generation),
        conditions: old.conditions.clone(),
    };
    let (st, reason) = if allowed > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    set_condition(&mut status, st, reason, "", now);
    status
}

/// `ConditionsAreUpToDate`.
fn conditions_up_to_date(s: &PodDisruptionBudgetStatus, generation: i64) -> bool {
    let Some(c) = s
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == DISRUPTION_ALLOWED)
    else {
        return false;
    };
    if s.observed_generation != Some(generation) {
        return false;
    }
    if s.disruptions_allowed > 0 {
        c.status == "True" && c.reason == "SufficientPods"
    } else {
        c.status == "False" && c.reason == "InsufficientPods"
    }
}

/// `meta.SetStatusCondition` for `DisruptionAllowed`: the transition time moves only when the
/// status flips.
fn set_condition(
    s: &mut PodDisruptionBudgetStatus,
    status: &str,
    reason: &str,
    message: &str,
    now: jiff::Timestamp,
) {
    let observed = s.observed_generation;
    let now = Time(jiff::Timestamp::from_second(now.as_second()).unwrap_or(now));
    let conds = s.conditions.get_or_insert_with(Vec::new);
    match conds.iter_mut().find(|c| c.type_ == DISRUPTION_ALLOWED) {
        Some(c) => {
            if c.status != status {
                c.status = status.into();
                c.last_transition_time = now;
            }
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = observed;
        }
        None => conds.push(Condition {
            type_: DISRUPTION_ALLOWED.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: observed,
            last_transition_time: now,
        }),
    }
}

async fn write_status(
    pdb: &PodDisruptionBudget,
    status: PodDisruptionBudgetStatus,
    client: &Client,
) -> Result<(), Error> {
    let ns = pdb.namespace().unwrap_or_default();
    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    let mut updated = pdb.clone();
    updated.status = Some(status);
    // The resourceVersion we read guards the write: an eviction that spent a disruption in
    // between makes this a conflict, and the next sync starts from its status.
    api.replace_status(&pdb.name_any(), &PostParams::default(), &updated)
        .await?;
    Ok(())
}

/// `failSafe`: no disruptions while the budget cannot be computed.
async fn fail_safe(pdb: &PodDisruptionBudget, ctx: &Ctx, why: &str) -> Result<(), Error> {
    let mut status = pdb.status.clone().unwrap_or_default();
    status.disruptions_allowed = 0;
    set_condition(
        &mut status,
        "False",
        "SyncFailed",
        why,
        jiff::Timestamp::now(),
    );
    match write_status(pdb, status, &ctx.client).await {
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 409 => Ok(()),
        r => r,
    }
}

/// The expected and desired pod counts of a budget, and how many selected pods have no
/// controller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    expected: i32,
    desired: i32,
    unmanaged: usize,
}

/// `getExpectedPodCount`.
async fn expected_counts(
    pdb: &PodDisruptionBudget,
    pods: &[Arc<Pod>],
    client: &Client,
) -> Result<Counts, CountError> {
    let spec = pdb.spec.clone().unwrap_or_default();
    if let Some(max) = &spec.max_unavailable {
        let (expected, unmanaged) = expected_scale(pods, client).await?;
        let max = scaled_value(max, expected, true)?;
        return Ok(Counts {
            expected,
            desired: (expected - max).max(0),
            unmanaged,
        });
    }
    match &spec.min_available {
        Some(IntOrString::Int(n)) => Ok(Counts {
            expected: pods.len() as i32,
            desired: *n,
            unmanaged: 0,
        }),
        Some(min @ IntOrString::String(_)) => {
            let (expected, unmanaged) = expected_scale(pods, client).await?;
            Ok(Counts {
                expected,
                desired: scaled_value(min, expected, true)?,
                unmanaged,
            })
        }
        None => Ok(Counts::default()),
    }
}

/// `intstr.GetScaledValueFromIntOrPercent`.
fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Result<i32, CountError> {
    match v {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    CountError::Percent(format!(
                        "invalid value for IntOrString: invalid value {s:?}"
                    ))
                })?;
            let scaled = i64::from(total) * pct;
            Ok(if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            } as i32)
        }
    }
}

/// `getExpectedScale`: the summed scale of the selected pods' controllers (each counted once);
/// pods without a controller are counted as unmanaged.
async fn expected_scale(pods: &[Arc<Pod>], client: &Client) -> Result<(i32, usize), CountError> {
    let mut looked_up = HashSet::new();
    let mut counted = HashSet::new();
    let mut expected = 0;
    let mut unmanaged = 0;
    for pod in pods {
        let Some(owner) = util::controller_ref(pod.as_ref()) else {
            unmanaged += 1;
            continue;
        };
        if !looked_up.insert(owner.uid.clone()) {
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        let Some((uid, replicas)) = controller_scale(client, &ns, owner).await? else {
            return Err(CountError::NoController(pod.name_any()));
        };
        // Several ReplicaSets of one Deployment count once, as the Deployment.
        if counted.insert(uid) {
            expected += replicas;
        }
    }
    Ok((expected, unmanaged))
}

/// The kinds whose `/scale` a budget resolves percentages over.
fn scalable(api_version: &str, kind: &str) -> Option<ApiResource> {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let plural = match (group, kind) {
        ("apps", "Deployment") => "deployments",
        ("apps", "ReplicaSet") => "replicasets",
        ("apps", "StatefulSet") => "statefulsets",
        ("", "ReplicationController") => "replicationcontrollers",
        _ => return None,
    };
    Some(ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, kind),
        plural,
    ))
}

/// The UID and `spec.replicas` (from `/scale`) of the controller that finally owns a pod: a
/// ReplicaSet owned by a Deployment stands for the Deployment. None when the controller is
/// gone or is not what the reference says.
async fn controller_scale(
    client: &Client,
    ns: &str,
    owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> Result<Option<(String, i32)>, CountError> {
    let mut target = (
        owner.api_version.clone(),
        owner.kind.clone(),
        owner.name.clone(),
        owner.uid.clone(),
    );
    if owner.kind == "ReplicaSet" && owner.api_version.starts_with("apps/") {
        let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
        let Some(rs) = rs_api.get_opt(&owner.name).await? else {
            return Ok(None);
        };
        if rs.uid().as_deref() != Some(owner.uid.as_str()) {
            return Ok(None);
        }
        if let Some(dep) = util::controller_ref(&rs).filter(|r| r.kind == "Deployment") {
            target = (
                dep.api_version.clone(),
                dep.kind.clone(),
                dep.name.clone(),
                dep.uid.clone(),
            );
        }
    }
    let (api_version, kind, name, uid) = target;
    let Some(ar) = scalable(&api_version, &kind) else {
        return Ok(None);
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let scale = match api.get_scale(&name).await {
        Ok(s) => s,
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if scale.metadata.uid.as_deref() != Some(uid.as_str()) {
        return Ok(None);
    }
    let replicas = scale.spec.and_then(|s| s.replicas).unwrap_or(0);
    Ok(Some((uid, replicas)))
}

/// `buildDisruptedPodMap`: the recorded disruptions still pending (pod present, not yet
/// terminating, recorded less than [`DELETION_TIMEOUT`] ago) and when the oldest expires.
fn disrupted_pods(
    pods: &[Arc<Pod>],
    recorded: Option<&BTreeMap<String, Time>>,
    now: jiff::Timestamp,
) -> (BTreeMap<String, Time>, Option<jiff::Timestamp>) {
    let mut pending = BTreeMap::new();
    let mut recheck: Option<jiff::Timestamp> = None;
    let Some(recorded) = recorded else {
        return (pending, None);
    };
    for pod in pods {
        if util::is_deleting(pod.as_ref()) {
            continue;
        }
        let Some(at) = recorded.get(&pod.name_any()) else {
            continue;
        };
        let expires = at.0.as_second() + DELETION_TIMEOUT.as_secs() as i64;
        if expires < now.as_second() {
            continue;
        }
        let expires = jiff::Timestamp::from_second(expires).unwrap_or(now);
        if recheck.is_none_or(|r| expires < r) {
            recheck = Some(expires);
        }
        pending.insert(pod.name_any(), at.clone());
    }
    (pending, recheck)
}

/// The recorded disruptions whose pod outlived [`DELETION_TIMEOUT`].
fn expired_disruptions(
    pods: &[Arc<Pod>],
    recorded: Option<&BTreeMap<String, Time>>,
    now: jiff::Timestamp,
) -> Vec<String> {
    let Some(recorded) = recorded else {
        return Vec::new();
    };
    pods.iter()
        .filter(|p| !util::is_deleting(p.as_ref()))
        .filter_map(|p| {
            let at = recorded.get(&p.name_any())?;
            (at.0.as_second() + (DELETION_TIMEOUT.as_secs() as i64) < now.as_second())
                .then(|| p.name_any())
        })
        .collect()
}

/// `countHealthyPods`: ready pods that are neither terminating nor about to be evicted.
fn count_healthy(pods: &[Arc<Pod>], disrupted: &BTreeMap<String, Time>) -> i32 {
    pods.iter()
        .filter(|p| !util::is_deleting(p.as_ref()))
        .filter(|p| !disrupted.contains_key(&p.name_any()))
        .filter(|p| util::is_pod_ready(p))
        .count() as i32
}

/// The selector as the event message prints it (the generated `String()` of a
/// `*metav1.LabelSelector`).
fn go_selector(sel: Option<&LabelSelector>) -> String {
    let Some(sel) = sel else {
        return "nil".into();
    };
    let labels: String = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}: {v},"))
        .collect();
    let exprs: String = sel
        .match_expressions
        .iter()
        .flatten()
        .map(|e| {
            format!(
                "LabelSelectorRequirement{{Key:{},Operator:{},Values:[{}],}},",
                e.key,
                e.operator,
                e.values.as_deref().unwrap_or_default().join(" ")
            )
        })
        .collect();
    format!(
        "&LabelSelector{{MatchLabels:map[string]string{{{labels}}},MatchExpressions:[]LabelSelectorRequirement{{{exprs}}},}}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(name: &str, ready: bool, deleting: bool) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                deletion_timestamp: deleting.then(util::now),
                ..Default::default()
            },
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn percentages_round_up() {
        let v = |s: &str| IntOrString::String(s.into());
        assert_eq!(scaled_value(&v("50%"), 3, true).unwrap(), 2);
        assert_eq!(scaled_value(&v("100%"), 3, true).unwrap(), 3);
        assert_eq!(scaled_value(&v("0%"), 3, true).unwrap(), 0);
        assert_eq!(scaled_value(&IntOrString::Int(2), 3, true).unwrap(), 2);
        assert!(scaled_value(&v("x"), 3, true).is_err());
    }

    #[test]
    fn healthy_pods_exclude_unready_terminating_and_disrupted() {
        let now = jiff::Timestamp::now();
        let pods = vec![
            pod("a", true, false),
            pod("b", true, false),
            pod("c", false, false),
            pod("d", true, true),
        ];
        let mut recorded = BTreeMap::new();
        recorded.insert("b".to_string(), Time(now));
        recorded.insert("gone".to_string(), Time(now));
        let (pending, recheck) = disrupted_pods(&pods, Some(&recorded), now);
        assert_eq!(pending.keys().collect::<Vec<_>>(), ["b"]);
        assert!(recheck.is_some());
        assert_eq!(count_healthy(&pods, &pending), 1);
    }

    #[test]
    fn stale_disruptions_expire() {
        let now = jiff::Timestamp::now();
        let long_ago = jiff::Timestamp::from_second(now.as_second() - 300).unwrap();
        let pods = vec![pod("a", true, false)];
        let mut recorded = BTreeMap::new();
        recorded.insert("a".to_string(), Time(long_ago));
        let (pending, recheck) = disrupted_pods(&pods, Some(&recorded), now);
        assert!(pending.is_empty());
        assert!(recheck.is_none());
        assert_eq!(expired_disruptions(&pods, Some(&recorded), now), ["a"]);
    }

    #[test]
    fn status_allows_the_surplus_and_sets_the_condition() {
        let now = jiff::Timestamp::now();
        let counts = Counts {
            expected: 3,
            desired: 2,
            unmanaged: 0,
        };
        let s = next_status(&Default::default(), 3, counts, BTreeMap::new(), 1, now);
        assert_eq!(s.disruptions_allowed, 1);
        assert_eq!(s.observed_generation, Some(1));
        let c = &s.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "SufficientPods")
        );
        // Unchanged inputs: the same status, no write.
        assert_eq!(next_status(&s, 3, counts, BTreeMap::new(), 1, now), s);
        let s2 = next_status(&s, 2, counts, BTreeMap::new(), 1, now);
        assert_eq!(s2.disruptions_allowed, 0);
        let c = &s2.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "InsufficientPods")
        );
        // No expected pods: no disruptions.
        let none = Counts::default();
        assert_eq!(
            next_status(&s, 5, none, BTreeMap::new(), 1, now).disruptions_allowed,
            0
        );
    }

    #[test]
    fn selector_in_events() {
        let sel = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: None,
        };
        assert_eq!(
            go_selector(Some(&sel)),
            "&LabelSelector{MatchLabels:map[string]string{app: web,},MatchExpressions:[]LabelSelectorRequirement{},}"
        );
    }
}
