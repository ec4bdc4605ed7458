//! Room on a full disk, so confirmed samples can always leave.
//!
//! In WAL mode even a DELETE needs free space (new WAL frames). On a full disk the delete
//! of a confirmed batch used to fail, the batch was sent again at once, and so on forever,
//! while new samples were refused for good. Two things prevent that:
//! - first a **checkpoint** that truncates the WAL: its frames are already in the main
//!   file's pages, so this needs no new space and frees the WAL's blocks;
//! - then a **reserve file** (`<buffer>.reserve`: a quarter of the free space, at most
//!   [`RESERVE_BYTES`], of real blocks) is given back to the filesystem, so the checkpoint
//!   (which may grow the main file by what the WAL added), the deletes and the drop
//!   counters can be written; it is made again once there is room. The WAL checkpoints
//!   every 64 pages (256 KiB), so what a checkpoint may need stays within the reserve;
//! - a confirmed batch whose delete still fails is **never sent again**: it stays leased
//!   (so no lease hands it out) and its delete is retried with a growing pause
//!   (`retry_*` below) until it succeeds. After a restart it would be sent once more
//!   (at least once, as everywhere).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
        let free = crate::buffer::free_space(&self.path).unwrap_or(0);
        let bytes = (free / 4).min(RESERVE_BYTES as u64) / 4096 * 4096;
        if bytes < RESERVE_MIN {
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
