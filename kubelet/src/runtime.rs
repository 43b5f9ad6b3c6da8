//! The container runtime side: starting and supervising containerd with Lotse's configuration,
//! the CRI gRPC connection, and the CNI setup containerd uses (images: [`crate::images`]).
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::Error;

/// containerd configuration template; `@ROOT@` becomes the kubelet's root dir.
const CONTAINERD_CONFIG: &str = include_str!("containerd.toml");

/// CRI clients sharing one connection.
#[derive(Clone)]
pub struct Cri {
    /// RuntimeService.
    pub rt: RuntimeServiceClient<Channel>,
    /// ImageService.
    pub img: ImageServiceClient<Channel>,
    /// The socket path.
    pub socket: PathBuf,
}

/// Connects to a CRI endpoint (`unix:///path` or a plain path). The connection is lazy: calls
/// made while the runtime is down fail and later ones reconnect.
pub fn connect(endpoint: &str) -> Result<Cri, Error> {
    let socket = PathBuf::from(endpoint.strip_prefix("unix://").unwrap_or(endpoint));
    let path = socket.clone();
    let ch = Endpoint::try_from("http://[::]")
        .map_err(|e| Error::Runtime(format!("CRI endpoint: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let p = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
        }));
    Ok(Cri {
        rt: RuntimeServiceClient::new(ch.clone()),
        img: ImageServiceClient::new(ch),
        socket,
    })
}

/// Paths the kubelet's own containerd and CNI use under the root dir.
pub struct Layout {
    /// The root dir.
    pub root: PathBuf,
}

impl Layout {
    /// containerd's socket.
    pub fn socket(&self) -> PathBuf {
        self.root.join("containerd/containerd.sock")
    }
    /// CNI plugin binaries (lotse-cni and loopback).
    pub fn cni_bin(&self) -> PathBuf {
        self.root.join("cni/bin")
    }
    /// CNI network configurations.
    pub fn cni_conf(&self) -> PathBuf {
        self.root.join("cni/net.d")
    }
    /// The log directory of pod `ns/name` (`<root>/logs/<ns>_<name>_<uid>`, one directory per
    /// container below it, one `<attempt>.log` per attempt).
    pub fn pod_logs(&self, ns: &str, name: &str, uid: &str) -> PathBuf {
        self.root.join("logs").join(format!("{ns}_{name}_{uid}"))
    }
    /// Image archives imported at start.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    /// containerd's registry hosts dir (`config_path`: `<host>/hosts.toml`).
    pub fn certs_dir(&self) -> PathBuf {
        self.root.join("containerd/certs.d")
    }
    /// Registry credential tables appended to containerd's config.
    pub fn registry_auth(&self) -> PathBuf {
        self.root.join("containerd/registry-auth.toml")
    }
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
    let w = what.to_string();
    move |e| Error::Runtime(format!("{w}: {e}"))
}

/// Finds an executable next to the current one, then on PATH, then in `extra` dirs.
pub fn find_binary(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(d) = exe.parent()
    {
        dirs.push(d.to_path_buf());
    }
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    dirs.extend(extra.iter().map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Installs the CNI binaries containerd runs (lotse-cni, loopback) into `<root>/cni/bin` and writes
/// the conflist for the node's podCIDR.
pub fn setup_cni(layout: &Layout, pod_cidr: &str) -> Result<(), Error> {
    let bin = layout.cni_bin();
    std::fs::create_dir_all(&bin).map_err(io_err(format!("create {}", bin.display())))?;
    let cni = find_binary("lotse-cni", &[]).ok_or_else(|| {
        Error::Runtime(
            "lotse-cni not found next to the kubelet or on PATH (cargo build -p cni-plugin)".into(),
        )
    })?;
    let loopback = find_binary("loopback", &["/usr/lib/cni", "/opt/cni/bin"]).ok_or_else(|| {
        Error::Runtime("CNI 'loopback' plugin not found in /usr/lib/cni or /opt/cni/bin (Debian package containernetworking-plugins)".into())
    })?;
    for (src, name) in [(cni, "lotse-cni"), (loopback, "loopback")] {
        let dst = bin.join(name);
        let _ = std::fs::remove_file(&dst);
        std::os::unix::fs::symlink(&src, &dst)
            .map_err(io_err(format!("symlink {}", dst.display())))?;
    }
    let conf = layout.cni_conf();
    std::fs::create_dir_all(&conf).map_err(io_err(format!("create {}", conf.display())))?;
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "lotse",
        "plugins": [{
            "type": "lotse-cni",
            "bridge": "lotse0",
            "podCIDR": pod_cidr,
            "dataDir": layout.root.join("cni/networks"),
        }]
    });
    let path = conf.join("10-lotse.conflist");
    let text =
        serde_json::to_string_pretty(&conflist).map_err(|e| Error::Runtime(e.to_string()))?;
    std::fs::write(&path, text).map_err(io_err(format!("write {}", path.display())))
}

