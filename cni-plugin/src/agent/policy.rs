//! NetworkPolicy (networking.k8s.io/v1) enforcement: the policies, pods and namespaces rendered
//! into the agent's own `ip` table, beside the Services' rules, so that one `nft -f`
//! transaction carries both (no gap while rules are rewritten).
//!
//! Where the filtering happens: pods on the node bridge talk to each other *bridged*, not
//! routed. The agent already sets `net.bridge.bridge-nf-call-iptables=1` (see `sysctl.rs`; the
//! Services need it so that DNAT of pod-to-pod Service traffic is undone on the reply), so every
//! IPv4 packet between pods, bridged or routed, passes the `ip` family's prerouting and forward
//! hooks. Filtering in the `ip` forward hook therefore sees all pod traffic, after the
//! Services' prerouting DNAT: traffic through a Service is judged by the backend pod's real
//! address, as Kubernetes requires. (A `bridge` family table would see bridged frames only, not
//! the traffic routed to and from other nodes, and would need its own copy of the state.)
//!
//! Layout, in the same table as the Services:
//! - two base chains on the forward hook, `policy-egress-hook` (priority filter + 5) and
//!   `policy-ingress-hook` (filter + 10). Separate base chains, because an `accept` ends only
//!   the base chain it is in: a packet allowed out of its source pod is still judged by its
//!   destination pod's ingress policies. Each first accepts `ct state established,related`
//!   (return traffic of allowed connections), then sends packets from egress-isolated /
//!   to ingress-isolated pods of this node (sets `policy-egress-isolated`,
//!   `policy-ingress-isolated`) through `policy-egress` / `policy-ingress`;
//! - those chains hand the packet to every policy selecting the pod (`ip saddr @np-…-pods jump
//!   np-…-egress`), whose rules `accept` what the policy allows; what no policy allows falls
//!   through to `drop` (the union of all policies);
//! - a pod peer is a set of pod addresses (`np-peers-<hash of the peer's selectors>`) shared by
//!   every rule of every policy with the same peer, so that "all namespaces" or "namespace
//!   team=x" is one set however many policies name it, and a label change is a small change of
//!   it; a named port is the set `np-port-<proto>-<name>` of `pod address . protocol . port`
//!   resolved from the pods' container ports;
//! - a policy's own chains and sets are named `np-<ns>/<name>-…`, shortened with a hash when a
//!   long namespace and name would break the kernel's 255-byte name limit.
//!
//! The node itself may always reach its pods (kubelet probes): its traffic leaves through the
//! output hook, not forward, and packets the forward hook sees from one of the node's own
//! addresses are accepted too (`fib saddr type local`), as Kubernetes CNIs allow the host.
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lotse_core::selectors::label_selector_matches;

use super::model::Protocol;
use super::render::{Chain, Ruleset, Set};

/// The label every namespace carries with its own name (Kubernetes sets it; we assume it even
/// when the API server did not).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The API objects policy enforcement depends on.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// All pods of the cluster.
    pub pods: Vec<Arc<Pod>>,
    /// All namespaces.
    pub namespaces: Vec<Arc<Namespace>>,
    /// All NetworkPolicies.
    pub policies: Vec<Arc<NetworkPolicy>>,
}

/// A pod as policies see it.
#[derive(Debug, Clone)]
struct PodInfo<'a> {
    namespace: &'a str,
    labels: &'a BTreeMap<String, String>,
    ip: Ipv4Addr,
    local: bool,
    /// Container ports: (name, protocol, port).
    ports: Vec<(&'a str, Protocol, u16)>,
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

fn pod_info<'a>(pod: &'a Pod, node_name: &str) -> Option<PodInfo<'a>> {
    let spec = pod.spec.as_ref()?;
    if spec.host_network == Some(true) {
        // Host-network pods have the node's address; policies do not apply to them.
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ip = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .chain(status.pod_ip.as_deref())
        .find_map(|ip| ip.parse::<Ipv4Addr>().ok())?;
    let ports = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let name = p.name.as_deref()?;
            let proto = Protocol::parse(p.protocol.as_deref())?;
            let port = u16::try_from(p.container_port).ok()?;
            Some((name, proto, port))
        })
        .collect();
    Some(PodInfo {
        namespace: pod.metadata.namespace.as_deref().unwrap_or(""),
        labels: pod.metadata.labels.as_ref().unwrap_or(&NO_LABELS),
        ip,
        local: spec.node_name.as_deref() == Some(node_name),
        ports,
    })
}

