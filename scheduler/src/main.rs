//! `scheduler`: the Lotse pod scheduler (Kubernetes default-scheduler behaviour).
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use client_tools::parse_duration;

/// Lotse scheduler: watches pending pods and binds each to a node that fits it, following
/// kube-scheduler's default filters and scores (resources, node selector/affinity, taints,
/// pod (anti-)affinity, topology spread, host ports).
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Kubeconfig for talking to the apiserver: <data-dir>/scheduler.kubeconfig, which the
    /// apiserver writes for user system:kube-scheduler (admin.kubeconfig works too).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<std::path::PathBuf>,
    /// Only schedule while holding the Lease (--leader-elect-resource-namespace/name), as
    /// kube-scheduler does by default (`--leader-elect=false` for a single replica).
    #[arg(long, env = "LOTSE_SCHEDULER_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
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
    /// How long other replicas wait after the leader's last renewal before taking over
    /// (Go-style duration: 15s, 500ms, 1m).
    #[arg(long, env = "LOTSE_SCHEDULER_LEADER_ELECT_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    leader_elect_lease_duration: Duration,
    /// How long the leader keeps retrying a failed renewal before it exits.
    #[arg(long, env = "LOTSE_SCHEDULER_LEADER_ELECT_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    leader_elect_renew_deadline: Duration,
    /// Pause between attempts to acquire or renew the Lease.
    #[arg(long, env = "LOTSE_SCHEDULER_LEADER_ELECT_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    leader_elect_retry_period: Duration,
    /// Namespace of the leader election Lease.
    #[arg(
        long,
        env = "LOTSE_SCHEDULER_LEADER_ELECT_RESOURCE_NAMESPACE",
        default_value = "kube-system"
    )]
    leader_elect_resource_namespace: String,
    /// Name of the leader election Lease.
    #[arg(
        long,
        env = "LOTSE_SCHEDULER_LEADER_ELECT_RESOURCE_NAME",
        default_value = "kube-scheduler"
    )]
    leader_elect_resource_name: String,
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
        lease_namespace: args.leader_elect_resource_namespace,
        lease_name: args.leader_elect_resource_name,
        leader_election: client_tools::leaderelection::Timings {
            lease_duration: args.leader_elect_lease_duration,
            renew_deadline: args.leader_elect_renew_deadline,
            retry_period: args.leader_elect_retry_period,
        },
        ..Default::default()
    };
    scheduler::run(config, client).await?;
    Ok(())
}
