//! Services carry traffic on a one-node `lotse up` (issue 13, point 4): the node network agent's
//! nftables rules checked with real packets, driven by the real kubectl.
//!
//! ClusterIP from a pod and from the host with random load balancing over three pods, NodePort
//! on the node address, a Service without endpoints refused at once, hairpin, ClientIP session
//! affinity, LoadBalancer through the built-in service load balancer, scaling that changes the
//! rules, pod egress to the host, the `kubernetes` Service from a pod with its projected token,
//! and an established connection through a ClusterIP surviving a restart of `lotse up` (and so
//! of the agent).
//!
//! Needs root, containerd, runc, containernetworking-plugins, nftables, the built binaries
//! (`cargo build --workspace --bins`) and the busybox and pause images
//! (`target/debug/lotse images build --output target/lotse-images busybox pause`).
//! Each run uses its own Service range and nftables table, so clusters left on the machine by
//! other runs cannot answer for its ClusterIPs.
use std::collections::BTreeSet;
use std::io::{BufRead, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::lotse::{Lotse, http_get, node_ready_args, random_pod_cidr, require_images, wait_for};
use e2e::{Kubectl, eventually, step};

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
      containers:
      - name: web
        image: busybox
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: lb}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{name: http, port: 8081, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: lb-local}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: web}
  ports: [{name: http, port: 8082, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: lb-local-empty}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: none-such}
  ports: [{name: http, port: 8083, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: nothing}
spec:
  selector: {app: none-such}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: solo, labels: {app: solo}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: solo
    image: busybox
    command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
---
apiVersion: v1
kind: Service
metadata: {name: solo}
spec:
  selector: {app: solo}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: echo, labels: {app: echo}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: busybox
    command: ["nc", "-ll", "-p", "7000", "-e", "cat"]
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{port: 7000}]
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
        let table = format!("lotse-e2e-{}", std::process::id());
        let args: Vec<String> = [
            "--data-dir",
            &data.to_string_lossy(),
            "--secure-port",
            &e2e::free_port()?.to_string(),
            "--kubelet-port",
            &e2e::free_port()?.to_string(),
            "--node-name",
            "svc-node",
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
            &node_ready_args("svc-node"),
            "node Ready",
            Duration::from_secs(30),
            |s| s.trim() == "True",
        )
        .with_context(|| lotse.log())?;
        Ok(Cluster {
            lotse: Some(lotse),
            k,
            args,
            data,
            table,
        })
    }

    fn get(&self, what: &[&str], jsonpath: &str) -> anyhow::Result<String> {
        let jp = format!("jsonpath={jsonpath}");
        let mut args = vec!["get"];
        args.extend(what);
        args.extend(["-o", &jp]);
        self.k.ok(&args)
    }

    fn cluster_ip(&self, svc: &str) -> anyhow::Result<String> {
        self.get(&["svc", svc], "{.spec.clusterIP}")
    }

    /// `kubectl exec <pod> -- sh -c <script>`: stdout, or the error with both streams.
    fn sh(&self, pod: &str, script: &str) -> anyhow::Result<String> {
        self.k.ok(&["exec", pod, "--", "sh", "-c", script])
    }

    /// `wget -q -O- http://ip:port/` from `pod` (5 s timeout; busybox 1.35's `wget -T`
    /// segfaults, so the `timeout` applet bounds it).
    fn wget(&self, pod: &str, ip: &str, port: u16) -> anyhow::Result<String> {
        Ok(self
            .sh(pod, &format!("timeout 5 wget -q -O- http://{ip}:{port}/"))?
            .trim()
            .to_string())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The agent leaves its rules in place when it stops (as kube-proxy); this run's table
        // goes with the run, once lotse up (deleting its pods first) has stopped.
        drop(self.lotse.take());
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "ip", &self.table])
            .status();
    }
}

