//! Storage on three nodes (`lotse up --nodes 3`), with the real kubectl 1.33 and busybox:
//! a WaitForFirstConsumer claim is provisioned on the node the scheduler chose (the volume's
//! node affinity names it, its directory is under that node's data dir, per rancher's
//! `local-path-config` nodePathMap, which `lotse up --nodes` writes) and a re-created pod of the claim goes back to that node;
//! a claim in use on another node is kept (pvc-protection) until its pod goes, then its
//! directory is removed on that node; StatefulSet claims spread over the nodes are removed with
//! their directories by `persistentVolumeClaimRetentionPolicy` Delete on scale-down and on set
//! deletion, and kept by Retain; after the nodes restart, the kept claims' replicas come back
//! to their volumes' nodes and data; a claim mounted read-only and through a file `subPath`;
//! storage ResourceQuotas refuse with Kubernetes' messages. One cluster; takes about 80 s.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::lotse::wait_for;
use e2e::multinode::{Cluster, NODE, eventually, step};

const LONG: Duration = Duration::from_secs(90);

/// Host node volumes under `<data>/storage` (the default), the joined nodes' under their own
/// data dirs: the `config.json` of the `local-path-config` that `lotse up --nodes` writes.
fn path_config(data: &Path) -> serde_json::Value {
    serde_json::json!({"nodePathMap": [
        {"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": [data.join("storage")]},
        {"node": "mn-2", "paths": [node_dir("mn-2", data).join("storage")]},
        {"node": "mn-3", "paths": [node_dir("mn-3", data).join("storage")]},
    ]})
}

/// A node's data dir: the cluster's for the host, `nodes/<name>` for the joined ones.
fn node_dir(node: &str, data: &Path) -> PathBuf {
    if node == NODE {
        data.to_path_buf()
    } else {
        data.join("nodes").join(node)
    }
}

fn pod(name: &str, claim: &str, node: Option<&str>, script: &str) -> String {
    let selector = node
        .map(|n| format!("nodeSelector: {{kubernetes.io/hostname: {n}}}"))
        .unwrap_or_default();
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {name}}}}}
spec:
  terminationGracePeriodSeconds: 1
  {selector}
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

const CLAIM: &str = r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: pinned}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 10Mi}}
"#;

/// A Parallel StatefulSet of busybox pods, one per node, each with a claim.
fn set(name: &str, replicas: u32, retention: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: {name}}}
spec:
  serviceName: {name}
  replicas: {replicas}
  podManagementPolicy: Parallel
  {retention}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {{matchLabels: {{app: {name}}}}}
            topologyKey: kubernetes.io/hostname
      containers:
      - name: main
        image: busybox
        command: ["sh", "-c", "[ -f /data/id ] || hostname > /data/id; echo start >> /data/starts; trap 'exit 0' TERM; while true; do sleep 1; done"]
        volumeMounts: [{{name: data, mountPath: /data}}]
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {{requests: {{storage: 5Mi}}}}
"#
    )
}

const QUOTAS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: quota}
---
apiVersion: v1
kind: ResourceQuota
metadata: {name: storage, namespace: quota}
spec:
  hard:
    requests.storage: 100Mi
    local-path.storageclass.storage.k8s.io/requests.storage: 60Mi
---
apiVersion: v1
kind: ResourceQuota
metadata: {name: count, namespace: quota}
spec:
  hard: {persistentvolumeclaims: "2"}
"#;

fn quota_claim(name: &str, class: &str, size: &str) -> String {
    format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}, namespace: quota}}\nspec:\n  storageClassName: {class}\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: {size}}}}}\n"
    )
}

fn get(c: &Cluster, kind: &str, name: &str, path: &str) -> anyhow::Result<String> {
    c.k.ok(&["get", kind, name, "-o", &format!("jsonpath={path}")])
}

fn wait_gone(c: &Cluster, kind: &str, name: &str) -> anyhow::Result<()> {
    wait_for(
        &c.k,
        &["get", kind, name, "--ignore-not-found", "-o", "name"],
        &format!("{kind} {name} gone"),
        LONG,
        |s| s.trim().is_empty(),
    )
    .with_context(|| c.log())?;
    Ok(())
}

/// The claim's volume: its name, node (node affinity) and directory; checks that the
/// directory is under the node's data dir.
fn volume_of(c: &Cluster, claim: &str) -> anyhow::Result<(String, String, PathBuf)> {
    let pv = get(c, "pvc", claim, "{.spec.volumeName}")?;
    let node = get(
        c,
        "pv",
        &pv,
        "{.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}",
    )?;
    let dir = PathBuf::from(get(c, "pv", &pv, "{.spec.hostPath.path}")?);
    let ns = get(c, "pvc", claim, "{.metadata.namespace}")?;
    assert_eq!(
        dir,
        node_dir(&node, &c.data)
            .join("storage")
            .join(format!("{pv}_{ns}_{claim}")),
        "{claim}'s directory is under its node's data dir"
    );
    Ok((pv, node, dir))
}

