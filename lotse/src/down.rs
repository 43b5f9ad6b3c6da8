//! `lotse down` (stop the node's pods and the control plane, keep the data) and `lotse reset`
//! (also remove everything Lotse created on this machine), as k3s's `k3s-killall.sh` and
//! `k3s-uninstall.sh` do.
//!
//! Only things Lotse made are touched: the `lotse up` whose pid file is in the data dir, the
//! containerd whose config lives under `<data-dir>/kubelet/containerd`, the pods in it and their
//! shims (found by that containerd's socket address on their command line), mounts under the
//! data dir, the pod cgroups of those pods, the node bridge `lotse0` and Lotse's own nftables
//! table.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::Pod;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The pid file `lotse up` writes into its data dir.
pub const PID_FILE: &str = "lotse.pid";
/// The node bridge lotse-cni creates (see `kubelet::runtime::setup_cni`).
const BRIDGE: &str = "lotse0";
/// nftables tables the node network agent creates (family, name).
const NFT_TABLES: &[(&str, &str)] = &[("ip", "lotse"), ("inet", "lotse"), ("inet", "lotse-policy")];
/// The grace period of a pod whose spec can't be read (the apiserver is down): Kubernetes' default.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// `lotse down`.
#[derive(Parser)]
pub struct DownArgs {
    /// The data directory of the cluster to stop.
    #[arg(long, env = "LOTSE_DATA_DIR", default_value = "/var/lib/lotse")]
    pub data_dir: PathBuf,
}

