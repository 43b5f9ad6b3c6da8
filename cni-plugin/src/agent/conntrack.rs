//! Stale UDP conntrack entries, cleared after a sync as kube-proxy does: a UDP "connection" to
//! a Service keeps its DNAT to an endpoint for as long as packets flow, so when that endpoint
//! goes away its entries must go too, and entries made while a Service had no endpoints (and was
//! rejected) must go when it gets some. TCP needs nothing: a removed endpoint's connections
//! break on their own.
//!
//! The entries are found and deleted over ctnetlink (`netlink-packet-netfilter`, of the
//! rust-netlink family that also gives [`crate::netlink`] its route messages), as kube-proxy
//! does through its netlink library since it stopped running the `conntrack` program: one dump
//! of the IPv4 table, the filters applied here (as `conntrack -D` applies its own), one delete
//! per match. No `conntrack` program is needed on the node.
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol as CtProtocol, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::model::{Protocol, ServicePort};

/// Why clearing conntrack entries failed.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// No ctnetlink socket, or sending or receiving on it failed.
    #[error("ctnetlink socket: {0}")]
    Socket(#[from] std::io::Error),
    /// The kernel's answer could not be read.
    #[error("ctnetlink answer: {0}")]
    Decode(String),
    /// The kernel refused a request.
    #[error("ctnetlink {op}: {source}")]
    Refused {
        /// What was asked.
        op: &'static str,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
}

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

impl Stale {
    /// Whether `flow` is one of the entries this filter deletes (`conntrack -D -p udp` with
    /// these options: `--dst-nat IP` is "destination-NATed, and the reply comes from IP").
    pub fn matches(&self, flow: &Flow) -> bool {
        if flow.protocol != CtProtocol::Udp {
            return false;
        }
        let dnat_from = |ep: &Ipv4Addr| flow.orig_dst != flow.reply_src && flow.reply_src == *ep;
        match self {
            Stale::Nat {
                service_ip,
                endpoint,
            } => flow.orig_dst == *service_ip && dnat_from(endpoint),
            Stale::PortNat {
                node_port,
                endpoint,
            } => flow.orig_dst_port == Some(*node_port) && dnat_from(endpoint),
            Stale::Ip(ip) => flow.orig_dst == *ip,
        }
    }
}

/// What the filters look at in a conntrack entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// The layer-4 protocol.
    pub protocol: CtProtocol,
    /// The original direction's destination (the Service IP for a Service flow).
    pub orig_dst: Ipv4Addr,
    /// The original direction's destination port.
    pub orig_dst_port: Option<u16>,
    /// The reply direction's source (the endpoint, once DNAT chose one).
    pub reply_src: Ipv4Addr,
}

impl Flow {
    /// The flow of a dumped IPv4 entry, with its original tuple (what a delete names it by).
    fn of(attrs: &[ConntrackAttribute]) -> Option<(Flow, Vec<Tuple>)> {
        let (mut orig, mut reply) = (None, None);
        for a in attrs {
            match a {
                ConntrackAttribute::CtaTupleOrig(t) => orig = Some(t),
                ConntrackAttribute::CtaTupleReply(t) => reply = Some(t),
                _ => {}
            }
        }
        let (orig, reply) = (orig?, reply?);
        let addr = |tuple: &[Tuple], want_dst: bool| {
            tuple.iter().find_map(|t| match t {
                Tuple::Ip(ips) => ips.iter().find_map(|ip| match (ip, want_dst) {
                    (IPTuple::DestinationAddress(IpAddr::V4(a)), true)
                    | (IPTuple::SourceAddress(IpAddr::V4(a)), false) => Some(*a),
                    _ => None,
                }),
                _ => None,
            })
        };
        let proto = orig.iter().find_map(|t| match t {
            Tuple::Proto(p) => Some(p),
            _ => None,
        })?;
        let protocol = proto.iter().find_map(|p| match p {
            ProtoTuple::Protocol(p) => Some(*p),
            _ => None,
        })?;
        let orig_dst_port = proto.iter().find_map(|p| match p {
            ProtoTuple::DestinationPort(port) => Some(*port),
            _ => None,
        });
        let flow = Flow {
            protocol,
            orig_dst: addr(orig, true)?,
            orig_dst_port,
            reply_src: addr(reply, false)?,
        };
        Some((flow, orig.clone()))
    }
}

/// Deletes the entries (best effort: a failure is logged, the entries then time out).
pub fn clear(stale: &BTreeSet<Stale>) {
    match clear_entries(stale) {
        Ok(n) => {
            tracing::debug!(filters = ?stale, deleted = n, "cleared stale UDP conntrack entries")
        }
        Err(e) => {
            tracing::warn!(error = %e, "stale UDP conntrack entries stay until they time out")
        }
    }
}

