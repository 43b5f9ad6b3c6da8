//! The Node object and its Lease: registration with the machine's capacity, heartbeats, and
//! NodeStatus conditions.
use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::{Config, Error};

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

fn disk_bytes(path: &std::path::Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .arg("-B1")
        .arg("--output=size")
        .arg(path)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// The node's primary IPv4 address: the source address of the default route.
pub fn host_ip() -> String {
    let out = std::process::Command::new("ip")
        .args(["-4", "route", "get", "1.1.1.1"])
        .output();
    if let Ok(o) = out {
        let s = String::from_utf8_lossy(&o.stdout).to_string();
        let mut it = s.split_whitespace();
        while let Some(w) = it.next() {
            if w == "src"
                && let Some(ip) = it.next()
            {
                return ip.to_string();
            }
        }
    }
    "127.0.0.1".into()
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
/// `kubernetes.io/arch`, `node.kubernetes.io/*`), then writes its status.
pub async fn register(
    client: &kube::Client,
    cfg: &Config,
    status: NodeStatus,
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
            tracing::info!(node = %cfg.node_name, "node already registered")
        }
        Err(e) => return Err(e.into()),
    }
    patch_status(client, &cfg.node_name, &status).await
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
