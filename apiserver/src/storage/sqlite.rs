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

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::{
    Event, EventType, KeyValue, ListOptions, ListResult, Result, Revision, Storage, StorageError,
    WatchStream,
};

/// How many live events a watcher may have buffered before it is dropped.
const WATCH_BUFFER: usize = 10_000;
/// Rows read per query while a watch replays history.
const REPLAY_PAGE: usize = 1_000;
/// Rows deleted per compaction transaction; writes queued meanwhile run between batches.
const COMPACT_BATCH: i64 = 2_000;
/// Idle reader connections kept open.
const MAX_IDLE_READERS: usize = 8;
/// Page cache of each reader connection, in KiB (SQLite's negative `cache_size`). Readers serve
/// paginated LISTs, history replays and compaction scans, each reading a page about once, and
/// any write invalidates what they cached; the OS's file cache serves re-reads just as well. At
/// 8 MiB each, eight idle readers held up to 64 MiB of RSS once a long run had touched enough
/// of a large database (a 30-minute soak's RSS rose 23 % while they filled).
const READER_CACHE_KIB: i64 = 2 * 1024;
/// Write requests that may queue for the writer thread.
const WRITE_QUEUE: usize = 1_024;
/// How often the checkpoint thread copies the WAL into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);
/// WAL size beyond which the checkpoint thread also restarts and truncates the WAL. A passive
/// checkpoint copies frames but never rewinds the log while some read transaction is open, and
/// under steady reads (watch replays, lists) one nearly always is: the WAL then grew by every
/// frame ever written (2 GiB in a 60 s soak at 2 000 writes/s).
const WAL_TRUNCATE_BYTES: u64 = 64 << 20;
/// How long a truncating checkpoint waits for readers to leave the WAL; writers wait meanwhile,
/// so it is short, and a busy attempt is simply tried again at the next interval.
const WAL_TRUNCATE_WAIT: Duration = Duration::from_millis(20);
/// Queued writes committed together in one transaction (group commit).
const MAX_BATCH: usize = 64;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    created INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    create_revision INTEGER NOT NULL,
    prev_revision INTEGER NOT NULL,
    value BLOB NOT NULL,
    old_value BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS kine_name_prev_revision_uindex ON kine (name, prev_revision);
CREATE INDEX IF NOT EXISTS kine_name_id_deleted_index ON kine (name, id, deleted);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Newest row of one name (any revision).
const SQL_LATEST_ROW: &str = "SELECT id, deleted, create_revision, value FROM kine \
     WHERE name = ?1 ORDER BY id DESC LIMIT 1";

/// Live rows at revision ?3 within prefix bounds. The `(name, id, deleted)` index streams rows
/// in key order (no sort, `LIMIT` stops the scan early) and answers the "is there a newer row"
/// probe on its own; only returned rows touch the table.
const SQL_LIST_FROM_PREFIX: &str = "SELECT k.id, k.name, k.create_revision, k.value FROM kine AS k INDEXED BY kine_name_id_deleted_index \
     WHERE k.name >= ?1 AND k.name < CAST(?2 AS TEXT) AND +k.id <= ?3 AND k.deleted = 0 \
       AND NOT EXISTS (SELECT 1 FROM kine AS n WHERE n.name = k.name AND n.id > k.id AND n.id <= ?3) \
     ORDER BY k.name LIMIT ?4";

/// As [`SQL_LIST_FROM_PREFIX`] but strictly after a key (paging with `start_after`).
const SQL_LIST_AFTER_KEY: &str = "SELECT k.id, k.name, k.create_revision, k.value FROM kine AS k INDEXED BY kine_name_id_deleted_index \
     WHERE k.name > ?1 AND k.name < CAST(?2 AS TEXT) AND +k.id <= ?3 AND k.deleted = 0 \
       AND NOT EXISTS (SELECT 1 FROM kine AS n WHERE n.name = k.name AND n.id > k.id AND n.id <= ?3) \
     ORDER BY k.name LIMIT ?4";

/// History rows after a revision under a prefix, in revision order (scans the rowid range;
/// `+name` keeps the planner off the name index, which would need a sort).
const SQL_REPLAY: &str = "SELECT id, name, created, deleted, create_revision, prev_revision, value, old_value \
     FROM kine WHERE id > ?1 AND +name >= ?2 AND +name < CAST(?3 AS TEXT) ORDER BY id LIMIT ?4";