/// [`clear`] in the current thread's network namespace; returns how many entries went.
fn clear_entries(stale: &BTreeSet<Stale>) -> Result<usize, ConntrackError> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    let dump = request(
        ConntrackMessage::Get(Vec::new()),
        NLM_F_REQUEST | NLM_F_DUMP,
    );
    send(&socket, dump)?;
    let mut doomed = Vec::new();
    receive(&socket, "dump", |attrs| {
        if let Some((flow, orig)) = Flow::of(attrs)
            && stale.iter().any(|s| s.matches(&flow))
        {
            doomed.push(orig);
        }
    })?;
    let mut deleted = 0;
    for orig in doomed {
        let delete = request(
            ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(orig)]),
            NLM_F_REQUEST | NLM_F_ACK,
        );
        send(&socket, delete)?;
        match receive(&socket, "delete", |_| {}) {
            Ok(()) => deleted += 1,
            // Gone meanwhile (timed out, or deleted by another filter's match).
            Err(ConntrackError::Refused { source, .. })
                if source.raw_os_error() == Some(ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// `errno` of ENOENT.
const ENOENT: i32 = 2;

fn request(msg: ConntrackMessage, flags: u16) -> NetlinkMessage<NetfilterMessage> {
    let header = NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0);
    let mut nl = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::InnerMessage(NetfilterMessage::new(header, msg)),
    );
    nl.header.flags = flags;
    nl.finalize();
    nl
}

fn send(socket: &Socket, msg: NetlinkMessage<NetfilterMessage>) -> Result<(), ConntrackError> {
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    socket.send_to(&buf, &SocketAddr::new(0, 0), 0)?;
    Ok(())
}

/// Reads answers until the dump is done or the request is acknowledged, handing each entry's
/// attributes to `entry`.
fn receive(
    socket: &Socket,
    op: &'static str,
    mut entry: impl FnMut(&[ConntrackAttribute]),
) -> Result<(), ConntrackError> {
    loop {
        let (buf, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < buf.len() {
            let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[offset..])
                .map_err(|e| ConntrackError::Decode(e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) if e.code.is_none() => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(ConntrackError::Refused {
                        op,
                        source: e.to_io(),
                    });
                }
                NetlinkPayload::InnerMessage(NetfilterMessage {
                    inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)),
                    ..
                }) => entry(&attrs),
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len.next_multiple_of(4);
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

    /// Real entries in a throwaway namespace: UDP to a "Service IP" DNATed to two "endpoints";
    /// the filter for one endpoint deletes exactly its entry.
    #[test]
    fn clears_the_matching_entries_through_ctnetlink() {
        use crate::netlink::{self, NetlinkError, request, testns::TestNetns};
        let Some(ns) = TestNetns::new() else { return };
        let rules = "table ip t {\n chain out { type nat hook output priority -100;\n\
                     ip daddr 10.96.0.10 udp sport 40001 dnat to 127.0.0.5\n\
                     ip daddr 10.96.0.10 udp sport 40002 dnat to 127.0.0.6; }\n}\n";
        match crate::agent::nft::apply_in(ns.path(), rules) {
            Ok(()) => {}
            Err(e @ crate::agent::nft::NftError::Missing(_)) => {
                eprintln!("{e}: skipped");
                return;
            }
            Err(e) => panic!("nft rejected the test rules: {e}"),
        }
        let flows = netlink::in_netns(ns.path(), |h| async move {
            let lo = netlink::require_link(&h, "lo").await?;
            h.link()
                .set(rtnetlink::LinkUnspec::new_with_index(lo).up().build())
                .execute()
                .await
                .map_err(request("link set lo up"))?;
            let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(Ipv4Addr::new(10, 96, 0, 0), 16)
                .output_interface(lo)
                .build();
            h.route()
                .add(route)
                .execute()
                .await
                .map_err(request("route add 10.96.0.0/16 dev lo"))?;
            for port in [40001, 40002] {
                let s = std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
                s.send_to(b"x", "10.96.0.10:53").unwrap();
            }
            let count = || {
                let mut n = Vec::new();
                let socket = {
                    let mut s = Socket::new(NETLINK_NETFILTER).unwrap();
                    s.bind_auto().unwrap();
                    s
                };
                send(&socket, request_dump()).unwrap();
                receive(&socket, "dump", |a| n.extend(Flow::of(a).map(|(f, _)| f))).unwrap();
                n
            };
            let before = count();
            let stale: BTreeSet<Stale> = [Stale::Nat {
                service_ip: Ipv4Addr::new(10, 96, 0, 10),
                endpoint: Ipv4Addr::new(127, 0, 0, 5),
            }]
            .into();
            let deleted = clear_entries(&stale).unwrap();
            Ok::<_, NetlinkError>((before, deleted, count()))
        })
        .unwrap();
        let (before, deleted, after) = flows;
        let udp_to_service = |f: &&Flow| f.orig_dst == Ipv4Addr::new(10, 96, 0, 10);
        assert_eq!(
            before.iter().filter(udp_to_service).count(),
            2,
            "{before:?}"
        );
        assert_eq!(deleted, 1);
        let left: Vec<&Flow> = after.iter().filter(udp_to_service).collect();
        assert_eq!(left.len(), 1, "{after:?}");
        assert_eq!(left[0].reply_src, Ipv4Addr::new(127, 0, 0, 6));
        assert_eq!(left[0].orig_dst_port, Some(53));
    }

    fn request_dump() -> NetlinkMessage<NetfilterMessage> {
        request(
            ConntrackMessage::Get(Vec::new()),
            NLM_F_REQUEST | NLM_F_DUMP,
        )
    }
}
