//! Live sessions and their subscriptions, so a reply can also reach other subscribers.
//!
//! KPC is not a general broker, but Kaa users watch response topics from a second client
//! (`mosquitto_sub` in one terminal, `mosquitto_pub` in another, as Kaa's own tutorials
//! do). Decision (documented in DECISIONS.md): a reply always goes to the requesting
//! session, and a copy goes to every *other* live session with a matching subscription.
//!
//! Back-pressure is per connection: copies go through a bounded channel with `try_send`;
//! a subscriber that does not keep up loses copies (counted, logged), never stalls others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use tokio::sync::mpsc;

use crate::mqtt::filter::matches;

/// Capacity of each session's queue of copies.
pub const OUTBOUND_CAPACITY: usize = 256;

/// A message to publish to a session.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub topic: String,
    pub qos: QoS,
    pub payload: Bytes,
}

/// Identifies one live session in the hub.
pub type SessionId = u64;

#[derive(Debug)]
struct Entry {
    filters: Vec<(String, QoS)>,
    tx: mpsc::Sender<Outbound>,
}

/// Registry of live sessions; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Hub {
    inner: Arc<Mutex<HashMap<SessionId, Entry>>>,
    next_id: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a session; it receives copies on the returned channel until the
    /// [`Registration`] is dropped.
    pub fn register(&self) -> (Registration, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            Entry {
                filters: Vec::new(),
                tx,
            },
        );
        (
            Registration {
                hub: self.clone(),
                id,
            },
            rx,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Entry>> {
        // A panic while holding the lock cannot leave the map inconsistent (single ops).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a copy of `topic`/`payload` to every session but `except` whose filters match.
    /// Returns how many sessions got a copy.
    pub fn fan_out(&self, except: SessionId, topic: &str, payload: &Bytes) -> usize {
        let map = self.lock();
        let mut sent = 0;
        for (id, e) in map.iter() {
            if *id == except {
                continue;
            }
            let qos = e
                .filters
                .iter()
                .filter(|(f, _)| matches(f, topic))
                .map(|(_, q)| *q)
                .max_by_key(|q| *q as u8);
            let Some(qos) = qos else { continue };
            let msg = Outbound {
                topic: topic.to_owned(),
                qos,
                payload: payload.clone(),
            };
            match e.tx.try_send(msg) {
                Ok(()) => sent += 1,
                Err(_) => {
                    let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_power_of_two() {
                        log::warn!("kpc: a slow subscriber missed a copy of {topic} ({n} copies dropped so far)");
                    }
                }
            }
        }
        sent
    }

    /// Copies dropped because a subscriber's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Number of live sessions.
    pub fn sessions(&self) -> usize {
        self.lock().len()
    }
}

/// A session's place in the hub; unregisters on drop.
#[derive(Debug)]
pub struct Registration {
    hub: Hub,
    pub id: SessionId,
}

impl Registration {
    /// Replaces the session's subscription list in the hub.
    pub fn set_filters(&self, filters: Vec<(String, QoS)>) {
        if let Some(e) = self.hub.lock().get_mut(&self.id) {
            e.filters = filters;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copies_reach_matching_subscribers_but_not_the_sender() {
        let hub = Hub::new();
        let (a, mut rx_a) = hub.register();
        let (b, mut rx_b) = hub.register();
        let (_c, mut rx_c) = hub.register();
        a.set_filters(vec![("kp1/#".into(), QoS::AtLeastOnce)]);
        b.set_filters(vec![("kp1/+/dcx/+/json/+/status".into(), QoS::AtMostOnce)]);
        let n = hub.fan_out(a.id, "kp1/v/dcx/t/json/1/status", &Bytes::from_static(b""));
        assert_eq!(n, 1);
        assert_eq!(rx_b.try_recv().unwrap().qos, QoS::AtMostOnce);
        assert!(rx_a.try_recv().is_err());
        assert!(rx_c.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_full_subscriber_loses_copies_without_blocking() {
        let hub = Hub::new();
        let (s, _rx) = hub.register();
        s.set_filters(vec![("#".into(), QoS::AtMostOnce)]);
        for _ in 0..OUTBOUND_CAPACITY + 5 {
            hub.fan_out(u64::MAX, "t", &Bytes::new());
        }
        assert_eq!(hub.dropped(), 5);
    }

    #[test]
    fn dropping_the_registration_removes_the_session() {
        let hub = Hub::new();
        let (r, _rx) = hub.register();
        assert_eq!(hub.sessions(), 1);
        drop(r);
        assert_eq!(hub.sessions(), 0);
    }
}
