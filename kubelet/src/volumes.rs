//! Pod volumes materialised on the node under `<root-dir>/pods/<uid>/volumes/<name>` and bind
//! mounted into containers: emptyDir (tmpfs for `medium: Memory`), configMap, secret, projected
//! (incl. the ServiceAccount token, `ca.crt` and namespace), downwardAPI, hostPath, and
//! persistentVolumeClaim: the claim's bound volume (hostPath or local) is resolved through the
//! API and `<root-dir>/pods/<uid>/volumes/<name>` becomes a symlink to its directory, which
//! containerd resolves when it bind mounts it (so a claim outlives its pods and the kubelet).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    Container, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount,
};
use kube::api::{Api, PostParams};

use crate::spec::{EnvSources, safe_relative};

/// The directory of one pod volume.
pub fn volume_dir(root: &Path, uid: &str, name: &str) -> PathBuf {
    root.join("pods").join(uid).join("volumes").join(name)
}

/// One file of a volume's payload: its content and permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileData {
    data: Vec<u8>,
    mode: u32,
}

/// Files of a configMap/secret/downwardAPI/projected volume by their path in the volume.
type Payload = BTreeMap<String, FileData>;

/// The symlink naming the directory that holds the volume's current files.
const DATA_DIR: &str = "..data";

/// Writes `payload` into `dir` the way Kubernetes' AtomicWriter does, so a reader never sees a
/// half-updated set and keys that disappear from the source disappear from the volume:
///
/// 1. the files go into a fresh hidden directory `..<timestamp>.<nanos>`;
/// 2. each top-level name of the payload is a symlink `name -> ..data/name`;
/// 3. `..data` (a symlink to the timestamped directory) is replaced by one rename, which
///    switches the whole set at once;
/// 4. the previous timestamped directory and the names no longer in the payload are removed.
///
/// Nothing is touched when the current files already match (every pod sync calls this). A
/// volume written by an older kubelet (plain files, no `..data`) is converted on the next
/// sync, which is how volumes found on disk after a restart are adopted.
fn write_atomic(dir: &Path, payload: &Payload) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    for rel in payload.keys() {
        if !safe_relative(rel) || rel.starts_with("..") {
            return Err(format!("invalid path {rel:?} in volume"));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    let data_link = dir.join(DATA_DIR);
    let old_target = std::fs::read_link(&data_link).ok();
    let top: std::collections::BTreeSet<String> = payload
        .keys()
        .filter_map(|k| k.split('/').next().map(str::to_string))
        .collect();
    let current = old_target
        .as_ref()
        .is_some_and(|t| payload_matches(&dir.join(t), payload));
    if !current {
        let ts = jiff::Timestamp::now();
        let name = format!(
            "..{}.{:09}",
            ts.strftime("%Y_%m_%d_%H_%M_%S"),
            ts.subsec_nanosecond()
        );
        let ts_dir = dir.join(&name);
        std::fs::create_dir(&ts_dir).map_err(|e| io("create", &ts_dir, e))?;
        let _ = std::fs::set_permissions(&ts_dir, std::fs::Permissions::from_mode(0o755));
        for (rel, f) in payload {
            let p = ts_dir.join(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
            }
            std::fs::write(&p, &f.data).map_err(|e| io("write", &p, e))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(f.mode))
                .map_err(|e| io("chmod", &p, e))?;
        }
        let tmp_link = dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp_link);
        std::os::unix::fs::symlink(&name, &tmp_link).map_err(|e| io("symlink", &tmp_link, e))?;
        // The user-visible names point through `..data`; those that are new dangle until the
        // rename below, exactly as in Kubernetes.
        for t in &top {
            link_visible(dir, t)?;
        }
        std::fs::rename(&tmp_link, &data_link).map_err(|e| io("rename", &data_link, e))?;
        if let Some(old) = &old_target
            && old.as_os_str() != name.as_str()
        {
            let _ = std::fs::remove_dir_all(dir.join(old));
        }
    } else {
        // Matching data: make sure every visible link is there (a crash between steps).
        for t in &top {
            link_visible(dir, t)?;
        }
    }
    // Everything else in the directory is stale: names of removed keys, files of the
    // pre-`..data` layout, timestamped directories left by a crash.
    let live = std::fs::read_link(&data_link).ok();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let keep = n == DATA_DIR
                || top.contains(&n)
                || live.as_ref().is_some_and(|l| l.as_os_str() == n.as_str());
            if keep {
                continue;
            }
            let p = e.path();
            let r = match e.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p),
                _ => std::fs::remove_file(&p),
            };
            if let Err(e) = r {
                return Err(io("remove", &p, e));
            }
        }
    }
    Ok(())
}

