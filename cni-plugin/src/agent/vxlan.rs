//! The VXLAN device of flannel's `vxlan` backend: `lotse.vxlan` (VNI 1, UDP port 8472 as
//! flannel, learning off) with this node's address as the tunnel's local end. Each other node is
//! a VTEP known in advance — no multicast, no learning — by three entries made from its Node
//! object alone:
//!
//! - its VTEP address: the first address of its podCIDR ([`vtep_address`]; flannel's
//!   `<subnet>.0`), on this node's device as `/32`;
//! - a permanent neighbour entry VTEP address → VTEP MAC, and a permanent FDB entry VTEP MAC →
//!   the node's InternalIP (where the encapsulated packets go);
//! - the route `<podCIDR> via <VTEP address> dev lotse.vxlan onlink` ([`super::routes`]).
//!
//! The VTEP MAC is derived from the node's InternalIP ([`vtep_mac`]), where flannel publishes a
//! random one in a Node annotation: every node can compute every other node's MAC, so the agent
//! needs no write access to Nodes and there is no window in which a node's annotation is missing.
//!
//! The link, its neighbours and its FDB entries go to the kernel over netlink
//! ([`crate::netlink`]).
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::{LinkUnspec, LinkVxlan};

use crate::netlink::{self, Handle, NetlinkError, request};

/// The VXLAN device (flannel's is `flannel.1`).
pub const DEVICE: &str = "lotse.vxlan";
/// The VXLAN network identifier (flannel's default).
pub const VNI: u32 = 1;
/// The UDP port of the tunnel (flannel's default, the Linux kernel's historical VXLAN port).
pub const DST_PORT: u16 = 8472;

/// The VTEP address of the node with pod CIDR `cidr`: its first address.
pub fn vtep_address(cidr: Ipv4Net) -> Ipv4Addr {
    cidr.network()
}

/// The VTEP MAC of the node with InternalIP `ip`: `0e:4c:` and the address's four bytes (a
/// locally administered unicast address, unique as long as the node addresses are).
pub fn vtep_mac(ip: Ipv4Addr) -> String {
    netlink::format_mac(&vtep_mac_bytes(ip))
}

fn vtep_mac_bytes(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x0e, 0x4c, a, b, c, d]
}

/// The interface holding `ip` (the tunnel's underlay device), by index.
async fn device_with(h: &Handle, ip: Ipv4Addr) -> Result<Option<u32>, NetlinkError> {
    Ok(netlink::ipv4_addresses(h, None)
        .await?
        .into_iter()
        .find(|(_, a)| a.addr() == ip)
        .map(|(index, _)| index))
}

/// Whether the existing device `link` has local end `local` and MAC `mac`.
fn is_current(link: &LinkMessage, local: Ipv4Addr, mac: &[u8]) -> bool {
    let has_local = link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(v)) => v.contains(&InfoVxlan::Local(local)),
            _ => false,
        }),
        _ => false,
    });
    has_local
        && link
            .attributes
            .contains(&LinkAttribute::Address(mac.to_vec()))
}

/// Makes the device for this node (InternalIP `local`, pod CIDR `pod_cidr`): created when
/// missing or when its local end changed, MAC and `/32` VTEP address set, up.
pub async fn ensure_device(
    h: &Handle,
    local: Ipv4Addr,
    pod_cidr: Ipv4Net,
) -> Result<(), NetlinkError> {
    let mac = vtep_mac_bytes(local);
    let existing = netlink::link(h, DEVICE).await?;
    let current = existing
        .as_ref()
        .is_some_and(|l| is_current(l, local, &mac));
    if let Some(link) = existing.as_ref().filter(|_| !current) {
        h.link()
            .del(link.header.index)
            .execute()
            .await
            .map_err(request(format!("link del {DEVICE}")))?;
    }
    if !current {
        let mut vxlan = LinkVxlan::new(DEVICE, VNI)
            .address(mac.to_vec())
            .local(local)
            .port(DST_PORT)
            .learning(false);
        let underlay = device_with(h, local).await?;
        if let Some(dev) = underlay {
            vxlan = vxlan.dev(dev);
        }
        h.link()
            .add(vxlan.build())
            .execute()
            .await
            .map_err(request(format!(
                "link add {DEVICE} address {} type vxlan id {VNI} local {local} dstport {DST_PORT} nolearning",
                netlink::format_mac(&mac)
            )))?;
        tracing::info!(device = DEVICE, local = %local, mac = %netlink::format_mac(&mac), "created the VXLAN device");
    }
    let index = netlink::require_link(h, DEVICE).await?;
    let vtep = vtep_address(pod_cidr);
    h.address()
        .add(index, IpAddr::V4(vtep), 32)
        .replace()
        .execute()
        .await
        .map_err(request(format!("addr replace {vtep}/32 dev {DEVICE}")))?;
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(request(format!("link set {DEVICE} up")))
}

