//! The nftables rule set for a node, rendered from [`ServicePort`]s, and the transaction text
//! that gets the kernel there: the whole table (first sync, or after a failure) or only what
//! changed since the last applied [`Ruleset`].
//!
//! The layout follows kube-proxy's nftables mode: one `ip` table of our own; `services`
//! dispatches through the verdict maps `service-ips` (ClusterIP, external and LoadBalancer IPs,
//! keyed by `ip . proto . port`) and `service-nodeports` (`proto . port`, for node addresses in
//! `nodeport-ips`) into one `service-…` chain per Service port (random load balancing with
//! `numgen random mod N vmap`) or its `external-…` chain, then into one `endpoint-…` chain per
//! endpoint (hairpin masquerade, session affinity, DNAT). Service ports without usable endpoints
//! are in `no-endpoint-services` / `no-endpoint-nodeports`, checked in the filter hooks, so
//! their packets are rejected at once (or dropped, when only the Local policy leaves them
//! without endpoints). Packets marked for masquerade and pod egress leaving the cluster network
//! are masqueraded in `nat-postrouting`.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::model::{Endpoint, ServicePort};

/// The packet mark that asks `nat-postrouting` to masquerade (kube-proxy's 0x4000).
pub const MASQUERADE_MARK: &str = "0x4000";

/// Node facts the rules depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderConfig {
    /// Name of our nftables table (family `ip`).
    pub table: String,
    /// The cluster's pod network (`--cluster-cidr`): traffic from elsewhere to a ClusterIP is
    /// masqueraded, and pod traffic leaving it is masqueraded (egress).
    pub cluster_cidr: Ipv4Net,
    /// Addresses that accept NodePort traffic.
    pub nodeport_ips: Vec<Ipv4Addr>,
}

/// A chain: its declaration suffix (`{ type nat hook … ; }` for base chains, empty otherwise) and
/// its rules in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chain {
    /// Text after `add chain ip <table> <name>` (empty for regular chains).
    pub decl: String,
    /// The rules, each the text after `add rule ip <table> <chain>`.
    pub rules: Vec<String>,
}

/// A set or map: its declaration and its elements (key → optional `: verdict` text).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Set {
    /// `set` or `map`.
    pub kind: &'static str,
    /// Text inside `{ … }` of the declaration.
    pub decl: String,
    /// Elements: the key (with a comment, if any) → the value after `:` for maps.
    pub elements: BTreeMap<String, Option<String>>,
}

/// The desired content of our table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    /// Table name.
    pub table: String,
    /// Chains by name.
    pub chains: BTreeMap<String, Chain>,
    /// Sets and maps by name.
    pub sets: BTreeMap<String, Set>,
}

const IP_PROTO_PORT: &str = "ipv4_addr . inet_proto . inet_service";

