//! KPC counters (bad input, refusals, cut sessions) and rate-limited logging of bad input.
//!
//! A flood of bad packets must not flood the log: each kind of bad input is logged the
//! first time and then at most once per [`LOG_INTERVAL`], with the count suppressed since.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shortest time between two log lines of one kind of bad input.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Kinds of bad input and refusals KPC counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Incident {
    /// A packet over the listener's max packet size (connection closed).
    Oversized,
    /// A packet the MQTT codec cannot decode (connection closed).
    Malformed,
    /// A protocol violation: wildcard in a publish topic, second CONNECT, … (closed).
    ProtocolViolation,
    /// A CONNECT refused (bad credentials, not authorized, unsupported protocol).
    ConnectRefused,
    /// A connection refused because the listener's limit was reached.
    ConnectionLimit,
    /// A session ended because its token or credential was suspended or revoked.
    SessionCut,
    /// A request answered with a 1/KP error.
    RequestError,
    /// A TLS handshake or WebSocket upgrade that failed.
    TransportError,
    /// A REST API request with a wrong admin user name or password (or while throttled).
    AdminLoginFailed,
}

impl Incident {
    pub const ALL: [Incident; 9] = [
        Incident::Oversized,
        Incident::Malformed,
        Incident::ProtocolViolation,
        Incident::ConnectRefused,
        Incident::ConnectionLimit,
        Incident::SessionCut,
        Incident::RequestError,
        Incident::TransportError,
        Incident::AdminLoginFailed,
    ];

    /// Name in the stats JSON.
    pub fn name(self) -> &'static str {
        match self {
            Incident::Oversized => "oversizedPackets",
            Incident::Malformed => "malformedPackets",
            Incident::ProtocolViolation => "protocolViolations",
            Incident::ConnectRefused => "connectsRefused",
            Incident::ConnectionLimit => "connectionLimitRefusals",
            Incident::SessionCut => "sessionsCut",
            Incident::RequestError => "requestErrors",
            Incident::TransportError => "transportErrors",
            Incident::AdminLoginFailed => "adminLoginsFailed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Default)]
struct LogGate {
    last: Option<Instant>,
    suppressed: u64,
}

/// Shared counters; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    counts: Arc<[AtomicU64; 9]>,
    /// [connections accepted (CONNACK 0), 1/KP requests routed] — for `/metrics`.
    traffic: Arc<[AtomicU64; 2]>,
    gates: Arc<Mutex<HashMap<Incident, LogGate>>>,
}

impl Stats {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a connection whose CONNECT was accepted.
    pub fn connection_accepted(&self) {
        self.traffic[0].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a 1/KP request routed (any transport).
    pub fn request(&self) {
        self.traffic[1].fetch_add(1, Ordering::Relaxed);
    }

    /// (connections accepted, requests routed) so far.
    pub fn traffic(&self) -> (u64, u64) {
        (
            self.traffic[0].load(Ordering::Relaxed),
            self.traffic[1].load(Ordering::Relaxed),
        )
    }

    /// Counts one event without logging.
    pub fn count(&self, e: Incident) {
        if let Some(c) = self.counts.get(e.index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one event and logs `message` at INFO unless one of this kind was logged in
    /// the last [`LOG_INTERVAL`].
    pub fn report(&self, e: Incident, message: impl FnOnce() -> String) {
        self.count(e);
        if let Some(suppressed) = self.gate(e, Instant::now()) {
            if suppressed > 0 {
                log::info!("{} ({suppressed} more like it not logged)", message());
            } else {
                log::info!("{}", message());
            }
        }
    }

    /// Some(suppressed since the last line) when a line may be logged now.
    fn gate(&self, e: Incident, now: Instant) -> Option<u64> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        let g = gates.entry(e).or_default();
        match g.last {
            Some(t) if now.duration_since(t) < LOG_INTERVAL => {
                g.suppressed += 1;
                None
            }
            _ => {
                g.last = Some(now);
                Some(std::mem::take(&mut g.suppressed))
            }
        }
    }

    /// How many events of this kind so far.
    pub fn get(&self, e: Incident) -> u64 {
        self.counts
            .get(e.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// All counters as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        Incident::ALL
            .iter()
            .map(|e| (e.name().to_owned(), serde_json::Value::from(self.get(*e))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_logged_once_and_counted_in_full() {
        let s = Stats::new();
        let t0 = Instant::now();
        assert_eq!(s.gate(Incident::Malformed, t0), Some(0));
        for i in 1..100 {
            assert_eq!(
                s.gate(Incident::Malformed, t0 + Duration::from_millis(i)),
                None
            );
        }
        assert_eq!(
            s.gate(Incident::Oversized, t0),
            Some(0),
            "kinds are gated apart"
        );
        assert_eq!(s.gate(Incident::Malformed, t0 + LOG_INTERVAL), Some(99));
        for _ in 0..5 {
            s.report(Incident::RequestError, || "x".into());
        }
        assert_eq!(s.get(Incident::RequestError), 5);
        assert_eq!(s.to_json()["requestErrors"], 5);
    }
}
