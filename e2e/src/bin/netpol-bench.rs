//! Benchmarks of NetworkPolicy enforcement by the node network agent (issue 14), in a network
//! namespace of its own standing for the node (root and `nft` needed; nothing outside it is
//! touched), with two pod namespaces routed through it (`client` 10.244.1.2, `server`
//! 10.244.2.2), so that their traffic crosses the node's forward hook as pod traffic does:
//!
//! - **policy programming**: `--policies` NetworkPolicies over `--pods` simulated pods (100 per
//!   namespace, spread over 100 nodes, so this node holds its share; pod and namespace
//!   selectors, named ports) are programmed; then the server is put under default-deny and a
//!   change admits or blocks the client — alternately a policy change (the allow policy created
//!   or deleted) and a label change (the client pod gains or loses the label the allow rule
//!   selects) — and the time until the new verdict is in force for real connections is
//!   measured through the agent's own render + diff + `nft -f` path (the watch and the 50 ms
//!   debounce of a running agent come on top); p50/p99 beside the goal (p99 ≤ 1 s);
//! - **data path**: new TCP connections per second from the client to the server with
//!   `--data-path-policies` policies selecting the server (one of them admits the client) vs
//!   none, in the same run; goal ≥ 0.9×.
//!
//! Figures are printed, never asserted. The process re-executes itself inside the namespace
//! (`ip netns exec`), so its nft transactions stay there.
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use cni_plugin::agent::policy::Objects;
use cni_plugin::agent::{AgentConfig, Syncer};
use e2e::report::{figure, ms};
use e2e::sh;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;

/// NetworkPolicy benchmarks: programming latency and connection rate under policies.
#[derive(Parser, Clone)]
struct Args {
    /// NetworkPolicies programmed besides the probe ones.
    #[arg(long, default_value_t = 1000)]
    policies: u32,
    /// Simulated pods (100 per namespace).
    #[arg(long, default_value_t = 10_000)]
    pods: u32,
    /// Changes measured (alternately policy and label changes).
    #[arg(long, default_value_t = 40)]
    changes: u32,
    /// Policies selecting the server in the data-path test.
    #[arg(long, default_value_t = 100)]
    data_path_policies: u32,
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

const NODE: &str = "bench";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const PORT: u16 = 8080;
const TABLE: &str = "lotse-npbench";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.inside {
        return inside(args);
    }
    let id = std::process::id();
    let ns = format!("lotse-npb-{id}");
    sh("ip", &["netns", "add", &ns]).context("ip netns add (root needed)")?;
    let pods = [format!("lotse-npc-{id}"), format!("lotse-nps-{id}")];
    let mut made = Vec::new();
    for p in &pods {
        if sh("ip", &["netns", "add", p]).is_ok() {
            made.push(p.clone());
        }
    }
    let me = std::env::current_exe()?;
    let status = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(me)
        .arg("--inside")
        .args(["--policies", &args.policies.to_string()])
        .args(["--pods", &args.pods.to_string()])
        .args(["--changes", &args.changes.to_string()])
        .args(["--data-path-policies", &args.data_path_policies.to_string()])
        .args(["--seconds", &args.seconds.to_string()])
        .args(["--clients", &args.clients.to_string()])
        .env("NPBENCH_PODS", pods.join(" "))
        .status();
    for p in made {
        let _ = sh("ip", &["netns", "del", &p]);
    }
    let _ = sh("ip", &["netns", "del", &ns]);
    if !status?.success() {
        bail!("benchmark failed");
    }
    Ok(())
}

