//! ServiceAccount admission: pods run as `default` unless they name a ServiceAccount (which must
//! exist), and get the projected API-access volume (token, `ca.crt`, namespace) mounted at
//! `/var/run/secrets/kubernetes.io/serviceaccount` unless automounting is off. A pod that names
//! no `imagePullSecrets` gets the ServiceAccount's.

use serde_json::{Value, json};

use super::{Admit, Handles, Request};
use crate::cache::reader::CacheReader;
use crate::error::{ApiError, ApiResult};
use crate::registry::fields;
use crate::registry::resources::{PODS, SERVICEACCOUNTS};
use async_trait::async_trait;

/// Where the API credentials are mounted.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Token lifetime of the projected token (Kubernetes' 1h + 7s marker).
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3607;

fn random_suffix() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// As Kubernetes: a pod without `imagePullSecrets` gets the names of the ServiceAccount's
/// `imagePullSecrets` (only the names; the kubelet reads the secrets).
fn copy_image_pull_secrets(spec: &mut serde_json::Map<String, Value>, sa: &Value) {
    let has_own = spec
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if has_own {
        return;
    }
    let names: Vec<Value> = sa
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("name").and_then(Value::as_str))
        .map(|n| json!({ "name": n }))
        .collect();
    if !names.is_empty() {
        spec.insert("imagePullSecrets".into(), Value::Array(names));
    }
}

/// Defaults `serviceAccountName`, checks the ServiceAccount, and adds the token volume.
pub async fn admit_pod(reader: &CacheReader, pod: &mut Value) -> ApiResult<()> {
    // Mirror pods (created by kubelets from static manifests) get no service account.
    if pod
        .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
        .is_some()
    {
        return Ok(());
    }
    let ns = fields::namespace(pod).to_string();
    let name = fields::name(pod).to_string();
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let sa_name = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or_else(|| {
            spec.get("serviceAccount")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        })
        .unwrap_or("default")
        .to_string();
    spec.insert("serviceAccountName".into(), json!(sa_name));
    spec.insert("serviceAccount".into(), json!(sa_name));
    let sa = reader
        .cached_or_stored(&SERVICEACCOUNTS, &ns, &sa_name)
        .await?;
    let sa = match sa {
        Some(sa) => Some(sa),
        // The default ServiceAccount is created by the controllers; without them a pod in a new
        // namespace would be rejected until it appears, so only named accounts must exist.
        None if sa_name == "default" => None,
        None => {
            let why = format!(
                "error looking up service account {ns}/{sa_name}: serviceaccount \"{sa_name}\" not found"
            );
            return Err(ApiError::forbidden(&PODS, &name, &why));
        }
    };
    if let Some(sa) = &sa {
        copy_image_pull_secrets(spec, sa);
    }
    let automount = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| {
            sa.as_ref()
                .and_then(|s| s.get("automountServiceAccountToken"))
                .and_then(Value::as_bool)
        })
        .unwrap_or(true);
    if !automount {
        return Ok(());
    }
    let has_mount = |c: &Value| {
        c.get("volumeMounts")
            .and_then(Value::as_array)
            .is_some_and(|ms| {
                ms.iter()
                    .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(MOUNT_PATH))
            })
    };
    let volume_name = format!("kube-api-access-{}", random_suffix());
    let mut mounted = false;
    for key in ["initContainers", "containers"] {
        if let Some(cs) = spec.get_mut(key).and_then(Value::as_array_mut) {
            for c in cs {
                if has_mount(c) {
                    continue;
                }
                if let Some(m) = c.as_object_mut() {
                    let mounts = m.entry("volumeMounts").or_insert_with(|| json!([]));
                    if let Some(a) = mounts.as_array_mut() {
                        a.push(
                            json!({"name": volume_name, "readOnly": true, "mountPath": MOUNT_PATH}),
                        );
                        mounted = true;
                    }
                }
            }
        }
    }
    if mounted {
        let vols = spec.entry("volumes").or_insert_with(|| json!([]));
        if let Some(a) = vols.as_array_mut() {
            a.push(json!({
                "name": volume_name,
                "projected": {
                    "defaultMode": 420,
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                    ],
                },
            }));
        }
    }
    Ok(())
}

/// The ServiceAccount plugin: a new pod gets its ServiceAccount and token volume.
pub struct ServiceAccount;

#[async_trait]
impl Admit for ServiceAccount {
    fn name(&self) -> &'static str {
        "ServiceAccount"
    }

    async fn admit(&self, h: Handles<'_>, r: &Request<'_>, obj: &mut Value) -> ApiResult<()> {
        if r.is_pod_create() {
            admit_pod(h.reader, obj).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_pull_secrets_go_to_pods_that_name_none() {
        let sa = json!({"imagePullSecrets": [{"name": "regcred"}, {"name": "other"}]});
        let mut spec = json!({"containers": []});
        let m = spec.as_object_mut().map(|m| {
            copy_image_pull_secrets(m, &sa);
            m.clone()
        });
        assert_eq!(
            m.and_then(|m| m.get("imagePullSecrets").cloned()),
            Some(json!([{"name": "regcred"}, {"name": "other"}]))
        );
        // The pod's own list wins.
        let mut spec = json!({"imagePullSecrets": [{"name": "mine"}]});
        if let Some(m) = spec.as_object_mut() {
            copy_image_pull_secrets(m, &sa);
        }
        assert_eq!(spec["imagePullSecrets"], json!([{"name": "mine"}]));
        // A ServiceAccount without any leaves the pod alone.
        let mut spec = json!({});
        if let Some(m) = spec.as_object_mut() {
            copy_image_pull_secrets(m, &json!({}));
        }
        assert!(spec.get("imagePullSecrets").is_none());
    }
}
