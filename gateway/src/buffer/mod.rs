//! Store-and-forward buffer: every sample is durable in SQLite before it counts as taken,
//! and leaves only when the upstream confirmed it.
//!
//! Design:
//! - One thread owns the database; [`BufferHandle`] talks to it over a bounded channel,
//!   so SQLite never blocks the async runtime.
//! - `append` commits a group of samples in one transaction (one poll cycle) and replies
//!   only after the commit, with `synchronous=FULL` by default: an appended sample
//!   survives a crash or power cut.
//! - Bounds: total payload bytes (`max_bytes`) and age (`max_age`, measured on the buffer
//!   clock — the time the buffer has been open — so a wall clock that jumps cannot expire
//!   anything; see `store`). When an append does
//!   not fit, the policy decides: `drop_oldest` deletes the oldest unleased samples,
//!   `drop_newest` refuses the new ones, `block` makes the caller wait (sources slow
//!   down). Expired samples are deleted. Every dropped sample is counted per endpoint and
//!   reason in the `drops` table, so the counts survive restarts.
//! - `lease` hands out batches (by count and bytes), at most one per (endpoint, lane):
//!   the *backlog* lane sends an endpoint's oldest samples first; when the oldest pending
//!   sample is older than the live window, the *live* lane also sends the newest ones,
//!   so fresh readings are not stuck behind an outage's backlog. Endpoints are served
//!   round-robin and the number of leased batches is capped (flow control).
//! - The upstream then calls exactly one of `ack` (delete: the platform has them),
//!   `release` (send again later: timeout, 5xx, connection lost) or `park` (4xx: move to
//!   the dead-letter table, kept for inspection, retry or purge).
//! - Leases live only in memory: after a restart every row is pending again, so a batch
//!   in flight at a crash is sent again (at-least-once, never lost).
//! - A full disk makes `append` fail with [`BufferError::DiskFull`] (counted); SQLite
//!   rolls the transaction back, so what was stored stays intact.
//!
//! The file carries `PRAGMA application_id` = [`APPLICATION_ID`]; another program's SQLite
//! database at the buffer path is refused and left untouched (an operator decides). A
//! file SQLite cannot read — not a database any more, truncated, malformed — is a damaged
//! buffer: it is moved aside and kept, a fresh buffer starts, and the log and the health
//! report say where the kept file is ([`BufferHandle::open`]).

pub mod dead_letter;
mod store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use store::BufferStore;
pub use store::APPLICATION_ID;

use crate::endpoint::Endpoint;
use crate::sample::Sample;

/// Which part of an endpoint's pending samples a batch comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    /// Oldest first.
    Backlog,
    /// The newest samples, while a backlog older than the live window drains.
    Live,
}

/// Identifies a leased batch: at most one per endpoint and lane.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchKey {
    pub endpoint: Endpoint,
    pub lane: Lane,
}

/// Samples of one endpoint leased for one upstream request.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub key: BatchKey,
    pub seqs: Vec<i64>,
    /// Each sample's JSON object text, oldest first (in step with `seqs`).
    pub samples: Vec<String>,
}

/// What to do when an append does not fit in `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    DropOldest,
    DropNewest,
    Block,
}

/// Size and age bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Sum of stored payload bytes (SQLite adds its own overhead on top).
    pub max_bytes: u64,
    pub max_age: Duration,
    pub when_full: FullPolicy,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            max_age: Duration::from_secs(30 * 24 * 3600),
            when_full: FullPolicy::DropOldest,
        }
    }
}

/// How `lease` sizes and caps batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseLimits {
    pub max_samples: usize,
    pub max_bytes: usize,
    /// Most batches leased at once, over all endpoints.
    pub max_batches: usize,
    /// Samples younger than this are "live".
    pub live_window: Duration,
}

/// Why samples were dropped (stored by name in the `drops` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Deleted, oldest first, to make room (`drop_oldest`).
    BufferFull,
    /// Refused because the buffer was full (`drop_newest`, or `block` at shutdown).
    RefusedFull,
    /// In the buffer longer than `max_age` (buffer-clock time, not wall-clock time).
    Expired,
    /// Refused because the disk holding the buffer was full.
    DiskFull,
}

