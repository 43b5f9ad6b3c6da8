//! Netlink for the plugin and the node agent: a route-netlink connection in a chosen network
//! namespace, and the lookups both need (links by name, addresses, MACs), with typed errors.
//!
//! A socket talks to the network namespace of the thread that opened it. Work inside a pod's
//! namespace therefore runs on a thread of its own ([`in_netns`]): it enters the namespace with
//! `setns(2)`, opens its socket there, does its work on a current-thread runtime and ends — a
//! thread that entered another namespace never goes back to a pool where other work would run
//! in the wrong namespace.
use std::fs::File;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use nix::sched::CloneFlags;
pub use rtnetlink::Handle;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};

/// Where the current thread's network namespace is (`/proc/self` would be the main thread's).
pub const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Why a netlink operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The network namespace file could not be opened.
    #[error("open network namespace {path}: {source}")]
    OpenNetns {
        /// The namespace's path (CNI_NETNS).
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `setns(2)` into the namespace failed.
    #[error("enter network namespace {path}: {source}")]
    EnterNetns {
        /// The namespace's path.
        path: String,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// No netlink socket or runtime for it.
    #[error("open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel refused a request (or answered something unexpected).
    #[error("{op}: {source}")]
    Request {
        /// What was asked, in `ip`'s words (`link add lotse0 type bridge`).
        op: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// A link that must exist does not.
    #[error("link {0} not found")]
    NoLink(String),
    /// The thread working inside a namespace panicked.
    #[error("the thread working in network namespace {0} panicked")]
    Thread(String),
}

impl NetlinkError {
    /// The errno the kernel answered a request with (`libc::EEXIST`, …), if that is the failure.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => Some(-m.raw_code()),
            _ => None,
        }
    }
}

/// `errno` of EEXIST ("File exists": the link, address or neighbour is already there).
pub const EEXIST: i32 = 17;
/// `errno` of ENODEV ("No such device").
pub const ENODEV: i32 = 19;

/// Wraps a failed request with what was asked.
pub fn request(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let op = op.into();
    move |source| NetlinkError::Request { op, source }
}

/// A connection in the current thread's network namespace, its I/O driven by a task on the
/// current tokio runtime (which must exist).
pub fn connect() -> Result<Handle, NetlinkError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Runs `work` with a connection in the current thread's network namespace, on a current-thread
/// runtime of its own (for synchronous callers such as the CNI plugin; not inside a runtime).
pub fn block_on<T, E, F, Fut>(work: F) -> Result<T, E>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: From<NetlinkError>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(NetlinkError::Socket)?;
    rt.block_on(async move {
        let handle = connect()?;
        work(handle).await
    })
}

/// Runs `work` with a connection inside the network namespace at `netns`, on a thread of its
/// own that enters the namespace and ends with the work (see the module doc).
pub fn in_netns<T, E, F, Fut>(netns: &Path, work: F) -> Result<T, E>
where
    T: Send,
    E: From<NetlinkError> + Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, E>>,
{
    let path = netns.display().to_string();
    let ns = File::open(netns).map_err(|source| NetlinkError::OpenNetns {
        path: path.clone(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|source| {
                NetlinkError::EnterNetns {
                    path: path.clone(),
                    source,
                }
            })?;
            block_on(work)
        })
        .join()
        .unwrap_or_else(|_| Err(NetlinkError::Thread(netns.display().to_string()).into()))
    })
}

/// Runs `work` in the namespace at `netns`, or in the current thread's when `None` (the CNI
/// plugin's node side: containerd runs it in the node's namespace).
pub fn run_in<T, E, F, Fut>(netns: Option<&Path>, work: F) -> Result<T, E>
where
    T: Send,
    E: From<NetlinkError> + Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, E>>,
{
    match netns {
        Some(ns) => in_netns(ns, work),
        // Called from async code (the `lotse` CLI): a runtime cannot be started on a thread
        // that runs one, so the work gets a thread of its own (in this thread's namespace, which
        // a new thread inherits).
        None if tokio::runtime::Handle::try_current().is_ok() => std::thread::scope(|s| {
            s.spawn(|| block_on(work))
                .join()
                .unwrap_or_else(|_| Err(NetlinkError::Thread("this namespace".into()).into()))
        }),
        None => block_on(work),
    }
}

