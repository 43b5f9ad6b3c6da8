//! Pod volumes materialised on the node under `<root-dir>/pods/<uid>/volumes/<name>` and bind
//! mounted into containers: emptyDir (tmpfs for `medium: Memory`), configMap, secret, projected
//! (incl. the ServiceAccount token, `ca.crt` and namespace), downwardAPI, hostPath.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod, ServiceAccount};
use kube::api::{Api, PostParams};

use crate::spec::{EnvSources, safe_relative};

/// The directory of one pod volume.
pub fn volume_dir(root: &Path, uid: &str, name: &str) -> PathBuf {
    root.join("pods").join(uid).join("volumes").join(name)
}

fn write_files(dir: &Path, files: &BTreeMap<String, Vec<u8>>, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    for (rel, data) in files {
        if !safe_relative(rel) {
            return Err(format!("invalid path {rel:?} in volume"));
        }
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("create {}: {e}", parent.display()))?;
        }
        // Unchanged content is left alone (every pod sync refreshes its volumes).
        if std::fs::read(&p).map(|old| old == *data).unwrap_or(false) {
            continue;
        }
        // Write then rename, so a running container never sees a half-written file.
        let tmp = p.with_extension("lotse-tmp");
        std::fs::write(&tmp, data).map_err(|e| format!("write {}: {e}", tmp.display()))?;
        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode));
        std::fs::rename(&tmp, &p).map_err(|e| format!("rename {}: {e}", p.display()))?;
    }
    Ok(())
}

fn select(
    data: BTreeMap<String, Vec<u8>>,
    items: &Option<Vec<KeyToPath>>,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    match items {
        None => Ok(data),
        Some(items) => {
            let mut out = BTreeMap::new();
            for i in items {
                let v = data
                    .get(&i.key)
                    .ok_or_else(|| format!("configmap/secret key {:?} not found", i.key))?;
                out.insert(i.path.clone(), v.clone());
            }
            Ok(out)
        }
    }
}

fn cm_data(
    src: &EnvSources,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    match src.config_maps.get(name) {
        Some(cm) => {
            let mut m: BTreeMap<String, Vec<u8>> = cm
                .data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            for (k, v) in cm.binary_data.clone().unwrap_or_default() {
                m.insert(k, v.0);
            }
            Ok(m)
        }
        None if optional => Ok(BTreeMap::new()),
        None => Err(format!("configmap \"{name}\" not found")),
    }
}

fn secret_data(
    src: &EnvSources,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    match src.secrets.get(name) {
        Some(s) => Ok(s
            .data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()),
        None if optional => Ok(BTreeMap::new()),
        None => Err(format!("secret \"{name}\" not found")),
    }
}

fn downward(
    pod: &Pod,
    items: &[k8s_openapi::api::core::v1::DownwardAPIVolumeFile],
) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for i in items {
        let v = if let Some(f) = &i.field_ref {
            match f.field_path.as_str() {
                "metadata.labels" | "metadata.annotations" => {
                    let m = if f.field_path == "metadata.labels" {
                        &pod.metadata.labels
                    } else {
                        &pod.metadata.annotations
                    };
                    m.clone()
                        .unwrap_or_default()
                        .iter()
                        .map(|(k, v)| format!("{k}=\"{v}\"\n"))
                        .collect()
                }
                "metadata.name" => pod.metadata.name.clone().unwrap_or_default(),
                "metadata.namespace" => pod.metadata.namespace.clone().unwrap_or_default(),
                "metadata.uid" => pod.metadata.uid.clone().unwrap_or_default(),
                p => {
                    let lookup = |m: &Option<BTreeMap<String, String>>, pre: &str| {
                        p.strip_prefix(pre)
                            .and_then(|k| k.strip_suffix("']"))
                            .and_then(|k| m.as_ref()?.get(k).cloned())
                    };
                    lookup(&pod.metadata.labels, "metadata.labels['")
                        .or_else(|| lookup(&pod.metadata.annotations, "metadata.annotations['"))
                        .unwrap_or_default()
                }
            }
        } else {
            String::new()
        };
        out.insert(i.path.clone(), v.into_bytes());
    }
    out
}

