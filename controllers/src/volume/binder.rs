//! The PersistentVolume controller (Kubernetes' `persistentvolume-binder`): one reconcile per
//! claim and one per volume, level-triggered.
//!
//! Claims: an unbound claim gets the smallest matching volume (class, volume mode, capacity ≥
//! request, access modes ⊇ requested, selector, `volumeName` pre-binding; a volume pre-bound to
//! the claim through `claimRef` wins). With a `WaitForFirstConsumer` class nothing happens until
//! the scheduler has chosen a node (`volume.kubernetes.io/selected-node`); then volumes that fit
//! that node are tried and, failing that, the class's provisioner is asked (the built-in
//! local-path one provisions right here). Lotse's scheduler only annotates the claim, where
//! Kubernetes' scheduler would also pre-bind a matching static volume itself; the result is the
//! same binding.
//!
//! Volumes: Available without a claim, Bound while their claim is bound to them, Released once
//! the claim is gone, then reclaimed: Retain keeps them, Delete removes what the provisioner
//! made (other volumes go Failed: Lotse has no deleter plugin for them), Recycle is Failed.
//!
//! Protection: a deleted claim keeps `kubernetes.io/pvc-protection` while a pod that is not
//! finished uses it; a deleted volume keeps `kubernetes.io/pv-protection` while Bound.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use client_tools::informer::{Ready, readiness};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use super::*;
use crate::Error;
use crate::events::{EventType, Recorder};

const COMPONENT: &str = "persistentvolume-controller";

pub(super) struct Ctx {
    pub(super) client: Client,
    pub(super) recorder: Recorder,
    pub(super) settings: Settings,
    /// The volume reconciler's watch cache: claim syncs read volumes here instead of listing
    /// them (Kubernetes' PV controller works from its informers' caches too).
    pub(super) volumes: Store<PersistentVolume>,
    /// The claim reconciler's watch cache.
    pub(super) claims: Store<PersistentVolumeClaim>,
    /// All pods (which wait for a claim to be bound).
    pub(super) pods: Store<Pod>,
    /// All StorageClasses.
    pub(super) classes: Store<StorageClass>,
    /// Rancher's `local-path-config` ConfigMap, when it exists.
    pub(super) local_path_config: Store<ConfigMap>,
    /// Whether each store above holds its first list (many reconciles may wait at once).
    pub(super) ready: StoresReady,
}

/// Readiness of the binder's stores (see [`client_tools::informer`]).
pub(super) struct StoresReady {
    pub(super) volumes: Ready,
    pub(super) claims: Ready,
    pub(super) classes: Ready,
    pub(super) local_path_config: Ready,
}

