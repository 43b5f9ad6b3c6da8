//! The Node object and its Lease: registration with the machine's capacity, heartbeats, and
//! NodeStatus conditions.
//!
//! As in Kubernetes with node leases: the Lease is renewed every [`LEASE_RENEW`] (that is the
//! node's liveness signal), the status is computed as often but written to `nodes/<name>/status`
//! only when it changed ([`status_changed`]: conditions' status, reason or message, addresses,
//! capacity, allocatable, images, daemonEndpoints, nodeInfo) or when the last write is older
//! than [`NODE_STATUS_REPORT_FREQUENCY`]. Conditions' `lastHeartbeatTime` therefore moves only
//! when the status is written, and `lastTransitionTime` only when a condition's status flips.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    ContainerImage, Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::{Config, Error, Kubelet};

/// The Kubernetes version the kubelet reports.
pub const KUBELET_VERSION: &str = "v1.33.0-lotse";

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

fn read_meminfo_kib(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Size of the filesystem holding `path` (statvfs: blocks × fragment size).
fn disk_bytes(path: &std::path::Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_blocks.saturating_mul(st.f_frsize))
}

/// The node's primary IPv4 address: the source address the kernel picks for the default route.
/// Connecting a UDP socket only asks the routing table — no packet is sent.
pub fn host_ip() -> String {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("1.1.1.1:53")?;
            s.local_addr()
        })
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified())
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "127.0.0.1".into())
}

fn capacity(cfg: &Config) -> BTreeMap<String, Quantity> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_kib = read_meminfo_kib("MemTotal:").unwrap_or(0);
    let disk = disk_bytes(&cfg.root_dir).unwrap_or(0);
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let mut m = BTreeMap::new();
    m.insert("cpu".into(), Quantity(cpus.to_string()));
    m.insert("memory".into(), Quantity(format!("{mem_kib}Ki")));
    m.insert(
        "ephemeral-storage".into(),
        Quantity(format!("{}Ki", disk / 1024)),
    );
    m.insert("pods".into(), Quantity(cfg.max_pods.to_string()));
    m.insert("hugepages-2Mi".into(), Quantity("0".into()));
    let _ = pid_max;
    m
}

fn condition(kind: &str, ok: bool, reason: &str, message: &str, since: &Time) -> NodeCondition {
    let status = if kind == "Ready" { ok } else { !ok };
    NodeCondition {
        type_: kind.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now()),
        last_transition_time: Some(since.clone()),
    }
}

