//! StatefulSet controller: pods with stable identities `<set>-<ordinal>`, created and removed
//! in ordinal order (`OrderedReady`) or all at once (`Parallel`), rolled highest ordinal first
//! (`RollingUpdate` with `partition`) or left for the user to delete (`OnDelete`), with the
//! template history kept in ControllerRevisions as `kubectl rollout history|status` expect.
//!
//! Each sync lists the set's pods from the API (pod names are fixed, so a lagging cache could
//! at worst make a create fail with 409, never duplicate a pod) and acts as Kubernetes'
//! `updateStatefulSet` does: replace finished pods, create missing ones, delete condemned ones
//! (ordinals at or beyond `replicas`), then roll outdated ones; in `OrderedReady` mode every
//! step waits until the pods before it are Running and Ready.
//!
//! Claims: before a pod is created, each `volumeClaimTemplates` entry gets its claim
//! `<template>-<set>-<ordinal>` (created once, reused by every later pod of that ordinal), and
//! the pod's volume of that name references it. `persistentVolumeClaimRetentionPolicy` decides
//! owner references as Kubernetes does: `whenDeleted: Delete` makes the set an owner of its
//! claims (the garbage collector removes them with the set), `whenScaled: Delete` makes a
//! condemned pod the owner of its claims when scale-down removes it; Retain (the default for
//! both) leaves claims without owners.
//! Not done: adopting orphan pods that match the selector, and `maxUnavailable` (alpha).
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::Error;
use crate::events::{EventType, Recorder};
use crate::history::{self, REVISION_HASH, revision_hash};
use crate::util;

const COMPONENT: &str = "statefulset-controller";
/// Label carrying the pod's own name, so a Service can select a single replica.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Label carrying the pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

type Ctx = util::Context;

/// Runs the StatefulSet controller until its watch streams end.
pub async fn run(client: Client, recorder: Recorder) -> Result<(), Error> {
    util::run_owning::<StatefulSet, Pod, _>(
        client,
        recorder,
        reconcile,
        "statefulset",
        Duration::from_secs(2),
    )
    .await
}

/// The ordinal of `pod_name` if it is a pod name of the set `set_name` (`<set>-<ordinal>`,
/// the ordinal in canonical decimal form).
pub fn parse_ordinal(set_name: &str, pod_name: &str) -> Option<i32> {
    let digits = pod_name.strip_prefix(set_name)?.strip_prefix('-')?;
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    digits.parse().ok()
}

/// What a sync needs to know about one existing pod of the set.
#[derive(Clone, Debug)]
pub struct PodView {
    /// The pod's ordinal.
    pub ordinal: i32,
    /// Its `controller-revision-hash`.
    pub revision: String,
    /// It has a deletion timestamp.
    pub terminating: bool,
    /// Its phase is Failed or Succeeded: it must be replaced.
    pub finished: bool,
    /// Running, Ready and available for `minReadySeconds`.
    pub healthy: bool,
}

/// The shape of the set that the ordering decisions depend on.
#[derive(Clone, Debug)]
pub struct Shape {
    /// First ordinal (`spec.ordinals.start`).
    pub start: i32,
    /// `spec.replicas`.
    pub replicas: i32,
    /// `podManagementPolicy: Parallel`.
    pub parallel: bool,
    /// `updateStrategy: RollingUpdate` (otherwise OnDelete).
    pub rolling: bool,
    /// Ordinals below this are not rolled.
    pub partition: i32,
    /// Revision hash of the current template.
    pub update_revision: String,
}

/// One write a sync makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Create the pod with this ordinal.
    Create(i32),
    /// Delete the pod with this ordinal.
    Delete(i32),
}

