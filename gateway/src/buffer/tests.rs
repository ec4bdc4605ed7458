use super::*;

fn key(token: &str) -> EndpointKey {
    EndpointKey {
        app_version: AppVersionName::new("app-v1").unwrap(),
        token: EndpointToken::new(token).unwrap(),
    }
}

fn sample(token: &str, n: i64) -> NewSample {
    NewSample {
        endpoint: key(token),
        ts_ms: n,
        payload: format!("{{\"n\":{n}}}"),
    }
}

fn open(dir: &tempfile::TempDir) -> BufferHandle {
    BufferHandle::open(&dir.path().join("buffer.sqlite"), Synchronous::Full)
        .unwrap()
        .0
}

#[tokio::test]
async fn leased_batches_are_oldest_first_per_endpoint_and_deleted_on_ack() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir);
    b.append((1..=5).map(|n| sample("a", n)).collect())
        .await
        .unwrap();
    b.append(vec![sample("b", 9)]).await.unwrap();
    let batches = b.lease(3, vec![]).await.unwrap();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0].endpoint, key("a"));
    assert_eq!(batches[0].payload, r#"[{"n":1},{"n":2},{"n":3}]"#);
    assert_eq!(batches[1].payload, r#"[{"n":9}]"#);
    // An endpoint with a leased batch gets no second one.
    assert!(b.lease(3, vec![]).await.unwrap().is_empty());
    assert_eq!(b.ack(key("a")).await.unwrap(), 3);
    let next = b.lease(3, vec![]).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].payload, r#"[{"n":4},{"n":5}]"#);
    assert_eq!(
        b.stats().await.unwrap(),
        BufferStats {
            pending: 3,
            leased: 3,
            dead_letters: 0
        }
    );
}

#[tokio::test]
async fn a_released_batch_is_leased_again_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir);
    b.append(vec![sample("a", 1), sample("a", 2)])
        .await
        .unwrap();
    let first = b.lease(10, vec![]).await.unwrap();
    b.release(key("a")).await.unwrap();
    assert_eq!(b.lease(10, vec![]).await.unwrap(), first);
}

#[tokio::test]
async fn skipped_endpoints_are_not_leased() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir);
    b.append(vec![sample("a", 1), sample("b", 2)])
        .await
        .unwrap();
    let got = b.lease(10, vec![key("a")]).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].endpoint, key("b"));
}

#[tokio::test]
async fn a_parked_batch_moves_to_dead_letters_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir);
    b.append(vec![sample("a", 1), sample("a", 2)])
        .await
        .unwrap();
    b.lease(10, vec![]).await.unwrap();
    assert_eq!(
        b.park(key("a"), 401, "unknown token".into()).await.unwrap(),
        2
    );
    assert_eq!(
        b.stats().await.unwrap(),
        BufferStats {
            pending: 0,
            leased: 0,
            dead_letters: 2
        }
    );
    drop(b);
    let c = Connection::open(dir.path().join("buffer.sqlite")).unwrap();
    let (status, reason): (i64, String) = c
        .query_row("SELECT status, reason FROM dead_letters LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((status, reason.as_str()), (401, "unknown token"));
}

#[tokio::test]
async fn leased_rows_are_pending_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (b, join) =
        BufferHandle::open(&dir.path().join("buffer.sqlite"), Synchronous::Full).unwrap();
    b.append(vec![sample("a", 1)]).await.unwrap();
    assert_eq!(b.lease(10, vec![]).await.unwrap().len(), 1);
    drop(b);
    join.join().unwrap();
    let b = open(&dir);
    let again = b.lease(10, vec![]).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].payload, r#"[{"n":1}]"#);
}

#[tokio::test]
async fn a_foreign_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer.sqlite");
    std::fs::write(
        &path,
        b"this is not a database, but somebody's notes\n".repeat(100),
    )
    .unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = BufferHandle::open(&path, Synchronous::Full).unwrap_err();
    assert!(matches!(err, BufferError::Foreign { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);

    let other = dir.path().join("other.sqlite");
    let c = Connection::open(&other).unwrap();
    c.execute_batch("CREATE TABLE accounts(id INTEGER)")
        .unwrap();
    drop(c);
    let err = BufferHandle::open(&other, Synchronous::Full).unwrap_err();
    assert!(matches!(err, BufferError::Foreign { .. }), "{err}");
}
