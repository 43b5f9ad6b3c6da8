//! The whole `lotse up` stack (apiserver, controllers, scheduler, kubelet on containerd) running
//! workloads and surviving faults, driven with the real kubectl: a 3-replica Deployment becomes
//! Running and Ready with pod IPs that answer HTTP 200; a bad command gives `RunContainerError`
//! (then CrashLoopBackOff with lastState `StartError`), a configMap volume whose ConfigMap is
//! absent keeps its pod in `ContainerCreating` with a `FailedMount` event until it appears —
//! neither blocks the Deployment; containerd killed with -9 turns the Node NotReady with a
//! reason, is restarted by the kubelet and the running pods carry on; deleting the Deployment
//! leaves nothing in containerd.
//!
//! Needs what `kubelet_node.rs` needs (root, containerd, runc, built binaries, busybox and pause
//! images). With `nginx.tar` in the images directory (`lotse images build nginx`) the Deployment
//! runs the real nginx; otherwise busybox's httpd serves the page (said on stdout).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::Kubectl;
use e2e::lotse::{Node, containers_in, http_get, images_dir, node_ready_args, wait_for};

fn deployment(nginx: bool) -> String {
    let container = if nginx {
        "{name: web, image: nginx, ports: [{containerPort: 80}], readinessProbe: {httpGet: {path: /, port: 80}, periodSeconds: 1}}".to_string()
    } else {
        "{name: web, image: busybox, command: [sh, -c, 'mkdir -p /www && echo welcome > /www/index.html && exec httpd -f -p 80 -h /www'], ports: [{containerPort: 80}], readinessProbe: {httpGet: {path: /, port: 80}, periodSeconds: 1}}".to_string()
    };
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{container}]
---
apiVersion: v1
kind: Pod
metadata: {{name: badcmd}}
spec:
  terminationGracePeriodSeconds: 1
  containers: [{{name: c, image: busybox, command: ["/no/such/binary"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: nocm}}
spec:
  terminationGracePeriodSeconds: 1
  containers: [{{name: c, image: busybox, command: [sleep, "3600"], volumeMounts: [{{name: v, mountPath: /v}}]}}]
  volumes: [{{name: v, configMap: {{name: late}}}}]
"#
    )
}

