//! Cluster DNS benchmark of issue 14: queries per second and latency of `lotse-dns` on one
//! core, measured with Debian's `dnsperf` (`apt-get install dnsperf`), for in-cluster names and
//! for cached upstream names. The goal for cluster names is ≥ 20 000 queries/s and p99 ≤ 1 ms.
//!
//! An apiserver (SQLite) is filled with `--services` Services over 10 namespaces (every tenth
//! headless; 3 ready endpoints each, in EndpointSlices); `lotse-dns` reads them from it as in a
//! cluster and is pinned to `--server-cpu`, dnsperf to `--client-cpu`. Its upstream (the only
//! `nameserver` of the resolv.conf it is given) is the bench's own reference responder on
//! `127.53.x.1:53`: one thread answering from a fixed table with the same hickory-proto wire
//! format, pinned to the same core. Each figure is printed beside that responder's, measured in
//! the same run with the same client: the ceiling of dnsperf + kernel + DNS parsing on this
//! machine. Two runs per target and kind of name: throughput (`--outstanding` queries in
//! flight) and latency at a steady `--rate` (p50/p99 from dnsperf's per-query report), each
//! `--rounds` times alternating between the targets; the medians are printed, with each round's
//! figure (on a shared VM the tail varies from run to run, for the responder as much).
//!
//! Figures are printed, never asserted. Root is needed for port 53 of the upstream.
//!
//! `cargo build --release -p apiserver -p dns -p e2e && LOTSE_BIN_DIR=target/release target/release/dns-bench`
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use e2e::report::{figure, ms as in_ms};
use e2e::sim::{self, SimService};
use e2e::{ApiServer, Backend, bin_dir, rss_kib};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// Cluster DNS queries/s and latency on one core (dnsperf), beside a fixed-table responder.
#[derive(Parser)]
struct Args {
    /// Services in the cluster (every tenth headless, 3 ready endpoints each).
    #[arg(long, default_value_t = 1000)]
    services: u32,
    /// Distinct names outside the cluster (answered by the upstream once, then cached).
    #[arg(long, default_value_t = 1000)]
    upstream_names: u32,
    /// Seconds of each dnsperf run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Steady rate of the latency runs, queries/s.
    #[arg(long, default_value_t = 20_000)]
    rate: u32,
    /// Rounds of each run (the median is printed).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Queries in flight in the throughput runs (dnsperf -q).
    #[arg(long, default_value_t = 100)]
    outstanding: u32,
    /// CPU the DNS server (and the reference responder) runs on.
    #[arg(long, default_value_t = 1)]
    server_cpu: usize,
    /// CPU dnsperf runs on.
    #[arg(long, default_value_t = 0)]
    client_cpu: usize,
    /// Internal: be the reference responder on this address.
    #[arg(long, hide = true)]
    responder: Option<SocketAddr>,
}

const NAMESPACES: u32 = 10;
const ENDPOINTS: u32 = 3;
const HEADLESS_EVERY: u32 = 10;
const CLUSTER_DOMAIN: &str = "cluster.local";

/// Answers of the reference responder: lowercase name without the final dot → (addresses, TTL).
type Table = HashMap<String, (Vec<Ipv4Addr>, u32)>;

fn cluster_name(s: &SimService) -> String {
    format!("{}.{}.svc.{CLUSTER_DOMAIN}", s.name, s.namespace)
}

fn upstream_name(i: u32) -> String {
    format!("host-{i}.example.org")
}

/// What a Service's name resolves to: its ClusterIP, or a headless Service's endpoints.
fn addresses(s: &SimService) -> Vec<Ipv4Addr> {
    s.cluster_ip
        .map_or_else(|| s.endpoints.clone(), |ip| vec![ip])
}

fn table(args: &Args) -> Table {
    let mut t = Table::new();
    for s in sim::services(args.services, NAMESPACES, ENDPOINTS, HEADLESS_EVERY) {
        t.insert(cluster_name(&s), (addresses(&s), 5));
    }
    for i in 0..args.upstream_names {
        // 198.18.0.0/15: the benchmarking range (RFC 2544).
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 1)) + i);
        t.insert(upstream_name(i), (vec![ip], 300));
    }
    t
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(addr) = args.responder {
        return responder(addr, &table(&args));
    }
    tokio::runtime::Runtime::new()?.block_on(run(args))
}

