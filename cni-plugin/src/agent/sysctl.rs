//! Kernel settings the Service dataplane needs, written straight to `/proc/sys` (no `sysctl`
//! program), and the host's addresses.
use std::net::Ipv4Addr;

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
pub fn hairpin_bridge_ports(bridge: &str) {
    for name in crate::net::ports_without_hairpin(bridge) {
        if let Err(e) = crate::net::set_hairpin(&name) {
            tracing::warn!(port = %name, error = %e, "could not enable hairpin mode");
        }
    }
}

/// The IPv4 addresses on this host's interfaces (`ip -4 -o addr show`: iproute2 is already a
/// node dependency of the CNI plugin, and std has no interface enumeration).
pub fn local_ipv4_addresses() -> Vec<Ipv4Addr> {
    let out = match std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
    {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        _ => return Vec::new(),
    };
    parse_ip_addr(&out)
}

fn parse_ip_addr(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_addr_output() {
        let text = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n\
2: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\\       valid_lft forever preferred_lft forever\n";
        assert_eq!(
            parse_ip_addr(text),
            [Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(192, 0, 2, 2)]
        );
    }
}
