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
//! Routes go to the kernel over netlink ([`crate::netlink`]).
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
};

use crate::netlink::{self, Handle, NetlinkError, request};

/// `proto` of the routes this agent makes (an unassigned number in iproute2's rt_protos).
pub const PROTO: u8 = 77;

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

/// The agent's route in `msg` (a main-table IPv4 route of protocol [`PROTO`] with a gateway),
/// with its device named from `names` (interface index → name), as destination → route.
pub fn agent_route(msg: &RouteMessage, names: &BTreeMap<u32, String>) -> Option<(Ipv4Net, Route)> {
    let h = &msg.header;
    if h.protocol != RouteProtocol::Other(PROTO) || h.table != RouteHeader::RT_TABLE_MAIN {
        return None;
    }
    let (mut dst, mut via, mut oif) = (Ipv4Addr::UNSPECIFIED, None, None);
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(*g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let dst = Ipv4Net::new(dst, h.destination_prefix_length).ok()?;
    // Only onlink routes name their device as part of what they are (host-gw routes find
    // theirs by the gateway).
    let dev = oif
        .filter(|_| h.flags.contains(RouteFlags::Onlink))
        .and_then(|i| names.get(&i).cloned());
    Some((dst, Route { via: via?, dev }))
}

/// The agent's routes now (`ip -4 route show proto 77`), each with the message that made it
/// (to delete it by).
async fn current(h: &Handle) -> Result<BTreeMap<Ipv4Net, (Route, RouteMessage)>, NetlinkError> {
    let names: BTreeMap<u32, String> = netlink::links(h)
        .await?
        .iter()
        .filter_map(|l| Some((l.header.index, netlink::link_name(l)?.to_string())))
        .collect();
    let msgs: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(request(format!("-4 route show proto {PROTO}")))?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| agent_route(&m, &names).map(|(dst, r)| (dst, (r, m))))
        .collect())
}

/// `ip -4 route replace DST via VIA [dev DEV onlink] proto 77`.
async fn replace(h: &Handle, dst: Ipv4Net, route: &Route) -> Result<(), NetlinkError> {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst.network(), dst.prefix_len())
        .gateway(route.via)
        .protocol(RouteProtocol::Other(PROTO));
    if let Some(dev) = &route.dev {
        b = b
            .output_interface(netlink::require_link(h, dev).await?)
            .onlink();
    }
    let mut op = format!("-4 route replace {dst} via {}", route.via);
    if let Some(dev) = &route.dev {
        op.push_str(&format!(" dev {dev} onlink"));
    }
    op.push_str(&format!(" proto {PROTO}"));
    h.route()
        .add(b.build())
        .replace()
        .execute()
        .await
        .map_err(request(op))
}

