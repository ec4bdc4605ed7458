//! The clock watcher (I/O actor): once a second it reads the wall clock, the monotonic
//! clock and the buffer's newest sequence number, and asks the system whether the clock is
//! synchronised; on the first step of an unsynchronised clock it moves the timestamps of
//! the samples still buffered from before the step (the rule is `clock::StepWatch`'s).

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::buffer::BufferHandle;
use crate::clock::StepWatch;

/// Whether the system clock is synchronised: systemd-timesyncd's flag file, else
/// `timedatectl` (the kernel's status as systemd reads it, for chrony and ntpd too);
/// `None` when neither can tell (no systemd).
async fn synchronized() -> Option<bool> {
    if std::path::Path::new("/run/systemd/timesync/synchronized").exists() {
        return Some(true);
    }
    let ask = tokio::task::spawn_blocking(|| {
        std::process::Command::new("timedatectl")
            .args(["show", "-p", "NTPSynchronized", "--value"])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
    });
    let out = tokio::time::timeout(Duration::from_secs(5), ask)
        .await
        .ok()?
        .ok()?
        .ok()?;
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

/// Runs until the clock is set (or `stop`).
pub async fn run(buffer: BufferHandle, stop: CancellationToken) {
    let mut synced = synchronized().await;
    match synced {
        Some(true) => return, // nothing to watch for
        Some(false) => log::warn!(
            "clock: not synchronised yet; samples taken now are stamped with the current \
             (possibly stale) time, and the buffered ones are corrected when the clock is set"
        ),
        None => log::info!(
            "clock: synchronisation status unknown; the first step of the clock in this run \
             will be taken as the clock being set"
        ),
    }
    let mut watch = StepWatch::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut asked = Instant::now();
    while !watch.is_done() {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(seq) = buffer.last_seq().await else {
            return; // the buffer stopped
        };
        if synced != Some(true) && asked.elapsed() >= Duration::from_secs(30) {
            synced = synchronized().await;
            asked = Instant::now();
        }
        let Some(step) = watch.observe(crate::now_ms(), Instant::now(), seq, synced) else {
            continue;
        };
        match buffer.shift_times(0, step.before_seq, step.delta_ms).await {
            Ok(n) => log::warn!(
                "clock: stepped by {:+.1} s (set by NTP or by hand); the timestamps of {n} \
                 buffered sample(s) taken before it were moved by the same amount",
                step.delta_ms as f64 / 1000.0
            ),
            Err(e) => {
                log::error!("clock: stepped, but the buffered timestamps were not corrected: {e}")
            }
        }
    }
    if synced == Some(true) {
        log::info!("clock: synchronised");
    }
}
