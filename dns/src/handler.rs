//! Answers one DNS message: the cluster zone from a [`ClusterView`], reverse lookups of cluster
//! addresses, everything else to the upstream resolvers.
//!
//! The semantics are the Kubernetes DNS specification as CoreDNS's `kubernetes` plugin serves it
//! (kubeadm's and k3s's Corefile: `kubernetes cluster.local in-addr.arpa ip6.arpa { pods insecure
//! fallthrough in-addr.arpa ip6.arpa; ttl 5 }`, `forward . /etc/resolv.conf`).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::view::{ClusterView, ServiceKind};

/// TTL of every cluster record (CoreDNS's `ttl` default in the kubernetes plugin).
pub const TTL: u32 = 5;
/// The DNS schema version the Kubernetes DNS specification asks for at `dns-version.<zone>`.
const SCHEMA_VERSION: &str = "1.1.0";
/// UDP payload size advertised in responses to EDNS queries (the DNS flag day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;

/// What to do with a query.
#[derive(Debug)]
pub enum Outcome {
    /// Send this response.
    Reply(Message),
    /// Not ours: forward the query to the upstream resolvers.
    Forward,
    /// Not even a DNS header: drop it silently.
    Drop,
}

/// The transport a query came in on (UDP answers are truncated to the client's payload size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Datagrams.
    Udp,
    /// Length-prefixed messages on a stream.
    Tcp,
}

/// The cluster zone (`cluster.local`), as lowercase labels.
#[derive(Clone, Debug)]
pub struct Zone {
    labels: Vec<String>,
    name: Name,
}

impl Zone {
    /// Parses a cluster domain such as `cluster.local`.
    pub fn new(domain: &str) -> Result<Self, crate::Error> {
        let d = domain.trim_end_matches('.').to_ascii_lowercase();
        let name = Name::from_ascii(format!("{d}."))
            .map_err(|e| crate::Error::ClusterDomain(domain.to_string(), e.to_string()))?;
        let labels: Vec<String> = d.split('.').map(str::to_string).collect();
        if d.is_empty() || labels.iter().any(String::is_empty) {
            return Err(crate::Error::ClusterDomain(
                domain.to_string(),
                "empty label".into(),
            ));
        }
        Ok(Zone { labels, name })
    }

    /// An absolute name `<rel>.<zone>.`.
    fn absolute(&self, rel: &str) -> Option<Name> {
        if rel.is_empty() {
            return Some(self.name.clone());
        }
        Name::from_ascii(rel).ok()?.append_domain(&self.name).ok()
    }
}

/// Parses a query and decides: an answer from the cluster, forward, or an error response.
pub fn handle(view: &ClusterView, zone: &Zone, request: &[u8]) -> Outcome {
    let msg = match Message::from_vec(request) {
        Ok(m) => m,
        Err(_) => {
            // Answer FORMERR when at least the header is there (RFC 1035 4.1.1).
            if request.len() < 12 {
                return Outcome::Drop;
            }
            let id = u16::from_be_bytes([request[0], request[1]]);
            if request[2] & 0x80 != 0 {
                return Outcome::Drop; // a response: never answer it
            }
            let mut m = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
            m.metadata.recursion_available = true;
            return Outcome::Reply(m);
        }
    };
    if msg.metadata.message_type != MessageType::Query {
        return Outcome::Drop;
    }
    let mut resp = Message::response(msg.metadata.id, msg.metadata.op_code);
    resp.metadata.recursion_desired = msg.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.checking_disabled = msg.metadata.checking_disabled;
    resp.add_queries(msg.queries.iter().cloned());
    if let Some(req_edns) = &msg.edns {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_PAYLOAD);
        if req_edns.version() > 0 {
            // RFC 6891 6.1.3: BADVERS (extended rcode 16) for an unknown EDNS version.
            resp.metadata.response_code = ResponseCode::BADVERS;
            e.set_rcode_high(ResponseCode::BADVERS.high());
            resp.set_edns(e);
            return Outcome::Reply(resp);
        }
        resp.set_edns(e);
    }
    if msg.metadata.op_code != OpCode::Query {
        resp.metadata.response_code = ResponseCode::NotImp;
        return Outcome::Reply(resp);
    }
    let [query] = msg.queries.as_slice() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return Outcome::Reply(resp);
    };
    let labels: Vec<String> = query
        .name()
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect();
    let qtype = query.query_type();

    if let Some(rel) = strip_suffix(&labels, &zone.labels) {
        if query.query_class() != DNSClass::IN && query.query_class() != DNSClass::ANY {
            resp.metadata.response_code = ResponseCode::Refused;
            return Outcome::Reply(resp);
        }
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            // Zone transfers are not offered (CoreDNS without the `transfer` plugin).
            resp.metadata.response_code = ResponseCode::Refused;
            return Outcome::Reply(resp);
        }
        resp.metadata.authoritative = true;
        let found = lookup(view, zone, rel);
        answer(&mut resp, zone, query, found);
        return Outcome::Reply(resp);
    }

    if qtype == RecordType::PTR
        && let Some(ip) = reverse_ip(&labels)
    {
        let names = view.ptr(ip);
        if !names.is_empty() {
            resp.metadata.authoritative = true;
            for n in names {
                if let Some(target) = zone.absolute(n) {
                    resp.add_answer(record(query.name().clone(), RData::PTR(PTR(target))));
                }
            }
            return Outcome::Reply(resp);
        }
    }
    // `fallthrough in-addr.arpa ip6.arpa` and `forward . /etc/resolv.conf`.
    Outcome::Forward
}

