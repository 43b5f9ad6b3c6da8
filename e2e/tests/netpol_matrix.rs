//! NetworkPolicy truth tables on three nodes (issue 14), in the manner of upstream Kubernetes'
//! `test/e2e/network/netpol` suite, and the course's example, on one `lotse up --nodes 3`.
//!
//! Namespaces x, y and z (labelled `ns: <name>`) hold pods a, b and c (labelled `pod: <name>`),
//! spread so that every node holds one pod of every namespace. Every pod serves TCP and UDP on
//! ports 80 and 81 (a small Perl echo server of the `debian` image; named ports
//! `serve-<port>-<proto>`). For each policy case, every pod probes all nine pods (TCP 80, TCP 81,
//! UDP 80, UDP 81; one `kubectl exec` per source pod that probes its 36 targets concurrently with
//! 1 s timeouts) and the observed matrix is compared with the one the case's intent gives; on a
//! mismatch the expected and observed matrices are printed as upstream's `Reachability` tables
//! (rows: from, columns: to, `.` reachable, `X` blocked) and the case is retried for a short
//! convergence time before it counts as failed. A pod always reaches itself (its own address
//! never leaves it: upstream's `AllowLoopback`).
//!
//! Then the course's example in namespace `entenhausen`: five nginx replicas behind the NodePort
//! Service `nginx-service`, a default-deny ingress policy and an allow rule admitting one of two
//! client pods, which reaches the replicas by the Service's name through cluster DNS; removing
//! the policies opens it again; the NodePort answers on every node address.
//!
//! Needs root, containerd, runc, nftables, network namespaces, the built binaries and the
//! busybox, pause, debian and nginx images. Takes about three minutes (160 s on a quiet
//! machine, 210 s at load 20: 30–50 s to three Ready nodes, 100–130 s for the 39 checks (31
//! policy cases and 8 changes within them: policy updates, pod and namespace labels, a pod
//! re-created with a new address), 4 s for the course example, 10–20 s to tear down).
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::lotse::{http_get, random_pod_cidr, wait_for};
use e2e::multinode::{Cluster, NODE_IPS, NODES, eventually, step};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
/// The probes of every pod pair: (protocol, port).
const PROBES: [(&str, u16); 4] = [("tcp", 80), ("tcp", 81), ("udp", 80), ("udp", 81)];
/// How long a case may take to be enforced (probe rounds included) before it counts as failed.
const CONVERGENCE: Duration = Duration::from_secs(4);

/// Serves TCP (answers `ok` and closes) and UDP (echoes `ok`) on ports 80 and 81.
const SERVER: &str = r#"
use IO::Socket::INET; use IO::Select;
$| = 1; $SIG{PIPE} = 'IGNORE';
my $sel = IO::Select->new; my %udp;
for my $port (80, 81) {
  my $t = IO::Socket::INET->new(LocalPort => $port, Proto => 'tcp', Listen => 128, ReuseAddr => 1) or die "tcp $port: $!";
  my $u = IO::Socket::INET->new(LocalPort => $port, Proto => 'udp') or die "udp $port: $!";
  $sel->add($t, $u); $udp{fileno $u} = 1;
}
print "serving TCP and UDP on 80 and 81\n";
while (1) {
  for my $h ($sel->can_read) {
    if ($udp{fileno $h}) {
      my $peer = $h->recv(my $buf, 512);
      $h->send("ok\n", 0, $peer) if defined $peer && length $peer;
    } else {
      my $c = $h->accept or next;
      print $c "ok\n"; close $c;
    }
  }
}
"#;

/// Probes TCP 80, TCP 81, UDP 80 and UDP 81 of every address in @ARGV at once (one process per
/// probe, 1 s each); prints `<ip> <proto> <port> <1|0>` per probe.
const CLIENT: &str = r#"
use IO::Socket::INET; use IO::Select;
$| = 1; $SIG{PIPE} = 'IGNORE';
my @kids;
for my $ip (@ARGV) {
  for my $p (['tcp', 80], ['tcp', 81], ['udp', 80], ['udp', 81]) {
    my ($proto, $port) = @$p;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if (!$pid) {
      my $ok = 0;
      if ($proto eq 'tcp') {
        $ok = IO::Socket::INET->new(PeerAddr => $ip, PeerPort => $port, Proto => 'tcp', Timeout => 1) ? 1 : 0;
      } elsif (my $u = IO::Socket::INET->new(PeerAddr => $ip, PeerPort => $port, Proto => 'udp')) {
        my $sel = IO::Select->new($u);
        for (1 .. 2) {
          $u->send("probe");
          if ($sel->can_read(0.5)) { my $r = ''; $u->recv($r, 64); $ok = 1 if $r eq "ok\n"; last }
        }
      }
      print "$ip $proto $port $ok\n";
      exit 0;
    }
    push @kids, $pid;
  }
}
waitpid($_, 0) for @kids;
"#;

/// One end of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Peer {
    ns: &'static str,
    pod: &'static str,
}

impl Peer {
    fn is(&self, ns: &str, pod: &str) -> bool {
        self.ns == ns && self.pod == pod
    }
}

