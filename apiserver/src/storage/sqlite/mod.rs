//! The embedded storage backend: etcd's revision semantics on one SQLite file, the way kine does it.
//!
//! One append-only table holds every write:
//! `kine(id = revision, name, created, deleted, create_revision, prev_revision, value, old_value)`.
//! A create, update or delete appends one row whose `id` is the new global revision; a delete
//! appends a tombstone (`deleted = 1`, `old_value` = the deleted value). The state at revision R
//! is, per name, the newest row with `id <= R` unless that row is a tombstone. Every row carries
//! enough to rebuild its watch event on its own (`old_value`, `prev_revision`,
//! `create_revision`), so watch replay reads only the rows it returns.
//!
//! Concurrency: one dedicated writer thread owns the only writing connection, so revisions are
//! assigned and committed in order and a reader never sees revision N+1 before N. Writes that
//! queue up while a transaction commits are committed together in the next one (group commit;
//! each keeps its own revision and result), and WAL checkpoints run on a separate thread. The unique
//! index on `(name, prev_revision)` is kine's concurrency guard and stays as a second line of
//! defence. Reads run on a small pool of read-only connections in `spawn_blocking`; WAL gives
//! each read a consistent snapshot while the writer keeps writing.
//!
//! Watch: the writer publishes each committed event to an in-process [`Broadcaster`]; nobody
//! polls the database. A new watch subscribes first, then replays history rows from the table,
//! then continues with live events, skipping the ones it already replayed. A subscriber whose
//! bounded buffer overflows is dropped and its stream ends with an error; writers never wait.
//!
//! Compaction deletes superseded rows and tombstones below the compaction revision in small
//! batches, letting queued writes through between batches, and records the revision in `meta`.
//!
//! The file must be owned by one process: the revision counter and the broadcaster live in
//! memory.

mod broadcaster;
mod read_pool;
mod schema;
mod writer;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::{
    KeyValue, ListOptions, ListResult, Result, Revision, Storage, StorageError, WatchStream,
};
use broadcaster::{Broadcaster, SqliteWatch, WatchState};
use read_pool::ReadPool;
use schema::{
    SCHEMA, SQL_COMPACTED, SQL_LIST_AFTER_KEY, SQL_LIST_FROM_PREFIX, compacted_in, configure, db,
    latest_row, prefix_end,
};
use writer::{Shared, WRITE_QUEUE, WriteOp, WriteOutcome, WriteRequest, Writer, checkpoint_loop};

/// The embedded SQLite backend; see the module docs for the layout.
///
/// Cheap to share behind `Arc<dyn Storage>`; dropping it stops the writer thread once queued
/// writes are done, which ends open watches.
pub struct SqliteStorage {
    writer: mpsc::Sender<WriteRequest>,
    /// Dropping it stops the checkpoint thread.
    _stop_checkpoints: std::sync::mpsc::Sender<()>,
    readers: Arc<ReadPool>,
    shared: Arc<Shared>,
    /// A directory removed on drop (for [`SqliteStorage::open_temporary`]).
    temp_dir: Option<PathBuf>,
}

