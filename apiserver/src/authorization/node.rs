//! Kubernetes' Node authorizer for kubelets (`system:node:<name>` in `system:nodes`): a kubelet
//! may read a Secret, ConfigMap, PersistentVolumeClaim or PersistentVolume, and request a token
//! for a ServiceAccount, only when a pod bound to its node references that object. Kubernetes
//! keeps a graph for this; Lotse walks the pods of the namespace in the watch cache, which holds
//! the same edges (pod → secret/configmap/PVC/serviceaccount; PVC → PV through `spec.volumeName`).
//!
//! Every other request of a kubelet is left to RBAC (the `system:node` ClusterRole). Pod deletes
//! and evictions are confined to the kubelet's own pods here too (Kubernetes' NodeRestriction
//! does this at admission; deletes carry no object through Lotse's admission chain).

use std::collections::BTreeSet;

use serde_json::Value;

use super::{Attributes, forbidden_error};
use crate::cache::reader::CacheReader;
use crate::error::{ApiError, ApiResult};
use crate::registry::resources::{PERSISTENTVOLUMECLAIMS, PODS};

/// The kube-root-ca.crt ConfigMap holds the cluster's public CA certificate. Lotse's kubelet
/// reads it from kube-system at start (Kubernetes' kubelet reads it through pods' projected
/// volumes instead), so it is readable by every kubelet.
const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";

/// What a pod references, by kind.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PodReferences {
    /// Secret names (volumes, projected sources, env, envFrom, imagePullSecrets, CSI refs).
    pub secrets: BTreeSet<String>,
    /// ConfigMap names (volumes, projected sources, env, envFrom).
    pub configmaps: BTreeSet<String>,
    /// PersistentVolumeClaim names (claims and generic ephemeral volumes).
    pub pvcs: BTreeSet<String>,
    /// The pod's ServiceAccount.
    pub service_account: String,
}

fn s(v: &Value, ptr: &str) -> Option<String> {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
}

/// The objects `pod` references (Kubernetes' node graph edges of one pod).
pub fn pod_references(pod: &Value) -> PodReferences {
    let mut r = PodReferences::default();
    let Some(spec) = pod.get("spec") else {
        return r;
    };
    r.service_account = s(spec, "/serviceAccountName")
        .or_else(|| s(spec, "/serviceAccount"))
        .unwrap_or_else(|| "default".into());
    let pod_name = crate::registry::fields::name(pod);
    for ips in spec
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        r.secrets.extend(s(ips, "/name"));
    }
    for v in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        r.secrets.extend(s(v, "/secret/secretName"));
        r.configmaps.extend(s(v, "/configMap/name"));
        r.pvcs.extend(s(v, "/persistentVolumeClaim/claimName"));
        if v.get("ephemeral").is_some()
            && let Some(vn) = s(v, "/name")
        {
            r.pvcs.insert(format!("{pod_name}-{vn}"));
        }
        r.secrets.extend(s(v, "/csi/nodePublishSecretRef/name"));
        for src in v
            .pointer("/projected/sources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            r.secrets.extend(s(src, "/secret/name"));
            r.configmaps.extend(s(src, "/configMap/name"));
        }
        // Volume plugins with a secretRef (cephfs, rbd, iscsi, azureFile, flexVolume, ...).
        if let Some(m) = v.as_object() {
            for plugin in m.values() {
                r.secrets.extend(s(plugin, "/secretRef/name"));
            }
        }
    }
    for c in crate::registry::resources::pod::all_containers(spec) {
        for ef in c
            .get("envFrom")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            r.configmaps.extend(s(ef, "/configMapRef/name"));
            r.secrets.extend(s(ef, "/secretRef/name"));
        }
        for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
            r.configmaps.extend(s(e, "/valueFrom/configMapKeyRef/name"));
            r.secrets.extend(s(e, "/valueFrom/secretKeyRef/name"));
        }
    }
    r
}

/// Pods in `namespace` (every namespace when empty) bound to `node`.
async fn pods_on(reader: &CacheReader, node: &str, namespace: &str) -> ApiResult<Vec<Value>> {
    // Cluster-scoped objects (volumes) are reached from pods of every namespace.
    let prefix = if namespace.is_empty() {
        format!("/registry/{}/", PODS.storage_prefix)
    } else {
        format!("/registry/{}/{namespace}/", PODS.storage_prefix)
    };
    let cacher = reader.cacher(&PODS)?;
    let list = cacher.list(&prefix, None, 0, &|_| true).await;
    Ok(list
        .items
        .iter()
        .filter_map(|o| serde_json::from_slice::<Value>(&o.raw).ok())
        .filter(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node))
        .collect())
}