/// Runs the claim and volume reconcilers until one of their streams ends.
pub async fn run(client: Client, recorder: Recorder, settings: Settings) -> Result<(), Error> {
    let wc = watcher::Config::default();
    // The stores are fed by streams the binder owns, so their readiness ([`Ready`]) can be
    // awaited by any number of reconciles: kube-runtime's `Store::wait_until_ready` wakes only
    // one waiter, and each `Controller` already is one on its own store.
    let (volume_store, volume_writer) = reflector::store::<PersistentVolume>();
    let (volumes_ready_setter, volumes_ready) = readiness();
    let volume_events = reflector::reflector(
        volume_writer,
        watcher(Api::<PersistentVolume>::all(client.clone()), wc.clone()),
    )
    .default_backoff()
    .inspect_ok(move |ev| volumes_ready_setter.observe(ev))
    .applied_objects();
    let volumes = Controller::for_stream(volume_events, volume_store.clone()).watches(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        wc.clone(),
        |pvc| {
            let v = pvc.spec.as_ref()?.volume_name.clone()?;
            (!v.is_empty()).then(|| ObjectRef::new(&v))
        },
    );
    let (claim_store, claim_writer) = reflector::store::<PersistentVolumeClaim>();
    let (claims_ready_setter, claims_ready) = readiness();
    let claim_events = reflector::reflector(
        claim_writer,
        watcher(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            wc.clone(),
        ),
    )
    .default_backoff()
    .inspect_ok(move |ev| claims_ready_setter.observe(ev))
    .applied_objects();
    let claims = Controller::for_stream(claim_events, claim_store.clone());
    let (pod_store, pod_writer) = reflector::store::<Pod>();
    let pods = reflector::reflector(
        pod_writer,
        watcher(Api::<Pod>::all(client.clone()), wc.clone()),
    )
    .default_backoff()
    .touched_objects();
    let (class_store, class_writer) = reflector::store::<StorageClass>();
    let (classes_ready_setter, classes_ready) = readiness();
    let classes = reflector::reflector(
        class_writer,
        watcher(Api::<StorageClass>::all(client.clone()), wc.clone()),
    )
    .default_backoff()
    .inspect_ok(move |ev| classes_ready_setter.observe(ev))
    .for_each(|_| futures::future::ready(()));
    let (config_store, config_writer) = reflector::store::<ConfigMap>();
    let (config_ready_setter, config_ready) = readiness();
    let configs = reflector::reflector(
        config_writer,
        watcher(
            Api::<ConfigMap>::namespaced(client.clone(), local_path::HELPER_NAMESPACE),
            watcher::Config::default().fields(&format!("metadata.name={}", local_path::CONFIG_MAP)),
        ),
    )
    .default_backoff()
    .inspect_ok(move |ev| config_ready_setter.observe(ev))
    .for_each(|_| futures::future::ready(()));
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        recorder,
        settings,
        volumes: volume_store,
        claims: claim_store.clone(),
        pods: pod_store,
        classes: class_store,
        local_path_config: config_store,
        ready: StoresReady {
            volumes: volumes_ready,
            claims: claims_ready,
            classes: classes_ready,
            local_path_config: config_ready,
        },
    });
    let claims = claims
        .watches(
            Api::<PersistentVolume>::all(client.clone()),
            wc.clone(),
            |pv| {
                let r = pv.spec.as_ref()?.claim_ref.as_ref()?;
                Some(ObjectRef::new(r.name.as_deref()?).within(r.namespace.as_deref()?))
            },
        )
        // Pods matter to a claim only while it is being deleted (pvc-protection waits for
        // them); binding is driven by the claim itself (the scheduler's selected-node).
        .watches_stream(pods, move |pod| {
            let ns = pod.namespace().unwrap_or_default();
            let store = claim_store.clone();
            pod_claims(&pod)
                .into_iter()
                .map(move |c| ObjectRef::new(&c).within(&ns))
                .filter(move |r| {
                    store
                        .get(r)
                        .is_some_and(|c| c.metadata.deletion_timestamp.is_some())
                })
        })
        .run(
            reconcile_claim,
            |pvc: Arc<PersistentVolumeClaim>, err: &Error, _| {
                tracing::warn!(claim = %pvc.name_any(), error = %err, "claim sync failed; retrying");
                Action::requeue(Duration::from_secs(2))
            },
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));
    let volumes = volumes
        .run(
            reconcile_volume,
            |pv: Arc<PersistentVolume>, err: &Error, _| {
                tracing::warn!(volume = %pv.name_any(), error = %err, "volume sync failed; retrying");
                Action::requeue(Duration::from_secs(2))
            },
            ctx,
        )
        .for_each(|_| futures::future::ready(()));
    tokio::join!(claims, volumes, classes, configs);
    Err(Error::Stopped("persistentvolume-binder"))
}

/// Volume `name` from the watch cache, else (not seen yet, e.g. just created) from the
/// apiserver.
async fn volume_by_name(ctx: &Ctx, name: &str) -> Result<Option<PersistentVolume>, Error> {
    if let Some(v) = ctx.volumes.get(&ObjectRef::new(name)) {
        return Ok(Some(v.as_ref().clone()));
    }
    Ok(Api::<PersistentVolume>::all(ctx.client.clone())
        .get_opt(name)
        .await?)
}

/// Volume `name` as the apiserver has it now.
async fn fresh_volume(ctx: &Ctx, name: &str) -> Result<Option<PersistentVolume>, Error> {
    Ok(Api::<PersistentVolume>::all(ctx.client.clone())
        .get_opt(name)
        .await?)
}

/// Claims a pod's volumes name (`persistentVolumeClaim` and generic ephemeral volumes).
pub fn pod_claims(pod: &Pod) -> Vec<String> {
    let pod_name = pod.name_any();
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            if let Some(c) = &v.persistent_volume_claim {
                Some(c.claim_name.clone())
            } else {
                v.ephemeral
                    .as_ref()
                    .map(|_| format!("{pod_name}-{}", v.name))
            }
        })
        .collect()
}

fn has_finalizer<K: ResourceExt>(o: &K, f: &str) -> bool {
    o.finalizers().iter().any(|x| x == f)
}

fn annotation<'a, K: ResourceExt>(o: &'a K, key: &str) -> Option<&'a str> {
    o.annotations().get(key).map(String::as_str)
}

fn access_modes_of_claim(pvc: &PersistentVolumeClaim) -> Vec<String> {
    pvc.spec
        .as_ref()
        .and_then(|s| s.access_modes.clone())
        .unwrap_or_default()
}

