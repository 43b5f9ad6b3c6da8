//! Several nodes on one machine (`lotse up --nodes 3`): each extra node a network namespace on
//! the underlay bridge with its own containerd, kubelet and network agent, joined with a
//! bootstrap token through `lotse join`. Checked with traffic and the real kubectl: pods on
//! every node, pod to pod across nodes (TCP and UDP) without NAT, a ClusterIP Service from a pod
//! on each node, a NodePort on every node address, cluster DNS from another node, pod egress to
//! the host, cordon/drain/uncordon, a restart that resumes the same nodes, and joins refused for
//! a wrong token or CA hash.
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::Kubectl;
use e2e::lotse::{Lotse, require_images, wait_for};

const NODE: &str = "mn";
const NODES: [&str; 3] = ["mn", "mn-2", "mn-3"];

/// One web pod per node (required anti-affinity), answering with its pod name on 8080.
const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: web}}
            topologyKey: kubernetes.io/hostname
      containers:
      - name: web
        image: busybox
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
        ports:
        - {containerPort: 8080, hostPort: 8081}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
"#;

struct Cluster {
    lotse: Option<Lotse>,
    k: Kubectl,
    args: Vec<String>,
    data: std::path::PathBuf,
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
        let table = format!("lotse-mn-{}", std::process::id());
        let args: Vec<String> = [
            "--data-dir",
            &data.to_string_lossy(),
            "--secure-port",
            &e2e::free_port()?.to_string(),
            "--kubelet-port",
            &e2e::free_port()?.to_string(),
            "--node-name",
            NODE,
            "--nodes",
            "3",
            "--nftables-table",
            &table,
            "--images=",
            "--no-install",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
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

    fn log(&self) -> String {
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

    fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_for(
            &self.k,
            &[
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status} {end}",
            ],
            "three Ready nodes",
            timeout,
            |s| NODES.iter().all(|n| s.contains(&format!("{n}=True"))),
        )
        .map(|_| ())
        .with_context(|| self.log())
    }

    fn sh(&self, pod: &str, script: &str) -> anyhow::Result<String> {
        self.k.ok(&["exec", pod, "--", "sh", "-c", script])
    }

    fn wget(&self, pod: &str, ip: &str, port: u16) -> anyhow::Result<String> {
        Ok(self
            .sh(pod, &format!("timeout 5 wget -q -O- http://{ip}:{port}/"))?
            .trim()
            .to_string())
    }

    /// (pod name, node, pod IP) of the `app=web` pods, once all three run.
    fn web_pods(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let out = wait_for(
            &self.k,
            &[
                "get",
                "pods",
                "-l",
                "app=web",
                "--field-selector=status.phase=Running",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP}{\"\\n\"}{end}",
            ],
            "three running web pods",
            Duration::from_secs(120),
            |s| s.lines().filter(|l| l.split(' ').count() == 3).count() == 3,
        )
        .with_context(|| self.log())?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut w = l.split(' ');
                Some((
                    w.next()?.to_string(),
                    w.next()?.to_string(),
                    w.next()?.to_string(),
                ))
            })
            .collect())
    }
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
                    let mut c = std::process::Command::new("ip");
                    c.args(["netns", "exec", ns, "nft"]);
                    c
                }
                None => std::process::Command::new("nft"),
            };
            let _ = cmd
                .args(["delete", "table", "ip", &self.table])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn step(t0: Instant, what: &str) {
    eprintln!("[{:?}] {what}", t0.elapsed());
}

fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let t0 = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if t0.elapsed() > timeout => {
                return Err(e.context(format!("{what}: not within {timeout:?}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// `lotse join` from this host (where discovery fails before anything is installed).
fn join(args: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = std::process::Command::new(e2e::bin_dir().join("lotse"))
        .arg("join")
        .args(args)
        .output()?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[test]
#[ignore = "needs root, containerd, runc, nft and network namespaces: starts three nodes"]
fn three_nodes_carry_pod_and_service_traffic() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir()?;
    let mut c = Cluster::start(tmp.path())?;
    c.wait_ready(Duration::from_secs(180))?;
    step(t0, "three nodes Ready");
    eprintln!(
        "lotse up --nodes 3 to three Ready nodes: {:?}",
        t0.elapsed()
    );

    // Every node has its own InternalIP on the underlay and its own podCIDR.
    let wide = c.k.ok(&["get", "nodes", "-o", "wide"])?;
    for ip in ["10.213.0.1", "10.213.0.2", "10.213.0.3"] {
        assert!(wide.contains(ip), "{ip} missing from\n{wide}");
    }
    let cidrs =
        c.k.ok(&["get", "nodes", "-o", "jsonpath={.items[*].spec.podCIDR}"])?;
    let cidrs: std::collections::BTreeSet<&str> = cidrs.split_whitespace().collect();
    assert_eq!(cidrs.len(), 3, "distinct podCIDRs: {cidrs:?}");

    // The joined nodes came in through bootstrap tokens and approved CSRs.
    let csrs = c.k.ok(&[
        "get",
        "csr",
        "-o",
        "jsonpath={range .items[*]}{.spec.username} {.status.conditions[0].type}{\"\\n\"}{end}",
    ])?;
    assert!(
        csrs.lines()
            .filter(|l| l.starts_with("system:bootstrap:") && l.ends_with("Approved"))
            .count()
            >= 2,
        "node CSRs: {csrs}"
    );

    c.k.ok_stdin(&["apply", "-f", "-"], WEB)?;
    let pods = c.web_pods()?;
    let nodes: std::collections::BTreeSet<&str> = pods.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(nodes.len(), 3, "one web pod per node: {pods:?}");
    step(t0, "web pods on all nodes");

    // Pod to pod across nodes, TCP: each answers with its own name, and sees the caller's own
    // pod address (no NAT between pods).
    for (from, _, _) in &pods {
        for (to, _, ip) in &pods {
            let got = eventually("pod to pod", Duration::from_secs(20), || {
                c.wget(from, ip, 8080)
            })?;
            assert_eq!(&got, to, "{from} → {to} ({ip})");
        }
    }
    step(t0, "pod to pod across nodes (TCP)");

    // ClusterIP from a pod on each node.
    let cip =
        c.k.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"])?;
    let names: Vec<&str> = pods.iter().map(|p| p.0.as_str()).collect();
    for (from, _, _) in &pods {
        let got = eventually("ClusterIP", Duration::from_secs(20), || {
            c.wget(from, &cip, 80)
        })?;
        assert!(
            names.contains(&got.as_str()),
            "ClusterIP from {from}: {got}"
        );
    }
    step(t0, "ClusterIP from every node");

    // NodePort from the host on every node's address.
    let np: u16 =
        c.k.ok(&[
            "get",
            "svc",
            "web",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ])?
        .trim()
        .parse()?;
    for ip in ["10.213.0.1", "10.213.0.2", "10.213.0.3"] {
        let resp = eventually("NodePort", Duration::from_secs(20), || {
            e2e::lotse::http_get(ip, np)
        })?;
        assert!(
            resp.starts_with("HTTP/1.") && resp.contains(" 200 OK"),
            "NodePort {ip}:{np}: {resp}"
        );
    }
    step(t0, "NodePort on every node");

    // hostPort 8081 on each node's address leads to that node's own web pod.
    for (k, ip) in ["10.213.0.1", "10.213.0.2", "10.213.0.3"]
        .iter()
        .enumerate()
    {
        let resp = eventually("hostPort", Duration::from_secs(20), || {
            e2e::lotse::http_get(ip, 8081)
        })?;
        let on_node = pods.iter().find(|p| p.1 == NODES[k]).map(|p| p.0.as_str());
        assert_eq!(
            Some(body(&resp).as_str()),
            on_node,
            "hostPort on {ip}: {resp}"
        );
    }
    step(t0, "hostPort on every node");

    // UDP across nodes: cluster DNS (kube-dns's ClusterIP, answered on the host) from a pod on
    // every node. (busybox has no UDP server for a pod-to-pod UDP check.)
    for (from, _, _) in &pods {
        let dns = eventually("cluster DNS", Duration::from_secs(30), || {
            c.sh(from, "nslookup web.default.svc.cluster.local")
        })?;
        assert!(dns.contains(cip.trim()), "{from}: {dns}");
    }
    // The kubernetes Service from a joined node (a TCP connection: busybox's TLS cannot talk
    // to the apiserver's TLS 1.3).
    let far = pods
        .iter()
        .find(|p| p.1 != NODE)
        .map(|p| p.0.clone())
        .context("pod off the host")?;
    let api = eventually("kubernetes Service", Duration::from_secs(20), || {
        c.sh(
            &far,
            "timeout 5 nc kubernetes.default.svc.cluster.local 443 </dev/null && echo connected",
        )
    })?;
    assert_eq!(api.trim(), "connected");
    step(
        t0,
        "DNS (UDP) from every node, the kubernetes Service from a joined node",
    );

    // Joins refused: a wrong token secret, an unknown token id, a wrong CA hash.
    let server = c.k.ok(&[
        "config",
        "view",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ])?;
    let port = server
        .rsplit(':')
        .next()
        .context("server port")?
        .to_string();
    let target = format!("127.0.0.1:{port}");
    let hash = ca_hash(&c.data.join("pki/ca.crt"))?;
    let bad_dir = tmp.path().join("bad-join");
    let bad = bad_dir.to_string_lossy().into_owned();
    let common = ["--data-dir", &bad, "--no-install", "--images="];
    let secret_id = c.k.ok(&[
        "get",
        "secrets",
        "-n",
        "kube-system",
        "-o",
        "jsonpath={.items[?(@.type==\"bootstrap.kubernetes.io/token\")].data.token-id}",
    ])?;
    let id = String::from_utf8(base64_decode(
        secret_id
            .split_whitespace()
            .next()
            .context("a bootstrap token")?,
    )?)?;
    let wrong_secret = format!("{id}.0000000000000000");
    let mut a = vec![
        target.as_str(),
        "--token",
        &wrong_secret,
        "--discovery-token-ca-cert-hash",
        &hash,
    ];
    a.extend(common);
    let (ok, out) = join(&a)?;
    assert!(
        !ok && out.contains("failed to verify JWS signature"),
        "{out}"
    );
    let mut a = vec![
        target.as_str(),
        "--token",
        "zzzzzz.0000000000000000",
        "--discovery-token-ca-cert-hash",
        &hash,
    ];
    a.extend(common);
    let (ok, out) = join(&a)?;
    assert!(
        !ok && out.contains("token id \"zzzzzz\" is invalid"),
        "{out}"
    );
    let wrong_hash = format!("sha256:{}", "0".repeat(64));
    let mut a = vec![
        target.as_str(),
        "--token",
        "zzzzzz.0000000000000000",
        "--discovery-token-ca-cert-hash",
        &wrong_hash,
    ];
    a.extend(common);
    let (ok, _) = join(&a)?;
    assert!(!ok);
    assert!(
        !bad_dir.join("kubelet.kubeconfig").exists(),
        "a refused join leaves no credentials"
    );
    step(t0, "bad joins refused");

    // Cordon and drain a joined node: its web pod is evicted and (anti-affinity) waits; uncordon
    // lets it back.
    let drained = "mn-3";
    c.k.ok(&[
        "drain",
        drained,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--timeout=60s",
        "--grace-period=1",
    ])?;
    let unsched = c.k.ok(&[
        "get",
        "node",
        drained,
        "-o",
        "jsonpath={.spec.unschedulable}",
    ])?;
    assert_eq!(unsched.trim(), "true");
    wait_for(
        &c.k,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName},{end}",
        ],
        "no web pod on the drained node",
        Duration::from_secs(30),
        |s| !s.contains(drained),
    )?;
    c.k.ok(&["uncordon", drained])?;
    let pods = c.web_pods()?;
    assert!(
        pods.iter().any(|p| p.1 == drained),
        "back on {drained}: {pods:?}"
    );
    step(t0, "drain and uncordon");

    // Restart: the same nodes come back and adopt their pods.
    let before: Vec<(String, String)> = pods.iter().map(|p| (p.0.clone(), p.2.clone())).collect();
    c.lotse.as_mut().context("running")?.stop()?;
    let lotse = Lotse::start(&c.data, &c.args)?;
    c.lotse = Some(lotse);
    c.wait_ready(Duration::from_secs(120))?;
    let after = c.web_pods()?;
    for (name, ip) in &before {
        assert!(
            after.iter().any(|p| &p.0 == name && &p.2 == ip),
            "{name} ({ip}) kept: {after:?}"
        );
    }
    let nodes = c.k.ok(&["get", "nodes", "-o", "name"])?;
    assert_eq!(nodes.lines().count(), 3, "{nodes}");
    step(t0, "restart resumed the nodes and their pods");
    Ok(())
}

/// kubeadm's CA pin, computed as `openssl x509 -pubkey | openssl pkey -pubin -outform der |
/// sha256sum` computes it (independently of Lotse's own code).
fn ca_hash(ca: &Path) -> anyhow::Result<String> {
    let script = format!(
        "openssl x509 -pubkey -noout -in {} | openssl pkey -pubin -outform der | sha256sum",
        ca.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().next().unwrap_or("");
    if !out.status.success() || hex.len() != 64 {
        bail!("hashing the CA: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(format!("sha256:{hex}"))
}

/// The body of an HTTP/1.0 response.
fn body(resp: &str) -> String {
    resp.split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string()
}

fn base64_decode(s: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::STANDARD.decode(s.trim())?)
}
