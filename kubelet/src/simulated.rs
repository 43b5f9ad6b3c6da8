//! `--runtime=simulated`: pods go through the status transitions a real node reports, without
//! any container. For scale benchmarks of the apiserver, scheduler and controllers only — never
//! a stand-in in tests of real behaviour.
//!
//! Per pod: `Pending` with every container waiting in `ContainerCreating` (PodScheduled True,
//! the rest False) → after [`START_DELAY`] (about what containerd takes here for a sandbox and a
//! container) `Running`, all containers running and ready, with a pod IP from the node's podCIDR
//! → on deletion the IP is released and the pod deleted with grace 0 (the containers "stop" at
//! once). Containers never exit, so Job pods never complete.
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::Kubelet;

/// Time from a pod's arrival to its containers "running".
pub const START_DELAY: Duration = Duration::from_millis(250);

/// Pod IPs from the podCIDR, one per pod UID (the first and last addresses and the gateway
/// `.1` are never handed out, as lotse-cni does).
pub struct Ipam {
    first: u32,
    last: u32,
    state: Mutex<(HashMap<String, Ipv4Addr>, BTreeSet<u32>)>,
}

impl Ipam {
    /// An allocator over `cidr` (`10.244.0.0/24`).
    pub fn new(cidr: &str) -> Result<Ipam, crate::Error> {
        let net: ipnet::Ipv4Net = cidr
            .parse()
            .map_err(|e| crate::Error::Runtime(format!("pod CIDR {cidr}: {e}")))?;
        let first = u32::from(net.network()) + 2;
        let last = u32::from(net.broadcast()).saturating_sub(1);
        Ok(Ipam {
            first,
            last,
            state: Mutex::new(Default::default()),
        })
    }

    /// The IP of pod `uid` (allocated on first call); None when the range is full.
    pub fn allocate(&self, uid: &str) -> Option<Ipv4Addr> {
        let mut g = self.state.lock().ok()?;
        let (by_uid, used) = &mut *g;
        if let Some(ip) = by_uid.get(uid) {
            return Some(*ip);
        }
        let n = (self.first..=self.last).find(|n| !used.contains(n))?;
        used.insert(n);
        let ip = Ipv4Addr::from(n);
        by_uid.insert(uid.to_string(), ip);
        Some(ip)
    }