/// `lotse reset`.
#[derive(Parser)]
pub struct ResetArgs {
    /// The data directory of the cluster to remove.
    #[arg(long, env = "LOTSE_DATA_DIR", default_value = "/var/lib/lotse")]
    pub data_dir: PathBuf,
    /// Really remove it. Without this flag `lotse reset` only lists what it would remove.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// What a pod needs to stop the way Kubernetes stops it, read from the API while it is up.
#[derive(Default, Clone)]
struct StopSpec {
    grace: Option<Duration>,
    /// container name → preStop exec command.
    pre_stop: HashMap<String, Vec<String>>,
}

/// Stops the node's pods (preStop exec hooks, then SIGTERM with the pod's grace period, then
/// SIGKILL) and the control plane; the data dir stays, and `lotse up` resumes the cluster.
pub async fn down(a: DownArgs) -> anyhow::Result<()> {
    let data_dir = std::path::absolute(&a.data_dir)?;
    if !data_dir.is_dir() {
        bail!("{} does not exist: no cluster to stop", data_dir.display());
    }
    let stopped = stop_node(&data_dir).await?;
    eprintln!(
        "lotse: stopped {} pod(s), {} container(s); the data stays in {} (`lotse up` resumes the cluster)",
        stopped.pods,
        stopped.containers,
        data_dir.display()
    );
    Ok(())
}

/// Stops the cluster as `lotse down` does, then removes its containers, mounts, network setup,
/// cgroups and the data dir.
pub async fn reset(a: ResetArgs) -> anyhow::Result<()> {
    let data_dir = std::path::absolute(&a.data_dir)?;
    if !a.yes {
        eprintln!(
            "lotse reset removes the cluster in {dir}: its pods and containers, containerd's images, \
             the mounts under it, the node bridge {BRIDGE}, Lotse's nftables tables and the directory itself.\n\
             Re-run with --yes to do it.",
            dir = data_dir.display()
        );
        bail!("not confirmed (--yes)");
    }
    if data_dir.is_dir() {
        stop_node(&data_dir).await?;
        let layout = kubelet::runtime::Layout {
            root: data_dir.join("kubelet"),
        };
        if layout.root.join("containerd/config.toml").is_file() {
            let uids = remove_all_pods(&layout).await?;
            remove_pod_cgroups(&uids);
        }
        kill_shims(&layout.socket());
        // The other nodes of `lotse up --nodes N` (stopped with `lotse up`).
        for dir in std::fs::read_dir(data_dir.join("nodes"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let layout = kubelet::runtime::Layout {
                root: dir.path().join("kubelet"),
            };
            if layout.root.join("containerd/config.toml").is_file() {
                if let Err(e) = remove_all_pods(&layout).await {
                    tracing::warn!(node = ?dir.file_name(), error = %e, "removing the node's pods");
                }
                kill_shims(&layout.socket());
            }
        }
        unmount_under(&data_dir)?;
    }
    // The bridge and the nftables tables are per host, not per data dir: another cluster
    // (`lotse up` with another data dir) on this machine keeps them.
    if other_lotse_up_running() {
        eprintln!(
            "lotse: another `lotse up` runs on this machine: {BRIDGE} and the nftables tables stay"
        );
    } else {
        delete_link(BRIDGE);
        delete_nft_tables();
        crate::nodes::remove_all();
    }
    if data_dir.exists() {
        std::fs::remove_dir_all(&data_dir)
            .with_context(|| format!("removing {}", data_dir.display()))?;
    }
    eprintln!(
        "lotse: removed the cluster in {} (a new `lotse up` starts an empty one)",
        data_dir.display()
    );
    Ok(())
}

struct Stopped {
    pods: usize,
    containers: usize,
}

async fn stop_node(data_dir: &Path) -> anyhow::Result<Stopped> {
    // The pods' specs come from the API while `lotse up` still serves it.
    let specs = read_stop_specs(data_dir).await;
    stop_lotse_up(data_dir)?;
    let layout = kubelet::runtime::Layout {
        root: data_dir.join("kubelet"),
    };
    if !layout.root.join("containerd/config.toml").is_file() {
        return Ok(Stopped {
            pods: 0,
            containers: 0,
        });
    }
    let containerd = kubelet::runtime::Containerd::start(&layout)
        .await
        .context("starting the node's containerd to stop its pods")?;
    let res = stop_pods(&layout, &specs).await;
    containerd.stop().await;
    res
}

/// Reads grace periods and preStop exec hooks of every pod through the admin kubeconfig; empty
/// when the apiserver does not answer (then each pod gets Kubernetes' default of 30 s).
async fn read_stop_specs(data_dir: &Path) -> HashMap<String, StopSpec> {
    let path = data_dir.join("admin.kubeconfig");
    let client = match crate::up::client_from(&path).await {
        Ok(c) => c,
        Err(_) => return HashMap::new(),
    };
    let api: kube::Api<Pod> = kube::Api::all(client);
    let list = match tokio::time::timeout(
        Duration::from_secs(5),
        api.list(&kube::api::ListParams::default()),
    )
    .await
    {
        Ok(Ok(l)) => l,
        _ => return HashMap::new(),
    };
    list.items
        .into_iter()
        .filter_map(|p| {
            let uid = p.metadata.uid.clone()?;
            let spec = p.spec?;
            let grace = spec
                .termination_grace_period_seconds
                .map(|s| Duration::from_secs(s.max(0) as u64));
            let pre_stop = spec
                .containers
                .iter()
                .filter_map(|c| {
                    let cmd = c
                        .lifecycle
                        .as_ref()?
                        .pre_stop
                        .as_ref()?
                        .exec
                        .as_ref()?
                        .command
                        .clone()?;
                    Some((c.name.clone(), cmd))
                })
                .collect();
            Some((uid, StopSpec { grace, pre_stop }))
        })
        .collect()
}

/// Sends SIGTERM to the `lotse up` of this data dir (found by its pid file, and only if that
/// process really is `lotse up`) and waits until it has exited.
fn stop_lotse_up(data_dir: &Path) -> anyhow::Result<()> {
    let pid_file = data_dir.join(PID_FILE);
    let Some(pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return Ok(());
    };
    if !is_lotse_up(pid) {
        let _ = std::fs::remove_file(&pid_file);
        return Ok(());
    }
    eprintln!("lotse: stopping `lotse up` (pid {pid})");
    kill(Pid::from_raw(pid), Signal::SIGTERM).context("signalling lotse up")?;
    let t0 = Instant::now();
    while alive(pid) {
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("`lotse up` (pid {pid}) did not stop within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(&pid_file);
    Ok(())
}

/// Whether `pid` still runs (a zombie has exited: only its parent has not reaped it yet).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain ") ".
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn is_lotse_up(pid: i32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.first().is_some_and(|a0| a0.ends_with(b"lotse"))
        && args.get(1).is_some_and(|a1| *a1 == b"up")
}

/// Whether any `lotse up` process runs on this machine (this one has been stopped by now).
fn other_lotse_up_running() -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .any(is_lotse_up)
}

/// Stops every running container of every pod in the node's containerd, pods in parallel: a
/// preStop exec hook first (within the grace period), then StopContainer with what is left of it
/// (SIGTERM, SIGKILL at the end), then the sandbox.
async fn stop_pods(
    layout: &kubelet::runtime::Layout,
    specs: &HashMap<String, StopSpec>,
) -> anyhow::Result<Stopped> {
    let cri = cri_ready(layout).await?;
    let sandboxes = cri
        .rt
        .clone()
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .context("listing pod sandboxes")?
        .into_inner()
        .items;
    let containers = cri
        .rt
        .clone()
        .list_containers(cri::ListContainersRequest::default())
        .await
        .context("listing containers")?
        .into_inner()
        .containers;
    let mut tasks = Vec::new();
    let mut n_containers = 0;
    for sb in &sandboxes {
        let uid = sb
            .metadata
            .as_ref()
            .map(|m| m.uid.clone())
            .unwrap_or_default();
        let spec = specs.get(&uid).cloned().unwrap_or_default();
        let running: Vec<cri::Container> = containers
            .iter()
            .filter(|c| {
                c.pod_sandbox_id == sb.id && c.state == cri::ContainerState::ContainerRunning as i32
            })
            .cloned()
            .collect();
        n_containers += running.len();
        let cri = cri.clone();
        let sandbox_id = sb.id.clone();
        tasks.push(tokio::spawn(async move {
            stop_pod(cri, sandbox_id, running, spec).await
        }));
    }
    for t in tasks {
        if let Ok(Err(e)) = t.await {
            tracing::warn!(error = %e, "stopping a pod");
            eprintln!("lotse: {e:#}");
        }
    }
    Ok(Stopped {
        pods: sandboxes
            .iter()
            .filter(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
            .count(),
        containers: n_containers,
    })
}

async fn stop_pod(
    cri: kubelet::runtime::Cri,
    sandbox_id: String,
    running: Vec<cri::Container>,
    spec: StopSpec,
) -> anyhow::Result<()> {
    let grace = spec.grace.unwrap_or(DEFAULT_GRACE);
    let deadline = Instant::now() + grace;
    let mut stops = Vec::new();
    for c in running {
        let mut rt = cri.rt.clone();
        let name = c
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let hook = spec.pre_stop.get(&name).cloned();
        stops.push(async move {
            if let Some(cmd) = hook {
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = tokio::time::timeout(
                    left,
                    rt.exec_sync(cri::ExecSyncRequest {
                        container_id: c.id.clone(),
                        cmd,
                        timeout: left.as_secs() as i64,
                    }),
                )
                .await;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            rt.stop_container(cri::StopContainerRequest {
                container_id: c.id.clone(),
                timeout: left.as_secs() as i64,
            })
            .await
            .with_context(|| format!("stopping container {name}"))
        });
    }
    for r in futures::future::join_all(stops).await {
        r?;
    }
    cri.rt
        .clone()
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: sandbox_id,
        })
        .await
        .context("stopping the pod sandbox")?;
    Ok(())
}

/// Connects to the node's containerd and waits (up to 20 s) until its CRI plugin answers: it
/// initializes after containerd opens its socket ("server is not initialized yet").
async fn cri_ready(layout: &kubelet::runtime::Layout) -> anyhow::Result<kubelet::runtime::Cri> {
    let cri = kubelet::runtime::connect(&layout.socket().to_string_lossy())?;
    let t0 = Instant::now();
    loop {
        match cri
            .rt
            .clone()
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await
        {
            Ok(_) => return Ok(cri),
            Err(e) if t0.elapsed() < Duration::from_secs(20) => {
                tracing::debug!(error = %e, "waiting for containerd's CRI plugin");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(anyhow::anyhow!("containerd's CRI plugin: {}", e.message())),
        }
    }
}

/// Removes every pod sandbox (with its containers and network namespace, whose CNI DEL releases
/// the pod's address) from a freshly started containerd. Returns the removed pods' uids.
async fn remove_all_pods(layout: &kubelet::runtime::Layout) -> anyhow::Result<Vec<String>> {
    let containerd = kubelet::runtime::Containerd::start(layout).await?;
    let cri = match cri_ready(layout).await {
        Ok(c) => c,
        Err(e) => {
            containerd.stop().await;
            return Err(e);
        }
    };
    let res = async {
        let sandboxes = cri
            .rt
            .clone()
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await?
            .into_inner()
            .items;
        let mut uids = Vec::new();
        for sb in sandboxes {
            if let Some(m) = &sb.metadata {
                uids.push(m.uid.clone());
            }
            cri.rt
                .clone()
                .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: sb.id,
                })
                .await?;
        }
        Ok::<_, tonic::Status>(uids)
    }
    .await;
    containerd.stop().await;
    res.context("removing pod sandboxes")
}

/// Removes the (now empty) `kubepods/pod<uid>` cgroups of the removed pods in every hierarchy,
/// and `kubepods` itself where nothing else is left in it.
fn remove_pod_cgroups(uids: &[String]) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let roots: Vec<PathBuf> = hierarchies
        .flatten()
        .map(|e| e.path())
        .chain(std::iter::once(PathBuf::from("/sys/fs/cgroup")))
        .collect();
    for root in roots {
        let kubepods = root.join("kubepods");
        for uid in uids {
            let pod = kubepods.join(format!("pod{uid}"));
            if pod.is_dir() {
                // Container cgroups below it first; rmdir only succeeds on empty cgroups.
                if let Ok(children) = std::fs::read_dir(&pod) {
                    for c in children.flatten() {
                        if c.path().is_dir() {
                            let _ = std::fs::remove_dir(c.path());
                        }
                    }
                }
                let _ = std::fs::remove_dir(&pod);
            }
        }
        let _ = std::fs::remove_dir(&kubepods);
    }
}

/// SIGKILLs any containerd shim still serving this node's containerd (a shim outlives containerd
/// by design; after RemovePodSandbox none should be left).
fn kill_shims(socket: &Path) {
    let sock = socket.to_string_lossy().into_owned();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_shim = args.first().is_some_and(|a| a.contains("containerd-shim"));
        if is_shim && args.iter().any(|a| a.starts_with(&sock)) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Unmounts every mount point under `dir` (deepest first; lazily, so a busy one still goes).
fn unmount_under(dir: &Path) -> anyhow::Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        if let Err(e) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(path = %p.display(), error = %e, "unmount");
        }
    }
    Ok(())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Deletes a network link by name if it exists.