impl DropReason {
    /// The name used in the `drops` table, logs and health samples.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BufferFull => "buffer_full",
            Self::RefusedFull => "refused_full",
            Self::Expired => "expired",
            Self::DiskFull => "disk_full",
        }
    }
}

/// Logs a refused append (the sample is counted in `drops` already) at most once per
/// 10 s, saying how many were held back: a full disk refuses hundreds a second.
pub fn log_refusal(source: &str, e: &BufferError) {
    static GATE: std::sync::Mutex<(Option<std::time::Instant>, u64)> =
        std::sync::Mutex::new((None, 0));
    let mut g = GATE.lock().unwrap_or_else(|p| p.into_inner());
    let now = std::time::Instant::now();
    if g.0
        .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10))
    {
        g.1 += 1;
        return;
    }
    let held_back = std::mem::take(&mut g.1);
    g.0 = Some(now);
    let more = if held_back > 0 {
        format!(" ({held_back} more refusals in the last 10 s, all counted)")
    } else {
        String::new()
    };
    log::error!("{source}: sample lost, buffer refused it: {e}{more}");
}

/// Renames a damaged buffer file (and its `-wal`, `-shm`) to `<file>.damaged-<unix ms>`.
fn move_aside(path: &Path) -> Result<PathBuf, BufferError> {
    let stamp = crate::now_ms();
    let kept = PathBuf::from(format!("{}.damaged-{stamp}", path.display()));
    let io = |e: std::io::Error| BufferError::Foreign {
        path: path.to_owned(),
        why: format!("damaged, and it cannot be moved aside: {e}"),
    };
    std::fs::rename(path, &kept).map_err(io)?;
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", path.display()));
        if side.exists() {
            let to = PathBuf::from(format!("{}{suffix}", kept.display()));
            std::fs::rename(&side, to).map_err(io)?;
        }
    }
    Ok(kept)
}

/// Bytes free for an unprivileged writer on the filesystem holding `path` (or its nearest
/// existing ancestor); `None` when it cannot be told.
pub fn free_space(path: &Path) -> Option<u64> {
    let dir = path.ancestors().find(|p| p.exists())?;
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Counters for status pages, logs and the gateway's own health samples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BufferStats {
    pub pending: u64,
    pub leased: u64,
    pub bytes: u64,
    pub dead_letters: u64,
    /// Timestamp of the oldest pending sample.
    pub oldest_ts_ms: Option<i64>,
    /// Dropped samples per endpoint and reason (by [`DropReason::as_str`]).
    pub drops: BTreeMap<(String, String), BTreeMap<String, u64>>,
}

impl BufferStats {
    pub fn dropped_total(&self) -> u64 {
        self.drops.values().flat_map(|m| m.values()).sum()
    }
}

/// A dead-letter row, for inspection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    pub seq: i64,
    pub app_version: String,
    pub token: String,
    pub ts_ms: i64,
    pub status: u16,
    pub reason: String,
    pub parked_ms: i64,
    pub payload: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("buffer file {path} is not a kp-gateway buffer ({why}); it was left untouched: move it away, or set buffer.file to another path")]
    Foreign { path: PathBuf, why: String },
    /// A kp-gateway buffer (or what was one) that SQLite cannot read: truncated, damaged.
    #[error("buffer file {path} is damaged ({why})")]
    Corrupt { path: PathBuf, why: String },
    #[error("cannot open buffer {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("the disk holding the buffer is full; new samples are refused until space is freed")]
    DiskFull,
    #[error("the buffer is full (policy block) and the gateway is stopping")]
    FullAtShutdown,
    #[error("buffer storage: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the buffer thread has stopped")]
    Stopped,
}

/// Result of an append that was stored (possibly after dropping samples).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    pub stored: usize,
    /// Older samples deleted to make room (`drop_oldest`) or expired.
    pub dropped_old: usize,
    /// New samples refused (`drop_newest`).
    pub refused: usize,
}