/// The link called `name`, if there is one (`ip link show dev NAME`).
pub async fn link(h: &Handle, name: &str) -> Result<Option<LinkMessage>, NetlinkError> {
    let found = h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await;
    match found {
        Ok(link) => Ok(link),
        Err(e) => {
            let e = request(format!("link show dev {name}"))(e);
            if e.errno() == Some(ENODEV) {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}

/// The index of link `name`, if there is one.
pub async fn link_index(h: &Handle, name: &str) -> Result<Option<u32>, NetlinkError> {
    Ok(link(h, name).await?.map(|l| l.header.index))
}

/// The index of link `name`; its absence is an error.
pub async fn require_link(h: &Handle, name: &str) -> Result<u32, NetlinkError> {
    link_index(h, name)
        .await?
        .ok_or_else(|| NetlinkError::NoLink(name.to_string()))
}

/// Every link (`ip link show`).
pub async fn links(h: &Handle) -> Result<Vec<LinkMessage>, NetlinkError> {
    h.link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(request("link show"))
}

/// A link's name.
pub fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// A link's MAC address as `ip` prints it (`0e:4c:0a:d5:00:02`), empty when it has none.
pub fn link_mac(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(mac) => Some(format_mac(mac)),
            _ => None,
        })
        .unwrap_or_default()
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The IPv4 addresses (with prefix) of link `index`, or of every link when `None`, each with
/// its link's index (`ip -4 addr show [dev …]`).
pub async fn ipv4_addresses(
    h: &Handle,
    index: Option<u32>,
) -> Result<Vec<(u32, Ipv4Net)>, NetlinkError> {
    let mut req = h.address().get();
    if let Some(i) = index {
        req = req.set_link_index_filter(i);
    }
    let msgs: Vec<_> = req
        .execute()
        .try_collect()
        .await
        .map_err(request("addr show"))?;
    Ok(msgs
        .iter()
        .filter(|m| index.is_none_or(|i| m.header.index == i))
        .filter_map(|m| {
            // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's on a
            // point-to-point link); `ip` shows IFA_LOCAL too.
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                })
            })?;
            let net = Ipv4Net::new(addr, m.header.prefix_len).ok()?;
            Some((m.header.index, net))
        })
        .collect())
}

/// Adds `addr` to link `index` unless it is there (a concurrent add of the same address is
/// success: `ip addr add` racing another ADD).
pub async fn ensure_ipv4_address(
    h: &Handle,
    index: u32,
    name: &str,
    addr: Ipv4Net,
) -> Result<(), NetlinkError> {
    if ipv4_addresses(h, Some(index))
        .await?
        .contains(&(index, addr))
    {
        return Ok(());
    }
    let added = h
        .address()
        .add(index, IpAddr::V4(addr.addr()), addr.prefix_len())
        .execute()
        .await
        .map_err(request(format!("addr add {addr} dev {name}")));
    match added {
        Err(e) if e.errno() == Some(EEXIST) => Ok(()),
        other => other,
    }
}

/// A throwaway network namespace for tests: a thread that unshared its own and waits; the
/// namespace goes when the value is dropped (the thread ends, nothing else holds it).
#[cfg(test)]
pub(crate) mod testns {
    use std::path::PathBuf;
    use std::sync::mpsc;

    /// The namespace's thread and the path other threads enter it by.
    pub(crate) struct TestNetns {
        path: PathBuf,
        stop: Option<mpsc::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl TestNetns {
        /// A new, empty network namespace; `None` when not root (or namespaces are not
        /// allowed here).
        pub(crate) fn new() -> Option<TestNetns> {
            let (ready_tx, ready_rx) = mpsc::channel();
            let (stop_tx, stop_rx) = mpsc::channel::<()>();
            let thread = std::thread::spawn(move || {
                match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                    Ok(()) => {
                        let tid = nix::unistd::gettid();
                        let pid = std::process::id();
                        let _ = ready_tx.send(Some(PathBuf::from(format!(
                            "/proc/{pid}/task/{tid}/ns/net"
                        ))));
                        let _ = stop_rx.recv();
                    }
                    Err(e) => {
                        eprintln!("no network namespace ({e}): skipped");
                        let _ = ready_tx.send(None);
                    }
                }
            });
            let path = ready_rx.recv().ok().flatten()?;
            Some(TestNetns {
                path,
                stop: Some(stop_tx),
                thread: Some(thread),
            })
        }

        /// The path to enter it by ([`super::in_netns`]).
        pub(crate) fn path(&self) -> &std::path::Path {
            &self.path
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            self.stop.take();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn addresses_of_a_fresh_namespace_are_only_loopbacks_and_lookups_of_missing_links_are_none() {
        let Some(ns) = testns::TestNetns::new() else {
            return;
        };
        let (lo, missing, addrs) = in_netns(ns.path(), |h| async move {
            let lo = link_index(&h, "lo").await?;
            let missing = link_index(&h, "nosuchlink0").await?;
            let lo_i = require_link(&h, "lo").await?;
            // lo starts down and without addresses in a new namespace.
            h.link()
                .set(rtnetlink::LinkUnspec::new_with_index(lo_i).up().build())
                .execute()
                .await
                .map_err(request("link set lo up"))?;
            let addrs = ipv4_addresses(&h, None).await?;
            Ok::<_, NetlinkError>((lo, missing, addrs))
        })
        .unwrap();
        assert!(lo.is_some());
        assert_eq!(missing, None);
        assert_eq!(
            addrs.into_iter().map(|(_, a)| a.addr()).collect::<Vec<_>>(),
            vec![Ipv4Addr::LOCALHOST]
        );
        assert_eq!(
            format_mac(&[0x0e, 0x4c, 0, 0xd5, 0, 2]),
            "0e:4c:00:d5:00:02"
        );
    }
}
