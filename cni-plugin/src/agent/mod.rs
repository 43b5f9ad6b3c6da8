//! The node network agent: makes Services carry traffic on its node, as kube-proxy's nftables
//! mode does, and masquerades pod traffic that leaves the cluster network.
//!
//! It watches Services, EndpointSlices and Nodes (reflectors, an API client like every other
//! component), renders the node's whole rule set ([`render`]) whenever they change — a burst of
//! changes within [`AgentConfig::min_sync_period`] is one sync — and applies the difference to
//! what it applied last as ONE `nft -f` transaction ([`nft`]). A rejected transaction changes
//! nothing in the kernel; it is logged, reported as a Warning Event on the Node, and retried with
//! backoff as a full transaction. Established connections survive agent restarts: their NAT
//! state lives in conntrack, and the first sync replaces the table atomically.
//!
//! It enforces NetworkPolicies in the same rule set ([`policy`]): it also watches Pods,
//! Namespaces and NetworkPolicies, and a change to any of them is a sync like the others, so
//! Service and policy rules always change together in one transaction.
//!
//! It also runs the service load balancer ([`servicelb`]): `type: LoadBalancer` Services get
//! the nodes' addresses as `status.loadBalancer.ingress` (as k3s's ServiceLB).
use std::collections::BTreeSet;
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Node, ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::Notify;

pub mod conntrack;
pub mod healthcheck;
pub mod hostport;
pub mod model;
pub mod nft;
pub mod policy;
pub mod render;
pub mod routes;
pub mod servicelb;
pub mod sysctl;
pub mod vxlan;

pub use render::{RenderConfig, Ruleset};

/// Name the agent reports Events under.
pub const COMPONENT: &str = "lotse-agent";

/// Configuration of [`run`] (the `lotse-agent` flags).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's name (`--hostname-override`).
    pub node_name: String,
    /// The cluster's pod network (`--cluster-cidr`).
    pub cluster_cidr: Ipv4Net,
    /// Where NodePorts are open (`--nodeport-addresses`): local addresses in these CIDRs;
    /// empty means the node's primary addresses (its InternalIPs), as kube-proxy's default.
    pub nodeport_addresses: Vec<Ipv4Net>,
    /// Name of the agent's nftables table (family `ip`).
    pub table: String,
    /// Minimum time between two syncs (`--min-sync-period`): changes arriving faster are
    /// folded into one transaction.
    pub min_sync_period: Duration,
    /// Whether to run the service load balancer (LoadBalancer status writer).
    pub service_lb: bool,
    /// The node bridge the pods are on (lotse-cni's `bridge`): its ports get hairpin mode.
    pub bridge: String,
    /// How to route the other nodes' podCIDRs ([`routes`]: flannel's host-gw or vxlan), for
    /// clusters of more than one node; None: no routes (one node).
    pub flannel_backend: Option<routes::Backend>,
}

impl AgentConfig {
    /// Defaults for node `node_name`: cluster CIDR 10.244.0.0/16, table `lotse`, 50 ms minimum
    /// sync period, the service load balancer on.
    pub fn new(node_name: impl Into<String>) -> AgentConfig {
        AgentConfig {
            node_name: node_name.into(),
            cluster_cidr: Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 16).unwrap_or_default(),
            nodeport_addresses: Vec::new(),
            table: "lotse".into(),
            min_sync_period: Duration::from_millis(50),
            service_lb: true,
            bridge: "lotse0".into(),
            flannel_backend: None,
        }
    }
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Bad configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig {
        /// Its path.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No netlink connection to the node's network stack.
    #[error(transparent)]
    Netlink(#[from] crate::netlink::NetlinkError),
}

/// [`run`] with a client from the kubeconfig at `path` (for launchers such as `lotse up`).
pub async fn run_with_kubeconfig(
    cfg: AgentConfig,
    path: &std::path::Path,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let bad = |reason: String| AgentError::Kubeconfig {
        path: path.to_path_buf(),
        reason,
    };
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    let client = Client::try_from(config).map_err(|e| bad(e.to_string()))?;
    run(cfg, client, shutdown).await
}

/// Counts reflectors that have completed their first list, and wakes the sync loop on every
/// change.
struct Changes {
    notify: Notify,
    synced: AtomicUsize,
}

fn spawn_reflector<K>(
    api: Api<K>,
    what: &'static str,
    changes: Arc<Changes>,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut init_done = false;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::InitDone) if !init_done => {
                    init_done = true;
                    changes.synced.fetch_add(1, Ordering::SeqCst);
                    changes.notify.notify_one();
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(_) => changes.notify.notify_one(),
                Err(e) => tracing::warn!(what, error = %e, "watch failed; retrying"),
            }
        }
    });
    (reader, task)
}

