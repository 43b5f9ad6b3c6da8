//! The built-in local-path provisioner (rancher's local-path-provisioner, as k3s ships it).
//!
//! Provisioning: for a claim of a `rancher.io/local-path` class on the node the scheduler chose,
//! a `hostPath` volume `pvc-<claim uid>` of type `DirectoryOrCreate` at
//! `<local-path dir>/<pv>_<namespace>_<claim>` (rancher's folder name) with node affinity to that
//! node, the class's reclaim policy, and `claimRef` already naming the claim. The directory is
//! created by the node's kubelet when a pod mounts the volume (rancher uses a helper pod for
//! this; the kubelet is Lotse's node agent and creates `DirectoryOrCreate` paths anyway).
//!
//! Where on the node: rancher's `nodePathMap` in the ConfigMap `local-path-config`
//! (`kube-system`, key `config.json`) when it exists — the first path of the node's entry, else
//! of `DEFAULT_PATH_FOR_NON_LISTED_NODES` — else the controllers' local-path directory (k3s:
//! `<data-dir>/storage`). Nodes whose data dir differs (a `lotse join --data-dir`) get an entry
//! of their own there.
//!
//! Deletion (reclaim policy Delete): as rancher's provisioner, a helper pod
//! `helper-pod-delete-<pv>` in `kube-system`, placed directly on the volume's node, mounts the
//! parent directory and removes the volume's directory; once it has succeeded the pod is
//! removed and the caller deletes the PersistentVolume. Capacity is not enforced: the
//! directory may grow beyond the claim's request, as with rancher's provisioner.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use super::binder::Ctx;
use super::*;
use crate::events::EventType;

/// Namespace of the deletion helper pods (k3s runs the provisioner in kube-system).
pub const HELPER_NAMESPACE: &str = "kube-system";
/// Volume annotation recording the node the volume lives on (rancher's).
pub const ANN_SELECTED_NODE_LOCAL: &str = "local.path.provisioner/selected-node";

const COMPONENT: &str = "rancher.io/local-path_lotse";

/// Rancher's configuration ConfigMap (in [`HELPER_NAMESPACE`], as k3s deploys it).
pub const CONFIG_MAP: &str = "local-path-config";
/// The `nodePathMap` entry for nodes without one of their own.
pub const DEFAULT_NODE: &str = "DEFAULT_PATH_FOR_NON_LISTED_NODES";

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Config {
    #[serde(default)]
    node_path_map: Vec<NodePath>,
}

#[derive(serde::Deserialize)]
struct NodePath {
    node: String,
    #[serde(default)]
    paths: Vec<String>,
}

/// The directory for volumes on `node` from rancher's `config.json` (None: no config, so the
/// built-in directory), or rancher's error when the config has no path for the node.
pub fn configured_dir(config_json: Option<&str>, node: &str) -> Result<Option<PathBuf>, String> {
    let Some(text) = config_json else {
        return Ok(None);
    };
    let config: Config =
        serde_json::from_str(text).map_err(|e| format!("invalid {CONFIG_MAP} config.json: {e}"))?;
    let entry = config
        .node_path_map
        .iter()
        .find(|e| e.node == node)
        .or_else(|| config.node_path_map.iter().find(|e| e.node == DEFAULT_NODE))
        .ok_or_else(|| {
            format!("config doesn't contain node {node}, and no {DEFAULT_NODE} available")
        })?;
    entry
        .paths
        .first()
        .map(|p| Some(PathBuf::from(p)))
        .ok_or_else(|| format!("no local path available on node {node}"))
}

/// The volume name for a claim (external-provisioner's `pvc-<uid>`).
pub fn volume_name(pvc: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", pvc.metadata.uid.as_deref().unwrap_or_default())
}

/// The volume's directory: `<dir>/<pv>_<namespace>_<claim>`.
pub fn volume_path(dir: &Path, pv: &str, pvc: &PersistentVolumeClaim) -> String {
    dir.join(format!(
        "{pv}_{}_{}",
        pvc.namespace().unwrap_or_default(),
        pvc.name_any()
    ))
    .to_string_lossy()
    .into_owned()
}

/// The PersistentVolume provisioned for `pvc` on `node`.
pub fn volume_for(
    dir: &Path,
    pvc: &PersistentVolumeClaim,
    class: &StorageClass,
    node: &str,
) -> Result<PersistentVolume, crate::Error> {
    let name = volume_name(pvc);
    let spec = pvc.spec.clone().unwrap_or_default();
    let request = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_else(|| "0".into());
    let v = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "annotations": {
                ANN_PROVISIONED_BY: LOCAL_PATH_PROVISIONER,
                ANN_SELECTED_NODE_LOCAL: node,
            },
        },
        "spec": {
            "accessModes": spec.access_modes.unwrap_or_default(),
            "capacity": {"storage": request},
            "claimRef": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": pvc.namespace(), "name": pvc.name_any(),
                "uid": pvc.metadata.uid, "resourceVersion": pvc.metadata.resource_version,
            },
            "hostPath": {"path": volume_path(dir, &name, pvc), "type": "DirectoryOrCreate"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}},
            "persistentVolumeReclaimPolicy": class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into()),
            "storageClassName": class.metadata.name,
            "volumeMode": spec.volume_mode.unwrap_or_else(|| "Filesystem".into()),
            "mountOptions": class.mount_options,
        },
    });
    Ok(serde_json::from_value(v)?)
}

