//! The core database's schema: its migrations in order, and the connection settings.
//!
//! Schema versions are tracked in `PRAGMA user_version`; [`MIGRATIONS`] lists them in
//! order and each runs in its own transaction, so a crash mid-migration leaves the
//! previous version intact.

use std::path::Path;

use rusqlite::Connection;

use super::{Durability, StoreError};

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
    // 5: raw samples are a log in arrival order: no per-endpoint index (each group
    // commit would touch one index page per endpoint in it). A deleted endpoint's
    // samples are purged in steps of row IDs (`tsdb::purge_step`), recorded here so a
    // purge cut short by a stop goes on at the next start.
    r#"
DROP INDEX data_samples_endpoint;
CREATE TABLE sample_purges (
    endpoint_id TEXT PRIMARY KEY,
    next_id     INTEGER NOT NULL
);
"#,
    // 6: time series points keyed by a small series number, in one B-tree (no separate
    // table and index, no endpoint ID repeated in every point): a point costs about
    // half the page writes. `seq` orders points of one timestamp (last inserted last):
    // a sample's points take its `data_samples` id; the points copied from before
    // keep their order below every later one.
    r#"
CREATE TABLE series (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id TEXT NOT NULL,
    name        TEXT NOT NULL,
    UNIQUE (endpoint_id, name)
);
CREATE TABLE points (
    series_id INTEGER NOT NULL,
    ts_ms     INTEGER NOT NULL,
    seq       INTEGER NOT NULL,
    value     REAL NOT NULL,
    PRIMARY KEY (series_id, ts_ms, seq)
) WITHOUT ROWID;
INSERT INTO series (endpoint_id, name)
    SELECT DISTINCT endpoint_id, name FROM time_series ORDER BY endpoint_id, name;
INSERT INTO points (series_id, ts_ms, seq, value)
    SELECT s.id, t.ts_ms, t.rowid - (SELECT coalesce(max(rowid), 0) FROM time_series) - 1, t.value
    FROM time_series t JOIN series s ON s.endpoint_id = t.endpoint_id AND s.name = t.name;
DROP TABLE time_series;
-- What was the table, for reading with SQL (README): points in insertion order by
-- (ts_ms, seq) within a series.
CREATE VIEW time_series (endpoint_id, name, ts_ms, value, seq) AS
    SELECT s.endpoint_id, s.name, p.ts_ms, p.value, p.seq
    FROM points p JOIN series s ON s.id = p.series_id;
"#,
    // 7: with many series, new points are appended to `points_recent` (a plain table,
    // rows in arrival order) and moved into `points` in bulk, sorted (the settle).
    // Written one group commit at a time into `points`, where each series has its own
    // leaf page, a commit holding a thousand endpoints' samples rewrote a thousand or more
    // pages; appended here it writes the few pages the new rows fill.
    r#"
CREATE TABLE points_recent (
    series_id INTEGER NOT NULL,
    ts_ms     INTEGER NOT NULL,
    seq       INTEGER NOT NULL,
    value     REAL NOT NULL
);
DROP VIEW time_series;
CREATE VIEW time_series (endpoint_id, name, ts_ms, value, seq) AS
    SELECT s.endpoint_id, s.name, p.ts_ms, p.value, p.seq
    FROM (SELECT series_id, ts_ms, value, seq FROM points
          UNION ALL SELECT series_id, ts_ms, value, seq FROM points_recent) p
    JOIN series s ON s.id = p.series_id;
"#,
    // 8: a settle moves `points_recent` into blocks (tsdb::blocks), one row per series
    // and settle appended at the end of the table, rather than into `points` one row
    // per point in the middle of the B-tree; and every sample's points go through
    // `points_recent` (before, those of the first 512 series went straight into
    // `points`). Points already in `points` stay there; `points` still takes points
    // without a sample (EPL's `connectivity`).
    r#"
CREATE TABLE point_blocks (
    id        INTEGER PRIMARY KEY,
    series_id INTEGER NOT NULL,
    first_ts  INTEGER NOT NULL,
    last_ts   INTEGER NOT NULL,
    max_seq   INTEGER NOT NULL,
    points    TEXT NOT NULL
);
CREATE INDEX point_blocks_series ON point_blocks(series_id, last_ts, first_ts);
-- One arm per table, each joined with `series`: a query for one endpoint or series
-- finds its series first and then only its points and blocks (a join over the union
-- of the tables unpacked every block first: 4.5 s against 2.4 ms for one series of
-- 5 million points).
DROP VIEW time_series;
CREATE VIEW time_series (endpoint_id, name, ts_ms, value, seq) AS
    SELECT s.endpoint_id, s.name, p.ts_ms, p.value, p.seq
    FROM series s JOIN points p ON p.series_id = s.id
    UNION ALL
    SELECT s.endpoint_id, s.name, r.ts_ms, r.value, r.seq
    FROM series s JOIN points_recent r ON r.series_id = s.id
    UNION ALL
    SELECT s.endpoint_id, s.name, json_extract(j.value, '$[0]'), json_extract(j.value, '$[2]'),
           json_extract(j.value, '$[1]')
    FROM series s JOIN point_blocks b ON b.series_id = s.id, json_each(b.points) j;
"#,
];

pub(super) fn configure(conn: &Connection, durability: Durability) -> Result<(), StoreError> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", durability.pragma())?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // A group commit of many endpoints' data writes thousands of pages to the WAL; with
    // SQLite's default (a checkpoint once the WAL holds 1 000 pages) nearly every such
    // commit was followed by a checkpoint copying them to the database and syncing it.
    // Checkpointing every 8 192 pages (32 MiB) writes a page that changed in many
    // commits once; the WAL file is cut back to 32 MiB after each checkpoint.
    conn.pragma_update(None, "wal_autocheckpoint", 8192)?;
    conn.pragma_update(None, "cache_size", -16384)?;
    conn.pragma_update(None, "journal_size_limit", 32 * 1024 * 1024)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(())
}

pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
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
