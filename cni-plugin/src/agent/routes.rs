//! The pod network between nodes, as flannel's backends: one route per other node to its
//! podCIDR, so pods reach pods on every node by their own address (no NAT).
//!
//! - [`Backend::HostGw`] (flannel's `host-gw`): `<its podCIDR> via <its InternalIP>`, no
//!   encapsulation. It needs the nodes on one L2 segment (the gateway must be on-link); a node
//!   that is not gets a warning and no route.
//! - [`Backend::Vxlan`] (flannel's `vxlan`): `<its podCIDR> via <its VTEP address> dev
//!   lotse.vxlan onlink`, the packets encapsulated in UDP to the node's InternalIP
//!   ([`super::vxlan`]), so the nodes only need to reach each other by IP (routers between them
//!   are fine).
//!
//! The routes carry their own protocol number ([`PROTO`]), so a sync replaces exactly the routes
//! it made and removes those of nodes that are gone, leaving every other route alone.
//!
//! Routes go through iproute2's `ip`, as the rest of lotse-cni's link plumbing ([`crate::net`])
//! does today (moving all of it to netlink is one change of its own).
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;

/// `proto` of the routes this agent makes (an unassigned number in iproute2's rt_protos).
pub const PROTO: &str = "77";

/// How packets reach the other nodes' pods (k3s's `--flannel-backend` values).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// Host routes through the other nodes' addresses (one L2 segment).
    #[default]
    #[value(name = "host-gw")]
    HostGw,
    /// VXLAN (VNI 1, UDP port 8472, as flannel) to the other nodes' addresses.
    Vxlan,
}

/// One route to a node's pods: through `via`, on `dev` (`onlink`) when given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The gateway.
    pub via: Ipv4Addr,
    /// The device (VXLAN: the gateway is the remote VTEP address, reachable only through it).
    pub dev: Option<String>,
}

/// The other nodes of node `me`: every other node's IPv4 podCIDR → its InternalIP.
pub fn desired<'a>(
    me: &str,
    nodes: impl IntoIterator<Item = &'a Node>,
) -> BTreeMap<Ipv4Net, Ipv4Addr> {
    nodes
        .into_iter()
        .filter(|n| n.metadata.name.as_deref() != Some(me))
        .filter_map(pod_cidr_and_address)
        .collect()
}

/// A node's IPv4 podCIDR and InternalIP, when it has both.
pub fn pod_cidr_and_address(n: &Node) -> Option<(Ipv4Net, Ipv4Addr)> {
    let cidr = n
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .and_then(|c| c.parse::<Ipv4Net>().ok())?;
    let ip = n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| {
            a.iter()
                .filter(|a| a.type_ == "InternalIP")
                .find_map(|a| a.address.parse::<Ipv4Addr>().ok())
        })?;
    Some((cidr.trunc(), ip))
}

/// The routes `peers` (podCIDR → node address, from [`desired`]) need with `backend`.
pub fn routes_for(
    backend: Backend,
    peers: &BTreeMap<Ipv4Net, Ipv4Addr>,
) -> BTreeMap<Ipv4Net, Route> {
    peers
        .iter()
        .map(|(cidr, node)| {
            let route = match backend {
                Backend::HostGw => Route {
                    via: *node,
                    dev: None,
                },
                Backend::Vxlan => Route {
                    via: super::vxlan::vtep_address(*cidr),
                    dev: Some(super::vxlan::DEVICE.to_string()),
                },
            };
            (*cidr, route)
        })
        .collect()
}

