//! `lotse up` as a child process, for the tests that need the whole stack on a real containerd,
//! and the small helpers those tests share (polling kubectl, HTTP to a pod, listing containerd).
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{Kubectl, bin_dir};

/// Where the built image archives are: `$LOTSE_IMAGES_DIR`, else `target/lotse-images`
/// (`target/debug/lotse images build --output target/lotse-images busybox pause`).
pub fn images_dir() -> PathBuf {
    match std::env::var_os("LOTSE_IMAGES_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/lotse-images"),
    }
}

/// Fails with the command that builds them when any of `names` (e.g. `busybox.tar`) is missing
/// from [`images_dir`].
pub fn require_images(names: &[&str]) -> anyhow::Result<PathBuf> {
    let images = images_dir();
    for img in names {
        if !images.join(img).is_file() {
            bail!(
                "{} missing: run `target/debug/lotse images build --output {} busybox pause`",
                images.join(img).display(),
                images.display()
            );
        }
    }
    Ok(images)
}

/// Puts the image archives `names` of `images` into `<data>/kubelet/images`, where `lotse up`
/// imports them from (hard links when possible: some archives are large).
pub fn link_images(data: &Path, images: &Path, names: &[&str]) -> anyhow::Result<()> {
    std::fs::create_dir_all(data.join("kubelet/images"))?;
    for img in names {
        let dst = data.join("kubelet/images").join(img);
        if std::fs::hard_link(images.join(img), &dst).is_err() {
            std::fs::copy(images.join(img), &dst)?;
        }
    }
    Ok(())
}

/// `lotse up` in the background, logging to `<data>/lotse.log`. On drop (a failed test) the
/// Deployments and pods it runs (in every namespace, the cluster DNS's too) are deleted first — pods outlive the kubelet because
/// containerd's shims own them — and then it is stopped with SIGTERM.
pub struct Lotse {
    child: Child,
    data: PathBuf,
}

impl Lotse {
    /// Starts `lotse up <args>` with `data` as its working data directory (pass
    /// `--data-dir` in `args` as well).
    pub fn start(data: &Path, args: &[String]) -> anyhow::Result<Lotse> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("lotse.log"))?;
        let mut cmd = Command::new(bin_dir().join("lotse"));
        // The tests' image filesystem is the shared disk of the machine: its fill level (other
        // builds, other checkouts) must not decide whether image GC removes a test's images.
        // A high threshold of 100 disables GC, as in Kubernetes; the image GC test sets its own
        // on a loop-mounted file system.
        if std::env::var_os("LOTSE_IMAGE_GC_HIGH_THRESHOLD").is_none() {
            cmd.env("LOTSE_IMAGE_GC_HIGH_THRESHOLD", "100");
        }
        // The ingress controller's pods listen on ports 80 and 443 of the node, the host's for
        // a one-node `lotse up`: two tests running side by side would contend for them, and
        // only the ingress tests use them (they set LOTSE_DISABLE_INGRESS=false).
        if std::env::var_os("LOTSE_DISABLE_INGRESS").is_none() {
            cmd.env("LOTSE_DISABLE_INGRESS", "true");
        }
        let child = cmd
            .arg("up")
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting lotse (cargo build --workspace --bins)")?;
        Ok(Lotse {
            child,
            data: data.to_path_buf(),
        })
    }

    /// Process id of `lotse up`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything `lotse up` has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("lotse.log")).unwrap_or_default()
    }

    /// Sends `SIG<sig>` (e.g. `TERM`, `KILL`) and waits up to 30 s for the exit.
    pub fn signal(&mut self, sig: &str) -> anyhow::Result<()> {
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()?;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        bail!("lotse did not exit after SIG{sig}")
    }

    /// Stops it the way Ctrl-C does (SIGTERM) and waits for the exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.signal("TERM")
    }
}

