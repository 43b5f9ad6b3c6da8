//! Node network agent memory benchmark of issue 14: the `lotse-agent` binary against an
//! apiserver (SQLite) holding `--pods` Pods (bound to 100 nodes, this node among them, with
//! `status.podIP`; simulated: no container runs) and `--services` ClusterIP Services with
//! `--endpoints-per-service` ready endpoints each in EndpointSlices. The agent lists and watches
//! all of them (Pods for NetworkPolicy, Services and EndpointSlices for its Service rules); the
//! bench prints the time from its start to its rules being in nftables and its VmRSS/VmHWM
//! once settled, beside the baseline of the same agent against an empty cluster and the
//! objects' size as the apiserver serves them (JSON lists).
//!
//! Figures are printed, never asserted. Root and `nft` needed: the process re-executes itself
//! in a network namespace of its own (`ip netns exec`), where the apiserver, the agent and its
//! nftables table live, so nothing outside it is touched.
//!
//! `cargo build --release -p apiserver -p cni-plugin -p e2e && LOTSE_BIN_DIR=target/release target/release/agent-bench`
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use e2e::report::figure;
use e2e::{ApiServer, Backend, bin_dir, sh, sim};

/// lotse-agent RSS and programming time with many Pods and Services, beside an empty cluster.
#[derive(Parser)]
struct Args {
    /// Pods in the cluster (100 per namespace, over 100 nodes).
    #[arg(long, default_value_t = 10_000)]
    pods: u32,
    /// ClusterIP Services.
    #[arg(long, default_value_t = 1000)]
    services: u32,
    /// Ready endpoints per Service.
    #[arg(long, default_value_t = 5)]
    endpoints_per_service: u32,
    /// Seconds the agent settles after programming before its memory is read.
    #[arg(long, default_value_t = 2)]
    settle: u64,
    /// Internal: already inside the benchmark's network namespace.
    #[arg(long, hide = true)]
    inside: bool,
}

const NODE: &str = "bench";
const TABLE: &str = "lotse-agent-bench";
const NODES: u32 = 100;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.inside {
        return tokio::runtime::Runtime::new()?.block_on(inside(args));
    }
    let ns = format!("lotse-agb-{}", std::process::id());
    sh("ip", &["netns", "add", &ns]).context("ip netns add (root needed)")?;
    let status = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(std::env::current_exe()?)
        .arg("--inside")
        .args(["--pods", &args.pods.to_string()])
        .args(["--services", &args.services.to_string()])
        .args([
            "--endpoints-per-service",
            &args.endpoints_per_service.to_string(),
        ])
        .args(["--settle", &args.settle.to_string()])
        .status();
    let _ = sh("ip", &["netns", "del", &ns]);
    if !status?.success() {
        bail!("benchmark failed");
    }
    Ok(())
}

/// A `/proc/<pid>/status` figure in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {key} for {pid}"))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The figures of one agent run.
struct Run {
    /// Start → the first sync's transaction applied.
    programmed: Duration,
    /// That sync's render + `nft -f`, as the agent logs it.
    sync: String,
    service_ports: u64,
    rss_kib: u64,
    hwm_kib: u64,
    service_chains: usize,
}

/// The `key=value` fields of the agent's first "synced nftables rules" log line.
fn synced_line(log: &str) -> Option<Vec<(String, String)>> {
    let line = log.lines().find(|l| l.contains("synced nftables rules"))?;
    Some(
        line.split_whitespace()
            .filter_map(|w| {
                let (k, v) = w.split_once('=')?;
                Some((k.to_string(), v.trim_matches('"').to_string()))
            })
            .collect(),
    )
}

/// Starts the agent, waits for its first sync (it syncs once every watch has listed), lets it
/// settle and reads its memory; kills it and removes its table.
fn run_agent(api: &ApiServer, settle: Duration, n: u32) -> anyhow::Result<Run> {
    let log = api.data_dir().join(format!("lotse-agent-{n}.log"));
    let mut agent = Command::new(bin_dir().join("lotse-agent"))
        .arg("--kubeconfig")
        .arg(api.kubeconfig())
        .args(["--hostname-override", NODE, "--nftables-table", TABLE])
        .args(["--cluster-cidr", "10.244.0.0/16", "--disable-service-lb"])
        .env("RUST_LOG", "warn,cni_plugin::agent=debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting lotse-agent (cargo build -p cni-plugin --bins)")?;
    let result = measure(&mut agent, &log, settle);
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = sh("nft", &["delete", "table", "ip", TABLE]);
    result
}