fn base(cfg: &RenderConfig) -> Ruleset {
    let mut r = Ruleset {
        table: cfg.table.clone(),
        ..Default::default()
    };
    let mut set = |name: &str, kind: &'static str, decl: String| {
        r.sets.insert(
            name.to_string(),
            Set {
                kind,
                decl,
                elements: BTreeMap::new(),
            },
        );
    };
    set(
        "cluster-ips",
        "set",
        "type ipv4_addr ; comment \"Active ClusterIPs\" ;".into(),
    );
    set(
        "nodeport-ips",
        "set",
        "type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ;".into(),
    );
    set(
        "service-ips",
        "map",
        format!(
            "type {IP_PROTO_PORT} : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ;"
        ),
    );
    set(
        "service-nodeports",
        "map",
        "type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ;".into(),
    );
    set(
        "no-endpoint-services",
        "map",
        format!(
            "type {IP_PROTO_PORT} : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ;"
        ),
    );
    set(
        "no-endpoint-nodeports",
        "map",
        "type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ;".into(),
    );
    if let Some(s) = r.sets.get_mut("nodeport-ips") {
        for ip in &cfg.nodeport_ips {
            s.elements.insert(ip.to_string(), None);
        }
    }
    let cidr = cfg.cluster_cidr;
    let mut chain = |name: &str, decl: &str, rules: Vec<String>| {
        r.chains.insert(
            name.to_string(),
            Chain {
                decl: decl.to_string(),
                rules,
            },
        );
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    chain(
        "nat-prerouting",
        "{ type nat hook prerouting priority dstnat ; }",
        s(&["jump services"]),
    );
    chain(
        "nat-output",
        "{ type nat hook output priority -100 ; }",
        s(&["jump services"]),
    );
    chain(
        "nat-postrouting",
        "{ type nat hook postrouting priority srcnat ; }",
        vec![
            "jump masquerading".into(),
            format!(
                "ip saddr {cidr} ip daddr != {cidr} masquerade comment \"pod egress leaving the cluster network\""
            ),
        ],
    );
    chain(
        "filter-forward",
        "{ type filter hook forward priority filter ; }",
        s(&[
            "ct state new jump service-endpoints-check",
            "ct state new jump cluster-ips-check",
        ]),
    );
    chain(
        "filter-input",
        "{ type filter hook input priority filter ; }",
        s(&[
            "ct state new jump nodeport-endpoints-check",
            "ct state new jump service-endpoints-check",
        ]),
    );
    chain(
        "filter-output",
        "{ type filter hook output priority filter ; }",
        s(&[
            "ct state new jump service-endpoints-check",
            "ct state new jump cluster-ips-check",
        ]),
    );
    chain(
        "services",
        "",
        s(&[
            "ip daddr . meta l4proto . th dport vmap @service-ips",
            "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
        ]),
    );
    chain(
        "service-endpoints-check",
        "",
        s(&["ip daddr . meta l4proto . th dport vmap @no-endpoint-services"]),
    );
    chain(
        "nodeport-endpoints-check",
        "",
        s(&["ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"]),
    );
    chain(
        "cluster-ips-check",
        "",
        s(&[
            "ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"",
        ]),
    );
    chain(
        "mark-for-masquerade",
        "",
        vec![format!("mark set mark or {MASQUERADE_MARK}")],
    );
    chain(
        "masquerading",
        "",
        vec![
            format!("mark and {MASQUERADE_MARK} == 0 return"),
            format!("mark set mark xor {MASQUERADE_MARK}"),
            "masquerade fully-random".into(),
        ],
    );
    chain(
        "reject-chain",
        "{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }",
        s(&["reject"]),
    );
    r
}

/// `<service port key>__<ip>/<port>`, the name suffix of an endpoint's chain and affinity set.
fn endpoint_suffix(key: &str, ep: &Endpoint) -> String {
    format!("{key}__{}/{}", ep.ip, ep.port)
}

/// Renders the whole rule set for `ports`.
pub fn render(cfg: &RenderConfig, ports: &[ServicePort]) -> Ruleset {
    let mut r = base(cfg);
    for sp in ports {
        render_service_port(&mut r, cfg, sp);
    }
    r
}

fn add_element(r: &mut Ruleset, set: &str, key: String, value: Option<String>) {
    if let Some(s) = r.sets.get_mut(set) {
        s.elements.insert(key, value);
    }
}