fn volume_phase(pv: &PersistentVolume) -> &str {
    pv.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn claim_phase(pvc: &PersistentVolumeClaim) -> &str {
    pvc.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Whether the volume's `claimRef` names this claim (by namespace and name, and by UID when
/// the reference carries one).
pub fn prebound_to(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    r.name.as_deref() == pvc.metadata.name.as_deref()
        && r.namespace.as_deref() == pvc.metadata.namespace.as_deref()
        && r.uid
            .as_deref()
            .is_none_or(|u| u.is_empty() || Some(u) == pvc.metadata.uid.as_deref())
}

/// Kubernetes' `FindMatchingVolume`: the volume to bind `pvc` to, if any. A volume pre-bound
/// to the claim wins; otherwise the smallest unclaimed volume that satisfies the claim. With
/// `node` (delayed binding after the scheduler chose a node) only volumes that fit the node
/// count; with `delayed` and no node, only pre-bound volumes do.
pub fn find_best_match<'a>(
    pvc: &PersistentVolumeClaim,
    volumes: impl IntoIterator<Item = &'a PersistentVolume>,
    delayed: bool,
    node: Option<&BTreeMap<String, String>>,
) -> Option<&'a PersistentVolume> {
    let spec = pvc.spec.clone().unwrap_or_default();
    let request = claim_request(pvc);
    let class = claim_class(pvc);
    let mode = spec.volume_mode.as_deref().unwrap_or("Filesystem");
    let wanted_modes = access_modes_of_claim(pvc);
    let requested_volume = spec.volume_name.as_deref().filter(|v| !v.is_empty());
    let mut best: Option<&PersistentVolume> = None;
    for pv in volumes {
        if pv.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if requested_volume.is_some_and(|v| Some(v) != pv.metadata.name.as_deref()) {
            continue;
        }
        let pspec = pv.spec.clone().unwrap_or_default();
        if pspec.volume_mode.as_deref().unwrap_or("Filesystem") != mode {
            continue;
        }
        if let Some(n) = node
            && !volume_fits_node(pv, n)
        {
            continue;
        }
        if prebound_to(pv, pvc) {
            if volume_capacity(pv) >= request {
                return Some(pv);
            }
            continue;
        }
        if pspec.claim_ref.is_some() || volume_phase(pv) != "Available" {
            continue;
        }
        if delayed && node.is_none() {
            continue;
        }
        if volume_class(pv) != class {
            continue;
        }
        if let Some(sel) = &spec.selector
            && !crate::util::selector_matches(
                sel,
                pv.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
            )
        {
            continue;
        }
        let have = pspec.access_modes.unwrap_or_default();
        if !wanted_modes.iter().all(|m| have.contains(m)) {
            continue;
        }
        let cap = volume_capacity(pv);
        if cap < request {
            continue;
        }
        if best.is_none_or(|b| cap < volume_capacity(b)) {
            best = Some(pv);
        }
    }
    best
}

/// Whether a pod that has not finished uses the claim.
async fn claim_in_use(ctx: &Ctx, ns: &str, name: &str) -> Result<bool, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    Ok(pods
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .any(|p| {
            let finished = matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            );
            !finished && pod_claims(p).iter().any(|c| c == name)
        }))
}

