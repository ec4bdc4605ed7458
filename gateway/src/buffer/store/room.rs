//! Room on a full disk, so confirmed samples can always leave.
//!
//! In WAL mode even a DELETE needs free space (new WAL frames). On a full disk the delete
//! of a confirmed batch used to fail, the batch was sent again at once, and so on forever,
//! while new samples were refused for good. What prevents that:
//! - first a **checkpoint** that truncates the WAL: its frames are already in the main
//!   file's pages, so this needs no new space and frees the WAL's blocks;
//! - then a **reserve file** (`<buffer>.reserve`: an eighth of the filesystem, at most
//!   [`RESERVE_BYTES`], of real blocks) is given back to the filesystem, so the checkpoint
//!   (which may grow the main file by what the WAL added), the deletes and the drop
//!   counters can be written. The WAL checkpoints every 64 pages (256 KiB), so what a
//!   checkpoint may need stays within the reserve;
//! - **the reserve comes before new samples**: while it is given back, appends are refused
//!   (counted as `disk_full`) until it can be made again, so samples never eat the space
//!   the deletes need. Deleted rows free pages inside the file; the buffer is
//!   `auto_vacuum = INCREMENTAL`, and an incremental vacuum hands those pages back to the
//!   filesystem so the reserve can be remade;
//! - a confirmed batch whose delete still fails is **never sent again**: its rows are
//!   kept out of every lease (but its lane is free, so the samples behind it keep
//!   leaving) and its delete is retried with a growing pause (`retry_*` below) until it
//!   succeeds. After a restart it would be sent once more (at least once, as everywhere).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A confirmed batch whose delete failed on a full disk: its rows and, for a batch the
/// platform refused, the dead-letter status and reason.
#[derive(Debug, Clone)]
pub(super) struct Unremoved {
    pub(super) seqs: Vec<i64>,
    pub(super) park: Option<(u16, String)>,
}

/// Largest reserve: room for a checkpoint and the WAL frames of many batch deletes.
pub(super) const RESERVE_BYTES: usize = 256 * 1024;
/// Smallest reserve worth making.
const RESERVE_MIN: u64 = 32 * 1024;
/// First and longest pause between retries of a failed delete.
pub(super) const RETRY_FIRST: Duration = Duration::from_millis(200);
pub(super) const RETRY_MAX: Duration = Duration::from_secs(30);

/// The reserve file beside the buffer.
#[derive(Debug)]
pub(super) struct Reserve {
    path: PathBuf,
    present: bool,
    /// Size of the reserve on disk (when present).
    bytes: u64,
}

impl Reserve {
    /// Makes the reserve if it is not there yet (no room: it stays absent, no error).
    pub(super) fn new(buffer: &Path) -> Self {
        let mut r = Self {
            path: PathBuf::from(format!("{}.reserve", buffer.display())),
            present: false,
            bytes: 0,
        };
        r.restore();
        r
    }

    /// Gives the reserve's space back; true when there was one to give.
    pub(super) fn release(&mut self) -> bool {
        if !self.present {
            return false;
        }
        self.present = false;
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                log::warn!(
                    "buffer: the disk is full; released the {} KiB reserve ({}) so confirmed samples can leave",
                    self.bytes / 1024,
                    self.path.display()
                );
                true
            }
            Err(e) => {
                log::warn!(
                    "buffer: cannot release the reserve {}: {e}",
                    self.path.display()
                );
                false
            }
        }
    }

    /// Makes the reserve again when it is missing and there is room for it.
    pub(super) fn restore(&mut self) {
        if self.present {
            return;
        }
        if let Ok(m) = std::fs::metadata(&self.path) {
            if m.len() >= RESERVE_MIN {
                self.present = true;
                self.bytes = m.len();
                return;
            }
        }
        let bytes = self.target();
        let free = crate::buffer::free_space(&self.path).unwrap_or(0);
        if bytes < RESERVE_MIN || free < bytes {
            return;
        }
        let made = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(&self.path)?;
            // Real blocks (not a sparse file): writing zeros allocates them.
            f.write_all(&vec![0u8; bytes as usize])?;
            f.sync_all()
        })();
        match made {
            Ok(()) => {
                self.present = true;
                self.bytes = bytes;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&self.path);
                log::debug!("buffer: no room for the reserve yet: {e}");
            }
        }
    }

    pub(super) fn present(&self) -> bool {
        self.present
    }

    /// The size the reserve should have: an eighth of the filesystem, at most
    /// [`RESERVE_BYTES`] (0 where the filesystem cannot be read).
    fn target(&self) -> u64 {
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let total = rustix::fs::statvfs(dir)
            .map(|st| st.f_blocks.saturating_mul(st.f_frsize))
            .unwrap_or(0);
        (total / 8).min(RESERVE_BYTES as u64) / 4096 * 4096
    }

    /// Is there a reserve to keep on this filesystem (not one too small to hold it)?
    pub(super) fn wanted(&self) -> bool {
        self.present || self.target() >= RESERVE_MIN
    }
}

