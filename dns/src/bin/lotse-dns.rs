//! `lotse-dns`: the cluster DNS server.
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

/// lotse-dns: answers `<service>.<namespace>.svc.<cluster-domain>` and the rest of the Kubernetes
/// DNS specification from the API (as CoreDNS's kubernetes plugin), and forwards every other
/// name to the upstream resolvers of --resolv-conf.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Kubeconfig of the server's identity (default: $KUBECONFIG, ~/.kube/config, or the pod's
    /// service account).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The cluster domain.
    #[arg(long, env = "LOTSE_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// Address to listen on (UDP and TCP).
    #[arg(long, env = "LOTSE_DNS_BIND_ADDRESS", default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// Port to listen on (UDP and TCP).
    #[arg(long, env = "LOTSE_DNS_PORT", default_value_t = 53)]
    port: u16,
    /// Resolver configuration whose nameservers receive names outside the cluster domain.
    #[arg(
        long,
        env = "LOTSE_DNS_RESOLV_CONF",
        default_value = "/etc/resolv.conf"
    )]
    resolv_conf: PathBuf,
    /// Deadline of one forwarded query, in milliseconds (then SERVFAIL).
    #[arg(long, env = "LOTSE_DNS_FORWARD_TIMEOUT_MS", default_value_t = 2000)]
    forward_timeout_ms: u64,
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
    let config = match &a.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    let client = kube::Client::try_from(config)?;
    let cfg = dns::Config {
        cluster_domain: a.cluster_domain,
        listen: (a.bind_address, a.port).into(),
        resolv_conf: a.resolv_conf,
        forward_timeout: Duration::from_millis(a.forward_timeout_ms),
    };
    dns::run(cfg, client, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
