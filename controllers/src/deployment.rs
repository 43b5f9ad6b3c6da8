//! Deployment controller: owns one ReplicaSet per pod template (named with its
//! `pod-template-hash`), rolls between them (RollingUpdate or Recreate), keeps revision
//! history and fills `status` the way kube-controller-manager does, so `kubectl rollout`
//! works unchanged.
//!
//! As kube-controller-manager's, it reads ReplicaSets from an informer cache (a reflector store
//! fed by one watch), never by listing the API on a sync. Writes based on a stale cache carry
//! the cached `resourceVersion`, so they fail with a conflict and the sync is retried on fresher
//! data; a new ReplicaSet the cache has not caught up with is found by its name on creation.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::Error;
use crate::events::{EventType, Recorder};
use crate::util;

const COMPONENT: &str = "deployment-controller";
/// Label (and selector key) that tells a Deployment's ReplicaSets apart.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Revision of a ReplicaSet / Deployment, as `kubectl rollout history` reads it.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Annotations of the Deployment that are not copied onto its ReplicaSets.
const SKIP_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

struct Ctx {
    client: Client,
    recorder: Recorder,
    replicasets: Store<ReplicaSet>,
    /// The ReplicaSet store holds its first list (see [`util::Ready`]).
    replicasets_ready: util::Ready,
}

/// Runs the Deployment controller until its watch streams end.
pub async fn run(client: Client, recorder: Recorder) -> Result<(), Error> {
    let wc = watcher::Config::default();
    let (d_store, d_writer) = reflector::store::<Deployment>();
    let (rs_store, rs_writer) = reflector::store::<ReplicaSet>();
    let deployments = reflector::reflector(
        d_writer,
        watcher(Api::<Deployment>::all(client.clone()), wc.clone()),
    )
    .default_backoff()
    .applied_objects();
    let (rs_ready_setter, rs_ready) = util::readiness();
    let replicasets = reflector::reflector(
        rs_writer,
        watcher(Api::<ReplicaSet>::all(client.clone()), wc),
    )
    .default_backoff()
    .inspect_err(|e| tracing::debug!(error = %e, "replicaset watch"))
    .inspect_ok(move |ev| rs_ready_setter.observe(ev))
    .touched_objects();
    let ctx = Arc::new(Ctx {
        client,
        recorder,
        replicasets: rs_store,
        replicasets_ready: rs_ready,
    });
    let store = d_store.clone();
    Controller::for_stream(deployments, d_store)
        .watches_stream(replicasets, move |rs| rs_to_deployments(&store, &rs))
        .run(reconcile, error_policy, ctx)
        .for_each(|r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, "deployment reconcile");
            }
            futures::future::ready(())
        })
        .await;
    Err(Error::Stopped("deployment"))
}

/// The Deployments a ReplicaSet event concerns: its controller, or, for an orphan, every
/// Deployment in its namespace whose selector matches (one of them may adopt it).
fn rs_to_deployments(store: &Store<Deployment>, rs: &ReplicaSet) -> Vec<ObjectRef<Deployment>> {
    util::controllers_of(store, rs, |d| {
        d.spec
            .as_ref()
            .is_some_and(|s| util::selector_matches(&s.selector, rs.labels()))
    })
}

