//! Three nodes with the VXLAN backend (`lotse up --nodes 3 --flannel-backend vxlan`), and a
//! node cut off from the others. Checked with traffic and the real kubectl:
//!
//! - VXLAN: every node routes the other nodes' podCIDRs through `lotse.vxlan` (VNI 1, UDP 8472),
//!   and pods reach pods on every other node through it. Then a fourth node joins (`lotse
//!   join`, as from another machine) from an underlay of its own, 10.214.0.0/24 behind a router
//!   namespace (so it is not on-link for the others, which host-gw would need), and pods on
//!   the first nodes reach its pod through the tunnel.
//! - Link cut (`ip link set lotse-ul3 down` on the host): the node goes NotReady (Unknown) after
//!   `--node-monitor-grace-period` (16 s here), its pod with a 2 s `tolerationSeconds` for
//!   `node.kubernetes.io/unreachable` is replaced on another node; with the link back the node
//!   is Ready again, its old pod goes, the replacement stays where it is, and the node takes
//!   new pods.
//!
//! Takes about 85 s.
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::lotse::wait_for;
use e2e::multinode::{Cluster, NODES, eventually, step};

/// One pod that tolerates an unreachable or not-ready node for 2 s only.
const CUT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: cut}
spec:
  replicas: 1
  selector: {matchLabels: {app: cut}}
  template:
    metadata: {labels: {app: cut}}
    spec:
      terminationGracePeriodSeconds: 1
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      containers:
      - name: web
        image: busybox
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
"#;

/// One pod per node, for pod-to-pod traffic over VXLAN (a page of 512 KiB: full-size packets
/// must get through the tunnel's smaller MTU).
const SPREAD: &str = r#"
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
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && dd if=/dev/zero of=/www/big bs=1024 count=512 && exec httpd -f -p 8080 -h /www"]
"#;

/// The node behind the router.
const FAR: &str = "mn-far";

/// A pod on the far node.
const FAR_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: far, labels: {app: far}}
spec:
  nodeName: mn-far
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: busybox
    command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
"#;

/// A node on an underlay of its own: network namespace `lotse-far<id>` (10.214.0.2/24), linked
/// to a router namespace `lotse-rt<id>` (10.214.0.1/24) whose other leg is on the cluster's
/// underlay bridge (10.213.0.254/24); the host routes 10.214.0.0/24 through the router, the
/// other nodes reach it through the host. In it runs `lotse join` with a token from `lotse
/// token create --print-join-command`. Stopped and unwired on drop.
struct FarNode {
    child: std::process::Child,
    router: String,
    node: String,
    log: std::path::PathBuf,
}

