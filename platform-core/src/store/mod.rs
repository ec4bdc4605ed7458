//! The core's SQLite database: one owner thread, migrations, and an async handle.
//!
//! SQLite calls block, so they never run on the async runtime: a dedicated thread owns
//! the [`rusqlite::Connection`] and runs jobs sent through [`StoreHandle::call`] one at a
//! time, in order. The thread ends when the last handle is dropped.
//!
//! Schema versions are tracked in `PRAGMA user_version`; [`MIGRATIONS`] lists them in
//! order and each runs in its own transaction, so a crash mid-migration leaves the
//! previous version intact.

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

/// Errors from the store thread.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database {path} has schema version {found}, newer than this build knows ({known})")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: usize,
    },
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store thread has stopped")]
    Stopped,
    /// The request is not valid (a name, a key, a reference): the caller's fault (400).
    #[error("{0}")]
    Invalid(String),
    /// The request clashes with what exists (a taken token, an existing endpoint): 409.
    #[error("{0}")]
    Conflict(String),
    /// Something stored is not what this build wrote (a corrupt row): an operator's
    /// matter, never the caller's (500).
    #[error("{0}")]
    Corrupt(String),
    /// Work around the store failed (the store thread, password hashing): 500.
    #[error("{0}")]
    Internal(String),
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Cheap, cloneable access to the store thread.
#[derive(Clone, Debug)]
pub struct StoreHandle {
    tx: mpsc::Sender<Job>,
}

/// Schema migrations, applied in order; index + 1 is the resulting `user_version`.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE applications (
    name TEXT PRIMARY KEY
);
CREATE TABLE app_versions (
    name        TEXT PRIMARY KEY,
    application TEXT NOT NULL REFERENCES applications(name)
);
CREATE TABLE endpoints (
    id          TEXT PRIMARY KEY,
    app_version TEXT NOT NULL REFERENCES app_versions(name),
    created_ms  INTEGER NOT NULL
);
CREATE TABLE tokens (
    token       TEXT PRIMARY KEY,
    endpoint_id TEXT NOT NULL REFERENCES endpoints(id),
    state       TEXT NOT NULL CHECK (state IN ('inactive','active','suspended','revoked'))
);
CREATE INDEX tokens_endpoint ON tokens(endpoint_id);
CREATE TABLE metadata (
    endpoint_id TEXT NOT NULL REFERENCES endpoints(id),
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (endpoint_id, key)
);
CREATE TABLE credentials_basic (
    username      TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('inactive','active','suspended','revoked'))
);
CREATE TABLE data_samples (
    id          INTEGER PRIMARY KEY,
    endpoint_id TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    sample      TEXT NOT NULL
);
CREATE INDEX data_samples_endpoint ON data_samples(endpoint_id, id);
CREATE TABLE time_series (
    endpoint_id TEXT NOT NULL,
    name        TEXT NOT NULL,
    ts_ms       INTEGER NOT NULL,
    value       REAL NOT NULL
);
CREATE INDEX time_series_lookup ON time_series(endpoint_id, name, ts_ms);
"#,
    r#"
CREATE TABLE credentials_x509 (
    fingerprint TEXT PRIMARY KEY,
    subject     TEXT NOT NULL DEFAULT '',
    state       TEXT NOT NULL CHECK (state IN ('inactive','active','suspended','revoked')),
    created_ms  INTEGER NOT NULL
);
ALTER TABLE credentials_basic ADD COLUMN created_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN created_ms INTEGER NOT NULL DEFAULT 0;
CREATE TABLE commands (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id    TEXT NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    instance       TEXT NOT NULL,
    type           TEXT NOT NULL,
    payload        TEXT NOT NULL,
    created_ms     INTEGER NOT NULL,
    expires_ms     INTEGER NOT NULL,
    delivered_ms   INTEGER,
    result_ms      INTEGER,
    result_status  INTEGER,
    result_reason  TEXT,
    result_payload TEXT
);
CREATE INDEX commands_pending ON commands(endpoint_id, instance, type, result_ms);
CREATE TABLE configs (
    endpoint_id TEXT NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    instance    TEXT NOT NULL,
    name        TEXT NOT NULL,
    config_id   TEXT NOT NULL,
    body        TEXT NOT NULL,
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY (endpoint_id, instance, name)
);
CREATE TABLE configs_applied (
    endpoint_id   TEXT NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    instance      TEXT NOT NULL,
    name          TEXT NOT NULL,
    config_id     TEXT NOT NULL,
    status_code   INTEGER NOT NULL,
    reason_phrase TEXT,
    applied_ms    INTEGER NOT NULL,
    PRIMARY KEY (endpoint_id, instance, name)
);
"#,
    // 3: app-version default configurations (CMX) and binary uploads (BCX).
    r#"