/// Which way a rule looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Ingress,
    Egress,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::Ingress => "ingress",
            Dir::Egress => "egress",
        }
    }
    /// The address of the peer (the other end) of a packet.
    fn peer_addr(self) -> &'static str {
        match self {
            Dir::Ingress => "ip saddr",
            Dir::Egress => "ip daddr",
        }
    }
    /// The address of the selected pod.
    fn pod_addr(self) -> &'static str {
        match self {
            Dir::Ingress => "ip daddr",
            Dir::Egress => "ip saddr",
        }
    }
}

/// The policy types of `np` after Kubernetes' defaulting: as listed, or, when none are,
/// Ingress always and Egress when the policy has egress rules.
pub fn policy_types(np: &NetworkPolicy) -> (bool, bool) {
    let Some(spec) = &np.spec else {
        return (true, false);
    };
    match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

fn new_set(r: &mut Ruleset, name: &str, kind_decl: &str, elements: BTreeSet<String>) {
    r.sets.insert(
        name.to_string(),
        Set {
            kind: "set",
            decl: kind_decl.to_string(),
            elements: elements.into_iter().map(|e| (e, None)).collect(),
        },
    );
}

fn new_chain(r: &mut Ruleset, name: &str, decl: &str, rules: Vec<String>) {
    r.chains.insert(
        name.to_string(),
        Chain {
            decl: decl.to_string(),
            rules,
        },
    );
}

const ADDR_SET: &str = "type ipv4_addr ;";
const NAMED_PORT_SET: &str = "type ipv4_addr . inet_proto . inet_service ;";

/// The kernel's limit on set and chain names is 255 bytes (`NFT_SET_MAXNAMELEN`,
/// `NFT_CHAIN_MAXNAMELEN` 256 with the NUL); names are kept well below it, with room for the
/// suffixes added to a policy's key.
const MAX_KEY_LEN: usize = 200;

/// FNV-1a, 64 bits: stable names for shared sets and shortened keys (the same input gives the
/// same name in every sync and every agent, so diffs stay small).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `np-<ns>/<name>`, the prefix of a policy's chains and sets; shortened with a hash when a
/// long namespace and policy name (up to 63 + 253 characters) would break the kernel's limit.
fn policy_key(ns: &str, name: &str) -> String {
    let key = format!("np-{ns}/{name}");
    if key.len() <= MAX_KEY_LEN {
        return key;
    }
    let mut cut = MAX_KEY_LEN - 17;
    while !key.is_char_boundary(cut) {
        cut -= 1;
    }
    // `_` is never part of a Kubernetes name, so no short key looks like a shortened one.
    format!("{}_{:016x}", &key[..cut], fnv1a(&key))
}

/// The pods and namespaces of one render, indexed for selection.
struct World<'a> {
    /// Pods by namespace.
    by_ns: BTreeMap<&'a str, Vec<PodInfo<'a>>>,
    /// Namespace labels (with [`NAMESPACE_NAME_LABEL`]).
    ns_labels: BTreeMap<&'a str, BTreeMap<String, String>>,
}

/// Sets shared by all policies of a render: pod peers by selector (identical peers in many
/// policies — "all namespaces", "namespace team=x" — are one set, and a label change is a
/// small change of that one set), named ports by name and protocol.
#[derive(Default)]
struct SharedSets {
    /// Peer key → set name.
    peers: BTreeMap<String, String>,
}

impl World<'_> {
    fn pods(&self) -> impl Iterator<Item = &PodInfo<'_>> {
        self.by_ns.values().flatten()
    }
}

