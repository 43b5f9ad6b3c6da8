//! Disruption budgets on a real one-node `lotse up`, driven by the real kubectl 1.33: a
//! 2-replica Deployment under a PodDisruptionBudget with `minAvailable: 2` gets its status from
//! the disruption controller (`kubectl get pdb` columns); an eviction is refused with 429 and
//! Kubernetes' message; `kubectl drain --ignore-daemonsets` keeps retrying against the budget;
//! lowered to `minAvailable: 1`, one pod is evicted and the other still waits (the budget is
//! spent; the replacement cannot start on the cordoned node); once the node is uncordoned the
//! replacement becomes ready and the drain finishes. Priority and preemption: the system
//! PriorityClasses exist; a pod of a `preemptionPolicy: Never` class stays Pending with
//! kube-scheduler's message, while a higher-priority pod evicts a lower-priority one that holds
//! the node's CPU (nominatedNodeName, `Preempted` event) and runs in its place.
//!
//! Needs root, Debian's `containerd`, `runc` and `containernetworking-plugins`, the built
//! binaries and the images built by
//! `target/debug/lotse images build --output target/lotse-images busybox pause`.
use std::time::Duration;

use anyhow::Context;
use e2e::Kubectl;
use e2e::lotse::{Node, wait_for};

const LONG: Duration = Duration::from_secs(90);

const WORKLOAD: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox
        command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  minAvailable: 2
  selector: {matchLabels: {app: web}}
"#;

/// Names of the pods of the Deployment that are Ready.
fn ready_pods(k: &Kubectl) -> anyhow::Result<Vec<String>> {
    let out = k.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
    ])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 2 && f[1] == "True").then(|| f[0].to_string())
        })
        .collect())
}

fn pdb_status(k: &Kubectl) -> anyhow::Result<String> {
    k.ok(&[
        "get",
        "pdb",
        "web",
        "-o",
        "jsonpath={.status.observedGeneration} {.status.expectedPods} {.status.currentHealthy} {.status.desiredHealthy} {.status.disruptionsAllowed} {.status.conditions[0].reason}",
    ])
}

