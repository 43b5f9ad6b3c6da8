//! `soak-bench`: mixed churn against one apiserver on SQLite for a long time (issue 18 point 7),
//! printing the apiserver's RSS and the database size over time. Printed, never asserted.
//!
//! `--clients` writers create, update and delete ConfigMaps (each keeps at most 20) and list
//! their namespace every tenth operation; `--watchers` watch the namespace, following each
//! stream from the last resourceVersion they saw (re-listing on 410), and check that events
//! come in resourceVersion order. After the run every watcher's view (name → resourceVersion)
//! is compared with a final LIST: a watcher that missed or invented anything is counted as
//! incomplete. The apiserver compacts every `--compaction-interval-seconds`, so the database
//! size should stay bounded; its RSS should stay flat.
//!
//!   cargo build --release -p apiserver -p e2e
//!   target/release/soak-bench                       # 3 minutes
//!   target/release/soak-bench --duration-secs 1800  # the 30-minute soak
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use e2e::report::figure;
use e2e::{ApiServer, Backend, rss_kib};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};

/// Soaks the Lotse apiserver (release build) on SQLite with mixed churn and watchers.
#[derive(Parser, Debug)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Args {
    /// The apiserver binary (default: target/release/apiserver of this workspace).
    #[arg(long, env = "LOTSE_BENCH_APISERVER")]
    apiserver: Option<PathBuf>,
    /// How long the churn runs.
    #[arg(long, default_value_t = 180)]
    duration_secs: u64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Concurrent watchers.
    #[arg(long, default_value_t = 200)]
    watchers: usize,
    /// Seconds between samples of RSS and database size.
    #[arg(long, default_value_t = 15)]
    sample_secs: u64,
    /// The apiserver's compaction interval (Kubernetes: 300 s; shorter so a short soak
    /// compacts several times).
    #[arg(long, default_value_t = 60)]
    compaction_interval_seconds: u64,
}

#[derive(Default)]
struct Counters {
    ops: AtomicU64,
    server_errors: AtomicU64,
    other_errors: AtomicU64,
    out_of_order: AtomicU64,
    relists: AtomicU64,
    /// Watch events (not stream ends) and re-lists seen by all watchers (to tell when they
    /// have caught up).
    seen: AtomicU64,
}

fn cm(name: &str, v: u64) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.to_string());
    c.data = Some([("v".to_string(), format!("{v}-{}", "x".repeat(200)))].into());
    c
}

