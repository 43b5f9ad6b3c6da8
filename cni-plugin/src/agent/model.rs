//! What the dataplane must do, from the API objects: one [`ServicePort`] per port of every
//! Service that gets rules, with its endpoints from the Service's EndpointSlices. Pure (no I/O),
//! so the rules can be tested from objects alone.
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Services with this label are handled by another proxy (kube-proxy ignores them too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// EndpointSlices of headless Services carry this label; they get no rules.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// A transport protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Parses a Kubernetes protocol name (`None` means TCP).
    pub fn parse(p: Option<&str>) -> Option<Protocol> {
        match p.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The nftables name (`tcp`, `udp`, `sctp`).
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One endpoint (address and target port) of a Service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// Pod (or hand-made) address.
    pub ip: Ipv4Addr,
    /// Port on that address.
    pub port: u16,
    /// `conditions.ready` (absent means ready).
    pub ready: bool,
    /// `conditions.serving` (absent means as ready).
    pub serving: bool,
    /// `conditions.terminating` (absent means not terminating).
    pub terminating: bool,
    /// Whether the endpoint runs on this node (`nodeName`).
    pub local: bool,
}

/// One port of a Service, with everything its rules need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Namespace of the Service.
    pub namespace: String,
    /// Name of the Service.
    pub name: String,
    /// Name of the port (may be empty for a single-port Service).
    pub port_name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// The ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// The Service port.
    pub port: u16,
    /// The NodePort, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `externalTrafficPolicy: Local` (only for Services reachable from outside).
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `sessionAffinity: ClientIP` with its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// Endpoints, sorted and without duplicates.
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// `namespace/name/proto/port-name`, the unique key the chain names are built from.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.namespace,
            self.name,
            self.protocol.nft(),
            self.port_name
        )
    }

    /// `namespace/name:port-name` as kube-proxy prints a service port.
    pub fn display_name(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }

    /// Whether the Service is reachable from outside the cluster (NodePort, LoadBalancer IPs,
    /// external IPs).
    pub fn has_external(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// The endpoints traffic under the Cluster policy goes to: the ready ones, or, when none is
    /// ready, the serving-and-terminating ones (Kubernetes' terminating-endpoint fallback).
    pub fn cluster_endpoints(&self) -> Vec<&Endpoint> {
        usable(self.endpoints.iter())
    }

    /// The endpoints traffic under the Local policy goes to: as
    /// [`ServicePort::cluster_endpoints`] among the endpoints on this node.
    pub fn local_endpoints(&self) -> Vec<&Endpoint> {
        usable(self.endpoints.iter().filter(|e| e.local))
    }
}

fn usable<'a>(eps: impl Iterator<Item = &'a Endpoint> + Clone) -> Vec<&'a Endpoint> {
    let ready: Vec<&Endpoint> = eps.clone().filter(|e| e.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    eps.filter(|e| e.serving && e.terminating).collect()
}

/// The Service ports that get rules on node `node_name`, sorted by key. Headless and
/// ExternalName Services, Services handled by another proxy and Services without an IPv4
/// ClusterIP get none.
pub fn service_ports(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    node_name: &str,
) -> Vec<ServicePort> {
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for s in slices {
        let labels = s.metadata.labels.as_ref();
        let Some(svc) = labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
            continue;
        };
        if s.address_type != "IPv4" || labels.is_some_and(|l| l.contains_key(HEADLESS_LABEL)) {
            continue;
        }
        let ns = s.metadata.namespace.as_deref().unwrap_or("");
        by_service.entry((ns, svc.as_str())).or_default().push(s);
    }
    let mut out = Vec::new();
    for svc in services {
        let ns = svc.metadata.namespace.as_deref().unwrap_or("");
        let name = svc.metadata.name.as_deref().unwrap_or("");
        if svc
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL))
        {
            continue;
        }
        let Some(spec) = &svc.spec else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let Some(cluster_ip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            // Headless (`None`), not yet allocated, or IPv6.
            continue;
        };
        let external_ips: Vec<Ipv4Addr> = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let load_balancer_ips: Vec<Ipv4Addr> = if spec.type_.as_deref() == Some("LoadBalancer") {
            svc.status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.as_deref()?.parse().ok())
                .collect()
        } else {
            Vec::new()
        };
        let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(10800)
        });
        let node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
        let slices = by_service
            .get(&(ns, name))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for p in spec.ports.iter().flatten() {
            let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else {
                continue;
            };
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            let port_name = p.name.clone().unwrap_or_default();
            let mut sp = ServicePort {
                namespace: ns.to_string(),
                name: name.to_string(),
                port_name,
                protocol,
                cluster_ip,
                port,
                node_port: p
                    .node_port
                    .filter(|_| node_ports)
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| *n > 0),
                external_ips: external_ips.clone(),
                load_balancer_ips: load_balancer_ips.clone(),
                external_local: false,
                internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
                affinity_timeout,
                endpoints: Vec::new(),
            };
            sp.external_local =
                sp.has_external() && spec.external_traffic_policy.as_deref() == Some("Local");
            sp.endpoints = endpoints_for(&sp, slices, node_name);
            out.push(sp);
        }
    }
    out.sort_by_cached_key(ServicePort::key);
    out
}