/// The body of an HTTP/1.0 response.
fn body(resp: &str) -> String {
    resp.split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Lists the pods of `default` through `https://<api_ip>:443` with `token` (kube-rs, the
/// cluster CA as the only trust anchor).
fn list_pods_as(data: &Path, api_ip: &str, token: &str) -> anyhow::Result<Vec<String>> {
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "pod",
        "clusters": [{"name": "svc", "cluster": {
            "server": format!("https://{api_ip}:443"),
            "certificate-authority": data.join("pki/ca.crt"),
        }}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "pod", "context": {"cluster": "svc", "user": "sa", "namespace": "default"}}],
    });
    let path = data.join("pod-token.kubeconfig");
    std::fs::write(&path, serde_json::to_vec(&kubeconfig)?)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&path)?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        let client = kube::Client::try_from(cfg)?;
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(client, "default");
        let list = pods.list(&Default::default()).await?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect())
    })
}

fn pod_names(k: &Kubectl) -> anyhow::Result<BTreeSet<String>> {
    Ok(k.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "--field-selector=status.phase=Running",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])?
    .split_whitespace()
    .map(str::to_string)
    .collect())
}

#[test]
#[ignore = "needs containerd, nftables, root"]
fn services_carry_traffic_on_one_node() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut c = Cluster::start(tmp.path())?;
    let result = traffic(&mut c);
    if result.is_err() {
        let log = c.lotse.as_ref().map(Lotse::log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        eprintln!("--- lotse.log (last lines) ---");
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
        let _ =
            c.k.run(&["get", "pods,endpointslices,svc", "-o", "wide"])
                .map(|o| eprintln!("{}", o.stdout));
    }
    result
}