/// Runs the agent until `shutdown` resolves. The rules stay in place when it stops (as
/// kube-proxy leaves them), so pods keep reaching Services while it restarts.
pub async fn run(
    cfg: AgentConfig,
    client: Client,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    if cfg.node_name.is_empty() {
        return Err(AgentError::Config("node name is empty".into()));
    }
    sysctl::prepare_node();
    let netlink = crate::netlink::connect()?;
    sysctl::hairpin_bridge_ports(&netlink, &cfg.bridge).await;
    let changes = Arc::new(Changes {
        notify: Notify::new(),
        synced: AtomicUsize::new(0),
    });
    let (services, t1) = spawn_reflector(
        Api::<Service>::all(client.clone()),
        "services",
        changes.clone(),
    );
    let (slices, t2) = spawn_reflector(
        Api::<EndpointSlice>::all(client.clone()),
        "endpointslices",
        changes.clone(),
    );
    let (nodes, t3) = spawn_reflector(Api::<Node>::all(client.clone()), "nodes", changes.clone());
    // NetworkPolicy enforcement ([`policy`]) needs the policies, the pods (labels, addresses,
    // container ports) and the namespaces (labels).
    let (pods, t4) = spawn_reflector(Api::<Pod>::all(client.clone()), "pods", changes.clone());
    let (namespaces, t5) = spawn_reflector(
        Api::<Namespace>::all(client.clone()),
        "namespaces",
        changes.clone(),
    );
    let (netpols, t6) = spawn_reflector(
        Api::<NetworkPolicy>::all(client.clone()),
        "networkpolicies",
        changes.clone(),
    );
    let tasks = [t1, t2, t3, t4, t5, t6];
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: COMPONENT.into(),
            instance: Some(cfg.node_name.clone()),
        },
    );
    let node_ref = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(cfg.node_name.clone()),
        uid: Some(cfg.node_name.clone()),
        ..Default::default()
    };
    let _ = recorder
        .publish(
            &Event {
                type_: EventType::Normal,
                reason: "Starting".into(),
                note: Some(format!("Starting {COMPONENT}.")),
                action: "StartAgent".into(),
                secondary: None,
            },
            &node_ref,
        )
        .await;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut syncer = Syncer::new(cfg.clone());
    let mut health = healthcheck::HealthServers::default();
    let mut last_sync: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = changes.notify.notified() => {}
            _ = &mut shutdown => break,
        }
        if changes.synced.load(Ordering::SeqCst) < tasks.len() {
            continue;
        }
        // Debounce: at most one sync per min_sync_period; what arrives meanwhile joins it.
        if let Some(t) = last_sync {
            let wait = cfg.min_sync_period.saturating_sub(t.elapsed());
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = &mut shutdown => break,
                }
            }
        }
        last_sync = Some(Instant::now());
        if cfg.service_lb {
            servicelb::sync(&client, &services.state(), &nodes.state()).await;
        }
        if let Some(backend) = cfg.flannel_backend {
            sync_pod_network(&netlink, &cfg, backend, &nodes.state()).await;
        }
        let node_ips = nodeport_ips(&netlink, &cfg, &nodes).await;
        let objs = policy::Objects {
            pods: pods.state(),
            namespaces: namespaces.state(),
            policies: netpols.state(),
        };
        let outcome = syncer
            .sync_with_policies(&services.state(), &slices.state(), node_ips, &objs)
            .await;
        health.sync(&healthcheck::desired(
            &services.state(),
            &slices.state(),
            &cfg.node_name,
        ));
        if let Err(why) = outcome {
            tracing::warn!(error = %why, retry_in = ?syncer.backoff, "nftables sync failed; the previous rules stay in place");
            let _ = recorder
                .publish(
                    &Event {
                        type_: EventType::Warning,
                        reason: "SyncProxyRulesFailed".into(),
                        note: Some(truncate(&format!("nftables sync failed: {why}"), 1000)),
                        action: "SyncProxyRules".into(),
                        secondary: None,
                    },
                    &node_ref,
                )
                .await;
            tokio::select! {
                _ = tokio::time::sleep(syncer.backoff) => {}
                _ = &mut shutdown => break,
            }
            syncer.backoff = (syncer.backoff * 2).min(MAX_BACKOFF);
            changes.notify.notify_one();
        }
    }
    for t in tasks {
        t.abort();
    }
    Ok(())
}