/// Adds the policy chains and sets for `objs` to `r` (the rule set of node `node_name`).
pub fn render(r: &mut Ruleset, node_name: &str, objs: &Objects) {
    let mut by_ns: BTreeMap<&str, Vec<PodInfo>> = BTreeMap::new();
    for p in objs.pods.iter().filter_map(|p| pod_info(p, node_name)) {
        by_ns.entry(p.namespace).or_default().push(p);
    }
    let ns_labels: BTreeMap<&str, BTreeMap<String, String>> = objs
        .namespaces
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.as_deref()?;
            let mut labels = n.metadata.labels.clone().unwrap_or_default();
            labels
                .entry(NAMESPACE_NAME_LABEL.to_string())
                .or_insert_with(|| name.to_string());
            Some((name, labels))
        })
        .collect();
    let world = World { by_ns, ns_labels };
    let mut shared = SharedSets::default();
    let mut isolated: [BTreeSet<String>; 2] = Default::default();
    let mut dispatch: [Vec<String>; 2] = Default::default();
    let mut policies: Vec<&NetworkPolicy> = objs.policies.iter().map(|p| p.as_ref()).collect();
    policies.sort_by_key(|p| (p.metadata.namespace.clone(), p.metadata.name.clone()));
    let empty = LabelSelector::default();
    for np in policies {
        let (Some(ns), Some(name), Some(spec)) = (
            np.metadata.namespace.as_deref(),
            np.metadata.name.as_deref(),
            np.spec.as_ref(),
        ) else {
            continue;
        };
        let selector = spec.pod_selector.as_ref().unwrap_or(&empty);
        let targets: Vec<&PodInfo> = world
            .by_ns
            .get(ns)
            .into_iter()
            .flatten()
            .filter(|p| p.local && label_selector_matches(selector, p.labels))
            .collect();
        if targets.is_empty() {
            // Nothing of this node is selected: no rules needed here.
            continue;
        }
        let key = policy_key(ns, name);
        let (ingress, egress) = policy_types(np);
        let target_ips: BTreeSet<String> = targets.iter().map(|p| p.ip.to_string()).collect();
        new_set(r, &format!("{key}-pods"), ADDR_SET, target_ips.clone());
        for (i, (on, dir)) in [(ingress, Dir::Ingress), (egress, Dir::Egress)]
            .into_iter()
            .enumerate()
        {
            if !on {
                continue;
            }
            isolated[i].extend(target_ips.iter().cloned());
            let chain = format!("{key}-{}", dir.name());
            dispatch[i].push(format!("{} @{key}-pods jump {chain}", dir.pod_addr()));
            let mut rules = Vec::new();
            let rule_list: Vec<(&[NetworkPolicyPeer], &[NetworkPolicyPort])> = match dir {
                Dir::Ingress => spec
                    .ingress
                    .iter()
                    .flatten()
                    .map(|r| {
                        (
                            r.from.as_deref().unwrap_or(&[]),
                            r.ports.as_deref().unwrap_or(&[]),
                        )
                    })
                    .collect(),
                Dir::Egress => spec
                    .egress
                    .iter()
                    .flatten()
                    .map(|r| {
                        (
                            r.to.as_deref().unwrap_or(&[]),
                            r.ports.as_deref().unwrap_or(&[]),
                        )
                    })
                    .collect(),
            };
            for (peers, ports) in rule_list {
                let peer_alts = peer_matches(r, &mut shared, dir, ns, peers, &world);
                let port_alts = port_matches(r, ports, &world);
                for peer in &peer_alts {
                    for port in &port_alts {
                        let m = [peer.as_str(), port.as_str()]
                            .iter()
                            .filter(|s| !s.is_empty())
                            .copied()
                            .collect::<Vec<_>>()
                            .join(" ");
                        rules.push(if m.is_empty() {
                            "accept".to_string()
                        } else {
                            format!("{m} accept")
                        });
                    }
                }
            }
            new_chain(r, &chain, "", rules);
        }
    }
    new_set(
        r,
        "policy-ingress-isolated",
        "type ipv4_addr ; comment \"pods of this node selected by an Ingress policy\" ;",
        std::mem::take(&mut isolated[0]),
    );
    new_set(
        r,
        "policy-egress-isolated",
        "type ipv4_addr ; comment \"pods of this node selected by an Egress policy\" ;",
        std::mem::take(&mut isolated[1]),
    );
    let [mut ingress_dispatch, mut egress_dispatch] = dispatch;
    ingress_dispatch.push("drop".into());
    egress_dispatch.push("drop".into());
    new_chain(r, "policy-ingress", "", ingress_dispatch);
    new_chain(r, "policy-egress", "", egress_dispatch);
    new_chain(
        r,
        "policy-ingress-hook",
        "{ type filter hook forward priority filter + 10 ; }",
        vec![
            "ct state established,related accept".into(),
            "fib saddr type local accept comment \"the node may always reach its pods\"".into(),
            "ip daddr @policy-ingress-isolated jump policy-ingress".into(),
        ],
    );
    new_chain(
        r,
        "policy-egress-hook",
        "{ type filter hook forward priority filter + 5 ; }",
        vec![
            "ct state established,related accept".into(),
            "ip saddr @policy-egress-isolated jump policy-egress".into(),
        ],
    );
}

