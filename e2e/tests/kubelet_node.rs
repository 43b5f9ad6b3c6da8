//! The kubelet on a real containerd, driven through `lotse up` and the real kubectl: node
//! registration, pods scheduled and run, pod IPs reachable over HTTP, configMap volumes, logs,
//! exec and attach (terminal size and resize, stdinOnce), NodeStatus written only on change,
//! CrashLoopBackOff, OOMKilled, liveness restarts, ImagePullBackOff, kill -9 and restart
//! without container restarts, and deletion leaving nothing in containerd.
//!
//! Needs root, Debian's `containerd`, `runc` and `containernetworking-plugins`, the built
//! binaries (`cargo build --workspace --bins`) and the images built by
//! `target/debug/lotse images build --output target/lotse-images busybox pause`
//! (or `$LOTSE_IMAGES_DIR`).
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::Kubectl;
use e2e::lotse::{
    Lotse, Node, containers_in, delete_all_pods, http_get, node_ready_args, wait_for,
};

/// Runs `kubectl attach` with `args`, writes `input` to its stdin (kept open), and returns its
/// stdout once `done` accepts it (or after `timeout`); kubectl is killed either way.
fn attach(
    kubeconfig: &Path,
    args: &[&str],
    input: &str,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut child = Command::new(Path::new(e2e::KUBECTL_DIR).join("kubectl.1.33"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("attach")
        .args(args)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take().context("no stdout pipe")?;
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut sent = input.is_empty();
    while t0.elapsed() < timeout && !done(&String::from_utf8_lossy(&out)) {
        if !sent && t0.elapsed() > Duration::from_secs(2) {
            // Once the session is up: the input reaches the container only while attached.
            if let Some(w) = stdin.as_mut() {
                w.write_all(input.as_bytes())?;
                w.flush()?;
            }
            sent = true;
        }
        if let Ok(b) = rx.recv_timeout(Duration::from_millis(200)) {
            out.extend(b);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(stdin);
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Runs `cat /etc/hostname` in `pod` with kube-rs' exec (WebSocket).
fn exec_kube_rs(kubeconfig: &Path, pod: &str) -> anyhow::Result<String> {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, AttachParams};
    use tokio::io::AsyncReadExt;
    tokio::runtime::Runtime::new()?.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        let pods: Api<Pod> = Api::namespaced(kube::Client::try_from(cfg)?, "default");
        let mut p = pods
            .exec(
                pod,
                ["cat", "/etc/hostname"],
                &AttachParams::default().stderr(false),
            )
            .await?;
        let mut out = String::new();
        if let Some(mut s) = p.stdout() {
            s.read_to_string(&mut out).await?;
        }
        let status = p.take_status();
        p.join().await?;
        if let Some(st) = status {
            let st = st.await;
            anyhow::ensure!(
                st.as_ref().and_then(|s| s.status.as_deref()) == Some("Success"),
                "exec status: {st:?}"
            );
        }
        Ok(out)
    })
}

/// Runs `sh -c 'sleep 1; stty size; read x; stty size'` in `pod` with a terminal through
/// kube-rs: sends the size 100x40 first, 120x50 after the first answer, then a newline; returns
/// the terminal output.
fn exec_tty_resize_kube_rs(kubeconfig: &Path, pod: &str) -> anyhow::Result<String> {
    use futures::SinkExt;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, AttachParams, TerminalSize};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::runtime::Runtime::new()?.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        let pods: Api<Pod> = Api::namespaced(kube::Client::try_from(cfg)?, "default");
        let mut p = pods
            .exec(
                pod,
                ["sh", "-c", "sleep 1; stty size; read x; stty size"],
                &AttachParams::interactive_tty(),
            )
            .await?;
        let mut size = p.terminal_size().context("no resize channel")?;
        size.send(TerminalSize {
            width: 100,
            height: 40,
        })
        .await?;
        let mut stdout = p.stdout().context("no stdout")?;
        let mut stdin = p.stdin().context("no stdin")?;
        let mut out = Vec::new();
        let session = async {
            let mut buf = [0u8; 1024];
            while !out.contains(&b'\n') {
                let n = stdout.read(&mut buf).await?;
                anyhow::ensure!(
                    n > 0,
                    "output ended early: {:?}",
                    String::from_utf8_lossy(&out)
                );
                out.extend_from_slice(&buf[..n]);
            }
            size.send(TerminalSize {
                width: 120,
                height: 50,
            })
            .await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            stdin.write_all(b"\n").await?;
            stdout.read_to_end(&mut out).await?;
            anyhow::Ok(())
        };
        tokio::time::timeout(Duration::from_secs(30), session)
            .await
            .context("exec -it session timed out")??;
        drop(stdin);
        p.join().await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    })
}