/// Routes (and with VXLAN the device and its peers) to the other nodes' pods.
async fn sync_pod_network(
    netlink: &crate::netlink::Handle,
    cfg: &AgentConfig,
    backend: routes::Backend,
    nodes: &[Arc<Node>],
) {
    let peers = routes::desired(&cfg.node_name, nodes.iter().map(|n| &**n));
    let mut problems = Vec::new();
    match backend {
        routes::Backend::Vxlan => {
            let me = nodes
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(cfg.node_name.as_str()))
                .and_then(|n| routes::pod_cidr_and_address(n));
            // Until this node has its podCIDR and address there is no tunnel end to route to.
            let Some((pod_cidr, local)) = me else { return };
            if let Err(e) = vxlan::ensure_device(netlink, local, pod_cidr).await {
                tracing::warn!(error = %e, "VXLAN device");
                return;
            }
            problems.extend(vxlan::sync_peers(netlink, &peers).await);
        }
        routes::Backend::HostGw => vxlan::remove_device(netlink).await,
    }
    problems.extend(
        routes::sync(
            netlink,
            &routes::routes_for(backend, &peers),
            cfg.cluster_cidr,
        )
        .await,
    );
    for problem in problems {
        tracing::warn!(error = %problem, "pod network");
    }
}

const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Renders and applies rule sets, remembering the last one the kernel accepted.
pub struct Syncer {
    /// Render configuration besides the node addresses.
    pub cfg: AgentConfig,
    /// The rule set the kernel holds (None: unknown, the next sync replaces the table).
    pub applied: Option<Ruleset>,
    /// How long the last sync took to render the rules and the transaction.
    pub last_render: Duration,
    /// How long the last sync's `nft -f` took.
    pub last_apply: Duration,
    /// The Service ports of the applied rule set (for stale UDP conntrack entries).
    last_ports: Vec<model::ServicePort>,
    synced_once: bool,
    backoff: Duration,
}

impl Syncer {
    /// A syncer that starts with a full transaction.
    pub fn new(cfg: AgentConfig) -> Syncer {
        Syncer {
            cfg,
            applied: None,
            last_render: Duration::ZERO,
            last_apply: Duration::ZERO,
            last_ports: Vec::new(),
            synced_once: false,
            backoff: INITIAL_BACKOFF,
        }
    }

    /// [`Syncer::sync_with_policies`] without NetworkPolicies (every pod open).
    pub async fn sync(
        &mut self,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        nodeport_ips: Vec<Ipv4Addr>,
    ) -> Result<(), nft::NftError> {
        self.sync_with_policies(services, slices, nodeport_ips, &policy::Objects::default())
            .await
    }

