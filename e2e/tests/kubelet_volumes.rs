//! Pod volumes on a real containerd, driven through `lotse up` and the real kubectl 1.33: one
//! busybox pod mounting configMap (all keys, `items` with per-item `mode`, a `subPath`), secret
//! (decoded, `defaultMode`), the injected projected ServiceAccount volume (a token the apiserver
//! accepts, `ca.crt`, `namespace`), downwardAPI (labels, annotations, name, `limits.memory`),
//! hostPath (read and written back), an emptyDir shared by two containers and an emptyDir with
//! `medium: Memory` (tmpfs with its size limit). Then the ConfigMap and Secret change (a changed
//! value, an added key, a removed key) and the running pod sees the new set — the removed key's
//! file gone — while the `subPath` mount keeps its old content, as in Kubernetes; relabelling
//! the pod updates its downwardAPI labels file.
//!
//! Needs root, Debian's `containerd`, `runc` and `containernetworking-plugins`, the built
//! binaries (`cargo build -p lotse -p kubelet -p cni-plugin --bins`) and the images built by
//! `target/debug/lotse images build --output target/lotse-images busybox pause`
//! (or `$LOTSE_IMAGES_DIR`).
use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::Kubectl;
use e2e::lotse::{Lotse, Node, wait_api_back, wait_for};

const OBJECTS: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: default}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {color: blue, size: small, gone: soon}
---
apiVersion: v1
kind: Secret
metadata: {name: sec}
# admin, s3cret, obsolete (base64: the pod must see them decoded)
data: {user: YWRtaW4=, pass: czNjcmV0, old: b2Jzb2xldGU=}
"#;

/// The changed ConfigMap and Secret: a changed value, an added key, a removed key each.
const UPDATED: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {color: green, size: small, shape: round}
---
apiVersion: v1
kind: Secret
metadata: {name: sec}
# admin, n3w-pass, added
data: {user: YWRtaW4=, pass: bjN3LXBhc3M=, token2: YWRkZWQ=}
"#;

