//! The time series store against an in-memory database: appends, settles, reads, purges.

use super::*;
use crate::store::MIGRATIONS;

/// An in-memory database with the first `upto` migrations.
fn migrated(upto: usize) -> Connection {
    let c = Connection::open_in_memory().unwrap();
    for m in &MIGRATIONS[..upto] {
        c.execute_batch(m).unwrap();
    }
    c
}

fn count(c: &Connection, sql: &str) -> i64 {
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// A point of the series `auto~t`.
fn p(ts_ms: i64, value: f64) -> DataPoint {
    DataPoint {
        series: "auto~t".into(),
        ts_ms,
        value,
    }
}

/// `n` series of other endpoints (the settle size grows with the number of series).
fn other_series(c: &Connection, n: i64) {
    c.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO series(endpoint_id, name) SELECT 'other' || i, 'auto~t' FROM n",
        [n],
    )
    .unwrap();
}

#[test]
fn stored_points_come_back_by_last_and_range() {
    let mut c = migrated(MIGRATIONS.len());
    let samples = vec![
        StoredSample::new("{}", vec![p(20, 2.0)]),
        StoredSample::new("{}", vec![p(10, 1.0)]),
    ];
    insert_samples(&mut c, "ep", 0, &samples).unwrap();
    assert_eq!(last(&c, "ep", "auto~t").unwrap(), Some(p(20, 2.0)));
    assert_eq!(last(&c, "ep", "auto~x").unwrap(), None);
    assert_eq!(
        range(&c, "ep", "auto~t", 0, 100).unwrap(),
        vec![p(10, 1.0), p(20, 2.0)]
    );
    assert_eq!(range(&c, "ep", "auto~t", 11, 20).unwrap(), vec![]);
    assert_eq!(count(&c, "SELECT count(*) FROM data_samples"), 2);
    // Through `points_recent`, however few the series.
    assert_eq!(count(&c, "SELECT count(*) FROM points_recent"), 2);
    assert_eq!(count(&c, "SELECT count(*) FROM points"), 0);
    assert_eq!(settle_rows(1), 4096);
    assert_eq!(settle_rows(1000), 128_000);
    assert_eq!(settle_rows(1_000_000), SETTLE_ROWS);
}

