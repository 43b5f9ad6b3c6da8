//! More nodes on this machine (`lotse up --nodes N`): node k (k ≥ 2) is a network namespace
//! `lotse-n<k>` with address `<underlay>.k` on the underlay bridge `lotse-ul` in the host
//! namespace (the host, node 1, is `<underlay>.1`). In it runs `lotse join` — the same path a
//! second machine takes — with its own data dir, containerd, kubelet, network agent and cgroup
//! root. The pod network between the nodes is host routes through the underlay (the agents'
//! host-gw routes) or VXLAN (`--flannel-backend=vxlan`).
//!
//! The host is the nodes' router to the world, as a home router or a cloud's NAT gateway is to
//! machines on a private network: each node masquerades its pods' egress to its own underlay
//! address (the agent's rule), and the host masquerades the underlay's traffic that leaves the
//! machine ([`UNDERLAY_TABLE`]), so replies find their way back. Traffic between the nodes and to
//! the pod network keeps its source address.
//!
//! Links, addresses and the node namespaces are still made with iproute2's `ip` here (lotse-cni
//! and the node agent use netlink, `cni_plugin::netlink`); moving this launcher-side plumbing
//! to netlink is left for a change of its own.
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::PostParams;

use apiserver::authn::bootstrap_token::{BootstrapToken, JWS_PREFIX};

/// The underlay bridge in the host namespace.
pub const BRIDGE: &str = "lotse-ul";
/// Prefix of the nodes' network namespaces (`/run/netns/lotse-n<k>`).
pub const NETNS_PREFIX: &str = "lotse-n";
/// The host's nftables table (family `ip`) that masquerades the underlay's traffic leaving the
/// machine.
pub const UNDERLAY_TABLE: &str = "lotse-underlay";

/// The underlay network: node k has its k-th address.
#[derive(Clone, Copy, Debug)]
pub struct Underlay {
    pub cidr: Ipv4Net,
}

impl Underlay {
    /// Address of node `k` (1 = the host).
    pub fn node_ip(&self, k: u32) -> anyhow::Result<Ipv4Addr> {
        let ip = Ipv4Addr::from(u32::from(self.cidr.network()) + k);
        if k == 0 || !self.cidr.contains(&ip) || ip == self.cidr.broadcast() {
            bail!("--node-network {} has no address for node {k}", self.cidr);
        }
        Ok(ip)
    }
}

/// Whether link `name` exists in the named network namespace `netns` (`None`: the host's).
fn link_exists(name: &str, netns: Option<&str>) -> bool {
    let path = netns.map(cni_plugin::netns::path);
    cni_plugin::net::link_exists(path.as_deref(), name).unwrap_or(false)
}

/// The nft transaction that (re)makes [`UNDERLAY_TABLE`]: traffic from the underlay to anywhere
/// but the underlay and the pod network is masqueraded on its way out of the machine.
fn underlay_masquerade(u: &Underlay, cluster_cidr: Ipv4Net) -> String {
    let (t, c) = (UNDERLAY_TABLE, "postrouting");
    format!(
        "add table ip {t}\n\
         delete table ip {t}\n\
         add table ip {t}\n\
         add chain ip {t} {c} {{ type nat hook postrouting priority srcnat ; }}\n\
         add rule ip {t} {c} ip saddr {u} ip daddr != {{ {u}, {cc} }} oifname != \"{BRIDGE}\" \
         masquerade comment \"the nodes' traffic leaving the machine\"\n",
        u = u.cidr.trunc(),
        cc = cluster_cidr.trunc(),
    )
}

/// The underlay bridge with the host's address on it, and the masquerade of the underlay's
/// traffic that leaves the machine.
pub fn ensure_bridge(u: &Underlay, cluster_cidr: Ipv4Net) -> anyhow::Result<Ipv4Addr> {
    let host = u.node_ip(1)?;
    // Over netlink, as the CNI plugin makes a node's pod bridge: the bridge, the host's address
    // on it, up.
    cni_plugin::net::ensure_bridge(BRIDGE, host, u.cidr, UNDERLAY_MTU)
        .with_context(|| format!("making the underlay bridge {BRIDGE}"))?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling ip_forward")?;
    // nft, as the agent programs its rules: one atomic transaction in nft's own grammar.
    cni_plugin::agent::nft::apply(&underlay_masquerade(u, cluster_cidr))
        .context("masquerading the underlay's traffic that leaves the machine")?;
    Ok(host)
}

