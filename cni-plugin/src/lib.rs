//! `lotse-cni`: a CNI 1.0 plugin that puts each pod on the node bridge.
//!
//! ADD creates a veth pair whose pod end is `CNI_IFNAME` inside `CNI_NETNS` and whose host end is
//! a port of the node bridge (created on first use, with the first address of the podCIDR as the
//! pods' gateway), and allocates the pod's address from the node's podCIDR in an on-disk store
//! guarded by a file lock ([`ipam`]). DEL releases everything it finds and succeeds when there is
//! nothing left (containerd calls it twice: at StopPodSandbox and at RemovePodSandbox).
//!
//! The same crate holds the node network agent ([`agent`], binary `lotse-agent`), which programs
//! Services and pod egress masquerade into nftables.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod ipam;
pub mod net;
pub mod netlink;
pub mod netns;
pub mod types;

pub use types::{CniError, NetConf};
