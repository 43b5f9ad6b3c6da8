//! `scheduler`: the Lotse pod scheduler (Kubernetes default-scheduler behaviour).
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

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

/// Parses `1m30s`, `15s`, `500ms` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| e.to_string());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{s:?}: missing unit (h, m, s or ms)"))?;
        let value: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{s:?}: bad number"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            u => return Err(format!("{s:?}: unknown unit {u:?}")),
        };
        rest = &rest[unit_len..];
        total += Duration::try_from_secs_f64(value * scale).map_err(|e| e.to_string())?;
    }
    Ok(total)
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
        leader_election: scheduler::leader::Timings {
            lease_duration: args.leader_elect_lease_duration,
            renew_deadline: args.leader_elect_renew_deadline,
            retry_period: args.leader_elect_retry_period,
        },
        ..Default::default()
    };
    scheduler::run(config, client).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
    }
}