impl Drop for Lotse {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let k = Kubectl::new(
                33,
                self.data.join("admin.kubeconfig"),
                self.data.join("kubectl-cache"),
            );
            let _ = k.run(&[
                "delete",
                "deployment,daemonset,job",
                "--all",
                "--all-namespaces",
                "--wait=false",
            ]);
            let delete_pods = [
                "delete",
                "pod",
                "--all",
                "--all-namespaces",
                "--force",
                "--grace-period=0",
            ];
            let _ = k.run(&delete_pods);
            let t0 = Instant::now();
            while containers_in(&self.data)
                .map(|c| !c.is_empty())
                .unwrap_or(false)
                && t0.elapsed() < Duration::from_secs(20)
            {
                let _ = k.run(&delete_pods);
                std::thread::sleep(Duration::from_millis(500));
            }
            let _ = self.stop();
        }
    }
}

/// Polls `kubectl <args>` (typically `get … -o jsonpath=…`) until it succeeds and `ok` accepts
/// its stdout; the error names `what` and the last output.
pub fn wait_for(
    k: &Kubectl,
    args: &[&str],
    what: &str,
    timeout: Duration,
    ok: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let t0 = Instant::now();
    let mut last = String::new();
    while t0.elapsed() < timeout {
        let out = k.run(args)?;
        last = format!("{}{}", out.stdout, out.stderr);
        if out.code == 0 && ok(&out.stdout) {
            return Ok(out.stdout);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    bail!("timed out after {timeout:?} waiting for {what}; last output: {last}")
}

/// `GET /` over HTTP/1.0 to `ip:port`; the whole response (head and body).
pub fn http_get(ip: &str, port: u16) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &format!("{ip}:{port}").parse()?,
        Duration::from_secs(3),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Ids of the containers in the `k8s.io` namespace of the containerd that `lotse up` with
/// data dir `data` supervises.
pub fn containers_in(data: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new("ctr")
        .arg("-a")
        .arg(data.join("kubelet/containerd/containerd.sock"))
        .args(["-n", "k8s.io", "containers", "ls", "-q"])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// A one-node `lotse up` cluster, started and with its Node Ready: what [`Node::start`] hands
/// to a test. Keep the temporary directory given to `start` alive longer than this (declare it
/// first) so `lotse up` stops before its data directory goes.
pub struct Node {
    /// The running `lotse up`.
    pub lotse: Lotse,
    /// kubectl 1.33 with the cluster's admin kubeconfig.
    pub kubectl: Kubectl,
    /// `lotse up`'s data directory (`<tmp>/data`).
    pub data: PathBuf,
    /// The `lotse up` arguments, to start it again on the same data directory.
    pub args: Vec<String>,
    /// The kubelet API's port (`--kubelet-port`).
    pub kubelet_port: u16,
    /// When `lotse up` was started.
    pub started: Instant,
}

impl Node {
    /// Links (or copies) `images` (e.g. `busybox.tar`) from [`images_dir`] into
    /// `<tmp>/data/kubelet/images`, starts `lotse up` with node name `name` and pod CIDR
    /// `pod_cidr` on free ports (without cluster DNS), and waits up to 90 s for the Node to be Ready (the error
    /// carries the log).
    pub fn start(tmp: &Path, name: &str, pod_cidr: &str, images: &[&str]) -> anyhow::Result<Node> {
        Node::start_opts(tmp, name, pod_cidr, images, false)
    }

    /// [`Node::start`] with the cluster DNS (the `coredns` Deployment of `lotse-dns` pods behind
    /// the `kube-dns` Service), for tests whose pods reach Services by name.
    pub fn start_with_dns(
        tmp: &Path,
        name: &str,
        pod_cidr: &str,
        images: &[&str],
    ) -> anyhow::Result<Node> {
        Node::start_opts(tmp, name, pod_cidr, images, true)
    }

    fn start_opts(
        tmp: &Path,
        name: &str,
        pod_cidr: &str,
        images: &[&str],
        cluster_dns: bool,
    ) -> anyhow::Result<Node> {
        let dir = require_images(images)?;
        let data = tmp.join("data");
        link_images(&data, &dir, images)?;
        let kubelet_port = crate::free_port()?;
        let mut args: Vec<String> = [
            "--data-dir",
            &data.to_string_lossy(),
            "--secure-port",
            &crate::free_port()?.to_string(),
            "--kubelet-port",
            &kubelet_port.to_string(),
            "--node-name",
            name,
            "--pod-cidr",
            pod_cidr,
            "--images=",
            "--no-install",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !cluster_dns {
            // Tests that never resolve names: the DNS pod would only cost CPU.
            args.push("--disable-cluster-dns".into());
        }
        let started = Instant::now();
        let lotse = Lotse::start(&data, &args)?;
        let kubectl = Kubectl::new(33, data.join("admin.kubeconfig"), tmp.join("kubectl-cache"));
        wait_for(
            &kubectl,
            &node_ready_args(name),
            "node Ready",
            // Archives are imported before the Node registers (the database images take
            // 12-15 s each on a loaded machine).
            Duration::from_secs(90),
            |s| s.trim() == "True",
        )
        .with_context(|| lotse.log())?;
        Ok(Node {
            lotse,
            kubectl,
            data,
            args,
            kubelet_port,
            started,
        })
    }

    /// [`Node::start`] with the busybox and pause images and a [`random_pod_cidr`], then
    /// [`Node::publish_root_ca`].
    pub fn start_with_root_ca(tmp: &Path, name: &str) -> anyhow::Result<Node> {
        let node = Node::start(
            tmp,
            name,
            &random_pod_cidr()?,
            &["busybox.tar", "pause.tar"],
        )?;
        node.publish_root_ca()?;
        Ok(node)
    }

    /// Creates the `kube-root-ca.crt` ConfigMap in `default` from the cluster CA (the
    /// controllers' root-ca-cert-publisher makes it too; whichever comes first).
    pub fn publish_root_ca(&self) -> anyhow::Result<()> {
        let ca = format!(
            "--from-file=ca.crt={}",
            self.data.join("pki/ca.crt").display()
        );
        let _ = self
            .kubectl
            .run(&["create", "configmap", "kube-root-ca.crt", &ca])?;
        Ok(())
    }
}

/// Waits (up to 30 s) until node `node`'s Lease can be read again: the apiserver of a
/// restarted `lotse up` answers. The error carries `log()`.
pub fn wait_api_back(k: &Kubectl, node: &str, log: impl Fn() -> String) -> anyhow::Result<()> {
    wait_for(
        k,
        &[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            node,
            "-o",
            "jsonpath={.spec.renewTime}",
        ],
        "apiserver back",
        Duration::from_secs(30),
        |s| !s.is_empty(),
    )
    .with_context(log)?;
    Ok(())
}

/// `get node <name> -o jsonpath=<Ready status>`: kubectl arguments printing `True` once the
/// Node is Ready.
pub fn node_ready_args(name: &str) -> [&str; 5] {
    [
        "get",
        "node",
        name,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ]
}

/// Deletes every pod in `default` with a 1 s grace period and waits (up to 60 s) until they
/// are gone.
pub fn delete_all_pods(k: &Kubectl) -> anyhow::Result<()> {
    k.run(&[
        "delete",
        "pod",
        "--all",
        "--grace-period=1",
        "--wait=true",
        "--timeout=60s",
    ])?
    .success()?;
    Ok(())
}

/// A pod CIDR `10.244.<100..=248>.0/24` varied by process id and a free port, so concurrent
/// test files rarely pick the same one.
pub fn random_pod_cidr() -> anyhow::Result<String> {
    Ok(format!(
        "10.244.{}.0/24",
        100 + std::process::id() % 100 + u32::from(crate::free_port()? % 50)
    ))
}