/// What `kubectl create -f -` says when a quota refuses the claim.
fn refused(c: &Cluster, manifest: &str) -> anyhow::Result<String> {
    let out = c.k.run_stdin(&["create", "-f", "-"], manifest)?.failure()?;
    Ok(out.stderr.trim_end().to_string())
}

#[test]
#[ignore = "needs root, containerd, runc, nft and network namespaces: starts three nodes"]
fn volumes_live_on_the_scheduled_node() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir()?;
    let mut c = Cluster::start(tmp.path(), &[])?;
    c.wait_ready(Duration::from_secs(180))?;
    step(t0, "three nodes Ready");
    // `lotse up --nodes` wrote the nodes' local-path-config.
    let have = c.k.ok(&[
        "get",
        "configmap",
        "-n",
        "kube-system",
        "local-path-config",
        "-o",
        "jsonpath={.data.config\\.json}",
    ])?;
    let have: serde_json::Value = serde_json::from_str(&have).context("config.json")?;
    assert_eq!(have, path_config(&c.data), "local-path-config");

    // Everything at once: a claim with its pod pinned to mn-3, a set that removes its claims
    // and one that keeps them, the quotas.
    let all = [
        CLAIM.to_string(),
        pod(
            "first",
            "pinned",
            Some("mn-3"),
            "echo hello > /data/greeting",
        ),
        set(
            "drop",
            3,
            "persistentVolumeClaimRetentionPolicy: {whenScaled: Delete, whenDeleted: Delete}",
        ),
        set("keep", 2, ""),
        QUOTAS.to_string(),
    ]
    .join("\n---\n");
    c.k.ok_stdin(&["apply", "-f", "-"], &all)?;

    // WaitForFirstConsumer: the volume is where the scheduler put the pod.
    let first = c.running_pods("app=first", 1, LONG)?;
    assert_eq!(first[0].1, "mn-3");
    assert_eq!(
        get(
            &c,
            "pvc",
            "pinned",
            "{.metadata.annotations.volume\\.kubernetes\\.io/selected-node}"
        )?,
        "mn-3"
    );
    let (pinned_pv, node, pinned_dir) = volume_of(&c, "pinned")?;
    assert_eq!(node, "mn-3");
    assert_eq!(
        std::fs::read_to_string(pinned_dir.join("greeting"))?,
        "hello\n"
    );
    step(t0, "pinned claim provisioned on mn-3");

    // The claim's next pod, placed freely, goes to the volume's node and finds the data.
    c.k.ok(&["delete", "pod", "first", "--wait=true"])?;
    // Also mounted read-only, and one file of it through subPath.
    let again = pod("again", "pinned", None, "true").replace(
        "volumeMounts: [{name: vol, mountPath: /data}]",
        "volumeMounts: [{name: vol, mountPath: /data}, {name: vol, mountPath: /ro, readOnly: true}, {name: vol, mountPath: /sub/hi, subPath: greeting}]",
    );
    c.k.ok_stdin(&["create", "-f", "-"], &again)?;
    let again = c.running_pods("app=again", 1, LONG)?;
    assert_eq!(again[0].1, "mn-3", "the claim's node");
    assert_eq!(
        c.sh(
            "again",
            "cat /data/greeting /ro/greeting /sub/hi; touch /ro/x 2>/dev/null || echo read-only"
        )?,
        "hello\nhello\nhello\nread-only\n"
    );

    // A claim in use is kept while its pod runs; then its volume and directory (on mn-3) go.
    c.k.ok(&["delete", "pvc", "pinned", "--wait=false"])?;
    std::thread::sleep(Duration::from_secs(2));
    assert!(c.k.ok(&["get", "pvc", "pinned"])?.contains("Terminating"));
    assert_eq!(c.sh("again", "cat /data/greeting")?, "hello\n");
    c.k.ok(&["delete", "pod", "again", "--wait=true"])?;
    wait_gone(&c, "pvc", "pinned")?;
    wait_gone(&c, "pv", &pinned_pv)?;
    eventually("pinned directory removed", LONG, || {
        anyhow::ensure!(!pinned_dir.exists(), "{} exists", pinned_dir.display());
        Ok(())
    })?;
    step(
        t0,
        "claim kept while in use, then removed with its directory",
    );

    // Storage quotas, with Kubernetes' messages.
    wait_for(
        &c.k,
        &[
            "get",
            "resourcequota",
            "-n",
            "quota",
            "-o",
            "jsonpath={.items[*].status.hard}",
        ],
        "quota status",
        LONG,
        |s| s.contains("requests.storage") && s.contains("persistentvolumeclaims"),
    )?;
    c.k.ok_stdin(
        &["create", "-f", "-"],
        &quota_claim("c1", "local-path", "50Mi"),
    )?;
    let forbidden = |name: &str, msg: &str| {
        format!(
            "Error from server (Forbidden): error when creating \"STDIN\": persistentvolumeclaims \"{name}\" is forbidden: {msg}"
        )
    };
    let class_key = "local-path.storageclass.storage.k8s.io/requests.storage";
    assert_eq!(
        refused(&c, &quota_claim("c2", "local-path", "20Mi"))?,
        forbidden(
            "c2",
            &format!(
                "exceeded quota: storage, requested: {class_key}=20Mi, used: {class_key}=50Mi, limited: {class_key}=60Mi"
            )
        )
    );
    assert_eq!(
        refused(&c, &quota_claim("c2", "slow", "60Mi"))?,
        forbidden(
            "c2",
            "exceeded quota: storage, requested: requests.storage=60Mi, used: requests.storage=50Mi, limited: requests.storage=100Mi"
        )
    );
    c.k.ok_stdin(&["create", "-f", "-"], &quota_claim("c2", "slow", "40Mi"))?;
    assert_eq!(
        refused(&c, &quota_claim("c3", "slow", "1Mi"))?,
        forbidden(
            "c3",
            "exceeded quota: count, requested: persistentvolumeclaims=1, used: persistentvolumeclaims=2, limited: persistentvolumeclaims=2"
        )
    );
    step(t0, "storage quotas refuse");

    // The sets: one replica per node, each claim's volume on its pod's node.
    let drop = c.running_pods("app=drop", 3, LONG)?;
    let keep = c.running_pods("app=keep", 2, LONG)?;
    let mut drop_dirs = Vec::new();
    for (p, node, _) in drop.iter().chain(&keep) {
        let (pv, pv_node, dir) = volume_of(&c, &format!("data-{p}"))?;
        assert_eq!(&pv_node, node, "{p}'s volume on its node");
        assert_eq!(std::fs::read_to_string(dir.join("id"))?, format!("{p}\n"));
        if p.starts_with("drop-") {
            drop_dirs.push((p.clone(), pv, dir));
        }
    }
    drop_dirs.sort();
    let nodes: std::collections::BTreeSet<&str> = drop.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(nodes.len(), 3, "one drop replica per node: {drop:?}");
    step(t0, "set claims on their pods' nodes");

    // Scale-down: Delete removes the condemned replicas' claims and directories; Retain
    // keeps them.
    c.k.ok(&["scale", "statefulset", "drop", "keep", "--replicas=1"])?;
    for (p, pv, dir) in &drop_dirs[1..] {
        wait_gone(&c, "pvc", &format!("data-{p}"))?;
        wait_gone(&c, "pv", pv)?;
        eventually(&format!("{p}'s directory removed"), LONG, || {
            anyhow::ensure!(!dir.exists(), "{} exists", dir.display());
            Ok(())
        })?;
    }
    wait_gone(&c, "pod", "keep-1")?;
    assert_eq!(get(&c, "pvc", "data-keep-1", "{.status.phase}")?, "Bound");
    step(t0, "scale-down: Delete removed, Retain kept");

    // Set deletion: the same.
    c.k.ok(&["delete", "statefulset", "drop", "keep", "--wait=true"])?;
    let (_, pv0, dir0) = &drop_dirs[0];
    wait_gone(&c, "pvc", "data-drop-0")?;
    wait_gone(&c, "pv", pv0)?;
    eventually("drop-0's directory removed", LONG, || {
        anyhow::ensure!(!dir0.exists(), "{} exists", dir0.display());
        Ok(())
    })?;
    wait_gone(&c, "pod", "keep-0")?;
    for claim in ["data-keep-0", "data-keep-1"] {
        assert_eq!(get(&c, "pvc", claim, "{.status.phase}")?, "Bound");
        assert_eq!(get(&c, "pvc", claim, "{.metadata.ownerReferences}")?, "");
        let (_, _, dir) = volume_of(&c, claim)?;
        assert!(dir.join("id").exists(), "{} kept", dir.display());
    }
    step(t0, "set deletion: Delete removed, Retain kept");

    // The nodes restart (`lotse up` stops and starts again); the kept set comes back, each
    // replica on its volume's node, with its data.
    c.lotse.as_mut().context("running")?.stop()?;
    c.lotse = Some(e2e::lotse::Lotse::start(&c.data, &c.args)?);
    c.wait_ready(Duration::from_secs(120))?;
    c.k.ok_stdin(&["apply", "-f", "-"], &set("keep", 2, ""))?;
    let back = c.running_pods("app=keep", 2, LONG)?;
    for (p, node, _) in &back {
        let (_, pv_node, _) = volume_of(&c, &format!("data-{p}"))?;
        assert_eq!(&pv_node, node, "{p} back on its volume's node");
        assert_eq!(
            c.sh(p, "cat /data/id; wc -l < /data/starts")?,
            format!("{p}\n2\n"),
            "{p}'s data from before"
        );
    }
    step(
        t0,
        "after a restart, the kept claims' replicas are back on their nodes",
    );
    // The set's pods go with it, not one by one behind the cluster's teardown.
    c.k.ok(&["delete", "statefulset", "keep", "--wait=false"])?;
    eprintln!("storage on three nodes: {:?}", t0.elapsed());
    Ok(())
}
