//! Controller expectations, as kube-controller-manager's `ControllerExpectations` /
//! `UIDTrackingControllerExpectations`: after a sync creates or deletes pods, the controller
//! must not act on the same owner again until its informer cache has seen those writes,
//! otherwise a lagging cache makes it create (or delete) the same pods twice.
//!
//! Lotse tracks the names of the pods it created and deleted (the create response carries the
//! generated name). A pending creation is observed once the pod is in the cache (the pod
//! watch reports it, or a sync finds it in the store); a pending deletion once the pod is gone
//! from the cache or terminating. Records expire after [`EXPECTATIONS_TTL`], as in Kubernetes,
//! so a missed event can delay a sync but never wedge it.
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long unobserved expectations hold a controller back (Kubernetes' `ExpectationsTimeout`).
pub const EXPECTATIONS_TTL: Duration = Duration::from_secs(5 * 60);

/// What the cache currently says about one expected pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cached {
    /// Not in the cache.
    Absent,
    /// In the cache and not terminating.
    Present,
    /// In the cache with a deletion timestamp.
    Terminating,
}

#[derive(Debug)]
struct Record {
    creates: HashSet<String>,
    deletes: HashSet<String>,
    since: Instant,
}

/// Expectations per owner (keyed by the owner's UID); cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Expectations {
    records: Mutex<HashMap<String, Record>>,
    ttl: Duration,
}

impl Default for Expectations {
    fn default() -> Self {
        Self::new(EXPECTATIONS_TTL)
    }
}

impl Expectations {
    /// Expectations that expire after `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Expectations {
            records: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Record>) -> R) -> R {
        // A poisoned lock only means another sync panicked mid-update; the sets stay usable.
        let mut guard = self.records.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    fn record<'a>(map: &'a mut HashMap<String, Record>, owner: &str) -> &'a mut Record {
        let r = map.entry(owner.to_string()).or_insert_with(|| Record {
            creates: HashSet::new(),
            deletes: HashSet::new(),
            since: Instant::now(),
        });
        r.since = Instant::now();
        r
    }

    /// Records that `owner` created the pods `names` and waits to see them in the cache.
    pub fn expect_creations(&self, owner: &str, names: impl IntoIterator<Item = String>) {
        self.with(|m| Self::record(m, owner).creates.extend(names));
    }

    /// Records that `owner` deleted the pods `names` and waits to see them go.
    pub fn expect_deletions(&self, owner: &str, names: impl IntoIterator<Item = String>) {
        self.with(|m| Self::record(m, owner).deletes.extend(names));
    }

    /// The watch reported pod `name` of `owner` in state `cached`.
    pub fn observe(&self, owner: &str, name: &str, cached: Cached) {
        self.with(|m| {
            if let Some(r) = m.get_mut(owner) {
                if cached != Cached::Absent {
                    r.creates.remove(name);
                }
                if cached != Cached::Present {
                    r.deletes.remove(name);
                }
            }
        });
    }

    /// Whether `owner` may sync: everything it wrote has been observed (checked against the
    /// cache through `lookup`) or its record has expired. Fulfilled records are dropped.
    pub fn satisfied(&self, owner: &str, lookup: impl Fn(&str) -> Cached) -> bool {
        self.with(|m| {
            let Some(r) = m.get_mut(owner) else {
                return true;
            };
            r.creates.retain(|n| lookup(n) == Cached::Absent);
            r.deletes.retain(|n| lookup(n) == Cached::Present);
            let done =
                (r.creates.is_empty() && r.deletes.is_empty()) || r.since.elapsed() > self.ttl;
            if done {
                m.remove(owner);
            }
            done
        })
    }

    /// How many writes of `owner` are still unobserved (creations, deletions).
    pub fn pending(&self, owner: &str) -> (usize, usize) {
        self.with(|m| {
            m.get(owner)
                .map(|r| (r.creates.len(), r.deletes.len()))
                .unwrap_or((0, 0))
        })
    }

    /// Drops the record of an owner that is gone.
    pub fn forget(&self, owner: &str) {
        self.with(|m| m.remove(owner));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creations_hold_until_cached_and_deletions_until_gone() {
        let e = Expectations::default();
        assert!(e.satisfied("rs", |_| Cached::Absent));
        e.expect_creations("rs", ["a".to_string(), "b".to_string()]);
        assert!(!e.satisfied("rs", |_| Cached::Absent));
        // "a" reaches the cache by lookup, "b" by a watch event.
        assert!(!e.satisfied("rs", |n| if n == "a" {
            Cached::Present
        } else {
            Cached::Absent
        }));
        e.observe("rs", "b", Cached::Present);
        assert!(e.satisfied("rs", |_| Cached::Absent));

        e.expect_deletions("rs", ["c".to_string()]);
        assert!(!e.satisfied("rs", |_| Cached::Present));
        assert!(e.satisfied("rs", |_| Cached::Terminating));
        assert_eq!(e.pending("rs"), (0, 0));
    }

    #[test]
    fn records_expire() {
        let e = Expectations::new(Duration::from_millis(1));
        e.expect_creations("rs", ["a".to_string()]);
        std::thread::sleep(Duration::from_millis(5));
        assert!(e.satisfied("rs", |_| Cached::Absent));
    }
}