/// Sends SIGTERM to `pid` (a process that is gone is no error here).
pub(crate) fn terminate(pid: u32) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

/// OCI runtimes besides runc that the node may have, each offered to pods as a RuntimeClass
/// handler of its own name through containerd's runc shim (as k3s detects crun and youki).
const EXTRA_RUNTIMES: &[&str] = &["crun", "youki"];

/// containerd runtime tables (appended to the configuration) for those of [`EXTRA_RUNTIMES`]
/// that `find` locates: handler `<name>` runs `runtime_type` io.containerd.runc.v2 with
/// `BinaryName` set to the binary, cgroupfs as runc.
fn extra_runtimes(find: impl Fn(&str) -> Option<PathBuf>) -> String {
    let mut out = String::new();
    for name in EXTRA_RUNTIMES {
        let Some(bin) = find(name) else { continue };
        let table = format!("plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{name}");
        out.push_str(&format!(
            "\n[{table}]\n  runtime_type = \"io.containerd.runc.v2\"\n[{table}.options]\n  BinaryName = {:?}\n  SystemdCgroup = false\n",
            bin.to_string_lossy()
        ));
    }
    out
}

/// A containerd process started and supervised by the kubelet.
pub struct Containerd {
    child: tokio::process::Child,
}

impl Containerd {
    /// Writes `<root>/containerd/config.toml` and starts containerd, waiting (bounded) until its
    /// socket answers. Its log goes to `<root>/containerd/containerd.log`.
    pub async fn start(layout: &Layout) -> Result<Containerd, Error> {
        let dir = layout.root.join("containerd");
        std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        let root = layout.root.to_string_lossy();
        let config = dir.join("config.toml");
        // The registry credentials rendered from registries.yaml (images::apply_registry_config).
        let auth = std::fs::read_to_string(layout.registry_auth()).unwrap_or_default();
        let runtimes = extra_runtimes(|name| find_binary(name, &["/usr/bin", "/usr/local/bin"]));
        std::fs::write(
            &config,
            CONTAINERD_CONFIG.replace("@ROOT@", &root) + &auth + &runtimes,
        )
        .map_err(io_err("write containerd config"))?;
        let bin = find_binary("containerd", &["/usr/bin", "/usr/local/bin"]).ok_or_else(|| {
            Error::Runtime("containerd not found (Debian packages containerd and runc)".into())
        })?;
        let log = std::fs::File::create(dir.join("containerd.log"))
            .map_err(io_err("create containerd.log"))?;
        let log2 = log.try_clone().map_err(io_err("containerd.log"))?;
        // A containerd left running by a kubelet that was killed (-9) still owns the socket and
        // state dir: stop it first (its shims, and so the pods, survive).
        let pid_file = dir.join("containerd.pid");
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&*config.to_string_lossy()) {
                tracing::info!(
                    pid,
                    "stopping the containerd a previous kubelet left running"
                );
                terminate(pid);
                let t0 = Instant::now();
                while std::path::Path::new(&format!("/proc/{pid}")).exists()
                    && t0.elapsed() < Duration::from_secs(10)
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let socket = layout.socket();
        let _ = std::fs::remove_file(&socket);
        // A child process on purpose: containerd is the container runtime itself (a long-lived
        // daemon with its shims), not something a library call can replace.
        let child = tokio::process::Command::new(bin)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(true)
            .spawn()
            .map_err(io_err("spawn containerd"))?;
        if let Some(pid) = child.id() {
            let _ = std::fs::write(&pid_file, pid.to_string());
        }
        let mut c = Containerd { child };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if UnixStream::connect(&socket).await.is_ok() {
                tracing::info!(socket = %socket.display(), ms = t0.elapsed().as_millis() as u64, "containerd ready");
                return Ok(c);
            }
            if let Ok(Some(status)) = c.child.try_wait() {
                return Err(Error::Runtime(format!(
                    "containerd exited with {status}; see {}",
                    dir.join("containerd.log").display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(Error::Runtime(
            "containerd did not open its socket within 20 s".into(),
        ))
    }

    /// Waits until containerd exits.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    /// Stops containerd (SIGTERM, then SIGKILL after 5 s). Pods keep running in their shims.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            terminate(pid);
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = self.child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtimes_found_on_the_node_become_handlers() {
        let none = extra_runtimes(|_| None);
        assert!(none.is_empty());
        let crun = extra_runtimes(|n| (n == "crun").then(|| PathBuf::from("/usr/bin/crun")));
        assert_eq!(
            crun,
            "\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.crun]\n  \
             runtime_type = \"io.containerd.runc.v2\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.crun.options]\n  \
             BinaryName = \"/usr/bin/crun\"\n  SystemdCgroup = false\n"
        );
        // The template defines runc only; an appended table must not collide with it.
        assert!(!CONTAINERD_CONFIG.contains("runtimes.crun"));
    }
}
