//! `apiserver-bench`: measures the apiserver on SQLite and on etcd, with raw etcd puts as the
//! baseline, and prints a table of figures next to the goals of issue 2. Figures are printed,
//! never asserted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use e2e::report::{figure, ms as in_ms};
use e2e::{ApiServer, Backend, Etcd, rss_kib};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};

/// Benchmarks the Lotse apiserver (release build) on SQLite and etcd against raw etcd puts.
///
/// Starts a fresh apiserver per backend (and a throwaway etcd where needed) on free loopback
/// ports, then measures: create latency and throughput at concurrency 1 and 32, create latency
/// at a fixed 500 creates/s, GET p99, LIST of N pods, event delivery to M concurrent watchers,
/// and the apiserver's RSS with N pods stored. Build first:
///
///   cargo build --release -p apiserver -p e2e
///   target/release/apiserver-bench
#[derive(Parser, Debug)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Args {
    /// The apiserver binary to measure (default: target/release/apiserver of this workspace).
    #[arg(long, env = "LOTSE_BENCH_APISERVER")]
    apiserver: Option<PathBuf>,
    /// Backends to measure, comma-separated: sqlite, etcd.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,etcd")]
    backends: Vec<String>,
    /// Creates per measurement of create latency/throughput.
    #[arg(long, default_value_t = 2000)]
    creates: usize,
    /// Target rate (creates/s) of the paced create-latency measurement.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Pods stored for the LIST and RSS measurements.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Concurrent watchers for the event-delivery measurement.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Events delivered to every watcher.
    #[arg(long, default_value_t = 20)]
    watch_events: usize,
    /// Idle watchers opened over HTTP/2 (100 streams per connection, as many kubelets'
    /// watches share connections) for the memory-per-watcher figure; 0 skips it.
    #[arg(long, default_value_t = 10_000)]
    idle_watchers: usize,
}

/// Latency samples of one measurement.
struct Samples {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Samples {
    fn pct(&self, q: f64) -> Duration {
        let mut v = self.latencies.clone();
        v.sort();
        if v.is_empty() {
            return Duration::ZERO;
        }
        let idx = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[idx]
    }

    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Runs `n` operations with `concurrency` in flight, timing each.
async fn timed<F, Fut>(n: usize, concurrency: usize, op: F) -> anyhow::Result<Samples>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let start = Instant::now();
    let latencies = futures::stream::iter(0..n)
        .map(|i| {
            let fut = op(i);
            async move {
                let t = Instant::now();
                fut.await?;
                Ok::<_, anyhow::Error>(t.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(Samples {
        latencies,
        elapsed: start.elapsed(),
    })
}

/// Runs `n` operations started at a fixed `rate` per second (open loop), timing each.
async fn paced<F, Fut>(n: usize, rate: u32, op: F) -> anyhow::Result<Samples>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        let fut = op(i);
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            fut.await?;
            Ok::<_, anyhow::Error>(t.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    for t in tasks {
        latencies.push(t.await??);
    }
    Ok(Samples {
        latencies,
        elapsed: start.elapsed(),
    })
}

fn configmap(name: String) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name),
            ..Default::default()
        },
        data: Some([("payload".to_string(), "x".repeat(256))].into()),
        ..Default::default()
    }
}

fn pod(name: String) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench", "tier": "load"}},
        "spec": {"containers": [{
            "name": "app",
            "image": "nginx:1.25",
            "ports": [{"containerPort": 80}],
            "env": [{"name": "MODE", "value": "bench"}],
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}
        }]}
    }))?)
}

/// `p50 / p99` of the samples' latencies.
fn p50_p99(s: &Samples) -> String {
    format!("{} / {}", ms(s.pct(0.5)), ms(s.pct(0.99)))
}

/// `median / min` of the timings (sorts them).
fn median_min(times: &mut [Duration]) -> String {
    times.sort();
    format!("{} / {}", ms(times[times.len() / 2]), ms(times[0]))
}

/// How [`create_configmaps`] issues its creates.
enum Load {
    /// With this many requests in flight.
    Concurrent(usize),
    /// Started at this many per second (open loop).
    Paced(u32),
}