/// Makes `dir/<name>` the symlink `..data/<name>`, replacing whatever is there (one rename for
/// a file or symlink; a directory of the old layout is removed first).
fn link_visible(dir: &Path, name: &str) -> Result<(), String> {
    let p = dir.join(name);
    let want = Path::new(DATA_DIR).join(name);
    if std::fs::read_link(&p).is_ok_and(|t| t == want) {
        return Ok(());
    }
    if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
        std::fs::remove_dir_all(&p).map_err(|e| format!("remove {}: {e}", p.display()))?;
    }
    let tmp = dir.join(format!("..{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&want, &tmp)
        .map_err(|e| format!("symlink {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &p).map_err(|e| format!("rename {}: {e}", p.display()))
}

/// Whether the timestamped directory `ts_dir` holds exactly `payload` (contents and modes).
fn payload_matches(ts_dir: &Path, payload: &Payload) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fn count_files(d: &Path) -> usize {
        std::fs::read_dir(d)
            .map(|rd| {
                rd.flatten()
                    .map(|e| match e.file_type() {
                        Ok(t) if t.is_dir() => count_files(&e.path()),
                        _ => 1,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    payload.iter().all(|(rel, f)| {
        let p = ts_dir.join(rel);
        std::fs::symlink_metadata(&p)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o7777 == f.mode)
            && std::fs::read(&p).is_ok_and(|d| d == f.data)
    }) && count_files(ts_dir) == payload.len()
}

/// The files of a configMap/secret source: every key (mode `default_mode`), or only `items`,
/// each at its path with its own mode when given. A missing listed key is an error unless the
/// source is optional.
fn select(
    data: BTreeMap<String, Vec<u8>>,
    items: &Option<Vec<KeyToPath>>,
    default_mode: u32,
    optional: bool,
) -> Result<Payload, String> {
    match items {
        None => Ok(data
            .into_iter()
            .map(|(k, data)| {
                let f = FileData {
                    data,
                    mode: default_mode,
                };
                (k, f)
            })
            .collect()),
        Some(items) => {
            let mut out = BTreeMap::new();
            for i in items {
                let Some(v) = data.get(&i.key) else {
                    if optional {
                        continue;
                    }
                    return Err(format!("configmap/secret key {:?} not found", i.key));
                };
                let mode = i.mode.map(|m| m as u32).unwrap_or(default_mode);
                out.insert(
                    i.path.clone(),
                    FileData {
                        data: v.clone(),
                        mode,
                    },
                );
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

/// The files of a downwardAPI source: pod fields and container resources, each with its own
/// mode or `default_mode`.
fn downward(
    pod: &Pod,
    items: &[k8s_openapi::api::core::v1::DownwardAPIVolumeFile],
    default_mode: u32,
) -> Payload {
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
                    // `key="value"` lines in key order, values quoted, no final newline
                    // (Kubernetes' fieldpath.FormatMap).
                    m.clone()
                        .unwrap_or_default()
                        .iter()
                        .map(|(k, v)| format!("{k}={v:?}"))
                        .collect::<Vec<_>>()
                        .join("\n")
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
        } else if let Some(r) = &i.resource_field_ref {
            let container = pod.spec.as_ref().and_then(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
                    .find(|c| Some(&c.name) == r.container_name.as_ref())
            });
            match container {
                Some(c) => crate::spec::resource_ref(
                    c,
                    &r.resource,
                    r.divisor.as_ref().map(|d| d.0.as_str()),
                ),
                None => String::new(),
            }
        } else {
            String::new()
        };
        let mode = i.mode.map(|m| m as u32).unwrap_or(default_mode);
        out.insert(
            i.path.clone(),
            FileData {
                data: v.into_bytes(),
                mode,
            },
        );
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
                let size = ed
                    .size_limit
                    .as_ref()
                    .and_then(|q| lotse_core::Quantity::parse(&q.0).ok())
                    .map(|l| u64::try_from(l.value()).unwrap_or(0));
                mount_tmpfs(&dir, size)
                    .map_err(|e| format!("mount tmpfs on {}: {e}", dir.display()))?;
            }
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777));
        } else if let Some(cm) = &v.config_map {
            let optional = cm.optional == Some(true);
            let mode = cm.default_mode.unwrap_or(0o644) as u32;
            let data = select(cm_data(src, &cm.name, optional)?, &cm.items, mode, optional)?;
            write_atomic(&dir, &data)?;
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let optional = s.optional == Some(true);
            let mode = s.default_mode.unwrap_or(0o644) as u32;
            let data = select(secret_data(src, &name, optional)?, &s.items, mode, optional)?;
            write_atomic(&dir, &data)?;
        } else if let Some(d) = &v.downward_api {
            let mode = d.default_mode.unwrap_or(0o644) as u32;
            write_atomic(
                &dir,
                &downward(pod, d.items.as_deref().unwrap_or(&[]), mode),
            )?;
        } else if let Some(p) = &v.projected {
            let mode = p.default_mode.unwrap_or(0o644) as u32;
            let mut files = BTreeMap::new();
            for s in p.sources.clone().unwrap_or_default() {
                if let Some(cm) = &s.config_map {
                    let optional = cm.optional == Some(true);
                    files.extend(select(
                        cm_data(src, &cm.name, optional)?,
                        &cm.items,
                        mode,
                        optional,
                    )?);
                }
                if let Some(sec) = &s.secret {
                    let optional = sec.optional == Some(true);
                    files.extend(select(
                        secret_data(src, &sec.name, optional)?,
                        &sec.items,
                        mode,
                        optional,
                    )?);
                }
                if let Some(d) = &s.downward_api {
                    files.extend(downward(pod, d.items.as_deref().unwrap_or(&[]), mode));
                }
                if let Some(t) = &s.service_account_token {
                    let token =
                        sa_token(client, pod, t.audience.clone(), t.expiration_seconds).await?;
                    let f = FileData {
                        data: token.into_bytes(),
                        mode,
                    };
                    files.insert(t.path.clone(), f);
                }
                if let Some(ctb) = &s.cluster_trust_bundle {
                    let f = FileData {
                        data: ca_pem.as_bytes().to_vec(),
                        mode,
                    };
                    files.insert(ctb.path.clone(), f);
                }
            }
            write_atomic(&dir, &files)?;
        } else if let Some(c) = &v.persistent_volume_claim {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let (target, owned) = claim_volume_path(client, &ns, &c.claim_name).await?;
            link_claim_volume(&dir, &target)?;
            if owned
                && let Some(gid) = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.security_context.as_ref())
                    .and_then(|s| s.fs_group)
            {
                apply_fs_group(&target, gid)?;
            }
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

/// The directory backing claim `ns/claim`: its bound volume's `hostPath` (created when its type
/// says `DirectoryOrCreate`, mode 0777 as rancher's local-path provisioner makes it) or `local`
/// path (which must exist), and whether the kubelet manages its ownership (`fsGroup`): local
/// volumes and the local-path provisioner's, not static hostPath volumes (as Kubernetes, whose
/// hostPath plugin leaves ownership alone). Errors are worded as the kubelet's volume manager
/// words them.
async fn claim_volume_path(
    client: &kube::Client,
    ns: &str,
    claim: &str,
) -> Result<(PathBuf, bool), String> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pvc = match claims.get_opt(claim).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Err(format!(
                "error processing PVC {ns}/{claim}: failed to fetch PVC from API server: persistentvolumeclaims \"{claim}\" not found"
            ));
        }
        Err(e) => {
            return Err(format!(
                "error processing PVC {ns}/{claim}: failed to fetch PVC from API server: {e}"
            ));
        }
    };
    if pvc.metadata.deletion_timestamp.is_some() {
        return Err(format!(
            "error processing PVC {ns}/{claim}: PVC is being deleted"
        ));
    }
    let volume = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .unwrap_or_default();
    let phase = pvc
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("");
    if volume.is_empty() || phase != "Bound" {
        return Err(format!(
            "error processing PVC {ns}/{claim}: PVC is not bound"
        ));
    }
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let pv = match volumes.get_opt(&volume).await {
        Ok(Some(v)) => v,
        Ok(None) => {
            return Err(format!(
                "error processing PVC {ns}/{claim}: failed to fetch PV {volume} from API server: persistentvolumes \"{volume}\" not found"
            ));
        }
        Err(e) => {
            return Err(format!(
                "error processing PVC {ns}/{claim}: failed to fetch PV {volume} from API server: {e}"
            ));
        }
    };
    let provisioned = pv
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("pv.kubernetes.io/provisioned-by"))
        .is_some_and(|p| p == "rancher.io/local-path");
    let spec = pv.spec.unwrap_or_default();
    if let Some(h) = &spec.host_path {
        let p = PathBuf::from(&h.path);
        match h.type_.as_deref().unwrap_or("") {
            "DirectoryOrCreate" if !p.exists() => {
                std::fs::create_dir_all(&p).map_err(|e| format!("create {}: {e}", p.display()))?;
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777));
            }
            "Directory" if !p.is_dir() => {
                return Err(format!(
                    "hostPath type check failed: {} is not a directory",
                    h.path
                ));
            }
            _ => {}
        }
        return Ok((p, provisioned));
    }
    if let Some(l) = &spec.local {
        let p = PathBuf::from(&l.path);
        if !p.exists() {
            return Err(format!("path \"{}\" does not exist", l.path));
        }
        return Ok((p, true));
    }
    Err(format!(
        "persistent volume {volume} of claim {ns}/{claim}: only hostPath and local volumes can be mounted by this kubelet"
    ))
}