/// The match texts of a rule's peers, one per alternative (OR); `[""]` (anything) when the
/// rule names no peers. Each pod peer is a set shared by every rule with the same peer.
fn peer_matches(
    r: &mut Ruleset,
    shared: &mut SharedSets,
    dir: Dir,
    policy_ns: &str,
    peers: &[NetworkPolicyPeer],
    world: &World,
) -> Vec<String> {
    if peers.is_empty() {
        return vec![String::new()];
    }
    let addr = dir.peer_addr();
    let mut alts = Vec::new();
    let all = LabelSelector::default();
    for peer in peers {
        if let Some(block) = &peer.ip_block {
            // An unparsable (or IPv6) block matches no IPv4 packet.
            let Ok(cidr) = block.cidr.parse::<Ipv4Net>() else {
                continue;
            };
            let except: Vec<String> = block
                .except
                .iter()
                .flatten()
                .filter_map(|e| e.parse::<Ipv4Net>().ok())
                .map(|e| e.trunc().to_string())
                .collect();
            let mut m = format!("{addr} {}", cidr.trunc());
            if !except.is_empty() {
                m.push_str(&format!(" {addr} != {{ {} }}", except.join(", ")));
            }
            alts.push(m);
            continue;
        }
        if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
            continue;
        }
        let pod_sel = peer.pod_selector.as_ref().unwrap_or(&all);
        // Without a namespaceSelector the peer is in the policy's namespace.
        let peer_key = match &peer.namespace_selector {
            None => format!("ns={policy_ns} pods={pod_sel:?}"),
            Some(ns_sel) => format!("namespaces={ns_sel:?} pods={pod_sel:?}"),
        };
        let set = match shared.peers.get(&peer_key) {
            Some(set) => set.clone(),
            None => {
                let set = format!("np-peers-{:016x}", fnv1a(&peer_key));
                let namespaces: Vec<&str> = match &peer.namespace_selector {
                    None => vec![policy_ns],
                    Some(sel) => world
                        .ns_labels
                        .iter()
                        .filter(|(_, l)| label_selector_matches(sel, l))
                        .map(|(n, _)| *n)
                        .collect(),
                };
                let ips: BTreeSet<String> = namespaces
                    .iter()
                    .filter_map(|n| world.by_ns.get(n))
                    .flatten()
                    .filter(|p| label_selector_matches(pod_sel, p.labels))
                    .map(|p| p.ip.to_string())
                    .collect();
                new_set(r, &set, ADDR_SET, ips);
                shared.peers.insert(peer_key, set.clone());
                set
            }
        };
        alts.push(format!("{addr} @{set}"));
    }
    alts
}