/// Modes are decimal (0600 = 384, 0444 = 292, 0400 = 256), as the API stores them.
fn pod(host_dir: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: vols
  labels: {{app: vols, tier: one}}
  annotations: {{note: hello}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    resources: {{limits: {{memory: 64Mi}}}}
    volumeMounts:
    - {{name: cfg, mountPath: /etc/cfg}}
    - {{name: cfg, mountPath: /etc/color, subPath: color}}
    - {{name: cfg-items, mountPath: /etc/cfg-items}}
    - {{name: sec, mountPath: /etc/sec}}
    - {{name: info, mountPath: /etc/info}}
    - {{name: host, mountPath: /host}}
    - {{name: shared, mountPath: /shared}}
    - {{name: mem, mountPath: /mem}}
  - name: side
    image: busybox
    command: ["sh", "-c", "trap 'exit 0' TERM; echo from-side > /data/side.txt; while true; do sleep 1; done"]
    volumeMounts:
    - {{name: shared, mountPath: /data}}
  volumes:
  - name: cfg
    configMap: {{name: cfg}}
  - name: cfg-items
    configMap:
      name: cfg
      defaultMode: 384
      items: [{{key: color, path: sub/colour}}, {{key: size, path: size.txt, mode: 292}}]
  - name: sec
    secret: {{secretName: sec, defaultMode: 256}}
  - name: info
    downwardAPI:
      items:
      - {{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}
      - {{path: annotations, fieldRef: {{fieldPath: metadata.annotations}}}}
      - {{path: name, fieldRef: {{fieldPath: metadata.name}}}}
      - {{path: mem_limit, resourceFieldRef: {{containerName: main, resource: limits.memory, divisor: 1Mi}}}}
  - name: host
    hostPath: {{path: "{host_dir}", type: Directory}}
  - name: shared
    emptyDir: {{}}
  - name: mem
    emptyDir: {{medium: Memory, sizeLimit: 16Mi}}
"#
    )
}

/// `sh -c <script>` in container `c` of the pod; its stdout.
fn exec(k: &Kubectl, c: &str, script: &str) -> anyhow::Result<String> {
    k.ok(&["exec", "vols", "-c", c, "--", "sh", "-c", script])
}

/// Polls `script` in the main container for up to 60 s until it prints `want` (volume updates
/// arrive with the pod's next sync).
fn wait_exec(k: &Kubectl, script: &str, what: &str, want: &str) -> anyhow::Result<String> {
    let t0 = Instant::now();
    let args = ["exec", "vols", "-c", "main", "--", "sh", "-c", script];
    let out = wait_for(k, &args, what, Duration::from_secs(60), |s| s == want)?;
    println!("{what} after {:?}", t0.elapsed());
    Ok(out)
}

#[test]
#[ignore = "needs containerd and runc (root), built binaries and images (lotse images build)"]
fn pod_volumes_and_their_updates() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let host_dir = tmp.path().join("host");
    std::fs::create_dir_all(&host_dir)?;
    std::fs::write(host_dir.join("from-host.txt"), "host data\n")?;
    let Node {
        mut lotse,
        kubectl: k,
        data,
        args,
        started: t0,
        ..
    } = Node::start_with_root_ca(tmp.path(), "volumes-node")?;
    let ca_path = data.join("pki/ca.crt");
    k.ok_stdin(&["apply", "-f", "-"], OBJECTS)?;
    // `create`, not `apply`: no last-applied annotation in the downwardAPI annotations file.
    k.ok_stdin(&["create", "-f", "-"], &pod(&host_dir.to_string_lossy()))?;
    wait_for(
        &k,
        &[
            "get",
            "pod",
            "vols",
            "-o",
            "jsonpath={.status.containerStatuses[*].ready}",
        ],
        "pod vols ready",
        Duration::from_secs(60),
        |s| s.trim() == "true true",
    )
    .with_context(|| lotse.log())?;

    // configMap: every key; items with their paths and modes; a subPath file.
    let out = exec(
        &k,
        "main",
        "ls /etc/cfg; cat /etc/cfg/color; echo; cat /etc/color; echo",
    )?;
    assert_eq!(out, "color\ngone\nsize\nblue\nblue\n", "configMap volume");
    let out = exec(
        &k,
        "main",
        "ls /etc/cfg-items; cat /etc/cfg-items/sub/colour; echo; \
         stat -L -c %a /etc/cfg-items/sub/colour /etc/cfg-items/size.txt",
    )?;
    assert_eq!(out, "size.txt\nsub\nblue\n600\n444\n", "configMap items");
    // A configMap volume is read-only.
    let out = k.run(&["exec", "vols", "-c", "main", "--", "touch", "/etc/cfg/new"])?;
    assert_ne!(out.code, 0, "wrote into a configMap volume");

    // secret: decoded values, defaultMode.
    let out = exec(
        &k,
        "main",
        "ls /etc/sec; cat /etc/sec/user; echo; cat /etc/sec/pass; echo; stat -L -c %a /etc/sec/pass",
    )?;
    assert_eq!(
        out, "old\npass\nuser\nadmin\ns3cret\n400\n",
        "secret volume"
    );

    // projected ServiceAccount volume: a token the apiserver accepts, the CA, the namespace.
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    let out = exec(&k, "main", &format!("ls {sa}; cat {sa}/namespace"))?;
    assert_eq!(out, "ca.crt\nnamespace\ntoken\ndefault", "projected volume");
    let ca_in_pod = exec(&k, "main", &format!("cat {sa}/ca.crt"))?;
    assert_eq!(ca_in_pod, std::fs::read_to_string(&ca_path)?, "ca.crt");
    let token = exec(&k, "main", &format!("cat {sa}/token"))?;
    assert_eq!(token.split('.').count(), 3, "token is not a JWT: {token}");
    let admin = std::fs::read_to_string(data.join("admin.kubeconfig"))?;
    let server = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("server:"))
        .context("server in admin.kubeconfig")?
        .trim()
        .to_string();
    let sa_config = tmp.path().join("sa.kubeconfig");
    std::fs::write(
        &sa_config,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"{server}\", certificate-authority: \"{}\"}}\n\
             users:\n- name: u\n  user: {{token: \"{token}\"}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
            ca_path.display()
        ),
    )?;
    let as_sa = Kubectl::new(33, sa_config, tmp.path().join("kubectl-cache-sa"));
    let who = as_sa.ok(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ])?;
    assert_eq!(
        who, "system:serviceaccount:default:default",
        "token identity"
    );

    // downwardAPI: labels, annotations, name, the memory limit in MiB.
    let out = exec(
        &k,
        "main",
        "ls /etc/info; cat /etc/info/labels; echo; cat /etc/info/annotations; echo; \
         cat /etc/info/name; echo; cat /etc/info/mem_limit",
    )?;
    assert_eq!(
        out,
        "annotations\nlabels\nmem_limit\nname\napp=\"vols\"\ntier=\"one\"\nnote=\"hello\"\nvols\n64",
        "downwardAPI volume"
    );

    // hostPath: the host's file is visible, and what the pod writes lands on the host.
    let out = exec(
        &k,
        "main",
        "cat /host/from-host.txt; echo from-pod > /host/from-pod.txt",
    )?;
    assert_eq!(out, "host data\n", "hostPath read");
    assert_eq!(
        std::fs::read_to_string(host_dir.join("from-pod.txt"))?,
        "from-pod\n",
        "hostPath write"
    );

    // emptyDir shared by both containers (the side container wrote it at start).
    let out = exec(&k, "main", "cat /shared/side.txt")?;
    assert_eq!(out, "from-side\n", "shared emptyDir");
    exec(&k, "main", "echo from-main > /shared/main.txt")?;
    assert_eq!(
        exec(&k, "side", "cat /data/main.txt")?,
        "from-main\n",
        "shared emptyDir (other way)"
    );

    // emptyDir medium Memory: tmpfs of the size limit (16 MiB).
    let out = exec(
        &k,
        "main",
        "grep ' /mem ' /proc/mounts; df -k /mem | tail -1",
    )?;
    assert!(out.starts_with("tmpfs /mem tmpfs "), "/mem mount: {out}");
    let size_kb: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(size_kb.get(1), Some(&"16384"), "/mem size: {out}");

    // Updates: the running pod sees the new ConfigMap and Secret (within Kubernetes' sync
    // period), removed keys gone; the subPath mount keeps the content it started with.
    let t_update = Instant::now();
    k.ok_stdin(&["apply", "-f", "-"], UPDATED)?;
    wait_exec(
        &k,
        "ls /etc/cfg; cat /etc/cfg/color",
        "configMap update",
        "color\nshape\nsize\ngreen",
    )?;
    wait_exec(
        &k,
        "ls /etc/sec; cat /etc/sec/pass; cat /etc/sec/token2",
        "secret update",
        "pass\ntoken2\nuser\nn3w-passadded",
    )?;
    let out = exec(
        &k,
        "main",
        "cat /etc/color; echo; cat /etc/cfg-items/sub/colour; echo; test -e /etc/cfg/gone || echo gone",
    )?;
    assert_eq!(
        out, "blue\ngreen\ngone\n",
        "subPath / items after the update"
    );
    println!(
        "configMap and secret updates seen in {:?}",
        t_update.elapsed()
    );

    // downwardAPI labels follow the pod's labels.
    k.ok(&["label", "pod", "vols", "tier=two", "--overwrite"])?;
    wait_exec(
        &k,
        "cat /etc/info/labels",
        "downwardAPI labels update",
        "app=\"vols\"\ntier=\"two\"",
    )?;

    // kill -9 and restart: the pod is adopted with the volumes found on disk (no container
    // restart, subPath unchanged), and later updates still reach it.
    let ids = "{.status.containerStatuses[*].containerID}";
    let before = k.ok(&["get", "pod", "vols", "-o", &format!("jsonpath={ids}")])?;
    lotse.signal("KILL")?;
    let mut lotse = Lotse::start(&data, &args)?;
    wait_api_back(&k, "volumes-node", || lotse.log())?;
    let t_restart = Instant::now();
    k.ok_stdin(
        &["apply", "-f", "-"],
        &UPDATED.replace("color: green", "color: red"),
    )?;
    wait_exec(
        &k,
        "ls /etc/cfg; cat /etc/cfg/color; cat /etc/color; cat /etc/sec/pass",
        "configMap update after the kubelet restart",
        "color\nshape\nsize\nredbluen3w-pass",
    )
    .with_context(|| lotse.log())?;
    println!("update after restart seen in {:?}", t_restart.elapsed());
    let after = k.ok(&["get", "pod", "vols", "-o", &format!("jsonpath={ids}")])?;
    assert_eq!(before, after, "containers restarted by the kubelet restart");

    k.ok(&[
        "delete",
        "pod",
        "vols",
        "--grace-period=1",
        "--wait=true",
        "--timeout=60s",
    ])?;
    println!("volume checks took {:?}", t0.elapsed());
    lotse.stop()?;
    Ok(())
}
