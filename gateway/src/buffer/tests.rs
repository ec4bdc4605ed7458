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

#[tokio::test]
async fn another_programs_database_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.sqlite");
    let c = Connection::open(&other).unwrap();
    c.execute_batch("CREATE TABLE accounts(id INTEGER)")
        .unwrap();
    drop(c);
    let before = std::fs::read(&other).unwrap();
    let err = BufferHandle::open(&other, Synchronous::Full, Bounds::default()).unwrap_err();
    assert!(matches!(err, BufferError::Foreign { .. }), "{err}");
    assert!(
        err.to_string().contains(&other.display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read(&other).unwrap(), before);
}

#[tokio::test]
async fn a_file_that_is_no_database_is_kept_aside_and_a_fresh_buffer_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer.sqlite");
    let junk = b"this is not a database any more\n".repeat(100);
    std::fs::write(&path, &junk).unwrap();
    let (b, _t) = BufferHandle::open(&path, Synchronous::Full, Bounds::default()).unwrap();
    let kept = b.recovered_from.clone().expect("recovered");
    assert_eq!(
        std::fs::read(kept.as_path()).unwrap(),
        junk,
        "kept byte for byte"
    );
    b.append(vec![sample("a", 1)]).await.unwrap();
    assert_eq!(b.stats().await.unwrap().pending, 1);
}

#[tokio::test]
async fn a_truncated_buffer_is_kept_aside_and_a_fresh_buffer_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer.sqlite");
    {
        let (b, t) = BufferHandle::open(&path, Synchronous::Full, Bounds::default()).unwrap();
        for n in 0..200 {
            b.append(vec![sample("a", n)]).await.unwrap();
        }
        drop(b);
        t.join().unwrap();
    }
    // A checkpointed file cut in the middle, as a failing card can leave it.
    let c = Connection::open(&path).unwrap();
    c.pragma_update(None, "wal_checkpoint", "TRUNCATE").unwrap();
    drop(c);
    let full = std::fs::read(&path).unwrap();
    assert!(full.len() > 8192, "{}", full.len());
    std::fs::write(&path, &full[..full.len() / 2]).unwrap();
    let (b, _t) = BufferHandle::open(&path, Synchronous::Full, Bounds::default()).unwrap();
    assert!(
        b.recovered_from.is_some(),
        "a damaged genuine buffer is recovered"
    );
    assert_eq!(b.stats().await.unwrap().pending, 0);
}

#[tokio::test]
async fn a_clock_step_moves_the_waiting_samples_before_it_but_not_those_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir);
    let stamped = |token: &str, ts_ms: i64| Sample {
        endpoint: key(token),
        ts_ms,
        payload: format!("{{\"timestamp\":{ts_ms},\"v\":1}}"),
    };
    // Booted in 1970: three samples of `a` (one of them leased), one of `b`; then the
    // clock is set and `c` is stamped right.
    b.append(vec![stamped("a", 1_000), stamped("a", 2_000)])
        .await
        .unwrap();
    let in_flight = b.lease(limits(1), vec![]).await.unwrap();
    assert_eq!(in_flight[0].seqs, vec![1]);
    b.append(vec![stamped("a", 3_000), stamped("b", 4_000)])
        .await
        .unwrap();
    let before = b.last_seq().await.unwrap();
    let step = 1_796_000_000_000;
    b.append(vec![stamped("c", step + 5_000)]).await.unwrap();
    assert_eq!(b.shift_times(0, before, step).await.unwrap(), 3);
    b.release(in_flight[0].key.clone()).await.unwrap();
    let mut all = Vec::new();
    loop {
        let batches = b.lease(limits(10), vec![]).await.unwrap();
        if batches.is_empty() {
            break;
        }
        for batch in batches {
            all.extend(batch.samples.clone());
            b.ack(batch.key).await.unwrap();
        }
    }
    all.sort();
    let expected: Vec<String> = [
        1_000,
        step + 2_000,
        step + 3_000,
        step + 4_000,
        step + 5_000,
    ]
    .iter()
    .map(|t| format!("{{\"timestamp\":{t},\"v\":1}}"))
    .collect();
    assert_eq!(all, expected, "the leased one keeps its time");
    assert_eq!(b.stats().await.unwrap().bytes, 0);
}