fn render_service_port(r: &mut Ruleset, cfg: &RenderConfig, sp: &ServicePort) {
    let key = sp.key();
    let proto = sp.protocol.nft();
    let cluster_eps = sp.cluster_endpoints();
    let local_eps = sp.local_endpoints();
    let any_endpoints = !cluster_eps.is_empty();
    let cluster_chain = format!("service-{key}");
    let local_chain = format!("local-{key}");
    let external_chain = format!("external-{key}");
    let uses_local = sp.internal_local || sp.external_local;
    let internal_eps = if sp.internal_local {
        &local_eps
    } else {
        &cluster_eps
    };
    let external_eps = if sp.external_local {
        &local_eps
    } else {
        &cluster_eps
    };
    add_element(r, "cluster-ips", sp.cluster_ip.to_string(), None);
    let comment = format!("comment \"{}\"", sp.display_name());
    // The verdict for packets that have nowhere to go: reject when the Service has no usable
    // endpoint at all, drop when only the Local policy leaves none on this node (kube-proxy).
    let nowhere = if any_endpoints {
        "drop"
    } else {
        "goto reject-chain"
    };

    // Endpoint chains, for every endpoint some policy uses.
    let mut used: BTreeSet<&Endpoint> = cluster_eps.iter().copied().collect();
    if uses_local {
        used.extend(local_eps.iter().copied());
    }
    for ep in &used {
        let suffix = endpoint_suffix(&key, ep);
        let mut rules = vec![format!("ip saddr {} jump mark-for-masquerade", ep.ip)];
        if let Some(timeout) = sp.affinity_timeout {
            let set = format!("affinity-{suffix}");
            r.sets.insert(
                set.clone(),
                Set {
                    kind: "set",
                    decl: format!("type ipv4_addr ; flags dynamic,timeout ; timeout {timeout}s ;"),
                    elements: BTreeMap::new(),
                },
            );
            rules.push(format!("update @{set} {{ ip saddr }}"));
        }
        rules.push(format!(
            "meta l4proto {proto} dnat to {}:{}",
            ep.ip, ep.port
        ));
        r.chains.insert(
            format!("endpoint-{suffix}"),
            Chain {
                decl: String::new(),
                rules,
            },
        );
    }

    // The Cluster-policy chain (also where off-cluster clients of the ClusterIP are marked for
    // masquerade, so replies come back through this node).
    if !cluster_eps.is_empty() {
        let mut rules = vec![format!(
            "ip daddr {} ip saddr != {} jump mark-for-masquerade",
            sp.cluster_ip, cfg.cluster_cidr
        )];
        rules.extend(to_endpoints(sp, &key, &cluster_eps));
        r.chains.insert(
            cluster_chain.clone(),
            Chain {
                decl: String::new(),
                rules,
            },
        );
    }
    if uses_local && !local_eps.is_empty() {
        r.chains.insert(
            local_chain.clone(),
            Chain {
                decl: String::new(),
                rules: to_endpoints(sp, &key, &local_eps),
            },
        );
    }

    // ClusterIP traffic.
    let ip_key = |ip: Ipv4Addr| format!("{ip} . {proto} . {}", sp.port);
    let internal_chain = if sp.internal_local {
        &local_chain
    } else {
        &cluster_chain
    };
    if internal_eps.is_empty() {
        add_element(
            r,
            "no-endpoint-services",
            format!("{} {comment}", ip_key(sp.cluster_ip)),
            Some(nowhere.into()),
        );
    } else {
        add_element(
            r,
            "service-ips",
            ip_key(sp.cluster_ip),
            Some(format!("goto {internal_chain}")),
        );
    }

    // NodePort, external IPs and LoadBalancer IPs.
    if !sp.has_external() {
        return;
    }
    let external_ips = sp.external_ips.iter().chain(&sp.load_balancer_ips);
    if external_eps.is_empty() {
        for ip in external_ips {
            add_element(
                r,
                "no-endpoint-services",
                format!("{} {comment}", ip_key(*ip)),
                Some(nowhere.into()),
            );
        }
        if let Some(np) = sp.node_port {
            add_element(
                r,
                "no-endpoint-nodeports",
                format!("{proto} . {np} {comment}"),
                Some(nowhere.into()),
            );
        }
        return;
    }
    let rules = if sp.external_local {
        let mut rules = Vec::new();
        if !cluster_eps.is_empty() {
            rules.push(format!(
                "ip saddr {} goto {cluster_chain} comment \"short-circuit pod traffic\"",
                cfg.cluster_cidr
            ));
            rules.push("fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\"".into());
            rules.push(format!(
                "fib saddr type local goto {cluster_chain} comment \"short-circuit local traffic\""
            ));
        }
        rules.push(format!("goto {local_chain}"));
        rules
    } else {
        vec![
            "jump mark-for-masquerade".to_string(),
            format!("goto {cluster_chain}"),
        ]
    };
    r.chains.insert(
        external_chain.clone(),
        Chain {
            decl: String::new(),
            rules,
        },
    );
    for ip in external_ips {
        add_element(
            r,
            "service-ips",
            ip_key(*ip),
            Some(format!("goto {external_chain}")),
        );
    }
    if let Some(np) = sp.node_port {
        add_element(
            r,
            "service-nodeports",
            format!("{proto} . {np}"),
            Some(format!("goto {external_chain}")),
        );
    }
}

/// Session-affinity lookups, then the random choice among `eps`.
fn to_endpoints(sp: &ServicePort, key: &str, eps: &[&Endpoint]) -> Vec<String> {
    let mut rules = Vec::new();
    if sp.affinity_timeout.is_some() {
        for ep in eps {
            let suffix = endpoint_suffix(key, ep);
            rules.push(format!(
                "ip saddr @affinity-{suffix} goto endpoint-{suffix}"
            ));
        }
    }
    let arms: Vec<String> = eps
        .iter()
        .enumerate()
        .map(|(i, ep)| format!("{i} : goto endpoint-{}", endpoint_suffix(key, ep)))
        .collect();
    rules.push(format!(
        "numgen random mod {} vmap {{ {} }}",
        eps.len(),
        arms.join(" , ")
    ));
    rules
}

fn element_text(key: &str, value: &Option<String>) -> String {
    match value {
        Some(v) => format!("{key} : {v}"),
        None => key.to_string(),
    }
}

