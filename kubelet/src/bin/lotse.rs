//! `lotse`: the all-in-one launcher.
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

/// Lotse: a Kubernetes-compatible cluster on one machine.
///
///   sudo lotse up                 # apiserver + controllers + scheduler + containerd + kubelet
///   export KUBECONFIG=/var/lib/lotse/admin.kubeconfig
///   kubectl run web --image=nginx
///
/// No container registry is needed: `lotse images build` makes busybox, nginx, debian and the
/// sandbox image from the machine's Debian packages, and the kubelet imports them at start.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the whole cluster in this process (Ctrl-C stops it; running it again resumes it).
    Up(UpArgs),
    /// Image archives for the kubelet's airgapped image store.
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
}

#[derive(Subcommand)]
enum ImagesCommand {
    /// Build base images offline into <root-dir>/images/ (busybox, pause ~1 s each; debian ~70 s; nginx ~15 s more).
    Build(BuildArgs),
}

#[derive(Parser)]
struct BuildArgs {
    /// Data directory; images go to <data-dir>/kubelet/images unless --output is given.
    #[arg(long, env = "LOTSE_DATA_DIR", default_value = "/var/lib/lotse")]
    data_dir: PathBuf,
    /// Output directory for the archives.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Rebuild archives that already exist.
    #[arg(long)]
    force: bool,
    /// Images to build (busybox, pause, debian, nginx); default all.
    #[arg(value_delimiter = ',')]
    images: Vec<String>,
    /// Don't install missing build tools (as root, the Debian packages busybox-static, gcc,
    /// binutils, libc6-dev, debootstrap, jq are installed with apt-get when needed).
    #[arg(long, env = "LOTSE_NO_INSTALL")]
    no_install: bool,
}

#[derive(Parser)]
struct UpArgs {
    /// Directory for the PKI, the embedded database, kubeconfigs and the kubelet's root dir.
    #[arg(long, env = "LOTSE_DATA_DIR", default_value = "/var/lib/lotse")]
    data_dir: PathBuf,
    /// IP address the apiserver listens on.
    #[arg(long, env = "LOTSE_BIND_ADDRESS", default_value = "127.0.0.1")]
    bind_address: IpAddr,
    /// apiserver HTTPS port.
    #[arg(long, env = "LOTSE_SECURE_PORT", default_value_t = 6443)]
    secure_port: u16,
    /// CIDR from which Service ClusterIPs are allocated.
    #[arg(
        long,
        env = "LOTSE_SERVICE_CLUSTER_IP_RANGE",
        default_value = "10.96.0.0/12"
    )]
    service_cluster_ip_range: ipnet::Ipv4Net,
    /// The cluster's pod network.
    #[arg(long, env = "LOTSE_CLUSTER_CIDR", default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// This node's pod CIDR.
    #[arg(long, env = "LOTSE_POD_CIDR", default_value = kubelet::DEFAULT_POD_CIDR)]
    pod_cidr: String,
    /// HTTPS port of the kubelet API (container logs).
    #[arg(long, env = "LOTSE_KUBELET_PORT", default_value_t = 10250)]
    kubelet_port: u16,
    /// Name of the node (default: the host name).
    #[arg(long, env = "LOTSE_NODE_NAME")]
    node_name: Option<String>,
    /// Images built when <data-dir>/kubelet/images has none (empty: build nothing).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "busybox,pause,debian,nginx"
    )]
    images: Vec<String>,
    /// Don't install missing Debian packages. Without it, `lotse up` (as root) installs with
    /// apt-get what the node runs and lacks: containerd, runc, containernetworking-plugins,
    /// iproute2, util-linux, procps, mount, bsdutils, coreutils — and, only when the base images
    /// must be built, busybox-static, gcc, binutils, libc6-dev, debootstrap, jq.
    #[arg(long, env = "LOTSE_NO_INSTALL")]
    no_install: bool,
    /// What runs the pods: containerd, or `simulated` (no containers, only status transitions;
    /// for control-plane scale benchmarks).
    #[arg(long, env = "LOTSE_RUNTIME", value_enum, default_value_t = kubelet::RuntimeKind::Containerd)]
    runtime: kubelet::RuntimeKind,
}

