//! The wall clock watched against the monotonic clock (pure; time is passed in). A Pi has
//! no real-time clock: it boots with the time it had at shutdown (or 1970), takes samples
//! stamped with that, and later NTP *steps* the clock. A step shows as wall-clock time
//! advancing differently from monotonic time; the first step of a run while the clock was
//! not known to be synchronised is taken as "the clock was set", and the samples stamped
//! before it are moved by the step (see `supervisor::clock_watch`).

use std::time::Instant;

/// Steps smaller than this are drift and slewing, not a set clock.
pub const STEP_MS: i64 = 2_000;

/// One observation: wall-clock ms, the monotonic instant, and the newest buffered seq.
#[derive(Debug, Clone, Copy)]
struct Seen {
    wall_ms: i64,
    mono: Instant,
    seq: i64,
}

/// A step found: its size and the newest sample surely taken before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub delta_ms: i64,
    /// Samples with `seq <= before_seq` were stamped before the step (those taken between
    /// the last two observations may be either side and are left as they are).
    pub before_seq: i64,
}

/// Watches for the first step of the clock while it is not known to be synchronised.
#[derive(Debug, Default)]
pub struct StepWatch {
    last: Option<Seen>,
    /// The first step was handled, or the clock is synchronised: nothing more to correct.
    done: bool,
}

impl StepWatch {
    /// Takes one observation; `synced` is the system's word on the clock (`None`: no way
    /// to tell). Returns the step to correct, once.
    pub fn observe(
        &mut self,
        wall_ms: i64,
        mono: Instant,
        seq: i64,
        synced: Option<bool>,
    ) -> Option<Step> {
        let now = Seen { wall_ms, mono, seq };
        let prev = self.last.replace(now);
        if self.done {
            return None;
        }
        let step = prev.and_then(|p| {
            let mono_ms = now.mono.saturating_duration_since(p.mono).as_millis() as i64;
            let delta_ms = (now.wall_ms - p.wall_ms) - mono_ms;
            (delta_ms.abs() >= STEP_MS).then_some(Step {
                delta_ms,
                before_seq: p.seq,
            })
        });
        if step.is_some() {
            self.done = true;
        } else if synced == Some(true) {
            // Synchronised without a step we saw (it was right, or slewed): nothing to fix.
            self.done = true;
        }
        step
    }

    /// No more corrections will come (the clock is set).
    pub fn is_done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_first_step_is_reported_once_with_the_samples_before_it() {
        let t0 = Instant::now();
        let mut w = StepWatch::default();
        let year = 365 * 24 * 3600 * 1000_i64;
        assert_eq!(w.observe(1_000, t0, 5, None), None);
        assert_eq!(w.observe(2_000, t0 + Duration::from_secs(1), 9, None), None);
        let step = w.observe(3_000 + year, t0 + Duration::from_secs(2), 12, Some(false));
        assert_eq!(
            step,
            Some(Step {
                delta_ms: year,
                before_seq: 9
            })
        );
        assert!(w.is_done());
        // A later change (an admin setting the time) is left alone.
        assert_eq!(w.observe(0, t0 + Duration::from_secs(3), 13, None), None);
    }

    #[test]
    fn drift_is_not_a_step_and_a_synchronised_clock_ends_the_watch() {
        let t0 = Instant::now();
        let mut w = StepWatch::default();
        w.observe(0, t0, 0, Some(false));
        assert_eq!(
            w.observe(2_500, t0 + Duration::from_secs(1), 1, Some(false)),
            None
        );
        assert!(!w.is_done());
        w.observe(3_500, t0 + Duration::from_secs(2), 2, Some(true));
        assert!(w.is_done());
        assert_eq!(
            w.observe(99_000, t0 + Duration::from_secs(3), 3, None),
            None
        );
    }

    #[test]
    fn a_backward_step_is_a_step_too() {
        let t0 = Instant::now();
        let mut w = StepWatch::default();
        w.observe(100_000, t0, 3, None);
        let s = w
            .observe(50_000, t0 + Duration::from_secs(1), 4, None)
            .unwrap();
        assert_eq!((s.delta_ms, s.before_seq), (-51_000, 3));
    }
}