/// Removes finalizer `f` from the object, guarded by its resourceVersion.
async fn remove_finalizer<K>(api: &Api<K>, o: &K, f: &str) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let rest: Vec<&String> = o
        .meta()
        .finalizers
        .iter()
        .flatten()
        .filter(|x| *x != f)
        .collect();
    let patch =
        json!({"metadata": {"finalizers": rest, "resourceVersion": o.meta().resource_version}});
    match api
        .patch(
            o.meta().name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn reconcile_claim(pvc: Arc<PersistentVolumeClaim>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = pvc.namespace().unwrap_or_default();
    let name = pvc.name_any();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    if pvc.metadata.deletion_timestamp.is_some() {
        if has_finalizer(pvc.as_ref(), PVC_PROTECTION) && !claim_in_use(&ctx, &ns, &name).await? {
            remove_finalizer(&claims, pvc.as_ref(), PVC_PROTECTION).await?;
        }
        return Ok(Action::await_change());
    }
    // The caches hold their first lists before anything is decided from them.
    ctx.ready.volumes.wait().await;
    let volume_name = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .unwrap_or_default();
    if volume_name.is_empty() || claim_phase(&pvc) != "Bound" {
        if volume_name.is_empty() {
            let volumes = ctx.volumes.state();
            return sync_unbound_claim(&ctx, &pvc, volumes.iter().map(AsRef::as_ref)).await;
        }
        // Pre-bound by the user to a named volume, or bound with the status not written yet.
        let Some(mut pv) = volume_by_name(&ctx, &volume_name).await? else {
            // Pre-bound to a volume that does not exist (yet).
            return Ok(Action::requeue(Duration::from_secs(15)));
        };
        let claimed_by_other = |pv: &PersistentVolume| {
            pv.spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .is_some()
                && !prebound_to(pv, &pvc)
        };
        if claimed_by_other(&pv) {
            // The cache may be behind the apiserver; decide on the volume as it is now.
            match fresh_volume(&ctx, &volume_name).await? {
                Some(v) => pv = v,
                None => return Ok(Action::requeue(Duration::from_secs(15))),
            }
        }
        if claimed_by_other(&pv) {
            // E.g. a Retain volume whose claim was deleted: Released, its claimRef kept.
            let (kind, reason, msg) = bound_elsewhere_event(&volume_name);
            ctx.recorder
                .record(pvc.as_ref(), COMPONENT, kind, reason, msg);
            set_claim_phase(&claims, &pvc, "Pending").await?;
            return Ok(Action::requeue(Duration::from_secs(15)));
        }
        bind(&ctx, &pv, &pvc, None).await?;
        return Ok(Action::await_change());
    }
    // Bound claim: keep it so, or report it lost. What the cache says against the binding is
    // checked with the apiserver first (a volume just created or bound may not be cached yet).
    let mut pv = volume_by_name(&ctx, &volume_name).await?;
    if pv.as_ref().is_some_and(|v| !prebound_to(v, &pvc)) {
        pv = fresh_volume(&ctx, &volume_name).await?;
    }
    match pv {
        None => {
            set_claim_phase(&claims, &pvc, "Lost").await?;
            ctx.recorder.record(
                pvc.as_ref(),
                COMPONENT,
                EventType::Warning,
                "ClaimLost",
                "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!"
                    .into(),
            );
        }
        Some(pv) if prebound_to(&pv, &pvc) => bind(&ctx, &pv, &pvc, None).await?,
        Some(pv)
            if pv
                .spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .is_none() =>
        {
            bind(&ctx, &pv, &pvc, None).await?
        }
        Some(_) => {
            set_claim_phase(&claims, &pvc, "Lost").await?;
            ctx.recorder.record(
                pvc.as_ref(),
                COMPONENT,
                EventType::Warning,
                "ClaimMisbound",
                "Two claims are bound to the same volume, this one is bound incorrectly".into(),
            );
        }
    }
    Ok(Action::await_change())
}

async fn sync_unbound_claim<'a>(
    ctx: &Ctx,
    pvc: &PersistentVolumeClaim,
    volumes: impl IntoIterator<Item = &'a PersistentVolume>,
) -> Result<Action, Error> {
    let class_name = claim_class(pvc);
    let class = if class_name.is_empty() {
        None
    } else {
        ctx.ready.classes.wait().await;
        match ctx.classes.get(&ObjectRef::new(&class_name)) {
            Some(c) => Some(c.as_ref().clone()),
            // Not cached: maybe just created; the apiserver has the last word.
            None => {
                Api::<StorageClass>::all(ctx.client.clone())
                    .get_opt(&class_name)
                    .await?
            }
        }
    };
    let delayed = class
        .as_ref()
        .is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
    let selected = annotation(pvc, ANN_SELECTED_NODE).map(str::to_string);
    let node_labels = selected.as_deref().map(hostname_labels);
    let node = if delayed { node_labels.as_ref() } else { None };
    if let Some(pv) = find_best_match(pvc, volumes, delayed, node) {
        bind(ctx, pv, pvc, None).await?;
        return Ok(Action::await_change());
    }
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &pvc.namespace().unwrap_or_default());
    if claim_phase(pvc) != "Pending" {
        set_claim_phase(&claims, pvc, "Pending").await?;
    }
    let waiting_for_node = delayed && selected.is_none();
    let unscheduled = if waiting_for_node {
        unscheduled_pods_of(&ctx.pods, pvc)
    } else {
        Vec::new()
    };
    let (kind, reason, msg) =
        unmatched_claim_event(&class_name, class.as_ref(), waiting_for_node, &unscheduled);
    let provisions = class
        .as_ref()
        .is_some_and(|c| c.provisioner == LOCAL_PATH_PROVISIONER)
        && !waiting_for_node;
    let Some(class) =
        class.filter(|c| !waiting_for_node && !c.provisioner.starts_with("kubernetes.io/"))
    else {
        ctx.recorder.record(pvc, COMPONENT, kind, reason, msg);
        // A delayed claim moves on when the scheduler annotates it; the others are retried
        // on Kubernetes' 15 s resync (a class or volume may appear meanwhile).
        return Ok(if waiting_for_node {
            Action::await_change()
        } else {
            Action::requeue(Duration::from_secs(15))
        });
    };
    let annotated = annotation(pvc, ANN_STORAGE_PROVISIONER) == Some(class.provisioner.as_str());
    // The built-in provisioner binds right away: the annotation goes with the binding's write.
    if !annotated && class.provisioner != LOCAL_PATH_PROVISIONER {
        claims
            .patch(&pvc.name_any(), &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {
                ANN_STORAGE_PROVISIONER: class.provisioner, ANN_BETA_STORAGE_PROVISIONER: class.provisioner}}})))
            .await?;
    }
    ctx.recorder.record(pvc, COMPONENT, kind, reason, msg);
    if !provisions {
        return Ok(Action::requeue(Duration::from_secs(60)));
    }
    match local_path::provision(ctx, pvc, &class, selected.as_deref()).await? {
        Some(pv) => {
            let provisioner = (!annotated).then_some(LOCAL_PATH_PROVISIONER);
            bind(ctx, &pv, pvc, provisioner).await?;
            Ok(Action::await_change())
        }
        None => Ok(Action::requeue(Duration::from_secs(30))),
    }
}

