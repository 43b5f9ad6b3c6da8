//! Host-local style address management from the node's podCIDR.
//!
//! The store is a directory per network: one file per allocated address (named by the address,
//! holding `<container id>\n<ifname>`), `last_reserved_ip` for round-robin allocation, and a `lock`
//! file whose exclusive lock serialises concurrent plugin invocations.
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use crate::CniError;

/// An allocation store for one network.
pub struct Store {
    dir: PathBuf,
    _lock: fs::File,
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> CniError {
    let msg = format!("{what} {}", path.display());
    move |e| CniError::Other(format!("{msg}: {e}"))
}

impl Store {
    /// Opens (creating) the store of `network` under `data_dir` and takes its exclusive lock; the
    /// lock is released when the store is dropped.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store, CniError> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let lock_path = dir.join("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("open", &lock_path))?;
        lock.lock().map_err(io("lock", &lock_path))?;
        Ok(Store { dir, _lock: lock })
    }

    fn owner(container_id: &str, ifname: &str) -> String {
        format!("{container_id}\n{ifname}")
    }

    /// The address already held by this container and interface, if any.
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>, CniError> {
        let want = Self::owner(container_id, ifname);
        for entry in fs::read_dir(&self.dir).map_err(io("read", &self.dir))? {
            let entry = entry.map_err(io("read", &self.dir))?;
            let Ok(ip) = entry.file_name().to_string_lossy().parse::<Ipv4Addr>() else {
                continue;
            };
            if fs::read_to_string(entry.path())
                .map(|s| s.trim() == want)
                .unwrap_or(false)
            {
                return Ok(Some(ip));
            }
        }
        Ok(None)
    }

    /// Allocates an address of `cidr` (skipping network, gateway and broadcast) for the container,
    /// returning the one it already holds if ADD is repeated.
    pub fn allocate(
        &self,
        cidr: Ipv4Net,
        container_id: &str,
        ifname: &str,
    ) -> Result<Ipv4Addr, CniError> {
        if let Some(ip) = self.find(container_id, ifname)? {
            return Ok(ip);
        }
        let first = u32::from(cidr.network()) + 2;
        let last = u32::from(cidr.broadcast()).saturating_sub(1);
        if first > last {
            return Err(CniError::InvalidConfig(format!(
                "podCIDR {cidr} has no room for pods"
            )));
        }
        let last_path = self.dir.join("last_reserved_ip");
        let start = fs::read_to_string(&last_path)
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
            .map(u32::from)
            .filter(|ip| (first..=last).contains(ip))
            .map(|ip| if ip >= last { first } else { ip + 1 })
            .unwrap_or(first);
        let size = last - first + 1;
        for i in 0..size {
            let candidate = Ipv4Addr::from(first + (start - first + i) % size);
            let path = self.dir.join(candidate.to_string());
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(_) => {
                    fs::write(&path, Self::owner(container_id, ifname))
                        .map_err(io("write", &path))?;
                    fs::write(&last_path, candidate.to_string())
                        .map_err(io("write", &last_path))?;
                    return Ok(candidate);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io("create", &path)(e)),
            }
        }
        Err(CniError::TryAgain(format!(
            "no free address left in podCIDR {cidr}"
        )))
    }

    /// Releases every address held by the container and interface; releasing nothing is success.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<Ipv4Addr>, CniError> {
        let mut released = Vec::new();
        while let Some(ip) = self.find(container_id, ifname)? {
            let path = self.dir.join(ip.to_string());
            fs::remove_file(&path).map_err(io("remove", &path))?;
            released.push(ip);
        }
        Ok(released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_distinct_addresses_and_releases_idempotently() {
        let d = tempfile::tempdir().unwrap();
        let cidr: Ipv4Net = "10.244.0.0/29".parse().unwrap();
        let s = Store::open(d.path(), "net").unwrap();
        let a = s.allocate(cidr, "a", "eth0").unwrap();
        let b = s.allocate(cidr, "b", "eth0").unwrap();
        assert_eq!(a.to_string(), "10.244.0.2");
        assert_eq!(b.to_string(), "10.244.0.3");
        assert_eq!(
            s.allocate(cidr, "a", "eth0").unwrap(),
            a,
            "repeated ADD keeps its address"
        );
        assert_eq!(s.release("a", "eth0").unwrap(), vec![a]);
        assert!(
            s.release("a", "eth0").unwrap().is_empty(),
            "second DEL is a no-op"
        );
    }

    #[test]
    fn exhausts_small_pool() {
        let d = tempfile::tempdir().unwrap();
        let cidr: Ipv4Net = "10.244.0.0/30".parse().unwrap();
        let s = Store::open(d.path(), "net").unwrap();
        s.allocate(cidr, "a", "eth0").unwrap();
        assert!(matches!(
            s.allocate(cidr, "b", "eth0"),
            Err(CniError::TryAgain(_))
        ));
        s.release("a", "eth0").unwrap();
        s.allocate(cidr, "b", "eth0").unwrap();
    }
}
