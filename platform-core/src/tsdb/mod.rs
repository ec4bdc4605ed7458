//! Time series and raw data sample storage (the embedded EPTS behaviour), plus queries.
//!
//! A data sample is kept verbatim in `data_samples`; each of its numeric or boolean
//! top-level fields is a point in the series `auto~<field>` (docs/protocol.md §3).
//! A series is a row of `series` (endpoint, name → number); its points are rows of
//! `points_recent` in arrival order, then moved in bulk ([`settle_now`]) into `point_blocks`,
//! many points of a series per row (`blocks`). Points without a sample (EPL's
//! `connectivity`), and those stored before blocks existed, are rows of `points` keyed
//! by (series number, timestamp, order of insertion). Reads look in all three.

mod blocks;
mod cache;
mod sample;

use rusqlite::{params, Connection, OptionalExtension};

pub use cache::{SeriesCache, SharedSeries};
pub use sample::{PointRef, StoredSample};

use crate::store::StoreError;

/// Prefix of series derived automatically from sample fields.
pub const AUTO_PREFIX: &str = "auto~";

/// One point of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct DataPoint {
    pub series: String,
    pub ts_ms: i64,
    pub value: f64,
}

/// How many data samples are stored (all endpoints).
pub fn count_samples(conn: &mut Connection) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row("SELECT count(*) FROM data_samples", [], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Stores samples and their points in one transaction (all or nothing).
pub fn insert_samples(
    conn: &mut Connection,
    endpoint_id: &str,
    received_ms: i64,
    samples: &[StoredSample],
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    let due = append_samples(
        &tx,
        &mut SeriesCache::default(),
        endpoint_id,
        received_ms,
        samples,
    )?;
    tx.commit()?;
    if due {
        settle_logged(conn);
    }
    Ok(())
}

/// Stores samples and their points inside the caller's transaction (the store's group
/// commit: `StoreHandle::call_grouped`). `known`: series numbers looked up before (see
/// [`SeriesCache`] for when it may be kept between calls); this call adds its own.
///
/// True when `points_recent` has gathered enough points to be moved into blocks: run
/// [`settle_now`] once the caller's transaction has committed.
pub fn append_samples(
    conn: &Connection,
    known: &mut SeriesCache,
    endpoint_id: &str,
    received_ms: i64,
    samples: &[StoredSample],
) -> Result<bool, StoreError> {
    let mut raw = conn.prepare_cached(
        "INSERT INTO data_samples(endpoint_id, received_ms, sample) VALUES (?1, ?2, ?3)",
    )?;
    // Appended in arrival order: a commit writes the few pages its points fill, however
    // many series they belong to (in `points` each series has pages of its own).
    let series: i64 = conn
        .prepare_cached("SELECT coalesce(max(id), 0) FROM series")?
        .query_row([], |r| r.get(0))?;
    let mut pt = conn.prepare_cached(
        "INSERT INTO points_recent(series_id, ts_ms, seq, value) VALUES (?1, ?2, ?3, ?4)",
    )?;
    // Row IDs of the first and last point this call appended.
    let mut appended: Option<(i64, i64)> = None;
    for s in samples {
        raw.execute(params![endpoint_id, received_ms, s.raw()])?;
        let seq = conn.last_insert_rowid();
        for p in s.points() {
            // The series of a batch repeat from sample to sample, and those of a
            // device from batch to batch: each is looked up once.
            let id = match known.get(endpoint_id, p.series) {
                Some(id) => id,
                None => {
                    let id = series_id(conn, endpoint_id, p.series)?;
                    known.put(endpoint_id, p.series, id);
                    id
                }
            };
            pt.execute(params![id, p.ts_ms, seq, p.value])?;
            let row = conn.last_insert_rowid();
            appended = Some((appended.map_or(row, |(first, _)| first), row));
        }
    }
    // Row IDs of `points_recent` count up from 1 after each settle (the table is emptied):
    // a settle is due when this call's points crossed a multiple of the settle size.
    // Should that settle fail, the points stay where they are (reads see them) and the
    // next multiple is due again.
    Ok(appended.is_some_and(|(first, last)| {
        let every = settle_rows(series);
        last / every > (first - 1) / every
    }))
}

/// The most points `points_recent` gathers before a settle moves them. Larger: fewer,
/// fuller blocks; smaller: a shorter settle (no append commits while it runs) and less
/// for a read to look through (the table has no index, a read scans it: ~7 ms for this
/// many rows on a 2-core machine).
pub const SETTLE_ROWS: i64 = 262_144;

/// When `points_recent` is settled, given the number of series: about 128 points per
/// series. A settle writes one block per series (a row and an index entry): fewer
/// points per series would mean more, smaller blocks to write and to read back.
fn settle_rows(series: i64) -> i64 {
    series.saturating_mul(128).clamp(4096, SETTLE_ROWS)
}

/// Moves every point of `points_recent` into blocks, one or more per series, in a
/// transaction of its own, after the commit of the appends that made it due. Inside
/// their transaction it would need a savepoint (a failed settle must not undo the
/// appends), and SQLite first copies every page changed under a savepoint to a
/// temporary file. For the same reason a point moved as a row of `points` (see `blocks::settle`)
/// goes in `OR ROLLBACK`: a conflict ends the whole transaction, so SQLite keeps no copy
/// to undo the one statement with (points never conflict; should one, the settle fails
/// whole).
pub fn settle_now(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    blocks::settle(&tx, "INSERT OR ROLLBACK")?;
    tx.commit()?;
    Ok(())
}

/// [`settle_now`]; a failure is logged and leaves the points in `points_recent`.
pub fn settle_logged(conn: &mut Connection) {
    if let Err(e) = settle_now(conn) {
        log::error!(
            "core store: moving recent time series points failed \
             (they stay in points_recent): {e}"
        );
    }
}

/// The number of `endpoint_id`'s series `name`, made on first use.
fn series_id(conn: &Connection, endpoint_id: &str, name: &str) -> Result<i64, StoreError> {
    if let Some(id) = find_series(conn, endpoint_id, name)? {
        return Ok(id);
    }
    conn.prepare_cached("INSERT INTO series(endpoint_id, name) VALUES (?1, ?2)")?
        .execute(params![endpoint_id, name])?;
    Ok(conn.last_insert_rowid())
}

/// Row IDs of `data_samples` one purge step looks through (a range scan of the table:
/// a few milliseconds, so appends wait little between steps).
const PURGE_STEP_ROWS: i64 = 100_000;

/// One step of purging deleted endpoints' raw samples (see migration 5): looks through
/// the next `PURGE_STEP_ROWS` row IDs for one endpoint. True while a purge remains;
/// run it as its own store call, repeatedly, so appends go on between the steps.
pub fn purge_step(conn: &mut Connection) -> Result<bool, StoreError> {
    let next: Option<(String, i64)> = conn
        .query_row(
            "SELECT endpoint_id, next_id FROM sample_purges LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((endpoint_id, from)) = next else {
        return Ok(false);
    };
    let to = from.saturating_add(PURGE_STEP_ROWS);
    let tx = conn.transaction()?;
    tx.execute(
        "DELETE FROM data_samples WHERE id >= ?1 AND id < ?2 AND endpoint_id = ?3",
        params![from, to, endpoint_id],
    )?;
    let last: i64 = tx.query_row("SELECT coalesce(max(id), 0) FROM data_samples", [], |r| {
        r.get(0)
    })?;
    if to > last {
        tx.execute(
            "DELETE FROM sample_purges WHERE endpoint_id = ?1",
            [&endpoint_id],
        )?;
    } else {
        tx.execute(
            "UPDATE sample_purges SET next_id = ?2 WHERE endpoint_id = ?1",
            params![endpoint_id, to],
        )?;
    }
    tx.commit()?;
    Ok(true)
}

/// Runs purge steps until no deleted endpoint has raw samples left; call after deleting
/// endpoints, and once at start (a purge cut short by a stop goes on).
pub async fn purge_deleted(store: &crate::store::StoreHandle) -> Result<(), StoreError> {
    while store.call_outside_registry(purge_step).await? {}
    Ok(())
}

/// Stores points without a raw sample, in series no sample writes (EPL's
/// `connectivity`; a sample's are `auto~…`).
pub fn insert_points(
    conn: &mut Connection,
    endpoint_id: &str,
    points: &[DataPoint],
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    append_points(&tx, endpoint_id, points)?;
    tx.commit()?;
    Ok(())
}

/// [`insert_points`] inside the caller's transaction (e.g. the store's group commit).
pub fn append_points(
    conn: &Connection,
    endpoint_id: &str,
    points: &[DataPoint],
) -> Result<(), StoreError> {
    // After every point of the series at that time (no sample to take the order of).
    // Only a sample's series (`auto~…`) has points in `points_recent` and in blocks:
    // EPL's `connectivity` points, which come by the thousand when a site's clients all
    // reconnect, are looked up in `points` alone (no scan of `points_recent`).
    let mut pt = conn.prepare_cached(
        "INSERT INTO points(series_id, ts_ms, seq, value) VALUES (?1, ?2,
         max((SELECT coalesce(max(seq), 0) FROM points WHERE series_id = ?1 AND ts_ms = ?2),
             ?4) + 1, ?3)",
    )?;
    for p in points {
        let id = series_id(conn, endpoint_id, &p.series)?;
        let mut elsewhere = 0;
        if p.series.starts_with(AUTO_PREFIX) {
            let recent: Option<i64> = conn
                .prepare_cached(
                    "SELECT max(seq) FROM points_recent WHERE series_id = ?1 AND ts_ms = ?2",
                )?
                .query_row(params![id, p.ts_ms], |r| r.get(0))?;
            let blocked = blocks::max_seq_at(conn, id, p.ts_ms)?;
            elsewhere = recent.max(blocked).unwrap_or(0);
        }
        pt.execute(params![id, p.ts_ms, p.value, elsewhere])?;
    }
    Ok(())
}

