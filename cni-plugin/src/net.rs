//! The pod's link plumbing over netlink ([`crate::netlink`]): the node bridge with the pods'
//! gateway address and route, the veth pair between it and the pod's network namespace, the
//! pod's address and default route, and bridge-port hairpin mode.
//!
//! The node side runs in the plugin's own network namespace (containerd runs it in the node's);
//! the pod side runs on a thread that enters the pod's namespace (CNI_NETNS).
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;

use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::{InfoBridgePort, InfoData, InfoPortData, InfoVeth, LinkInfo};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteProtocol, RouteScope};
use rtnetlink::{LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::CniError;
use crate::netlink::{self, EEXIST, Handle, NetlinkError, request};

impl From<NetlinkError> for CniError {
    fn from(e: NetlinkError) -> Self {
        CniError::Other(e.to_string())
    }
}

/// Creates the bridge if absent, gives it the gateway address, makes sure the pod network's
/// route leads to it and enables forwarding.
pub fn ensure_bridge(
    bridge: &str,
    gateway: Ipv4Addr,
    cidr: Ipv4Net,
    mtu: u32,
) -> Result<(), CniError> {
    netlink::run_in(None, |h| async move {
        ensure_bridge_with(&h, bridge, gateway, cidr, mtu).await
    })?;
    let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
    Ok(())
}

/// [`ensure_bridge`] through `h` (tests give one in a namespace of their own).
async fn ensure_bridge_with(
    h: &Handle,
    bridge: &str,
    gateway: Ipv4Addr,
    cidr: Ipv4Net,
    mtu: u32,
) -> Result<(), NetlinkError> {
    if netlink::link_index(h, bridge).await?.is_none() {
        let created = h
            .link()
            .add(LinkBridge::new(bridge).build())
            .execute()
            .await
            .map_err(request(format!("link add {bridge} type bridge")));
        match created {
            // Another ADD created it concurrently.
            Err(e) if e.errno() == Some(EEXIST) => {}
            other => other?,
        }
    }
    let index = netlink::require_link(h, bridge).await?;
    let gw = Ipv4Net::new(gateway, cidr.prefix_len()).unwrap_or(cidr);
    netlink::ensure_ipv4_address(h, index, bridge, gw).await?;
    h.link()
        .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
        .execute()
        .await
        .map_err(request(format!("link set {bridge} mtu {mtu} up")))?;
    // The kernel makes this route with the address, but it can be gone while the address
    // stays: a node's network namespace kept from an earlier run, in which this podCIDR was
    // another node's, so the node network agent routed it to that node and later removed
    // that route as the node's. Without it the node cannot reach its own pods (the kubelet's
    // probes time out). A replace is idempotent and safe under concurrent ADDs.
    let net = cidr.trunc();
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(net.network(), net.prefix_len())
        .output_interface(index)
        .protocol(RouteProtocol::Kernel)
        .scope(RouteScope::Link)
        .pref_source(gateway)
        .build();
    h.route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(request(format!(
            "route replace {net} dev {bridge} proto kernel scope link src {gateway}"
        )))
}

/// The host-side veth name for a container: stable, so DEL can find it without a netns.
pub fn host_veth_name(container_id: &str) -> String {
    let short: String = container_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(11)
        .collect();
    format!("veth{short}")
}

/// Creates the veth pair (pod end `ifname` in `netns`), addresses it and routes via the gateway.
/// Returns `(host mac, pod mac)`.
pub fn setup_veth(
    netns: &str,
    ifname: &str,
    host_veth: &str,
    bridge: &str,
    addr: Ipv4Net,
    gateway: Ipv4Addr,
    mtu: u32,
) -> Result<(String, String), CniError> {
    let pod = Veth {
        ifname,
        host_veth,
        addr,
        gateway,
        mtu,
    };
    Ok(setup_veth_between(None, Path::new(netns), &pod, bridge)?)
}

/// The pod end of a veth pair as ADD makes it.
struct Veth<'a> {
    ifname: &'a str,
    host_veth: &'a str,
    addr: Ipv4Net,
    gateway: Ipv4Addr,
    mtu: u32,
}

