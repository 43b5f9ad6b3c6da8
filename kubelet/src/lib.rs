//! Lotse kubelet: runs the pods bound to its node through containerd's CRI and reports them.
//!
//! [`run`] registers the Node and renews its Lease, imports the airgapped image archives
//! ([`images`]: pulls, registries, archives, GC), and
//! keeps one [`pods::worker`] per pod bound to the node. containerd is either given
//! (`--container-runtime-endpoint`) or started and supervised by the kubelet with Lotse's
//! configuration ([`runtime::Containerd`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attach;
pub mod channels;
pub(crate) mod containerd_tasks;
pub mod events;
pub mod exec;
pub mod hooks;
pub mod images;
pub mod node;
pub mod pods;
pub mod portforward;
pub mod probe;
pub mod runtime;
pub mod server;
pub mod serving_cert;
pub mod simulated;
pub mod spdy;
pub mod spec;
pub mod stats;
pub mod stream;
pub mod volumes;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;
use tokio::sync::watch;

/// How the kubelet runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Node name (`--node-name`).
    pub node_name: String,
    /// Root directory: images/, pods/, logs/, containerd/ and cni/ live under it.
    pub root_dir: PathBuf,
    /// CRI endpoint; `None` starts and supervises a containerd under the root dir.
    pub container_runtime_endpoint: Option<String>,
    /// The node's pod CIDR (`--pod-cidr`), used by lotse-cni's IPAM.
    pub pod_cidr: Option<String>,
    /// The node's InternalIP.
    pub node_ip: String,
    /// Port the kubelet reports in `status.daemonEndpoints` (10250).
    pub port: u16,
    /// `pods` capacity.
    pub max_pods: u32,
    /// CA certificates (DER) whose client certificates may use the kubelet API
    /// (`--client-ca-file`; the cluster CA). Empty: every request is refused.
    pub client_ca_der: Vec<Vec<u8>>,
    /// What runs the pods (`--runtime`).
    pub runtime: RuntimeKind,
    /// Image pulls, registries, airgap archives and image GC.
    pub images: images::Options,
    /// `--cluster-dns`: the cluster DNS Service's addresses (ClusterFirst pods' nameservers).
    pub cluster_dns: Vec<String>,
    /// `--cluster-domain` (`cluster.local`).
    pub cluster_domain: String,
    /// `--resolv-conf`: the host resolver file that `dnsPolicy: Default` pods inherit (empty:
    /// none).
    pub resolv_conf: String,
    /// `--cgroup-root`: the cgroup under which `kubepods/` holds the pods' cgroups (`/`; the
    /// nodes of a multi-node cluster on one machine share the host's cgroup tree, so each gets
    /// its own).
    pub cgroup_root: String,
    /// `--rotate-server-certificates`: serve with a certificate from the cluster CA, asked for
    /// through the `kubernetes.io/kubelet-serving` signer and renewed before it expires
    /// ([`serving_cert`]); else a self-signed one.
    pub rotate_server_certificates: bool,
}

impl Config {
    /// The cgroup parent of pod `uid`: `<cgroup-root>/kubepods/pod<uid>`.
    pub fn pod_cgroup(&self, uid: &str) -> String {
        format!(
            "{}/kubepods/pod{uid}",
            self.cgroup_root.trim_end_matches('/')
        )
    }
}

/// What runs the pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// Real containers through containerd's CRI.
    #[default]
    Containerd,
    /// No containers: pods only go through the status transitions ([`simulated`]); for scale
    /// benchmarks of the control plane, never for tests of real behaviour.
    Simulated,
}

/// Errors of the kubelet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The container runtime failed or could not be started.
    #[error("container runtime: {0}")]
    Runtime(String),
    /// The apiserver refused or failed a request.
    #[error("apiserver: {0}")]
    Api(#[from] kube::Error),
}

/// Shared state of a running kubelet.
pub struct Kubelet {
    /// Configuration.
    pub config: Config,
    /// API client (the node's identity).
    pub client: kube::Client,
    /// CRI connection.
    pub cri: runtime::Cri,
    /// Cluster CA (PEM), for projected `ca.crt`.
    pub ca_pem: String,
    /// Pod IPs of the simulated runtime (None with containerd: lotse-cni allocates them).
    pub sim_ipam: Option<Arc<simulated::Ipam>>,
    /// Why the runtime is down (None: it is up); wakes the heartbeat when it changes.
    pub runtime_down: watch::Sender<Option<String>>,
    /// The image manager (pulls, airgap archives, GC).
    pub images: Arc<images::Manager>,
    /// The node's event recorder (`core/v1`, source `kubelet` on this node).
    pub events: client_tools::record::Recorder,
}

impl Kubelet {
    /// The runtime layout under the root dir.
    pub fn layout(&self) -> runtime::Layout {
        runtime::Layout {
            root: self.config.root_dir.clone(),
        }
    }
}

/// The certificates (DER) of a PEM bundle; anything else in it is skipped.
pub fn pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect()
}