/// Parses `ip -4 route show proto 77` into destination → route.
pub fn parse_routes(text: &str) -> BTreeMap<Ipv4Net, Route> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(dst) = words.next() else { continue };
        let dst = match dst.parse::<Ipv4Net>() {
            Ok(n) => n,
            Err(_) => match dst.parse::<Ipv4Addr>() {
                Ok(a) => Ipv4Net::from(a),
                Err(_) => continue,
            },
        };
        let (mut gw, mut dev, mut onlink) = (None, None, false);
        while let Some(w) = words.next() {
            match w {
                "via" => gw = words.next().and_then(|g| g.parse::<Ipv4Addr>().ok()),
                "dev" => dev = words.next().map(String::from),
                "onlink" => onlink = true,
                _ => {}
            }
        }
        if let Some(via) = gw {
            // Only onlink routes name their device as part of what they are (host-gw routes
            // find theirs by the gateway).
            let dev = dev.filter(|_| onlink);
            out.insert(dst, Route { via, dev });
        }
    }
    out
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Makes the node's routes what `want` says: replaces changed ones, adds missing ones, removes
/// the agent's routes into `cluster_cidr` to nodes that are gone. Returns the problems (one per
/// route that failed); the other routes are still applied.
pub fn sync(want: &BTreeMap<Ipv4Net, Route>, cluster_cidr: Ipv4Net) -> Vec<String> {
    let have = match ip(&["-4", "route", "show", "proto", PROTO]) {
        Ok(t) => parse_routes(&t),
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    for (dst, route) in want {
        if have.get(dst) == Some(route) {
            continue;
        }
        let (d, g) = (dst.to_string(), route.via.to_string());
        let mut args = vec!["-4", "route", "replace", &d, "via", &g];
        if let Some(dev) = &route.dev {
            args.extend(["dev", dev, "onlink"]);
        }
        args.extend(["proto", PROTO]);
        if let Err(e) = ip(&args) {
            problems.push(match route.dev {
                None => format!("{e} (host-gw needs the node {g} on a directly connected network)"),
                Some(_) => e,
            });
        } else {
            tracing::info!(pod_cidr = %d, via = %g, dev = ?route.dev, "route to a node's pods");
        }
    }
    let stale = have
        .keys()
        .filter(|d| !want.contains_key(d) && cluster_cidr.contains(*d));
    for dst in stale {
        let d = dst.to_string();
        match ip(&["-4", "route", "del", &d, "proto", PROTO]) {
            Ok(_) => tracing::info!(pod_cidr = %d, "removed the route to a node that is gone"),
            Err(e) => problems.push(e),
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};
    use kube::api::ObjectMeta;

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(String::from),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: ip.map(|ip| {
                    vec![
                        NodeAddress {
                            type_: "Hostname".into(),
                            address: name.into(),
                        },
                        NodeAddress {
                            type_: "InternalIP".into(),
                            address: ip.into(),
                        },
                    ]
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn routes_to_every_other_node_with_a_cidr_and_an_address() {
        let nodes = [
            node("a", Some("10.244.0.0/24"), Some("10.213.0.1")),
            node("b", Some("10.244.1.0/24"), Some("10.213.0.2")),
            node("c", None, Some("10.213.0.3")),
            node("d", Some("10.244.3.0/24"), None),
            node("e", Some("fd00::/64"), Some("10.213.0.5")),
        ];
        let want = desired("a", &nodes);
        assert_eq!(
            want.into_iter().collect::<Vec<_>>(),
            vec![(
                "10.244.1.0/24".parse().unwrap(),
                "10.213.0.2".parse().unwrap()
            )]
        );
    }

    #[test]
    fn parses_ip_route_output() {
        let text = "10.244.1.0/24 via 10.213.0.2 dev lotse-ul proto 77 \n\
                    10.244.2.0/24 via 10.213.0.3 dev lotse-ul proto 77 onlink \n\
                    10.9.9.9 via 10.213.0.4 dev x proto 77\n\
                    blackhole 10.1.0.0/16 proto 77\n";
        let got = parse_routes(text);
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[&"10.244.2.0/24".parse::<Ipv4Net>().unwrap()],
            Route {
                via: "10.213.0.3".parse().unwrap(),
                dev: Some("lotse-ul".into())
            }
        );
        assert_eq!(
            got[&"10.244.1.0/24".parse::<Ipv4Net>().unwrap()].dev,
            None,
            "host-gw routes are known by their gateway"
        );
        assert!(got.contains_key(&"10.9.9.9/32".parse::<Ipv4Net>().unwrap()));
    }

    #[test]
    fn vxlan_routes_go_through_the_remote_vtep_on_the_vxlan_device() {
        let peers: BTreeMap<Ipv4Net, Ipv4Addr> = [(
            "10.244.1.0/24".parse().unwrap(),
            "10.213.0.2".parse().unwrap(),
        )]
        .into();
        let r = routes_for(Backend::Vxlan, &peers);
        assert_eq!(
            r.values().next().unwrap(),
            &Route {
                via: "10.244.1.0".parse().unwrap(),
                dev: Some("lotse.vxlan".into())
            }
        );
        let r = routes_for(Backend::HostGw, &peers);
        assert_eq!(r.values().next().unwrap().via.to_string(), "10.213.0.2");
        // What `ip route show` prints for them parses back to the same routes.
        let text = "10.244.1.0/24 via 10.244.1.0 dev lotse.vxlan proto 77 onlink \n";
        assert_eq!(parse_routes(text), routes_for(Backend::Vxlan, &peers));
    }
}