/// The HTTP status the kubelet API answers `path` with, using the client certificate of
/// `kubeconfig` (None: no certificate).
fn kubelet_api_status(port: u16, kubeconfig: Option<&Path>, path: &str) -> anyhow::Result<u16> {
    tokio::runtime::Runtime::new()?.block_on(async {
        let url: http::Uri = format!("https://127.0.0.1:{port}").parse()?;
        let mut cfg = match kubeconfig {
            Some(p) => {
                let kc = kube::config::Kubeconfig::read_from(p)?;
                kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
            }
            None => kube::Config::new(url.clone()),
        };
        cfg.cluster_url = url;
        cfg.root_cert = None;
        cfg.accept_invalid_certs = true;
        let client = kube::Client::try_from(cfg)?;
        match client
            .request_text(http::Request::get(path).body(Vec::new())?)
            .await
        {
            Ok(_) => Ok(200),
            Err(kube::Error::Api(s)) => Ok(s.code),
            Err(e) => Err(e.into()),
        }
    })
}

const PODS: &str = r#"
# Normally made by the serviceaccount controller; created here so the test needs only the scheduler.
apiVersion: v1
kind: ServiceAccount
metadata: {name: default}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: www}
data: {index.html: "hello from a configMap volume\n"}
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  containers:
  - name: httpd
    image: busybox
    command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
    ports: [{containerPort: 8080}]
    readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
    volumeMounts: [{name: www, mountPath: /www}]
  volumes: [{name: www, configMap: {name: www}}]
---
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  containers:
  - {name: c, image: busybox, command: ["sh", "-c", "echo about to fail; exit 3"]}
---
apiVersion: v1
kind: Pod
metadata: {name: oom}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "tail /dev/zero"]
    resources: {limits: {memory: 16Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: live}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "touch /tmp/ok; sleep 2; rm /tmp/ok; sleep 3600"]
    livenessProbe: {exec: {command: ["cat", "/tmp/ok"]}, periodSeconds: 1, failureThreshold: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: ticker}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done"]
---
apiVersion: v1
kind: Pod
metadata: {name: echo}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: busybox, command: ["cat"], stdin: true}
---
apiVersion: v1
kind: Pod
metadata: {name: once}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "cat; echo EOF-SEEN; sleep 3600"]
    stdin: true
    stdinOnce: true
---
apiVersion: v1
kind: Pod
metadata: {name: term}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "while true; do stty size; sleep 1; done"]
    stdin: true
    tty: true
---
apiVersion: v1
kind: Pod
metadata: {name: noimage}
spec:
  containers:
  - {name: c, image: "example.com/not-imported:1.0"}
"#;

