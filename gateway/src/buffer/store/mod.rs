//! The buffer thread's state and its SQL: appends, bounds, drops, the buffer clock, stats
//! (see the module above). The file's schema and opening are in `schema`; leasing and the
//! ends of a lease (ack, release, park) in `lease`; room on a full disk in `room`.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use platform_core::kp1::{AppVersionName, EndpointToken};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};
use tokio::sync::mpsc;

use super::*;

mod lease;
mod retime;
mod room;
mod schema;

pub use schema::APPLICATION_ID;
use schema::{damage, is_disk_full};
pub(super) use schema::{open_db, open_for_reading};

/// How often expired samples are looked for (and the buffer clock is saved).
const EXPIRY_EVERY: Duration = Duration::from_secs(10);
/// Key of the saved buffer clock in `meta`.
const CLOCK_KEY: &str = "buffer_clock_ms";

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
    /// The buffer clock: milliseconds this buffer has been open, over all runs. Ages for
    /// `max_age` are measured on it, never on the wall clock, so a clock that jumps (a Pi
    /// without RTC booting with a stale time, then NTP) cannot expire anything; time the
    /// gateway was off does not count either. Saved in `meta` every expiry pass and at
    /// the end; each sample records it in `entered_clock`.
    clock_base_ms: i64,
    opened: Instant,
    /// Space given back when the disk is full (see `room`).
    reserve: room::Reserve,
    /// Confirmed batches whose delete failed (disk full), by a running number: their rows
    /// are never leased again (see `busy`) but no longer hold their lane, so the samples
    /// behind them keep leaving; the delete is retried with a growing pause.
    unremoved: BTreeMap<u64, room::Unremoved>,
    unremoved_next: u64,
    retry: room::RetryClock,
    /// When appends last tried to win the reserve back (see `room_for_appends`).
    last_reclaim: Option<Instant>,
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
        Self::load(path, synchronous, bounds).map_err(|e| match e {
            BufferError::Sqlite(s) if damage(&s) => BufferError::Corrupt {
                path: path.to_owned(),
                why: s.to_string(),
            },
            e => e,
        })
    }

    /// Opens the database and reads what it holds (any damage shows up here).
    fn load(path: &Path, synchronous: Synchronous, bounds: Bounds) -> Result<Self, BufferError> {
        let conn = open_db(path, synchronous)?;
        // Every page the buffer's tables use is read once: a truncated file fails here,
        // at start, not in the middle of a lease.
        let check: String = conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(BufferError::Corrupt {
                path: path.to_owned(),
                why: check,
            });
        }
        let clock_base_ms: i64 = conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [CLOCK_KEY], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or(0);
        conn.execute(
            "UPDATE samples SET entered_clock = ?1 WHERE entered_clock IS NULL",
            [clock_base_ms],
        )?;
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
            clock_base_ms,
            opened: Instant::now(),
            reserve: room::Reserve::new(path),
            unremoved: BTreeMap::new(),
            unremoved_next: 0,
            retry: room::RetryClock::default(),
            last_reclaim: None,
        })
    }

    /// The buffer clock now (see the field's comment).
    fn clock_ms(&self) -> i64 {
        self.clock_base_ms + i64::try_from(self.opened.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// Saves the buffer clock (a failure only means ages restart a little earlier).
    fn save_clock(&self) {
        if let Err(e) = self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![CLOCK_KEY, self.clock_ms()],
        ) {
            log::debug!("buffer: cannot save the buffer clock: {e}");
        }
    }

    pub(super) fn run(&mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(cmd) = rx.blocking_recv() {
            if self.retry.due(Instant::now()) {
                self.retry_unremoved();
            }
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
                Command::LastSeq(r) => {
                    let _ = r.send(self.last_seq());
                }
                Command::ShiftTimes {
                    after,
                    upto,
                    delta_ms,
                    reply,
                } => {
                    let _ = reply.send(self.shift_times(after, upto, delta_ms));
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
        self.save_clock();
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
        let mut result = self.write_drops();
        if matches!(&result, Err(e) if is_disk_full(e)) && self.make_room(true) {
            result = self.write_drops();
        }
        match result {
            Ok(()) => self.unsaved_drops.clear(),
            // Kept in memory and saved with the next drop or pass.
            Err(e) => log::debug!("buffer: drop counters not saved yet: {e}"),
        }
    }

    fn write_drops(&mut self) -> rusqlite::Result<()> {
        (|| -> rusqlite::Result<()> {
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
        })()
    }

    /// Deletes samples older than `max_age` (at most every EXPIRY_EVERY).
    fn expire(&mut self) -> Result<usize, BufferError> {
        if self.last_expiry.is_some_and(|t| t.elapsed() < EXPIRY_EVERY) {
            return Ok(0);
        }
        self.last_expiry = Some(Instant::now());
        self.save_clock();
        self.save_drops();
        if self.unremoved.is_empty() && !self.reserve.present() {
            self.reserve.restore();
        }
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
        let cutoff = self.clock_ms() - self.bounds.max_age.as_millis() as i64;
        let leased = self.busy();
        let rows: Vec<(i64, String, String, i64)> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT seq, app_version, token, length(payload) FROM samples WHERE entered_clock < ?1",
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
        out.dropped_old += self.expire().map_err(AppendRefusal::Error)?;
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
        if !self.room_for_appends() {
            return Err(self.refuse_disk_full(&samples));
        }
        let mut inserted = self.insert(&samples);
        if matches!(&inserted, Err(e) if is_disk_full(e)) && self.make_room(false) {
            inserted = self.insert(&samples);
        }
        match inserted {
            Ok(n) => {
                out.stored = n;
                Ok(out)
            }
            Err(e) if is_disk_full(&e) => Err(self.refuse_disk_full(&samples)),
            Err(e) => Err(AppendRefusal::Error(e.into())),
        }
    }

    /// Samples refused for a full disk: counted (durably when the counters can be saved).
    fn refuse_disk_full(&mut self, samples: &[Sample]) -> AppendRefusal {
        for s in samples {
            self.count_drop(
                s.endpoint.app_version.as_str(),
                s.endpoint.token.as_str(),
                DropReason::DiskFull,
                1,
            );
        }
        self.save_drops();
        AppendRefusal::Error(BufferError::DiskFull)
    }

    fn insert(&mut self, samples: &[Sample]) -> rusqlite::Result<usize> {
        let entered = self.clock_ms();
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO samples(app_version, token, ts_ms, payload, entered_clock)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for s in samples {
                stmt.execute(params![
                    s.endpoint.app_version.as_str(),
                    s.endpoint.token.as_str(),
                    s.ts_ms,
                    s.payload,
                    entered
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
        let leased = self.busy();
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