    /// Renders the rules for these objects (Services and NetworkPolicies, one rule set) and
    /// applies what changed in one transaction. On failure the kernel keeps the previous rules
    /// and the next sync is a full one.
    pub async fn sync_with_policies(
        &mut self,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        nodeport_ips: Vec<Ipv4Addr>,
        policies: &policy::Objects,
    ) -> Result<(), nft::NftError> {
        let t0 = Instant::now();
        let ports = model::service_ports(services, slices, &self.cfg.node_name);
        let rc = RenderConfig {
            table: self.cfg.table.clone(),
            cluster_cidr: self.cfg.cluster_cidr,
            nodeport_ips,
        };
        let mut ruleset = render::render(&rc, &ports);
        policy::render(&mut ruleset, &self.cfg.node_name, policies);
        let host_ports = hostport::of_pods(&self.cfg.node_name, policies.pods.iter().map(|p| &**p));
        hostport::render(&mut ruleset, &host_ports);
        if self.applied.as_ref() == Some(&ruleset) {
            self.last_render = t0.elapsed();
            self.last_apply = Duration::ZERO;
            return Ok(());
        }
        let (text, kind) = match self
            .applied
            .as_ref()
            .and_then(|old| ruleset.diff_transaction(old))
        {
            Some(diff) => (diff, "partial"),
            None => (ruleset.full_transaction(), "full"),
        };
        let lines = text.lines().count();
        self.last_render = t0.elapsed();
        let t1 = Instant::now();
        let result = tokio::task::spawn_blocking(move || nft::apply(&text))
            .await
            .unwrap_or_else(|e| Err(nft::NftError::Io(std::io::Error::other(e.to_string()))));
        self.last_apply = t1.elapsed();
        match result {
            Ok(()) => {
                tracing::debug!(kind, lines, service_ports = ports.len(), elapsed = ?t0.elapsed(), "synced nftables rules");
                self.applied = Some(ruleset);
                self.backoff = INITIAL_BACKOFF;
                // Not after the first sync of a (re)started agent: it knows no earlier state,
                // and flows that were fine before it started must survive it.
                let stale = if self.synced_once {
                    conntrack::stale_entries(&self.last_ports, &ports)
                } else {
                    Default::default()
                };
                self.synced_once = true;
                if !stale.is_empty() {
                    let _ = tokio::task::spawn_blocking(move || conntrack::clear(&stale)).await;
                }
                self.last_ports = ports;
                Ok(())
            }
            Err(e) => {
                self.applied = None;
                Err(e)
            }
        }
    }
}

/// The addresses NodePorts are open on: with `--nodeport-addresses`, this host's addresses in
/// those CIDRs; otherwise this node's InternalIPs (kube-proxy's `primary`). Never loopback:
/// nftables mode has no localhost NodePorts.
async fn nodeport_ips(
    netlink: &crate::netlink::Handle,
    cfg: &AgentConfig,
    nodes: &Store<Node>,
) -> Vec<Ipv4Addr> {
    let mut ips = BTreeSet::new();
    if cfg.nodeport_addresses.is_empty() {
        let node = nodes
            .state()
            .into_iter()
            .find(|n| n.metadata.name.as_deref() == Some(cfg.node_name.as_str()));
        if let Some(n) = node {
            ips.extend(servicelb::node_addresses(&n, "InternalIP"));
        }
    } else {
        for ip in sysctl::local_ipv4_addresses(netlink).await {
            if cfg.nodeport_addresses.iter().any(|c| c.contains(&ip)) {
                ips.insert(ip);
            }
        }
    }
    ips.into_iter().filter(|ip| !ip.is_loopback()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rejected_sync_is_an_error_and_forces_a_full_one() {
        let mut cfg = AgentConfig::new("n1");
        // Not a valid nft identifier: nft rejects the transaction before touching the kernel.
        cfg.table = "no such table".into();
        let mut syncer = Syncer::new(cfg);
        let err = syncer.sync(&[], &[], vec![]).await.unwrap_err();
        assert!(
            matches!(err, nft::NftError::Rejected(_) | nft::NftError::Missing(_)),
            "{err}"
        );
        assert!(syncer.applied.is_none(), "nothing counts as applied");
    }
}
