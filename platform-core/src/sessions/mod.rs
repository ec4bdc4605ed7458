//! Live sessions: their subscriptions, the endpoints they used, and how to reach them.
//!
//! The hub is how anything outside a connection talks to it:
//! - reply copies: a reply always goes to the requesting session, and a copy goes to every
//!   *other* live session with a matching subscription (Kaa users watch response topics
//!   with `mosquitto_sub` while `mosquitto_pub` sends; docs/protocol.md §5);
//! - server pushes (7/CMP configs, 11/CEP commands): to every live session that used the
//!   endpoint's token, subscribed or not, and to sessions subscribed to a matching filter
//!   (docs/protocol.md §2);
//! - cutting sessions: when a token or a client credential is suspended or revoked, every
//!   session using it is ended at once (docs/protocol.md §6); a new CONNECT with a live client
//!   ID takes the old connection over (MQTT 3.1.1 §3.1.4);
//! - persistent sessions (`clean session` = 0) are parked here between connections.
//!
//! Back-pressure is per connection: messages go through a bounded channel with `try_send`;
//! a session that does not keep up loses copies (counted, logged), never stalls others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::mqtt::filter::matches;
use crate::mqtt::session::Session;

/// Capacity of each session's queue of copies and pushes, in messages …
pub const OUTBOUND_CAPACITY: usize = 1024;
/// … and in payload bytes (a message is always let in when the queue is empty).
pub const OUTBOUND_MAX_BYTES: usize = 1 << 20;
/// Most persistent sessions kept while their clients are away; the oldest go first.
pub const MAX_PARKED_SESSIONS: usize = 10_000;

/// A message to publish to a session.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub topic: String,
    pub qos: QoS,
    pub payload: Bytes,
}

/// Identifies one live session in the hub.
pub type SessionId = u64;

/// Who a session authenticated as (for cutting it when that credential changes state).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Anonymous,
    Basic(String),
    /// SHA-256 fingerprint of the client certificate (lower-case hex).
    X509(String),
}

#[derive(Debug)]
struct Entry {
    client_id: String,
    identity: Identity,
    filters: Vec<(String, QoS)>,
    /// endpoint id → (app version, token) this session used for it.
    used: HashMap<String, (String, String)>,
    tx: mpsc::Sender<Outbound>,
    /// Payload bytes waiting in `tx` (the connection subtracts what it takes).
    queued_bytes: Arc<AtomicUsize>,
    kill: CancellationToken,
}

impl Entry {
    /// May this session receive a copy of a message on `topic` it subscribed to?
    /// Authenticated sessions may watch any endpoint (Kaa's tutorials watch replies with
    /// `mosquitto_sub`); an anonymous session proves nothing but the tokens it used, so it
    /// sees only topics of those tokens.
    fn may_watch(&self, topic: &str) -> bool {
        if self.identity != Identity::Anonymous {
            return true;
        }
        let token = topic.split('/').nth(3);
        token.is_some_and(|t| self.used.values().any(|(_, used)| used == t))
    }
}

#[derive(Debug, Default)]
struct State {
    live: HashMap<SessionId, Entry>,
    parked: HashMap<String, (Instant, Session)>,
}

/// Registry of live sessions; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Hub {
    inner: Arc<Mutex<State>>,
    next_id: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
}

/// What a new session gets from [`Hub::register`].
#[derive(Debug)]
pub struct Attached {
    pub registration: Registration,
    pub inbox: mpsc::Receiver<Outbound>,
    /// Payload bytes waiting in `inbox`: subtract a message's payload length on receipt.
    pub queued_bytes: Arc<AtomicUsize>,
    /// Fires when the session must end (credential/token state change, takeover).
    pub kill: CancellationToken,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every operation leaves the maps consistent, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session. A live session with the same non-empty client ID is ended
    /// (takeover, MQTT 3.1.1 §3.1.4); wait for [`Hub::client_gone`] before resuming.
    pub fn register(&self, client_id: &str, identity: Identity) -> Attached {
        let (tx, inbox) = mpsc::channel(OUTBOUND_CAPACITY);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let kill = CancellationToken::new();
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let mut st = self.lock();
        if !client_id.is_empty() {
            for e in st.live.values().filter(|e| e.client_id == client_id) {
                log::info!("kpc: client {client_id:?} connected again: ending its old connection");
                e.kill.cancel();
            }
        }
        st.live.insert(
            id,
            Entry {
                client_id: client_id.to_owned(),
                identity,
                filters: Vec::new(),
                used: HashMap::new(),
                tx,
                queued_bytes: queued_bytes.clone(),
                kill: kill.clone(),
            },
        );
        Attached {
            registration: Registration {
                hub: self.clone(),
                id,
            },
            inbox,
            queued_bytes,
            kill,
        }
    }