impl SqliteStorage {
    /// Opens (creating if needed) the database at `path`, sets WAL mode and starts the writer.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_inner(path, None, false)
    }

    /// [`open`](Self::open) with `PRAGMA synchronous = FULL` when `full`: every commit is
    /// fsynced before it is acknowledged, so it survives power loss too (NORMAL, the default,
    /// survives any process crash; a power cut may lose the last commits, never corrupt).
    pub fn open_with_sync(path: &Path, full: bool) -> Result<Self> {
        Self::open_inner(path, None, full)
    }

    /// Opens a fresh database in a new directory under the system temp dir, removed when the
    /// storage is dropped. For tests and throwaway servers.
    pub fn open_temporary() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("lotse-sqlite-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).map_err(|e| {
            StorageError::Backend(format!("creating temp dir {}: {e}", dir.display()))
        })?;
        let path = dir.join("state.db");
        Self::open_inner(&path, Some(dir), false)
    }

    fn open_inner(path: &Path, temp_dir: Option<PathBuf>, sync_full: bool) -> Result<Self> {
        make_private(path)?;
        let mut conn = Connection::open(path).map_err(db)?;
        configure(&conn)?;
        if sync_full {
            conn.execute_batch("PRAGMA synchronous = FULL;")
                .map_err(db)?;
        }
        conn.execute_batch(SCHEMA).map_err(db)?;
        let (current, compacted) = {
            let tx = conn.transaction().map_err(db)?;
            let seq: i64 = tx
                .query_row(
                    "SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'kine'",
                    [],
                    |r| r.get(0),
                )
                .map_err(db)?;
            let max_id: i64 = tx
                .query_row("SELECT COALESCE(MAX(id), 0) FROM kine", [], |r| r.get(0))
                .map_err(db)?;
            let compacted: i64 = tx
                .query_row(SQL_COMPACTED, [], |r| r.get(0))
                .optional()
                .map_err(db)?
                .unwrap_or(0);
            tx.commit().map_err(db)?;
            (seq.max(max_id), compacted)
        };
        info!(path = %path.display(), revision = current, compacted, "opened sqlite storage");
        let shared = Arc::new(Shared {
            current: AtomicI64::new(current),
            compacted: AtomicI64::new(compacted),
            broadcaster: Broadcaster::default(),
        });
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let writer = Writer {
            conn,
            shared: shared.clone(),
            rx,
            compaction: None,
        };
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| StorageError::Backend(format!("starting writer thread: {e}")))?;
        let (stop_checkpoints, stopped) = std::sync::mpsc::channel();
        let checkpointer = Connection::open(path).map_err(db)?;
        checkpointer
            .busy_timeout(Duration::from_secs(5))
            .map_err(db)?;
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn({
                let mut wal = path.as_os_str().to_owned();
                wal.push("-wal");
                move || checkpoint_loop(checkpointer, PathBuf::from(wal), stopped)
            })
            .map_err(|e| StorageError::Backend(format!("starting checkpoint thread: {e}")))?;
        Ok(Self {
            writer: tx,
            _stop_checkpoints: stop_checkpoints,
            readers: Arc::new(ReadPool {
                path: path.to_path_buf(),
                idle: Mutex::new(Vec::new()),
            }),
            shared,
            temp_dir,
        })
    }

    async fn write(&self, op: WriteOp) -> Result<WriteOutcome> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(WriteRequest { op, reply })
            .await
            .map_err(|_| StorageError::Backend("sqlite writer has stopped".into()))?;
        rx.await
            .map_err(|_| StorageError::Backend("sqlite writer dropped the request".into()))?
    }

    /// Checks a requested read revision against the store; `None`/0 means latest.
    fn read_revision(&self, requested: Option<Revision>) -> Result<Revision> {
        let current = self.shared.current.load(Ordering::Acquire);
        match requested {
            None => Ok(current),
            Some(r) if r <= 0 => Ok(current),
            Some(r) if r > current => Err(StorageError::FutureRevision {
                requested: r,
                current,
            }),
            Some(r) => Ok(r),
        }
    }
}

impl Drop for SqliteStorage {
    fn drop(&mut self) {
        if let Some(dir) = &self.temp_dir
            && let Err(e) = std::fs::remove_dir_all(dir)
        {
            warn!(dir = %dir.display(), error = %e, "removing temporary sqlite dir");
        }
    }
}

impl std::fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStorage")
            .field("path", &self.readers.path)
            .field("revision", &self.shared.current.load(Ordering::Relaxed))
            .finish()
    }
}

