//! `startup-bench`: how long `lotse up` takes from its start to a Ready node and a Running
//! busybox pod, with the images already in the node's archive directory (issue 19, point 5);
//! then the same after a restart on the same data dir (SIGTERM, start again: containerd's
//! state, the image record and the database are kept). Printed, never asserted.
//!
//! The breakdown comes from `lotse up`'s own log lines (their timestamps, from the moment the
//! process was spawned): apiserver serving, scheduler caches synced, containerd ready (its own
//! start, the baseline: "containerd alone to ready"), image archives checked (the last import,
//! if any), node registered; Node Ready and the pod Running are watched through the API. The
//! pod is created as soon as the API answers. Needs root, containerd and runc, and the busybox
//! and pause archives (`lotse images build busybox pause`).
//!
//!   cargo build --release -p lotse -p e2e --bin startup-bench
//!   LOTSE_BIN_DIR=target/release target/release/startup-bench
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use e2e::lotse::{Lotse, link_images, random_pod_cidr, require_images};
use e2e::report::figure;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};

const NODE: &str = "startup";

/// The milestones of the breakdown: (what, log line that marks it, last occurrence instead of
/// first).
const MILESTONES: &[(&str, &str, bool)] = &[
    ("apiserver serving", "serving HTTPS", false),
    ("scheduler caches synced", "caches synced", false),
    ("containerd ready", "containerd ready", false),
    ("image archives imported", "imported image archive", true),
    ("node registered", "registered node", false),
];

fn busybox(name: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}],
        },
    }))?)
}