/// The NodeStatus for the machine as it is now; `runtime_ok` is whether the CRI answers.
pub fn node_status(
    cfg: &Config,
    runtime_ok: Result<(), String>,
    since: &Time,
    runtime_version: &str,
) -> NodeStatus {
    let cap = capacity(cfg);
    let (ready_reason, ready_msg) = match &runtime_ok {
        Ok(()) => (
            "KubeletReady",
            "kubelet is posting ready status".to_string(),
        ),
        Err(e) => ("KubeletNotReady", format!("container runtime is down: {e}")),
    };
    let mem_avail = read_meminfo_kib("MemAvailable:").unwrap_or(u64::MAX);
    let mem_pressure = mem_avail < 100 * 1024;
    NodeStatus {
        capacity: Some(cap.clone()),
        allocatable: Some(cap),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: cfg.node_ip.clone(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: cfg.node_name.clone(),
            },
        ]),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                !mem_pressure,
                if mem_pressure {
                    "KubeletHasInsufficientMemory"
                } else {
                    "KubeletHasSufficientMemory"
                },
                if mem_pressure {
                    "kubelet has insufficient memory available"
                } else {
                    "kubelet has sufficient memory available"
                },
                since,
            ),
            condition(
                "DiskPressure",
                true,
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
                since,
            ),
            condition(
                "PIDPressure",
                true,
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
                since,
            ),
            condition("Ready", runtime_ok.is_ok(), ready_reason, &ready_msg, since),
        ]),
        daemon_endpoints: Some(k8s_openapi::api::core::v1::NodeDaemonEndpoints {
            kubelet_endpoint: Some(k8s_openapi::api::core::v1::DaemonEndpoint {
                port: cfg.port as i32,
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH
                .replace("x86_64", "amd64")
                .replace("aarch64", "arm64"),
            operating_system: "linux".into(),
            kubelet_version: KUBELET_VERSION.into(),
            kube_proxy_version: KUBELET_VERSION.into(),
            container_runtime_version: runtime_version.into(),
            kernel_version: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .into(),
            os_image: os_image(),
            machine_id: std::fs::read_to_string("/etc/machine-id")
                .unwrap_or_default()
                .trim()
                .into(),
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .unwrap_or_default()
                .trim()
                .into(),
            system_uuid: String::new(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "Linux".into())
}

/// Creates the Node if absent (labels `kubernetes.io/hostname`, `kubernetes.io/os`,
/// `kubernetes.io/arch`, `node.kubernetes.io/*`), then writes its status (conditions whose
/// status is unchanged since the Node's last status keep their transition times, as across a
/// kubelet restart).
pub async fn register(
    client: &kube::Client,
    cfg: &Config,
    mut status: NodeStatus,
) -> Result<Node, Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let arch = std::env::consts::ARCH
        .replace("x86_64", "amd64")
        .replace("aarch64", "arm64");
    let labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", cfg.node_name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", arch.as_str()),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", arch.as_str()),
        ("node.kubernetes.io/instance-type", "lotse"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let node = Node {
        metadata: ObjectMeta {
            name: Some(cfg.node_name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: cfg.pod_cidr.clone(),
            pod_cidrs: cfg.pod_cidr.clone().map(|c| vec![c]),
            ..Default::default()
        }),
        status: None,
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => tracing::info!(node = %cfg.node_name, "registered node"),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            tracing::info!(node = %cfg.node_name, "node already registered");
            if let Some(last) = nodes.get_opt(&cfg.node_name).await?.and_then(|n| n.status) {
                keep_transition_times(&last, &mut status);
            }
        }
        Err(e) => return Err(e.into()),
    }
    patch_status(client, &cfg.node_name, &status).await
}

/// For a kubelet started without `--pod-cidr`: registers the Node (its runtime not yet started,
/// so NotReady) and waits until node IPAM has given it `spec.podCIDR`, which the pod network
/// (lotse-cni's IPAM) then uses. A Node that already has one (a restart) answers at once.
pub async fn await_pod_cidr(client: &kube::Client, cfg: &Config) -> Result<String, Error> {
    let since = Time(jiff::Timestamp::now());
    let status = node_status(cfg, Err("container runtime is starting".into()), &since, "");
    register(client, cfg, status).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let mut logged = false;
    loop {
        let cidr = nodes
            .get_opt(&cfg.node_name)
            .await?
            .and_then(|n| n.spec)
            .and_then(|s| s.pod_cidr);
        if let Some(c) = cidr.filter(|c| !c.is_empty()) {
            tracing::info!(node = %cfg.node_name, pod_cidr = %c, "pod CIDR assigned");
            return Ok(c);
        }
        if !logged {
            tracing::info!(node = %cfg.node_name, "waiting for node IPAM to assign spec.podCIDR");
            logged = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Writes the node's status (merge patch on `nodes/<name>/status`).
pub async fn patch_status(
    client: &kube::Client,
    name: &str,
    status: &NodeStatus,
) -> Result<Node, Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    Ok(nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await?)
}

/// Creates or renews the node's Lease in `kube-node-lease` (duration 40 s, renewed every 10 s).
pub async fn renew_lease(client: &kube::Client, node: &Node) -> Result<(), Error> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renew = MicroTime(jiff::Timestamp::now());
    match leases.get_opt(&name).await? {
        Some(mut l) => {
            let spec = l.spec.get_or_insert_with(Default::default);
            spec.renew_time = Some(renew);
            spec.holder_identity = Some(name.clone());
            leases.replace(&name, &PostParams::default(), &l).await?;
        }
        None => {
            let owner = k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: name.clone(),
                uid: node.metadata.uid.clone().unwrap_or_default(),
                ..Default::default()
            };
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    owner_references: Some(vec![owner]),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(name.clone()),
                    lease_duration_seconds: Some(40),
                    renew_time: Some(renew),
                    ..Default::default()
                }),
            };
            leases.create(&PostParams::default(), &lease).await?;
        }
    }
    Ok(())
}