/// The port a probe goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Port {
    udp: bool,
    port: u16,
}

impl Port {
    fn tcp(&self, port: u16) -> bool {
        !self.udp && self.port == port
    }
    fn udp(&self, port: u16) -> bool {
        self.udp && self.port == port
    }
}

/// A matrix of verdicts: `[probe][from][to]`, pods in the order x/a, x/b, …, z/c.
type Matrix = Vec<Vec<Vec<bool>>>;

struct MatrixPod {
    peer: Peer,
    ip: String,
    node: String,
}

struct Suite<'a> {
    c: &'a Cluster,
    pods: Vec<MatrixPod>,
    /// Failed cases, with their matrices.
    failures: Vec<String>,
    /// (case, time to the expected matrix, probe rounds).
    timings: Vec<(String, Duration, usize)>,
    dumped_rules: bool,
}

/// The matrix pod `ns/pod` (indices into [`NAMESPACES`] and [`PODS`]): each node holds one
/// pod of each namespace.
fn pod_manifest(i: usize, j: usize) -> serde_json::Value {
    let (ns, pod) = (NAMESPACES[i], PODS[j]);
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": ns, "labels": {"pod": pod, "netpol": "matrix"}},
        "spec": {
            "nodeName": NODES[(i + j) % NODES.len()],
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "serve", "image": "debian",
                "command": ["perl", "-e", SERVER],
                "ports": [
                    {"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"},
                    {"name": "serve-81-tcp", "containerPort": 81, "protocol": "TCP"},
                    {"name": "serve-80-udp", "containerPort": 80, "protocol": "UDP"},
                    {"name": "serve-81-udp", "containerPort": 81, "protocol": "UDP"}
                ],
                "readinessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 1}
            }]
        }
    })
}

fn pod_manifests() -> String {
    let mut items = Vec::new();
    for (i, ns) in NAMESPACES.iter().enumerate() {
        items.push(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"ns": ns}}
        }));
        for j in 0..PODS.len() {
            items.push(pod_manifest(i, j));
        }
    }
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// A NetworkPolicy document; `spec` in YAML flow style (quote `\"y\"`: kubectl's YAML 1.1
/// reads a bare `y` as `true`).
fn np(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: \"{ns}\"}}\nspec: {spec}\n---\n"
    )
}

/// Upstream's `Reachability` table: rows are sources, columns destinations.
fn table(pods: &[MatrixPod], m: &[Vec<bool>], mark: impl Fn(usize, usize) -> char) -> String {
    let _ = m;
    let mut out = String::from("-     ");
    for p in pods {
        let _ = write!(out, "{:<5}", format!("{}/{}", p.peer.ns, p.peer.pod));
    }
    out.push('\n');
    for (i, p) in pods.iter().enumerate() {
        let _ = write!(out, "{:<6}", format!("{}/{}", p.peer.ns, p.peer.pod));
        for j in 0..pods.len() {
            let _ = write!(out, "{:<5}", mark(i, j));
        }
        out.push('\n');
    }
    out
}

fn verdict(ok: bool) -> char {
    if ok { '.' } else { 'X' }
}