/// Serializes a response, truncating a UDP answer that is larger than the client accepts.
pub fn encode(resp: &Message, request_payload: u16, transport: Transport) -> Option<Vec<u8>> {
    let bytes = resp.to_vec().ok()?;
    if transport == Transport::Udp && bytes.len() > usize::from(request_payload.max(512)) {
        return resp.truncate().to_vec().ok();
    }
    Some(bytes)
}

/// The largest UDP response the client of `request` accepts.
pub fn request_payload(request: &[u8]) -> u16 {
    Message::from_vec(request)
        .ok()
        .and_then(|m| m.edns.map(|e| e.max_payload()))
        .unwrap_or(512)
}

/// A SERVFAIL answer to a query that could not be forwarded.
pub fn servfail(request: &[u8]) -> Option<Message> {
    let msg = Message::from_vec(request).ok()?;
    let mut resp = Message::error_msg(
        msg.metadata.id,
        msg.metadata.op_code,
        ResponseCode::ServFail,
    );
    resp.metadata.recursion_desired = msg.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_queries(msg.queries.iter().cloned());
    if msg.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_PAYLOAD);
        resp.set_edns(e);
    }
    Some(resp)
}

/// `labels` without the zone's labels at its end (`None`: not in the zone).
fn strip_suffix<'a>(labels: &'a [String], zone: &[String]) -> Option<&'a [String]> {
    let n = labels.len().checked_sub(zone.len())?;
    (labels[n..] == *zone).then_some(&labels[..n])
}

/// The records at one name of the zone.
#[derive(Debug, Default, PartialEq)]
struct Found {
    /// The name does not exist (NXDOMAIN).
    nxdomain: bool,
    records: Vec<RData>,
    /// Address records of SRV targets (the additional section).
    additionals: Vec<Record>,
}

impl Found {
    fn nx() -> Self {
        Found {
            nxdomain: true,
            ..Default::default()
        }
    }
    /// An existing name without records (an empty non-terminal, or no data of any type).
    fn empty() -> Self {
        Found::default()
    }
}