    /// True when no live session other than `me` has this client ID.
    pub fn client_gone(&self, client_id: &str, me: SessionId) -> bool {
        !self
            .lock()
            .live
            .iter()
            .any(|(id, e)| *id != me && e.client_id == client_id)
    }

    /// Keeps a persistent session's state until its client returns.
    pub fn park(&self, client_id: &str, session: Session) {
        let mut st = self.lock();
        if st.parked.len() >= MAX_PARKED_SESSIONS && !st.parked.contains_key(client_id) {
            let oldest = st
                .parked
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                log::warn!("kpc: too many persistent sessions parked: forgetting {k:?}");
                st.parked.remove(&k);
            }
        }
        st.parked
            .insert(client_id.to_owned(), (Instant::now(), session));
    }

    /// Takes a parked session (`clean session` = 0 reconnect) or forgets it (= 1).
    pub fn take_parked(&self, client_id: &str) -> Option<Session> {
        self.lock().parked.remove(client_id).map(|(_, s)| s)
    }

    fn send(&self, e: &Entry, msg: Outbound) -> bool {
        let len = msg.payload.len();
        let queued = e.queued_bytes.load(Ordering::Relaxed);
        let refused = if queued == 0 || queued + len <= OUTBOUND_MAX_BYTES {
            e.tx.try_send(msg).err().map(|err| err.into_inner())
        } else {
            Some(msg)
        };
        let Some(msg) = refused else {
            e.queued_bytes.fetch_add(len, Ordering::Relaxed);
            return true;
        };
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            log::warn!(
                "kpc: a slow session missed {} ({n} messages dropped so far)",
                msg.topic
            );
        }
        false
    }

    /// Sends a copy of `topic`/`payload` to every session but `except` whose filters match.
    /// Returns how many sessions got a copy.
    pub fn fan_out(&self, except: SessionId, topic: &str, payload: &Bytes) -> usize {
        let st = self.lock();
        let mut sent = 0;
        for (id, e) in st.live.iter() {
            if *id == except {
                continue;
            }
            let Some(qos) = granted(&e.filters, topic) else {
                continue;
            };
            if !e.may_watch(topic) {
                continue;
            }
            let msg = Outbound {
                topic: topic.to_owned(),
                qos,
                payload: payload.clone(),
            };
            if self.send(e, msg) {
                sent += 1;
            }
        }
        sent
    }

    /// Pushes a server message for `endpoint_id` (docs/protocol.md §2): at QoS 1 to every live
    /// session that used the endpoint (on the topic of the token it used), and to every
    /// other session subscribed to the topic of one of `tokens` (app version, token).
    /// `topic_for(app version, token)` builds the topic. Returns how many sessions got it.
    pub fn push(
        &self,
        endpoint_id: &str,
        tokens: &[(String, String)],
        topic_for: impl Fn(&str, &str) -> String,
        payload: &Bytes,
    ) -> usize {
        let st = self.lock();
        let mut sent = 0;
        for e in st.live.values() {
            let msg = if let Some((avn, token)) = e.used.get(endpoint_id) {
                Some(Outbound {
                    topic: topic_for(avn, token),
                    qos: QoS::AtLeastOnce,
                    payload: payload.clone(),
                })
            } else {
                tokens.iter().find_map(|(avn, token)| {
                    let topic = topic_for(avn, token);
                    if !e.may_watch(&topic) {
                        return None;
                    }
                    granted(&e.filters, &topic).map(|qos| Outbound {
                        topic,
                        qos,
                        payload: payload.clone(),
                    })
                })
            };
            if let Some(msg) = msg {
                if self.send(e, msg) {
                    sent += 1;
                }
            }
        }
        sent
    }

    /// Records that `session` used `token` (of `app_version`) for `endpoint_id`.
    pub fn record_use(
        &self,
        session: SessionId,
        endpoint_id: &str,
        app_version: &str,
        token: &str,
    ) {
        if let Some(e) = self.lock().live.get_mut(&session) {
            let fresh = e
                .used
                .get(endpoint_id)
                .is_none_or(|(a, t)| a != app_version || t != token);
            if fresh {
                e.used.insert(
                    endpoint_id.to_owned(),
                    (app_version.to_owned(), token.to_owned()),
                );
            }
        }
    }

    /// Ends every live session that used `token`. Returns how many.
    pub fn cut_token(&self, token: &str) -> usize {
        self.cut(|e| e.used.values().any(|(_, t)| t == token))
    }

    /// Ends every live session that used any token of `endpoint_id`. Returns how many.
    pub fn cut_endpoint(&self, endpoint_id: &str) -> usize {
        self.cut(|e| e.used.contains_key(endpoint_id))
    }

    /// Ends every live session that authenticated as `identity`. Returns how many.
    pub fn cut_identity(&self, identity: &Identity) -> usize {
        self.cut(|e| e.identity == *identity)
    }

    fn cut(&self, which: impl Fn(&Entry) -> bool) -> usize {
        let st = self.lock();
        let mut n = 0;
        for e in st.live.values().filter(|e| which(e)) {
            e.kill.cancel();
            n += 1;
        }
        n
    }

    /// Messages dropped because a session's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Number of live sessions.
    pub fn sessions(&self) -> usize {
        self.lock().live.len()
    }
}

