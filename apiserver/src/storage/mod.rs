//! The storage layer: one key-value interface with etcd's revision semantics, several backends.
//!
//! Every write gets a new, strictly increasing global revision. An object's `resourceVersion` is the
//! `mod_revision` of its key; a list's `resourceVersion` is the revision it was read at. Only the
//! apiserver talks to storage; everything else goes through the API.
//!
//! Backends: [`sqlite::SqliteStorage`] (embedded default, kine-like append-only table) and
//! [`etcd::EtcdStorage`] (a real etcd cluster). Both pass the same conformance suite in
//! `storage::conformance`.

use async_trait::async_trait;
use futures::stream::BoxStream;

pub mod compactor;
pub mod conformance;
pub mod encryption;
pub mod etcd;
pub mod marks;
pub mod sqlite;

/// A global storage revision (etcd's `revision`). Starts at 1 for an empty store's first write.
pub type Revision = i64;

/// One stored key with the revisions etcd would report for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// Full key, e.g. `/registry/pods/default/web-0`.
    pub key: String,
    /// Stored bytes (JSON in the apiserver).
    pub value: Vec<u8>,
    /// Revision at which this key was created (most recent creation).
    pub create_revision: Revision,
    /// Revision of the last write to this key; the object's resourceVersion.
    pub mod_revision: Revision,
}

/// What happened to a key in a watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// The key did not exist before this write.
    Create,
    /// The key existed and was overwritten.
    Update,
    /// The key was deleted.
    Delete,
}

/// One change seen by a watch, in revision order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Create, update or delete.
    pub event_type: EventType,
    /// For create/update: the new key-value (mod_revision = the event's revision).
    /// For delete: the last value before deletion, with `mod_revision` set to the revision of
    /// the delete itself (as Kubernetes reports a deleted object's resourceVersion).
    pub kv: KeyValue,
    /// The previous value for updates and deletes (None for creates).
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// Revision at which this event happened.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// Options for [`Storage::list`].
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// Read at this revision; `None` (or 0) reads the latest state.
    pub revision: Option<Revision>,
    /// Only keys strictly greater than this one (for `continue` paging).
    pub start_after: Option<String>,
    /// At most this many items; `None` or 0 means no limit.
    pub limit: Option<usize>,
}

/// The result of [`Storage::list`].
#[derive(Clone, Debug, Default)]
pub struct ListResult {
    /// Items under the prefix, sorted by key.
    pub items: Vec<KeyValue>,
    /// The revision the list was read at (pass it back for the next page).
    pub revision: Revision,
    /// True when more keys exist after the last returned item (at the same revision).
    pub more: bool,
    /// How many keys remain after this page, when the backend knows it cheaply.
    pub remaining: Option<i64>,
}

/// Errors a storage backend reports. Callers map them to Kubernetes `Status` errors.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// `create` found the key already present.
    #[error("key {key} already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// The key does not exist (update/delete of a missing key).
    #[error("key {key} not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// A guarded update/delete found a different `mod_revision` than expected.
    #[error("key {key} was modified: expected revision {expected}, current {}", current.as_ref().map(|kv| kv.mod_revision).unwrap_or(0))]
    Conflict {
        /// The key.
        key: String,
        /// The revision the caller expected.
        expected: Revision,
        /// The current value (None if the key is gone).
        current: Option<KeyValue>,
    },
    /// The requested revision has been compacted away ("too old").
    #[error("required revision {requested} has been compacted (compacted revision {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The oldest revision still available.
        compacted: Revision,
    },
    /// The requested revision is newer than the store's current revision.
    #[error("requested revision {requested} is in the future (current revision {current})")]
    FutureRevision {
        /// The revision asked for.
        requested: Revision,
        /// The store's current revision.
        current: Revision,
    },
    /// The backend failed (I/O, connection, corrupt data).
    #[error("storage backend error: {0}")]
    Backend(String),
}

/// Result alias for storage calls.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A stream of watch events in revision order. An `Err` item ends the stream (e.g. the watcher
/// fell too far behind and was dropped, or the backend lost its connection); the caller re-lists.
pub type WatchStream = BoxStream<'static, Result<Event>>;

/// A key-value store with etcd's revision semantics.
///
/// Guarantees every backend must give (checked by `storage::conformance`):
/// - revisions are global and strictly increasing; each successful write gets exactly one new
///   revision, returned to the caller;
/// - `create` succeeds only if the key is absent;
/// - `update` and `delete` succeed only if the key's current `mod_revision` equals the expected
///   one, otherwise `Conflict` (with the current value) or `NotFound`;
/// - `list` at a revision returns exactly the state as of that revision, sorted by key, so
///   paging with `start_after` at a fixed revision is consistent;
/// - `watch` from revision R first replays every event with revision > R under the prefix, in
///   order, then streams new ones; if R is older than the compacted revision it fails with
///   `Compacted`.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Stores `value` under `key` if the key does not exist; returns the new revision.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision>;

    /// Reads the latest value of `key`, if present.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Replaces the value of `key` if its `mod_revision` equals `expected`; returns the new
    /// revision.
    async fn update(&self, key: &str, expected: Revision, value: Vec<u8>) -> Result<Revision>;

    /// Deletes `key` if its `mod_revision` equals `expected`; returns the revision of the delete
    /// and the value that was deleted.
    async fn delete(&self, key: &str, expected: Revision) -> Result<(Revision, KeyValue)>;

    /// Lists keys starting with `prefix` (which should end in `/`), see [`ListOptions`].
    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult>;

    /// Watches keys starting with `prefix`, replaying events after `after_revision`.
    async fn watch(&self, prefix: &str, after_revision: Revision) -> Result<WatchStream>;

    /// The store's current (latest) revision.
    async fn current_revision(&self) -> Result<Revision>;

    /// Discards history older than `revision`; reads and watches before it then fail with
    /// `Compacted`. Current values are kept.
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// The oldest revision that can still be read or watched from.
    async fn compacted_revision(&self) -> Result<Revision>;

    /// Whether `key`'s stored form is stale: written by an encryption provider or key other
    /// than the one that writes now, so an update must rewrite it even if the object is
    /// unchanged (Kubernetes' `stale` from `TransformFromStorage`). Plain stores: never.
    async fn stale(&self, _key: &str) -> Result<bool> {
        Ok(false)
    }
}