/// The writes of one sync, in order, as Kubernetes' `updateStatefulSet` decides them. With
/// `OrderedReady` a sync makes at most one write and none while an earlier pod is unhealthy;
/// rolling updates always go one pod at a time, highest ordinal first.
pub fn plan(shape: &Shape, pods: &[PodView]) -> Vec<Step> {
    let monotonic = !shape.parallel;
    let end = shape.start + shape.replicas.max(0);
    let by_ordinal: BTreeMap<i32, &PodView> = pods.iter().map(|p| (p.ordinal, p)).collect();
    let mut condemned: Vec<&PodView> = pods
        .iter()
        .filter(|p| p.ordinal < shape.start || p.ordinal >= end)
        .collect();
    condemned.sort_by_key(|p| std::cmp::Reverse(p.ordinal));
    // The first unhealthy pod: replicas in ascending order, then condemned in descending order.
    let first_unhealthy = (shape.start..end)
        .filter_map(|o| by_ordinal.get(&o).copied())
        .chain(condemned.iter().copied())
        .find(|p| !p.healthy)
        .map(|p| p.ordinal);
    let mut steps = Vec::new();
    for ordinal in shape.start..end {
        match by_ordinal.get(&ordinal) {
            None => {
                steps.push(Step::Create(ordinal));
                if monotonic {
                    return steps;
                }
            }
            Some(p) if p.finished && !p.terminating => {
                // Replaced once the deletion is observed.
                steps.push(Step::Delete(ordinal));
                if monotonic {
                    return steps;
                }
            }
            Some(p) if monotonic && (p.terminating || !p.healthy) => return steps,
            Some(_) => {}
        }
    }
    for p in condemned {
        if p.terminating {
            if monotonic {
                return steps;
            }
            continue;
        }
        if monotonic && !p.healthy && first_unhealthy != Some(p.ordinal) {
            return steps;
        }
        steps.push(Step::Delete(p.ordinal));
        if monotonic {
            return steps;
        }
    }
    if !shape.rolling {
        return steps;
    }
    let lowest = shape.partition.max(shape.start);
    for ordinal in (lowest..end).rev() {
        let Some(p) = by_ordinal.get(&ordinal) else {
            // Being created (a Create above); wait for it.
            return steps;
        };
        if p.revision != shape.update_revision && !p.terminating {
            steps.push(Step::Delete(ordinal));
            return steps;
        }
        if !p.healthy || p.terminating {
            return steps;
        }
    }
    steps
}

/// The pod `<set>-<ordinal>` from `template` at revision `hash`, as Kubernetes'
/// `newVersionedStatefulSetPod` builds it.
pub fn new_pod(set: &StatefulSet, template: &PodTemplateSpec, hash: &str, ordinal: i32) -> Pod {
    let set_name = set.name_any();
    let name = format!("{set_name}-{ordinal}");
    let tmeta = template.metadata.clone().unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(REVISION_HASH.into(), hash.into());
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.hostname = Some(name.clone());
    let service = set
        .spec
        .as_ref()
        .and_then(|s| s.service_name.clone())
        .filter(|s| !s.is_empty());
    if service.is_some() {
        spec.subdomain = service;
    }
    // Kubernetes' volume per claim template, referencing the ordinal's claim.
    let claims = set
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.clone())
        .unwrap_or_default();
    if !claims.is_empty() {
        let volumes = spec.volumes.get_or_insert_with(Vec::new);
        for c in claims {
            let claim = c.metadata.name.unwrap_or_default();
            volumes.retain(|v| v.name != claim);
            volumes.push(Volume {
                name: claim.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: format!("{claim}-{name}"),
                    read_only: None,
                }),
                ..Default::default()
            });
        }
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.namespace(),
            labels: Some(labels),
            annotations: tmeta.annotations,
            owner_references: Some(vec![util::owner_ref(set)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// `persistentVolumeClaimRetentionPolicy` as (whenDeleted, whenScaled), Retain by default.
pub fn retention(set: &StatefulSet) -> (String, String) {
    let p = set
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.clone())
        .unwrap_or_default();
    (
        p.when_deleted.unwrap_or_else(|| "Retain".into()),
        p.when_scaled.unwrap_or_else(|| "Retain".into()),
    )
}

/// The claims of ordinal `ordinal`, from the set's `volumeClaimTemplates`, as Kubernetes'
/// `getPersistentVolumeClaims` shapes them: name `<template>-<set>-<ordinal>`, the template's
/// labels plus the set's `matchLabels`, and the set as owner when `whenDeleted: Delete`.
pub fn claims_for(set: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let spec = set.spec.clone().unwrap_or_default();
    let pod_name = format!("{}-{ordinal}", set.name_any());
    let owned = retention(set).0 == "Delete";
    spec.volume_claim_templates
        .unwrap_or_default()
        .into_iter()
        .map(|mut c| {
            let template = c.metadata.name.clone().unwrap_or_default();
            let mut labels = c.metadata.labels.clone().unwrap_or_default();
            labels.extend(spec.selector.match_labels.clone().unwrap_or_default());
            c.metadata = ObjectMeta {
                name: Some(format!("{template}-{pod_name}")),
                namespace: set.namespace(),
                labels: Some(labels),
                annotations: c.metadata.annotations.clone(),
                owner_references: owned.then(|| vec![util::owner_ref(set)]),
                ..Default::default()
            };
            c.status = None;
            c
        })
        .collect()
}

/// Creates the ordinal's missing claims before its pod (Kubernetes' `createPersistentVolumeClaims`).
async fn create_claims(ctx: &Ctx, set: &StatefulSet, ordinal: i32) -> Result<(), Error> {
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    let pod_name = format!("{}-{ordinal}", set.name_any());
    for claim in claims_for(set, ordinal) {
        let claim_name = claim.name_any();
        if api.get_opt(&claim_name).await?.is_some() {
            continue;
        }
        match api.create(&PostParams::default(), &claim).await {
            Ok(_) => ctx.recorder.record(
                set,
                COMPONENT,
                EventType::Normal,
                "SuccessfulCreate",
                format!(
                    "create Claim {claim_name} Pod {pod_name} in StatefulSet {} success",
                    set.name_any()
                ),
            ),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                ctx.recorder.record(
                    set,
                    COMPONENT,
                    EventType::Warning,
                    "FailedCreate",
                    format!(
                        "create Claim {claim_name} for Pod {pod_name} in StatefulSet {} failed error: {e}",
                        set.name_any()
                    ),
                );
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// `whenDeleted: Delete` set after the claims were made: the set becomes their owner too (as
/// Kubernetes' `updateClaimOwnerRefForSetAndPod` on every sync).
async fn own_claims_by_set(ctx: &Ctx, set: &StatefulSet, ordinal: i32) -> Result<(), Error> {
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    let uid = set.uid().unwrap_or_default();
    for claim in claims_for(set, ordinal) {
        let Some(current) = api.get_opt(&claim.name_any()).await? else {
            continue;
        };
        let mut refs = current
            .metadata
            .owner_references
            .clone()
            .unwrap_or_default();
        if refs.iter().any(|r| r.uid == uid) {
            continue;
        }
        refs.push(util::owner_ref(set));
        api.patch(
            &claim.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"ownerReferences": refs}})),
        )
        .await?;
    }
    Ok(())
}

