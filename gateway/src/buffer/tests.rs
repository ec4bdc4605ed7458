//! Buffer tests: leasing, acknowledging and parking batches, the bounds when full,
//! and expiry.

use super::*;
use platform_core::kp1::{AppVersionName, EndpointToken};

/// The batch's samples as the JSON array the upstream sends.
fn body(b: &Batch) -> String {
    format!("[{}]", b.samples.join(","))
}
use rusqlite::Connection;

fn key(token: &str) -> Endpoint {
    Endpoint {
        app_version: AppVersionName::new("app-v1").unwrap(),
        token: EndpointToken::new(token).unwrap(),
    }
}

fn bk(token: &str, lane: Lane) -> BatchKey {
    BatchKey {
        endpoint: key(token),
        lane,
    }
}

fn sample(token: &str, n: i64) -> Sample {
    Sample {
        endpoint: key(token),
        ts_ms: crate::now_ms(),
        payload: format!("{{\"n\":{n}}}"),
    }
}

fn limits(max_samples: usize) -> LeaseLimits {
    LeaseLimits {
        max_samples,
        max_bytes: 1 << 20,
        max_batches: 64,
        live_window: Duration::from_secs(60),
    }
}

fn open_with(dir: &tempfile::TempDir, bounds: Bounds) -> BufferHandle {
    BufferHandle::open(&dir.path().join("buffer.sqlite"), Synchronous::Full, bounds)
        .unwrap()
        .0
}

fn open_with_thread(
    dir: &tempfile::TempDir,
    bounds: Bounds,
) -> (BufferHandle, std::thread::JoinHandle<()>) {
    BufferHandle::open(&dir.path().join("buffer.sqlite"), Synchronous::Full, bounds).unwrap()
}

fn open(dir: &tempfile::TempDir) -> BufferHandle {
    open_with(dir, Bounds::default())
}

#[tokio::test]
async fn leased_batches_are_oldest_first_per_endpoint_and_deleted_on_ack() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir);
    b.append((1..=5).map(|n| sample("a", n)).collect())
        .await
        .unwrap();
    b.append(vec![sample("b", 9)]).await.unwrap();
    let batches = b.lease(limits(3), vec![]).await.unwrap();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0].key, bk("a", Lane::Backlog));
    assert_eq!(body(&batches[0]), r#"[{"n":1},{"n":2},{"n":3}]"#);
    assert_eq!(body(&batches[1]), r#"[{"n":9}]"#);
    // A (endpoint, lane) with a leased batch gets no second one.
    assert!(b.lease(limits(3), vec![]).await.unwrap().is_empty());
    assert_eq!(b.ack(bk("a", Lane::Backlog)).await.unwrap(), 3);
    let next = b.lease(limits(3), vec![]).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(body(&next[0]), r#"[{"n":4},{"n":5}]"#);
    let s = b.stats().await.unwrap();
    assert_eq!((s.pending, s.leased, s.dead_letters), (3, 3, 0));
    assert_eq!(s.bytes, 3 * 7);
}

#[tokio::test]
async fn batches_respect_the_byte_limit_but_always_carry_one_sample() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir);
    b.append((1..=4).map(|n| sample("a", n)).collect())
        .await
        .unwrap();
    let mut l = limits(100);
    l.max_bytes = 17; // "[" + 7 + "," + 7 + "]" = 17
    let got = b.lease(l, vec![]).await.unwrap();
    assert_eq!(got[0].seqs.len(), 2);
    b.release(bk("a", Lane::Backlog)).await.unwrap();
    l.max_bytes = 1;
    assert_eq!(b.lease(l, vec![]).await.unwrap()[0].seqs.len(), 1);
}

#[tokio::test]
async fn the_number_of_leased_batches_is_capped_and_endpoints_take_turns() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir);
    for t in ["a", "b", "c"] {
        b.append(vec![sample(t, 1)]).await.unwrap();
    }
    let mut l = limits(10);
    l.max_batches = 1;
    let first = b.lease(l, vec![]).await.unwrap();
    assert_eq!(first.len(), 1);
    b.release(first[0].key.clone()).await.unwrap();
    let second = b.lease(l, vec![]).await.unwrap();
    assert_ne!(first[0].key, second[0].key, "round-robin moves on");
}