fn count(c: &Counters, r: Result<(), kube::Error>) {
    match r {
        Ok(()) => {
            c.ops.fetch_add(1, Ordering::Relaxed);
        }
        Err(kube::Error::Api(s)) if s.code >= 500 => {
            c.server_errors.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => {
            c.other_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn writer(api: Api<ConfigMap>, id: usize, until: Instant, c: Arc<Counters>) {
    let mut live: std::collections::VecDeque<String> = Default::default();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let name = format!("c{id}-{n}");
        let r = api
            .create(&PostParams::default(), &cm(&name, n))
            .await
            .map(|_| ());
        let ok = r.is_ok();
        count(&c, r);
        if ok {
            live.push_back(name.clone());
            let r = api
                .replace(&name, &PostParams::default(), &{
                    let mut u = cm(&name, n + 1);
                    if let Ok(cur) = api.get(&name).await {
                        u.metadata.resource_version = cur.metadata.resource_version;
                    }
                    u
                })
                .await
                .map(|_| ());
            count(&c, r);
        }
        while live.len() > 20 {
            if let Some(old) = live.pop_front() {
                let r = api.delete(&old, &DeleteParams::default()).await.map(|_| ());
                count(&c, r);
            }
        }
        if n.is_multiple_of(10) {
            let r = api
                .list(&ListParams::default().limit(500))
                .await
                .map(|_| ());
            count(&c, r);
        }
    }
}

/// Follows the namespace until `stop`; returns its view (name → resourceVersion).
async fn watcher(
    api: Api<ConfigMap>,
    stop: tokio::sync::watch::Receiver<bool>,
    c: Arc<Counters>,
) -> BTreeMap<String, u64> {
    let mut view = BTreeMap::new();
    let mut rv = String::new();
    let rv_of = |o: &ConfigMap| {
        o.metadata
            .resource_version
            .as_deref()
            .and_then(|r| r.parse::<u64>().ok())
            .unwrap_or(0)
    };
    'outer: loop {
        if rv.is_empty() {
            match api.list(&ListParams::default()).await {
                Ok(list) => {
                    c.seen.fetch_add(1, Ordering::Relaxed);
                    view = list
                        .items
                        .iter()
                        .map(|o| (o.metadata.name.clone().unwrap_or_default(), rv_of(o)))
                        .collect();
                    rv = list.metadata.resource_version.unwrap_or_default();
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        let mut last: u64 = rv.parse().unwrap_or(0);
        let Ok(stream) = api.watch(&WatchParams::default().timeout(30), &rv).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut stream = stream.boxed();
        loop {
            let next = tokio::select! {
                n = stream.next() => n,
                _ = async { let mut s = stop.clone(); let _ = s.wait_for(|v| *v).await; } => break 'outer,
            };
            if matches!(
                next,
                Some(Ok(WatchEvent::Added(_)
                    | WatchEvent::Modified(_)
                    | WatchEvent::Deleted(_)))
            ) {
                c.seen.fetch_add(1, Ordering::Relaxed);
            }
            match next {
                None => continue 'outer,
                Some(Ok(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                    let r = rv_of(&o);
                    if r <= last {
                        c.out_of_order.fetch_add(1, Ordering::Relaxed);
                    }
                    last = r;
                    rv = r.to_string();
                    view.insert(o.metadata.name.clone().unwrap_or_default(), r);
                }
                Some(Ok(WatchEvent::Deleted(o))) => {
                    let r = rv_of(&o);
                    if r <= last {
                        c.out_of_order.fetch_add(1, Ordering::Relaxed);
                    }
                    last = r;
                    rv = r.to_string();
                    view.remove(o.metadata.name.as_deref().unwrap_or(""));
                }
                Some(Ok(WatchEvent::Bookmark(b))) => {
                    rv = b.metadata.resource_version;
                }
                Some(Ok(WatchEvent::Error(e))) if e.code == 410 => {
                    c.relists.fetch_add(1, Ordering::Relaxed);
                    rv.clear();
                    continue 'outer;
                }
                Some(_) => continue 'outer,
            }
        }
    }
    view
}

fn db_bytes(dir: &std::path::Path) -> u64 {
    ["state.db", "state.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let binary = args.apiserver.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/apiserver")
    });
    if !binary.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p apiserver` (or pass --apiserver)",
            binary.display()
        );
    }
    let compaction = args.compaction_interval_seconds.to_string();
    let server = ApiServer::start_with(
        binary,
        Backend::Sqlite,
        &["--compaction-interval-seconds", &compaction],
    )
    .await?;
    let pid = server.pid().unwrap_or(0);
    let client = server.client().await?;
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let mut soak_ns = k8s_openapi::api::core::v1::Namespace::default();
    soak_ns.metadata.name = Some("soak".into());
    ns.create(&PostParams::default(), &soak_ns).await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "soak");
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let watchers: Vec<_> = (0..args.watchers)
        .map(|_| tokio::spawn(watcher(api.clone(), stop_rx.clone(), counters.clone())))
        .collect();
    let start = Instant::now();
    let until = start + Duration::from_secs(args.duration_secs);
    let writers: Vec<_> = (0..args.clients)
        .map(|i| tokio::spawn(writer(api.clone(), i, until, counters.clone())))
        .collect();
    println!(
        "soak: {} writers, {} watchers, {} s on SQLite (compaction every {} s)",
        args.clients, args.watchers, args.duration_secs, args.compaction_interval_seconds
    );
    println!(
        "{:>6}  {:>9}  {:>9}  {:>9}",
        "t (s)", "RSS MiB", "db MiB", "ops/s"
    );
    let mut samples = Vec::new();
    let mut last_ops = 0;
    let mut last_t = start;
    while Instant::now() < until {
        tokio::time::sleep(
            Duration::from_secs(args.sample_secs).min(until - Instant::now().min(until)),
        )
        .await;
        let rss = rss_kib(pid).unwrap_or(0) as f64 / 1024.0;
        let db = db_bytes(server.data_dir()) as f64 / 1048576.0;
        let ops = counters.ops.load(Ordering::Relaxed);
        let rate = (ops - last_ops) as f64 / last_t.elapsed().as_secs_f64().max(1e-3);
        (last_ops, last_t) = (ops, Instant::now());
        println!(
            "{:>6}  {rss:>9.1}  {db:>9.1}  {rate:>9.0}",
            start.elapsed().as_secs()
        );
        samples.push((rss, db));
    }
    for w in writers {
        let _ = w.await;
    }
    // Let the watchers catch up (nothing new for 5 s, at most 5 minutes: a loaded machine may
    // leave them far behind the writers), then compare their views with the final state.
    let caught_up = Instant::now();
    let (mut last_seen, mut quiet_since) = (u64::MAX, Instant::now());
    while caught_up.elapsed() < Duration::from_secs(300) {
        let seen = counters.seen.load(Ordering::Relaxed);
        if seen != last_seen {
            (last_seen, quiet_since) = (seen, Instant::now());
        } else if quiet_since.elapsed() >= Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "watchers caught up {:.1} s after the writers stopped",
        caught_up.elapsed().as_secs_f64() - 5.0
    );
    let _ = stop_tx.send(true);
    let truth: BTreeMap<String, u64> = api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|o| {
            (
                o.metadata.name.clone().unwrap_or_default(),
                o.metadata
                    .resource_version
                    .as_deref()
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0),
            )
        })
        .collect();
    let mut incomplete = 0;
    for w in watchers {
        if w.await.map(|v| v != truth).unwrap_or(true) {
            incomplete += 1;
        }
    }
    let c = &counters;
    let quarter = (samples.len() / 4).max(1);
    let avg = |s: &[(f64, f64)]| s.iter().map(|x| x.0).sum::<f64>() / s.len().max(1) as f64;
    let first = avg(&samples[..quarter.min(samples.len())]);
    let last = avg(&samples[samples.len().saturating_sub(quarter)..]);
    let db_max = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    println!();
    println!("operations        {}", c.ops.load(Ordering::Relaxed));
    println!(
        "5xx answers       {}   (goal 0)",
        c.server_errors.load(Ordering::Relaxed)
    );
    println!(
        "other errors      {}",
        c.other_errors.load(Ordering::Relaxed)
    );
    println!(
        "watch out of order {}  (goal 0)",
        c.out_of_order.load(Ordering::Relaxed)
    );
    println!(
        "watch re-lists    {}   (410 after compaction)",
        c.relists.load(Ordering::Relaxed)
    );
    println!(
        "incomplete watchers {} of {}  (goal 0)",
        incomplete, args.watchers
    );
    println!(
        "RSS first quarter {first:.1} MiB, last quarter {last:.1} MiB ({:+.1}%; goal flat)",
        (last / first.max(1e-3) - 1.0) * 100.0
    );
    println!("database max {db_max:.1} MiB (bounded by compaction)");
    let what = format!(
        "{} s, {} writers, {} watchers",
        args.duration_secs, args.clients, args.watchers
    );
    figure(
        format!("soak {what}: operations/s"),
        c.ops.load(Ordering::Relaxed) as f64 / args.duration_secs.max(1) as f64,
        "1/s",
    )
    .record()?;
    for (name, n) in [
        ("5xx answers", c.server_errors.load(Ordering::Relaxed)),
        (
            "watch events out of order",
            c.out_of_order.load(Ordering::Relaxed),
        ),
        ("incomplete watchers", incomplete),
    ] {
        figure(format!("soak {what}: {name}"), n as f64, "count")
            .goal("0")
            .record()?;
    }
    figure(
        format!("soak {what}: apiserver RSS, last quarter"),
        last,
        "MiB",
    )
    .vs("first quarter", first)
    .goal("flat (1.0x)")
    .record()?;
    figure(format!("soak {what}: database max"), db_max, "MiB").record()?;
    Ok(())
}