/// Removes the device (the node switched to host-gw), if there is one.
pub async fn remove_device(h: &Handle) {
    let index = match netlink::link_index(h, DEVICE).await {
        Ok(Some(i)) => i,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "looking for the VXLAN device");
            return;
        }
    };
    match h.link().del(index).execute().await {
        Ok(()) => tracing::info!(device = DEVICE, "removed the VXLAN device"),
        Err(e) => {
            tracing::warn!(error = %request(format!("link del {DEVICE}"))(e), "removing the VXLAN device")
        }
    }
}

/// The IPv4 neighbour entry in `msg` as address → MAC (`ip neigh show`: entries without a MAC,
/// such as FAILED ones, are none).
pub fn neighbour_entry(msg: &NeighbourMessage) -> Option<(Ipv4Addr, String)> {
    let mut ip = None;
    let mut mac = None;
    for a in &msg.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => ip = Some(*d),
            // FDB entries (AF_BRIDGE) carry the tunnel destination as bare bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                ip = <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
            }
            NeighbourAttribute::LinkLayerAddress(l) => mac = Some(netlink::format_mac(l)),
            _ => {}
        }
    }
    Some((ip?, mac?))
}

/// The FDB entry in `msg` as MAC → tunnel destination (`bridge fdb show`: entries without a
/// destination are none).
pub fn fdb_entry(msg: &NeighbourMessage) -> Option<(String, Ipv4Addr)> {
    let (dst, mac) = neighbour_entry(msg)?;
    Some((mac, dst))
}

/// The device's neighbour (`AddressFamily::Inet`) or FDB (`AddressFamily::Bridge`) entries.
async fn entries(
    h: &Handle,
    family: AddressFamily,
    index: u32,
) -> Result<Vec<NeighbourMessage>, NetlinkError> {
    let all: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .set_address_family(family)
        .execute()
        .try_collect()
        .await
        .map_err(request(match family {
            AddressFamily::Bridge => format!("fdb show dev {DEVICE}"),
            _ => format!("-4 neigh show dev {DEVICE}"),
        }))?;
    Ok(all
        .into_iter()
        .filter(|m| m.header.ifindex == index && m.header.family == family)
        .collect())
}

