//! Benchmarks of the node network agent's Service dataplane (issue 13), in a network namespace
//! of its own (root and `nft` needed; nothing outside the namespace is touched):
//!
//! - **rule sync**: with `--services` Services of `--endpoints-per-service` endpoints
//!   programmed, one EndpointSlice changes (its Service gains or loses its only endpoint) and the
//!   time until the new rule is active — probe connections to the ClusterIP are accepted, or
//!   refused — is measured through the agent's own render + diff + `nft -f` path; p50/p99 beside
//!   the goal (p99 ≤ 100 ms);
//! - **data path**: new TCP connections per second (connect, one request, the answer, close)
//!   through a ClusterIP vs straight to the endpoint address, in the same run, and the request
//!   p99 of both; goal ≥ 0.9×.
//!
//! Figures are printed, never asserted. The process re-executes itself inside the namespace
//! (`ip netns exec`), so its nft transactions and probes stay there.
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use cni_plugin::agent::{AgentConfig, Syncer};
use e2e::report::{figure, ms};
use e2e::sh;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

/// Node network agent benchmarks: rule sync latency and ClusterIP connection rate.
#[derive(Parser, Clone)]
struct Args {
    /// Services programmed besides the probe Service.
    #[arg(long, default_value_t = 1000)]
    services: u32,
    /// Endpoints per Service.
    #[arg(long, default_value_t = 5)]
    endpoints_per_service: u32,
    /// EndpointSlice changes measured.
    #[arg(long, default_value_t = 200)]
    changes: u32,
    /// Seconds per data-path round (two rounds each way).
    #[arg(long, default_value_t = 2)]
    seconds: u64,
    /// Concurrent clients in the data-path test.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Internal: already inside the benchmark's network namespace.
    #[arg(long, hide = true)]
    inside: bool,
}

/// The address the probe Service's endpoint listens on (on the namespace's loopback).
const PROBE_EP: Ipv4Addr = Ipv4Addr::new(10, 244, 255, 1);
const PROBE_PORT: u16 = 8080;
/// The probe Service's ClusterIP.
const PROBE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 255, 1);
const NODE_IP: &str = "192.0.2.10";
/// The clients' source address (in the cluster CIDR).
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 254, 1);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.inside {
        return inside(args);
    }
    let ns = format!("lotse-bench-{}", std::process::id());
    sh("ip", &["netns", "add", &ns]).context("ip netns add (root needed)")?;
    let me = std::env::current_exe()?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns])
        .arg(me)
        .arg("--inside")
        .args(["--services", &args.services.to_string()])
        .args([
            "--endpoints-per-service",
            &args.endpoints_per_service.to_string(),
        ])
        .args(["--changes", &args.changes.to_string()])
        .args(["--seconds", &args.seconds.to_string()])
        .args(["--clients", &args.clients.to_string()]);
    let status = cmd.status();
    let _ = sh("ip", &["netns", "del", &ns]);
    if !status?.success() {
        bail!("benchmark failed");
    }
    Ok(())
}

/// Links and routes inside the fresh namespace: loopback up with the probe endpoint's and the
/// clients' addresses, and a veth pair whose end carries the node address and the route to the
/// ClusterIPs (the route lookup before DNAT needs one).
fn setup_namespace() -> anyhow::Result<()> {
    sh("ip", &["link", "set", "lo", "up"])?;
    sh(
        "ip",
        &["addr", "add", &format!("{PROBE_EP}/32"), "dev", "lo"],
    )?;
    sh(
        "ip",
        &["link", "add", "vb0", "type", "veth", "peer", "name", "vb1"],
    )?;
    sh("ip", &["link", "set", "vb0", "up"])?;
    sh("ip", &["link", "set", "vb1", "up"])?;
    sh(
        "ip",
        &["addr", "add", &format!("{NODE_IP}/24"), "dev", "vb0"],
    )?;
    // Clients speak from a pod-network address, as pods do (so, as for pods, no masquerade).
    sh(
        "ip",
        &["addr", "add", &format!("{CLIENT_IP}/32"), "dev", "lo"],
    )?;
    sh(
        "ip",
        &[
            "route",
            "add",
            "10.96.0.0/12",
            "dev",
            "vb0",
            "src",
            &CLIENT_IP.to_string(),
        ],
    )?;
    Ok(())
}

