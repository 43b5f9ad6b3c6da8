//! NetworkPolicies enforced by the node network agent on a one-node `lotse up` (issue 14,
//! point 1), checked with real connections between pods, driven by the real kubectl.
//!
//! Two namespaces: `np-a` holds the server `web` (httpd on the named port `http` = 8080 and on
//! 9090, a readiness probe) behind a ClusterIP Service and the clients `good` (`access: "true"`)
//! and `bad`; `np-b` holds `other` (`access: "true"`, also an httpd) and `stranger`. Steps:
//! everything open without policies; the course's example (default-deny ingress plus an allow
//! rule for the `access` label on the named port), reached directly and through the Service;
//! a namespaceSelector AND podSelector peer following the namespace's label both ways; egress
//! default-deny blocking the server's own connections while the return traffic of allowed
//! ingress flows; an ipBlock with an except and an endPort range; the readiness probe passing
//! throughout; deleting the policies opens everything again.
//!
//! Needs root, containerd, runc, nftables, the built binaries and the busybox and pause images.
//! Each run uses its own Service range and nftables table.
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::Kubectl;
use e2e::lotse::{Lotse, node_ready_args, random_pod_cidr, require_images, wait_for};

const NODE: &str = "np-node";

const WORKLOADS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: np-a}
---
apiVersion: v1
kind: Namespace
metadata: {name: np-b, labels: {team: red}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: np-a, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  containers:
  - name: web
    image: busybox
    command: ["sh", "-c", "mkdir -p /www && echo web > /www/index.html && httpd -p 9090 -h /www && exec httpd -f -p 8080 -h /www"]
    ports: [{name: http, containerPort: 8080}, {name: other, containerPort: 9090}]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: np-a}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: good, namespace: np-a, labels: {access: "true"}}
spec:
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  containers:
  - {name: c, image: busybox, command: ["sleep", "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: bad, namespace: np-a}
spec:
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  containers:
  - {name: c, image: busybox, command: ["sleep", "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: np-b, labels: {access: "true"}}
spec:
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  containers:
  - name: other
    image: busybox
    command: ["sh", "-c", "mkdir -p /www && echo other > /www/index.html && exec httpd -f -p 8080 -h /www"]
---
apiVersion: v1
kind: Pod
metadata: {name: stranger, namespace: np-b}
spec:
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  containers:
  - {name: c, image: busybox, command: ["sleep", "3600"]}
"#;

/// The course's example: default-deny ingress for the namespace, plus an allow rule for the
/// pods labelled `access: "true"` on the server's named port.
const COURSE_POLICIES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: np-a}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: access-web, namespace: np-a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {access: "true"}}}]
    ports: [{port: http}]
"#;

/// Pods labelled `access: "true"` in namespaces labelled `team: blue` (one peer: AND).
const TEAM_POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: team-blue, namespace: np-a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: blue}}
      podSelector: {matchLabels: {access: "true"}}
"#;

const EGRESS_DENY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-egress-deny, namespace: np-a}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
"#;

/// A Service range of its own (outside 10.96.0.0/12 and the cluster CIDR).
fn random_service_range() -> anyhow::Result<String> {
    Ok(format!(
        "10.{}.0.0/16",
        160 + (std::process::id() + u32::from(e2e::free_port()?)) % 60
    ))
}

struct Cluster {
    /// Always `Some` but in `drop`, which stops it before deleting the table.
    lotse: Option<Lotse>,
    k: Kubectl,
    table: String,
}

impl Cluster {
    fn start(tmp: &Path) -> anyhow::Result<Cluster> {
        let images = require_images(&["busybox.tar", "pause.tar"])?;
        let data = tmp.join("data");
        std::fs::create_dir_all(data.join("kubelet/images"))?;
        for img in ["busybox.tar", "pause.tar"] {
            let dst = data.join("kubelet/images").join(img);
            if std::fs::hard_link(images.join(img), &dst).is_err() {
                std::fs::copy(images.join(img), &dst)?;
            }
        }
        let table = format!("lotse-np-{}", std::process::id());
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
            "--service-cluster-ip-range",
            &random_service_range()?,
            "--nftables-table",
            &table,
            "--images=",
            "--no-install",
            "--disable-cluster-dns",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let lotse = Lotse::start(&data, &args)?;
        let k = Kubectl::new(33, data.join("admin.kubeconfig"), tmp.join("kubectl-cache"));
        wait_for(
            &k,
            &node_ready_args(NODE),
            "node Ready",
            Duration::from_secs(30),
            |s| s.trim() == "True",
        )
        .with_context(|| lotse.log())?;
        Ok(Cluster {
            lotse: Some(lotse),
            k,
            table,
        })
    }