/// How often the Lease is renewed.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);

/// How often the status is computed (Kubernetes' `nodeStatusUpdateFrequency`).
pub const NODE_STATUS_UPDATE_FREQUENCY: Duration = Duration::from_secs(10);

/// The longest time between two status writes when nothing changed (Kubernetes'
/// `nodeStatusReportFrequency`).
pub const NODE_STATUS_REPORT_FREQUENCY: Duration = Duration::from_secs(5 * 60);

/// At most this many images are reported in `status.images`, largest first (Kubernetes'
/// `nodeStatusMaxImages`).
pub const NODE_STATUS_MAX_IMAGES: usize = 50;

/// `status` without what moves on every report (conditions' heartbeat and transition times),
/// conditions in a fixed order.
fn comparable(status: &NodeStatus) -> NodeStatus {
    let mut s = status.clone();
    if let Some(cs) = s.conditions.as_mut() {
        for c in cs.iter_mut() {
            c.last_heartbeat_time = None;
            c.last_transition_time = None;
        }
        cs.sort_by(|a, b| a.type_.cmp(&b.type_));
    }
    s
}

/// Whether `new` differs from `old` in anything but conditions' heartbeat and transition times.
pub fn status_changed(old: &NodeStatus, new: &NodeStatus) -> bool {
    comparable(old) != comparable(new)
}

/// Gives each condition of `current` whose status is the same as in `last` the transition time
/// it has there.
pub fn keep_transition_times(last: &NodeStatus, current: &mut NodeStatus) {
    let last_conditions = last.conditions.as_deref().unwrap_or_default();
    for c in current.conditions.iter_mut().flatten() {
        if let Some(prev) = last_conditions
            .iter()
            .find(|p| p.type_ == c.type_ && p.status == c.status)
            && prev.last_transition_time.is_some()
        {
            c.last_transition_time = prev.last_transition_time.clone();
        }
    }
}

/// Decides when the computed NodeStatus is written, and keeps conditions' transition times.
#[derive(Debug, Default)]
pub struct StatusReporter {
    /// The last status written, and when.
    last: Option<(NodeStatus, Instant)>,
}

impl StatusReporter {
    /// A reporter whose last write was `status` at `at` (the registration's).
    pub fn new(status: Option<NodeStatus>, at: Instant) -> StatusReporter {
        StatusReporter {
            last: status.map(|s| (s, at)),
        }
    }

    /// The last status written.
    pub fn last(&self) -> Option<&NodeStatus> {
        self.last.as_ref().map(|(s, _)| s)
    }

    /// The status to write at `now`, or None when `current` equals the last write (heartbeat
    /// times aside) and that write is younger than [`NODE_STATUS_REPORT_FREQUENCY`]. A
    /// condition whose status did not change keeps its last `lastTransitionTime`.
    pub fn due(&self, mut current: NodeStatus, now: Instant) -> Option<NodeStatus> {
        let Some((last, at)) = &self.last else {
            return Some(current);
        };
        keep_transition_times(last, &mut current);
        let stale = now.saturating_duration_since(*at) >= NODE_STATUS_REPORT_FREQUENCY;
        (stale || status_changed(last, &current)).then_some(current)
    }

    /// Records that `status` was written at `at`.
    pub fn reported(&mut self, status: NodeStatus, at: Instant) {
        self.last = Some((status, at));
    }

    /// Compares the next status with the conditions the API holds now (`status` as read back),
    /// as Kubernetes' kubelet compares with the Node it reads: when another writer — the node
    /// lifecycle controller marking a silent node Unknown — changed the Ready condition, the
    /// next status differs, so a node that comes back reports Ready at once instead of at the
    /// next report period. Only the conditions are taken, and only then: the rest is this
    /// kubelet's alone, and the API's rendering of it (quantities, order) must not cause writes.
    pub fn observed(&mut self, status: NodeStatus) {
        if let Some((last, _)) = &mut self.last {
            let ready = |s: &NodeStatus| {
                s.conditions
                    .iter()
                    .flatten()
                    .find(|c| c.type_ == "Ready")
                    .map(|c| c.status.clone())
            };
            if ready(last) != ready(&status) {
                last.conditions = status.conditions;
            }
        }
    }
}