impl Suite<'_> {
    fn expected(&self, expect: &dyn Fn(Peer, Peer, Port) -> bool) -> Matrix {
        PROBES
            .iter()
            .map(|(proto, port)| {
                let port = Port {
                    udp: *proto == "udp",
                    port: *port,
                };
                self.pods
                    .iter()
                    .map(|from| {
                        self.pods
                            .iter()
                            .map(|to| from.peer == to.peer || expect(from.peer, to.peer, port))
                            .collect()
                    })
                    .collect()
            })
            .collect()
    }

    /// One probe round: every pod probes every pod on every probe port.
    fn observe(&self) -> anyhow::Result<Matrix> {
        let ips: Vec<&str> = self.pods.iter().map(|p| p.ip.as_str()).collect();
        let rows: Vec<anyhow::Result<Vec<Vec<bool>>>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .pods
                .iter()
                .map(|from| {
                    let ips = ips.clone();
                    s.spawn(move || -> anyhow::Result<Vec<Vec<bool>>> {
                        let mut args = vec![
                            "-n",
                            from.peer.ns,
                            "exec",
                            from.peer.pod,
                            "--",
                            "perl",
                            "-e",
                            CLIENT,
                        ];
                        args.extend(ips.iter().copied());
                        let out = self.c.k.run(&args)?;
                        let mut got: BTreeMap<(&str, &str, u16), bool> = BTreeMap::new();
                        for l in out.stdout.lines() {
                            let w: Vec<&str> = l.split_whitespace().collect();
                            if let [ip, proto, port, ok] = w.as_slice() {
                                let Some(ip) = ips.iter().find(|i| *i == ip) else {
                                    continue;
                                };
                                let proto = if *proto == "udp" { "udp" } else { "tcp" };
                                got.insert((ip, proto, port.parse()?), *ok == "1");
                            }
                        }
                        PROBES
                            .iter()
                            .map(|(proto, port)| {
                                ips.iter()
                                    .map(|ip| {
                                        got.get(&(*ip, *proto, *port)).copied().with_context(|| {
                                            format!(
                                                "no {proto}/{port} probe result from {}/{} to {ip}: {}{}",
                                                from.peer.ns, from.peer.pod, out.stdout, out.stderr
                                            )
                                        })
                                    })
                                    .collect()
                            })
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("probe thread panicked")))
                })
                .collect()
        });
        // rows[from][probe][to] → [probe][from][to]
        let rows: Vec<Vec<Vec<bool>>> = rows.into_iter().collect::<anyhow::Result<_>>()?;
        Ok((0..PROBES.len())
            .map(|k| rows.iter().map(|r| r[k].clone()).collect())
            .collect())
    }

    /// Probes until the matrix is the expected one or [`CONVERGENCE`] has passed; a failure is
    /// recorded (with the matrices) and the suite goes on.
    fn check(&mut self, case: &str, expect: &dyn Fn(Peer, Peer, Port) -> bool) {
        let want = self.expected(expect);
        let t0 = Instant::now();
        let mut rounds = 0;
        let mut first_miss: Option<String> = None;
        loop {
            rounds += 1;
            let got = self.observe();
            if let (Ok(got), None) = (&got, &first_miss) {
                let cells = self.mismatched_cells(&want, got);
                if !cells.is_empty() {
                    first_miss = Some(cells);
                }
            }
            match &got {
                Ok(got) if *got == want => {
                    if let Some(cells) = &first_miss {
                        eprintln!("[case] {case}: round 1 differed in {cells}");
                    }
                    eprintln!(
                        "[case] {case}: as expected after {:?} ({rounds} probe round(s))",
                        t0.elapsed()
                    );
                    self.timings.push((case.to_string(), t0.elapsed(), rounds));
                    return;
                }
                _ if t0.elapsed() < CONVERGENCE => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                Ok(got) => {
                    let mut report = format!(
                        "{case}: not as expected after {:?} ({rounds} probe rounds)\n",
                        t0.elapsed()
                    );
                    for (k, (proto, port)) in PROBES.iter().enumerate() {
                        if got[k] == want[k] {
                            continue;
                        }
                        let name = format!("{}/{port}", proto.to_uppercase());
                        let _ = writeln!(
                            report,
                            "{name} expected:\n{}{name} observed:\n{}{name} comparison (X: mismatch):\n{}",
                            table(&self.pods, &want[k], |i, j| verdict(want[k][i][j])),
                            table(&self.pods, &got[k], |i, j| verdict(got[k][i][j])),
                            table(&self.pods, &want[k], |i, j| verdict(
                                want[k][i][j] == got[k][i][j]
                            )),
                        );
                    }
                    eprintln!("[case] FAILED {report}");
                    self.dump_rules();
                    self.failures.push(report);
                    return;
                }
                Err(e) => {
                    let report = format!("{case}: probing failed: {e:#}");
                    eprintln!("[case] FAILED {report}");
                    self.failures.push(report);
                    return;
                }
            }
        }
    }

    /// The cells where `got` differs from `want`, as `x/a->y/b TCP/80 (expected X)`.
    fn mismatched_cells(&self, want: &Matrix, got: &Matrix) -> String {
        let mut out = Vec::new();
        for (k, (proto, port)) in PROBES.iter().enumerate() {
            for (i, from) in self.pods.iter().enumerate() {
                for (j, to) in self.pods.iter().enumerate() {
                    if want[k][i][j] != got[k][i][j] {
                        out.push(format!(
                            "{}/{}->{}/{} {}/{port} (expected {})",
                            from.peer.ns,
                            from.peer.pod,
                            to.peer.ns,
                            to.peer.pod,
                            proto.to_uppercase(),
                            verdict(want[k][i][j])
                        ));
                    }
                }
            }
        }
        out.join(", ")
    }

    /// Replaces every policy of x, y and z with `policies` (YAML documents) and checks.
    fn case(&mut self, case: &str, policies: &[String], expect: &dyn Fn(Peer, Peer, Port) -> bool) {
        if let Err(e) = self.set_policies(policies) {
            self.failures.push(format!("{case}: {e:#}"));
            return;
        }
        self.check(case, expect);
    }

    fn set_policies(&self, policies: &[String]) -> anyhow::Result<()> {
        for ns in NAMESPACES {
            self.c
                .k
                .ok(&["-n", ns, "delete", "networkpolicy", "--all", "--wait=false"])?;
        }
        if !policies.is_empty() {
            self.c
                .k
                .ok_stdin(&["apply", "-f", "-"], &policies.concat())?;
        }
        Ok(())
    }

    fn apply(&mut self, case: &str, yaml: &str) -> bool {
        match self.c.k.ok_stdin(&["apply", "-f", "-"], yaml) {
            Ok(_) => true,
            Err(e) => {
                self.failures.push(format!("{case}: {e:#}"));
                false
            }
        }
    }

    fn kubectl(&mut self, case: &str, args: &[&str]) -> bool {
        match self.c.k.ok(args) {
            Ok(_) => true,
            Err(e) => {
                self.failures.push(format!("{case}: {e:#}"));
                false
            }
        }
    }

    /// Deletes `ns/pod` and creates it again (same name, labels and node): its address
    /// changes, and the policies must follow.
    fn recreate(&mut self, ns: &str, pod: &str) -> anyhow::Result<()> {
        let (Some(i), Some(j)) = (
            NAMESPACES.iter().position(|n| *n == ns),
            PODS.iter().position(|p| *p == pod),
        ) else {
            bail!("no matrix pod {ns}/{pod}");
        };
        let k = &self.c.k;
        k.ok(&[
            "-n",
            ns,
            "delete",
            "pod",
            pod,
            "--grace-period=0",
            "--wait=true",
        ])?;
        k.ok_stdin(&["apply", "-f", "-"], &pod_manifest(i, j).to_string())?;
        k.ok(&[
            "-n",
            ns,
            "wait",
            "--for=condition=Ready",
            &format!("pod/{pod}"),
            "--timeout=90s",
        ])?;
        let ip = k.ok(&[
            "-n",
            ns,
            "get",
            "pod",
            pod,
            "-o",
            "jsonpath={.status.podIP}",
        ])?;
        let ip = ip.trim().to_string();
        if let Some(p) = self.pods.iter_mut().find(|p| p.peer.is(ns, pod)) {
            eprintln!("[case] {ns}/{pod} re-created: {} -> {ip}", p.ip);
            p.ip = ip;
        }
        Ok(())
    }

    fn pod(&self, ns: &str, pod: &str) -> &MatrixPod {
        self.pods
            .iter()
            .find(|p| p.peer.is(ns, pod))
            .unwrap_or(&self.pods[0])
    }

    /// The policy part of each node's rules, once (the first failure).
    fn dump_rules(&mut self) {
        if self.dumped_rules {
            return;
        }
        self.dumped_rules = true;
        for (node, netns) in [
            (NODES[0], None),
            (NODES[1], Some("lotse-n2")),
            (NODES[2], Some("lotse-n3")),
        ] {
            let mut cmd = match netns {
                Some(ns) => {
                    let mut c = std::process::Command::new("ip");
                    c.args(["netns", "exec", ns, "nft"]);
                    c
                }
                None => std::process::Command::new("nft"),
            };
            if let Ok(o) = cmd.args(["list", "table", "ip", &self.c.table]).output() {
                let text = String::from_utf8_lossy(&o.stdout);
                eprintln!("--- nft on {node} (policy part) ---");
                let mut on = false;
                for l in text.lines() {
                    if l.trim_start().starts_with("set ") || l.trim_start().starts_with("chain ") {
                        on = l.contains("np-") || l.contains("policy-");
                    }
                    if on {
                        eprintln!("{l}");
                    }
                }
            }
        }
    }
}