enum Command {
    Append(
        Vec<Sample>,
        oneshot::Sender<Result<Appended, AppendRefusal>>,
    ),
    Lease {
        limits: LeaseLimits,
        skip: Vec<BatchKey>,
        reply: oneshot::Sender<Result<Vec<Batch>, BufferError>>,
    },
    Ack(BatchKey, oneshot::Sender<Result<usize, BufferError>>),
    Release(BatchKey),
    Park {
        key: BatchKey,
        status: u16,
        reason: String,
        reply: oneshot::Sender<Result<usize, BufferError>>,
    },
    Stats(oneshot::Sender<Result<BufferStats, BufferError>>),
    RecordDrop(Vec<Sample>, DropReason),
    LastSeq(oneshot::Sender<Result<i64, BufferError>>),
    ShiftTimes {
        after: i64,
        upto: i64,
        delta_ms: i64,
        reply: oneshot::Sender<Result<usize, BufferError>>,
    },
}

/// Why an append was not stored.
#[derive(Debug)]
pub(super) enum AppendRefusal {
    /// Policy `block` and no room: try again later.
    Full(Vec<Sample>),
    Error(BufferError),
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("buffer command")
    }
}

/// Async access to the buffer thread; cheap to clone.
#[derive(Clone, Debug)]
pub struct BufferHandle {
    tx: mpsc::Sender<Command>,
    /// Signalled after every append, so the upstream can send without polling.
    pub new_data: Arc<Notify>,
    /// Signalled after every ack/park, so blocked appends retry at once.
    freed: Arc<Notify>,
    /// Cancelled at shutdown: blocked appends give up (and count the drop).
    stopping: CancellationToken,
    /// Where a damaged buffer found at start was moved (kept); `None` normally.
    pub recovered_from: Option<Arc<PathBuf>>,
    /// Sees every sample offered to the buffer (the web page's live values).
    tap: Option<SampleTap>,
}

/// What a [`SampleTap`] calls with every batch of samples offered.
pub type TapFn = dyn Fn(&[Sample]) + Send + Sync;

/// A reader of every sample offered to the buffer; it must be quick and never block.
#[derive(Clone)]
pub struct SampleTap(pub Arc<TapFn>);

impl std::fmt::Debug for SampleTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SampleTap")
    }
}

impl BufferHandle {
    /// Opens (or creates) the buffer file and starts its owner thread. Returns the handle
    /// and the thread's join handle (the thread ends when every handle is dropped).
    ///
    /// A damaged buffer file is not a reason to stop collecting: it is moved aside (kept,
    /// never deleted, next to the buffer as `<file>.damaged-<unix ms>`, with its `-wal` and
    /// `-shm`), a fresh buffer starts, and [`BufferHandle::recovered_from`] names the kept
    /// file so the health report and the log say so loudly. A foreign file (another
    /// program's database) is refused and left alone: an operator must decide.
    pub fn open(
        path: &Path,
        synchronous: Synchronous,
        bounds: Bounds,
    ) -> Result<(Self, std::thread::JoinHandle<()>), BufferError> {
        let (mut owner, recovered_from) = match BufferStore::open(path, synchronous, bounds) {
            Ok(owner) => (owner, None),
            Err(BufferError::Corrupt { why, .. }) => {
                let kept = move_aside(path)?;
                log::error!(
                    "buffer {} is damaged ({why}): moved to {} (kept for inspection); a fresh buffer starts, samples in the damaged file are not sent",
                    path.display(),
                    kept.display()
                );
                (BufferStore::open(path, synchronous, bounds)?, Some(kept))
            }
            Err(e) => return Err(e),
        };
        let (tx, rx) = mpsc::channel(1024);
        let join = std::thread::Builder::new()
            .name("buffer".into())
            .spawn(move || owner.run(rx))
            .map_err(|e| BufferError::Foreign {
                path: path.to_owned(),
                why: format!("cannot start thread: {e}"),
            })?;
        Ok((
            Self {
                tx,
                new_data: Arc::new(Notify::new()),
                freed: Arc::new(Notify::new()),
                stopping: CancellationToken::new(),
                recovered_from: recovered_from.map(Arc::new),
                tap: None,
            },
            join,
        ))
    }