/// Creates namespace `ns`, then `n` ConfigMaps in it, timing each create.
async fn create_configmaps(
    client: &kube::Client,
    ns: &str,
    n: usize,
    load: Load,
) -> anyhow::Result<(Api<ConfigMap>, Samples)> {
    create_ns(client, ns).await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let op = |i: usize| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &configmap(format!("cm-{i}")))
                .await?;
            Ok(())
        }
    };
    let s = match load {
        Load::Concurrent(c) => timed(n, c, op).await?,
        Load::Paced(rate) => paced(n, rate, op).await?,
    };
    Ok((api, s))
}

async fn create_ns(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &ns).await?;
    Ok(())
}

/// Figures of one backend.
#[derive(Default)]
struct Figures {
    rows: Vec<(String, String)>,
    c32_throughput: f64,
}

impl Figures {
    fn add(&mut self, name: &str, value: String) {
        eprintln!("  {name}: {value}");
        self.rows.push((name.to_string(), value));
    }
}

/// CPU used by the processes of one phase: the apiserver (if any), etcd (if any), this bench
/// (the client) and the whole machine, to say where a phase's time went.
#[derive(Clone, Copy)]
struct CpuSplit {
    apiserver: Option<u32>,
    etcd: Option<u32>,
    at: [f64; 4],
}

impl CpuSplit {
    fn start(apiserver: Option<u32>, etcd: Option<u32>) -> Self {
        let mut s = Self {
            apiserver,
            etcd,
            at: [0.0; 4],
        };
        s.at = s.read();
        s
    }

    fn read(&self) -> [f64; 4] {
        [
            self.apiserver.map_or(0.0, |p| e2e::cpu_seconds(Some(p))),
            self.etcd.map_or(0.0, |p| e2e::cpu_seconds(Some(p))),
            e2e::cpu_seconds(Some(std::process::id())),
            e2e::machine_busy_seconds(),
        ]
    }

    /// `apiserver 120 µs, etcd 80 µs, client 60 µs per op; machine 85 % busy` for `ops`
    /// operations over `wall`.
    fn per_op(&self, ops: usize, wall: Duration) -> String {
        let now = self.read();
        let us = |i: usize| (now[i] - self.at[i]) * 1e6 / ops.max(1) as f64;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let busy = (now[3] - self.at[3]) / (wall.as_secs_f64() * cpus).max(1e-9) * 100.0;
        let mut parts = Vec::new();
        if self.apiserver.is_some() {
            parts.push(format!("apiserver {:.0} µs", us(0)));
        }
        if self.etcd.is_some() {
            parts.push(format!("etcd {:.0} µs", us(1)));
        }
        parts.push(format!("client {:.0} µs", us(2)));
        format!(
            "{} CPU per op; machine {busy:.0} % busy ({cpus} CPUs)",
            parts.join(", ")
        )
    }
}