const SQL_INSERT: &str = "INSERT INTO kine (id, name, created, deleted, create_revision, prev_revision, value, old_value) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

const SQL_COMPACTED: &str = "SELECT value FROM meta WHERE key = 'compact_revision'";

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

/// State shared by the writer thread, readers and watches.
struct Shared {
    /// Latest committed revision; updated by the writer after each commit.
    current: AtomicI64,
    /// Oldest revision still readable; updated by the writer when a compaction starts.
    compacted: AtomicI64,
    broadcaster: Broadcaster,
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

fn db(e: rusqlite::Error) -> StorageError {
    StorageError::Backend(format!("sqlite: {e}"))
}

/// Moves WAL content into the database file every [`CHECKPOINT_INTERVAL`] until `stop` is
/// dropped. Running here rather than as SQLite's auto-checkpoint keeps the checkpoint's copying
/// and fsyncs off the writer thread, so they don't delay commits.
fn checkpoint_loop(conn: Connection, wal: PathBuf, stop: std::sync::mpsc::Receiver<()>) {
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
        stop.recv_timeout(CHECKPOINT_INTERVAL)
    {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            debug!(error = %e, "sqlite checkpoint");
        }
        let wal_bytes = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        if wal_bytes > WAL_TRUNCATE_BYTES {
            let truncated = conn
                .busy_timeout(WAL_TRUNCATE_WAIT)
                .and_then(|()| {
                    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                        r.get::<_, i64>(0)
                    })
                })
                .map(|busy| busy == 0);
            let _ = conn.busy_timeout(Duration::from_secs(5));
            match truncated {
                Ok(true) => debug!(wal_bytes, "sqlite WAL truncated"),
                Ok(false) => debug!(wal_bytes, "sqlite WAL busy; truncating later"),
                Err(e) => debug!(error = %e, wal_bytes, "sqlite WAL truncation"),
            }
        }
    }
}

/// Pragmas for the writing connection. An 8 MiB page cache suffices (reads are served from the
/// watch caches; a larger one mostly kept copies of written pages, costing ~20 MiB of RSS), and
/// no mmap: mapped pages count as the process's RSS (~40 MiB with 10 000 pods) for reads the
/// page cache and the OS's file cache serve as well.
fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(Duration::from_secs(5)).map_err(db)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA wal_autocheckpoint = 0;
         PRAGMA synchronous = NORMAL;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -8192;
         PRAGMA mmap_size = 0;",
    )
    .map_err(db)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(())
}

/// The smallest string greater than every key starting with `prefix`, as bytes (bound to SQL
/// with `CAST(? AS TEXT)`; SQLite compares text bytewise). No upper bound → `0xFF`, which no
/// UTF-8 text reaches.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xFF]
}

fn compacted_in(conn: &Connection) -> Result<Revision> {
    Ok(conn
        .prepare_cached(SQL_COMPACTED)
        .map_err(db)?
        .query_row([], |r| r.get(0))
        .optional()
        .map_err(db)?
        .unwrap_or(0))
}

/// The newest row of one name.
#[derive(Debug)]
struct LatestRow {
    id: Revision,
    deleted: bool,
    create_revision: Revision,
    value: Vec<u8>,
}

impl LatestRow {
    fn into_kv(self, key: String) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.id,
        }
    }
}

fn latest_row(conn: &Connection, key: &str) -> Result<Option<LatestRow>> {
    conn.prepare_cached(SQL_LATEST_ROW)
        .map_err(db)?
        .query_row([key], |r| {
            Ok(LatestRow {
                id: r.get(0)?,
                deleted: r.get::<_, i64>(1)? != 0,
                create_revision: r.get(2)?,
                value: r.get(3)?,
            })
        })
        .optional()
        .map_err(db)
}

