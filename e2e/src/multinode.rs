//! A `lotse up --nodes 3` cluster for the multi-node tests (`multinode.rs`,
//! `multinode_faults.rs`), and the probes they share: a UDP server and a TCP listener inside a
//! given network namespace (a pod's, or a stand-in for the world outside the machine), since the
//! busybox image has no UDP server.
use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::Kubectl;
use crate::lotse::{Lotse, require_images, wait_for};

/// The host node's name; the joined ones are `mn-2` and `mn-3`.
pub const NODE: &str = "mn";
/// All three nodes, host first.
pub const NODES: [&str; 3] = ["mn", "mn-2", "mn-3"];
/// The nodes' underlay addresses, in the order of [`NODES`].
pub const NODE_IPS: [&str; 3] = ["10.213.0.1", "10.213.0.2", "10.213.0.3"];

/// A running three-node cluster; on drop its workloads are deleted, it is stopped, and the
/// agents' nftables tables of this run are removed from the host and the nodes.
pub struct Cluster {
    /// `lotse up` (None while restarting).
    pub lotse: Option<Lotse>,
    /// kubectl 1.33 as the admin.
    pub k: Kubectl,
    /// The `lotse up` arguments (for a restart).
    pub args: Vec<String>,
    /// The data dir.
    pub data: PathBuf,
    /// The agents' nftables table.
    pub table: String,
}

impl Cluster {
    /// `lotse up --nodes 3` with the busybox and pause images, plus `extra` arguments.
    pub fn start(tmp: &Path, extra: &[&str]) -> anyhow::Result<Cluster> {
        Cluster::start_with_images(tmp, extra, &["busybox.tar", "pause.tar"])
    }

