//! `lotse-ingress`: the built-in ingress controller.
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// lotse-ingress: serves the Ingresses of its IngressClass (and those without a class while it
/// is the default class) as a reverse proxy to the Services' ready endpoints, HTTP and HTTPS
/// (certificates from `kubernetes.io/tls` Secrets by SNI), and sets their
/// `status.loadBalancer.ingress` to --publish-address.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Kubeconfig of the controller's identity (default: $KUBECONFIG, ~/.kube/config, or the
    /// pod's service account).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "LOTSE_INGRESS_BIND_ADDRESS", default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// HTTP port.
    #[arg(long, env = "LOTSE_INGRESS_HTTP_PORT", default_value_t = 80)]
    http_port: u16,
    /// HTTPS port.
    #[arg(long, env = "LOTSE_INGRESS_HTTPS_PORT", default_value_t = 443)]
    https_port: u16,
    /// The IngressClass served.
    #[arg(long, env = "LOTSE_INGRESS_CLASS", default_value = "lotse")]
    ingress_class: String,
    /// Addresses written to the served Ingresses' `status.loadBalancer.ingress` (comma
    /// separated; default: the InternalIP of every Node, as when it runs on every node).
    #[arg(long, env = "LOTSE_INGRESS_PUBLISH_ADDRESS", value_delimiter = ',')]
    publish_address: Vec<String>,
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
    let cfg = ingress::Config {
        http: (a.bind_address, a.http_port).into(),
        https: (a.bind_address, a.https_port).into(),
        class: a.ingress_class,
        addresses: a.publish_address,
    };
    ingress::run(cfg, client, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