/// The match texts of a rule's ports, one per alternative (OR); `[""]` (any port) when the
/// rule names none. A named port is the set `np-port-<proto>-<name>` of `pod address .
/// protocol . port` of every pod declaring it: the destination of the packet is a selected
/// pod (ingress) or any pod (egress), and the port is resolved on it.
fn port_matches(r: &mut Ruleset, ports: &[NetworkPolicyPort], world: &World) -> Vec<String> {
    if ports.is_empty() {
        return vec![String::new()];
    }
    let mut alts = Vec::new();
    for p in ports {
        let Some(proto) = Protocol::parse(p.protocol.as_deref()) else {
            continue;
        };
        let l4 = proto.nft();
        match &p.port {
            None => alts.push(format!("meta l4proto {l4}")),
            Some(IntOrString::Int(n)) => {
                let Ok(n) = u16::try_from(*n) else { continue };
                let end = p
                    .end_port
                    .and_then(|e| u16::try_from(e).ok())
                    .filter(|e| *e > n);
                alts.push(match end {
                    Some(e) => format!("meta l4proto {l4} th dport {n}-{e}"),
                    None => format!("meta l4proto {l4} th dport {n}"),
                });
            }
            Some(IntOrString::String(name)) => {
                // A valid port name (IANA_SVC_NAME: at most 15 of a-z, 0-9 and `-`) is a
                // valid part of a set name; anything else matches no pod's port.
                let valid = !name.is_empty()
                    && name.len() <= 15
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if !valid {
                    continue;
                }
                let set = format!("np-port-{l4}-{name}");
                if !r.sets.contains_key(&set) {
                    let elements: BTreeSet<String> = world
                        .pods()
                        .flat_map(|pod| {
                            pod.ports
                                .iter()
                                .filter(|(pn, pp, _)| pn == name && *pp == proto)
                                .map(move |(_, _, port)| format!("{} . {l4} . {port}", pod.ip))
                        })
                        .collect();
                    new_set(r, &set, NAMED_PORT_SET, elements);
                }
                alts.push(format!("ip daddr . meta l4proto . th dport @{set}"));
            }
        }
    }
    alts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::render::{RenderConfig, render as render_services};
    use serde_json::json;

    fn pod(ns: &str, name: &str, labels: serde_json::Value, ip: &str, node: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox",
                    "ports": [{"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
                "status": {"phase": "Running", "podIP": ip}
            }))
            .unwrap(),
        )
    }

    fn ns(name: &str, labels: serde_json::Value) -> Arc<Namespace> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap(),
        )
    }

    fn np(v: serde_json::Value) -> Arc<NetworkPolicy> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn objects(policies: Vec<Arc<NetworkPolicy>>) -> Objects {
        Objects {
            pods: vec![
                pod("x", "a", json!({"app": "a"}), "10.244.0.2", "n1"),
                pod("x", "b", json!({"app": "b"}), "10.244.0.3", "n1"),
                pod("y", "a", json!({"app": "a"}), "10.244.0.4", "n1"),
                pod("y", "c", json!({"app": "c"}), "10.244.1.5", "n2"),
            ],
            namespaces: vec![ns("x", json!({})), ns("y", json!({"team": "blue"}))],
            policies,
        }
    }

    fn rendered(objs: &Objects) -> Ruleset {
        let cfg = RenderConfig {
            table: "lotse".into(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            nodeport_ips: vec![],
        };
        let mut r = render_services(&cfg, &[]);
        render(&mut r, "n1", objs);
        r
    }

    /// The policy lines of the full transaction (the Services' are tested in render.rs).
    fn policy_lines(r: &Ruleset) -> Vec<String> {
        r.full_transaction()
            .lines()
            .filter(|l| l.contains("np-") || l.contains("policy-"))
            .map(str::to_string)
            .collect()
    }

    /// `lines` with each shared peer set's hashed name replaced by `np-peers-#<n>`, numbered
    /// in order of first appearance.
    fn normalized(lines: &[String]) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        lines
            .iter()
            .map(|l| {
                let mut out = String::new();
                let mut rest = l.as_str();
                while let Some(i) = rest.find("np-peers-") {
                    let name = &rest[i..(i + 25).min(rest.len())];
                    let n = match names.iter().position(|x| x == name) {
                        Some(n) => n,
                        None => {
                            names.push(name.to_string());
                            names.len() - 1
                        }
                    };
                    out.push_str(&rest[..i]);
                    out.push_str(&format!("np-peers-#{}", n + 1));
                    rest = &rest[(i + 25).min(rest.len())..];
                }
                out.push_str(rest);
                out
            })
            .collect()
    }

    fn check_with_nft(text: &str) {
        match crate::agent::nft::check(text) {
            Ok(()) => {}
            Err(crate::agent::nft::NftError::Missing(_)) => {
                eprintln!("nft not installed: rule text not checked by nft")
            }
            Err(e) => panic!("nft rejects the rules: {e}\n{text}"),
        }
    }

    #[test]
    fn no_policies_leave_everything_open() {
        let r = rendered(&objects(vec![]));
        assert_eq!(
            policy_lines(&r),
            [
                "add set ip lotse policy-egress-isolated { type ipv4_addr ; comment \"pods of this node selected by an Egress policy\" ; }",
                "add set ip lotse policy-ingress-isolated { type ipv4_addr ; comment \"pods of this node selected by an Ingress policy\" ; }",
                "add chain ip lotse policy-egress",
                "add chain ip lotse policy-egress-hook { type filter hook forward priority filter + 5 ; }",
                "add chain ip lotse policy-ingress",
                "add chain ip lotse policy-ingress-hook { type filter hook forward priority filter + 10 ; }",
                "add rule ip lotse policy-egress drop",
                "add rule ip lotse policy-egress-hook ct state established,related accept",
                "add rule ip lotse policy-egress-hook ip saddr @policy-egress-isolated jump policy-egress",
                "add rule ip lotse policy-ingress drop",
                "add rule ip lotse policy-ingress-hook ct state established,related accept",
                "add rule ip lotse policy-ingress-hook fib saddr type local accept comment \"the node may always reach its pods\"",
                "add rule ip lotse policy-ingress-hook ip daddr @policy-ingress-isolated jump policy-ingress",
            ]
        );
        check_with_nft(&r.full_transaction());
    }

    #[test]
    fn deny_all_plus_allow_by_label_namespace_and_block() {
        let deny = np(json!({"metadata": {"name": "deny", "namespace": "x"},
            "spec": {"podSelector": {}}}));
        let allow = np(json!({"metadata": {"name": "allow", "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": "b"}}},
                          {"namespaceSelector": {"matchLabels": {"team": "blue"}}, "podSelector": {"matchLabels": {"app": "c"}}},
                          {"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}}],
                 "ports": [{"port": 8080}, {"port": "http"}, {"protocol": "UDP", "port": 1000, "endPort": 1010}]}]}}));
        let r = rendered(&objects(vec![deny, allow]));
        // #1: app=b in x (x/b); #2: app=c in namespaces team=blue (y/c). The named port's set
        // holds every pod's `http`: the rule only sees packets to the policy's pods.
        let expected = [
            "add set ip lotse np-peers-#1 { type ipv4_addr ; }",
            "add set ip lotse np-peers-#2 { type ipv4_addr ; }",
            "add set ip lotse np-port-tcp-http { type ipv4_addr . inet_proto . inet_service ; }",
            "add set ip lotse np-x/allow-pods { type ipv4_addr ; }",
            "add set ip lotse np-x/deny-pods { type ipv4_addr ; }",
            "add set ip lotse policy-egress-isolated { type ipv4_addr ; comment \"pods of this node selected by an Egress policy\" ; }",
            "add set ip lotse policy-ingress-isolated { type ipv4_addr ; comment \"pods of this node selected by an Ingress policy\" ; }",
            "add chain ip lotse np-x/allow-ingress",
            "add chain ip lotse np-x/deny-ingress",
            "add chain ip lotse policy-egress",
            "add chain ip lotse policy-egress-hook { type filter hook forward priority filter + 5 ; }",
            "add chain ip lotse policy-ingress",
            "add chain ip lotse policy-ingress-hook { type filter hook forward priority filter + 10 ; }",
            "add element ip lotse np-peers-#1 { 10.244.0.3 }",
            "add element ip lotse np-peers-#2 { 10.244.1.5 }",
            "add element ip lotse np-port-tcp-http { 10.244.0.2 . tcp . 8080 }",
            "add element ip lotse np-port-tcp-http { 10.244.0.3 . tcp . 8080 }",
            "add element ip lotse np-port-tcp-http { 10.244.0.4 . tcp . 8080 }",
            "add element ip lotse np-port-tcp-http { 10.244.1.5 . tcp . 8080 }",
            "add element ip lotse np-x/allow-pods { 10.244.0.2 }",
            "add element ip lotse np-x/deny-pods { 10.244.0.2 }",
            "add element ip lotse np-x/deny-pods { 10.244.0.3 }",
            "add element ip lotse policy-ingress-isolated { 10.244.0.2 }",
            "add element ip lotse policy-ingress-isolated { 10.244.0.3 }",
            "add rule ip lotse np-x/allow-ingress ip saddr @np-peers-#1 meta l4proto tcp th dport 8080 accept",
            "add rule ip lotse np-x/allow-ingress ip saddr @np-peers-#1 ip daddr . meta l4proto . th dport @np-port-tcp-http accept",
            "add rule ip lotse np-x/allow-ingress ip saddr @np-peers-#1 meta l4proto udp th dport 1000-1010 accept",
            "add rule ip lotse np-x/allow-ingress ip saddr @np-peers-#2 meta l4proto tcp th dport 8080 accept",
            "add rule ip lotse np-x/allow-ingress ip saddr @np-peers-#2 ip daddr . meta l4proto . th dport @np-port-tcp-http accept",
            "add rule ip lotse np-x/allow-ingress ip saddr @np-peers-#2 meta l4proto udp th dport 1000-1010 accept",
            "add rule ip lotse np-x/allow-ingress ip saddr 192.0.2.0/24 ip saddr != { 192.0.2.128/25 } meta l4proto tcp th dport 8080 accept",
            "add rule ip lotse np-x/allow-ingress ip saddr 192.0.2.0/24 ip saddr != { 192.0.2.128/25 } ip daddr . meta l4proto . th dport @np-port-tcp-http accept",
            "add rule ip lotse np-x/allow-ingress ip saddr 192.0.2.0/24 ip saddr != { 192.0.2.128/25 } meta l4proto udp th dport 1000-1010 accept",
            "add rule ip lotse policy-egress drop",
            "add rule ip lotse policy-egress-hook ct state established,related accept",
            "add rule ip lotse policy-egress-hook ip saddr @policy-egress-isolated jump policy-egress",
            "add rule ip lotse policy-ingress ip daddr @np-x/allow-pods jump np-x/allow-ingress",
            "add rule ip lotse policy-ingress ip daddr @np-x/deny-pods jump np-x/deny-ingress",
            "add rule ip lotse policy-ingress drop",
            "add rule ip lotse policy-ingress-hook ct state established,related accept",
            "add rule ip lotse policy-ingress-hook fib saddr type local accept comment \"the node may always reach its pods\"",
            "add rule ip lotse policy-ingress-hook ip daddr @policy-ingress-isolated jump policy-ingress",
        ];
        assert_eq!(normalized(&policy_lines(&r)), expected);
        check_with_nft(&r.full_transaction());
    }

    #[test]
    fn egress_defaulting_and_and_versus_or_peers() {
        // No policyTypes, egress rules present: Ingress and Egress; the egress rule allows DNS
        // to pods labelled app=c in namespaces labelled team=blue (AND), or any pod of x (OR).
        let p = np(json!({"metadata": {"name": "e", "namespace": "y"},
            "spec": {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a"]}]},
                "egress": [{"to": [
                    {"namespaceSelector": {"matchLabels": {"team": "blue"}}, "podSelector": {"matchLabels": {"app": "c"}}},
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}}],
                  "ports": [{"protocol": "UDP", "port": "dns"}, {"protocol": "SCTP", "port": 9}]}]}}));
        assert_eq!(policy_types(&p), (true, true));
        let empty_egress = np(json!({"metadata": {"name": "i", "namespace": "y"},
            "spec": {"podSelector": {}, "egress": []}}));
        assert_eq!(policy_types(&empty_egress), (true, false));
        let r = rendered(&objects(vec![p]));
        let lines = policy_lines(&r);
        for want in [
            "add element ip lotse np-port-udp-dns { 10.244.0.2 . udp . 53 }",
            "add element ip lotse np-y/e-pods { 10.244.0.4 }",
            "add element ip lotse policy-egress-isolated { 10.244.0.4 }",
            "add element ip lotse policy-ingress-isolated { 10.244.0.4 }",
            "add rule ip lotse policy-egress ip saddr @np-y/e-pods jump np-y/e-egress",
            "add rule ip lotse policy-ingress ip daddr @np-y/e-pods jump np-y/e-ingress",
        ] {
            assert!(
                lines.iter().any(|l| l == want),
                "missing {want}\n{lines:#?}"
            );
        }
        // Two peers (OR) × two ports (OR).
        let egress = &r.chains["np-y/e-egress"].rules;
        assert_eq!(egress.len(), 4, "{egress:#?}");
        for rule in egress {
            assert!(
                rule.starts_with("ip daddr @np-peers-")
                    && (rule
                        .ends_with(" ip daddr . meta l4proto . th dport @np-port-udp-dns accept")
                        || rule.ends_with(" meta l4proto sctp th dport 9 accept")),
                "{rule}"
            );
        }
        let peers: BTreeSet<Vec<&str>> = egress
            .iter()
            .filter_map(|rule| rule.split_whitespace().nth(2)?.strip_prefix('@'))
            .map(|set| r.sets[set].elements.keys().map(String::as_str).collect())
            .collect();
        // y/a itself (10.244.0.4) is not among them: it is app=a in team=blue, not app=c.
        assert_eq!(
            peers,
            [vec!["10.244.0.2", "10.244.0.3"], vec!["10.244.1.5"]].into()
        );
        // The ingress chain of the policy exists and has no rules: ingress is denied.
        assert!(r.chains["np-y/e-ingress"].rules.is_empty());
        check_with_nft(&r.full_transaction());
    }

    #[test]
    fn label_change_is_a_small_diff() {
        let allow = np(json!({"metadata": {"name": "allow", "namespace": "x"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]}}));
        let before = rendered(&objects(vec![allow.clone()]));
        let mut objs = objects(vec![allow]);
        objs.namespaces[1] = ns("y", json!({"team": "red"}));
        let after = rendered(&objs);
        let diff: Vec<String> = after
            .diff_transaction(&before)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(
            normalized(&diff).join("\n") + "\n",
            "delete element ip lotse np-peers-#1 { 10.244.0.4 }\n\
             delete element ip lotse np-peers-#1 { 10.244.1.5 }\n"
        );
    }

    #[test]
    fn transactions_between_policy_sets_apply_in_order() {
        let deny = np(json!({"metadata": {"name": "deny", "namespace": "x"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}));
        let allow = np(json!({"metadata": {"name": "allow", "namespace": "x"},
            "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}],
                     "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}]}}));
        let none = rendered(&objects(vec![]));
        let one = rendered(&objects(vec![deny.clone()]));
        let two = rendered(&objects(vec![deny, allow]));
        let Some(ns) = crate::agent::nft::tests::TestNetns::new("policy") else {
            return;
        };
        for text in [
            none.full_transaction(),
            two.diff_transaction(&none).unwrap(),
            one.diff_transaction(&two).unwrap(),
            none.diff_transaction(&one).unwrap(),
            two.diff_transaction(&none).unwrap(),
        ] {
            ns.apply(&text);
        }
        let listing = ns.list();
        assert!(listing.contains("np-x/allow-egress"), "{listing}");
        assert!(
            listing.contains("ip daddr 10.0.0.0/8 ip daddr != 10.1.0.0/16 accept"),
            "{listing}"
        );
    }

    #[test]
    fn host_network_finished_and_remote_pods_are_not_targets() {
        let mut objs = objects(vec![np(
            json!({"metadata": {"name": "deny", "namespace": "x"},
            "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": "http", "protocol": "UDP"}, {"port": "nope"}]}]}}),
        )]);
        let mut host: Pod = (*objs.pods[0]).clone();
        host.metadata.name = Some("host".into());
        if let Some(s) = host.spec.as_mut() {
            s.host_network = Some(true);
        }
        if let Some(s) = host.status.as_mut() {
            s.pod_ip = Some("192.0.2.9".into());
        }
        let mut done: Pod = (*objs.pods[1]).clone();
        if let Some(s) = done.status.as_mut() {
            s.phase = Some("Succeeded".into());
        }
        objs.pods = vec![
            objs.pods[0].clone(),
            Arc::new(host),
            Arc::new(done),
            pod("x", "far", json!({}), "10.244.1.9", "n2"),
        ];
        let r = rendered(&objs);
        let pods: Vec<&String> = r.sets["np-x/deny-pods"].elements.keys().collect();
        assert_eq!(pods, ["10.244.0.2"]);
        // `http` is TCP on the pods, and no pod has `nope`: both sets are empty.
        assert!(r.sets["np-port-udp-http"].elements.is_empty());
        assert!(r.sets["np-port-tcp-nope"].elements.is_empty());
    }

    #[test]
    fn identical_peers_share_one_set() {
        // Three policies allow "all pods of all namespaces" and two "app=b of my namespace"
        // (x and y): two sets for the first (one) and the others (per namespace).
        let all = |ns: &str, name: &str| {
            np(json!({"metadata": {"name": name, "namespace": ns},
                "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}}))
        };
        let b = |ns: &str| {
            np(json!({"metadata": {"name": "b", "namespace": ns},
                "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}]}}))
        };
        let r = rendered(&objects(vec![
            all("x", "one"),
            all("x", "two"),
            all("y", "three"),
            b("x"),
            b("y"),
        ]));
        let peer_sets: Vec<(&String, Vec<&String>)> = r
            .sets
            .iter()
            .filter(|(n, _)| n.starts_with("np-peers-"))
            .map(|(n, s)| (n, s.elements.keys().collect()))
            .collect();
        let mut contents: Vec<Vec<&str>> = peer_sets
            .iter()
            .map(|(_, e)| e.iter().map(|s| s.as_str()).collect())
            .collect();
        contents.sort();
        assert_eq!(
            contents,
            [
                vec![],
                vec!["10.244.0.2", "10.244.0.3", "10.244.0.4", "10.244.1.5"],
                vec!["10.244.0.3"],
            ],
            "{peer_sets:#?}"
        );
        check_with_nft(&r.full_transaction());
    }

    #[test]
    fn long_names_stay_within_the_kernel_limit() {
        let ns_name = "n".repeat(63);
        let policy_name = format!("{}.{}", "p".repeat(200), "q".repeat(52));
        let mut objs = objects(vec![np(
            json!({"metadata": {"name": policy_name, "namespace": ns_name},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                         "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": "http"}]}]}}),
        )]);
        objs.pods
            .push(pod(&ns_name, "long", json!({}), "10.244.0.9", "n1"));
        objs.namespaces.push(ns(&ns_name, json!({})));
        let r = rendered(&objs);
        for name in r.sets.keys().chain(r.chains.keys()) {
            assert!(name.len() < 256, "{name} is {} bytes", name.len());
        }
        let key = policy_key(&ns_name, &policy_name);
        assert!(key.len() <= MAX_KEY_LEN, "{key}");
        assert_eq!(r.sets[&format!("{key}-pods")].elements.len(), 1);
        assert!(r.chains.contains_key(&format!("{key}-ingress")));
        assert!(r.chains.contains_key(&format!("{key}-egress")));
        // Two long names that differ only at their end stay apart.
        assert_ne!(
            key,
            policy_key(&ns_name, &format!("{}.{}", "p".repeat(200), "r".repeat(52)))
        );
        assert_eq!(policy_key("x", "short"), "np-x/short");
        if let Some(netns) = crate::agent::nft::tests::TestNetns::new("longnames") {
            netns.apply(&r.full_transaction());
        }
    }

    #[test]
    fn selectors() {
        let l: BTreeMap<String, String> = [("app".to_string(), "a".to_string())].into();
        let sel = |v: serde_json::Value| serde_json::from_value::<LabelSelector>(v).unwrap();
        assert!(label_selector_matches(&sel(json!({})), &l));
        assert!(label_selector_matches(
            &sel(json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]})),
            &l
        ));
        assert!(label_selector_matches(
            &sel(
                json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["b"]}]})
            ),
            &l
        ));
        assert!(!label_selector_matches(
            &sel(
                json!({"matchExpressions": [{"key": "app", "operator": "Exists"}], "matchLabels": {"x": "y"}})
            ),
            &l
        ));
        assert!(!label_selector_matches(
            &sel(json!({"matchExpressions": [{"key": "app", "operator": "Bogus"}]})),
            &l
        ));
    }
}
