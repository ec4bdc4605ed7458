//! EPL, endpoint lifecycle: which endpoints are connected (docs/protocol.md §6).
//!
//! An endpoint is *connected* when a live session first uses its token, *disconnected*
//! when the last such session closes, or when no session used it for the idle timeout.
//! Each transition writes the metadata `connected` (bool) and `connectivity_ts`
//! (RFC 3339), a point of the time series `connectivity` (1 / 0), and a 9/ELCE event on
//! the bus. [`Presence`] is the pure bookkeeping; [`Epl`] applies its transitions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::bus::{Event, EventBus};
use crate::sessions::SessionId;
use crate::store::{now_ms, StoreHandle};
use crate::{epr, tsdb};

/// Name of the connectivity time series.
pub const CONNECTIVITY_SERIES: &str = "connectivity";

/// Metadata key names and the idle timeout (configurable).
#[derive(Debug, Clone)]
pub struct EplConfig {
    pub connected_key: String,
    pub connectivity_ts_key: String,
    /// `None`: endpoints stay connected while their session lives.
    pub idle_timeout: Option<Duration>,
}

impl Default for EplConfig {
    fn default() -> Self {
        Self {
            connected_key: "connected".into(),
            connectivity_ts_key: "connectivity_ts".into(),
            idle_timeout: Some(Duration::from_secs(600)),
        }
    }
}

/// Which sessions use which endpoints, and when they last did (pure). Every operation
/// a request makes is O(1) whatever the number of sessions (a per-endpoint count of its
/// sessions is kept beside the per-session map).
#[derive(Debug, Default)]
pub struct Presence {
    /// session → endpoint id → (app version, last use)
    uses: HashMap<SessionId, HashMap<String, (String, Instant)>>,
    /// endpoint id → how many sessions use it (no entry: none)
    users: HashMap<String, usize>,
}

impl Presence {
    fn users(&self, endpoint_id: &str) -> usize {
        self.users.get(endpoint_id).copied().unwrap_or(0)
    }

    /// One session fewer uses `endpoint_id`; true when none is left.
    fn release(&mut self, endpoint_id: &str) -> bool {
        match self.users.get_mut(endpoint_id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.users.remove(endpoint_id);
                true
            }
            None => false,
        }
    }

    /// Records a use; true when the endpoint just became connected.
    pub fn use_endpoint(
        &mut self,
        session: SessionId,
        endpoint_id: &str,
        app_version: &str,
        now: Instant,
    ) -> bool {
        let used = self.uses.entry(session).or_default();
        // The hot path (a session sending again for an endpoint it uses): no allocation.
        if let Some((avn, last)) = used.get_mut(endpoint_id) {
            *last = now;
            if avn != app_version {
                app_version.clone_into(avn);
            }
            return false;
        }
        used.insert(endpoint_id.to_owned(), (app_version.to_owned(), now));
        let n = self.users.entry(endpoint_id.to_owned()).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// A session ended: the endpoints (with app version) that just became disconnected.
    pub fn close_session(&mut self, session: SessionId) -> Vec<(String, String)> {
        let Some(used) = self.uses.remove(&session) else {
            return Vec::new();
        };
        used.into_iter()
            .filter(|(ep, _)| self.release(ep))
            .map(|(ep, (avn, _))| (ep, avn))
            .collect()
    }

    /// Whether a session here uses the endpoint.
    pub fn holds(&self, endpoint_id: &str) -> bool {
        self.users(endpoint_id) > 0
    }

    /// The endpoints of `asked` that a session here uses.
    pub fn held(&self, asked: &[String]) -> Vec<String> {
        asked.iter().filter(|e| self.holds(e)).cloned().collect()
    }

    /// Forgets every session (the core is stopping): every endpoint that was connected,
    /// once each, sorted.
    pub fn close_all(&mut self) -> Vec<(String, String)> {
        self.users.clear();
        let mut all: Vec<(String, String)> = self
            .uses
            .drain()
            .flat_map(|(_, used)| used.into_iter().map(|(ep, (avn, _))| (ep, avn)))
            .collect();
        all.sort();
        all.dedup_by(|a, b| a.0 == b.0);
        all
    }

    /// Forgets uses older than `idle`: the endpoints that just became disconnected.
    pub fn expire(&mut self, now: Instant, idle: Duration) -> Vec<(String, String)> {
        let mut stale = Vec::new();
        for m in self.uses.values_mut() {
            m.retain(|ep, (avn, last)| {
                let keep = now.duration_since(*last) < idle;
                if !keep {
                    stale.push((ep.clone(), avn.clone()));
                }
                keep
            });
        }
        // Each stale use is one session fewer; an endpoint goes once its last one does.
        let mut gone: Vec<(String, String)> = stale
            .into_iter()
            .filter(|(ep, _)| self.release(ep))
            .collect();
        gone.sort();
        gone
    }
}

