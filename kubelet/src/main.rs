//! `kubelet`: Lotse's node agent.
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Lotse kubelet: runs the pods the scheduler binds to this node with containerd (CRI), reports
/// their status, and keeps the Node and its Lease up to date.
///
/// Without --container-runtime-endpoint it starts and supervises its own containerd (Debian
/// packages `containerd` and `runc`) with everything under --root-dir; image archives in
/// <root-dir>/images/ are imported at start, once per content (`lotse images build` makes them);
/// other images are pulled from their registries through CRI (--registry-config for mirrors):
///
///   kubelet --kubeconfig /var/lib/lotse/admin.kubeconfig --node-name node1 --root-dir /var/lib/lotse/kubelet
#[derive(Parser)]
#[command(version, about, long_about)]
struct Args {
    /// kubeconfig with the node's credentials.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Name of this node (default: the host name).
    #[arg(long, env = "LOTSE_NODE_NAME")]
    node_name: Option<String>,
    /// Directory for images/, pods/, logs/ and the kubelet's own containerd.
    #[arg(long, env = "LOTSE_ROOT_DIR", default_value = "/var/lib/lotse/kubelet")]
    root_dir: PathBuf,
    /// CRI socket of a running containerd (unix:///run/containerd/containerd.sock); default: start one.
    #[arg(long, env = "LOTSE_CONTAINER_RUNTIME_ENDPOINT")]
    container_runtime_endpoint: Option<String>,
    /// This node's pod CIDR (pod IPs are allocated from it).
    #[arg(long, env = "LOTSE_POD_CIDR")]
    pod_cidr: Option<String>,
    /// HTTPS port of the kubelet API (container logs), reported in the Node's daemonEndpoints.
    #[arg(long, env = "LOTSE_KUBELET_PORT", default_value_t = 10250)]
    port: u16,
    /// The node's IP (default: the source address of the default route).
    #[arg(long, env = "LOTSE_NODE_IP")]
    node_ip: Option<String>,
    /// PEM CA bundle; only clients with a certificate it signed (and an authorized identity:
    /// group system:masters or user kube-apiserver-kubelet-client) may use the kubelet API.
    /// Default: the cluster CA of --kubeconfig.
    #[arg(long, env = "LOTSE_CLIENT_CA_FILE")]
    client_ca_file: Option<PathBuf>,
    /// What runs the pods: containerd, or `simulated` (no containers, only status transitions;
    /// for control-plane scale benchmarks).
    #[arg(long, env = "LOTSE_RUNTIME", value_enum, default_value_t = kubelet::RuntimeKind::Containerd)]
    runtime: kubelet::RuntimeKind,
    /// Pull images one at a time (false: in parallel).
    #[arg(long, env = "LOTSE_SERIALIZE_IMAGE_PULLS", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    serialize_image_pulls: bool,
    /// A pull that has not finished after this long fails with ErrImagePull (containerd 1.6 has
    /// no pull-progress timeout of its own).
    #[arg(long, env = "LOTSE_IMAGE_PULL_TIMEOUT", default_value = "5m", value_parser = kubelet::images::parse_duration)]
    image_pull_timeout: std::time::Duration,
    /// When a pull that policy Always requires fails because no endpoint of the registry is
    /// reachable (a network error, not 401/403/404) and the image is on the node, start the
    /// local image and record a Warning event (false: fail as Kubernetes does).
    #[arg(long, env = "LOTSE_IMAGE_PULL_OFFLINE_FALLBACK", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    image_pull_offline_fallback: bool,
    /// Registry mirrors, TLS and credentials in k3s's registries.yaml format, applied to the
    /// kubelet's containerd.
    #[arg(long, env = "LOTSE_REGISTRY_CONFIG")]
    registry_config: Option<PathBuf>,
    /// Image filesystem usage (percent) at which image garbage collection starts.
    #[arg(long, env = "LOTSE_IMAGE_GC_HIGH_THRESHOLD", default_value_t = 85, value_parser = clap::value_parser!(u8).range(0..=100))]
    image_gc_high_threshold: u8,
    /// Image filesystem usage (percent) image garbage collection frees down to.
    #[arg(long, env = "LOTSE_IMAGE_GC_LOW_THRESHOLD", default_value_t = 80, value_parser = clap::value_parser!(u8).range(0..=100))]
    image_gc_low_threshold: u8,
    /// Comma-separated IP addresses of the cluster DNS server: the nameservers of pods with
    /// `dnsPolicy: ClusterFirst`.
    #[arg(long, env = "LOTSE_CLUSTER_DNS", value_delimiter = ',')]
    cluster_dns: Vec<String>,
    /// The cluster's domain: pods' search path gets `<ns>.svc.<domain>`, `svc.<domain>`,
    /// `<domain>`.
    #[arg(long, env = "LOTSE_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// Resolver configuration file that `dnsPolicy: Default` pods inherit (empty: none).
    #[arg(long, env = "LOTSE_RESOLV_CONF", default_value = "/etc/resolv.conf")]
    resolv_conf: String,
    /// Cgroup under which the pods' `kubepods/` cgroups are made (give each node its own when
    /// several nodes share one machine).
    #[arg(long, env = "LOTSE_CGROUP_ROOT", default_value = "/")]
    cgroup_root: String,
    /// Ask the cluster CA for the serving certificate (a CertificateSigningRequest to the
    /// kubernetes.io/kubelet-serving signer, renewed before it expires) instead of serving a
    /// self-signed one; an approver must approve the requests (`controllers
    /// --approve-kubelet-serving`, or `kubectl certificate approve`).
    #[arg(long, env = "LOTSE_ROTATE_SERVER_CERTIFICATES")]
    rotate_server_certificates: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    anyhow::ensure!(
        a.image_gc_low_threshold < a.image_gc_high_threshold || a.image_gc_high_threshold == 100,
        "--image-gc-high-threshold ({}) must be greater than --image-gc-low-threshold ({})",
        a.image_gc_high_threshold,
        a.image_gc_low_threshold
    );
    let kc = kube::config::Kubeconfig::read_from(&a.kubeconfig)
        .with_context(|| format!("reading {}", a.kubeconfig.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .context("kubeconfig")?;
    let client_ca_der = match &a.client_ca_file {
        Some(f) => {
            let pem = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            kubelet::pem_certificates(&pem)
        }
        None => cfg.root_cert.clone().unwrap_or_default(),
    };
    let client = kube::Client::try_from(cfg).context("API client")?;
    let config = kubelet::Config {
        node_name: a.node_name.unwrap_or_else(hostname),
        root_dir: std::path::absolute(&a.root_dir)?,
        container_runtime_endpoint: a.container_runtime_endpoint,
        pod_cidr: a.pod_cidr,
        node_ip: a.node_ip.unwrap_or_else(kubelet::node::host_ip),
        port: a.port,
        max_pods: 110,
        runtime: a.runtime,
        client_ca_der,
        images: kubelet::images::Options {
            serialize_image_pulls: a.serialize_image_pulls,
            image_pull_timeout: a.image_pull_timeout,
            offline_fallback: a.image_pull_offline_fallback,
            registry_config: a.registry_config,
            image_gc_high_threshold: a.image_gc_high_threshold,
            image_gc_low_threshold: a.image_gc_low_threshold,
            ..kubelet::images::Options::from_env()
        },
        cluster_dns: a.cluster_dns,
        cluster_domain: a.cluster_domain,
        resolv_conf: a.resolv_conf,
        cgroup_root: a.cgroup_root,
        rotate_server_certificates: a.rotate_server_certificates,
    };
    kubelet::run(config, client, shutdown_signal()).await?;
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_else(|_| "node".into())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}
