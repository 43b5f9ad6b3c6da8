//! The per-resource watch cache: one storage watch feeds the current state and a ring buffer of
//! recent events, from which `resourceVersion=0` lists, consistent lists and all watches are
//! served, so N watchers cost one storage watch.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{RwLock, broadcast, watch};

use super::object::{CacheEvent, CacheEventType, CachedObject};
use crate::registry::ResourceDef;
use crate::storage::marks::WriteMarks;
use crate::storage::{EventType, KeyValue, ListOptions, Revision, Storage, StorageError};

/// How many recent events each resource keeps for watch replay.
const RING_CAPACITY: usize = 16 * 1024;
/// How many live events a watcher may fall behind the broadcast before it catches up from the
/// ring instead (see [`Cacher::watch_from`]). Every slot is allocated up front for each resource
/// (~40 bytes each): 8 192 slots took 13 MiB across the built-in resources.
const BROADCAST_CAPACITY: usize = 1024;

/// A message to live watchers.
#[derive(Clone, Debug)]
pub enum Broadcast {
    /// A new event.
    Event(Arc<CacheEvent>),
    /// The cache re-listed from storage; watchers must end (clients re-watch).
    Reset,
}

struct State {
    objects: BTreeMap<String, Arc<CachedObject>>,
    revision: Revision,
    ring: VecDeque<Arc<CacheEvent>>,
    /// Every event with revision > `window_start` is in `ring`.
    window_start: Revision,
    ready: bool,
}

/// What a watch must start with, taken atomically with its subscription.
pub enum WatchStart {
    /// Replay these events (revision > requested), then follow the receiver.
    Replay(Vec<Arc<CacheEvent>>, broadcast::Receiver<Broadcast>),
    /// Send the current state as ADDED events (at `Revision`), then follow the receiver.
    Snapshot(
        Vec<Arc<CachedObject>>,
        Revision,
        broadcast::Receiver<Broadcast>,
    ),
}

/// A snapshot list from the cache.
pub struct CacheList {
    /// Matching objects, sorted by key.
    pub items: Vec<Arc<CachedObject>>,
    /// The cache revision of the snapshot.
    pub revision: Revision,
    /// Whether items after the last one were cut off by the limit.
    pub more: bool,
}

/// The watch cache of one resource. Fed by the [`CacheHub`].
pub struct Cacher {
    def: &'static ResourceDef,
    prefix: String,
    storage: Arc<dyn Storage>,
    state: RwLock<State>,
    tx: broadcast::Sender<Broadcast>,
    /// The hub's revision: every event up to it has been applied to every cache.
    hub_rev: watch::Receiver<Revision>,
    /// This apiserver's last writes per resource (see [`Cacher::wait_local`]).
    marks: Arc<WriteMarks>,
    /// Objects in the cache (read without the lock, e.g. to estimate a LIST's work).
    count: AtomicUsize,
}

impl Cacher {
    /// The key prefix of this resource's objects.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Fills the replay window (just relisted at `revision`, still empty) with the events of
    /// storage history from `from` up to `revision` (the hub's backfill).
    pub(super) async fn install_history(
        &self,
        revision: Revision,
        from: Revision,
        events: Vec<Arc<CacheEvent>>,
    ) {
        let mut st = self.state.write().await;
        if st.revision != revision || !st.ring.is_empty() {
            return;
        }
        let keep = events.len().saturating_sub(RING_CAPACITY);
        st.window_start = if keep > 0 {
            events[keep - 1].rv()
        } else {
            from
        };
        st.ring = events.into_iter().skip(keep).collect();
        // The newest event of an unchanged object carries the same bytes as the relisted
        // object: keep one copy (the event's, which shares its watch line).
        let State { objects, ring, .. } = &mut *st;
        for ev in ring
            .iter()
            .filter(|e| e.event_type != CacheEventType::Deleted)
        {
            if let Some(o) = objects.get_mut(&ev.object.key)
                && o.rv == ev.object.rv
            {
                *o = ev.object.clone();
            }
        }
    }

