//! Lotse controllers: the kube-controller-manager equivalents, built on kube-runtime.
//!
//! Every controller talks to the apiserver only through its API. [`run`] starts the controllers
//! named in [`Config::controllers`], behind a Lease-based leader election when asked.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bootstrapsigner;
pub mod classroom;
pub mod cronjob;
pub mod csrapproving;
pub mod csrsigning;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod events;
pub mod expectations;
pub mod gc;
pub mod history;
pub mod hpa;
pub mod job;
pub mod namespace;
pub mod node;
pub mod replicaset;
pub mod serviceaccount;
pub mod statefulset;
pub mod tokencleaner;
pub mod util;
pub mod volume;

use std::time::Duration;

/// Every controller [`run`] knows, by its Kubernetes name.
pub const ALL_CONTROLLERS: &[&str] = &[
    "replicaset",
    "replicationcontroller",
    "deployment",
    "namespace",
    "serviceaccount",
    "garbagecollector",
    "endpoints",
    "job",
    "cronjob",
    "nodelifecycle",
    "daemonset",
    "statefulset",
    "persistentvolume-binder",
    "csrapproving",
    "csrsigning",
    "bootstrapsigner",
    "tokencleaner",
    "disruption",
    "horizontalpodautoscaling",
    "classroom",
];

/// Where local-path volumes live by default: `<default data-dir>/storage`, as k3s.
pub const DEFAULT_LOCAL_PATH_DIR: &str = "/var/lib/lotse/storage";

/// What the controllers need to know about the cluster and how to behave.
#[derive(Clone, Debug)]
pub struct Config {
    /// Pod network of the cluster; nodes get their `spec.podCIDR` from it.
    pub cluster_cidr: String,
    /// How long a node may go without renewing its Lease before it is marked unhealthy.
    pub node_monitor_grace_period: Duration,
    /// Toleration seconds used for pods that do not tolerate `not-ready`/`unreachable` themselves.
    pub pod_eviction_timeout: Duration,
    /// `--leader-elect`: take part in leader election (only the leader runs controllers).
    pub leader_elect: bool,
    /// `--leader-elect-resource-namespace`: namespace of the Lease.
    pub lease_namespace: String,
    /// `--leader-elect-resource-name`: name of the Lease.
    pub lease_name: String,
    /// Identity used as the Lease holder; unique per process.
    pub identity: String,
    /// `--leader-elect-lease-duration`, `-renew-deadline`, `-retry-period`.
    pub leader_election: client_tools::leaderelection::Timings,
    /// Controllers to run; `*` means all of them, `-name` turns one off.
    pub controllers: Vec<String>,
    /// PEM of the cluster CA, published as `kube-root-ca.crt` in every namespace.
    pub root_ca_pem: Option<String>,
    /// Directory on the nodes under which local-path volumes are created (k3s:
    /// `<data-dir>/storage`).
    pub local_path_dir: std::path::PathBuf,
    /// Image of the local-path provisioner's helper pods (present on every node).
    pub helper_image: String,
    /// `--cluster-signing-cert-file`: the CA certificate (PEM) csrsigning issues certificates
    /// with; without it and the key, csrsigning does not run.
    pub cluster_signing_cert_file: Option<std::path::PathBuf>,
    /// `--cluster-signing-key-file`: the CA's private key (PEM).
    pub cluster_signing_key_file: Option<std::path::PathBuf>,
    /// `--cluster-signing-duration`: the longest validity of an issued certificate.
    pub cluster_signing_duration: Duration,
    /// Lotse's `--approve-kubelet-serving`: csrapproving also approves a node's own kubelet
    /// serving request naming only its name and Node addresses (Kubernetes leaves those to a
    /// human or an add-on).
    pub approve_kubelet_serving: bool,
    /// The horizontal pod autoscaler's `--horizontal-pod-autoscaler-*` settings.
    pub horizontal_pod_autoscaler: hpa::Settings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cluster_cidr: "10.244.0.0/16".into(),
            node_monitor_grace_period: Duration::from_secs(40),
            pod_eviction_timeout: Duration::from_secs(300),
            leader_elect: true,
            lease_namespace: "kube-system".into(),
            lease_name: "kube-controller-manager".into(),
            identity: default_identity(),
            leader_election: client_tools::leaderelection::Timings::default(),
            controllers: vec!["*".into()],
            root_ca_pem: None,
            local_path_dir: DEFAULT_LOCAL_PATH_DIR.into(),
            helper_image: "busybox".into(),
            cluster_signing_cert_file: None,
            cluster_signing_key_file: None,
            cluster_signing_duration: csrsigning::DEFAULT_SIGNING_DURATION,
            approve_kubelet_serving: false,
            horizontal_pod_autoscaler: hpa::Settings::default(),
        }
    }
}

/// `<hostname>_<random>`, like kube-controller-manager's leader-election identity.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "lotse".into());
    format!("{host}_{:016x}", rand::random::<u64>())
}

impl Config {
    /// Whether the controller called `name` is enabled by [`Config::controllers`].
    pub fn enabled(&self, name: &str) -> bool {
        if self.controllers.iter().any(|c| c == &format!("-{name}")) {
            return false;
        }
        self.controllers.iter().any(|c| c == "*" || c == name)
    }
}

