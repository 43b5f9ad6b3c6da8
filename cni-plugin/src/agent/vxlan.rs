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
//! Links, neighbours and FDB entries go through iproute2's `ip` and `bridge`, as the host-gw
//! routes and lotse-cni's veths do (moving all link plumbing to netlink is one change of its own).
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::Command;

use ipnet::Ipv4Net;

/// The VXLAN device (flannel's is `flannel.1`).
pub const DEVICE: &str = "lotse.vxlan";
/// The VXLAN network identifier (flannel's default).
pub const VNI: &str = "1";
/// The UDP port of the tunnel (flannel's default, the Linux kernel's historical VXLAN port).
pub const DST_PORT: &str = "8472";

/// The VTEP address of the node with pod CIDR `cidr`: its first address.
pub fn vtep_address(cidr: Ipv4Net) -> Ipv4Addr {
    cidr.network()
}

/// The VTEP MAC of the node with InternalIP `ip`: `0e:4c:` and the address's four bytes (a
/// locally administered unicast address, unique as long as the node addresses are).
pub fn vtep_mac(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("0e:4c:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program).args(args).output().map_err(|e| {
        format!(
            "{program} {}: {e} (Debian package iproute2)",
            args.join(" ")
        )
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The interface holding `ip` (the tunnel's underlay device).
fn device_with(ip: Ipv4Addr) -> Option<String> {
    let text = run("ip", &["-4", "-o", "addr", "show"]).ok()?;
    let needle = format!("inet {ip}/");
    text.lines()
        .find(|l| l.contains(&needle))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(String::from)
}

/// Makes the device for this node (InternalIP `local`, pod CIDR `pod_cidr`): created when
/// missing or when its local end changed, MAC and `/32` VTEP address set, up.
pub fn ensure_device(local: Ipv4Addr, pod_cidr: Ipv4Net) -> Result<(), String> {
    let mac = vtep_mac(local);
    let details = run("ip", &["-d", "link", "show", DEVICE]).ok();
    let current = details
        .as_deref()
        .is_some_and(|d| d.contains(&format!("local {local} ")) && d.contains(&mac));
    if details.is_some() && !current {
        run("ip", &["link", "del", DEVICE])?;
    }
    if !current {
        let (l, dev) = (local.to_string(), device_with(local));
        let mut args = vec![
            "link",
            "add",
            DEVICE,
            "address",
            &mac,
            "type",
            "vxlan",
            "id",
            VNI,
            "local",
            &l,
            "dstport",
            DST_PORT,
            "nolearning",
        ];
        if let Some(dev) = &dev {
            args.extend(["dev", dev]);
        }
        run("ip", &args)?;
        tracing::info!(device = DEVICE, local = %local, mac = %mac, "created the VXLAN device");
    }
    let addr = format!("{}/32", vtep_address(pod_cidr));
    run("ip", &["addr", "replace", &addr, "dev", DEVICE])?;
    run("ip", &["link", "set", DEVICE, "up"])?;
    Ok(())
}

/// Removes the device (the node switched to host-gw), if there is one.
pub fn remove_device() {
    if run("ip", &["link", "show", DEVICE]).is_ok() {
        match run("ip", &["link", "del", DEVICE]) {
            Ok(_) => tracing::info!(device = DEVICE, "removed the VXLAN device"),
            Err(e) => tracing::warn!(error = %e, "removing the VXLAN device"),
        }
    }
}

/// Parses `ip neigh show dev lotse.vxlan` into address → MAC.
pub fn parse_neighbours(text: &str) -> BTreeMap<Ipv4Addr, String> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let ip = w.next()?.parse().ok()?;
            let mac = w.skip_while(|x| *x != "lladdr").nth(1)?;
            Some((ip, mac.to_string()))
        })
        .collect()
}

/// Parses `bridge fdb show dev lotse.vxlan` into MAC → tunnel destination.
pub fn parse_fdb(text: &str) -> BTreeMap<String, Ipv4Addr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let mac = w.next()?.to_string();
            let dst = w.skip_while(|x| *x != "dst").nth(1)?.parse().ok()?;
            Some((mac, dst))
        })
        .collect()
}

/// Makes the neighbour and FDB entries of the device what `peers` (podCIDR → InternalIP of
/// every other node) need, removing those of nodes that are gone. Returns the problems.
pub fn sync_peers(peers: &BTreeMap<Ipv4Net, Ipv4Addr>) -> Vec<String> {
    let mut problems = Vec::new();
    let neigh = run("ip", &["-4", "neigh", "show", "dev", DEVICE])
        .map(|t| parse_neighbours(&t))
        .unwrap_or_default();
    let fdb = run("bridge", &["fdb", "show", "dev", DEVICE])
        .map(|t| parse_fdb(&t))
        .unwrap_or_default();
    let mut want_neigh = BTreeSet::new();
    let mut want_fdb = BTreeSet::new();
    for (cidr, node) in peers {
        let (vtep, mac) = (vtep_address(*cidr), vtep_mac(*node));
        if neigh.get(&vtep) != Some(&mac) {
            let v = vtep.to_string();
            let args = [
                "neigh",
                "replace",
                &v,
                "lladdr",
                &mac,
                "dev",
                DEVICE,
                "nud",
                "permanent",
            ];
            if let Err(e) = run("ip", &args) {
                problems.push(e);
            }
        }
        if fdb.get(&mac) != Some(node) {
            let n = node.to_string();
            let args = [
                "fdb",
                "replace",
                &mac,
                "dev",
                DEVICE,
                "dst",
                &n,
                "self",
                "permanent",
            ];
            if let Err(e) = run("bridge", &args) {
                problems.push(e);
            } else {
                tracing::info!(node = %node, mac = %mac, vtep = %vtep, "VXLAN peer");
            }
        }
        want_neigh.insert(vtep);
        want_fdb.insert(mac);
    }
    for vtep in neigh.keys().filter(|v| !want_neigh.contains(*v)) {
        let v = vtep.to_string();
        if let Err(e) = run("ip", &["neigh", "del", &v, "dev", DEVICE]) {
            problems.push(e);
        }
    }
    for (mac, dst) in fdb.iter().filter(|(m, _)| !want_fdb.contains(*m)) {
        let d = dst.to_string();
        if let Err(e) = run(
            "bridge",
            &["fdb", "del", mac, "dev", DEVICE, "dst", &d, "self"],
        ) {
            problems.push(e);
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

    #[test]
    fn parses_neighbours_and_fdb_entries() {
        let n =
            parse_neighbours("10.244.1.0 lladdr 0e:4c:0a:d5:00:02 PERMANENT\n10.244.2.0 FAILED\n");
        assert_eq!(n.len(), 1);
        assert_eq!(n[&"10.244.1.0".parse().unwrap()], "0e:4c:0a:d5:00:02");
        let f = parse_fdb(
            "0e:4c:0a:d5:00:02 dst 10.213.0.2 self permanent\n\
             00:00:00:00:00:00 dst 10.213.0.9 self permanent\n\
             33:33:00:00:00:01 self permanent\n",
        );
        assert_eq!(f.len(), 2);
        assert_eq!(
            f["0e:4c:0a:d5:00:02"],
            "10.213.0.2".parse::<Ipv4Addr>().unwrap()
        );
    }
}