#[test]
#[ignore = "needs containerd and runc (root), built binaries and images (lotse images build)"]
fn lotse_up_runs_pods_on_containerd() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let Node {
        lotse,
        kubectl: k,
        data,
        args,
        kubelet_port,
        started: t0,
    } = Node::start(
        tmp.path(),
        "e2e-node",
        "10.244.231.0/24",
        &["busybox.tar", "pause.tar"],
    )?;
    let mut lotse = lotse;
    let ready = |s: &str| s.trim() == "True";
    let node_ready = node_ready_args("e2e-node");
    println!("node Ready {:?} after start", t0.elapsed());
    let node = k
        .run(&["get", "node", "e2e-node", "-o", "json"])?
        .success()?
        .stdout;
    let node: serde_json::Value = serde_json::from_str(&node)?;
    assert!(
        node.pointer("/status/capacity/cpu").is_some(),
        "capacity: {node}"
    );
    assert_eq!(
        node.pointer("/metadata/labels/kubernetes.io~1hostname")
            .and_then(|v| v.as_str()),
        Some("e2e-node")
    );
    k.run(&["get", "lease", "-n", "kube-node-lease", "e2e-node"])?
        .success()?;
    // The imported images are reported in the status (by the first heartbeat after registering).
    let images = [
        "get",
        "node",
        "e2e-node",
        "-o",
        "jsonpath={.status.images[*].names}",
    ];
    wait_for(
        &k,
        &images,
        "busybox in status.images",
        Duration::from_secs(15),
        |s| s.contains("busybox"),
    )?;
    // From now on nothing about the node changes: its status is not written again (checked
    // below, after the exec and attach checks) while the Lease keeps being renewed.
    let heartbeat_jp = [
        "get",
        "node",
        "e2e-node",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].lastHeartbeatTime}",
    ];
    let lease_jp = [
        "get",
        "lease",
        "-n",
        "kube-node-lease",
        "e2e-node",
        "-o",
        "jsonpath={.spec.renewTime}",
    ];
    let heartbeat0 = k.run(&heartbeat_jp)?.success()?.stdout;
    let lease0 = k.run(&lease_jp)?.success()?.stdout;
    let quiet_since = Instant::now();

    // Published by the controllers (root-ca-cert-publisher) in a full `lotse up`; the injected
    // kube-api-access volume needs it, and this test runs with the scheduler only.
    let ca = format!("--from-file=ca.crt={}", data.join("pki/ca.crt").display());
    let _ = k.run(&["create", "configmap", "kube-root-ca.crt", &ca])?;
    k.run_stdin(&["apply", "-f", "-"], PODS)?.success()?;
    let jp = |pod: &str, path: &str| -> Vec<String> {
        vec![
            "get".into(),
            "pod".into(),
            pod.into(),
            "-o".into(),
            format!("jsonpath={path}"),
        ]
    };

    // A scheduled pod becomes Ready with an IP, and serves its configMap over HTTP.
    let web_ready = jp("web", "{.status.conditions[?(@.type==\"Ready\")].status}");
    let web_ready: Vec<&str> = web_ready.iter().map(String::as_str).collect();
    wait_for(&k, &web_ready, "web Ready", Duration::from_secs(60), ready)
        .with_context(|| lotse.log())?;
    let ip = k
        .run(&["get", "pod", "web", "-o", "jsonpath={.status.podIP}"])?
        .success()?
        .stdout;
    assert!(
        ip.starts_with("10.244.231."),
        "pod IP {ip} outside the podCIDR"
    );
    let body = http_get(&ip, 8080)?;
    assert!(
        body.contains("hello from a configMap volume"),
        "HTTP answer: {body}"
    );

    // exec over WebSocket (v5.channel.k8s.io) through the apiserver, with kubectl 1.30 and 1.33.
    for minor in [30, 33] {
        let kx = Kubectl::new(
            minor,
            data.join("admin.kubeconfig"),
            tmp.path().join(format!("kubectl-cache-{minor}")),
        );
        let out = kx.run(&["exec", "web", "--", "cat", "/etc/hostname"])?;
        assert_eq!(
            (out.code, out.stdout.trim()),
            (0, "web"),
            "kubectl 1.{minor} exec: {}",
            out.stderr
        );
        let out = kx.run(&["exec", "web", "--", "sh", "-c", "echo oops >&2; exit 3"])?;
        assert_eq!(out.code, 3, "kubectl 1.{minor} exit code: {}", out.stderr);
        assert!(out.stderr.contains("oops"), "stderr: {}", out.stderr);
        let out = kx.run_stdin(
            &["exec", "-i", "web", "--", "sh", "-c", "cat; echo done"],
            "line 1\nline 2\n",
        )?;
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (0, "line 1\nline 2\ndone\n"),
            "kubectl 1.{minor} exec -i: {}",
            out.stderr
        );
    }
    // -it: the command gets a terminal (`script` gives kubectl the terminal it insists on).
    let cmd = format!(
        "{}/kubectl.1.33 --kubeconfig {} exec -it web -- sh -c 'tty; exit 5'",
        e2e::KUBECTL_DIR,
        data.join("admin.kubeconfig").display()
    );
    let out = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "exec -it: {text}");
    assert!(text.contains("/dev/pts/"), "exec -it: {text}");
    // The terminal has kubectl's size (kubectl sends it on the resize channel). The command
    // waits a little: containerd creates the terminal when the process starts and the size is
    // applied right after, as with CRI exec in Kubernetes.
    let cmd = format!(
        "stty cols 100 rows 40; {}/kubectl.1.33 --kubeconfig {} exec -it web -- sh -c 'sleep 1; stty size'",
        e2e::KUBECTL_DIR,
        data.join("admin.kubeconfig").display()
    );
    let out = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "exec -it stty size: {text}");
    assert!(text.contains("40 100"), "exec -it stty size: {text:?}");
    // A resize during the session reaches the process's terminal.
    let text = exec_tty_resize_kube_rs(&data.join("admin.kubeconfig"), "web")?;
    assert!(
        text.contains("40 100") && text.contains("50 120"),
        "kube-rs exec with resize: {text:?}"
    );
    let out = k.run(&["exec", "web", "--", "no-such-binary"])?;
    assert_ne!(out.code, 0, "exec of a missing binary succeeded");
    // kube-rs (WebSocket v5 with v4 fallback).
    let hostname = exec_kube_rs(&data.join("admin.kubeconfig"), "web")?;
    assert_eq!(hostname.trim(), "web");

    // attach: a container's output from now on, and stdin into a `stdin: true` container.
    for pod in ["ticker", "echo", "once", "term"] {
        let running = jp(pod, "{.status.phase}");
        let running: Vec<&str> = running.iter().map(String::as_str).collect();
        wait_for(&k, &running, pod, Duration::from_secs(60), |s| {
            s == "Running"
        })?;
    }
    let kc = data.join("admin.kubeconfig");
    let out = attach(
        &kc,
        &["ticker", "-c", "c"],
        "",
        Duration::from_secs(15),
        |o| o.lines().filter(|l| l.starts_with("tick ")).count() >= 2,
    )?;
    assert!(
        out.lines().filter(|l| l.starts_with("tick ")).count() >= 2,
        "kubectl attach ticker: {out:?}"
    );
    let out = attach(
        &kc,
        &["-i", "echo", "-c", "c"],
        "hello attach\n",
        Duration::from_secs(15),
        |o| o.contains("hello attach"),
    )?;
    assert!(
        out.contains("hello attach"),
        "kubectl attach -i echo: {out:?}"
    );
    // attach -it: the container's terminal takes kubectl's size.
    let cmd = format!(
        "stty cols 90 rows 30; {}/kubectl.1.33 --kubeconfig {} attach -it term",
        e2e::KUBECTL_DIR,
        kc.display()
    );
    let out = Command::new("timeout")
        .args(["6", "script", "-qfec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("30 90"), "attach -it term: {text:?}");
    // stdinOnce: when the first attach ends, the container's stdin is closed (cat sees EOF).
    let out = attach(
        &kc,
        &["-i", "once", "-c", "c"],
        "first session\n",
        Duration::from_secs(15),
        |o| o.contains("first session"),
    )?;
    assert!(
        out.contains("first session"),
        "kubectl attach -i once: {out:?}"
    );
    wait_for(
        &k,
        &["logs", "once"],
        "EOF-SEEN after the first attach",
        Duration::from_secs(15),
        |s| s.contains("EOF-SEEN"),
    )
    .with_context(|| lotse.log())?;

    // NodeStatus is written on change only: the heartbeat time stayed while the Lease moved.
    let wait = Duration::from_secs(21).saturating_sub(quiet_since.elapsed());
    std::thread::sleep(wait);
    let heartbeat1 = k.run(&heartbeat_jp)?.success()?.stdout;
    let lease1 = k.run(&lease_jp)?.success()?.stdout;
    assert_ne!(lease0, lease1, "the Lease was not renewed");
    assert_eq!(
        heartbeat0, heartbeat1,
        "the node status was written though nothing changed"
    );

    // The kubelet API serves the apiserver only: no client certificate → 401, a certificate of
    // the cluster CA with another identity (the node's own) → 403.
    let logs_path = "/containerLogs/default/web/httpd";
    assert_eq!(kubelet_api_status(kubelet_port, None, logs_path)?, 401);
    let node_kc = data.join("kubelet-e2e-node.kubeconfig");
    assert_eq!(
        kubelet_api_status(kubelet_port, Some(&node_kc), logs_path)?,
        403
    );
    // Through the apiserver (which presents its kubelet client certificate) it works.
    k.run(&["logs", "web"])?.success()?;

    // CrashLoopBackOff with lastState, exit code and reason.
    let crash = [
        "get",
        "pod",
        "crash",
        "-o",
        "jsonpath={.status.containerStatuses[0].state.waiting.reason}",
    ];
    wait_for(
        &k,
        &crash,
        "crash in CrashLoopBackOff",
        Duration::from_secs(40),
        |s| s == "CrashLoopBackOff",
    )?;
    let last = k.run(&["get", "pod", "crash", "-o", "jsonpath={.status.containerStatuses[0].lastState.terminated.exitCode}/{.status.containerStatuses[0].lastState.terminated.reason}"])?.stdout;
    assert_eq!(last, "3/Error");
    let logs = k.run(&["logs", "crash"])?.success()?.stdout;
    assert!(logs.contains("about to fail"), "logs: {logs}");

    // The memory limit is enforced and reported.
    let oom = [
        "get",
        "pod",
        "oom",
        "-o",
        "jsonpath={.status.phase}/{.status.containerStatuses[0].state.terminated.reason}",
    ];
    wait_for(&k, &oom, "oom OOMKilled", Duration::from_secs(40), |s| {
        s == "Failed/OOMKilled"
    })?;

    // A failing liveness probe restarts the container.
    let live = [
        "get",
        "pod",
        "live",
        "-o",
        "jsonpath={.status.containerStatuses[0].restartCount}",
    ];
    wait_for(&k, &live, "live restarted", Duration::from_secs(40), |s| {
        s.parse::<i32>().unwrap_or(0) >= 1
    })?;
    let events = k
        .run(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=live",
            "-o",
            "jsonpath={.items[*].reason}",
        ])?
        .stdout;
    assert!(
        events.contains("Unhealthy") && events.contains("Killing"),
        "events: {events}"
    );

    // Missing images are never pulled: ImagePullBackOff naming the import directory.
    let noimg = [
        "get",
        "pod",
        "noimage",
        "-o",
        "jsonpath={.status.containerStatuses[0].state.waiting.reason}|{.status.containerStatuses[0].state.waiting.message}",
    ];
    let out = wait_for(
        &k,
        &noimg,
        "ImagePullBackOff",
        Duration::from_secs(30),
        |s| s.starts_with("ImagePullBackOff|"),
    )?;
    assert!(out.contains("kubelet/images"), "message: {out}");

    // kill -9 and restart: the running containers are adopted, not restarted.
    let web_cid = k
        .run(&[
            "get",
            "pod",
            "web",
            "-o",
            "jsonpath={.status.containerStatuses[0].containerID}",
        ])?
        .stdout;
    let transition_jp = [
        "get",
        "node",
        "e2e-node",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].lastTransitionTime}",
    ];
    let ready_since = k.run(&transition_jp)?.success()?.stdout;
    lotse.signal("KILL")?;
    let lotse = Lotse::start(&data, &args)?;
    wait_for(
        &k,
        &node_ready,
        "node Ready after restart",
        Duration::from_secs(30),
        ready,
    )
    .with_context(|| lotse.log())?;
    // Ready all along (the Lease did not expire): its transition time stays.
    assert_eq!(
        k.run(&transition_jp)?.success()?.stdout,
        ready_since,
        "Ready's lastTransitionTime moved across the kubelet restart"
    );
    std::thread::sleep(Duration::from_secs(3));
    let after = k.run(&["get", "pod", "web", "-o", "jsonpath={.status.containerStatuses[0].containerID}/{.status.containerStatuses[0].restartCount}"])?.stdout;
    assert_eq!(
        after,
        format!("{web_cid}/0"),
        "web was restarted by the kubelet restart"
    );
    assert!(
        http_get(&ip, 8080)?.contains("hello"),
        "web unreachable after kubelet restart"
    );

    // Deleting the pods leaves nothing in containerd.
    delete_all_pods(&k)?;
    let t0 = Instant::now();
    while !containers_in(&data)?.is_empty() && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        containers_in(&data)?,
        Vec::<String>::new(),
        "containers left behind"
    );
    let mut lotse = lotse;
    lotse.signal("TERM")?;
    Ok(())
}