#[test]
#[ignore = "needs root, containerd and runc, built binaries and images (lotse images build)"]
fn drain_waits_for_the_disruption_budget() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let node = Node::start_with_root_ca(tmp.path(), "drain-node")?;
    let k = &node.kubectl;
    let log = || node.lotse.log();

    k.ok_stdin(&["apply", "-f", "-"], WORKLOAD)?;
    wait_for(
        k,
        &["get", "deploy", "web"],
        "2 ready replicas",
        LONG,
        |_| ready_pods(k).map(|p| p.len() == 2).unwrap_or(false),
    )
    .with_context(log)?;
    let originals = ready_pods(k)?;

    // The controller's view: 2 expected, 2 healthy, 2 desired, nothing to spare.
    wait_for(k, &["get", "pdb", "web"], "budget status", LONG, |_| {
        pdb_status(k).is_ok_and(|s| s == "1 2 2 2 0 InsufficientPods")
    })
    .with_context(log)?;
    let table = k.ok(&["get", "pdb"])?;
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
            "MIN",
            "AVAILABLE",
            "MAX",
            "UNAVAILABLE",
            "ALLOWED",
            "DISRUPTIONS",
            "AGE"
        ],
        "{table}"
    );
    let described = k.ok(&["describe", "pdb", "web"])?;
    for line in [
        "Min available:  2",
        "Allowed disruptions:  0",
        "Current:              2",
    ] {
        assert!(described.contains(line), "{described}");
    }
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(row[..4], ["web", "2", "N/A", "0"], "{table}");

    // An eviction the budget does not allow: 429 with Kubernetes' message.
    let eviction = format!(
        r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{}","namespace":"default"}}}}"#,
        originals[0]
    );
    let refused = k
        .run_stdin(
            &[
                "create",
                "--raw",
                &format!("/api/v1/namespaces/default/pods/{}/eviction", originals[0]),
                "-f",
                "-",
            ],
            &eviction,
        )?
        .failure()?;
    assert!(
        refused.stderr.contains(
            "Error from server (TooManyRequests): Cannot evict pod as it would violate the pod's disruption budget."
        ),
        "{}",
        refused.stderr
    );

    // drain cordons the node and retries the evictions the budget refuses (kubectl 1.27, the
    // oldest kubectl supported, decides from discovery whether it may use evictions at all).
    let old_kubectl = Kubectl::new(
        27,
        node.data.join("admin.kubeconfig"),
        tmp.path().join("kubectl-27-cache"),
    );
    let drain = old_kubectl.spawn(
        &[
            "drain",
            "drain-node",
            "--ignore-daemonsets",
            "--timeout=150s",
        ],
        tmp.path(),
    )?;
    let refusal = "Cannot evict pod as it would violate the pod's disruption budget.";
    let t0 = std::time::Instant::now();
    while !drain.stderr().contains(refusal) {
        anyhow::ensure!(
            t0.elapsed() < LONG,
            "drain never met the budget:\n{}\n{}",
            drain.stdout(),
            drain.stderr()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        k.ok(&[
            "get",
            "node",
            "drain-node",
            "-o",
            "jsonpath={.spec.unschedulable}"
        ])?,
        "true"
    );
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        ready_pods(k)?,
        originals,
        "nothing evicted while the budget holds"
    );
    assert!(!drain.stdout().contains("drained"), "{}", drain.stdout());

    // One disruption allowed: one pod goes, the other waits, as its replacement cannot start
    // on the cordoned node.
    k.ok(&[
        "patch",
        "pdb",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"minAvailable":1}}"#,
    ])?;
    let (evicted, out) = drain.wait_for(LONG, |o| o.matches("evicted").count() >= 1);
    assert!(
        evicted,
        "no eviction after lowering the budget:\n{out}\n{}",
        drain.stderr()
    );
    wait_for(k, &["get", "pods"], "one original pod left", LONG, |_| {
        ready_pods(k).is_ok_and(|p| p.len() == 1 && originals.contains(&p[0]))
    })
    .with_context(|| format!("{}\n{}", drain.stdout(), drain.stderr()))?;
    let errors_before = drain.stderr().matches(refusal).count();
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        drain.stderr().matches(refusal).count() > errors_before,
        "the second eviction is still refused: {}",
        drain.stderr()
    );
    assert!(!drain.stdout().contains("drained"), "{}", drain.stdout());
    let pending = k.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "--field-selector=status.phase=Pending",
        "-o",
        "name",
    ])?;
    assert_eq!(
        pending.lines().count(),
        1,
        "the replacement waits: {pending}"
    );

    // Uncordoned, the replacement starts and becomes ready; then the last eviction is allowed
    // and the drain finishes.
    k.ok(&["uncordon", "drain-node"])?;
    let (done, out) = drain.wait_for(LONG, |o| o.contains("node/drain-node drained"));
    assert!(
        done,
        "drain did not finish:\n{out}\n{}\n{}",
        drain.stderr(),
        log()
    );
    // Every original pod was evicted and the Deployment is whole again on the node.
    wait_for(k, &["get", "pods"], "two new ready replicas", LONG, |_| {
        ready_pods(k).is_ok_and(|p| p.len() == 2 && p.iter().all(|n| !originals.contains(n)))
    })
    .with_context(log)?;

    // A percentage is resolved over the Deployment's scale: maxUnavailable 50% of 2 → one
    // healthy pod desired; scaled to 4 → two.
    k.ok(&[
        "patch",
        "pdb",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"minAvailable":null,"maxUnavailable":"50%"}}"#,
    ])?;
    wait_for(
        k,
        &["get", "pdb", "web"],
        "budget over the scale",
        LONG,
        |_| pdb_status(k).is_ok_and(|s| s == "3 2 2 1 1 SufficientPods"),
    )
    .with_context(|| format!("{:?}", pdb_status(k)))?;
    k.ok(&["scale", "deploy", "web", "--replicas=4"])?;
    wait_for(
        k,
        &["get", "pdb", "web"],
        "budget of 4 replicas",
        LONG,
        |_| pdb_status(k).is_ok_and(|s| s == "3 4 4 2 2 SufficientPods"),
    )
    .with_context(|| format!("{:?}", pdb_status(k)))?;
    Ok(())
}

