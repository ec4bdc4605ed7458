//! Store-and-forward buffer: every sample is durable in SQLite before it counts as taken,
//! and leaves only when the upstream confirmed it.
//!
//! Design:
//! - One thread owns the database; [`BufferHandle`] talks to it over a bounded channel,
//!   so SQLite never blocks the async runtime.
//! - `append` commits a group of samples in one transaction (one poll cycle) and replies
//!   only after the commit, with `synchronous=FULL` by default: an appended sample
//!   survives a crash or power cut.
//! - `lease` hands out, per endpoint, the oldest pending samples as one batch; an endpoint
//!   has at most one leased batch at a time, so batches go out oldest first.
//! - The upstream then calls exactly one of `ack` (delete: the platform has them),
//!   `release` (send again later: timeout, 5xx, connection lost) or `park` (4xx: move to
//!   the dead-letter table, kept for inspection and retry).
//! - Leases live only in memory: after a restart every row is pending again, so a batch
//!   in flight at a crash is sent again (at-least-once, never lost).
//!
//! The file carries `PRAGMA application_id` = [`APPLICATION_ID`]; a foreign SQLite file or
//! a non-SQLite file at the buffer path is refused and left untouched.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use platform_core::kp1::{AppVersionName, EndpointToken};
use rusqlite::{params, Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::config::Synchronous;

/// `PRAGMA application_id` of buffer files ("KPGW").
pub const APPLICATION_ID: i32 = 0x4B50_4757;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS samples (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    app_version TEXT NOT NULL,
    token       TEXT NOT NULL,
    ts_ms       INTEGER NOT NULL,
    payload     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_endpoint ON samples(app_version, token, seq);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq         INTEGER PRIMARY KEY,
    app_version TEXT NOT NULL,
    token       TEXT NOT NULL,
    ts_ms       INTEGER NOT NULL,
    payload     TEXT NOT NULL,
    status      INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    parked_ms   INTEGER NOT NULL
);
"#;

/// The 1/KP endpoint a sample belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub app_version: AppVersionName,
    pub token: EndpointToken,
}

/// A sample to buffer: its endpoint, time and the 2/DCP JSON object text.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSample {
    pub endpoint: EndpointKey,
    pub ts_ms: i64,
    pub payload: String,
}

/// Samples of one endpoint leased for one upstream request.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub endpoint: EndpointKey,
    pub seqs: Vec<i64>,
    /// The 2/DCP payload: a JSON array of the samples, oldest first.
    pub payload: String,
}

/// Counters for status pages and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BufferStats {
    pub pending: u64,
    pub leased: u64,
    pub dead_letters: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("buffer file {path} is not a kp-gateway buffer ({why}); it was left untouched")]
    Foreign { path: PathBuf, why: String },
    #[error("cannot open buffer {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("buffer storage: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the buffer thread has stopped")]
    Stopped,
}

enum Command {
    Append(Vec<NewSample>, oneshot::Sender<Result<(), BufferError>>),
    Lease {
        max_samples: usize,
        skip: Vec<EndpointKey>,
        reply: oneshot::Sender<Result<Vec<Batch>, BufferError>>,
    },
    Ack(EndpointKey, oneshot::Sender<Result<usize, BufferError>>),
    Release(EndpointKey),
    Park {
        endpoint: EndpointKey,
        status: u16,
        reason: String,
        reply: oneshot::Sender<Result<usize, BufferError>>,
    },
    Stats(oneshot::Sender<Result<BufferStats, BufferError>>),
}

/// Async access to the buffer thread; cheap to clone.
#[derive(Clone, Debug)]
pub struct BufferHandle {
    tx: mpsc::Sender<Command>,
    /// Signalled after every append, so the upstream can send without polling.
    pub new_data: Arc<Notify>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("buffer command")
    }
}

