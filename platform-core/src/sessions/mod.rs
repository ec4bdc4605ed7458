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
//! Back-pressure is per connection: messages go through a bounded queue ([`Inbox`]);
//! a session that does not keep up loses copies (counted, logged), never stalls others.

mod inbox;
mod watch;
pub use inbox::Inbox;
use watch::Watchers;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
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

/// What a scoped credential may act for and see: application versions (resolved from the
/// credential's applications when the client connects) and, optionally, only some endpoint
/// tokens. A session without one (`None`) is unbound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    pub versions: HashSet<String>,
    /// Empty: any endpoint of those versions.
    pub tokens: HashSet<String>,
}

impl Reach {
    pub fn allows(&self, app_version: &str, token: &str) -> bool {
        self.versions.contains(app_version)
            && (self.tokens.is_empty() || self.tokens.contains(token))
    }
}

#[derive(Debug)]
struct Entry {
    client_id: String,
    identity: Identity,
    /// The credential's scope (`None`: unbound).
    reach: Option<Arc<Reach>>,
    filters: Vec<(String, QoS)>,
    /// endpoint id → (app version, token) this session used for it.
    used: HashMap<String, (String, String)>,
    /// (endpoint id, extension instance) this session asked not to be pushed to
    /// (`"observe": false`), until it observes again.
    unobserved: HashSet<(String, String)>,
    inbox: Arc<Inbox>,
    kill: CancellationToken,
}

impl Entry {
    /// May this session receive a copy of a message on `topic` it subscribed to?
    /// Authenticated sessions may watch any endpoint (Kaa's tutorials watch replies with
    /// `mosquitto_sub`); an anonymous session proves nothing but the tokens it used, so it
    /// sees only topics of those tokens.
    /// A scoped credential sees only topics of the application versions (and tokens) it
    /// is bound to.
    fn may_watch(&self, topic: &str) -> bool {
        let mut parts = topic.split('/');
        let (avn, token) = (parts.nth(1), parts.nth(1));
        if let Some(reach) = &self.reach {
            if !reach.allows(avn.unwrap_or(""), token.unwrap_or("")) {
                return false;
            }
        }
        if self.identity != Identity::Anonymous {
            return true;
        }
        token.is_some_and(|t| self.used.values().any(|(_, used)| used == t))
    }
}

#[derive(Debug, Default)]
struct State {
    live: HashMap<SessionId, Entry>,
    parked: HashMap<String, (Instant, Session)>,
    /// The live sessions' filters, by token (see [`watch`]).
    watchers: Watchers,
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
    pub inbox: Arc<Inbox>,
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
        self.register_scoped(client_id, identity, None)
    }

    /// [`Hub::register`] for a client whose credential is bound to `reach`.
    pub fn register_scoped(
        &self,
        client_id: &str,
        identity: Identity,
        reach: Option<Reach>,
    ) -> Attached {
        let inbox = Inbox::new(OUTBOUND_CAPACITY, OUTBOUND_MAX_BYTES);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let kill = CancellationToken::new();
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
                reach: reach.map(Arc::new),
                filters: Vec::new(),
                used: HashMap::new(),
                unobserved: HashSet::new(),
                inbox: inbox.clone(),
                kill: kill.clone(),
            },
        );
        Attached {
            registration: Registration {
                hub: self.clone(),
                id,
            },
            inbox,
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
        let Err(msg) = e.inbox.try_send(msg) else {
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
        for id in st.watchers.candidates(topic) {
            if id == except {
                continue;
            }
            let Some(e) = st.live.get(&id) else {
                continue;
            };
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

    /// Pushes a server message of extension `instance` for `endpoint_id` (docs/protocol.md
    /// §2): at QoS 1 to every live session that used the endpoint (on the topic of the
    /// token it used), and to every other session subscribed to the topic of one of
    /// `tokens` (app version, token) — except sessions that said `"observe": false` for
    /// this endpoint and instance. `topic_for(app version, token)` builds the topic.
    /// Returns how many sessions got it.
    pub fn push(
        &self,
        endpoint_id: &str,
        instance: &str,
        tokens: &[(String, String)],
        topic_for: impl Fn(&str, &str) -> String,
        payload: &Bytes,
    ) -> usize {
        let st = self.lock();
        let mut sent = 0;
        let key = (endpoint_id.to_owned(), instance.to_owned());
        for e in st.live.values() {
            if e.unobserved.contains(&key) {
                continue;
            }
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

    /// May `session` act for `token` of `app_version`? (Unknown sessions: no.)
    pub fn allows(&self, session: SessionId, app_version: &str, token: &str) -> bool {
        self.lock().live.get(&session).is_some_and(|e| {
            e.reach
                .as_ref()
                .is_none_or(|r| r.allows(app_version, token))
        })
    }

    /// Records that `session` used `token` (of `app_version`) for `endpoint_id`. True when
    /// this is the session's first use of that endpoint (or of that token for it): the
    /// moment to hand it what waited while it was away.
    pub fn record_use(
        &self,
        session: SessionId,
        endpoint_id: &str,
        app_version: &str,
        token: &str,
    ) -> bool {
        let mut st = self.lock();
        let Some(e) = st.live.get_mut(&session) else {
            return false;
        };
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
        fresh
    }

    /// Honours a session's `"observe"` flag for one endpoint and extension instance:
    /// `false` stops pushes to it until it sends `true` again.
    pub fn set_observe(
        &self,
        session: SessionId,
        endpoint_id: &str,
        instance: &str,
        observe: bool,
    ) {
        if let Some(e) = self.lock().live.get_mut(&session) {
            let key = (endpoint_id.to_owned(), instance.to_owned());
            if observe {
                e.unobserved.remove(&key);
            } else {
                e.unobserved.insert(key);
            }
        }
    }

    /// Sends one message (QoS 1) to one session, unless it said `"observe": false` for
    /// this endpoint and extension instance. True when it was queued.
    pub fn send_to(
        &self,
        session: SessionId,
        endpoint_id: &str,
        instance: &str,
        topic: String,
        payload: Bytes,
    ) -> bool {
        let st = self.lock();
        let Some(e) = st.live.get(&session) else {
            return false;
        };
        if e.unobserved
            .contains(&(endpoint_id.to_owned(), instance.to_owned()))
        {
            return false;
        }
        let msg = Outbound {
            topic,
            qos: QoS::AtLeastOnce,
            payload,
        };
        self.send(e, msg)
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

    /// Endpoints some live session has used, with how many sessions use each.
    pub fn online_endpoints(&self) -> std::collections::HashMap<String, usize> {
        let mut out = std::collections::HashMap::new();
        for e in self.lock().live.values() {
            for id in e.used.keys() {
                *out.entry(id.clone()).or_insert(0) += 1;
            }
        }
        out
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
        let mut guard = self.hub.lock();
        let st = &mut *guard;
        if let Some(e) = st.live.get_mut(&self.id) {
            st.watchers
                .remove(self.id, e.filters.iter().map(|(f, _)| f.as_str()));
            st.watchers
                .add(self.id, filters.iter().map(|(f, _)| f.as_str()));
            e.filters = filters;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut st = self.hub.lock();
        if let Some(e) = st.live.remove(&self.id) {
            st.watchers
                .remove(self.id, e.filters.iter().map(|(f, _)| f.as_str()));
        }
    }
}

#[cfg(test)]
mod tests;