/// Issued projected tokens by (pod UID, audience, expiration): the token and when to renew it.
type TokenCache = std::sync::Mutex<
    std::collections::HashMap<(String, Option<String>, i64), (String, std::time::Instant)>,
>;
static TOKENS: std::sync::LazyLock<TokenCache> = std::sync::LazyLock::new(Default::default);

/// The pod's projected ServiceAccount token: requested once and renewed after 80 % of its
/// lifetime (as the Kubernetes kubelet does), not on every sync.
async fn sa_token(
    client: &kube::Client,
    pod: &Pod,
    audience: Option<String>,
    expiration: Option<i64>,
) -> Result<String, String> {
    let ttl = expiration.unwrap_or(3607);
    let key = (
        pod.metadata.uid.clone().unwrap_or_default(),
        audience.clone(),
        ttl,
    );
    if let Ok(cache) = TOKENS.lock()
        && let Some((token, renew)) = cache.get(&key)
        && std::time::Instant::now() < *renew
    {
        return Ok(token.clone());
    }
    let token = request_sa_token(client, pod, audience, ttl).await?;
    if let Ok(mut cache) = TOKENS.lock() {
        let renew =
            std::time::Instant::now() + std::time::Duration::from_secs((ttl as u64) * 4 / 5);
        cache.insert(key, (token.clone(), renew));
    }
    Ok(token)
}

async fn request_sa_token(
    client: &kube::Client,
    pod: &Pod,
    audience: Option<String>,
    expiration: i64,
) -> Result<String, String> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.into_iter().collect(),
            expiration_seconds: Some(expiration),
            bound_object_ref: Some(k8s_openapi::api::authentication::v1::BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let r = api
        .create_token_request(&sa, &PostParams::default(), &req)
        .await
        .map_err(|e| format!("token for serviceaccount {sa}: {e}"))?;
    Ok(r.status.map(|s| s.token).unwrap_or_default())
}