#[tokio::test]
async fn acks_hold_while_another_connection_opens_the_buffer_file() {
    // The `dead-letters` command and the web page's dead-letter buttons open the buffer
    // file beside the owner thread, and opening it to write checkpoints the WAL. The
    // owner's transactions take the write lock first, so they wait for that instead of
    // failing at once with "database is locked": a failed ack leaves confirmed samples to
    // be sent again.
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir);
    let path = dir.path().join("buffer.sqlite");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (first_open, opened_once) = std::sync::mpsc::channel();
    let other = {
        let (stop, path) = (stop.clone(), path.clone());
        std::thread::spawn(move || {
            let mut opened = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if dead_letter::purge(&path, &[]).is_ok() {
                    opened += 1;
                    let _ = first_open.send(());
                }
            }
            opened
        })
    };
    // The rounds start once the other connection is at work.
    opened_once.recv().unwrap();
    for round in 0..300 {
        b.append(vec![sample("a", round), sample("a", round + 1000)])
            .await
            .unwrap();
        let batches = b.lease(limits(10), vec![]).await.unwrap();
        assert_eq!(batches.len(), 1, "round {round}");
        let acked = b.ack(batches[0].key.clone()).await;
        assert_eq!(acked.unwrap(), 2, "round {round}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        other.join().unwrap() > 0,
        "the other connection opened the file"
    );
}

#[test]
fn reading_a_buffer_that_is_not_there_lists_nothing_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer.sqlite");
    assert!(dead_letter::list(&path).unwrap().is_empty());
    let mut pages = 0;
    dead_letter::each_pending(&path, 10, |_| {
        pages += 1;
        true
    })
    .unwrap();
    assert_eq!(pages, 0);
    assert!(!path.exists(), "a read created the buffer file");
}

#[tokio::test]
async fn the_buffer_views_read_without_writing_to_the_file() {
    // The web page's views open the file each time the page is shown, while the daemon
    // writes: they must not checkpoint (or otherwise write) it. A full open checkpoints the WAL and
    // truncates it to nothing.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer.sqlite");
    let wal = dir.path().join("buffer.sqlite-wal");
    let b = open(&dir);
    b.append(vec![sample("a", 1), sample("a", 2)])
        .await
        .unwrap();
    b.lease(limits(10), vec![]).await.unwrap();
    b.park(bk("a", Lane::Backlog), 401, "unknown token".into())
        .await
        .unwrap();
    b.append(vec![sample("b", 3)]).await.unwrap();
    let before = std::fs::metadata(&wal).unwrap().len();
    assert!(before > 0, "the WAL holds the appends");
    assert_eq!(dead_letter::list(&path).unwrap().len(), 2);
    let mut waiting = Vec::new();
    dead_letter::each_pending(&path, 10, |rows| {
        waiting.extend(rows.into_iter().map(|p| p.payload));
        true
    })
    .unwrap();
    assert_eq!(waiting, vec![r#"{"n":3}"#.to_owned()]);
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), before);
    // The owner goes on as before.
    assert_eq!(b.stats().await.unwrap().pending, 1);
}

#[test]
fn another_programs_database_is_refused_by_the_buffer_views_too() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.sqlite");
    let c = Connection::open(&other).unwrap();
    c.execute_batch("CREATE TABLE samples(id INTEGER); CREATE TABLE dead_letters(id INTEGER)")
        .unwrap();
    drop(c);
    let before = std::fs::read(&other).unwrap();
    let err = dead_letter::list(&other).unwrap_err();
    assert!(matches!(err, BufferError::Foreign { .. }), "{err}");
    assert_eq!(std::fs::read(&other).unwrap(), before);
}

#[tokio::test]
async fn the_buffer_views_read_a_closed_buffer_too() {
    // `dead-letters list` with the daemon stopped: the last close removed the WAL files.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer.sqlite");
    let b = open(&dir);
    b.append(vec![sample("a", 1)]).await.unwrap();
    drop(b);
    // The owner thread closes the file once its handle is gone.
    let wal = dir.path().join("buffer.sqlite-wal");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while wal.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!wal.exists(), "the buffer was not closed");
    assert!(dead_letter::list(&path).unwrap().is_empty());
    let mut waiting = 0;
    dead_letter::each_pending(&path, 10, |rows| {
        waiting += rows.len();
        true
    })
    .unwrap();
    assert_eq!(waiting, 1);
}
