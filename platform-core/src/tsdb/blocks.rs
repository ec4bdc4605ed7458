//! Settled time series points kept as blocks: one `point_blocks` row holds up to
//! [`BLOCK_POINTS`] points of one series as a JSON array, written by a settle.
//!
//! A settle used to insert every recent point as its own row of `points`, each next to
//! its series' older ones in the middle of the B-tree: per point a seek and, page by
//! page, a split. A block is one row per series and settle, appended at the end of the
//! table, plus one entry in a small index: the settle's cost per point no longer grows
//! with the table. The JSON form (`[[ts_ms, seq, value], …]`, oldest first) keeps the
//! points readable with SQL (`json_each`, the `time_series` view).

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension};

use crate::store::StoreError;

/// The most points one block holds (a series with more in one settle gets several).
pub const BLOCK_POINTS: usize = 1024;

/// One point as a block keeps it: timestamp, order of insertion, value.
pub type BlockPoint = (i64, i64, f64);

/// Moves every point of `points_recent` into blocks, in the caller's transaction.
/// A point whose value JSON cannot carry (an infinity) goes to `points` as a row, with
/// the INSERT verb `insert` (with or without a conflict clause).
pub fn settle(conn: &Connection, insert: &str) -> Result<(), StoreError> {
    let mut by_series: HashMap<i64, Vec<BlockPoint>> = HashMap::new();
    {
        let mut read =
            conn.prepare_cached("SELECT series_id, ts_ms, seq, value FROM points_recent")?;
        let mut rows = read.query([])?;
        while let Some(r) = rows.next()? {
            by_series
                .entry(r.get(0)?)
                .or_insert_with(|| Vec::with_capacity(256))
                .push((r.get(1)?, r.get(2)?, r.get(3)?));
        }
    }
    let mut series: Vec<(i64, Vec<BlockPoint>)> = by_series.into_iter().collect();
    // In series order: the index entries go in order too.
    series.sort_unstable_by_key(|(id, _)| *id);
    let mut block = conn.prepare_cached(
        "INSERT INTO point_blocks(series_id, first_ts, last_ts, max_seq, points)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut row = conn.prepare_cached(&format!(
        "{insert} INTO points(series_id, ts_ms, seq, value) VALUES (?1, ?2, ?3, ?4)"
    ))?;
    for (id, mut points) in series {
        points.sort_unstable_by_key(|&(ts, seq, _)| (ts, seq));
        let (finite, other): (Vec<BlockPoint>, Vec<BlockPoint>) =
            points.into_iter().partition(|p| p.2.is_finite());
        for (ts, seq, value) in other {
            row.execute(params![id, ts, seq, value])?;
        }
        for chunk in finite.chunks(BLOCK_POINTS) {
            // Chunks are never empty; sorted by time, so the first and last bound it.
            let (first, last) = (chunk[0].0, chunk[chunk.len() - 1].0);
            let max_seq = chunk.iter().map(|p| p.1).max().unwrap_or(0);
            block.execute(params![id, first, last, max_seq, encode(chunk)?])?;
        }
    }
    conn.prepare_cached("DELETE FROM points_recent")?
        .execute([])?;
    Ok(())
}

/// `points` as `[[ts_ms,seq,value],…]`. Values are finite (the settle keeps infinities
/// out): `serde_json` writes the shortest text that reads back as the same number, with
/// a `.` or an exponent, so SQL reads it as REAL.
fn encode(points: &[BlockPoint]) -> Result<String, StoreError> {
    serde_json::to_string(points)
        .map_err(|e| StoreError::Internal(format!("writing a time series block: {e}")))
}

/// Reads a block's points; a block this build did not write is an error.
fn decode(text: &str) -> Result<Vec<BlockPoint>, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("a time series block is not readable: {e}")))
}

/// The points of series `id` in blocks with `from_ms <= ts < to_ms`, in no set order.
pub fn range(
    conn: &Connection,
    id: i64,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<BlockPoint>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT points FROM point_blocks
         WHERE series_id = ?1 AND last_ts >= ?2 AND first_ts < ?3",
    )?;
    let mut rows = stmt.query(params![id, from_ms, to_ms])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let text: String = r.get(0)?;
        out.extend(
            decode(&text)?
                .into_iter()
                .filter(|p| p.0 >= from_ms && p.0 < to_ms),
        );
    }
    Ok(out)
}

/// The newest point of series `id` in blocks (largest timestamp; ties: largest `seq`).
pub fn last(conn: &Connection, id: i64) -> Result<Option<BlockPoint>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT points FROM point_blocks WHERE series_id = ?1
         AND last_ts = (SELECT max(last_ts) FROM point_blocks WHERE series_id = ?1)",
    )?;
    let mut rows = stmt.query([id])?;
    let mut newest: Option<BlockPoint> = None;
    while let Some(r) = rows.next()? {
        let text: String = r.get(0)?;
        for p in decode(&text)? {
            if newest.is_none_or(|n| (p.0, p.1) > (n.0, n.1)) {
                newest = Some(p);
            }
        }
    }
    Ok(newest)
}

/// The largest `seq` of any block of series `id` that may hold a point at `ts_ms`.
pub fn max_seq_at(conn: &Connection, id: i64, ts_ms: i64) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT max(max_seq) FROM point_blocks
             WHERE series_id = ?1 AND last_ts >= ?2 AND first_ts <= ?2",
        )?
        .query_row(params![id, ts_ms], |r| r.get(0))
        .optional()?
        .flatten())
}