fn delete_link(name: &str) {
    if !Path::new("/sys/class/net").join(name).exists() {
        return;
    }
    // Over netlink, as the CNI plugin made it.
    if let Err(e) = cni_plugin::net::delete_link(None, name) {
        tracing::warn!(link = name, error = %e, "deleting link");
    }
}

/// Deletes the nftables tables Lotse's node network agent creates, where they exist.
fn delete_nft_tables() {
    // `nft` applies whole rule sets atomically and is what the agent programs them with.
    let Some(nft) = kubelet::runtime::find_binary("nft", &["/usr/sbin", "/sbin"]) else {
        return;
    };
    for (family, table) in NFT_TABLES {
        let exists = std::process::Command::new(&nft)
            .args(["list", "table", family, table])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if exists {
            let _ = std::process::Command::new(&nft)
                .args(["delete", "table", family, table])
                .status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(
            unescape_mount_path(r"/var/lib/lotse/a\040b"),
            PathBuf::from("/var/lib/lotse/a b")
        );
        assert_eq!(unescape_mount_path(r"/x\134y"), PathBuf::from(r"/x\y"));
        assert_eq!(unescape_mount_path(r"/plain"), PathBuf::from("/plain"));
        assert_eq!(unescape_mount_path(r"/end\04"), PathBuf::from(r"/end\04"));
    }

    #[test]
    fn only_lotse_up_is_recognised() {
        // This test process is not `lotse up`.
        assert!(!is_lotse_up(std::process::id() as i32));
        assert!(!is_lotse_up(i32::MAX));
    }
}
