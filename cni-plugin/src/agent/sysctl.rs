//! Kernel settings the Service dataplane needs, written straight to `/proc/sys` (no `sysctl`
//! program), hairpin mode on the node bridge's ports, and the host's addresses (netlink).
use std::net::Ipv4Addr;

use crate::netlink::{self, Handle};

/// `(path under /proc/sys, value, why)` the agent sets at start.
const SETTINGS: &[(&str, &str, &str)] = &[
    (
        "net/ipv4/ip_forward",
        "1",
        "pods and Services need the node to route between the pod bridge and the host",
    ),
    (
        "net/bridge/bridge-nf-call-iptables",
        "1",
        "replies between pods on the node bridge must pass netfilter so Service DNAT is undone",
    ),
];

/// Sets the kernel parameters in [`SETTINGS`]; a parameter that cannot be set is logged (the
/// agent still programs the rules: most of them work without it).
pub fn prepare_node() {
    for (path, value, why) in SETTINGS {
        let full = format!("/proc/sys/{path}");
        match std::fs::read_to_string(&full) {
            Ok(v) if v.trim() == *value => {}
            Ok(_) => {
                if let Err(e) = std::fs::write(&full, value) {
                    tracing::warn!(sysctl = %path, error = %e, why, "could not set kernel parameter");
                } else {
                    tracing::info!(sysctl = %path, value, "set kernel parameter");
                }
            }
            Err(e) => {
                let hint = if path.starts_with("net/bridge") {
                    " (the br_netfilter module is not loaded: modprobe br_netfilter)"
                } else {
                    ""
                };
                tracing::warn!(sysctl = %path, error = %e, why, "kernel parameter unavailable{hint}");
            }
        }
    }
}

/// Turns on hairpin mode on every port of `bridge` that lacks it (pods attached by an older
/// lotse-cni; new ones get it at CNI ADD).
pub async fn hairpin_bridge_ports(h: &Handle, bridge: &str) {
    let ports = match crate::net::ports_without_hairpin(h, bridge).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(bridge, error = %e, "could not list the bridge's ports");
            return;
        }
    };
    for (index, name) in ports {
        if let Err(e) = crate::net::set_hairpin(h, index, &name).await {
            tracing::warn!(port = %name, error = %e, "could not enable hairpin mode");
        }
    }
}

/// The IPv4 addresses on this host's interfaces (`ip -4 addr show`, asked through netlink);
/// none when they cannot be listed (logged).
pub async fn local_ipv4_addresses(h: &Handle) -> Vec<Ipv4Addr> {
    match netlink::ipv4_addresses(h, None).await {
        Ok(addrs) => addrs.into_iter().map(|(_, a)| a.addr()).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "could not list the host's addresses");
            Vec::new()
        }
    }
}
