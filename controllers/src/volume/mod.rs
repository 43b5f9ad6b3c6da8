//! Storage controllers, as kube-controller-manager's `persistentvolume-binder`,
//! `persistentvolume-protection` and `persistentvolumeclaim-protection` plus the local-path
//! provisioner k3s ships (rancher's local-path-provisioner):
//!
//! - [`binder`]: binds claims to matching volumes and keeps the phases of both (PV Available /
//!   Bound / Released / Failed, PVC Pending / Bound / Lost), reclaims released volumes;
//! - [`local_path`]: provisions `hostPath` volumes under `<data-dir>/storage` for claims of a
//!   class whose provisioner is `rancher.io/local-path`, and deletes their directories (with a
//!   helper pod on the volume's node, as rancher's provisioner does) when reclaimed;
//! - the protection finalizers added by admission are removed here once a claim is used by no
//!   pod and once a volume is no longer bound.
//!
//! At start the `local-path` StorageClass (the default class, `WaitForFirstConsumer`) is
//! created when missing, as k3s deploys it from a manifest.

pub mod binder;
pub mod local_path;

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

use crate::Error;
use crate::events::Recorder;

/// Finalizer keeping a claim while a pod uses it.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// Finalizer keeping a volume while it is bound.
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";
/// Claim annotation: the binding is complete.
pub const ANN_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// Claim/volume annotation: the controller (not the user) set `volumeName`/`claimRef`.
pub const ANN_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// Claim annotation set by the scheduler for `WaitForFirstConsumer` classes.
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Claim annotation naming the provisioner expected to provision it.
pub const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
/// The beta form of [`ANN_STORAGE_PROVISIONER`], still set by Kubernetes.
pub const ANN_BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// Volume annotation naming the provisioner that created it.
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// The deprecated class annotation (wins over `storageClassName`).
pub const ANN_BETA_CLASS: &str = "volume.beta.kubernetes.io/storage-class";
/// The default-class annotation of StorageClasses.
pub const ANN_DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
/// Name of the built-in class.
pub const LOCAL_PATH_CLASS: &str = "local-path";
/// Provisioner name of the built-in class (rancher's, as k3s ships it).
pub const LOCAL_PATH_PROVISIONER: &str = "rancher.io/local-path";

/// What the storage controllers need to know.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Directory on every node under which local-path volumes are created.
    pub local_path_dir: PathBuf,
    /// Image of the helper pod that removes a deleted volume's directory on its node.
    pub helper_image: String,
}

/// Runs the storage controllers until one of them stops.
pub async fn run(client: Client, recorder: Recorder, settings: Settings) -> Result<(), Error> {
    ensure_local_path_class(&client).await;
    binder::run(client, recorder, settings).await
}

/// Creates the `local-path` StorageClass when it does not exist (never overwrites it, so an
/// administrator may remove its default annotation).
async fn ensure_local_path_class(client: &Client) {
    let api: Api<StorageClass> = Api::all(client.clone());
    for attempt in 0..30 {
        let class = local_path_class();
        match api.create(&PostParams::default(), &class).await {
            Ok(_) => {
                tracing::info!(class = LOCAL_PATH_CLASS, "created the default StorageClass");
                return;
            }
            Err(kube::Error::Api(e)) if e.code == 409 => return,
            Err(e) => {
                tracing::warn!(error = %e, attempt, "could not create StorageClass local-path; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
        }
    }
}

/// The `local-path` class as k3s's `local-storage.yaml` declares it.
pub fn local_path_class() -> StorageClass {
    StorageClass {
        metadata: ObjectMeta {
            name: Some(LOCAL_PATH_CLASS.into()),
            annotations: Some([(ANN_DEFAULT_CLASS.to_string(), "true".to_string())].into()),
            ..Default::default()
        },
        provisioner: LOCAL_PATH_PROVISIONER.into(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some("WaitForFirstConsumer".into()),
        ..Default::default()
    }
}

/// A storage quantity in bytes (rounded up); None when malformed.
pub fn bytes(q: &str) -> Option<i128> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult: i128 = match suffix {
        "" => 1,
        "m" => return parse_scaled(num, 1).map(|v| (v + 999) / 1000),
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        s if s.starts_with(['e', 'E']) => 10i128.checked_pow(s[1..].parse().ok()?)?,
        _ => return None,
    };
    parse_scaled(num, mult)
}

fn parse_scaled(num: &str, mult: i128) -> Option<i128> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let int_v: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut v = int_v.checked_mul(mult)?;
    if !frac.is_empty() {
        let scale = 10i128.checked_pow(frac.len() as u32)?;
        let f: i128 = frac.parse().ok()?;
        v += (f * mult + scale - 1) / scale;
    }
    Some(v)
}

/// The storage request of a claim in bytes (0 when missing).
pub fn claim_request(pvc: &PersistentVolumeClaim) -> i128 {
    pvc.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| bytes(&q.0))
        .unwrap_or(0)
}