/// Errors of the controllers library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the apiserver failed.
    #[error("apiserver request failed: {0}")]
    Kube(#[from] kube::Error),
    /// An object could not be (de)serialized.
    #[error("serialization: {0}")]
    Json(#[from] serde_json::Error),
    /// An object is missing something the controller needs.
    #[error("invalid object: {0}")]
    Invalid(String),
    /// Leadership was lost; the process must stop acting.
    #[error("leader election lost")]
    LeadershipLost,
    /// Leader election could not start (e.g. timings client-go refuses).
    #[error("leader election: {0}")]
    LeaderElection(#[source] client_tools::Error),
    /// A controller task ended unexpectedly.
    #[error("controller {0} stopped")]
    Stopped(&'static str),
}

/// Runs the enabled controllers until one of them fails or leadership is lost.
pub async fn run(config: Config, client: kube::Client) -> Result<(), Error> {
    if !config.leader_elect {
        return run_controllers(config, client).await;
    }
    let elector = client_tools::leaderelection::LeaderElector::new(
        client.clone(),
        &config.lease_namespace,
        &config.lease_name,
        &config.identity,
        config.leader_election,
    )
    .map_err(Error::LeaderElection)?;
    let work = async {
        tracing::info!(identity = %config.identity, "became leader");
        run_controllers(config.clone(), client.clone()).await
    };
    match elector.run(work).await {
        Ok(result) => result,
        Err(client_tools::Error::LeadershipLost) => Err(Error::LeadershipLost),
        Err(e) => Err(Error::LeaderElection(e)),
    }
}

async fn run_controllers(config: Config, client: kube::Client) -> Result<(), Error> {
    let recorder = events::recorder(client.clone());
    let mut set = tokio::task::JoinSet::new();
    if config.enabled("replicaset") {
        set.spawn(replicaset::run(client.clone(), recorder.clone()));
    }
    if config.enabled("replicationcontroller") {
        set.spawn(replicaset::run_replication_controllers(
            client.clone(),
            recorder.clone(),
        ));
    }
    if config.enabled("deployment") {
        set.spawn(deployment::run(client.clone(), recorder.clone()));
    }
    if config.enabled("namespace") {
        set.spawn(namespace::run(client.clone(), recorder.clone()));
    }
    if config.enabled("serviceaccount") {
        set.spawn(serviceaccount::run(
            client.clone(),
            config.root_ca_pem.clone(),
        ));
    }
    if config.enabled("nodelifecycle") {
        set.spawn(node::run(
            client.clone(),
            recorder.clone(),
            config.cluster_cidr.clone(),
            config.node_monitor_grace_period,
            config.pod_eviction_timeout,
        ));
    }
    if config.enabled("daemonset") {
        set.spawn(daemonset::run(client.clone(), recorder.clone()));
    }
    if config.enabled("statefulset") {
        set.spawn(statefulset::run(client.clone(), recorder.clone()));
    }
    if config.enabled("job") {
        set.spawn(job::run(client.clone(), recorder.clone()));
    }
    if config.enabled("cronjob") {
        set.spawn(cronjob::run(client.clone(), recorder.clone()));
    }
    if config.enabled("endpoints") {
        set.spawn(endpoints::run(client.clone()));
    }
    if config.enabled("persistentvolume-binder") {
        let settings = volume::Settings {
            local_path_dir: config.local_path_dir.clone(),
            helper_image: config.helper_image.clone(),
        };
        set.spawn(volume::run(client.clone(), recorder.clone(), settings));
    }
    if config.enabled("disruption") {
        set.spawn(disruption::run(client.clone(), recorder.clone()));
    }
    if config.enabled("csrapproving") {
        set.spawn(csrapproving::run(
            client.clone(),
            config.approve_kubelet_serving,
        ));
    }
    if config.enabled("csrsigning") {
        match (
            &config.cluster_signing_cert_file,
            &config.cluster_signing_key_file,
        ) {
            (Some(cert), Some(key)) => {
                let ca = csrsigning::Ca::from_files(cert, key).map_err(Error::Invalid)?;
                let settings = csrsigning::Settings {
                    ca,
                    duration: config.cluster_signing_duration,
                };
                set.spawn(csrsigning::run(client.clone(), settings));
            }
            // As kube-controller-manager: without a signing CA the signer is skipped.
            _ => tracing::warn!(
                "csrsigning not started: --cluster-signing-cert-file and --cluster-signing-key-file are not set"
            ),
        }
    }
    if config.enabled("bootstrapsigner") {
        set.spawn(bootstrapsigner::run(client.clone()));
    }
    if config.enabled("tokencleaner") {
        set.spawn(tokencleaner::run(client.clone()));
    }
    if config.enabled("horizontalpodautoscaling") {
        set.spawn(hpa::run(
            client.clone(),
            recorder.clone(),
            config.horizontal_pod_autoscaler.clone(),
        ));
    }
    if config.enabled("classroom") {
        set.spawn(classroom::run(client.clone(), config.cluster_cidr.clone()));
    }
    if config.enabled("garbagecollector") {
        set.spawn(gc::run(client.clone()));
    }
    match set.join_next().await {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(Error::Invalid(format!("controller task panicked: {e}"))),
        None => Err(Error::Invalid("no controllers enabled".into())),
    }
}
