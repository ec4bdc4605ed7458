//! The buffer thread's state and its SQL: schema, bounds, leasing (see the module above).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use platform_core::kp1::{AppVersionName, EndpointToken};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};
use tokio::sync::mpsc;

use super::*;

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
CREATE INDEX IF NOT EXISTS samples_ts ON samples(ts_ms);
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
CREATE TABLE IF NOT EXISTS drops (
    app_version TEXT NOT NULL,
    token       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    count       INTEGER NOT NULL,
    PRIMARY KEY (app_version, token, reason)
);
"#;

/// How often expired samples are looked for.
const EXPIRY_EVERY: Duration = Duration::from_secs(10);

/// The state owned by the buffer thread.
pub(super) struct BufferStore {
    conn: Connection,
    bounds: Bounds,
    /// Sum of payload bytes of `samples` (kept in step with every insert and delete).
    bytes: u64,
    /// Leased sequence numbers per batch.
    leased: BTreeMap<BatchKey, Vec<i64>>,
    /// Round-robin start for the next lease.
    cursor: usize,
    last_expiry: Option<Instant>,
    /// Drops that could not be written (disk full), kept until they can.
    unsaved_drops: BTreeMap<(String, String, DropReason), u64>,
    /// Endpoints that have (or recently had) pending samples, kept in memory so leasing
    /// needs no scan of the table.
    endpoints: std::collections::BTreeSet<Endpoint>,
    /// Number of rows in `samples`.
    count: u64,
    /// `PRAGMA data_version` when `bytes` was last computed: it changes when another
    /// connection (the dead-letter CLI) commits, and then `bytes` is recomputed.
    data_version: i64,
}

pub(super) fn open_db(path: &Path, synchronous: Synchronous) -> Result<Connection, BufferError> {
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
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA)?;
    conn.pragma_update(None, "application_id", APPLICATION_ID)?;
    Ok(conn)
}

fn is_disk_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::DiskFull)
}

fn key_of(avn: &str, token: &str) -> Option<Endpoint> {
    Some(Endpoint {
        app_version: AppVersionName::new(avn).ok()?,
        token: EndpointToken::new(token).ok()?,
    })
}