/// Makes the pod's volume directory a symlink to the claim's directory (replacing an older
/// link or an empty directory left by an older kubelet).
fn link_claim_volume(dir: &Path, target: &Path) -> Result<(), String> {
    if let Ok(cur) = std::fs::read_link(dir) {
        if cur == target {
            return Ok(());
        }
        std::fs::remove_file(dir).map_err(|e| format!("remove {}: {e}", dir.display()))?;
    } else if dir.is_dir() {
        std::fs::remove_dir(dir).map_err(|e| format!("replace {}: {e}", dir.display()))?;
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    }
    std::os::unix::fs::symlink(target, dir)
        .map_err(|e| format!("link {} to {}: {e}", dir.display(), target.display()))
}

/// `securityContext.fsGroup` as Kubernetes' `SetVolumeOwnership` applies it: every file gets
/// the group, group read/write (and execute where the owner has it), directories the setgid bit.
/// Skipped when the volume root already carries the group and setgid bit (as the
/// `OnRootMismatch` policy; a volume is changed once, not on every sync).
fn apply_fs_group(root: &Path, gid: i64) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let gid = u32::try_from(gid).map_err(|_| format!("invalid fsGroup {gid}"))?;
    let meta = std::fs::metadata(root).map_err(|e| format!("stat {}: {e}", root.display()))?;
    if meta.gid() == gid && meta.mode() & 0o2000 != 0 {
        return Ok(());
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).map_err(|e| format!("stat {}: {e}", p.display()))?;
        if m.file_type().is_symlink() {
            continue;
        }
        std::os::unix::fs::lchown(&p, None, Some(gid))
            .map_err(|e| format!("chown {}: {e}", p.display()))?;
        let mut mode = m.mode() & 0o7777 | 0o060;
        if mode & 0o100 != 0 {
            mode |= 0o010;
        }
        if m.is_dir() {
            mode |= 0o2000;
            for e in std::fs::read_dir(&p)
                .map_err(|e| format!("read {}: {e}", p.display()))?
                .flatten()
            {
                stack.push(e.path());
            }
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", p.display()))?;
    }
    Ok(())
}