fn error_policy(d: Arc<Deployment>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(deployment = %d.name_any(), error = %err, "sync failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

/// Resolves `maxSurge` / `maxUnavailable` against `replicas`: percentages round up for surge,
/// down for unavailable; both zero means one may be unavailable (Kubernetes' `ResolveFenceposts`).
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    replicas: i32,
) -> (i32, i32) {
    let default = IntOrString::String("25%".into());
    let scaled = |v: &IntOrString, round_up: bool| -> i32 {
        match v {
            IntOrString::Int(i) => *i,
            IntOrString::String(s) => {
                let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
                let n = pct * i64::from(replicas);
                (if round_up { (n + 99) / 100 } else { n / 100 }) as i32
            }
        }
    };
    let surge = scaled(max_surge.unwrap_or(&default), true);
    let mut unavailable = scaled(max_unavailable.unwrap_or(&default), false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn is_rolling(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        != "Recreate"
}

/// (maxSurge, maxUnavailable) of the deployment; both 0 for Recreate.
fn fenceposts(d: &Deployment) -> (i32, i32) {
    if !is_rolling(d) {
        return (0, 0);
    }
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let r = replicas(d);
    let (surge, unavailable) = resolve_fenceposts(
        ru.and_then(|r| r.max_surge.as_ref()),
        ru.and_then(|r| r.max_unavailable.as_ref()),
        r,
    );
    (surge, if r == 0 { 0 } else { unavailable.min(r) })
}

fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn rs_status<T: Default>(
    rs: &ReplicaSet,
    f: impl Fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> Option<T>,
) -> T {
    rs.status.as_ref().and_then(f).unwrap_or_default()
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn created(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_nanosecond() as i64)
        .unwrap_or(0)
}

/// The template as JSON without its `pod-template-hash` label and with empty objects, empty
/// lists and nulls pruned, so that templates Kubernetes' semantic equality calls equal (say,
/// `resources: {}` against no `resources`) compare equal here too.
fn normalized(template: &PodTemplateSpec) -> serde_json::Value {
    let mut v = serde_json::to_value(template).unwrap_or_default();
    if let Some(labels) = v
        .pointer_mut("/metadata/labels")
        .and_then(serde_json::Value::as_object_mut)
    {
        labels.remove(POD_TEMPLATE_HASH);
    }
    util::pruned(v)
}

/// The pod-template-hash of a template: FNV-32a over its canonical JSON and the collision
/// count, encoded with Kubernetes' safe alphabet.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = normalized(template).to_string().into_bytes();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(c.to_string().as_bytes());
    }
    util::safe_encode(util::fnv32a(&bytes))
}

/// `NewRSNewReplicas` for RollingUpdate: how big the new ReplicaSet may grow now.
pub fn new_rs_replicas(desired: i32, max_surge: i32, current_total: i32, new_rs: i32) -> i32 {
    let max_total = desired + max_surge;
    if current_total >= max_total {
        return new_rs;
    }
    let scale_up = (max_total - current_total).min(desired - new_rs).max(0);
    new_rs + scale_up
}

/// How many old pods may be scaled down now (`reconcileOldReplicaSets`' budget).
pub fn max_scaled_down(
    desired: i32,
    max_unavailable: i32,
    all_pods: i32,
    new_rs_replicas: i32,
    new_rs_available: i32,
) -> i32 {
    let min_available = desired - max_unavailable;
    let new_unavailable = new_rs_replicas - new_rs_available;
    all_pods - min_available - new_unavailable
}

struct Sync<'a> {
    ctx: &'a Ctx,
    d: &'a Deployment,
    rs_api: Api<ReplicaSet>,
    /// The ReplicaSet whose template matches the Deployment's, if it exists.
    new_rs: Option<ReplicaSet>,
    /// Every other ReplicaSet the Deployment owns, oldest first.
    old: Vec<ReplicaSet>,
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    // Never act on a half-filled cache: a sync before the first list would see no ReplicaSets.
    if !ctx.replicasets_ready.wait().await {
        return Err(Error::Stopped("deployment replicaset informer"));
    }
    let d = d.as_ref();
    if util::is_deleting(d) {
        return Ok(Action::await_change());
    }
    let ns = d.namespace().unwrap_or_default();
    let spec = d
        .spec
        .as_ref()
        .ok_or_else(|| Error::Invalid("deployment without spec".into()))?;
    if spec.selector == LabelSelector::default() {
        ctx.recorder.record(
            d,
            COMPONENT,
            EventType::Warning,
            "SelectingAll",
            "This deployment is selecting all pods. A non-empty selector is required.".into(),
        );
        return Ok(Action::await_change());
    }
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = d.uid().unwrap_or_default();
    let mut owned = Vec::new();
    let cached = ctx
        .replicasets
        .state_filter(|rs| rs.metadata.namespace.as_deref() == Some(ns.as_str()));
    for rs in cached {
        let rs = ReplicaSet::clone(&rs);
        let matches = util::selector_matches(&spec.selector, rs.labels());
        match util::controller_ref(&rs) {
            Some(r) if r.uid == uid => {
                if matches {
                    owned.push(rs);
                } else {
                    util::release(&rs_api, &rs, &uid).await?;
                }
            }
            None if matches && !util::is_deleting(&rs) && !util::is_deleting(d) => {
                owned.extend(util::adopt(&rs_api, &rs, d).await?);
            }
            _ => {}
        }
    }
    owned.sort_by_key(|rs| (created(rs), rs.name_any()));
    let template = normalized(&spec.template);
    let new_idx = owned.iter().position(|rs| {
        rs.spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .map(normalized)
            .as_ref()
            == Some(&template)
    });
    let new_rs = new_idx.map(|i| owned.remove(i));
    let mut s = Sync {
        ctx: &ctx,
        d,
        rs_api,
        new_rs,
        old: owned,
    };

    s.check_paused_conditions().await?;
    if spec.paused == Some(true) || s.is_scaling_event() {
        s.sync_revision(false).await?;
        s.scale().await?;
        if spec.paused == Some(true) {
            s.cleanup().await?;
        }
        return s.sync_status().await;
    }
    if is_rolling(d) {
        s.rollout_rolling().await
    } else {
        s.rollout_recreate().await
    }
}