/// Builds the watch event a history row stands for.
fn row_to_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let id: Revision = row.get(0)?;
    let name: String = row.get(1)?;
    let created = row.get::<_, i64>(2)? != 0;
    let deleted = row.get::<_, i64>(3)? != 0;
    let create_revision: Revision = row.get(4)?;
    let prev_revision: Revision = row.get(5)?;
    let value: Vec<u8> = row.get(6)?;
    let old_value: Option<Vec<u8>> = row.get(7)?;
    let prev_kv = |v: Vec<u8>| KeyValue {
        key: name.clone(),
        value: v,
        create_revision,
        mod_revision: prev_revision,
    };
    Ok(if deleted {
        let old = old_value.unwrap_or_default();
        Event {
            event_type: EventType::Delete,
            kv: KeyValue {
                key: name.clone(),
                value: old.clone(),
                create_revision,
                mod_revision: id,
            },
            prev_kv: Some(prev_kv(old)),
        }
    } else if created {
        Event {
            event_type: EventType::Create,
            kv: KeyValue {
                key: name,
                value,
                create_revision,
                mod_revision: id,
            },
            prev_kv: None,
        }
    } else {
        Event {
            event_type: EventType::Update,
            prev_kv: Some(prev_kv(old_value.unwrap_or_default())),
            kv: KeyValue {
                key: name,
                value,
                create_revision,
                mod_revision: id,
            },
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Readers

/// Read-only connections reused across `spawn_blocking` calls.
struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    fn idle(&self) -> MutexGuard<'_, Vec<Connection>> {
        // A panic while holding the lock cannot leave the Vec inconsistent.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> Result<Connection> {
        if let Some(conn) = self.idle().pop() {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(db)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db)?;
        conn.execute_batch(&format!(
            "PRAGMA temp_store = MEMORY; PRAGMA cache_size = -{READER_CACHE_KIB}; PRAGMA mmap_size = 0;"
        ))
        .map_err(db)?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(conn)
    }

    fn put(&self, conn: Connection) {
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
    }

    /// Runs `f` on a pooled connection on the blocking thread pool.
    async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.take()?;
            let result = f(&mut conn);
            if !conn.is_autocommit() {
                // A failed read left its transaction open; don't hand that to the next caller.
                return result;
            }
            pool.put(conn);
            result
        })
        .await
        .map_err(|e| StorageError::Backend(format!("sqlite reader task failed: {e}")))?
    }

    /// Up to [`REPLAY_PAGE`] events under `prefix` with revision > `after`, oldest first, or
    /// `Compacted` if history after `after` is no longer complete.
    async fn replay_page(self: &Arc<Self>, prefix: String, after: Revision) -> Result<Vec<Event>> {
        self.run(move |conn| {
            let tx = conn.transaction().map_err(db)?;
            let compacted = compacted_in(&tx)?;
            if after + 1 < compacted {
                return Err(StorageError::Compacted {
                    requested: after + 1,
                    compacted,
                });
            }
            let end = prefix_end(&prefix);
            let events = {
                let mut stmt = tx.prepare_cached(SQL_REPLAY).map_err(db)?;
                let rows = stmt
                    .query_map(
                        params![after, prefix, end, REPLAY_PAGE as i64],
                        row_to_event,
                    )
                    .map_err(db)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)?
            };
            tx.commit().map_err(db)?;
            Ok(events)
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// Broadcaster and watch streams

/// Fans committed events out to watchers. Publishing never blocks: a full subscriber is dropped.
#[derive(Default)]
struct Broadcaster {
    subscribers: Mutex<Vec<Subscriber>>,
}

struct Subscriber {
    prefix: String,
    tx: mpsc::Sender<Event>,
    /// Set when this subscriber was dropped for falling behind.
    lagged: Arc<AtomicBool>,
}

impl Broadcaster {
    fn subscribers(&self) -> MutexGuard<'_, Vec<Subscriber>> {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn subscribe(&self, prefix: &str) -> (mpsc::Receiver<Event>, Arc<AtomicBool>) {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let lagged = Arc::new(AtomicBool::new(false));
        self.subscribers().push(Subscriber {
            prefix: prefix.to_owned(),
            tx,
            lagged: lagged.clone(),
        });
        (rx, lagged)
    }

    fn publish(&self, event: &Event) {
        self.subscribers().retain(|s| {
            if !event.kv.key.starts_with(s.prefix.as_str()) {
                return !s.tx.is_closed();
            }
            match s.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    warn!(prefix = %s.prefix, revision = event.revision(), "dropping watcher that fell behind");
                    s.lagged.store(true, Ordering::Release);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    fn close_all(&self) {
        self.subscribers().clear();
    }
}

/// The watch protocol: replay history from the table, then follow live events.
enum WatchState {
    /// Reading history pages after `last`; `buffered` holds the current page.
    Replaying {
        buffered: VecDeque<Event>,
        last: Revision,
        exhausted: bool,
    },
    /// Forwarding live events, skipping those at or below `last` (already replayed).
    Live { last: Revision },
    /// The stream has ended.
    Done,
}

struct SqliteWatch {
    readers: Arc<ReadPool>,
    prefix: String,
    rx: mpsc::Receiver<Event>,
    lagged: Arc<AtomicBool>,
    state: WatchState,
}

impl SqliteWatch {
    async fn next_event(&mut self) -> Option<Result<Event>> {
        loop {
            match &mut self.state {
                WatchState::Replaying {
                    buffered,
                    last,
                    exhausted,
                } => {
                    if let Some(event) = buffered.pop_front() {
                        return Some(Ok(event));
                    }
                    if *exhausted {
                        self.state = WatchState::Live { last: *last };
                        continue;
                    }
                    match self.readers.replay_page(self.prefix.clone(), *last).await {
                        Ok(page) => {
                            *exhausted = page.len() < REPLAY_PAGE;
                            if let Some(event) = page.last() {
                                *last = event.revision();
                            }
                            buffered.extend(page);
                        }
                        Err(e) => {
                            self.state = WatchState::Done;
                            return Some(Err(e));
                        }
                    }
                }
                WatchState::Live { last } => match self.rx.recv().await {
                    Some(event) if event.revision() <= *last => continue,
                    Some(event) => {
                        *last = event.revision();
                        return Some(Ok(event));
                    }
                    None => {
                        self.state = WatchState::Done;
                        if self.lagged.load(Ordering::Acquire) {
                            return Some(Err(StorageError::Backend(format!(
                                "watch on {} fell more than {WATCH_BUFFER} events behind and was dropped; re-list",
                                self.prefix
                            ))));
                        }
                        return Some(Err(StorageError::Backend("sqlite storage closed".into())));
                    }
                },
                WatchState::Done => return None,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writer

struct WriteRequest {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteOutcome>>,
}

#[derive(Debug)]
enum WriteOp {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        expected: Revision,
        value: Vec<u8>,
    },
    Delete {
        key: String,
        expected: Revision,
    },
    Compact {
        revision: Revision,
    },
}

#[derive(Debug)]
enum WriteOutcome {
    Revision(Revision),
    Deleted(Revision, KeyValue),
    Compacted,
}

/// A compaction in progress: rows below `target` are deleted in batches starting at `next`.
struct Compaction {
    target: Revision,
    next: Revision,
    replies: Vec<oneshot::Sender<Result<WriteOutcome>>>,
}

/// Owns the writing connection; runs on its own thread.
struct Writer {
    conn: Connection,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<WriteRequest>,
    compaction: Option<Compaction>,
}

impl Writer {
    fn run(mut self) {
        loop {
            let request = if self.compaction.is_some() {
                match self.rx.try_recv() {
                    Ok(r) => Some(r),
                    Err(mpsc::error::TryRecvError::Empty) => None,
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            } else {
                match self.rx.blocking_recv() {
                    Some(r) => Some(r),
                    None => break,
                }
            };
            match request {
                Some(WriteRequest {
                    op: WriteOp::Compact { revision },
                    reply,
                }) => self.start_compaction(revision, reply),
                Some(first) => {
                    // Group commit: writes queued behind this one share its transaction.
                    let mut batch = vec![first];
                    let mut compact = None;
                    while batch.len() < MAX_BATCH {
                        match self.rx.try_recv() {
                            Ok(WriteRequest {
                                op: WriteOp::Compact { revision },
                                reply,
                            }) => {
                                compact = Some((revision, reply));
                                break;
                            }
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                    self.apply_batch(batch);
                    if let Some((revision, reply)) = compact {
                        self.start_compaction(revision, reply);
                    }
                }
                None => self.compaction_step(),
            }
        }
        self.shared.broadcaster.close_all();
        debug!("sqlite writer stopped");
    }

    /// Applies queued writes in one transaction, each in its own savepoint so that a refused
    /// or failed write leaves the others alone; every successful write gets the next revision.
    /// Events are published and callers answered only after the commit.
    fn apply_batch(&mut self, batch: Vec<WriteRequest>) {
        let mut rev = self.shared.current.load(Ordering::Acquire);
        let mut tx = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => {
                let message = format!("sqlite: {e}");
                warn!(error = %message, "sqlite write failed");
                for r in batch {
                    let _ = r.reply.send(Err(StorageError::Backend(message.clone())));
                }
                return;
            }
        };
        let mut done = Vec::with_capacity(batch.len());
        for WriteRequest { op, reply } in batch {
            // A savepoint dropped without commit rolls back only this write.
            let result = tx.savepoint().map_err(db).and_then(|sp| {
                let applied = apply_one(&sp, rev + 1, op)?;
                sp.commit().map_err(db)?;
                Ok(applied)
            });
            match result {
                Ok((event, outcome)) => {
                    rev += 1;
                    done.push((reply, Ok(outcome), Some(event)));
                }
                Err(e) => done.push((reply, Err(e), None)),
            }
        }
        if let Err(e) = tx.commit() {
            let message = format!("sqlite: {e}");
            warn!(error = %message, "sqlite commit failed");
            for (reply, result, _) in done {
                let _ = reply.send(result.and(Err(StorageError::Backend(message.clone()))));
            }
            return;
        }
        self.shared.current.store(rev, Ordering::Release);
        for event in done.iter().filter_map(|(_, _, event)| event.as_ref()) {
            self.shared.broadcaster.publish(event);
        }
        for (reply, result, _) in done {
            if let Err(e @ StorageError::Backend(_)) = &result {
                warn!(error = %e, "sqlite write failed");
            }
            // The caller may have gone away; the write stands either way.
            let _ = reply.send(result);
        }
    }

    fn start_compaction(
        &mut self,
        revision: Revision,
        reply: oneshot::Sender<Result<WriteOutcome>>,
    ) {
        let current = self.shared.current.load(Ordering::Acquire);
        if revision > current {
            let _ = reply.send(Err(StorageError::FutureRevision {
                requested: revision,
                current,
            }));
            return;
        }
        let compacted = self.shared.compacted.load(Ordering::Acquire);
        if revision <= compacted {
            match &mut self.compaction {
                Some(running) => running.replies.push(reply),
                None => {
                    let _ = reply.send(Ok(WriteOutcome::Compacted));
                }
            }
            return;
        }
        let recorded = self
            .conn
            .execute(
                "INSERT INTO meta (key, value) VALUES ('compact_revision', ?1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [revision],
            )
            .map_err(db);
        if let Err(e) = recorded {
            let _ = reply.send(Err(e));
            return;
        }
        // From here on reads and watches below `revision` fail; rows go in batches.
        self.shared.compacted.store(revision, Ordering::Release);
        info!(revision, current, "compacting sqlite storage");
        match &mut self.compaction {
            Some(running) => {
                running.target = revision;
                running.replies.push(reply);
            }
            None => {
                self.compaction = Some(Compaction {
                    target: revision,
                    next: 0,
                    replies: vec![reply],
                });
            }
        }
    }

    /// Deletes one batch of superseded rows and tombstones below the compaction target.
    fn compaction_step(&mut self) {
        let Some(job) = self.compaction.as_mut() else {
            return;
        };
        let target = job.target;
        let lo = job.next;
        let result = (|| -> Result<Option<Revision>> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
            let hi: Option<Revision> = tx
                .prepare_cached(
                    "SELECT id FROM kine WHERE id >= ?1 AND id < ?2 ORDER BY id LIMIT 1 OFFSET ?3",
                )
                .map_err(db)?
                .query_row(params![lo, target, COMPACT_BATCH], |r| r.get(0))
                .optional()
                .map_err(db)?;
            let upper = hi.unwrap_or(target);
            let deleted = tx
                .prepare_cached(
                    "DELETE FROM kine WHERE id >= ?1 AND id < ?2 AND (deleted = 1 OR EXISTS \
                     (SELECT 1 FROM kine AS n WHERE n.name = kine.name AND n.id > kine.id AND n.id <= ?3))",
                )
                .map_err(db)?
                .execute(params![lo, upper, target])
                .map_err(db)?;
            tx.commit().map_err(db)?;
            debug!(from = lo, to = upper, deleted, "compaction batch");
            Ok(hi)
        })();
        match result {
            Ok(Some(hi)) => job.next = hi,
            Ok(None) => {
                if let Some(job) = self.compaction.take() {
                    info!(revision = job.target, "compaction finished");
                    for reply in job.replies {
                        let _ = reply.send(Ok(WriteOutcome::Compacted));
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "compaction failed");
                if let Some(job) = self.compaction.take() {
                    for reply in job.replies {
                        let _ = reply.send(Err(StorageError::Backend(e.to_string())));
                    }
                }
            }
        }
    }
}

/// Applies one write at revision `rev` inside the caller's transaction.
fn apply_one(tx: &Connection, rev: Revision, op: WriteOp) -> Result<(Event, WriteOutcome)> {
    let applied = match op {
        WriteOp::Create { key, value } => {
            let prev = latest_row(tx, &key)?;
            let prev_revision = match prev {
                Some(row) if !row.deleted => {
                    return Err(StorageError::AlreadyExists { key });
                }
                Some(tombstone) => tombstone.id,
                None => 0,
            };
            insert(tx, rev, &key, true, false, rev, prev_revision, &value, None)?;
            let event = Event {
                event_type: EventType::Create,
                kv: KeyValue {
                    key,
                    value,
                    create_revision: rev,
                    mod_revision: rev,
                },
                prev_kv: None,
            };
            (event, WriteOutcome::Revision(rev))
        }
        WriteOp::Update {
            key,
            expected,
            value,
        } => {
            let prev = guard(tx, &key, expected)?;
            insert(
                tx,
                rev,
                &key,
                false,
                false,
                prev.create_revision,
                prev.id,
                &value,
                Some(&prev.value),
            )?;
            let create_revision = prev.create_revision;
            let event = Event {
                event_type: EventType::Update,
                kv: KeyValue {
                    key: key.clone(),
                    value,
                    create_revision,
                    mod_revision: rev,
                },
                prev_kv: Some(prev.into_kv(key)),
            };
            (event, WriteOutcome::Revision(rev))
        }
        WriteOp::Delete { key, expected } => {
            let prev = guard(tx, &key, expected)?;
            insert(
                tx,
                rev,
                &key,
                false,
                true,
                prev.create_revision,
                prev.id,
                &[],
                Some(&prev.value),
            )?;
            let deleted = prev.into_kv(key);
            let event = Event {
                event_type: EventType::Delete,
                kv: KeyValue {
                    mod_revision: rev,
                    ..deleted.clone()
                },
                prev_kv: Some(deleted.clone()),
            };
            (event, WriteOutcome::Deleted(rev, deleted))
        }
        WriteOp::Compact { .. } => {
            return Err(StorageError::Backend(
                "compaction must go through start_compaction".into(),
            ));
        }
    };
    Ok(applied)
}

/// The newest row of `key` if it is live and at revision `expected`; else NotFound/Conflict.
fn guard(conn: &Connection, key: &str, expected: Revision) -> Result<LatestRow> {
    match latest_row(conn, key)? {
        Some(row) if !row.deleted && row.id == expected => Ok(row),
        Some(row) if !row.deleted => Err(StorageError::Conflict {
            key: key.to_owned(),
            expected,
            current: Some(row.into_kv(key.to_owned())),
        }),
        _ => Err(StorageError::NotFound {
            key: key.to_owned(),
        }),
    }
}

#[allow(clippy::too_many_arguments)]
fn insert(
    conn: &Connection,
    id: Revision,
    name: &str,
    created: bool,
    deleted: bool,
    create_revision: Revision,
    prev_revision: Revision,
    value: &[u8],
    old_value: Option<&[u8]>,
) -> Result<()> {
    conn.prepare_cached(SQL_INSERT)
        .map_err(db)?
        .execute(params![
            id,
            name,
            created,
            deleted,
            create_revision,
            prev_revision,
            value,
            old_value
        ])
        .map_err(db)?;
    Ok(())
}

#[cfg(test)]
mod tests {
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
