//! Binding: `POST pods/{name}/binding` with many requests in flight at once, after VolumeBinding's
//! PreBind has had the pod's `WaitForFirstConsumer` claims bound on the chosen node.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Binding, ObjectReference, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};

/// Claim annotation naming the node the scheduler chose for a `WaitForFirstConsumer` claim.
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// How long PreBind waits for the PV controller to bind a claim (kube-scheduler's
/// `bindTimeoutSeconds` is 600; a local provisioner answers in well under a second).
pub const VOLUME_BIND_TIMEOUT: Duration = Duration::from_secs(120);

/// VolumeBinding's PreBind: writes `node` onto each unbound claim as its selected node, then
/// waits until every claim is bound. An error is the reason to retry the pod later.
pub async fn bind_volumes(
    client: &Client,
    namespace: &str,
    claims: &[String],
    node: &str,
) -> Result<(), String> {
    if claims.is_empty() {
        return Ok(());
    }
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    for c in claims {
        let current = api.get(c).await.map_err(|e| e.to_string())?;
        let bound = current
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .is_some_and(|v| !v.is_empty());
        let selected = current
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANN_SELECTED_NODE))
            .map(String::as_str);
        if bound || selected == Some(node) {
            continue;
        }
        let patch = serde_json::json!({"metadata": {"annotations": {ANN_SELECTED_NODE: node}}});
        api.patch(c, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(|e| e.to_string())?;
    }
    let deadline = Instant::now() + VOLUME_BIND_TIMEOUT;
    let mut pending: Vec<&String> = claims.iter().collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for c in pending {
            let claim = api.get(c).await.map_err(|e| e.to_string())?;
            let phase = claim.status.as_ref().and_then(|s| s.phase.as_deref());
            if phase != Some("Bound") {
                still.push(c);
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "binding volumes: timed out waiting for the condition (claims {:?})",
                pending
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
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