impl Sync<'_> {
    fn all(&self) -> impl Iterator<Item = &ReplicaSet> {
        self.new_rs.iter().chain(self.old.iter())
    }

    async fn check_paused_conditions(&mut self) -> Result<(), Error> {
        let paused = self.d.spec.as_ref().and_then(|s| s.paused) == Some(true);
        let cond = self
            .d
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Progressing"));
        let pause_cond = cond.is_some_and(|c| c.reason.as_deref() == Some("DeploymentPaused"));
        if cond.is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded")) {
            return Ok(());
        }
        let new = if paused && !pause_cond {
            Some(("DeploymentPaused", "Deployment is paused"))
        } else if !paused && pause_cond {
            Some(("DeploymentResumed", "Deployment is resumed"))
        } else {
            None
        };
        if let Some((reason, msg)) = new {
            let mut status = self.d.status.clone().unwrap_or_default();
            set_condition(
                &mut status,
                condition("Progressing", "Unknown", reason, msg),
            );
            let api: Api<Deployment> = Api::namespaced(
                self.ctx.client.clone(),
                &self.d.namespace().unwrap_or_default(),
            );
            api.patch_status(
                &self.d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": status.conditions}})),
            )
            .await?;
        }
        Ok(())
    }

    /// A scaling event: some active ReplicaSet was sized for a different replica count.
    fn is_scaling_event(&self) -> bool {
        let want = replicas(self.d).to_string();
        self.all().filter(|rs| rs_replicas(rs) > 0).any(|rs| {
            rs.annotations()
                .get(DESIRED_REPLICAS)
                .is_some_and(|v| *v != want)
        })
    }

    fn max_old_revision(&self) -> i64 {
        self.old.iter().map(revision).max().unwrap_or(0)
    }

    /// Keeps the revision annotations of the new ReplicaSet and the Deployment current, and
    /// creates the new ReplicaSet when asked and missing.
    async fn sync_revision(&mut self, create: bool) -> Result<(), Error> {
        let new_revision = self.max_old_revision() + 1;
        let d_ns = self.d.namespace().unwrap_or_default();
        let d_api: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), &d_ns);
        if let Some(rs) = &self.new_rs {
            let mut annotations = self.rs_annotations(rs);
            if revision(rs) < new_revision {
                annotations.insert(REVISION.into(), new_revision.to_string());
            }
            let min_ready = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
            let mut patch = json!({});
            if annotations != *rs.annotations() {
                patch["metadata"] = json!({ "annotations": annotations });
            }
            if rs.spec.as_ref().and_then(|s| s.min_ready_seconds) != min_ready {
                patch["spec"] = json!({ "minReadySeconds": min_ready });
            }
            if patch != json!({}) {
                patch["metadata"]["resourceVersion"] = json!(rs.resource_version());
                let updated = self
                    .rs_api
                    .patch(
                        &rs.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await?;
                self.new_rs = Some(updated);
            }
        } else if create {
            self.create_new_rs(new_revision).await?;
        }
        let rev = self.new_rs.as_ref().map(revision).unwrap_or(0);
        if rev > 0 && self.d.annotations().get(REVISION) != Some(&rev.to_string()) {
            d_api
                .patch(
                    &self.d.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"metadata": {"annotations": {REVISION: rev.to_string()}}}),
                    ),
                )
                .await?;
        }
        Ok(())
    }

    /// The Deployment's annotations as its ReplicaSets carry them (revision kept from `rs`).
    fn rs_annotations(&self, rs: &ReplicaSet) -> BTreeMap<String, String> {
        let mut a = rs.annotations().clone();
        for (k, v) in self.d.annotations() {
            if !SKIP_ANNOTATIONS.contains(&k.as_str()) {
                a.insert(k.clone(), v.clone());
            }
        }
        a
    }

    async fn create_new_rs(&mut self, new_revision: i64) -> Result<(), Error> {
        let d = self.d;
        let spec = d
            .spec
            .as_ref()
            .ok_or_else(|| Error::Invalid("deployment without spec".into()))?;
        let collision = d.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&spec.template, collision);
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let (surge, _) = fenceposts(d);
        let want = replicas(d);
        let size = if is_rolling(d) {
            let total: i32 = self.old.iter().map(rs_replicas).sum();
            new_rs_replicas(want, surge, total, 0)
        } else {
            want
        };
        let mut annotations: BTreeMap<String, String> = d
            .annotations()
            .iter()
            .filter(|(k, _)| !SKIP_ANNOTATIONS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        annotations.insert(REVISION.into(), new_revision.to_string());
        annotations.insert(DESIRED_REPLICAS.into(), want.to_string());
        annotations.insert(MAX_REPLICAS.into(), (want + surge).to_string());
        let mut labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let name = format!("{}-{hash}", d.name_any());
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: d.namespace(),
                labels: Some(labels),
                annotations: Some(annotations),
                owner_references: Some(vec![util::owner_ref(d)]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(size),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let d_api: Api<Deployment> =
            Api::namespaced(self.ctx.client.clone(), &d.namespace().unwrap_or_default());
        match self.rs_api.create(&PostParams::default(), &rs).await {
            Ok(created) => {
                if size > 0 {
                    self.ctx.recorder.record(
                        d,
                        COMPONENT,
                        EventType::Normal,
                        "ScalingReplicaSet",
                        format!("Scaled up replica set {name} from 0 to {size}"),
                    );
                }
                let mut status = d.status.clone().unwrap_or_default();
                set_condition(
                    &mut status,
                    condition(
                        "Progressing",
                        "True",
                        "NewReplicaSetCreated",
                        &format!("Created new replica set \"{name}\""),
                    ),
                );
                d_api
                    .patch_status(
                        &d.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"conditions": status.conditions}})),
                    )
                    .await?;
                self.new_rs = Some(created);
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                // A ReplicaSet of that name exists but does not match: a hash collision.
                let existing = self.rs_api.get(&name).await?;
                let same = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .map(normalized)
                    == Some(normalized(&spec.template));
                if same
                    && util::controller_ref(&existing)
                        .is_some_and(|r| Some(&r.uid) == d.uid().as_ref())
                {
                    self.new_rs = Some(existing);
                    return Ok(());
                }
                let count = collision.unwrap_or(0) + 1;
                d_api
                    .patch_status(
                        &d.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"collisionCount": count}})),
                    )
                    .await?;
                Err(Error::Invalid(format!(
                    "hash collision for replica set {name}; collisionCount now {count}"
                )))
            }
            Err(e) => {
                self.ctx.recorder.record(
                    d,
                    COMPONENT,
                    EventType::Warning,
                    "FailedCreate",
                    format!("Failed to create new replica set \"{name}\": {e}"),
                );
                Err(e.into())
            }
        }
    }

    /// Resizes one ReplicaSet, keeping its desired/max-replicas annotations current, and records
    /// the ScalingReplicaSet event. Returns whether its size changed.
    async fn scale_rs(&mut self, name: &str, to: i32) -> Result<bool, Error> {
        let Some(rs) = self.all().find(|rs| rs.name_any() == name).cloned() else {
            return Ok(false);
        };
        let (surge, _) = fenceposts(self.d);
        let want = replicas(self.d);
        let from = rs_replicas(&rs);
        let ann = rs.annotations();
        let ann_ok = ann.get(DESIRED_REPLICAS) == Some(&want.to_string())
            && ann.get(MAX_REPLICAS) == Some(&(want + surge).to_string());
        if from == to && ann_ok {
            return Ok(false);
        }
        // The cached resourceVersion makes a decision taken on stale data fail with a conflict.
        let patch = json!({
            "metadata": {
                "annotations": {DESIRED_REPLICAS: want.to_string(), MAX_REPLICAS: (want + surge).to_string()},
                "resourceVersion": rs.resource_version(),
            },
            "spec": {"replicas": to},
        });
        let updated = self
            .rs_api
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        if from != to {
            let dir = if to > from { "up" } else { "down" };
            self.ctx.recorder.record(
                self.d,
                COMPONENT,
                EventType::Normal,
                "ScalingReplicaSet",
                format!("Scaled {dir} replica set {name} from {from} to {to}"),
            );
        }
        if self.new_rs.as_ref().is_some_and(|r| r.name_any() == name) {
            self.new_rs = Some(updated);
        } else if let Some(r) = self.old.iter_mut().find(|r| r.name_any() == name) {
            *r = updated;
        }
        Ok(from != to)
    }

    /// Kubernetes' `scale`: one active ReplicaSet takes the new size; otherwise extra or
    /// missing replicas are spread proportionally to the ReplicaSets' sizes.
    async fn scale(&mut self) -> Result<(), Error> {
        let want = replicas(self.d);
        let active: Vec<ReplicaSet> = self
            .all()
            .filter(|rs| rs_replicas(rs) > 0)
            .cloned()
            .collect();
        let target = match active.len() {
            0 => self
                .new_rs
                .clone()
                .or_else(|| self.old.iter().max_by_key(|r| created(r)).cloned()),
            1 => Some(active[0].clone()),
            _ => None,
        };
        if let Some(rs) = target {
            self.scale_rs(&rs.name_any(), want).await?;
            return Ok(());
        }
        if let Some(new_rs) = &self.new_rs
            && rs_replicas(new_rs) == want
            && rs_status(new_rs, |s| s.available_replicas) == want
        {
            for name in self.old.iter().map(|r| r.name_any()).collect::<Vec<_>>() {
                self.scale_rs(&name, 0).await?;
            }
            return Ok(());
        }
        if !is_rolling(self.d) {
            return Ok(());
        }
        let (surge, _) = fenceposts(self.d);
        let allowed = if want > 0 { want + surge } else { 0 };
        let current: i32 = active.iter().map(rs_replicas).sum();
        let to_add = allowed - current;
        let mut sized: Vec<ReplicaSet> = active;
        if to_add > 0 {
            sized.sort_by(|a, b| {
                rs_replicas(b)
                    .cmp(&rs_replicas(a))
                    .then(created(b).cmp(&created(a)))
            });
        } else {
            sized.sort_by(|a, b| {
                rs_replicas(b)
                    .cmp(&rs_replicas(a))
                    .then(created(a).cmp(&created(b)))
            });
        }
        let status_replicas = self.d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let mut added = 0;
        let mut sizes: Vec<(String, i32)> = Vec::new();
        for rs in &sized {
            let mut proportion = 0;
            if to_add != 0 {
                let annotated = rs
                    .annotations()
                    .get(MAX_REPLICAS)
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(status_replicas);
                let fraction = if want == 0 || annotated == 0 {
                    -rs_replicas(rs)
                } else {
                    ((f64::from(rs_replicas(rs)) * f64::from(want + surge) / f64::from(annotated))
                        .round() as i32)
                        - rs_replicas(rs)
                };
                let left = to_add - added;
                proportion = if to_add > 0 {
                    fraction.min(left)
                } else {
                    fraction.max(left)
                };
            }
            added += proportion;
            sizes.push((rs.name_any(), rs_replicas(rs) + proportion));
        }
        if let Some(first) = sizes.first_mut()
            && to_add != added
        {
            first.1 = (first.1 + to_add - added).max(0);
        }
        for (name, size) in sizes {
            self.scale_rs(&name, size).await?;
        }
        Ok(())
    }

    async fn rollout_rolling(&mut self) -> Result<Action, Error> {
        self.sync_revision(true).await?;
        if self.reconcile_new().await? {
            return self.sync_status().await;
        }
        if self.reconcile_old().await? {
            return self.sync_status().await;
        }
        if self.complete() {
            self.cleanup().await?;
        }
        self.sync_status().await
    }

    async fn reconcile_new(&mut self) -> Result<bool, Error> {
        let Some(new_rs) = self.new_rs.clone() else {
            return Ok(false);
        };
        let want = replicas(self.d);
        let cur = rs_replicas(&new_rs);
        if cur == want {
            return Ok(false);
        }
        if cur > want {
            return self.scale_rs(&new_rs.name_any(), want).await;
        }
        let (surge, _) = fenceposts(self.d);
        let total: i32 = self.all().map(rs_replicas).sum();
        let to = new_rs_replicas(want, surge, total, cur);
        self.scale_rs(&new_rs.name_any(), to).await
    }

    async fn reconcile_old(&mut self) -> Result<bool, Error> {
        let old_pods: i32 = self.old.iter().map(rs_replicas).sum();
        if old_pods == 0 {
            return Ok(false);
        }
        let want = replicas(self.d);
        let (_, max_unavailable) = fenceposts(self.d);
        let all_pods: i32 = self.all().map(rs_replicas).sum();
        let (new_replicas, new_available) = self
            .new_rs
            .as_ref()
            .map(|r| (rs_replicas(r), rs_status(r, |s| s.available_replicas)))
            .unwrap_or((0, 0));
        let mut budget =
            max_scaled_down(want, max_unavailable, all_pods, new_replicas, new_available);
        if budget <= 0 {
            return Ok(false);
        }
        let mut scaled = false;
        // First remove unhealthy old replicas: they do not count toward availability anyway.
        let mut old = self.old.clone();
        old.sort_by_key(|r| (created(r), r.name_any()));
        for rs in &old {
            if budget <= 0 {
                break;
            }
            let size = rs_replicas(rs);
            let unhealthy = size - rs_status(rs, |s| s.available_replicas);
            if size == 0 || unhealthy <= 0 {
                continue;
            }
            let down = unhealthy.min(budget);
            budget -= down;
            scaled |= self.scale_rs(&rs.name_any(), size - down).await?;
        }
        // Then scale down available old replicas while keeping minAvailable.
        let min_available = want - max_unavailable;
        let available: i32 = self
            .all()
            .map(|r| rs_status(r, |s| s.available_replicas))
            .sum();
        let mut total_down = available - min_available;
        let mut old = self.old.clone();
        old.sort_by_key(|r| (created(r), r.name_any()));
        for rs in &old {
            if total_down <= 0 {
                break;
            }
            let size = rs_replicas(rs);
            if size == 0 {
                continue;
            }
            let down = size.min(total_down);
            total_down -= down;
            scaled |= self.scale_rs(&rs.name_any(), size - down).await?;
        }
        Ok(scaled)
    }

    async fn rollout_recreate(&mut self) -> Result<Action, Error> {
        self.sync_revision(false).await?;
        let mut scaled = false;
        for name in self
            .old
            .iter()
            .filter(|r| rs_replicas(r) > 0)
            .map(|r| r.name_any())
            .collect::<Vec<_>>()
        {
            scaled |= self.scale_rs(&name, 0).await?;
        }
        if scaled {
            return self.sync_status().await;
        }
        // Wait for every old pod to be gone before the new ones start.
        if self
            .old
            .iter()
            .any(|r| rs_status(r, |s| Some(s.replicas)) > 0)
        {
            return self.sync_status().await;
        }
        if self.new_rs.is_none() {
            self.sync_revision(true).await?;
        }
        if let Some(new_rs) = self.new_rs.clone() {
            self.scale_rs(&new_rs.name_any(), replicas(self.d)).await?;
        }
        if self.complete() {
            self.cleanup().await?;
        }
        self.sync_status().await
    }

    fn calculate_status(&self) -> DeploymentStatus {
        let old = self.d.status.clone().unwrap_or_default();
        let sum = |f: &dyn Fn(&ReplicaSet) -> i32| self.all().map(f).sum::<i32>();
        let available = sum(&|r| rs_status(r, |s| s.available_replicas));
        let total_spec = sum(&rs_replicas);
        let want = replicas(self.d);
        let (_, max_unavailable) = fenceposts(self.d);
        let mut status = DeploymentStatus {
            observed_generation: self.d.metadata.generation,
            replicas: Some(sum(&|r| rs_status(r, |s| Some(s.replicas)))),
            updated_replicas: Some(
                self.new_rs
                    .as_ref()
                    .map(|r| rs_status(r, |s| Some(s.replicas)))
                    .unwrap_or(0),
            ),
            ready_replicas: Some(sum(&|r| rs_status(r, |s| s.ready_replicas))),
            available_replicas: Some(available),
            unavailable_replicas: Some((total_spec - available).max(0)),
            collision_count: old.collision_count,
            conditions: old.conditions.clone(),
            terminating_replicas: None,
        };
        if available >= want - max_unavailable {
            set_condition(
                &mut status,
                condition(
                    "Available",
                    "True",
                    "MinimumReplicasAvailable",
                    "Deployment has minimum availability.",
                ),
            );
        } else {
            set_condition(
                &mut status,
                condition(
                    "Available",
                    "False",
                    "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability.",
                ),
            );
        }
        status
    }

    fn complete_status(&self, status: &DeploymentStatus) -> bool {
        let want = replicas(self.d);
        status.updated_replicas == Some(want)
            && status.replicas == Some(want)
            && status.available_replicas == Some(want)
            && status.observed_generation >= self.d.metadata.generation
    }

    fn complete(&self) -> bool {
        self.complete_status(&self.calculate_status())
    }

    /// Deletes old, empty ReplicaSets beyond `revisionHistoryLimit` (default 10), oldest
    /// revision first.
    async fn cleanup(&mut self) -> Result<(), Error> {
        let limit = self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
        let mut cleanable: Vec<&ReplicaSet> = self
            .old
            .iter()
            .filter(|r| {
                rs_replicas(r) == 0
                    && rs_status(r, |s| Some(s.replicas)) == 0
                    && !util::is_deleting(*r)
            })
            .filter(|r| r.metadata.generation <= rs_status(r, |s| s.observed_generation.map(Some)))
            .collect();
        if cleanable.len() <= limit {
            return Ok(());
        }
        cleanable.sort_by_key(|r| (revision(r), created(r)));
        let doomed: Vec<String> = cleanable[..cleanable.len() - limit]
            .iter()
            .map(|r| r.name_any())
            .collect();
        for name in doomed {
            match self.rs_api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            self.old.retain(|r| r.name_any() != name);
        }
        Ok(())
    }

    /// Writes status and the Progressing condition (`syncRolloutStatus`), and decides when to
    /// look again: at the progress deadline, or when a Ready pod becomes available.
    async fn sync_status(&self) -> Result<Action, Error> {
        let d = self.d;
        let mut status = self.calculate_status();
        let old = d.status.clone().unwrap_or_default();
        let paused = d.spec.as_ref().and_then(|s| s.paused) == Some(true);
        let deadline = d
            .spec
            .as_ref()
            .and_then(|s| s.progress_deadline_seconds)
            .unwrap_or(600);
        let mut requeue = None;
        if !paused && deadline != i32::MAX {
            let rs_name = self.new_rs.as_ref().map(|r| r.name_any());
            let current = old
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Progressing")
                .cloned();
            if self.complete_status(&status) {
                let msg = match &rs_name {
                    Some(n) => format!("ReplicaSet \"{n}\" has successfully progressed."),
                    None => format!(
                        "Deployment \"{}\" has successfully progressed.",
                        d.name_any()
                    ),
                };
                set_condition(
                    &mut status,
                    condition("Progressing", "True", "NewReplicaSetAvailable", &msg),
                );
            } else if is_progressing(&old, &status) {
                let msg = match &rs_name {
                    Some(n) => format!("ReplicaSet \"{n}\" is progressing."),
                    None => format!("Deployment \"{}\" is progressing.", d.name_any()),
                };
                let mut c = condition("Progressing", "True", "ReplicaSetUpdated", &msg);
                if let Some(cur) = &current
                    && cur.status == "True"
                {
                    c.last_transition_time = cur.last_transition_time.clone();
                }
                if let Some(conds) = status.conditions.as_mut() {
                    conds.retain(|c| c.type_ != "Progressing");
                }
                status.conditions.get_or_insert_with(Vec::new).push(c);
                requeue = Some(i64::from(deadline));
            } else if let Some(cur) = &current {
                let timed_out = match cur.reason.as_deref() {
                    Some("NewReplicaSetAvailable") => false,
                    Some("ProgressDeadlineExceeded") => true,
                    _ => {
                        let from = cur
                            .last_update_time
                            .as_ref()
                            .map(|t| t.0.as_second())
                            .unwrap_or(0);
                        let left = from + i64::from(deadline) - jiff::Timestamp::now().as_second();
                        if left > 0 {
                            requeue = Some(left);
                        }
                        left <= 0
                    }
                };
                if timed_out {
                    let msg = match &rs_name {
                        Some(n) => format!("ReplicaSet \"{n}\" has timed out progressing."),
                        None => {
                            format!("Deployment \"{}\" has timed out progressing.", d.name_any())
                        }
                    };
                    set_condition(
                        &mut status,
                        condition("Progressing", "False", "ProgressDeadlineExceeded", &msg),
                    );
                }
            }
        }
        if Some(&status) != d.status.as_ref() {
            util::patch_status(&self.ctx.client, d, &status).await?;
        }
        Ok(match requeue {
            Some(s) => Action::requeue(Duration::from_secs(s.max(1) as u64)),
            None => Action::requeue(Duration::from_secs(300)),
        })
    }
}

