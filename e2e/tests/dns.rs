//! Cluster DNS on a one-node `lotse up` (issue 14, point 2): pods get the cluster resolver
//! configuration from the kubelet and resolve Services by name through `kube-system/kube-dns`
//! (the tenth Service address, in front of the `coredns` Deployment's `lotse-dns` pods labelled
//! `k8s-app: kube-dns`, image built by `lotse up` from the `lotse-dns` binary), checked from real
//! pods with busybox's `nslookup` and glibc's resolver (debian's `getent`, bash's `/dev/tcp`);
//! and a NetworkPolicy written for Kubernetes (egress to `k8s-app: kube-dns` in `kube-system`)
//! admits DNS while default-deny egress without it blocks it; other names are forwarded to the
//! node's upstream resolver (`--resolv-conf`: a DnsProbe of the test) and cached. ~60 s.
//!
//! Needs root, containerd, runc, containernetworking-plugins, nftables, the built binaries
//! (`cargo build --workspace --bins`, lotse-dns included) and the busybox, pause and debian
//! images (`target/debug/lotse images build --output target/lotse-images busybox pause debian`).
//! Each run uses its own Service range and nftables table, so other clusters on the machine
//! cannot answer for it.
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::lotse::{Lotse, node_ready_args, random_pod_cidr, require_images, wait_for};
use e2e::multinode::{DnsProbe, PROBE_ANSWER};
use e2e::{Kubectl, eventually};

const MANIFEST: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: busybox
        command: ["sh", "-c", "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 8080 -h /www"]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: peer, port: 7000}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 1
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: db
        image: busybox
        command: ["sleep", "3600"]
        ports: [{name: peer, containerPort: 7000}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: busybox
    command: ["sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata: {name: glibc}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: glibc
    image: debian
    command: ["sleep", "3600"]
"#;

const NETPOL: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: dns-policy}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-egress, namespace: dns-policy}
spec:
  podSelector: {}
  policyTypes: [Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-dns, namespace: dns-policy}
spec:
  podSelector:
    matchLabels: {dns: allowed}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: kube-system}
      podSelector:
        matchLabels: {k8s-app: kube-dns}
    ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
---
apiVersion: v1
kind: Pod
metadata: {name: allowed, namespace: dns-policy, labels: {dns: allowed}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: busybox, command: ["sleep", "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: denied, namespace: dns-policy}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: busybox, command: ["sleep", "3600"]}
"#;

/// A Service range of its own (outside 10.96.0.0/12 and the cluster CIDR).
fn random_service_range() -> anyhow::Result<(String, String)> {
    let second = 160 + (std::process::id() + u32::from(e2e::free_port()?)) % 60;
    Ok((format!("10.{second}.0.0/16"), format!("10.{second}.0.10")))
}

struct Cluster {
    lotse: Option<Lotse>,
    k: Kubectl,
    table: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.lotse.take());
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "ip", &self.table])
            .status();
    }
}

fn start(tmp: &Path) -> anyhow::Result<(Cluster, String)> {
    let images = require_images(&["busybox.tar", "pause.tar", "debian.tar"])?;
    let data = tmp.join("data");
    std::fs::create_dir_all(data.join("kubelet/images"))?;
    for img in ["busybox.tar", "pause.tar", "debian.tar"] {
        let dst = data.join("kubelet/images").join(img);
        if std::fs::hard_link(images.join(img), &dst).is_err() {
            std::fs::copy(images.join(img), &dst)?;
        }
    }
    let table = format!("lotse-dns-{}", std::process::id());
    let (range, dns_ip) = random_service_range()?;
    // The node's upstream resolver: the test's DnsProbe on the node's address.
    let resolv = tmp.join("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {}\n", host_ip()?))?;
    let args: Vec<String> = [
        "--data-dir",
        &data.to_string_lossy(),
        "--secure-port",
        &e2e::free_port()?.to_string(),
        "--kubelet-port",
        &e2e::free_port()?.to_string(),
        "--node-name",
        "dns-node",
        "--pod-cidr",
        &random_pod_cidr()?,
        "--service-cluster-ip-range",
        &range,
        "--nftables-table",
        &table,
        "--disable-ingress",
        "--resolv-conf",
        &resolv.to_string_lossy(),
        "--images=",
        "--no-install",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let lotse = Lotse::start(&data, &args)?;
    let k = Kubectl::new(33, data.join("admin.kubeconfig"), tmp.join("kubectl-cache"));
    wait_for(
        &k,
        &node_ready_args("dns-node"),
        "node Ready",
        Duration::from_secs(30),
        |s| s.trim() == "True",
    )
    .with_context(|| lotse.log())?;
    Ok((
        Cluster {
            lotse: Some(lotse),
            k,
            table,
        },
        dns_ip,
    ))
}