/// Writes (or refreshes) every volume of the pod. An error is a message for the pod's events
/// (`FailedMount`), e.g. a missing ConfigMap.
pub async fn setup(
    root: &Path,
    client: &kube::Client,
    pod: &Pod,
    src: &EnvSources,
    ca_pem: &str,
) -> Result<(), String> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default()
    {
        let dir = volume_dir(root, &uid, &v.name);
        if let Some(ed) = &v.empty_dir {
            std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            if ed.medium.as_deref() == Some("Memory") && !is_mountpoint(&dir) {
                let mut args = vec!["-t".to_string(), "tmpfs".into()];
                if let Some(l) = ed
                    .size_limit
                    .as_ref()
                    .and_then(|q| crate::spec::parse_quantity(&q.0))
                {
                    args.push("-o".into());
                    args.push(format!("size={}", l as u64));
                }
                let st = std::process::Command::new("mount")
                    .args(&args)
                    .arg("tmpfs")
                    .arg(&dir)
                    .status();
                if !matches!(st, Ok(s) if s.success()) {
                    return Err(format!("mount tmpfs on {}", dir.display()));
                }
            }
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777));
        } else if let Some(cm) = &v.config_map {
            let data = select(
                cm_data(src, &cm.name, cm.optional == Some(true))?,
                &cm.items,
            )?;
            write_files(&dir, &data, cm.default_mode.unwrap_or(0o644) as u32)?;
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let data = select(secret_data(src, &name, s.optional == Some(true))?, &s.items)?;
            write_files(&dir, &data, s.default_mode.unwrap_or(0o644) as u32)?;
        } else if let Some(d) = &v.downward_api {
            write_files(
                &dir,
                &downward(pod, d.items.as_deref().unwrap_or(&[])),
                d.default_mode.unwrap_or(0o644) as u32,
            )?;
        } else if let Some(p) = &v.projected {
            let mut files = BTreeMap::new();
            for s in p.sources.clone().unwrap_or_default() {
                if let Some(cm) = &s.config_map {
                    files.extend(select(
                        cm_data(src, &cm.name, cm.optional == Some(true))?,
                        &cm.items,
                    )?);
                }
                if let Some(sec) = &s.secret {
                    files.extend(select(
                        secret_data(src, &sec.name, sec.optional == Some(true))?,
                        &sec.items,
                    )?);
                }
                if let Some(d) = &s.downward_api {
                    files.extend(downward(pod, d.items.as_deref().unwrap_or(&[])));
                }
                if let Some(t) = &s.service_account_token {
                    let token =
                        sa_token(client, pod, t.audience.clone(), t.expiration_seconds).await?;
                    files.insert(t.path.clone(), token.into_bytes());
                }
                if let Some(ctb) = &s.cluster_trust_bundle {
                    files.insert(ctb.path.clone(), ca_pem.as_bytes().to_vec());
                }
            }
            write_files(&dir, &files, p.default_mode.unwrap_or(0o644) as u32)?;
        } else if let Some(h) = &v.host_path {
            let p = Path::new(&h.path);
            match h.type_.as_deref().unwrap_or("") {
                "DirectoryOrCreate" => std::fs::create_dir_all(p)
                    .map_err(|e| format!("create {}: {e}", p.display()))?,
                "FileOrCreate" if !p.exists() => {
                    std::fs::write(p, b"").map_err(|e| format!("create {}: {e}", p.display()))?;
                }
                "Directory" if !p.is_dir() => {
                    return Err(format!(
                        "hostPath type check failed: {} is not a directory",
                        h.path
                    ));
                }
                "File" if !p.is_file() => {
                    return Err(format!(
                        "hostPath type check failed: {} is not a file",
                        h.path
                    ));
                }
                _ => {}
            }
        } else {
            std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
    }
    Ok(())
}

fn is_mountpoint(dir: &Path) -> bool {
    let d = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| s.lines().any(|l| l.split(' ').nth(4) == Some(&d)))
        .unwrap_or(false)
}

/// The CRI mounts of a container's `volumeMounts`.
pub fn mounts(root: &Path, pod: &Pod, c: &Container) -> Vec<cri::Mount> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let vols = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let Some(v) = vols.iter().find(|v| v.name == m.name) else {
            continue;
        };
        let mut host = match &v.host_path {
            Some(h) => PathBuf::from(&h.path),
            None => volume_dir(root, &uid, &v.name),
        };
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            if !safe_relative(sub) {
                continue;
            }
            host = host.join(sub);
            if !host.exists() {
                let _ = std::fs::create_dir_all(&host);
            }
        }
        let ro = m.read_only.unwrap_or(false)
            || v.config_map.is_some()
            || v.secret.is_some()
            || v.projected.is_some()
            || v.downward_api.is_some();
        out.push(cri::Mount {
            container_path: m.mount_path.clone(),
            host_path: host.to_string_lossy().into_owned(),
            readonly: ro,
            ..Default::default()
        });
    }
    out
}

/// Removes the pod's directory (unmounting tmpfs emptyDirs first).
pub fn teardown(root: &Path, uid: &str) {
    if let Ok(mut cache) = TOKENS.lock() {
        cache.retain(|(u, _, _), _| u != uid);
    }
    let vols = root.join("pods").join(uid).join("volumes");
    if let Ok(rd) = std::fs::read_dir(&vols) {
        for e in rd.flatten() {
            if is_mountpoint(&e.path()) {
                let _ = std::process::Command::new("umount").arg(e.path()).status();
            }
        }
    }
    let _ = std::fs::remove_dir_all(root.join("pods").join(uid));
}
