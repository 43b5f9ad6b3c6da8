//! Link plumbing with iproute2 (`ip`) and `nsenter`: the node bridge and the pod's veth pair.
use std::net::Ipv4Addr;
use std::process::Command;

use ipnet::Ipv4Net;

use crate::CniError;

fn run(cmd: &mut Command) -> Result<String, CniError> {
    let out = cmd
        .output()
        .map_err(|e| CniError::Other(format!("run {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(CniError::Other(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip() -> Command {
    Command::new("ip")
}

/// `ip …` run inside the network namespace at `netns`.
fn ip_in(netns: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={netns}")).arg("ip");
    c
}

/// Whether link `name` exists in this process's network namespace (asked through netlink by
/// `ip`: /sys/class/net shows the namespace that mounted /sys, which a node in a network
/// namespace of its own does not).
fn link_exists(name: &str) -> bool {
    link_exists_with(&ip, name)
}

fn link_exists_with(ip: &dyn Fn() -> Command, name: &str) -> bool {
    ip().args(["link", "show", "dev", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Creates the bridge if absent, gives it the gateway address, makes sure the pod network's
/// route leads to it and enables forwarding.
pub fn ensure_bridge(
    bridge: &str,
    gateway: Ipv4Addr,
    cidr: Ipv4Net,
    mtu: u32,
) -> Result<(), CniError> {
    ensure_bridge_with(&ip, bridge, gateway, cidr, mtu)?;
    let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
    Ok(())
}

/// [`ensure_bridge`] with `ip` commands from `ip` (tests run them in a namespace of their own).
fn ensure_bridge_with(
    ip: &dyn Fn() -> Command,
    bridge: &str,
    gateway: Ipv4Addr,
    cidr: Ipv4Net,
    mtu: u32,
) -> Result<(), CniError> {
    if !link_exists_with(ip, bridge) {
        // Another ADD may create it concurrently; the second create fails and is harmless.
        let _ = run(ip().args(["link", "add", bridge, "type", "bridge"]));
    }
    let gw = format!("{gateway}/{}", cidr.prefix_len());
    let addrs = run(ip().args(["-4", "-o", "addr", "show", "dev", bridge]))?;
    if !addrs.contains(&format!(" {gw} "))
        && let Err(e) = run(ip().args(["addr", "add", &gw, "dev", bridge]))
    {
        // A concurrent ADD may have added it between the check and here.
        let again = run(ip().args(["-4", "-o", "addr", "show", "dev", bridge]))?;
        if !again.contains(&format!(" {gw} ")) {
            return Err(e);
        }
    }
    run(ip().args(["link", "set", bridge, "mtu", &mtu.to_string(), "up"]))?;
    // The kernel makes this route with the address, but it can be gone while the address
    // stays: a node's network namespace kept from an earlier run, in which this podCIDR was
    // another node's, so the node network agent routed it to that node and later removed
    // that route as the node's. Without it the node cannot reach its own pods (the kubelet's
    // probes time out). `replace` is idempotent and safe under concurrent ADDs.
    run(ip().args([
        "route",
        "replace",
        &cidr.trunc().to_string(),
        "dev",
        bridge,
        "proto",
        "kernel",
        "scope",
        "link",
        "src",
        &gateway.to_string(),
    ]))?;
    Ok(())
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
    if !link_exists(host_veth) {
        // Create inside the pod netns and send the peer to this process's netns (the node's).
        let me = std::process::id().to_string();
        let mtu_s = mtu.to_string();
        run(ip_in(netns).args([
            "link", "add", ifname, "mtu", &mtu_s, "type", "veth", "peer", "name", host_veth, "mtu",
            &mtu_s, "netns", &me,
        ]))?;
    }
    run(ip().args(["link", "set", host_veth, "master", bridge, "up"]))?;
    set_hairpin(host_veth)?;
    run(ip_in(netns).args(["link", "set", "lo", "up"]))?;
    let have = run(ip_in(netns).args(["-4", "-o", "addr", "show", "dev", ifname]))?;
    if !have.contains(&format!(" {addr} ")) {
        run(ip_in(netns).args(["addr", "add", &addr.to_string(), "dev", ifname]))?;
    }
    run(ip_in(netns).args(["link", "set", ifname, "up"]))?;
    run(ip_in(netns).args([
        "route",
        "replace",
        "default",
        "via",
        &gateway.to_string(),
        "dev",
        ifname,
    ]))?;
    let host_mac = mac(None, host_veth)?;
    let pod_mac = mac(Some(netns), ifname)?;
    Ok((host_mac, pod_mac))
}

/// Turns on hairpin mode on a bridge port, so a pod reaching itself through a Service (DNAT
/// back to its own address, decided while the frame is being bridged) gets the frame back on
/// the port it came from (the CNI bridge plugin's `hairpinMode`, the kubelet's hairpin-veth).
pub fn set_hairpin(port: &str) -> Result<(), CniError> {
    run(ip().args([
        "link",
        "set",
        "dev",
        port,
        "type",
        "bridge_slave",
        "hairpin",
        "on",
    ]))
    .map(|_| ())
    .map_err(|e| CniError::Other(format!("enable hairpin mode on {port}: {e}")))
}

/// The ports of `bridge` whose hairpin mode is off (`ip -d -o link show master <bridge>`).
pub fn ports_without_hairpin(bridge: &str) -> Vec<String> {
    run(ip().args(["-d", "-o", "link", "show", "master", bridge]))
        .map(|out| parse_ports_without_hairpin(&out))
        .unwrap_or_default()
}

fn parse_ports_without_hairpin(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.contains(" hairpin off "))
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

fn mac(netns: Option<&str>, ifname: &str) -> Result<String, CniError> {
    let out = match netns {
        Some(ns) => run(ip_in(ns).args(["-o", "link", "show", "dev", ifname]))?,
        None => run(ip().args(["-o", "link", "show", "dev", ifname]))?,
    };
    Ok(out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_default()
        .to_string())
}

/// Checks that the pod interface exists in `netns` with `addr`.
pub fn check_veth(netns: &str, ifname: &str, addr: Ipv4Net) -> Result<(), CniError> {
    let have = run(ip_in(netns).args(["-4", "-o", "addr", "show", "dev", ifname]))?;
    if !have.contains(&format!(" {addr} ")) {
        return Err(CniError::Other(format!(
            "interface {ifname} does not have address {addr}"
        )));
    }
    Ok(())
}

/// Deletes the veth pair if it still exists (deleting one end removes both); absent is success.
pub fn teardown_veth(host_veth: &str) -> Result<(), CniError> {
    if link_exists(host_veth) {
        let r = run(ip().args(["link", "del", host_veth]));
        if link_exists(host_veth) {
            r?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod hairpin_tests {
    #[test]
    fn finds_bridge_ports_without_hairpin() {
        let out = "7: veth1a2b@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 master lotse0 state UP mode DEFAULT group default \\    link/ether 5a:1b brd ff:ff promiscuity 1 \\    bridge_slave state forwarding priority 32 cost 2 hairpin off guard off \n\
                   8: veth3c4d@if2: <BROADCAST> mtu 1500 master lotse0 \\    bridge_slave state forwarding priority 32 cost 2 hairpin on guard off \n";
        assert_eq!(super::parse_ports_without_hairpin(out), vec!["veth1a2b"]);
    }
}

#[cfg(test)]
mod bridge_tests {
    use super::*;

    #[test]
    fn the_pod_network_route_comes_back() {
        let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        });
        let ns = format!("lotse-test-bridge-{}", std::process::id());
        if !root
            || !Command::new("ip")
                .args(["netns", "add", &ns])
                .status()
                .is_ok_and(|s| s.success())
        {
            eprintln!("not root or no network namespaces: skipped");
            return;
        }
        let ip_ns = || {
            let mut c = Command::new("ip");
            c.args(["-n", &ns]);
            c
        };
        let cidr: Ipv4Net = "10.244.7.0/24".parse().unwrap();
        let gw: Ipv4Addr = "10.244.7.1".parse().unwrap();
        let route = || run(ip_ns().args(["-4", "route", "show", "10.244.7.0/24"])).unwrap();
        let result = std::panic::catch_unwind(|| {
            ensure_bridge_with(&ip_ns, "lotsetest0", gw, cidr, 1500).unwrap();
            assert!(route().contains("dev lotsetest0"), "{}", route());
            // Gone while the address stays (as after another run's agent routed it away).
            run(ip_ns().args(["route", "del", "10.244.7.0/24"])).unwrap();
            assert_eq!(route().trim(), "");
            ensure_bridge_with(&ip_ns, "lotsetest0", gw, cidr, 1500).unwrap();
            assert!(route().contains("dev lotsetest0"), "{}", route());
            assert!(route().contains("src 10.244.7.1"), "{}", route());
        });
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    }
}
