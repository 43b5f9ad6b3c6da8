//! `fairness-bench`: the overload-fairness figure of issue 18, point 4, with a release client.
//! One tenant's ServiceAccount floods a real apiserver (looping LISTs of 300 ConfigMaps and a
//! create storm, from its own thread); another tenant's ServiceAccount in the same priority
//! level GETs its own ConfigMap, idle and then during the flood. Printed: the victim's p50/p99
//! both ways and their ratio beside the goal (p99 within 2× of idle), the flood's served and
//! refused (429) counts, and the kube-system ServiceAccount's and the exempt admin's p99
//! during the flood. Never asserted.
//!
//!   cargo build --release -p apiserver -p e2e --bin apiserver --bin fairness-bench
//!   LOTSE_BIN_DIR=target/release target/release/fairness-bench
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use e2e::fairness::{self, Flood, VICTIM_PATH, percentile, probe};
use e2e::report::{figure, ms};
use e2e::{ApiServer, Backend, bin_dir};

/// Measures one tenant's request latency while another tenant floods the apiserver.
///
/// A fresh apiserver (SQLite, temporary data dir, free loopback port) runs with small limits
/// (`--max-requests-inflight`, `--max-mutating-requests-inflight` below) so that the flood
/// fills its priority level and is refused with 429.
#[derive(Parser, Debug)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Args {
    /// The apiserver binary to measure (default: `$LOTSE_BIN_DIR/apiserver`, else
    /// target/debug/apiserver).
    #[arg(long, env = "LOTSE_BENCH_APISERVER")]
    apiserver: Option<PathBuf>,
    /// Timed GETs by each probing user, idle and during the flood.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Pause between two GETs of one probing user, in milliseconds.
    #[arg(long, default_value_t = 10)]
    gap_ms: u64,
    /// Looping LISTs of all ConfigMaps in the flood.
    #[arg(long, default_value_t = 200)]
    lists: usize,
    /// Looping ConfigMap creates in the flood.
    #[arg(long, default_value_t = 40)]
    creates: usize,
    /// The flooding client retries a 429 at once instead of waiting for its `Retry-After` as
    /// client-go, kubectl and kube-rs do (a misbehaving client).
    #[arg(long)]
    ignore_retry_after: bool,
    /// Worker threads of the flooding client.
    #[arg(long, default_value_t = 1)]
    flood_threads: usize,
    /// The apiserver's `--max-requests-inflight`.
    #[arg(long, default_value_t = 8)]
    max_requests_inflight: usize,
    /// The apiserver's `--max-mutating-requests-inflight`.
    #[arg(long, default_value_t = 4)]
    max_mutating_requests_inflight: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = args
        .apiserver
        .clone()
        .unwrap_or_else(|| bin_dir().join("apiserver"));
    let (inflight, mutating) = (
        args.max_requests_inflight.to_string(),
        args.max_mutating_requests_inflight.to_string(),
    );
    let server = ApiServer::start_with(
        bin,
        Backend::Sqlite,
        &[
            "--max-requests-inflight",
            &inflight,
            "--max-mutating-requests-inflight",
            &mutating,
        ],
    )
    .await?;
    let t = fairness::setup(&server).await?;
    let gap = Duration::from_millis(args.gap_ms);
    // Warm the victim's connection and the server's caches, then the idle figure.
    let _ = probe(&t.victim, VICTIM_PATH, 20, gap).await;
    let (mut idle, bad) = probe(&t.victim, VICTIM_PATH, args.samples, gap).await;
    anyhow::ensure!(bad.is_empty(), "victim idle answers: {bad:?}");

    let get_bucket = |le: &'static str| {
        let admin = t.admin.clone();
        async move {
            let fast = fairness::metric(&admin, &format!("apiserver_request_duration_seconds_bucket{{group=\"\",resource=\"configmaps\",subresource=\"\",verb=\"get\",le=\"{le}\"}}")).await?;
            let all = fairness::metric(&admin, "apiserver_request_duration_seconds_bucket{group=\"\",resource=\"configmaps\",subresource=\"\",verb=\"get\",le=\"+Inf\"}").await?;
            anyhow::Ok((fast, all))
        }
    };
    let before = get_bucket("0.005").await?;
    let flood = Flood::start(
        &t,
        args.lists,
        args.creates,
        args.flood_threads,
        !args.ignore_retry_after,
    );
    let started = std::time::Instant::now();
    flood
        .wait_refused(&t.admin, Duration::from_secs(30))
        .await?;
    let (victim_run, operator_run, admin_run) = tokio::join!(
        probe(&t.victim, VICTIM_PATH, args.samples, gap),
        probe(&t.operator, VICTIM_PATH, args.samples, gap),
        probe(&t.admin, VICTIM_PATH, args.samples, gap),
    );
    let probing = started.elapsed().as_secs_f64();
    let after = get_bucket("0.005").await?;
    let answers = flood.stop().await?;
    let refused = answers.iter().filter(|a| a.0 == 429).count();
    let served = answers.iter().filter(|a| a.0 == 200 || a.0 == 201).count();

    let (mut during, victim_bad) = victim_run;
    let (idle50, idle99) = (percentile(&mut idle, 0.5), percentile(&mut idle, 0.99));
    let (during50, during99) = (percentile(&mut during, 0.5), percentile(&mut during, 0.99));
    println!(
        "flood: {} requests in {probing:.1} s ({:.0}/s), {served} served, {refused} refused with 429",
        answers.len(),
        answers.len() as f64 / probing
    );
    println!(
        "victim GET p50 / p99: idle {:.2} / {:.2} ms, during the flood {:.2} / {:.2} ms ({:.1}x at p99; goal <= 2x); {} not answered 200",
        ms(idle50),
        ms(idle99),
        ms(during50),
        ms(during99),
        ms(during99) / ms(idle99).max(1e-6),
        victim_bad.len()
    );
    let tail: Vec<String> = during
        .iter()
        .rev()
        .take(5)
        .map(|d| format!("{:.1}", ms(*d)))
        .collect();
    println!(
        "victim GET during the flood: p90 {:.2} ms, slowest {} ms",
        ms(percentile(&mut during, 0.9)),
        tail.join(", ")
    );
    let gets = after.1 - before.1;
    println!(
        "server side, the probes' GETs during the flood: {} of {gets} took over 5 ms in the apiserver's handler",
        gets - (after.0 - before.0)
    );
    figure(
        "victim GET p99 during another tenant's flood",
        ms(during99),
        "ms",
    )
    .vs("the same GET idle", ms(idle99))
    .goal("<= 2x idle")
    .record()?;
    let mut exempt99 = 0.0;
    for (who, (mut lat, bad)) in [
        ("kube-system ServiceAccount", operator_run),
        ("admin (exempt)", admin_run),
    ] {
        let p99 = ms(percentile(&mut lat, 0.99));
        println!(
            "{who} GET p99 during the flood: {p99:.2} ms; {} not answered 200",
            bad.len()
        );
        exempt99 = p99;
    }
    // An exempt request waits for no seat: what is left of its delay is this machine's (the
    // server's CPU, the flood's client beside it on the same cores).
    figure(
        "victim GET p99 during the flood, beside an exempt user's",
        ms(during99),
        "ms",
    )
    .vs(
        "the admin's (exempt) GET p99 during the same flood",
        exempt99,
    )
    .record()?;
    let cpu = e2e::cpu_seconds(server.pid());
    println!("apiserver CPU over the whole run: {cpu:.1} s");
    Ok(())
}