fn addr(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

fn record(name: Name, data: RData) -> Record {
    Record::from_rdata(name, TTL, data)
}

fn soa(zone: &Zone) -> Record {
    let mname = zone.absolute("ns.dns").unwrap_or_else(|| zone.name.clone());
    let rname = zone
        .absolute("hostmaster")
        .unwrap_or_else(|| zone.name.clone());
    record(
        zone.name.clone(),
        RData::SOA(SOA::new(mname, rname, 1, 7200, 1800, 86400, TTL)),
    )
}

/// Resolves a name relative to the zone (labels from the left, lowercase).
fn lookup(view: &ClusterView, zone: &Zone, rel: &[String]) -> Found {
    let strs: Vec<&str> = rel.iter().map(String::as_str).collect();
    match strs.as_slice() {
        [] => Found {
            records: vec![
                soa(zone).data.clone(),
                RData::NS(NS(zone
                    .absolute("ns.dns")
                    .unwrap_or_else(|| zone.name.clone()))),
            ],
            ..Default::default()
        },
        ["dns-version"] => Found {
            records: vec![RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()]))],
            ..Default::default()
        },
        ["svc"] | ["pod"] => Found::empty(),
        [ns, "svc"] | [ns, "pod"] => {
            if view.namespace_exists(ns) {
                Found::empty()
            } else {
                Found::nx()
            }
        }
        [ip, ns, "pod"] => match undash(ip) {
            // `pods insecure`: any well-formed address in an existing namespace.
            Some(ip) if view.namespace_exists(ns) => Found {
                records: vec![addr(ip)],
                ..Default::default()
            },
            _ => Found::nx(),
        },
        [svc, ns, "svc"] => service_records(view, ns, svc),
        [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
            srv_records(view, zone, ns, svc, &port[1..], &proto[1..])
        }
        [proto, svc, ns, "svc"] if proto.starts_with('_') => {
            // `_tcp.<svc>…`: the parent of SRV names; exists when some named port uses it.
            match view.service(ns, svc) {
                Some(s)
                    if s.ports.iter().any(|p| p.protocol == proto[1..])
                        || s.endpoints
                            .iter()
                            .any(|e| e.ports.iter().any(|p| p.protocol == proto[1..])) =>
                {
                    Found::empty()
                }
                _ => Found::nx(),
            }
        }
        [ep, svc, ns, "svc"] => match view.service(ns, svc) {
            Some(s) => {
                let records: Vec<RData> = s
                    .endpoints
                    .iter()
                    .filter(|e| e.label == *ep)
                    .map(|e| addr(e.ip))
                    .collect();
                if records.is_empty() {
                    Found::nx()
                } else {
                    Found {
                        records,
                        ..Default::default()
                    }
                }
            }
            None => Found::nx(),
        },
        _ => Found::nx(),
    }
}

fn service_records(view: &ClusterView, ns: &str, name: &str) -> Found {
    let Some(svc) = view.service(ns, name) else {
        return Found::nx();
    };
    let mut records: Vec<RData> = match &svc.kind {
        ServiceKind::ClusterIp(ips) => ips.iter().map(|ip| addr(*ip)).collect(),
        ServiceKind::Headless => svc.endpoints.iter().map(|e| addr(e.ip)).collect(),
        ServiceKind::ExternalName(target) => {
            return match Name::from_ascii(format!("{}.", target.trim_end_matches('.'))) {
                Ok(t) => Found {
                    records: vec![RData::CNAME(CNAME(t))],
                    ..Default::default()
                },
                Err(_) => Found::empty(),
            };
        }
    };
    // SRV at the Service's own name: one per named port (as CoreDNS answers).
    let zone_less = format!("{name}.{ns}.svc");
    match &svc.kind {
        ServiceKind::ClusterIp(_) => {
            for p in &svc.ports {
                records.push(RData::SRV(SRV::new(
                    0,
                    100,
                    p.port,
                    Name::from_ascii(&zone_less).unwrap_or_default(),
                )));
            }
        }
        _ => {
            for e in &svc.endpoints {
                for p in &e.ports {
                    records.push(RData::SRV(SRV::new(
                        0,
                        100,
                        p.port,
                        Name::from_ascii(format!("{}.{zone_less}", e.label)).unwrap_or_default(),
                    )));
                }
            }
        }
    }
    Found {
        records,
        ..Default::default()
    }
}

fn srv_records(
    view: &ClusterView,
    zone: &Zone,
    ns: &str,
    name: &str,
    port: &str,
    proto: &str,
) -> Found {
    let Some(svc) = view.service(ns, name) else {
        return Found::nx();
    };
    let mut found = Found::default();
    match &svc.kind {
        ServiceKind::ClusterIp(ips) => {
            let target = zone.absolute(&format!("{name}.{ns}.svc"));
            for p in svc
                .ports
                .iter()
                .filter(|p| p.name == port && p.protocol == proto)
            {
                if let Some(t) = &target {
                    found
                        .records
                        .push(RData::SRV(SRV::new(0, 100, p.port, t.clone())));
                    for ip in ips {
                        found.additionals.push(record(t.clone(), addr(*ip)));
                    }
                }
            }
        }
        ServiceKind::Headless => {
            let matching: Vec<_> = svc
                .endpoints
                .iter()
                .flat_map(|e| {
                    e.ports
                        .iter()
                        .filter(|p| p.name == port && p.protocol == proto)
                        .map(move |p| (e, p.port))
                })
                .collect();
            // CoreDNS spreads the weight evenly over the targets.
            let weight = u16::try_from(100 / matching.len().max(1)).unwrap_or(100);
            for (e, p) in matching {
                if let Some(t) = zone.absolute(&format!("{}.{name}.{ns}.svc", e.label)) {
                    found
                        .records
                        .push(RData::SRV(SRV::new(0, weight, p, t.clone())));
                    found.additionals.push(record(t, addr(e.ip)));
                }
            }
        }
        ServiceKind::ExternalName(_) => {}
    }
    if found.records.is_empty() {
        // No such port: the name does not exist.
        return Found::nx();
    }
    found
}

