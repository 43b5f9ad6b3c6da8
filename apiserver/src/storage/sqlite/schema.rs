//! The table layout and its SQL, the connection settings, and how rows map to key-values and
//! watch events.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};

use crate::storage::{Event, EventType, KeyValue, Result, Revision, StorageError};

pub(super) const SCHEMA: &str = "
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
pub(super) const SQL_LIST_FROM_PREFIX: &str = "SELECT k.id, k.name, k.create_revision, k.value FROM kine AS k INDEXED BY kine_name_id_deleted_index \
     WHERE k.name >= ?1 AND k.name < CAST(?2 AS TEXT) AND +k.id <= ?3 AND k.deleted = 0 \
       AND NOT EXISTS (SELECT 1 FROM kine AS n WHERE n.name = k.name AND n.id > k.id AND n.id <= ?3) \
     ORDER BY k.name LIMIT ?4";

/// As [`SQL_LIST_FROM_PREFIX`] but strictly after a key (paging with `start_after`).
pub(super) const SQL_LIST_AFTER_KEY: &str = "SELECT k.id, k.name, k.create_revision, k.value FROM kine AS k INDEXED BY kine_name_id_deleted_index \
     WHERE k.name > ?1 AND k.name < CAST(?2 AS TEXT) AND +k.id <= ?3 AND k.deleted = 0 \
       AND NOT EXISTS (SELECT 1 FROM kine AS n WHERE n.name = k.name AND n.id > k.id AND n.id <= ?3) \
     ORDER BY k.name LIMIT ?4";

/// History rows after a revision under a prefix, in revision order (scans the rowid range;
/// `+name` keeps the planner off the name index, which would need a sort).
pub(super) const SQL_REPLAY: &str = "SELECT id, name, created, deleted, create_revision, prev_revision, value, old_value \
     FROM kine WHERE id > ?1 AND +name >= ?2 AND +name < CAST(?3 AS TEXT) ORDER BY id LIMIT ?4";

pub(super) const SQL_INSERT: &str = "INSERT INTO kine (id, name, created, deleted, create_revision, prev_revision, value, old_value) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

pub(super) const SQL_COMPACTED: &str = "SELECT value FROM meta WHERE key = 'compact_revision'";

pub(super) fn db(e: rusqlite::Error) -> StorageError {
    StorageError::Backend(format!("sqlite: {e}"))
}

/// Pragmas for the writing connection. An 8 MiB page cache suffices (reads are served from the
/// watch caches; a larger one mostly kept copies of written pages, costing ~20 MiB of RSS), and
/// no mmap: mapped pages count as the process's RSS (~40 MiB with 10 000 pods) for reads the
/// page cache and the OS's file cache serve as well.
pub(super) fn configure(conn: &Connection) -> Result<()> {
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
pub(super) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xFF]
}

pub(super) fn compacted_in(conn: &Connection) -> Result<Revision> {
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
pub(super) struct LatestRow {
    pub(super) id: Revision,
    pub(super) deleted: bool,
    pub(super) create_revision: Revision,
    pub(super) value: Vec<u8>,
}

impl LatestRow {
    pub(super) fn into_kv(self, key: String) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.id,
        }
    }
}

pub(super) fn latest_row(conn: &Connection, key: &str) -> Result<Option<LatestRow>> {
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
pub(super) fn row_to_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
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