/// Mounts a tmpfs on `dir` (mount(2), as `mount -t tmpfs [-o size=N] tmpfs <dir>` does: no
/// flags, the size as the only option).
fn mount_tmpfs(dir: &Path, size: Option<u64>) -> std::io::Result<()> {
    use rustix::mount::{MountFlags, mount};
    let data = size
        .map(|s| std::ffi::CString::new(format!("size={s}")))
        .transpose()?;
    mount("tmpfs", dir, "tmpfs", MountFlags::empty(), data.as_deref())?;
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
            || v.persistent_volume_claim
                .as_ref()
                .is_some_and(|c| c.read_only == Some(true))
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
    use rustix::mount::{UnmountFlags, unmount};
    if let Ok(mut cache) = TOKENS.lock() {
        cache.retain(|(u, _, _), _| u != uid);
    }
    let vols = root.join("pods").join(uid).join("volumes");
    if let Ok(rd) = std::fs::read_dir(&vols) {
        for e in rd.flatten() {
            let path = e.path();
            if is_mountpoint(&path)
                && let Err(err) = unmount(&path, UnmountFlags::empty())
            {
                tracing::warn!(path = %path.display(), error = %err, "unmounting an emptyDir");
            }
        }
    }
    let _ = std::fs::remove_dir_all(root.join("pods").join(uid));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn payload(files: &[(&str, &str, u32)]) -> Payload {
        files
            .iter()
            .map(|(p, d, m)| {
                let f = FileData {
                    data: d.as_bytes().to_vec(),
                    mode: *m,
                };
                (p.to_string(), f)
            })
            .collect()
    }

    /// Visible names in `dir` (without the hidden `..` entries), sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(".."))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn atomic_write_update_and_removal() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        write_atomic(
            &dir,
            &payload(&[("a", "1", 0o644), ("gone", "x", 0o644), ("d/e", "2", 0o400)]),
        )
        .unwrap();
        assert_eq!(names(&dir), ["a", "d", "gone"]);
        assert_eq!(std::fs::read_to_string(dir.join("d/e")).unwrap(), "2");
        let mode = std::fs::metadata(dir.join("d/e"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o400);
        assert_eq!(
            std::fs::read_link(dir.join("a")).unwrap(),
            Path::new("..data/a")
        );
        let first = std::fs::read_link(dir.join(DATA_DIR)).unwrap();

        // Unchanged: nothing is rewritten.
        write_atomic(
            &dir,
            &payload(&[("a", "1", 0o644), ("gone", "x", 0o644), ("d/e", "2", 0o400)]),
        )
        .unwrap();
        assert_eq!(std::fs::read_link(dir.join(DATA_DIR)).unwrap(), first);

        // Changed value, added key, removed keys: a new data dir, the old one and the removed
        // names gone.
        write_atomic(&dir, &payload(&[("a", "3", 0o644), ("b", "4", 0o644)])).unwrap();
        assert_eq!(names(&dir), ["a", "b"]);
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "3");
        assert!(!dir.join(&first).exists());
        let hidden: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".."))
            .collect();
        assert_eq!(hidden.len(), 2, "{hidden:?}");

        // A mode change alone is a change too.
        write_atomic(&dir, &payload(&[("a", "3", 0o600), ("b", "4", 0o644)])).unwrap();
        let mode = std::fs::metadata(dir.join("a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o600);
    }

    #[test]
    fn atomic_write_adopts_the_old_plain_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("key"), "old").unwrap();
        std::fs::write(dir.join("sub/x"), "old").unwrap();
        std::fs::write(dir.join("stale"), "old").unwrap();
        write_atomic(
            &dir,
            &payload(&[("key", "new", 0o644), ("sub/x", "y", 0o644)]),
        )
        .unwrap();
        assert_eq!(names(&dir), ["key", "sub"]);
        assert_eq!(std::fs::read_to_string(dir.join("key")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(dir.join("sub/x")).unwrap(), "y");
        assert!(std::fs::read_link(dir.join("sub")).is_ok());
    }

    #[test]
    fn atomic_write_rejects_escaping_and_hidden_paths() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/x", "..data", "..x"] {
            assert!(
                write_atomic(tmp.path(), &payload(&[(bad, "", 0o644)])).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn downward_labels_format() {
        let mut pod = Pod::default();
        pod.metadata.labels = Some(BTreeMap::from([
            ("b".to_string(), "two \"q\"".to_string()),
            ("a".to_string(), "one".to_string()),
        ]));
        let items = vec![k8s_openapi::api::core::v1::DownwardAPIVolumeFile {
            path: "labels".into(),
            field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                field_path: "metadata.labels".into(),
                ..Default::default()
            }),
            ..Default::default()
        }];
        let out = downward(&pod, &items, 0o644);
        assert_eq!(
            String::from_utf8_lossy(&out["labels"].data),
            "a=\"one\"\nb=\"two \\\"q\\\"\""
        );
    }

    #[test]
    fn claim_volume_link_and_fs_group() {
        use std::os::unix::fs::MetadataExt;
        let tmp = std::env::temp_dir().join(format!("lotse-pvc-{}", std::process::id()));
        let target = tmp.join("storage/pvc-1_default_data");
        std::fs::create_dir_all(target.join("sub")).unwrap();
        std::fs::write(target.join("sub/f"), b"x").unwrap();
        let dir = tmp.join("pods/uid/volumes/data");
        link_claim_volume(&dir, &target).unwrap();
        link_claim_volume(&dir, &target).unwrap();
        assert_eq!(std::fs::read_link(&dir).unwrap(), target);
        assert_eq!(std::fs::read(dir.join("sub/f")).unwrap(), b"x");
        // Our own group: allowed without privileges.
        let gid = std::fs::metadata(&target).unwrap().gid();
        apply_fs_group(&target, i64::from(gid)).unwrap();
        let m = std::fs::metadata(target.join("sub")).unwrap();
        assert_eq!(m.gid(), gid);
        assert_ne!(m.mode() & 0o2000, 0, "directories get setgid");
        assert_ne!(
            std::fs::metadata(target.join("sub/f")).unwrap().mode() & 0o060,
            0
        );
        // The pod directory goes, the claim's data stays.
        std::fs::remove_dir_all(tmp.join("pods")).unwrap();
        assert!(target.join("sub/f").exists());
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
