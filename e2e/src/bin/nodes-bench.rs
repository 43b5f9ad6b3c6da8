//! Node benchmarks of issue 13 (print figures beside their goals, assert nothing; root,
//! containerd, runc and nft needed):
//!
//! 1. **Agent memory**: the `lotse-agent` binary against an apiserver holding `--services`
//!    ClusterIP Services with `--endpoints-per-service` endpoints each (ClusterIPs from a range
//!    of their own, 10.140.0.0/16, in an nftables table of their own, removed afterwards); once
//!    its table holds every Service, its VmRSS beside the goal (≤ 30 MiB).
//! 2. **`lotse up --nodes 3`**: the time from starting it (fresh data dir) to three Ready nodes.
//!
//! `cargo build --release -p lotse -p apiserver -p cni-plugin -p e2e && LOTSE_BIN_DIR=target/release target/release/nodes-bench`
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use e2e::multinode::Cluster;
use e2e::report::figure;
use e2e::{ApiServer, Backend, bin_dir, rss_kib};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

/// Node network agent memory and multi-node start-up time.
#[derive(Parser)]
struct Args {
    /// Services the agent programs.
    #[arg(long, default_value_t = 1000)]
    services: u32,
    /// Endpoints per Service.
    #[arg(long, default_value_t = 5)]
    endpoints_per_service: u32,
    /// Skip the `lotse up --nodes 3` timing.
    #[arg(long)]
    no_nodes: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    agent_rss(&args).await?;
    if !args.no_nodes {
        nodes_up()?;
    }
    Ok(())
}

async fn agent_rss(args: &Args) -> anyhow::Result<()> {
    let api = ApiServer::start_with(
        bin_dir().join("apiserver"),
        Backend::Sqlite,
        &["--service-cluster-ip-range", "10.140.0.0/16"],
    )
    .await?;
    let client = api.client().await?;
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "bench"}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    let t0 = Instant::now();
    let svcs: Api<Service> = Api::namespaced(client.clone(), "bench");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "bench");
    let eps = args.endpoints_per_service;
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..args.services)
        .map(|i| {
            let (svcs, slices) = (svcs.clone(), slices.clone());
            async move {
                let name = format!("s{i}");
                let svc: Service = serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
                }))?;
                svcs.create(&PostParams::default(), &svc).await?;
                let endpoints: Vec<_> = (0..eps)
                    .map(|e| {
                        let n = i * eps + e;
                        json!({
                            "addresses": [format!("10.244.{}.{}", 100 + n / 250, 1 + n % 250)],
                            "conditions": {"ready": true},
                        })
                    })
                    .collect();
                let slice: EndpointSlice = serde_json::from_value(json!({
                    "metadata": {"name": format!("{name}-x"), "labels": {"kubernetes.io/service-name": name}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                    "endpoints": endpoints,
                }))?;
                slices.create(&PostParams::default(), &slice).await?;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for r in results {
        r?;
    }
    println!(
        "created {} Services with {} endpoints each in {:?}",
        args.services,
        eps,
        t0.elapsed()
    );

    // The agent runs in the host's network namespace, where it reaches the apiserver on
    // loopback; its table is this run's own.
    let table = format!("lotse-nodes-bench-{}", std::process::id());
    let result = measure_agent(&api, &table, args.services);
    let _ = run("nft", &["delete", "table", "ip", &table]);
    result
}

fn measure_agent(api: &ApiServer, table: &str, services: u32) -> anyhow::Result<()> {
    let log = api.data_dir().join("lotse-agent.log");
    let kubeconfig = api.kubeconfig();
    let mut agent = Command::new(bin_dir().join("lotse-agent"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--hostname-override", "bench", "--nftables-table", table])
        .args(["--cluster-cidr", "10.244.0.0/16", "--disable-service-lb"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting lotse-agent (cargo build --workspace --bins)")?;
    let t0 = Instant::now();
    let last = format!("s{}", services.saturating_sub(1));
    let synced = loop {
        let out = Command::new("nft")
            .args(["list", "table", "ip", table])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let programmed = text
            .lines()
            .filter(|l| l.trim_start().starts_with("chain") && l.contains("service-bench/"))
            .count();
        if programmed >= services as usize && text.contains(&format!("bench/{last}/")) {
            break Some(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(120) || matches!(agent.try_wait(), Ok(Some(_))) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let Some(synced) = synced else {
        let _ = agent.kill();
        bail!(
            "the agent did not program {services} Services within 120 s: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    // Settle: the first sync's buffers are freed or reused.
    std::thread::sleep(Duration::from_secs(2));
    let rss = rss_kib(agent.id())?;
    let _ = agent.kill();
    let _ = agent.wait();
    println!("agent: {services} Services programmed {synced:?} after its start");
    println!(
        "agent RSS with {services} Services: {:.1} MiB (goal ≤ 30 MiB)",
        rss as f64 / 1024.0
    );
    figure(
        format!("lotse-agent: {services} Services programmed after its start"),
        synced.as_secs_f64(),
        "s",
    )
    .record()?;
    figure(
        format!("lotse-agent RSS with {services} Services"),
        rss as f64 / 1024.0,
        "MiB",
    )
    .goal("<= 30 MiB")
    .record()?;
    Ok(())
}

fn nodes_up() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let t0 = Instant::now();
    // The nodes only (the figure predates the cluster DNS pods).
    let c = Cluster::start(tmp.path(), &["--disable-cluster-dns"])?;
    c.wait_ready(Duration::from_secs(300))?;
    let up = t0.elapsed();
    println!("lotse up --nodes 3 to three Ready nodes: {up:?} (no goal; printed)");
    figure(
        "lotse up --nodes 3 to three Ready nodes",
        up.as_secs_f64(),
        "s",
    )
    .record()?;
    // Its drop stops it and removes its nftables tables, before the data dir goes.
    drop(c);
    Ok(())
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