    /// A storage history event as the watch cache would have recorded it.
    /// `last` holds each key's newest object of the history read so far: a previous state found
    /// there is shared, not decoded again.
    pub(super) fn history_event(
        &self,
        ev: &crate::storage::Event,
        last: &mut HashMap<String, Arc<CachedObject>>,
    ) -> Option<Arc<CacheEvent>> {
        let rev = ev.kv.mod_revision;
        let object = CachedObject::decode(self.def, &ev.kv.key, &ev.kv.value, rev).ok()?;
        let prev = ev.prev_kv.as_ref().and_then(|p| match last.get(&p.key) {
            Some(o) if o.rv == p.mod_revision => Some(o.clone()),
            _ => CachedObject::decode(self.def, &p.key, &p.value, p.mod_revision)
                .ok()
                .map(Arc::new),
        });
        let event_type = match ev.event_type {
            EventType::Delete => CacheEventType::Deleted,
            EventType::Update => CacheEventType::Modified,
            EventType::Create => CacheEventType::Added,
        };
        let ev = Arc::new(CacheEvent::new(event_type, object, prev));
        last.insert(ev.object.key.clone(), ev.object.clone());
        Some(ev)
    }

    pub(super) fn new(
        def: &'static ResourceDef,
        storage: &Arc<dyn Storage>,
        hub_rev: &watch::Receiver<Revision>,
        marks: &Arc<WriteMarks>,
    ) -> Arc<Self> {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        Arc::new(Cacher {
            def,
            prefix: format!("/registry/{}/", def.storage_prefix),
            storage: storage.clone(),
            marks: marks.clone(),
            state: RwLock::new(State {
                objects: BTreeMap::new(),
                revision: 0,
                ring: VecDeque::new(),
                window_start: 0,
                ready: false,
            }),
            tx,
            hub_rev: hub_rev.clone(),
            count: AtomicUsize::new(0),
        })
    }

    pub(super) async fn relist(&self, revision: Revision) -> Result<(), StorageError> {
        let mut objects = BTreeMap::new();
        let mut opts = ListOptions {
            revision: Some(revision),
            limit: Some(1000),
            ..Default::default()
        };
        loop {
            let page = self.storage.list(&self.prefix, opts.clone()).await?;
            let last = page.items.last().map(|kv| kv.key.clone());
            for kv in page.items {
                match CachedObject::decode(self.def, &kv.key, &kv.value, kv.mod_revision) {
                    Ok(o) => {
                        objects.insert(kv.key.clone(), Arc::new(o));
                    }
                    Err(e) => tracing::error!(error = %e, "skipping undecodable object"),
                }
            }
            if !page.more || last.is_none() {
                break;
            }
            opts = ListOptions {
                revision: Some(revision),
                start_after: last,
                limit: Some(1000),
            };
        }
        let mut st = self.state.write().await;
        let was_ready = st.ready;
        st.objects = objects;
        self.count.store(st.objects.len(), Ordering::Relaxed);
        st.revision = revision;
        st.ring.clear();
        st.window_start = revision;
        st.ready = true;
        if was_ready {
            let _ = self.tx.send(Broadcast::Reset);
        }
        Ok(())
    }