/// [`setup_veth`] between the node namespace `node` (`None`: this thread's) and `netns`.
fn setup_veth_between(
    node: Option<&Path>,
    netns: &Path,
    pod: &Veth<'_>,
    bridge: &str,
) -> Result<(String, String), NetlinkError> {
    let host_veth = pod.host_veth;
    let exists = netlink::run_in(node, |h| async move {
        Ok::<_, NetlinkError>(netlink::link_index(&h, host_veth).await?.is_some())
    })?;
    // Created inside the pod's namespace with the peer sent to the node's, as the CNI bridge
    // plugin does: `ifname` (eth0) would clash with the node's own interfaces.
    let node_ns = node.unwrap_or(Path::new(netlink::THREAD_NETNS));
    let node_fd = File::open(node_ns).map_err(|source| NetlinkError::OpenNetns {
        path: node_ns.display().to_string(),
        source,
    })?;
    let node_fd = &node_fd;
    let pod_mac = netlink::in_netns(netns, |h| async move {
        if !exists {
            create_veth(&h, pod, node_fd).await?;
        }
        configure_pod_end(&h, pod).await
    })?;
    let host_mac = netlink::run_in(node, |h| async move {
        let index = netlink::require_link(&h, host_veth).await?;
        let master = netlink::require_link(&h, bridge).await?;
        h.link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(master)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(request(format!("link set {host_veth} master {bridge} up")))?;
        set_hairpin(&h, index, host_veth).await?;
        let link = netlink::link(&h, host_veth)
            .await?
            .ok_or_else(|| NetlinkError::NoLink(host_veth.to_string()))?;
        Ok::<_, NetlinkError>(netlink::link_mac(&link))
    })?;
    Ok((host_mac, pod_mac))
}

/// `ip link add IFNAME mtu M type veth peer name HOST_VETH mtu M netns NODE`.
async fn create_veth(h: &Handle, pod: &Veth<'_>, node: &File) -> Result<(), NetlinkError> {
    let peer = LinkUnspec::new_with_name(pod.host_veth)
        .mtu(pod.mtu)
        .setns_by_fd(node.as_raw_fd())
        .build();
    let veth = LinkVeth::new(pod.ifname, pod.host_veth)
        .mtu(pod.mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    h.link().add(veth).execute().await.map_err(request(format!(
        "link add {} mtu {} type veth peer name {} mtu {} netns <node>",
        pod.ifname, pod.mtu, pod.host_veth, pod.mtu
    )))
}

/// Inside the pod's namespace: loopback up, the address, the interface up, the default route
/// through the gateway. Returns the interface's MAC.
async fn configure_pod_end(h: &Handle, pod: &Veth<'_>) -> Result<String, NetlinkError> {
    let lo = netlink::require_link(h, "lo").await?;
    h.link()
        .set(LinkUnspec::new_with_index(lo).up().build())
        .execute()
        .await
        .map_err(request("link set lo up"))?;
    let index = netlink::require_link(h, pod.ifname).await?;
    netlink::ensure_ipv4_address(h, index, pod.ifname, pod.addr).await?;
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(request(format!("link set {} up", pod.ifname)))?;
    let default = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(pod.gateway)
        .output_interface(index)
        .protocol(RouteProtocol::Boot)
        .build();
    h.route()
        .add(default)
        .replace()
        .execute()
        .await
        .map_err(request(format!(
            "route replace default via {} dev {}",
            pod.gateway, pod.ifname
        )))?;
    let link = netlink::link(h, pod.ifname)
        .await?
        .ok_or_else(|| NetlinkError::NoLink(pod.ifname.to_string()))?;
    Ok(netlink::link_mac(&link))
}

/// Turns on hairpin mode on bridge port `index` (named `port`), so a pod reaching itself through
/// a Service (DNAT back to its own address, decided while the frame is being bridged) gets the
/// frame back on the port it came from (the CNI bridge plugin's `hairpinMode`, the kubelet's
/// hairpin-veth).
pub async fn set_hairpin(h: &Handle, index: u32, port: &str) -> Result<(), NetlinkError> {
    h.link()
        .set_port(LinkBridgePort::new(index).hairpin(true).build())
        .execute()
        .await
        .map_err(request(format!("enable hairpin mode on {port}")))
}

/// The ports of `bridge` whose hairpin mode is off, as `(index, name)`.
pub async fn ports_without_hairpin(
    h: &Handle,
    bridge: &str,
) -> Result<Vec<(u32, String)>, NetlinkError> {
    let Some(master) = netlink::link_index(h, bridge).await? else {
        return Ok(Vec::new());
    };
    Ok(netlink::links(h)
        .await?
        .iter()
        .filter(|l| hairpin_off_port_of(l, master))
        .filter_map(|l| Some((l.header.index, netlink::link_name(l)?.to_string())))
        .collect())
}

/// Whether `link` is a port of bridge `master` with hairpin mode off (the bridge port data the
/// kernel reports with every port: `ip -d link show` prints it as `bridge_slave … hairpin off`).
fn hairpin_off_port_of(link: &LinkMessage, master: u32) -> bool {
    let is_port = link
        .attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::Controller(m) if *m == master));
    let hairpin_off = link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| match i {
            LinkInfo::PortData(InfoPortData::BridgePort(port)) => port
                .iter()
                .any(|p| matches!(p, InfoBridgePort::HairpinMode(false))),
            _ => false,
        }),
        _ => false,
    });
    is_port && hairpin_off
}

