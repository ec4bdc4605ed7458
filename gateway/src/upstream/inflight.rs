//! Book-keeping of outstanding upstream requests (pure; time is passed in).
//!
//! Invariants:
//! - at most one outstanding 2/DCP request per endpoint (the buffer leases one batch per
//!   endpoint), so a request ID is unique per (endpoint, extension) among outstanding
//!   requests by construction; IDs still advance per endpoint so that a late answer to
//!   an old request can never be taken for the answer to a new one;
//! - IDs stay in 1..=2^31-1 (PROTOCOL.md §1) and wrap around;
//! - an endpoint whose batch failed (5xx, timeout, refused publish) waits a capped
//!   exponential backoff with jitter before its next batch.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use platform_core::kp1::{RequestId, MAX_REQUEST_ID};

use crate::buffer::EndpointKey;

/// First retry delay after a failure.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outstanding {
    request_id: RequestId,
    sent_at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    until: Instant,
}

/// Outstanding requests and per-endpoint retry state.
#[derive(Debug)]
pub struct InFlight {
    outstanding: HashMap<EndpointKey, Outstanding>,
    last_id: HashMap<EndpointKey, u32>,
    backoff: HashMap<EndpointKey, Backoff>,
    backoff_max: Duration,
}

impl InFlight {
    pub fn new(backoff_max: Duration) -> Self {
        Self {
            outstanding: HashMap::new(),
            last_id: HashMap::new(),
            backoff: HashMap::new(),
            backoff_max,
        }
    }

    /// Registers a request for `ep` and returns its ID.
    pub fn start(&mut self, ep: &EndpointKey, now: Instant) -> RequestId {
        let last = self.last_id.entry(ep.clone()).or_insert(0);
        *last = if *last >= MAX_REQUEST_ID {
            1
        } else {
            *last + 1
        };
        let request_id = RequestId::new(*last).unwrap_or_else(|| unreachable!("id kept in range"));
        self.outstanding.insert(
            ep.clone(),
            Outstanding {
                request_id,
                sent_at: now,
            },
        );
        request_id
    }

    /// A response arrived: true (and the request is removed) when it answers the
    /// outstanding request of `ep`; false for a stale or unknown ID.
    pub fn resolve(&mut self, ep: &EndpointKey, id: RequestId) -> bool {
        match self.outstanding.get(ep) {
            Some(o) if o.request_id == id => {
                self.outstanding.remove(ep);
                true
            }
            _ => false,
        }
    }

    /// Forgets `ep`'s outstanding request (its publish could not be queued).
    pub fn abandon(&mut self, ep: &EndpointKey) {
        self.outstanding.remove(ep);
    }

    /// Removes and returns the endpoints whose request got no answer within `timeout`.
    pub fn expired(&mut self, now: Instant, timeout: Duration) -> Vec<EndpointKey> {
        let gone: Vec<EndpointKey> = self
            .outstanding
            .iter()
            .filter(|(_, o)| now.duration_since(o.sent_at) >= timeout)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            self.outstanding.remove(k);
        }
        gone
    }

    /// Removes and returns every outstanding request (the connection was lost).
    pub fn clear(&mut self) -> Vec<EndpointKey> {
        self.outstanding.drain().map(|(k, _)| k).collect()
    }

    /// Endpoints that must not get a new batch now: outstanding or backing off.
    pub fn busy(&self, now: Instant) -> Vec<EndpointKey> {
        let mut v: Vec<EndpointKey> = self.outstanding.keys().cloned().collect();
        v.extend(
            self.backoff
                .iter()
                .filter(|(k, b)| b.until > now && !self.outstanding.contains_key(*k))
                .map(|(k, _)| k.clone()),
        );
        v
    }

    /// Records a failure of `ep`; `jitter` in [0, 1) spreads retries. Returns the delay.
    pub fn fail(&mut self, ep: &EndpointKey, now: Instant, jitter: f64) -> Duration {
        let b = self.backoff.entry(ep.clone()).or_insert(Backoff {
            failures: 0,
            until: now,
        });
        b.failures = b.failures.saturating_add(1);
        let exp = BACKOFF_BASE.saturating_mul(1u32 << b.failures.min(16).saturating_sub(1));
        let capped = exp.min(self.backoff_max);
        // Full delay minus up to half of it, so retries from many endpoints spread out.
        let delay = capped.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0));
        b.until = now + delay;
        delay
    }

    /// Records a success of `ep`: its backoff starts over.
    pub fn succeed(&mut self, ep: &EndpointKey) {
        self.backoff.remove(ep);
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use platform_core::kp1::{AppVersionName, EndpointToken};

    fn ep(t: &str) -> EndpointKey {
        EndpointKey {
            app_version: AppVersionName::new("v1").unwrap(),
            token: EndpointToken::new(t).unwrap(),
        }
    }

    #[test]
    fn ids_advance_per_endpoint_and_only_the_current_one_resolves() {
        let mut f = InFlight::new(Duration::from_secs(30));
        let now = Instant::now();
        let a1 = f.start(&ep("a"), now);
        assert!(f.resolve(&ep("a"), a1));
        let a2 = f.start(&ep("a"), now);
        assert_ne!(a1, a2);
        assert!(
            !f.resolve(&ep("a"), a1),
            "a stale answer must not resolve the new request"
        );
        assert!(
            !f.resolve(&ep("b"), a2),
            "another endpoint's answer must not resolve it"
        );
        assert!(f.resolve(&ep("a"), a2));
        assert_eq!(f.start(&ep("b"), now).get(), 1);
    }

    #[test]
    fn ids_wrap_within_the_avn_int_range() {
        let mut f = InFlight::new(Duration::from_secs(30));
        f.last_id.insert(ep("a"), MAX_REQUEST_ID - 1);
        assert_eq!(f.start(&ep("a"), Instant::now()).get(), MAX_REQUEST_ID);
        assert_eq!(f.start(&ep("a"), Instant::now()).get(), 1);
    }

    #[test]
    fn requests_expire_after_the_timeout() {
        let mut f = InFlight::new(Duration::from_secs(30));
        let t0 = Instant::now();
        f.start(&ep("a"), t0);
        f.start(&ep("b"), t0 + Duration::from_secs(5));
        assert_eq!(
            f.expired(t0 + Duration::from_secs(9), Duration::from_secs(10)),
            vec![]
        );
        assert_eq!(
            f.expired(t0 + Duration::from_secs(10), Duration::from_secs(10)),
            vec![ep("a")]
        );
        assert_eq!(f.outstanding(), 1);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets_on_success() {
        let mut f = InFlight::new(Duration::from_secs(4));
        let t0 = Instant::now();
        let delays: Vec<_> = (0..5).map(|_| f.fail(&ep("a"), t0, 0.0)).collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 4000]
                .map(Duration::from_millis)
                .to_vec()
        );
        assert_eq!(f.busy(t0), vec![ep("a")]);
        assert_eq!(f.busy(t0 + Duration::from_secs(5)), vec![]);
        f.succeed(&ep("a"));
        assert_eq!(f.fail(&ep("a"), t0, 0.0), Duration::from_millis(500));
        let jittered = f.fail(&ep("b"), t0, 0.999);
        assert!(
            jittered > Duration::from_millis(250) && jittered < Duration::from_millis(251),
            "{jittered:?}"
        );
    }
}