#[test]
#[ignore = "needs root, containerd, runc, nft and network namespaces: starts three nodes"]
fn network_policy_truth_tables_and_the_course_example() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir()?;
    // The host node's podCIDR of its own, outside what the node IPAM hands the joined nodes
    // first: they may register before the host node does.
    let host_cidr = random_pod_cidr()?;
    let c = Cluster::start_with_images(
        tmp.path(),
        &["--pod-cidr", &host_cidr],
        &["busybox.tar", "pause.tar", "debian.tar", "nginx.tar"],
    )?;
    c.wait_ready(Duration::from_secs(180))?;
    step(t0, "three nodes Ready");
    c.k.ok_stdin(&["apply", "-f", "-"], &pod_manifests())?;
    c.k.ok_stdin(&["apply", "-f", "-"], COURSE_WORKLOADS)?;
    wait_for(
        &c.k,
        &[
            "get",
            "pods",
            "-A",
            "-l",
            "netpol=matrix",
            "-o",
            "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status} {end}",
        ],
        "the nine matrix pods Ready",
        Duration::from_secs(180),
        |s| s.split_whitespace().filter(|w| *w == "True").count() == 9,
    )
    .with_context(|| c.log())?;
    step(t0, "matrix pods Ready");
    let out = c.k.ok(&[
        "get",
        "pods",
        "-A",
        "-l",
        "netpol=matrix",
        "-o",
        "jsonpath={range .items[*]}{.metadata.namespace} {.metadata.name} {.status.podIP} {.spec.nodeName}{\"\\n\"}{end}",
    ])?;
    let mut pods = Vec::new();
    for ns in NAMESPACES {
        for pod in PODS {
            let line = out
                .lines()
                .find(|l| l.starts_with(&format!("{ns} {pod} ")))
                .with_context(|| format!("pod {ns}/{pod} in {out}"))?;
            let w: Vec<&str> = line.split_whitespace().collect();
            let [_, _, ip, node] = w.as_slice() else {
                bail!("pod line {line}");
            };
            pods.push(MatrixPod {
                peer: Peer { ns, pod },
                ip: ip.to_string(),
                node: node.to_string(),
            });
        }
    }
    let cidrs = c.k.ok(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.spec.podCIDR}{\"\\n\"}{end}",
    ])?;
    let pod_cidr = |node: &str| -> anyhow::Result<String> {
        cidrs
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{node} ")))
            .map(str::to_string)
            .with_context(|| format!("podCIDR of {node} in {cidrs}"))
    };
    let (cidr2, cidr3) = (pod_cidr(NODES[1])?, pod_cidr(NODES[2])?);
    let mut s = Suite {
        c: &c,
        pods,
        failures: Vec::new(),
        timings: Vec::new(),
        dumped_rules: false,
    };
    let t_matrix = Instant::now();
    matrix_cases(&mut s, &cidr2, &cidr3);
    let matrix_time = t_matrix.elapsed();
    step(t0, "policy cases done");
    let course = course_example(&c);
    step(t0, "course example done");
    eprintln!(
        "{} policy checks in {matrix_time:?}; slowest: {:?}; the whole test: {:?}",
        s.timings.len() + s.failures.len(),
        s.timings.iter().max_by_key(|t| t.1),
        t0.elapsed()
    );
    let mut problems = std::mem::take(&mut s.failures);
    if let Err(e) = course {
        problems.push(format!("course example: {e:#}"));
    }
    if !problems.is_empty() {
        let log = c.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("--- lotse.log (last lines) ---");
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
        bail!("{} problem(s):\n{}", problems.len(), problems.join("\n\n"));
    }
    Ok(())
}

