//! The cluster as DNS sees it: Services and their ready endpoints, indexed for lookups.
//!
//! A [`ClusterView`] is an immutable snapshot, rebuilt from the reflectors' stores whenever a
//! Service, EndpointSlice or Namespace changes and swapped in one step, so a query never sees
//! half an update.
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Label on an EndpointSlice naming the Service it belongs to.
const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// How a Service's own name resolves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    /// A/AAAA records of the ClusterIPs.
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: A/AAAA records of the ready endpoints.
    Headless,
    /// A CNAME to `spec.externalName`.
    ExternalName(String),
}

/// A named port of a Service or an endpoint (SRV records are served for named ports only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    /// The port's name (the `_<port>` label).
    pub name: String,
    /// `tcp`, `udp` or `sctp` (the `_<proto>` label).
    pub protocol: String,
    /// The port number.
    pub port: u16,
}

/// One ready endpoint address of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointRecord {
    /// The address.
    pub ip: IpAddr,
    /// The endpoint's DNS label: its `hostname` (StatefulSet pods behind a headless Service) or
    /// its address with `.`/`:` replaced by `-`, as CoreDNS names endpoints.
    pub label: String,
    /// Named ports of the endpoint's slice.
    pub ports: Vec<NamedPort>,
}

/// A Service's DNS data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRecord {
    /// How the Service's name resolves.
    pub kind: ServiceKind,
    /// The Service's named ports.
    pub ports: Vec<NamedPort>,
    /// Ready endpoints, from all the Service's EndpointSlices.
    pub endpoints: Vec<EndpointRecord>,
}

/// A snapshot of what the cluster DNS serves.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    namespaces: HashSet<String>,
    services: HashMap<(String, String), ServiceRecord>,
    /// Reverse records: names relative to the zone (`web.default.svc`).
    ptr: HashMap<IpAddr, Vec<String>>,
}

