//! The per-resource watch cache: one storage watch feeds the current state and a ring buffer of
//! recent events, from which `resourceVersion=0` lists, consistent lists and all watches are
//! served, so N watchers cost one storage watch.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::{RwLock, broadcast, watch};

use crate::registry::{ResourceDef, fields};
use crate::storage::marks::WriteMarks;
use crate::storage::{EventType, KeyValue, ListOptions, Revision, Storage, StorageError};

/// How many recent events each resource keeps for watch replay.
const RING_CAPACITY: usize = 16 * 1024;
/// How many live events a watcher may fall behind the broadcast before it catches up from the
/// ring instead (see [`Cacher::watch_from`]). Every slot is allocated up front for each resource
/// (~40 bytes each): 8 192 slots took 13 MiB across the built-in resources.
const BROADCAST_CAPACITY: usize = 1024;
/// How often the caches check whether storage was compacted.
const COMPACTION_POLL: Duration = Duration::from_secs(2);
/// On (re)start the replay windows are filled with up to this many revisions of storage history
/// (never beyond compaction), so a watcher resuming from a resourceVersion it saw before an
/// apiserver restart continues without a gap instead of re-listing.
const BACKFILL_REVISIONS: Revision = 10_000;
/// How long the history read at start may take; beyond it the windows start at the list.
const BACKFILL_TIMEOUT: Duration = Duration::from_secs(5);

/// One object as the cache holds it: the JSON bytes served to clients plus what filters need.
#[derive(Debug)]
pub struct CachedObject {
    /// Storage key.
    pub key: String,
    /// JSON with `metadata.resourceVersion` set.
    pub raw: Bytes,
    /// resourceVersion (the key's mod revision, or the delete revision for deleted objects).
    pub rv: Revision,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// Values of the resource's selectable fields.
    pub fields: Vec<(&'static str, String)>,
}

impl CachedObject {
    /// Decodes a stored value, injecting `resourceVersion` (and converting it when `def` is a
    /// view of objects stored in another group/version's shape).
    ///
    /// Storage holds objects as compact `serde_json` output without `metadata.resourceVersion`
    /// (writers strip it), so the bytes served are the stored bytes with the field spliced into
    /// `metadata` where inserting it into the decoded value would put it: one parse per event
    /// and no re-encoding. Anything laid out otherwise takes the decode-and-encode path.
    pub fn decode(
        def: &ResourceDef,
        key: &str,
        value: &[u8],
        rv: Revision,
    ) -> Result<Self, String> {
        let mut obj: Value =
            serde_json::from_slice(value).map_err(|e| format!("corrupt object at {key}: {e}"))?;
        if def.converts() {
            // Another group/version's view of the stored object: converted, so re-encoded.
            let mut obj = def.from_storage(obj);
            return Ok(Self::from_value(def, key, &mut obj, rv));
        }
        let spliced = obj
            .pointer("/metadata")
            .and_then(Value::as_object)
            .filter(|m| !m.contains_key("resourceVersion"))
            .and_then(|_| splice_resource_version(value, rv));
        match spliced {
            Some(raw) => {
                set_resource_version(&mut obj, rv);
                // Debug builds (every test run) check the splice against a full re-encoding and
                // fall back to the re-encoded bytes, with a log line, should they ever differ.
                #[cfg(debug_assertions)]
                if serde_json::to_vec(&obj).ok().as_deref() != Some(raw.as_slice()) {
                    tracing::error!(%key, "spliced resourceVersion differs from re-encoding");
                    return Ok(Self::from_value(def, key, &mut obj, rv));
                }
                Ok(Self::with_raw(def, key, &obj, Bytes::from(raw), rv))
            }
            None => Ok(Self::from_value(def, key, &mut obj, rv)),
        }
    }

    /// Builds a cached object from a decoded value (sets its `resourceVersion`).
    pub fn from_value(def: &ResourceDef, key: &str, obj: &mut Value, rv: Revision) -> Self {
        set_resource_version(obj, rv);
        let raw = Bytes::from(serde_json::to_vec(obj).unwrap_or_default());
        Self::with_raw(def, key, obj, raw, rv)
    }