/// Scale-down with `whenScaled: Delete`: the condemned pod becomes an owner of its claims, so
/// the garbage collector removes them once the pod is gone.
async fn own_claims_by_pod(
    ctx: &Ctx,
    set: &StatefulSet,
    ordinal: i32,
    pod: &Pod,
) -> Result<(), Error> {
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    let pod_ref = json!({
        "apiVersion": "v1", "kind": "Pod", "name": pod.name_any(),
        "uid": pod.metadata.uid.clone().unwrap_or_default(),
    });
    for claim in claims_for(set, ordinal) {
        let Some(current) = api.get_opt(&claim.name_any()).await? else {
            continue;
        };
        // The condemned pod, not the set, owns them now (Kubernetes drops the set's reference).
        let set_uid = set.uid().unwrap_or_default();
        let mut refs: Vec<serde_json::Value> = current
            .metadata
            .owner_references
            .iter()
            .flatten()
            .filter(|r| r.uid != set_uid)
            .filter_map(|r| serde_json::to_value(r).ok())
            .collect();
        let had_set = refs.len() != current.metadata.owner_references.iter().flatten().count();
        if !had_set && refs.iter().any(|r| r["uid"] == pod_ref["uid"]) {
            continue;
        }
        if !refs.iter().any(|r| r["uid"] == pod_ref["uid"]) {
            refs.push(pod_ref.clone());
        }
        api.patch(
            &claim.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"ownerReferences": refs}})),
        )
        .await?;
    }
    Ok(())
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if util::is_deleting(set.as_ref()) {
        return Ok(Action::await_change());
    }
    let ns = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let uid = set.uid().unwrap_or_default();
    let spec = set
        .spec
        .clone()
        .ok_or_else(|| Error::Invalid("statefulset without spec".into()))?;
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = jiff::Timestamp::now();

    let pods: BTreeMap<i32, Pod> = pods_api
        .list(&ListParams::default().labels(&util::selector_query(&spec.selector)))
        .await?
        .items
        .into_iter()
        .filter(|p| util::controller_ref(p).is_some_and(|r| r.uid == uid))
        .filter_map(|p| parse_ordinal(&name, &p.name_any()).map(|o| (o, p)))
        .collect();
    let old_status = set.status.clone().unwrap_or_default();
    let mut keep: BTreeSet<String> = pods
        .values()
        .filter_map(|p| p.labels().get(REVISION_HASH).cloned())
        .collect();
    keep.extend(old_status.current_revision.clone());
    let (history, update) = history::sync(&ctx.client, set.as_ref(), &keep).await?;
    let current = old_status
        .current_revision
        .clone()
        .filter(|c| history.iter().any(|r| &revision_hash(&name, r) == c))
        .unwrap_or_else(|| update.clone());
    let current_template = history
        .iter()
        .find(|r| revision_hash(&name, r) == current)
        .and_then(history::revision_template);

    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let rolling = strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate";
    let shape = Shape {
        start: spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0),
        replicas: spec.replicas.unwrap_or(1),
        parallel: spec.pod_management_policy.as_deref() == Some("Parallel"),
        rolling,
        partition: strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.partition)
            .unwrap_or(0),
        update_revision: update.clone(),
    };
    let views: Vec<PodView> = pods
        .iter()
        .map(|(o, p)| PodView {
            ordinal: *o,
            revision: p.labels().get(REVISION_HASH).cloned().unwrap_or_default(),
            terminating: util::is_deleting(p),
            finished: matches!(phase(p), Some("Failed" | "Succeeded")),
            healthy: phase(p) == Some("Running") && util::is_pod_available(p, min_ready, now),
        })
        .collect();

    for step in plan(&shape, &views) {
        match step {
            Step::Create(ordinal) => {
                // Ordinals below the partition stay at the current revision.
                let (template, hash) = match &current_template {
                    Some(t) if rolling && ordinal < shape.partition => (t, &current),
                    _ => (&spec.template, &update),
                };
                let pod = new_pod(set.as_ref(), template, hash, ordinal);
                let pod_name = pod.name_any();
                create_claims(&ctx, set.as_ref(), ordinal).await?;
                match pods_api.create(&PostParams::default(), &pod).await {
                    Ok(_) => ctx.recorder.record(
                        set.as_ref(),
                        COMPONENT,
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("create Pod {pod_name} in StatefulSet {name} successful"),
                    ),
                    // The old pod of that name is still going away; its deletion requeues.
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => {
                        ctx.recorder.record(
                            set.as_ref(),
                            COMPONENT,
                            EventType::Warning,
                            "FailedCreate",
                            format!(
                                "create Pod {pod_name} in StatefulSet {name} failed error: {e}"
                            ),
                        );
                        return Err(e.into());
                    }
                }
            }
            Step::Delete(ordinal) => {
                let pod_name = format!("{name}-{ordinal}");
                let condemned = ordinal < shape.start || ordinal >= shape.start + shape.replicas;
                if condemned
                    && retention(set.as_ref()).1 == "Delete"
                    && let Some(p) = pods.get(&ordinal)
                {
                    own_claims_by_pod(&ctx, set.as_ref(), ordinal, p).await?;
                }
                match pods_api
                    .delete(&pod_name, &DeleteParams::background())
                    .await
                {
                    Ok(_) => ctx.recorder.record(
                        set.as_ref(),
                        COMPONENT,
                        EventType::Normal,
                        "SuccessfulDelete",
                        format!("delete Pod {pod_name} in StatefulSet {name} successful"),
                    ),
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }

    if retention(set.as_ref()).0 == "Delete" {
        let end = shape.start + shape.replicas;
        for ordinal in pods.keys().filter(|o| (shape.start..end).contains(*o)) {
            own_claims_by_set(&ctx, set.as_ref(), *ordinal).await?;
        }
    }

    let status = compute_status(set.as_ref(), &pods, &current, &update, min_ready, now);
    if Some(&status) != set.status.as_ref() {
        util::patch_status(&ctx.client, set.as_ref(), &status).await?;
    }
    Ok(Action::requeue(Duration::from_secs(if min_ready > 0 {
        1
    } else {
        300
    })))
}

/// The set's status from its pods (as listed at the start of the sync; the writes of the sync
/// requeue it through the pod watch). A finished rolling update makes the update revision
/// current, as Kubernetes' `completeRollingUpdate`.
fn compute_status(
    set: &StatefulSet,
    pods: &BTreeMap<i32, Pod>,
    current: &str,
    update: &str,
    min_ready: i32,
    now: jiff::Timestamp,
) -> StatefulSetStatus {
    let mut s = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        collision_count: set.status.as_ref().and_then(|s| s.collision_count),
        current_revision: Some(current.to_string()),
        update_revision: Some(update.to_string()),
        ..Default::default()
    };
    let (mut ready, mut available, mut cur, mut upd) = (0, 0, 0, 0);
    for p in pods.values().filter(|p| !util::is_deleting(*p)) {
        s.replicas += 1;
        if phase(p) == Some("Running") && util::is_pod_ready(p) {
            ready += 1;
            if util::is_pod_available(p, min_ready, now) {
                available += 1;
            }
        }
        let rev = p.labels().get(REVISION_HASH).map(String::as_str);
        if rev == Some(current) {
            cur += 1;
        }
        if rev == Some(update) {
            upd += 1;
        }
    }
    let wanted = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    s.ready_replicas = Some(ready);
    s.available_replicas = Some(available);
    s.current_replicas = Some(cur);
    s.updated_replicas = Some(upd);
    if current != update && upd == s.replicas && ready == s.replicas && s.replicas == wanted {
        s.current_revision = Some(update.to_string());
        s.current_replicas = Some(upd);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(replicas: i32, parallel: bool) -> Shape {
        Shape {
            start: 0,
            replicas,
            parallel,
            rolling: true,
            partition: 0,
            update_revision: "new".into(),
        }
    }

    fn pod(ordinal: i32, revision: &str, healthy: bool) -> PodView {
        PodView {
            ordinal,
            revision: revision.into(),
            terminating: false,
            finished: false,
            healthy,
        }
    }

    #[test]
    fn ordinals_parse_only_from_canonical_names_of_the_set() {
        assert_eq!(parse_ordinal("web", "web-0"), Some(0));
        assert_eq!(parse_ordinal("web", "web-12"), Some(12));
        assert_eq!(parse_ordinal("web", "web-012"), None);
        assert_eq!(parse_ordinal("web", "web-"), None);
        assert_eq!(parse_ordinal("web", "web-a"), None);
        assert_eq!(parse_ordinal("web", "web-+1"), None);
        assert_eq!(parse_ordinal("web", "webx-1"), None);
        assert_eq!(parse_ordinal("web", "web-db-1"), None);
        assert_eq!(parse_ordinal("web-db", "web-db-1"), Some(1));
        assert_eq!(parse_ordinal("web", "web-99999999999"), None);
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_after_the_previous_is_healthy() {
        let s = shape(3, false);
        assert_eq!(plan(&s, &[]), vec![Step::Create(0)]);
        assert_eq!(plan(&s, &[pod(0, "new", false)]), vec![]);
        assert_eq!(plan(&s, &[pod(0, "new", true)]), vec![Step::Create(1)]);
        // A missing lower ordinal is recreated first.
        assert_eq!(
            plan(&s, &[pod(1, "new", true), pod(2, "new", true)]),
            vec![Step::Create(0)]
        );
        let mut failed = pod(0, "new", false);
        failed.finished = true;
        assert_eq!(plan(&s, &[failed]), vec![Step::Delete(0)]);
    }

    #[test]
    fn parallel_creates_and_deletes_everything_at_once() {
        assert_eq!(
            plan(&shape(3, true), &[]),
            vec![Step::Create(0), Step::Create(1), Step::Create(2)]
        );
        let pods: Vec<PodView> = (0..4).map(|o| pod(o, "new", false)).collect();
        assert_eq!(
            plan(&shape(1, true), &pods),
            vec![Step::Delete(3), Step::Delete(2), Step::Delete(1)]
        );
    }

    #[test]
    fn ordered_scale_down_goes_from_the_highest_ordinal_one_at_a_time() {
        let s = shape(1, false);
        let mut pods: Vec<PodView> = (0..3).map(|o| pod(o, "new", true)).collect();
        assert_eq!(plan(&s, &pods), vec![Step::Delete(2)]);
        pods[2].terminating = true;
        assert_eq!(plan(&s, &pods), vec![], "waits for web-2 to go");
        pods.pop();
        assert_eq!(plan(&s, &pods), vec![Step::Delete(1)]);
        // An unhealthy condemned pod is deleted only if it is the first unhealthy one.
        let pods = vec![
            pod(0, "new", true),
            pod(1, "new", true),
            pod(2, "new", false),
        ];
        assert_eq!(plan(&s, &pods), vec![Step::Delete(2)]);
        let pods = vec![
            pod(0, "new", true),
            pod(1, "new", false),
            pod(2, "new", true),
        ];
        assert_eq!(plan(&s, &pods), vec![Step::Delete(2)]);
        let pods = vec![pod(0, "new", false), pod(1, "new", true)];
        assert_eq!(plan(&s, &pods), vec![], "waits for web-0 to be healthy");
    }

    #[test]
    fn rolling_update_goes_highest_first_waits_for_health_and_honours_partition() {
        let s = shape(3, false);
        let mut pods: Vec<PodView> = (0..3).map(|o| pod(o, "old", true)).collect();
        assert_eq!(plan(&s, &pods), vec![Step::Delete(2)]);
        pods[2] = pod(2, "new", false);
        assert_eq!(plan(&s, &pods), vec![], "waits for web-2 to be Ready");
        pods[2].healthy = true;
        assert_eq!(plan(&s, &pods), vec![Step::Delete(1)]);
        pods[1] = pod(1, "new", true);
        assert_eq!(plan(&s, &pods), vec![Step::Delete(0)]);
        pods[0] = pod(0, "new", true);
        assert_eq!(plan(&s, &pods), vec![]);

        let mut partitioned = shape(3, true);
        partitioned.partition = 2;
        let pods: Vec<PodView> = (0..3).map(|o| pod(o, "old", true)).collect();
        assert_eq!(plan(&partitioned, &pods), vec![Step::Delete(2)]);
        let pods = vec![
            pod(0, "old", true),
            pod(1, "old", true),
            pod(2, "new", true),
        ];
        assert_eq!(plan(&partitioned, &pods), vec![]);

        let mut on_delete = shape(3, false);
        on_delete.rolling = false;
        let pods: Vec<PodView> = (0..3).map(|o| pod(o, "old", true)).collect();
        assert_eq!(plan(&on_delete, &pods), vec![]);
    }

    #[test]
    fn pods_carry_identity_labels_hostname_and_subdomain() {
        let set: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
            "spec": {
                "serviceName": "nginx",
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "a", "image": "busybox"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}}],
            },
        }))
        .unwrap_or_default();
        let spec = set.spec.clone().unwrap_or_default();
        let p = new_pod(&set, &spec.template, "abc", 2);
        assert_eq!(p.name_any(), "web-2");
        let labels = p.labels();
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(
            labels.get(POD_NAME_LABEL).map(String::as_str),
            Some("web-2")
        );
        assert_eq!(labels.get(POD_INDEX_LABEL).map(String::as_str), Some("2"));
        assert_eq!(labels.get(REVISION_HASH).map(String::as_str), Some("abc"));
        let ps = p.spec.unwrap_or_default();
        assert_eq!(ps.hostname.as_deref(), Some("web-2"));
        assert_eq!(ps.subdomain.as_deref(), Some("nginx"));
        let claim = ps
            .volumes
            .unwrap_or_default()
            .into_iter()
            .find(|v| v.name == "data")
            .and_then(|v| v.persistent_volume_claim)
            .map(|c| c.claim_name);
        assert_eq!(claim.as_deref(), Some("data-web-2"));
        assert_eq!(
            p.metadata
                .owner_references
                .unwrap_or_default()
                .first()
                .map(|o| (o.kind.clone(), o.controller)),
            Some(("StatefulSet".to_string(), Some(true)))
        );
    }

    #[test]
    fn claims_are_named_per_ordinal_and_owned_only_with_retention_delete() {
        let mut set: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "ns", "uid": "u1"},
            "spec": {
                "serviceName": "db",
                "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}},
                    "spec": {"containers": [{"name": "a", "image": "busybox"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data", "labels": {"tier": "x"}},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
            },
        }))
        .unwrap_or_default();
        let claims = claims_for(&set, 1);
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].name_any(), "data-db-1");
        assert_eq!(claims[0].namespace().as_deref(), Some("ns"));
        let labels = claims[0].labels();
        assert_eq!(labels.get("app").map(String::as_str), Some("db"));
        assert_eq!(labels.get("tier").map(String::as_str), Some("x"));
        assert!(claims[0].metadata.owner_references.is_none());
        assert_eq!(
            retention(&set),
            ("Retain".to_string(), "Retain".to_string())
        );
        if let Some(s) = set.spec.as_mut() {
            s.persistent_volume_claim_retention_policy =
                serde_json::from_value(json!({"whenDeleted": "Delete", "whenScaled": "Retain"}))
                    .ok();
        }
        let owners = claims_for(&set, 0)[0]
            .metadata
            .owner_references
            .clone()
            .unwrap_or_default();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "StatefulSet");
    }
}
