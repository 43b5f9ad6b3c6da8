//! The rest of the everyday core/v1 API on a real node, driven through `lotse up` and the real
//! kubectl 1.33: a ReplicationController keeps its replicas (the ReplicaSet logic run for RCs),
//! `kubectl scale rc` goes through `/scale`, kubectl prints its columns; PodTemplates are
//! stored and listed; `kubectl get cs` lists scheduler, controller-manager and etcd-0 Healthy,
//! read-only.
//!
//! Needs root, Debian's `containerd`, `runc` and `containernetworking-plugins`, the built
//! binaries and the images built by
//! `target/debug/lotse images build --output target/lotse-images busybox pause`.
use std::time::Duration;

use anyhow::Context;
use e2e::Kubectl;
use e2e::lotse::{Node, wait_for};

const LONG: Duration = Duration::from_secs(90);

const RC: &str = r#"
apiVersion: v1
kind: ReplicationController
metadata: {name: web}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox
        command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
"#;

const POD_TEMPLATE: &str = r#"
apiVersion: v1
kind: PodTemplate
metadata: {name: tpl}
template:
  metadata: {labels: {app: tpl, tier: db}}
  spec:
    containers:
    - {name: main, image: busybox}
"#;

fn header(table: &str) -> Vec<String> {
    table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn wait_replicas(k: &Kubectl, n: usize) -> anyhow::Result<()> {
    wait_for(
        k,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "--field-selector",
            "status.phase=Running",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
        &format!("{n} running web pods"),
        LONG,
        |s| s.split_whitespace().count() == n,
    )?;
    wait_for(
        k,
        &["get", "rc", "web", "-o", "jsonpath={.status.readyReplicas}"],
        &format!("rc status {n} ready"),
        LONG,
        |s| s.trim() == n.to_string(),
    )?;
    Ok(())
}

#[test]
#[ignore = "needs root, containerd and runc, built binaries and images (lotse images build)"]
fn replication_controllers_pod_templates_and_component_statuses() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let node = Node::start_with_root_ca(tmp.path(), "rc-node")?;
    let k = &node.kubectl;
    let log = || node.lotse.log();

    // componentstatuses: three Healthy rows, read-only.
    let cs = wait_for(k, &["get", "cs"], "component statuses", LONG, |s| {
        s.lines().skip(1).filter(|l| l.contains("Healthy")).count() == 3
    })
    .with_context(log)?;
    assert_eq!(header(&cs), ["NAME", "STATUS", "MESSAGE", "ERROR"], "{cs}");
    for name in ["scheduler", "controller-manager", "etcd-0"] {
        let row: Vec<&str> = cs
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(row, [name, "Healthy", "ok"], "{cs}");
    }
    let out = k.run(&[
        "get",
        "cs",
        "etcd-0",
        "-o",
        "jsonpath={.conditions[0].status}",
    ])?;
    assert_eq!(out.stdout, "True");
    assert!(
        out.stderr
            .contains("v1 ComponentStatus is deprecated in v1.19+"),
        "{}",
        out.stderr
    );
    let err = k.run(&["delete", "cs", "scheduler"])?.failure()?.stderr;
    assert!(
        err.contains("the server does not allow this method on the requested resource"),
        "{err}"
    );

    // A ReplicationController keeps its pods.
    k.ok_stdin(&["apply", "-f", "-"], RC)?;
    wait_replicas(k, 2).with_context(log)?;
    let table = k.ok(&["get", "rc", "web", "-o", "wide"])?;
    assert_eq!(
        header(&table),
        [
            "NAME",
            "DESIRED",
            "CURRENT",
            "READY",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ],
        "{table}"
    );
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row[..4], ["web", "2", "2", "2"], "{table}");
    assert_eq!(row[5..], ["main", "busybox", "app=web"], "{table}");
    let owners = k.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].metadata.ownerReferences[0].kind}",
    ])?;
    assert_eq!(owners, "ReplicationController ReplicationController");

    // kubectl scale goes through /scale; the Scale's selector is the RC's label map.
    k.ok(&["scale", "rc", "web", "--replicas=3"])?;
    wait_replicas(k, 3).with_context(log)?;
    let scale = k.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/replicationcontrollers/web/scale",
    ])?;
    let scale: serde_json::Value = serde_json::from_str(&scale)?;
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 3);
    assert_eq!(scale["status"]["selector"], "app=web");
    k.ok(&["scale", "rc", "web", "--replicas=1"])?;
    wait_replicas(k, 1).with_context(log)?;
    let reasons = k.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=ReplicationController,involvedObject.name=web",
        "-o",
        "jsonpath={.items[*].reason}",
    ])?;
    assert!(reasons.contains("SuccessfulCreate"), "{reasons}");
    assert!(reasons.contains("SuccessfulDelete"), "{reasons}");

    // PodTemplates are stored and printed with kubectl's columns.
    k.ok_stdin(&["apply", "-f", "-"], POD_TEMPLATE)?;
    let table = k.ok(&["get", "podtemplates"])?;
    assert_eq!(
        header(&table),
        ["NAME", "CONTAINERS", "IMAGES", "POD", "LABELS"],
        "{table}"
    );
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        row,
        ["tpl", "main", "busybox", "app=tpl,tier=db"],
        "{table}"
    );
    Ok(())
}