    /// A cached object serving `raw` (the encoding of `obj`).
    fn with_raw(def: &ResourceDef, key: &str, obj: &Value, raw: Bytes, rv: Revision) -> Self {
        let labels = obj
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let fields_vals = def
            .selectable_fields
            .iter()
            .map(|f| (*f, (def.field)(obj, f).unwrap_or_default()))
            .collect();
        CachedObject {
            key: key.to_string(),
            raw,
            rv,
            namespace: fields::namespace(obj).to_string(),
            name: fields::name(obj).to_string(),
            labels,
            fields: fields_vals,
        }
    }

    /// Value of a field for field selectors.
    pub fn field(&self, f: &str) -> Option<String> {
        match f {
            "metadata.name" => Some(self.name.clone()),
            "metadata.namespace" => Some(self.namespace.clone()),
            _ => self
                .fields
                .iter()
                .find(|(k, _)| *k == f)
                .map(|(_, v)| v.clone()),
        }
    }
}

fn set_resource_version(obj: &mut Value, rv: Revision) {
    fields::ensure_object(obj, &["metadata"])
        .insert("resourceVersion".into(), Value::String(rv.to_string()));
}

/// `raw` (a compact JSON object whose top-level `metadata` object has no `resourceVersion`)
/// with `"resourceVersion":"<rv>"` appended to `metadata`, as `serde_json` with
/// `preserve_order` encodes the value after inserting it. None when `raw` is not compact JSON
/// or has no `metadata` object.
fn splice_resource_version(raw: &[u8], rv: Revision) -> Option<Vec<u8>> {
    let close = metadata_close(raw)?;
    let rv = rv.to_string();
    let mut out = Vec::with_capacity(raw.len() + rv.len() + 22);
    out.extend_from_slice(&raw[..close]);
    if raw[close - 1] != b'{' {
        out.push(b',');
    }
    out.extend_from_slice(b"\"resourceVersion\":\"");
    out.extend_from_slice(rv.as_bytes());
    out.push(b'"');
    out.extend_from_slice(&raw[close..]);
    Some(out)
}

/// `raw` (compact JSON of an object with a top-level `metadata` object) with metadata's
/// `resourceVersion` set to `rv`, as re-encoding the decoded value after setting it would give
/// (replaced in place, or appended to `metadata`). None when `raw` is not laid out so.
pub fn replace_resource_version(raw: &[u8], rv: Revision) -> Option<Vec<u8>> {
    let (open, _) = member(raw, 0, b"metadata")?;
    if raw[open] != b'{' {
        return None;
    }
    let Some((start, end)) = member(raw, open, b"resourceVersion") else {
        return splice_resource_version(raw, rv);
    };
    let rv = rv.to_string();
    let mut out = Vec::with_capacity(raw.len() + rv.len());
    out.extend_from_slice(&raw[..start]);
    out.push(b'"');
    out.extend_from_slice(rv.as_bytes());
    out.push(b'"');
    out.extend_from_slice(&raw[end..]);
    Some(out)
}

/// Index of the `}` closing the top-level `metadata` object of compact JSON `raw`.
fn metadata_close(raw: &[u8]) -> Option<usize> {
    let (start, end) = member(raw, 0, b"metadata")?;
    (raw[start] == b'{').then_some(end - 1)
}

/// The span (start, end exclusive) of member `name`'s value in the compact JSON object that
/// starts at `object` in `raw`. None when absent or when `raw` is not compact JSON.
fn member(raw: &[u8], object: usize, name: &[u8]) -> Option<(usize, usize)> {
    if raw.get(object) != Some(&b'{') || raw.get(object + 1) == Some(&b'}') {
        return None;
    }
    let mut pos = object + 1;
    loop {
        let key_end = skip_string(raw, pos)?;
        let key = &raw[pos + 1..key_end - 1];
        if raw.get(key_end) != Some(&b':') {
            return None;
        }
        let start = key_end + 1;
        let end = skip_value(raw, start)?;
        if key == name {
            return Some((start, end));
        }
        match raw.get(end) {
            Some(b',') => pos = end + 1,
            _ => return None,
        }
    }
}

/// End (exclusive) of the JSON string starting at `pos`.
fn skip_string(raw: &[u8], pos: usize) -> Option<usize> {
    if raw.get(pos) != Some(&b'"') {
        return None;
    }
    let mut i = pos + 1;
    while let Some(&c) = raw.get(i) {
        match c {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// End (exclusive) of the compact JSON value starting at `pos`.
fn skip_value(raw: &[u8], pos: usize) -> Option<usize> {
    match *raw.get(pos)? {
        b'"' => skip_string(raw, pos),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = pos;
            while let Some(&c) = raw.get(i) {
                match c {
                    b'"' => {
                        i = skip_string(raw, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let len = raw[pos..]
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']'))?;
            Some(pos + len)
        }
    }
}

/// One watch line: `{"type":"<t>","object":<raw>}` and a newline.
pub fn watch_line(event_type: &str, raw: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(raw.len() + 32);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(event_type.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(raw);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

/// Kind of a cached event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheEventType {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Deleted.
    Deleted,
}

/// An event in the ring buffer.
#[derive(Debug)]
pub struct CacheEvent {
    /// The JSON watch line (`{"type":..,"object":..}\n`) for watchers without selectors that
    /// change the event type, encoded once and shared by every such watcher.
    pub line: Bytes,
    /// What happened.
    pub event_type: CacheEventType,
    /// The new state (for deletes: the last state, with the delete's revision).
    pub object: Arc<CachedObject>,
    /// The previous state (updates and deletes).
    pub prev: Option<Arc<CachedObject>>,
}

impl CacheEvent {
    /// An event whose object's bytes are a slice of its watch line: one allocation holds both
    /// (the ring and the cache would otherwise keep every recent object twice).
    pub fn new(
        event_type: CacheEventType,
        mut object: CachedObject,
        prev: Option<Arc<CachedObject>>,
    ) -> Self {
        let name = match event_type {
            CacheEventType::Added => "ADDED",
            CacheEventType::Modified => "MODIFIED",
            CacheEventType::Deleted => "DELETED",
        };
        let line = watch_line(name, &object.raw);
        let start = line.len() - object.raw.len() - 2;
        object.raw = line.slice(start..line.len() - 2);
        CacheEvent {
            line,
            event_type,
            object: Arc::new(object),
            prev,
        }
    }

    /// The event's revision.
    pub fn rv(&self) -> Revision {
        self.object.rv
    }
}

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

/// Feeds every watch cache from ONE storage watch on `/registry/`, in global revision order, so
/// that "the caches have seen revision R" is a single number and consistent reads can be served
/// from memory.
pub struct CacheHub {
    storage: Arc<dyn Storage>,
    marks: Arc<WriteMarks>,
    caches: Vec<Arc<Cacher>>,
    /// Caches added at run time (custom resources); held while an event is applied, so one
    /// added under the write lock starts exactly at the hub's revision.
    extra: RwLock<Vec<Arc<Cacher>>>,
    rev_tx: watch::Sender<Revision>,
    rev_rx: watch::Receiver<Revision>,
}

impl CacheHub {
    /// Creates one cache per resource and starts the storage watch loop.
    /// `marks` are the writes made through `storage` (a [`crate::storage::marks::Marking`]).
    pub fn start(
        defs: &'static [ResourceDef],
        storage: Arc<dyn Storage>,
        marks: Arc<WriteMarks>,
    ) -> Arc<Self> {
        let (rev_tx, rev_rx) = watch::channel(0);
        let caches = defs
            .iter()
            .map(|def| Cacher::new(def, &storage, &rev_rx, &marks))
            .collect();
        let hub = Arc::new(CacheHub {
            storage,
            marks,
            caches,
            extra: RwLock::new(Vec::new()),
            rev_tx,
            rev_rx,
        });
        let h = hub.clone();
        tokio::spawn(async move { h.run().await });
        let h = hub.clone();
        tokio::spawn(async move { h.follow_compactions().await });
        hub
    }

    /// The caches.
    pub fn caches(&self) -> &[Arc<Cacher>] {
        &self.caches
    }

    /// Adds a cache for a resource served from now on (a custom resource): it lists at the
    /// hub's current revision and then follows the hub's events like every other cache.
    pub async fn add(&self, def: &'static ResourceDef) -> Result<Arc<Cacher>, StorageError> {
        let mut extra = self.extra.write().await;
        // One cache per group/version/resource for the life of the server: a CRD edited or
        // re-created with the same names keeps it (its events keep it current); a change of
        // its selectable fields starts a new one (the fields are extracted when cached).
        if let Some(c) = extra.iter().find(|c| {
            c.def.group == def.group
                && c.def.version == def.version
                && c.def.plural == def.plural
                && c.def.selectable_fields == def.selectable_fields
        }) {
            return Ok(c.clone());
        }
        let cache = Cacher::new(def, &self.storage, &self.rev_rx, &self.marks);
        let revision = *self.rev_rx.borrow();
        // Before the hub's first list (revision 0) the hub lists it with the others.
        if revision > 0 {
            cache.relist(revision).await?;
        }
        extra.push(cache.clone());
        Ok(cache)
    }

    async fn run(self: Arc<Self>) {
        loop {
            match self.list_and_watch().await {
                Ok(()) => tracing::info!("storage watch ended; re-listing"),
                Err(e) => tracing::warn!(error = %e, "watch cache error; re-listing"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// History compacted away in storage (by this or another apiserver) is dropped from the
    /// caches' replay windows too, so a watch from a compacted revision gets 410 Expired and
    /// the client re-lists, as with Kubernetes.
    async fn follow_compactions(&self) {
        let mut seen = 0;
        let mut tick = tokio::time::interval(COMPACTION_POLL);
        loop {
            tick.tick().await;
            match self.storage.compacted_revision().await {
                Ok(c) if c > seen => {
                    seen = c;
                    for cache in &self.caches {
                        cache.compacted(c).await;
                    }
                    for cache in self.extra.read().await.iter() {
                        cache.compacted(c).await;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "reading compacted revision"),
            }
        }
    }

    async fn list_and_watch(&self) -> Result<(), StorageError> {
        let extra = self.extra.read().await;
        let revision = self.storage.current_revision().await?;
        for c in self.caches.iter().chain(extra.iter()) {
            c.relist(revision).await?;
        }
        match tokio::time::timeout(BACKFILL_TIMEOUT, self.backfill(revision, &extra)).await {
            Ok(Ok(n)) if n > 0 => tracing::debug!(events = n, "watch caches backfilled"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "watch cache history not read"),
            Err(_) => tracing::warn!("watch cache history not read in time"),
        }
        self.rev_tx.send_replace(revision);
        drop(extra);
        let mut stream = self.storage.watch("/registry/", revision).await?;
        while let Some(ev) = stream.next().await {
            let ev = ev?;
            let rev = ev.kv.mod_revision;
            for c in self
                .caches
                .iter()
                .filter(|c| ev.kv.key.starts_with(&c.prefix))
            {
                c.apply(ev.event_type, &ev.kv).await;
            }
            let extra = self.extra.read().await;
            for c in extra.iter().filter(|c| ev.kv.key.starts_with(&c.prefix)) {
                c.apply(ev.event_type, &ev.kv).await;
            }
            self.rev_tx.send_replace(rev);
            drop(extra);
        }
        Ok(())
    }
}

impl CacheHub {
    /// Fills the caches' replay windows (just relisted at `revision`, empty) with the events
    /// of storage history up to `revision`; returns how many. All-or-nothing per run: the
    /// windows change only once the whole history read succeeded.
    async fn backfill(
        &self,
        revision: Revision,
        extra: &[Arc<Cacher>],
    ) -> Result<usize, StorageError> {
        let compacted = self.storage.compacted_revision().await?;
        let from = compacted.max(revision - BACKFILL_REVISIONS).max(0);
        if from >= revision {
            return Ok(0);
        }
        let caches: Vec<&Arc<Cacher>> = self.caches.iter().chain(extra.iter()).collect();
        let mut history: Vec<Vec<Arc<CacheEvent>>> = vec![Vec::new(); caches.len()];
        let mut stream = self.storage.watch("/registry/", from).await?;
        let mut n = 0;
        let mut last = HashMap::new();
        while let Some(ev) = stream.next().await {
            let ev = ev?;
            let rev = ev.kv.mod_revision;
            if rev > revision {
                break;
            }
            if let Some(i) = caches.iter().position(|c| ev.kv.key.starts_with(&c.prefix))
                && let Some(e) = caches[i].history_event(&ev, &mut last)
            {
                history[i].push(e);
                n += 1;
            }
            if rev == revision {
                break;
            }
        }
        for (c, events) in caches.iter().zip(history) {
            let mut st = c.state.write().await;
            if st.revision != revision || !st.ring.is_empty() {
                continue;
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
        Ok(n)
    }
}

impl Cacher {
    /// A storage history event as the watch cache would have recorded it.
    /// `last` holds each key's newest object of the history read so far: a previous state found
    /// there is shared, not decoded again.
    fn history_event(
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

    fn new(
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

    async fn relist(&self, revision: Revision) -> Result<(), StorageError> {
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

    async fn apply(&self, event_type: EventType, kv: &KeyValue) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reencoded(raw: &[u8], rv: Revision) -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(raw).expect("json");
        set_resource_version(&mut v, rv);
        serde_json::to_vec(&v).expect("encode")
    }

    #[test]
    fn splice_matches_reencoding() {
        let objects = [
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "d", "labels": {"x": "}{\"]"}}, "spec": {"containers": [{"name": "c", "args": ["\\", "\"{", "[]"]}]}}),
            json!({"metadata": {}, "kind": "ConfigMap", "data": {"k": "\u{1}\n\t é"}}),
            json!({"kind": "X", "n": 1.5, "b": true, "z": null, "arr": [[1, {}], []], "metadata": {"name": "m", "managedFields": [{"f:x": {}}]}, "tail": -3}),
        ];
        for o in objects {
            let raw = serde_json::to_vec(&o).expect("encode");
            for rv in [1, 42, 1_234_567_890] {
                let spliced = splice_resource_version(&raw, rv).expect("splices");
                assert_eq!(
                    String::from_utf8_lossy(&spliced),
                    String::from_utf8_lossy(&reencoded(&raw, rv))
                );
            }
        }
    }

    #[test]
    fn replacing_the_resource_version_matches_reencoding() {
        let objects = [
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "a", "resourceVersion": "12", "labels": {"resourceVersion": "x"}}, "involvedObject": {"resourceVersion": "3"}}),
            json!({"kind": "X", "metadata": {"resourceVersion": "5"}, "tail": [1, {"a": "}"}]}),
            json!({"kind": "X", "metadata": {"name": "no-rv", "annotations": {"k": "\"resourceVersion\":\"1\""}}}),
            json!({"metadata": {}, "kind": "ConfigMap"}),
        ];
        for o in objects {
            let raw = serde_json::to_vec(&o).expect("encode");
            for rv in [1, 42, 1_234_567_890] {
                let replaced = replace_resource_version(&raw, rv);
                let want = reencoded(&raw, rv);
                if o["metadata"].as_object().is_some_and(|m| m.is_empty()) {
                    // `{}` has no member to replace and is appended to by the splice.
                    assert_eq!(replaced.as_deref(), Some(want.as_slice()));
                    continue;
                }
                assert_eq!(
                    String::from_utf8_lossy(&replaced.expect("replaces")),
                    String::from_utf8_lossy(&want)
                );
            }
        }
        assert_eq!(replace_resource_version(b"{\"metadata\":[]}", 1), None);
        assert_eq!(replace_resource_version(b"{ \"metadata\": {}}", 1), None);
    }

    #[test]
    fn splice_declines_what_it_cannot_place() {
        for raw in [
            &b"{\"kind\":\"X\"}"[..],
            b"{\"metadata\":null}",
            b"{\"metadata\":[]}",
            b"{ \"metadata\": {}}",
            b"[]",
            b"{\"a\":\"unterminated",
        ] {
            assert_eq!(
                splice_resource_version(raw, 7),
                None,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn decode_serves_the_resource_version_either_way() {
        let def = crate::registry::catalog::all()
            .iter()
            .find(|d| d.kind == "ConfigMap")
            .expect("configmaps");
        for raw in [
            &br#"{"kind":"ConfigMap","metadata":{"name":"a","namespace":"d"}}"#[..],
            // Laid out otherwise (whitespace, a stale resourceVersion): decoded and re-encoded.
            br#"{ "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "d"} }"#,
            br#"{"kind":"ConfigMap","metadata":{"resourceVersion":"3","name":"a","namespace":"d"}}"#,
        ] {
            let o = CachedObject::decode(def, "/registry/configmaps/d/a", raw, 9).expect("decodes");
            let v: Value = serde_json::from_slice(&o.raw).expect("json");
            assert_eq!(v["metadata"]["resourceVersion"], "9");
            assert_eq!((o.name.as_str(), o.namespace.as_str(), o.rv), ("a", "d", 9));
        }
    }
}
