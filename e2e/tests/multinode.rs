//! Several nodes on one machine (`lotse up --nodes 3`): each extra node a network namespace on
//! the underlay bridge with its own containerd, kubelet and network agent, joined with a
//! bootstrap token through `lotse join`. Checked with traffic and the real kubectl: pods on
//! every node, pod to pod across nodes (TCP, and UDP with the source address kept) without NAT,
//! a ClusterIP Service from a pod on each node, a NodePort on every node address (and with
//! `externalTrafficPolicy: Local` only where an endpoint is, keeping the client's address), cluster DNS
//! from another node, the ingress controller on every node, pod egress to the host and out of the machine (masqueraded by the pod's
//! node, and by the host on the way out), cordon/drain/uncordon, a restart that resumes the same
//! nodes, and joins refused for a wrong token or CA hash. Takes about a minute.
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::lotse::{Lotse, wait_for};
use e2e::multinode::{
    Cluster, DnsProbe, NODE, NODE_IPS, NODES, Outside, PROBE_ANSWER, PeerRecorder, eventually,
    pod_netns, step,
};

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

/// An Ingress of the default class without host: every request to `web`.
const INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web}
spec:
  rules:
  - http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {name: http}}}}
"#;

/// `GET /` with a Host header through the ingress controller at `ip:port`.
fn ingress_get(ip: &str, port: u16) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &format!("{ip}:{port}").parse()?,
        Duration::from_secs(3),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
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
    // The ingress controller's pods (the harness disables them for other tests) on a port of
    // the test's own: the host node shares the host's network namespace with other tests.
    let ingress_port = e2e::free_port()?;
    // SAFETY: the only test of this binary; set before any thread reads the environment.
    unsafe {
        std::env::set_var("LOTSE_DISABLE_INGRESS", "false");
        std::env::set_var("LOTSE_INGRESS_HTTP_PORT", ingress_port.to_string());
        std::env::set_var("LOTSE_INGRESS_HTTPS_PORT", e2e::free_port()?.to_string());
    }
    let mut c = Cluster::start(tmp.path(), &[])?;
    c.wait_ready(Duration::from_secs(180))?;
    step(t0, "three nodes Ready");
    eprintln!(
        "lotse up --nodes 3 to three Ready nodes: {:?}",
        t0.elapsed()
    );

    // Every node has its own InternalIP on the underlay and its own podCIDR.
    let wide = c.k.ok(&["get", "nodes", "-o", "wide"])?;
    for ip in NODE_IPS {
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

    // Pod to pod across nodes, UDP, in both directions of every node pair's ring (0→1, 1→2,
    // 2→0): the client is busybox's nslookup in one pod, the server a tiny DNS responder the test
    // runs inside the other pod's network namespace (busybox has no UDP server). The answer
    // coming back proves the datagrams crossed both ways; the source address the server saw is
    // the client pod's own (no NAT between pods).
    for i in 0..pods.len() {
        let (from, from_node, from_ip) = &pods[i];
        let (to, to_node, to_ip) = &pods[(i + 1) % pods.len()];
        assert_ne!(from_node, to_node);
        let probe = DnsProbe::start(&pod_netns(&c.data, to_ip)?, Duration::from_secs(30))?;
        let answer = eventually("pod to pod over UDP", Duration::from_secs(20), || {
            let out = c.sh(from, &format!("nslookup probe.lotse.test {to_ip}"))?;
            if !out.contains(PROBE_ANSWER) {
                bail!("no answer: {out}");
            }
            Ok(out)
        })?;
        let sources: Vec<String> = probe.sources().iter().map(|a| a.ip().to_string()).collect();
        assert!(
            !sources.is_empty() && sources.iter().all(|s| s == from_ip),
            "{from} ({from_ip}) → {to} ({to_ip}) over UDP: the server saw {sources:?}\n{answer}"
        );
    }
    step(t0, "pod to pod across nodes (UDP), source addresses kept");

    // Egress to the host: a pod on a joined node reaches an address on the host, masqueraded
    // to its node's address by its node (the pod's own address means nothing off the pod
    // network).
    let host = PeerRecorder::start(None, Duration::from_secs(60))?;
    for (from, node, _) in pods.iter().filter(|p| p.1 != NODE) {
        let k = NODES.iter().position(|n| n == node).context("node")?;
        let got = eventually("egress to the host", Duration::from_secs(20), || {
            c.sh(
                from,
                &format!("timeout 5 nc 10.213.0.1 {} </dev/null", host.port),
            )
        })?;
        assert_eq!(got.trim(), "hello", "{from}");
        let peers: Vec<String> = host.peers().iter().map(|a| a.ip().to_string()).collect();
        assert!(
            !peers.is_empty() && peers.iter().all(|p| p == NODE_IPS[k]),
            "{from} on {node}: the host saw {peers:?}"
        );
    }
    // Egress out of the machine: to a network namespace standing for the world outside, which
    // knows no route back to the nodes or the pods. Every node's pods get answers: the pod's
    // node masquerades to its underlay address, and the host, the nodes' router, masquerades
    // the underlay's traffic leaving the machine to its own address there.
    let outside = Outside::create()?;
    let world = PeerRecorder::start(Some(&outside.path()), Duration::from_secs(60))?;
    for (from, node, _) in &pods {
        let got = eventually("egress out of the machine", Duration::from_secs(20), || {
            c.sh(
                from,
                &format!("timeout 5 nc {} {} </dev/null", Outside::IP, world.port),
            )
        })?;
        assert_eq!(got.trim(), "hello", "{from} on {node}");
    }
    let peers: Vec<String> = world.peers().iter().map(|a| a.ip().to_string()).collect();
    assert!(
        peers.len() >= 3 && peers.iter().all(|p| p == "198.51.100.1"),
        "the outside saw {peers:?}"
    );
    drop(outside);
    step(t0, "egress to the host and out of the machine, masqueraded");

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
    for ip in NODE_IPS {
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
    for (k, ip) in NODE_IPS.iter().enumerate() {
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

    // The ingress controller listens on every node (a host-network DaemonSet pod on each) and
    // publishes all three node addresses.
    c.k.ok_stdin(&["apply", "-f", "-"], INGRESS)?;
    for ip in NODE_IPS {
        let resp = eventually("ingress", Duration::from_secs(60), || {
            let resp = ingress_get(ip, ingress_port)?;
            if !resp.starts_with("HTTP/1.1 200 ") {
                bail!("{resp}");
            }
            Ok(resp)
        })?;
        assert!(
            resp.starts_with("HTTP/1.1 200 OK") && names.contains(&body(&resp).as_str()),
            "ingress on {ip}:{ingress_port}: {resp}"
        );
    }
    let published = eventually("ingress status", Duration::from_secs(30), || {
        let out = c.k.ok(&[
            "get",
            "ingress",
            "web",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[*].ip}",
        ])?;
        if out.split_whitespace().count() < 3 {
            bail!("published so far: {out}");
        }
        Ok(out)
    })?;
    assert_eq!(published.trim(), NODE_IPS.join(" "));
    step(t0, "ingress on every node");

    // externalTrafficPolicy: Local: the NodePort of a node with a local endpoint leads to it
    // and the endpoint sees the client's own address (no SNAT); a node without one does not
    // pass the connection on to another node.
    let (target, _, target_ip) = pods
        .iter()
        .find(|p| p.1 == NODES[1])
        .context("a web pod on the second node")?
        .clone();
    let rec = PeerRecorder::start(
        Some(&pod_netns(&c.data, &target_ip)?),
        Duration::from_secs(60),
    )?;
    c.k.ok(&["label", "pod", &target, "etp=local"])?;
    let svc = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: etp-local}}\nspec:\n  type: NodePort\n  externalTrafficPolicy: Local\n  selector: {{etp: local}}\n  ports: [{{port: 80, targetPort: {}}}]\n",
        rec.port
    );
    c.k.ok_stdin(&["apply", "-f", "-"], &svc)?;
    let lnp: u16 =
        c.k.ok(&[
            "get",
            "svc",
            "etp-local",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ])?
        .trim()
        .parse()?;
    let read_from = |ip: &str, wait: Duration| -> anyhow::Result<String> {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect_timeout(&format!("{ip}:{lnp}").parse()?, wait)?;
        s.set_read_timeout(Some(wait))?;
        let mut got = String::new();
        s.read_to_string(&mut got)?;
        Ok(got)
    };
    eventually(
        "externalTrafficPolicy: Local NodePort",
        Duration::from_secs(20),
        || {
            let got = read_from(NODE_IPS[1], Duration::from_secs(3))?;
            if got.trim() != "hello" {
                bail!("{got:?}");
            }
            Ok(())
        },
    )?;
    let peers: Vec<String> = rec.peers().iter().map(|a| a.ip().to_string()).collect();
    assert!(
        !peers.is_empty() && peers.iter().all(|p| p == NODE_IPS[0]),
        "externalTrafficPolicy: Local: the endpoint saw {peers:?}, not the client {}",
        NODE_IPS[0]
    );
    let elsewhere = read_from(NODE_IPS[2], Duration::from_secs(2));
    assert!(
        !elsewhere.as_deref().is_ok_and(|b| b.contains("hello")),
        "a node without a local endpoint passed the connection on: {elsewhere:?}"
    );
    step(
        t0,
        "externalTrafficPolicy: Local keeps the client's address, local endpoints only",
    );

    // UDP through a ClusterIP across nodes: cluster DNS (kube-dns's ClusterIP, answered by the
    // coredns pod on whichever node it runs) from a pod on every node.
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