/// Seconds since `t0` of a log line's RFC 3339 timestamp (the first word, colours stripped).
fn line_time(line: &str, t0: SystemTime) -> Option<f64> {
    let plain: String = strip_ansi(line);
    let stamp = plain.split_whitespace().next()?;
    let ts: jiff::Timestamp = stamp.parse().ok()?;
    let start = jiff::Timestamp::try_from(t0).ok()?;
    Some(ts.duration_since(start).as_secs_f64())
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Milestones found in the log lines written after `from` bytes, as seconds since `t0`.
fn breakdown(log: &str, from: usize, t0: SystemTime) -> Vec<(&'static str, Option<f64>)> {
    let lines: Vec<&str> = log.get(from..).unwrap_or("").lines().collect();
    MILESTONES
        .iter()
        .map(|&(what, marker, last)| {
            let mut hits = lines.iter().filter(|l| l.contains(marker));
            let hit = if last { hits.next_back() } else { hits.next() };
            (what, hit.and_then(|l| line_time(l, t0)))
        })
        .collect()
}

/// Waits for the admin kubeconfig and a client that answers.
async fn client(data: &Path, deadline: Instant) -> anyhow::Result<kube::Client> {
    let path = data.join("admin.kubeconfig");
    loop {
        if path.is_file()
            && let Ok(kc) = kube::config::Kubeconfig::read_from(&path)
            && let Ok(cfg) = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await
            && let Ok(c) = kube::Client::try_from(cfg)
            && c.apiserver_version().await.is_ok()
        {
            return Ok(c);
        }
        if Instant::now() > deadline {
            bail!("the API did not answer");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn node_ready_since(n: &Node, since: SystemTime) -> bool {
    let since = jiff::Timestamp::try_from(since).unwrap_or_default();
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.type_ == "Ready"
                && c.status == "True"
                && c.last_heartbeat_time
                    .as_ref()
                    .is_some_and(|t| t.0.as_second() + 1 >= since.as_second())
        })
}

/// One start: (seconds to the API, to Node Ready, to the pod Running) and the breakdown.
async fn start_once(data: &Path, args: &[String], pod: &str, round: &str) -> anyhow::Result<Lotse> {
    let log_path = data.join("lotse.log");
    let from = std::fs::metadata(&log_path)
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    let t0 = SystemTime::now();
    let started = Instant::now();
    let lotse = Lotse::start(data, args)?;
    let deadline = started + Duration::from_secs(120);
    let c = client(data, deadline).await.with_context(|| lotse.log())?;
    let api_at = started.elapsed();
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    loop {
        match pods.create(&PostParams::default(), &busybox(pod)?).await {
            Ok(_) => break,
            // The default namespace or ServiceAccount may not be there in the first moments.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => return Err(e).context("creating the pod"),
        }
    }
    let nodes: Api<Node> = Api::all(c.clone());
    let (mut ready_at, mut running_at) = (None, None);
    while ready_at.is_none() || running_at.is_none() {
        if Instant::now() > deadline {
            bail!("{round}: node Ready {ready_at:?}, pod Running {running_at:?} after 120 s");
        }
        if ready_at.is_none()
            && let Ok(n) = nodes.get(NODE).await
            && node_ready_since(&n, t0)
        {
            ready_at = Some(started.elapsed());
        }
        if running_at.is_none()
            && let Ok(p) = pods.get(pod).await
            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        {
            running_at = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ready, running) = (
        ready_at.unwrap_or_default().as_secs_f64(),
        running_at.unwrap_or_default().as_secs_f64(),
    );
    println!("{round}:");
    println!("  {:<28} {:>7.2} s", "API answers", api_at.as_secs_f64());
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    for (what, at) in breakdown(&log, from, t0) {
        match at {
            Some(s) => println!("  {what:<28} {s:>7.2} s"),
            None => println!("  {what:<28} {:>9}", "-"),
        }
        if what == "containerd ready"
            && let Some(line) = log
                .get(from..)
                .unwrap_or("")
                .lines()
                .find(|l| l.contains("containerd ready"))
            && let Some(ms) = strip_ansi(line)
                .split_whitespace()
                .find_map(|w| w.strip_prefix("ms="))
                .and_then(|v| v.parse::<f64>().ok())
        {
            println!(
                "  {:<28} {:>7.2} s",
                "  of which containerd itself",
                ms / 1000.0
            );
            figure(format!("lotse up ({round}): node Ready"), ready, "s")
                .vs(
                    "containerd alone to ready (its start inside the same run)",
                    ms / 1000.0,
                )
                .record()?;
        }
    }
    println!("  {:<28} {ready:>7.2} s", "node Ready");
    println!("  {:<28} {running:>7.2} s", "busybox pod Running");
    figure(
        format!("lotse up ({round}): node Ready and a busybox pod Running"),
        ready.max(running),
        "s",
    )
    .goal("<= 3 s")
    .record()?;
    Ok(lotse)
}

/// The processes `pid` started (its threads' children).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// `lotse up`'s RSS once idle (one node, the busybox pod running, no cluster DNS), beside the
/// containerd it started (a process of its own, as on k3s).
async fn idle_rss(lotse: &Lotse) -> anyhow::Result<()> {
    // Past the start-up's peaks and one 10-second trim of freed heap memory.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let mib = |pid: u32| e2e::rss_kib(pid).map(|k| k as f64 / 1024.0);
    let lotse_mib = mib(lotse.pid())?;
    let containerd: f64 = children(lotse.pid())
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "containerd")
        })
        .filter_map(|p| mib(p).ok())
        .sum();
    let part = |field: &str| e2e::status_kib(lotse.pid(), field).map(|k| k as f64 / 1024.0);
    let (anon, file) = (part("RssAnon")?, part("RssFile")?);
    println!("idle, 20 s after the restart's pod ran:");
    println!(
        "  {:<28} {lotse_mib:>7.1} MiB",
        "lotse up (apiserver, controllers, scheduler, kubelet, agent)"
    );
    println!("    {:<26} {anon:>7.1} MiB", "heap and stacks (RssAnon)");
    println!("    {:<26} {file:>7.1} MiB", "its binary's pages (RssFile)");
    println!(
        "  {:<28} {containerd:>7.1} MiB",
        "containerd (its own process)"
    );
    figure(
        "lotse up idle RSS, one node, one pod (one process)",
        lotse_mib,
        "MiB",
    )
    .vs("containerd beside it", containerd)
    .goal("<= 50 MiB (issue 19)")
    .record()?;
    figure(
        "lotse up idle RSS without its binary's mapped pages (RssAnon)",
        anon,
        "MiB",
    )
    .vs("the binary's pages (RssFile)", file)
    .record()?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let images = require_images(&["busybox.tar", "pause.tar"])?;
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    link_images(&data, &images, &["busybox.tar", "pause.tar"])?;
    let args: Vec<String> = [
        "--data-dir",
        &data.to_string_lossy(),
        "--secure-port",
        &e2e::free_port()?.to_string(),
        "--kubelet-port",
        &e2e::free_port()?.to_string(),
        "--node-name",
        NODE,
        "--pod-cidr",
        &random_pod_cidr()?,
        "--images=",
        "--no-install",
        // The figure is the node and a first pod; the cluster DNS's pods would start beside it.
        "--disable-cluster-dns",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut lotse = start_once(&data, &args, "first", "fresh data dir").await?;
    lotse.stop()?;
    let lotse = start_once(&data, &args, "second", "restart").await?;
    idle_rss(&lotse).await?;
    // Its drop deletes the pods and stops it.
    drop(lotse);
    Ok(())
}