fn matrix_cases(s: &mut Suite, cidr2: &str, cidr3: &str) {
    let xa = |p: Peer| p.is("x", "a");
    s.case("no policies: everything open", &[], &|_, _, _| true);

    s.case(
        "deny-all ingress in x",
        &[np("x", "deny", "{podSelector: {}, policyTypes: [Ingress]}")],
        &|_, t, _| t.ns != "x",
    );
    // Replies to connections into x still flow (conntrack).
    s.case(
        "deny-all egress in x",
        &[np("x", "deny", "{podSelector: {}, policyTypes: [Egress]}")],
        &|f, _, _| f.ns != "x",
    );
    s.case(
        "deny-all ingress and egress everywhere",
        &NAMESPACES
            .iter()
            .map(|ns| {
                np(
                    ns,
                    "deny",
                    "{podSelector: {}, policyTypes: [Ingress, Egress]}",
                )
            })
            .collect::<Vec<_>>(),
        &|_, _, _| false,
    );
    s.case(
        "allow-all ingress beside a default deny (union)",
        &[
            np("x", "deny", "{podSelector: {}, policyTypes: [Ingress]}"),
            np("x", "allow-all", "{podSelector: {}, ingress: [{}]}"),
        ],
        &|_, _, _| true,
    );
    s.case(
        "x allows ingress from its own namespace",
        &[np(
            "x",
            "same-ns",
            "{podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}",
        )],
        &|f, t, _| t.ns != "x" || f.ns == "x",
    );
    let from_y = np(
        "x",
        "from-ns",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]}]}",
    );
    s.case(
        "x/a allows ingress from namespace ns=y",
        std::slice::from_ref(&from_y),
        &|f, t, _| !xa(t) || f.ns == "y",
    );
    // The same policy, updated in place.
    if s.apply(
        "policy update in place",
        &from_y.replace("ns: \"y\"", "ns: \"z\""),
    ) {
        s.check(
            "x/a's policy updated in place to namespace ns=z",
            &|f, t, _| !xa(t) || f.ns == "z",
        );
    }
    s.case(
        "x/a allows pods pod=b of all namespaces",
        &[np(
            "x",
            "from-b",
            "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}]}]}",
        )],
        &|f, t, _| !xa(t) || f.pod == "b",
    );
    s.case(
        "namespaceSelector AND podSelector in one peer",
        &[np(
            "x",
            "and",
            "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}, podSelector: {matchLabels: {pod: b}}}]}]}",
        )],
        &|f, t, _| !xa(t) || f.is("y", "b"),
    );
    s.case(
        "namespaceSelector OR podSelector in two peers",
        &[np(
            "x",
            "or",
            "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}, {podSelector: {matchLabels: {pod: b}}}]}]}",
        )],
        &|f, t, _| !xa(t) || f.ns == "y" || f.is("x", "b"),
    );
    s.case(
        "matchExpressions (NotIn namespaces, In pods)",
        &[np(
            "x",
            "expr",
            "{podSelector: {matchExpressions: [{key: pod, operator: In, values: [a]}]}, ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [\"x\"]}]}, podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, c]}]}}]}]}",
        )],
        &|f, t, _| !xa(t) || (f.ns != "x" && f.pod != "b"),
    );
    let yb = s.pod("y", "b").ip.clone();
    let node3 = NODES[2];
    let on_node3: Vec<Peer> = s
        .pods
        .iter()
        .filter(|p| p.node == node3)
        .map(|p| p.peer)
        .collect();
    s.case(
        "ingress ipBlock 0.0.0.0/0 except y/b and the third node's podCIDR",
        &[np(
            "x",
            "block",
            &format!(
                "{{podSelector: {{matchLabels: {{pod: a}}}}, ingress: [{{from: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [\"{yb}/32\", \"{cidr3}\"]}}}}]}}]}}"
            ),
        )],
        &|f, t, _| !xa(t) || (!f.is("y", "b") && !on_node3.contains(&f)),
    );
    let ya = s.pod("y", "a").ip.clone();
    let node2 = NODES[1];
    let on_node2: Vec<Peer> = s
        .pods
        .iter()
        .filter(|p| p.node == node2)
        .map(|p| p.peer)
        .collect();
    s.case(
        "egress ipBlock: the second node's podCIDR except y/a",
        &[np(
            "x",
            "block-out",
            &format!(
                "{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: \"{cidr2}\", except: [\"{ya}/32\"]}}}}]}}]}}"
            ),
        )],
        &|f, t, _| !xa(f) || (on_node2.contains(&t) && !t.is("y", "a")),
    );
    s.case(
        "named port serve-81-tcp",
        &[np(
            "x",
            "named",
            "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: serve-81-tcp}]}]}",
        )],
        &|_, t, p| !xa(t) || p.tcp(81),
    );
    s.case(
        "named port serve-80-udp (UDP)",
        &[np(
            "x",
            "named-udp",
            "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{protocol: UDP, port: serve-80-udp}]}]}",
        )],
        &|_, t, p| !xa(t) || p.udp(80),
    );
    s.case(
        "named port serve-80-udp asked for as TCP matches nothing",
        &[np(
            "x",
            "named-wrong",
            "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{protocol: TCP, port: serve-80-udp}]}]}",
        )],
        &|_, t, _| !xa(t),
    );
    s.case(
        "UDP 80 by number admits UDP, not TCP",
        &[np(
            "x",
            "udp",
            "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{protocol: UDP, port: 80}]}]}",
        )],
        &|_, t, p| !xa(t) || p.udp(80),
    );
    s.case(
        "endPort ranges: TCP 81-90, UDP 70-80",
        &[np(
            "x",
            "range",
            "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{protocol: TCP, port: 81, endPort: 90}, {protocol: UDP, port: 70, endPort: 80}]}]}",
        )],
        &|_, t, p| !xa(t) || p.tcp(81) || p.udp(80),
    );
    s.case(
        "a protocol without a port admits every port of it (UDP)",
        &[np(
            "x",
            "any-udp",
            "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{protocol: UDP}]}]}",
        )],
        &|_, t, p| !xa(t) || p.udp,
    );
    s.case(
        "an address in one policy's except and another policy's block is allowed (union)",
        &[
            np(
                "x",
                "all-but-yb",
                &format!(
                    "{{podSelector: {{matchLabels: {{pod: a}}}}, ingress: [{{from: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [\"{yb}/32\"]}}}}]}}]}}"
                ),
            ),
            np(
                "x",
                "yb",
                &format!(
                    "{{podSelector: {{matchLabels: {{pod: a}}}}, ingress: [{{from: [{{ipBlock: {{cidr: \"{yb}/32\"}}}}]}}]}}"
                ),
            ),
        ],
        &|_, _, _| true,
    );
    s.case(
        "egress allow-all beside an egress default deny (union)",
        &[
            np("x", "deny-out", "{podSelector: {}, policyTypes: [Egress]}"),
            np(
                "x",
                "allow-out",
                "{podSelector: {}, policyTypes: [Egress], egress: [{}]}",
            ),
        ],
        &|_, _, _| true,
    );
    s.case(
        "egress from x to the destination's named port serve-81-tcp",
        &[np(
            "x",
            "egress-named",
            "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: serve-81-tcp}]}]}",
        )],
        &|f, _, p| f.ns != "x" || p.tcp(81),
    );
    s.case(
        "union of policies: y on TCP 80, z on TCP 81, default deny in x",
        &[
            np("x", "deny", "{podSelector: {}, policyTypes: [Ingress]}"),
            np(
                "x",
                "y-80",
                "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}], ports: [{port: 80}]}]}",
            ),
            np(
                "x",
                "z-81",
                "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"z\"}}}], ports: [{port: 81}]}]}",
            ),
        ],
        &|f, t, p| t.ns != "x" || (xa(t) && ((f.ns == "y" && p.tcp(80)) || (f.ns == "z" && p.tcp(81)))),
    );
    s.case(
        "policyTypes defaulting: egress rules present means Ingress and Egress",
        &[np(
            "x",
            "defaulted",
            "{podSelector: {matchLabels: {pod: a}}, egress: [{to: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]}]}",
        )],
        &|f, t, _| !xa(t) && (!xa(f) || t.ns == "y"),
    );
    s.case(
        "policyTypes [Ingress] ignores the egress rules",
        &[np(
            "x",
            "ingress-only",
            "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{}], egress: [{to: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]}]}",
        )],
        &|_, _, _| true,
    );
    let dns_answers =
        s.c.k
            .ok(&[
                "-n",
                "x",
                "exec",
                "a",
                "--",
                "getent",
                "hosts",
                "kubernetes.default",
            ])
            .is_ok();
    s.case(
        "egress from x only to DNS (UDP and TCP 53) in kube-system",
        &[np(
            "x",
            "dns-only",
            "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}}], ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]}]}",
        )],
        &|f, _, _| f.ns != "x",
    );
    dns_under_egress_policy(s, dns_answers);

    // Pod label changes: a peer gains and loses the label a rule selects.
    s.case(
        "x/a allows pods role=client (none yet)",
        &[np(
            "x",
            "clients",
            "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}]}]}",
        )],
        &|_, t, _| !xa(t),
    );
    if s.kubectl(
        "pod label",
        &["-n", "y", "label", "pod", "c", "role=client"],
    ) {
        s.check("y/c labelled role=client", &|f, t, _| {
            !xa(t) || f.is("y", "c")
        });
    }
    if s.kubectl("pod label", &["-n", "y", "label", "pod", "c", "role-"]) {
        s.check("y/c's role label removed", &|_, t, _| !xa(t));
    }
    // A pod gains and loses the label a policy's podSelector selects.
    s.case(
        "y isolates pods role=server (none yet)",
        &[np(
            "y",
            "servers",
            "{podSelector: {matchLabels: {role: server}}, policyTypes: [Ingress]}",
        )],
        &|_, _, _| true,
    );
    if s.kubectl(
        "pod label",
        &["-n", "y", "label", "pod", "b", "role=server"],
    ) {
        s.check("y/b labelled role=server", &|_, t, _| !t.is("y", "b"));
    }
    if s.kubectl("pod label", &["-n", "y", "label", "pod", "b", "role-"]) {
        s.check("y/b's role label removed", &|_, _, _| true);
    }
    // Namespace label changes.
    s.case(
        "x/a allows namespaces team=blue (none yet)",
        &[np(
            "x",
            "team",
            "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]}",
        )],
        &|_, t, _| !xa(t),
    );
    if s.kubectl("namespace label", &["label", "namespace", "z", "team=blue"]) {
        s.check("namespace z labelled team=blue", &|f, t, _| {
            !xa(t) || f.ns == "z"
        });
    }
    if s.kubectl("namespace label", &["label", "namespace", "z", "team-"]) {
        s.check("namespace z's team label removed", &|_, t, _| !xa(t));
    }
    // A pod's address changes: z/c is re-created (the address a pod gets back may be its
    // old one; the policy has to follow either way).
    s.case(
        "x/a allows z/c only",
        &[np(
            "x",
            "zc",
            "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"z\"}}, podSelector: {matchLabels: {pod: c}}}]}]}",
        )],
        &|f, t, _| !xa(t) || f.is("z", "c"),
    );
    match s.recreate("z", "c") {
        Ok(()) => s.check("z/c re-created", &|f, t, _| !xa(t) || f.is("z", "c")),
        Err(e) => s.failures.push(format!("re-creating z/c: {e:#}")),
    }
    s.case("policies deleted: everything open", &[], &|_, _, _| true);
    let mut sorted = s.timings.clone();
    sorted.sort_by_key(|t| t.1);
    let first_round = s.timings.iter().filter(|t| t.2 == 1).count();
    eprintln!(
        "{first_round} of {} checks as expected in the first probe round; median {:?}",
        s.timings.len(),
        sorted.get(sorted.len() / 2).map(|t| t.1)
    );
}

