//! When each slave on a bus is polled next (pure; time is passed in).
//!
//! A healthy slave is polled every period, on a fixed grid (a late poll does not shift
//! later ones; missed slots are skipped, not caught up in a burst). A slave whose poll
//! failed is backed off exponentially — period × 2, × 4, ... up to the cap — and each
//! retry is a probe; the first success returns it to its grid.

use std::time::{Duration, Instant};

/// Poll timing of one slave.
#[derive(Debug, Clone)]
pub struct Schedule {
    period: Duration,
    backoff_max: Duration,
    next_due: Instant,
    failures: u32,
}

impl Schedule {
    /// First poll at `start`.
    pub fn new(period: Duration, backoff_max: Duration, start: Instant) -> Self {
        Self {
            period,
            backoff_max,
            next_due: start,
            failures: 0,
        }
    }

    pub fn next_due(&self) -> Instant {
        self.next_due
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The poll that was due succeeded at `now`.
    pub fn succeeded(&mut self, now: Instant) {
        let mut next = if self.failures > 0 {
            now + self.period
        } else {
            self.next_due + self.period
        };
        while next <= now {
            next += self.period;
        }
        self.failures = 0;
        self.next_due = next;
    }

    /// The poll failed at `now`; returns the delay until the probe.
    pub fn failed(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let factor = 1u32 << self.failures.min(16);
        let delay = self
            .period
            .saturating_mul(factor)
            .min(self.backoff_max)
            .max(self.period);
        self.next_due = now + delay;
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_healthy_slave_stays_on_its_grid_and_skips_missed_slots() {
        let t0 = Instant::now();
        let mut s = Schedule::new(S, 30 * S, t0);
        s.succeeded(t0 + Duration::from_millis(300));
        assert_eq!(s.next_due(), t0 + S);
        s.succeeded(t0 + Duration::from_millis(3500)); // a slow poll
        assert_eq!(s.next_due(), t0 + 4 * S);
    }

    #[test]
    fn a_failing_slave_backs_off_to_the_cap_and_recovers_on_a_probe() {
        let t0 = Instant::now();
        let mut s = Schedule::new(S, 10 * S, t0);
        let delays: Vec<Duration> = (0..5).map(|_| s.failed(t0)).collect();
        assert_eq!(delays, vec![2 * S, 4 * S, 8 * S, 10 * S, 10 * S]);
        assert_eq!(s.failures(), 5);
        s.succeeded(t0 + 50 * S);
        assert_eq!((s.failures(), s.next_due()), (0, t0 + 51 * S));
    }
}