    fn get(&self, ns: &str, what: &[&str], jsonpath: &str) -> anyhow::Result<String> {
        let jp = format!("jsonpath={jsonpath}");
        let mut args = vec!["-n", ns, "get"];
        args.extend(what);
        args.extend(["-o", &jp]);
        Ok(self.k.ok(&args)?.trim().to_string())
    }

    /// Whether `ns/pod` gets `http://ip:port/` within 2 s (a dropped connection hangs until
    /// the `timeout` applet stops it: busybox 1.35's `wget -T` segfaults).
    fn reaches(&self, from: &str, ip: &str, port: u16) -> bool {
        let (ns, pod) = from.split_once('/').unwrap_or(("np-a", from));
        let script = format!("timeout 2 wget -q -O- http://{ip}:{port}/");
        self.k
            .run(&["-n", ns, "exec", pod, "--", "sh", "-c", &script])
            .is_ok_and(|o| o.code == 0 && !o.stdout.trim().is_empty())
    }

    /// Probes every `(from, ip, port, expected)` in parallel; the mismatches, printed.
    fn mismatches(&self, probes: &[(&str, &str, u16, bool)]) -> Vec<String> {
        std::thread::scope(|s| {
            let handles: Vec<_> = probes
                .iter()
                .map(|(from, ip, port, want)| {
                    s.spawn(move || {
                        let got = self.reaches(from, ip, *port);
                        (got != *want).then(|| {
                            format!(
                                "{from} -> {ip}:{port}: expected {}, got {}",
                                verdict(*want),
                                verdict(got)
                            )
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().ok().flatten())
                .collect()
        })
    }

    /// Waits (up to 10 s) until every probe gives its expected verdict; returns how long that
    /// took, or the mismatches left.
    fn expect(&self, what: &str, probes: &[(&str, &str, u16, bool)]) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        let mut round = 0;
        loop {
            round += 1;
            let bad = self.mismatches(probes);
            if bad.is_empty() {
                // A blocked probe waits out its 2 s timeout: one round means enforced before
                // the first probe.
                eprintln!(
                    "{what}: as expected after {:?} ({round} probe round(s))",
                    t0.elapsed()
                );
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("{what}: after {:?}:\n  {}", t0.elapsed(), bad.join("\n  "));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "allowed" } else { "blocked" }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.lotse.take());
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "ip", &self.table])
            .status();
    }
}

#[test]
#[ignore = "needs containerd, nftables, root"]
fn network_policies_block_and_admit_on_one_node() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let c = Cluster::start(tmp.path())?;
    let result = policies(&c);
    if result.is_err() {
        let log = c.lotse.as_ref().map(Lotse::log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        eprintln!("--- lotse.log (last lines) ---");
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
        if let Ok(o) = std::process::Command::new("nft")
            .args(["list", "table", "ip", &c.table])
            .output()
        {
            let text = String::from_utf8_lossy(&o.stdout);
            eprintln!("--- nft (policy part) ---");
            for l in text.lines().filter(|l| !l.contains("service")) {
                eprintln!("{l}");
            }
        }
    }
    result
}

fn policies(c: &Cluster) -> anyhow::Result<()> {
    let t0 = Instant::now();
    c.k.ok_stdin(&["apply", "-f", "-"], WORKLOADS)?;
    for (ns, pods) in [
        ("np-a", &["pod/web", "pod/good", "pod/bad"][..]),
        ("np-b", &["pod/other", "pod/stranger"][..]),
    ] {
        let mut args = vec!["-n", ns, "wait", "--for=condition=Ready"];
        args.extend(pods);
        args.push("--timeout=90s");
        c.k.ok(&args)?;
    }
    eprintln!("workloads ready after {:?}", t0.elapsed());
    let web = c.get("np-a", &["pod", "web"], "{.status.podIP}")?;
    let svc = c.get("np-a", &["svc", "web"], "{.spec.clusterIP}")?;
    let other = c.get("np-b", &["pod", "other"], "{.status.podIP}")?;
    let bad = c.get("np-a", &["pod", "bad"], "{.status.podIP}")?;
    let (web, svc, other) = (web.as_str(), svc.as_str(), other.as_str());

    // No policy selects anything: everything is open.
    c.expect(
        "no policies",
        &[
            ("bad", web, 8080, true),
            ("bad", svc, 80, true),
            ("np-b/stranger", web, 9090, true),
            ("web", other, 8080, true),
        ],
    )?;

    // The course's example.
    c.k.ok_stdin(&["apply", "-f", "-"], COURSE_POLICIES)?;
    c.expect(
        "default-deny + allow access=true on the named port",
        &[
            ("good", web, 8080, true),
            ("good", svc, 80, true),
            ("good", web, 9090, false),
            ("bad", web, 8080, false),
            ("bad", svc, 80, false),
            // A podSelector alone selects in the policy's namespace only.
            ("np-b/other", web, 8080, false),
        ],
    )?;

    // namespaceSelector AND podSelector, following the namespace's label both ways.
    c.k.ok_stdin(&["apply", "-f", "-"], TEAM_POLICY)?;
    c.k.ok(&["label", "namespace", "np-b", "team=blue", "--overwrite"])?;
    let took = c.expect(
        "namespace np-b labelled team=blue",
        &[
            ("np-b/other", web, 8080, true),
            ("np-b/other", web, 9090, true),
            ("np-b/stranger", web, 8080, false),
            ("bad", web, 8080, false),
        ],
    )?;
    eprintln!("label change enforced after {took:?} (probes included; goal 1 s)");
    c.k.ok(&["label", "namespace", "np-b", "team=red", "--overwrite"])?;
    c.expect(
        "namespace np-b labelled team=red again",
        &[("np-b/other", web, 8080, false)],
    )?;

    // Egress default-deny for the server: its own connections are blocked, the replies of
    // the connections it accepts still flow (conntrack).
    c.k.ok_stdin(&["apply", "-f", "-"], EGRESS_DENY)?;
    c.expect(
        "egress default-deny on web",
        &[
            ("web", other, 8080, false),
            ("good", web, 8080, true),
            ("good", svc, 80, true),
        ],
    )?;

    // ipBlock with except: the pod network, but not `bad`; a port and a port range.
    let block = format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: pod-network-but-bad, namespace: np-a}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  policyTypes: [Ingress]
  ingress:
  - from: [{{ipBlock: {{cidr: 10.244.0.0/16, except: ["{bad}/32"]}}}}]
    ports: [{{protocol: TCP, port: 8080}}, {{protocol: TCP, port: 9000, endPort: 9095}}]
"#
    );
    c.k.ok_stdin(&["apply", "-f", "-"], &block)?;
    c.expect(
        "ipBlock with except",
        &[
            ("np-b/stranger", web, 8080, true),
            ("bad", web, 8080, false),
            ("bad", web, 9090, false),
            // 9090 is in the endPort range 9000-9095.
            ("np-b/stranger", web, 9090, true),
        ],
    )?;

    // The kubelet's readiness probe (from the node) kept passing under default-deny.
    let ready = c.get(
        "np-a",
        &["pod", "web"],
        "{.status.conditions[?(@.type==\"Ready\")].status}",
    )?;
    assert_eq!(ready, "True", "web is Ready under default-deny");
    let eps = c.get(
        "np-a",
        &["endpointslices", "-l", "kubernetes.io/service-name=web"],
        "{.items[*].endpoints[*].conditions.ready}",
    )?;
    assert_eq!(eps, "true", "the Service's endpoint stays ready");

    // Removing the policies opens everything again.
    c.k.ok(&["-n", "np-a", "delete", "networkpolicy", "--all"])?;
    c.expect(
        "policies deleted",
        &[("bad", web, 8080, true), ("web", other, 8080, true)],
    )?;
    eprintln!("done after {:?}", t0.elapsed());
    Ok(())
}
