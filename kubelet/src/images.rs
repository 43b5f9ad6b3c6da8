//! Images for the pods, as the kubelet's image manager handles them: image references and pull
//! policy (`Always` / `IfNotPresent` / `Never`, Kubernetes' defaulting), credentials of the pod's
//! `imagePullSecrets` ([`keyring`]), pulls through CRI `PullImage` (containerd does the transfer)
//! serialized or parallel (`--serialize-image-pulls`) with Lotse's own pull timeout, per-container
//! pull back-off (10 s doubling to 5 min), the events and waiting reasons Kubernetes gives
//! (`Pulling`, `Pulled`, `Failed`, `BackOff`, `ErrImagePull`, `ImagePullBackOff`,
//! `ErrImageNeverPull`, `InvalidImageName`), the airgap archives ([`archives`]), the registry
//! configuration ([`registries`]) and image garbage collection ([`gc`]).
//!
//! **Offline fallback** (Lotse's own, on by default): when a pull that policy `Always` requires
//! fails because no endpoint of the registry is reachable (a network error, never a 401/403/404)
//! and the image is on the node (in containerd, or in an airgap archive), the local image is used
//! and a Warning event `OfflineFallback` says so. `--image-pull-offline-fallback=false` gives
//! Kubernetes' strict behaviour.
//!
//! A pull runs in its own task: the pod worker asks again on its next pass (the container waits
//! in `ContainerCreating` meanwhile), so a slow or hanging pull never holds up a worker's other
//! duties (deletion, status) or any other pod.
pub mod archives;
pub mod gc;
pub mod keyring;
pub mod registries;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::api::Api;
use tokio::sync::Semaphore;

use crate::events::Recorder;
use crate::runtime::Cri;

/// The sandbox image containerd runs for every pod; never garbage collected.
pub const SANDBOX_IMAGE: &str = "registry.k8s.io/pause:3.6";

/// How long one image GC pass may take before it counts as failed.
const GC_PASS_TIMEOUT: Duration = Duration::from_secs(60);
const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// How the kubelet gets images (kubelet flags; `lotse up` reads the same `LOTSE_*` variables).
#[derive(Clone, Debug)]
pub struct Options {
    /// Pull one image at a time (`--serialize-image-pulls`, default true).
    pub serialize_image_pulls: bool,
    /// A pull that has not finished after this long fails (`--image-pull-timeout`); containerd
    /// 1.6 has no pull-progress deadline of its own.
    pub image_pull_timeout: Duration,
    /// Use the local image when an `Always` pull finds no registry endpoint reachable
    /// (`--image-pull-offline-fallback`).
    pub offline_fallback: bool,
    /// k3s-style `registries.yaml` (`--registry-config`).
    pub registry_config: Option<PathBuf>,
    /// Image GC starts at this image filesystem usage, percent (`--image-gc-high-threshold`).
    pub image_gc_high_threshold: u8,
    /// Image GC frees down to this usage, percent (`--image-gc-low-threshold`).
    pub image_gc_low_threshold: u8,
    /// How often image GC looks at the image filesystem (Kubernetes: 5 min).
    pub image_gc_period: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            serialize_image_pulls: true,
            image_pull_timeout: Duration::from_secs(300),
            offline_fallback: true,
            registry_config: None,
            image_gc_high_threshold: 85,
            image_gc_low_threshold: 80,
            image_gc_period: Duration::from_secs(300),
        }
    }
}

