//! Scheduler benchmark (prints figures, asserts nothing): N Node objects and M pods created
//! through a real apiserver, scheduled and bound by the real `scheduler` binary.
//!
//! `cargo build --release -p apiserver -p scheduler -p e2e && LOTSE_BIN_DIR=target/release target/release/scheduler-bench`
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use e2e::report::{figure, ms};
use e2e::{ApiServer, Backend, Component};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

/// Scheduler throughput benchmark against a real apiserver (embedded SQLite).
#[derive(Parser)]
struct Args {
    /// Simulated nodes (Node objects only).
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Pods to create and schedule.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Concurrent create requests.
    #[arg(long, default_value_t = 64)]
    create_concurrency: usize,
    /// Scheduler worker threads.
    #[arg(long, default_value_t = 2)]
    parallelism: usize,
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let api = ApiServer::start(Backend::Sqlite).await?;
    let client = api.client().await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let t = Instant::now();
    futures::stream::iter(0..args.nodes)
        .map(|i| {
            let nodes = nodes.clone();
            async move {
                let name = format!("sim-{i:04}");
                let status = json!({"allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                    "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"}});
                let node: Node = serde_json::from_value(json!({"metadata": {"name": name,
                    "labels": {"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": format!("zone-{}", i % 3)}},
                    "status": status.clone()}))?;
                nodes.create(&PostParams::default(), &node).await?;
                nodes.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.create_concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    println!(
        "created {} nodes in {:.1}s",
        args.nodes,
        t.elapsed().as_secs_f64()
    );

    // Under its own identity (system:kube-scheduler), as in a real cluster; killed on drop.
    let sched = Component::start(
        &api,
        "scheduler",
        "warn",
        &["--parallelism", &args.parallelism.to_string()],
    )?;
    let sched_pid = sched.pid();

    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let bindings: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    {
        let bound = bindings.clone();
        let w = watcher::watcher(
            pods.clone(),
            watcher::Config::default().fields("spec.nodeName!="),
        );
        tokio::spawn(async move {
            let mut s = w.applied_objects().boxed();
            while let Some(Ok(p)) = s.next().await {
                let name = p.metadata.name.unwrap_or_default();
                bound
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(name)
                    .or_insert_with(Instant::now);
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = Instant::now();
    let creating = {
        let created = created.clone();
        let pods = pods.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..args.pods)
                .map(|i| {
                    let (pods, created) = (pods.clone(), created.clone());
                    async move {
                        let name = format!("bench-{i:05}");
                        let pod: Pod = serde_json::from_value(
                            json!({"metadata": {"name": name, "labels": {"app": "bench"}},
                            "spec": {"containers": [{"name": "c", "image": "pause",
                                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}}),
                        )?;
                        created
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(name, Instant::now());
                        pods.create(&PostParams::default(), &pod).await?;
                        anyhow::Ok(())
                    }
                })
                .buffer_unordered(args.create_concurrency)
                .try_collect::<Vec<_>>()
                .await
        })
    };
    let mut peak_rss = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak_rss = peak_rss.max(rss_kib(sched_pid, "VmRSS:"));
        let n = bindings.lock().unwrap_or_else(|e| e.into_inner()).len();
        if n >= args.pods || Instant::now() > deadline {
            break;
        }
    }
    let create_done = creating.await??.len();
    let elapsed = start.elapsed();
    let created = created.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let bound = bindings.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let last_bound = bound.values().max().copied().unwrap_or(start);
    let mut lat: Vec<Duration> = bound
        .iter()
        .filter_map(|(n, b)| created.get(n).map(|c| b.saturating_duration_since(*c)))
        .collect();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "pods created: {create_done}, bound: {} of {}",
        bound.len(),
        args.pods
    );
    println!(
        "end to end: {:.0} pods/s scheduled+bound ({:.2}s from first create to last binding)",
        bound.len() as f64 / last_bound.duration_since(start).as_secs_f64(),
        last_bound.duration_since(start).as_secs_f64()
    );
    println!(
        "creation->binding latency: p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        lat.last().copied().unwrap_or_default()
    );
    println!(
        "scheduler RSS: {} MiB now, {} MiB peak sampled, VmHWM {} MiB (total wall {:.1}s)",
        rss_kib(sched_pid, "VmRSS:") / 1024,
        peak_rss / 1024,
        rss_kib(sched_pid, "VmHWM:") / 1024,
        elapsed.as_secs_f64()
    );
    let what = format!("{} pods on {} nodes", args.pods, args.nodes);
    let span = last_bound.duration_since(start).as_secs_f64();
    figure(
        format!("{what}: scheduled+bound end to end"),
        bound.len() as f64 / span,
        "pods/s",
    )
    .goal(">= 2000 pods/s (issue 19)")
    .record()?;
    figure(format!("{what}: create -> bound p99"), ms(pct(0.99)), "ms").record()?;
    figure(
        format!("{what}: scheduler VmHWM"),
        rss_kib(sched_pid, "VmHWM:") as f64 / 1024.0,
        "MiB",
    )
    .goal("<= 100 MiB")
    .record()?;
    drop(sched);

    // The scheduler alone: the same number of pods created while no scheduler runs (their
    // create rate is the apiserver's write rate for this client, the limit a bind, one write,
    // meets), then a scheduler started and timed until it has bound them all.
    let t = Instant::now();
    futures::stream::iter(0..args.pods)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("drain-{i:05}"), "labels": {"app": "drain"}},
                    "spec": {"containers": [{"name": "c", "image": "pause",
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}}))?;
                pods.create(&PostParams::default(), &pod).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.create_concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    let create_rate = args.pods as f64 / t.elapsed().as_secs_f64();
    let drained =
        |bound: &HashMap<String, Instant>| bound.keys().filter(|n| n.starts_with("drain-")).count();
    let start = Instant::now();
    // Without leader election: the first scheduler's Lease would hold this one off for its
    // whole lease duration.
    let sched = Component::start(
        &api,
        "scheduler",
        "warn",
        &[
            "--parallelism",
            &args.parallelism.to_string(),
            "--leader-elect=false",
        ],
    )?;
    let cpu_at = |pid: u32| e2e::cpu_seconds(Some(pid));
    let api_pid = api.pid().unwrap_or(0);
    let (sched_cpu, api_cpu, own_cpu, busy) = (
        cpu_at(sched.pid()),
        cpu_at(api_pid),
        cpu_at(std::process::id()),
        e2e::machine_busy_seconds(),
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let b = bindings.lock().unwrap_or_else(|e| e.into_inner());
        if drained(&b) >= args.pods || Instant::now() > deadline {
            break;
        }
    }
    let b = bindings.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let times: Vec<Instant> = b
        .iter()
        .filter(|(n, _)| n.starts_with("drain-"))
        .map(|(_, t)| *t)
        .collect();
    let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) else {
        anyhow::bail!("the restarted scheduler bound no pods within 300 s");
    };
    let rate = times.len() as f64 / last.duration_since(*first).as_secs_f64().max(1e-3);
    let per_pod = |now: f64, then: f64| (now - then) * 1e6 / times.len().max(1) as f64;
    let wall = start.elapsed().as_secs_f64();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!(
        "scheduler alone, CPU per pod from its start: scheduler {:.0} µs, apiserver {:.0} µs, \
         bench client {:.0} µs; machine {:.0} % busy",
        per_pod(cpu_at(sched.pid()), sched_cpu),
        per_pod(cpu_at(api_pid), api_cpu),
        per_pod(cpu_at(std::process::id()), own_cpu),
        (e2e::machine_busy_seconds() - busy) / (wall * cpus) * 100.0,
    );
    println!(
        "scheduler alone: {} pending pods bound in {:.2}s after its start (first binding after \
         {:.2}s): {rate:.0} pods/s; the same client created them at {create_rate:.0} pods/s",
        times.len(),
        last.duration_since(start).as_secs_f64(),
        first.duration_since(start).as_secs_f64(),
    );
    figure(
        format!("{what}: scheduler alone, pending pods bound"),
        rate,
        "pods/s",
    )
    .vs(
        "pod creates/s from one client, same apiserver (a bind is one write)",
        create_rate,
    )
    .goal(">= 2000 pods/s (issue 19)")
    .record()?;
    drop(sched);
    Ok(())
}