impl FarNode {
    fn join(c: &Cluster, tmp: &std::path::Path) -> anyhow::Result<FarNode> {
        let id = std::process::id() % 100_000;
        let (router, node) = (format!("lotse-rt{id}"), format!("lotse-far{id}"));
        let bridge_leg = format!("lotse-r{id}");
        ip(&["netns", "add", &router])?;
        ip(&["netns", "add", &node])?;
        let mut far = FarNode {
            child: Command::new("true").spawn()?,
            router: router.clone(),
            node: node.clone(),
            log: tmp.join("far.log"),
        };
        ip(&[
            "link",
            "add",
            &bridge_leg,
            "type",
            "veth",
            "peer",
            "name",
            "up0",
            "netns",
            &router,
        ])?;
        ip(&["link", "set", &bridge_leg, "master", "lotse-ul", "up"])?;
        ip(&[
            "-n",
            &router,
            "addr",
            "add",
            "10.213.0.254/24",
            "dev",
            "up0",
        ])?;
        ip(&[
            "-n", &router, "link", "add", "down0", "type", "veth", "peer", "name", "eth0", "netns",
            &node,
        ])?;
        ip(&[
            "-n",
            &router,
            "addr",
            "add",
            "10.214.0.1/24",
            "dev",
            "down0",
        ])?;
        for (ns, dev) in [
            (&router, "up0"),
            (&router, "down0"),
            (&router, "lo"),
            (&node, "eth0"),
            (&node, "lo"),
        ] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        let fwd = Command::new("ip")
            .args([
                "netns",
                "exec",
                &router,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .status()?;
        if !fwd.success() {
            bail!("enabling forwarding in the router namespace");
        }
        ip(&["-n", &node, "addr", "add", "10.214.0.2/24", "dev", "eth0"])?;
        ip(&["-n", &node, "route", "add", "default", "via", "10.214.0.1"])?;
        ip(&["route", "replace", "10.214.0.0/24", "via", "10.213.0.254"])?;

        let lotse = e2e::bin_dir().join("lotse");
        let out = Command::new(&lotse)
            .args(["token", "create", "--print-join-command", "--data-dir"])
            .arg(&c.data)
            .output()?;
        let line = String::from_utf8_lossy(&out.stdout).to_string();
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(
            [
                "lotse",
                "join",
                server,
                "--token",
                token,
                "--discovery-token-ca-cert-hash",
                hash,
            ],
        ) = words
            .get(..7)
            .map(|w| <[&str; 7]>::try_from(w).unwrap_or_default())
        else {
            bail!(
                "lotse token create --print-join-command: {line}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let dir = tmp.join("far");
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(&far.log)?;
        // nsenter keeps the host's mount namespace, as `lotse up --nodes` runs its nodes.
        far.child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{node}"))
            .arg(&lotse)
            .args([
                "join",
                server,
                "--token",
                token,
                "--discovery-token-ca-cert-hash",
                hash,
            ])
            .arg("--data-dir")
            .arg(&dir)
            .args([
                "--node-name",
                FAR,
                "--cgroup-root",
                "/lotse/mn-far",
                "--no-install",
            ])
            .arg("--images-dir")
            .arg(c.data.join("kubelet/images"))
            .args(["--nftables-table", &c.table, "--flannel-backend", "vxlan"])
            .args(["--cluster-dns", "10.150.0.10"])
            // As e2e's `lotse up`: the machine's shared disk must not make image GC remove
            // the test's images.
            .env("LOTSE_IMAGE_GC_HIGH_THRESHOLD", "100")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(far)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for FarNode {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t0 = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && t0.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = ip(&["route", "del", "10.214.0.0/24"]);
        // The veth pairs go with the namespaces.
        let _ = ip(&["netns", "del", &self.node]);
        let _ = ip(&["netns", "del", &self.router]);
    }
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Brings node 3's underlay link back up even when the test fails half-way.
struct LinkBack;

impl Drop for LinkBack {
    fn drop(&mut self) {
        let _ = ip(&["link", "set", "lotse-ul3", "up"]);
    }
}

#[test]
#[ignore = "needs root, containerd, runc, nft and network namespaces: starts three nodes"]
fn vxlan_carries_pods_and_a_cut_off_node_loses_then_takes_pods() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir()?;
    let c = Cluster::start(
        tmp.path(),
        &[
            "--flannel-backend",
            "vxlan",
            "--node-monitor-grace-period",
            "16s",
            "--disable-cluster-dns",
        ],
    )?;
    c.wait_ready(Duration::from_secs(180))?;
    step(t0, "three nodes Ready");

    // VXLAN: the routes to the other nodes' pods go through the VXLAN device on every node.
    let cidrs = c.k.ok(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.spec.podCIDR} {end}",
    ])?;
    let cidrs: Vec<(&str, &str)> = cidrs
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect();
    for (k, node) in NODES.iter().enumerate() {
        let ns: Vec<String> = match k {
            0 => vec![],
            _ => vec!["-n".into(), format!("lotse-n{}", k + 1)],
        };
        let details = eventually("the VXLAN device", Duration::from_secs(20), || {
            let mut a: Vec<&str> = ns.iter().map(String::as_str).collect();
            a.extend(["-d", "link", "show", "lotse.vxlan"]);
            ip(&a)
        })?;
        assert!(
            details.contains("vxlan id 1 ") && details.contains("dstport 8472"),
            "{node}: {details}"
        );
        for (other, cidr) in cidrs.iter().filter(|(n, _)| n != node) {
            let route = eventually(
                "a route through the VXLAN device",
                Duration::from_secs(20),
                || {
                    let mut a: Vec<&str> = ns.iter().map(String::as_str).collect();
                    a.extend(["-4", "route", "show", cidr]);
                    let r = ip(&a)?;
                    if !r.contains("dev lotse.vxlan") {
                        bail!("{node} → {other} ({cidr}): {r}");
                    }
                    Ok(r)
                },
            )?;
            assert!(route.contains("onlink"), "{route}");
        }
    }
    c.k.ok_stdin(&["apply", "-f", "-"], SPREAD)?;
    let pods = c.web_pods()?;
    for (from, from_node, _) in &pods {
        for (to, to_node, ip) in pods.iter().filter(|p| &p.1 != from_node) {
            let got = eventually("pod to pod over VXLAN", Duration::from_secs(20), || {
                c.wget(from, ip, 8080)
            })?;
            assert_eq!(&got, to, "{from} ({from_node}) → {to} ({to_node}, {ip})");
            let size = c.sh(
                from,
                &format!("timeout 10 wget -q -O- http://{ip}:8080/big | wc -c"),
            )?;
            assert_eq!(size.trim(), "524288", "{from} → {to}: 512 KiB over VXLAN");
        }
    }
    step(t0, "pod to pod across nodes over VXLAN");

    let far = FarNode::join(&c, tmp.path())?;
    wait_for(
        &c.k,
        &[
            "get",
            "node",
            FAR,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ],
        "the far node Ready",
        Duration::from_secs(90),
        |s| s == "True",
    )
    .with_context(|| far.log())?;
    c.k.ok_stdin(&["apply", "-f", "-"], FAR_POD)?;
    let far_pod = c.running_pods("app=far", 1, Duration::from_secs(90))?;
    let far_cidr =
        c.k.ok(&["get", "node", FAR, "-o", "jsonpath={.spec.podCIDR}"])?;
    let route = ip(&["-4", "route", "show", far_cidr.trim()])?;
    assert!(route.contains("dev lotse.vxlan"), "{route}");
    for (from, from_node, _) in pods.iter().filter(|p| p.1 != NODES[2]) {
        let got = eventually(
            "pod to pod across a router over VXLAN",
            Duration::from_secs(30),
            || c.wget(from, &far_pod[0].2, 8080),
        )
        .with_context(|| far.log())?;
        assert_eq!(
            got, far_pod[0].0,
            "{from} ({from_node}) → the far node's pod"
        );
    }
    c.k.ok(&[
        "delete",
        "pod",
        "-l",
        "app=far",
        "--grace-period=1",
        "--wait=true",
    ])?;
    drop(far);
    c.k.ok(&["delete", "node", FAR])?;
    c.k.ok(&["delete", "deployment", "web", "--wait=false"])?;
    step(t0, "a node behind a router: pod to pod over VXLAN");

    // A pod on mn-3 (the other nodes cordoned while it is placed).
    let cut_node = "mn-3";
    c.k.ok(&["cordon", NODES[0], NODES[1]])?;
    c.k.ok_stdin(&["apply", "-f", "-"], CUT)?;
    let before = c.running_pods("app=cut", 1, Duration::from_secs(60))?;
    assert_eq!(before[0].1, cut_node, "{before:?}");
    c.k.ok(&["uncordon", NODES[0], NODES[1]])?;
    step(t0, "a pod on mn-3");

    // Cut mn-3's underlay link: NotReady (Unknown) after the grace period, the unreachable
    // taint, and the pod replaced on another node after its 2 s toleration.
    let _link_back = LinkBack;
    ip(&["link", "set", "lotse-ul3", "down"])?;
    let cut_at = Instant::now();
    c.wait_each_node("mn-3 NotReady", Duration::from_secs(60), |n, ready| {
        (n == cut_node) == (ready == "Unknown")
    })?;
    eprintln!("mn-3 NotReady {:?} after the cut", cut_at.elapsed());
    let taints = c.k.ok(&[
        "get",
        "node",
        cut_node,
        "-o",
        "jsonpath={.spec.taints[*].key}",
    ])?;
    assert!(
        taints.contains("node.kubernetes.io/unreachable"),
        "{taints}"
    );
    let replaced = eventually("the pod replaced", Duration::from_secs(60), || {
        let p = c.running_pods("app=cut", 1, Duration::from_secs(5))?;
        if p[0].1 == cut_node {
            bail!("still on {cut_node}: {p:?}");
        }
        Ok(p)
    })?;
    eprintln!("replaced {:?} after the cut", cut_at.elapsed());
    assert_ne!(replaced[0].0, before[0].0);
    let old = c.k.ok(&[
        "get",
        "pod",
        &before[0].0,
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ])?;
    assert!(!old.is_empty(), "the old pod is being deleted");
    step(t0, "mn-3 cut off: NotReady, its pod replaced elsewhere");

    // The link back: Ready again, the old pod gone (its kubelet finishes the deletion), the
    // replacement where it was, and mn-3 takes new pods.
    ip(&["link", "set", "lotse-ul3", "up"])?;
    let back_at = Instant::now();
    c.wait_ready(Duration::from_secs(90))?;
    eprintln!(
        "mn-3 Ready {:?} after the link came back",
        back_at.elapsed()
    );
    wait_for(
        &c.k,
        &["get", "pods", "-l", "app=cut", "-o", "name"],
        "the old pod gone",
        Duration::from_secs(60),
        |s| !s.contains(&before[0].0),
    )
    .with_context(|| c.log())?;
    let now = c.running_pods("app=cut", 1, Duration::from_secs(10))?;
    assert_eq!(now[0].0, replaced[0].0, "the replacement stays");
    assert_eq!(now[0].1, replaced[0].1);
    c.k.ok(&[
        "run",
        "after",
        "--image=busybox",
        "--restart=Never",
        "--overrides",
        r#"{"spec":{"nodeSelector":{"kubernetes.io/hostname":"mn-3"},"terminationGracePeriodSeconds":1}}"#,
        "--",
        "sleep",
        "3600",
    ])?;
    let after = c.running_pods("run=after", 1, Duration::from_secs(60))?;
    assert_eq!(after[0].1, cut_node);
    step(t0, "link back: mn-3 Ready and running new pods");
    Ok(())
}