impl Options {
    /// The defaults, overridden by the environment variables the kubelet's flags fall back to
    /// (`LOTSE_SERIALIZE_IMAGE_PULLS`, `LOTSE_IMAGE_PULL_TIMEOUT`,
    /// `LOTSE_IMAGE_PULL_OFFLINE_FALLBACK`, `LOTSE_IMAGE_GC_HIGH_THRESHOLD`,
    /// `LOTSE_IMAGE_GC_LOW_THRESHOLD`, `LOTSE_IMAGE_GC_PERIOD`); for `lotse up`, which links the
    /// kubelet. Values that do not parse are logged and ignored.
    pub fn from_env() -> Options {
        let mut o = Options::default();
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        let bad = |n: &str, v: &str| tracing::warn!(var = n, value = v, "ignored: does not parse");
        if let Some(v) = var("LOTSE_SERIALIZE_IMAGE_PULLS") {
            match v.parse() {
                Ok(b) => o.serialize_image_pulls = b,
                Err(_) => bad("LOTSE_SERIALIZE_IMAGE_PULLS", &v),
            }
        }
        if let Some(v) = var("LOTSE_IMAGE_PULL_OFFLINE_FALLBACK") {
            match v.parse() {
                Ok(b) => o.offline_fallback = b,
                Err(_) => bad("LOTSE_IMAGE_PULL_OFFLINE_FALLBACK", &v),
            }
        }
        for (n, field) in [
            ("LOTSE_IMAGE_PULL_TIMEOUT", &mut o.image_pull_timeout),
            ("LOTSE_IMAGE_GC_PERIOD", &mut o.image_gc_period),
        ] {
            if let Some(v) = var(n) {
                match parse_duration(&v) {
                    Ok(d) => *field = d,
                    Err(_) => bad(n, &v),
                }
            }
        }
        for (n, field) in [
            (
                "LOTSE_IMAGE_GC_HIGH_THRESHOLD",
                &mut o.image_gc_high_threshold,
            ),
            (
                "LOTSE_IMAGE_GC_LOW_THRESHOLD",
                &mut o.image_gc_low_threshold,
            ),
        ] {
            if let Some(v) = var(n) {
                match v.parse::<u8>() {
                    Ok(p) if p <= 100 => *field = p,
                    _ => bad(n, &v),
                }
            }
        }
        o
    }
}

pub use client_tools::parse_duration;

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// Fully qualified: `docker.io/library/nginx:1.25`, `host:5000/app@sha256:…`.
    pub name: String,
    /// `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// `library/nginx`.
    pub repository: String,
    /// The tag (`latest` when neither tag nor digest was given).
    pub tag: Option<String>,
    /// `sha256:…`.
    pub digest: Option<String>,
}

/// The distribution reference grammar (`github.com/distribution/reference`'s anchored
/// `ReferenceRegexp`): a name (an optional `host[:port]/` domain, then lowercase path
/// components), an optional tag and an optional digest. Go's `\w` is ASCII, so it is spelled out:
/// the Unicode classes (`oci-spec`'s copy of this grammar uses them) made the compiled automaton
/// 7 MiB of the kubelet's heap.
const REFERENCE: &str = concat!(
    r"^((?:(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])",
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*",
    r"|\[[a-fA-F0-9:]+\])(?::[0-9]+)?/)?",
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)",
    r"(?::([A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?",
    r"(?:@([A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?$",
);

/// A name's longest length (`NameTotalLengthMax`).
const NAME_MAX: usize = 255;

