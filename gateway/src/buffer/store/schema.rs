//! The buffer file: its schema, and opening it (WAL, durability, the checks that tell a
//! kp-gateway buffer from another program's database or from a damaged file).

use super::*;

/// `PRAGMA application_id` of buffer files ("KPGW").
pub const APPLICATION_ID: i32 = 0x4B50_4757;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS samples (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    app_version TEXT NOT NULL,
    token       TEXT NOT NULL,
    ts_ms       INTEGER NOT NULL,
    payload     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_endpoint ON samples(app_version, token, seq);
CREATE INDEX IF NOT EXISTS samples_ts ON samples(ts_ms);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq         INTEGER PRIMARY KEY,
    app_version TEXT NOT NULL,
    token       TEXT NOT NULL,
    ts_ms       INTEGER NOT NULL,
    payload     TEXT NOT NULL,
    status      INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    parked_ms   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS drops (
    app_version TEXT NOT NULL,
    token       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    count       INTEGER NOT NULL,
    PRIMARY KEY (app_version, token, reason)
);
"#;

pub(in crate::buffer) fn open_db(
    path: &Path,
    synchronous: Synchronous,
) -> Result<Connection, BufferError> {
    let foreign = |why: String| BufferError::Foreign {
        path: path.to_owned(),
        why,
    };
    let unreadable = |e| unreadable(path, e);
    let existed = path.exists();
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| BufferError::Open {
        path: path.to_owned(),
        source,
    })?;
    // Reading the header tells a non-database file apart before anything is written.
    let app_id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(unreadable)?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(unreadable)?;
    if existed && app_id != APPLICATION_ID && (tables > 0 || app_id != 0) {
        return Err(foreign(format!(
            "application_id is {app_id:#x}, not {APPLICATION_ID:#x}"
        )));
    }
    // Pages freed by deletes go back to the filesystem on an incremental vacuum (the disk
    // reserve is remade from them, see `room`). Only takes effect before the first table,
    // and is a write: only on a new file (a full disk must not stop an open).
    if tables == 0 {
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    }
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Keep the WAL small on small disks: checkpoint every 64 pages (256 KiB; a 4 MiB WAL
    // never checkpoints on a 2 MiB disk) and cut the file back after a checkpoint. A
    // checkpoint at start gives back what a killed run left in the WAL.
    conn.pragma_update(None, "wal_autocheckpoint", 64)?;
    conn.pragma_update(None, "journal_size_limit", 256 * 1024)?;
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    });
    let sync = match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // Every transaction takes the write lock first (BEGIN IMMEDIATE), so it waits for
    // another connection to the file (the web page's buffer view, the `dead-letters`
    // command) instead of failing at once: a deferred one that read first and then found
    // the file changed got "database is locked" regardless of the busy timeout, and a
    // failed ack sent its confirmed samples again.
    conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
    conn.execute_batch(SCHEMA)?;
    // Buffers written before the buffer clock existed get the column (their rows enter
    // the clock when loaded).
    let has_clock: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('samples') WHERE name = 'entered_clock'")?
        .exists([])?;
    if !has_clock {
        conn.execute_batch("ALTER TABLE samples ADD COLUMN entered_clock INTEGER")?;
    }
    conn.execute_batch("CREATE INDEX IF NOT EXISTS samples_entered ON samples(entered_clock)")?;
    vacuum_older_file(&conn, path);
    if app_id != APPLICATION_ID {
        // Only on a new file: no write at open that a full disk could refuse.
        conn.pragma_update(None, "application_id", APPLICATION_ID)?;
    }
    Ok(conn)
}

/// Opens the buffer file only to read it (the web page's buffer view, `dead-letters
/// list`, the export): no checkpoint, no schema statements, no write lock, so showing
/// the page (as often as anyone likes) never gets in the way of the daemon's writes.
/// `None` when there is no buffer file (nothing is buffered; none is created). A file
/// from an older version that lacks a table is opened the full way ([`open_db`]), which
/// brings it up to date.
pub(in crate::buffer) fn open_for_reading(path: &Path) -> Result<Option<Connection>, BufferError> {
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| BufferError::Open {
        path: path.to_owned(),
        source,
    })?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let unreadable = |e| unreadable(path, e);
    let app_id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(unreadable)?;
    let ours: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('samples', 'dead_letters')",
            [],
            |r| r.get(0),
        )
        .map_err(unreadable)?;
    if app_id != APPLICATION_ID || ours < 2 {
        // A foreign file is refused there; an older or new one is made current.
        drop(conn);
        return open_db(path, Synchronous::Full).map(Some);
    }
    Ok(Some(conn))
}

/// A buffer made before `auto_vacuum` was set is rewritten once with it (a VACUUM), when
/// the disk has room for the copy; otherwise it stays as it is, and says so.
fn vacuum_older_file(conn: &Connection, path: &Path) {
    let mode: i64 = conn
        .pragma_query_value(None, "auto_vacuum", |r| r.get(0))
        .unwrap_or(2);
    if mode == 2 {
        return;
    }
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(u64::MAX);
    let free = crate::buffer::free_space(path).unwrap_or(0);
    if free / 2 < size.saturating_add(1 << 20) {
        log::warn!(
            "buffer {}: made by an older version without incremental vacuum and no room to convert it now ({} KiB free); space freed inside it is reused but not given back to the disk",
            path.display(),
            free / 1024
        );
        return;
    }
    let done = conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;");
    match done {
        Ok(()) => log::info!(
            "buffer {}: converted to incremental vacuum (once)",
            path.display()
        ),
        Err(e) => log::warn!(
            "buffer {}: conversion to incremental vacuum failed: {e}",
            path.display()
        ),
    }
}

/// A first read of the file failed: damaged (a buffer cut short by a crash or a failing
/// card) when SQLite says so, never another program's database; any other error (I/O,
/// permissions, a lock) says nothing about whose file it is.
fn unreadable(path: &Path, e: rusqlite::Error) -> BufferError {
    if damage(&e) {
        BufferError::Corrupt {
            path: path.to_owned(),
            why: e.to_string(),
        }
    } else {
        BufferError::Open {
            path: path.to_owned(),
            source: e,
        }
    }
}

/// Does this error mean the file is damaged (not a database any more, or malformed)?
pub(super) fn damage(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt))
}

pub(super) fn is_disk_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::DiskFull)
}