impl Ruleset {
    /// The transaction that replaces whatever the table holds with this rule set, in one
    /// step: declarations first (sets, maps, chains), then map elements (which name chains),
    /// then rules (which name sets and chains).
    pub fn full_transaction(&self) -> String {
        let t = &self.table;
        let mut out = String::new();
        // `add` first so that `delete` cannot fail on a missing table.
        let _ = writeln!(out, "add table ip {t}");
        let _ = writeln!(out, "delete table ip {t}");
        let _ = writeln!(
            out,
            "add table ip {t} {{ comment \"rules for lotse-agent\" ; }}"
        );
        for (name, s) in &self.sets {
            let _ = writeln!(out, "add {} ip {t} {name} {{ {} }}", s.kind, s.decl);
        }
        for (name, c) in &self.chains {
            write_chain_decl(&mut out, t, name, c);
        }
        for (name, s) in &self.sets {
            for (k, v) in &s.elements {
                let _ = writeln!(
                    out,
                    "add element ip {t} {name} {{ {} }}",
                    element_text(k, v)
                );
            }
        }
        for (name, c) in &self.chains {
            for rule in &c.rules {
                let _ = writeln!(out, "add rule ip {t} {name} {rule}");
            }
        }
        out
    }

    /// The transaction from `old` (the rule set last applied) to this one, touching only what
    /// changed; `None` when a full transaction is needed instead (another table name, or a set
    /// or chain whose declaration changed).
    pub fn diff_transaction(&self, old: &Ruleset) -> Option<String> {
        if self.table != old.table {
            return None;
        }
        let t = &self.table;
        let mut out = String::new();
        for (name, s) in &self.sets {
            match old.sets.get(name) {
                None => {
                    let _ = writeln!(out, "add {} ip {t} {name} {{ {} }}", s.kind, s.decl);
                }
                Some(o) if o.decl != s.decl || o.kind != s.kind => return None,
                Some(_) => {}
            }
        }
        for (name, c) in &self.chains {
            match old.chains.get(name) {
                None => write_chain_decl(&mut out, t, name, c),
                Some(o) if o.decl != c.decl => return None,
                Some(_) => {}
            }
        }
        // Elements: removed keys (and keys whose verdict changed) go first, then new ones.
        for (name, s) in &self.sets {
            let empty = BTreeMap::new();
            let old_el = old.sets.get(name).map(|o| &o.elements).unwrap_or(&empty);
            for (k, v) in old_el {
                if s.elements.get(k) != Some(v) {
                    let _ = writeln!(
                        out,
                        "delete element ip {t} {name} {{ {} }}",
                        strip_comment(k)
                    );
                }
            }
            for (k, v) in &s.elements {
                if old_el.get(k) != Some(v) {
                    let _ = writeln!(
                        out,
                        "add element ip {t} {name} {{ {} }}",
                        element_text(k, v)
                    );
                }
            }
        }
        for (name, c) in &self.chains {
            match old.chains.get(name) {
                Some(o) if o.rules == c.rules => {}
                Some(_) => {
                    let _ = writeln!(out, "flush chain ip {t} {name}");
                    for rule in &c.rules {
                        let _ = writeln!(out, "add rule ip {t} {name} {rule}");
                    }
                }
                None => {
                    for rule in &c.rules {
                        let _ = writeln!(out, "add rule ip {t} {name} {rule}");
                    }
                }
            }
        }
        // Chains and sets that are gone: emptied first (a chain may jump to another stale
        // chain), deleted after every reference to them is.
        let stale_chains: Vec<&String> = old
            .chains
            .keys()
            .filter(|n| !self.chains.contains_key(*n))
            .collect();
        for name in &stale_chains {
            let _ = writeln!(out, "flush chain ip {t} {name}");
        }
        for name in &stale_chains {
            let _ = writeln!(out, "delete chain ip {t} {name}");
        }
        for (name, s) in &old.sets {
            if !self.sets.contains_key(name) {
                let _ = writeln!(out, "delete {} ip {t} {name}", s.kind);
            }
        }
        Some(out)
    }
}

fn write_chain_decl(out: &mut String, t: &str, name: &str, c: &Chain) {
    if c.decl.is_empty() {
        let _ = writeln!(out, "add chain ip {t} {name}");
    } else {
        let _ = writeln!(out, "add chain ip {t} {name} {}", c.decl);
    }
}

