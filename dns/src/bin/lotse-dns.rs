//! `lotse-dns`: the cluster DNS server (the program of the `kube-system/coredns` pods).
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

/// lotse-dns: the cluster DNS. Answers `<service>.<namespace>.svc.<cluster-domain>` and the rest
/// of the Kubernetes DNS specification from the API (as CoreDNS's kubernetes plugin), and
/// forwards every other name to the nameservers of --resolv-conf.
///
/// It normally runs as the pods of the `kube-system/coredns` Deployment that `lotse up` creates
/// (image `docker.io/lotse/dns:<version>`, built offline from this binary), behind the
/// `kube-dns` Service. In a pod it needs no flags: it reads the API with the pod's ServiceAccount
/// (`KUBERNETES_SERVICE_HOST` and the mounted token), forwards to the pod's own
/// /etc/resolv.conf (dnsPolicy Default: the node's resolvers), listens on port 53 (UDP and TCP)
/// and serves /health on :8080 and /ready on :8181, as CoreDNS does.
///
/// Outside a cluster, e.g. for a try on a workstation:
///
///   lotse-dns --kubeconfig /var/lib/lotse/admin.kubeconfig --port 1053 --health-address '' --ready-address ''
///   dig @127.0.0.1 -p 1053 kubernetes.default.svc.cluster.local
#[derive(Parser)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Args {
    /// Kubeconfig of the server's identity (default: $KUBECONFIG, ~/.kube/config, else the
    /// pod's ServiceAccount).
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
    /// Where to serve the liveness endpoint `/health` (200 `OK` while the process serves);
    /// empty: not served.
    #[arg(
        long,
        env = "LOTSE_DNS_HEALTH_ADDRESS",
        default_value = "0.0.0.0:8080",
        value_name = "IP:PORT"
    )]
    health_address: String,
    /// Where to serve the readiness endpoint `/ready` (200 `OK` once the Services,
    /// EndpointSlices and Namespaces are listed, 503 before); empty: not served.
    #[arg(
        long,
        env = "LOTSE_DNS_READY_ADDRESS",
        default_value = "0.0.0.0:8181",
        value_name = "IP:PORT"
    )]
    ready_address: String,
}

/// `host:port`, or empty for "off".
fn optional_addr(flag: &str, s: &str) -> anyhow::Result<Option<SocketAddr>> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).with_context(|| {
        format!(
            "invalid value {s:?} for {flag}: want <ip>:<port>, e.g. 0.0.0.0:8080, or '' for off"
        )
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Plain lines in a pod's log (no terminal there).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let a = Args::parse();
    let health = optional_addr("--health-address", &a.health_address)?;
    let ready = optional_addr("--ready-address", &a.ready_address)?;
    let client = match &a.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
            kube::Client::try_from(config)?
        }
        // In a pod: the ServiceAccount's token and CA, and KUBERNETES_SERVICE_HOST/PORT.
        None => kube::Client::try_default().await.context(
            "no kubeconfig and not in a pod (KUBERNETES_SERVICE_HOST unset): pass --kubeconfig",
        )?,
    };
    let cfg = dns::Config {
        cluster_domain: a.cluster_domain,
        listen: (a.bind_address, a.port).into(),
        resolv_conf: a.resolv_conf,
        forward_timeout: Duration::from_millis(a.forward_timeout_ms),
        health,
        ready,
    };
    dns::run(cfg, client, shutdown()).await?;
    Ok(())
}

/// SIGTERM (the kubelet stopping the pod) or Ctrl-C.
async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_with_coredns_defaults() {
        use clap::CommandFactory;
        Args::command().debug_assert();
        let a = Args::try_parse_from(["lotse-dns"]).unwrap();
        assert_eq!(a.port, 53);
        assert_eq!(
            optional_addr("--health-address", &a.health_address).unwrap(),
            Some("0.0.0.0:8080".parse().unwrap())
        );
        assert_eq!(
            optional_addr("--ready-address", &a.ready_address).unwrap(),
            Some("0.0.0.0:8181".parse().unwrap())
        );
        let a = Args::try_parse_from(["lotse-dns", "--ready-address", ""]).unwrap();
        assert_eq!(
            optional_addr("--ready-address", &a.ready_address).unwrap(),
            None
        );
        assert!(optional_addr("--ready-address", "8181").is_err());
    }
}
