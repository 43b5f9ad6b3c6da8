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

/// `lotse up` in the background, logging to `<data>/lotse.log`. On drop (a failed test) the
/// Deployments and pods it runs are deleted first — pods outlive the kubelet because
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
        let child = Command::new(bin_dir().join("lotse"))
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
                "--wait=false",
            ]);
            let _ = k.run(&["delete", "pod", "--all", "--force", "--grace-period=0"]);
            let t0 = Instant::now();
            while containers_in(&self.data)
                .map(|c| !c.is_empty())
                .unwrap_or(false)
                && t0.elapsed() < Duration::from_secs(20)
            {
                let _ = k.run(&["delete", "pod", "--all", "--force", "--grace-period=0"]);
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
