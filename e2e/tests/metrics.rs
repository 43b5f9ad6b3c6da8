//! Resource metrics and autoscaling on a real containerd, driven through `lotse up` and the
//! real kubectl 1.33: the kubelet's `/stats/summary` (through `nodes/<n>/proxy`), `kubectl top
//! nodes` and `kubectl top pods --containers` (`-A`) from the built-in `metrics.k8s.io`, with a
//! CPU-burning pod's figure above an idle one's; then `kubectl autoscale` of a CPU-burning,
//! CPU-limited Deployment that the HPA controller scales up to its maximum and, once the load
//! stops, back down to its minimum (short `behavior` windows), with `SuccessfulRescale` events,
//! the HPA's Table columns, and `FailedGetResourceMetric` for a Deployment without requests.
//!
//! Needs root, Debian's `containerd`, `runc` and `containernetworking-plugins`, the built
//! binaries and the images built by
//! `target/debug/lotse images build --output target/lotse-images busybox pause`.
use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::Kubectl;
use e2e::lotse::{Node, wait_for};

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: burn, labels: {role: burn}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: loop
    image: busybox
    command: ["sh", "-c", "while true; do :; done"]
    resources: {requests: {cpu: 100m}, limits: {cpu: 300m}}
  - name: sidecar
    image: busybox
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
---
apiVersion: v1
kind: Pod
metadata: {name: idle}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
"#;

/// Each replica burns (at most its 200m limit) until `/tmp/stop` exists in it.
const WEB: &str = r#"
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
      - name: app
        image: busybox
        command: ["sh", "-c", "trap 'exit 0' TERM; while [ ! -f /tmp/stop ]; do :; done; while true; do sleep 1; done"]
        resources: {requests: {cpu: 100m}, limits: {cpu: 200m}}
"#;

/// An autoscaling/v2 manifest (kubectl validates it against the served OpenAPI) whose target
/// does not exist.
const GHOST_HPA: &str = r#"
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: ghost}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: ghost}
  minReplicas: 1
  maxReplicas: 2
  metrics:
  - type: Resource
    resource: {name: memory, target: {type: AverageValue, averageValue: 100Mi}}
  behavior:
    scaleDown: {stabilizationWindowSeconds: 10, policies: [{type: Pods, value: 1, periodSeconds: 30}]}
"#;

const NOREQ: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: noreq}
spec:
  replicas: 1
  selector: {matchLabels: {app: noreq}}
  template:
    metadata: {labels: {app: noreq}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox
        command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
"#;

/// Millicores of a `kubectl top` cell (`250m`, `1`).
fn millicores(cell: &str) -> Option<i64> {
    match cell.strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => cell.parse::<i64>().ok().map(|c| c * 1000),
    }
}

/// The CPU cell of `container` in pod `pod` of `kubectl top pods --containers` output.
fn container_cpu(top: &str, pod: &str, container: &str) -> Option<i64> {
    top.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            [p, c, cpu, _mem] if *p == pod && *c == container => millicores(cpu),
            _ => None,
        }
    })
}

fn replicas(k: &Kubectl) -> anyhow::Result<String> {
    Ok(
        k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"])?
            .trim()
            .to_string(),
    )
}

