//! Correcting buffered timestamps after the wall clock was stepped: the samples taken
//! before a step (an NTP sync after booting without a real-time clock) carry the wrong
//! time; those still waiting here get the step added, in the row and in its JSON.

use super::*;

impl BufferStore {
    /// The newest sequence number stored so far (0 when the buffer was always empty).
    pub(super) fn last_seq(&self) -> Result<i64, BufferError> {
        Ok(self.conn.query_row(
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'samples'), 0)",
            [],
            |r| r.get(0),
        )?)
    }

    /// Adds `delta_ms` to the time of every waiting sample with `after < seq <= upto`
    /// that is not in flight (a batch being sent keeps the time it was sent with; it is
    /// already on its way). Returns how many were corrected.
    pub(super) fn shift_times(
        &mut self,
        after: i64,
        upto: i64,
        delta_ms: i64,
    ) -> Result<usize, BufferError> {
        let leased = self.busy();
        let tx = self.conn.transaction()?;
        let mut n = 0;
        {
            let seqs: Vec<i64> = {
                let mut stmt =
                    tx.prepare("SELECT seq FROM samples WHERE seq > ?1 AND seq <= ?2")?;
                let rows = stmt.query_map(params![after, upto], |r| r.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            let mut update = tx.prepare(
                "UPDATE samples SET ts_ms = ts_ms + ?2,
                     payload = json_replace(payload, '$.timestamp', ts_ms + ?2)
                 WHERE seq = ?1",
            )?;
            for seq in seqs.into_iter().filter(|s| !leased.contains(s)) {
                n += update.execute(params![seq, delta_ms])?;
            }
        }
        tx.commit()?;
        // A timestamp may gain digits (from a 1970 clock): keep the byte count exact.
        self.bytes = self.conn.query_row(
            "SELECT coalesce(sum(length(payload)), 0) FROM samples",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64;
        Ok(n)
    }
}
