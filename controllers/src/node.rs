//! Node IPAM and node lifecycle.
//!
//! IPAM gives every Node a `spec.podCIDR` (a /24 for IPv4) from `--cluster-cidr`. The
//! lifecycle monitor watches node heartbeats (the Lease in `kube-node-lease`, or the Ready
//! condition's heartbeat): a node silent for longer than the grace period gets its conditions
//! set to Unknown and the `node.kubernetes.io/unreachable` NoExecute taint (`not-ready` when
//! the kubelet reports Ready=False); pods on a NoExecute-tainted node are evicted once their
//! toleration runs out.
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::Mutex;

use crate::Error;
use crate::events::{EventType, Recorder};

/// Taint of a node whose kubelet stopped reporting.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint of a node whose kubelet reports Ready=False.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// The `index`-th /24 (or the cluster CIDR itself if it is smaller) of `cluster`.
pub fn nth_subnet(cluster: &IpNet, index: usize) -> Option<IpNet> {
    let prefix = match cluster.addr() {
        IpAddr::V4(_) => 24.max(cluster.prefix_len()),
        IpAddr::V6(_) => 64.max(cluster.prefix_len()),
    };
    cluster.subnets(prefix).ok()?.nth(index)
}

/// The first subnet of `cluster` not in `used`.
pub fn allocate(cluster: &IpNet, used: &BTreeSet<String>) -> Option<IpNet> {
    (0..)
        .map_while(|i| nth_subnet(cluster, i))
        .find(|n| !used.contains(&n.to_string()))
}

/// Whether `tol` tolerates `taint` (key, effect, operator Exists/Equal).
pub fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    if tol
        .effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    match tol.key.as_deref() {
        None | Some("") => tol.operator.as_deref() == Some("Exists"),
        Some(k) if k != taint.key => false,
        Some(_) => match tol.operator.as_deref() {
            Some("Exists") => true,
            _ => tol.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        },
    }
}

/// Seconds a pod may stay on a node with `taints` (NoExecute only): `None` = forever,
/// `Some(0)` = evict now. Pods with no matching toleration get `default_seconds`.
pub fn toleration_seconds(
    tolerations: &[Toleration],
    taints: &[Taint],
    default_seconds: i64,
) -> Option<i64> {
    let mut min: Option<i64> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        let secs = if matching.is_empty() {
            Some(default_seconds)
        } else if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            None
        } else {
            matching.iter().filter_map(|t| t.toleration_seconds).min()
        };
        if let Some(s) = secs {
            min = Some(min.map_or(s, |m: i64| m.min(s)));
        }
    }
    min
}

/// Runs IPAM and the lifecycle monitor forever.
pub async fn run(
    client: Client,
    recorder: Recorder,
    cluster_cidr: String,
    grace: Duration,
    default_toleration: Duration,
) -> Result<(), Error> {
    let cluster: IpNet = cluster_cidr
        .parse()
        .map_err(|e| Error::Invalid(format!("--cluster-cidr {cluster_cidr}: {e}")))?;
    let period = (grace / 4).clamp(Duration::from_millis(500), Duration::from_secs(5));
    let allocated = Arc::new(Mutex::new(BTreeSet::new()));
    let mut first_seen: HashMap<String, i64> = HashMap::new();
    loop {
        if let Err(e) = monitor_once(
            &client,
            &recorder,
            &cluster,
            grace,
            default_toleration,
            &allocated,
            &mut first_seen,
        )
        .await
        {
            tracing::warn!(error = %e, "node lifecycle");
        }
        tokio::time::sleep(period).await;
    }
}

