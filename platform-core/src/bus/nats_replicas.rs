//! Several core replicas on one NATS (I/O): which replica holds which endpoint, learnt
//! from the others' 9/ELCE connectivity events and confirmed by asking the replica
//! itself on `kaa.v1.replica.<id>.kpgw.presence` (this project's own message, JSON).
//!
//! A replica that does not answer (no responders, or no answer within 2 s) is taken as
//! gone: its endpoints nobody else holds become orphans that the EPL sweep disconnects.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::*;
use crate::bus::directory::Directory;

/// How long a replica has to say what it holds.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, Deserialize)]
struct PresenceAsk {
    endpoints: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PresenceAnswer {
    held: Vec<String>,
}

/// Which of the asked endpoints a session of this replica uses.
pub type HeldHere = Arc<dyn Fn(&[String]) -> Vec<String> + Send + Sync>;

/// A connectivity change another replica announced: (endpoints, connected).
pub type RemoteChange = (Vec<(String, String)>, bool);

enum Asked {
    Holds(HashSet<String>),
    Gone,
    /// NATS trouble here: nothing learnt.
    Unknown,
}

impl NatsBus {
    /// Answers other replicas asking which endpoints this one holds.
    pub async fn serve_presence(
        &self,
        held: HeldHere,
        shutdown: CancellationToken,
    ) -> Result<(), NatsError> {
        let mut sub = self
            .client
            .subscribe(subjects::presence(&self.names.replica_id))
            .await
            .map_err(|e| NatsError::Subscribe(e.to_string()))?;
        let client = self.client.clone();
        tokio::spawn(async move {
            loop {
                let Some(msg) = next_or_stop(&mut sub, &shutdown).await else {
                    break;
                };
                let Some(reply) = msg.reply else {
                    continue;
                };
                let ask: PresenceAsk = match serde_json::from_slice(&msg.payload) {
                    Ok(a) => a,
                    Err(e) => {
                        log::warn!("nats: malformed presence question ignored: {e}");
                        continue;
                    }
                };
                let answer = PresenceAnswer {
                    held: held(&ask.endpoints),
                };
                let body = serde_json::to_vec(&answer).unwrap_or_default();
                if let Err(e) = client.publish(reply, body.into()).await {
                    log::warn!("nats: presence answer not sent: {e}");
                }
            }
        });
        Ok(())
    }

    /// Connectivity changes the other replicas announce, for this registry to follow.
    pub fn remote_changes(&self) -> broadcast::Receiver<RemoteChange> {
        self.remote.subscribe()
    }

    /// The replicas said to hold a session of `endpoint_id` (by their events).
    pub fn holders(&self, endpoint_id: &str) -> Vec<String> {
        lock(&self.directory)
            .holders(&[endpoint_id.to_owned()])
            .into_iter()
            .map(|(replica, _)| replica)
            .collect()
    }

    /// A subscription to `subject` (this project's own replica messages).
    pub async fn subscribe_to(&self, subject: String) -> Result<async_nats::Subscriber, NatsError> {
        self.client
            .subscribe(subject)
            .await
            .map_err(|e| NatsError::Subscribe(e.to_string()))
    }

    /// A request on `subject`, and its answer within `timeout`.
    pub async fn request_raw(
        &self,
        subject: String,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Bytes, String> {
        let request = async_nats::Request::new()
            .payload(body.into())
            .timeout(Some(timeout));
        self.client
            .send_request(subject, request)
            .await
            .map(|msg| msg.payload)
            .map_err(|e| e.to_string())
    }

    /// Publishes `body` on `subject` (this project's own replica messages).
    pub async fn publish_raw(&self, subject: String, body: Vec<u8>) {
        if let Err(e) = self.client.publish(subject, body.into()).await {
            log::warn!("nats: not published: {e}");
        }
    }

    /// Sends `answer` to a request's reply subject.
    pub async fn reply(&self, subject: async_nats::Subject, answer: Vec<u8>) {
        if let Err(e) = self.client.publish(subject, answer.into()).await {
            log::warn!("nats: answer not sent: {e}");
        }
    }

    async fn ask(&self, replica: &str, endpoints: &[String]) -> Asked {
        let body = match serde_json::to_vec(&PresenceAsk {
            endpoints: endpoints.to_vec(),
        }) {
            Ok(b) => b,
            Err(_) => return Asked::Unknown,
        };
        let asked = self
            .client
            .request(subjects::presence(replica), body.into());
        match tokio::time::timeout(ASK_TIMEOUT, asked).await {
            Err(_) => Asked::Gone,
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Asked::Gone,
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::TimedOut => Asked::Gone,
            Ok(Err(e)) => {
                log::warn!("nats: could not ask replica {replica}: {e}");
                Asked::Unknown
            }
            Ok(Ok(msg)) => match serde_json::from_slice::<PresenceAnswer>(&msg.payload) {
                Ok(a) => Asked::Holds(a.held.into_iter().collect()),
                Err(e) => {
                    log::warn!("nats: malformed presence answer from {replica}: {e}");
                    Asked::Unknown
                }
            },
        }
    }

    pub(super) async fn still_held_elsewhere(&self, endpoints: Vec<String>) -> HashSet<String> {
        let holders = lock(&self.directory).holders(&endpoints);
        let mut out = HashSet::new();
        for (replica, asked) in holders {
            match self.ask(&replica, &asked).await {
                Asked::Holds(still) => {
                    lock(&self.directory).confirm(&replica, &asked, &still);
                    out.extend(still);
                }
                Asked::Gone => {
                    log::warn!("nats: replica {replica} does not answer; taken as gone");
                    lock(&self.directory).gone(&replica);
                }
                Asked::Unknown => {}
            }
        }
        out
    }

    pub(super) async fn find_orphans(&self) -> Vec<(String, String)> {
        let replicas = lock(&self.directory).replicas();
        for replica in replicas {
            if let Asked::Gone = self.ask(&replica, &[]).await {
                log::warn!("nats: replica {replica} does not answer; taken as gone");
                lock(&self.directory).gone(&replica);
            }
        }
        lock(&self.directory).take_orphans()
    }
}

/// Follows the other replicas' connectivity events: the directory, and the changes for
/// this registry.
pub(super) async fn watch_replicas(
    mut events: async_nats::Subscriber,
    me: String,
    directory: Arc<Mutex<Directory>>,
    remote: broadcast::Sender<RemoteChange>,
    counters: Arc<NatsCounters>,
    shutdown: CancellationToken,
) {
    loop {
        let Some(msg) = next_or_stop(&mut events, &shutdown).await else {
            break;
        };
        let connected = msg.subject.ends_with(".connected");
        if !connected && !msg.subject.ends_with(".disconnected") {
            continue;
        }
        match avro::decode_connectivity(&msg.payload, connected) {
            Ok((_, origin)) if origin == me => {}
            Ok((endpoints, origin)) => {
                {
                    let mut d = lock(&directory);
                    if connected {
                        d.connected(&origin, &endpoints);
                    } else {
                        d.disconnected(&endpoints);
                    }
                }
                let _ = remote.send((endpoints, connected));
            }
            Err(e) => {
                counters.malformed.fetch_add(1, Ordering::Relaxed);
                log::warn!("nats: malformed event on {} ignored: {e}", msg.subject);
            }
        }
    }
}