    /// [`Cluster::start`] with the image archives `images` (e.g. `debian.tar`; include
    /// `pause.tar`) of [`crate::lotse::images_dir`] on every node.
    pub fn start_with_images(
        tmp: &Path,
        extra: &[&str],
        image_names: &[&str],
    ) -> anyhow::Result<Cluster> {
        let images = require_images(image_names)?;
        let data = tmp.join("data");
        crate::lotse::link_images(&data, &images, image_names)?;
        let table = format!("lotse-mn-{}", std::process::id());
        let mut args: Vec<String> = [
            "--data-dir",
            &data.to_string_lossy(),
            "--secure-port",
            &crate::free_port()?.to_string(),
            "--kubelet-port",
            &crate::free_port()?.to_string(),
            "--node-name",
            NODE,
            "--nodes",
            "3",
            "--nftables-table",
            &table,
            // Other clusters on this machine (other tests) share the host's network namespace:
            // ClusterIPs of a range of its own keep their rules apart.
            "--service-cluster-ip-range",
            "10.150.0.0/16",
            "--images=",
            "--no-install",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let lotse = Lotse::start(&data, &args)?;
        let k = Kubectl::new(33, data.join("admin.kubeconfig"), tmp.join("kubectl-cache"));
        Ok(Cluster {
            lotse: Some(lotse),
            k,
            args,
            data,
            table,
        })
    }

    /// `lotse up`'s log and the last lines of each joined node's.
    pub fn log(&self) -> String {
        let mut out = self.lotse.as_ref().map(|l| l.log()).unwrap_or_default();
        for n in &NODES[1..] {
            let p = self.data.join("nodes").join(n).join("lotse.log");
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("\n--- {n} (last lines) ---\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Waits until all three nodes are Ready.
    pub fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_nodes("three Ready nodes", timeout, |n| n == "True")
    }

    /// Waits until `pred(node, Ready status)` holds for every node.
    pub fn wait_nodes(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> anyhow::Result<()> {
        self.wait_each_node(what, timeout, |_, status| pred(status))
    }

    /// Waits until `pred(node, its Ready status)` holds for every node.
    pub fn wait_each_node(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str, &str) -> bool,
    ) -> anyhow::Result<()> {
        wait_for(
            &self.k,
            &[
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status} {end}",
            ],
            what,
            timeout,
            |s| {
                NODES.iter().all(|n| {
                    s.split_whitespace()
                        .filter_map(|w| w.split_once('='))
                        .any(|(name, status)| name == *n && pred(n, status))
                })
            },
        )
        .map(|_| ())
        .with_context(|| self.log())
    }

    /// `sh -c script` in `pod`'s first container.
    pub fn sh(&self, pod: &str, script: &str) -> anyhow::Result<String> {
        self.k.ok(&["exec", pod, "--", "sh", "-c", script])
    }

    /// `wget http://ip:port/` from `pod`: the body.
    pub fn wget(&self, pod: &str, ip: &str, port: u16) -> anyhow::Result<String> {
        Ok(self
            .sh(pod, &format!("timeout 5 wget -q -O- http://{ip}:{port}/"))?
            .trim()
            .to_string())
    }

    /// (pod name, node, pod IP) of the running pods with `selector`, once there are `n`.
    pub fn running_pods(
        &self,
        selector: &str,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<(String, String, String)>> {
        let out = wait_for(
            &self.k,
            &[
                "get",
                "pods",
                "-l",
                selector,
                "--field-selector=status.phase=Running",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
            ],
            &format!("{n} running pods {selector}"),
            timeout,
            |s| running_lines(s).len() == n,
        )
        .with_context(|| self.log())?;
        Ok(running_lines(&out))
    }

    /// (pod name, node, pod IP) of the `app=web` pods, once all three run.
    pub fn web_pods(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        self.running_pods("app=web", 3, Duration::from_secs(120))
    }
}

/// The lines `name node ip` of pods not being deleted.
fn running_lines(s: &str) -> Vec<(String, String, String)> {
    s.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            match w.as_slice() {
                [name, node, ip, deleting] if !ip.is_empty() && deleting.is_empty() => {
                    Some((name.to_string(), node.to_string(), ip.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.lotse.is_some() {
            let _ = self.k.run(&[
                "delete",
                "deployment,pod",
                "--all",
                "--grace-period=1",
                "--wait=true",
                "--timeout=60s",
            ]);
        }
        drop(self.lotse.take());
        // The agents leave their rules in place when they stop (as kube-proxy); this run's
        // tables go with the run, in the host's and the nodes' namespaces.
        for ns in [None, Some("lotse-n2"), Some("lotse-n3")] {
            let mut cmd = match ns {
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns, "nft"]);
                    c
                }
                None => Command::new("nft"),
            };
            let _ = cmd
                .args(["delete", "table", "ip", &self.table])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

pub use crate::{eventually, step};

/// The network namespace file of the pod with address `ip`: containerd keeps its pods'
/// namespaces under its state dir (`netns_mounts_under_state_dir`), one containerd per node
/// under the cluster's data dir; the one whose interfaces carry `ip` is the pod's.
pub fn pod_netns(data: &Path, ip: &str) -> anyhow::Result<PathBuf> {
    let mut dirs = vec![data.join("kubelet")];
    if let Ok(nodes) = std::fs::read_dir(data.join("nodes")) {
        dirs.extend(nodes.flatten().map(|e| e.path().join("kubelet")));
    }
    let needle = format!("inet {ip}/");
    for d in dirs {
        let out = Command::new("find")
            .arg(&d)
            .args(["-path", "*/io.containerd.grpc.v1.cri/netns/*", "-prune"])
            .output()?;
        for ns in String::from_utf8_lossy(&out.stdout).lines() {
            let addrs = Command::new("nsenter")
                .arg(format!("--net={ns}"))
                .args(["ip", "-4", "-o", "addr", "show"])
                .output()?;
            if String::from_utf8_lossy(&addrs.stdout).contains(&needle) {
                return Ok(PathBuf::from(ns));
            }
        }
    }
    bail!("no pod network namespace under {} has {ip}", data.display())
}

/// Runs `f` on a thread of its own inside the network namespace at `netns` (sockets made there
/// belong to that namespace; the rest of the test process stays where it is).
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let file =
        std::fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread in the network namespace panicked"))?
}

/// The answer [`DnsProbe`] gives to every A query.
pub const PROBE_ANSWER: &str = "192.0.2.53";

/// A tiny DNS server on UDP port 53 inside a network namespace: it answers every A query with
/// [`PROBE_ANSWER`] (AAAA and others: no records) and reports each query's source address — a
/// pod's own `nslookup` is then a UDP client whose datagrams and their answers cross the pod
/// network, and the source address shows whether anything NATed them.
pub struct DnsProbe {
    sources: mpsc::Receiver<SocketAddr>,
}

impl DnsProbe {
    /// Serves on port 53 of every address for `lifetime` inside `netns`.
    pub fn start(netns: &Path, lifetime: Duration) -> anyhow::Result<DnsProbe> {
        Self::start_at(netns, ([0, 0, 0, 0], 53).into(), lifetime)
    }

    /// Serves on `addr` for `lifetime` inside `netns`. Bound to one address, its answers come
    /// from that address (a client's connected UDP socket drops answers from any other, which
    /// a socket on 0.0.0.0 of a host with several addresses may send).
    pub fn start_at(
        netns: &Path,
        addr: SocketAddr,
        lifetime: Duration,
    ) -> anyhow::Result<DnsProbe> {
        let socket = in_netns(netns, move || Ok(UdpSocket::bind(addr)?))?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut buf = [0u8; 512];
            while t0.elapsed() < lifetime {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = dns_answer(&buf[..n]) {
                    let _ = socket.send_to(&reply, from);
                }
                let _ = tx.send(from);
            }
        });
        Ok(DnsProbe { sources: rx })
    }

    /// The source addresses of the queries received so far.
    pub fn sources(&self) -> Vec<SocketAddr> {
        self.sources.try_iter().collect()
    }
}

/// The response to a one-question DNS query: A → [`PROBE_ANSWER`], anything else → no records.
fn dns_answer(q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 12 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    while *q.get(i)? != 0 {
        i += 1 + usize::from(q[i]);
    }
    let qend = i + 5; // the root label, QTYPE, QCLASS
    let question = q.get(12..qend)?;
    let is_a = question[question.len() - 4..question.len() - 2] == [0, 1];
    let mut r = Vec::with_capacity(qend + 16);
    r.extend_from_slice(&q[..2]);
    r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(is_a), 0, 0, 0, 0]);
    r.extend_from_slice(question);
    if is_a {
        let ip: std::net::Ipv4Addr = PROBE_ANSWER.parse().ok()?;
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        r.extend_from_slice(&ip.octets());
    }
    Some(r)
}

/// A TCP listener (inside `netns`, or in the test's own namespace) that reports the peer
/// address of every connection and writes `hello` to it.
pub struct PeerRecorder {
    /// Where it listens.
    pub port: u16,
    peers: mpsc::Receiver<SocketAddr>,
}

impl PeerRecorder {
    /// Listens on all addresses, on a free port, for `lifetime`.
    pub fn start(netns: Option<&Path>, lifetime: Duration) -> anyhow::Result<PeerRecorder> {
        let bind = || Ok(TcpListener::bind("0.0.0.0:0")?);
        let listener = match netns {
            Some(ns) => in_netns(ns, bind)?,
            None => bind()?,
        };
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while t0.elapsed() < lifetime {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        use std::io::Write;
                        let _ = s.write_all(b"hello\n");
                        let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
                        let _ = s.read(&mut [0u8; 64]);
                        let _ = tx.send(peer);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(PeerRecorder { port, peers: rx })
    }

    /// The peer addresses of the connections accepted so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.try_iter().collect()
    }
}

/// A network namespace standing for the world outside the machine: linked to the host by a veth
/// pair (host 198.51.100.1/30, outside 198.51.100.2/30) and with no route to anything else, so
/// only traffic masqueraded to the host's address gets answers. Removed on drop.
pub struct Outside {
    /// The namespace's name (`/run/netns/<name>`).
    pub name: String,
}

impl Outside {
    /// The outside's address.
    pub const IP: &str = "198.51.100.2";