#[test]
fn recent_points_settle_in_bulk_and_reads_see_both_tables_in_order() {
    let mut c = migrated(MIGRATIONS.len());
    let sample = |ts, v| StoredSample::new("{}", vec![p(ts, v)]);
    other_series(&c, 3000);
    // One point more than a settle takes, timestamps running backwards so the
    // newest point by time is the first one stored.
    let n = SETTLE_ROWS + 1;
    let tx = c.transaction().unwrap();
    let mut known = SeriesCache::default();
    let mut due = Vec::new();
    for i in 0..SETTLE_ROWS {
        if append_samples(&tx, &mut known, "ep", 0, &[sample(n - i, i as f64)]).unwrap() {
            due.push(i);
        }
    }
    tx.commit().unwrap();
    // Due once, by the point that filled the settle; nothing moved inside the appends'
    // transaction.
    assert_eq!(due, vec![SETTLE_ROWS - 1]);
    assert_eq!(count(&c, "SELECT count(*) FROM points_recent"), SETTLE_ROWS);
    settle_now(&mut c).unwrap();
    insert_samples(&mut c, "ep", 0, &[sample(1, (n - 1) as f64)]).unwrap();
    // One series: its points in blocks of BLOCK_POINTS, none as rows.
    assert_eq!(count(&c, "SELECT count(*) FROM points"), 0);
    assert_eq!(
        count(&c, "SELECT count(*) FROM point_blocks"),
        SETTLE_ROWS / blocks::BLOCK_POINTS as i64
    );
    assert_eq!(count(&c, "SELECT count(*) FROM points_recent"), 1);
    assert_eq!(last(&c, "ep", "auto~t").unwrap(), Some(p(n, 0.0)));
    // Same timestamp in a block and in points_recent: the later one comes last.
    insert_samples(&mut c, "ep", 0, &[sample(n, -1.0)]).unwrap();
    assert_eq!(last(&c, "ep", "auto~t").unwrap(), Some(p(n, -1.0)));
    assert_eq!(
        range(&c, "ep", "auto~t", 1, 3).unwrap(),
        vec![p(1, (n - 1) as f64), p(2, (n - 2) as f64)]
    );
    assert_eq!(
        range(&c, "ep", "auto~t", n, n + 1).unwrap(),
        vec![p(n, 0.0), p(n, -1.0)]
    );
    // A point of a series no sample writes leaves the recent ones where they are.
    let connected = DataPoint {
        series: "connectivity".into(),
        ts_ms: n,
        value: 1.0,
    };
    insert_points(&mut c, "ep", std::slice::from_ref(&connected)).unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM points_recent"), 2);
    assert_eq!(last(&c, "ep", "connectivity").unwrap(), Some(connected));
    // A point without a sample orders after those of the same time in points_recent
    // and in blocks.
    insert_points(&mut c, "ep", &[p(n, 7.0), p(2, 8.0)]).unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM points_recent"), 2);
    assert_eq!(last(&c, "ep", "auto~t").unwrap(), Some(p(n, 7.0)));
    assert_eq!(
        range(&c, "ep", "auto~t", 2, 3).unwrap(),
        vec![p(2, (n - 2) as f64), p(2, 8.0)]
    );
    assert_eq!(
        range(&c, "ep", "auto~t", n, n + 1).unwrap(),
        vec![p(n, 0.0), p(n, -1.0), p(n, 7.0)]
    );
    assert_eq!(count(&c, "SELECT count(*) FROM time_series"), n + 4);
}

#[test]
fn a_settle_that_fails_keeps_the_points_and_the_appends_and_the_next_one_is_due() {
    let mut c = migrated(MIGRATIONS.len());
    other_series(&c, 600);
    let every = settle_rows(601);
    let sample = |ts| StoredSample::new("{}", vec![p(ts, 1.0)]);
    insert_samples(&mut c, "ep", 0, &[sample(0)]).unwrap();
    // Every block write fails (this stands for a full disk or whatever else might).
    c.execute_batch(
        "CREATE TRIGGER no_blocks BEFORE INSERT ON point_blocks
         BEGIN SELECT RAISE(ABORT, 'no room'); END;",
    )
    .unwrap();
    let mut known = SeriesCache::default();
    let mut appends = |c: &mut Connection, from: i64, to: i64| {
        let tx = c.transaction().unwrap();
        let due: Vec<i64> = (from..to)
            .filter(|i| append_samples(&tx, &mut known, "ep", 0, &[sample(*i)]).unwrap())
            .collect();
        tx.commit().unwrap();
        due
    };
    assert_eq!(appends(&mut c, 1, every), vec![every - 1]);
    assert!(settle_now(&mut c).is_err());
    settle_logged(&mut c);
    assert_eq!(count(&c, "SELECT count(*) FROM points_recent"), every);
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM time_series WHERE endpoint_id = 'ep'"
        ),
        every
    );
    // Once blocks can be written again, the next multiple settles everything.
    c.execute_batch("DROP TRIGGER no_blocks").unwrap();
    assert_eq!(appends(&mut c, every, 2 * every), vec![2 * every - 1]);
    settle_now(&mut c).unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM points_recent"), 0);
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM time_series WHERE endpoint_id = 'ep'"
        ),
        2 * every
    );
    assert_eq!(
        range(&c, "ep", "auto~t", 0, 2 * every).unwrap().len() as i64,
        2 * every
    );
}