impl BufferHandle {
    /// Opens (or creates) the buffer file and starts its owner thread. Returns the handle
    /// and the thread's join handle (the thread ends when every handle is dropped).
    pub fn open(
        path: &Path,
        synchronous: Synchronous,
    ) -> Result<(Self, std::thread::JoinHandle<()>), BufferError> {
        let conn = open_db(path, synchronous)?;
        let (tx, rx) = mpsc::channel(1024);
        let new_data = Arc::new(Notify::new());
        let mut owner = Owner {
            conn,
            leased: BTreeMap::new(),
        };
        let join = std::thread::Builder::new()
            .name("buffer".into())
            .spawn(move || owner.run(rx))
            .map_err(|e| BufferError::Foreign {
                path: path.to_owned(),
                why: format!("cannot start thread: {e}"),
            })?;
        Ok((Self { tx, new_data }, join))
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

    /// Durably appends samples (one transaction). Returns after the commit.
    pub async fn append(&self, samples: Vec<NewSample>) -> Result<(), BufferError> {
        self.ask(|r| Command::Append(samples, r)).await??;
        self.new_data.notify_one();
        Ok(())
    }

    /// Leases up to `max_samples` oldest samples of every endpoint that has pending samples,
    /// no leased batch, and is not in `skip`.
    pub async fn lease(
        &self,
        max_samples: usize,
        skip: Vec<EndpointKey>,
    ) -> Result<Vec<Batch>, BufferError> {
        self.ask(|reply| Command::Lease {
            max_samples,
            skip,
            reply,
        })
        .await?
    }

    /// The upstream confirmed the endpoint's leased batch: delete it. Returns rows deleted.
    pub async fn ack(&self, endpoint: EndpointKey) -> Result<usize, BufferError> {
        self.ask(|r| Command::Ack(endpoint, r)).await?
    }

    /// The endpoint's leased batch was not confirmed: make it pending again.
    pub async fn release(&self, endpoint: EndpointKey) -> Result<(), BufferError> {
        self.tx
            .send(Command::Release(endpoint))
            .await
            .map_err(|_| BufferError::Stopped)
    }

    /// The upstream refused the batch for good (4xx): move it to the dead-letter table.
    pub async fn park(
        &self,
        endpoint: EndpointKey,
        status: u16,
        reason: String,
    ) -> Result<usize, BufferError> {
        self.ask(|reply| Command::Park {
            endpoint,
            status,
            reason,
            reply,
        })
        .await?
    }

    pub async fn stats(&self) -> Result<BufferStats, BufferError> {
        self.ask(Command::Stats).await?
    }
}

fn open_db(path: &Path, synchronous: Synchronous) -> Result<Connection, BufferError> {
    let foreign = |why: String| BufferError::Foreign {
        path: path.to_owned(),
        why,
    };
    let existed = path.exists();
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| BufferError::Open {
        path: path.to_owned(),
        source,
    })?;
    // Reading the header tells a non-database file apart before anything is written.
    let app_id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(|e| foreign(e.to_string()))?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(|e| foreign(e.to_string()))?;
    if existed && app_id != APPLICATION_ID && (tables > 0 || app_id != 0) {
        return Err(foreign(format!(
            "application_id is {app_id:#x}, not {APPLICATION_ID:#x}"
        )));
    }
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA)?;
    conn.pragma_update(None, "application_id", APPLICATION_ID)?;
    Ok(conn)
}

/// The state owned by the buffer thread.
struct Owner {
    conn: Connection,
    /// Leased sequence numbers per endpoint (at most one batch each).
    leased: BTreeMap<EndpointKey, Vec<i64>>,
}

impl Owner {
    fn run(&mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(cmd) = rx.blocking_recv() {
            // A dropped reply channel means the asker went away; the work still stands.
            match cmd {
                Command::Append(samples, r) => {
                    let _ = r.send(self.append(&samples));
                }
                Command::Lease {
                    max_samples,
                    skip,
                    reply,
                } => {
                    let _ = reply.send(self.lease(max_samples, &skip));
                }
                Command::Ack(ep, r) => {
                    let _ = r.send(self.ack(&ep));
                }
                Command::Release(ep) => {
                    self.leased.remove(&ep);
                }
                Command::Park {
                    endpoint,
                    status,
                    reason,
                    reply,
                } => {
                    let _ = reply.send(self.park(&endpoint, status, &reason));
                }
                Command::Stats(r) => {
                    let _ = r.send(self.stats());
                }
            }
        }
    }

