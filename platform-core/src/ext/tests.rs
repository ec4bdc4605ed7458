//! Extensions driven as KPC drives them, against a real store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::bus::LocalBus;
use crate::kp1::Kp1TopicRef;

fn extensions(store: StoreHandle, dir: &std::path::Path) -> Extensions {
    Extensions::new(
        store,
        Hub::new(),
        EpmxPolicy {
            read_only: Vec::new(),
            hidden: Vec::new(),
        },
        bcx::BcxConfig {
            directory: dir.join("files"),
            max_file_bytes: 1024,
            quota_bytes: 1024,
        },
        Duration::from_secs(60),
        &[],
        Arc::new(LocalBus::new(16)),
        None,
    )
}

fn count(c: &rusqlite::Connection, sql: &str) -> Result<i64, StoreError> {
    Ok(c.query_row(sql, [], |r| r.get(0))?)
}

#[tokio::test]
async fn dcx_moves_recent_points_in_bulk_after_the_commit_that_made_it_due() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = StoreHandle::open(&dir.path().join("c.sqlite")).unwrap_or_else(|e| panic!("{e}"));
    // Other endpoints' series, so points go through points_recent.
    let series = 600;
    store
        .call(move |c| {
            c.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
                 INSERT INTO series(endpoint_id, name) SELECT 'other' || i, 'auto~t' FROM n",
                [series],
            )?;
            Ok(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ext = extensions(store.clone(), dir.path());
    let topic = Kp1TopicRef::parse("kp1/app-v1/dcx/tok/json/1").unwrap_or_else(|e| panic!("{e}"));
    // One batch with more points than one settle takes (the settle size for 601 series).
    let n = 601 * 128 + 100;
    let batch: Vec<String> = (0..n).map(|i| format!(r#"{{"t":{i}}}"#)).collect();
    let payload = format!("[{}]", batch.join(","));
    ext.handle(
        &topic,
        ExtensionKind::Dcx,
        "ep".into(),
        payload.as_bytes(),
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("{e:?}"));
    // The settle runs after the request was answered: wait for it (a deadline only
    // against hanging).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = store
            .call(|c| count(c, "SELECT count(*) FROM points_recent"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} points never moved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored = store
        .call(|c| {
            count(
                c,
                "SELECT count(*) FROM time_series WHERE endpoint_id = 'ep' AND name = 'auto~t'",
            )
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stored, n);
}