/// Fills the answer (or NXDOMAIN/NODATA with the zone's SOA) for `query`.
fn answer(resp: &mut Message, zone: &Zone, query: &Query, found: Found) {
    let qtype = query.query_type();
    if found.nxdomain {
        resp.metadata.response_code = ResponseCode::NXDomain;
        resp.add_authority(soa(zone));
        return;
    }
    let cname = found
        .records
        .iter()
        .find(|r| matches!(r, RData::CNAME(_)))
        .cloned();
    let matching: Vec<RData> = match (&cname, qtype) {
        // A name with a CNAME has no other data: the CNAME answers every type.
        (Some(c), _) => vec![c.clone()],
        (None, RecordType::ANY) => found.records.clone(),
        (None, t) => found
            .records
            .iter()
            .filter(|r| r.record_type() == t)
            .cloned()
            .collect(),
    };
    if matching.is_empty() {
        resp.add_authority(soa(zone));
        return;
    }
    let is_srv = matching.iter().any(|r| matches!(r, RData::SRV(_)));
    for r in matching {
        let r = match r {
            // SRV targets are relative to the zone until here.
            RData::SRV(mut s) if !s.target.is_fqdn() => {
                if let Ok(t) = s.target.clone().append_domain(&zone.name) {
                    s.target = t;
                }
                RData::SRV(s)
            }
            other => other,
        };
        resp.add_answer(record(query.name().clone(), r));
    }
    if is_srv {
        resp.add_additionals(found.additionals);
    }
}

/// The address of a reverse name (`5.0.244.10.in-addr.arpa`, nibbles under `ip6.arpa`).
fn reverse_ip(labels: &[String]) -> Option<IpAddr> {
    let n = labels.len();
    if n == 6 && labels[4] == "in-addr" && labels[5] == "arpa" {
        let mut o = [0u8; 4];
        for (i, l) in labels[..4].iter().enumerate() {
            if l.len() > 1 && l.starts_with('0') {
                return None;
            }
            o[3 - i] = l.parse().ok()?;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(o)));
    }
    if n == 34 && labels[32] == "ip6" && labels[33] == "arpa" {
        let mut v: u128 = 0;
        for l in labels[..32].iter().rev() {
            if l.len() != 1 {
                return None;
            }
            v = (v << 4) | u128::from(u8::from_str_radix(l, 16).ok()?);
        }
        return Some(IpAddr::V6(Ipv6Addr::from(v)));
    }
    None
}

