//! `kubelet`: Lotse's node agent.
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Lotse kubelet: runs the pods the scheduler binds to this node with containerd (CRI), reports
/// their status, and keeps the Node and its Lease up to date.
///
/// Without --container-runtime-endpoint it starts and supervises its own containerd (Debian
/// packages `containerd` and `runc`) with everything under --root-dir; image archives in
/// <root-dir>/images/ are imported at start (no registry is needed; `lotse images build` makes them):
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
