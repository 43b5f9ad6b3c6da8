//! Container probes and lifecycle hooks on a real containerd, driven through `lotse up` and the
//! real kubectl 1.33: a startup probe holding back liveness and readiness, a startup probe that
//! never succeeds restarting its container, postStart hooks (exec that works, exec that fails),
//! a preStop httpGet reaching another pod's HTTP server, and a preStop sleep delaying deletion.
//!
//! Needs root, Debian's `containerd`, `runc` and `containernetworking-plugins`, the built
//! binaries (`cargo build -p lotse -p kubelet -p cni-plugin --bins`) and the images built by
//! `target/debug/lotse images build --output target/lotse-images busybox pause`
//! (or `$LOTSE_IMAGES_DIR`).
use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::Kubectl;
use e2e::lotse::{Node, delete_all_pods, wait_for};

/// Every container exits at once on SIGTERM (a shell as PID 1 ignores it otherwise), so the
/// deletions below take only as long as their hooks.
const PODS: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: default}
---
apiVersion: v1
kind: Pod
metadata: {name: slow-start}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 8; touch /tmp/ready; while true; do sleep 1; done"]
    startupProbe: {exec: {command: ["test", "-f", "/tmp/ready"]}, periodSeconds: 1, failureThreshold: 30}
    livenessProbe: {exec: {command: ["test", "-f", "/tmp/ready"]}, periodSeconds: 1, failureThreshold: 1}
    readinessProbe: {exec: {command: ["test", "-f", "/tmp/ready"]}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: never-starts}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    startupProbe: {exec: {command: ["false"]}, periodSeconds: 1, failureThreshold: 2}
---
apiVersion: v1
kind: Pod
metadata: {name: post-start}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    lifecycle:
      postStart: {exec: {command: ["sh", "-c", "echo hooked > /tmp/post-start"]}}
---
apiVersion: v1
kind: Pod
metadata: {name: post-start-fails}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    lifecycle:
      postStart: {exec: {command: ["sh", "-c", "echo no >&2; exit 7"]}}
---
apiVersion: v1
kind: Pod
metadata: {name: httpd}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: ["httpd", "-f", "-vv", "-p", "8080", "-h", "/tmp"]
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {tcpSocket: {port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: pre-stop-sleep}
spec:
  terminationGracePeriodSeconds: 20
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    lifecycle:
      preStop: {sleep: {seconds: 4}}
"#;

/// Pod B: its preStop hook calls pod A's HTTP server (named port resolved from B's own ports).
fn pre_stop_http_pod(ip: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: pre-stop-http}}
spec:
  terminationGracePeriodSeconds: 10
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    ports: [{{name: hook, containerPort: 8080}}]
    lifecycle:
      preStop:
        httpGet: {{host: "{ip}", port: hook, path: /prestop-hook, httpHeaders: [{{name: X-Hook, value: pre-stop}}]}}
"#
    )
}

fn jp(pod: &str, path: &str) -> Vec<String> {
    vec![
        "get".into(),
        "pod".into(),
        pod.into(),
        "-o".into(),
        format!("jsonpath={path}"),
    ]
}

fn wait_pod(
    k: &Kubectl,
    pod: &str,
    path: &str,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let args = jp(pod, path);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    wait_for(k, &args, what, timeout, ok)
}

/// Waits up to 30 s for the first container of `pod` to be ready.
fn wait_ready(k: &Kubectl, pod: &str) -> anyhow::Result<String> {
    wait_pod(
        k,
        pod,
        "{.status.containerStatuses[0].ready}",
        &format!("{pod} ready"),
        Duration::from_secs(30),
        |s| s == "true",
    )
}

/// Waits up to 40 s for the first container of `pod` to have restarted at least once.
fn wait_restarted(k: &Kubectl, pod: &str) -> anyhow::Result<String> {
    wait_pod(
        k,
        pod,
        "{.status.containerStatuses[0].restartCount}",
        &format!("{pod} restarted"),
        Duration::from_secs(40),
        |s| s.parse::<i32>().unwrap_or(0) >= 1,
    )
}

/// `reason: message` of every event about `pod`, one per line.
fn events(k: &Kubectl, pod: &str) -> anyhow::Result<String> {
    Ok(k.run(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={pod}"),
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ])?
    .success()?
    .stdout)
}