CREATE TABLE app_version_configs (
    app_version TEXT NOT NULL REFERENCES app_versions(name) ON DELETE CASCADE,
    instance    TEXT NOT NULL,
    name        TEXT NOT NULL,
    config_id   TEXT NOT NULL,
    body        TEXT NOT NULL,
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY (app_version, instance, name)
);
CREATE TABLE bcx_tokens (
    token       TEXT PRIMARY KEY,
    endpoint_id TEXT NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    expires_ms  INTEGER NOT NULL
);
CREATE TABLE bcx_files (
    endpoint_id TEXT NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    size        INTEGER NOT NULL,
    uploaded_ms INTEGER NOT NULL,
    PRIMARY KEY (endpoint_id, name)
);
"#,
    // 4: credential scopes (JSON; NULL: unbound, as every credential made before).
    "ALTER TABLE credentials_basic ADD COLUMN scope TEXT;",
];

impl StoreHandle {
    /// Opens (creating if needed) and migrates the database, then starts its thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        configure(&conn)?;
        migrate(&mut conn, path)?;
        let (tx, mut rx) = mpsc::channel::<Job>(256);
        std::thread::Builder::new()
            .name("core-store".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    job(&mut conn);
                }
            })
            .map_err(|e| StoreError::Internal(format!("cannot start store thread: {e}")))?;
        Ok(Self { tx })
    }

    /// Runs `f` on the store thread and returns its result.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            // The caller may have gone away (cancelled); the result is then dropped.
            let _ = done.send(f(conn));
        });
        self.tx.send(job).await.map_err(|_| StoreError::Stopped)?;
        result.await.map_err(|_| StoreError::Stopped)?
    }
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(())
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version < 0 || version as usize > MIGRATIONS.len() {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: version,
            known: MIGRATIONS.len(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

/// A stored time (Unix milliseconds) as RFC 3339 in UTC with exactly three fraction
/// digits, e.g. `2026-12-01T08:00:00.120Z` (the REST API's and EPL's one format).
pub fn rfc3339_ms(ms: i64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_with_exactly_three_fraction_digits() {
        assert_eq!(rfc3339_ms(1_764_576_000_120), "2025-12-01T08:00:00.120Z");
        assert_eq!(rfc3339_ms(1_764_576_059_200), "2025-12-01T08:00:59.200Z");
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
    }

    #[tokio::test]
    async fn a_new_database_is_migrated_and_reopening_it_keeps_the_data() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("core.sqlite");
        let store = StoreHandle::open(&path).unwrap_or_else(|e| panic!("{e}"));
        store
            .call(|c| Ok(c.execute("INSERT INTO applications(name) VALUES ('a')", [])?))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        drop(store);
        let store = StoreHandle::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let n: i64 = store
            .call(|c| Ok(c.query_row("SELECT count(*) FROM applications", [], |r| r.get(0))?))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, 1);
    }

    #[tokio::test]
    async fn a_database_from_a_newer_build_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("core.sqlite");
        let c = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
        c.pragma_update(None, "user_version", 99)
            .unwrap_or_else(|e| panic!("{e}"));
        drop(c);
        assert!(matches!(
            StoreHandle::open(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }
}