/// The default pod CIDR of a single node (first /24 of the default cluster CIDR).
pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/24";

/// Starts the kubelet's own containerd (after writing the CNI configuration and registry
/// settings it reads) ahead of [`run_with`], so that a launcher can overlap containerd's start
/// with its apiserver's.
pub async fn start_containerd(
    root_dir: &std::path::Path,
    pod_cidr: &str,
    registry_config: Option<&std::path::Path>,
) -> Result<runtime::Containerd, Error> {
    let layout = runtime::Layout {
        root: root_dir.to_path_buf(),
    };
    std::fs::create_dir_all(layout.images())
        .map_err(|e| Error::Runtime(format!("create {}: {e}", layout.images().display())))?;
    runtime::setup_cni(&layout, pod_cidr)?;
    images::apply_registry_config(&layout, registry_config)
        .map_err(|e| Error::Runtime(format!("registry configuration: {e}")))?;
    runtime::Containerd::start(&layout).await
}

/// Runs the kubelet until `shutdown` resolves. Pods keep running when it stops (containerd's
/// shims own them); a restarted kubelet adopts them.
pub async fn run(
    config: Config,
    client: kube::Client,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    run_with(config, client, shutdown, None).await
}

/// [`run`] with a containerd already started by [`start_containerd`] (for the same root dir
/// and pod CIDR), which it then supervises as its own.
pub async fn run_with(
    mut config: Config,
    client: kube::Client,
    shutdown: impl std::future::Future<Output = ()>,
    started: Option<runtime::Containerd>,
) -> Result<(), Error> {
    let layout = runtime::Layout {
        root: config.root_dir.clone(),
    };
    std::fs::create_dir_all(layout.images())
        .map_err(|e| Error::Runtime(format!("create {}: {e}", layout.images().display())))?;
    let simulated = config.runtime == RuntimeKind::Simulated;
    let pod_cidr = match config.pod_cidr.clone() {
        Some(c) => c,
        // A simulated node has no network to size.
        None if simulated => DEFAULT_POD_CIDR.to_string(),
        // As a kubelet without --pod-cidr: register, then take what node IPAM assigns.
        None => node::await_pod_cidr(&client, &config).await?,
    };
    config.pod_cidr = Some(pod_cidr.clone());
    let mut containerd = None;
    let endpoint = match &config.container_runtime_endpoint {
        _ if simulated => layout.socket().to_string_lossy().into_owned(),
        Some(e) => e.clone(),
        None => {
            containerd = Some(match started {
                Some(c) => c,
                None => {
                    start_containerd(
                        &config.root_dir,
                        &pod_cidr,
                        config.images.registry_config.as_deref(),
                    )
                    .await?
                }
            });
            layout.socket().to_string_lossy().into_owned()
        }
    };
    // Lazy: with the simulated runtime nothing ever connects.
    let cri = runtime::connect(&endpoint)?;
    let events = events::node_recorder(client.clone(), &config.node_name);
    let image_manager = Arc::new(images::Manager::new(
        cri.clone(),
        client.clone(),
        events.clone(),
        &config.node_name,
        &layout,
        config.images.clone(),
    ));
    if !simulated {
        image_manager.sync_archives(None).await;
    }
    let ca_pem = ca_from_client(&client).await;
    let sim_ipam = if simulated {
        Some(Arc::new(simulated::Ipam::new(&pod_cidr)?))
    } else {
        None
    };
    let k = Arc::new(Kubelet {
        config: config.clone(),
        client: client.clone(),
        cri,
        ca_pem,
        sim_ipam,
        runtime_down: watch::channel(None).0,
        images: image_manager.clone(),
        events,
    });

    let since = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
    let (health, version) = runtime_health(&k).await;
    let node = node::register(
        &client,
        &config,
        node::node_status(&config, health, &since, &version),
    )
    .await?;
    tracing::info!(node = %config.node_name, "node registered");
    let hb = tokio::spawn(node::heartbeat(k.clone(), node));
    let pods = tokio::spawn(pod_loop(k.clone()));
    let image_gc =
        (!simulated && containerd.is_some()).then(|| tokio::spawn(image_manager.clone().gc_loop()));
    let api_addr = std::net::SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), config.port);
    let api = tokio::spawn({
        let k = k.clone();
        async move {
            if let Err(e) = server::serve(k, api_addr).await {
                tracing::error!(error = %e, "kubelet API server");
            }
        }
    });
    let supervise = async {
        match containerd.as_mut() {
            Some(c) => supervise(&k, &layout, c).await,
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = shutdown => tracing::info!("kubelet shutting down"),
        _ = supervise => {}
    }
    hb.abort();
    pods.abort();
    if let Some(gc) = image_gc {
        gc.abort();
    }
    api.abort();
    if let Some(c) = containerd {
        c.stop().await;
    }
    Ok(())
}