#[tokio::test]
async fn a_backlog_older_than_the_live_window_opens_a_live_lane() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir);
    let old = crate::now_ms() - 3_600_000;
    let backlog: Vec<Sample> = (0..10)
        .map(|n| Sample {
            ts_ms: old + n,
            ..sample("a", n)
        })
        .collect();
    b.append(backlog).await.unwrap();
    b.append(vec![sample("a", 100), sample("a", 101)])
        .await
        .unwrap();
    let got = b.lease(limits(3), vec![]).await.unwrap();
    let lanes: Vec<(Lane, String)> = got.iter().map(|b| (b.key.lane, body(b))).collect();
    assert_eq!(
        lanes,
        vec![
            (Lane::Backlog, r#"[{"n":0},{"n":1},{"n":2}]"#.to_owned()),
            (Lane::Live, r#"[{"n":100},{"n":101}]"#.to_owned())
        ]
    );
}

#[tokio::test]
async fn a_released_batch_is_leased_again_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir);
    b.append(vec![sample("a", 1), sample("a", 2)])
        .await
        .unwrap();
    let first = b.lease(limits(10), vec![]).await.unwrap();
    b.release(bk("a", Lane::Backlog)).await.unwrap();
    assert_eq!(b.lease(limits(10), vec![]).await.unwrap(), first);
}

#[tokio::test]
async fn skipped_batches_are_not_leased() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir);
    b.append(vec![sample("a", 1), sample("b", 2)])
        .await
        .unwrap();
    let got = b
        .lease(limits(10), vec![bk("a", Lane::Backlog)])
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key, bk("b", Lane::Backlog));
}

#[tokio::test]
async fn a_parked_batch_moves_to_dead_letters_and_can_be_retried_or_purged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer.sqlite");
    let b = open(&dir);
    b.append(vec![sample("a", 1), sample("a", 2)])
        .await
        .unwrap();
    b.lease(limits(10), vec![]).await.unwrap();
    assert_eq!(
        b.park(bk("a", Lane::Backlog), 401, "unknown token".into())
            .await
            .unwrap(),
        2
    );
    let s = b.stats().await.unwrap();
    assert_eq!((s.pending, s.dead_letters, s.bytes), (0, 2, 0));
    let dead = dead_letter::list(&path).unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(
        (dead[0].status, dead[0].reason.as_str()),
        (401, "unknown token")
    );
    assert_eq!(dead_letter::retry(&path, &[dead[0].seq]).unwrap(), 1);
    assert_eq!(dead_letter::purge(&path, &[]).unwrap(), 1);
    let again = b.lease(limits(10), vec![]).await.unwrap();
    assert_eq!(body(&again[0]), r#"[{"n":1}]"#);
    assert_eq!(b.stats().await.unwrap().dead_letters, 0);
}

#[tokio::test]
async fn leased_rows_are_pending_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (b, join) = BufferHandle::open(
        &dir.path().join("buffer.sqlite"),
        Synchronous::Full,
        Bounds::default(),
    )
    .unwrap();
    b.append(vec![sample("a", 1)]).await.unwrap();
    assert_eq!(b.lease(limits(10), vec![]).await.unwrap().len(), 1);
    drop(b);
    join.join().unwrap();
    let b = open(&dir);
    let again = b.lease(limits(10), vec![]).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(body(&again[0]), r#"[{"n":1}]"#);
    assert_eq!(b.stats().await.unwrap().bytes, 7);
}

fn small(policy: FullPolicy) -> Bounds {
    Bounds {
        max_bytes: 7 * 3,
        when_full: policy,
        ..Bounds::default()
    }
}

