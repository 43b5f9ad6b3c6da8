//! Helpers shared by controllers: running a reconcile loop, label selectors, pod readiness and
//! availability, owner references (adoption and release).
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryFuture};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::Error;
use crate::events::{EventType, Recorder};
pub use client_tools::informer::{Ready, ReadySetter, readiness};

/// Runs `controller` (kube-runtime's reconcile loop) until its watch streams end: each failed
/// sync of the controller `name` is logged and retried after `retry`. Returns
/// `Error::Stopped(name)`, since a controller that stops is an error for its supervisor.
pub async fn run_controller<K, Ctx, Fut>(
    controller: Controller<K>,
    reconcile: impl FnMut(Arc<K>, Arc<Ctx>) -> Fut,
    ctx: Arc<Ctx>,
    name: &'static str,
    retry: Duration,
) -> Result<(), Error>
where
    K: Clone + Resource<DynamicType = ()> + DeserializeOwned + Debug + Send + Sync + 'static,
    Fut: TryFuture<Ok = Action, Error = Error> + Send + 'static,
{
    controller
        .run(
            reconcile,
            move |obj: Arc<K>, err: &Error, _| {
                let object = obj.meta().name.as_deref().unwrap_or_default();
                tracing::warn!(%object, error = %err, "{name} sync failed; retrying");
                Action::requeue(retry)
            },
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
    Err(Error::Stopped(name))
}

/// What the reconcile of a controller that needs no cache of its own reads: the client and the
/// event recorder.
pub struct Context {
    /// Client of the controller's identity.
    pub client: Client,
    /// Records the controller's Events.
    pub recorder: Recorder,
}

/// Runs the controller `name` over every `P`, woken also when a `C` that a `P` controls changes
/// (kube-runtime's `Controller::owns`), as [`run_controller`] does.
pub async fn run_owning<P, C, Fut>(
    client: Client,
    recorder: Recorder,
    reconcile: impl FnMut(Arc<P>, Arc<Context>) -> Fut,
    name: &'static str,
    retry: Duration,
) -> Result<(), Error>
where
    P: Clone + Resource<DynamicType = ()> + DeserializeOwned + Debug + Send + Sync + 'static,
    C: Clone + Resource<DynamicType = ()> + DeserializeOwned + Debug + Send + Sync + 'static,
    Fut: TryFuture<Ok = Action, Error = Error> + Send + 'static,
{
    let wc = watcher::Config::default();
    let controller = Controller::new(Api::<P>::all(client.clone()), wc.clone())
        .owns(Api::<C>::all(client.clone()), wc);
    let ctx = Arc::new(Context { client, recorder });
    run_controller(controller, reconcile, ctx, name, retry).await
}

/// The current time as a Kubernetes `Time`.
pub fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// Whether `labels` satisfy a label selector (matchLabels and matchExpressions; an empty
/// selector matches everything, as Kubernetes' `LabelSelectorAsSelector`): lotse-core's
/// matcher, so controllers and scheduler select the same pods.
pub use lotse_core::selectors::label_selector_matches as selector_matches;

/// The selector as a `labelSelector` query string (`LabelSelectorAsSelector(...).String()`).
pub use lotse_core::selectors::label_selector_string as selector_query;

/// The owner reference with `controller: true`, if any.
pub fn controller_ref<K: Resource>(obj: &K) -> Option<&OwnerReference> {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// A controller owner reference pointing at `owner` (blockOwnerDeletion set, as Kubernetes does).
pub fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The controllers of kind `O` an event of `child` concerns: its controller if that is an `O`,
/// or, for an orphan, every `O` in its namespace that `selects` it (one of them may adopt it).
pub fn controllers_of<O, C>(
    store: &Store<O>,
    child: &C,
    selects: impl Fn(&O) -> bool,
) -> Vec<ObjectRef<O>>
where
    O: Resource<DynamicType = ()> + Clone,
    C: Resource,
{
    let ns = child.meta().namespace.as_deref().unwrap_or_default();
    if let Some(r) = controller_ref(child) {
        return if r.kind == O::kind(&()) {
            vec![ObjectRef::new(&r.name).within(ns)]
        } else {
            vec![]
        };
    }
    store
        .state()
        .iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(ns))
        .filter(|o| selects(o))
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// Creates a pod for `owner` and records `SuccessfulCreate` or `FailedCreate` on the owner in
/// Kubernetes' words (`RealPodControl.CreatePods`).
pub async fn create_pod<K: Resource<DynamicType = ()>>(
    api: &Api<Pod>,
    pod: &Pod,
    recorder: &Recorder,
    owner: &K,
    component: &str,
) -> Result<Pod, Error> {
    match api.create(&PostParams::default(), pod).await {
        Ok(p) => {
            let name = p.metadata.name.as_deref().unwrap_or_default();
            recorder.record(
                owner,
                component,
                EventType::Normal,
                "SuccessfulCreate",
                format!("Created pod: {name}"),
            );
            Ok(p)
        }
        Err(e) => {
            recorder.record(
                owner,
                component,
                EventType::Warning,
                "FailedCreate",
                format!("Error creating: {e}"),
            );
            Err(e.into())
        }
    }
}

/// Adds a controller reference to `owner` to the object's ownerReferences (Kubernetes'
/// `ControllerRefManager` adoption). `None` when the object changed or went away meanwhile: the
/// next sync decides again.
pub async fn adopt<K, O>(api: &Api<K>, obj: &K, owner: &O) -> Result<Option<K>, Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    O: Resource<DynamicType = ()>,
{
    let mut refs = obj.meta().owner_references.clone().unwrap_or_default();
    refs.push(owner_ref(owner));
    patch_owner_refs(api, obj, refs).await
}

/// Removes the owner `owner_uid` from the object's ownerReferences (Kubernetes'
/// `ControllerRefManager` release). `None` when the object changed or went away meanwhile.
pub async fn release<K>(api: &Api<K>, obj: &K, owner_uid: &str) -> Result<Option<K>, Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let refs: Vec<OwnerReference> = obj
        .meta()
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.uid != owner_uid)
        .cloned()
        .collect();
    patch_owner_refs(api, obj, refs).await
}