/// Keeps the kubelet's containerd running: when it exits the Node turns NotReady at once
/// (reason `KubeletNotReady`, "container runtime is down: ...") and containerd is restarted
/// after a back-off (1 s doubling to 30 s, reset after a minute up); pods keep running in their
/// shims meanwhile and are adopted by the new containerd. Never returns.
async fn supervise(k: &Kubelet, layout: &runtime::Layout, c: &mut runtime::Containerd) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let up_since = std::time::Instant::now();
        let st = c.wait().await;
        let why = match st {
            Ok(s) => format!("containerd exited ({s})"),
            Err(e) => format!("containerd: {e}"),
        };
        tracing::error!(reason = %why, "container runtime down");
        k.runtime_down.send_replace(Some(why.clone()));
        if up_since.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        loop {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
            match runtime::Containerd::start(layout).await {
                Ok(new) => {
                    *c = new;
                    tracing::info!("containerd restarted");
                    k.runtime_down.send_replace(None);
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "restarting containerd");
                    k.runtime_down
                        .send_replace(Some(format!("{why}; restart failed: {e}")));
                }
            }
        }
    }
}

async fn ca_from_client(client: &kube::Client) -> String {
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "kube-system");
    api.get_opt("kube-root-ca.crt")
        .await
        .ok()
        .flatten()
        .and_then(|c| c.data.and_then(|d| d.get("ca.crt").cloned()))
        .unwrap_or_default()
}

pub(crate) async fn runtime_health(k: &Kubelet) -> (Result<(), String>, String) {
    if k.config.runtime == RuntimeKind::Simulated {
        return (Ok(()), "simulated://lotse".into());
    }
    if let Some(why) = k.runtime_down.borrow().clone() {
        return (Err(why), String::new());
    }
    let mut rt = k.cri.rt.clone();
    match tokio::time::timeout(
        Duration::from_secs(5),
        rt.version(k8s_cri::v1::VersionRequest {
            version: "v1".into(),
        }),
    )
    .await
    {
        Ok(Ok(v)) => {
            let v = v.into_inner();
            (
                Ok(()),
                format!("{}://{}", v.runtime_name, v.runtime_version),
            )
        }
        Ok(Err(e)) => (Err(e.message().to_string()), String::new()),
        Err(_) => (Err("CRI Version timed out".into()), String::new()),
    }
}

/// Watches the pods bound to this node and keeps one worker per pod UID.
async fn pod_loop(k: Arc<Kubelet>) {
    let api: Api<Pod> = Api::all(k.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", k.config.node_name));
    let mut stream = watcher(api, cfg).boxed();
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let mut seen_in_relist: Option<std::collections::HashSet<String>> = None;
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "pod watch");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let upsert = |pod: Pod, workers: &mut HashMap<String, watch::Sender<Option<Pod>>>| {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            match workers.get(&uid) {
                Some(tx) if !tx.is_closed() => {
                    let _ = tx.send(Some(pod));
                }
                _ => {
                    let (tx, rx) = watch::channel(Some(pod));
                    match &k.sim_ipam {
                        Some(ipam) => tokio::spawn(simulated::worker(
                            k.clone(),
                            ipam.clone(),
                            uid.clone(),
                            rx,
                        )),
                        None => tokio::spawn(pods::worker(k.clone(), uid.clone(), rx)),
                    };
                    workers.insert(uid, tx);
                }
            }
        };
        match ev {
            watcher::Event::Apply(pod) => upsert(pod, &mut workers),
            watcher::Event::Delete(pod) => {
                if let Some(tx) = workers.remove(pod.metadata.uid.as_deref().unwrap_or("")) {
                    let _ = tx.send(None);
                }
            }
            watcher::Event::Init => seen_in_relist = Some(Default::default()),
            watcher::Event::InitApply(pod) => {
                if let Some(s) = seen_in_relist.as_mut() {
                    s.insert(pod.metadata.uid.clone().unwrap_or_default());
                }
                upsert(pod, &mut workers)
            }
            watcher::Event::InitDone => {
                let seen = seen_in_relist.take().unwrap_or_default();
                // Sandboxes of pods that no longer exist (deleted while the kubelet was down).
                let in_runtime = if k.sim_ipam.is_some() {
                    Default::default()
                } else {
                    pods::runtime_pod_uids(&k).await
                };
                for uid in in_runtime {
                    if !seen.contains(&uid) && !workers.contains_key(&uid) {
                        tracing::info!(uid = %uid, "removing orphaned pod sandbox");
                        let k = k.clone();
                        tokio::spawn(async move {
                            // Until the runtime confirms (it may be restarting).
                            while !pods::terminate(&k, &uid, None, 0).await {
                                tokio::time::sleep(Duration::from_secs(2)).await;
                            }
                        });
                    }
                }
                workers.retain(|uid, tx| {
                    if seen.contains(uid) {
                        true
                    } else {
                        let _ = tx.send(None);
                        false
                    }
                });
            }
        }
        workers.retain(|_, tx| !tx.is_closed());
    }
}