fn service(name: &str, ip: Ipv4Addr) -> Arc<Service> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"clusterIP": ip.to_string(), "ports": [{"name": "http", "port": 80, "targetPort": PROBE_PORT}]},
        }))
        .unwrap_or_default(),
    )
}

fn slice(name: &str, ips: &[Ipv4Addr]) -> Arc<EndpointSlice> {
    let endpoints: Vec<_> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}, "nodeName": "bench"}))
        .collect();
    let v = json!({
        "metadata": {"name": format!("{name}-x"), "namespace": "bench", "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": PROBE_PORT, "protocol": "TCP"}],
        "endpoints": endpoints,
    });
    Arc::new(serde_json::from_value(v).unwrap_or_else(|_| EndpointSlice {
        address_type: "IPv4".into(),
        ..Default::default()
    }))
}

/// A listener answering every connection with one short line and closing it.
fn serve(addr: SocketAddr, stop: Arc<AtomicBool>) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let l = TcpListener::bind(addr)?;
    Ok(std::thread::spawn(move || {
        for conn in l.incoming() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if let Ok(mut c) = conn {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    let _ = c.read(&mut buf);
                    let _ = c.write_all(b"ok\n");
                });
            }
        }
    }))
}

/// Whether a connection to `addr` is accepted now (refused: false).
fn connects(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn inside(args: Args) -> anyhow::Result<()> {
    setup_namespace()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut cfg = AgentConfig::new("bench");
    cfg.table = "lotse-bench".into();
    let mut syncer = Syncer::new(cfg);
    let node_ips = vec![NODE_IP.parse()?];

    // 1 000 Services × 5 endpoints (addresses that need not answer), plus the probe Service.
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for i in 0..args.services {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i);
        let name = format!("svc-{i}");
        services.push(service(&name, ip));
        let eps: Vec<Ipv4Addr> = (0..args.endpoints_per_service)
            .map(|j| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 2)) + i * 8 + j))
            .collect();
        slices.push(slice(&name, &eps));
    }
    services.push(service("probe", PROBE_IP));
    slices.push(slice("probe", &[PROBE_EP]));
    let probe_slice = slices.len() - 1;

    let t = Instant::now();
    rt.block_on(syncer.sync(&services, &slices, node_ips.clone()))?;
    let full = t.elapsed();
    let rules = Command::new("nft")
        .args(["list", "table", "ip", "lotse-bench"])
        .output()?;
    let lines = String::from_utf8_lossy(&rules.stdout).lines().count();
    println!(
        "full sync: {} Services, {} endpoints, table of {lines} lines listed: {full:.1?}",
        args.services + 1,
        args.services * args.endpoints_per_service + 1
    );

    // Where rendering time goes (one pass each, as a sync does them).
    let t = Instant::now();
    let ports = cni_plugin::agent::model::service_ports(&services, &slices, "bench");
    let t_model = t.elapsed();
    let rc = cni_plugin::agent::RenderConfig {
        table: "lotse-bench".into(),
        cluster_cidr: "10.244.0.0/16".parse()?,
        nodeport_ips: node_ips.clone(),
    };
    let t = Instant::now();
    let ruleset = cni_plugin::agent::render::render(&rc, &ports);
    let t_render = t.elapsed();
    let t = Instant::now();
    let same = syncer.applied.as_ref() == Some(&ruleset);
    let t_eq = t.elapsed();
    let t = Instant::now();
    let diff = syncer
        .applied
        .as_ref()
        .and_then(|a| ruleset.diff_transaction(a));
    let t_diff = t.elapsed();
    println!(
        "one render pass: model {t_model:.1?}, rules {t_render:.1?}, compare {t_eq:.1?} (same: {same}), diff {t_diff:.1?} ({} bytes)",
        diff.map(|d| d.len()).unwrap_or(0)
    );

    let stop = Arc::new(AtomicBool::new(false));
    let server = serve(SocketAddr::new(PROBE_EP.into(), PROBE_PORT), stop.clone())?;
    let probe = SocketAddr::new(PROBE_IP.into(), 80);
    if !connects(probe) {
        bail!("the probe Service does not answer after the full sync");
    }

    // Rule sync: the probe Service loses its endpoint (connections refused) and gets it back
    // (connections accepted), alternately.
    let mut render_times = Vec::new();
    let mut sync_times = Vec::new();
    let mut active_times = Vec::new();
    for k in 0..args.changes {
        let add = k % 2 == 1;
        slices[probe_slice] = slice("probe", if add { &[PROBE_EP] } else { &[] });
        let t = Instant::now();
        rt.block_on(syncer.sync(&services, &slices, node_ips.clone()))?;
        render_times.push(syncer.last_render);
        sync_times.push(syncer.last_apply);
        while connects(probe) != add {
            if t.elapsed() > Duration::from_secs(5) {
                bail!("change {k} not active after 5 s");
            }
        }
        active_times.push(t.elapsed());
    }
    sync_times.sort();
    render_times.sort();
    active_times.sort();
    println!(
        "rule sync (EndpointSlice change -> rule active, {} changes): p50 {:.1?}  p99 {:.1?}  (goal p99 <= 100 ms); of which rendering p50 {:.1?} p99 {:.1?}, nft -f p50 {:.1?} p99 {:.1?}",
        active_times.len(),
        percentile(&active_times, 0.5),
        percentile(&active_times, 0.99),
        percentile(&render_times, 0.5),
        percentile(&render_times, 0.99),
        percentile(&sync_times, 0.5),
        percentile(&sync_times, 0.99),
    );
    let world = format!(
        "{} Services x {} endpoints",
        args.services, args.endpoints_per_service
    );
    figure(
        format!("{world}: EndpointSlice change -> rule active p99"),
        ms(percentile(&active_times, 0.99)),
        "ms",
    )
    .vs("of which nft -f p99", ms(percentile(&sync_times, 0.99)))
    .goal("p99 <= 100 ms")
    .record()?;

    // Data path: connections per second through the ClusterIP vs straight to the endpoint.
    let direct = SocketAddr::new(PROBE_EP.into(), PROBE_PORT);
    let mut rates = [(0.0f64, Vec::new()), (0.0f64, Vec::new())];
    for round in 0..4 {
        let (which, target) = if round % 2 == 0 {
            (0, probe)
        } else {
            (1, direct)
        };
        let (n, mut lat) = load(target, args.clients, Duration::from_secs(args.seconds));
        rates[which].0 += n as f64 / (2.0 * args.seconds as f64);
        rates[which].1.append(&mut lat);
    }
    for (_, l) in rates.iter_mut() {
        l.sort();
    }
    let [(via, via_lat), (straight, straight_lat)] = &rates;
    println!(
        "new TCP connections/s ({} clients): via ClusterIP {via:.0}/s (request p99 {:.2?}), straight to the endpoint {straight:.0}/s (p99 {:.2?}): {:.2}x (goal >= 0.9x)",
        args.clients,
        percentile(via_lat, 0.99),
        percentile(straight_lat, 0.99),
        via / straight.max(1.0),
    );
    figure(
        format!("{world}: new TCP connections through a ClusterIP"),
        *via,
        "1/s",
    )
    .vs("straight to the endpoint", *straight)
    .goal(">= 0.9x baseline")
    .record()?;
    println!(
        "benchmark process RSS (objects + last rule set held as the agent holds them): {} MiB (goal for the agent <= 30 MiB)",
        rss_kib() / 1024
    );
    figure(
        format!("{world}: bench process RSS, objects + rule set as the agent holds them"),
        rss_kib() as f64 / 1024.0,
        "MiB",
    )
    .goal("<= 30 MiB")
    .record()?;
    stop.store(true, Ordering::Relaxed);
    let _ = TcpStream::connect_timeout(&direct, Duration::from_millis(200));
    let _ = server.join();
    let _ = sh("nft", &["delete", "table", "ip", "lotse-bench"]);
    Ok(())
}

/// `clients` threads opening connections to `target` for `dur`: connect, send a line, read the
/// answer to EOF. Returns the count and every request's latency.
fn load(target: SocketAddr, clients: usize, dur: Duration) -> (u64, Vec<Duration>) {
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + dur;
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let count = count.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_secs(1))
                    else {
                        continue;
                    };
                    let mut out = Vec::new();
                    if s.write_all(b"GET\n").is_ok() && s.read_to_end(&mut out).is_ok() {
                        lat.push(t.elapsed());
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        if let Ok(mut l) = h.join() {
            all.append(&mut l);
        }
    }
    (count.load(Ordering::Relaxed), all)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
