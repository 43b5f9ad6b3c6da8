//! The writer thread (group commit, compaction in batches) and the WAL checkpoint thread.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::broadcaster::Broadcaster;
use super::schema::{LatestRow, SQL_INSERT, db, latest_row};
use crate::storage::{Event, EventType, KeyValue, Result, Revision, StorageError};

/// Rows deleted per compaction transaction; writes queued meanwhile run between batches.
const COMPACT_BATCH: i64 = 2_000;
/// Write requests that may queue for the writer thread.
pub(super) const WRITE_QUEUE: usize = 1_024;
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

/// State shared by the writer thread, readers and watches.
pub(super) struct Shared {
    /// Latest committed revision; updated by the writer after each commit.
    pub(super) current: AtomicI64,
    /// Oldest revision still readable; updated by the writer when a compaction starts.
    pub(super) compacted: AtomicI64,
    pub(super) broadcaster: Broadcaster,
}

pub(super) struct WriteRequest {
    pub(super) op: WriteOp,
    pub(super) reply: oneshot::Sender<Result<WriteOutcome>>,
}

#[derive(Debug)]
pub(super) enum WriteOp {
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
pub(super) enum WriteOutcome {
    Revision(Revision),
    Deleted(Revision, KeyValue),
    Compacted,
}

/// A compaction in progress: rows below `target` are deleted in batches starting at `next`.
pub(super) struct Compaction {
    target: Revision,
    next: Revision,
    replies: Vec<oneshot::Sender<Result<WriteOutcome>>>,
}

/// Owns the writing connection; runs on its own thread.
pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) shared: Arc<Shared>,
    pub(super) rx: mpsc::Receiver<WriteRequest>,
    pub(super) compaction: Option<Compaction>,
}

impl Writer {
    pub(super) fn run(mut self) {
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

/// Moves WAL content into the database file every [`CHECKPOINT_INTERVAL`] until `stop` is
/// dropped. Running here rather than as SQLite's auto-checkpoint keeps the checkpoint's copying
/// and fsyncs off the writer thread, so they don't delay commits.
pub(super) fn checkpoint_loop(conn: Connection, wal: PathBuf, stop: std::sync::mpsc::Receiver<()>) {
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