impl Cluster {
    fn sh(&self, pod: &str, script: &str) -> anyhow::Result<String> {
        self.k.ok(&["exec", pod, "--", "sh", "-c", script])
    }

    fn log(&self) -> String {
        self.lotse.as_ref().map(Lotse::log).unwrap_or_default()
    }

    /// The DNS pods' logs (this run's and the previous container's).
    fn dns_log(&self) -> String {
        let mut out = String::new();
        for prev in ["--previous=false", "--previous=true"] {
            if let Ok(r) = self.k.run(&[
                "-n",
                "kube-system",
                "logs",
                "-l",
                "k8s-app=kube-dns",
                "--tail=30",
                prev,
            ]) {
                out.push_str(&r.stdout);
                out.push_str(&r.stderr);
            }
        }
        out
    }
}

/// The source address of the default route: the node address `lotse up` picks.
fn host_ip() -> anyhow::Result<std::net::IpAddr> {
    // connect() on UDP only chooses the route; nothing is sent.
    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
    s.connect("1.1.1.1:53")?;
    Ok(s.local_addr()?.ip())
}

#[test]
#[ignore = "needs containerd, nftables, root"]
fn pods_resolve_services_by_name() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (c, dns_ip) = start(tmp.path())?;
    let t0 = Instant::now();
    let k = &c.k;

    // The reserved Service exists at the tenth address, selecting the DNS pods.
    let ip = eventually("kube-dns Service", Duration::from_secs(20), || {
        k.ok(&[
            "get",
            "svc",
            "-n",
            "kube-system",
            "kube-dns",
            "-o",
            "jsonpath={.spec.clusterIP} {.spec.selector.k8s-app}",
        ])
    })
    .with_context(|| c.log())?;
    assert_eq!(ip.trim(), format!("{dns_ip} kube-dns"));
    // The DNS runs as a Ready pod of the coredns Deployment (as kubeadm's CoreDNS).
    eventually("a Ready kube-dns pod", Duration::from_secs(90), || {
        let out = k.ok(&["-n", "kube-system", "get", "pods", "-l", "k8s-app=kube-dns"])?;
        if !out
            .lines()
            .any(|l| l.starts_with("coredns-") && l.contains(" 1/1 ") && l.contains("Running"))
        {
            bail!("{out}");
        }
        Ok(())
    })
    .with_context(|| format!("{}\n--- DNS pod log ---\n{}", c.log(), c.dns_log()))?;
    eprintln!("[{:?}] DNS pod Ready", t0.elapsed());

    k.ok_stdin(&["apply", "-f", "-"], MANIFEST)?;
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod",
        "--all",
        "--timeout=90s",
    ])
    .with_context(|| c.log())?;
    eprintln!("[{:?}] pods ready", t0.elapsed());
    let web_ip = k.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"])?;
    let db_ip = k.ok(&["get", "pod", "db-0", "-o", "jsonpath={.status.podIP}"])?;

    // resolv.conf by dnsPolicy ClusterFirst.
    let conf = c.sh("client", "cat /etc/resolv.conf")?;
    assert!(
        conf.lines()
            .any(|l| l.trim() == format!("nameserver {dns_ip}")),
        "{conf}"
    );
    assert!(
        conf.lines().any(|l| l
            .trim()
            .starts_with("search default.svc.cluster.local svc.cluster.local cluster.local")),
        "{conf}"
    );
    assert!(conf.contains("ndots:5"), "{conf}");

    // Fully qualified names through busybox's resolver.
    let out = eventually("web by FQDN", Duration::from_secs(20), || {
        let out = c.sh("client", "nslookup web.default.svc.cluster.local")?;
        if !out.contains(&web_ip) {
            bail!("no {web_ip} in {out}");
        }
        Ok(out)
    })
    .with_context(|| c.log())?;
    assert!(out.contains(&dns_ip), "answered by the cluster DNS: {out}");
    let out = c.sh("client", "nslookup db.default.svc.cluster.local")?;
    assert!(out.contains(&db_ip), "headless Service → pod IP: {out}");
    let out = eventually("StatefulSet pod name", Duration::from_secs(20), || {
        let out = c.sh("client", "nslookup db-0.db.default.svc.cluster.local")?;
        if !out.contains(&db_ip) {
            bail!("no {db_ip} in {out}");
        }
        Ok(out)
    })?;
    assert!(out.contains("db-0.db.default.svc.cluster.local"), "{out}");
    let r = k.run(&[
        "exec",
        "client",
        "--",
        "nslookup",
        "nosuch.default.svc.cluster.local",
    ])?;
    assert!(
        format!("{}{}", r.stdout, r.stderr).contains("NXDOMAIN"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    let out = c.sh(
        "client",
        "nslookup -type=SRV _peer._tcp.db.default.svc.cluster.local",
    )?;
    assert!(
        out.contains("7000") && out.contains("db-0.db.default.svc.cluster.local"),
        "{out}"
    );

    // Other names go to the node's upstream resolver (the probe), and the answer is cached.
    let upstream = DnsProbe::start_at(
        Path::new("/proc/self/ns/net"),
        (host_ip()?, 53).into(),
        Duration::from_secs(120),
    )?;
    let mut asked = Vec::new();
    let out = eventually("an upstream name", Duration::from_secs(20), || {
        let out = c.sh("client", "nslookup -type=a upstream.lotse.test.");
        asked.extend(upstream.sources());
        let out = out.with_context(|| format!("the upstream saw queries from {asked:?}"))?;
        if !out.contains(PROBE_ANSWER) {
            bail!("no {PROBE_ANSWER} in {out}");
        }
        Ok(out)
    })
    .with_context(|| c.dns_log())?;
    assert!(out.contains(&dns_ip), "answered by the cluster DNS: {out}");
    assert!(!asked.is_empty(), "the upstream was asked");
    let out = c.sh("client", "nslookup -type=a upstream.lotse.test.")?;
    assert!(out.contains(PROBE_ANSWER), "{out}");
    assert!(
        upstream.sources().is_empty(),
        "the second answer came from the cache"
    );

    // Short names through the search path with glibc's resolver, then traffic by name.
    let out = c.sh("glibc", "getent hosts web")?;
    assert!(out.contains(&web_ip), "{out}");
    let out = c.sh("glibc", "getent hosts db-0.db")?;
    assert!(out.contains(&db_ip), "{out}");
    let out = c.sh(
        "glibc",
        "timeout 10 bash -c 'exec 3<>/dev/tcp/web/80; printf \"GET / HTTP/1.0\\r\\nHost: web\\r\\n\\r\\n\" >&3; cat <&3'",
    )?;
    assert!(out.contains("hello-from-web"), "{out}");
    let out = c.sh("client", "nslookup kubernetes.default.svc.cluster.local")?;
    let api_ip = k.ok(&[
        "get",
        "svc",
        "kubernetes",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    assert!(out.contains(&api_ip), "{out}");

    // A deleted Service is gone from DNS at once (the view follows the watch).
    k.ok(&["delete", "svc", "web"])?;
    let deleted = Instant::now();
    eventually("deleted Service NXDOMAIN", Duration::from_secs(5), || {
        let r = k.run(&[
            "exec",
            "client",
            "--",
            "nslookup",
            "web.default.svc.cluster.local",
        ])?;
        if !r.stdout.contains("NXDOMAIN") {
            bail!("{} {}", r.stdout, r.stderr);
        }
        Ok(())
    })?;
    eprintln!(
        "deleted Service answered NXDOMAIN after {:?} (kubectl exec included)",
        deleted.elapsed()
    );

    // NetworkPolicies as written for Kubernetes: default-deny egress, plus DNS to the kube-dns
    // pods in kube-system for the pods labelled dns=allowed.
    k.ok_stdin(&["apply", "-f", "-"], NETPOL)?;
    k.ok(&[
        "-n",
        "dns-policy",
        "wait",
        "--for=condition=Ready",
        "pod",
        "--all",
        "--timeout=60s",
    ])
    .with_context(|| c.log())?;
    let probe = |pod: &'static str| {
        let k = k.clone();
        std::thread::spawn(move || {
            k.run(&[
                "-n",
                "dns-policy",
                "exec",
                pod,
                "--",
                "timeout",
                "4",
                "nslookup",
                "kubernetes.default.svc.cluster.local",
            ])
        })
    };
    // Policies take effect within a second; the allowed pod resolves at once after that.
    std::thread::sleep(Duration::from_secs(1));
    let (allowed, denied) = (probe("allowed"), probe("denied"));
    let allowed = allowed
        .join()
        .map_err(|_| anyhow::anyhow!("probe panicked"))??;
    let denied = denied
        .join()
        .map_err(|_| anyhow::anyhow!("probe panicked"))??;
    assert!(
        allowed.code == 0 && allowed.stdout.contains(&api_ip),
        "egress to k8s-app=kube-dns admits DNS: {} {}",
        allowed.stdout,
        allowed.stderr
    );
    assert!(
        denied.code != 0 && !denied.stdout.contains(&api_ip),
        "default-deny egress blocks DNS: {} {}",
        denied.stdout,
        denied.stderr
    );
    eprintln!("[{:?}] done", t0.elapsed());
    Ok(())
}
