//! The hub that feeds every watch cache from ONE storage watch on `/registry/`, in global
//! revision order (so "the caches have seen revision R" is a single number and consistent reads
//! are served from memory), follows compaction, and backfills the replay windows on start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{RwLock, watch};

use super::cacher::Cacher;
use super::object::CacheEvent;
use crate::registry::ResourceDef;
use crate::storage::marks::WriteMarks;
use crate::storage::{Revision, Storage, StorageError};

/// How often the caches check whether storage was compacted.
const COMPACTION_POLL: Duration = Duration::from_secs(2);
/// On (re)start the replay windows are filled with up to this many revisions of storage history
/// (never beyond compaction), so a watcher resuming from a resourceVersion it saw before an
/// apiserver restart continues without a gap instead of re-listing.
const BACKFILL_REVISIONS: Revision = 10_000;
/// How long the history read at start may take; beyond it the windows start at the list.
const BACKFILL_TIMEOUT: Duration = Duration::from_secs(5);

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
            c.def().group == def.group
                && c.def().version == def.version
                && c.def().plural == def.plural
                && c.def().selectable_fields == def.selectable_fields
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
                .filter(|c| ev.kv.key.starts_with(c.prefix()))
            {
                c.apply(ev.event_type, &ev.kv).await;
            }
            let extra = self.extra.read().await;
            for c in extra.iter().filter(|c| ev.kv.key.starts_with(c.prefix())) {
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
            if let Some(i) = caches
                .iter()
                .position(|c| ev.kv.key.starts_with(c.prefix()))
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
            c.install_history(revision, from, events).await;
        }
        Ok(n)
    }
}