/// The event of a claim asking (`volumeName`) for a volume bound to another claim, as
/// Kubernetes' `syncUnboundClaim` words it.
pub fn bound_elsewhere_event(volume: &str) -> (EventType, &'static str, String) {
    (
        EventType::Warning,
        "FailedBinding",
        format!("volume \"{volume}\" already bound to a different claim."),
    )
}

/// Names of the pods using the claim that are not scheduled yet (Kubernetes'
/// `findNonScheduledPodsByPVC`), sorted.
fn unscheduled_pods_of(pods: &Store<Pod>, pvc: &PersistentVolumeClaim) -> Vec<String> {
    let ns = pvc.namespace().unwrap_or_default();
    let name = pvc.name_any();
    let mut out: Vec<String> = pods
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_none()))
        .filter(|p| pod_claims(p).contains(&name))
        .map(|p| p.name_any())
        .collect();
    out.sort();
    out
}

/// The event telling why an unbound claim that no volume matches is not bound yet, as
/// Kubernetes' `syncUnboundClaim` / `provisionClaimOperation` words it: no class, a class that
/// does not exist, a delayed class waiting for its pod (`unscheduled`: its pods not scheduled
/// yet), a `kubernetes.io/` provisioner without a plugin (`kubernetes.io/no-provisioner`: only
/// static volumes, none of which fits), or an external provisioner (incl. local-path).
pub fn unmatched_claim_event(
    class_name: &str,
    class: Option<&StorageClass>,
    waiting_for_node: bool,
    unscheduled: &[String],
) -> (EventType, &'static str, String) {
    if class_name.is_empty() {
        return (
            EventType::Normal,
            "FailedBinding",
            "no persistent volumes available for this claim and no storage class is set".into(),
        );
    }
    let Some(class) = class else {
        return (
            EventType::Warning,
            "ProvisioningFailed",
            format!("storageclass.storage.k8s.io \"{class_name}\" not found"),
        );
    };
    if waiting_for_node {
        return match unscheduled {
            [] => (
                EventType::Normal,
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding".into(),
            ),
            [one] => (
                EventType::Normal,
                "WaitForPodScheduled",
                format!("waiting for pod {one} to be scheduled"),
            ),
            many => (
                EventType::Normal,
                "WaitForPodScheduled",
                format!(
                    "waiting for one of pods {} to be scheduled",
                    many.join(", ")
                ),
            ),
        };
    }
    if class.provisioner.starts_with("kubernetes.io/") {
        return (
            EventType::Warning,
            "ProvisioningFailed",
            format!("no volume plugin matched name: {}", class.provisioner),
        );
    }
    (
        EventType::Normal,
        "ExternalProvisioning",
        format!(
            "Waiting for a volume to be created either by the external provisioner '{}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered.",
            class.provisioner
        ),
    )
}

async fn set_claim_phase(
    claims: &Api<PersistentVolumeClaim>,
    pvc: &PersistentVolumeClaim,
    phase: &str,
) -> Result<(), Error> {
    if claim_phase(pvc) == phase {
        return Ok(());
    }
    claims
        .patch_status(
            &pvc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": phase}})),
        )
        .await?;
    Ok(())
}

async fn set_volume_phase(
    ctx: &Ctx,
    pv: &PersistentVolume,
    phase: &str,
    message: Option<&str>,
) -> Result<(), Error> {
    if volume_phase(pv) == phase && message.is_none() {
        return Ok(());
    }
    write_volume_phase(ctx, &pv.name_any(), phase, message).await
}