fn measure(agent: &mut Child, log: &Path, settle: Duration) -> anyhow::Result<Run> {
    let t0 = Instant::now();
    let fields = loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(f) = synced_line(&text) {
            break f;
        }
        if t0.elapsed() > Duration::from_secs(300) || matches!(agent.try_wait(), Ok(Some(_))) {
            bail!("the agent did not sync within 300 s:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let programmed = t0.elapsed();
    let get = |k: &str| {
        fields
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    std::thread::sleep(settle);
    let pid = agent.id();
    let listing = Command::new("nft")
        .args(["list", "table", "ip", TABLE])
        .output()?;
    let service_chains = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with("chain service-"))
        .count();
    Ok(Run {
        programmed,
        sync: format!("{} lines, {}", get("lines"), get("elapsed")),
        service_ports: get("service_ports").parse().unwrap_or(0),
        rss_kib: status_kib(pid, "VmRSS")?,
        hwm_kib: status_kib(pid, "VmHWM")?,
        service_chains,
    })
}

/// Bytes of the JSON list the apiserver serves at `path`.
async fn list_bytes(api: &ApiServer, path: &str) -> anyhow::Result<usize> {
    let (status, body) = api.raw("GET", path, None, Vec::new()).await?;
    if status != 200 {
        bail!("GET {path}: {status}");
    }
    Ok(body.len())
}

fn report(what: &str, r: &Run) {
    println!(
        "agent, {what}: programmed {:.2?} after its start ({} Service ports, {} service chains in nftables; its sync {}), VmRSS {} (VmHWM {})",
        r.programmed,
        r.service_ports,
        r.service_chains,
        r.sync,
        mib(r.rss_kib),
        mib(r.hwm_kib)
    );
}

async fn inside(args: Args) -> anyhow::Result<()> {
    sh("ip", &["link", "set", "lo", "up"])?;
    let api = ApiServer::start_with(bin_dir().join("apiserver"), Backend::Sqlite, &[]).await?;
    let settle = Duration::from_secs(args.settle);
    let client = api.client().await?;
    let namespaces = args.pods.div_ceil(100).max(1);

    let idle = run_agent(&api, settle, 0)?;
    report("empty cluster", &idle);

    let t0 = Instant::now();
    sim::create_namespaces(&client, namespaces).await?;
    let services = sim::services(args.services, namespaces, args.endpoints_per_service, 0);
    sim::create_services(&client, &services).await?;
    println!(
        "created {} Services with {} endpoints each in {namespaces} namespaces: {:.1?}",
        args.services,
        args.endpoints_per_service,
        t0.elapsed()
    );
    let with_services = run_agent(&api, settle, 1)?;
    report(&format!("{} Services", args.services), &with_services);

    let t0 = Instant::now();
    let nodes: Vec<String> = (0..NODES)
        .map(|i| {
            if i == 0 {
                NODE.into()
            } else {
                format!("node-{i}")
            }
        })
        .collect();
    sim::create_pods(&client, args.pods, namespaces, &nodes).await?;
    println!(
        "created {} Pods over {NODES} nodes ({} on this one): {:.1?}",
        args.pods,
        args.pods.div_ceil(NODES),
        t0.elapsed()
    );
    let full = run_agent(&api, settle, 2)?;
    report(
        &format!("{} Services and {} Pods", args.services, args.pods),
        &full,
    );

    let pods_json = list_bytes(&api, "/api/v1/pods").await? as u64;
    let services_json = list_bytes(&api, "/api/v1/services").await? as u64
        + list_bytes(&api, "/apis/discovery.k8s.io/v1/endpointslices").await? as u64;
    let growth = |from: &Run, to: &Run| to.rss_kib.saturating_sub(from.rss_kib);
    let pods_kib = growth(&with_services, &full);
    let services_kib = growth(&idle, &with_services);
    println!(
        "VmRSS with {} Pods and {} Services: {} vs {} idle (empty cluster); the Pods add {} ({:.1} KiB each, {:.1}x their JSON list of {}), the Services and EndpointSlices {} ({:.1}x their JSON lists of {}); no goal in the issue (nodes-bench's for 1 000 Services without Pods: <= 30 MiB)",
        args.pods,
        args.services,
        mib(full.rss_kib),
        mib(idle.rss_kib),
        mib(pods_kib),
        pods_kib as f64 / f64::from(args.pods.max(1)),
        pods_kib as f64 * 1024.0 / pods_json.max(1) as f64,
        mib(pods_json / 1024),
        mib(services_kib),
        services_kib as f64 * 1024.0 / services_json.max(1) as f64,
        mib(services_json / 1024),
    );
    let world = format!("{} Pods and {} Services", args.pods, args.services);
    let in_mib = |kib: u64| kib as f64 / 1024.0;
    figure(
        format!("lotse-agent VmRSS with {world}"),
        in_mib(full.rss_kib),
        "MiB",
    )
    .vs("the same agent, empty cluster", in_mib(idle.rss_kib))
    .record()?;
    figure(
        format!("lotse-agent VmRSS per Pod, {world}"),
        pods_kib as f64 / f64::from(args.pods.max(1)),
        "KiB",
    )
    .record()?;
    figure(
        format!("lotse-agent start -> rules in nftables, {world}"),
        full.programmed.as_secs_f64(),
        "s",
    )
    .vs(
        format!("the same with the {} Services only", args.services),
        with_services.programmed.as_secs_f64(),
    )
    .record()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sync_log_line_is_parsed() {
        let log = "2026-12-06T20:00:00.1Z  WARN x: y\n2026-12-06T20:00:00.2Z DEBUG cni_plugin::agent: synced nftables rules kind=\"full\" lines=120 service_ports=1001 elapsed=81.2ms\n";
        let f = synced_line(log).unwrap();
        assert!(f.contains(&("kind".into(), "full".into())));
        assert!(f.contains(&("service_ports".into(), "1001".into())));
        assert!(f.contains(&("elapsed".into(), "81.2ms".into())));
        assert_eq!(
            status_kib(std::process::id(), "VmRSS").map(|k| k > 0).ok(),
            Some(true)
        );
    }
}