/// The images the runtime holds, as `status.images` (largest first, at most
/// [`NODE_STATUS_MAX_IMAGES`]); None when the runtime does not answer.
async fn node_images(k: &Kubelet) -> Option<Vec<ContainerImage>> {
    let mut img = k.cri.img.clone();
    let list = tokio::time::timeout(
        Duration::from_secs(5),
        img.list_images(cri::ListImagesRequest { filter: None }),
    )
    .await
    .ok()?
    .ok()?
    .into_inner()
    .images;
    Some(images_status(list))
}

/// CRI images as `status.images`: names are the tags then the digests; nameless images are left
/// out.
pub fn images_status(mut list: Vec<cri::Image>) -> Vec<ContainerImage> {
    list.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.id.cmp(&b.id)));
    list.into_iter()
        .filter_map(|i| {
            let names: Vec<String> = i.repo_tags.into_iter().chain(i.repo_digests).collect();
            (!names.is_empty()).then(|| ContainerImage {
                names: Some(names),
                size_bytes: i64::try_from(i.size).ok(),
            })
        })
        .take(NODE_STATUS_MAX_IMAGES)
        .collect()
}

/// Renews the Lease every [`LEASE_RENEW`] and writes the NodeStatus when it changed or is due
/// (see the module docs); wakes at once when the container runtime goes down or comes back, so
/// Ready follows it without waiting for the next period. `node` is the registered Node (its
/// status is the last one written). Never returns.
pub async fn heartbeat(k: Arc<Kubelet>, node: Node) {
    let mut reporter = StatusReporter::new(node.status.clone(), Instant::now());
    let simulated = k.config.runtime == crate::RuntimeKind::Simulated;
    let mut down = k.runtime_down.subscribe();
    loop {
        down.borrow_and_update();
        if let Err(e) = renew_lease(&k.client, &node).await {
            tracing::warn!(error = %e, "lease renewal");
        }
        let (health, version) = crate::runtime_health(&k).await;
        let mut status = node_status(&k.config, health, &now(), &version);
        status.images = if simulated {
            None
        } else {
            match node_images(&k).await {
                Some(i) => Some(i),
                // Runtime unreachable: the images are still there.
                None => reporter.last().and_then(|s| s.images.clone()),
            }
        };
        let nodes: Api<Node> = Api::all(k.client.clone());
        if let Ok(Some(Node {
            status: Some(stored),
            ..
        })) = nodes.get_opt(&k.config.node_name).await
        {
            reporter.observed(stored);
        }
        if let Some(status) = reporter.due(status, Instant::now()) {
            match patch_status(&k.client, &k.config.node_name, &status).await {
                Ok(_) => reporter.reported(status, Instant::now()),
                Err(e) => tracing::warn!(error = %e, "node status"),
            }
        }
        let _ = tokio::time::timeout(NODE_STATUS_UPDATE_FREQUENCY, down.changed()).await;
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn host_ip_and_disk_size_come_from_the_kernel() {
        let ip: std::net::Ipv4Addr = host_ip().parse().unwrap();
        assert!(!ip.is_unspecified());
        assert!(disk_bytes(std::path::Path::new("/")).unwrap() > 0);
        assert_eq!(disk_bytes(std::path::Path::new("/no/such/dir")), None);
    }
    use super::*;

    fn at(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
    }

    fn status(ready: bool, heartbeat: i64) -> NodeStatus {
        NodeStatus {
            capacity: Some([("cpu".to_string(), Quantity("2".into()))].into()),
            conditions: Some(vec![
                NodeCondition {
                    type_: "MemoryPressure".into(),
                    status: "False".into(),
                    reason: Some("KubeletHasSufficientMemory".into()),
                    last_heartbeat_time: Some(at(heartbeat)),
                    last_transition_time: Some(at(heartbeat)),
                    ..Default::default()
                },
                NodeCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    reason: Some(
                        if ready {
                            "KubeletReady"
                        } else {
                            "KubeletNotReady"
                        }
                        .into(),
                    ),
                    last_heartbeat_time: Some(at(heartbeat)),
                    last_transition_time: Some(at(heartbeat)),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }
    }

    #[test]
    fn heartbeat_times_are_not_changes() {
        assert!(!status_changed(&status(true, 100), &status(true, 200)));
        let mut reordered = status(true, 300);
        if let Some(c) = reordered.conditions.as_mut() {
            c.reverse();
        }
        assert!(!status_changed(&status(true, 100), &reordered));
    }

    #[test]
    fn condition_capacity_image_and_address_changes_are_changes() {
        let base = status(true, 100);
        assert!(status_changed(&base, &status(false, 100)));
        let mut s = base.clone();
        if let Some(c) = s.conditions.as_mut() {
            c[0].message = Some("kubelet has insufficient memory available".into());
        }
        assert!(status_changed(&base, &s));
        let mut s = base.clone();
        s.capacity = Some([("cpu".to_string(), Quantity("4".into()))].into());
        assert!(status_changed(&base, &s));
        let mut s = base.clone();
        s.images = Some(vec![ContainerImage {
            names: Some(vec!["docker.io/library/busybox:latest".into()]),
            size_bytes: Some(1),
        }]);
        assert!(status_changed(&base, &s));
        let mut s = base.clone();
        s.addresses = Some(vec![NodeAddress {
            type_: "InternalIP".into(),
            address: "10.0.0.2".into(),
        }]);
        assert!(status_changed(&base, &s));
    }

    #[test]
    fn reports_again_when_another_writer_changed_the_stored_status() {
        let t0 = Instant::now();
        let mut r = StatusReporter::new(Some(status(true, 100)), t0);
        assert!(r.due(status(true, 100), t0).is_none());
        // The node lifecycle controller marked the node Unknown meanwhile.
        let mut unknown = status(true, 100);
        for c in unknown.conditions.iter_mut().flatten() {
            if c.type_ == "Ready" {
                c.status = "Unknown".into();
            }
        }
        r.observed(unknown);
        assert!(r.due(status(true, 100), t0).is_some());
    }

    #[test]
    fn reports_on_change_or_when_due() {
        let t0 = Instant::now();
        let mut r = StatusReporter::new(Some(status(true, 100)), t0);
        // Unchanged within the report frequency: nothing to write.
        assert_eq!(r.due(status(true, 110), t0 + Duration::from_secs(10)), None);
        assert_eq!(
            r.due(status(true, 400), t0 + Duration::from_secs(299)),
            None
        );
        // Unchanged but the last write is 5 minutes old: written, transition times kept.
        let due = r
            .due(status(true, 400), t0 + NODE_STATUS_REPORT_FREQUENCY)
            .expect("due after nodeStatusReportFrequency");
        let conds = due.conditions.clone().unwrap_or_default();
        assert!(
            conds
                .iter()
                .all(|c| c.last_transition_time == Some(at(100)))
        );
        assert!(conds.iter().all(|c| c.last_heartbeat_time == Some(at(400))));
        r.reported(due, t0 + NODE_STATUS_REPORT_FREQUENCY);
        // Ready flips: written at once; only Ready's transition time moves.
        let later = t0 + NODE_STATUS_REPORT_FREQUENCY + Duration::from_secs(1);
        let due = r.due(status(false, 401), later).expect("written on change");
        let conds = due.conditions.clone().unwrap_or_default();
        assert_eq!(conds[0].last_transition_time, Some(at(100)));
        assert_eq!(conds[1].last_transition_time, Some(at(401)));
        assert_eq!(conds[1].status, "False");
        // Nothing reported yet: always written.
        assert!(StatusReporter::default().due(status(true, 1), t0).is_some());
    }

    #[test]
    fn images_largest_first_and_named() {
        let img = |id: &str, size: u64, tags: &[&str]| cri::Image {
            id: id.into(),
            size,
            repo_tags: tags.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        };
        let out = images_status(vec![
            img("a", 10, &["busybox:latest"]),
            img("b", 20, &["nginx:latest"]),
            img("c", 30, &[]),
        ]);
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0].names.as_deref(),
            Some(&["nginx:latest".to_string()][..])
        );
        assert_eq!(out[1].size_bytes, Some(10));
    }
}