/// The node namespace (where this runs) routes between the client's and the server's
/// namespaces: a veth pair each, /24s of their own, forwarding on.
fn setup(client_ns: &str, server_ns: &str) -> anyhow::Result<()> {
    sh("ip", &["link", "set", "lo", "up"])?;
    sh("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    for (ns, dev, node_ip, pod_ip) in [
        (client_ns, "npc0", "10.244.1.1", CLIENT_IP),
        (server_ns, "nps0", "10.244.2.1", SERVER_IP),
    ] {
        sh(
            "ip",
            &[
                "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        )?;
        sh("ip", &["addr", "add", &format!("{node_ip}/24"), "dev", dev])?;
        sh("ip", &["link", "set", dev, "up"])?;
        let n = |a: &[&str]| {
            let mut v = vec!["-n", ns];
            v.extend_from_slice(a);
            sh("ip", &v)
        };
        n(&["link", "set", "lo", "up"])?;
        n(&["addr", "add", &format!("{pod_ip}/24"), "dev", "eth0"])?;
        n(&["link", "set", "eth0", "up"])?;
        n(&["route", "add", "default", "via", node_ip])?;
    }
    Ok(())
}

/// Runs `f` on a thread inside the network namespace `/run/netns/<ns>` (its sockets belong
/// there).
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let file = std::fs::File::open(format!("/run/netns/{ns}"))?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in {} panicked", "netns"))?
}

fn pod(ns: &str, name: &str, ip: Ipv4Addr, node: &str, labels: serde_json::Value) -> Arc<Pod> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox",
                "ports": [{"name": "http", "containerPort": PORT}, {"name": "metrics", "containerPort": 9100}]}]},
            "status": {"phase": "Running", "podIP": ip.to_string()}
        }))
        .unwrap_or_default(),
    )
}

fn namespace(name: &str, labels: serde_json::Value) -> Arc<Namespace> {
    Arc::new(
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
            .unwrap_or_default(),
    )
}

fn policy(ns: &str, name: &str, spec: serde_json::Value) -> Arc<NetworkPolicy> {
    Arc::new(
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
            .unwrap_or_default(),
    )
}

/// Pods, namespaces and policies.
type World = (Vec<Arc<Pod>>, Vec<Arc<Namespace>>, Vec<Arc<NetworkPolicy>>);

/// `pods` simulated pods, 100 per namespace `ns-<n>` (labels `app: app-<i % 10>`,
/// `tier: front|back`), spread over 100 nodes; namespaces labelled `team: team-<n % 10>`; and
/// `policies` policies, 10 per namespace, mixing pod and namespace selectors and named ports.
fn world(pods_n: u32, policies_n: u32) -> World {
    let namespaces_n = pods_n.div_ceil(100).max(1);
    let mut pods = Vec::new();
    for i in 0..pods_n {
        let ns = format!("ns-{}", i / 100);
        // 10.244.10.0 onwards, clear of the client's and the server's /24s.
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 10, 0)) + i + i / 250 * 6 + 2);
        let node = if i % 100 == 0 {
            NODE.to_string()
        } else {
            format!("node-{}", i % 100)
        };
        pods.push(pod(
            &ns,
            &format!("p-{i}"),
            ip,
            &node,
            json!({"app": format!("app-{}", i % 10), "tier": if i % 2 == 0 { "front" } else { "back" }}),
        ));
    }
    let mut namespaces: Vec<Arc<Namespace>> = (0..namespaces_n)
        .map(|n| {
            namespace(
                &format!("ns-{n}"),
                json!({"team": format!("team-{}", n % 10)}),
            )
        })
        .collect();
    namespaces.push(namespace("bench", json!({})));
    let mut policies = Vec::new();
    for k in 0..policies_n {
        let ns = format!("ns-{}", k % namespaces_n);
        let app = format!("app-{}", k / namespaces_n % 10);
        let spec = match k % 4 {
            0 => json!({"podSelector": {"matchLabels": {"app": app}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "front"}}}], "ports": [{"port": "http"}]}]}),
            1 => json!({"podSelector": {"matchLabels": {"app": app}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": format!("team-{}", k % 10)}},
                                       "podSelector": {"matchLabels": {"tier": "back"}}}]}]}),
            2 => json!({"podSelector": {"matchLabels": {"app": app}}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"protocol": "UDP", "port": 53}, {"port": "metrics"}]},
                           {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]}]}),
            _ => {
                json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": [app, "app-9"]}]},
                "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["team-0"]}]}}],
                             "ports": [{"port": 9000, "endPort": 9100}]}]})
            }
        };
        policies.push(policy(&ns, &format!("np-{k}"), spec));
    }
    (pods, namespaces, policies)
}

