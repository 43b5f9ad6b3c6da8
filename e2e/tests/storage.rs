//! Storage on a real containerd, driven through `lotse up` and the real kubectl 1.33:
//! the default `local-path` StorageClass; a claim provisioned when its first pod is scheduled
//! (WaitForFirstConsumer), data written by one pod and read by the next; a claim in use is kept
//! (pvc-protection) until its pod goes, then its volume and directory are removed (reclaim
//! Delete); a StatefulSet's claims per replica survive pod re-creation; a static hostPath
//! volume binds to a matching claim; a pod whose claim does not exist is unschedulable with
//! kube-scheduler's message; a claim's data survives `kill -9` of `lotse up` and its restart.
//!
//! Needs root, Debian's `containerd`, `runc` and `containernetworking-plugins`, the built
//! binaries and the images built by
//! `target/debug/lotse images build --output target/lotse-images busybox pause`.
use std::time::Duration;

use anyhow::Context;
use e2e::Kubectl;
use e2e::lotse::{Lotse, Node, wait_api_back, wait_for};

const LONG: Duration = Duration::from_secs(90);

const CLAIM: &str = r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 100Mi}}
"#;

fn pod(name: &str, claim: &str, script: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "{script}; trap 'exit 0' TERM; while true; do sleep 1; done"]
    volumeMounts: [{{name: vol, mountPath: /data}}]
  volumes:
  - name: vol
    persistentVolumeClaim: {{claimName: {claim}}}
"#
    )
}

const STATEFULSET: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 2
  podManagementPolicy: Parallel
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox
        command: ["sh", "-c", "[ -f /data/id ] || hostname > /data/id; echo start >> /data/starts; trap 'exit 0' TERM; while true; do sleep 1; done"]
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 50Mi}}
"#;

fn static_volume(path: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: PersistentVolume
metadata: {{name: manual-pv, labels: {{kind: static}}}}
spec:
  storageClassName: manual
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  hostPath: {{path: "{path}", type: Directory}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: static}}
spec:
  storageClassName: manual
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 500Mi}}}}
  selector: {{matchLabels: {{kind: static}}}}
"#
    )
}

fn get(k: &Kubectl, kind: &str, name: &str, path: &str) -> anyhow::Result<String> {
    k.ok(&["get", kind, name, "-o", &format!("jsonpath={path}")])
}

fn wait_ready(k: &Kubectl, pod: &str) -> anyhow::Result<()> {
    wait_for(
        k,
        &[
            "get",
            "pod",
            pod,
            "-o",
            "jsonpath={.status.containerStatuses[*].ready}",
        ],
        &format!("pod {pod} ready"),
        LONG,
        |s| s.trim() == "true",
    )?;
    Ok(())
}

fn wait_gone(k: &Kubectl, kind: &str, name: &str) -> anyhow::Result<()> {
    wait_for(
        k,
        &["get", kind, name, "--ignore-not-found", "-o", "name"],
        &format!("{kind} {name} gone"),
        LONG,
        |s| s.trim().is_empty(),
    )?;
    Ok(())
}

fn sh(k: &Kubectl, pod: &str, script: &str) -> anyhow::Result<String> {
    k.ok(&["exec", pod, "--", "sh", "-c", script])
}