    /// Shows every sample offered from now on to `tap` too.
    pub fn with_tap(mut self, tap: SampleTap) -> Self {
        self.tap = Some(tap);
        self
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, BufferError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| BufferError::Stopped)?;
        rx.await.map_err(|_| BufferError::Stopped)
    }

    /// Durably appends samples (one transaction). Returns after the commit. Under policy
    /// `block` it waits for room; when the gateway stops meanwhile the samples are
    /// counted as dropped and [`BufferError::FullAtShutdown`] is returned.
    pub async fn append(&self, samples: Vec<Sample>) -> Result<Appended, BufferError> {
        if let Some(tap) = &self.tap {
            (tap.0)(&samples);
        }
        let mut samples = samples;
        let mut waited = false;
        loop {
            match self.ask(|r| Command::Append(samples, r)).await? {
                Ok(a) => {
                    self.new_data.notify_one();
                    return Ok(a);
                }
                Err(AppendRefusal::Error(e)) => return Err(e),
                Err(AppendRefusal::Full(back)) => {
                    samples = back;
                    if !waited {
                        log::warn!("buffer full (policy block): sources wait until the upstream confirms data");
                        waited = true;
                    }
                    self.new_data.notify_one();
                    tokio::select! {
                        _ = self.stopping.cancelled() => {
                            let _ = self.tx.send(Command::RecordDrop(samples, DropReason::RefusedFull)).await;
                            return Err(BufferError::FullAtShutdown);
                        }
                        _ = self.freed.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }

    /// Makes blocked appends give up (call at shutdown, before stopping the sources).
    pub fn stop_blocking(&self) {
        self.stopping.cancel();
    }

    /// Leases batches of endpoints that have pending samples, skipping `skip`.
    pub async fn lease(
        &self,
        limits: LeaseLimits,
        skip: Vec<BatchKey>,
    ) -> Result<Vec<Batch>, BufferError> {
        self.ask(|reply| Command::Lease {
            limits,
            skip,
            reply,
        })
        .await?
    }

    /// The upstream confirmed the batch: delete it. Returns rows deleted.
    pub async fn ack(&self, key: BatchKey) -> Result<usize, BufferError> {
        let n = self.ask(|r| Command::Ack(key, r)).await?;
        self.freed.notify_waiters();
        n
    }

    /// The batch was not confirmed: make it pending again.
    pub async fn release(&self, key: BatchKey) -> Result<(), BufferError> {
        self.tx
            .send(Command::Release(key))
            .await
            .map_err(|_| BufferError::Stopped)
    }

    /// The upstream refused the batch for good (4xx): move it to the dead-letter table.
    pub async fn park(
        &self,
        key: BatchKey,
        status: u16,
        reason: String,
    ) -> Result<usize, BufferError> {
        let n = self
            .ask(|reply| Command::Park {
                key,
                status,
                reason,
                reply,
            })
            .await?;
        self.freed.notify_waiters();
        n
    }

    pub async fn stats(&self) -> Result<BufferStats, BufferError> {
        self.ask(Command::Stats).await?
    }

    /// The newest sequence number stored so far.
    pub async fn last_seq(&self) -> Result<i64, BufferError> {
        self.ask(Command::LastSeq).await?
    }

    /// Adds `delta_ms` to the timestamps of the waiting samples with `after < seq <= upto`
    /// (not those in flight); returns how many (see `store::retime`).
    pub async fn shift_times(
        &self,
        after: i64,
        upto: i64,
        delta_ms: i64,
    ) -> Result<usize, BufferError> {
        self.ask(|reply| Command::ShiftTimes {
            after,
            upto,
            delta_ms,
            reply,
        })
        .await?
    }
}

/// SQLite `synchronous` setting of the buffer (durability vs. SD-card wear and speed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    /// fsync on every commit: an acknowledged sample survives power loss (default).
    Full,
    /// WAL checkpoints fsync; the last commits may be lost on power loss (not on a crash).
    Normal,
}

/// The store-and-forward buffer.
#[derive(Debug, Clone)]
pub struct Buffer {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    pub bounds: Bounds,
}

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;
