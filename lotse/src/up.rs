//! `lotse up`: the whole cluster in one process.
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use crate::images::build_images;
use crate::install::install_missing;

#[derive(Parser)]
pub struct UpArgs {
    /// Directory for the PKI, the embedded database, kubeconfigs and the kubelet's root dir.
    #[arg(long, env = "LOTSE_DATA_DIR", default_value = "/var/lib/lotse")]
    data_dir: PathBuf,
    /// IP address the apiserver listens on (all interfaces by default, as k3s: pods reach it
    /// through the `kubernetes` Service at the host's primary address).
    #[arg(long, env = "LOTSE_BIND_ADDRESS", default_value = "0.0.0.0")]
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
    /// Don't run the node network agent (Services in nftables, pod egress masquerade).
    #[arg(long, env = "LOTSE_DISABLE_KUBE_PROXY")]
    disable_kube_proxy: bool,
    /// nftables table of the node network agent (one per network namespace; change it only to
    /// run several clusters side by side, e.g. in tests).
    #[arg(long, env = "LOTSE_NFTABLES_TABLE", default_value = "lotse")]
    nftables_table: String,
    /// Address of the cluster DNS Service `kube-system/kube-dns`, the nameserver of pods
    /// (default: the tenth address of --service-cluster-ip-range, as kubeadm). The DNS itself
    /// runs as pods (Deployment `kube-system/coredns`, image `docker.io/lotse/dns:<version>`
    /// built from the `lotse-dns` beside this binary at every start when it changed).
    #[arg(long, env = "LOTSE_CLUSTER_DNS")]
    cluster_dns: Option<IpAddr>,
    /// The cluster's DNS domain.
    #[arg(long, env = "LOTSE_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// Resolver configuration file that `dnsPolicy: Default` pods inherit — the cluster DNS
    /// pods too, whose upstreams its nameservers are (empty: none), as the kubelet's flag.
    #[arg(long, env = "LOTSE_RESOLV_CONF", default_value = "/etc/resolv.conf")]
    resolv_conf: String,
    /// Don't run the cluster DNS (the `kube-system/coredns` Deployment behind the `kube-dns`
    /// Service is not created, no DNS image is built; pods then use the host's resolvers).
    #[arg(long, env = "LOTSE_DISABLE_CLUSTER_DNS")]
    disable_cluster_dns: bool,
    /// Don't run the built-in ingress controller (the `kube-system/lotse-ingress` DaemonSet of
    /// host-network pods, image `docker.io/lotse/ingress:<version>` built from the
    /// `lotse-ingress` beside this binary, and the default IngressClass `lotse` are not created).
    #[arg(long, env = "LOTSE_DISABLE_INGRESS")]
    disable_ingress: bool,
    /// HTTP port of the ingress controller on every address of every node.
    #[arg(long, env = "LOTSE_INGRESS_HTTP_PORT", default_value_t = 80)]
    ingress_http_port: u16,
    /// HTTPS port of the ingress controller on every address of every node.
    #[arg(long, env = "LOTSE_INGRESS_HTTPS_PORT", default_value_t = 443)]
    ingress_https_port: u16,
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
    /// iproute2, util-linux, procps, mount, bsdutils, coreutils, nftables — and, only when the
    /// base images must be built, busybox-static, gcc, binutils, libc6-dev, debootstrap, jq.
    #[arg(long, env = "LOTSE_NO_INSTALL")]
    no_install: bool,
    /// What runs the pods: containerd, or `simulated` (no containers, only status transitions;
    /// for control-plane scale benchmarks).
    #[arg(long, env = "LOTSE_RUNTIME", value_enum, default_value_t = kubelet::RuntimeKind::Containerd)]
    runtime: kubelet::RuntimeKind,
    /// Registry mirrors, TLS and credentials in k3s's registries.yaml format, applied to the
    /// node's containerd (default: <data-dir>/registries.yaml when present).
    #[arg(long, env = "LOTSE_REGISTRY_CONFIG")]
    registry_config: Option<PathBuf>,
    /// Number of nodes on this machine. This host is the first; each other node is a network
    /// namespace on the underlay bridge with its own containerd, kubelet and network agent,
    /// joined with a bootstrap token as a second machine joins (`lotse join`).
    #[arg(long, env = "LOTSE_NODES", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=250))]
    nodes: u32,
    /// The underlay network of the nodes on this machine (with --nodes > 1): the host gets its
    /// first address, node k its k-th.
    #[arg(long, env = "LOTSE_NODE_NETWORK", default_value = "10.213.0.0/24")]
    node_network: ipnet::Ipv4Net,
    /// How pods reach the other nodes' pods (k3s's flag): `host-gw` (routes through the nodes'
    /// addresses, one L2 segment) or `vxlan` (encapsulated, VNI 1, UDP 8472, for nodes with
    /// routers between them). Nodes joined by --nodes use the same.
    #[arg(
        long,
        env = "LOTSE_FLANNEL_BACKEND",
        value_enum,
        default_value = "host-gw"
    )]
    flannel_backend: cni_plugin::agent::routes::Backend,
    /// How long a node may go without renewing its Lease before it is marked NotReady
    /// (unreachable) and its pods' tolerations start to count (kube-controller-manager's flag).
    #[arg(long, env = "LOTSE_NODE_MONITOR_GRACE_PERIOD", default_value = "40s", value_parser = kubelet::images::parse_duration)]
    node_monitor_grace_period: Duration,
    /// File with an apiserver.config.k8s.io/v1 EncryptionConfiguration (Secrets encrypted at
    /// rest, as kube-apiserver's flag; see README).
    #[arg(long, env = "LOTSE_ENCRYPTION_PROVIDER_CONFIG")]
    encryption_provider_config: Option<PathBuf>,
    /// SQLite's durability: `normal` keeps every acknowledged write through any process crash;
    /// `full` fsyncs each commit so it survives power loss too (slower writes).
    #[arg(long, env = "LOTSE_SQLITE_SYNCHRONOUS", default_value = "normal", value_parser = ["normal", "full"])]
    sqlite_synchronous: String,
    #[command(flatten)]
    backups: crate::backup::ScheduleArgs,
}

