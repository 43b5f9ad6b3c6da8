//! CNI 1.0 wire types: the network configuration on stdin, the result on stdout, errors.
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// CNI spec versions this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// The plugin's network configuration (one entry of a conflist, with `name` and `cniVersion`
/// injected by the runtime).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// CNI version of the configuration.
    pub cni_version: String,
    /// Network name; also the IPAM store's subdirectory.
    pub name: String,
    /// Node bridge to attach pods to (default `lotse0`).
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// The node's podCIDR; pod addresses come from it, the first one is the gateway.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Ipv4Net,
    /// Directory of the allocation store (default `/var/lib/lotse/cni/networks`).
    #[serde(default = "default_data_dir")]
    pub data_dir: String,
    /// MTU of the veth pair (default 1500).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Result of the previous plugin in the chain, if any (unused: this plugin is first).
    #[serde(default)]
    pub prev_result: Option<Value>,
}

fn default_bridge() -> String {
    "lotse0".into()
}
fn default_data_dir() -> String {
    "/var/lib/lotse/cni/networks".into()
}

impl NetConf {
    /// The gateway (bridge) address: the first host of the podCIDR.
    pub fn gateway(&self) -> Ipv4Addr {
        let n = u32::from(self.pod_cidr.network());
        Ipv4Addr::from(n + 1)
    }
}

/// A CNI error, printed on stdout as the spec's error object with a non-zero exit.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The spec's code 1: incompatible CNI version.
    #[error("incompatible CNI version {0}")]
    IncompatibleVersion(String),
    /// The spec's code 4: invalid environment variables.
    #[error("invalid environment: {0}")]
    InvalidEnv(String),
    /// The spec's code 6: failed to decode content.
    #[error("invalid network configuration: {0}")]
    Decode(String),
    /// The spec's code 7: invalid network config.
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    /// The spec's code 11: try again later (address pool exhausted).
    #[error("{0}")]
    TryAgain(String),
    /// Anything else (code 100+: plugin specific).
    #[error("{0}")]
    Other(String),
}

impl CniError {
    /// The spec's numeric code.
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion(_) => 1,
            CniError::InvalidEnv(_) => 4,
            CniError::Decode(_) => 6,
            CniError::InvalidConfig(_) => 7,
            CniError::TryAgain(_) => 11,
            CniError::Other(_) => 100,
        }
    }

    /// The error object the spec wants on stdout.
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({"cniVersion": cni_version, "code": self.code(), "msg": self.to_string()})
    }
}

/// The result of ADD (CNI 1.0 shape).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AddResult {
    /// Version of the result.
    pub cni_version: String,
    /// Interfaces: index 0 is the host veth, index 1 the pod's.
    pub interfaces: Vec<Interface>,
    /// Addresses, referring to the pod interface.
    pub ips: Vec<IpConfig>,
    /// Routes installed in the pod.
    pub routes: Vec<Route>,
    /// DNS (empty: the runtime writes resolv.conf).
    pub dns: Value,
}

/// One interface of a result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address.
    pub mac: String,
    /// Netns path for the pod's interface, absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// One address of a result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IpConfig {
    /// Address with prefix length.
    pub address: String,
    /// Default gateway.
    pub gateway: String,
    /// Index into `interfaces`.
    pub interface: usize,
}

/// One route of a result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Route {
    /// Destination.
    pub dst: String,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_conf_with_defaults() {
        let c: NetConf = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","name":"lotse","type":"lotse-cni","podCIDR":"10.244.1.0/24"}"#,
        )
        .unwrap();
        assert_eq!(c.bridge, "lotse0");
        assert_eq!(c.gateway().to_string(), "10.244.1.1");
    }

    #[test]
    fn error_object_has_spec_codes() {
        let e = CniError::IncompatibleVersion("9.9.9".into());
        assert_eq!(e.to_json("1.0.0")["code"], 1);
    }
}