/// Applies connectivity transitions to storage and the bus; cheap to clone.
#[derive(Debug, Clone)]
pub struct Epl {
    presence: Arc<Mutex<Presence>>,
    store: StoreHandle,
    bus: Arc<dyn EventBus>,
    config: EplConfig,
}

impl Epl {
    pub fn new(store: StoreHandle, bus: Arc<dyn EventBus>, config: EplConfig) -> Self {
        Self {
            presence: Arc::default(),
            store,
            bus,
            config,
        }
    }

    fn presence(&self) -> std::sync::MutexGuard<'_, Presence> {
        self.presence.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Which of `asked` a live session here uses (another replica asking).
    pub fn held_here(&self, asked: &[String]) -> Vec<String> {
        self.presence().held(asked)
    }

    /// A session used an endpoint's token.
    pub async fn touch(&self, session: SessionId, endpoint_id: &str, app_version: &str) {
        let became =
            self.presence()
                .use_endpoint(session, endpoint_id, app_version, Instant::now());
        if became {
            // Boxed: rare, and kept out of every request's future.
            Box::pin(self.transition(vec![(endpoint_id.to_owned(), app_version.to_owned())], true))
                .await;
        }
    }

    /// A session closed: every endpoint it leaves disconnected goes in one event (a
    /// gateway's session carries many endpoints).
    pub async fn session_closed(&self, session: SessionId) {
        let gone = self.presence().close_session(session);
        self.let_go(gone).await;
    }

    /// The core is stopping: the endpoints of the sessions it drops are disconnected, in
    /// one event (call once the listeners have stopped).
    pub async fn close_all(&self) {
        let gone = self.presence().close_all();
        log::debug!(
            "epl: core stopping, {} endpoint(s) still connected",
            gone.len()
        );
        self.let_go(gone).await;
    }

    /// Disconnects endpoints idle past the timeout, and those left connected by replicas
    /// found gone; call periodically.
    pub async fn sweep(&self) {
        if let Some(idle) = self.config.idle_timeout {
            let gone = self.presence().expire(Instant::now(), idle);
            self.let_go(gone).await;
        }
        let orphans: Vec<(String, String)> = {
            let found = self.bus.orphans().await;
            let p = self.presence();
            found.into_iter().filter(|(id, _)| !p.holds(id)).collect()
        };
        if !orphans.is_empty() {
            log::info!("epl: {orphans:?} were held by a replica that is gone");
            self.transition(orphans, false).await;
        }
    }

    /// Another replica announced a connectivity change: the registry here follows it
    /// (no event), except that an endpoint still held here is announced connected again.
    pub async fn remote_change(&self, endpoints: Vec<(String, String)>, connected: bool) {
        let (held, rest): (Vec<_>, Vec<_>) = {
            let p = self.presence();
            endpoints.into_iter().partition(|(id, _)| p.holds(id))
        };
        if connected {
            self.record(rest, true, true).await;
        } else {
            self.record(rest, false, true).await;
            if !held.is_empty() {
                log::info!("epl: {held:?} announced disconnected elsewhere but held here");
                self.announce(held, true);
            }
        }
    }

    /// Endpoints this replica stopped holding: disconnected unless another replica holds
    /// them (asked over the bus).
    async fn let_go(&self, gone: Vec<(String, String)>) {
        if gone.is_empty() {
            return;
        }
        let ids = gone.iter().map(|(id, _)| id.clone()).collect();
        let elsewhere = self.bus.held_elsewhere(ids).await;
        let gone: Vec<_> = gone
            .into_iter()
            .filter(|(id, _)| !elsewhere.contains(id))
            .collect();
        if !elsewhere.is_empty() {
            log::debug!("epl: {elsewhere:?} stay connected through another replica");
        }
        self.transition(gone, false).await;
    }

    async fn transition(&self, endpoints: Vec<(String, String)>, connected: bool) {
        if endpoints.is_empty() {
            return;
        }
        self.record(endpoints.clone(), connected, false).await;
        self.announce(endpoints, connected);
    }