/// A client for the component whose kubeconfig is `path`, over one HTTP/2 connection (see
/// [`client_tools::http2`]).
pub(crate) async fn client_from(path: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(client_tools::http2::client(cfg)?)
}

pub async fn up(mut a: UpArgs) -> anyhow::Result<()> {
    // `--images=` (nothing) parses as one empty name.
    a.images.retain(|i| !i.trim().is_empty());
    let data_dir = std::path::absolute(&a.data_dir)?;
    let root_dir = data_dir.join("kubelet");
    let images_dir = root_dir.join("images");
    let simulated = a.runtime == kubelet::RuntimeKind::Simulated;
    let has_images = std::fs::read_dir(&images_dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    let build = !has_images && !a.images.is_empty() && !simulated;
    let cluster_dns_pods = !a.disable_cluster_dns && !simulated;
    let ingress_pods = !a.disable_ingress && !simulated;
    if !a.no_install && !simulated {
        let mut tools: Vec<String> = if build { a.images.clone() } else { Vec::new() };
        if cluster_dns_pods {
            tools.push("dns".into());
        }
        if ingress_pods {
            tools.push("ingress".into());
        }
        install_missing(true, &tools)?;
    }
    if build {
        eprintln!(
            "lotse: building base images into {} (once)",
            images_dir.display()
        );
        build_images(&images_dir, false, &a.images)?;
    }
    // The cluster DNS pods' image, from the lotse-dns beside this binary (rebuilt when it
    // changed), so the node needs no registry for it.
    if cluster_dns_pods {
        crate::images::DNS.ensure(&images_dir)?;
    }
    // The same for the ingress controller's pods (lotse-ingress).
    if ingress_pods {
        crate::images::INGRESS.ensure(&images_dir)?;
    }
    // With several nodes, the host's node address is its underlay address: the other nodes'
    // routes to its pods go through it, and they reach the apiserver there.
    let underlay = crate::nodes::Underlay {
        cidr: a.node_network,
    };
    let underlay_ip = if a.nodes > 1 {
        let cluster_cidr = a.cluster_cidr.parse().context("--cluster-cidr")?;
        Some(crate::nodes::ensure_bridge(&underlay, cluster_cidr)?)
    } else {
        None
    };
    let registry_config = a
        .registry_config
        .clone()
        .or_else(|| Some(data_dir.join("registries.yaml")).filter(|p| p.is_file()));
    // containerd needs nothing from the apiserver: it starts while the apiserver does, and the
    // kubelet takes it over once the API is up.
    let containerd = (!simulated).then(|| {
        let (root, cidr, registries) = (
            root_dir.clone(),
            a.pod_cidr.clone(),
            registry_config.clone(),
        );
        tokio::spawn(
            async move { kubelet::start_containerd(&root, &cidr, registries.as_deref()).await },
        )
    });
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
        extra_sans: underlay_ip.iter().map(|ip| ip.to_string()).collect(),
        advertise_address: underlay_ip.map(IpAddr::V4),
        compaction_interval: Duration::from_secs(300),
    };
    let (api_stop_tx, api_stop_rx) = tokio::sync::watch::channel(false);
    let storage = apiserver::server::StorageOptions {
        encryption_provider_config: a.encryption_provider_config.clone(),
        sqlite_sync_full: a.sqlite_synchronous == "full",
        ..Default::default()
    };
    let running = apiserver::server::start_with(cfg, storage, stopped(api_stop_rx))
        .await
        .context("starting the apiserver")?;
    // Kubelets serve with certificates from the cluster CA (kubelet-serving signer, approved by
    // the controllers), and the apiserver verifies them (--kubelet-certificate-authority).
    let _ = running
        .state
        .security
        .kubelet_ca
        .set(running.pki.ca_cert_pem().to_string());
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
    let _backups = crate::backup::spawn_scheduled(&data_dir, &node_name, &a.backups)?;
    // Each component has its own identity, as in a kubeadm cluster: the apiserver wrote the
    // controllers', scheduler's and node network agent's kubeconfigs into the data dir when it
    // started; the node's is issued the way `lotse join` asks for it.
    use apiserver::endpoints::components as identities;
    let ctrl_kc = data_dir.join(identities::CONTROLLERS_KUBECONFIG);
    let sched_kc = data_dir.join(identities::SCHEDULER_KUBECONFIG);
    let node_kc = identities::write_node_kubeconfig(&running.pki, &url, &data_dir, &node_name)?;

    // The controllers and the scheduler run on a runtime of their own: they spawn informer tasks
    // that outlive their main task, and the apiserver's graceful shutdown would wait for those
    // watches. Shutting that runtime down ends them all.
    let components = ComponentsRuntime::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lotse-components")
            .enable_all()
            .build()
            .context("starting the controllers' runtime")?,
    );
    start_controllers(
        &components,
        ctrl_kc,
        a.cluster_cidr.clone(),
        running.pki.ca_cert_pem().to_string(),
        data_dir.join("storage"),
        running.pki.dir().to_path_buf(),
        a.node_monitor_grace_period,
    );
    components.spawn(async move {
        let cfg = scheduler::Config {
            // One `lotse up` runs one scheduler: nothing to elect (kube-scheduler's default,
            // and the library's, is to elect).
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
    if !a.disable_kube_proxy {
        let agent_kc = data_dir.join(identities::KUBE_PROXY_KUBECONFIG);
        let mut cfg = cni_plugin::agent::AgentConfig::new(node_name.clone());
        cfg.cluster_cidr = a.cluster_cidr.parse().context("--cluster-cidr")?;
        cfg.table = a.nftables_table.clone();
        cfg.flannel_backend = (a.nodes > 1).then_some(a.flannel_backend);
        components.spawn(async move {
            let never = std::future::pending::<()>();
            if let Err(e) = cni_plugin::agent::run_with_kubeconfig(cfg, &agent_kc, never).await {
                tracing::error!(error = %e, "node network agent stopped");
            }
        });
    }
    // The cluster DNS runs as pods (a Deployment in kube-system, as kubeadm's and k3s's
    // CoreDNS) behind the kube-dns Service; the launcher only creates the objects, with its admin
    // rights, as kubeadm applies its addons.
    let cluster_dns = if a.disable_cluster_dns {
        Vec::new()
    } else {
        let ip = a
            .cluster_dns
            .unwrap_or_else(|| crate::system::tenth_address(a.service_cluster_ip_range));
        let admin = client_from(&running.admin_kubeconfig).await?;
        let domain = a.cluster_domain.clone();
        // The node DNS server of earlier versions had its own identity.
        let _ = std::fs::remove_file(data_dir.join("dns.kubeconfig"));
        components.spawn(async move {
            for attempt in 1..=30 {
                match crate::system::ensure_cluster_dns(
                    &admin,
                    ip,
                    &domain,
                    crate::images::DNS_IMAGE,
                )
                .await
                {
                    Ok(()) => break,
                    Err(e) if attempt == 30 => tracing::error!(error = %e, "cluster DNS objects"),
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster DNS objects; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await
                    }
                }
            }
        });
        vec![ip.to_string()]
    };
    // The ingress controller (class `lotse`, the default) runs as pods on every node (a
    // host-network DaemonSet in kube-system, as k3s's Traefik); the launcher creates the objects.
    if ingress_pods {
        let admin = client_from(&running.admin_kubeconfig).await?;
        let (http, https) = (a.ingress_http_port, a.ingress_https_port);
        // The in-process controller of earlier versions had its own identity.
        let _ = std::fs::remove_file(data_dir.join("ingress.kubeconfig"));
        components.spawn(async move {
            for attempt in 1..=30 {
                match crate::system::ensure_ingress(
                    &admin,
                    crate::images::INGRESS_IMAGE,
                    http,
                    https,
                )
                .await
                {
                    Ok(()) => break,
                    Err(e) if attempt == 30 => {
                        tracing::error!(error = %e, "ingress controller objects")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "ingress controller objects; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await
                    }
                }
            }
        });
    }
    let cluster_dns_ip: Option<IpAddr> = cluster_dns.first().and_then(|s| s.parse().ok());
    let mut kcfg = kubelet_config(NodeSettings {
        node_name,
        root_dir,
        pod_cidr: Some(a.pod_cidr),
        port: a.kubelet_port,
        ca_pem: running.pki.ca_cert_pem(),
        registry_config,
        cluster_dns,
        cluster_domain: a.cluster_domain.clone(),
        cgroup_root: "/".into(),
    });
    kcfg.runtime = a.runtime;
    kcfg.resolv_conf = a.resolv_conf.clone();
    if let Some(ip) = underlay_ip {
        kcfg.node_ip = ip.to_string();
    }
    let node_client = client_from(&node_kc).await?;
    let kcfg_name = kcfg.node_name.clone();
    let containerd = match containerd {
        Some(started) => Some(
            started
                .await
                .context("starting containerd")?
                .context("starting containerd")?,
        ),
        None => None,
    };
    let kubelet = tokio::spawn(kubelet::run_with(
        kcfg,
        node_client,
        stopped(stop_rx.clone()),
        containerd,
    ));
    // `lotse down` / `lotse reset` find this process through its pid file.
    let pid_file = data_dir.join(crate::down::PID_FILE);
    std::fs::write(&pid_file, std::process::id().to_string())
        .with_context(|| format!("writing {}", pid_file.display()))?;
    let mut extra_nodes = Vec::new();
    if let Some(host_ip) = underlay_ip {
        let join = JoinPlan {
            data_dir: &data_dir,
            server: format!("{host_ip}:{}", running.addr.port()),
            ca_hash: running.pki.ca_public_key_hash()?,
            host_node: &kcfg_name,
            cluster_cidr: &a.cluster_cidr,
            cluster_dns: cluster_dns_ip,
            cluster_domain: &a.cluster_domain,
            table: &a.nftables_table,
            flannel_backend: a.flannel_backend,
        };
        let admin = client_from(&running.admin_kubeconfig).await?;
        // The host's Node first: it brings its own podCIDR, which IPAM must not hand to a
        // joined node that registers before it (its kubelet imports the images first).
        wait_for_node(&admin, &kcfg_name, Duration::from_secs(60)).await;
        // Each joined node's volumes under its own data dir (rancher's local-path-config, as
        // an administrator writes it for nodes with their own data dirs); kept when it exists.
        let config = crate::nodes::local_path_config(&data_dir, &kcfg_name, a.nodes);
        let config: kube::api::DynamicObject = serde_json::from_value(config)?;
        if let Err(e) = crate::system::create_absent(&admin, &[config]).await {
            tracing::warn!(error = format!("{e:#}"), "local-path-config");
        }
        extra_nodes = match join.start(&admin, &underlay, a.nodes).await {
            Ok(nodes) => nodes,
            Err(e) => return Err(e.context("starting the other nodes")),
        };
    }
    println!("export KUBECONFIG={}", running.admin_kubeconfig.display());

    shutdown_signal().await;
    eprintln!("lotse: stopping");
    for (name, child) in &mut extra_nodes {
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        tracing::info!(node = %name, "stopping node");
    }
    let _ = stop_tx.send(true);
    drop(components);
    match tokio::time::timeout(Duration::from_secs(15), kubelet).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "kubelet"),
        Err(_) => tracing::warn!("kubelet did not stop within 15 s"),
        _ => {}
    }
    for (name, mut child) in extra_nodes {
        let t0 = std::time::Instant::now();
        while matches!(child.try_wait(), Ok(None)) && t0.elapsed() < Duration::from_secs(15) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if matches!(child.try_wait(), Ok(None)) {
            tracing::warn!(node = %name, "node did not stop within 15 s");
            let _ = child.kill();
        }
    }
    // The apiserver goes last, so the kubelet can still report while it stops.
    let _ = api_stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), running.task).await;
    Ok(())
}

