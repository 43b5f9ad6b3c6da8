//! Named network namespaces under `/run/netns`, as iproute2's `ip netns add|del` keeps them
//! (so `ip netns exec`, `ip -n` and the CNI plugin's `CNI_NETNS` all find them): an empty file
//! with the namespace bind-mounted on it, in a directory that is a shared mount point so the
//! mount propagates to other mount namespaces. `lotse up --nodes N` keeps its nodes' namespaces
//! this way.
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// Where named network namespaces live (iproute2's `NETNS_RUN_DIR`).
pub const RUN_DIR: &str = "/run/netns";

/// What went wrong making or removing a named network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// On which path.
        path: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{op} {path}: {source}")]
    Sys {
        /// What was done.
        op: &'static str,
        /// On which path.
        path: String,
        /// Why it failed.
        #[source]
        source: nix::Error,
    },
    /// The thread that made the namespace panicked.
    #[error("the thread making network namespace {0} panicked")]
    Thread(String),
}

fn sys(op: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> NetnsError {
    let path = path.display().to_string();
    move |source| NetnsError::Sys { op, path, source }
}

/// The path of the named namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(RUN_DIR).join(name)
}

/// Whether the named namespace `name` exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Makes [`RUN_DIR`] a shared mount point (bind-mounted on itself first when it is not a mount
/// point yet), as `ip netns add` does.
fn share_run_dir() -> Result<(), NetnsError> {
    let dir = Path::new(RUN_DIR);
    std::fs::create_dir_all(dir).map_err(|source| NetnsError::Io {
        op: "creating",
        path: RUN_DIR.into(),
        source,
    })?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match nix::mount::mount(None::<&str>, dir, None::<&str>, shared, None::<&str>) {
        Err(nix::Error::EINVAL) => {
            nix::mount::mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(sys("bind-mounting on itself", dir))?;
            nix::mount::mount(None::<&str>, dir, None::<&str>, shared, None::<&str>)
                .map_err(sys("making a shared mount", dir))
        }
        other => other.map_err(sys("making a shared mount", dir)),
    }
}

/// Makes the named network namespace `name` (`ip netns add NAME`); returns its path. A
/// namespace of that name that exists already is an error, as with `ip netns add`.
pub fn create(name: &str) -> Result<PathBuf, NetnsError> {
    share_run_dir()?;
    let target = path(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&target)
        .map_err(|source| NetnsError::Io {
            op: "creating",
            path: target.display().to_string(),
            source,
        })?;
    // A thread of its own enters a new namespace and pins it with the bind mount; the thread
    // ends, the namespace stays.
    let made = std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(sys("unsharing the network namespace for", &target))?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(sys("bind-mounting the new network namespace on", &target))
        })
        .join()
        .unwrap_or_else(|_| Err(NetnsError::Thread(name.to_string())))
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&target);
        return Err(e);
    }
    Ok(target)
}

/// Removes the named network namespace `name` (`ip netns del NAME`): the namespace itself
/// goes when nothing else holds it (no process in it, no other mount). Absent is success.
pub fn delete(name: &str) -> Result<(), NetnsError> {
    let target = path(name);
    if !target.exists() {
        return Ok(());
    }
    match nix::mount::umount2(&target, MntFlags::MNT_DETACH) {
        // Not mounted (a leftover file): just the file.
        Ok(()) | Err(nix::Error::EINVAL) => {}
        Err(e) => return Err(sys("unmounting", &target)(e)),
    }
    std::fs::remove_file(&target).map_err(|source| NetnsError::Io {
        op: "removing",
        path: target.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_namespace_is_made_entered_and_removed() {
        let name = format!("lotse-test-{}", std::process::id());
        let p = match create(&name) {
            Ok(p) => p,
            Err(e) => {
                // Not root, or namespaces are not allowed here.
                eprintln!("no named network namespaces here ({e}): skipped");
                return;
            }
        };
        assert!(exists(&name));
        assert!(create(&name).is_err(), "made twice");
        // Inside: only a loopback, not this machine's links.
        let links = crate::netlink::in_netns(&p, |h| async move {
            let links = crate::netlink::links(&h).await?;
            Ok::<_, crate::netlink::NetlinkError>(
                links
                    .iter()
                    .filter_map(|l| crate::netlink::link_name(l).map(str::to_string))
                    .collect::<Vec<_>>(),
            )
        })
        .unwrap();
        assert_eq!(links, vec!["lo".to_string()]);
        delete(&name).unwrap();
        assert!(!exists(&name));
        delete(&name).unwrap();
    }
}