/// The storage capacity of a volume in bytes (0 when missing).
pub fn volume_capacity(pv: &PersistentVolume) -> i128 {
    pv.spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| bytes(&q.0))
        .unwrap_or(0)
}

/// The class of a claim: the beta annotation, else `spec.storageClassName` ("" = none).
pub fn claim_class(pvc: &PersistentVolumeClaim) -> String {
    pvc.annotations()
        .get(ANN_BETA_CLASS)
        .cloned()
        .unwrap_or_else(|| {
            pvc.spec
                .as_ref()
                .and_then(|s| s.storage_class_name.clone())
                .unwrap_or_default()
        })
}

/// The class of a volume: the beta annotation, else `spec.storageClassName`.
pub fn volume_class(pv: &PersistentVolume) -> String {
    pv.annotations()
        .get(ANN_BETA_CLASS)
        .cloned()
        .unwrap_or_else(|| {
            pv.spec
                .as_ref()
                .and_then(|s| s.storage_class_name.clone())
                .unwrap_or_default()
        })
}

/// Whether the volume's required node affinity admits a node with these labels (no affinity:
/// every node).
pub fn volume_fits_node(pv: &PersistentVolume, node_labels: &BTreeMap<String, String>) -> bool {
    let Some(req) = pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    else {
        return true;
    };
    req.node_selector_terms.iter().any(|t| {
        let exprs_ok =
            t.match_expressions.iter().flatten().all(|e| {
                lotse_core::selectors::node_requirement_matches(e, node_labels.get(&e.key))
            });
        // A term with neither expressions nor fields selects nothing (Kubernetes' semantics).
        let has_any = t.match_expressions.as_ref().is_some_and(|e| !e.is_empty())
            || t.match_fields.as_ref().is_some_and(|f| !f.is_empty());
        has_any && exprs_ok
    })
}

/// The labels a node named `node` is assumed to carry when only its name is known.
pub fn hostname_labels(node: &str) -> BTreeMap<String, String> {
    [("kubernetes.io/hostname".to_string(), node.to_string())].into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_in_bytes() {
        assert_eq!(bytes("1Gi"), Some(1 << 30));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("1.5Ki"), Some(1536));
        assert_eq!(bytes("100"), Some(100));
        assert_eq!(bytes("1500m"), Some(2));
        assert_eq!(bytes("1e3"), Some(1000));
        assert_eq!(bytes("x"), None);
    }

    #[test]
    fn node_affinity_of_volumes() {
        let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "v"},
            "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}}}
        }))
        .unwrap_or_default();
        assert!(volume_fits_node(&pv, &hostname_labels("n1")));
        assert!(!volume_fits_node(&pv, &hostname_labels("n2")));
        assert!(volume_fits_node(
            &PersistentVolume::default(),
            &hostname_labels("n2")
        ));
    }
}