#[test]
#[ignore = "needs root, containerd and runc, built binaries and images (lotse images build)"]
fn top_and_horizontal_pod_autoscaling() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let node = Node::start_with_root_ca(tmp.path(), "metrics-node")?;
    let k = &node.kubectl;
    let t0 = Instant::now();
    let log = || node.lotse.log();

    k.ok_stdin(&["apply", "-f", "-"], PODS)?;
    k.ok_stdin(&["apply", "-f", "-"], NOREQ)?;
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/burn",
        "pod/idle",
        "--timeout=90s",
    ])?;

    // The kubelet's summary, through the apiserver's node proxy.
    let summary = k.ok(&[
        "get",
        "--raw",
        "/api/v1/nodes/metrics-node/proxy/stats/summary",
    ])?;
    let v: serde_json::Value = serde_json::from_str(&summary).context("summary JSON")?;
    assert_eq!(v["node"]["nodeName"], "metrics-node");
    assert!(
        v["node"]["cpu"]["usageCoreNanoSeconds"].as_u64().is_some(),
        "{summary}"
    );
    assert!(
        v["node"]["memory"]["workingSetBytes"].as_u64().is_some(),
        "{summary}"
    );
    let burn = v["pods"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["podRef"]["name"] == "burn"))
        .context("burn pod in the summary")?;
    assert_eq!(
        burn["containers"].as_array().map(Vec::len),
        Some(2),
        "{burn}"
    );
    assert!(
        burn["cpu"]["usageCoreNanoSeconds"].as_u64().is_some(),
        "{burn}"
    );
    let resource = k.ok(&[
        "get",
        "--raw",
        "/api/v1/nodes/metrics-node/proxy/metrics/resource",
    ])?;
    assert!(
        resource.lines().any(|l| l.starts_with(
            "container_cpu_usage_seconds_total{container=\"loop\",namespace=\"default\",pod=\"burn\"}"
        )),
        "{resource}"
    );
    assert!(
        resource.contains("\nresource_scrape_error 0\n"),
        "{resource}"
    );

    // kubectl top: the burning container far above the idle one.
    let top = wait_for(
        k,
        &["top", "pods", "--containers"],
        "kubectl top pods --containers with the burner's figure",
        Duration::from_secs(60),
        |out| {
            container_cpu(out, "burn", "loop").is_some_and(|c| c >= 100)
                && container_cpu(out, "idle", "main").is_some()
        },
    )
    .with_context(log)?;
    let idle = container_cpu(&top, "idle", "main").unwrap_or(i64::MAX);
    let sidecar = container_cpu(&top, "burn", "sidecar").unwrap_or(i64::MAX);
    assert!(idle < 50 && sidecar < 50, "{top}");
    // A node's rate needs two scrapes (it has no start time to count from).
    wait_for(
        k,
        &["top", "nodes"],
        "kubectl top nodes with the burner's load",
        Duration::from_secs(40),
        |out| {
            out.lines().any(|l| {
                l.starts_with("metrics-node ")
                    && l.split_whitespace()
                        .nth(1)
                        .and_then(millicores)
                        .is_some_and(|c| c >= 150)
            })
        },
    )
    .with_context(log)?;
    let all = k.ok(&["top", "pods", "-A"])?;
    assert!(
        all.lines()
            .any(|l| l.starts_with("default ") && l.contains(" burn ")),
        "{all}"
    );
    // Older kubectl (1.27, 1.30) read the same API.
    for minor in [27, 30] {
        let old = Kubectl::new(
            minor,
            node.data.join("admin.kubeconfig"),
            tmp.path().join(format!("kubectl-cache-{minor}")),
        );
        let out = old.ok(&["top", "pods", "--containers"])?;
        assert!(
            container_cpu(&out, "burn", "loop").is_some(),
            "kubectl 1.{minor}: {out}"
        );
    }
    // metrics-server's Table through kubectl get.
    let table = k.ok(&["get", "pods.metrics.k8s.io", "burn"])?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "CPU", "MEMORY", "WINDOW"], "{table}");
    let labelled = k.ok(&["top", "pods", "-l", "role=burn"])?;
    assert!(
        labelled.contains("burn") && !labelled.contains("idle"),
        "{labelled}"
    );
    k.ok(&["delete", "pod", "burn", "idle", "--grace-period=1"])?;
    println!("top: figures after {:?}", t0.elapsed());

    // An HPA from `kubectl autoscale`, with short windows patched in.
    k.ok_stdin(&["apply", "-f", "-"], WEB)?;
    k.ok(&["rollout", "status", "deploy/web", "--timeout=90s"])?;
    k.ok(&[
        "autoscale",
        "deployment",
        "web",
        "--cpu-percent=50",
        "--min=1",
        "--max=3",
    ])?;
    k.ok(&[
        "patch", "hpa", "web", "--type=merge", "-p",
        r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":15},"scaleUp":{"stabilizationWindowSeconds":0}}}}"#,
    ])?;
    // kubectl 1.27 writes autoscaling/v1.
    let k27 = Kubectl::new(
        27,
        node.data.join("admin.kubeconfig"),
        tmp.path().join("kubectl-cache-27"),
    );
    k27.ok(&[
        "autoscale",
        "deployment",
        "noreq",
        "--cpu-percent=50",
        "--max=2",
    ])?;
    k.ok_stdin(&["apply", "-f", "-"], GHOST_HPA)?;
    let up = Instant::now();
    wait_for(
        k,
        &["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"],
        "the HPA to scale web up to 3",
        Duration::from_secs(100),
        |r| r.trim() == "3",
    )
    .with_context(log)?;
    println!("hpa: scaled up to 3 in {:?}", up.elapsed());
    let table = k.ok(&["get", "hpa", "web"])?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "REFERENCE",
            "TARGETS",
            "MINPODS",
            "MAXPODS",
            "REPLICAS",
            "AGE"
        ],
        "{table}"
    );
    assert!(
        table.contains("Deployment/web") && table.contains("cpu: "),
        "{table}"
    );
    let v1 = k.ok(&[
        "get",
        "--raw",
        "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/web",
    ])?;
    let v1: serde_json::Value = serde_json::from_str(&v1)?;
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50, "{v1}");
    let events = k.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web,reason=SuccessfulRescale",
        "-o",
        "jsonpath={.items[*].message}",
    ])?;
    assert!(events.contains("New size: 3; reason: "), "{events}");

    // Load off: every replica stops burning; the HPA scales back to its minimum.
    k.ok(&["rollout", "status", "deploy/web", "--timeout=90s"])?;
    let pods = k.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])?;
    for p in pods.split_whitespace() {
        k.ok(&["exec", p, "--", "touch", "/tmp/stop"])?;
    }
    let down = Instant::now();
    wait_for(
        k,
        &["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"],
        "the HPA to scale web down to 1",
        Duration::from_secs(120),
        |r| r.trim() == "1",
    )
    .with_context(|| format!("replicas {:?}; {}", replicas(k), log()))?;
    println!("hpa: scaled down to 1 in {:?}", down.elapsed());
    let conditions = k.ok(&[
        "get",
        "hpa",
        "web",
        "-o",
        "jsonpath={range .status.conditions[*]}{.type}={.status} {end}",
    ])?;
    assert!(
        conditions.contains("AbleToScale=True") && conditions.contains("ScalingActive=True"),
        "{conditions}"
    );

    // A target without CPU requests: Kubernetes' event.
    let failed = wait_for(
        k,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=noreq,reason=FailedGetResourceMetric",
            "-o",
            "jsonpath={.items[*].message}",
        ],
        "FailedGetResourceMetric for noreq",
        Duration::from_secs(40),
        |m| !m.trim().is_empty(),
    )?;
    assert!(
        failed.contains(
            "failed to get cpu utilization: missing request for cpu in container main of Pod noreq-"
        ),
        "{failed}"
    );
    let active = k.ok(&[
        "get",
        "hpa",
        "noreq",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"ScalingActive\")].reason}",
    ])?;
    assert_eq!(active.trim(), "FailedGetResourceMetric");
    let ghost = k.ok(&[
        "get", "hpa", "ghost", "-o",
        "jsonpath={.status.conditions[?(@.type==\"AbleToScale\")].reason} {.spec.behavior.scaleUp.policies[*].type}",
    ])?;
    assert_eq!(ghost.trim(), "FailedGetScale Pods Percent", "{ghost}");
    let describe = k.ok(&["describe", "hpa", "web"])?;
    assert!(
        describe.contains("SuccessfulRescale") && describe.contains("Deployment/web"),
        "{describe}"
    );
    println!("metrics test took {:?}", t0.elapsed());
    Ok(())
}