#[test]
#[ignore = "needs containerd and runc (root), built binaries and images (lotse images build)"]
fn deployment_faults_and_cleanup_on_containerd() -> anyhow::Result<()> {
    let images = images_dir();
    let nginx = images.join("nginx.tar").is_file();
    let mut wanted = vec!["busybox.tar", "pause.tar"];
    if nginx {
        wanted.push("nginx.tar");
    } else {
        println!(
            "nginx.tar not in {}: busybox httpd stands in",
            images.display()
        );
    }
    let tmp = tempfile::tempdir()?;
    let node = "e2e-wl";
    let Node {
        mut lotse,
        kubectl: k,
        data,
        started: t0,
        ..
    } = Node::start(tmp.path(), node, "10.244.232.0/24", &wanted)?;
    // The default ServiceAccount comes from the controllers; pods are refused without it.
    wait_for(
        &k,
        &["get", "serviceaccount", "default", "-o", "name"],
        "default ServiceAccount",
        Duration::from_secs(20),
        |s| !s.trim().is_empty(),
    )?;

    // Watch the bad-command pod's waiting reasons from before it exists.
    let bad_watch = k.spawn(
        &[
            "get",
            "pods",
            "--field-selector",
            "metadata.name=badcmd",
            "-w",
            "-o",
            "jsonpath={.status.containerStatuses[0].state.waiting.reason}{\"\\n\"}",
        ],
        tmp.path(),
    )?;
    k.run_stdin(&["apply", "-f", "-"], &deployment(nginx))?
        .success()?;

    // 3 replicas Running and Ready, each with a pod IP that answers HTTP 200.
    wait_for(
        &k,
        &[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ],
        "3 ready replicas",
        Duration::from_secs(40),
        |s| s.trim() == "3",
    )
    .with_context(|| lotse.log())?;
    println!("Deployment ready {:?} after start", t0.elapsed());
    let ips = k
        .run(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.status.phase} {.status.podIP}{\"\\n\"}{end}",
        ])?
        .success()?
        .stdout;
    let ips: Vec<&str> = ips
        .lines()
        .filter_map(|l| l.strip_prefix("Running "))
        .collect();
    assert_eq!(ips.len(), 3, "pods: {ips:?}");
    for ip in &ips {
        assert!(
            ip.starts_with("10.244.232."),
            "pod IP {ip} outside the podCIDR"
        );
        let answer = http_get(ip, 80)?;
        assert!(
            answer.starts_with("HTTP/1.") && answer.contains(" 200 "),
            "HTTP from {ip}: {answer}"
        );
    }

    println!("3 replicas serving done at {:?}", t0.elapsed());
    // A bad command: RunContainerError, then CrashLoopBackOff with lastState StartError.
    let (seen, out) = bad_watch.wait_for(Duration::from_secs(20), |s| {
        s.contains("RunContainerError") && s.contains("CrashLoopBackOff")
    });
    assert!(seen, "badcmd waiting reasons: {out}");
    let last = k
        .run(&[
            "get",
            "pod",
            "badcmd",
            "-o",
            "jsonpath={.status.containerStatuses[0].lastState.terminated.reason}/{.status.containerStatuses[0].lastState.terminated.exitCode}",
        ])?
        .stdout;
    assert_eq!(last, "StartError/128");

    println!("bad command done at {:?}", t0.elapsed());
    // A configMap volume whose ConfigMap is absent: ContainerCreating and FailedMount, until it
    // is created.
    let nocm = k
        .run(&[
            "get",
            "pod",
            "nocm",
            "-o",
            "jsonpath={.status.phase}/{.status.containerStatuses[0].state.waiting.reason}",
        ])?
        .stdout;
    assert_eq!(nocm, "Pending/ContainerCreating");
    let events = k
        .run(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=nocm",
            "-o",
            "jsonpath={.items[*].reason}",
        ])?
        .stdout;
    assert!(events.contains("FailedMount"), "events: {events}");
    k.run(&["create", "configmap", "late", "--from-literal=k=v"])?
        .success()?;
    wait_for(
        &k,
        &["get", "pod", "nocm", "-o", "jsonpath={.status.phase}"],
        "nocm Running once its ConfigMap exists",
        Duration::from_secs(20),
        |s| s == "Running",
    )?;

    println!("absent ConfigMap done at {:?}", t0.elapsed());
    // containerd dies: the Node goes NotReady with a reason, the kubelet restarts containerd,
    // the Node is Ready again, running pods are untouched and new pods start.
    let node_watch = k.spawn(
        &[
            "get",
            "node",
            node,
            "-w",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.status.conditions[?(@.type==\"Ready\")].reason} {.status.conditions[?(@.type==\"Ready\")].message}{\"\\n\"}",
        ],
        tmp.path(),
    )?;
    let web_ids = |k: &Kubectl| -> anyhow::Result<String> {
        Ok(k.run(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].status.containerStatuses[0].containerID}",
        ])?
        .stdout)
    };
    let before = web_ids(&k)?;
    let pid = std::fs::read_to_string(data.join("kubelet/containerd/containerd.pid"))?;
    Command::new("kill").args(["-KILL", pid.trim()]).status()?;
    let (seen, out) = node_watch.wait_for(Duration::from_secs(15), |s| {
        s.contains("False KubeletNotReady container runtime is down")
    });
    assert!(seen, "Ready condition while containerd is down: {out}");
    wait_for(
        &k,
        &node_ready_args(node),
        "node Ready after containerd restart",
        Duration::from_secs(20),
        |s| s.trim() == "True",
    )?;
    k.run(&["scale", "deployment", "web", "--replicas=4"])?
        .success()?;
    wait_for(
        &k,
        &[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ],
        "4 ready replicas after containerd came back",
        Duration::from_secs(30),
        |s| s.trim() == "4",
    )?;
    let after = web_ids(&k)?;
    for id in before.split_whitespace() {
        assert!(after.contains(id), "container {id} was replaced: {after}");
    }

    println!("containerd restart done at {:?}", t0.elapsed());
    // Deleting everything leaves nothing in containerd.
    k.run(&["delete", "deployment", "web"])?.success()?;
    k.run(&["delete", "pod", "badcmd", "nocm", "--grace-period=1"])?
        .success()?;
    let t_del = Instant::now();
    while !containers_in(&data)?.is_empty() && t_del.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        containers_in(&data)?,
        Vec::<String>::new(),
        "containers left behind"
    );
    println!("cleanup done at {:?}", t0.elapsed());
    let pods = k.run(&["get", "pods", "-o", "name"])?.stdout;
    assert_eq!(pods.trim(), "", "pods left");
    lotse.stop()?;
    Ok(())
}