    /// Writes the connectivity metadata and time-series point of `endpoints`.
    /// `known_only`: endpoints this registry does not have are skipped (another
    /// replica's), instead of being an error.
    async fn record(&self, endpoints: Vec<(String, String)>, connected: bool, known_only: bool) {
        if endpoints.is_empty() {
            return;
        }
        let ts = now_ms();
        let mut meta = Map::new();
        meta.insert(self.config.connected_key.clone(), Value::Bool(connected));
        meta.insert(
            self.config.connectivity_ts_key.clone(),
            Value::String(crate::store::rfc3339_ms(ts)),
        );
        let ids: Vec<String> = endpoints.iter().map(|(id, _)| id.clone()).collect();
        // A grouped append: the connectivity of many clients connecting at once shares
        // the commits of their data (one fsync per group, not two per endpoint), and it
        // is one commit: whoever sees the new state also finds its point.
        let written = self
            .store
            .call_grouped(move |c| {
                let point = tsdb::DataPoint {
                    series: CONNECTIVITY_SERIES.into(),
                    ts_ms: ts,
                    value: if connected { 1.0 } else { 0.0 },
                };
                for ep in &ids {
                    if known_only && epr::endpoint_app_version(c, ep)?.is_none() {
                        continue;
                    }
                    tsdb::append_points(c, ep, std::slice::from_ref(&point))?;
                    epr::write_metadata_in(c, ep, &meta, false, &[])?;
                }
                Ok(())
            })
            .await;
        let what = if connected {
            "connected"
        } else {
            "disconnected"
        };
        if let Err(e) = written {
            log::error!("epl: {what} state of {endpoints:?} not recorded: {e}");
        }
        log::debug!("epl: {endpoints:?} {what}");
    }

    fn announce(&self, endpoints: Vec<(String, String)>, connected: bool) {
        let timestamp_ms = now_ms();
        self.bus.publish(if connected {
            Event::Connected {
                endpoints,
                timestamp_ms,
            }
        } else {
            Event::Disconnected {
                endpoints,
                timestamp_ms,
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_connected_while_any_session_uses_it() {
        let mut p = Presence::default();
        let t = Instant::now();
        assert!(p.use_endpoint(1, "ep", "v", t));
        assert!(
            !p.use_endpoint(1, "ep", "v", t),
            "second use by the same session"
        );
        assert!(
            !p.use_endpoint(2, "ep", "v", t),
            "already connected through session 1"
        );
        assert_eq!(p.close_session(1), vec![]);
        assert_eq!(p.close_session(2), vec![("ep".into(), "v".into())]);
        assert_eq!(p.close_session(2), vec![], "closing twice changes nothing");
    }

    #[test]
    fn closing_all_lists_each_connected_endpoint_once() {
        let mut p = Presence::default();
        let now = Instant::now();
        p.use_endpoint(1, "a", "v", now);
        p.use_endpoint(2, "a", "v", now);
        p.use_endpoint(2, "b", "v", now);
        assert_eq!(
            p.close_all(),
            vec![("a".into(), "v".into()), ("b".into(), "v".into())]
        );
        assert!(p.close_all().is_empty());
        assert!(p.close_session(1).is_empty());
    }

    #[test]
    fn idle_endpoints_disconnect_but_busy_ones_stay() {
        let mut p = Presence::default();
        let t0 = Instant::now();
        p.use_endpoint(1, "quiet", "v", t0);
        p.use_endpoint(1, "busy", "v", t0);
        p.use_endpoint(1, "busy", "v", t0 + Duration::from_secs(50));
        let gone = p.expire(t0 + Duration::from_secs(61), Duration::from_secs(60));
        assert_eq!(gone, vec![("quiet".into(), "v".into())]);
        assert!(
            p.use_endpoint(1, "quiet", "v", t0 + Duration::from_secs(70)),
            "a new use reconnects"
        );
    }

    #[test]
    fn an_endpoint_idle_in_every_session_disconnects_once_and_a_live_use_keeps_it() {
        let mut p = Presence::default();
        let t0 = Instant::now();
        for session in 1..=3 {
            p.use_endpoint(session, "shared", "v", t0);
        }
        p.use_endpoint(4, "kept", "v", t0);
        p.use_endpoint(5, "kept", "v", t0 + Duration::from_secs(50));
        let gone = p.expire(t0 + Duration::from_secs(61), Duration::from_secs(60));
        assert_eq!(gone, vec![("shared".into(), "v".into())]);
        assert!(p.holds("kept") && !p.holds("shared"));
        assert_eq!(p.close_session(4), vec![], "session 5 still uses it");
        assert_eq!(p.close_session(5), vec![("kept".into(), "v".into())]);
    }
}
