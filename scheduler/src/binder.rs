//! Binding: `POST pods/{name}/binding` with many requests in flight at once, after VolumeBinding's
//! PreBind has had the pod's `WaitForFirstConsumer` claims bound on the chosen node.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Binding, ObjectReference, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};

/// Claim annotation naming the node the scheduler chose for a `WaitForFirstConsumer` claim.
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// How long PreBind waits for the PV controller to bind a claim (kube-scheduler's
/// `bindTimeoutSeconds` is 600; a local provisioner answers in well under a second).
pub const VOLUME_BIND_TIMEOUT: Duration = Duration::from_secs(120);

/// What PreBind needs to know of a claim, from the scheduler's cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimState {
    /// `spec.volumeName` is set.
    pub has_volume: bool,
    /// `status.phase` is `Bound`.
    pub bound: bool,
    /// The `volume.kubernetes.io/selected-node` annotation.
    pub selected_node: Option<String>,
}

impl ClaimState {
    /// The state of `claim`.
    pub fn of(claim: &PersistentVolumeClaim) -> Self {
        ClaimState {
            has_volume: claim
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .is_some_and(|v| !v.is_empty()),
            bound: claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"),
            selected_node: claim
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANN_SELECTED_NODE))
                .cloned(),
        }
    }
}

/// VolumeBinding's PreBind: writes `node` onto each unbound claim as its selected node, then
/// waits until every claim is bound. `state` reads a claim from the scheduler's watch cache
/// (None: not there) and `changed` ticks whenever that cache's claims or volumes change, so
/// the wait costs the apiserver nothing (kube-scheduler polls its cache every second; waking on
/// the change itself answers sooner). An error is the reason to retry the pod later.
pub async fn bind_volumes(
    client: &Client,
    namespace: &str,
    claims: &[String],
    node: &str,
    state: impl Fn(&str) -> Option<ClaimState>,
    mut changed: tokio::sync::watch::Receiver<u64>,
) -> Result<(), String> {
    if claims.is_empty() {
        return Ok(());
    }
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    for c in claims {
        let Some(current) = state(c) else {
            return Err(format!("persistentvolumeclaim \"{c}\" not found"));
        };
        if current.has_volume || current.selected_node.as_deref() == Some(node) {
            continue;
        }
        let patch = serde_json::json!({"metadata": {"annotations": {ANN_SELECTED_NODE: node}}});
        api.patch(c, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(|e| e.to_string())?;
    }
    let pending = |state: &dyn Fn(&str) -> Option<ClaimState>| -> Vec<String> {
        claims
            .iter()
            .filter(|c| !state(c).is_some_and(|s| s.bound))
            .cloned()
            .collect()
    };
    let deadline = tokio::time::Instant::now() + VOLUME_BIND_TIMEOUT;
    loop {
        changed.borrow_and_update();
        let waiting = pending(&state);
        if waiting.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, changed.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err("the scheduler's storage cache is gone".into()),
            Err(_) => {
                return Err(format!(
                    "binding volumes: timed out waiting for the condition (claims {waiting:?})"
                ));
            }
        }
    }
}

/// What the API said about a binding.
#[derive(Debug, PartialEq, Eq)]
pub enum BindOutcome {
    /// Bound.
    Bound,
    /// The pod is gone or already bound elsewhere; nothing to retry.
    Gone,
    /// Transient failure; retry later.
    Retry(String),
}

/// Binds `pod` to `node`.
pub async fn bind(client: &Client, pod: &Pod, node: &str) -> BindOutcome {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            ..Default::default()
        },
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    match api
        .create_subresource::<Binding, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await
    {
        Ok(_) => BindOutcome::Bound,
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => BindOutcome::Gone,
        Err(e) => BindOutcome::Retry(e.to_string()),
    }
}