const BUILD_SH: &str = include_str!("../../images/build.sh");
const MKIMAGE_SH: &str = include_str!("../../images/mkimage.sh");
const PAUSE_C: &str = include_str!("../../images/pause.c");

/// Writes the embedded image scripts to a temp dir and runs build.sh.
fn build_images(out: &Path, force: bool, images: &[String]) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("lotse-images-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for (name, text) in [
        ("build.sh", BUILD_SH),
        ("mkimage.sh", MKIMAGE_SH),
        ("pause.c", PAUSE_C),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, text)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    }
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(dir.join("build.sh")).arg(out);
    if force {
        cmd.arg("--force");
    }
    cmd.args(images);
    let st = cmd.status().context("running bash")?;
    let _ = std::fs::remove_dir_all(&dir);
    if !st.success() {
        bail!("image build failed ({st})");
    }
    Ok(())
}

/// A program that `lotse up` (or something it starts) runs, and the Debian package shipping it.
struct Need {
    /// Executable name, or an absolute path for a file that is not on PATH.
    what: &'static str,
    /// Debian package.
    pkg: &'static str,
}

const fn need(what: &'static str, pkg: &'static str) -> Need {
    Need { what, pkg }
}

/// What the node runs: containerd (with its shim and `ctr` for image import), runc, the CNI
/// loopback plugin, `ip` + `nsenter` (lotse-cni, node address), `kill` (stopping containerd and
/// exec sessions), `mount`/`umount` (volumes), `script` (exec with a tty), `df` (node disk).
const RUNTIME_NEEDS: &[Need] = &[
    need("containerd", "containerd"),
    need("containerd-shim-runc-v2", "containerd"),
    need("ctr", "containerd"),
    need("runc", "runc"),
    need("loopback", "containernetworking-plugins"),
    need("ip", "iproute2"),
    need("nsenter", "util-linux"),
    need("kill", "procps"),
    need("mount", "mount"),
    need("umount", "mount"),
    need("script", "bsdutils"),
    need("df", "coreutils"),
];

const BUSYBOX_NEEDS: &[Need] = &[need("busybox", "busybox-static")];
const PAUSE_NEEDS: &[Need] = &[
    need("gcc", "gcc"),
    need("strip", "binutils"),
    need("libc.a", "libc6-dev"),
];
const DEBIAN_NEEDS: &[Need] = &[
    need("debootstrap", "debootstrap"),
    need("chroot", "coreutils"),
];

/// What kubelet/images/build.sh runs for `image` (besides [`MKIMAGE_NEEDS`]).
fn build_needs(image: &str) -> &'static [Need] {
    match image {
        "busybox" => BUSYBOX_NEEDS,
        "pause" => PAUSE_NEEDS,
        "debian" | "nginx" => DEBIAN_NEEDS,
        _ => &[],
    }
}

/// Every image build needs these (mkimage.sh).
const MKIMAGE_NEEDS: &[Need] = &[
    need("jq", "jq"),
    need("tar", "tar"),
    need("gzip", "gzip"),
    need("sha256sum", "coreutils"),
];

const BIN_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Whether `n` is satisfied on this machine.
fn present(n: &Need) -> bool {
    match n.what {
        "loopback" => {
            kubelet::runtime::find_binary("loopback", &["/usr/lib/cni", "/opt/cni/bin"]).is_some()
        }
        // Static glibc for the pause binary: /usr/lib/<triplet>/libc.a.
        "libc.a" => std::fs::read_dir("/usr/lib")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .any(|e| e.path().join("libc.a").is_file())
            })
            .unwrap_or(false),
        // build.sh copies busybox into the image, so it must be the static one.
        "busybox" => kubelet::runtime::find_binary("busybox", BIN_DIRS)
            .is_some_and(|p| std::fs::read(p).is_ok_and(|b| is_static_elf(&b))),
        bin => kubelet::runtime::find_binary(bin, BIN_DIRS).is_some(),
    }
}