    pub(super) async fn apply(&self, event_type: EventType, kv: &KeyValue) {
        let rev = kv.mod_revision;
        let object = match CachedObject::decode(self.def, &kv.key, &kv.value, rev) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "skipping undecodable event");
                return;
            }
        };
        let mut st = self.state.write().await;
        let prev = match event_type {
            EventType::Delete => st.objects.remove(&kv.key),
            EventType::Create | EventType::Update => st.objects.get(&kv.key).cloned(),
        };
        let event_type = match (event_type, &prev) {
            (EventType::Delete, _) => CacheEventType::Deleted,
            (_, Some(_)) => CacheEventType::Modified,
            (_, None) => CacheEventType::Added,
        };
        let ev = Arc::new(CacheEvent::new(event_type, object, prev));
        if event_type != CacheEventType::Deleted {
            st.objects.insert(kv.key.clone(), ev.object.clone());
        }
        self.count.store(st.objects.len(), Ordering::Relaxed);
        st.ring.push_back(ev.clone());
        while st.ring.len() > RING_CAPACITY {
            if let Some(old) = st.ring.pop_front() {
                st.window_start = old.rv();
            }
        }
        st.revision = rev;
        let _ = self.tx.send(Broadcast::Event(ev));
    }

    /// Waits until the caches have seen `rev` (or times out after 3 s, as Kubernetes does).
    pub async fn wait_for(&self, rev: Revision) -> Result<(), Revision> {
        let mut rx = self.hub_rev.clone();
        let res = tokio::time::timeout(Duration::from_secs(3), rx.wait_for(|r| *r >= rev)).await;
        match res {
            Ok(Ok(_)) => Ok(()),
            _ => Err(*self.hub_rev.borrow()),
        }
    }

    /// Waits until the cache holds every write this apiserver made to its resource (read your
    /// own writes, without a storage round trip; see [`crate::storage::marks`]). Writes by
    /// another apiserver on the same etcd are seen when their events arrive.
    pub async fn wait_local(&self) -> Result<(), crate::error::ApiError> {
        let last = self.marks.last(&self.prefix);
        if *self.hub_rev.borrow() >= last {
            return Ok(());
        }
        self.wait_for(last).await.map_err(|_| {
            crate::error::ApiError::new(
                504,
                "Timeout",
                "Timeout: Too large resource version: the watch cache did not catch up in time",
            )
        })
    }

    /// Waits until the cache is at least as fresh as storage (consistent read from cache).
    pub async fn wait_fresh(&self) -> Result<Revision, crate::error::ApiError> {
        let current = self
            .storage
            .current_revision()
            .await
            .map_err(|e| crate::error::ApiError::internal(e.to_string()))?;
        self.wait_for(current).await.map_err(|_| {
            crate::error::ApiError::new(
                504,
                "Timeout",
                "Timeout: Too large resource version: the watch cache did not catch up in time",
            )
        })?;
        Ok(current)
    }

    /// The revision this cache's state is current at.
    pub async fn revision(&self) -> Revision {
        let st = self.state.read().await;
        st.revision.max(*self.hub_rev.borrow())
    }

    /// Drops history at or below `compacted` from the replay window (storage was compacted).
    pub async fn compacted(&self, compacted: Revision) {
        let mut st = self.state.write().await;
        while st.ring.front().is_some_and(|e| e.rv() <= compacted) {
            st.ring.pop_front();
        }
        if st.window_start < compacted {
            st.window_start = compacted;
        }
    }

    /// Lists from the cache: keys under `key_prefix` after `start_after`, filtered, at most
    /// `limit` (0 = all).
    pub async fn list(
        &self,
        key_prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        filter: &(dyn Fn(&CachedObject) -> bool + Sync),
    ) -> CacheList {
        let st = self.state.read().await;
        // Every event up to the hub revision has been applied, and none can be applied while we
        // hold the read lock, so the state is exactly the state at this revision.
        let revision = st.revision.max(*self.hub_rev.borrow());
        let mut items = Vec::new();
        let mut more = false;
        let range = match start_after {
            Some(s) => st
                .objects
                .range::<str, _>((std::ops::Bound::Excluded(s), std::ops::Bound::Unbounded)),
            None => st.objects.range::<str, _>((
                std::ops::Bound::Included(key_prefix),
                std::ops::Bound::Unbounded,
            )),
        };
        for (k, o) in range {
            if !k.starts_with(key_prefix) {
                break;
            }
            if !filter(o) {
                continue;
            }
            if limit > 0 && items.len() == limit {
                more = true;
                break;
            }
            items.push(o.clone());
        }
        CacheList {
            items,
            revision,
            more,
        }
    }

    /// Starts a watch after revision `after` (None: from the current state as ADDED events).
    pub async fn watch_from(&self, after: Option<Revision>) -> Result<WatchStart, WatchFromError> {
        if let Some(rv) = after
            && self.wait_for(rv).await.is_err()
        {
            return Err(WatchFromError::TooLarge {
                requested: rv,
                current: *self.hub_rev.borrow(),
            });
        }
        let st = self.state.read().await;
        let rx = self.tx.subscribe();
        let revision = st.revision.max(*self.hub_rev.borrow());
        match after {
            None => Ok(WatchStart::Snapshot(
                st.objects.values().cloned().collect(),
                revision,
                rx,
            )),
            Some(rv) => {
                if rv < st.window_start {
                    return Err(WatchFromError::TooOld {
                        requested: rv,
                        oldest: st.window_start + 1,
                    });
                }
                let replay = st.ring.iter().filter(|e| e.rv() > rv).cloned().collect();
                Ok(WatchStart::Replay(replay, rx))
            }
        }
    }

    /// The cached object under `key`, if any (may lag storage by the watch delay).
    pub async fn get(&self, key: &str) -> Option<Arc<CachedObject>> {
        self.state.read().await.objects.get(key).cloned()
    }

    /// How many objects the cache holds (all namespaces), without waiting for its lock.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether the cache holds no object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The resource this cache serves.
    pub fn def(&self) -> &'static ResourceDef {
        self.def
    }
}

/// Why a watch could not start at the requested revision.
#[derive(Debug)]
pub enum WatchFromError {
    /// The revision is older than the replay window (client must re-list: 410).
    TooOld {
        /// Requested revision.
        requested: Revision,
        /// Oldest revision that can be watched from.
        oldest: Revision,
    },
    /// The revision is newer than anything the cache has seen.
    TooLarge {
        /// Requested revision.
        requested: Revision,
        /// Current revision.
        current: Revision,
    },
}