#[test]
fn a_deleted_endpoints_samples_are_purged_in_steps_and_others_stay() {
    let mut c = migrated(MIGRATIONS.len());
    let one = vec![StoredSample::new("{}", vec![])];
    // Three steps' worth of row IDs, the two endpoints interleaved.
    let rows = 2 * PURGE_STEP_ROWS + 10;
    let tx = c.transaction().unwrap();
    for i in 0..rows {
        append_samples(
            &tx,
            &mut SeriesCache::default(),
            if i % 2 == 0 { "gone" } else { "kept" },
            0,
            &one,
        )
        .unwrap();
    }
    tx.commit().unwrap();
    c.execute(
        "INSERT INTO sample_purges(endpoint_id, next_id) VALUES ('gone', 0)",
        [],
    )
    .unwrap();
    let mut steps = 0;
    while purge_step(&mut c).unwrap() {
        steps += 1;
    }
    assert_eq!(steps, 3);
    let of = |ep: &str| {
        count(
            &c,
            &format!("SELECT count(*) FROM data_samples WHERE endpoint_id = '{ep}'"),
        )
    };
    assert_eq!((of("gone"), of("kept")), (0, rows / 2));
    assert_eq!(count(&c, "SELECT count(*) FROM sample_purges"), 0);
}

#[test]
fn points_from_before_migration_6_keep_their_order_below_later_ones() {
    let mut c = migrated(5);
    c.execute_batch(
        "INSERT INTO time_series VALUES ('ep', 'auto~t', 5, 1.0), ('ep', 'auto~t', 5, 2.0),
         ('ep', 'auto~t', 1, 0.5), ('other', 'auto~t', 5, 9.0);",
    )
    .unwrap();
    for m in &MIGRATIONS[5..] {
        c.execute_batch(m).unwrap();
    }
    assert_eq!(last(&c, "ep", "auto~t").unwrap(), Some(p(5, 2.0)));
    insert_samples(&mut c, "ep", 0, &[StoredSample::new("{}", vec![p(5, 3.0)])]).unwrap();
    insert_points(&mut c, "ep", &[p(5, 4.0)]).unwrap();
    assert_eq!(
        range(&c, "ep", "auto~t", 0, 10).unwrap(),
        vec![p(1, 0.5), p(5, 1.0), p(5, 2.0), p(5, 3.0), p(5, 4.0)]
    );
    assert_eq!(last(&c, "ep", "auto~t").unwrap(), Some(p(5, 4.0)));
    assert_eq!(last(&c, "other", "auto~t").unwrap(), Some(p(5, 9.0)));
}

#[test]
fn settled_values_read_back_exactly_by_range_last_and_sql_and_infinities_stay_rows() {
    let mut c = migrated(MIGRATIONS.len());
    other_series(&c, 600);
    let values = [0.1, 21.0, -2.5, 1e20, 5e-324, f64::MAX, -123.456, 1.0 / 3.0];
    let samples: Vec<StoredSample> = values
        .iter()
        .chain(&[f64::INFINITY])
        .enumerate()
        .map(|(i, v)| StoredSample::new("{}", vec![p(i as i64, *v)]))
        .collect();
    insert_samples(&mut c, "ep", 0, &samples).unwrap();
    settle_now(&mut c).unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM points_recent"), 0);
    assert_eq!(count(&c, "SELECT count(*) FROM point_blocks"), 1);
    assert_eq!(count(&c, "SELECT count(*) FROM points"), 1);
    let back: Vec<f64> = range(&c, "ep", "auto~t", 0, 100)
        .unwrap()
        .into_iter()
        .map(|d| d.value)
        .collect();
    let mut want = values.to_vec();
    want.push(f64::INFINITY);
    assert_eq!(
        back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(last(&c, "ep", "auto~t").unwrap(), Some(p(8, f64::INFINITY)));
    // The view reads blocks as REAL values and integer times, in the same order.
    let mut stmt = c
        .prepare(
            "SELECT ts_ms, value, typeof(ts_ms), typeof(value) FROM time_series
             WHERE endpoint_id = 'ep' ORDER BY ts_ms, seq",
        )
        .unwrap();
    let rows: Vec<(i64, f64, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), want.len());
    for (i, (ts, v, tt, vt)) in rows.into_iter().enumerate() {
        assert_eq!(
            (ts, tt.as_str(), vt.as_str()),
            (i as i64, "integer", "real")
        );
        assert_eq!(v.to_bits(), want[i].to_bits(), "value {i}");
    }
}

