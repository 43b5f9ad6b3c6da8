//! A small built-in service load balancer, as k3s's ServiceLB: a `type: LoadBalancer` Service
//! (without a `loadBalancerClass`, which names another implementation) gets the InternalIPs of
//! the Ready nodes as `status.loadBalancer.ingress`; the dataplane then accepts the Service port
//! on those addresses (and its NodePort), so it works like a NodePort Service. Every agent
//! computes the same list from the same Nodes, so several nodes writing it agree.
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

/// The addresses of `node` of type `kind` (`InternalIP`, `ExternalIP`).
pub fn node_addresses(node: &Node, kind: &str) -> Vec<Ipv4Addr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == kind)
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The ingress addresses of every LoadBalancer Service: Ready nodes' InternalIPs, sorted.
pub fn ingress_ips(nodes: &[Arc<Node>]) -> Vec<Ipv4Addr> {
    let ips: BTreeSet<Ipv4Addr> = nodes
        .iter()
        .filter(|n| is_ready(n))
        .flat_map(|n| node_addresses(n, "InternalIP"))
        .collect();
    ips.into_iter().collect()
}

/// The Services whose status must change, with the ingress they must get.
pub fn pending(services: &[Arc<Service>], ips: &[Ipv4Addr]) -> Vec<(String, String)> {
    services
        .iter()
        .filter(|s| {
            s.spec.as_ref().is_some_and(|sp| {
                sp.type_.as_deref() == Some("LoadBalancer") && sp.load_balancer_class.is_none()
            })
        })
        .filter(|s| {
            let have: Vec<&str> = s
                .status
                .as_ref()
                .and_then(|st| st.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.as_deref())
                .collect();
            let want: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
            have != want.iter().map(String::as_str).collect::<Vec<_>>()
        })
        .map(|s| {
            (
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// Writes the ingress of every LoadBalancer Service that lacks it. Failures are logged; the next
/// change retries.
pub async fn sync(client: &Client, services: &[Arc<Service>], nodes: &[Arc<Node>]) {
    let ips = ingress_ips(nodes);
    if ips.is_empty() {
        return;
    }
    let ingress: Vec<_> = ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
    for (ns, name) in pending(services, &ips) {
        let api: Api<Service> = Api::namespaced(client.clone(), &ns);
        let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(service = %format!("{ns}/{name}"), ?ips, "set LoadBalancer ingress")
            }
            Err(e) => {
                tracing::warn!(service = %format!("{ns}/{name}"), error = %e, "could not set LoadBalancer ingress")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn load_balancers_get_ready_node_addresses() {
        let node = |name: &str, ip: &str, ready: &str| -> Arc<Node> {
            Arc::new(serde_json::from_value(json!({"metadata": {"name": name},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                           "conditions": [{"type": "Ready", "status": ready}]}})).unwrap())
        };
        let nodes = [
            node("b", "192.0.2.3", "True"),
            node("a", "192.0.2.2", "True"),
            node("c", "192.0.2.4", "False"),
        ];
        let ips = ingress_ips(&nodes);
        assert_eq!(
            ips,
            [Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(192, 0, 2, 3)]
        );
        let svc = |name: &str, extra: serde_json::Value| -> Arc<Service> {
            let mut v = json!({"metadata": {"name": name, "namespace": "d"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}});
            if let (Some(spec), Some(e)) = (v["spec"].as_object_mut(), extra.as_object()) {
                spec.extend(e.clone());
            }
            Arc::new(serde_json::from_value(v).unwrap())
        };
        let mut done = svc("done", json!({}));
        Arc::make_mut(&mut done).status = serde_json::from_value(
            json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.2"}, {"ip": "192.0.2.3"}]}}),
        )
        .unwrap();
        let services = [
            svc("new", json!({})),
            svc("other", json!({"loadBalancerClass": "x.io/lb"})),
            done,
        ];
        assert_eq!(
            pending(&services, &ips),
            [("d".to_string(), "new".to_string())]
        );
    }
}
