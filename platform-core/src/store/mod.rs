//! The core's SQLite database: one owner thread, group commit, and an async handle.
//!
//! SQLite calls block, so they never run on the async runtime: a dedicated thread owns
//! the [`rusqlite::Connection`] and runs jobs sent through [`StoreHandle::call`] one at a
//! time, in order. Appends that arrive together ([`StoreHandle::call_grouped`], the
//! data samples of many requests) share one transaction, and every caller is answered
//! only after the commit that holds its rows. One failure undoes only its own rows: the
//! group first runs straight through (no savepoints, whose sub-journal would copy every
//! page each append touches); should an append fail, the transaction is rolled back and
//! the group runs again with a savepoint per append. A committed group's callers are
//! answered by a task on the async runtime the store was opened on (the store thread
//! only hands the group over), or by the store thread when it was opened outside one.
//! The thread ends when the last handle is dropped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

mod schema;
pub use schema::MIGRATIONS;

/// Errors from the store thread.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database {path} has schema version {found}, newer than this build knows ({known})")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: usize,
    },
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store thread has stopped")]
    Stopped,
    /// The request is not valid (a name, a key, a reference): the caller's fault (400).
    #[error("{0}")]
    Invalid(String),
    /// The request clashes with what exists (a taken token, an existing endpoint): 409.
    #[error("{0}")]
    Conflict(String),
    /// Something stored is not what this build wrote (a corrupt row): an operator's
    /// matter, never the caller's (500).
    #[error("{0}")]
    Corrupt(String),
    /// Work around the store failed (the store thread, password hashing): 500.
    #[error("{0}")]
    Internal(String),
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// An append waiting for its group's commit.
type Grouped = Box<dyn Append>;

/// An append of a group: run in the shared transaction (again, should the group be rolled
/// back and retried), then answered once the group's fate is known.
trait Append: Send {
    /// Runs the append; false if it failed (its outcome is kept for [`Append::finish`]).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller: its own outcome, or `failed` (why the group was not committed)
    /// instead of a success.
    fn finish(self: Box<Self>, failed: Option<&StoreError>);
}

/// [`Append`] of a closure and the channel its caller waits on.
struct Pending<F, R> {
    f: F,
    outcome: Option<Result<R, StoreError>>,
    done: oneshot::Sender<Result<R, StoreError>>,
}

impl<F, R> Append for Pending<F, R>
where
    F: FnMut(&Connection) -> Result<R, StoreError> + Send,
    R: Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let outcome = (self.f)(conn);
        let ok = outcome.is_ok();
        self.outcome = Some(outcome);
        ok
    }

    fn finish(self: Box<Self>, failed: Option<&StoreError>) {
        let r = match (self.outcome, failed) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(r)), None) => Ok(r),
            (_, Some(e)) => Err(StoreError::Internal(format!("commit failed: {e}"))),
            (None, None) => Err(StoreError::Internal("the append never ran".into())),
        };
        let _ = self.done.send(r);
    }
}

enum Work {
    Call(Job),
    Grouped(Grouped),
}

/// Most appends one transaction holds (the queue rarely holds more).
const MAX_GROUP: usize = 4096;

/// SQLite `synchronous` for the core database (`core.synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every commit is fsync'ed before a `/status` goes out: survives power loss.
    #[default]
    Full,
    /// WAL without fsync per commit: a crash of the process loses nothing, a power cut
    /// may lose the last commits.
    Normal,
}

impl Durability {
    fn pragma(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        }
    }
}

/// Cheap, cloneable access to the store thread.
#[derive(Clone, Debug)]
pub struct StoreHandle {
    tx: mpsc::Sender<Work>,
    /// Bumped after every job that changed rows outside grouped appends, and after every
    /// rolled-back append (see [`StoreHandle::generation`]).
    generation: Arc<AtomicU64>,
}