impl ClusterView {
    /// Builds the view from the current Services, EndpointSlices and Namespaces.
    pub fn build<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        namespaces: impl IntoIterator<Item = &'a Namespace>,
    ) -> Self {
        let mut view = ClusterView {
            namespaces: namespaces
                .into_iter()
                .filter_map(|n| n.metadata.name.clone())
                .collect(),
            ..Default::default()
        };
        for svc in services {
            let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
                continue;
            };
            let Some(spec) = &svc.spec else { continue };
            let kind = if spec.type_.as_deref() == Some("ExternalName") {
                match &spec.external_name {
                    Some(n) if !n.is_empty() => ServiceKind::ExternalName(n.clone()),
                    _ => continue,
                }
            } else if spec.cluster_ip.as_deref() == Some("None") {
                ServiceKind::Headless
            } else {
                let mut ips: Vec<IpAddr> = spec
                    .cluster_ips
                    .iter()
                    .flatten()
                    .chain(spec.cluster_ip.iter())
                    .filter_map(|s| s.parse().ok())
                    .collect();
                ips.dedup();
                let mut seen = HashSet::new();
                ips.retain(|ip| seen.insert(*ip));
                if ips.is_empty() {
                    continue;
                }
                ServiceKind::ClusterIp(ips)
            };
            let ports = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(NamedPort {
                        name: p.name.clone().filter(|n| !n.is_empty())?,
                        protocol: protocol_label(p.protocol.as_deref()),
                        port: u16::try_from(p.port).ok()?,
                    })
                })
                .collect();
            view.namespaces.insert(ns.clone());
            view.services.insert(
                (ns.clone(), name.clone()),
                ServiceRecord {
                    kind,
                    ports,
                    endpoints: Vec::new(),
                },
            );
        }
        for slice in slices {
            let Some(ns) = &slice.metadata.namespace else {
                continue;
            };
            let Some(svc_name) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_SERVICE_NAME))
            else {
                continue;
            };
            let Some(svc) = view.services.get_mut(&(ns.clone(), svc_name.clone())) else {
                continue;
            };
            let ports: Vec<NamedPort> = slice
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(NamedPort {
                        name: p.name.clone().filter(|n| !n.is_empty())?,
                        protocol: protocol_label(p.protocol.as_deref()),
                        port: u16::try_from(p.port?).ok()?,
                    })
                })
                .collect();
            for ep in &slice.endpoints {
                // A nil `ready` means ready (EndpointSlice API); not-ready endpoints are not
                // published (publishNotReadyAddresses makes the controller mark them ready).
                if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                for addr in &ep.addresses {
                    let Ok(ip) = addr.parse::<IpAddr>() else {
                        continue;
                    };
                    if svc.endpoints.iter().any(|e| e.ip == ip) {
                        continue;
                    }
                    let label = ep
                        .hostname
                        .clone()
                        .filter(|h| !h.is_empty())
                        .unwrap_or_else(|| dashed(ip));
                    svc.endpoints.push(EndpointRecord {
                        ip,
                        label,
                        ports: ports.clone(),
                    });
                }
            }
        }
        for ((ns, name), svc) in &mut view.services {
            svc.endpoints.sort_by_key(|e| e.ip);
            match &svc.kind {
                ServiceKind::ClusterIp(ips) => {
                    for ip in ips {
                        view.ptr
                            .entry(*ip)
                            .or_default()
                            .push(format!("{name}.{ns}.svc"));
                    }
                }
                ServiceKind::Headless => {
                    for ep in &svc.endpoints {
                        view.ptr
                            .entry(ep.ip)
                            .or_default()
                            .push(format!("{}.{name}.{ns}.svc", ep.label));
                    }
                }
                ServiceKind::ExternalName(_) => {}
            }
        }
        for names in view.ptr.values_mut() {
            names.sort();
        }
        view
    }

    /// Whether the namespace exists (or holds a Service).
    pub fn namespace_exists(&self, ns: &str) -> bool {
        self.namespaces.contains(ns)
    }

    /// The Service `ns/name`, if it exists.
    pub fn service(&self, ns: &str, name: &str) -> Option<&ServiceRecord> {
        self.services.get(&(ns.to_string(), name.to_string()))
    }

    /// Names (relative to the cluster domain) whose address is `ip`.
    pub fn ptr(&self, ip: IpAddr) -> &[String] {
        self.ptr.get(&ip).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// The `_<proto>` label of a Kubernetes protocol (TCP when unset).
fn protocol_label(p: Option<&str>) -> String {
    p.unwrap_or("TCP").to_ascii_lowercase()
}

/// An address as a DNS label: `10-244-0-5`, `fd00--5`.
pub fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dual_stack_services_have_both_addresses_and_ptrs() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "ds", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.30", "clusterIPs": ["10.96.0.30", "fd00:10:96::30"],
                "ports": [{"name": "http", "port": 80}]}}))
        .expect("service");
        let v = ClusterView::build([&svc], [], []);
        let s = v.service("default", "ds").expect("service");
        assert_eq!(
            s.kind,
            ServiceKind::ClusterIp(vec![
                "10.96.0.30".parse().expect("ip"),
                "fd00:10:96::30".parse().expect("ip")
            ])
        );
        assert_eq!(
            v.ptr("fd00:10:96::30".parse().expect("ip")),
            ["ds.default.svc"]
        );
        assert!(v.namespace_exists("default"));
        assert_eq!(s.ports[0].protocol, "tcp");
    }

    #[test]
    fn slices_of_unknown_services_and_duplicates_are_ignored() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "h", "namespace": "default"},
            "spec": {"clusterIP": "None"}}))
        .expect("service");
        let slices: Vec<EndpointSlice> = ["h", "h", "gone"]
            .iter()
            .enumerate()
            .map(|(i, s)| {
                serde_json::from_value(json!({
                    "metadata": {"name": format!("s{i}"), "namespace": "default",
                        "labels": {"kubernetes.io/service-name": s}},
                    "addressType": "IPv4",
                    "endpoints": [{"addresses": ["10.244.0.5"]}, {"addresses": ["not-an-ip"]}]}))
                .expect("slice")
            })
            .collect();
        let v = ClusterView::build([&svc], &slices, []);
        let s = v.service("default", "h").expect("service");
        assert_eq!(s.endpoints.len(), 1);
        assert_eq!(s.endpoints[0].label, "10-244-0-5");
        assert!(v.service("default", "gone").is_none());
        assert_eq!(
            v.ptr("10.244.0.5".parse().expect("ip")),
            ["10-244-0-5.h.default.svc"]
        );
    }

    #[test]
    fn services_without_an_address_are_not_served() {
        let pending: Service = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default"}, "spec": {}}))
        .expect("service");
        let v = ClusterView::build([&pending], [], []);
        assert!(v.service("default", "p").is_none());
        assert_eq!(dashed("fd00::5".parse().expect("ip")), "fd00--5");
    }
}
