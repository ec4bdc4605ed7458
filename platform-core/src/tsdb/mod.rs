//! Time series and raw data sample storage (the embedded EPTS behaviour), plus queries.
//!
//! A data sample is kept verbatim in `data_samples`; each of its numeric or boolean
//! top-level fields is a point in the series `auto~<field>` (docs/protocol.md §3).

use rusqlite::{params, Connection, OptionalExtension};

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

/// A sample to store: its JSON text and the points derived from it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSample {
    pub raw: String,
    pub points: Vec<DataPoint>,
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
    append_samples(&tx, endpoint_id, received_ms, samples)?;
    tx.commit()?;
    Ok(())
}

/// Stores samples and their points inside the caller's transaction (the store's group
/// commit: `StoreHandle::call_grouped`).
pub fn append_samples(
    conn: &Connection,
    endpoint_id: &str,
    received_ms: i64,
    samples: &[StoredSample],
) -> Result<(), StoreError> {
    let mut raw = conn.prepare_cached(
        "INSERT INTO data_samples(endpoint_id, received_ms, sample) VALUES (?1, ?2, ?3)",
    )?;
    let mut pt = conn.prepare_cached(
        "INSERT INTO time_series(endpoint_id, name, ts_ms, value) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for s in samples {
        raw.execute(params![endpoint_id, received_ms, s.raw])?;
        for p in &s.points {
            pt.execute(params![endpoint_id, p.series, p.ts_ms, p.value])?;
        }
    }
    Ok(())
}

/// Stores points without a raw sample (e.g. EPL's `connectivity`).
pub fn insert_points(
    conn: &mut Connection,
    endpoint_id: &str,
    points: &[DataPoint],
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut pt = tx.prepare_cached(
            "INSERT INTO time_series(endpoint_id, name, ts_ms, value) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for p in points {
            pt.execute(params![endpoint_id, p.series, p.ts_ms, p.value])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// The newest point of a series (largest timestamp; ties: last inserted).
pub fn last(
    conn: &Connection,
    endpoint_id: &str,
    series: &str,
) -> Result<Option<DataPoint>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT ts_ms, value FROM time_series WHERE endpoint_id = ?1 AND name = ?2
             ORDER BY ts_ms DESC, rowid DESC LIMIT 1",
            params![endpoint_id, series],
            |r| {
                Ok(DataPoint {
                    series: series.to_owned(),
                    ts_ms: r.get(0)?,
                    value: r.get(1)?,
                })
            },
        )
        .optional()?)
}

/// Points of a series with `from_ms <= ts < to_ms`, oldest first.
pub fn range(
    conn: &Connection,
    endpoint_id: &str,
    series: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<DataPoint>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT ts_ms, value FROM time_series WHERE endpoint_id = ?1 AND name = ?2
         AND ts_ms >= ?3 AND ts_ms < ?4 ORDER BY ts_ms, rowid",
    )?;
    let rows = stmt.query_map(params![endpoint_id, series, from_ms, to_ms], |r| {
        Ok(DataPoint {
            series: series.to_owned(),
            ts_ms: r.get(0)?,
            value: r.get(1)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MIGRATIONS;

    #[test]
    fn stored_points_come_back_by_last_and_range() {
        let mut c = Connection::open_in_memory().unwrap();
        for m in MIGRATIONS {
            c.execute_batch(m).unwrap();
        }
        let p = |ts, v| DataPoint {
            series: "auto~t".into(),
            ts_ms: ts,
            value: v,
        };
        let samples = vec![
            StoredSample {
                raw: "{}".into(),
                points: vec![p(20, 2.0)],
            },
            StoredSample {
                raw: "{}".into(),
                points: vec![p(10, 1.0)],
            },
        ];
        insert_samples(&mut c, "ep", 0, &samples).unwrap();
        assert_eq!(last(&c, "ep", "auto~t").unwrap(), Some(p(20, 2.0)));
        assert_eq!(last(&c, "ep", "auto~x").unwrap(), None);
        assert_eq!(
            range(&c, "ep", "auto~t", 0, 100).unwrap(),
            vec![p(10, 1.0), p(20, 2.0)]
        );
        assert_eq!(range(&c, "ep", "auto~t", 11, 20).unwrap(), vec![]);
        let n: i64 = c
            .query_row("SELECT count(*) FROM data_samples", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }
}