/// The endpoints of `sp` in `slices`: those of the slice port with the same name and protocol,
/// de-duplicated by address (an address in several slices counts once, the first one wins).
fn endpoints_for(sp: &ServicePort, slices: &[&EndpointSlice], node_name: &str) -> Vec<Endpoint> {
    let mut seen: BTreeMap<(Ipv4Addr, u16), Endpoint> = BTreeMap::new();
    for s in slices {
        let Some(port) = s.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == sp.port_name
                && Protocol::parse(p.protocol.as_deref()) == Some(sp.protocol)
        }) else {
            continue;
        };
        let Some(port) = port
            .port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
        else {
            continue;
        };
        for e in &s.endpoints {
            let Some(ip) = e.addresses.first().and_then(|a| a.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            let c = e.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let ep = Endpoint {
                ip,
                port,
                ready,
                serving: c.and_then(|c| c.serving).unwrap_or(ready),
                terminating: c.and_then(|c| c.terminating).unwrap_or(false),
                local: e.node_name.as_deref() == Some(node_name),
            };
            seen.entry((ip, port)).or_insert(ep);
        }
    }
    seen.into_values().collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn svc(v: serde_json::Value) -> Arc<Service> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    pub(crate) fn slice(v: serde_json::Value) -> Arc<EndpointSlice> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn terminating_endpoints_only_as_fallback() {
        let s = svc(json!({"metadata": {"name": "web", "namespace": "ns"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}}));
        let mk = |ready: bool| {
            slice(
                json!({"metadata": {"name": "web-1", "namespace": "ns", "labels": {SERVICE_NAME_LABEL: "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [
                    {"addresses": ["10.244.0.5"], "conditions": {"ready": ready, "serving": ready, "terminating": false}, "nodeName": "n1"},
                    {"addresses": ["10.244.0.6"], "conditions": {"ready": false, "serving": true, "terminating": true}, "nodeName": "n2"},
                    {"addresses": ["10.244.0.7"], "conditions": {"ready": false, "serving": false, "terminating": true}},
                ]}),
            )
        };
        let ports = service_ports(std::slice::from_ref(&s), &[mk(true)], "n1");
        assert_eq!(ports.len(), 1);
        let p = &ports[0];
        assert_eq!(p.key(), "ns/web/tcp/http");
        let ips = |v: Vec<&Endpoint>| v.iter().map(|e| e.ip.to_string()).collect::<Vec<_>>();
        assert_eq!(ips(p.cluster_endpoints()), ["10.244.0.5"]);
        assert_eq!(ips(p.local_endpoints()), ["10.244.0.5"]);
        let ports = service_ports(&[s], &[mk(false)], "n1");
        assert_eq!(ips(ports[0].cluster_endpoints()), ["10.244.0.6"]);
        assert!(ports[0].local_endpoints().is_empty());
        assert_eq!(ports[0].endpoints[0].port, 8080);
    }

    #[test]
    fn headless_externalname_and_foreign_proxies_get_nothing() {
        let services = [
            svc(
                json!({"metadata": {"name": "h", "namespace": "d"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}),
            ),
            svc(
                json!({"metadata": {"name": "e", "namespace": "d"}, "spec": {"type": "ExternalName", "externalName": "x.example"}}),
            ),
            svc(
                json!({"metadata": {"name": "o", "namespace": "d", "labels": {SERVICE_PROXY_NAME_LABEL: "other"}}, "spec": {"clusterIP": "10.96.0.3", "ports": [{"port": 80}]}}),
            ),
        ];
        assert!(service_ports(&services, &[], "n1").is_empty());
    }

    #[test]
    fn ports_match_slice_ports_by_name_and_protocol() {
        let s = svc(
            json!({"metadata": {"name": "dns", "namespace": "kube-system"},
            "spec": {"clusterIP": "10.96.0.10", "type": "NodePort", "externalTrafficPolicy": "Local", "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "nodePort": 30054}]}}),
        );
        let sl = slice(
            json!({"metadata": {"name": "dns-x", "namespace": "kube-system", "labels": {SERVICE_NAME_LABEL: "dns"}},
            "addressType": "IPv4",
            "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"}, {"name": "dns-tcp", "port": 5354, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.0.9"]}]}),
        );
        let ports = service_ports(&[s], &[sl], "n1");
        let got: Vec<(String, u16, Option<u16>, bool)> = ports
            .iter()
            .map(|p| (p.key(), p.endpoints[0].port, p.node_port, p.external_local))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "kube-system/dns/tcp/dns-tcp".to_string(),
                    5354,
                    Some(30054),
                    true
                ),
                (
                    "kube-system/dns/udp/dns".to_string(),
                    5353,
                    Some(30053),
                    true
                ),
            ]
        );
    }
}