fn traffic(c: &mut Cluster) -> anyhow::Result<()> {
    let t0 = Instant::now();
    c.k.ok_stdin(&["apply", "-f", "-"], WEB)?;
    c.k.ok(&[
        "wait",
        "--for=condition=Available",
        "deployment/web",
        "--timeout=90s",
    ])?;
    c.k.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "pod/solo",
        "pod/echo",
        "--timeout=60s",
    ])?;
    eprintln!("workloads ready after {:?}", t0.elapsed());
    let pods = pod_names(&c.k)?;
    assert_eq!(pods.len(), 3, "{pods:?}");
    let web_ip = c.cluster_ip("web")?;
    let node_ip = c.get(
        &["node", "svc-node"],
        "{.status.addresses[?(@.type==\"InternalIP\")].address}",
    )?;

    // ClusterIP from a pod: random load balancing reaches every ready pod.
    let mut seen = BTreeSet::new();
    eventually("ClusterIP from a pod", Duration::from_secs(20), || {
        for _ in 0..30 {
            seen.insert(c.wget("client", &web_ip, 80)?);
            if seen == pods {
                break;
            }
        }
        Ok(())
    })?;
    assert_eq!(seen, pods, "30 requests through the ClusterIP");

    step(t0, "The agent's Starting event on the Node");
    wait_for(
        &c.k,
        &[
            "get",
            "events",
            "-A",
            "-o",
            "jsonpath={range .items[*]}{.involvedObject.kind}|{.reason}|{.message}{\"\\n\"}{end}",
        ],
        "the agent's Starting event",
        Duration::from_secs(15),
        |s| {
            s.lines()
                .any(|l| l == "Node|Starting|Starting lotse-agent.")
        },
    )?;

    step(t0, "ClusterIP and NodePort from the host");
    // ClusterIP and NodePort from the host.
    let from_host = body(&http_get(&web_ip, 80)?);
    assert!(pods.contains(&from_host), "{from_host:?}");
    let node_port: u16 = c
        .get(&["svc", "web"], "{.spec.ports[0].nodePort}")?
        .parse()?;
    let via_node_port = body(&http_get(&node_ip, node_port)?);
    assert!(pods.contains(&via_node_port), "{via_node_port:?}");

    step(t0, "A Service without endpoints refuses at once");
    // A Service without endpoints refuses at once, from the host and from a pod.
    let nothing = c.cluster_ip("nothing")?;
    let t = Instant::now();
    let err = TcpStream::connect_timeout(&format!("{nothing}:80").parse()?, Duration::from_secs(3))
        .err()
        .context("a Service without endpoints accepted a connection")?;
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "refused after {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let out = c.k.run(&[
        "exec",
        "client",
        "--",
        "timeout",
        "5",
        "wget",
        "-q",
        "-O-",
        &format!("http://{nothing}/"),
    ])?;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("refused"), "{}", out.stderr);
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "pod refused after {:?}",
        t.elapsed()
    );

    step(t0, "Hairpin");
    // Hairpin: a pod reaches itself through its own Service.
    let solo_ip = c.cluster_ip("solo")?;
    assert_eq!(c.wget("solo", &solo_ip, 80)?, "solo");

    step(t0, "Selector-less Service with a hand-made EndpointSlice");
    let solo_pod_ip = c.get(&["pod", "solo"], "{.status.podIP}")?;
    c.k.ok_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: manual}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: manual-1, labels: {{kubernetes.io/service-name: manual}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints: [{{addresses: [{solo_pod_ip}]}}]\n"
        ),
    )?;
    let manual_ip = c.cluster_ip("manual")?;
    eventually("selector-less Service", Duration::from_secs(10), || {
        let got = c.wget("client", &manual_ip, 80)?;
        if got != "solo" {
            bail!("{got}");
        }
        Ok(())
    })?;

    step(t0, "ClientIP session affinity");
    // ClientIP session affinity: one client always lands on the same pod.
    let sticky_ip = c.cluster_ip("sticky")?;
    let first = c.wget("client", &sticky_ip, 80)?;
    for _ in 0..8 {
        assert_eq!(c.wget("client", &sticky_ip, 80)?, first, "affinity broken");
    }

    step(t0, "LoadBalancer");
    // LoadBalancer: the built-in service load balancer publishes the node address, and the
    // Service port answers there.
    let ingress = wait_for(
        &c.k,
        &[
            "get",
            "svc",
            "lb",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[*].ip}",
        ],
        "LoadBalancer ingress",
        Duration::from_secs(15),
        |s| !s.trim().is_empty(),
    )?;
    assert_eq!(ingress.trim(), node_ip);
    let via_lb = body(&http_get(&node_ip, 8081)?);
    assert!(pods.contains(&via_lb), "{via_lb:?}");

    step(t0, "health check node ports");
    // externalTrafficPolicy: Local on a LoadBalancer: the apiserver allocates a
    // healthCheckNodePort and the node answers kube-proxy's health check on it: 200 with the
    // number of local ready endpoints, 503 without any.
    for (svc, want_status, want_count) in [
        ("lb-local", "200", pods.len()),
        ("lb-local-empty", "503", 0),
    ] {
        let hc: u16 = c
            .get(&["svc", svc], "{.spec.healthCheckNodePort}")?
            .trim()
            .parse()
            .with_context(|| format!("{svc} has no healthCheckNodePort"))?;
        assert!((30000..=32767).contains(&hc), "{svc}: {hc}");
        let resp = eventually("health check node port", Duration::from_secs(10), || {
            let r = http_get(&node_ip, hc)?;
            if !r.starts_with(&format!("HTTP/1.0 {want_status}")) {
                bail!("{r}");
            }
            Ok(r)
        })?;
        let lower = resp.to_lowercase();
        assert!(
            lower.contains(&format!("x-load-balancing-endpoint-weight: {want_count}"))
                && resp.contains(&format!("\"name\": \"{svc}\""))
                && resp.contains(&format!("\"localEndpoints\": {want_count}")),
            "{resp}"
        );
    }

    step(t0, "Pod egress to the host");
    // Pod egress to the host (not masqueraded: the host is not outside the cluster's reach).
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    let port = listener.local_addr()?.port();
    let script = format!("echo hello | nc -w 3 {node_ip} {port}");
    let egress = std::thread::spawn({
        let k = c.k.clone();
        move || k.run(&["exec", "client", "--", "sh", "-c", &script])
    });
    listener.set_nonblocking(true)?;
    let (conn, peer) = eventually("pod egress to the host", Duration::from_secs(10), || {
        Ok(listener.accept()?)
    })?;
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut got = String::new();
    std::io::BufReader::new(&conn).read_line(&mut got)?;
    // busybox nc waits for the peer to close after its stdin ends.
    drop(conn);
    let _ = egress.join();
    assert_eq!(got.trim(), "hello");
    let client_ip = c.get(&["pod", "client"], "{.status.podIP}")?;
    assert_eq!(
        peer.ip().to_string(),
        client_ip,
        "pod traffic to the host keeps its source"
    );

    step(t0, "The kubernetes Service from a pod");
    // The kubernetes Service from a pod: a TLS server answers on its ClusterIP (busybox's TLS
    // client and the apiserver's ECDSA certificate share no signature scheme, so the pod's
    // wget ends in a handshake alert: that alert comes from the apiserver). The pod's projected
    // token then lists the pods through the same ClusterIP with a kube-rs client on the host,
    // verifying the serving certificate for the ClusterIP.
    c.k.ok(&[
        "create",
        "rolebinding",
        "default-view",
        "--clusterrole=view",
        "--serviceaccount=default:default",
    ])?;
    let api_ip = c.cluster_ip("kubernetes")?;
    let out = c.k.run(&[
        "exec",
        "client",
        "--",
        "timeout",
        "8",
        "wget",
        "-q",
        "-O-",
        "--no-check-certificate",
        &format!("https://{api_ip}:443/version"),
    ])?;
    assert!(
        out.stdout.contains("gitVersion") || out.stderr.contains("TLS error from peer"),
        "no TLS server behind the kubernetes Service: {out:?}"
    );
    let token = c.k.ok(&[
        "exec",
        "client",
        "--",
        "cat",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
    ])?;
    let names = list_pods_as(&c.data, &api_ip, token.trim())?;
    assert!(names.contains(&"client".to_string()), "{names:?}");

    step(t0, "Scaling changes the rules");
    // Scaling changes the rules: one pod left, only it answers; back to three.
    c.k.ok(&["scale", "deployment/web", "--replicas=1"])?;
    let one = eventually("scaled to one", Duration::from_secs(30), || {
        let left = pod_names(&c.k)?;
        let eps = c.get(
            &["endpointslices", "-l", "kubernetes.io/service-name=web"],
            "{.items[*].endpoints[*].addresses[0]}",
        )?;
        if left.len() != 1 || eps.split_whitespace().count() != 1 {
            bail!("{left:?} / {eps}");
        }
        Ok(left)
    })?;
    let t = Instant::now();
    eventually(
        "rules follow the scale-down",
        Duration::from_secs(10),
        || {
            for _ in 0..6 {
                let got = c.wget("client", &web_ip, 80)?;
                if !one.contains(&got) {
                    bail!("{got} answered after the scale-down");
                }
            }
            Ok(())
        },
    )?;
    eprintln!(
        "scale-down visible in the rules {:?} after the EndpointSlice",
        t.elapsed()
    );

    step(t0, "An established connection through a ClusterIP");
    // An established connection through a ClusterIP survives a restart of lotse up (and so of
    // the agent, which replaces its table atomically at start).
    let echo_ip = c.cluster_ip("echo")?;
    let mut conn =
        TcpStream::connect_timeout(&format!("{echo_ip}:7000").parse()?, Duration::from_secs(3))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut echo = |msg: &str| -> anyhow::Result<String> {
        conn.write_all(msg.as_bytes())?;
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).to_string())
    };
    assert_eq!(echo("before\n")?, "before\n");
    if let Some(l) = c.lotse.as_mut() {
        l.stop()?;
    }
    assert_eq!(echo("while down\n")?, "while down\n");
    c.lotse = Some(Lotse::start(&c.data, &c.args)?);
    wait_for(
        &c.k,
        &node_ready_args("svc-node"),
        "node Ready after restart",
        Duration::from_secs(30),
        |s| s.trim() == "True",
    )?;
    // The agent has synced again when the new table holds the echo Service.
    eventually(
        "agent synced after restart",
        Duration::from_secs(20),
        || {
            let out = std::process::Command::new("nft")
                .args(["list", "table", "ip", &c.table])
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            if !text.contains("service-default/echo/tcp/") {
                bail!("no echo rules yet");
            }
            Ok(())
        },
    )?;
    assert_eq!(echo("after\n")?, "after\n");
    // New connections after the restart (the kubelet may still be adopting its pods).
    eventually(
        "new connections after the restart",
        Duration::from_secs(30),
        || {
            let got = c.wget("client", &web_ip, 80)?;
            if !one.contains(&got) {
                bail!("{got} answered");
            }
            Ok(())
        },
    )?;
    eprintln!("whole test {:?}", t0.elapsed());
    let _ = c.k.run(&[
        "delete",
        "deployment,pod",
        "--all",
        "--grace-period=1",
        "--wait=true",
        "--timeout=60s",
    ]);
    Ok(())
}

