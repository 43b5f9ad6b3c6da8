//! Stale UDP conntrack entries, cleared after a sync as kube-proxy does: a UDP "connection" to
//! a Service keeps its DNAT to an endpoint for as long as packets flow, so when that endpoint
//! goes away its entries must go too, and entries made while a Service had no endpoints (and was
//! rejected) must go when it gets some. TCP needs nothing: a removed endpoint's connections
//! break on their own.
//!
//! The entries are deleted with the `conntrack` program (Debian package conntrack) when it is
//! installed — conntrack's netlink protocol has no well-kept crate, and the tool is what
//! kube-proxy used for years; without it the sync still succeeds and a debug line says why
//! nothing was cleared.
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use super::model::{Protocol, ServicePort};

/// One `conntrack -D` filter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stale {
    /// Entries to this Service IP whose replies come from this endpoint.
    Nat {
        /// ClusterIP, external or LoadBalancer IP.
        service_ip: Ipv4Addr,
        /// The endpoint that went away.
        endpoint: Ipv4Addr,
    },
    /// Entries to this NodePort whose replies come from this endpoint.
    PortNat {
        /// The NodePort.
        node_port: u16,
        /// The endpoint that went away.
        endpoint: Ipv4Addr,
    },
    /// Every entry to this Service IP (it had no endpoints and now has some).
    Ip(Ipv4Addr),
}

impl Stale {
    /// The `conntrack` arguments that delete these entries.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = ["-D", "-p", "udp"].map(String::from).to_vec();
        match self {
            Stale::Nat {
                service_ip,
                endpoint,
            } => a.extend([
                "--orig-dst".into(),
                service_ip.to_string(),
                "--dst-nat".into(),
                endpoint.to_string(),
            ]),
            Stale::PortNat {
                node_port,
                endpoint,
            } => a.extend([
                "--orig-port-dst".into(),
                node_port.to_string(),
                "--dst-nat".into(),
                endpoint.to_string(),
            ]),
            Stale::Ip(ip) => a.extend(["--orig-dst".into(), ip.to_string()]),
        }
        a
    }
}

/// What to clear between the UDP Service ports synced before (`old`) and now (`new`).
pub fn stale_entries(old: &[ServicePort], new: &[ServicePort]) -> BTreeSet<Stale> {
    let udp = |ports: &[ServicePort]| -> BTreeMap<String, ServicePort> {
        ports
            .iter()
            .filter(|p| p.protocol == Protocol::Udp)
            .map(|p| (p.key(), p.clone()))
            .collect()
    };
    let (old, new) = (udp(old), udp(new));
    let mut out = BTreeSet::new();
    for (key, o) in &old {
        let before: BTreeSet<Ipv4Addr> = o.cluster_endpoints().iter().map(|e| e.ip).collect();
        let after: BTreeSet<Ipv4Addr> = new
            .get(key)
            .map(|n| n.cluster_endpoints().iter().map(|e| e.ip).collect())
            .unwrap_or_default();
        let ips = std::iter::once(o.cluster_ip)
            .chain(o.external_ips.iter().copied())
            .chain(o.load_balancer_ips.iter().copied());
        for ep in before.difference(&after) {
            for ip in ips.clone() {
                out.insert(Stale::Nat {
                    service_ip: ip,
                    endpoint: *ep,
                });
            }
            if let Some(np) = o.node_port {
                out.insert(Stale::PortNat {
                    node_port: np,
                    endpoint: *ep,
                });
            }
        }
    }
    for (key, n) in &new {
        let had = old
            .get(key)
            .is_some_and(|o| !o.cluster_endpoints().is_empty());
        if !had && !n.cluster_endpoints().is_empty() {
            out.insert(Stale::Ip(n.cluster_ip));
        }
    }
    out
}

/// Deletes the entries (best effort; `conntrack` exits 1 when nothing matched).
pub fn clear(stale: &BTreeSet<Stale>) {
    for s in stale {
        match Command::new("conntrack")
            .args(s.args())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(_) => tracing::debug!(filter = ?s, "cleared stale UDP conntrack entries"),
            Err(e) => {
                tracing::debug!(error = %e, "conntrack not available: stale UDP entries stay until they time out");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::model::Endpoint;

    fn port(eps: &[[u8; 4]]) -> ServicePort {
        ServicePort {
            namespace: "kube-system".into(),
            name: "dns".into(),
            port_name: "dns".into(),
            protocol: Protocol::Udp,
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            port: 53,
            node_port: Some(30053),
            external_ips: vec![],
            load_balancer_ips: vec![],
            external_local: false,
            internal_local: false,
            affinity_timeout: None,
            endpoints: eps
                .iter()
                .map(|ip| Endpoint {
                    ip: Ipv4Addr::from(*ip),
                    port: 53,
                    ready: true,
                    serving: true,
                    terminating: false,
                    local: true,
                })
                .collect(),
        }
    }

    #[test]
    fn removed_udp_endpoints_and_revived_services_are_cleared() {
        let a = [10, 244, 0, 5];
        let b = [10, 244, 0, 6];
        let got = stale_entries(&[port(&[a, b])], &[port(&[a])]);
        let want: BTreeSet<Stale> = [
            Stale::Nat {
                service_ip: Ipv4Addr::new(10, 96, 0, 10),
                endpoint: b.into(),
            },
            Stale::PortNat {
                node_port: 30053,
                endpoint: b.into(),
            },
        ]
        .into();
        assert_eq!(got, want);
        assert_eq!(
            stale_entries(&[port(&[])], &[port(&[a])]),
            [Stale::Ip(Ipv4Addr::new(10, 96, 0, 10))].into()
        );
        assert!(stale_entries(&[port(&[a])], &[port(&[a])]).is_empty());
        assert_eq!(
            Stale::Ip(Ipv4Addr::new(10, 96, 0, 10)).args().join(" "),
            "-D -p udp --orig-dst 10.96.0.10"
        );
    }
}
