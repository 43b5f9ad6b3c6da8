//! `lotse-cni`: Lotse's CNI 1.0 plugin, run by containerd with `CNI_*` variables and the network
//! configuration on stdin (see the CNI specification). Not meant to be run by hand, except
//! `CNI_COMMAND=VERSION lotse-cni`.
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::Path;

use clap::Parser;
use cni_plugin::types::{AddResult, Interface, IpConfig, Route, SUPPORTED_VERSIONS};
use cni_plugin::{CniError, NetConf, ipam, net};
use ipnet::Ipv4Net;
use serde_json::{Value, json};

/// lotse-cni: CNI 1.0 plugin (ADD/DEL/CHECK/VERSION) giving each pod a veth on the node bridge and
/// an address from the node's podCIDR. containerd runs it as the `lotse-cni` type of the conflist
/// the kubelet writes; the command and container come from CNI_COMMAND, CNI_CONTAINERID,
/// CNI_NETNS, CNI_IFNAME, and the configuration from stdin.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Args {}

fn env(name: &str) -> Result<String, CniError> {
    std::env::var(name).map_err(|_| CniError::InvalidEnv(format!("{name} is not set")))
}

fn main() {
    if std::env::var_os("CNI_COMMAND").is_none() {
        let _ = Args::parse();
        eprintln!(
            "lotse-cni is a CNI plugin; run it with CNI_COMMAND set (e.g. CNI_COMMAND=VERSION lotse-cni)"
        );
        std::process::exit(2);
    }
    let mut stdin = String::new();
    let _ = std::io::stdin().read_to_string(&mut stdin);
    let version = serde_json::from_str::<Value>(&stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|s| s.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "1.0.0".into());
    match dispatch(&stdin) {
        Ok(Some(out)) => println!("{out}"),
        Ok(None) => {}
        Err(e) => {
            println!("{}", e.to_json(&version));
            std::process::exit(1);
        }
    }
}

fn dispatch(stdin: &str) -> Result<Option<Value>, CniError> {
    let command = env("CNI_COMMAND")?;
    if command == "VERSION" {
        return Ok(Some(
            json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS}),
        ));
    }
    let conf: NetConf = serde_json::from_str(stdin).map_err(|e| CniError::Decode(e.to_string()))?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::IncompatibleVersion(conf.cni_version));
    }
    let container_id = env("CNI_CONTAINERID")?;
    let ifname = env("CNI_IFNAME")?;
    // The IPAM lock is held only while the store is read or written, not while interfaces are
    // set up: concurrent ADDs (many pods starting at once) must not queue behind each other.
    let store = || ipam::Store::open(Path::new(&conf.data_dir), &conf.name);
    let host_veth = net::host_veth_name(&container_id);
    match command.as_str() {
        "ADD" => {
            let netns = env("CNI_NETNS")?;
            let ip = store()?.allocate(conf.pod_cidr, &container_id, &ifname)?;
            match add(&conf, &netns, &ifname, &host_veth, ip) {
                Ok(result) => Ok(Some(result)),
                Err(e) => {
                    let _ = net::teardown_veth(&host_veth);
                    let _ = store().and_then(|s| s.release(&container_id, &ifname));
                    Err(e)
                }
            }
        }
        "DEL" => {
            net::teardown_veth(&host_veth)?;
            store()?.release(&container_id, &ifname)?;
            Ok(None)
        }
        "CHECK" => {
            let netns = env("CNI_NETNS")?;
            let ip = store()?.find(&container_id, &ifname)?.ok_or_else(|| {
                CniError::Other(format!("no address allocated for container {container_id}"))
            })?;
            net::check_veth(&netns, &ifname, with_prefix(ip, conf.pod_cidr))?;
            Ok(None)
        }
        other => Err(CniError::InvalidEnv(format!(
            "unknown CNI_COMMAND {other:?}"
        ))),
    }
}

fn with_prefix(ip: Ipv4Addr, cidr: Ipv4Net) -> Ipv4Net {
    Ipv4Net::new(ip, cidr.prefix_len()).unwrap_or(cidr)
}

fn add(
    conf: &NetConf,
    netns: &str,
    ifname: &str,
    host_veth: &str,
    ip: Ipv4Addr,
) -> Result<Value, CniError> {
    let mtu = conf.mtu.unwrap_or(1500);
    let gw = conf.gateway();
    net::ensure_bridge(&conf.bridge, gw, conf.pod_cidr, mtu)?;
    let addr = with_prefix(ip, conf.pod_cidr);
    let (host_mac, pod_mac) =
        net::setup_veth(netns, ifname, host_veth, &conf.bridge, addr, gw, mtu)?;
    let result = AddResult {
        cni_version: conf.cni_version.clone(),
        interfaces: vec![
            Interface {
                name: host_veth.into(),
                mac: host_mac,
                sandbox: None,
            },
            Interface {
                name: ifname.into(),
                mac: pod_mac,
                sandbox: Some(netns.into()),
            },
        ],
        ips: vec![IpConfig {
            address: addr.to_string(),
            gateway: gw.to_string(),
            interface: 1,
        }],
        routes: vec![Route {
            dst: "0.0.0.0/0".into(),
            gw: Some(gw.to_string()),
        }],
        dns: json!({}),
    };
    let mut v = serde_json::to_value(&result).map_err(|e| CniError::Other(e.to_string()))?;
    // Results before 1.0 tag each address with its IP version.
    if conf.cni_version.starts_with("0.")
        && let Some(ips) = v.get_mut("ips").and_then(|i| i.as_array_mut())
    {
        for i in ips {
            i["version"] = json!("4");
        }
    }
    Ok(v)
}