/// Makes the neighbour and FDB entries of the device what `peers` (podCIDR → InternalIP of
/// every other node) need, removing those of nodes that are gone. Returns the problems.
pub async fn sync_peers(h: &Handle, peers: &BTreeMap<Ipv4Net, Ipv4Addr>) -> Vec<String> {
    let index = match netlink::require_link(h, DEVICE).await {
        Ok(i) => i,
        Err(e) => return vec![e.to_string()],
    };
    let mut problems = Vec::new();
    let neigh_msgs = entries(h, AddressFamily::Inet, index)
        .await
        .unwrap_or_default();
    let fdb_msgs = entries(h, AddressFamily::Bridge, index)
        .await
        .unwrap_or_default();
    let neigh: BTreeMap<Ipv4Addr, String> = neigh_msgs.iter().filter_map(neighbour_entry).collect();
    let fdb: BTreeMap<String, Ipv4Addr> = fdb_msgs.iter().filter_map(fdb_entry).collect();
    let mut want_neigh = BTreeSet::new();
    let mut want_fdb = BTreeSet::new();
    for (cidr, node) in peers {
        let (vtep, mac) = (vtep_address(*cidr), vtep_mac(*node));
        let mac_bytes = vtep_mac_bytes(*node);
        if neigh.get(&vtep) != Some(&mac) {
            let added = h
                .neighbours()
                .add(index, IpAddr::V4(vtep))
                .link_layer_address(&mac_bytes)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await;
            if let Err(e) = added {
                let op = format!("neigh replace {vtep} lladdr {mac} dev {DEVICE} nud permanent");
                problems.push(request(op)(e).to_string());
            }
        }
        if fdb.get(&mac) != Some(node) {
            let added = h
                .neighbours()
                .add_bridge(index, &mac_bytes)
                .destination(IpAddr::V4(*node))
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await;
            if let Err(e) = added {
                let op = format!("fdb replace {mac} dev {DEVICE} dst {node} self permanent");
                problems.push(request(op)(e).to_string());
            } else {
                tracing::info!(node = %node, mac = %mac, vtep = %vtep, "VXLAN peer");
            }
        }
        want_neigh.insert(vtep);
        want_fdb.insert(mac);
    }
    for msg in neigh_msgs {
        let Some((vtep, _)) = neighbour_entry(&msg) else {
            continue;
        };
        if !want_neigh.contains(&vtep)
            && let Err(e) = h.neighbours().del(msg).execute().await
        {
            problems.push(request(format!("neigh del {vtep} dev {DEVICE}"))(e).to_string());
        }
    }
    for msg in fdb_msgs {
        let Some((mac, dst)) = fdb_entry(&msg) else {
            continue;
        };
        if !want_fdb.contains(&mac)
            && let Err(e) = h.neighbours().del(msg).execute().await
        {
            let op = format!("fdb del {mac} dev {DEVICE} dst {dst} self");
            problems.push(request(op)(e).to_string());
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_mac_and_address_come_from_the_node() {
        assert_eq!(vtep_mac("10.213.0.2".parse().unwrap()), "0e:4c:0a:d5:00:02");
        assert_eq!(
            vtep_address("10.244.3.0/24".parse().unwrap()).to_string(),
            "10.244.3.0"
        );
    }

    /// The device, its peers and their removal, in a throwaway network namespace.
    #[test]
    fn device_and_peers_are_made_kept_and_removed() {
        use crate::netlink::testns::TestNetns;
        use rtnetlink::LinkBridge;
        let Some(ns) = TestNetns::new() else { return };
        netlink::in_netns(ns.path(), |h| async move {
            h.link()
                .add(LinkBridge::new("underlay").build())
                .execute()
                .await
                .unwrap();
            let ul = netlink::require_link(&h, "underlay").await?;
            for a in ["10.213.0.1/24", "10.213.0.11/24"] {
                netlink::ensure_ipv4_address(&h, ul, "underlay", a.parse().unwrap()).await?;
            }
            h.link()
                .set(LinkUnspec::new_with_index(ul).up().build())
                .execute()
                .await
                .unwrap();
            let local: Ipv4Addr = "10.213.0.1".parse().unwrap();
            let pod_cidr: Ipv4Net = "10.244.0.0/24".parse().unwrap();
            ensure_device(&h, local, pod_cidr).await?;
            let dev = netlink::link(&h, DEVICE).await?.unwrap();
            assert!(is_current(&dev, local, &vtep_mac_bytes(local)));
            assert_eq!(netlink::link_mac(&dev), "0e:4c:0a:d5:00:01");
            assert_eq!(
                netlink::ipv4_addresses(&h, Some(dev.header.index)).await?,
                vec![(dev.header.index, "10.244.0.0/32".parse().unwrap())]
            );
            let vxlan_info = dev.attributes.iter().find_map(|a| match a {
                LinkAttribute::LinkInfo(i) => i.iter().find_map(|i| match i {
                    LinkInfo::Data(InfoData::Vxlan(v)) => Some(v.clone()),
                    _ => None,
                }),
                _ => None,
            });
            let v = vxlan_info.unwrap();
            for want in [
                InfoVxlan::Id(1),
                InfoVxlan::Port(8472),
                InfoVxlan::Learning(false),
                InfoVxlan::Link(ul),
            ] {
                assert!(v.contains(&want), "{want:?} not in {v:?}");
            }
            // Unchanged: kept as it is.
            ensure_device(&h, local, pod_cidr).await?;
            assert_eq!(netlink::require_link(&h, DEVICE).await?, dev.header.index);

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
            assert_eq!(sync_peers(&h, &peers).await, Vec::<String>::new());
            let index = dev.header.index;
            let neigh = |h: Handle| async move {
                let n: BTreeMap<Ipv4Addr, String> = entries(&h, AddressFamily::Inet, index)
                    .await
                    .unwrap()
                    .iter()
                    .filter_map(neighbour_entry)
                    .collect();
                let f: BTreeMap<String, Ipv4Addr> = entries(&h, AddressFamily::Bridge, index)
                    .await
                    .unwrap()
                    .iter()
                    .filter_map(fdb_entry)
                    .collect();
                (n, f)
            };
            let (n, f) = neigh(h.clone()).await;
            assert_eq!(
                n,
                [
                    (
                        "10.244.1.0".parse().unwrap(),
                        "0e:4c:0a:d5:00:02".to_string()
                    ),
                    (
                        "10.244.2.0".parse().unwrap(),
                        "0e:4c:0a:d5:00:03".to_string()
                    )
                ]
                .into()
            );
            assert_eq!(
                f,
                [
                    (
                        "0e:4c:0a:d5:00:02".to_string(),
                        "10.213.0.2".parse().unwrap()
                    ),
                    (
                        "0e:4c:0a:d5:00:03".to_string(),
                        "10.213.0.3".parse().unwrap()
                    )
                ]
                .into()
            );
            let one: BTreeMap<Ipv4Net, Ipv4Addr> = [(
                "10.244.1.0/24".parse().unwrap(),
                "10.213.0.2".parse().unwrap(),
            )]
            .into();
            assert_eq!(sync_peers(&h, &one).await, Vec::<String>::new());
            let (n, f) = neigh(h.clone()).await;
            assert_eq!(n.len(), 1, "{n:?}");
            assert_eq!(f.len(), 1, "{f:?}");

            // A new local end: the device is made anew.
            let moved: Ipv4Addr = "10.213.0.11".parse().unwrap();
            ensure_device(&h, moved, pod_cidr).await?;
            let dev2 = netlink::link(&h, DEVICE).await?.unwrap();
            assert!(is_current(&dev2, moved, &vtep_mac_bytes(moved)));
            remove_device(&h).await;
            assert_eq!(netlink::link_index(&h, DEVICE).await?, None);
            Ok::<_, NetlinkError>(())
        })
        .unwrap();
    }
}
