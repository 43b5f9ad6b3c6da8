//! `lotse-agent`: the node network agent (Services in nftables, pod egress masquerade).
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use cni_plugin::agent::{self, AgentConfig};
use ipnet::Ipv4Net;

/// lotse-agent: makes Services carry traffic on this node (kube-proxy's nftables mode: ClusterIP,
/// NodePort, LoadBalancer through the built-in service load balancer, session affinity, traffic
/// policies) and masquerades pod traffic that leaves the cluster network. Needs root and the
/// `nft` program (Debian package nftables).
#[derive(Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Kubeconfig of the agent's identity (e.g. user system:kube-proxy).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// This node's name (default: the host name).
    #[arg(long, alias = "node-name", env = "LOTSE_NODE_NAME")]
    hostname_override: Option<String>,
    /// The cluster's pod network: traffic from outside it to a Service is masqueraded, and pod
    /// traffic leaving it is masqueraded.
    #[arg(long, env = "LOTSE_CLUSTER_CIDR", default_value = "10.244.0.0/16")]
    cluster_cidr: Ipv4Net,
    /// CIDRs of the local addresses that accept NodePort traffic (comma-separated); `primary`
    /// or empty: the node's InternalIPs.
    #[arg(long, env = "LOTSE_NODEPORT_ADDRESSES", value_delimiter = ',')]
    nodeport_addresses: Vec<String>,
    /// Minimum interval between two rule syncs (a burst of changes is one transaction).
    #[arg(long, env = "LOTSE_MIN_SYNC_PERIOD", default_value = "50ms", value_parser = client_tools::parse_duration)]
    min_sync_period: Duration,
    /// Name of the agent's nftables table (family ip).
    #[arg(long, env = "LOTSE_NFTABLES_TABLE", default_value = "lotse")]
    nftables_table: String,
    /// Don't set LoadBalancer Services' status.loadBalancer.ingress (another load balancer does).
    #[arg(long, env = "LOTSE_DISABLE_SERVICE_LB")]
    disable_service_lb: bool,
    /// Route the other nodes' podCIDRs, as flannel's backend of this name: `host-gw` (through
    /// their InternalIPs; all nodes on one L2 segment) or `vxlan` (encapsulated to their
    /// InternalIPs, VNI 1, UDP 8472). Needed on every node of a multi-node cluster; unset: no
    /// routes (one node).
    #[arg(long, env = "LOTSE_FLANNEL_BACKEND", value_enum)]
    flannel_backend: Option<agent::routes::Backend>,
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
    let node_name = a.hostname_override.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_lowercase())
            .unwrap_or_else(|_| "node".into())
    });
    let mut cfg = AgentConfig::new(node_name);
    cfg.cluster_cidr = a.cluster_cidr;
    cfg.nodeport_addresses = a
        .nodeport_addresses
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty() && *s != "primary")
        .map(|s| {
            s.parse()
                .with_context(|| format!("--nodeport-addresses: bad CIDR {s:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    cfg.min_sync_period = a.min_sync_period;
    cfg.table = a.nftables_table;
    cfg.service_lb = !a.disable_service_lb;
    cfg.flannel_backend = a.flannel_backend;
    let kc = kube::config::Kubeconfig::read_from(&a.kubeconfig)
        .with_context(|| format!("reading {}", a.kubeconfig.display()))?;
    let kcfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .context("kubeconfig")?;
    let client = kube::Client::try_from(kcfg)?;
    agent::run(cfg, client, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