/// True for a 64-bit little-endian ELF without a PT_INTERP program header (no dynamic loader).
fn is_static_elf(b: &[u8]) -> bool {
    let u16_at = |o: usize| {
        b.get(o..o + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
    };
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map(|a| u64::from_le_bytes(a) as usize)
    };
    if b.get(0..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| u32_at(phoff + i * phentsize).is_some_and(|t| t != PT_INTERP))
}

/// The effective user id (the owner of /proc/self).
fn euid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Whether apt has package lists (`apt-get update` has run since the lists were last cleared, as
/// they are on fresh cloud images, debootstrapped roots and container images).
fn apt_has_lists() -> bool {
    std::fs::read_dir("/var/lib/apt/lists")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
        .unwrap_or(false)
}

/// Runs `apt-get <args>` non-interactively with its output on our stderr (stdout is reserved for
/// the `export KUBECONFIG=…` line); returns whether it succeeded and its stderr.
fn apt_get(args: &[&str]) -> anyhow::Result<(bool, String)> {
    use std::io::{BufRead, Write};
    use std::os::fd::AsFd;
    let mut child = std::process::Command::new("apt-get")
        .args(["-o", "DPkg::Lock::Timeout=300", "-q"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(std::process::Stdio::null())
        .stdout(std::io::stderr().as_fd().try_clone_to_owned()?)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running apt-get")?;
    let mut err = String::new();
    if let Some(pipe) = child.stderr.take() {
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            let _ = writeln!(std::io::stderr(), "{line}");
            err.push_str(&line);
            err.push('\n');
        }
    }
    Ok((child.wait()?.success(), err))
}

/// Makes sure the programs the node runs (with `runtime`) and the tools that build `images` are
/// installed, installing the missing Debian packages with apt-get (as root). Package
/// lists are fetched first when there are none, and again when apt cannot locate a package.
fn install_missing(runtime: bool, images: &[String]) -> anyhow::Result<()> {
    let mut needs: Vec<&Need> = Vec::new();
    if runtime {
        needs.extend(RUNTIME_NEEDS);
    }
    if !images.is_empty() {
        needs.extend(MKIMAGE_NEEDS);
        for n in images.iter().flat_map(|img| build_needs(img)) {
            // debian and nginx need the same tools
            if !needs.iter().any(|m| m.what == n.what) {
                needs.push(n);
            }
        }
    }
    let missing = |needs: &[&Need]| -> Vec<(&'static str, &'static str)> {
        needs
            .iter()
            .filter(|n| !present(n))
            .map(|n| (n.what, n.pkg))
            .collect()
    };
    let miss = missing(&needs);
    if miss.is_empty() {
        return Ok(());
    }
    let mut pkgs: Vec<&str> = miss.iter().map(|(_, p)| *p).collect();
    pkgs.sort();
    pkgs.dedup();
    let what: Vec<&str> = miss.iter().map(|(w, _)| *w).collect();
    let apt = kubelet::runtime::find_binary("apt-get", BIN_DIRS).is_some();
    if euid() != Some(0) || !apt {
        bail!(
            "missing {} (Debian packages: {}). {}",
            what.join(", "),
            pkgs.join(" "),
            if apt {
                format!(
                    "Run `lotse up` as root to install them, or install them first: sudo apt-get install {}",
                    pkgs.join(" ")
                )
            } else {
                "apt-get is not available: install them with this system's package manager".into()
            }
        );
    }
    eprintln!(
        "lotse: installing missing Debian packages with apt-get: {} (for {})",
        pkgs.join(" "),
        what.join(", ")
    );
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(&pkgs);
    if !apt_has_lists() {
        eprintln!("lotse: apt has no package lists yet: running apt-get update");
        let (ok, _) = apt_get(&["update"])?;
        if !ok {
            bail!(
                "apt-get update failed (see above); check /etc/apt/sources.list* and the network"
            );
        }
    }
    let (mut ok, err) = apt_get(&install)?;
    if !ok
        && (err.contains("Unable to locate package")
            || err.contains("has no installation candidate"))
    {
        eprintln!(
            "lotse: apt's package lists are out of date: running apt-get update and retrying"
        );
        let (up, _) = apt_get(&["update"])?;
        if !up {
            bail!(
                "apt-get update failed (see above); check /etc/apt/sources.list* and the network"
            );
        }
        ok = apt_get(&install)?.0;
    }
    if !ok {
        bail!("apt-get install {} failed (see above)", pkgs.join(" "));
    }
    let still = missing(&needs);
    if !still.is_empty() {
        let w: Vec<&str> = still.iter().map(|(w, _)| *w).collect();
        bail!(
            "still missing after installing {}: {}",
            pkgs.join(" "),
            w.join(", ")
        );
    }
    eprintln!("lotse: installed {}", pkgs.join(" "));
    Ok(())
}

async fn client_from(path: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

async fn up(a: UpArgs) -> anyhow::Result<()> {
    let data_dir = std::path::absolute(&a.data_dir)?;
    let root_dir = data_dir.join("kubelet");
    let images_dir = root_dir.join("images");
    let simulated = a.runtime == kubelet::RuntimeKind::Simulated;
    let has_images = std::fs::read_dir(&images_dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    let build = !has_images && !a.images.is_empty() && !simulated;
    if !a.no_install && !simulated {
        install_missing(true, if build { &a.images } else { &[] })?;
    }
    if build {
        eprintln!(
            "lotse: building base images into {} (once)",
            images_dir.display()
        );
        build_images(&images_dir, false, &a.images)?;
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let cfg = apiserver::server::Config {
        data_dir: data_dir.clone(),
        bind_address: a.bind_address,
        secure_port: a.secure_port,
        etcd_servers: Vec::new(),
        service_cluster_ip_range: a.service_cluster_ip_range,
        extra_sans: Vec::new(),
        compaction_interval: Duration::from_secs(300),
    };
    let (api_stop_tx, api_stop_rx) = tokio::sync::watch::channel(false);
    let running = apiserver::server::start(cfg, stopped(api_stop_rx))
        .await
        .context("starting the apiserver")?;
    let host = if a.bind_address.is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        a.bind_address.to_string()
    };
    let url = format!("https://{host}:{}", running.addr.port());
    let node_name = a.node_name.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_lowercase())
            .unwrap_or_else(|_| "node".into())
    });
    // Each component gets its own identity, as in a kubeadm cluster.
    let kubeconfig = |file: &str, user: &str, groups: &[&str]| -> anyhow::Result<PathBuf> {
        let (cert, key) = running.pki.issue_client_cert(user, groups)?;
        let path = data_dir.join(file);
        running
            .pki
            .write_kubeconfig(&path, &url, user, &cert, &key)?;
        Ok(path)
    };
    let ctrl_kc = kubeconfig(
        "controllers.kubeconfig",
        "system:kube-controller-manager",
        &[],
    )?;
    let sched_kc = kubeconfig("scheduler.kubeconfig", "system:kube-scheduler", &[])?;
    let node_kc = kubeconfig(
        &format!("kubelet-{node_name}.kubeconfig"),
        &format!("system:node:{node_name}"),
        &["system:nodes"],
    )?;

    // The controllers and the scheduler run on a runtime of their own: they spawn informer tasks
    // that outlive their main task, and the apiserver's graceful shutdown would wait for those
    // watches. Shutting that runtime down ends them all.
    let components = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("lotse-components")
        .enable_all()
        .build()
        .context("starting the controllers' runtime")?;
    start_controllers(
        &components,
        ctrl_kc,
        a.cluster_cidr.clone(),
        running.pki.ca_cert_pem().to_string(),
    );
    components.spawn(async move {
        let cfg = scheduler::Config {
            leader_elect: false,
            ..Default::default()
        };
        let res = match client_from(&sched_kc).await {
            Ok(client) => scheduler::run(cfg, client)
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            tracing::error!(error = %e, "scheduler stopped");
        }
    });
    let kcfg = kubelet::Config {
        node_name,
        root_dir,
        container_runtime_endpoint: None,
        pod_cidr: Some(a.pod_cidr),
        node_ip: kubelet::node::host_ip(),
        port: a.kubelet_port,
        max_pods: 110,
        runtime: a.runtime,
        client_ca_der: kubelet::pem_certificates(running.pki.ca_cert_pem().as_bytes()),
    };
    let node_client = client_from(&node_kc).await?;
    let kubelet = tokio::spawn(kubelet::run(kcfg, node_client, stopped(stop_rx.clone())));
    println!("export KUBECONFIG={}", running.admin_kubeconfig.display());

    shutdown_signal().await;
    eprintln!("lotse: stopping");
    let _ = stop_tx.send(true);
    components.shutdown_background();
    match tokio::time::timeout(Duration::from_secs(15), kubelet).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "kubelet"),
        Err(_) => tracing::warn!("kubelet did not stop within 15 s"),
        _ => {}
    }
    // The apiserver goes last, so the kubelet can still report while it stops.
    let _ = api_stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), running.task).await;
    Ok(())
}