impl StoreHandle {
    /// Opens (creating if needed) and migrates the database with `synchronous=FULL`,
    /// then starts its thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, Durability::Full)
    }

    /// [`StoreHandle::open`] with the given durability.
    pub fn open_with(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        schema::configure(&conn, durability)?;
        schema::migrate(&mut conn, path)?;
        let (tx, rx) = mpsc::channel::<Work>(MAX_GROUP);
        let generation = Arc::new(AtomicU64::new(0));
        let answers = answerer();
        let undone = generation.clone();
        std::thread::Builder::new()
            .name("core-store".into())
            .spawn(move || serve(conn, rx, answers, &undone))
            .map_err(|e| StoreError::Internal(format!("cannot start store thread: {e}")))?;
        Ok(Self { tx, generation })
    }

    /// Runs `f` on the store thread and returns its result.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        self.run_call(f, true).await
    }

    /// [`StoreHandle::call`] for a job that changes nothing [`StoreHandle::generation`]
    /// guards (no token, endpoint or app version: metadata, points): cached look-ups
    /// stay valid. EPL's connectivity writes, which come in bursts when many clients
    /// connect at once, would otherwise empty the token cache each time.
    pub async fn call_outside_registry<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        self.run_call(f, false).await
    }

    async fn run_call<R, F>(&self, f: F, tracked: bool) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let generation = self.generation.clone();
        let job: Job = Box::new(move |conn| {
            let before = conn.total_changes();
            let r = f(conn);
            // Moved before the caller hears of the change, so no cached read of the
            // old state is used after it.
            if tracked && conn.total_changes() != before {
                generation.fetch_add(1, Ordering::AcqRel);
            }
            // The caller may have gone away (cancelled); the result is then dropped.
            let _ = done.send(r);
        });
        self.submit(Work::Call(job)).await?;
        result.await.map_err(|_| StoreError::Stopped)?
    }

    /// Runs the append `f` inside a transaction shared with the other appends queued at
    /// the same time, and returns its result once that transaction has committed. `f`
    /// must not begin or end transactions itself; if it fails, only its own changes are
    /// undone. `f` may run twice (when another append of its group failed, the group is
    /// rolled back and run again): it must do nothing but database work. Appends must not
    /// change what [`StoreHandle::generation`] guards (tokens, endpoints, app versions).
    pub async fn call_grouped<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnMut(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let job: Grouped = Box::new(Pending {
            f,
            outcome: None,
            done,
        });
        self.submit(Work::Grouped(job)).await?;
        result.await.map_err(|_| StoreError::Stopped)?
    }

    /// Queues `work` for the store thread, waiting only while the queue is full. The
    /// wait is boxed: it is rare, and kept out of every request's future (whose size is
    /// what thousands of requests in flight cost; see `kpc::connection`).
    async fn submit(&self, work: Work) -> Result<(), StoreError> {
        match self.tx.try_send(work) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(work)) => Box::pin(self.tx.send(work))
                .await
                .map_err(|_| StoreError::Stopped),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(StoreError::Stopped),
        }
    }

    /// A number that changes after every [`StoreHandle::call`] that changed any row, and
    /// after every append rolled back (its rows, e.g. a new series, are gone): read it
    /// inside a job, next to what it read, and a cached copy of that is still current
    /// while the number is the same.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// The store thread: runs calls one at a time and appends in groups. Calls queued among
/// appends run right after the group's commit, in their order: appends only add rows,
/// so no call depends on running before them, and a call in the queue no longer cuts a
/// group short (many clients' first requests, each with a call or two, would otherwise
/// leave groups of a few appends when they matter most).
fn serve(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Work>,
    answers: Option<Answers>,
    undone: &AtomicU64,
) {
    let mut calls: Vec<Job> = Vec::new();
    loop {
        let work = match rx.blocking_recv() {
            Some(w) => w,
            None => return,
        };
        match work {
            Work::Call(job) => job(&mut conn),
            Work::Grouped(first) => {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(Work::Grouped(j)) => group.push(j),
                        Ok(Work::Call(job)) => calls.push(job),
                        Err(_) => break,
                    }
                }
                let (group, failed) = run_group(&conn, group, undone);
                answer(answers.as_ref(), group, failed);
                for job in calls.drain(..) {
                    job(&mut conn);
                }
            }
        }
    }
}