/// Under the DNS-only egress policy, x's pods still resolve names when the cluster DNS runs as
/// pods in kube-system (k8s-app: kube-dns); when it is served by the nodes themselves, the
/// policy's kube-system peer does not cover it and there is nothing to check (nor when it did
/// not answer before the policy).
fn dns_under_egress_policy(s: &mut Suite, dns_answers: bool) {
    if !dns_answers {
        eprintln!(
            "cluster DNS did not answer x/a before the DNS-only policy: not checked under it"
        );
        return;
    }
    let kinds =
        s.c.k
            .ok(&[
                "-n",
                "kube-system",
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=kube-dns",
                "-o",
                "jsonpath={.items[*].endpoints[*].targetRef.kind}",
            ])
            .unwrap_or_default();
    if !kinds.split_whitespace().any(|k| k == "Pod") {
        eprintln!(
            "cluster DNS is not served by pods: name resolution under the DNS-only policy not checked"
        );
        return;
    }
    for pod in PODS {
        let r = eventually(
            "x's pods resolve kubernetes.default under the DNS-only egress policy",
            Duration::from_secs(5),
            || {
                s.c.k.ok(&[
                    "-n",
                    "x",
                    "exec",
                    pod,
                    "--",
                    "getent",
                    "hosts",
                    "kubernetes.default",
                ])
            },
        );
        match r {
            Ok(out) => eprintln!(
                "[case] x/{pod} resolves kubernetes.default under the DNS-only policy: {}",
                out.trim()
            ),
            Err(e) => s.failures.push(format!("DNS from x/{pod}: {e:#}")),
        }
    }
}