fn granted(filters: &[(String, QoS)], topic: &str) -> Option<QoS> {
    filters
        .iter()
        .filter(|(f, _)| matches(f, topic))
        .map(|(_, q)| *q)
        .max_by_key(|q| *q as u8)
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
        if let Some(e) = self.hub.lock().live.get_mut(&self.id) {
            e.filters = filters;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.lock().live.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attach(hub: &Hub, client: &str) -> Attached {
        hub.register(client, Identity::Basic(client.to_owned()))
    }

    #[tokio::test]
    async fn copies_reach_matching_subscribers_but_not_the_sender() {
        let hub = Hub::new();
        let mut a = attach(&hub, "a");
        let mut b = attach(&hub, "b");
        let mut c = attach(&hub, "c");
        a.registration
            .set_filters(vec![("kp1/#".into(), QoS::AtLeastOnce)]);
        b.registration
            .set_filters(vec![("kp1/+/dcx/+/json/+/status".into(), QoS::AtMostOnce)]);
        let n = hub.fan_out(
            a.registration.id,
            "kp1/v/dcx/t/json/1/status",
            &Bytes::from_static(b""),
        );
        assert_eq!(n, 1);
        assert_eq!(b.inbox.try_recv().unwrap().qos, QoS::AtMostOnce);
        assert!(a.inbox.try_recv().is_err());
        assert!(c.inbox.try_recv().is_err());
    }

    #[tokio::test]
    async fn anonymous_sessions_watch_only_the_tokens_they_used() {
        let hub = Hub::new();
        let mut anon = hub.register("anon", Identity::Anonymous);
        let mut user = hub.register("user", Identity::Basic("u".into()));
        for a in [&anon, &user] {
            a.registration
                .set_filters(vec![("kp1/#".into(), QoS::AtMostOnce)]);
        }
        hub.record_use(anon.registration.id, "ep-a", "v", "tok-a");
        let b = Bytes::new();
        assert_eq!(
            hub.fan_out(u64::MAX, "kp1/v/cex/tok-b/command/x/status", &b),
            1
        );
        assert!(anon.inbox.try_recv().is_err(), "not its token");
        assert!(user.inbox.try_recv().is_ok());
        assert_eq!(
            hub.fan_out(u64::MAX, "kp1/v/cex/tok-a/command/x/status", &b),
            2
        );
        let tokens = vec![("v".to_owned(), "tok-b".to_owned())];
        let n = hub.push(
            "ep-b",
            &tokens,
            |a, t| format!("kp1/{a}/cmx/{t}/config/json/status"),
            &b,
        );
        assert_eq!(
            n, 1,
            "only the authenticated watcher gets another endpoint's push"
        );
    }

    #[tokio::test]
    async fn a_full_session_loses_messages_without_blocking() {
        let hub = Hub::new();
        let s = attach(&hub, "s");
        s.registration
            .set_filters(vec![("#".into(), QoS::AtMostOnce)]);
        for _ in 0..OUTBOUND_CAPACITY + 5 {
            hub.fan_out(u64::MAX, "t", &Bytes::new());
        }
        assert_eq!(hub.dropped(), 5);
    }

    #[tokio::test]
    async fn a_session_queue_is_bounded_by_bytes_too() {
        let hub = Hub::new();
        let mut s = attach(&hub, "s");
        s.registration
            .set_filters(vec![("#".into(), QoS::AtMostOnce)]);
        let big = Bytes::from(vec![0u8; OUTBOUND_MAX_BYTES / 2 + 1]);
        assert_eq!(hub.fan_out(u64::MAX, "t", &big), 1);
        assert_eq!(hub.fan_out(u64::MAX, "t", &big), 0, "over the byte bound");
        let got = s.inbox.try_recv().unwrap();
        s.queued_bytes
            .fetch_sub(got.payload.len(), Ordering::Relaxed);
        assert_eq!(hub.fan_out(u64::MAX, "t", &big), 1, "room again once taken");
        assert_eq!(hub.dropped(), 1);
    }

    #[tokio::test]
    async fn pushes_reach_users_of_the_token_and_subscribers_only() {
        let hub = Hub::new();
        let mut user = attach(&hub, "user");
        let mut watcher = attach(&hub, "watcher");
        let mut other = attach(&hub, "other");
        hub.record_use(user.registration.id, "ep1", "v1", "tok");
        hub.record_use(other.registration.id, "ep2", "v1", "tok2");
        watcher
            .registration
            .set_filters(vec![("kp1/v1/cex/tok/#".into(), QoS::AtMostOnce)]);
        let tokens = vec![("v1".to_owned(), "tok".to_owned())];
        let n = hub.push(
            "ep1",
            &tokens,
            |avn, t| format!("kp1/{avn}/cex/{t}/command/reboot/status"),
            &Bytes::from_static(b"[]"),
        );
        assert_eq!(n, 2);
        let got = user.inbox.try_recv().unwrap();
        assert_eq!(got.topic, "kp1/v1/cex/tok/command/reboot/status");
        assert_eq!(got.qos, QoS::AtLeastOnce);
        assert_eq!(watcher.inbox.try_recv().unwrap().qos, QoS::AtMostOnce);
        assert!(other.inbox.try_recv().is_err());
    }

    #[tokio::test]
    async fn cutting_a_token_or_identity_fires_only_the_matching_sessions() {
        let hub = Hub::new();
        let a = hub.register("a", Identity::Basic("alice".into()));
        let b = hub.register("b", Identity::Basic("bob".into()));
        hub.record_use(a.registration.id, "ep1", "v1", "tok1");
        assert_eq!(hub.cut_token("tok1"), 1);
        assert!(a.kill.is_cancelled());
        assert!(!b.kill.is_cancelled());
        assert_eq!(hub.cut_identity(&Identity::Basic("bob".into())), 1);
        assert!(b.kill.is_cancelled());
    }

    #[test]
    fn a_second_connect_with_the_same_client_id_ends_the_first() {
        let hub = Hub::new();
        let first = attach(&hub, "dev");
        let second = attach(&hub, "dev");
        assert!(first.kill.is_cancelled());
        assert!(!hub.client_gone("dev", second.registration.id));
        drop(first);
        assert!(hub.client_gone("dev", second.registration.id));
        assert_eq!(hub.sessions(), 1);
    }

    #[test]
    fn parked_sessions_are_taken_once() {
        let hub = Hub::new();
        hub.park("dev", Session::new());
        assert!(hub.take_parked("dev").is_some());
        assert!(hub.take_parked("dev").is_none());
    }
}