#[test]
#[ignore = "needs root, containerd and runc, built binaries and images (lotse images build)"]
fn claims_volumes_and_the_local_path_provisioner() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let Node {
        mut lotse,
        kubectl: k,
        data,
        args,
        ..
    } = Node::start_with_root_ca(tmp.path(), "storage-node")?;
    let log_of = |l: &Lotse| l.log();
    let log = || log_of(&lotse);

    // The default class, as k3s ships it.
    let sc = wait_for(&k, &["get", "sc"], "local-path class", LONG, |s| {
        s.contains("local-path (default)")
    })
    .with_context(log)?;
    let row = sc.lines().nth(1).unwrap_or_default();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[..6],
        [
            "local-path",
            "(default)",
            "rancher.io/local-path",
            "Delete",
            "WaitForFirstConsumer",
            "false"
        ],
        "{sc}"
    );
    let header: Vec<String> = sc
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "PROVISIONER",
            "RECLAIMPOLICY",
            "VOLUMEBINDINGMODE",
            "ALLOWVOLUMEEXPANSION",
            "AGE"
        ]
    );

    // A claim without a class gets the default one and waits for its first consumer.
    k.ok_stdin(&["apply", "-f", "-"], CLAIM)?;
    assert_eq!(
        get(&k, "pvc", "data", "{.spec.storageClassName}")?,
        "local-path"
    );
    assert_eq!(get(&k, "pvc", "data", "{.status.phase}")?, "Pending");
    assert_eq!(
        get(&k, "pvc", "data", "{.metadata.finalizers}")?,
        "[\"kubernetes.io/pvc-protection\"]"
    );
    wait_for(
        &k,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=data",
            "-o",
            "jsonpath={.items[*].reason}",
        ],
        "WaitForFirstConsumer event",
        LONG,
        |s| s.contains("WaitForFirstConsumer"),
    )
    .with_context(log)?;

    // The first pod gets the claim provisioned on its node; it writes, the next pod reads.
    k.ok_stdin(
        &["create", "-f", "-"],
        &pod("writer", "data", "echo hello > /data/greeting"),
    )?;
    wait_ready(&k, "writer").with_context(log)?;
    assert_eq!(get(&k, "pvc", "data", "{.status.phase}")?, "Bound");
    assert_eq!(
        get(
            &k,
            "pvc",
            "data",
            "{.metadata.annotations.volume\\.kubernetes\\.io/selected-node}"
        )?,
        "storage-node"
    );
    let pv = get(&k, "pvc", "data", "{.spec.volumeName}")?;
    let uid = get(&k, "pvc", "data", "{.metadata.uid}")?;
    assert_eq!(pv, format!("pvc-{uid}"));
    let dir = get(&k, "pv", &pv, "{.spec.hostPath.path}")?;
    assert_eq!(
        dir,
        data.join(format!("storage/{pv}_default_data"))
            .to_string_lossy()
    );
    assert_eq!(
        std::fs::read_to_string(format!("{dir}/greeting"))?,
        "hello\n"
    );
    assert_eq!(
        get(
            &k,
            "pv",
            &pv,
            "{.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}"
        )?,
        "storage-node"
    );
    let table = k.ok(&["get", "pvc", "data"])?;
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        row[..7],
        [
            "data",
            "Bound",
            pv.as_str(),
            "100Mi",
            "RWO",
            "local-path",
            "<unset>"
        ],
        "{table}"
    );
    let table = k.ok(&["get", "pv", &pv])?;
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        row[..8],
        [
            pv.as_str(),
            "100Mi",
            "RWO",
            "Delete",
            "Bound",
            "default/data",
            "local-path",
            "<unset>"
        ],
        "{table}"
    );
    k.ok(&["delete", "pod", "writer", "--wait=true"])?;
    k.ok_stdin(&["create", "-f", "-"], &pod("reader", "data", "true"))?;
    wait_ready(&k, "reader").with_context(log)?;
    assert_eq!(sh(&k, "reader", "cat /data/greeting")?, "hello\n");

    // Deleting a claim in use waits for its pod (pvc-protection); then reclaim Delete removes
    // the volume and its directory.
    k.ok(&["delete", "pvc", "data", "--wait=false"])?;
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !get(&k, "pvc", "data", "{.metadata.deletionTimestamp}")?.is_empty(),
        "claim in use is kept"
    );
    assert!(k.ok(&["get", "pvc", "data"])?.contains("Terminating"));
    assert_eq!(sh(&k, "reader", "cat /data/greeting")?, "hello\n");
    k.ok(&["delete", "pod", "reader", "--wait=true"])?;
    wait_gone(&k, "pvc", "data").with_context(log)?;
    wait_gone(&k, "pv", &pv).with_context(log)?;
    assert!(
        !std::path::Path::new(&dir).exists(),
        "{dir} still exists after reclaim"
    );

    // A StatefulSet gets one claim per replica; a replaced pod finds its data again.
    k.ok_stdin(&["apply", "-f", "-"], STATEFULSET)?;
    for p in ["db-0", "db-1"] {
        wait_ready(&k, p).with_context(log)?;
    }
    for c in ["data-db-0", "data-db-1"] {
        assert_eq!(get(&k, "pvc", c, "{.status.phase}")?, "Bound", "{c}");
        assert_eq!(get(&k, "pvc", c, "{.metadata.labels.app}")?, "db", "{c}");
        assert_eq!(
            get(&k, "pvc", c, "{.metadata.ownerReferences}")?,
            "",
            "Retain: no owner"
        );
    }
    assert_eq!(sh(&k, "db-1", "cat /data/id")?, "db-1\n");
    let old_uid = get(&k, "pod", "db-0", "{.metadata.uid}")?;
    k.ok(&["delete", "pod", "db-0", "--wait=true"])?;
    wait_for(
        &k,
        &["get", "pod", "db-0", "-o", "jsonpath={.metadata.uid}"],
        "db-0 recreated",
        LONG,
        |s| !s.is_empty() && s != old_uid,
    )?;
    wait_ready(&k, "db-0").with_context(log)?;
    assert_eq!(
        sh(&k, "db-0", "cat /data/id; wc -l < /data/starts")?,
        "db-0\n2\n"
    );
    let events = k.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=db",
        "-o",
        "jsonpath={.items[*].reason}",
    ])?;
    assert!(
        !events.contains("PersistentVolumeClaimsUnsupported"),
        "{events}"
    );

    // Retention Delete: scaling down removes the condemned replica's claim (and its volume),
    // deleting the set removes the rest.
    let pv1 = get(&k, "pvc", "data-db-1", "{.spec.volumeName}")?;
    k.ok(&[
        "patch",
        "statefulset",
        "db",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":1,"persistentVolumeClaimRetentionPolicy":{"whenScaled":"Delete","whenDeleted":"Delete"}}}"#,
    ])?;
    wait_gone(&k, "pod", "db-1").with_context(log)?;
    wait_gone(&k, "pvc", "data-db-1").with_context(log)?;
    wait_gone(&k, "pv", &pv1).with_context(log)?;
    let pv0 = get(&k, "pvc", "data-db-0", "{.spec.volumeName}")?;
    wait_for(
        &k,
        &[
            "get",
            "pvc",
            "data-db-0",
            "-o",
            "jsonpath={.metadata.ownerReferences[*].kind}",
        ],
        "set owns data-db-0",
        LONG,
        |s| s == "StatefulSet",
    )?;
    k.ok(&["delete", "statefulset", "db", "--wait=true"])?;
    wait_gone(&k, "pvc", "data-db-0").with_context(log)?;
    wait_gone(&k, "pv", &pv0).with_context(log)?;

    // A static hostPath volume binds to a matching claim (selector, class, size).
    let host = tmp.path().join("static");
    std::fs::create_dir_all(&host)?;
    std::fs::write(host.join("seed"), "static data\n")?;
    k.ok_stdin(
        &["apply", "-f", "-"],
        &static_volume(&host.to_string_lossy()),
    )?;
    wait_for(
        &k,
        &["get", "pvc", "static", "-o", "jsonpath={.status.phase}"],
        "static claim bound",
        LONG,
        |s| s == "Bound",
    )
    .with_context(log)?;
    assert_eq!(get(&k, "pvc", "static", "{.spec.volumeName}")?, "manual-pv");
    assert_eq!(
        get(&k, "pvc", "static", "{.status.capacity.storage}")?,
        "1Gi"
    );
    assert_eq!(get(&k, "pv", "manual-pv", "{.status.phase}")?, "Bound");
    assert_eq!(
        get(
            &k,
            "pv",
            "manual-pv",
            "{.spec.persistentVolumeReclaimPolicy}"
        )?,
        "Retain"
    );
    k.ok_stdin(
        &["create", "-f", "-"],
        &pod("static-user", "static", "true"),
    )?;
    wait_ready(&k, "static-user").with_context(log)?;
    assert_eq!(sh(&k, "static-user", "cat /data/seed")?, "static data\n");

    // A pod whose claim does not exist is unschedulable, as kube-scheduler says it.
    k.ok_stdin(&["create", "-f", "-"], &pod("orphan", "nope", "true"))?;
    let msg = wait_for(
        &k,
        &[
            "get",
            "pod",
            "orphan",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].message}",
        ],
        "orphan unschedulable",
        LONG,
        |s| !s.is_empty(),
    )?;
    assert_eq!(
        msg,
        "0/1 nodes are available: persistentvolumeclaim \"nope\" not found. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.."
    );
    assert_eq!(get(&k, "pod", "orphan", "{.status.phase}")?, "Pending");

    // A claim of a class that does not exist stays Pending, and its events say why.
    k.ok_stdin(
        &["apply", "-f", "-"],
        &CLAIM
            .replace("name: data", "name: classless")
            .replace("accessModes", "storageClassName: missing\n  accessModes"),
    )?;
    wait_for(
        &k,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=classless",
            "-o",
            "jsonpath={.items[*].message}",
        ],
        "class not found event",
        LONG,
        |s| s.contains("storageclass.storage.k8s.io \"missing\" not found"),
    )
    .with_context(log)?;
    assert_eq!(get(&k, "pvc", "classless", "{.status.phase}")?, "Pending");

    // kill -9 `lotse up` and start it again: the claim, its binding and its data are still
    // there for the next pod.
    k.ok_stdin(
        &["apply", "-f", "-"],
        &CLAIM.replace("name: data", "name: keep"),
    )?;
    k.ok_stdin(
        &["create", "-f", "-"],
        &pod("keeper", "keep", "echo kept > /data/rows"),
    )?;
    wait_ready(&k, "keeper").with_context(log)?;
    let kept_pv = get(&k, "pvc", "keep", "{.spec.volumeName}")?;
    lotse.signal("KILL")?;
    let lotse = Lotse::start(&data, &args)?;
    let log = || log_of(&lotse);
    wait_api_back(&k, "storage-node", log)?;
    k.ok(&["delete", "pod", "keeper", "--wait=true"])?;
    k.ok_stdin(&["create", "-f", "-"], &pod("after", "keep", "true"))?;
    wait_ready(&k, "after").with_context(log)?;
    assert_eq!(get(&k, "pvc", "keep", "{.spec.volumeName}")?, kept_pv);
    assert_eq!(sh(&k, "after", "cat /data/rows")?, "kept\n");
    Ok(())
}