/// An element key without its `comment "…"` (deletion matches on the key alone).
fn strip_comment(k: &str) -> &str {
    match k.find(" comment \"") {
        Some(i) => &k[..i],
        None => k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::model::service_ports;
    use crate::agent::model::tests::{slice, svc};
    use serde_json::json;

    fn cfg() -> RenderConfig {
        RenderConfig {
            table: "lotse".into(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            nodeport_ips: vec!["192.0.2.2".parse().unwrap()],
        }
    }

    fn web_slice(eps: serde_json::Value) -> Arc<k8s_openapi::api::discovery::v1::EndpointSlice> {
        slice(
            json!({"metadata": {"name": "web-abc", "namespace": "ns", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": eps}),
        )
    }
    use std::sync::Arc;

    /// The lines of the transaction that are not part of the base table.
    fn service_lines(text: &str) -> Vec<String> {
        let base = base(&cfg()).full_transaction();
        let base: BTreeSet<&str> = base.lines().collect();
        text.lines()
            .filter(|l| !base.contains(l))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn base_table() {
        let text = render(&cfg(), &[]).full_transaction();
        let expected = r#"add table ip lotse
delete table ip lotse
add table ip lotse { comment "rules for lotse-agent" ; }
add set ip lotse cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }
add map ip lotse no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }
add map ip lotse no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }
add set ip lotse nodeport-ips { type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }
add map ip lotse service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }
add map ip lotse service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }
add chain ip lotse cluster-ips-check
add chain ip lotse filter-forward { type filter hook forward priority filter ; }
add chain ip lotse filter-input { type filter hook input priority filter ; }
add chain ip lotse filter-output { type filter hook output priority filter ; }
add chain ip lotse mark-for-masquerade
add chain ip lotse masquerading
add chain ip lotse nat-output { type nat hook output priority -100 ; }
add chain ip lotse nat-postrouting { type nat hook postrouting priority srcnat ; }
add chain ip lotse nat-prerouting { type nat hook prerouting priority dstnat ; }
add chain ip lotse nodeport-endpoints-check
add chain ip lotse reject-chain { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }
add chain ip lotse service-endpoints-check
add chain ip lotse services
add element ip lotse nodeport-ips { 192.0.2.2 }
add rule ip lotse cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule ip lotse filter-forward ct state new jump service-endpoints-check
add rule ip lotse filter-forward ct state new jump cluster-ips-check
add rule ip lotse filter-input ct state new jump nodeport-endpoints-check
add rule ip lotse filter-input ct state new jump service-endpoints-check
add rule ip lotse filter-output ct state new jump service-endpoints-check
add rule ip lotse filter-output ct state new jump cluster-ips-check
add rule ip lotse mark-for-masquerade mark set mark or 0x4000
add rule ip lotse masquerading mark and 0x4000 == 0 return
add rule ip lotse masquerading mark set mark xor 0x4000
add rule ip lotse masquerading masquerade fully-random
add rule ip lotse nat-output jump services
add rule ip lotse nat-postrouting jump masquerading
add rule ip lotse nat-postrouting ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 masquerade comment "pod egress leaving the cluster network"
add rule ip lotse nat-prerouting jump services
add rule ip lotse nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add rule ip lotse reject-chain reject
add rule ip lotse service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add rule ip lotse services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip lotse services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
"#;
        assert_eq!(text, expected);
        check_with_nft(&text);
    }

    #[test]
    fn cluster_ip_nodeport_and_hairpin() {
        let s = svc(json!({"metadata": {"name": "web", "namespace": "ns"},
            "spec": {"clusterIP": "10.96.0.10", "type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}}));
        let sl = web_slice(json!([
            {"addresses": ["10.244.0.5"], "nodeName": "n1"},
            {"addresses": ["10.244.0.6"], "conditions": {"ready": true}, "nodeName": "n2"},
            {"addresses": ["10.244.0.7"], "conditions": {"ready": false}},
        ]));
        let text = render(&cfg(), &service_ports(&[s], &[sl], "n1")).full_transaction();
        let expected = [
            "add chain ip lotse endpoint-ns/web/tcp/http__10.244.0.5/8080",
            "add chain ip lotse endpoint-ns/web/tcp/http__10.244.0.6/8080",
            "add chain ip lotse external-ns/web/tcp/http",
            "add chain ip lotse service-ns/web/tcp/http",
            "add element ip lotse cluster-ips { 10.96.0.10 }",
            "add element ip lotse service-ips { 10.96.0.10 . tcp . 80 : goto service-ns/web/tcp/http }",
            "add element ip lotse service-nodeports { tcp . 30080 : goto external-ns/web/tcp/http }",
            "add rule ip lotse endpoint-ns/web/tcp/http__10.244.0.5/8080 ip saddr 10.244.0.5 jump mark-for-masquerade",
            "add rule ip lotse endpoint-ns/web/tcp/http__10.244.0.5/8080 meta l4proto tcp dnat to 10.244.0.5:8080",
            "add rule ip lotse endpoint-ns/web/tcp/http__10.244.0.6/8080 ip saddr 10.244.0.6 jump mark-for-masquerade",
            "add rule ip lotse endpoint-ns/web/tcp/http__10.244.0.6/8080 meta l4proto tcp dnat to 10.244.0.6:8080",
            "add rule ip lotse external-ns/web/tcp/http jump mark-for-masquerade",
            "add rule ip lotse external-ns/web/tcp/http goto service-ns/web/tcp/http",
            "add rule ip lotse service-ns/web/tcp/http ip daddr 10.96.0.10 ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
            "add rule ip lotse service-ns/web/tcp/http numgen random mod 2 vmap { 0 : goto endpoint-ns/web/tcp/http__10.244.0.5/8080 , 1 : goto endpoint-ns/web/tcp/http__10.244.0.6/8080 }",
        ];
        assert_eq!(service_lines(&text), expected);
        check_with_nft(&text);
    }

    #[test]
    fn no_endpoints_rejects_and_local_policy_drops() {
        let empty = svc(json!({"metadata": {"name": "empty", "namespace": "ns"},
            "spec": {"clusterIP": "10.96.0.11", "type": "LoadBalancer", "ports": [{"port": 80, "protocol": "UDP", "nodePort": 30081}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.2"}]}}}));
        let local = svc(json!({"metadata": {"name": "web", "namespace": "ns"},
            "spec": {"clusterIP": "10.96.0.10", "type": "NodePort", "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local",
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}}));
        let sl = web_slice(json!([{"addresses": ["10.244.1.5"], "nodeName": "n2"}]));
        let text = render(&cfg(), &service_ports(&[empty, local], &[sl], "n1")).full_transaction();
        let expected = [
            "add chain ip lotse endpoint-ns/web/tcp/http__10.244.1.5/8080",
            "add chain ip lotse service-ns/web/tcp/http",
            "add element ip lotse cluster-ips { 10.96.0.10 }",
            "add element ip lotse cluster-ips { 10.96.0.11 }",
            "add element ip lotse no-endpoint-nodeports { tcp . 30080 comment \"ns/web:http\" : drop }",
            "add element ip lotse no-endpoint-nodeports { udp . 30081 comment \"ns/empty\" : goto reject-chain }",
            "add element ip lotse no-endpoint-services { 10.96.0.10 . tcp . 80 comment \"ns/web:http\" : drop }",
            "add element ip lotse no-endpoint-services { 10.96.0.11 . udp . 80 comment \"ns/empty\" : goto reject-chain }",
            "add element ip lotse no-endpoint-services { 192.0.2.2 . udp . 80 comment \"ns/empty\" : goto reject-chain }",
            "add rule ip lotse endpoint-ns/web/tcp/http__10.244.1.5/8080 ip saddr 10.244.1.5 jump mark-for-masquerade",
            "add rule ip lotse endpoint-ns/web/tcp/http__10.244.1.5/8080 meta l4proto tcp dnat to 10.244.1.5:8080",
            "add rule ip lotse service-ns/web/tcp/http ip daddr 10.96.0.10 ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
            "add rule ip lotse service-ns/web/tcp/http numgen random mod 1 vmap { 0 : goto endpoint-ns/web/tcp/http__10.244.1.5/8080 }",
        ];
        assert_eq!(service_lines(&text), expected);
        check_with_nft(&text);
    }

    #[test]
    fn external_local_and_affinity() {
        let s = svc(json!({"metadata": {"name": "web", "namespace": "ns"},
            "spec": {"clusterIP": "10.96.0.10", "type": "NodePort", "externalTrafficPolicy": "Local",
                     "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}}));
        let sl = web_slice(json!([
            {"addresses": ["10.244.0.5"], "nodeName": "n1"},
            {"addresses": ["10.244.1.5"], "nodeName": "n2"},
        ]));
        let text = render(&cfg(), &service_ports(&[s], &[sl], "n1")).full_transaction();
        let lines = service_lines(&text);
        let expected = [
            "add set ip lotse affinity-ns/web/tcp/http__10.244.0.5/8080 { type ipv4_addr ; flags dynamic,timeout ; timeout 60s ; }",
            "add set ip lotse affinity-ns/web/tcp/http__10.244.1.5/8080 { type ipv4_addr ; flags dynamic,timeout ; timeout 60s ; }",
            "add chain ip lotse endpoint-ns/web/tcp/http__10.244.0.5/8080",
            "add chain ip lotse endpoint-ns/web/tcp/http__10.244.1.5/8080",
            "add chain ip lotse external-ns/web/tcp/http",
            "add chain ip lotse local-ns/web/tcp/http",
            "add chain ip lotse service-ns/web/tcp/http",
            "add element ip lotse cluster-ips { 10.96.0.10 }",
            "add element ip lotse service-ips { 10.96.0.10 . tcp . 80 : goto service-ns/web/tcp/http }",
            "add element ip lotse service-nodeports { tcp . 30080 : goto external-ns/web/tcp/http }",
            "add rule ip lotse endpoint-ns/web/tcp/http__10.244.0.5/8080 ip saddr 10.244.0.5 jump mark-for-masquerade",
            "add rule ip lotse endpoint-ns/web/tcp/http__10.244.0.5/8080 update @affinity-ns/web/tcp/http__10.244.0.5/8080 { ip saddr }",
            "add rule ip lotse endpoint-ns/web/tcp/http__10.244.0.5/8080 meta l4proto tcp dnat to 10.244.0.5:8080",
            "add rule ip lotse endpoint-ns/web/tcp/http__10.244.1.5/8080 ip saddr 10.244.1.5 jump mark-for-masquerade",
            "add rule ip lotse endpoint-ns/web/tcp/http__10.244.1.5/8080 update @affinity-ns/web/tcp/http__10.244.1.5/8080 { ip saddr }",
            "add rule ip lotse endpoint-ns/web/tcp/http__10.244.1.5/8080 meta l4proto tcp dnat to 10.244.1.5:8080",
            "add rule ip lotse external-ns/web/tcp/http ip saddr 10.244.0.0/16 goto service-ns/web/tcp/http comment \"short-circuit pod traffic\"",
            "add rule ip lotse external-ns/web/tcp/http fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\"",
            "add rule ip lotse external-ns/web/tcp/http fib saddr type local goto service-ns/web/tcp/http comment \"short-circuit local traffic\"",
            "add rule ip lotse external-ns/web/tcp/http goto local-ns/web/tcp/http",
            "add rule ip lotse local-ns/web/tcp/http ip saddr @affinity-ns/web/tcp/http__10.244.0.5/8080 goto endpoint-ns/web/tcp/http__10.244.0.5/8080",
            "add rule ip lotse local-ns/web/tcp/http numgen random mod 1 vmap { 0 : goto endpoint-ns/web/tcp/http__10.244.0.5/8080 }",
            "add rule ip lotse service-ns/web/tcp/http ip daddr 10.96.0.10 ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
            "add rule ip lotse service-ns/web/tcp/http ip saddr @affinity-ns/web/tcp/http__10.244.0.5/8080 goto endpoint-ns/web/tcp/http__10.244.0.5/8080",
            "add rule ip lotse service-ns/web/tcp/http ip saddr @affinity-ns/web/tcp/http__10.244.1.5/8080 goto endpoint-ns/web/tcp/http__10.244.1.5/8080",
            "add rule ip lotse service-ns/web/tcp/http numgen random mod 2 vmap { 0 : goto endpoint-ns/web/tcp/http__10.244.0.5/8080 , 1 : goto endpoint-ns/web/tcp/http__10.244.1.5/8080 }",
        ];
        assert_eq!(lines, expected);
        check_with_nft(&text);
    }

    #[test]
    fn sctp_and_udp_rules() {
        let s = svc(json!({"metadata": {"name": "multi", "namespace": "ns"},
            "spec": {"clusterIP": "10.96.0.12", "ports": [
                {"name": "a", "port": 9, "protocol": "SCTP"}, {"name": "b", "port": 9, "protocol": "UDP"}]}}));
        let sl = slice(
            json!({"metadata": {"name": "multi-1", "namespace": "ns", "labels": {"kubernetes.io/service-name": "multi"}},
            "addressType": "IPv4",
            "ports": [{"name": "a", "port": 99, "protocol": "SCTP"}, {"name": "b", "port": 98, "protocol": "UDP"}],
            "endpoints": [{"addresses": ["10.244.0.8"]}]}),
        );
        let text = render(&cfg(), &service_ports(&[s], &[sl], "n1")).full_transaction();
        let lines = service_lines(&text);
        assert!(lines.contains(&"add element ip lotse service-ips { 10.96.0.12 . sctp . 9 : goto service-ns/multi/sctp/a }".to_string()));
        assert!(lines.contains(&"add rule ip lotse endpoint-ns/multi/sctp/a__10.244.0.8/99 meta l4proto sctp dnat to 10.244.0.8:99".to_string()));
        assert!(lines.contains(&"add rule ip lotse endpoint-ns/multi/udp/b__10.244.0.8/98 meta l4proto udp dnat to 10.244.0.8:98".to_string()));
        check_with_nft(&text);
    }

    #[test]
    fn diff_touches_only_what_changed() {
        let s = svc(json!({"metadata": {"name": "web", "namespace": "ns"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}}));
        let one = web_slice(json!([{"addresses": ["10.244.0.5"]}]));
        let two = web_slice(json!([{"addresses": ["10.244.0.5"]}, {"addresses": ["10.244.0.6"]}]));
        let none = web_slice(json!([]));
        let a = render(
            &cfg(),
            &service_ports(std::slice::from_ref(&s), &[one], "n1"),
        );
        let b = render(
            &cfg(),
            &service_ports(std::slice::from_ref(&s), &[two], "n1"),
        );
        let c = render(&cfg(), &service_ports(&[s], &[none], "n1"));
        assert_eq!(a.diff_transaction(&a).as_deref(), Some(""));
        assert_eq!(
            b.diff_transaction(&a).unwrap(),
            "add chain ip lotse endpoint-ns/web/tcp/http__10.244.0.6/8080
add rule ip lotse endpoint-ns/web/tcp/http__10.244.0.6/8080 ip saddr 10.244.0.6 jump mark-for-masquerade
add rule ip lotse endpoint-ns/web/tcp/http__10.244.0.6/8080 meta l4proto tcp dnat to 10.244.0.6:8080
flush chain ip lotse service-ns/web/tcp/http
add rule ip lotse service-ns/web/tcp/http ip daddr 10.96.0.10 ip saddr != 10.244.0.0/16 jump mark-for-masquerade
add rule ip lotse service-ns/web/tcp/http numgen random mod 2 vmap { 0 : goto endpoint-ns/web/tcp/http__10.244.0.5/8080 , 1 : goto endpoint-ns/web/tcp/http__10.244.0.6/8080 }
"
        );
        assert_eq!(
            c.diff_transaction(&b).unwrap(),
            "add element ip lotse no-endpoint-services { 10.96.0.10 . tcp . 80 comment \"ns/web:http\" : goto reject-chain }
delete element ip lotse service-ips { 10.96.0.10 . tcp . 80 }
flush chain ip lotse endpoint-ns/web/tcp/http__10.244.0.5/8080
flush chain ip lotse endpoint-ns/web/tcp/http__10.244.0.6/8080
flush chain ip lotse service-ns/web/tcp/http
delete chain ip lotse endpoint-ns/web/tcp/http__10.244.0.5/8080
delete chain ip lotse endpoint-ns/web/tcp/http__10.244.0.6/8080
delete chain ip lotse service-ns/web/tcp/http
"
        );
        // Applied one after the other, the transactions are valid.
        if let Some(ns) = crate::agent::nft::tests::TestNetns::new("diff") {
            for text in [
                a.full_transaction(),
                b.diff_transaction(&a).unwrap(),
                c.diff_transaction(&b).unwrap(),
                a.diff_transaction(&c).unwrap(),
            ] {
                ns.apply(&text);
            }
            // Same content as a fresh table (chains are listed in creation order).
            let blocks = |listing: String| {
                let mut b: Vec<String> = listing
                    .trim_end()
                    .trim_end_matches('}')
                    .split("\n\n")
                    .map(|b| b.trim().to_string())
                    .collect();
                b.sort();
                b
            };
            assert_eq!(
                blocks(ns.list()),
                blocks(ns.list_after(&a.full_transaction()))
            );
        }
    }

    /// `nft -c -f -` (check only) of `text`, when nft is installed.
    fn check_with_nft(text: &str) {
        if let Err(e) = crate::agent::nft::check(text) {
            match e {
                crate::agent::nft::NftError::Missing(_) => {
                    eprintln!("nft not installed: rule text not checked by nft")
                }
                e => panic!("nft rejects the rules: {e}\n{text}"),
            }
        }
    }
}
