//! Read-your-writes for the watch caches without asking storage.
//!
//! Admission reads other objects (quotas, limit ranges, priority and storage classes,
//! disruption budgets) from the watch caches, and must see what was written just before
//! through this apiserver (a quota created a moment ago limits the next create). Asking storage
//! for its current revision and waiting for the caches to reach it (a consistent read) does
//! that, but costs a storage round trip per request and waits for every write in flight,
//! whatever its resource: under a create storm, every create waited for all the others' events.
//!
//! [`Marking`] wraps the storage and remembers, per resource prefix (`/registry/<resource>/`),
//! the revision of the last write this apiserver made there; a cache then only waits until the
//! hub has applied that revision. Writes by another apiserver sharing the etcd cluster are seen
//! when their events arrive, as Kubernetes' admission plugins see them through informers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{KeyValue, ListOptions, ListResult, Result, Revision, Storage, WatchStream};

/// The revision of this apiserver's last write under each resource prefix.
#[derive(Debug, Default)]
pub struct WriteMarks {
    last: Mutex<HashMap<String, Revision>>,
}

/// The part of `key` a mark is kept for: up to its third `/` (`/registry/configmaps/`;
/// `/registry/example.com/` for a custom resource's group, a coarser but safe grouping).
fn section(key: &str) -> &str {
    match key.match_indices('/').nth(2) {
        Some((i, _)) => &key[..=i],
        None => key,
    }
}

impl WriteMarks {
    /// Records a write of `key` at `revision`.
    pub fn mark(&self, key: &str, revision: Revision) {
        let section = section(key);
        // A panic while holding the lock cannot leave the map inconsistent.
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match last.get_mut(section) {
            Some(r) => *r = (*r).max(revision),
            None => {
                last.insert(section.to_owned(), revision);
            }
        }
    }

    /// The revision of the last write under `prefix`'s resource (0 if none).
    pub fn last(&self, prefix: &str) -> Revision {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.get(section(prefix)).copied().unwrap_or(0)
    }
}

/// A storage that records every successful write in its [`WriteMarks`].
pub struct Marking {
    inner: Arc<dyn Storage>,
    marks: Arc<WriteMarks>,
}

impl Marking {
    /// Wraps `inner`, recording its writes in `marks`.
    pub fn new(inner: Arc<dyn Storage>, marks: Arc<WriteMarks>) -> Self {
        Self { inner, marks }
    }
}

#[async_trait]
impl Storage for Marking {
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision> {
        let rev = self.inner.create(key, value).await?;
        self.marks.mark(key, rev);
        Ok(rev)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.inner.get(key).await
    }

    async fn update(&self, key: &str, expected: Revision, value: Vec<u8>) -> Result<Revision> {
        let rev = self.inner.update(key, expected, value).await?;
        self.marks.mark(key, rev);
        Ok(rev)
    }

    async fn delete(&self, key: &str, expected: Revision) -> Result<(Revision, KeyValue)> {
        let (rev, kv) = self.inner.delete(key, expected).await?;
        self.marks.mark(key, rev);
        Ok((rev, kv))
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        self.inner.list(prefix, opts).await
    }

    async fn watch(&self, prefix: &str, after_revision: Revision) -> Result<WatchStream> {
        self.inner.watch(prefix, after_revision).await
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.inner.current_revision().await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.inner.compact(revision).await
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        self.inner.compacted_revision().await
    }

    async fn stale(&self, key: &str) -> Result<bool> {
        self.inner.stale(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_kept_per_resource() {
        let m = WriteMarks::default();
        m.mark("/registry/resourcequotas/ns1/q", 7);
        m.mark("/registry/resourcequotas/ns2/q", 5);
        m.mark("/registry/configmaps/ns1/c", 9);
        assert_eq!(m.last("/registry/resourcequotas/"), 7);
        assert_eq!(m.last("/registry/resourcequotas/ns1/"), 7);
        assert_eq!(m.last("/registry/configmaps/"), 9);
        assert_eq!(m.last("/registry/limitranges/"), 0);
        // Custom resources are grouped by their API group.
        m.mark("/registry/example.com/widgets/ns/w", 11);
        assert_eq!(m.last("/registry/example.com/gadgets/"), 11);
    }

    #[tokio::test]
    async fn writes_are_marked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner: Arc<dyn Storage> = Arc::new(
            super::super::sqlite::SqliteStorage::open(&dir.path().join("db.sqlite")).expect("open"),
        );
        let marks = Arc::new(WriteMarks::default());
        let s = Marking::new(inner, marks.clone());
        let r1 = s
            .create("/registry/pods/a/p", b"{}".to_vec())
            .await
            .expect("create");
        assert_eq!(marks.last("/registry/pods/"), r1);
        let r2 = s
            .update("/registry/pods/a/p", r1, b"{}".to_vec())
            .await
            .expect("update");
        assert_eq!(marks.last("/registry/pods/"), r2);
        let (r3, _) = s.delete("/registry/pods/a/p", r2).await.expect("delete");
        assert_eq!(marks.last("/registry/pods/"), r3);
        // A refused write marks nothing.
        assert!(
            s.update("/registry/pods/a/p", r3, b"{}".to_vec())
                .await
                .is_err()
        );
        assert_eq!(marks.last("/registry/pods/"), r3);
    }
}