/// Parses an image name by the distribution reference grammar and normalizes it as Docker does
/// (`docker.io/library/` for bare names, `latest` when neither tag nor digest is given), as
/// Kubernetes does before a pull.
pub fn parse_image(image: &str) -> Result<ImageRef, String> {
    static RE: std::sync::LazyLock<Result<regex::Regex, regex::Error>> =
        std::sync::LazyLock::new(|| regex::Regex::new(REFERENCE));
    const INVALID: &str = "invalid reference format";
    let re = RE.as_ref().map_err(|e| format!("{INVALID}: {e}"))?;
    let Some(caps) = re.captures(image) else {
        let lowercased = image.to_ascii_lowercase();
        return Err(if lowercased != image && re.is_match(&lowercased) {
            format!("{INVALID}: repository name must be lowercase")
        } else {
            INVALID.to_string()
        });
    };
    let name = caps.get(1).map_or("", |m| m.as_str());
    // An uppercase first component is not taken for a registry host unless it looks like one.
    if name.chars().any(|c| c.is_ascii_uppercase())
        && !name
            .split_once('/')
            .is_some_and(|(host, _)| host.contains(['.', ':']))
    {
        return Err(format!("{INVALID}: repository name must be lowercase"));
    }
    if name.len() > NAME_MAX {
        return Err(format!(
            "{INVALID}: repository name must not be more than {NAME_MAX} characters"
        ));
    }
    let digest = caps.get(3).map(|m| m.as_str().to_string());
    if let Some(d) = &digest {
        let hex_len = match d.split_once(':') {
            Some(("sha256", hex)) => (hex.len(), 64),
            Some(("sha384", hex)) => (hex.len(), 96),
            Some(("sha512", hex)) => (hex.len(), 128),
            _ => return Err(format!("{INVALID}: unsupported digest algorithm")),
        };
        if hex_len.0 != hex_len.1 {
            return Err(format!("{INVALID}: invalid checksum digest length"));
        }
    }
    let tag = match (caps.get(2), &digest) {
        (Some(t), _) => Some(t.as_str().to_string()),
        (None, None) => Some("latest".to_string()),
        (None, Some(_)) => None,
    };
    // Docker's splitDockerDomain: the first component is a registry only if it looks like a
    // host (a dot, a port or `localhost`); Docker Hub's official images live under `library/`.
    let (mut registry, mut repository) = match name.split_once('/') {
        Some((host, rest)) if host.contains(['.', ':']) || host == "localhost" => {
            (host.to_string(), rest.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    if registry == "index.docker.io" {
        registry = "docker.io".to_string();
    }
    if registry == "docker.io" && !repository.contains('/') {
        repository = format!("library/{repository}");
    }
    let mut whole = format!("{registry}/{repository}");
    if let Some(t) = &tag {
        whole.push(':');
        whole.push_str(t);
    }
    if let Some(d) = &digest {
        whole.push('@');
        whole.push_str(d);
    }
    Ok(ImageRef {
        name: whole,
        registry,
        repository,
        tag,
        digest,
    })
}

/// Kubernetes' default pull policy: `Always` for the `latest` tag (given or implied), otherwise
/// `IfNotPresent` (also for a digest without a tag).
pub fn default_pull_policy(r: &ImageRef) -> &'static str {
    if r.tag.as_deref() == Some("latest") {
        "Always"
    } else {
        "IfNotPresent"
    }
}

/// A duration as Go prints it after `Truncate(time.Millisecond)` (`523ms`, `1.2s`, `2m3.5s`).
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let secs = if rest % 1000 == 0 {
        format!("{}s", rest / 1000)
    } else {
        let s = format!("{}.{:03}", rest / 1000, rest % 1000);
        format!("{}s", s.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

/// A gRPC error as Go's status error prints it (`rpc error: code = NotFound desc = …`), which is
/// what Kubernetes puts into its pull events.
pub fn grpc_error(s: &tonic::Status) -> String {
    use tonic::Code::*;
    let code = match s.code() {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    };
    format!("rpc error: code = {code} desc = {}", s.message())
}

/// Whether a pull error means no endpoint of the registry could be reached (DNS, connect,
/// routing, reset) — as opposed to an answer from the registry (401, 403, 404, bad TLS).
pub fn is_network_error(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    let answered = [
        "401 unauthorized",
        "403 forbidden",
        "unauthorized",
        "forbidden",
        "denied",
        ": not found",
        "404 not found",
        "x509:",
        "certificate",
    ];
    if answered.iter().any(|a| m.contains(a)) {
        return false;
    }
    let network = [
        "dial tcp",
        "dial udp",
        "no such host",
        "connection refused",
        "network is unreachable",
        "no route to host",
        "connection reset",
        "i/o timeout",
        "server misbehaving",
        "tls handshake timeout",
        "temporary failure in name resolution",
    ];
    network.iter().any(|n| m.contains(n))
}

/// What the pod worker gets for one container's image.
#[derive(Debug, PartialEq, Eq)]
pub enum Ensure {
    /// The image is on the node: its id for CreateContainer.
    Ready(String),
    /// A pull is running: the container waits (`ContainerCreating`).
    Pulling,
    /// The container can't start: waiting reason and message (`ErrImagePull`, …).
    Failed(String, String),
}

/// The result of one pull task.
type Outcome = Result<String, String>;

/// Per-container image state, kept by the pod worker: the pull in flight and the back-off.
#[derive(Default)]
pub struct ContainerImage {
    pull: Option<(String, tokio::task::JoinHandle<Outcome>)>,
    /// Notified when a pull task ends, so that the worker looks again at once (Kubernetes'
    /// SyncPod creates the container right after its pull) instead of at its next resync.
    pulled: Arc<tokio::sync::Notify>,
    backoff: Option<Duration>,
    retry_at: Option<Instant>,
    last_error: String,
    backoff_reported: bool,
    reported: Option<String>,
}

impl ContainerImage {
    /// With a pull in flight, what its end notifies (a permit is kept if nobody waits yet).
    pub fn pull_in_flight(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.pull.as_ref().map(|_| self.pulled.clone())
    }
}

impl Drop for ContainerImage {
    fn drop(&mut self) {
        // The pod is gone: a pull still queued or running for it is not wanted any more.
        if let Some((_, h)) = self.pull.take() {
            h.abort();
        }
    }
}

/// The kubelet's image manager.
pub struct Manager {
    cri: Cri,
    client: kube::Client,
    /// The node's event recorder (Pulling, Pulled, Failed, OfflineFallback).
    events: client_tools::record::Recorder,
    node: String,
    opts: Options,
    images_dir: PathBuf,
    record_path: PathBuf,
    image_fs: PathBuf,
    pull_slots: Arc<Semaphore>,
    import_lock: tokio::sync::Mutex<()>,
    last_used: std::sync::Mutex<HashMap<String, SystemTime>>,
}

impl Manager {
    /// An image manager on `cri` for the node `node`, with archives in `layout.images()`.
    pub fn new(
        cri: Cri,
        client: kube::Client,
        events: client_tools::record::Recorder,
        node: &str,
        layout: &crate::runtime::Layout,
        opts: Options,
    ) -> Manager {
        let permits = if opts.serialize_image_pulls {
            1
        } else {
            Semaphore::MAX_PERMITS
        };
        Manager {
            cri,
            client,
            events,
            node: node.to_string(),
            images_dir: layout.images(),
            record_path: layout.root.join("image-archives.json"),
            image_fs: layout.root.join("containerd/root"),
            opts,
            pull_slots: Arc::new(Semaphore::new(permits)),
            import_lock: tokio::sync::Mutex::new(()),
            last_used: Default::default(),
        }
    }

    /// The image, if containerd has it.
    async fn status(&self, name: &str) -> Option<cri::Image> {
        let mut is = self.cri.img.clone();
        is.image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: name.to_string(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().image)
    }

    /// The image's id when it is on the node: in containerd, or (imported now) in an airgap
    /// archive.
    async fn local(&self, name: &str) -> Option<String> {
        if let Some(i) = self.status(name).await {
            return Some(i.id);
        }
        self.sync_archives(Some(name)).await;
        self.status(name).await.map(|i| i.id)
    }

    /// Imports the archives of the images dir that are new or changed (once per content
    /// digest), and, when `want` is given and containerd lacks it, re-imports the archives that
    /// hold it (an image removed by GC). One import at a time.
    pub async fn sync_archives(&self, want: Option<&str>) {
        let _guard = self.import_lock.lock().await;
        let mut record = archives::Record::load(&self.record_path);
        let mut fresh = archives::Record::default();
        for file in archives::list(&self.images_dir) {
            let Some((size, mtime)) = archives::stamp(&file) else {
                continue;
            };
            let digest = match record.digest_of_unchanged(&file, size, mtime) {
                Some(d) => d,
                None => {
                    let f = file.clone();
                    match tokio::task::spawn_blocking(move || archives::sha256_file(&f)).await {
                        Ok(Ok(d)) => d,
                        Ok(Err(e)) => {
                            tracing::warn!(archive = %file.display(), error = %e, "reading image archive");
                            continue;
                        }
                        Err(_) => continue,
                    }
                }
            };
            let mut known = record
                .archives
                .remove(&digest)
                .filter(|e| !e.names.is_empty());
            // At start every known archive is checked against what containerd really holds (a
            // new containerd root, GC); later only the archive of a wanted image is.
            if want.is_none()
                && let Some(e) = &known
            {
                for n in &e.names {
                    if self.status(n).await.is_none() {
                        tracing::info!(image = %n, archive = %file.display(), "image of a known archive missing from containerd: importing it again");
                        known = None;
                        break;
                    }
                }
            }
            let names = match known {
                Some(e) => e.names,
                None => match archives::import(&self.cri.socket, &file).await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(archive = %file.display(), error = %e, "image import failed");
                        continue;
                    }
                },
            };
            fresh.archives.insert(
                digest,
                archives::Entry {
                    names,
                    file,
                    size,
                    mtime,
                },
            );
        }
        if let Some(name) = want
            && self.status(name).await.is_none()
        {
            for (digest, file) in fresh.archives_with(name) {
                tracing::info!(image = name, archive = %file.display(), "image missing from containerd: importing its archive again");
                match archives::import(&self.cri.socket, &file).await {
                    Ok(names) if !names.is_empty() => {
                        if let Some(e) = fresh.archives.get_mut(&digest) {
                            e.names = names;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(archive = %file.display(), error = %e, "image import failed")
                    }
                }
            }
        }
        if let Err(e) = fresh.save(&self.record_path) {
            tracing::warn!(path = %self.record_path.display(), error = %e, "writing the image archive record");
        }
    }

    fn touch(&self, id: &str) {
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), SystemTime::now());
    }

    /// Makes sure `c`'s image is on the node per its pull policy, starting a pull when needed;
    /// records the events Kubernetes records. Never waits for a pull.
    pub async fn ensure(
        self: &Arc<Self>,
        pod: &Pod,
        c: &Container,
        st: &mut ContainerImage,
        rec: &Recorder,
    ) -> Ensure {
        let image = c.image.clone().unwrap_or_default();
        let r = match parse_image(&image) {
            Ok(r) => r,
            Err(e) => {
                let msg = format!(
                    "Failed to apply default image tag {image:?}: couldn't parse image name {image:?}: {e}"
                );
                if st.reported.as_deref() != Some(&msg) {
                    rec.warning("InspectFailed", &msg).await;
                    rec.warning("Failed", "Error: InvalidImageName").await;
                    st.reported = Some(msg.clone());
                }
                return Ensure::Failed("InvalidImageName".into(), msg);
            }
        };
        let policy = c
            .image_pull_policy
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| default_pull_policy(&r).to_string());

        // A pull in flight for this container (dropped when the spec now names another image).
        if st.pull.as_ref().is_some_and(|(i, _)| i != &image)
            && let Some((_, h)) = st.pull.take()
        {
            h.abort();
        }
        if st.pull.as_ref().is_some_and(|(_, h)| !h.is_finished()) {
            return Ensure::Pulling;
        }
        if let Some((_, h)) = st.pull.take() {
            let outcome = h
                .await
                .unwrap_or_else(|e| Err(format!("image pull task ended: {e}")));
            return match outcome {
                Ok(id) => {
                    st.backoff = None;
                    st.retry_at = None;
                    st.reported = None;
                    self.touch(&id);
                    Ensure::Ready(id)
                }
                Err(msg) => {
                    let b = st
                        .backoff
                        .map(|b| (b * 2).min(BACKOFF_MAX))
                        .unwrap_or(BACKOFF_START);
                    st.backoff = Some(b);
                    st.retry_at = Some(Instant::now() + b);
                    st.last_error = msg.clone();
                    st.backoff_reported = false;
                    rec.warning("Failed", "Error: ErrImagePull").await;
                    Ensure::Failed("ErrImagePull".into(), msg)
                }
            };
        }

        if policy != "Always" {
            if let Some(id) = self.local(&r.name).await {
                rec.normal(
                    "Pulled",
                    &format!("Container image {image:?} already present on machine"),
                )
                .await;
                st.reported = None;
                self.touch(&id);
                return Ensure::Ready(id);
            }
            if policy == "Never" {
                let msg =
                    format!("Container image {image:?} is not present with pull policy of Never");
                if st.reported.as_deref() != Some(&msg) {
                    rec.warning("ErrImageNeverPull", &msg).await;
                    rec.warning("Failed", "Error: ErrImageNeverPull").await;
                    st.reported = Some(msg.clone());
                }
                return Ensure::Failed("ErrImageNeverPull".into(), msg);
            }
        }

        if let Some(t) = st.retry_at
            && Instant::now() < t
        {
            if !st.backoff_reported {
                rec.normal("BackOff", &format!("Back-off pulling image {image:?}"))
                    .await;
                rec.warning("Failed", "Error: ImagePullBackOff").await;
                st.backoff_reported = true;
            }
            return Ensure::Failed(
                "ImagePullBackOff".into(),
                format!(
                    "Back-off pulling image {image:?}: ErrImagePull: {}",
                    st.last_error
                ),
            );
        }

        let me = self.clone();
        let pod = pod.clone();
        let task_image = image.clone();
        let pulled = st.pulled.clone();
        let h = tokio::spawn(async move {
            let outcome = me.pull_task(pod, task_image, r).await;
            pulled.notify_one();
            outcome
        });
        st.pull = Some((image, h));
        Ensure::Pulling
    }

    /// The pull secrets of `pod` (missing ones reported as Kubernetes does).
    async fn pull_secrets(&self, pod: &Pod, rec: &Recorder) -> Vec<Secret> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let mut out = Vec::new();
        let mut failed = Vec::new();
        for r in pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.as_ref())
            .into_iter()
            .flatten()
        {
            match api.get(&r.name).await {
                Ok(s) => out.push(s),
                Err(e) => {
                    tracing::info!(secret = %r.name, error = %e, "Unable to retrieve pull secret, the image pull may not succeed.");
                    failed.push(r.name.clone());
                }
            }
        }
        if !failed.is_empty() {
            rec.warning(
                "FailedToRetrieveImagePullSecret",
                &format!(
                    "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                    failed.join(", ")
                ),
            )
            .await;
        }
        out
    }

    /// One pull: events `Pulling`, then `Pulled` or `Failed` (or `OfflineFallback`).
    async fn pull_task(self: Arc<Self>, pod: Pod, image: String, r: ImageRef) -> Outcome {
        let rec = Recorder::new(&self.events, &pod);
        rec.normal("Pulling", &format!("Pulling image {image:?}"))
            .await;
        let enqueued = Instant::now();
        let secrets = self.pull_secrets(&pod, &rec).await;
        let (ring, warnings) = keyring::Keyring::from_secrets(&secrets);
        for w in warnings {
            tracing::warn!(pod = ?pod.metadata.name, "{w}");
        }
        let creds = ring.lookup(&r);
        let _permit = self.pull_slots.acquire().await;
        let started = Instant::now();
        let timeout = self.opts.image_pull_timeout;
        let result = tokio::time::timeout(timeout, self.pull_with(&r.name, &creds)).await;
        let err = match result {
            Ok(Ok(image_ref)) => {
                let took = started.elapsed();
                let size = self.status(&image_ref).await.map(|i| i.size).unwrap_or(0);
                rec.normal(
                    "Pulled",
                    &format!(
                        "Successfully pulled image {image:?} in {} ({} including waiting). Image size: {size} bytes.",
                        go_duration(took),
                        go_duration(enqueued.elapsed())
                    ),
                )
                .await;
                return Ok(image_ref);
            }
            Ok(Err(e)) => e,
            Err(_) => format!(
                "pulling {} did not finish within {} (the kubelet's --image-pull-timeout): the registry {} is not answering or too slow",
                r.name,
                go_duration(timeout),
                r.registry
            ),
        };
        if self.opts.offline_fallback
            && is_network_error(&err)
            && let Some(id) = self.local(&r.name).await
        {
            rec.warning(
                "OfflineFallback",
                &format!(
                    "Failed to pull image {image:?}: {err}; no endpoint of registry {:?} is reachable, so the image already on the node is used (offline fallback; the kubelet's --image-pull-offline-fallback=false turns it off)",
                    r.registry
                ),
            )
            .await;
            return Ok(id);
        }
        let err = if is_network_error(&err) {
            // Lotse's hint for airgapped nodes, after the runtime's own words.
            format!(
                "{err} (no endpoint of registry {:?} is reachable and the image is not on the node: for an airgapped node put an archive of it into {})",
                r.registry,
                self.images_dir.display()
            )
        } else {
            err
        };
        rec.warning("Failed", &format!("Failed to pull image {image:?}: {err}"))
            .await;
        Err(err)
    }

    /// CRI PullImage with each matching credential in turn (none: anonymous), as Kubernetes'
    /// puller does; the errors of every attempt when all fail.
    async fn pull_with(&self, name: &str, creds: &[keyring::Credential]) -> Result<String, String> {
        let mut is = self.cri.img.clone();
        let auths: Vec<Option<cri::AuthConfig>> = if creds.is_empty() {
            vec![None]
        } else {
            creds.iter().map(|c| Some(c.to_cri())).collect()
        };
        let mut errs = Vec::new();
        for auth in auths {
            match is
                .pull_image(cri::PullImageRequest {
                    image: Some(cri::ImageSpec {
                        image: name.to_string(),
                        ..Default::default()
                    }),
                    auth,
                    sandbox_config: None,
                })
                .await
            {
                Ok(r) => return Ok(r.into_inner().image_ref),
                Err(s) => errs.push(grpc_error(&s)),
            }
        }
        Err(if errs.len() == 1 {
            errs.remove(0)
        } else {
            format!("[{}]", errs.join(", "))
        })
    }

    /// Image GC every `image_gc_period` (first pass at once); events `FreeDiskSpaceFailed` and,
    /// after two failed passes in a row, `ImageGCFailed`, on the Node.
    pub async fn gc_loop(self: Arc<Self>) {
        let mut failed_before = false;
        loop {
            // A runtime that stops answering (a full disk can stall containerd) must not stop
            // the loop silently: the pass fails and is reported like any other failure.
            let r = tokio::time::timeout(
                GC_PASS_TIMEOUT,
                gc::collect(
                    &self.cri,
                    &self.image_fs,
                    self.opts.image_gc_high_threshold,
                    self.opts.image_gc_low_threshold,
                    &[SANDBOX_IMAGE.to_string()],
                    &self.last_used,
                ),
            )
            .await
            .unwrap_or_else(|_| {
                Err(gc::GcError::Stats(format!(
                    "the container runtime did not answer within {GC_PASS_TIMEOUT:?}"
                )))
            });
            match r {
                Ok(0) => failed_before = false,
                Ok(freed) => {
                    tracing::info!(freed, "image GC freed bytes");
                    failed_before = false;
                }
                Err(e) => {
                    if let gc::GcError::NotEnough { .. } = e {
                        gc::node_event(
                            &self.client,
                            &self.node,
                            "Warning",
                            "FreeDiskSpaceFailed",
                            &e.to_string(),
                        )
                        .await;
                    }
                    if failed_before {
                        gc::node_event(
                            &self.client,
                            &self.node,
                            "Warning",
                            "ImageGCFailed",
                            &e.to_string(),
                        )
                        .await;
                    } else {
                        tracing::warn!(error = %e, "image garbage collection failed");
                    }
                    failed_before = true;
                }
            }
            tokio::time::sleep(self.opts.image_gc_period).await;
        }
    }
}