/// The reference responder: one thread, one socket, parse → table lookup → encode.
fn responder(addr: SocketAddr, table: &Table) -> anyhow::Result<()> {
    let sock = UdpSocket::bind(addr).with_context(|| format!("binding {addr}"))?;
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = sock.recv_from(&mut buf)?;
        let Ok(q) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let mut r = Message::response(q.metadata.id, q.metadata.op_code);
        r.metadata.recursion_desired = q.metadata.recursion_desired;
        r.metadata.recursion_available = true;
        r.add_queries(q.queries.iter().cloned());
        let found = q.queries.first().and_then(|q| {
            let key = q.name().to_ascii().to_ascii_lowercase();
            Some((q.name().clone(), table.get(key.trim_end_matches('.'))?))
        });
        match found {
            Some((name, (ips, ttl))) => {
                for ip in ips {
                    r.add_answer(Record::from_rdata(name.clone(), *ttl, RData::A(A(*ip))));
                }
            }
            None => r.metadata.response_code = ResponseCode::NXDomain,
        }
        if let Ok(bytes) = r.to_vec() {
            let _ = sock.send_to(&bytes, peer);
        }
    }
}

/// Spawns `cmd` with its CPU affinity set to `cpu` (inherited from the spawning thread, so every
/// thread the child starts stays there).
fn spawn_on_cpu(cpu: usize, mut cmd: Command) -> anyhow::Result<Child> {
    std::thread::spawn(move || -> anyhow::Result<Child> {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu)?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
            .with_context(|| format!("pinning to CPU {cpu}"))?;
        cmd.spawn()
            .with_context(|| format!("spawning {:?}", cmd.get_program()))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("spawning thread panicked"))?
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The A-record addresses `server` answers for `name` (None: no answer within 200 ms).
fn ask(server: SocketAddr, name: &str) -> anyhow::Result<Option<Vec<Ipv4Addr>>> {
    let mut m = Message::query();
    m.metadata.id = 4711;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    sock.send_to(&m.to_vec()?, server)?;
    let mut buf = vec![0u8; 4096];
    let Ok((n, _)) = sock.recv_from(&mut buf) else {
        return Ok(None);
    };
    let r = Message::from_vec(&buf[..n])?;
    let mut ips: Vec<Ipv4Addr> = r
        .answers
        .iter()
        .filter_map(|rec| match &rec.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    ips.sort();
    Ok(Some(ips))
}

/// Polls until `server` answers `name` with `want` (sorted).
fn wait_answer(
    server: SocketAddr,
    name: &str,
    want: &[Ipv4Addr],
    timeout: Duration,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        let got = ask(server, name)?;
        if got.as_deref() == Some(want) {
            return Ok(());
        }
        if t0.elapsed() > timeout {
            bail!("{server} answers {name} with {got:?}, not {want:?}, after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How dnsperf loads the server.
#[derive(Clone, Copy)]
enum Load {
    /// As fast as answers come back, this many queries in flight.
    Max(u32),
    /// A steady rate (queries/s), each query's latency reported.
    Rate(u32),
}

/// One dnsperf run's figures.
struct Perf {
    qps: f64,
    sent: u64,
    lost: u64,
    /// Sorted latencies of answered queries ([`Load::Rate`] runs only).
    latencies: Vec<Duration>,
}

impl Perf {
    fn percentile(&self, p: f64) -> Duration {
        let v = &self.latencies;
        if v.is_empty() {
            return Duration::ZERO;
        }
        v[(((v.len() - 1) as f64) * p).round() as usize]
    }
}

/// The rounds of one target and load: medians, each round's figure, losses in all.
struct Summary {
    qps: f64,
    qps_rounds: String,
    p50: Duration,
    p99: Duration,
    p99_rounds: String,
    lost: u64,
    sent: u64,
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> Option<T> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied()
}

impl Summary {
    fn of(runs: &[Perf]) -> Summary {
        let qps: Vec<f64> = runs.iter().map(|r| r.qps).collect();
        let p99: Vec<Duration> = runs.iter().map(|r| r.percentile(0.99)).collect();
        Summary {
            qps: median(qps.clone()).unwrap_or_default(),
            qps_rounds: qps
                .iter()
                .map(|q| grouped(*q))
                .collect::<Vec<_>>()
                .join(" / "),
            p50: median(runs.iter().map(|r| r.percentile(0.5)).collect()).unwrap_or_default(),
            p99: median(p99.clone()).unwrap_or_default(),
            p99_rounds: p99
                .iter()
                .map(|d| format!("{:.2}", d.as_secs_f64() * 1000.0))
                .collect::<Vec<_>>()
                .join(" / "),
            lost: runs.iter().map(|r| r.lost).sum(),
            sent: runs.iter().map(|r| r.sent).sum(),
        }
    }
}

struct Bench {
    client_cpu: usize,
    seconds: u64,
    dir: PathBuf,
    runs: u32,
}

impl Bench {
    fn dnsperf(&mut self, server: SocketAddr, queries: &Path, load: Load) -> anyhow::Result<Perf> {
        self.runs += 1;
        let out_path = self.dir.join(format!("dnsperf-{}.out", self.runs));
        let mut cmd = Command::new("dnsperf");
        cmd.args([
            "-s",
            &server.ip().to_string(),
            "-p",
            &server.port().to_string(),
        ])
        .arg("-d")
        .arg(queries)
        .args([
            "-l",
            &self.seconds.to_string(),
            "-c",
            "4",
            "-T",
            "1",
            "-t",
            "1",
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(Stdio::null());
        match load {
            Load::Max(outstanding) => cmd.args(["-q", &outstanding.to_string()]),
            // Enough in flight that the rate, not the window, paces the queries.
            Load::Rate(qps) => cmd.args(["-Q", &qps.to_string(), "-q", "1000", "-v"]),
        };
        let status = spawn_on_cpu(self.client_cpu, cmd)?.wait()?;
        let out = std::fs::read_to_string(&out_path)?;
        if !status.success() {
            bail!("dnsperf failed ({status}):\n{out}");
        }
        parse_dnsperf(&out)
    }
}

/// The figures of dnsperf's report: `Queries sent:`, `Queries lost:`, `Queries per second:` and,
/// with `-v`, one `> RCODE name type latency-seconds` line per answered query.
fn parse_dnsperf(out: &str) -> anyhow::Result<Perf> {
    let field = |key: &str| -> anyhow::Result<f64> {
        let line = out
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .with_context(|| format!("no {key:?} in dnsperf's report:\n{out}"))?;
        let n = line.split_whitespace().next().unwrap_or_default();
        n.parse().with_context(|| format!("{key} {n:?}"))
    };
    let mut latencies: Vec<Duration> = out
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .collect();
    latencies.sort();
    Ok(Perf {
        qps: field("Queries per second:")?,
        sent: field("Queries sent:")? as u64,
        lost: field("Queries lost:")? as u64,
        latencies,
    })
}

fn write_queries(path: &Path, names: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let text: String = names.map(|n| format!("{n} A\n")).collect();
    std::fs::write(path, text)?;
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Thousands separated by a space, as the README writes them.
fn grouped(n: f64) -> String {
    let s = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

async fn run(args: Args) -> anyhow::Result<()> {
    if Command::new("dnsperf").arg("-h").output().is_err() {
        bail!("dnsperf is missing: apt-get install dnsperf");
    }
    let cpus = std::thread::available_parallelism()?.get();
    if args.server_cpu >= cpus || args.client_cpu >= cpus {
        bail!("this machine has CPUs 0..{cpus}; choose --server-cpu/--client-cpu among them");
    }
    let dir = tempfile::Builder::new()
        .prefix("lotse-dns-bench")
        .tempdir()?;
    let api = ApiServer::start_with(bin_dir().join("apiserver"), Backend::Sqlite, &[]).await?;
    let client = api.client().await?;
    let services = sim::services(args.services, NAMESPACES, ENDPOINTS, HEADLESS_EVERY);
    let t0 = Instant::now();
    sim::create_namespaces(&client, NAMESPACES).await?;
    sim::create_services(&client, &services).await?;
    println!(
        "created {} Services ({} headless) with {ENDPOINTS} endpoints each in {NAMESPACES} namespaces: {:.1?}",
        services.len(),
        services.iter().filter(|s| s.cluster_ip.is_none()).count(),
        t0.elapsed()
    );

    // The upstream: the reference responder on port 53 of a loopback address of its own.
    let upstream: SocketAddr = (
        Ipv4Addr::new(127, 53, (std::process::id() % 250) as u8, 1),
        53,
    )
        .into();
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--responder")
        .arg(upstream.to_string())
        .args(["--services", &args.services.to_string()])
        .args(["--upstream-names", &args.upstream_names.to_string()])
        .stdin(Stdio::null());
    let _responder = Proc(spawn_on_cpu(args.server_cpu, cmd)?);
    let probe = &services[services.len() - 1];
    wait_answer(
        upstream,
        &cluster_name(probe),
        &addresses(probe),
        Duration::from_secs(10),
    )
    .context("the reference responder (root needed for port 53)")?;

    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {}\n", upstream.ip()))?;
    let port = e2e::free_port()?;
    let server: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
    let log = dir.path().join("lotse-dns.log");
    let mut cmd = Command::new(bin_dir().join("lotse-dns"));
    cmd.arg("--kubeconfig")
        .arg(api.kubeconfig())
        .args(["--bind-address", "127.0.0.1", "--port", &port.to_string()])
        .arg("--resolv-conf")
        .arg(&resolv)
        .args(["--health-address", "", "--ready-address", ""])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let t0 = Instant::now();
    let mut dns = Proc(spawn_on_cpu(args.server_cpu, cmd)?);
    let serving = wait_answer(
        server,
        &cluster_name(probe),
        &addresses(probe),
        Duration::from_secs(60),
    );
    if let Err(e) = serving {
        let _ = dns.0.kill();
        bail!(
            "{e:#}\nlotse-dns log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    println!(
        "lotse-dns on CPU {} serves all {} Services {:.1?} after its start; dnsperf on CPU {}, {} s per run",
        args.server_cpu,
        services.len(),
        t0.elapsed(),
        args.client_cpu,
        args.seconds
    );
    let want = table(&args);
    let (first_up, (first_ips, _)) = want
        .get_key_value(&upstream_name(0))
        .context("upstream names")?;
    wait_answer(server, first_up, first_ips, Duration::from_secs(5))?;

    let cluster_q = dir.path().join("cluster.txt");
    write_queries(&cluster_q, services.iter().map(cluster_name))?;
    let upstream_q = dir.path().join("upstream.txt");
    write_queries(&upstream_q, (0..args.upstream_names).map(upstream_name))?;
    let mut bench = Bench {
        client_cpu: args.client_cpu,
        seconds: args.seconds,
        dir: dir.path().to_path_buf(),
        runs: 0,
    };
    // Warm-up: every upstream name into the cache, every code path paged in.
    bench.seconds = 1;
    bench.dnsperf(server, &upstream_q, Load::Max(args.outstanding))?;
    bench.dnsperf(server, &cluster_q, Load::Max(args.outstanding))?;
    bench.seconds = args.seconds;

    for (kind, queries, goal) in [
        (
            format!(
                "cluster names ({} Services, every tenth headless with {ENDPOINTS} addresses)",
                services.len()
            ),
            &cluster_q,
            true,
        ),
        (
            format!(
                "cached upstream names ({} names, upstream {upstream})",
                args.upstream_names
            ),
            &upstream_q,
            false,
        ),
    ] {
        // Rounds alternate between the targets, so both see the same moments of the machine.
        let mut runs: [Vec<Perf>; 4] = Default::default();
        for _ in 0..args.rounds {
            runs[0].push(bench.dnsperf(server, queries, Load::Max(args.outstanding))?);
            runs[1].push(bench.dnsperf(upstream, queries, Load::Max(args.outstanding))?);
            runs[2].push(bench.dnsperf(server, queries, Load::Rate(args.rate))?);
            runs[3].push(bench.dnsperf(upstream, queries, Load::Rate(args.rate))?);
        }
        let [dns_max, ref_max, dns_rate, ref_rate] = runs.map(|r| Summary::of(&r));
        println!("{kind}, median of {} rounds:", args.rounds);
        println!(
            "  throughput ({} in flight): lotse-dns {} queries/s (rounds {}; lost {} of {}) vs {} queries/s for the fixed-table responder on the same core (rounds {}): {:.2}x{}",
            args.outstanding,
            grouped(dns_max.qps),
            dns_max.qps_rounds,
            dns_max.lost,
            dns_max.sent,
            grouped(ref_max.qps),
            ref_max.qps_rounds,
            dns_max.qps / ref_max.qps.max(1.0),
            if goal {
                " (goal >= 20 000 queries/s)"
            } else {
                ""
            },
        );
        println!(
            "  latency at {} queries/s: lotse-dns p50 {}, p99 {} (rounds {}; lost {} of {}) vs responder p50 {}, p99 {} (rounds {}; lost {}): p99 {:.2}x{}",
            grouped(f64::from(args.rate)),
            ms(dns_rate.p50),
            ms(dns_rate.p99),
            dns_rate.p99_rounds,
            dns_rate.lost,
            dns_rate.sent,
            ms(ref_rate.p50),
            ms(ref_rate.p99),
            ref_rate.p99_rounds,
            ref_rate.lost,
            dns_rate.p99.as_secs_f64() / ref_rate.p99.as_secs_f64().max(1e-9),
            if goal { " (goal p99 <= 1 ms)" } else { "" },
        );
        let names = if goal {
            "cluster names"
        } else {
            "cached upstream names"
        };
        figure(
            format!(
                "lotse-dns on one core, {names}: queries/s, median of {}",
                args.rounds
            ),
            dns_max.qps,
            "1/s",
        )
        .vs("fixed-table responder on the same core", ref_max.qps)
        .goal_if(goal, ">= 20 000 queries/s")
        .record()?;
        figure(
            format!(
                "lotse-dns, {names}: p99 at a steady {} queries/s",
                args.rate
            ),
            in_ms(dns_rate.p99),
            "ms",
        )
        .vs("fixed-table responder p99", in_ms(ref_rate.p99))
        .goal_if(goal, "p99 <= 1 ms")
        .record()?;
    }
    println!(
        "lotse-dns RSS after the runs: {:.1} MiB",
        rss_kib(dns.0.id())? as f64 / 1024.0
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnsperf_report_is_parsed() {
        let out = "> NOERROR s1.ns-1.svc.cluster.local A 0.000120\n> NXDOMAIN x A 0.000300\n\
            Statistics:\n\n  Queries sent:         100\n  Queries completed:    98 (98.00%)\n\
            \x20 Queries lost:         2 (2.00%)\n\n  Queries per second:   19999.123456\n";
        let p = parse_dnsperf(out).unwrap();
        assert_eq!((p.sent, p.lost), (100, 2));
        assert!((p.qps - 19999.12).abs() < 0.01);
        assert_eq!(
            p.latencies,
            [Duration::from_micros(120), Duration::from_micros(300)]
        );
        assert_eq!(p.percentile(0.99), Duration::from_micros(300));
    }

    #[test]
    fn rounds_are_summarized_by_their_medians() {
        let run = |qps: f64, ms: &[u64]| Perf {
            qps,
            sent: 10,
            lost: 1,
            latencies: ms.iter().map(|m| Duration::from_millis(*m)).collect(),
        };
        let s = Summary::of(&[run(3.0, &[1, 9]), run(1.0, &[2, 3]), run(2.0, &[1, 1])]);
        assert_eq!(s.qps, 2.0);
        assert_eq!(s.p99, Duration::from_millis(3));
        assert_eq!(s.p99_rounds, "9.00 / 3.00 / 1.00");
        assert_eq!((s.lost, s.sent), (3, 30));
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(grouped(20000.4), "20 000");
        assert_eq!(grouped(999.0), "999");
        assert_eq!(grouped(1234567.0), "1 234 567");
    }
}