/// Kubernetes' `DeploymentProgressing`: more updated, ready or available replicas, or fewer old ones.
fn is_progressing(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let g = |v: Option<i32>| v.unwrap_or(0);
    let old_old = g(old.replicas) - g(old.updated_replicas);
    let new_old = g(new.replicas) - g(new.updated_replicas);
    g(new.updated_replicas) > g(old.updated_replicas)
        || new_old < old_old
        || g(new.ready_replicas) > g(old.ready_replicas)
        || g(new.available_replicas) > g(old.available_replicas)
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_update_time: Some(util::now()),
        last_transition_time: Some(util::now()),
    }
}

/// Kubernetes' `SetDeploymentCondition`: unchanged status and reason keep the old condition;
/// unchanged status keeps the old transition time.
fn set_condition(status: &mut DeploymentStatus, mut c: DeploymentCondition) {
    let conds = status.conditions.get_or_insert_with(Vec::new);
    if let Some(cur) = conds.iter().find(|x| x.type_ == c.type_) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    conds.retain(|x| x.type_ != c.type_);
    conds.push(c);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fenceposts_round_like_kubernetes() {
        let p = |s: &str| IntOrString::String(s.into());
        assert_eq!(resolve_fenceposts(None, None, 10), (3, 2));
        assert_eq!(
            resolve_fenceposts(Some(&p("25%")), Some(&p("25%")), 5),
            (2, 1)
        );
        assert_eq!(
            resolve_fenceposts(Some(&IntOrString::Int(1)), Some(&IntOrString::Int(0)), 5),
            (1, 0)
        );
        assert_eq!(
            resolve_fenceposts(Some(&IntOrString::Int(0)), Some(&IntOrString::Int(0)), 5),
            (0, 1)
        );
        assert_eq!(
            resolve_fenceposts(Some(&p("10%")), Some(&p("10%")), 3),
            (1, 0)
        );
        assert_eq!(
            resolve_fenceposts(Some(&p("0%")), Some(&p("10%")), 3),
            (0, 1)
        );
    }

    #[test]
    fn rolling_update_math() {
        // 5 replicas, surge 1: the new RS grows by one while old pods still count.
        assert_eq!(new_rs_replicas(5, 1, 5, 0), 1);
        assert_eq!(new_rs_replicas(5, 1, 6, 1), 1);
        assert_eq!(new_rs_replicas(5, 1, 5, 1), 2);
        assert_eq!(new_rs_replicas(5, 2, 3, 3), 5);
        // maxUnavailable 0: nothing goes until a new pod is available.
        assert_eq!(max_scaled_down(5, 0, 6, 1, 0), 0);
        assert_eq!(max_scaled_down(5, 0, 6, 1, 1), 1);
        assert_eq!(max_scaled_down(10, 2, 13, 3, 0), 2);
    }

    #[test]
    fn template_hash_ignores_own_label_and_changes_with_template() {
        let t = PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            }),
            spec: None,
        };
        let h = template_hash(&t, None);
        let mut with_hash = t.clone();
        with_hash
            .metadata
            .as_mut()
            .and_then(|m| m.labels.as_mut())
            .map(|l| l.insert(POD_TEMPLATE_HASH.into(), h.clone()));
        assert_eq!(template_hash(&with_hash, None), h);
        assert_ne!(template_hash(&t, Some(1)), h);
        let mut other = t.clone();
        other
            .metadata
            .as_mut()
            .and_then(|m| m.labels.as_mut())
            .map(|l| l.insert("v".into(), "2".into()));
        assert_ne!(template_hash(&other, None), h);
        assert!(!h.is_empty() && h.len() <= 10);
    }
}