    /// Returns pod `uid`'s IP to the pool.
    pub fn release(&self, uid: &str) {
        if let Ok(mut g) = self.state.lock() {
            let (by_uid, used) = &mut *g;
            if let Some(ip) = by_uid.remove(uid) {
                used.remove(&u32::from(ip));
            }
        }
    }
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn condition(kind: &str, ok: bool, since: &str) -> Value {
    json!({"type": kind, "status": if ok { "True" } else { "False" }, "lastTransitionTime": since})
}

/// The status of `pod` while its containers are being created (`running == None`) or once they
/// run (`Some((pod_ip, started_at))`).
pub fn status(pod: &Pod, host_ip: &str, start: &str, running: Option<(&str, &str)>) -> Value {
    let spec = pod.spec.clone().unwrap_or_default();
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    let up = running.is_some();
    let containers: Vec<Value> = spec
        .containers
        .iter()
        .map(|c| {
            let image = c.image.clone().unwrap_or_default();
            let mut s = json!({
                "name": c.name,
                "image": image,
                "imageID": "",
                "ready": up,
                "restartCount": 0,
                "started": up,
            });
            match running {
                Some((_, at)) => {
                    s["state"] = json!({"running": {"startedAt": at}});
                    s["containerID"] = json!(format!("simulated://{uid}-{}", c.name));
                    s["imageID"] = json!(format!("simulated://{image}"));
                }
                None => s["state"] = json!({"waiting": {"reason": "ContainerCreating"}}),
            }
            s
        })
        .collect();
    let since = running.map(|(_, at)| at).unwrap_or(start);
    let mut st = json!({
        "phase": if up { "Running" } else { "Pending" },
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": start,
        "qosClass": "BestEffort",
        "conditions": [
            condition("PodReadyToStartContainers", up, since),
            condition("Initialized", true, start),
            condition("Ready", up, since),
            condition("ContainersReady", up, since),
            condition("PodScheduled", true, start),
        ],
        "containerStatuses": containers,
    });
    if let Some((ip, _)) = running {
        st["podIP"] = json!(ip);
        st["podIPs"] = json!([{"ip": ip}]);
    }
    st
}

async fn patch_status(api: &Api<Pod>, name: &str, status: Value) {
    if let Err(e) = api
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
    {
        tracing::warn!(pod = %name, error = %e, "simulated status update");
    }
}

/// Drives one pod through the simulated lifecycle until it is deleted.
pub async fn worker(
    k: Arc<Kubelet>,
    ipam: Arc<Ipam>,
    uid: String,
    mut rx: watch::Receiver<Option<Pod>>,
) {
    let start = now();
    let mut reported_running = false;
    let mut created_at = None;
    loop {
        let pod = rx.borrow_and_update().clone();
        let Some(pod) = pod else {
            ipam.release(&uid);
            return;
        };
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(k.client.clone(), &ns);
        if pod.metadata.deletion_timestamp.is_some() {
            ipam.release(&uid);
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => return,
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return,
                Err(e) => tracing::warn!(pod = %name, error = %e, "simulated delete"),
            }
        } else if !reported_running {
            match created_at {
                None => {
                    patch_status(&api, &name, status(&pod, &k.config.node_ip, &start, None)).await;
                    created_at = Some(tokio::time::Instant::now());
                }
                Some(t) if t.elapsed() >= START_DELAY => match ipam.allocate(&uid) {
                    Some(ip) => {
                        let ip = ip.to_string();
                        let st = status(&pod, &k.config.node_ip, &start, Some((&ip, &now())));
                        patch_status(&api, &name, st).await;
                        reported_running = true;
                    }
                    None => tracing::warn!(pod = %name, "simulated pod CIDR exhausted"),
                },
                Some(_) => {}
            }
        }
        let wait = match created_at {
            Some(t) if !reported_running => START_DELAY.saturating_sub(t.elapsed()),
            _ => Duration::from_secs(3600),
        };
        let changed = tokio::time::timeout(wait, rx.changed()).await;
        if let Ok(Err(_)) = changed {
            // The pod loop dropped this pod (deleted from the API).
            ipam.release(&uid);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipam_skips_network_gateway_and_broadcast() {
        let ipam = Ipam::new("10.244.5.0/30").unwrap();
        assert_eq!(ipam.allocate("a"), Some(Ipv4Addr::new(10, 244, 5, 2)));
        assert_eq!(ipam.allocate("a"), Some(Ipv4Addr::new(10, 244, 5, 2)));
        assert_eq!(ipam.allocate("b"), None);
        ipam.release("a");
        assert_eq!(ipam.allocate("b"), Some(Ipv4Addr::new(10, 244, 5, 2)));
    }

    #[test]
    fn transitions() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]},
        }))
        .unwrap();
        let pending = status(&pod, "10.0.0.1", "2026-01-01T00:00:00Z", None);
        assert_eq!(pending["phase"], "Pending");
        assert_eq!(
            pending["containerStatuses"][0]["state"]["waiting"]["reason"],
            "ContainerCreating"
        );
        let running = status(
            &pod,
            "10.0.0.1",
            "2026-01-01T00:00:00Z",
            Some(("10.244.0.2", "2026-01-01T00:00:01Z")),
        );
        assert_eq!(running["phase"], "Running");
        assert_eq!(running["podIP"], "10.244.0.2");
        assert_eq!(running["containerStatuses"][0]["ready"], true);
        assert_eq!(running["conditions"][2]["type"], "Ready");
        assert_eq!(running["conditions"][2]["status"], "True");
    }
}