async fn measure_apiserver(
    args: &Args,
    binary: &Path,
    backend: Backend,
    raw: Option<&RawEtcd>,
) -> anyhow::Result<Figures> {
    let b = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Etcd => "etcd",
    };
    let server = ApiServer::start_with(binary.to_path_buf(), backend, &[]).await?;
    let pid = server.pid().context("apiserver pid")?;
    let client = server.client().await?;
    let mut f = Figures::default();
    f.add(
        "RSS at start",
        format!("{:.1} MiB", rss_kib(pid)? as f64 / 1024.0),
    );

    // Create latency and throughput at concurrency 1 and 32.
    let (_, s) = create_configmaps(&client, "bench-c1", args.creates, Load::Concurrent(1)).await?;
    f.add("create c=1 p50 / p99", p50_p99(&s));
    f.add("create c=1 throughput", format!("{:.0}/s", s.throughput()));
    let c1 = figure(
        format!("{b}: create p99, one client"),
        in_ms(s.pct(0.99)),
        "ms",
    );
    match raw {
        Some(raw) => c1.vs("raw etcd put p99, one client", in_ms(raw.c1_p99)),
        None => c1,
    }
    .record()?;

    let (_, s) =
        create_configmaps(&client, "bench-paced", args.creates, Load::Paced(args.rate)).await?;
    f.add(
        &format!("create at {}/s p50 / p99", args.rate),
        format!("{} (achieved {:.0}/s)", p50_p99(&s), s.throughput()),
    );
    figure(
        format!("{b}: create p99 at {}/s", args.rate),
        in_ms(s.pct(0.99)),
        "ms",
    )
    .goal_if(backend == Backend::Sqlite, "p99 <= 5 ms at 500 creates/s")
    .record()?;

    let cpu = CpuSplit::start(Some(pid), server.etcd().map(|e| e.pid()));
    let (api, s) =
        create_configmaps(&client, "bench-c32", args.creates, Load::Concurrent(32)).await?;
    f.add("create c=32 p50 / p99", p50_p99(&s));
    f.add("create c=32 throughput", format!("{:.0}/s", s.throughput()));
    f.add("create c=32 CPU", cpu.per_op(args.creates, s.elapsed));
    f.c32_throughput = s.throughput();
    let c32 = figure(
        format!("{b}: create throughput, 32 clients"),
        s.throughput(),
        "1/s",
    );
    match raw {
        Some(raw) => c32
            .vs("raw etcd puts, 32 clients", raw.c32_throughput)
            .goal(">= 0.7x baseline"),
        None => c32,
    }
    .record()?;
    if let Some(raw) = raw {
        // The same creates against the same guarded transaction the apiserver sends.
        figure(
            format!("{b}: create throughput, 32 clients (vs the same txn)"),
            s.throughput(),
            "1/s",
        )
        .vs(
            "raw etcd guarded creates (txn if mod_revision == 0), 32 clients",
            raw.c32_txn_throughput,
        )
        .record()?;
    }

    // GET p99 (sequential, objects from the c=32 run).
    let n = args.creates;
    let s = timed(n, 1, |i| {
        let api = api.clone();
        async move {
            api.get(&format!("cm-{}", (i * 7919) % n)).await?;
            Ok(())
        }
    })
    .await?;
    f.add("GET p50 / p99", p50_p99(&s));
    figure(format!("{b}: GET p99"), in_ms(s.pct(0.99)), "ms").record()?;

    // Store N pods, LIST them, read RSS.
    create_ns(&client, "bench-pods").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "bench-pods");
    let s = timed(args.pods, 32, |i| {
        let pods = pods.clone();
        async move {
            pods.create(&PostParams::default(), &pod(format!("pod-{i}"))?)
                .await?;
            Ok(())
        }
    })
    .await?;
    f.add(
        &format!("create {} pods c=32", args.pods),
        format!("{:.1} s ({:.0}/s)", s.elapsed.as_secs_f64(), s.throughput()),
    );
    let mut decoded_median = Duration::ZERO;
    for (label, lp) in [
        ("LIST pods (consistent)", ListParams::default()),
        (
            "LIST pods (resourceVersion=0)",
            ListParams::default().match_any(),
        ),
    ] {
        let mut times = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let list = pods.list(&lp).await?;
            times.push(t.elapsed());
            if list.items.len() != args.pods {
                bail!(
                    "{label} returned {} pods, expected {}",
                    list.items.len(),
                    args.pods
                );
            }
        }
        f.add(
            &format!("{label} of {}: median / min", args.pods),
            median_min(&mut times),
        );
        if label == "LIST pods (consistent)" {
            decoded_median = times[times.len() / 2];
        }
    }
    // The same LIST without client-side decoding into typed Pods (server + TLS + transfer).
    for (label, query) in [
        ("consistent", ""),
        ("resourceVersion=0", "?resourceVersion=0"),
    ] {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let path = format!("/api/v1/namespaces/bench-pods/pods{query}");
            let (code, body) = e2e::raw_request(&client, "GET", &path, None, vec![]).await?;
            times.push(t.elapsed());
            if code != 200 {
                bail!("raw LIST answered {code}");
            }
            bytes = body.len();
        }
        f.add(
            &format!("LIST pods raw bytes ({label}): median / min"),
            format!(
                "{} ({:.1} MiB)",
                median_min(&mut times),
                bytes as f64 / 1048576.0
            ),
        );
        if query.is_empty() {
            let raw_median = times[times.len() / 2];
            figure(
                format!(
                    "{b}: LIST {} pods, server side (raw bytes), median",
                    args.pods
                ),
                in_ms(raw_median),
                "ms",
            )
            .goal("<= 100 ms for 10 000 pods")
            .record()?;
            figure(
                format!("{b}: LIST {} pods decoded by kube-rs, median", args.pods),
                in_ms(decoded_median),
                "ms",
            )
            .vs("the same LIST as raw bytes", in_ms(raw_median))
            .record()?;
        }
    }
    let rss = rss_kib(pid)? as f64 / 1024.0;
    f.add(
        &format!("RSS with {} pods", args.pods),
        format!("{rss:.1} MiB"),
    );
    figure(format!("{b}: RSS with {} pods", args.pods), rss, "MiB")
        .goal("<= 150 MiB")
        .record()?;

    // Event delivery to M concurrent watchers: first read as raw lines (the client only
    // timestamps them), then decoded by kube-rs as a controller would.
    let mut p99 = Vec::new();
    for (mode, what) in [
        (WatchClient::RawLines, "raw"),
        (WatchClient::KubeRs, "kube-rs"),
    ] {
        let (text, samples) =
            watch_delivery(&server, args.watchers, args.watch_events, mode).await?;
        f.add(
            &format!(
                "watch delivery p50 / p99 ({} {what} watchers)",
                args.watchers
            ),
            text,
        );
        p99.push(samples.pct(0.99));
    }
    let (raw_p99, kube_p99) = (p99[0], p99[1]);
    figure(
        format!(
            "{b}: watch delivery p99, {} watchers reading raw lines",
            args.watchers
        ),
        in_ms(raw_p99),
        "ms",
    )
    .goal("p99 <= 50 ms")
    .record()?;
    figure(
        format!(
            "{b}: watch delivery p99, {} watchers decoding with kube-rs",
            args.watchers
        ),
        in_ms(kube_p99),
        "ms",
    )
    .vs("the same with raw-line watchers", in_ms(raw_p99))
    .record()?;
    f.add(
        "RSS after watchers",
        format!("{:.1} MiB", rss_kib(pid)? as f64 / 1024.0),
    );
    if args.idle_watchers > 0 {
        // A fresh apiserver: the heap this one freed after its LISTs and watchers would hold
        // the new watchers without growing.
        drop(server);
        let fresh = ApiServer::start_with(binary.to_path_buf(), backend, &[]).await?;
        let m = idle_watchers(&fresh, args.idle_watchers).await?;
        let per = m.rss_growth_kib / args.idle_watchers as f64;
        f.add(
            &format!("{} idle watchers over HTTP/2", args.idle_watchers),
            format!(
                "{per:.1} KiB each (fresh apiserver: RSS {:.1} -> {:.1} MiB, {} connections); one event to all of them: p50 {}, last {}",
                m.rss_before_kib / 1024.0,
                (m.rss_before_kib + m.rss_growth_kib) / 1024.0,
                m.connections,
                ms(m.fanout_p50),
                ms(m.fanout_last)
            ),
        );
        figure(
            format!(
                "{b}: apiserver memory per idle watcher, {} watchers",
                args.idle_watchers
            ),
            per,
            "KiB",
        )
        .goal("<= 20 KiB")
        .record()?;
        figure(
            format!(
                "{b}: one event delivered to {} watchers, last delivery",
                args.idle_watchers
            ),
            in_ms(m.fanout_last),
            "ms",
        )
        .record()?;
    }
    Ok(f)
}