/// Writes a volume's phase (and message) with the transition time.
async fn write_volume_phase(
    ctx: &Ctx,
    name: &str,
    phase: &str,
    message: Option<&str>,
) -> Result<(), Error> {
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let mut status = json!({"phase": phase, "lastPhaseTransitionTime": crate::util::now()});
    if let Some(m) = message {
        status["message"] = json!(m);
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await?;
    Ok(())
}

/// Binds `pv` and `pvc` to each other, completing whatever part is missing (Kubernetes'
/// `bind`: volume `claimRef` then phase, claim `volumeName` then status), idempotently. With
/// `provisioner`, the claim's storage-provisioner annotations are written with its binding.
async fn bind(
    ctx: &Ctx,
    pv: &PersistentVolume,
    pvc: &PersistentVolumeClaim,
    provisioner: Option<&str>,
) -> Result<(), Error> {
    let pv_name = pv.name_any();
    let uid = pvc.metadata.uid.clone().unwrap_or_default();
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let ref_uid = pv
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .and_then(|r| r.uid.clone())
        .unwrap_or_default();
    let had_ref = pv
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .is_some();
    let mut pv_phase = volume_phase(pv).to_string();
    if ref_uid != uid {
        let mut patch = json!({
            "metadata": {"resourceVersion": pv.metadata.resource_version},
            "spec": {"claimRef": {
                "kind": "PersistentVolumeClaim", "apiVersion": "v1",
                "namespace": pvc.namespace(), "name": pvc.name_any(), "uid": uid,
                "resourceVersion": pvc.metadata.resource_version,
            }},
        });
        if !had_ref {
            patch["metadata"]["annotations"] = json!({ANN_BOUND_BY_CONTROLLER: "yes"});
        }
        let updated = volumes
            .patch(&pv_name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        pv_phase = volume_phase(&updated).to_string();
    }
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &pvc.namespace().unwrap_or_default());
    let current_volume = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .unwrap_or_default();
    // The volume's phase and the claim's volumeName are independent writes: both at once.
    let volume_phase_write = async {
        if pv_phase != "Bound" {
            write_volume_phase(ctx, &pv_name, "Bound", None).await?;
        }
        Ok::<(), Error>(())
    };
    let claim_write = async {
        if current_volume != pv_name
            || annotation(pvc, ANN_BIND_COMPLETED) != Some("yes")
            || provisioner.is_some()
        {
            let mut annotations = json!({ANN_BIND_COMPLETED: "yes"});
            if current_volume.is_empty() {
                annotations[ANN_BOUND_BY_CONTROLLER] = json!("yes");
            }
            if let Some(p) = provisioner {
                annotations[ANN_STORAGE_PROVISIONER] = json!(p);
                annotations[ANN_BETA_STORAGE_PROVISIONER] = json!(p);
            }
            claims
                .patch(
                    &pvc.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({
                        "metadata": {"annotations": annotations},
                        "spec": {"volumeName": pv_name},
                    })),
                )
                .await?;
        }
        Ok::<(), Error>(())
    };
    tokio::try_join!(volume_phase_write, claim_write)?;
    let pspec = pv.spec.clone().unwrap_or_default();
    let status = json!({
        "phase": "Bound",
        "accessModes": pspec.access_modes.unwrap_or_default(),
        "capacity": pspec.capacity.unwrap_or_default(),
    });
    let cur = pvc.status.clone().unwrap_or_default();
    let same = cur.phase.as_deref() == Some("Bound")
        && serde_json::to_value(&cur.capacity).ok() == Some(status["capacity"].clone())
        && serde_json::to_value(&cur.access_modes).ok() == Some(status["accessModes"].clone());
    if !same {
        claims
            .patch_status(
                &pvc.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await?;
    }
    if current_volume.is_empty() {
        tracing::info!(claim = %format!("{}/{}", pvc.namespace().unwrap_or_default(), pvc.name_any()), volume = %pv_name, "bound");
    }
    Ok(())
}

/// The PV controller's periodic resync (kube-controller-manager's `--pvclaimbinder-sync-period`).
const RESYNC: Duration = Duration::from_secs(15);

async fn reconcile_volume(pv: Arc<PersistentVolume>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    if pv.metadata.deletion_timestamp.is_some() {
        if has_finalizer(pv.as_ref(), PV_PROTECTION) && volume_phase(&pv) != "Bound" {
            remove_finalizer(&volumes, pv.as_ref(), PV_PROTECTION).await?;
        }
        // A bound volume is released when its claim goes; that sync removes the finalizer.
        if volume_phase(&pv) == "Bound" {
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
        return Ok(Action::await_change());
    }
    let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.clone()) else {
        set_volume_phase(&ctx, &pv, "Available", None).await?;
        return Ok(Action::await_change());
    };
    let uid = r.uid.clone().unwrap_or_default();
    if uid.is_empty() {
        // Pre-bound by the user to a claim that is not bound yet.
        set_volume_phase(&ctx, &pv, "Available", None).await?;
        return Ok(Action::await_change());
    }
    let ns = r.namespace.as_deref().unwrap_or_default();
    let name = r.name.as_deref().unwrap_or_default();
    ctx.ready.claims.wait().await;
    let cached = ctx
        .claims
        .get(&ObjectRef::new(name).within(ns))
        .filter(|c| c.metadata.uid.as_deref() == Some(uid.as_str()));
    let claim = match cached {
        Some(c) => Some(c.as_ref().clone()),
        // Not cached (yet): as Kubernetes, ask the apiserver before releasing the volume.
        None => Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns)
            .get_opt(name)
            .await?
            .filter(|c| c.metadata.uid.as_deref() == Some(uid.as_str())),
    };
    match claim {
        Some(c) => {
            let bound_to = c
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.clone())
                .unwrap_or_default();
            if bound_to == pv.name_any() {
                set_volume_phase(&ctx, &pv, "Bound", None).await?;
            } else if !bound_to.is_empty() {
                // The claim is bound to another volume: release this one's reference.
                volumes
                    .patch(
                        &pv.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({
                            "metadata": {"resourceVersion": pv.metadata.resource_version,
                                "annotations": {ANN_BOUND_BY_CONTROLLER: null}},
                            "spec": {"claimRef": null},
                        })),
                    )
                    .await?;
                set_volume_phase(&ctx, &pv, "Available", None).await?;
            }
            // Kubernetes' 15 s resync of every volume: the claim's deletion triggers this sync
            // through another watch than the claim cache read above, which may not have seen
            // the deletion yet; the next sync then finds the claim gone and releases the volume.
            Ok(Action::requeue(RESYNC))
        }
        None => reclaim(&ctx, &pv).await,
    }
}