impl BufferStore {
    pub(super) fn open(
        path: &Path,
        synchronous: Synchronous,
        bounds: Bounds,
    ) -> Result<Self, BufferError> {
        let conn = open_db(path, synchronous)?;
        let bytes: i64 = conn.query_row(
            "SELECT coalesce(sum(length(payload)), 0) FROM samples",
            [],
            |r| r.get(0),
        )?;
        let data_version: i64 = conn.pragma_query_value(None, "data_version", |r| r.get(0))?;
        let mut owner_endpoints = std::collections::BTreeSet::new();
        let count: i64 = conn.query_row("SELECT count(*) FROM samples", [], |r| r.get(0))?;
        {
            let mut stmt = conn.prepare("SELECT DISTINCT app_version, token FROM samples")?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (avn, token) = row?;
                // Rows are only written from validated keys; skip anything else rather than fail.
                if let Some(k) = key_of(&avn, &token) {
                    owner_endpoints.insert(k);
                }
            }
        }
        Ok(Self {
            endpoints: owner_endpoints,
            count: count as u64,
            data_version,
            conn,
            bounds,
            bytes: bytes as u64,
            leased: BTreeMap::new(),
            cursor: 0,
            last_expiry: None,
            unsaved_drops: BTreeMap::new(),
        })
    }

    pub(super) fn run(&mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(cmd) = rx.blocking_recv() {
            // A dropped reply channel means the asker went away; the work still stands.
            match cmd {
                Command::Append(samples, r) => {
                    let _ = r.send(self.append(samples));
                }
                Command::Lease {
                    limits,
                    skip,
                    reply,
                } => {
                    let _ = reply.send(self.lease(limits, &skip, crate::now_ms()));
                }
                Command::Ack(key, r) => {
                    let _ = r.send(self.remove(&key, None));
                }
                Command::Release(key) => self.release(&key),
                Command::Park {
                    key,
                    status,
                    reason,
                    reply,
                } => {
                    let _ = reply.send(self.remove(&key, Some((status, &reason))));
                }
                Command::Stats(r) => {
                    let _ = r.send(self.stats());
                }
                Command::RecordDrop(samples, reason) => {
                    for s in &samples {
                        self.count_drop(
                            s.endpoint.app_version.as_str(),
                            s.endpoint.token.as_str(),
                            reason,
                            1,
                        );
                    }
                    self.save_drops();
                }
            }
        }
    }

    fn count_drop(&mut self, avn: &str, token: &str, reason: DropReason, n: u64) {
        *self
            .unsaved_drops
            .entry((avn.to_owned(), token.to_owned(), reason))
            .or_insert(0) += n;
    }

    /// Writes pending drop counts; on a full disk they stay in memory for the next try.
    fn save_drops(&mut self) {
        if self.unsaved_drops.is_empty() {
            return;
        }
        let result = (|| -> rusqlite::Result<()> {
            let tx = self.conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO drops(app_version, token, reason, count) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(app_version, token, reason) DO UPDATE SET count = count + excluded.count",
                )?;
                for ((avn, token, reason), n) in &self.unsaved_drops {
                    stmt.execute(params![avn, token, reason.as_str(), *n as i64])?;
                }
            }
            tx.commit()
        })();
        match result {
            Ok(()) => self.unsaved_drops.clear(),
            Err(e) => log::warn!("buffer: drop counters not saved yet: {e}"),
        }
    }

    /// Deletes samples older than `max_age` (at most every EXPIRY_EVERY).
    fn expire(&mut self, now_ms: i64) -> Result<usize, BufferError> {
        if self.last_expiry.is_some_and(|t| t.elapsed() < EXPIRY_EVERY) {
            return Ok(0);
        }
        self.last_expiry = Some(Instant::now());
        let version: i64 = self
            .conn
            .pragma_query_value(None, "data_version", |r| r.get(0))?;
        if version != self.data_version {
            self.data_version = version;
            let bytes: i64 = self.conn.query_row(
                "SELECT coalesce(sum(length(payload)), 0) FROM samples",
                [],
                |r| r.get(0),
            )?;
            self.bytes = bytes as u64;
        }
        let cutoff = now_ms - self.bounds.max_age.as_millis() as i64;
        let leased: HashSet<i64> = self.leased.values().flatten().copied().collect();
        let rows: Vec<(i64, String, String, i64)> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT seq, app_version, token, length(payload) FROM samples WHERE ts_ms < ?1",
            )?;
            let rows = stmt.query_map([cutoff], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let rows: Vec<_> = rows
            .into_iter()
            .filter(|r| !leased.contains(&r.0))
            .collect();
        self.delete_rows(&rows, DropReason::Expired)
    }

    /// Deletes rows (seq, avn, token, bytes), counting them as dropped for `reason`.
    fn delete_rows(
        &mut self,
        rows: &[(i64, String, String, i64)],
        reason: DropReason,
    ) -> Result<usize, BufferError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let tx = self.conn.transaction()?;
        {
            let mut del = tx.prepare_cached("DELETE FROM samples WHERE seq = ?1")?;
            for (seq, ..) in rows {
                del.execute([seq])?;
            }
        }
        tx.commit()?;
        self.count = self.count.saturating_sub(rows.len() as u64);
        for (_, avn, token, len) in rows {
            self.bytes = self.bytes.saturating_sub(*len as u64);
            self.count_drop(avn, token, reason, 1);
        }
        self.save_drops();
        log::warn!(
            "buffer: dropped {} sample(s) ({})",
            rows.len(),
            reason.as_str()
        );
        Ok(rows.len())
    }

    pub(super) fn append(&mut self, mut samples: Vec<Sample>) -> Result<Appended, AppendRefusal> {
        let mut out = Appended::default();
        out.dropped_old += self.expire(crate::now_ms()).map_err(AppendRefusal::Error)?;
        let incoming: u64 = samples.iter().map(|s| s.payload.len() as u64).sum();
        if self.bytes + incoming > self.bounds.max_bytes {
            match self.bounds.when_full {
                FullPolicy::Block => return Err(AppendRefusal::Full(samples)),
                FullPolicy::DropNewest => {
                    // Keep what fits, in order; refuse the rest.
                    let mut room = self.bounds.max_bytes.saturating_sub(self.bytes);
                    let mut kept = Vec::new();
                    for s in samples {
                        let len = s.payload.len() as u64;
                        if len <= room {
                            room -= len;
                            kept.push(s);
                        } else {
                            self.count_drop(
                                s.endpoint.app_version.as_str(),
                                s.endpoint.token.as_str(),
                                DropReason::RefusedFull,
                                1,
                            );
                            out.refused += 1;
                        }
                    }
                    self.save_drops();
                    if out.refused > 0 {
                        log::warn!(
                            "buffer full: refused {} new sample(s) (policy drop_newest)",
                            out.refused
                        );
                    }
                    samples = kept;
                }
                FullPolicy::DropOldest => {
                    let need = self.bytes + incoming - self.bounds.max_bytes;
                    out.dropped_old += self.drop_oldest(need).map_err(AppendRefusal::Error)?;
                }
            }
        }
        match self.insert(&samples) {
            Ok(n) => {
                out.stored = n;
                Ok(out)
            }
            Err(e) if is_disk_full(&e) => {
                for s in &samples {
                    self.count_drop(
                        s.endpoint.app_version.as_str(),
                        s.endpoint.token.as_str(),
                        DropReason::DiskFull,
                        1,
                    );
                }
                self.save_drops();
                Err(AppendRefusal::Error(BufferError::DiskFull))
            }
            Err(e) => Err(AppendRefusal::Error(e.into())),
        }
    }

    fn insert(&mut self, samples: &[Sample]) -> rusqlite::Result<usize> {
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
        self.bytes += samples.iter().map(|s| s.payload.len() as u64).sum::<u64>();
        self.count += samples.len() as u64;
        for s in samples {
            if !self.endpoints.contains(&s.endpoint) {
                self.endpoints.insert(s.endpoint.clone());
            }
        }
        Ok(samples.len())
    }

    /// Deletes the oldest unleased samples until `need` bytes are free.
    fn drop_oldest(&mut self, need: u64) -> Result<usize, BufferError> {
        let leased: HashSet<i64> = self.leased.values().flatten().copied().collect();
        let mut rows = Vec::new();
        let mut freed = 0u64;
        {
            let mut stmt = self.conn.prepare_cached(
                "SELECT seq, app_version, token, length(payload) FROM samples ORDER BY seq",
            )?;
            let mut it = stmt.query([])?;
            while let Some(r) = it.next()? {
                let row: (i64, String, String, i64) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
                if leased.contains(&row.0) {
                    continue;
                }
                freed += row.3 as u64;
                rows.push(row);
                if freed >= need {
                    break;
                }
            }
        }
        self.delete_rows(&rows, DropReason::BufferFull)
    }

    pub(super) fn lease(
        &mut self,
        limits: LeaseLimits,
        skip: &[BatchKey],
        now_ms: i64,
    ) -> Result<Vec<Batch>, BufferError> {
        let skip: HashSet<&BatchKey> = skip.iter().collect();
        let endpoints: Vec<Endpoint> = self.endpoints.iter().cloned().collect();
        let mut batches = Vec::new();
        if endpoints.is_empty() {
            return Ok(batches);
        }
        let live_from = now_ms - limits.live_window.as_millis() as i64;
        let n = endpoints.len();
        let start = self.cursor % n;
        self.cursor = self.cursor.wrapping_add(1);
        for i in 0..n {
            let ep = &endpoints[(start + i) % n];
            for lane in [Lane::Backlog, Lane::Live] {
                if self.leased.len() >= limits.max_batches {
                    return Ok(batches);
                }
                let key = BatchKey {
                    endpoint: ep.clone(),
                    lane,
                };
                if skip.contains(&key) || self.leased.contains_key(&key) {
                    continue;
                }
                let other = BatchKey {
                    endpoint: ep.clone(),
                    lane: match lane {
                        Lane::Backlog => Lane::Live,
                        Lane::Live => Lane::Backlog,
                    },
                };
                let taken: HashSet<i64> = self
                    .leased
                    .get(&other)
                    .into_iter()
                    .flatten()
                    .copied()
                    .collect();
                let rows = self.pick(ep, lane, live_from, &taken, limits)?;
                if rows.is_empty() {
                    if lane == Lane::Backlog && taken.is_empty() {
                        // Nothing pending or leased for this endpoint any more.
                        self.endpoints.remove(ep);
                        break;
                    }
                    continue;
                }
                let (seqs, samples): (Vec<i64>, Vec<String>) = rows.into_iter().unzip();
                self.leased.insert(key.clone(), seqs.clone());
                batches.push(Batch { key, seqs, samples });
            }
        }
        Ok(batches)
    }

    /// Rows for one lane, oldest first, within the count and byte limits (at least one).
    fn pick(
        &self,
        ep: &Endpoint,
        lane: Lane,
        live_from: i64,
        taken: &HashSet<i64>,
        limits: LeaseLimits,
    ) -> Result<Vec<(i64, String)>, BufferError> {
        let (avn, token) = (ep.app_version.as_str(), ep.token.as_str());
        let fetch = (limits.max_samples + taken.len()) as i64;
        let mut rows: Vec<(i64, String, i64)> = match lane {
            Lane::Backlog => {
                let mut stmt = self.conn.prepare_cached(
                    "SELECT seq, payload, ts_ms FROM samples WHERE app_version = ?1 AND token = ?2 ORDER BY seq LIMIT ?3",
                )?;
                let r = stmt.query_map(params![avn, token, fetch], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
                r.collect::<Result<_, _>>()?
            }
            Lane::Live => {
                // Only while the endpoint's oldest sample is older than the live window and
                // its newest is inside it (both found through the index, no scan).
                let edge = |order: &str| -> rusqlite::Result<Option<i64>> {
                    self.conn
                        .prepare_cached(&format!(
                            "SELECT ts_ms FROM samples WHERE app_version = ?1 AND token = ?2 ORDER BY seq {order} LIMIT 1"
                        ))?
                        .query_row(params![avn, token], |r| r.get(0))
                        .optional()
                };
                let (oldest, newest) = (edge("ASC")?, edge("DESC")?);
                if oldest.is_none_or(|o| o >= live_from) || newest.is_none_or(|n| n < live_from) {
                    return Ok(Vec::new());
                }
                let mut stmt = self.conn.prepare_cached(
                    "SELECT seq, payload, ts_ms FROM samples WHERE app_version = ?1 AND token = ?2 AND ts_ms >= ?3
                     ORDER BY seq DESC LIMIT ?4",
                )?;
                let r = stmt.query_map(params![avn, token, live_from, fetch], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
                let mut v: Vec<(i64, String, i64)> = r.collect::<Result<_, _>>()?;
                v.reverse();
                v
            }
        };
        rows.retain(|r| !taken.contains(&r.0));
        if lane == Lane::Live && rows.len() > limits.max_samples {
            rows.drain(..rows.len() - limits.max_samples);
        }
        let mut out = Vec::new();
        let mut bytes = 1usize; // "[" and, per sample, its text plus "," or "]"
        for (seq, p, _) in rows {
            if out.len() >= limits.max_samples
                || (!out.is_empty() && bytes + p.len() + 1 > limits.max_bytes)
            {
                break;
            }
            bytes += p.len() + 1;
            out.push((seq, p));
        }
        Ok(out)
    }

    pub(super) fn release(&mut self, key: &BatchKey) {
        self.leased.remove(key);
    }

    /// Deletes a leased batch (ack), or moves it to the dead letters (park).
    pub(super) fn remove(
        &mut self,
        key: &BatchKey,
        park: Option<(u16, &str)>,
    ) -> Result<usize, BufferError> {
        let Some(seqs) = self.leased.remove(key) else {
            return Ok(0);
        };
        let tx = self.conn.transaction()?;
        let mut n = 0;
        let mut freed = 0u64;
        {
            let mut len =
                tx.prepare_cached("SELECT length(payload) FROM samples WHERE seq = ?1")?;
            let mut copy = tx.prepare_cached(
                "INSERT OR REPLACE INTO dead_letters(seq, app_version, token, ts_ms, payload, status, reason, parked_ms)
                 SELECT seq, app_version, token, ts_ms, payload, ?2, ?3, ?4 FROM samples WHERE seq = ?1",
            )?;
            let mut del = tx.prepare_cached("DELETE FROM samples WHERE seq = ?1")?;
            let now = crate::now_ms();
            for s in &seqs {
                let l: Option<i64> = len.query_row([s], |r| r.get(0)).ok();
                if let Some((status, reason)) = park {
                    copy.execute(params![s, status, reason, now])?;
                }
                let d = del.execute([s])?;
                n += d;
                if d == 1 {
                    freed += l.unwrap_or(0) as u64;
                }
            }
        }
        tx.commit()?;
        self.bytes = self.bytes.saturating_sub(freed);
        self.count = self.count.saturating_sub(n as u64);
        Ok(n)
    }

    pub(super) fn stats(&mut self) -> Result<BufferStats, BufferError> {
        self.save_drops();
        let (pending, oldest): (i64, Option<i64>) =
            self.conn
                .query_row("SELECT count(*), min(ts_ms) FROM samples", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
        let dead: i64 = self
            .conn
            .query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0))?;
        let mut drops: BTreeMap<(String, String), BTreeMap<String, u64>> = BTreeMap::new();
        {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT app_version, token, reason, count FROM drops")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?;
            for row in rows {
                let (avn, token, reason, count) = row?;
                *drops
                    .entry((avn, token))
                    .or_default()
                    .entry(reason)
                    .or_insert(0) += count as u64;
            }
        }
        for ((avn, token, reason), n) in &self.unsaved_drops {
            *drops
                .entry((avn.clone(), token.clone()))
                .or_default()
                .entry(reason.as_str().to_owned())
                .or_insert(0) += n;
        }
        Ok(BufferStats {
            pending: pending as u64,
            leased: self.leased.values().map(|v| v.len() as u64).sum(),
            bytes: self.bytes,
            dead_letters: dead as u64,
            oldest_ts_ms: oldest,
            drops,
        })
    }
}
