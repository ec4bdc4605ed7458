//! Leasing batches to the upstream, and the three ends of a lease: ack (delete), release
//! (send again later) and park (move to the dead letters). See the buffer module's header
//! for the lanes, the round robin and the flow-control cap.

use super::*;

impl BufferStore {
    pub(in crate::buffer) fn lease(
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
                    .chain(self.unremoved.values().flat_map(|u| &u.seqs))
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

    pub(in crate::buffer) fn release(&mut self, key: &BatchKey) {
        self.leased.remove(key);
    }

    /// Deletes a leased batch (ack), or moves it to the dead letters (park).
    pub(in crate::buffer) fn remove(
        &mut self,
        key: &BatchKey,
        park: Option<(u16, &str)>,
    ) -> Result<usize, BufferError> {
        let Some(seqs) = self.leased.get(key).cloned() else {
            return Ok(0);
        };
        let mut result = self.delete_batch(&seqs, park);
        if matches!(&result, Err(e) if is_disk_full(e)) && self.make_room(true) {
            result = self.delete_batch(&seqs, park);
        }
        match result {
            Ok(n) => {
                self.leased.remove(key);
                Ok(n)
            }
            Err(e) if is_disk_full(&e) => {
                // Confirmed (or refused) upstream: never sent again; deleted when there is
                // room. Its lane is free for the samples behind it meanwhile.
                if self.unremoved.is_empty() {
                    log::warn!(
                        "buffer: the disk is full; confirmed samples stay until they can be deleted (they are not sent again)"
                    );
                }
                self.leased.remove(key);
                self.unremoved_next += 1;
                self.unremoved.insert(
                    self.unremoved_next,
                    room::Unremoved {
                        seqs: seqs.clone(),
                        park: park.map(|(s, r)| (s, r.to_owned())),
                    },
                );
                self.retry.failed(std::time::Instant::now());
                Ok(seqs.len())
            }
            Err(e) => {
                self.leased.remove(key);
                Err(e.into())
            }
        }
    }

    /// Rows that no lease, expiry or eviction may touch: those in flight and those
    /// confirmed but not yet deleted.
    pub(super) fn busy(&self) -> HashSet<i64> {
        self.leased
            .values()
            .flatten()
            .chain(self.unremoved.values().flat_map(|u| &u.seqs))
            .copied()
            .collect()
    }

    /// Retries the deletes of confirmed batches that failed on a full disk.
    pub(in crate::buffer) fn retry_unremoved(&mut self) {
        let ids: Vec<u64> = self.unremoved.keys().copied().collect();
        for id in ids {
            let Some(u) = self.unremoved.get(&id).cloned() else {
                continue;
            };
            let park = u.park.as_ref().map(|(s, r)| (*s, r.as_str()));
            let mut result = self.delete_batch(&u.seqs, park);
            if matches!(&result, Err(e) if is_disk_full(e)) && self.make_room(true) {
                result = self.delete_batch(&u.seqs, park);
            }
            match result {
                Ok(_) => {
                    self.unremoved.remove(&id);
                }
                Err(e) => {
                    log::debug!("buffer: delete of confirmed samples still failing: {e}");
                    self.retry.failed(std::time::Instant::now());
                    return;
                }
            }
        }
        log::info!("buffer: confirmed samples deleted after the disk had room again");
        self.retry.clear();
    }

    /// Deletes (or, with `park`, moves to the dead letters) one batch, in one transaction.
    fn delete_batch(&mut self, seqs: &[i64], park: Option<(u16, &str)>) -> rusqlite::Result<usize> {
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
            for s in seqs {
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
}
