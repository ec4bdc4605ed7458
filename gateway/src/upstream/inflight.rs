//! Book-keeping of outstanding upstream requests (pure; time is passed in).
//!
//! Invariants:
//! - at most one outstanding 2/DCP request per batch key (endpoint and lane; the buffer
//!   leases one batch per key); request IDs advance per endpoint, so they are unique per
//!   (endpoint, extension) among outstanding requests, and a late answer to an old
//!   request can never be taken for the answer to a new one;
//! - IDs stay in 1..=2^31-1 (docs/protocol.md §1) and wrap around;
//! - an endpoint whose batch failed (5xx, timeout, refused publish) waits a capped
//!   exponential backoff with jitter before its next batch.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use platform_core::kp1::RequestId;

use crate::buffer::{BatchKey, Lane};
use crate::endpoint::Endpoint;

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
    outstanding: HashMap<BatchKey, Outstanding>,
    last_id: HashMap<Endpoint, RequestId>,
    /// The ID of each endpoint's first request.
    first_id: RequestId,
    backoff: HashMap<Endpoint, Backoff>,
    backoff_max: Duration,
}

impl InFlight {
    pub fn new(backoff_max: Duration) -> Self {
        Self {
            outstanding: HashMap::new(),
            last_id: HashMap::new(),
            first_id: RequestId::FIRST,
            backoff: HashMap::new(),
            backoff_max,
        }
    }

    /// Numbers each endpoint's requests from `first` on (see [`super::protocol::ClientState::with_first_id`]).
    pub fn set_first_id(&mut self, first: RequestId) {
        self.first_id = first;
    }

    /// Registers a request for `key` and returns its ID.
    pub fn start(&mut self, key: &BatchKey, now: Instant) -> RequestId {
        let request_id = match self.last_id.get(&key.endpoint) {
            Some(last) => last.next(),
            None => self.first_id,
        };
        self.last_id.insert(key.endpoint.clone(), request_id);
        self.outstanding.insert(
            key.clone(),
            Outstanding {
                request_id,
                sent_at: now,
            },
        );
        request_id
    }

    /// A response arrived for `ep`: the batch it answers (removed from the outstanding
    /// set), or `None` for a stale or unknown ID.
    pub fn resolve(&mut self, ep: &Endpoint, id: RequestId) -> Option<BatchKey> {
        let key = self
            .outstanding
            .iter()
            .find(|(k, o)| k.endpoint == *ep && o.request_id == id)
            .map(|(k, _)| k.clone())?;
        self.outstanding.remove(&key);
        Some(key)
    }

    /// Forgets an outstanding request (its publish could not be queued).
    pub fn abandon(&mut self, key: &BatchKey) {
        self.outstanding.remove(key);
    }

    /// Removes and returns the batches whose request got no answer within `timeout`.
    pub fn expired(&mut self, now: Instant, timeout: Duration) -> Vec<BatchKey> {
        let gone: Vec<BatchKey> = self
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
    pub fn clear(&mut self) -> Vec<BatchKey> {
        self.outstanding.drain().map(|(k, _)| k).collect()
    }

    /// Batches that must not be leased now: outstanding, or of an endpoint backing off.
    pub fn busy(&self, now: Instant) -> Vec<BatchKey> {
        let mut v: Vec<BatchKey> = self.outstanding.keys().cloned().collect();
        for (ep, b) in &self.backoff {
            if b.until > now {
                for lane in [Lane::Backlog, Lane::Live] {
                    let key = BatchKey {
                        endpoint: ep.clone(),
                        lane,
                    };
                    if !self.outstanding.contains_key(&key) {
                        v.push(key);
                    }
                }
            }
        }
        v
    }

    /// Records a failure of `ep`; `jitter` in [0, 1) spreads retries. Returns the delay.
    pub fn fail(&mut self, ep: &Endpoint, now: Instant, jitter: f64) -> Duration {
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
    pub fn succeed(&mut self, ep: &Endpoint) {
        self.backoff.remove(ep);
    }

    /// How many requests wait for an answer.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use platform_core::kp1::{AppVersionName, EndpointToken, MAX_REQUEST_ID};

    fn ep(t: &str) -> Endpoint {
        Endpoint {
            app_version: AppVersionName::new("v1").unwrap(),
            token: EndpointToken::new(t).unwrap(),
        }
    }

    fn bk(t: &str) -> BatchKey {
        BatchKey {
            endpoint: ep(t),
            lane: Lane::Backlog,
        }
    }

    #[test]
    fn ids_advance_per_endpoint_and_only_the_current_one_resolves() {
        let mut f = InFlight::new(Duration::from_secs(30));
        let now = Instant::now();
        let a1 = f.start(&bk("a"), now);
        assert_eq!(f.resolve(&ep("a"), a1), Some(bk("a")));
        let a2 = f.start(&bk("a"), now);
        assert_ne!(a1, a2);
        assert_eq!(
            f.resolve(&ep("a"), a1),
            None,
            "a stale answer must not resolve the new request"
        );
        assert_eq!(
            f.resolve(&ep("b"), a2),
            None,
            "another endpoint's answer must not resolve it"
        );
        let live = BatchKey {
            endpoint: ep("a"),
            lane: Lane::Live,
        };
        let a3 = f.start(&live, now);
        assert_ne!(a2, a3, "lanes of one endpoint share the ID sequence");
        assert_eq!(f.resolve(&ep("a"), a3), Some(live));
        assert_eq!(f.resolve(&ep("a"), a2), Some(bk("a")));
        assert_eq!(f.start(&bk("b"), now).get(), 1);
    }

    #[test]
    fn ids_wrap_within_the_avn_int_range() {
        let mut f = InFlight::new(Duration::from_secs(30));
        f.last_id
            .insert(ep("a"), RequestId::new(MAX_REQUEST_ID - 1).unwrap());
        assert_eq!(f.start(&bk("a"), Instant::now()).get(), MAX_REQUEST_ID);
        assert_eq!(f.start(&bk("a"), Instant::now()).get(), 1);
    }

    #[test]
    fn requests_expire_after_the_timeout() {
        let mut f = InFlight::new(Duration::from_secs(30));
        let t0 = Instant::now();
        f.start(&bk("a"), t0);
        f.start(&bk("b"), t0 + Duration::from_secs(5));
        assert_eq!(
            f.expired(t0 + Duration::from_secs(9), Duration::from_secs(10)),
            vec![]
        );
        assert_eq!(
            f.expired(t0 + Duration::from_secs(10), Duration::from_secs(10)),
            vec![bk("a")]
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
        assert_eq!(
            f.busy(t0).len(),
            2,
            "both lanes of a backing-off endpoint wait"
        );
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
