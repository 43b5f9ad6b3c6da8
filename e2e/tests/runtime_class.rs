//! RuntimeClass handlers on a real containerd (issue 17, point 6): the kubelet offers every OCI
//! runtime it finds on the node besides runc as a handler of its own name (as k3s does for crun
//! and youki), so a pod of a RuntimeClass with `handler: crun` runs its containers with crun —
//! the container's runtime options in containerd name the crun binary (on a host with hybrid
//! cgroups, which Debian 12's crun refuses, crun's own refusal shows the pod went to crun) —
//! while pods without a class keep runc; a class whose handler no runtime serves fails
//! the pod sandbox with containerd's message, as in Kubernetes.
//!
//! Needs root, containerd, runc, crun (Debian package crun), nftables, the built binaries and
//! the busybox and pause images (~25 s).
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use e2e::eventually;
use e2e::lotse::{Node, random_pod_cidr, wait_for};

const MANIFEST: &str = r#"
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: crun}
handler: crun
---
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: gvisor}
handler: runsc
---
apiVersion: v1
kind: Pod
metadata: {name: on-crun}
spec:
  runtimeClassName: crun
  terminationGracePeriodSeconds: 0
  automountServiceAccountToken: false
  containers: [{name: c, image: busybox, command: ["sleep", "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: on-runc}
spec:
  terminationGracePeriodSeconds: 0
  automountServiceAccountToken: false
  containers: [{name: c, image: busybox, command: ["sleep", "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: on-runsc}
spec:
  runtimeClassName: gvisor
  terminationGracePeriodSeconds: 0
  automountServiceAccountToken: false
  containers: [{name: c, image: busybox, command: ["sleep", "3600"]}]
"#;

/// The `BinaryName` of the runtime options containerd keeps for container `id`.
fn binary_name(sock: &std::path::Path, id: &str) -> anyhow::Result<String> {
    let out = Command::new("ctr")
        .arg("-a")
        .arg(sock)
        .args(["-n", "k8s.io", "containers", "info", id])
        .output()
        .context("ctr")?;
    anyhow::ensure!(
        out.status.success(),
        "ctr containers info {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(info
        .pointer("/Runtime/Options/binary_name")
        .or_else(|| info.pointer("/Runtime/Options/BinaryName"))
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string())
}

#[test]
#[ignore = "needs root, containerd, runc, crun, nftables"]
fn a_runtime_class_runs_its_pods_with_its_handler() -> anyhow::Result<()> {
    let crun = ["/usr/bin/crun", "/usr/local/bin/crun"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .context("crun is not installed (Debian package crun; .ci/deps.sh installs it)")?;
    let tmp = tempfile::tempdir()?;
    let node = Node::start(
        tmp.path(),
        "rtc-node",
        &random_pod_cidr()?,
        &["busybox.tar", "pause.tar"],
    )?;
    let k = &node.kubectl;
    k.ok_stdin(&["apply", "-f", "-"], MANIFEST)?;
    let sandbox_error = |pod: &str| -> anyhow::Result<String> {
        eventually(
            &format!("{pod} sandbox error"),
            Duration::from_secs(30),
            || {
                let field = format!("involvedObject.name={pod},reason=FailedCreatePodSandBox");
                let out = k.ok(&[
                    "get",
                    "events",
                    "--field-selector",
                    &field,
                    "-o",
                    "jsonpath={.items[*].message}",
                ])?;
                if out.is_empty() {
                    bail!("no FailedCreatePodSandBox event yet");
                }
                Ok(out)
            },
        )
    };
    // crun 1.8 (Debian 12) refuses hosts whose cgroup v2 hierarchy has controllers beside v1
    // ("hybrid" mode, as this CI machine's): there its own refusal is what shows that the
    // pod went to crun.
    let hybrid = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
        .is_ok_and(|c| !c.trim().is_empty());
    let running: &[&str] = if hybrid {
        let msg = sandbox_error("on-crun")?;
        assert!(
            msg.contains("cgroups in hybrid mode not supported"),
            "crun's own refusal of a hybrid cgroup host: {msg}"
        );
        eprintln!("cgroup hybrid mode: crun refuses to run containers here ({msg})");
        &["on-runc"]
    } else {
        &["on-crun", "on-runc"]
    };
    for pod in running {
        wait_for(
            k,
            &["get", "pod", pod, "-o", "jsonpath={.status.phase}"],
            &format!("{pod} Running"),
            Duration::from_secs(60),
            |s| s == "Running",
        )
        .with_context(|| {
            k.run(&["describe", "pod", pod])
                .map(|o| o.stdout)
                .unwrap_or_default()
        })?;
    }
    let sock = node.data.join("kubelet/containerd/containerd.sock");
    let id = |pod: &str| -> anyhow::Result<String> {
        let id = k.ok(&[
            "get",
            "pod",
            pod,
            "-o",
            "jsonpath={.status.containerStatuses[0].containerID}",
        ])?;
        Ok(id.trim().trim_start_matches("containerd://").to_string())
    };
    if !hybrid {
        assert_eq!(binary_name(&sock, &id("on-crun")?)?, crun, "on-crun");
    }
    assert_eq!(binary_name(&sock, &id("on-runc")?)?, "", "on-runc: runc");
    // No runtime serves `runsc`: the sandbox fails with containerd's message.
    let msg = sandbox_error("on-runsc")?;
    assert!(
        msg.contains("no runtime for \"runsc\" is configured"),
        "{msg}"
    );
    Ok(())
}