#[tokio::test]
async fn drop_oldest_keeps_the_newest_and_counts_the_drops() {
    let dir = tempfile::tempdir().unwrap();
    let b = open_with(&dir, small(FullPolicy::DropOldest));
    for n in 1..=5 {
        b.append(vec![sample("a", n)]).await.unwrap();
    }
    let got = b.lease(limits(10), vec![]).await.unwrap();
    assert_eq!(body(&got[0]), r#"[{"n":3},{"n":4},{"n":5}]"#);
    let s = b.stats().await.unwrap();
    assert_eq!(s.drops[&("app-v1".into(), "a".into())]["buffer_full"], 2);
    assert_eq!(s.dropped_total(), 2);
}

#[tokio::test]
async fn drop_oldest_never_drops_a_leased_sample() {
    let dir = tempfile::tempdir().unwrap();
    let b = open_with(&dir, small(FullPolicy::DropOldest));
    b.append((1..=3).map(|n| sample("a", n)).collect())
        .await
        .unwrap();
    let leased = b.lease(limits(2), vec![]).await.unwrap();
    assert_eq!(body(&leased[0]), r#"[{"n":1},{"n":2}]"#);
    b.append(vec![sample("a", 4)]).await.unwrap(); // drops n=3, not the leased 1 and 2
    assert_eq!(b.ack(bk("a", Lane::Backlog)).await.unwrap(), 2);
    let rest = b.lease(limits(10), vec![]).await.unwrap();
    assert_eq!(body(&rest[0]), r#"[{"n":4}]"#);
}

#[tokio::test]
async fn drop_newest_refuses_what_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let b = open_with(&dir, small(FullPolicy::DropNewest));
    let a = b
        .append((1..=5).map(|n| sample("a", n)).collect())
        .await
        .unwrap();
    assert_eq!((a.stored, a.refused), (3, 2));
    let got = b.lease(limits(10), vec![]).await.unwrap();
    assert_eq!(body(&got[0]), r#"[{"n":1},{"n":2},{"n":3}]"#);
    assert_eq!(
        b.stats().await.unwrap().drops[&("app-v1".into(), "a".into())]["refused_full"],
        2
    );
}

#[tokio::test]
async fn block_waits_for_room_and_gives_up_only_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let b = open_with(&dir, small(FullPolicy::Block));
    b.append((1..=3).map(|n| sample("a", n)).collect())
        .await
        .unwrap();
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move { b.append(vec![sample("a", 4)]).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "append must wait while the buffer is full"
    );
    b.lease(limits(1), vec![]).await.unwrap();
    b.ack(bk("a", Lane::Backlog)).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.unwrap().stored, 1);
    // Full again; at shutdown the waiting append gives up and the drop is counted.
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move { b.append(vec![sample("a", 5)]).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.stop_blocking();
    let r = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(r, Err(BufferError::FullAtShutdown)));
    assert_eq!(
        b.stats().await.unwrap().drops[&("app-v1".into(), "a".into())]["refused_full"],
        1
    );
}

/// Moves the saved buffer clock of a closed buffer forward, as if it had run that long.
fn run_buffer_clock_forward(dir: &tempfile::TempDir, by: Duration) {
    let c = Connection::open(dir.path().join("buffer.sqlite")).unwrap();
    c.execute(
        "UPDATE meta SET value = value + ?1 WHERE key = 'buffer_clock_ms'",
        [by.as_millis() as i64],
    )
    .unwrap();
}

#[tokio::test]
async fn samples_expire_after_max_age_of_buffer_time_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let bounds = Bounds {
        max_age: Duration::from_secs(60),
        ..Bounds::default()
    };
    let (b, t) = open_with_thread(&dir, bounds);
    b.append(vec![sample("a", 1)]).await.unwrap();
    drop(b);
    t.join().unwrap(); // the buffer clock is saved at the end
    run_buffer_clock_forward(&dir, Duration::from_secs(120));
    let (b, _t) = open_with_thread(&dir, bounds);
    let a = b.append(vec![sample("a", 2)]).await.unwrap();
    assert_eq!(a.dropped_old, 1);
    assert_eq!(
        b.stats().await.unwrap().drops[&("app-v1".into(), "a".into())]["expired"],
        1
    );
    assert_eq!(b.stats().await.unwrap().pending, 1);
}

#[tokio::test]
async fn a_wall_clock_jump_expires_nothing() {
    // A Pi without RTC: samples stamped a year "ago" after NTP jumped the clock forward
    // (or before, with a stale boot time) are as young as the time they spent here.
    let dir = tempfile::tempdir().unwrap();
    let bounds = Bounds {
        max_age: Duration::from_secs(60),
        ..Bounds::default()
    };
    let (b, _t) = open_with_thread(&dir, bounds);
    let year = 365 * 24 * 3600 * 1000;
    let stale = Sample {
        ts_ms: crate::now_ms() - year,
        ..sample("a", 1)
    };
    let future = Sample {
        ts_ms: crate::now_ms() + year,
        ..sample("a", 2)
    };
    b.append(vec![stale, future]).await.unwrap();
    let a = b.append(vec![sample("a", 3)]).await.unwrap();
    assert_eq!(a.dropped_old, 0);
    assert_eq!(b.stats().await.unwrap().pending, 3);
}

#[path = "file_tests.rs"]
mod file;