/// Provisions the claim's volume (or finds the one provisioned before). None when it cannot
/// be provisioned (the claim gets a `ProvisioningFailed` event).
pub(super) async fn provision(
    ctx: &Ctx,
    pvc: &PersistentVolumeClaim,
    class: &StorageClass,
    node: Option<&str>,
) -> Result<Option<PersistentVolume>, crate::Error> {
    let Some(node) = node else {
        ctx.recorder.record(
            pvc,
            COMPONENT,
            EventType::Warning,
            "ProvisioningFailed",
            "failed to provision volume with StorageClass \"".to_string()
                + class.metadata.name.as_deref().unwrap_or_default()
                + "\": configuration error, no node was specified",
        );
        return Ok(None);
    };
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let name = volume_name(pvc);
    // Provisioned before: the watch cache has it (else the create below answers 409).
    if let Some(existing) = ctx
        .volumes
        .get(&kube::runtime::reflector::ObjectRef::new(&name))
    {
        return Ok(Some(existing.as_ref().clone()));
    }
    let claim = format!("{}/{}", pvc.namespace().unwrap_or_default(), pvc.name_any());
    ctx.recorder.record(
        pvc,
        COMPONENT,
        EventType::Normal,
        "Provisioning",
        format!("External provisioner is provisioning volume for claim \"{claim}\""),
    );
    ctx.ready.local_path_config.wait().await;
    let config = ctx
        .local_path_config
        .get(&kube::runtime::reflector::ObjectRef::new(CONFIG_MAP).within(HELPER_NAMESPACE));
    let config_json = config
        .as_ref()
        .and_then(|c| c.data.as_ref())
        .and_then(|d| d.get("config.json"))
        .map(String::as_str);
    let dir = match configured_dir(config_json, node) {
        Ok(dir) => dir.unwrap_or_else(|| ctx.settings.local_path_dir.clone()),
        Err(e) => {
            ctx.recorder.record(
                pvc,
                COMPONENT,
                EventType::Warning,
                "ProvisioningFailed",
                format!(
                    "failed to provision volume with StorageClass \"{}\": {e}",
                    class.metadata.name.as_deref().unwrap_or_default()
                ),
            );
            return Ok(None);
        }
    };
    let pv = volume_for(&dir, pvc, class, node)?;
    let created = match api.create(&PostParams::default(), &pv).await {
        Ok(v) => v,
        Err(kube::Error::Api(e)) if e.code == 409 => api.get(&name).await?,
        Err(e) => {
            ctx.recorder.record(
                pvc,
                COMPONENT,
                EventType::Warning,
                "ProvisioningFailed",
                format!(
                    "failed to provision volume with StorageClass \"{}\": {e}",
                    class.metadata.name.as_deref().unwrap_or_default()
                ),
            );
            return Err(e.into());
        }
    };
    tracing::info!(%claim, volume = %name, %node, "provisioned local-path volume");
    ctx.recorder.record(
        pvc,
        COMPONENT,
        EventType::Normal,
        "ProvisioningSucceeded",
        format!("Successfully provisioned volume {name}"),
    );
    Ok(Some(created))
}

/// The node a local-path volume lives on: rancher's annotation, else its node affinity.
pub fn volume_node(pv: &PersistentVolume) -> Option<String> {
    if let Some(n) = pv.annotations().get(ANN_SELECTED_NODE_LOCAL) {
        return Some(n.clone());
    }
    let req = pv
        .spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?;
    req.node_selector_terms
        .iter()
        .flat_map(|t| t.match_expressions.iter().flatten())
        .find(|e| e.key == "kubernetes.io/hostname" && e.operator == "In")
        .and_then(|e| e.values.as_ref()?.first().cloned())
}

/// The helper pod that removes `path` on `node`.
pub fn delete_helper_pod(
    pv: &str,
    node: &str,
    path: &str,
    image: &str,
) -> Result<Pod, crate::Error> {
    let p = Path::new(path);
    let parent = p
        .parent()
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".into());
    let base = p
        .file_name()
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_default();
    let v = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("helper-pod-delete-{pv}"),
            "namespace": HELPER_NAMESPACE,
            "labels": {"app.kubernetes.io/managed-by": "local-path-provisioner"},
        },
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{
                "name": "helper-pod",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["rm", "-rf", format!("/data/{base}")],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }],
            "volumes": [{"name": "data", "hostPath": {"path": parent, "type": "DirectoryOrCreate"}}],
        },
    });
    Ok(serde_json::from_value(v)?)
}