/// The controllers' and scheduler's runtime, shut down in the background when dropped: a
/// runtime dropped inside another runtime's task panics, and on an early return (an error
/// while starting) that panic hid the error.
struct ComponentsRuntime {
    handle: tokio::runtime::Handle,
    runtime: Option<tokio::runtime::Runtime>,
}

impl ComponentsRuntime {
    fn new(runtime: tokio::runtime::Runtime) -> Self {
        Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        }
    }
}

impl std::ops::Deref for ComponentsRuntime {
    type Target = tokio::runtime::Handle;

    fn deref(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for ComponentsRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn start_controllers(
    rt: &tokio::runtime::Handle,
    kubeconfig: PathBuf,
    cluster_cidr: String,
    ca_pem: String,
    local_path_dir: PathBuf,
    pki_dir: PathBuf,
    node_monitor_grace_period: Duration,
) {
    rt.spawn(async move {
        let cfg = controllers::Config {
            cluster_cidr,
            root_ca_pem: Some(ca_pem),
            local_path_dir,
            // One `lotse up` runs one controller manager: nothing to elect (the library's
            // default, as kube-controller-manager's, is to elect).
            leader_elect: false,
            node_monitor_grace_period,
            // csrsigning issues node certificates from the cluster CA, as kubeadm points
            // kube-controller-manager's --cluster-signing-*-file at its ca.crt/ca.key.
            cluster_signing_cert_file: Some(pki_dir.join("ca.crt")),
            cluster_signing_key_file: Some(pki_dir.join("ca.key")),
            // The nodes' serving certificate requests, checked against their Node's addresses
            // (k3s signs kubelet serving certificates itself; Kubernetes leaves it to an
            // approver such as kubelet-csr-approver).
            approve_kubelet_serving: true,
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

/// What differs between the nodes a launcher runs (`lotse up`'s own, `lotse join`).
pub(crate) struct NodeSettings<'a> {
    pub node_name: String,
    pub root_dir: PathBuf,
    /// None: the one node IPAM assigns.
    pub pod_cidr: Option<String>,
    pub port: u16,
    /// The cluster CA: the kubelet API accepts client certificates it signed.
    pub ca_pem: &'a str,
    pub registry_config: Option<PathBuf>,
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    pub cgroup_root: String,
}

/// The kubelet configuration of a node run by the launcher (containerd under its root dir).
pub(crate) fn kubelet_config(n: NodeSettings<'_>) -> kubelet::Config {
    kubelet::Config {
        node_name: n.node_name,
        root_dir: n.root_dir,
        container_runtime_endpoint: None,
        pod_cidr: n.pod_cidr,
        node_ip: kubelet::node::host_ip(),
        port: n.port,
        max_pods: 110,
        runtime: kubelet::RuntimeKind::Containerd,
        client_ca_der: kubelet::pem_certificates(n.ca_pem.as_bytes()),
        images: kubelet::images::Options {
            registry_config: n.registry_config,
            ..kubelet::images::Options::from_env()
        },
        cluster_dns: n.cluster_dns,
        cluster_domain: n.cluster_domain,
        resolv_conf: "/etc/resolv.conf".into(),
        cgroup_root: n.cgroup_root,
        rotate_server_certificates: true,
    }
}

/// Waits until Node `name` is registered (at most `timeout`; a warning after it).
async fn wait_for_node(client: &kube::Client, name: &str, timeout: Duration) {
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let t0 = std::time::Instant::now();
    while t0.elapsed() < timeout {
        if let Ok(Some(_)) = nodes.get_opt(name).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::warn!(
        node = name,
        "not registered within {timeout:?}; joining the other nodes"
    );
}

/// How `lotse up --nodes N` joins its other nodes.
struct JoinPlan<'a> {
    data_dir: &'a Path,
    server: String,
    ca_hash: String,
    host_node: &'a str,
    cluster_cidr: &'a str,
    cluster_dns: Option<IpAddr>,
    cluster_domain: &'a str,
    table: &'a str,
    flannel_backend: cni_plugin::agent::routes::Backend,
}

impl JoinPlan<'_> {
    /// Starts nodes 2..=n, each `lotse join` in its network namespace; a node that has joined
    /// before resumes with its credentials, the others get a fresh one-hour bootstrap token.
    async fn start(
        &self,
        admin: &kube::Client,
        underlay: &crate::nodes::Underlay,
        n: u32,
    ) -> anyhow::Result<Vec<(String, std::process::Child)>> {
        let names: Vec<String> = (2..=n).map(|k| format!("{}-{k}", self.host_node)).collect();
        let need_token = names.iter().any(|name| {
            !crate::nodes::node_data_dir(self.data_dir, name)
                .join(crate::join::KUBECONFIG)
                .is_file()
        });
        let token = if need_token {
            Some(crate::nodes::create_token(admin, Duration::from_secs(3600)).await?)
        } else {
            None
        };
        let exe = std::env::current_exe().context("finding the lotse binary")?;
        let mut children = Vec::new();
        for (k, name) in (2..=n).zip(names) {
            let dir = crate::nodes::node_data_dir(self.data_dir, &name);
            // A node new to this data dir gets a new pod bridge: one left in the namespace by
            // another cluster (another data dir, not reset) carries gateway addresses of other
            // pod CIDRs, which would capture this cluster's traffic to other nodes' pods.
            if !dir.exists() {
                crate::nodes::remove_stale_pod_bridge(k);
            }
            let netns = crate::nodes::ensure_netns(underlay, k)?;
            std::fs::create_dir_all(&dir)?;
            let mut args: Vec<String> = vec![
                "join".into(),
                self.server.clone(),
                "--discovery-token-ca-cert-hash".into(),
                self.ca_hash.clone(),
                "--data-dir".into(),
                dir.to_string_lossy().into_owned(),
                "--node-name".into(),
                name.clone(),
                "--cgroup-root".into(),
                format!("/lotse/{name}"),
                "--no-install".into(),
                "--images-dir".into(),
                self.data_dir
                    .join("kubelet/images")
                    .to_string_lossy()
                    .into_owned(),
                "--cluster-cidr".into(),
                self.cluster_cidr.into(),
                "--cluster-domain".into(),
                self.cluster_domain.into(),
                "--nftables-table".into(),
                self.table.into(),
                "--flannel-backend".into(),
                match self.flannel_backend {
                    cni_plugin::agent::routes::Backend::HostGw => "host-gw",
                    cni_plugin::agent::routes::Backend::Vxlan => "vxlan",
                }
                .into(),
            ];
            if let Some(dns) = self.cluster_dns {
                args.extend(["--cluster-dns".into(), dns.to_string()]);
            }
            // The token goes by environment, not on the command line everyone can read.
            let env: Vec<(&str, String)> = token
                .iter()
                .map(|t| ("LOTSE_TOKEN", t.to_string()))
                .collect();
            let log = dir.join("lotse.log");
            let child = crate::nodes::spawn_in_netns(&netns, &exe, &args, &env, &log)?;
            eprintln!(
                "lotse: node {name} starting in network namespace {netns} (log: {})",
                dir.join("lotse.log").display()
            );
            children.push((name, child));
        }
        Ok(children)
    }
}

pub(crate) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}