fn connects(addr: SocketAddr, timeout: Duration) -> bool {
    TcpStream::connect_timeout(&addr, timeout).is_ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A prober living in the client's namespace: answers "does a connection get through now?".
struct Prober {
    ask: std::sync::mpsc::Sender<Duration>,
    answer: std::sync::mpsc::Receiver<bool>,
}

impl Prober {
    fn start(client_ns: &str) -> anyhow::Result<Prober> {
        let (ask, asks) = std::sync::mpsc::channel::<Duration>();
        let (tell, answer) = std::sync::mpsc::channel();
        let file = std::fs::File::open(format!("/run/netns/{client_ns}"))?;
        std::thread::spawn(move || {
            if nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                return;
            }
            let target = SocketAddr::new(SERVER_IP.into(), PORT);
            for timeout in asks {
                if tell.send(connects(target, timeout)).is_err() {
                    break;
                }
            }
        });
        Ok(Prober { ask, answer })
    }

    fn connects(&self, timeout: Duration) -> bool {
        self.ask.send(timeout).is_ok() && self.answer.recv().unwrap_or(false)
    }
}

fn inside(args: Args) -> anyhow::Result<()> {
    let names = std::env::var("NPBENCH_PODS").unwrap_or_default();
    let [client_ns, server_ns] = names.split_whitespace().collect::<Vec<_>>()[..] else {
        bail!("NPBENCH_PODS must name the client's and the server's namespaces");
    };
    let (client_ns, server_ns) = (client_ns.to_string(), server_ns.to_string());
    setup(&client_ns, &server_ns)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut cfg = AgentConfig::new(NODE);
    cfg.table = TABLE.into();
    let mut syncer = Syncer::new(cfg);

    let (mut pods, mut namespaces, mut policies) = world(args.pods, args.policies);
    // The server (on this node, under default-deny) and the client (elsewhere, as the
    // forward hook sees a remote pod's traffic).
    let server = pod("bench", "server", SERVER_IP, NODE, json!({"app": "server"}));
    let client_plain = pod(
        "bench",
        "client",
        CLIENT_IP,
        "node-1",
        json!({"app": "client"}),
    );
    let client_labelled = pod(
        "bench",
        "client",
        CLIENT_IP,
        "node-1",
        json!({"app": "client", "access": "true"}),
    );
    pods.push(server);
    pods.push(client_plain.clone());
    let client_idx = pods.len() - 1;
    namespaces.push(namespace("bench-x", json!({})));
    policies.push(policy(
        "bench",
        "default-deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    ));
    let allow = policy(
        "bench",
        "allow-access",
        json!({"podSelector": {"matchLabels": {"app": "server"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"access": "true"}}}], "ports": [{"port": "http"}]}]}),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let listener = in_netns(&server_ns, || {
        Ok(TcpListener::bind(SocketAddr::new(SERVER_IP.into(), PORT))?)
    })?;
    let server_thread = serve(listener, stop.clone());
    let prober = Prober::start(&client_ns)?;

    let objs =
        |pods: &Vec<Arc<Pod>>, ns: &Vec<Arc<Namespace>>, p: &Vec<Arc<NetworkPolicy>>| Objects {
            pods: pods.clone(),
            namespaces: ns.clone(),
            policies: p.clone(),
        };
    let t = Instant::now();
    rt.block_on(syncer.sync_with_policies(&[], &[], vec![], &objs(&pods, &namespaces, &policies)))?;
    let full = t.elapsed();
    let listing = Command::new("nft")
        .args(["list", "table", "ip", TABLE])
        .output()?;
    let lines = String::from_utf8_lossy(&listing.stdout).lines().count();
    println!(
        "full sync: {} policies, {} pods ({} on this node), table of {lines} lines listed: {full:.1?} (render {:.1?}, nft -f {:.1?})",
        policies.len(),
        pods.len(),
        pods.iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(NODE))
            .count(),
        syncer.last_render,
        syncer.last_apply,
    );
    figure(
        format!(
            "full sync, {} policies over {} pods ({lines}-line table)",
            args.policies, args.pods
        ),
        ms(full),
        "ms",
    )
    .vs("of which nft -f", ms(syncer.last_apply))
    .record()?;
    if prober.connects(Duration::from_millis(300)) {
        bail!("the client gets through default-deny");
    }

    // Alternately: the allow policy appears / goes (policy change), the client's label
    // appears / goes (label change, the allow policy in place).
    let mut by_kind: [Vec<Duration>; 2] = Default::default();
    let mut render = Vec::new();
    let mut apply = Vec::new();
    let base_policies = policies.clone();
    // (allow policy present, client labelled) for a change of the kind, admitting or not.
    let state = |label_change: bool, admit: bool| {
        if label_change {
            (true, admit)
        } else {
            (admit, true)
        }
    };
    let set = |pods: &mut Vec<Arc<Pod>>, (allow_on, labelled): (bool, bool)| {
        pods[client_idx] = if labelled {
            client_labelled.clone()
        } else {
            client_plain.clone()
        };
        let mut p = base_policies.clone();
        if allow_on {
            p.push(allow.clone());
        }
        p
    };
    for k in 0..args.changes {
        let label_change = k % 4 >= 2;
        let admit = k % 2 == 0;
        if admit {
            // From the blocked state of this kind of change (not measured).
            let p = set(&mut pods, state(label_change, false));
            rt.block_on(syncer.sync_with_policies(
                &[],
                &[],
                vec![],
                &objs(&pods, &namespaces, &p),
            ))?;
        }
        policies = set(&mut pods, state(label_change, admit));
        let t = Instant::now();
        rt.block_on(syncer.sync_with_policies(
            &[],
            &[],
            vec![],
            &objs(&pods, &namespaces, &policies),
        ))?;
        render.push(syncer.last_render);
        apply.push(syncer.last_apply);
        // In force: the first probe that gives the new verdict (blocked probes wait 20 ms).
        loop {
            let before = t.elapsed();
            if prober.connects(Duration::from_millis(20)) == admit {
                by_kind[usize::from(label_change)].push(before);
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!("change {k} (admit: {admit}) not in force after 10 s");
            }
        }
    }
    for v in by_kind.iter_mut().chain([&mut render, &mut apply]) {
        v.sort();
    }
    let scale = format!("{} policies over {} pods", args.policies, args.pods);
    for (kind, v) in ["policy change", "label change"].iter().zip(&by_kind) {
        println!(
            "{kind} -> in force for real connections ({} changes): p50 {:.1?}  p99 {:.1?}  (goal p99 <= 1 s)",
            v.len(),
            percentile(v, 0.5),
            percentile(v, 0.99),
        );
        figure(
            format!("{scale}: {kind} -> in force p99"),
            ms(percentile(v, 0.99)),
            "ms",
        )
        .vs("of which nft -f p99", ms(percentile(&apply, 0.99)))
        .goal("p99 <= 1 s")
        .record()?;
    }
    println!(
        "of which rendering p50 {:.1?} p99 {:.1?}, nft -f p50 {:.1?} p99 {:.1?}",
        percentile(&render, 0.5),
        percentile(&render, 0.99),
        percentile(&apply, 0.5),
        percentile(&apply, 0.99),
    );

    // Data path: only the server's policies matter for its packets; `data_path_policies` of
    // them select it (one admits the client), vs none at all.
    let (small_pods, small_ns, _) = world(0, 0);
    let mut dp_pods = small_pods;
    dp_pods.push(pod(
        "bench",
        "server",
        SERVER_IP,
        NODE,
        json!({"app": "server"}),
    ));
    dp_pods.push(client_labelled.clone());
    let mut dp_policies = vec![allow.clone()];
    for i in 1..args.data_path_policies {
        dp_policies.push(policy(
            "bench",
            &format!("dp-{i}"),
            json!({"podSelector": {"matchLabels": {"app": "server"}},
                "ingress": [{"from": [{"ipBlock": {"cidr": format!("192.0.{}.0/24", i % 250)}}], "ports": [{"port": 1000 + i}]}]}),
        ));
    }
    let target = SocketAddr::new(SERVER_IP.into(), PORT);
    let mut rates = [(0.0f64, Vec::new()), (0.0f64, Vec::new())];
    for round in 0..4 {
        let with = round % 2 == 0;
        let p = if with {
            dp_policies.clone()
        } else {
            Vec::new()
        };
        rt.block_on(syncer.sync_with_policies(&[], &[], vec![], &objs(&dp_pods, &small_ns, &p)))?;
        if !prober.connects(Duration::from_millis(300)) {
            bail!("the client does not get through (policies: {with})");
        }
        let (n, mut lat) = load(
            &client_ns,
            target,
            args.clients,
            Duration::from_secs(args.seconds),
        )?;
        let which = usize::from(!with);
        rates[which].0 += n as f64 / (2.0 * args.seconds as f64);
        rates[which].1.append(&mut lat);
    }
    for (_, l) in rates.iter_mut() {
        l.sort();
    }
    let [(with, with_lat), (without, without_lat)] = &rates;
    println!(
        "new TCP connections/s ({} clients): with {} policies selecting the server {with:.0}/s (request p99 {:.2?}), without policies {without:.0}/s (p99 {:.2?}): {:.2}x (goal >= 0.9x)",
        args.clients,
        args.data_path_policies,
        percentile(with_lat, 0.99),
        percentile(without_lat, 0.99),
        with / without.max(1.0),
    );
    figure(
        format!(
            "new TCP connections to a pod with {} policies selecting it",
            args.data_path_policies
        ),
        *with,
        "1/s",
    )
    .vs("no policies", *without)
    .goal(">= 0.9x baseline")
    .record()?;
    stop.store(true, Ordering::Relaxed);
    let _ = prober.connects(Duration::from_millis(200));
    let _ = server_thread.join();
    let _ = sh("nft", &["delete", "table", "ip", TABLE]);
    Ok(())
}

/// Answers every connection with one short line and closes it.
fn serve(l: TcpListener, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
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
    })
}

/// `clients` threads in the client's namespace opening connections to `target` for `dur`:
/// connect, send a line, read the answer to EOF. The count and every request's latency.
fn load(
    client_ns: &str,
    target: SocketAddr,
    clients: usize,
    dur: Duration,
) -> anyhow::Result<(u64, Vec<Duration>)> {
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + dur;
    let mut handles = Vec::new();
    for _ in 0..clients {
        let count = count.clone();
        let file = std::fs::File::open(format!("/run/netns/{client_ns}"))?;
        handles.push(std::thread::spawn(move || {
            let mut lat = Vec::new();
            if nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                return lat;
            }
            while Instant::now() < deadline {
                let t = Instant::now();
                let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
                    continue;
                };
                let mut out = Vec::new();
                if s.write_all(b"GET\n").is_ok() && s.read_to_end(&mut out).is_ok() {
                    lat.push(t.elapsed());
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        if let Ok(mut l) = h.join() {
            all.append(&mut l);
        }
    }
    Ok((count.load(Ordering::Relaxed), all))
}