/// The claim of a bound volume is gone: Released, then the reclaim policy.
async fn reclaim(ctx: &Ctx, pv: &PersistentVolume) -> Result<Action, Error> {
    let phase = volume_phase(pv);
    if phase == "Failed" {
        return Ok(Action::await_change());
    }
    if phase != "Released" {
        set_volume_phase(ctx, pv, "Released", None).await?;
    }
    let policy = pv
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.clone())
        .unwrap_or_else(|| "Retain".into());
    match policy.as_str() {
        "Delete" if annotation(pv, ANN_PROVISIONED_BY) == Some(LOCAL_PATH_PROVISIONER) => {
            if !local_path::delete_directory(ctx, pv).await? {
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
            match volumes
                .delete(&pv.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => tracing::info!(volume = %pv.name_any(), "deleted released volume"),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            Ok(Action::await_change())
        }
        "Delete" => {
            let msg = format!(
                "error getting deleter volume plugin for volume \"{}\": no deletable volume plugin matched",
                pv.name_any()
            );
            set_volume_phase(ctx, pv, "Failed", Some(&msg)).await?;
            ctx.recorder
                .record(pv, COMPONENT, EventType::Warning, "VolumeFailedDelete", msg);
            Ok(Action::await_change())
        }
        "Recycle" => {
            let msg = "No recycler plugin found for the volume!";
            set_volume_phase(ctx, pv, "Failed", Some(msg)).await?;
            ctx.recorder.record(
                pv,
                COMPONENT,
                EventType::Warning,
                "VolumeFailedRecycle",
                msg.into(),
            );
            Ok(Action::await_change())
        }
        _ => Ok(Action::await_change()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(name: &str, size: &str, modes: &[&str], class: &str) -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"tier": name}},
            "spec": {"capacity": {"storage": size}, "accessModes": modes, "storageClassName": class,
                "hostPath": {"path": format!("/data/{name}")}},
            "status": {"phase": "Available"}
        }))
        .unwrap_or_default()
    }

    fn pvc(size: &str, modes: &[&str], class: &str) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "default", "uid": "u1"},
            "spec": {"resources": {"requests": {"storage": size}}, "accessModes": modes, "storageClassName": class}
        }))
        .unwrap_or_default()
    }

    fn names(v: Option<&PersistentVolume>) -> Option<String> {
        v.map(|v| v.name_any())
    }

    #[test]
    fn smallest_satisfying_volume_of_the_class_wins() {
        let vols = vec![
            pv("big", "10Gi", &["ReadWriteOnce"], "manual"),
            pv("small", "1Gi", &["ReadWriteOnce"], "manual"),
            pv("tiny", "500Mi", &["ReadWriteOnce"], "manual"),
            pv("other-class", "1Gi", &["ReadWriteOnce"], "fast"),
            pv("rox", "1Gi", &["ReadOnlyMany"], "manual"),
        ];
        let c = pvc("1Gi", &["ReadWriteOnce"], "manual");
        assert_eq!(
            names(find_best_match(&c, &vols, false, None)),
            Some("small".into())
        );
        let c = pvc("2Gi", &["ReadWriteOnce"], "manual");
        assert_eq!(
            names(find_best_match(&c, &vols, false, None)),
            Some("big".into())
        );
        let c = pvc("20Gi", &["ReadWriteOnce"], "manual");
        assert_eq!(names(find_best_match(&c, &vols, false, None)), None);
        let c = pvc("1Gi", &["ReadWriteOnce", "ReadOnlyMany"], "manual");
        assert_eq!(
            names(find_best_match(&c, &vols, false, None)),
            None,
            "modes must be a superset"
        );
        let c = pvc("1Gi", &["ReadWriteOnce"], "");
        assert_eq!(
            names(find_best_match(&c, &vols, false, None)),
            None,
            "class must be equal"
        );
    }

    #[test]
    fn selector_volume_name_prebinding_and_delayed_binding() {
        let mut vols = vec![
            pv("a", "1Gi", &["ReadWriteOnce"], "manual"),
            pv("b", "2Gi", &["ReadWriteOnce"], "manual"),
        ];
        let mut c = pvc("1Gi", &["ReadWriteOnce"], "manual");
        let spec = c.spec.get_or_insert_default();
        spec.selector = serde_json::from_value(json!({"matchLabels": {"tier": "b"}})).ok();
        assert_eq!(
            names(find_best_match(&c, &vols, false, None)),
            Some("b".into())
        );
        let mut c = pvc("1Gi", &["ReadWriteOnce"], "manual");
        let spec = c.spec.get_or_insert_default();
        spec.volume_name = Some("b".into());
        assert_eq!(
            names(find_best_match(&c, &vols, false, None)),
            Some("b".into())
        );
        // Delayed binding without a node binds only pre-bound volumes.
        let c = pvc("1Gi", &["ReadWriteOnce"], "manual");
        assert_eq!(names(find_best_match(&c, &vols, true, None)), None);
        let spec = vols[1].spec.get_or_insert_default();
        spec.claim_ref =
            serde_json::from_value(json!({"namespace": "default", "name": "data"})).ok();
        assert_eq!(
            names(find_best_match(&c, &vols, true, None)),
            Some("b".into())
        );
        // Claimed by another claim: not a candidate.
        let spec = vols[1].spec.get_or_insert_default();
        spec.claim_ref =
            serde_json::from_value(json!({"namespace": "default", "name": "other", "uid": "u2"}))
                .ok();
        assert_eq!(
            names(find_best_match(&c, &vols, false, None)),
            Some("a".into())
        );
        // With a node, volumes must fit it.
        let spec = vols[0].spec.get_or_insert_default();
        spec.node_affinity = serde_json::from_value(json!({"required": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}})).ok();
        assert_eq!(
            names(find_best_match(
                &c,
                &vols,
                true,
                Some(&hostname_labels("n2"))
            )),
            None
        );
        assert_eq!(
            names(find_best_match(
                &c,
                &vols,
                true,
                Some(&hostname_labels("n1"))
            )),
            Some("a".into())
        );
    }

    fn class(provisioner: &str) -> StorageClass {
        StorageClass {
            provisioner: provisioner.into(),
            ..Default::default()
        }
    }

    fn event(
        class_name: &str,
        class: Option<&StorageClass>,
        waiting: bool,
        pods: &[&str],
    ) -> (String, &'static str, String) {
        let pods: Vec<String> = pods.iter().map(|p| p.to_string()).collect();
        let (kind, reason, msg) = unmatched_claim_event(class_name, class, waiting, &pods);
        (format!("{kind:?}"), reason, msg)
    }

    #[test]
    fn unmatched_claims_are_explained_in_kubernetes_words() {
        // A class that does not exist: the claim stays Pending, the event says so.
        assert_eq!(
            event("fast", None, false, &[]),
            (
                "Warning".into(),
                "ProvisioningFailed",
                "storageclass.storage.k8s.io \"fast\" not found".into()
            )
        );
        // No class and no volume big enough.
        assert_eq!(
            event("", None, false, &[]),
            (
                "Normal".into(),
                "FailedBinding",
                "no persistent volumes available for this claim and no storage class is set".into()
            )
        );
        // Static volumes only (no-provisioner), none big enough.
        let static_only = class("kubernetes.io/no-provisioner");
        assert_eq!(
            event("local", Some(&static_only), false, &[]),
            (
                "Warning".into(),
                "ProvisioningFailed",
                "no volume plugin matched name: kubernetes.io/no-provisioner".into()
            )
        );
        // Delayed binding: before its pod exists, and while its pods are unschedulable.
        assert_eq!(
            event("local", Some(&static_only), true, &[]).2,
            "waiting for first consumer to be created before binding"
        );
        assert_eq!(
            event("local", Some(&static_only), true, &["db-0"]),
            (
                "Normal".into(),
                "WaitForPodScheduled",
                "waiting for pod db-0 to be scheduled".into()
            )
        );
        assert_eq!(
            event("local", Some(&static_only), true, &["a", "b"]).2,
            "waiting for one of pods a, b to be scheduled"
        );
        // An external provisioner (local-path is one, as in k3s).
        let (_, reason, msg) = event("local-path", Some(&local_path_class()), false, &[]);
        assert_eq!(reason, "ExternalProvisioning");
        assert!(msg.starts_with(
            "Waiting for a volume to be created either by the external provisioner 'rancher.io/local-path' or manually"
        ));
    }

    #[test]
    fn a_retained_volume_still_bound_to_its_deleted_claim_is_explained() {
        // The claim was deleted; the Retain volume is Released and still names it.
        let mut released = pv("kept", "1Gi", &["ReadWriteOnce"], "manual");
        let spec = released.spec.get_or_insert_default();
        spec.persistent_volume_reclaim_policy = Some("Retain".into());
        spec.claim_ref =
            serde_json::from_value(json!({"namespace": "default", "name": "old", "uid": "u-old"}))
                .ok();
        released.status.get_or_insert_default().phase = Some("Released".into());
        let vols = vec![released];
        // A new claim does not get it...
        let c = pvc("1Gi", &["ReadWriteOnce"], "manual");
        assert_eq!(names(find_best_match(&c, &vols, false, None)), None);
        // ...not even by name, and is told why.
        let mut c = pvc("1Gi", &["ReadWriteOnce"], "manual");
        c.spec.get_or_insert_default().volume_name = Some("kept".into());
        assert!(!prebound_to(&vols[0], &c));
        assert_eq!(names(find_best_match(&c, &vols, false, None)), None);
        let (kind, reason, msg) = bound_elsewhere_event("kept");
        assert_eq!(
            (format!("{kind:?}"), reason, msg.as_str()),
            (
                "Warning".into(),
                "FailedBinding",
                "volume \"kept\" already bound to a different claim."
            )
        );
    }
}