/// The address a pod record's label names (`10-244-0-5`, `fd00--5`).
fn undash(label: &str) -> Option<IpAddr> {
    if label.matches('-').count() == 3 && !label.contains("--") {
        label
            .replace('-', ".")
            .parse::<Ipv4Addr>()
            .ok()
            .map(IpAddr::V4)
    } else {
        label
            .replace('-', ":")
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Metadata;
    use k8s_openapi::api::core::v1::{Namespace, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).expect("service")
    }

    fn view() -> ClusterView {
        let services = vec![
            svc(json!({"metadata": {"name": "web", "namespace": "default"},
                "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                              {"name": "dns", "port": 53, "protocol": "UDP"},
                              {"port": 8080}]}})),
            svc(
                json!({"metadata": {"name": "nginx", "namespace": "default"},
                "spec": {"clusterIP": "None", "ports": [{"name": "web", "port": 80}]}}),
            ),
            svc(json!({"metadata": {"name": "empty", "namespace": "apps"},
                "spec": {"clusterIP": "None"}})),
            svc(json!({"metadata": {"name": "ext", "namespace": "default"},
                "spec": {"type": "ExternalName", "externalName": "example.org"}})),
            svc(
                json!({"metadata": {"name": "kubernetes", "namespace": "default"},
                "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443}]}}),
            ),
        ];
        let slices: Vec<EndpointSlice> = vec![
            serde_json::from_value(json!({
            "metadata": {"name": "nginx-abc", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "nginx"}},
            "addressType": "IPv4",
            "ports": [{"name": "web", "port": 80, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.0.7"], "hostname": "web-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.0.8"], "hostname": "web-1"},
                {"addresses": ["10.244.0.9"], "hostname": "web-2", "conditions": {"ready": false}},
                {"addresses": ["10.244.0.10"]}
            ]}))
            .expect("slice"),
            serde_json::from_value(json!({
                "metadata": {"name": "web-xyz", "namespace": "default",
                    "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["10.244.0.30"]}]}))
            .expect("slice"),
        ];
        let namespaces: Vec<Namespace> = ["default", "kube-system", "idle"]
            .iter()
            .map(|n| serde_json::from_value(json!({"metadata": {"name": n}})).expect("ns"))
            .collect();
        ClusterView::build(&services, &slices, &namespaces)
    }

    fn zone() -> Zone {
        Zone::new("cluster.local").expect("zone")
    }

    fn query_bytes(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 4242;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).expect("name"), t));
        m.to_vec().expect("encode")
    }

    /// Sends `bytes` through the handler and the encoder (UDP) and decodes the answer bytes.
    fn exchange(v: &ClusterView, bytes: &[u8]) -> Message {
        match handle(v, &zone(), bytes) {
            Outcome::Reply(m) => {
                let wire = encode(&m, request_payload(bytes), Transport::Udp).expect("encode");
                Message::from_vec(&wire).expect("decode answer")
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn ask(name: &str, t: RecordType) -> Message {
        exchange(&view(), &query_bytes(name, t))
    }

    fn ips(m: &Message) -> Vec<String> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                RData::AAAA(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect()
    }

    fn assert_header(m: &Metadata, rcode: ResponseCode) {
        assert_eq!(m.id, 4242);
        assert_eq!(m.message_type, MessageType::Response);
        assert_eq!(m.response_code, rcode);
        assert!(m.recursion_desired && m.recursion_available);
    }

    fn assert_soa_authority(m: &Message) {
        assert_eq!(m.authorities.len(), 1, "{m:?}");
        let soa = &m.authorities[0];
        assert_eq!(soa.name.to_ascii(), "cluster.local.");
        match &soa.data {
            RData::SOA(s) => {
                assert_eq!(s.mname.to_ascii(), "ns.dns.cluster.local.");
                assert_eq!(s.minimum, 5);
            }
            other => panic!("not an SOA: {other:?}"),
        }
    }

    #[test]
    fn cluster_ip_service_a_record_with_ttl_5_authoritative() {
        let m = ask("web.default.svc.cluster.local.", RecordType::A);
        assert_header(&m.metadata, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(ips(&m), ["10.96.0.20"]);
        assert_eq!(m.answers[0].ttl, 5);
        assert_eq!(
            m.answers[0].name.to_ascii(),
            "web.default.svc.cluster.local."
        );
        assert_eq!(m.queries.len(), 1);
        assert!(m.authorities.is_empty());
    }

    #[test]
    fn names_match_case_insensitively_and_keep_the_query_spelling() {
        let m = ask("Web.DEFAULT.svc.Cluster.Local.", RecordType::A);
        assert_eq!(ips(&m), ["10.96.0.20"]);
        assert_eq!(
            m.answers[0].name.to_ascii(),
            "Web.DEFAULT.svc.Cluster.Local."
        );
    }

    #[test]
    fn kubernetes_default_service_resolves() {
        let m = ask("kubernetes.default.svc.cluster.local.", RecordType::A);
        assert_eq!(ips(&m), ["10.96.0.1"]);
    }

    #[test]
    fn other_type_of_existing_name_is_nodata_with_soa() {
        let m = ask("web.default.svc.cluster.local.", RecordType::AAAA);
        assert_header(&m.metadata, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert_soa_authority(&m);
        let m = ask("web.default.svc.cluster.local.", RecordType::MX);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn unknown_service_is_nxdomain_with_soa() {
        let m = ask("nosuch.default.svc.cluster.local.", RecordType::A);
        assert_header(&m.metadata, ResponseCode::NXDomain);
        assert!(m.metadata.authoritative);
        assert!(m.answers.is_empty());
        assert_soa_authority(&m);
    }

    #[test]
    fn namespace_and_zone_structure_names() {
        // An existing namespace (even one without Services) is an empty non-terminal.
        for name in [
            "default.svc.cluster.local.",
            "idle.svc.cluster.local.",
            "svc.cluster.local.",
            "pod.cluster.local.",
        ] {
            let m = ask(name, RecordType::A);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
            assert!(m.answers.is_empty(), "{name}");
        }
        for name in [
            "nosuchns.svc.cluster.local.",
            "web.nosuchns.svc.cluster.local.",
            "foo.cluster.local.",
            "a.b.c.d.e.f.cluster.local.",
        ] {
            let m = ask(name, RecordType::A);
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        }
        let m = ask("cluster.local.", RecordType::SOA);
        assert!(matches!(m.answers[0].data, RData::SOA(_)));
        let m = ask("cluster.local.", RecordType::NS);
        match &m.answers[0].data {
            RData::NS(ns) => assert_eq!(ns.0.to_ascii(), "ns.dns.cluster.local."),
            other => panic!("{other:?}"),
        }
        let m = ask("dns-version.cluster.local.", RecordType::TXT);
        match &m.answers[0].data {
            RData::TXT(t) => assert_eq!(t.to_string(), "1.1.0"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn headless_service_answers_ready_endpoints_only() {
        let m = ask("nginx.default.svc.cluster.local.", RecordType::A);
        assert_header(&m.metadata, ResponseCode::NoError);
        assert_eq!(ips(&m), ["10.244.0.7", "10.244.0.8", "10.244.0.10"]);
        // A headless Service without ready endpoints exists, with no addresses.
        let m = ask("empty.apps.svc.cluster.local.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert_soa_authority(&m);
    }

    #[test]
    fn statefulset_pod_names_behind_a_headless_service() {
        let m = ask("web-0.nginx.default.svc.cluster.local.", RecordType::A);
        assert_eq!(ips(&m), ["10.244.0.7"]);
        let m = ask("web-1.nginx.default.svc.cluster.local.", RecordType::A);
        assert_eq!(ips(&m), ["10.244.0.8"]);
        // Not ready: not published.
        let m = ask("web-2.nginx.default.svc.cluster.local.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        // Without a hostname an endpoint is named by its dashed address.
        let m = ask(
            "10-244-0-10.nginx.default.svc.cluster.local.",
            RecordType::A,
        );
        assert_eq!(ips(&m), ["10.244.0.10"]);
        let m = ask("web-9.nginx.default.svc.cluster.local.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    fn srvs(m: &Message) -> Vec<(u16, u16, u16, String)> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some((s.priority, s.weight, s.port, s.target.to_ascii())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn srv_of_a_named_port_of_a_cluster_ip_service() {
        let m = ask("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV);
        assert_header(&m.metadata, ResponseCode::NoError);
        assert_eq!(
            srvs(&m),
            [(0, 100, 80, "web.default.svc.cluster.local.".to_string())]
        );
        assert_eq!(m.additionals.len(), 1);
        assert_eq!(
            m.additionals[0].name.to_ascii(),
            "web.default.svc.cluster.local."
        );
        let m = ask("_dns._udp.web.default.svc.cluster.local.", RecordType::SRV);
        assert_eq!(srvs(&m)[0].2, 53);
        // Wrong protocol, unknown port: no such name.
        for name in [
            "_http._udp.web.default.svc.cluster.local.",
            "_nope._tcp.web.default.svc.cluster.local.",
            "_http._tcp.nosuch.default.svc.cluster.local.",
        ] {
            let m = ask(name, RecordType::SRV);
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        }
        // The SRV name exists: an A query there is NODATA.
        let m = ask("_http._tcp.web.default.svc.cluster.local.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        let m = ask("_tcp.web.default.svc.cluster.local.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    }

    #[test]
    fn srv_of_a_headless_service_names_each_endpoint() {
        let m = ask(
            "_web._tcp.nginx.default.svc.cluster.local.",
            RecordType::SRV,
        );
        let mut got = srvs(&m);
        got.sort();
        assert_eq!(
            got,
            [
                (
                    0,
                    33,
                    80,
                    "10-244-0-10.nginx.default.svc.cluster.local.".to_string()
                ),
                (
                    0,
                    33,
                    80,
                    "web-0.nginx.default.svc.cluster.local.".to_string()
                ),
                (
                    0,
                    33,
                    80,
                    "web-1.nginx.default.svc.cluster.local.".to_string()
                ),
            ]
        );
        assert_eq!(m.additionals.len(), 3);
    }

    #[test]
    fn ptr_for_cluster_ips_and_headless_endpoints() {
        let m = ask("20.0.96.10.in-addr.arpa.", RecordType::PTR);
        assert_header(&m.metadata, ResponseCode::NoError);
        match &m.answers[0].data {
            RData::PTR(p) => assert_eq!(p.0.to_ascii(), "web.default.svc.cluster.local."),
            other => panic!("{other:?}"),
        }
        assert_eq!(m.answers[0].ttl, 5);
        let m = ask("7.0.244.10.in-addr.arpa.", RecordType::PTR);
        match &m.answers[0].data {
            RData::PTR(p) => assert_eq!(p.0.to_ascii(), "web-0.nginx.default.svc.cluster.local."),
            other => panic!("{other:?}"),
        }
        // Unknown addresses fall through to the upstream resolvers.
        assert!(matches!(
            handle(
                &view(),
                &zone(),
                &query_bytes("1.1.168.192.in-addr.arpa.", RecordType::PTR)
            ),
            Outcome::Forward
        ));
    }

    #[test]
    fn external_name_is_a_cname() {
        for t in [RecordType::A, RecordType::CNAME, RecordType::AAAA] {
            let m = ask("ext.default.svc.cluster.local.", t);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            match &m.answers[0].data {
                RData::CNAME(c) => assert_eq!(c.0.to_ascii(), "example.org."),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn pod_records_decode_the_dashed_address() {
        let m = ask("10-244-0-5.default.pod.cluster.local.", RecordType::A);
        assert_eq!(ips(&m), ["10.244.0.5"]);
        let m = ask("10-244-0-5.nosuchns.pod.cluster.local.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = ask("10-244-0-999.default.pod.cluster.local.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn names_outside_the_zone_are_forwarded() {
        for name in ["example.org.", "cluster.local.example.org.", "local."] {
            assert!(matches!(
                handle(&view(), &zone(), &query_bytes(name, RecordType::A)),
                Outcome::Forward
            ));
        }
    }

    #[test]
    fn malformed_queries_get_formerr_or_nothing() {
        // Too short for a header: nothing to answer.
        assert!(matches!(
            handle(&view(), &zone(), &[1, 2, 3]),
            Outcome::Drop
        ));
        // A header whose question runs past the end.
        let mut bytes = query_bytes("web.default.svc.cluster.local.", RecordType::A);
        bytes.truncate(20);
        let m = exchange(&view(), &bytes);
        assert_eq!(m.metadata.id, 4242);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // Garbage after a header.
        let mut junk = vec![0x10, 0x92, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
        junk.extend_from_slice(&[0xff; 40]);
        let m = exchange(&view(), &junk);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // Two questions.
        let mut q = Message::query();
        q.metadata.id = 4242;
        q.add_query(Query::query(
            Name::from_ascii("a.cluster.local.").expect("n"),
            RecordType::A,
        ));
        q.add_query(Query::query(
            Name::from_ascii("b.cluster.local.").expect("n"),
            RecordType::A,
        ));
        let m = exchange(&view(), &q.to_vec().expect("encode"));
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // No question at all.
        let mut q = Message::query();
        q.metadata.id = 4242;
        let m = exchange(&view(), &q.to_vec().expect("encode"));
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // A response is never answered.
        let mut r = Message::response(4242, OpCode::Query);
        r.add_query(Query::query(
            Name::from_ascii("a.cluster.local.").expect("n"),
            RecordType::A,
        ));
        assert!(matches!(
            handle(&view(), &zone(), &r.to_vec().expect("encode")),
            Outcome::Drop
        ));
    }

    #[test]
    fn other_opcodes_transfers_and_classes() {
        let mut q = Message::new(4242, MessageType::Query, OpCode::Status);
        q.add_query(Query::query(
            Name::from_ascii("web.default.svc.cluster.local.").expect("n"),
            RecordType::A,
        ));
        let m = exchange(&view(), &q.to_vec().expect("encode"));
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
        let m = ask("cluster.local.", RecordType::AXFR);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        let mut q = Message::query();
        q.metadata.id = 4242;
        let mut query = Query::query(
            Name::from_ascii("web.default.svc.cluster.local.").expect("n"),
            RecordType::A,
        );
        query.set_query_class(DNSClass::CH);
        q.add_query(query);
        let m = exchange(&view(), &q.to_vec().expect("encode"));
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn edns_is_echoed_and_large_udp_answers_are_truncated() {
        let mut q = Message::query();
        q.metadata.id = 4242;
        q.add_query(Query::query(
            Name::from_ascii("web.default.svc.cluster.local.").expect("n"),
            RecordType::A,
        ));
        let mut e = Edns::new();
        e.set_max_payload(4096);
        q.set_edns(e);
        let m = exchange(&view(), &q.to_vec().expect("encode"));
        assert_eq!(m.edns.as_ref().map(Edns::max_payload), Some(1232));
        assert_eq!(ips(&m), ["10.96.0.20"]);

        // 100 endpoints do not fit into 512 bytes: TC set, the client retries over TCP.
        let services = vec![svc(
            json!({"metadata": {"name": "big", "namespace": "default"},
            "spec": {"clusterIP": "None"}}),
        )];
        let eps: Vec<_> = (1..=100)
            .map(|i| json!({"addresses": [format!("10.244.1.{i}")]}))
            .collect();
        let slices: Vec<EndpointSlice> = vec![
            serde_json::from_value(json!({
                "metadata": {"name": "big-1", "namespace": "default",
                    "labels": {"kubernetes.io/service-name": "big"}},
                "addressType": "IPv4", "endpoints": eps}))
            .expect("slice"),
        ];
        let big = ClusterView::build(&services, &slices, &[]);
        let bytes = query_bytes("big.default.svc.cluster.local.", RecordType::A);
        let m = exchange(&big, &bytes);
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
        let Outcome::Reply(full) = handle(&big, &zone(), &bytes) else {
            panic!("no reply")
        };
        let wire = encode(&full, u16::MAX, Transport::Tcp).expect("encode");
        let m = Message::from_vec(&wire).expect("decode");
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 100);
    }

    #[test]
    fn reverse_names_parse() {
        let l = |s: &str| -> Vec<String> { s.split('.').map(str::to_string).collect() };
        assert_eq!(
            reverse_ip(&l("5.0.244.10.in-addr.arpa")),
            Some("10.244.0.5".parse().expect("ip"))
        );
        assert_eq!(reverse_ip(&l("05.0.244.10.in-addr.arpa")), None);
        assert_eq!(reverse_ip(&l("0.244.10.in-addr.arpa")), None);
        let v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa";
        assert_eq!(reverse_ip(&l(v6)), Some("fd00::1".parse().expect("ip")));
    }

    #[test]
    fn dual_stack_service_answers_a_and_aaaa() {
        let services = vec![svc(
            json!({"metadata": {"name": "ds", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.30", "clusterIPs": ["10.96.0.30", "fd00:10:96::30"]}}),
        )];
        let v = ClusterView::build(&services, &[], &[]);
        let m = exchange(
            &v,
            &query_bytes("ds.default.svc.cluster.local.", RecordType::AAAA),
        );
        assert_eq!(ips(&m), ["fd00:10:96::30"]);
        let m = exchange(
            &v,
            &query_bytes("ds.default.svc.cluster.local.", RecordType::A),
        );
        assert_eq!(ips(&m), ["10.96.0.30"]);
        let rev = "0.3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa.";
        let m = exchange(&v, &query_bytes(rev, RecordType::PTR));
        match &m.answers[0].data {
            RData::PTR(p) => assert_eq!(p.0.to_ascii(), "ds.default.svc.cluster.local."),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_cluster_domains_are_rejected() {
        assert!(Zone::new("").is_err());
        assert!(Zone::new("a..b").is_err());
        assert!(Zone::new("cluster.local.").is_ok());
    }
}