#[async_trait]
impl Storage for SqliteStorage {
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision> {
        match self
            .write(WriteOp::Create {
                key: key.to_owned(),
                value,
            })
            .await?
        {
            WriteOutcome::Revision(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_owned();
        self.readers
            .run(move |conn| {
                let row = latest_row(conn, &key)?;
                Ok(row.filter(|r| !r.deleted).map(|r| r.into_kv(key)))
            })
            .await
    }

    async fn update(&self, key: &str, expected: Revision, value: Vec<u8>) -> Result<Revision> {
        match self
            .write(WriteOp::Update {
                key: key.to_owned(),
                expected,
                value,
            })
            .await?
        {
            WriteOutcome::Revision(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// The returned `KeyValue` is the deleted value as stored (its `mod_revision` is the last
    /// write before the delete); the delete's own revision is the first element.
    async fn delete(&self, key: &str, expected: Revision) -> Result<(Revision, KeyValue)> {
        match self
            .write(WriteOp::Delete {
                key: key.to_owned(),
                expected,
            })
            .await?
        {
            WriteOutcome::Deleted(r, kv) => Ok((r, kv)),
            other => Err(unexpected(other)),
        }
    }

    /// `remaining` is always `None`: counting would cost a scan of the rest of the range.
    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        let revision = self.read_revision(opts.revision)?;
        let compacted = self.shared.compacted.load(Ordering::Acquire);
        if revision < compacted {
            return Err(StorageError::Compacted {
                requested: revision,
                compacted,
            });
        }
        let prefix = prefix.to_owned();
        let limit = opts.limit.filter(|l| *l > 0);
        let start_after = opts.start_after;
        self.readers
            .run(move |conn| {
                let tx = conn.transaction().map_err(db)?;
                // Checked inside the read snapshot: a compaction committed before this snapshot
                // would otherwise hide rows this revision needs.
                let compacted = compacted_in(&tx)?;
                if revision < compacted {
                    return Err(StorageError::Compacted {
                        requested: revision,
                        compacted,
                    });
                }
                let end = prefix_end(&prefix);
                let (sql, lower) = match &start_after {
                    Some(after) if after.as_str() >= prefix.as_str() => {
                        (SQL_LIST_AFTER_KEY, after.as_str())
                    }
                    _ => (SQL_LIST_FROM_PREFIX, prefix.as_str()),
                };
                // One extra row tells whether there is more.
                let sql_limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX - 1) + 1);
                let mut items = Vec::with_capacity(limit.unwrap_or(64).min(10_000));
                {
                    let mut stmt = tx.prepare_cached(sql).map_err(db)?;
                    let mut rows = stmt
                        .query(params![lower, end, revision, sql_limit])
                        .map_err(db)?;
                    while let Some(row) = rows.next().map_err(db)? {
                        let name: String = row.get(1).map_err(db)?;
                        if !name.starts_with(prefix.as_str()) {
                            continue;
                        }
                        items.push(KeyValue {
                            mod_revision: row.get(0).map_err(db)?,
                            key: name,
                            create_revision: row.get(2).map_err(db)?,
                            value: row.get(3).map_err(db)?,
                        });
                    }
                }
                tx.commit().map_err(db)?;
                let more = limit.is_some_and(|l| items.len() > l);
                if let Some(l) = limit {
                    items.truncate(l);
                }
                Ok(ListResult {
                    items,
                    revision,
                    more,
                    remaining: None,
                })
            })
            .await
    }

    async fn watch(&self, prefix: &str, after_revision: Revision) -> Result<WatchStream> {
        let after = after_revision.max(0);
        let compacted = self.shared.compacted.load(Ordering::Acquire);
        if after + 1 < compacted {
            return Err(StorageError::Compacted {
                requested: after + 1,
                compacted,
            });
        }
        // Subscribe before replaying: every event committed after this point reaches the
        // channel, every event committed before it is in the table; duplicates are skipped.
        let (rx, lagged) = self.shared.broadcaster.subscribe(prefix);
        let watch = SqliteWatch {
            readers: self.readers.clone(),
            prefix: prefix.to_owned(),
            rx,
            lagged,
            state: WatchState::Replaying {
                buffered: VecDeque::new(),
                last: after,
                exhausted: false,
            },
        };
        Ok(futures::stream::unfold(watch, |mut w| async move {
            let item = w.next_event().await?;
            Some((item, w))
        })
        .boxed())
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.shared.current.load(Ordering::Acquire))
    }

    /// Compacting at or below the already compacted revision is a no-op.
    async fn compact(&self, revision: Revision) -> Result<()> {
        match self.write(WriteOp::Compact { revision }).await? {
            WriteOutcome::Compacted => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        Ok(self.shared.compacted.load(Ordering::Acquire))
    }
}

fn unexpected(outcome: WriteOutcome) -> StorageError {
    StorageError::Backend(format!("sqlite writer answered with {outcome:?}"))
}

/// Writes a consistent copy of the SQLite database at `path` to `out` (a new file) while the
/// apiserver may be writing to it: SQLite's `VACUUM INTO` reads in one transaction, so the copy
/// holds exactly the writes committed when it began. The copy is private (0600).
pub fn snapshot(path: &Path, out: &Path) -> Result<()> {
    if !path.is_file() {
        return Err(StorageError::Backend(format!(
            "{} does not exist: no SQLite database to back up",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(db)?;
    conn.busy_timeout(Duration::from_secs(30)).map_err(db)?;
    let target = out
        .to_str()
        .ok_or_else(|| StorageError::Backend(format!("{}: not a UTF-8 path", out.display())))?;
    conn.execute("VACUUM INTO ?1", [target]).map_err(db)?;
    make_private(out)
}

/// The database holds every Secret: it and its WAL and shared-memory files are readable by the
/// owner only (0600), whatever the umask. SQLite gives the `-wal` and `-shm` files the database
/// file's mode, so the database is created 0600 before SQLite opens it; existing files with a
/// wider mode are repaired.
fn make_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |what: &str, p: &Path, e: std::io::Error| {
        StorageError::Backend(format!("{what} {}: {e}", p.display()))
    };
    if !path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| err("creating", path, e))?;
    }
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %p.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "database file readable by others: setting 0600");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| err("chmod", &p, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::broadcaster::WATCH_BUFFER;
    use super::*;
    use crate::storage::conformance;

    #[test]
    fn database_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.db");
        let store = SqliteStorage::open(&path).expect("open");
        drop(store);
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        // A database left readable by others (an older Lotse) is repaired on open.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let _store = SqliteStorage::open(&path).expect("reopen");
        assert_eq!(mode(&path), 0o600);
        let wal = dir.path().join("state.db-wal");
        if wal.exists() {
            assert_eq!(mode(&wal), 0o600);
        }
    }

    fn temp_store() -> (tempfile::TempDir, Arc<SqliteStorage>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStorage::open(&dir.path().join("state.db")).expect("open");
        (dir, Arc::new(store))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_suite() {
        let (_dir, store) = temp_store();
        conformance::run_all(store).await;
    }

    #[tokio::test]
    async fn open_temporary_removes_its_dir() {
        let store = SqliteStorage::open_temporary().expect("open");
        let dir = store.readers.path.parent().expect("parent").to_path_buf();
        store.create("/t/a", b"1".to_vec()).await.expect("create");
        assert!(dir.exists());
        drop(store);
        assert!(!dir.exists());
    }

    #[tokio::test]
    async fn delete_appends_tombstone_and_recreate_starts_new_lifecycle() {
        let (_dir, store) = temp_store();
        let r1 = store.create("/t/a", b"1".to_vec()).await.expect("create");
        let (r2, _) = store.delete("/t/a", r1).await.expect("delete");
        let r3 = store.create("/t/a", b"2".to_vec()).await.expect("recreate");
        let kv = store.get("/t/a").await.expect("get").expect("present");
        assert_eq!(kv.create_revision, r3);
        assert_eq!(kv.mod_revision, r3);
        let conn = Connection::open(store.readers.path.clone()).expect("open");
        let rows: Vec<(i64, i64, i64, i64)> = conn
            .prepare("SELECT id, created, deleted, prev_revision FROM kine WHERE name = '/t/a' ORDER BY id")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(rows, vec![(r1, 1, 0, 0), (r2, 0, 1, r1), (r3, 1, 0, r2)]);

        // Compaction past the tombstone removes the old lifecycle entirely.
        store.compact(r3).await.expect("compact");
        let ids: Vec<i64> = conn
            .prepare("SELECT id FROM kine WHERE name = '/t/a' ORDER BY id")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(ids, vec![r3]);
    }

    #[tokio::test]
    async fn compaction_drops_deleted_keys_and_keeps_latest() {
        let (_dir, store) = temp_store();
        let a1 = store.create("/t/a", b"1".to_vec()).await.expect("create");
        let a2 = store
            .update("/t/a", a1, b"2".to_vec())
            .await
            .expect("update");
        let b1 = store.create("/t/b", b"x".to_vec()).await.expect("create");
        let (b2, _) = store.delete("/t/b", b1).await.expect("delete");
        let after = store
            .update("/t/a", a2, b"3".to_vec())
            .await
            .expect("update");
        store.compact(after).await.expect("compact");
        let conn = Connection::open(store.readers.path.clone()).expect("open");
        let ids: Vec<i64> = conn
            .prepare("SELECT id FROM kine ORDER BY id")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        // Reads at `after` or later see a's row at `after`; everything older is gone.
        assert_eq!(ids, vec![after]);
        assert!(!ids.contains(&a2));
        assert!(!ids.contains(&b2));
        let listed = store
            .list("/t/", ListOptions::default())
            .await
            .expect("list");
        assert_eq!(listed.items.len(), 1);
        assert_eq!(listed.items[0].value, b"3");
    }

    #[tokio::test]
    async fn reopen_sees_same_data_and_revision() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.db");
        let (rev, compacted) = {
            let store = SqliteStorage::open(&path).expect("open");
            let r1 = store.create("/t/a", b"1".to_vec()).await.expect("create");
            let r2 = store.create("/t/b", b"2".to_vec()).await.expect("create");
            let (r3, _) = store.delete("/t/b", r2).await.expect("delete");
            store.compact(r2).await.expect("compact");
            assert!(r1 < r2 && r2 < r3);
            (r3, r2)
        };
        // The writer thread closes its connection asynchronously after the drop.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let store = SqliteStorage::open(&path).expect("reopen");
        assert_eq!(store.current_revision().await.expect("rev"), rev);
        assert_eq!(
            store.compacted_revision().await.expect("compacted"),
            compacted
        );
        let kv = store.get("/t/a").await.expect("get").expect("present");
        assert_eq!(kv.value, b"1");
        assert!(store.get("/t/b").await.expect("get").is_none());
        let next = store.create("/t/c", b"3".to_vec()).await.expect("create");
        assert_eq!(next, rev + 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_creates_of_one_key_have_one_winner() {
        let (_dir, store) = temp_store();
        let mut tasks = Vec::new();
        for i in 0..16u8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.create("/t/contended", vec![i]).await
            }));
        }
        let mut wins = 0;
        for task in tasks {
            match task.await.expect("join") {
                Ok(_) => wins += 1,
                Err(StorageError::AlreadyExists { .. }) => {}
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert_eq!(wins, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_keeps_one_revision_and_result_per_write() {
        let (_dir, store) = temp_store();
        let mut watch = store.watch("/g/", 0).await.expect("watch");
        let mut tasks = Vec::new();
        // 200 creates of 100 keys in flight at once: batches mix winners and refusals.
        for i in 0..200u32 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("/g/{:03}", i % 100);
                (
                    key.clone(),
                    store.create(&key, i.to_be_bytes().to_vec()).await,
                )
            }));
        }
        let mut revisions = Vec::new();
        for task in tasks {
            match task.await.expect("join") {
                (key, Ok(rev)) => revisions.push((rev, key)),
                (_, Err(StorageError::AlreadyExists { .. })) => {}
                (_, Err(e)) => panic!("unexpected error {e}"),
            }
        }
        revisions.sort();
        assert_eq!(revisions.len(), 100);
        let first = revisions[0].0;
        for (i, (rev, key)) in revisions.iter().enumerate() {
            assert_eq!(*rev, first + i as Revision, "revisions are consecutive");
            let event = watch.next().await.expect("event").expect("ok");
            assert_eq!((event.kv.mod_revision, &event.kv.key), (*rev, key));
            let kv = store.get(key).await.expect("get").expect("stored");
            assert_eq!(kv.mod_revision, *rev);
        }
        assert_eq!(store.current_revision().await.expect("rev"), first + 99);
    }

