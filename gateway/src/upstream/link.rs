//! What the rest of the gateway may know of the upstream link: up or down, since when,
//! and the last failure. Written by the session, read by the health report and the web page.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;

/// Shared, lock-light view of the upstream link (one per process, kept across reloads).
#[derive(Debug, Default)]
pub struct LinkStatus {
    connected: AtomicBool,
    /// When the link last changed state (Unix ms; 0: never).
    since_ms: AtomicI64,
    /// Where the session connects (`host:port`).
    broker: Mutex<String>,
    last_error: Mutex<Option<String>>,
}

/// A copy of [`LinkStatus`] at one moment.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LinkSnapshot {
    pub connected: bool,
    pub since_ms: Option<i64>,
    pub broker: String,
    pub last_error: Option<String>,
}

impl LinkStatus {
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// A new session starts toward `broker` (not connected yet).
    pub fn starting(&self, broker: String) {
        *self.broker.lock().unwrap_or_else(|p| p.into_inner()) = broker;
        self.set(false);
    }

    pub fn up(&self) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.set(true);
    }

    pub fn down(&self, why: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        self.set(false);
    }

    fn set(&self, connected: bool) {
        let was = self.connected.swap(connected, Ordering::Relaxed);
        if was != connected || self.since_ms.load(Ordering::Relaxed) == 0 {
            self.since_ms.store(crate::now_ms(), Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> LinkSnapshot {
        let since = self.since_ms.load(Ordering::Relaxed);
        LinkSnapshot {
            connected: self.is_connected(),
            since_ms: (since > 0).then_some(since),
            broker: self
                .broker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_moves_only_on_a_change() {
        let l = LinkStatus::default();
        l.starting("h:1".into());
        let s0 = l.snapshot();
        assert!(!s0.connected && s0.since_ms.is_some());
        l.down("refused".into());
        assert_eq!(l.snapshot().since_ms, s0.since_ms);
        assert_eq!(l.snapshot().last_error.as_deref(), Some("refused"));
        l.up();
        let s1 = l.snapshot();
        assert!(s1.connected && s1.last_error.is_none());
        assert_eq!(s1.broker, "h:1");
    }
}
