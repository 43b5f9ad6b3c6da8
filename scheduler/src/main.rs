//! `scheduler`: the Lotse pod scheduler (Kubernetes default-scheduler behaviour).
use anyhow::Context;
use clap::Parser;

/// Lotse scheduler: watches pending pods and binds each to a node that fits it, following
/// kube-scheduler's default filters and scores (resources, node selector/affinity, taints,
/// pod (anti-)affinity, topology spread, host ports).
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Kubeconfig for talking to the apiserver (e.g. <data-dir>/admin.kubeconfig).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<std::path::PathBuf>,
    /// Only schedule while holding the kube-system/kube-scheduler Lease (for several replicas).
    #[arg(long, env = "LOTSE_SCHEDULER_LEADER_ELECT")]
    leader_elect: bool,
    /// Schedule pods whose spec.schedulerName is this.
    #[arg(
        long,
        env = "LOTSE_SCHEDULER_NAME",
        default_value = "default-scheduler"
    )]
    scheduler_name: String,
    /// Pods decided in parallel (worker threads).
    #[arg(long, env = "LOTSE_SCHEDULER_PARALLELISM", default_value_t = 2)]
    parallelism: usize,
    /// Maximum binding requests in flight.
    #[arg(long, env = "LOTSE_SCHEDULER_BIND_CONCURRENCY", default_value_t = 256)]
    bind_concurrency: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let client = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
            kube::Client::try_from(cfg)?
        }
        None => kube::Client::try_default().await?,
    };
    let config = scheduler::Config {
        scheduler_name: args.scheduler_name,
        parallelism: args.parallelism,
        bind_concurrency: args.bind_concurrency,
        leader_elect: args.leader_elect,
        ..Default::default()
    };
    scheduler::run(config, client).await?;
    Ok(())
}