/// Checks that the pod interface exists in `netns` with `addr`.
pub fn check_veth(netns: &str, ifname: &str, addr: Ipv4Net) -> Result<(), CniError> {
    let have = netlink::in_netns(Path::new(netns), |h| async move {
        let index = netlink::require_link(&h, ifname).await?;
        netlink::ipv4_addresses(&h, Some(index)).await
    })?;
    if !have.iter().any(|(_, a)| *a == addr) {
        return Err(CniError::Other(format!(
            "interface {ifname} does not have address {addr}"
        )));
    }
    Ok(())
}

/// Deletes the veth pair if it still exists (deleting one end removes both); absent is success.
pub fn teardown_veth(host_veth: &str) -> Result<(), CniError> {
    delete_link(None, host_veth)
}

/// Deletes link `name` in the network namespace at `netns` (`None`: this thread's) if it
/// exists (`ip [-n NS] link del NAME`); absent is success.
pub fn delete_link(netns: Option<&Path>, name: &str) -> Result<(), CniError> {
    Ok(netlink::run_in(netns, |h| async move {
        delete_link_with(&h, name).await
    })?)
}

/// Whether link `name` exists in the network namespace at `netns` (`None`: this thread's).
pub fn link_exists(netns: Option<&Path>, name: &str) -> Result<bool, CniError> {
    Ok(netlink::run_in(netns, |h| async move {
        Ok::<_, NetlinkError>(netlink::link_index(&h, name).await?.is_some())
    })?)
}