/// Whether a claim referenced by one of `pods` is bound to the volume `pv`.
async fn pv_reachable(reader: &CacheReader, pods: &[Value], pv: &str) -> ApiResult<bool> {
    for p in pods {
        let ns = crate::registry::fields::namespace(p);
        for claim in pod_references(p).pvcs {
            let pvc = reader
                .cached_or_stored(&PERSISTENTVOLUMECLAIMS, ns, &claim)
                .await?;
            if pvc
                .as_ref()
                .and_then(|c| c.pointer("/spec/volumeName"))
                .and_then(Value::as_str)
                == Some(pv)
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn no_relationship(node: &str) -> String {
    format!("no relationship found between node '{node}' and this object")
}

/// Kubernetes' Node authorizer for the request `a` when it comes from a kubelet and concerns an
/// object the node graph guards: `Some(Ok(reason))` allows, `Some(Err(reason))` denies, `None`
/// leaves the decision to RBAC.
pub async fn decide(
    reader: &CacheReader,
    a: &Attributes,
) -> ApiResult<Option<Result<String, String>>> {
    let Some(node) = a.user.node_name() else {
        return Ok(None);
    };
    if !a.resource_request || !a.api_group.is_empty() {
        return Ok(None);
    }
    let read = matches!(a.verb.as_str(), "get" | "list" | "watch");
    let kind = match (a.resource.as_str(), a.subresource.as_str()) {
        ("secrets", "") => "secret",
        ("configmaps", "") => "configmap",
        ("persistentvolumeclaims", "") => "pvc",
        ("persistentvolumes", "") => "pv",
        ("serviceaccounts", "token") => "token",
        _ => return Ok(None),
    };
    let deny = || Ok(Some(Err(no_relationship(node))));
    if kind == "token" {
        if a.verb != "create" {
            return Ok(None);
        }
    } else if !read {
        return Ok(Some(Err(format!(
            "node '{node}' can only get individual resources of this type"
        ))));
    }
    if a.name.is_empty() {
        return Ok(Some(Err(format!(
            "node '{node}' can only get individual resources of this type"
        ))));
    }
    if kind == "configmap" && a.name == ROOT_CA_CONFIGMAP {
        return Ok(Some(Ok(String::new())));
    }
    let pods = pods_on(reader, node, &a.namespace).await?;
    let found = match kind {
        "secret" => pods
            .iter()
            .any(|p| pod_references(p).secrets.contains(&a.name)),
        "configmap" => pods
            .iter()
            .any(|p| pod_references(p).configmaps.contains(&a.name)),
        "pvc" => pods
            .iter()
            .any(|p| pod_references(p).pvcs.contains(&a.name)),
        "token" => pods
            .iter()
            .any(|p| pod_references(p).service_account == a.name),
        // A PV is reachable only through a claim of one of the node's pods bound to it.
        _ => pv_reachable(reader, &pods, &a.name).await?,
    };
    if found {
        Ok(Some(Ok(String::new())))
    } else {
        deny()
    }
}

/// The 403 for a request the Node authorizer denied: Kubernetes' forbidden message followed by
/// the authorizer's reason.
pub fn forbidden(a: &Attributes, reason: &str) -> ApiError {
    forbidden_error(
        &a.api_group,
        &a.resource,
        &a.name,
        &format!("{}: {reason}", a.forbidden_message()),
    )
}

/// NodeRestriction for requests without an object to admit: a kubelet may delete or evict only
/// pods bound to its node.
pub async fn restrict(reader: &CacheReader, a: &Attributes) -> ApiResult<()> {
    let Some(node) = a.user.node_name() else {
        return Ok(());
    };
    if !a.resource_request || !a.api_group.is_empty() || a.resource != "pods" || a.name.is_empty() {
        return Ok(());
    }
    let what = match (a.verb.as_str(), a.subresource.as_str()) {
        ("delete", "") => "delete",
        ("create", "eviction") => "evict",
        _ => return Ok(()),
    };
    let Some(pod) = reader
        .cached_or_stored(&PODS, &a.namespace, &a.name)
        .await?
    else {
        // Not found: the handler answers 404 as it would for anyone allowed to ask.
        return Ok(());
    };
    if pod.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node) {
        return Err(forbidden_error(
            "",
            "pods",
            &a.name,
            &format!("node {node:?} can only {what} pods with spec.nodeName set to itself"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_of_a_pod() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {
            "serviceAccountName": "donald",
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [
                {"name": "a", "secret": {"secretName": "vol-secret"}},
                {"name": "b", "configMap": {"name": "vol-cm"}},
                {"name": "c", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "d", "ephemeral": {"volumeClaimTemplate": {}}},
                {"name": "e", "projected": {"sources": [{"secret": {"name": "proj-secret"}}, {"configMap": {"name": "kube-root-ca.crt"}}]}},
                {"name": "f", "cephfs": {"secretRef": {"name": "ceph"}}},
            ],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init-env"}}]}],
            "containers": [{"name": "c", "env": [
                {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}},
                {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}},
            ]}],
        }});
        let r = pod_references(&pod);
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            r.secrets,
            set(&[
                "ceph",
                "env-secret",
                "init-env",
                "proj-secret",
                "pull",
                "vol-secret"
            ])
        );
        assert_eq!(r.configmaps, set(&["env-cm", "kube-root-ca.crt", "vol-cm"]));
        assert_eq!(r.pvcs, set(&["data", "p-d"]));
        assert_eq!(r.service_account, "donald");
        assert_eq!(
            pod_references(&json!({"spec": {}})).service_account,
            "default"
        );
    }
}