/// Network namespace of node `k`: made when missing, linked to the underlay, addressed, with a
/// default route through the host. Returns its name.
pub fn ensure_netns(u: &Underlay, k: u32) -> anyhow::Result<String> {
    let ns = format!("{NETNS_PREFIX}{k}");
    let host = u.node_ip(1)?;
    let me = u.node_ip(k)?;
    if !cni_plugin::netns::exists(&ns) {
        cni_plugin::netns::create(&ns)?;
    }
    let host_end = format!("lotse-ul{k}");
    // A host end whose peer is gone (its network namespace was deleted and made anew) leads
    // nowhere: made again with the namespace's end.
    if link_exists(&host_end, None) && !link_exists("eth0", Some(&ns)) {
        cni_plugin::net::delete_link(None, &host_end)?;
    }
    // The veth pair between the underlay bridge and the namespace's eth0, addressed, with the
    // default route through the host: what the CNI plugin makes for a pod.
    let addr = Ipv4Net::new(me, u.cidr.prefix_len())?;
    let path = cni_plugin::netns::path(&ns);
    cni_plugin::net::setup_veth(
        &path.to_string_lossy(),
        "eth0",
        &host_end,
        BRIDGE,
        addr,
        host,
        UNDERLAY_MTU,
    )
    .with_context(|| format!("linking network namespace {ns} to the underlay"))?;
    Ok(ns)
}

/// The underlay links' MTU (Ethernet's).
const UNDERLAY_MTU: u32 = 1500;

/// The pod bridge of a node's network namespace (the CNI plugin's default).
const POD_BRIDGE: &str = "lotse0";

/// Removes the pod bridge that another cluster left in node `k`'s network namespace, with its
/// gateway addresses (the CNI plugin makes it again for the first pod). The namespace itself
/// and its underlay link stay as they are.
pub fn remove_stale_pod_bridge(k: u32) {
    let ns = format!("{NETNS_PREFIX}{k}");
    if cni_plugin::netns::exists(&ns) {
        let _ = cni_plugin::net::delete_link(Some(&cni_plugin::netns::path(&ns)), POD_BRIDGE);
    }
}

/// Removes the nodes' namespaces and the underlay bridge (`lotse reset`).
pub fn remove_all() {
    if let Ok(dir) = std::fs::read_dir(cni_plugin::netns::RUN_DIR) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(NETNS_PREFIX)
                && let Err(e) = cni_plugin::netns::delete(&name)
            {
                tracing::warn!(error = %e, "removing a node's network namespace");
            }
        }
    }
    // The underlay bridge, and the host's VXLAN device (`--flannel-backend vxlan`); the nodes'
    // went with their namespaces.
    for link in [BRIDGE, cni_plugin::agent::vxlan::DEVICE] {
        if let Err(e) = cni_plugin::net::delete_link(None, link) {
            tracing::warn!(error = %e, link, "deleting a link");
        }
    }
    let t = UNDERLAY_TABLE;
    let _ = cni_plugin::agent::nft::apply(&format!("add table ip {t}\ndelete table ip {t}\n"));
}