/// A group run, and why it was not committed, if it was not.
type Ran = (Vec<Grouped>, Option<StoreError>);

/// Where the store thread hands a committed group's answers: a task on the async runtime
/// that was current when the store opened. Waking 1 000 callers' tasks from the store
/// thread cost it about 2.7 µs per append (each wake from outside the runtime goes through
/// its shared queue and may wake a worker thread); from a task on the runtime the wakes
/// are local, and the store thread goes back to its queue at once.
type Answers = mpsc::UnboundedSender<Ran>;

/// The task that answers groups, when a runtime is current (else the store thread answers).
fn answerer() -> Option<Answers> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Ran>();
    runtime.spawn(async move {
        while let Some((group, failed)) = rx.recv().await {
            finish(group, failed.as_ref());
        }
    });
    Some(tx)
}

/// Answers a group's callers through `answers`, or here if there is no task to take them.
fn answer(answers: Option<&Answers>, group: Vec<Grouped>, failed: Option<StoreError>) {
    let ran = match answers {
        Some(tx) => match tx.send((group, failed)) {
            Ok(()) => return,
            Err(mpsc::error::SendError(ran)) => ran,
        },
        None => (group, failed),
    };
    finish(ran.0, ran.1.as_ref());
}

/// Every caller's answer: its own outcome, or why the group failed.
fn finish(group: Vec<Grouped>, failed: Option<&StoreError>) {
    for append in group {
        append.finish(failed);
    }
}

/// One transaction for the group. Straight through first; if an append fails, the group
/// is rolled back and run again, each append in a savepoint. Every rollback moves the
/// generation (`undone`) before the next append runs.
fn run_group(conn: &Connection, mut group: Vec<Grouped>, undone: &AtomicU64) -> Ran {
    let outcome = exec(conn, "BEGIN IMMEDIATE").and_then(|()| {
        // `all` stops at the first failure; the appends after it run in the retry.
        if group.iter_mut().all(|a| a.run(conn)) {
            return exec(conn, "COMMIT");
        }
        let _ = exec(conn, "ROLLBACK");
        undone.fetch_add(1, Ordering::AcqRel);
        exec(conn, "BEGIN IMMEDIATE")
            .and_then(|()| run_in_savepoints(conn, &mut group, undone))
            .and_then(|()| exec(conn, "COMMIT"))
    });
    if let Err(e) = &outcome {
        // A failed COMMIT may have rolled back by itself: the appends' rows are gone
        // either way.
        undone.fetch_add(1, Ordering::AcqRel);
        if !conn.is_autocommit() {
            let _ = exec(conn, "ROLLBACK");
        }
        log::error!("core store: a group of {} appends failed: {e}", group.len());
    }
    (group, outcome.err())
}

/// Runs each append in its own savepoint: a failed one undoes only its own rows.
fn run_in_savepoints(
    conn: &Connection,
    group: &mut [Grouped],
    undone: &AtomicU64,
) -> Result<(), StoreError> {
    for append in group {
        exec(conn, "SAVEPOINT append")?;
        if !append.run(conn) {
            undone.fetch_add(1, Ordering::AcqRel);
            exec(conn, "ROLLBACK TO append")?;
        }
        exec(conn, "RELEASE append")?;
    }
    Ok(())
}

/// Runs one statement without results, prepared once per connection.
fn exec(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

/// A stored time (Unix milliseconds) as RFC 3339 in UTC with exactly three fraction
/// digits, e.g. `2026-12-01T08:00:00.120Z` (the REST API's and EPL's one format).
pub fn rfc3339_ms(ms: i64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