const COURSE_WORKLOADS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: entenhausen}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: nginx, namespace: entenhausen}
spec:
  replicas: 5
  selector: {matchLabels: {app: nginx}}
  template:
    metadata: {labels: {app: nginx}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: nginx
        image: nginx
        ports: [{containerPort: 80}]
        readinessProbe: {httpGet: {path: /, port: 80}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: nginx-service, namespace: entenhausen}
spec:
  type: NodePort
  selector: {app: nginx}
  ports: [{port: 80, targetPort: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: tick, namespace: entenhausen, labels: {access: "true"}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - {name: c, image: busybox, command: ["sleep", "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: trick, namespace: entenhausen}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - {name: c, image: busybox, command: ["sleep", "3600"]}
"#;

const COURSE_POLICIES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: entenhausen}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: access-nginx, namespace: entenhausen}
spec:
  podSelector: {matchLabels: {app: nginx}}
  ingress:
  - from: [{podSelector: {matchLabels: {access: "true"}}}]
"#;

/// Whether each client gets nginx's page by the Service's name (5 tries each, 1 s apiece:
/// several replicas on several nodes answer).
fn clients_reach(c: &Cluster) -> [bool; 2] {
    let reach = |pod: &str| {
        // Several requests: the Service spreads them over the replicas on all nodes.
        let script = "for i in 1 2 3 4 5; do timeout 2 wget -q -O- http://nginx-service/ | grep -q nginx || exit 1; done";
        c.k.run(&["-n", "entenhausen", "exec", pod, "--", "sh", "-c", script])
            .is_ok_and(|o| o.code == 0)
    };
    std::thread::scope(|s| {
        let tick = s.spawn(|| reach("tick"));
        let trick = s.spawn(|| reach("trick"));
        [tick.join().unwrap_or(false), trick.join().unwrap_or(false)]
    })
}

/// Whether the name resolves and the ClusterIP answers from tick (to tell DNS from policy).
fn diagnose(c: &Cluster) -> String {
    let run = |script: &str| match c.k.run(&[
        "-n",
        "entenhausen",
        "exec",
        "tick",
        "--",
        "sh",
        "-c",
        script,
    ]) {
        Ok(o) => format!("{}{}", o.stdout.trim(), o.stderr.trim()),
        Err(e) => e.to_string(),
    };
    let ip =
        c.k.ok(&[
            "-n",
            "entenhausen",
            "get",
            "svc",
            "nginx-service",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .unwrap_or_default();
    format!(
        "tick: `nslookup nginx-service`: {}; ClusterIP {ip}: {}",
        run("timeout 3 nslookup nginx-service 2>&1 | tail -3"),
        run(&format!(
            "timeout 2 wget -q -O- http://{ip}/ | grep -c nginx"
        ))
    )
}

fn course_example(c: &Cluster) -> anyhow::Result<()> {
    let t0 = Instant::now();
    wait_for(
        &c.k,
        &[
            "-n",
            "entenhausen",
            "get",
            "pods",
            "-o",
            "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status} {end}",
        ],
        "five nginx replicas and two clients Ready",
        Duration::from_secs(120),
        |s| s.split_whitespace().filter(|w| *w == "True").count() == 7,
    )?;
    let nodes = c.k.ok(&[
        "-n",
        "entenhausen",
        "get",
        "pods",
        "-l",
        "app=nginx",
        "-o",
        "jsonpath={.items[*].spec.nodeName}",
    ])?;
    eprintln!("nginx replicas on: {nodes}");
    let node_port = c.k.ok(&[
        "-n",
        "entenhausen",
        "get",
        "svc",
        "nginx-service",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ])?;
    let node_port: u16 = node_port.trim().parse().context("nodePort")?;
    let expect = |what: &str, want: [bool; 2]| -> anyhow::Result<()> {
        let t = Instant::now();
        eventually(what, Duration::from_secs(10), || {
            let got = clients_reach(c);
            if got != want {
                bail!(
                    "tick, trick reach nginx-service: {got:?}, expected {want:?} ({})",
                    diagnose(c)
                );
            }
            Ok(())
        })?;
        eprintln!("[course] {what}: as expected after {:?}", t.elapsed());
        Ok(())
    };
    expect(
        "no policies: both clients reach nginx-service",
        [true, true],
    )?;
    c.k.ok_stdin(&["apply", "-f", "-"], COURSE_POLICIES)?;
    expect(
        "default-deny + allow access=true: tick reaches nginx-service, trick is blocked",
        [true, false],
    )?;
    c.k.ok(&["-n", "entenhausen", "delete", "networkpolicy", "--all"])?;
    expect(
        "policies removed: both reach nginx-service again",
        [true, true],
    )?;
    for ip in NODE_IPS {
        let body = eventually(
            &format!("NodePort {ip}:{node_port}"),
            Duration::from_secs(10),
            || {
                let r = http_get(ip, node_port)?;
                if !r.contains("nginx") {
                    bail!("not nginx's page: {r}");
                }
                Ok(r)
            },
        )?;
        eprintln!(
            "[course] NodePort {ip}:{node_port}: {}",
            body.lines().next().unwrap_or("")
        );
    }
    eprintln!("[course] done after {:?}", t0.elapsed());
    Ok(())
}