    fn append(&mut self, samples: &[NewSample]) -> Result<(), BufferError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO samples(app_version, token, ts_ms, payload) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for s in samples {
                stmt.execute(params![
                    s.endpoint.app_version.as_str(),
                    s.endpoint.token.as_str(),
                    s.ts_ms,
                    s.payload
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn lease(
        &mut self,
        max_samples: usize,
        skip: &[EndpointKey],
    ) -> Result<Vec<Batch>, BufferError> {
        let skip: HashSet<&EndpointKey> = skip.iter().collect();
        let mut endpoints = Vec::new();
        {
            let mut stmt = self.conn.prepare_cached(
                "SELECT DISTINCT app_version, token FROM samples ORDER BY app_version, token",
            )?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (avn, token) = row?;
                // Rows are only written from validated keys; skip anything else rather than fail.
                if let (Ok(app_version), Ok(token)) =
                    (AppVersionName::new(&avn), EndpointToken::new(&token))
                {
                    endpoints.push(EndpointKey { app_version, token });
                }
            }
        }
        let mut batches = Vec::new();
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, payload FROM samples WHERE app_version = ?1 AND token = ?2 ORDER BY seq LIMIT ?3",
        )?;
        for ep in endpoints {
            if skip.contains(&ep) || self.leased.contains_key(&ep) {
                continue;
            }
            let rows = stmt.query_map(
                params![
                    ep.app_version.as_str(),
                    ep.token.as_str(),
                    max_samples as i64
                ],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )?;
            let mut seqs = Vec::new();
            let mut payload = String::from("[");
            for row in rows {
                let (seq, p) = row?;
                if !seqs.is_empty() {
                    payload.push(',');
                }
                payload.push_str(&p);
                seqs.push(seq);
            }
            payload.push(']');
            if seqs.is_empty() {
                continue;
            }
            self.leased.insert(ep.clone(), seqs.clone());
            batches.push(Batch {
                endpoint: ep,
                seqs,
                payload,
            });
        }
        Ok(batches)
    }

    fn ack(&mut self, ep: &EndpointKey) -> Result<usize, BufferError> {
        let Some(seqs) = self.leased.remove(ep) else {
            return Ok(0);
        };
        let tx = self.conn.transaction()?;
        let mut n = 0;
        {
            let mut stmt = tx.prepare_cached("DELETE FROM samples WHERE seq = ?1")?;
            for s in &seqs {
                n += stmt.execute([s])?;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    fn park(&mut self, ep: &EndpointKey, status: u16, reason: &str) -> Result<usize, BufferError> {
        let Some(seqs) = self.leased.remove(ep) else {
            return Ok(0);
        };
        let tx = self.conn.transaction()?;
        let mut n = 0;
        {
            let mut copy = tx.prepare_cached(
                "INSERT INTO dead_letters(seq, app_version, token, ts_ms, payload, status, reason, parked_ms)
                 SELECT seq, app_version, token, ts_ms, payload, ?2, ?3, ?4 FROM samples WHERE seq = ?1",
            )?;
            let mut del = tx.prepare_cached("DELETE FROM samples WHERE seq = ?1")?;
            let now = crate::now_ms();
            for s in &seqs {
                copy.execute(params![s, status, reason, now])?;
                n += del.execute([s])?;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    fn stats(&self) -> Result<BufferStats, BufferError> {
        let count = |sql: &str| -> Result<u64, BufferError> {
            Ok(self.conn.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64)
        };
        Ok(BufferStats {
            pending: count("SELECT count(*) FROM samples")?,
            leased: self.leased.values().map(|v| v.len() as u64).sum(),
            dead_letters: count("SELECT count(*) FROM dead_letters")?,
        })
    }
}

#[cfg(test)]
mod tests;
