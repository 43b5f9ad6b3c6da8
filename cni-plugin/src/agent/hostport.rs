//! `hostPort`: a container port published on its node's addresses, as the CNI `portmap` plugin
//! does it for the kubelet — in the agent's rule set, from the pods it already watches, so it
//! changes in the same transaction as everything else.
//!
//! Traffic to any local address of the node on `hostPort` (`hostIP`, when set, narrows it to that
//! address) is DNATed to the pod; connections from the node itself (output hook) too. A pod that
//! reaches its own hostPort is masqueraded (hairpin), as portmap's `SNAT` chain does.
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;

use super::render::{Chain, Ruleset};

/// One published port: `proto host_ip:host_port` → `pod_ip:container_port`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostPort {
    /// `tcp`, `udp` or `sctp`.
    pub proto: String,
    /// `hostIP`: only this node address (None: every local address).
    pub host_ip: Option<Ipv4Addr>,
    /// `hostPort`.
    pub host_port: u16,
    /// The pod's address.
    pub pod_ip: Ipv4Addr,
    /// `containerPort`.
    pub container_port: u16,
}

/// The hostPorts of the running pods on `node` that have an address (hostNetwork pods bind the
/// port themselves and get none).
pub fn of_pods<'a>(node: &str, pods: impl IntoIterator<Item = &'a Pod>) -> BTreeSet<HostPort> {
    let mut out = BTreeSet::new();
    for p in pods {
        let Some(spec) = p.spec.as_ref() else {
            continue;
        };
        if spec.node_name.as_deref() != Some(node) || spec.host_network == Some(true) {
            continue;
        }
        let status = p.status.as_ref();
        if matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) || p.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let Some(pod_ip) = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        for c in &spec.containers {
            for port in c.ports.iter().flatten() {
                let Some(hp) = port.host_port.and_then(|h| u16::try_from(h).ok()) else {
                    continue;
                };
                let Ok(cp) = u16::try_from(port.container_port) else {
                    continue;
                };
                if hp == 0 {
                    continue;
                }
                out.insert(HostPort {
                    proto: port.protocol.as_deref().unwrap_or("TCP").to_lowercase(),
                    host_ip: port
                        .host_ip
                        .as_deref()
                        .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                        .filter(|ip| !ip.is_unspecified()),
                    host_port: hp,
                    pod_ip,
                    container_port: cp,
                });
            }
        }
    }
    out
}

/// Adds the `hostports` chain (jumped to from the nat prerouting and output hooks) to `r`.
pub fn render(r: &mut Ruleset, ports: &BTreeSet<HostPort>) {
    if ports.is_empty() {
        return;
    }
    let mut rules = Vec::new();
    for p in ports {
        let dst = match p.host_ip {
            Some(ip) => format!("ip daddr {ip}"),
            None => "fib daddr type local".to_string(),
        };
        let (proto, hp, pod, cp) = (&p.proto, p.host_port, p.pod_ip, p.container_port);
        rules.push(format!(
            "{dst} {proto} dport {hp} ip saddr {pod} jump mark-for-masquerade"
        ));
        rules.push(format!(
            "{dst} {proto} dport {hp} dnat to {pod}:{cp} comment \"hostPort {hp}/{proto}\""
        ));
    }
    r.chains.insert(
        "hostports".into(),
        Chain {
            decl: String::new(),
            rules,
        },
    );
    for hook in ["nat-prerouting", "nat-output"] {
        if let Some(c) = r.chains.get_mut(hook) {
            c.rules.insert(0, "jump hostports".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(node: &str, ip: Option<&str>, host_ip: Option<&str>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
                {"containerPort": 80, "hostPort": 8081, "hostIP": host_ip},
                {"containerPort": 53, "hostPort": 5353, "protocol": "UDP"},
                {"containerPort": 9000}
            ]}]},
            "status": {"phase": "Running", "podIP": ip}
        }))
        .unwrap()
    }

    #[test]
    fn published_ports_of_this_nodes_pods_with_addresses() {
        let pods = [
            pod("n1", Some("10.244.0.5"), None),
            pod("n2", Some("10.244.1.5"), None),
            pod("n1", None, None),
        ];
        let got: Vec<_> = of_pods("n1", &pods).into_iter().collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].proto, "tcp");
        assert_eq!(got[0].host_port, 8081);
        assert_eq!(got[1].proto, "udp");
        assert_eq!(got[1].container_port, 53);
    }

    #[test]
    fn rules_dnat_local_or_the_given_address() {
        let pods = [pod("n1", Some("10.244.0.5"), Some("10.213.0.1"))];
        let mut r = Ruleset::default();
        r.chains.insert(
            "nat-prerouting".into(),
            Chain {
                decl: "{ type nat hook prerouting priority dstnat ; }".into(),
                rules: vec!["jump services".into()],
            },
        );
        render(&mut r, &of_pods("n1", &pods));
        let rules = &r.chains["hostports"].rules;
        assert!(rules.contains(
            &"ip daddr 10.213.0.1 tcp dport 8081 dnat to 10.244.0.5:80 comment \"hostPort 8081/tcp\""
                .to_string()
        ));
        assert!(
            rules
                .iter()
                .any(|r| r.starts_with("fib daddr type local udp dport 5353"))
        );
        assert_eq!(r.chains["nat-prerouting"].rules[0], "jump hostports");
    }
}