#[test]
fn an_unreadable_block_is_reported_as_corrupt() {
    let c = migrated(MIGRATIONS.len());
    c.execute_batch(
        "INSERT INTO series(endpoint_id, name) VALUES ('ep', 'auto~t');
         INSERT INTO point_blocks(series_id, first_ts, last_ts, max_seq, points)
         VALUES (1, 0, 5, 1, '[[0,1,');",
    )
    .unwrap();
    assert!(matches!(
        range(&c, "ep", "auto~t", 0, 10),
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        last(&c, "ep", "auto~t"),
        Err(StoreError::Corrupt(_))
    ));
}

#[test]
fn deleting_an_endpoint_deletes_its_blocks_and_keeps_the_others() {
    let mut c = migrated(MIGRATIONS.len());
    other_series(&c, 600);
    let one = |ts| vec![StoredSample::new("{}", vec![p(ts, 1.0)])];
    for ep in ["gone", "kept"] {
        insert_samples(&mut c, ep, 0, &one(1)).unwrap();
    }
    settle_now(&mut c).unwrap();
    insert_samples(&mut c, "gone", 0, &one(2)).unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM point_blocks"), 2);
    crate::epr::delete_endpoint_in(&c, "gone").unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM point_blocks"), 1);
    assert_eq!(count(&c, "SELECT count(*) FROM points_recent"), 0);
    assert_eq!(range(&c, "gone", "auto~t", 0, 10).unwrap(), vec![]);
    assert_eq!(range(&c, "kept", "auto~t", 0, 10).unwrap(), vec![p(1, 1.0)]);
}

#[test]
fn the_view_finds_one_series_by_its_indexes_without_unpacking_other_blocks() {
    let c = migrated(MIGRATIONS.len());
    let mut stmt = c
        .prepare(
            "EXPLAIN QUERY PLAN SELECT ts_ms, value FROM time_series
             WHERE endpoint_id = 'ep' AND name = 'auto~t'",
        )
        .unwrap();
    let plan: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let plan = plan.join("\n");
    for step in [
        "SEARCH p USING PRIMARY KEY (series_id=?)",
        "SEARCH b USING INDEX point_blocks_series (series_id=?)",
    ] {
        assert!(plan.contains(step), "{step} not in\n{plan}");
    }
    assert!(!plan.contains("SCAN b"), "{plan}");
}

#[test]
fn points_from_before_migration_8_stay_readable_and_recent_ones_settle_into_blocks() {
    let mut c = migrated(7);
    c.execute_batch(
        "INSERT INTO series(endpoint_id, name) VALUES ('ep', 'auto~t');
         INSERT INTO points VALUES (1, 1, 1, 1.0), (1, 3, 3, 3.0);
         INSERT INTO points_recent VALUES (1, 2, 2, 2.0), (1, 4, 4, 4.0);",
    )
    .unwrap();
    c.execute_batch(MIGRATIONS[7]).unwrap();
    let all = || vec![p(1, 1.0), p(2, 2.0), p(3, 3.0), p(4, 4.0)];
    assert_eq!(range(&c, "ep", "auto~t", 0, 10).unwrap(), all());
    settle_now(&mut c).unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM point_blocks"), 1);
    assert_eq!(count(&c, "SELECT count(*) FROM points_recent"), 0);
    assert_eq!(range(&c, "ep", "auto~t", 0, 10).unwrap(), all());
    assert_eq!(last(&c, "ep", "auto~t").unwrap(), Some(p(4, 4.0)));
    assert_eq!(count(&c, "SELECT count(*) FROM time_series"), 4);
}