    /// Makes it.
    pub fn create() -> anyhow::Result<Outside> {
        let id = std::process::id() % 100_000;
        let name = format!("lotse-out{id}");
        let host_end = format!("lotse-o{id}");
        let o = Outside { name: name.clone() };
        let ip = |args: &[&str]| -> anyhow::Result<()> {
            let out = Command::new("ip").args(args).output()?;
            if !out.status.success() {
                bail!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(())
        };
        ip(&["netns", "add", &name])?;
        ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ])?;
        ip(&["addr", "add", "198.51.100.1/30", "dev", &host_end])?;
        ip(&["link", "set", &host_end, "up"])?;
        ip(&["-n", &name, "addr", "add", "198.51.100.2/30", "dev", "eth0"])?;
        ip(&["-n", &name, "link", "set", "eth0", "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(o)
    }

    /// The namespace's file.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        // The veth pair goes with the namespace.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_a_queries_with_the_probe_address() {
        // nslookup's query for probe.test, type A, class IN.
        let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(b"\x05probe\x04test\x00\x00\x01\x00\x01");
        let r = dns_answer(&q).unwrap();
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(&r[6..8], &[0, 1], "one answer");
        assert_eq!(&r[r.len() - 4..], &[192, 0, 2, 53]);
        // AAAA: no answer.
        let n = q.len();
        q[n - 3] = 28;
        let r = dns_answer(&q).unwrap();
        assert_eq!(&r[6..8], &[0, 0]);
        assert_eq!(r.len(), n);
        assert!(dns_answer(&q[..14]).is_none());
    }

    #[test]
    fn pods_being_deleted_do_not_count() {
        let s = "a mn 10.244.0.5 \nb mn-2 10.244.1.5 2026-01-01T00:00:00Z\nc mn-3  \n";
        let got = running_lines(s);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "a");
    }
}