#[test]
#[ignore = "needs containerd and runc (root), built binaries and images (lotse images build)"]
fn probes_and_lifecycle_hooks() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let Node {
        mut lotse,
        kubectl: k,
        started: t0,
        ..
    } = Node::start_with_root_ca(tmp.path(), "lifecycle-node")?;
    k.run_stdin(&["apply", "-f", "-"], PODS)?.success()?;

    // (a) The startup probe holds back liveness (which would fail and restart it) and
    // readiness: started=false while it fails, then started and ready, never restarted.
    let state = "{.status.containerStatuses[0].state.running.startedAt}|{.status.containerStatuses[0].started}|{.status.containerStatuses[0].ready}|{.status.containerStatuses[0].restartCount}";
    let early = wait_pod(
        &k,
        "slow-start",
        state,
        "slow-start running",
        Duration::from_secs(60),
        |s| !s.starts_with('|'),
    )
    .with_context(|| lotse.log())?;
    assert!(
        early.ends_with("|false|false|0"),
        "running slow-start before its startup probe succeeded: {early}"
    );
    let later = wait_pod(
        &k,
        "slow-start",
        state,
        "slow-start started and ready",
        Duration::from_secs(30),
        |s| s.contains("|true|true|"),
    )?;
    assert!(later.ends_with("|true|true|0"), "slow-start: {later}");
    let ev = events(&k, "slow-start")?;
    assert!(
        ev.contains("Unhealthy: Startup probe failed"),
        "slow-start events: {ev}"
    );
    assert!(
        !ev.contains("Liveness probe failed") && !ev.contains("Killing"),
        "liveness ran before startup succeeded: {ev}"
    );

    // (b) A startup probe that never succeeds kills the container, which restarts.
    wait_restarted(&k, "never-starts")?;
    let ev = events(&k, "never-starts")?;
    assert!(
        ev.contains("Unhealthy: Startup probe failed")
            && ev.contains("Killing: Container c failed startup probe, will be restarted"),
        "never-starts events: {ev}"
    );
    let started = k
        .run(&[
            "get",
            "pod",
            "never-starts",
            "-o",
            "jsonpath={.status.containerStatuses[0].started}",
        ])?
        .stdout;
    assert_eq!(started, "false", "never-starts reported started");

    // (c) postStart exec runs in the container; a failing one kills and restarts it.
    wait_ready(&k, "post-start")?;
    let out = k
        .run(&["exec", "post-start", "--", "cat", "/tmp/post-start"])?
        .success()?
        .stdout;
    assert_eq!(out.trim(), "hooked");
    wait_restarted(&k, "post-start-fails")?;
    let ev = events(&k, "post-start-fails")?;
    assert!(
        ev.contains("FailedPostStartHook: PostStartHook failed")
            && ev.contains("Killing: FailedPostStartHook"),
        "post-start-fails events: {ev}"
    );

    // (d) preStop httpGet reaches pod A's server: its -vv log records the path.
    wait_ready(&k, "httpd")?;
    let ip = k
        .run(&["get", "pod", "httpd", "-o", "jsonpath={.status.podIP}"])?
        .success()?
        .stdout;
    k.run_stdin(&["apply", "-f", "-"], &pre_stop_http_pod(&ip))?
        .success()?;
    wait_ready(&k, "pre-stop-http")?;
    k.run(&[
        "delete",
        "pod",
        "pre-stop-http",
        "--wait=true",
        "--timeout=60s",
    ])?
    .success()?;
    let logs = k.run(&["logs", "httpd"])?.success()?.stdout;
    assert!(
        logs.contains("url:/prestop-hook"),
        "httpd did not see the preStop request: {logs}"
    );

    // A preStop sleep delays the deletion by its length (the container itself exits at once).
    wait_ready(&k, "pre-stop-sleep")?;
    let t = Instant::now();
    k.run(&[
        "delete",
        "pod",
        "pre-stop-sleep",
        "--wait=true",
        "--timeout=60s",
    ])?
    .success()?;
    let took = t.elapsed();
    println!("pre-stop-sleep deleted in {took:?}");
    assert!(
        took >= Duration::from_secs(4),
        "deletion did not wait for the preStop sleep: {took:?}"
    );
    assert!(
        took < Duration::from_secs(20),
        "deletion waited for the whole grace period: {took:?}"
    );

    delete_all_pods(&k)?;
    println!("lifecycle checks took {:?}", t0.elapsed());
    lotse.stop()?;
    Ok(())
}
