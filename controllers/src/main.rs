//! `controllers`: the Lotse controller manager (Deployments, ReplicaSets, namespaces,
//! service accounts, garbage collection), talking to the apiserver through its API.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use clap::Parser;
use client_tools::parse_duration;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Runs the Lotse controllers (the kube-controller-manager equivalent) against an apiserver.
///
/// Example: controllers --kubeconfig /var/lib/lotse/admin.kubeconfig
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Kubeconfig to reach the apiserver with (its CA is also published as kube-root-ca.crt).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Pod network of the cluster; each node gets a podCIDR from it.
    #[arg(long, env = "LOTSE_CLUSTER_CIDR", default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// Seconds a node may go without renewing its Lease before it is marked unhealthy.
    #[arg(long, env = "LOTSE_NODE_MONITOR_GRACE_PERIOD", default_value = "40s", value_parser = parse_duration)]
    node_monitor_grace_period: Duration,
    /// Default toleration for not-ready/unreachable taints before pods are evicted.
    #[arg(long, env = "LOTSE_POD_EVICTION_TIMEOUT", default_value = "300s", value_parser = parse_duration)]
    pod_eviction_timeout: Duration,
    /// Take part in leader election; only the holder of the Lease (--leader-elect-resource-namespace/name) acts.
    #[arg(long, env = "LOTSE_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    leader_elect: bool,
    /// How long other candidates wait after the leader's last renewal before taking over
    /// (Go-style duration: 15s, 500ms, 1m).
    #[arg(long, env = "LOTSE_LEADER_ELECT_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    leader_elect_lease_duration: Duration,
    /// How long the leader keeps retrying a failed renewal before it exits.
    #[arg(long, env = "LOTSE_LEADER_ELECT_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    leader_elect_renew_deadline: Duration,
    /// Pause between attempts to acquire or renew the Lease.
    #[arg(long, env = "LOTSE_LEADER_ELECT_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    leader_elect_retry_period: Duration,
    /// Namespace of the leader election Lease.
    #[arg(
        long,
        env = "LOTSE_LEADER_ELECT_RESOURCE_NAMESPACE",
        default_value = "kube-system"
    )]
    leader_elect_resource_namespace: String,
    /// Name of the leader election Lease.
    #[arg(
        long,
        env = "LOTSE_LEADER_ELECT_RESOURCE_NAME",
        default_value = "kube-controller-manager"
    )]
    leader_elect_resource_name: String,
    /// Controllers to run: `*` for all, a name to enable, `-name` to disable
    /// (replicaset, deployment, namespace, serviceaccount, garbagecollector, endpoints, job, nodelifecycle, daemonset, statefulset, persistentvolume-binder, csrapproving, csrsigning, bootstrapsigner, tokencleaner, horizontalpodautoscaling, classroom).
    #[arg(
        long,
        env = "LOTSE_CONTROLLERS",
        value_delimiter = ',',
        default_value = "*"
    )]
    controllers: Vec<String>,
    /// Directory on the nodes where the local-path provisioner puts volumes (k3s's flag).
    #[arg(long, env = "LOTSE_DEFAULT_LOCAL_STORAGE_PATH", default_value = controllers::DEFAULT_LOCAL_PATH_DIR)]
    default_local_storage_path: PathBuf,
    /// Image of the local-path provisioner's helper pods, which remove deleted volumes' directories.
    #[arg(long, env = "LOTSE_LOCAL_PATH_HELPER_IMAGE", default_value = "busybox")]
    local_path_helper_image: String,
    /// PEM CA certificate the csrsigning controller issues cluster-scoped certificates with
    /// (e.g. <data-dir>/pki/ca.crt).
    #[arg(long, env = "LOTSE_CLUSTER_SIGNING_CERT_FILE")]
    cluster_signing_cert_file: Option<PathBuf>,
    /// PEM private key of --cluster-signing-cert-file (e.g. <data-dir>/pki/ca.key).
    #[arg(long, env = "LOTSE_CLUSTER_SIGNING_KEY_FILE")]
    cluster_signing_key_file: Option<PathBuf>,
    /// The longest validity of a signed certificate (a CSR's spec.expirationSeconds may ask for less).
    #[arg(long, env = "LOTSE_CLUSTER_SIGNING_DURATION", default_value = "8760h", value_parser = parse_duration)]
    cluster_signing_duration: Duration,
    /// Approve kubelet serving certificate requests a node makes for its own name and Node
    /// addresses (off by default, as in Kubernetes, where an add-on does this).
    #[arg(long, env = "LOTSE_APPROVE_KUBELET_SERVING", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    approve_kubelet_serving: bool,
    /// How often every HorizontalPodAutoscaler is reconciled.
    #[arg(long, env = "LOTSE_HPA_SYNC_PERIOD", default_value = "15s", value_parser = parse_duration)]
    horizontal_pod_autoscaler_sync_period: Duration,
    /// The minimum change (from 1.0) in the desired-to-actual metrics ratio for the autoscaler to scale.
    #[arg(long, env = "LOTSE_HPA_TOLERANCE", default_value_t = 0.1)]
    horizontal_pod_autoscaler_tolerance: f64,
    /// How far back the autoscaler looks for a higher recommendation before it scales down
    /// (HPAs without `behavior`).
    #[arg(long, env = "LOTSE_HPA_DOWNSCALE_STABILIZATION", default_value = "5m", value_parser = parse_duration)]
    horizontal_pod_autoscaler_downscale_stabilization: Duration,
    /// After a pod starts, how long its CPU samples may be skipped while it is not ready.
    #[arg(long, env = "LOTSE_HPA_CPU_INITIALIZATION_PERIOD", default_value = "5m", value_parser = parse_duration)]
    horizontal_pod_autoscaler_cpu_initialization_period: Duration,
    /// After a pod starts, how long an unready pod is taken as not yet having been ready.
    #[arg(long, env = "LOTSE_HPA_INITIAL_READINESS_DELAY", default_value = "30s", value_parser = parse_duration)]
    horizontal_pod_autoscaler_initial_readiness_delay: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    let args = Args::parse();
    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let root_ca_pem = root_ca(&kubeconfig);
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("loading kubeconfig")?;
    let client = kube::Client::try_from(config).context("building client")?;
    for c in &args.controllers {
        let name = c.trim_start_matches('-');
        anyhow::ensure!(
            name == "*" || controllers::ALL_CONTROLLERS.contains(&name),
            "unknown controller {name:?}; known: {}",
            controllers::ALL_CONTROLLERS.join(", ")
        );
    }
    let config = controllers::Config {
        cluster_cidr: args.cluster_cidr,
        node_monitor_grace_period: args.node_monitor_grace_period,
        pod_eviction_timeout: args.pod_eviction_timeout,
        leader_elect: args.leader_elect,
        lease_namespace: args.leader_elect_resource_namespace,
        lease_name: args.leader_elect_resource_name,
        identity: controllers::default_identity(),
        leader_election: client_tools::leaderelection::Timings {
            lease_duration: args.leader_elect_lease_duration,
            renew_deadline: args.leader_elect_renew_deadline,
            retry_period: args.leader_elect_retry_period,
        },
        controllers: args.controllers,
        root_ca_pem,
        local_path_dir: args.default_local_storage_path,
        helper_image: args.local_path_helper_image,
        cluster_signing_cert_file: args.cluster_signing_cert_file,
        cluster_signing_key_file: args.cluster_signing_key_file,
        cluster_signing_duration: args.cluster_signing_duration,
        approve_kubelet_serving: args.approve_kubelet_serving,
        horizontal_pod_autoscaler: controllers::hpa::Settings {
            sync_period: args.horizontal_pod_autoscaler_sync_period,
            tolerance: args.horizontal_pod_autoscaler_tolerance,
            downscale_stabilization: args.horizontal_pod_autoscaler_downscale_stabilization,
            cpu_initialization_period: args.horizontal_pod_autoscaler_cpu_initialization_period,
            initial_readiness_delay: args.horizontal_pod_autoscaler_initial_readiness_delay,
        },
    };
    controllers::run(config, client)
        .await
        .context("controllers stopped")
}

/// The CA of the current context's cluster, as PEM.
fn root_ca(kc: &Kubeconfig) -> Option<String> {
    let ctx_name = kc.current_context.as_deref()?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)?
        .context
        .as_ref()?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)?
        .cluster
        .as_ref()?;
    if let Some(data) = &cluster.certificate_authority_data {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .ok()?;
        return String::from_utf8(bytes).ok();
    }
    std::fs::read_to_string(cluster.certificate_authority.as_ref()?).ok()
}