/// The number of `endpoint_id`'s series `name`, if it has one.
fn find_series(
    conn: &Connection,
    endpoint_id: &str,
    name: &str,
) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT id FROM series WHERE endpoint_id = ?1 AND name = ?2")?
        .query_row(params![endpoint_id, name], |r| r.get(0))
        .optional()?)
}

/// The newest point of a series (largest timestamp; ties: last inserted).
pub fn last(
    conn: &Connection,
    endpoint_id: &str,
    series: &str,
) -> Result<Option<DataPoint>, StoreError> {
    let Some(id) = find_series(conn, endpoint_id, series)? else {
        return Ok(None);
    };
    let rows: Option<blocks::BlockPoint> = conn
        .prepare_cached(
            "SELECT ts_ms, seq, value FROM (
                 SELECT * FROM (SELECT ts_ms, seq, value FROM points WHERE series_id = ?1
                                ORDER BY ts_ms DESC, seq DESC LIMIT 1)
                 UNION ALL
                 SELECT * FROM (SELECT ts_ms, seq, value FROM points_recent WHERE series_id = ?1
                                ORDER BY ts_ms DESC, seq DESC LIMIT 1))
             ORDER BY ts_ms DESC, seq DESC LIMIT 1",
        )?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let newest = match (rows, blocks::last(conn, id)?) {
        (Some(a), Some(b)) => Some(if (b.0, b.1) > (a.0, a.1) { b } else { a }),
        (a, b) => a.or(b),
    };
    Ok(newest.map(|(ts_ms, _, value)| DataPoint {
        series: series.to_owned(),
        ts_ms,
        value,
    }))
}

/// Points of a series with `from_ms <= ts < to_ms`, oldest first.
pub fn range(
    conn: &Connection,
    endpoint_id: &str,
    series: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<DataPoint>, StoreError> {
    let Some(id) = find_series(conn, endpoint_id, series)? else {
        return Ok(Vec::new());
    };
    let mut points = blocks::range(conn, id, from_ms, to_ms)?;
    let mut stmt = conn.prepare_cached(
        "SELECT ts_ms, seq, value FROM points
         WHERE series_id = ?1 AND ts_ms >= ?2 AND ts_ms < ?3
         UNION ALL
         SELECT ts_ms, seq, value FROM points_recent
         WHERE series_id = ?1 AND ts_ms >= ?2 AND ts_ms < ?3",
    )?;
    let mut rows = stmt.query(params![id, from_ms, to_ms])?;
    while let Some(r) = rows.next()? {
        points.push((r.get(0)?, r.get(1)?, r.get(2)?));
    }
    points.sort_unstable_by_key(|&(ts, seq, _)| (ts, seq));
    Ok(points
        .into_iter()
        .map(|(ts_ms, _, value)| DataPoint {
            series: series.to_owned(),
            ts_ms,
            value,
        })
        .collect())
}

#[cfg(test)]
mod tests;
