//! The store thread: migrations, calls, grouped appends and who answers them.

use super::*;

/// Adds application `a{i}`; returns `i`.
fn insert_app(c: &Connection, i: i64) -> Result<i64, StoreError> {
    c.execute(
        "INSERT INTO applications(name) VALUES (?1)",
        [format!("a{i}")],
    )?;
    Ok(i)
}

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
async fn appends_of_a_group_that_all_succeed_run_once() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = StoreHandle::open(&dir.path().join("c.sqlite")).unwrap_or_else(|e| panic!("{e}"));
    let runs = Arc::new(AtomicU64::new(0));
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let blocker = store.call(move |_| {
        let _ = wait.recv();
        Ok(())
    });
    let mut appends = Vec::new();
    for i in 0..50 {
        let (s, runs) = (store.clone(), runs.clone());
        appends.push(tokio::spawn(async move {
            s.call_grouped(move |c| {
                runs.fetch_add(1, Ordering::Relaxed);
                c.execute(
                    "INSERT INTO applications(name) VALUES (?1)",
                    [format!("a{i}")],
                )?;
                Ok(())
            })
            .await
        }));
    }
    tokio::task::yield_now().await;
    let _ = release.send(());
    blocker.await.unwrap_or_else(|e| panic!("{e}"));
    for a in appends {
        a.await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(runs.load(Ordering::Relaxed), 50);
}

#[tokio::test]
async fn appends_queued_together_share_a_commit_and_a_failed_one_undoes_only_itself() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = StoreHandle::open(&dir.path().join("c.sqlite")).unwrap_or_else(|e| panic!("{e}"));
    // A call holds the store thread while 200 appends queue up behind it.
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let blocker = store.call(move |_| {
        let _ = wait.recv();
        Ok(())
    });
    let mut appends = Vec::new();
    for i in 0..200i64 {
        let s = store.clone();
        appends.push(tokio::spawn(async move {
            s.call_grouped(move |c| {
                if i == 7 {
                    c.execute("INSERT INTO applications(name) VALUES ('x')", [])?;
                    return Err(StoreError::Invalid("append 7 fails after writing".into()));
                }
                insert_app(c, i)
            })
            .await
        }));
    }
    let releaser = tokio::spawn(async move {
        // Let the appends reach the queue; correctness does not depend on it (a
        // smaller group is still a group), only how many share one commit.
        tokio::task::yield_now().await;
        let _ = release.send(());
    });
    blocker.await.unwrap_or_else(|e| panic!("{e}"));
    releaser.await.unwrap_or_else(|e| panic!("{e}"));
    for (i, a) in appends.into_iter().enumerate() {
        let r = a.await.unwrap_or_else(|e| panic!("{e}"));
        if i == 7 {
            assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
        } else {
            assert_eq!(r.unwrap_or_else(|e| panic!("{e}")), i as i64);
        }
    }
    let (n, x): (i64, i64) = store
        .call(|c| {
            Ok(c.query_row(
                "SELECT count(*), count(*) FILTER (WHERE name = 'x') FROM applications",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (n, x),
        (199, 0),
        "every append but the failed one, none of its rows"
    );
}

/// Opened outside any runtime, the store thread answers the appends itself; opened on
/// a multi-threaded runtime, a task on it does. Either way every caller hears back.
#[test]
fn appends_are_answered_with_and_without_a_runtime_at_open() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let outside = StoreHandle::open(&dir.path().join("a.sqlite")).unwrap_or_else(|e| panic!("{e}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let inside = runtime.block_on(async {
        StoreHandle::open(&dir.path().join("b.sqlite")).unwrap_or_else(|e| panic!("{e}"))
    });
    for store in [outside, inside] {
        let answered = runtime.block_on(async {
            let mut all = Vec::new();
            for i in 0..100i64 {
                let s = store.clone();
                all.push(tokio::spawn(async move {
                    s.call_grouped(move |c| insert_app(c, i)).await
                }));
            }
            let mut got = Vec::new();
            for a in all {
                got.push(
                    a.await
                        .unwrap_or_else(|e| panic!("{e}"))
                        .unwrap_or_else(|e| panic!("{e}")),
                );
            }
            got
        });
        assert_eq!(answered, (0..100).collect::<Vec<_>>());
        let stored: i64 =
            runtime
                .block_on(store.call(|c| {
                    Ok(c.query_row("SELECT count(*) FROM applications", [], |r| r.get(0))?)
                }))
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stored, 100, "every answered append is stored");
    }
}

#[tokio::test]
async fn the_generation_moves_after_a_change_and_not_after_a_read() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = StoreHandle::open(&dir.path().join("c.sqlite")).unwrap_or_else(|e| panic!("{e}"));
    let g0 = store.generation();
    store
        .call(|c| Ok(c.query_row("SELECT count(*) FROM tokens", [], |r| r.get::<_, i64>(0))?))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(store.generation(), g0);
    store
        .call(|c| Ok(c.execute("INSERT INTO applications(name) VALUES ('a')", [])?))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        store.generation() > g0,
        "seen by the caller as soon as it has its answer"
    );
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