#[cfg(feature = "with-controllers")]
fn start_controllers(
    rt: &tokio::runtime::Runtime,
    kubeconfig: PathBuf,
    cluster_cidr: String,
    ca_pem: String,
) {
    rt.spawn(async move {
        let cfg = controllers::Config {
            cluster_cidr,
            root_ca_pem: Some(ca_pem),
            leader_elect: false,
            ..Default::default()
        };
        let res = match client_from(&kubeconfig).await {
            Ok(client) => controllers::run(cfg, client)
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            tracing::error!(error = %e, "controllers stopped");
        }
    });
}

// TODO: drop this fallback (and the feature) once the controllers crate's `run` is committed.
#[cfg(not(feature = "with-controllers"))]
fn start_controllers(
    _rt: &tokio::runtime::Runtime,
    _kubeconfig: PathBuf,
    _cluster_cidr: String,
    _ca_pem: String,
) {
    tracing::warn!(
        "built without the controllers (feature with-controllers): Deployments and ReplicaSets are not reconciled"
    );
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Images {
            command: ImagesCommand::Build(b),
        } => {
            let out = b
                .output
                .unwrap_or_else(|| b.data_dir.join("kubelet/images"));
            if !b.no_install {
                let all = ["busybox", "pause", "debian", "nginx"].map(String::from);
                let images = if b.images.is_empty() {
                    &all[..]
                } else {
                    &b.images[..]
                };
                // Only what is still to be built (build.sh keeps existing archives).
                let todo: Vec<String> = images
                    .iter()
                    .filter(|i| b.force || !out.join(format!("{i}.tar")).is_file())
                    .cloned()
                    .collect();
                install_missing(false, &todo)?;
            }
            build_images(&out, b.force, &b.images)
        }
        Command::Up(a) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            tokio::runtime::Runtime::new()?.block_on(up(a))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-bit little-endian ELF header with program headers of `types` right after it.
    fn elf(types: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for t in types {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            b.extend(ph);
        }
        b
    }

    #[test]
    fn static_elf_has_no_interpreter() {
        const PT_LOAD: u32 = 1;
        const PT_INTERP: u32 = 3;
        assert!(is_static_elf(&elf(&[PT_LOAD, PT_LOAD])));
        assert!(!is_static_elf(&elf(&[PT_INTERP, PT_LOAD])));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        // Program headers cut off: not provably static.
        let mut cut = elf(&[PT_LOAD]);
        cut.truncate(66);
        assert!(!is_static_elf(&cut));
        // This test binary is dynamically linked (Rust's default on glibc).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me));
    }

    #[test]
    fn image_builds_need_their_tools() {
        let pkgs = |img: &str| -> Vec<&str> { build_needs(img).iter().map(|n| n.pkg).collect() };
        assert_eq!(pkgs("busybox"), ["busybox-static"]);
        assert!(pkgs("pause").contains(&"libc6-dev"));
        assert!(pkgs("nginx").contains(&"debootstrap"));
        assert!(pkgs("unknown").is_empty());
        assert!(
            RUNTIME_NEEDS
                .iter()
                .any(|n| n.pkg == "containernetworking-plugins")
        );
    }
}
