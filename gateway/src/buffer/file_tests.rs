//! Buffer tests about its file: a foreign or broken database, a clock step, a second
//! connection to the file, and the read-only views.

use super::*;

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