/// Sets the object's ownerReferences, guarded by its cached `resourceVersion`.
async fn patch_owner_refs<K>(
    api: &Api<K>,
    obj: &K,
    refs: Vec<OwnerReference>,
) -> Result<Option<K>, Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": obj.meta().resource_version}});
    let name = obj.meta().name.clone().unwrap_or_default();
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(o) => Ok(Some(o)),
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes `status` to the object's status subresource (a merge patch of `status`).
pub async fn patch_status<K, S>(client: &Client, obj: &K, status: &S) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
    S: Serialize,
{
    let api: Api<K> = Api::namespaced(
        client.clone(),
        obj.meta().namespace.as_deref().unwrap_or_default(),
    );
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

/// Whether the object has a deletion timestamp.
pub fn is_deleting<K: Resource>(obj: &K) -> bool {
    obj.meta().deletion_timestamp.is_some()
}

/// Active pods count toward replicas: not terminating and not finished.
pub fn is_pod_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !is_deleting(pod) && phase != Some("Succeeded") && phase != Some("Failed")
}

/// The pod's Ready condition's last transition time if it is Ready.
pub fn pod_ready_since(pod: &Pod) -> Option<jiff::Timestamp> {
    let cond = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    if cond.status != "True" {
        return None;
    }
    Some(
        cond.last_transition_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
    )
}

/// Whether the pod's Ready condition is True.
pub fn is_pod_ready(pod: &Pod) -> bool {
    pod_ready_since(pod).is_some()
}

/// Whether the pod has been Ready for at least `min_ready_seconds` at `now`.
pub fn is_pod_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    match pod_ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(since) => since.as_second() + i64::from(min_ready_seconds) <= now.as_second(),
    }
}

/// Seconds until a Ready pod becomes available, if it is Ready but not yet available.
pub fn seconds_until_available(
    pod: &Pod,
    min_ready_seconds: i32,
    now: jiff::Timestamp,
) -> Option<i64> {
    let since = pod_ready_since(pod)?;
    let left = since.as_second() + i64::from(min_ready_seconds) - now.as_second();
    (left > 0).then_some(left)
}

/// `v` without nulls, empty objects and empty lists (inside arrays, elements are kept), so that
/// values Kubernetes' semantic equality calls equal compare equal.
pub fn pruned(mut v: serde_json::Value) -> serde_json::Value {
    fn prune(v: &mut serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(m) => {
                m.retain(|_, x| !prune(x));
                m.is_empty()
            }
            serde_json::Value::Array(a) => {
                for x in a.iter_mut() {
                    prune(x);
                }
                a.is_empty()
            }
            serde_json::Value::Null => true,
            _ => false,
        }
    }
    prune(&mut v);
    v
}

/// Kubernetes' `rand.SafeEncodeString` alphabet: no vowels, no look-alike characters.
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Encodes a hash the way Kubernetes names pod-template-hash values.
pub fn safe_encode(value: u32) -> String {
    value
        .to_string()
        .bytes()
        .map(|b| SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()] as char)
        .collect()
}

/// 32-bit FNV-1a, the hash Kubernetes uses for pod-template-hash.
pub fn fnv32a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x01000193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selector_match_labels_and_expressions() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["a".into(), "b".into()]),
            }]),
        };
        assert!(selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "a")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "c")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("app", "db"), ("tier", "a")])
        ));
        assert_eq!(selector_query(&sel), "app=web,tier in (a,b)");
        assert!(selector_matches(&LabelSelector::default(), &labels(&[])));
    }

    #[test]
    fn hash_encoding_uses_safe_alphabet() {
        let s = safe_encode(fnv32a(b"template"));
        assert!(s.bytes().all(|b| SAFE_ALPHABET.contains(&b)));
        assert_eq!(fnv32a(b""), 0x811c9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c292c);
    }
}
