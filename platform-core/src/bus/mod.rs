//! The event bus between the core's extensions: in-process by default (`LocalBus`); a NATS
//! backend carrying Kaa's Avro events (9/ELCE and friends) will implement the same trait.

use tokio::sync::broadcast;

/// 9/ELCE endpoint lifecycle events (the fields Kaa's Avro schemas carry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleEvent {
    Connected {
        endpoint_id: String,
        app_version: String,
        timestamp_ms: i64,
    },
    Disconnected {
        endpoint_id: String,
        app_version: String,
        timestamp_ms: i64,
    },
}

/// Where extensions publish and observe events.
pub trait EventBus: Send + Sync + std::fmt::Debug {
    fn publish(&self, event: LifecycleEvent);
    fn subscribe(&self) -> broadcast::Receiver<LifecycleEvent>;
}

/// In-process bus: a bounded broadcast channel (slow observers lose the oldest events).
#[derive(Debug)]
pub struct LocalBus {
    tx: broadcast::Sender<LifecycleEvent>,
}

impl LocalBus {
    pub fn new(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity).0,
        }
    }
}

impl EventBus for LocalBus {
    fn publish(&self, event: LifecycleEvent) {
        // No observer is not an error: events are informational.
        let _ = self.tx.send(event);
    }

    fn subscribe(&self) -> broadcast::Receiver<LifecycleEvent> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn observers_get_what_is_published_after_they_subscribed() {
        let bus = LocalBus::new(8);
        bus.publish(LifecycleEvent::Connected {
            endpoint_id: "early".into(),
            app_version: "v".into(),
            timestamp_ms: 1,
        });
        let mut rx = bus.subscribe();
        let ev = LifecycleEvent::Disconnected {
            endpoint_id: "e".into(),
            app_version: "v".into(),
            timestamp_ms: 2,
        };
        bus.publish(ev.clone());
        assert_eq!(rx.recv().await.unwrap(), ev);
    }
}