/// Removes a released volume's directory on its node. True once it is gone.
pub(super) async fn delete_directory(
    ctx: &Ctx,
    pv: &PersistentVolume,
) -> Result<bool, crate::Error> {
    let path = pv
        .spec
        .as_ref()
        .and_then(|s| {
            s.host_path
                .as_ref()
                .map(|h| h.path.clone())
                .or_else(|| s.local.as_ref().map(|l| l.path.clone()))
        })
        .unwrap_or_default();
    let Some(node) = volume_node(pv) else {
        // Nothing says where the directory is; nothing can be removed.
        return Ok(true);
    };
    if path.is_empty() || Path::new(&path).file_name().is_none() {
        return Ok(true);
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), HELPER_NAMESPACE);
    let name = format!("helper-pod-delete-{}", pv.name_any());
    match pods.get_opt(&name).await? {
        None => {
            let pod = delete_helper_pod(&pv.name_any(), &node, &path, &ctx.settings.helper_image)?;
            match pods.create(&PostParams::default(), &pod).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            Ok(false)
        }
        Some(p) => match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Succeeded") => {
                let _ = pods.delete(&name, &DeleteParams::background()).await;
                Ok(true)
            }
            Some("Failed") => {
                ctx.recorder.record(
                    pv,
                    COMPONENT,
                    EventType::Warning,
                    "VolumeFailedDelete",
                    format!(
                        "failed to delete volume {}: helper pod {name} failed",
                        pv.name_any()
                    ),
                );
                let _ = pods.delete(&name, &DeleteParams::background()).await;
                Ok(false)
            }
            _ => Ok(false),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisioned_volume_shape() {
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "db", "uid": "1234"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "local-path"}
        }))
        .unwrap_or_default();
        let pv = volume_for(
            Path::new("/var/lib/lotse/storage"),
            &pvc,
            &local_path_class(),
            "node1",
        )
        .unwrap_or_default();
        assert_eq!(pv.name_any(), "pvc-1234");
        let spec = pv.spec.clone().unwrap_or_default();
        let hp = spec.host_path.clone().unwrap_or_default();
        assert_eq!(hp.path, "/var/lib/lotse/storage/pvc-1234_db_data");
        assert_eq!(hp.type_.as_deref(), Some("DirectoryOrCreate"));
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Delete")
        );
        assert_eq!(spec.storage_class_name.as_deref(), Some("local-path"));
        assert_eq!(spec.claim_ref.and_then(|r| r.uid).as_deref(), Some("1234"));
        assert_eq!(volume_node(&pv).as_deref(), Some("node1"));
        assert!(volume_fits_node(&pv, &hostname_labels("node1")));
        let helper =
            delete_helper_pod("pvc-1234", "node1", &hp.path, "busybox").unwrap_or_default();
        let c = helper.spec.clone().unwrap_or_default().containers;
        assert_eq!(
            c[0].command.clone().unwrap_or_default(),
            ["rm", "-rf", "/data/pvc-1234_db_data"]
        );
        let vols = helper.spec.unwrap_or_default().volumes.unwrap_or_default();
        assert_eq!(
            vols[0].host_path.as_ref().map(|h| h.path.as_str()),
            Some("/var/lib/lotse/storage")
        );
    }

    #[test]
    fn node_path_map_as_rancher_reads_it() {
        let cfg = r#"{"nodePathMap":[
            {"node":"DEFAULT_PATH_FOR_NON_LISTED_NODES","paths":["/var/lib/lotse/storage"]},
            {"node":"mn-2","paths":["/data/nodes/mn-2/storage","/other"]},
            {"node":"full","paths":[]}]}"#;
        assert_eq!(configured_dir(None, "n1"), Ok(None));
        assert_eq!(
            configured_dir(Some(cfg), "mn-2"),
            Ok(Some(PathBuf::from("/data/nodes/mn-2/storage")))
        );
        assert_eq!(
            configured_dir(Some(cfg), "mn-3"),
            Ok(Some(PathBuf::from("/var/lib/lotse/storage")))
        );
        assert_eq!(
            configured_dir(Some(cfg), "full"),
            Err("no local path available on node full".into())
        );
        assert_eq!(
            configured_dir(Some(r#"{"nodePathMap":[]}"#), "n1"),
            Err(
                "config doesn't contain node n1, and no DEFAULT_PATH_FOR_NON_LISTED_NODES available"
                    .into()
            )
        );
        assert!(configured_dir(Some("{"), "n1").is_err());
    }
}