async fn monitor_once(
    client: &Client,
    recorder: &Recorder,
    cluster: &IpNet,
    grace: Duration,
    default_toleration: Duration,
    allocated: &Mutex<BTreeSet<String>>,
    first_seen: &mut HashMap<String, i64>,
) -> Result<(), Error> {
    let nodes_api: Api<Node> = Api::all(client.clone());
    let nodes = nodes_api.list(&ListParams::default()).await?.items;
    let leases: HashMap<String, Lease> =
        Api::<Lease>::namespaced(client.clone(), "kube-node-lease")
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(|l| (l.name_any(), l))
            .collect();
    let now = jiff::Timestamp::now();

    // IPAM.
    let mut used = allocated.lock().await;
    for n in &nodes {
        if let Some(c) = n.spec.as_ref().and_then(|s| s.pod_cidr.clone()) {
            used.insert(c);
        }
    }
    for n in nodes.iter().filter(|n| {
        n.spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_deref())
            .is_none_or(str::is_empty)
    }) {
        let Some(cidr) = allocate(cluster, &used) else {
            recorder.record(
                n,
                "cidrAllocator",
                EventType::Warning,
                "CIDRNotAvailable",
                format!("Node {} status is now: CIDRNotAvailable", n.name_any()),
            );
            continue;
        };
        let cidr = cidr.to_string();
        nodes_api
            .patch(
                &n.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})),
            )
            .await?;
        recorder.record(
            n,
            "cidrAllocator",
            EventType::Normal,
            "CIDRAssignmentSucceeded",
            format!("Node {} podCIDR is {cidr}", n.name_any()),
        );
        used.insert(cidr);
    }
    drop(used);

    // Health.
    first_seen.retain(|name, _| nodes.iter().any(|n| &n.name_any() == name));
    for n in &nodes {
        let name = n.name_any();
        let conds = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let ready = conds.iter().find(|c| c.type_ == "Ready");
        let seen = *first_seen
            .entry(name.clone())
            .or_insert(now.as_millisecond());
        let heartbeat = [
            leases
                .get(&name)
                .and_then(|l| l.spec.as_ref())
                .and_then(|s| s.renew_time.as_ref())
                .map(|t| t.0.as_millisecond()),
            ready
                .and_then(|c| c.last_heartbeat_time.as_ref())
                .map(|t| t.0.as_millisecond()),
            Some(seen),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(seen);
        // Milliseconds: Lease renewTime is a MicroTime; whole seconds would declare a node
        // silent up to a second early.
        let silent = now.as_millisecond() - heartbeat > grace.as_millis() as i64;
        let mut ready_status = ready
            .map(|c| c.status.clone())
            .unwrap_or_else(|| "Unknown".into());
        if silent && (ready_status != "Unknown" || ready.is_none()) {
            let mut new_conds = conds.clone();
            for t in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
                new_conds.retain(|c| c.type_ != t);
                new_conds.push(k8s_openapi::api::core::v1::NodeCondition {
                    type_: t.into(),
                    status: "Unknown".into(),
                    reason: Some("NodeStatusUnknown".into()),
                    message: Some("Kubelet stopped posting node status.".into()),
                    last_heartbeat_time: conds
                        .iter()
                        .find(|c| c.type_ == t)
                        .and_then(|c| c.last_heartbeat_time.clone()),
                    last_transition_time: Some(crate::util::now()),
                });
            }
            nodes_api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"conditions": new_conds}})),
                )
                .await?;
            recorder.record(
                n,
                "node-controller",
                EventType::Normal,
                "NodeNotReady",
                format!("Node {name} status is now: NodeNotReady"),
            );
            ready_status = "Unknown".into();
        }
        let taints = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let want: Option<&str> = match ready_status.as_str() {
            "Unknown" => Some(UNREACHABLE),
            "False" => Some(NOT_READY),
            _ => None,
        };
        let mut new_taints: Vec<Taint> = taints
            .iter()
            .filter(|t| {
                !((t.key == UNREACHABLE || t.key == NOT_READY) && Some(t.key.as_str()) != want)
            })
            .cloned()
            .collect();
        if let Some(key) = want {
            for effect in ["NoSchedule", "NoExecute"] {
                if !new_taints
                    .iter()
                    .any(|t| t.key == key && t.effect == effect)
                {
                    new_taints.push(Taint {
                        key: key.into(),
                        effect: effect.into(),
                        value: None,
                        time_added: (effect == "NoExecute").then(crate::util::now),
                    });
                }
            }
        }
        if new_taints != taints {
            nodes_api
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"taints": new_taints}})),
                )
                .await?;
        }
        evict(
            client,
            recorder,
            &name,
            &new_taints,
            default_toleration,
            now,
        )
        .await?;
    }
    Ok(())
}

/// Deletes the pods on `node` whose tolerations of its NoExecute taints have run out.
async fn evict(
    client: &Client,
    recorder: &Recorder,
    node: &str,
    taints: &[Taint],
    default_toleration: Duration,
    now: jiff::Timestamp,
) -> Result<(), Error> {
    let no_execute: Vec<&Taint> = taints.iter().filter(|t| t.effect == "NoExecute").collect();
    if no_execute.is_empty() {
        return Ok(());
    }
    let since = no_execute
        .iter()
        .filter_map(|t| t.time_added.as_ref())
        .map(|t| t.0.as_second())
        .max()
        .unwrap_or(now.as_second());
    let pods_api: Api<Pod> = Api::all(client.clone());
    let pods = pods_api
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await?
        .items;
    for pod in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        let owned: Vec<Taint> = no_execute.iter().map(|t| (*t).clone()).collect();
        let Some(secs) =
            toleration_seconds(&tolerations, &owned, default_toleration.as_secs() as i64)
        else {
            continue;
        };
        if since + secs > now.as_second() {
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        match api.delete(&pod.name_any(), &DeleteParams::default()).await {
            Ok(_) => recorder.record(
                pod,
                "taint-eviction-controller",
                EventType::Normal,
                "TaintManagerEviction",
                format!("Marking for deletion Pod {ns}/{}", pod.name_any()),
            ),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipam_hands_out_free_24s() {
        let cluster: IpNet = "10.244.0.0/16".parse().unwrap_or_else(|_| unreachable!());
        let mut used = BTreeSet::new();
        assert_eq!(
            allocate(&cluster, &used).map(|n| n.to_string()).as_deref(),
            Some("10.244.0.0/24")
        );
        used.insert("10.244.0.0/24".to_string());
        used.insert("10.244.2.0/24".to_string());
        assert_eq!(
            allocate(&cluster, &used).map(|n| n.to_string()).as_deref(),
            Some("10.244.1.0/24")
        );
        let tiny: IpNet = "10.0.0.0/24".parse().unwrap_or_else(|_| unreachable!());
        let full: BTreeSet<String> = ["10.0.0.0/24".to_string()].into();
        assert_eq!(allocate(&tiny, &full), None);
    }

    #[test]
    fn toleration_seconds_pick_the_tightest() {
        let taint = Taint {
            key: UNREACHABLE.into(),
            effect: "NoExecute".into(),
            value: None,
            time_added: None,
        };
        let tol = |secs: Option<i64>| Toleration {
            key: Some(UNREACHABLE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: secs,
            value: None,
        };
        assert_eq!(
            toleration_seconds(&[], std::slice::from_ref(&taint), 300),
            Some(300)
        );
        assert_eq!(
            toleration_seconds(&[tol(Some(2))], std::slice::from_ref(&taint), 300),
            Some(2)
        );
        assert_eq!(
            toleration_seconds(&[tol(None)], std::slice::from_ref(&taint), 300),
            None
        );
        let other = Toleration {
            key: Some("x".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert_eq!(
            toleration_seconds(&[other], std::slice::from_ref(&taint), 7),
            Some(7)
        );
        let all = Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert_eq!(toleration_seconds(&[all], &[taint], 7), None);
    }
}