    #[tokio::test]
    async fn slow_watcher_is_dropped_with_error() {
        let (_dir, store) = temp_store();
        let mut watch = store.watch("/slow/", 0).await.expect("watch");
        // Nothing to replay; move the stream into live mode before flooding it.
        let first = store.create("/slow/0", vec![]).await.expect("create");
        let event = watch.next().await.expect("event").expect("ok");
        assert_eq!(event.revision(), first);
        for i in 1..=(WATCH_BUFFER + 10) {
            store
                .create(&format!("/slow/{i}"), vec![])
                .await
                .expect("create");
        }
        let mut ok = 0usize;
        let mut ended_with_error = false;
        while let Some(item) = watch.next().await {
            match item {
                Ok(_) => ok += 1,
                Err(_) => {
                    ended_with_error = true;
                    break;
                }
            }
        }
        assert!(ended_with_error);
        // The replayed first event also sat in the buffer (skipped as a duplicate), so the
        // subscriber was dropped one event early.
        assert!(
            (WATCH_BUFFER - 1..=WATCH_BUFFER).contains(&ok),
            "got {ok} events"
        );
    }

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end("/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end(""), vec![0xFF]);
    }

    /// Prints timings for a 10k × 2 KiB list and creates; run with `--nocapture` to see them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn list_ten_thousand_objects() {
        let (_dir, store) = temp_store();
        let value = vec![b'x'; 2048];
        let started = std::time::Instant::now();
        let mut latencies = Vec::with_capacity(10_000);
        for i in 0..10_000 {
            let t = std::time::Instant::now();
            store
                .create(&format!("/registry/pods/default/pod-{i:05}"), value.clone())
                .await
                .expect("create");
            latencies.push(t.elapsed());
        }
        latencies.sort();
        println!(
            "10000 creates in {:?}; p50 {:?} p99 {:?}",
            started.elapsed(),
            latencies[5_000],
            latencies[9_900]
        );
        let plan: Vec<String> = {
            let conn = Connection::open(store.readers.path.clone()).expect("open");
            conn.prepare(&format!("EXPLAIN QUERY PLAN {SQL_LIST_FROM_PREFIX}"))
                .expect("prepare")
                .query_map(
                    params!["/registry/pods/", b"/registry/pods0".to_vec(), 1, 1],
                    |r| r.get(3),
                )
                .expect("query")
                .collect::<rusqlite::Result<_>>()
                .expect("rows")
        };
        println!("list plan: {plan:?}");
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let listed = store
                .list("/registry/pods/", ListOptions::default())
                .await
                .expect("list");
            assert_eq!(listed.items.len(), 10_000);
            println!("list of 10000: {:?}", t.elapsed());
        }
        let t = std::time::Instant::now();
        let listed = store
            .list(
                "/registry/pods/",
                ListOptions {
                    limit: Some(500),
                    ..Default::default()
                },
            )
            .await
            .expect("list");
        assert!(listed.more);
        println!("list page of 500: {:?}", t.elapsed());
    }
}