/// How often appends may try to win the reserve back while it is given away.
const RECLAIM_EVERY: Duration = Duration::from_millis(500);

impl super::BufferStore {
    /// Makes room after a "disk full": a truncating WAL checkpoint and, for writes that
    /// free space (deleting confirmed samples, saving drop counts), the reserve — never
    /// for appends, which would only fill it with more samples. True when something was
    /// freed and the failed write is worth a retry.
    pub(super) fn make_room(&mut self, use_reserve: bool) -> bool {
        let released = use_reserve && self.reserve.release();
        checkpoint(&self.conn) | released
    }

    /// May new samples be stored? Yes while the reserve is in place (or this filesystem is
    /// too small for one). While it is given away: no, until the pages freed by deletes
    /// are handed back to the filesystem and the reserve is made again (tried at most
    /// every [`RECLAIM_EVERY`]).
    pub(super) fn room_for_appends(&mut self) -> bool {
        if self.reserve.present() || !self.reserve.wanted() {
            return true;
        }
        if self
            .last_reclaim
            .is_some_and(|t| t.elapsed() < RECLAIM_EVERY)
        {
            return false;
        }
        self.last_reclaim = Some(Instant::now());
        checkpoint(&self.conn);
        if let Err(e) = self.conn.execute_batch("PRAGMA incremental_vacuum") {
            log::debug!("buffer: incremental vacuum failed: {e}");
        }
        checkpoint(&self.conn);
        self.reserve.restore();
        if self.reserve.present() {
            log::info!("buffer: the reserve is made again; new samples are taken again");
        }
        self.reserve.present()
    }
}

/// A checkpoint that truncates the WAL; true when it completed.
fn checkpoint(conn: &rusqlite::Connection) -> bool {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    })
    .is_ok_and(|busy| busy == 0)
}

/// When to retry failed deletes of confirmed batches.
#[derive(Debug, Default)]
pub(super) struct RetryClock {
    next: Option<Instant>,
    pause: Duration,
}

impl RetryClock {
    /// A delete failed: the next try waits a little longer than the last.
    pub(super) fn failed(&mut self, now: Instant) {
        self.pause = if self.pause.is_zero() {
            RETRY_FIRST
        } else {
            (self.pause * 2).min(RETRY_MAX)
        };
        self.next = Some(now + self.pause);
    }

    /// Everything was deleted: no retry due.
    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }

    pub(super) fn due(&self, now: Instant) -> bool {
        self.next.is_some_and(|t| t <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_up_to_the_cap_and_stop_when_cleared() {
        let mut r = RetryClock::default();
        let now = Instant::now();
        assert!(!r.due(now));
        r.failed(now);
        assert!(!r.due(now) && r.due(now + RETRY_FIRST));
        for _ in 0..20 {
            r.failed(now);
        }
        assert!(!r.due(now + RETRY_MAX - Duration::from_millis(1)) && r.due(now + RETRY_MAX));
        r.clear();
        assert!(!r.due(now + RETRY_MAX));
    }

    #[test]
    fn the_reserve_is_made_released_and_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let buffer = dir.path().join("b.sqlite");
        let mut r = Reserve::new(&buffer);
        let path = dir.path().join("b.sqlite.reserve");
        assert!(r.present());
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            RESERVE_BYTES as u64
        );
        assert!(r.release());
        assert!(!path.exists() && !r.release());
        r.restore();
        assert!(r.present() && path.exists());
    }
}
