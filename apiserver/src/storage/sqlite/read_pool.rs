//! The pool of read-only connections that serves gets, lists and watch replays.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, params};

use super::schema::{SQL_REPLAY, compacted_in, db, prefix_end, row_to_event};
use crate::storage::{Event, Result, Revision, StorageError};

/// Rows read per query while a watch replays history.
pub(super) const REPLAY_PAGE: usize = 1_000;
/// Idle reader connections kept open.
const MAX_IDLE_READERS: usize = 8;
/// Page cache of each reader connection, in KiB (SQLite's negative `cache_size`). Readers serve
/// paginated LISTs, history replays and compaction scans, each reading a page about once, and
/// any write invalidates what they cached; the OS's file cache serves re-reads just as well. At
/// 8 MiB each, eight idle readers held up to 64 MiB of RSS once a long run had touched enough
/// of a large database (a 30-minute soak's RSS rose 23 % while they filled).
const READER_CACHE_KIB: i64 = 2 * 1024;

/// Read-only connections reused across `spawn_blocking` calls.
pub(super) struct ReadPool {
    pub(super) path: PathBuf,
    pub(super) idle: Mutex<Vec<Connection>>,
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
    pub(super) async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T>
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
    pub(super) async fn replay_page(
        self: &Arc<Self>,
        prefix: String,
        after: Revision,
    ) -> Result<Vec<Event>> {
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
