//! `apiserver`: Lotse's Kubernetes API server.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

/// Lotse's Kubernetes API server.
///
/// Serves the Kubernetes REST API over HTTPS. State lives in an embedded SQLite database under
/// --data-dir, or in etcd when --etcd-servers is given. On first start it creates a cluster CA
/// and writes <data-dir>/admin.kubeconfig; point kubectl at it:
///
///   apiserver --data-dir ./lotse-data &
///   export KUBECONFIG=./lotse-data/admin.kubeconfig
///   kubectl get namespaces
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Directory for the PKI, the embedded database and kubeconfigs.
    #[arg(long, env = "LOTSE_DATA_DIR", default_value = "/var/lib/lotse")]
    data_dir: PathBuf,
    /// IP address to listen on (0.0.0.0 for all interfaces).
    #[arg(long, env = "LOTSE_BIND_ADDRESS", default_value = "127.0.0.1")]
    bind_address: IpAddr,
    /// The address the `kubernetes` Service's endpoints carry (the serving certificate names
    /// it). Default: --bind-address, or the host's primary address when that is 0.0.0.0.
    #[arg(long, env = "LOTSE_ADVERTISE_ADDRESS")]
    advertise_address: Option<IpAddr>,
    /// HTTPS port.
    #[arg(long, env = "LOTSE_SECURE_PORT", default_value_t = 6443)]
    secure_port: u16,
    /// Path to a cert file for the certificate authority: kubelets' serving certificates must
    /// be signed by it (logs, exec, attach, port-forward, metrics). Unset: not verified.
    #[arg(long, env = "LOTSE_KUBELET_CERTIFICATE_AUTHORITY")]
    kubelet_certificate_authority: Option<PathBuf>,
    /// Comma-separated etcd client URLs (e.g. http://127.0.0.1:2379). Empty: embedded SQLite.
    #[arg(long, env = "LOTSE_ETCD_SERVERS", value_delimiter = ',')]
    etcd_servers: Vec<String>,
    /// SSL Certificate Authority file used to secure etcd communication.
    #[arg(long, env = "LOTSE_ETCD_CAFILE")]
    etcd_cafile: Option<PathBuf>,
    /// SSL certification file used to secure etcd communication.
    #[arg(long, env = "LOTSE_ETCD_CERTFILE")]
    etcd_certfile: Option<PathBuf>,
    /// SSL key file used to secure etcd communication.
    #[arg(long, env = "LOTSE_ETCD_KEYFILE")]
    etcd_keyfile: Option<PathBuf>,
    /// File with an apiserver.config.k8s.io/v1 EncryptionConfiguration: which resources are
    /// encrypted at rest and with which keys (providers aescbc, aesgcm, secretbox, identity;
    /// the first provider encrypts, all of them decrypt).
    #[arg(long, env = "LOTSE_ENCRYPTION_PROVIDER_CONFIG")]
    encryption_provider_config: Option<PathBuf>,
    /// SQLite's durability: `normal` (default) keeps every acknowledged write through any
    /// process crash; `full` fsyncs each commit so it survives power loss too (slower writes).
    #[arg(long, env = "LOTSE_SQLITE_SYNCHRONOUS", default_value = "normal", value_parser = ["normal", "full"])]
    sqlite_synchronous: String,
    /// CIDR from which Service ClusterIPs are allocated.
    #[arg(
        long,
        env = "LOTSE_SERVICE_CLUSTER_IP_RANGE",
        default_value = "10.96.0.0/12"
    )]
    service_cluster_ip_range: ipnet::Ipv4Net,
    /// Extra subject alternative names (hostnames or IPs) for the serving certificate.
    #[arg(long, env = "LOTSE_TLS_SAN", value_delimiter = ',')]
    tls_san: Vec<String>,
    /// Requests (other than mutating ones) the server runs at once; with
    /// --max-mutating-requests-inflight the total concurrency, shared among priority levels
    /// (API Priority and Fairness' default shares, one fair queue per user within a level).
    #[arg(long, env = "LOTSE_MAX_REQUESTS_INFLIGHT", default_value_t = apiserver::flowcontrol::DEFAULT_MAX_REQUESTS_INFLIGHT)]
    max_requests_inflight: usize,
    /// Mutating requests the server runs at once (added to --max-requests-inflight).
    #[arg(long, env = "LOTSE_MAX_MUTATING_REQUESTS_INFLIGHT", default_value_t = apiserver::flowcontrol::DEFAULT_MAX_MUTATING_REQUESTS_INFLIGHT)]
    max_mutating_requests_inflight: usize,
    /// How long a request may take before it gets 504 (watches, exec, logs and proxies
    /// excepted); queued requests wait at most a quarter of it. A Go duration: 60s, 1m, 1m30s.
    #[arg(long, env = "LOTSE_REQUEST_TIMEOUT", default_value = "1m0s", value_parser = parse_timeout)]
    request_timeout: Duration,
    /// Seconds between storage compactions (Kubernetes: 300).
    #[arg(long, env = "LOTSE_COMPACTION_INTERVAL", default_value_t = 300)]
    compaction_interval_seconds: u64,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    match apiserver::flowcontrol::parse_go_duration(s) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("invalid duration {s:?} (e.g. 60s, 1m, 1m30s)")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let cfg = apiserver::server::Config {
        data_dir: args.data_dir,
        bind_address: args.bind_address,
        secure_port: args.secure_port,
        etcd_servers: args
            .etcd_servers
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect(),
        service_cluster_ip_range: args.service_cluster_ip_range,
        extra_sans: args.tls_san,
        advertise_address: args.advertise_address,
        compaction_interval: Duration::from_secs(args.compaction_interval_seconds.max(1)),
    };
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
    };
    let opts = apiserver::server::StorageOptions {
        etcd_tls: apiserver::storage::etcd::EtcdTls {
            ca_file: args.etcd_cafile,
            cert_file: args.etcd_certfile,
            key_file: args.etcd_keyfile,
        },
        encryption_provider_config: args.encryption_provider_config,
        sqlite_sync_full: args.sqlite_synchronous == "full",
    };
    let running = apiserver::server::start_with(cfg, opts, shutdown)
        .await
        .context("starting the apiserver")?;
    running.state.flow_control.configure(
        args.max_requests_inflight,
        args.max_mutating_requests_inflight,
        args.request_timeout,
    );
    if let Some(path) = &args.kubelet_certificate_authority {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("--kubelet-certificate-authority {}", path.display()))?;
        let _ = running.state.security.kubelet_ca.set(pem);
    }
    tracing::info!(addr = %running.addr, kubeconfig = %running.admin_kubeconfig.display(), "apiserver ready");
    println!("export KUBECONFIG={}", running.admin_kubeconfig.display());
    running
        .task
        .await
        .context("server task")?
        .context("serving")?;
    Ok(())
}
