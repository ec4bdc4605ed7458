//! The event bus between the core's services: in-process by default ([`LocalBus`]), or NATS
//! with Kaa's subjects and Avro records ([`nats::NatsBus`], `[core.nats]`).
//!
//! Both carry the same [`Event`]s: 9/ELCE connectivity and lifecycle, 13/DSTP data samples
//! and 14/TSTP time series. Publishing never blocks and never fails the caller: events are
//! informational, a bus that cannot keep up counts what it drops.

pub mod avro;
pub mod directory;
pub mod nats;
pub mod subjects;

use std::collections::HashSet;

use futures_util::future::BoxFuture;
use tokio::sync::broadcast;

/// One point of a numeric time series (14/TSTP `DataPoint`, value name `value`).
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesPoint {
    /// When the platform received it (ms since the epoch).
    pub ingestion_ms: i64,
    /// The point's own time (ms since the epoch).
    pub ts_ms: i64,
    pub value: f64,
}

/// What the core's services tell each other (and a Kaa cluster, on NATS).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// 9/ELCE: endpoints became connected; `(endpoint id, app version)`.
    Connected {
        endpoints: Vec<(String, String)>,
        timestamp_ms: i64,
    },
    /// 9/ELCE: endpoints became disconnected, all of one closing session in one event.
    Disconnected {
        endpoints: Vec<(String, String)>,
        timestamp_ms: i64,
    },
    /// 9/ELCE: an endpoint was registered in EPR.
    Registered {
        endpoint_id: String,
        app_version: String,
        timestamp_ms: i64,
    },
    /// 9/ELCE: an endpoint was removed from EPR.
    Unregistered {
        endpoint_id: String,
        app_version: String,
        timestamp_ms: i64,
    },
    /// 9/ELCE: an endpoint moved to another application version.
    AppVersionUpdated {
        endpoint_id: String,
        app_version: String,
        previous_app_version: String,
        timestamp_ms: i64,
    },
    /// 13/DSTP: data samples a DCX instance stored (each sample as its JSON text).
    DataSamples {
        instance: String,
        endpoint_id: String,
        app_version: String,
        samples: Vec<String>,
        timestamp_ms: i64,
    },
    /// 14/TSTP: points of one time series that were stored.
    TimeSeries {
        endpoint_id: String,
        app_version: String,
        series: String,
        points: Vec<SeriesPoint>,
        timestamp_ms: i64,
    },
}

/// Where services publish and observe events.
pub trait EventBus: Send + Sync + std::fmt::Debug {
    fn publish(&self, event: Event);
    fn subscribe(&self) -> broadcast::Receiver<Event>;
    /// Does anyone take data events? (Building them costs; the hot path asks first.)
    fn wants_data(&self) -> bool;
    /// Events this bus could not pass on (queue full, backend down) since the start.
    fn dropped(&self) -> u64 {
        0
    }
    /// Of these endpoints (that just lost their last session here), the ones another core
    /// replica still holds a session of. None on the in-process bus.
    fn held_elsewhere(&self, _endpoints: Vec<String>) -> BoxFuture<'_, HashSet<String>> {
        Box::pin(std::future::ready(HashSet::new()))
    }
    /// Endpoints left connected by replicas found gone since the last call, for this one
    /// to disconnect. None on the in-process bus.
    fn orphans(&self) -> BoxFuture<'_, Vec<(String, String)>> {
        Box::pin(std::future::ready(Vec::new()))
    }
}

/// In-process bus: a bounded broadcast channel (slow observers lose the oldest events).
#[derive(Debug)]
pub struct LocalBus {
    tx: broadcast::Sender<Event>,
}

impl LocalBus {
    pub fn new(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity).0,
        }
    }
}

impl EventBus for LocalBus {
    fn publish(&self, event: Event) {
        // No observer is not an error: events are informational.
        let _ = self.tx.send(event);
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    fn wants_data(&self) -> bool {
        self.tx.receiver_count() > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn observers_get_what_is_published_after_they_subscribed() {
        let bus = LocalBus::new(8);
        assert!(!bus.wants_data(), "nobody listens yet");
        bus.publish(Event::Connected {
            endpoints: vec![("early".into(), "v".into())],
            timestamp_ms: 1,
        });
        let mut rx = bus.subscribe();
        assert!(bus.wants_data());
        let ev = Event::Disconnected {
            endpoints: vec![("e".into(), "v".into())],
            timestamp_ms: 2,
        };
        bus.publish(ev.clone());
        assert_eq!(rx.recv().await.unwrap(), ev);
    }
}