async fn delete_link_with(h: &Handle, name: &str) -> Result<(), NetlinkError> {
    let Some(index) = netlink::link_index(h, name).await? else {
        return Ok(());
    };
    let deleted = h
        .link()
        .del(index)
        .execute()
        .await
        .map_err(request(format!("link del {name}")));
    // Gone meanwhile (the pod's namespace went, taking the pair with it) is success too.
    match deleted {
        Err(e) if netlink::link_index(h, name).await?.is_some() => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::testns::TestNetns;
    use futures::TryStreamExt;
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
    use std::net::IpAddr;

    /// The gateway of the default route among `routes`.
    fn default_gateway(routes: &[RouteMessage]) -> Option<IpAddr> {
        routes
            .iter()
            .filter(|r| r.header.destination_prefix_length == 0)
            .find_map(|r| {
                r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(IpAddr::V4(*g)),
                    _ => None,
                })
            })
    }

    async fn routes_of(h: &Handle) -> Vec<RouteMessage> {
        h.route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .unwrap()
    }

    /// `10.244.7.0/24 dev lotsetest0 … src 10.244.7.1` is there.
    async fn has_pod_network_route(h: &Handle, bridge: u32) -> bool {
        routes_of(h).await.iter().any(|r| {
            r.header.destination_prefix_length == 24
                && r.attributes
                    .contains(&RouteAttribute::Destination(RouteAddress::Inet(
                        Ipv4Addr::new(10, 244, 7, 0),
                    )))
                && r.attributes.contains(&RouteAttribute::Oif(bridge))
                && r.attributes
                    .contains(&RouteAttribute::PrefSource(RouteAddress::Inet(
                        Ipv4Addr::new(10, 244, 7, 1),
                    )))
        })
    }
    #[test]
    fn the_pod_network_route_comes_back() {
        let Some(ns) = TestNetns::new() else { return };
        let cidr: Ipv4Net = "10.244.7.0/24".parse().unwrap();
        let gw: Ipv4Addr = "10.244.7.1".parse().unwrap();
        netlink::in_netns(ns.path(), |h| async move {
            ensure_bridge_with(&h, "lotsetest0", gw, cidr, 1450).await?;
            let br = netlink::require_link(&h, "lotsetest0").await?;
            assert!(has_pod_network_route(&h, br).await);
            // Gone while the address stays (as after another run's agent routed it away).
            for r in routes_of(&h).await {
                let main =
                    r.header.table == rtnetlink::packet_route::route::RouteHeader::RT_TABLE_MAIN;
                if main && r.attributes.contains(&RouteAttribute::Oif(br)) {
                    h.route().del(r).execute().await.unwrap();
                }
            }
            assert!(!has_pod_network_route(&h, br).await);
            ensure_bridge_with(&h, "lotsetest0", gw, cidr, 1450).await?;
            assert!(has_pod_network_route(&h, br).await);
            let link = netlink::link(&h, "lotsetest0").await?.unwrap();
            assert!(link.attributes.contains(&LinkAttribute::Mtu(1450)));
            assert_eq!(
                netlink::ipv4_addresses(&h, Some(br)).await?,
                vec![(br, "10.244.7.1/24".parse().unwrap())]
            );
            Ok::<_, NetlinkError>(())
        })
        .unwrap();
    }

    #[test]
    fn add_check_and_del_make_and_remove_the_veth_pair() {
        let (Some(node), Some(pod)) = (TestNetns::new(), TestNetns::new()) else {
            return;
        };
        let cidr: Ipv4Net = "10.244.9.0/24".parse().unwrap();
        let gw: Ipv4Addr = "10.244.9.1".parse().unwrap();
        let addr: Ipv4Net = "10.244.9.5/24".parse().unwrap();
        let veth = Veth {
            ifname: "eth0",
            host_veth: "vethtest1",
            addr,
            gateway: gw,
            mtu: 1450,
        };
        let t0 = std::time::Instant::now();
        netlink::in_netns(node.path(), |h| async move {
            ensure_bridge_with(&h, "lotsetest0", gw, cidr, 1450).await
        })
        .unwrap();
        let (host_mac, pod_mac) =
            setup_veth_between(Some(node.path()), pod.path(), &veth, "lotsetest0").unwrap();
        eprintln!("bridge + veth set up in {:?}", t0.elapsed());
        // A repeated ADD (containerd retries) finds everything in place.
        let again = setup_veth_between(Some(node.path()), pod.path(), &veth, "lotsetest0");
        assert_eq!(again.unwrap(), (host_mac.clone(), pod_mac.clone()));
        assert_eq!(host_mac.len(), 17, "{host_mac}");
        assert_ne!(host_mac, pod_mac);

        // The node side: a port of the bridge, up, hairpin on, same MTU.
        netlink::in_netns(node.path(), |h| async move {
            let br = netlink::require_link(&h, "lotsetest0").await?;
            let port = netlink::link(&h, "vethtest1").await?.unwrap();
            assert!(port.attributes.contains(&LinkAttribute::Controller(br)));
            assert!(port.attributes.contains(&LinkAttribute::Mtu(1450)));
            assert!(!hairpin_off_port_of(&port, br));
            assert_eq!(netlink::link_mac(&port), host_mac);
            assert!(ports_without_hairpin(&h, "lotsetest0").await?.is_empty());
            // An older plugin's port without hairpin is found, and fixed.
            h.link()
                .set_port(
                    LinkBridgePort::new(port.header.index)
                        .hairpin(false)
                        .build(),
                )
                .execute()
                .await
                .unwrap();
            let off = ports_without_hairpin(&h, "lotsetest0").await?;
            assert_eq!(off, vec![(port.header.index, "vethtest1".to_string())]);
            set_hairpin(&h, off[0].0, &off[0].1).await?;
            assert!(ports_without_hairpin(&h, "lotsetest0").await?.is_empty());
            Ok::<_, NetlinkError>(())
        })
        .unwrap();

        // The pod side: eth0 with the address and the default route through the gateway.
        netlink::in_netns(pod.path(), |h| async move {
            let eth0 = netlink::link(&h, "eth0").await?.unwrap();
            assert!(eth0.attributes.contains(&LinkAttribute::Mtu(1450)));
            assert_eq!(netlink::link_mac(&eth0), pod_mac);
            let addrs = netlink::ipv4_addresses(&h, Some(eth0.header.index)).await?;
            assert_eq!(addrs, vec![(eth0.header.index, addr)]);
            assert_eq!(default_gateway(&routes_of(&h).await), Some(IpAddr::V4(gw)));
            Ok::<_, NetlinkError>(())
        })
        .unwrap();
        let pod_ns = pod.path().display().to_string();
        check_veth(&pod_ns, "eth0", addr).unwrap();
        let err = check_veth(&pod_ns, "eth0", "10.244.9.6/24".parse().unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "interface eth0 does not have address 10.244.9.6/24"
        );

        // DEL removes both ends, and a second DEL finds nothing and succeeds.
        netlink::in_netns(node.path(), |h| async move {
            delete_link_with(&h, "vethtest1").await?;
            assert_eq!(netlink::link_index(&h, "vethtest1").await?, None);
            delete_link_with(&h, "vethtest1").await
        })
        .unwrap();
        netlink::in_netns(pod.path(), |h| async move {
            assert_eq!(netlink::link_index(&h, "eth0").await?, None);
            Ok::<_, NetlinkError>(())
        })
        .unwrap();
    }
}