/// Renders the registry configuration for the node's containerd: hosts.toml files under
/// `<root>/containerd/certs.d` and the credential tables into `<root>/containerd/registry-auth.toml`
/// (appended to containerd's config when it starts). Without a file both are emptied.
pub fn apply_registry_config(
    layout: &crate::runtime::Layout,
    file: Option<&std::path::Path>,
) -> Result<(), String> {
    let reg = match file {
        Some(f) => registries::load(f)?,
        None => registries::Registries::default(),
    };
    let out = registries::render(&reg);
    for w in &out.warnings {
        tracing::warn!("{w}");
    }
    let dir = layout.root.join("containerd");
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    registries::write_hosts(&out, &layout.certs_dir())
        .map_err(|e| format!("write {}: {e}", layout.certs_dir().display()))?;
    let auth = layout.registry_auth();
    std::fs::write(&auth, &out.auth_toml).map_err(|e| format!("write {}: {e}", auth.display()))?;
    if let Some(f) = file {
        tracing::info!(file = %f.display(), registries = out.hosts.len(), "registry configuration applied");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalize_and_default_their_policy() {
        let r = parse_image("nginx").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.name, "docker.io/library/nginx:latest");
        assert_eq!(default_pull_policy(&r), "Always");
        let r = parse_image("nginx:1.25").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (r.name.as_str(), r.registry.as_str(), r.repository.as_str()),
            ("docker.io/library/nginx:1.25", "docker.io", "library/nginx")
        );
        assert_eq!(default_pull_policy(&r), "IfNotPresent");
        let d = format!("127.0.0.1:5000/team/app@sha256:{}", "a".repeat(64));
        let r = parse_image(&d).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.name, d);
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(default_pull_policy(&r), "IfNotPresent");
        let r = parse_image("localhost:5000/x:latest").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(default_pull_policy(&r), "Always");
    }

    #[test]
    fn references_split_as_docker_splits_them() {
        let ff = "f".repeat(64);
        let cases = [
            (
                "busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                None,
            ),
            (
                "test.com:tag",
                "docker.io",
                "library/test.com",
                Some("tag"),
                None,
            ),
            ("test.com/repo:tag", "test.com", "repo", Some("tag"), None),
            ("test:5000/repo", "test:5000", "repo", Some("latest"), None),
            ("localhost/repo", "localhost", "repo", Some("latest"), None),
            (
                "index.docker.io/nginx",
                "docker.io",
                "library/nginx",
                Some("latest"),
                None,
            ),
            (
                "lowercase:Uppercase",
                "docker.io",
                "library/lowercase",
                Some("Uppercase"),
                None,
            ),
            (
                "foo/foo_bar.com:8080",
                "docker.io",
                "foo/foo_bar.com",
                Some("8080"),
                None,
            ),
            ("a.b/x--y__z/w.v:t", "a.b", "x--y__z/w.v", Some("t"), None),
            ("[::1]:5000/app:v1", "[::1]:5000", "app", Some("v1"), None),
        ];
        for (input, registry, repository, tag, digest) in cases {
            let r = parse_image(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                (
                    r.registry.as_str(),
                    r.repository.as_str(),
                    r.tag.as_deref(),
                    r.digest.as_deref()
                ),
                (registry, repository, tag, digest),
                "{input}"
            );
        }
        let both = format!("test:5000/repo:tag@sha256:{ff}");
        let r = parse_image(&both).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (r.name.as_str(), r.tag.as_deref()),
            (both.as_str(), Some("tag"))
        );
    }

    #[test]
    fn bad_names_are_invalid_reference_formats() {
        let ff = "f".repeat(64);
        for bad in [
            ":justtag".to_string(),
            format!("@sha256:{ff}"),
            format!("repo@sha256:{}", "f".repeat(34)),
            format!("validname@invaliddigest:{ff}"),
            "Uppercase:tag".into(),
            "test:5000/Uppercase/lowercase:tag".into(),
            "a".repeat(256),
            "aa/asdf$$^/aa".into(),
            "nginx:ümlaut".into(),
            "nginx:-tag".into(),
        ] {
            let e = parse_image(&bad).err().unwrap_or_default();
            assert!(e.starts_with("invalid reference format"), "{bad:?}: {e:?}");
        }
        for bad in ["", "nginx:", "UPPER/case", "a b", "nginx@sha256:123", "-x"] {
            let e = parse_image(bad).err().unwrap_or_default();
            assert!(e.starts_with("invalid reference format"), "{bad:?}: {e:?}");
        }
    }

    #[test]
    fn durations_print_like_go() {
        assert_eq!(go_duration(Duration::from_millis(523)), "523ms");
        assert_eq!(go_duration(Duration::from_millis(1200)), "1.2s");
        assert_eq!(go_duration(Duration::from_millis(2000)), "2s");
        assert_eq!(go_duration(Duration::from_millis(123_500)), "2m3.5s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn only_unreachable_registries_are_network_errors() {
        let refused = "rpc error: code = Unknown desc = failed to pull and unpack image \"docker.io/library/nginx:latest\": failed to resolve reference \"docker.io/library/nginx:latest\": failed to do request: Head \"https://registry-1.docker.io/v2/library/nginx/manifests/latest\": dial tcp: lookup registry-1.docker.io: no such host";
        assert!(is_network_error(refused));
        assert!(is_network_error(
            "dial tcp 127.0.0.1:5000: connect: connection refused"
        ));
        assert!(!is_network_error(
            "rpc error: code = Unknown desc = failed to pull and unpack image: failed to resolve reference \"127.0.0.1:5000/x:1\": pulling from host 127.0.0.1:5000 failed with status code [manifests 1]: 401 Unauthorized"
        ));
        assert!(!is_network_error(
            "rpc error: code = NotFound desc = failed to pull and unpack image \"127.0.0.1:5000/x:9\": failed to resolve reference \"127.0.0.1:5000/x:9\": 127.0.0.1:5000/x:9: not found"
        ));
        assert!(!is_network_error(
            "tls: failed to verify certificate: x509: certificate signed by unknown authority"
        ));
    }

    #[test]
    fn grpc_errors_print_like_go() {
        let s = tonic::Status::not_found("x: not found");
        assert_eq!(
            grpc_error(&s),
            "rpc error: code = NotFound desc = x: not found"
        );
    }
}