fn priority_pod(name: &str, class: &str, cpu_milli: i64) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  priorityClassName: {class}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    resources: {{requests: {{cpu: {cpu_milli}m}}}}
"#
    )
}

const CLASSES: &str = r#"
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: low}
value: 10
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: high}
value: 1000
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: high-polite}
value: 1000
preemptionPolicy: Never
"#;

/// Milli-cores of a quantity as the node reports it (`2`, `1500m`).
fn milli(q: &str) -> anyhow::Result<i64> {
    Ok(match q.strip_suffix('m') {
        Some(m) => m.parse()?,
        None => q.parse::<i64>()? * 1000,
    })
}

#[test]
#[ignore = "needs root, containerd and runc, built binaries and images (lotse images build)"]
fn a_higher_priority_pod_preempts_a_lower_one() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let node = Node::start_with_root_ca(tmp.path(), "preempt-node")?;
    let k = &node.kubectl;
    let log = || node.lotse.log();

    // The system classes exist from the start, beside the new ones.
    k.ok_stdin(&["apply", "-f", "-"], CLASSES)?;
    let classes = k.ok(&["get", "priorityclasses"])?;
    for want in [
        "system-cluster-critical   2000000000",
        "system-node-critical      2000001000",
    ] {
        assert!(classes.contains(want), "{classes}");
    }

    // A low-priority pod takes all but 300m of the node's CPU.
    let alloc = milli(&k.ok(&[
        "get",
        "node",
        "preempt-node",
        "-o",
        "jsonpath={.status.allocatable.cpu}",
    ])?)?;
    k.ok_stdin(
        &["apply", "-f", "-"],
        &priority_pod("victim", "low", alloc - 300),
    )?;
    wait_for(
        k,
        &["get", "pod", "victim", "-o", "jsonpath={.status.phase}"],
        "victim running",
        LONG,
        |s| s == "Running",
    )
    .with_context(log)?;
    assert_eq!(
        k.ok(&["get", "pod", "victim", "-o", "jsonpath={.spec.priority}"])?,
        "10"
    );

    // preemptionPolicy: Never waits instead of preempting.
    k.ok_stdin(
        &["apply", "-f", "-"],
        &priority_pod("polite", "high-polite", 500),
    )?;
    let msg = wait_for(
        k,
        &[
            "get",
            "pod",
            "polite",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].message}",
        ],
        "polite pod unschedulable",
        LONG,
        |s| s.contains("preemption"),
    )
    .with_context(log)?;
    assert_eq!(
        msg,
        "0/1 nodes are available: 1 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never.."
    );
    k.ok(&["delete", "pod", "polite", "--wait=false"])?;

    // The higher-priority pod evicts the victim and runs in its place.
    k.ok_stdin(&["apply", "-f", "-"], &priority_pod("urgent", "high", 500))?;
    wait_for(
        k,
        &["get", "pod", "urgent", "-o", "jsonpath={.status.phase}"],
        "preemptor running",
        LONG,
        |s| s == "Running",
    )
    .with_context(log)?;
    assert_eq!(
        k.ok(&[
            "get",
            "pod",
            "urgent",
            "-o",
            "jsonpath={.status.nominatedNodeName}"
        ])?,
        "preempt-node"
    );
    let gone = k.run(&["get", "pod", "victim"])?;
    assert!(gone.stderr.contains("NotFound"), "{gone:?}");
    let uid = k.ok(&["get", "pod", "urgent", "-o", "jsonpath={.metadata.uid}"])?;
    let events = wait_for(
        k,
        &[
            "get",
            "events",
            "--field-selector",
            "reason=Preempted",
            "-o",
            "jsonpath={.items[*].message}",
        ],
        "Preempted event",
        LONG,
        |s| !s.is_empty(),
    )?;
    assert_eq!(
        events,
        format!("Preempted by pod {uid} on node preempt-node")
    );
    Ok(())
}