/// What [`idle_watchers`] measured.
struct IdleWatchers {
    /// The apiserver's RSS before the watches, and its growth from opening them.
    rss_before_kib: f64,
    rss_growth_kib: f64,
    connections: usize,
    /// One event's delivery to the watchers: median and last (from the create request's start).
    fanout_p50: Duration,
    fanout_last: Duration,
}

/// Streams per HTTP/2 connection of [`idle_watchers`] (the server allows 200).
const STREAMS_PER_CONNECTION: usize = 100;

/// Opens `n` watches of one namespace over HTTP/2 connections of the admin's identity, waits
/// until every one is answered, and measures the apiserver's RSS growth; then creates one
/// ConfigMap there and times its delivery to every watcher.
async fn idle_watchers(server: &ApiServer, n: usize) -> anyhow::Result<IdleWatchers> {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use kube::client::ConfigExt;

    let pid = server.pid();
    let client = server.client().await?;
    let ns = "bench-idle-watch";
    create_ns(&client, ns).await?;
    let kc = kube::config::Kubeconfig::read_from(server.kubeconfig())?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let mut tls = cfg.rustls_client_config()?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let port = server.port();
    let uri = format!(
        "https://127.0.0.1:{port}/api/v1/namespaces/{ns}/configmaps?watch=true&timeoutSeconds=600"
    );
    // Let the server settle (freed buffers returned) before the baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(pid.context("apiserver pid")?)? as f64;
    let connections = n.div_ceil(STREAMS_PER_CONNECTION);
    let mut bodies = Vec::with_capacity(n);
    for c in 0..connections {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1")?;
        let tls = connector.connect(name, tcp).await?;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let streams = STREAMS_PER_CONNECTION.min(n - c * STREAMS_PER_CONNECTION);
        let opened = futures::stream::iter(0..streams)
            .map(|_| {
                let mut sender = sender.clone();
                let uri = uri.clone();
                async move {
                    let req = http::Request::get(uri)
                        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
                    let resp = sender.send_request(req).await?;
                    anyhow::ensure!(resp.status() == 200, "watch answered {}", resp.status());
                    anyhow::Ok(resp.into_body())
                }
            })
            .buffer_unordered(STREAMS_PER_CONNECTION)
            .try_collect::<Vec<_>>()
            .await?;
        bodies.extend(opened);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid.context("apiserver pid")?)? as f64;

    // One event to all of them: each waits for its first data frame.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut tasks = Vec::with_capacity(n);
    for mut body in bodies {
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(frame) = body.frame().await {
                if frame.map(|f| f.is_data()).unwrap_or(false) {
                    let _ = tx.send(Instant::now());
                    break;
                }
            }
        }));
    }
    drop(tx);
    let api: Api<ConfigMap> = Api::namespaced(client, ns);
    let sent = Instant::now();
    api.create(&PostParams::default(), &configmap("fanout".into()))
        .await?;
    let mut delivered = Vec::with_capacity(n);
    while delivered.len() < n {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(at)) => delivered.push(at.saturating_duration_since(sent)),
            Ok(None) | Err(_) => break,
        }
    }
    for t in tasks {
        t.abort();
    }
    anyhow::ensure!(
        delivered.len() == n,
        "the event reached {} of {n} watchers",
        delivered.len()
    );
    delivered.sort();
    Ok(IdleWatchers {
        rss_before_kib: before,
        rss_growth_kib: after - before,
        connections,
        fanout_p50: delivered[n / 2],
        fanout_last: delivered[n - 1],
    })
}

