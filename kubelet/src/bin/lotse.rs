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
    /// Don't install missing Debian packages (containerd, runc, ...).
    #[arg(long)]
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

/// Installs the Debian packages the node needs when their binaries are missing.
fn install_missing() -> anyhow::Result<()> {
    let need = [
        ("containerd", "containerd"),
        ("runc", "runc"),
        ("ctr", "containerd"),
        ("busybox", "busybox-static"),
        ("gcc", "gcc"),
        ("debootstrap", "debootstrap"),
        ("jq", "jq"),
        ("nsenter", "util-linux"),
        ("ip", "iproute2"),
    ];
    let mut pkgs: Vec<&str> = need
        .iter()
        .filter(|(bin, _)| {
            kubelet::runtime::find_binary(bin, &["/usr/sbin", "/sbin", "/usr/bin"]).is_none()
        })
        .map(|(_, p)| *p)
        .collect();
    if !Path::new("/usr/lib/cni/loopback").exists() && !Path::new("/opt/cni/bin/loopback").exists()
    {
        pkgs.push("containernetworking-plugins");
    }
    pkgs.sort();
    pkgs.dedup();
    if pkgs.is_empty() {
        return Ok(());
    }
    eprintln!(
        "lotse: installing missing Debian packages: {}",
        pkgs.join(" ")
    );
    let st = std::process::Command::new("apt-get")
        .args([
            "-o",
            "DPkg::Lock::Timeout=300",
            "install",
            "-y",
            "--no-install-recommends",
        ])
        .args(&pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get (is this Debian?)")?;
    if !st.success() {
        bail!("apt-get install {} failed", pkgs.join(" "));
    }
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
    if !a.no_install && !simulated {
        install_missing()?;
    }
    let has_images = std::fs::read_dir(&images_dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if !has_images && !a.images.is_empty() && !simulated {
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

    let controllers =
        start_controllers(&ctrl_kc, &a.cluster_cidr, running.pki.ca_cert_pem()).await?;
    let sched_client = client_from(&sched_kc).await?;
    let scheduler = tokio::spawn(async move {
        let cfg = scheduler::Config {
            leader_elect: false,
            ..Default::default()
        };
        if let Err(e) = scheduler::run(cfg, sched_client).await {
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
    controllers.abort();
    scheduler.abort();
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
async fn start_controllers(
    kubeconfig: &Path,
    cluster_cidr: &str,
    ca_pem: &str,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let cfg = controllers::Config {
        cluster_cidr: cluster_cidr.to_string(),
        root_ca_pem: Some(ca_pem.to_string()),
        leader_elect: false,
        ..Default::default()
    };
    let client = client_from(kubeconfig).await?;
    Ok(tokio::spawn(async move {
        if let Err(e) = controllers::run(cfg, client).await {
            tracing::error!(error = %e, "controllers stopped");
        }
    }))
}

// TODO: drop this fallback (and the feature) once the controllers crate's `run` is committed.
#[cfg(not(feature = "with-controllers"))]
async fn start_controllers(
    _kubeconfig: &Path,
    _cluster_cidr: &str,
    _ca_pem: &str,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    tracing::warn!(
        "built without the controllers (feature with-controllers): Deployments and ReplicaSets are not reconciled"
    );
    Ok(tokio::spawn(async {}))
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
