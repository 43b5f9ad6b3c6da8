//! `kubectl debug` with kubectl 1.27 and 1.33 on a one-node `lotse up` (real containerd,
//! busybox): ephemeral containers through `pods/ephemeralcontainers` (in the target's PID
//! namespace, their `ephemeralContainerStatuses`, several per pod, interactive with `-i`),
//! Kubernetes' refusals (an existing one changed or removed, a target that does not exist, an
//! ephemeral container on create), `--copy-to`, and `debug node/<name>` (hostPID,
//! hostNetwork, the node's filesystem under /host). Takes about a minute.
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use e2e::Kubectl;
use e2e::lotse::{Node, random_pod_cidr, wait_for};
use serde_json::Value;

const APP: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: app}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    imagePullPolicy: Never
    command: ["sleep", "31337"]
"#;

const WITH_EPHEMERAL: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: sneaky}
spec:
  containers:
  - {name: main, image: busybox, imagePullPolicy: Never}
  ephemeralContainers:
  - {name: dbg, image: busybox, imagePullPolicy: Never}
"#;

const EPHEMERAL_URL: &str = "/api/v1/namespaces/default/pods/app/ephemeralcontainers";

/// The status of ephemeral container `name` of pod `app`, as JSON.
fn ephemeral_status(k: &Kubectl, name: &str) -> anyhow::Result<Value> {
    let pod: Value = serde_json::from_str(&k.ok(&["get", "pod", "app", "-o", "json"])?)?;
    Ok(pod
        .pointer("/status/ephemeralContainerStatuses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|s| s["name"] == name).cloned())
        .unwrap_or(Value::Null))
}

/// Waits until ephemeral container `name` of `app` has terminated; returns its status.
fn wait_terminated(k: &Kubectl, name: &str) -> anyhow::Result<Value> {
    let t0 = std::time::Instant::now();
    loop {
        let s = ephemeral_status(k, name)?;
        if s.pointer("/state/terminated").is_some() {
            return Ok(s);
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("ephemeral container {name} did not terminate: {s}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// PUT of pod `app` (edited by `edit`) to its `ephemeralcontainers`; returns kubectl's error.
fn put_refused(
    k: &Kubectl,
    dir: &std::path::Path,
    edit: impl Fn(&mut Value),
) -> anyhow::Result<String> {
    let mut pod: Value = serde_json::from_str(&k.ok(&["get", "pod", "app", "-o", "json"])?)?;
    edit(&mut pod);
    let file = dir.join(format!("app-{}.json", e2e::free_port()?));
    std::fs::write(&file, serde_json::to_vec(&pod)?)?;
    let out = k.run(&[
        "replace",
        "--raw",
        EPHEMERAL_URL,
        "-f",
        &file.to_string_lossy(),
    ])?;
    ensure!(out.code != 0, "PUT was accepted: {}", out.stdout);
    Ok(format!("{}{}", out.stdout, out.stderr))
}

fn ephemeral(k: &Kubectl, dir: &std::path::Path) -> anyhow::Result<()> {
    let v = k.minor;
    // Non-interactive, in the target's PID namespace: `ps` sees the main container's process.
    let name = format!("dbg-{v}");
    k.ok(&[
        "debug",
        "pod/app",
        "--image=busybox",
        "--image-pull-policy=Never",
        "--target=main",
        "-c",
        &name,
        "--",
        "sh",
        "-c",
        "ps; echo debug-done",
    ])?;
    let logs = wait_for(
        k,
        &["logs", "app", "-c", &name],
        "the debug container's output",
        Duration::from_secs(30),
        |s| s.contains("debug-done"),
    )?;
    ensure!(
        logs.contains("sleep 31337"),
        "kubectl 1.{v}: the ephemeral container does not see its target's processes: {logs}"
    );
    let st = wait_terminated(k, &name)?;
    ensure!(
        st.pointer("/state/terminated/exitCode") == Some(&Value::from(0))
            && st["restartCount"] == 0
            && st["ready"] == false
            && st["image"] == "docker.io/library/busybox:latest",
        "kubectl 1.{v}: status of {name}: {st}"
    );
    // Never restarted: still terminated a moment later.
    std::thread::sleep(Duration::from_secs(2));
    let again = ephemeral_status(k, &name)?;
    ensure!(
        again.pointer("/state/terminated").is_some() && again["restartCount"] == 0,
        "kubectl 1.{v}: {name} was restarted: {again}"
    );

    // Interactive (`-i` attaches once it runs; stdin is this test's).
    let name_i = format!("dbg-i-{v}");
    let out = k.run_stdin(
        &[
            "debug",
            "-i",
            "pod/app",
            "--image=busybox",
            "--image-pull-policy=Never",
            "--target=main",
            "-c",
            &name_i,
            "--",
            "sh",
        ],
        "echo hello-from-$((20+22)); ps; exit 3\n",
    )?;
    ensure!(
        out.stdout.contains("hello-from-42") && out.stdout.contains("sleep 31337"),
        "kubectl 1.{v} debug -i: {} / {}",
        out.stdout,
        out.stderr
    );
    let st = wait_terminated(k, &name_i)?;
    ensure!(
        st.pointer("/state/terminated/exitCode") == Some(&Value::from(3)),
        "kubectl 1.{v}: status of {name_i}: {st}"
    );

    // A target that does not exist.
    let err = k.fails(&[
        "debug",
        "pod/app",
        "--image=busybox",
        "--image-pull-policy=Never",
        "--target=nope",
        "-c",
        &format!("dbg-bad-{v}"),
        "--",
        "true",
    ])?;
    ensure!(
        err.contains("Pod \"app\" is invalid: spec.ephemeralContainers[")
            && err.contains("].targetContainerName: Not found: \"nope\""),
        "kubectl 1.{v}: missing target: {err}"
    );

    // Existing ephemeral containers may be neither changed nor removed.
    let err = put_refused(k, dir, |pod| {
        if let Some(Value::Array(a)) = pod.pointer_mut("/spec/ephemeralContainers") {
            a.retain(|c| c["name"] != name.as_str());
        }
    })?;
    ensure!(
        err.contains(&format!(
            "Pod \"app\" is invalid: spec.ephemeralContainers: Forbidden: existing ephemeral containers \"{name}\" may not be removed"
        )),
        "kubectl 1.{v}: removal: {err}"
    );
    let err = put_refused(k, dir, |pod| {
        if let Some(Value::Array(a)) = pod.pointer_mut("/spec/ephemeralContainers") {
            for c in a.iter_mut().filter(|c| c["name"] == name.as_str()) {
                c["image"] = Value::from("busybox:other");
            }
        }
    })?;
    ensure!(
        err.contains(&format!(
            "Pod \"app\" is invalid: spec.ephemeralContainers: Forbidden: existing ephemeral containers \"{name}\" may not be changed"
        )),
        "kubectl 1.{v}: change: {err}"
    );

    // --copy-to: a copy of the pod with a debug container beside `main` (client side).
    let copy = format!("app-copy-{v}");
    k.ok(&[
        "debug",
        "app",
        &format!("--copy-to={copy}"),
        "--container=debugger",
        "--image=busybox",
        "--image-pull-policy=Never",
        "--",
        "sh",
        "-c",
        "echo copied; sleep 3600",
    ])?;
    let names = wait_for(
        k,
        &[
            "get",
            "pod",
            &copy,
            "-o",
            "jsonpath={.status.phase} {.spec.containers[*].name}",
        ],
        "the copy Running",
        Duration::from_secs(30),
        |s| s.starts_with("Running"),
    )?;
    ensure!(
        names == "Running main debugger",
        "kubectl 1.{v}: copy: {names}"
    );
    wait_for(
        k,
        &["logs", &copy, "-c", "debugger"],
        "the copy's debugger output",
        Duration::from_secs(20),
        |s| s.contains("copied"),
    )?;
    k.ok(&["delete", "pod", &copy, "--grace-period=0", "--wait=false"])?;

    // debug node/<name>: hostPID, hostNetwork, the node's root under /host.
    let out = k
        .run(&[
            "debug",
            "node/debug",
            "--image=busybox",
            "--image-pull-policy=Never",
            "--",
            "sh",
            "-c",
            "test -f /host/etc/os-release && echo host-fs-ok; ps | grep -q '[c]ontainerd' && echo host-pid-ok; hostname",
        ])?
        .success()?;
    let said = format!("{}{}", out.stdout, out.stderr);
    let pod = said
        .split_whitespace()
        .find(|w| w.starts_with("node-debugger-debug-"))
        .with_context(|| format!("kubectl 1.{v} debug node: no pod name in {said}"))?
        .to_string();
    wait_for(
        k,
        &["get", "pod", &pod, "-o", "jsonpath={.status.phase}"],
        "the node debugger to finish",
        Duration::from_secs(30),
        |s| s == "Succeeded",
    )?;
    let logs = k.ok(&["logs", &pod])?;
    if !(logs.contains("host-fs-ok") && logs.contains("host-pid-ok")) {
        let yaml = k.ok(&["get", "pod", &pod, "-o", "yaml"])?;
        bail!("kubectl 1.{v} debug node: {logs}\n{yaml}");
    }
    let spec = k.ok(&[
        "get",
        "pod",
        &pod,
        "-o",
        "jsonpath={.spec.hostPID} {.spec.hostNetwork} {.spec.hostIPC} {.spec.nodeName}",
    ])?;
    ensure!(
        spec == "true true true debug",
        "kubectl 1.{v} debug node pod: {spec}"
    );
    k.ok(&["delete", "pod", &pod, "--grace-period=0", "--wait=false"])?;
    Ok(())
}

#[test]
#[ignore = "needs root, containerd and the busybox/pause image archives"]
fn kubectl_debug_1_27_and_1_33() -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let tmp = tempfile::tempdir()?;
    let node = Node::start(
        tmp.path(),
        "debug",
        &random_pod_cidr()?,
        &["busybox.tar", "pause.tar"],
    )?;
    let k = node.kubectl.clone();
    k.ok_stdin(&["apply", "-f", "-"], APP)?;
    wait_for(
        &k,
        &["get", "pod", "app", "-o", "jsonpath={.status.phase}"],
        "pod app Running",
        Duration::from_secs(60),
        |s| s == "Running",
    )?;
    let kubeconfig = node.data.join("admin.kubeconfig");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work)?;
    for minor in [27, 33] {
        let kx = Kubectl::new(minor, kubeconfig.clone(), tmp.path().join("cache"));
        if let Err(e) = ephemeral(&kx, &work) {
            let log = node.lotse.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "{e:#}\n--- last lines of lotse.log ---\n{}",
                tail.join("\n")
            );
        }
    }
    // Every ephemeral container is listed in the pod's status.
    let names = k.ok(&[
        "get",
        "pod",
        "app",
        "-o",
        "jsonpath={.status.ephemeralContainerStatuses[*].name}",
    ])?;
    ensure!(
        names == "dbg-27 dbg-i-27 dbg-33 dbg-i-33",
        "ephemeralContainerStatuses: {names}"
    );
    // The main container was never disturbed.
    let restarts = k.ok(&[
        "get",
        "pod",
        "app",
        "-o",
        "jsonpath={.status.containerStatuses[0].restartCount}",
    ])?;
    ensure!(restarts == "0", "main restarted: {restarts}");
    // Only the subresource adds ephemeral containers.
    let err = k
        .run_stdin(&["create", "-f", "-"], WITH_EPHEMERAL)?
        .failure()?
        .stderr;
    ensure!(
        err.contains(
            "Pod \"sneaky\" is invalid: spec.ephemeralContainers: Forbidden: cannot be set on create"
        ),
        "create with ephemeral containers: {err}"
    );
    // As in Kubernetes, `edit` does not include pods/ephemeralcontainers (it would bypass
    // admission written before ephemeral containers existed); cluster admins have it.
    k.ok(&[
        "create",
        "rolebinding",
        "student-edit",
        "--clusterrole=edit",
        "--serviceaccount=default:student",
    ])?;
    let as_student = "--as=system:serviceaccount:default:student";
    let can = |extra: &[&str]| -> anyhow::Result<String> {
        let mut args = vec!["auth", "can-i", "patch", "pods"];
        args.extend_from_slice(extra);
        Ok(k.run(&args)?.stdout.trim().to_string())
    };
    let sub = "--subresource=ephemeralcontainers";
    ensure!(can(&[as_student])? == "yes", "edit may patch pods");
    ensure!(
        can(&[sub, as_student])? == "no",
        "edit may not patch pods/ephemeralcontainers"
    );
    ensure!(
        can(&[sub])? == "yes",
        "the admin may patch pods/ephemeralcontainers"
    );
    println!("kubectl debug e2e took {:?}", t0.elapsed());
    Ok(())
}