/// Opens `watchers` watches on one namespace, creates `events` ConfigMaps, and reports the
/// p50/p99 of (delivery to a watcher − start of the create request), as text and samples.
/// How the watchers of [`watch_delivery`] read their streams.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WatchClient {
    /// kube-rs `Api::watch`: every event decoded into a typed ConfigMap.
    KubeRs,
    /// The raw stream: each line timestamped on arrival, only the object's name picked out of
    /// the bytes, so the client is never the bottleneck.
    RawLines,
}

/// The index `i` of a `w-<i>` object named in an ADDED watch line, from the bytes.
fn added_index(line: &str) -> Option<usize> {
    if !line.starts_with("{\"type\":\"ADDED\"") {
        return None;
    }
    let at = line.find("\"name\":\"w-")? + "\"name\":\"w-".len();
    let digits = line[at..].find('"')?;
    line[at..at + digits].parse().ok()
}

async fn watch_delivery(
    server: &ApiServer,
    watchers: usize,
    events: usize,
    mode: WatchClient,
) -> anyhow::Result<(String, Samples)> {
    let client = server.client().await?;
    let ns = match mode {
        WatchClient::KubeRs => "bench-watch",
        WatchClient::RawLines => "bench-watch-raw",
    };
    create_ns(&client, ns).await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let rv = api
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    // Spread the watches over several clients (connections).
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(server.client().await?);
    }
    let ready = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let mut tasks = Vec::new();
    for w in 0..watchers {
        let client = clients[w % clients.len()].clone();
        let (ready, tx, rv) = (ready.clone(), tx.clone(), rv.clone());
        if mode == WatchClient::RawLines {
            tasks.push(tokio::spawn(async move {
                use futures::AsyncBufReadExt;
                let path = format!(
                    "/api/v1/namespaces/{ns}/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=290"
                );
                let request = http::Request::get(path).body(Vec::new())?;
                let reader = client.request_stream(request).await?;
                ready.fetch_add(1, Ordering::SeqCst);
                let mut lines = std::pin::pin!(reader.lines());
                let mut seen = 0;
                while let Some(line) = lines.try_next().await? {
                    let now = Instant::now();
                    if let Some(idx) = added_index(&line) {
                        let _ = tx.send((idx, now));
                        seen += 1;
                        if seen == events {
                            break;
                        }
                    }
                }
                Ok::<_, anyhow::Error>(())
            }));
            continue;
        }
        let api = Api::<ConfigMap>::namespaced(client, ns);
        tasks.push(tokio::spawn(async move {
            let stream = api.watch(&WatchParams::default().timeout(290), &rv).await?;
            ready.fetch_add(1, Ordering::SeqCst);
            let mut stream = std::pin::pin!(stream);
            let mut seen = 0;
            while let Some(ev) = stream.try_next().await? {
                if let WatchEvent::Added(cm) = ev {
                    let now = Instant::now();
                    let idx = cm
                        .metadata
                        .name
                        .as_deref()
                        .and_then(|n| n.strip_prefix("w-"))
                        .and_then(|n| n.parse().ok());
                    if let Some(idx) = idx {
                        let _ = tx.send((idx, now));
                        seen += 1;
                        if seen == events {
                            break;
                        }
                    }
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready.load(Ordering::SeqCst) < watchers {
        if Instant::now() > deadline {
            bail!(
                "only {} of {watchers} watches started",
                ready.load(Ordering::SeqCst)
            );
        }
        if let Some(t) = tasks.iter_mut().find(|t| t.is_finished()) {
            t.await??;
            bail!("a watch ended early");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = server.pid();
    let (cpu0, t0) = (e2e::cpu_seconds(pid), Instant::now());
    let mut sent = Vec::with_capacity(events);
    for i in 0..events {
        sent.push(Instant::now());
        api.create(&PostParams::default(), &configmap(format!("w-{i}")))
            .await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut latencies = Vec::with_capacity(watchers * events);
    while latencies.len() < watchers * events {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some((idx, at))) => latencies.push(at.saturating_duration_since(sent[idx])),
            Ok(None) | Err(_) => break,
        }
    }
    let apiserver_cpu = (e2e::cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    for t in tasks {
        t.abort();
    }
    let delivered = latencies.len();
    let s = Samples {
        latencies,
        elapsed: Duration::from_secs(1),
    };
    let text = format!(
        "{} / {} ({delivered} of {} deliveries; apiserver {apiserver_cpu:.0} % of a CPU)",
        ms(s.pct(0.5)),
        ms(s.pct(0.99)),
        watchers * events
    );
    Ok((text, s))
}

/// The raw etcd baseline figures the apiserver's creates on etcd are compared with.
struct RawEtcd {
    c1_p99: Duration,
    c32_throughput: f64,
    c32_txn_throughput: f64,
}

/// Raw etcd-client puts (same value size as a ConfigMap create) at concurrency 1 and 32.
async fn measure_raw_etcd(n: usize) -> anyhow::Result<(Figures, RawEtcd)> {
    let etcd = Etcd::start().await?;
    let client = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    let value = serde_json::to_vec(&configmap("x".repeat(20)))?;
    let mut f = Figures::default();
    let mut raw = RawEtcd {
        c1_p99: Duration::ZERO,
        c32_throughput: 0.0,
        c32_txn_throughput: 0.0,
    };
    for c in [1usize, 32] {
        let cpu = CpuSplit::start(None, Some(etcd.pid()));
        let s = timed(n, c, |i| {
            let mut kv = client.kv_client();
            let value = value.clone();
            async move {
                kv.put(format!("/bench/c{c}/{i}"), value, None).await?;
                Ok(())
            }
        })
        .await?;
        f.add(
            &format!("raw etcd put c={c} p50 / p99"),
            format!("{} / {}", ms(s.pct(0.5)), ms(s.pct(0.99))),
        );
        f.add(
            &format!("raw etcd put c={c} throughput"),
            format!("{:.0}/s", s.throughput()),
        );
        if c == 32 {
            f.add("raw etcd put c=32 CPU", cpu.per_op(n, s.elapsed));
            raw.c32_throughput = s.throughput();
        } else {
            raw.c1_p99 = s.pct(0.99);
        }
    }
    // The same guarded create the apiserver sends ("if mod_revision == 0 then put"), 32 clients.
    let cpu = CpuSplit::start(None, Some(etcd.pid()));
    let s = timed(n, 32, |i| {
        let mut kv = client.kv_client();
        let value = value.clone();
        async move {
            let key = format!("/bench/txn/{i}");
            let txn = etcd_client::Txn::new()
                .when([etcd_client::Compare::mod_revision(
                    key.as_str(),
                    etcd_client::CompareOp::Equal,
                    0,
                )])
                .and_then([etcd_client::TxnOp::put(key.as_str(), value, None)]);
            kv.txn(txn).await?;
            Ok(())
        }
    })
    .await?;
    f.add(
        "raw etcd guarded create (txn) c=32 p50 / p99",
        format!("{} / {}", ms(s.pct(0.5)), ms(s.pct(0.99))),
    );
    f.add(
        "raw etcd guarded create (txn) c=32 throughput",
        format!("{:.0}/s", s.throughput()),
    );
    f.add("raw etcd txn c=32 CPU", cpu.per_op(n, s.elapsed));
    raw.c32_txn_throughput = s.throughput();
    Ok((f, raw))
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
    eprintln!("apiserver binary: {}", binary.display());

    let mut sections: Vec<(String, Figures)> = Vec::new();
    let mut raw_etcd = None;
    if args.backends.iter().any(|b| b == "etcd") {
        eprintln!("raw etcd baseline:");
        let (f, raw) = measure_raw_etcd(args.creates).await?;
        raw_etcd = Some(raw);
        sections.push(("raw etcd-client".into(), f));
    }
    for name in &args.backends {
        let backend = match name.as_str() {
            "sqlite" => Backend::Sqlite,
            "etcd" => Backend::Etcd,
            other => bail!("unknown backend {other:?} (sqlite, etcd)"),
        };
        eprintln!("apiserver on {name}:");
        let raw = raw_etcd.as_ref().filter(|_| backend == Backend::Etcd);
        let mut f = measure_apiserver(&args, &binary, backend, raw)
            .await
            .with_context(|| format!("backend {name}"))?;
        if let Some(raw) = raw {
            let ratio = f.c32_throughput / raw.c32_throughput;
            f.add(
                "create c=32 throughput / raw etcd put c=32",
                format!("{ratio:.2}x"),
            );
            f.add(
                "create c=32 throughput / raw etcd guarded create c=32",
                format!("{:.2}x", f.c32_throughput / raw.c32_txn_throughput),
            );
        }
        sections.push((format!("apiserver on {name}"), f));
    }

    println!();
    println!("{:<52} {:<44} goal", "measurement", "figure");
    println!("{}", "-".repeat(130));
    for (section, f) in &sections {
        println!("[{section}]");
        for (name, value) in &f.rows {
            println!("{name:<52} {value:<44} {}", goal(section, name, args.rate));
        }
    }
    Ok(())
}

/// The issue-2 goal a row is compared against, if any.
fn goal(section: &str, row: &str, rate: u32) -> String {
    let sqlite = section.ends_with("sqlite");
    let etcd = section.ends_with("etcd");
    if sqlite && row.starts_with(&format!("create at {rate}/s")) {
        "p99 <= 5 ms at 500 creates/s".into()
    } else if etcd && row.starts_with("create c=32 throughput /") {
        ">= 0.7x raw etcd put throughput".into()
    } else if row.starts_with("LIST pods") {
        "<= 100 ms for 10 000 pods".into()
    } else if row.starts_with("watch delivery") {
        "p99 <= 50 ms".into()
    } else if row.starts_with("RSS with") {
        "<= 150 MiB".into()
    } else {
        String::new()
    }
}