/// Bad Services get Kubernetes' own errors from the apiserver (no dataplane needed): a NodePort
/// already taken, a NodePort outside 30000-32767, a ClusterIP outside the Service range, a port
/// out of range; a selector-less Service keeps the EndpointSlices written by hand.
#[tokio::test(flavor = "multi_thread")]
async fn bad_services_get_kubernetes_errors() -> anyhow::Result<()> {
    let server = e2e::ApiServer::start(e2e::Backend::Sqlite).await?;
    let k = server.kubectl(33);
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        let svc = |name: &str, spec: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {spec}\n")
        };
        k.ok_stdin(
            &["create", "-f", "-"],
            &svc(
                "a",
                "{type: NodePort, ports: [{port: 80, nodePort: 30080}]}",
            ),
        )?;
        let taken = k
            .run_stdin(
                &["create", "-f", "-"],
                &svc(
                    "b",
                    "{type: NodePort, ports: [{port: 80, nodePort: 30080}]}",
                ),
            )?
            .failure()?
            .stderr;
        assert!(
            taken.contains("The Service \"b\" is invalid: spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"),
            "{taken}"
        );
        let outside = k
            .run_stdin(
                &["create", "-f", "-"],
                &svc("c", "{type: NodePort, ports: [{port: 80, nodePort: 8080}]}"),
            )?
            .failure()?
            .stderr;
        assert!(
            outside.contains("spec.ports[0].nodePort: Invalid value: 8080: provided port is not in the valid range. The range of valid ports is 30000-32767"),
            "{outside}"
        );
        let ip = k
            .run_stdin(
                &["create", "-f", "-"],
                &svc("d", "{clusterIP: 10.0.0.5, ports: [{port: 80}]}"),
            )?
            .failure()?
            .stderr;
        assert!(
            ip.contains("The Service \"d\" is invalid: spec.clusterIPs")
                && ip.contains("failed to allocate IP 10.0.0.5: the provided IP (10.0.0.5) is not in the valid range. The range of valid IPs is 10.96.0.0/12"),
            "{ip}"
        );
        let port = k
            .run_stdin(
                &["create", "-f", "-"],
                &svc("e", "{ports: [{port: 70000}]}"),
            )?
            .failure()?
            .stderr;
        assert!(
            port.contains(
                "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"
            ),
            "{port}"
        );
        // Selector-less: the endpoints controller leaves hand-made EndpointSlices alone.
        k.ok_stdin(
            &["create", "-f", "-"],
            &svc("manual", "{ports: [{name: http, port: 80}]}"),
        )?;
        k.ok_stdin(
            &["create", "-f", "-"],
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: manual-1, labels: {kubernetes.io/service-name: manual}}\naddressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}]\nendpoints: [{addresses: [192.0.2.77]}]\n",
        )?;
        let eps = k.ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=manual",
            "-o",
            "jsonpath={.items[*].endpoints[*].addresses[0]}",
        ])?;
        assert_eq!(eps.trim(), "192.0.2.77");
        Ok(())
    })
}