/// Makes the node's routes what `want` says: replaces changed ones, adds missing ones, removes
/// the agent's routes into `cluster_cidr` to nodes that are gone. Returns the problems (one per
/// route that failed); the other routes are still applied.
pub async fn sync(
    h: &Handle,
    want: &BTreeMap<Ipv4Net, Route>,
    cluster_cidr: Ipv4Net,
) -> Vec<String> {
    let have = match current(h).await {
        Ok(t) => t,
        Err(e) => return vec![e.to_string()],
    };
    let mut problems = Vec::new();
    for (dst, route) in want {
        if have.get(dst).map(|(r, _)| r) == Some(route) {
            continue;
        }
        let g = route.via;
        if let Err(e) = replace(h, *dst, route).await {
            problems.push(match route.dev {
                None => format!("{e} (host-gw needs the node {g} on a directly connected network)"),
                Some(_) => e.to_string(),
            });
        } else {
            tracing::info!(pod_cidr = %dst, via = %g, dev = ?route.dev, "route to a node's pods");
        }
    }
    let stale = have
        .into_iter()
        .filter(|(d, _)| !want.contains_key(d) && cluster_cidr.contains(d));
    for (dst, (_, msg)) in stale {
        match h.route().del(msg).execute().await {
            Ok(()) => tracing::info!(pod_cidr = %dst, "removed the route to a node that is gone"),
            Err(e) => {
                problems.push(request(format!("-4 route del {dst} proto {PROTO}"))(e).to_string())
            }
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

    fn message(dst: [u8; 4], via: [u8; 4], oif: u32, onlink: bool, proto: u8) -> RouteMessage {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.into(), 24)
            .gateway(via.into())
            .output_interface(oif)
            .protocol(RouteProtocol::Other(proto));
        if onlink {
            b = b.onlink();
        }
        b.build()
    }

    #[test]
    fn reads_the_agents_routes_from_netlink_messages() {
        let names: BTreeMap<u32, String> = [(3, "lotse-ul".to_string())].into();
        let host_gw = agent_route(
            &message([10, 244, 1, 0], [10, 213, 0, 2], 3, false, 77),
            &names,
        );
        assert_eq!(
            host_gw,
            Some((
                "10.244.1.0/24".parse().unwrap(),
                Route {
                    via: "10.213.0.2".parse().unwrap(),
                    dev: None
                }
            )),
            "host-gw routes are known by their gateway"
        );
        let onlink = agent_route(
            &message([10, 244, 2, 0], [10, 213, 0, 3], 3, true, 77),
            &names,
        );
        assert_eq!(onlink.unwrap().1.dev.as_deref(), Some("lotse-ul"));
        assert_eq!(
            agent_route(
                &message([10, 244, 3, 0], [10, 213, 0, 4], 3, false, 4),
                &names
            ),
            None,
            "another protocol's route is not the agent's"
        );
    }

    /// Sync in a throwaway namespace: routes made, read back as equal (no churn), removed when
    /// their node goes, other routes left alone, an unreachable host-gw gateway reported.
    #[test]
    fn sync_makes_reads_back_and_removes_routes() {
        use crate::netlink::testns::TestNetns;
        use rtnetlink::{LinkBridge, LinkUnspec};
        let Some(ns) = TestNetns::new() else { return };
        netlink::in_netns(ns.path(), |h| async move {
            for (name, addr) in [
                ("lotse-ul", "10.213.0.1/24"),
                ("lotse.vxlan", "10.244.0.0/32"),
            ] {
                h.link()
                    .add(LinkBridge::new(name).build())
                    .execute()
                    .await
                    .unwrap();
                let i = netlink::require_link(&h, name).await?;
                let a: Ipv4Net = addr.parse().unwrap();
                netlink::ensure_ipv4_address(&h, i, name, a).await?;
                h.link()
                    .set(LinkUnspec::new_with_index(i).up().build())
                    .execute()
                    .await
                    .unwrap();
            }
            let cluster: Ipv4Net = "10.244.0.0/16".parse().unwrap();
            let peers: BTreeMap<Ipv4Net, Ipv4Addr> = [
                (
                    "10.244.1.0/24".parse().unwrap(),
                    "10.213.0.2".parse().unwrap(),
                ),
                (
                    "10.244.2.0/24".parse().unwrap(),
                    "10.213.0.3".parse().unwrap(),
                ),
            ]
            .into();
            let mut vxlan = routes_for(Backend::Vxlan, &peers);
            let host_gw = routes_for(Backend::HostGw, &peers);
            let outside: Ipv4Net = "10.99.0.0/24".parse().unwrap();
            let outside_route = Route {
                via: "10.213.0.9".parse().unwrap(),
                dev: None,
            };
            replace(&h, outside, &outside_route).await?;
            for want in [&host_gw, &vxlan] {
                assert_eq!(sync(&h, want, cluster).await, Vec::<String>::new());
                let have: BTreeMap<_, _> = current(&h)
                    .await?
                    .into_iter()
                    .map(|(d, (r, _))| (d, r))
                    .collect();
                let mut expected = want.clone();
                expected.insert(outside, outside_route.clone());
                assert_eq!(have, expected);
            }
            vxlan.remove(&"10.244.2.0/24".parse().unwrap());
            assert_eq!(sync(&h, &vxlan, cluster).await, Vec::<String>::new());
            let have: Vec<Ipv4Net> = current(&h).await?.into_keys().collect();
            assert_eq!(
                have,
                vec![
                    "10.99.0.0/24".parse().unwrap(),
                    "10.244.1.0/24".parse().unwrap()
                ]
            );
            let far: BTreeMap<Ipv4Net, Route> = [(
                "10.244.5.0/24".parse().unwrap(),
                Route {
                    via: "192.0.2.7".parse().unwrap(),
                    dev: None,
                },
            )]
            .into();
            let problems = sync(&h, &far, cluster).await;
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0].ends_with(
                    "(host-gw needs the node 192.0.2.7 on a directly connected network)"
                ),
                "{problems:?}"
            );
            Ok::<_, NetlinkError>(())
        })
        .unwrap();
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
    }
}