/// Starts `program args` inside network namespace `netns`. It gets SIGTERM when its parent
/// dies.
pub fn spawn_in_netns(
    netns: &str,
    program: &Path,
    args: &[String],
    env: &[(&str, String)],
    log: &Path,
) -> anyhow::Result<Child> {
    let ns = std::fs::File::open(Path::new("/run/netns").join(netns))
        .with_context(|| format!("opening network namespace {netns}"))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: only async-signal-safe system calls run between fork and exec. The node keeps
    // the host's mount namespace, so its containerd's mounts (pod network namespaces, rootfs)
    // stay visible to the host and to the next `lotse join` that adopts its pods; Lotse reads
    // links through netlink (`ip`), not /sys/class/net, which shows the host's namespace.
    unsafe {
        cmd.pre_exec(move || {
            use nix::sched::{CloneFlags, setns};
            let err = |e: nix::Error| std::io::Error::from_raw_os_error(e as i32);
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(err)?;
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(err)?;
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {} in {netns}", program.display()))
}

/// A new bootstrap token for joining nodes, valid for `ttl` (a bootstrap-token Secret in
/// `kube-system`, as `kubeadm token create` makes it).
pub async fn create_token(admin: &kube::Client, ttl: Duration) -> anyhow::Result<BootstrapToken> {
    let token = BootstrapToken::generate();
    let expiration = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::try_from(ttl)?)?
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let secret: Secret = serde_json::from_value(
        token.secret(Some(&expiration), "lotse up: joins the nodes it runs"),
    )?;
    Api::<Secret>::namespaced(admin.clone(), "kube-system")
        .create(&PostParams::default(), &secret)
        .await
        .context("creating the bootstrap token")?;
    // Discovery needs the bootstrap signer's signature for this token in cluster-info.
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), "kube-public");
    let key = format!("{JWS_PREFIX}{}", token.id);
    for _ in 0..120 {
        if let Ok(cm) = cms.get("cluster-info").await
            && cm.data.is_some_and(|d| d.contains_key(&key))
        {
            return Ok(token);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("the bootstrap signer did not sign cluster-info for the new token within 30 s")
}

/// Where node `name`'s data lives under the cluster's data dir.
pub fn node_data_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("nodes").join(name)
}

/// Rancher's `local-path-config` ConfigMap (kube-system, key `config.json`) for `lotse up
/// --nodes n` with host node `host`: each joined node's volumes under its own data dir
/// (`<data-dir>/nodes/<name>/storage`), every other node's (the host's) under
/// `<data-dir>/storage`, the local-path provisioner's default.
pub fn local_path_config(data_dir: &Path, host: &str, n: u32) -> serde_json::Value {
    let mut map = vec![serde_json::json!({
        "node": "DEFAULT_PATH_FOR_NON_LISTED_NODES",
        "paths": [data_dir.join("storage")],
    })];
    for k in 2..=n {
        let name = format!("{host}-{k}");
        let dir = node_data_dir(data_dir, &name).join("storage");
        map.push(serde_json::json!({"node": name, "paths": [dir]}));
    }
    let config = serde_json::json!({"nodePathMap": map});
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "local-path-config", "namespace": "kube-system"},
        "data": {"config.json": serde_json::to_string_pretty(&config).unwrap_or_default()},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_nodes_keep_their_volumes_under_their_own_data_dirs() {
        let cm = local_path_config(Path::new("/d"), "mn", 3);
        assert_eq!(cm["metadata"]["name"], "local-path-config");
        assert_eq!(cm["metadata"]["namespace"], "kube-system");
        let cfg: serde_json::Value =
            serde_json::from_str(cm["data"]["config.json"].as_str().unwrap()).unwrap();
        assert_eq!(
            cfg,
            serde_json::json!({"nodePathMap": [
                {"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": ["/d/storage"]},
                {"node": "mn-2", "paths": ["/d/nodes/mn-2/storage"]},
                {"node": "mn-3", "paths": ["/d/nodes/mn-3/storage"]},
            ]})
        );
    }

    #[test]
    fn node_addresses_come_from_the_underlay() {
        let u = Underlay {
            cidr: "10.213.0.0/24".parse().unwrap(),
        };
        assert_eq!(u.node_ip(1).unwrap(), Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(u.node_ip(3).unwrap(), Ipv4Addr::new(10, 213, 0, 3));
        assert!(u.node_ip(0).is_err());
        assert!(u.node_ip(255).is_err());
        let small = Underlay {
            cidr: "10.213.0.0/30".parse().unwrap(),
        };
        assert!(small.node_ip(2).is_ok());
        assert!(small.node_ip(3).is_err());
    }

    #[test]
    fn the_underlay_is_masqueraded_only_when_it_leaves_the_machine() {
        let u = Underlay {
            cidr: "10.213.0.0/24".parse().unwrap(),
        };
        let t = underlay_masquerade(&u, "10.244.0.0/16".parse().unwrap());
        assert!(t.starts_with("add table ip lotse-underlay\ndelete table ip lotse-underlay\n"));
        assert!(t.contains(
            "ip saddr 10.213.0.0/24 ip daddr != { 10.213.0.0/24, 10.244.0.0/16 } oifname != \"lotse-ul\" masquerade"
        ), "{t}");
        if nft_usable() {
            cni_plugin::agent::nft::check(&t).unwrap();
        }
    }

    /// Whether this process may talk to nftables (root with nft installed).
    fn nft_usable() -> bool {
        Command::new("nft")
            .args(["list", "tables"])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}
