//! Dead letters: batches the upstream refused for good (4xx), kept for an operator to
//! inspect, send again, or purge (`kp-gateway dead-letters ...`, and later the web page).
//!
//! These functions open the buffer file with their own connection, so they work while the
//! daemon runs (SQLite WAL); the daemon notices the change and recounts its size. Reading
//! (the list, the export) opens it read-only and never creates it.

use std::path::Path;

use rusqlite::params_from_iter;

use super::store::{open_db, open_for_reading};
use super::Synchronous;
use super::{BufferError, DeadLetter};

fn selection(seqs: &[i64]) -> String {
    if seqs.is_empty() {
        String::new()
    } else {
        format!(" WHERE seq IN ({})", vec!["?"; seqs.len()].join(","))
    }
}

/// Every dead letter, oldest first.
pub fn list(path: &Path) -> Result<Vec<DeadLetter>, BufferError> {
    let Some(conn) = open_for_reading(path)? else {
        return Ok(Vec::new());
    };
    let mut stmt = conn.prepare(
        "SELECT seq, app_version, token, ts_ms, status, reason, parked_ms, payload FROM dead_letters ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(DeadLetter {
            seq: r.get(0)?,
            app_version: r.get(1)?,
            token: r.get(2)?,
            ts_ms: r.get(3)?,
            status: r.get::<_, i64>(4)? as u16,
            reason: r.get(5)?,
            parked_ms: r.get(6)?,
            payload: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A sample waiting in the queue, for export.
#[derive(Debug, Clone)]
pub struct Pending {
    pub seq: i64,
    pub app_version: String,
    pub token: String,
    pub ts_ms: i64,
    pub payload: String,
}

/// Hands every waiting sample to `each`, oldest first, in pages of `page` rows (so a
/// large buffer is never held in memory at once). Stops when `each` returns false.
pub fn each_pending(
    path: &Path,
    page: usize,
    mut each: impl FnMut(Vec<Pending>) -> bool,
) -> Result<(), BufferError> {
    let Some(conn) = open_for_reading(path)? else {
        return Ok(());
    };
    let mut stmt = conn.prepare(
        "SELECT seq, app_version, token, ts_ms, payload FROM samples WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let mut after = i64::MIN;
    loop {
        let rows = stmt
            .query_map(rusqlite::params![after, page as i64], |r| {
                Ok(Pending {
                    seq: r.get(0)?,
                    app_version: r.get(1)?,
                    token: r.get(2)?,
                    ts_ms: r.get(3)?,
                    payload: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        after = last.seq;
        let full = rows.len() == page;
        if !each(rows) || !full {
            return Ok(());
        }
    }
}

/// Moves dead letters (all, or the given sequence numbers) back into the queue.
pub fn retry(path: &Path, seqs: &[i64]) -> Result<usize, BufferError> {
    let mut conn = open_db(path, Synchronous::Full)?;
    let tx = conn.transaction()?;
    let sel = selection(seqs);
    tx.execute(
        &format!(
            "INSERT OR IGNORE INTO samples(seq, app_version, token, ts_ms, payload)
             SELECT seq, app_version, token, ts_ms, payload FROM dead_letters{sel}"
        ),
        params_from_iter(seqs),
    )?;
    let n = tx.execute(
        &format!("DELETE FROM dead_letters{sel}"),
        params_from_iter(seqs),
    )?;
    tx.commit()?;
    Ok(n)
}

/// Deletes dead letters (all, or the given sequence numbers) for good.
pub fn purge(path: &Path, seqs: &[i64]) -> Result<usize, BufferError> {
    let conn = open_db(path, Synchronous::Full)?;
    Ok(conn.execute(
        &format!("DELETE FROM dead_letters{}", selection(seqs)),
        params_from_iter(seqs),
    )?)
}
