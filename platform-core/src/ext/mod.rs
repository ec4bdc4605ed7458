//! The extensions behind KPC: maps an extension instance to its kind and runs it.
//!
//! Each of `dcx`, `epmx`, `cmx`, `cex` holds one extension's behaviour: its request
//! parsing (pure functions from resource path and payload to a typed request, with unit
//! tests) and its storage operations (SQL functions that take a `rusqlite::Connection`
//! and run on the store thread). This module only dispatches: [`Extensions::handle`]
//! parses with the extension's parser, runs its storage operation on the store thread,
//! shapes the success payload (docs/protocol.md §3), and originates server pushes (new
//! commands, new configurations) through the session hub. Every extension call has a
//! deadline; past it the request fails with 504.

pub mod bcx;
pub mod cex;
pub mod cmx;
pub mod dcx;
pub mod dcx_json;
mod deliver;
pub mod epmx;
pub mod remote;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::bus::nats::NatsBus;
use crate::bus::EventBus;
use crate::epr;
use crate::kp1::{Kp1Error, Kp1TopicRef};
use crate::sessions::{Hub, SessionId};
use crate::store::{now_ms, StoreError, StoreHandle};
use crate::tsdb;
use cex::CexRequest;
use cmx::CmxRequest;
use epmx::EpmxRequest;

/// Default deadline of one extension call (over it: 504).
pub const DEFAULT_EXTENSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-key metadata restrictions for clients (EPMX); the REST API is not restricted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpmxPolicy {
    /// Keys clients may read but not write or delete (403).
    pub read_only: Vec<String>,
    /// Keys clients can neither read nor write (left out of reads; writes get 403).
    pub hidden: Vec<String>,
}

impl EpmxPolicy {
    fn protected(&self, key: &str) -> bool {
        self.read_only.iter().chain(&self.hidden).any(|k| k == key)
    }
}

/// The kinds of extension this core implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionKind {
    Dcx,
    Epmx,
    Cmx,
    Cex,
    Bcx,
    /// An extension service elsewhere, reached over NATS with 4/ESP.
    External,
}

impl ExtensionKind {
    /// Every kind, with its default instance name.
    pub const ALL: [(Self, &'static str); 5] = [
        (Self::Dcx, "dcx"),
        (Self::Epmx, "epmx"),
        (Self::Cmx, "cmx"),
        (Self::Cex, "cex"),
        (Self::Bcx, "bcx"),
    ];

    /// The kind served by a default instance name (`dcx`, `epmx`, `cmx`, `cex`).
    pub fn for_default_instance(instance: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(_, name)| *name == instance)
            .map(|(k, _)| *k)
    }

    /// This kind's default instance name.
    pub fn default_instance(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(k, _)| *k == self)
            .map_or("", |(_, n)| n)
    }
}

/// Is `s` a valid extension instance name (`^[a-z0-9_-]+$`, one topic level)?
pub fn is_valid_instance_name(s: &str) -> bool {
    crate::kp1::is_valid_application_name(s)
}

fn storage(e: StoreError) -> Kp1Error {
    log::error!("extension storage failure: {e}");
    Kp1Error::internal()
}

/// The extensions, shared by KPC and the REST API; cheap to clone.
#[derive(Debug, Clone)]
pub struct Extensions {
    pub store: StoreHandle,
    pub hub: Hub,
    /// Instance name → kind: the default instances plus the configured ones.
    instances: Arc<HashMap<String, ExtensionKind>>,
    epmx: EpmxPolicy,
    /// Where binary uploads go and how much of them (BCX).
    pub bcx: bcx::BcxConfig,
    timeout: Duration,
    /// IDs of commands that just got their result (REST API waiters listen).
    results: broadcast::Sender<i64>,
    /// Where events go (9/ELCE lifecycle from the REST API, 13/DSTP and 14/TSTP from DCX).
    pub bus: Arc<dyn EventBus>,
    /// The NATS bus, when configured: external instances are reached through it.
    pub remote: Option<Arc<NatsBus>>,
    /// Whose registry this replica keeps (its own unless `[core.nats] registry_owner`).
    pub registry: crate::mirror::Registry,
    /// DCX's series numbers, kept between appends (used on the store thread only).
    series: tsdb::SharedSeries,
}

impl Extensions {
    /// `extra`: more instances (name, kind) besides the default `dcx`, `epmx`, `cmx`, `cex`
    /// (an external one may take a default name over).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: StoreHandle,
        hub: Hub,
        epmx: EpmxPolicy,
        bcx: bcx::BcxConfig,
        timeout: Duration,
        extra: &[(String, ExtensionKind)],
        bus: Arc<dyn EventBus>,
        remote: Option<Arc<NatsBus>>,
    ) -> Self {
        let mut instances: HashMap<String, ExtensionKind> = ExtensionKind::ALL
            .iter()
            .map(|(k, n)| ((*n).to_owned(), *k))
            .collect();
        instances.extend(extra.iter().cloned());
        Self {
            store,
            hub,
            instances: Arc::new(instances),
            epmx,
            bcx,
            timeout,
            results: broadcast::channel(1024).0,
            bus,
            remote,
            registry: crate::mirror::Registry::Own,
            series: tsdb::SharedSeries::default(),
        }
    }

    /// The deadline of one request to an extension (also a provider's answer).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The kind an instance name is served by, if it is one of ours.
    pub fn kind_of(&self, instance: &str) -> Option<ExtensionKind> {
        self.instances.get(instance).copied()
    }

    /// Listens for command results (command IDs).
    pub fn subscribe_results(&self) -> broadcast::Receiver<i64> {
        self.results.subscribe()
    }

    /// Runs one request with the deadline; `Ok(payload)` is the success payload.
    /// `session`: the MQTT session that asked (none over HTTP), whose `"observe"` flags
    /// the request may set.
    pub async fn handle(
        &self,
        t: &Kp1TopicRef<'_>,
        kind: ExtensionKind,
        endpoint_id: Arc<str>,
        payload: &[u8],
        session: Option<SessionId>,
    ) -> Result<Vec<u8>, Kp1Error> {
        // Every kind but DCX (the hot path) runs boxed: a request's future is then the
        // size of a data sample's, which is what thousands of requests in flight are.
        if kind == ExtensionKind::External {
            return Box::pin(remote::request(
                self.remote.as_deref(),
                t,
                endpoint_id.to_string(),
                payload,
                self.timeout,
            ))
            .await;
        }
        let outcome = if kind == ExtensionKind::Dcx {
            tokio::time::timeout(self.timeout, self.dcx(t, endpoint_id, payload)).await
        } else {
            let work = Box::pin(self.run(t, kind, endpoint_id.to_string(), payload, session));
            tokio::time::timeout(self.timeout, work).await
        };
        match outcome {
            Ok(r) => r,
            Err(_) => {
                log::warn!(
                    "extension {kind:?} did not answer within {:?}: 504",
                    self.timeout
                );
                Err(Kp1Error::new(
                    504,
                    format!("extension timed out after {} ms", self.timeout.as_millis()),
                ))
            }
        }
    }

    /// DCX: stores a batch of data samples (after the commit that holds them) and
    /// announces them.
    async fn dcx(
        &self,
        t: &Kp1TopicRef<'_>,
        endpoint_id: Arc<str>,
        payload: &[u8],
    ) -> Result<Vec<u8>, Kp1Error> {
        let (instance, resource) = (t.extension, t.resource);
        let store = &self.store;
        let now = now_ms();
        let samples = if resource == "json" {
            dcx::parse_json(payload, now)?
        } else if let Some(metric) = resource.strip_prefix("plain/") {
            vec![dcx::parse_plain(metric, payload, now)?]
        } else {
            return Err(Kp1Error::not_found(format!(
                "unknown dcx resource {resource:?}"
            )));
        };
        if samples.is_empty() {
            return Ok(Vec::new());
        }
        // Events are built only when someone takes them (the hot path).
        let events = self
            .bus
            .wants_data()
            .then(|| dcx::events(instance, &endpoint_id, t.app_version, now, &samples));
        let (known, generation) = (self.series.clone(), store.clone());
        let settle_due = store
            .call_grouped(move |c| {
                let mut known = known.lock(generation.generation());
                tsdb::append_samples(c, &mut known, &endpoint_id, now, &samples)
            })
            .await
            .map_err(storage)?;
        if settle_due {
            // No request waits for it; it changes nothing cached (no series, no token).
            let store = store.clone();
            tokio::spawn(async move {
                let settled = store
                    .call_outside_registry(|c| {
                        tsdb::settle_logged(c);
                        Ok(())
                    })
                    .await;
                if let Err(e) = settled {
                    log::warn!("core store: recent time series points not moved now: {e}");
                }
            });
        }
        // After the commit: what the events announce is stored.
        for ev in events.into_iter().flatten() {
            self.bus.publish(ev);
        }
        Ok(Vec::new())
    }

    async fn run(
        &self,
        t: &Kp1TopicRef<'_>,
        kind: ExtensionKind,
        endpoint_id: String,
        payload: &[u8],
        session: Option<SessionId>,
    ) -> Result<Vec<u8>, Kp1Error> {
        let (instance, resource) = (t.extension, t.resource);
        let store = &self.store;
        let inst = instance.to_owned();
        let observe = |observe: Option<bool>| {
            if let (Some(s), Some(o)) = (session, observe) {
                self.hub.set_observe(s, &endpoint_id, instance, o);
            }
        };
        match kind {
            ExtensionKind::Dcx => self.dcx(t, endpoint_id.into(), payload).await,
            ExtensionKind::Epmx => {
                self.epmx(endpoint_id, epmx::parse(resource, payload)?)
                    .await
            }
            ExtensionKind::Cmx => match cmx::parse(resource, payload)? {
                CmxRequest::Config {
                    name,
                    config_id,
                    observe: flag,
                } => {
                    observe(flag);
                    let current = store
                        .call(move |c| cmx::effective(c, &endpoint_id, &inst, &name))
                        .await
                        .map_err(storage)?
                        .map(|(id, body, _)| (id, body));
                    Ok(cmx::response(current, config_id.as_deref())
                        .to_string()
                        .into_bytes())
                }
                CmxRequest::Applied {
                    name,
                    config_id,
                    status_code,
                    reason_phrase,
                } => {
                    if status_code >= 300 {
                        log::warn!(
                            "cmx: endpoint {endpoint_id} could not apply configuration {config_id:?}: {status_code} {}",
                            reason_phrase.as_deref().unwrap_or("")
                        );
                    }
                    store
                        .call(move |c| {
                            cmx::record_applied(
                                c,
                                &endpoint_id,
                                &inst,
                                &name,
                                &config_id,
                                status_code,
                                reason_phrase.as_deref(),
                                now_ms(),
                            )
                        })
                        .await
                        .map_err(storage)?;
                    Ok(Vec::new())
                }
            },
            ExtensionKind::Cex => match cex::parse(resource, payload)? {
                CexRequest::Commands {
                    command_type,
                    observe: flag,
                } => {
                    observe(flag);
                    let pending = store
                        .call(move |c| {
                            cex::take_pending(c, &endpoint_id, &inst, &command_type, now_ms())
                        })
                        .await
                        .map_err(storage)?;
                    Ok(cex::commands_payload(&pending))
                }
                CexRequest::Results {
                    command_type,
                    results,
                } => {
                    let closed = store
                        .call(move |c| {
                            cex::store_results(
                                c,
                                &endpoint_id,
                                &inst,
                                &command_type,
                                &results,
                                now_ms(),
                            )
                        })
                        .await
                        .map_err(storage)?;
                    for id in closed {
                        // Nobody waiting is fine.
                        let _ = self.results.send(id);
                    }
                    Ok(Vec::new())
                }
            },
            ExtensionKind::Bcx => {
                if resource != "token" {
                    return Err(Kp1Error::not_found(format!(
                        "unknown bcx resource {resource:?} (only \"token\")"
                    )));
                }
                let token = store
                    .call(move |c| bcx::issue_token(c, &endpoint_id, now_ms()))
                    .await
                    .map_err(storage)?;
                Ok(bcx::token_payload(&token))
            }
            ExtensionKind::External => {
                remote::request(
                    self.remote.as_deref(),
                    t,
                    endpoint_id,
                    payload,
                    self.timeout,
                )
                .await
            }
        }
    }

    async fn epmx(&self, endpoint_id: String, req: EpmxRequest) -> Result<Vec<u8>, Kp1Error> {
        let store = &self.store;
        let policy = self.epmx.clone();
        let forbidden = |k: &str| {
            Kp1Error::forbidden(format!("metadata key {k:?} is not writable by endpoints"))
        };
        match req {
            EpmxRequest::GetKeys => {
                let m = store
                    .call(move |c| epr::metadata(c, &endpoint_id, None))
                    .await
                    .map_err(storage)?;
                let keys: Vec<&String> = m.keys().filter(|k| !policy.hidden.contains(k)).collect();
                Ok(serde_json::to_vec(&keys).unwrap_or_default())
            }
            EpmxRequest::Get(keys) => {
                let mut m = store
                    .call(move |c| epr::metadata(c, &endpoint_id, keys.as_deref()))
                    .await
                    .map_err(storage)?;
                m.retain(|k, _| !policy.hidden.contains(k));
                Ok(serde_json::to_vec(&Value::Object(m)).unwrap_or_default())
            }
            EpmxRequest::Update {
                values,
                replace_all,
            } => {
                if let Some(k) = values.keys().find(|k| policy.protected(k)) {
                    return Err(forbidden(k));
                }
                // A full replace keeps the keys endpoints may not touch.
                let keep: Vec<String> = policy
                    .read_only
                    .iter()
                    .chain(&policy.hidden)
                    .cloned()
                    .collect();
                store
                    .call(move |c| {
                        epr::write_metadata_keeping(c, &endpoint_id, &values, replace_all, &keep)
                    })
                    .await
                    .map_err(storage)?;
                Ok(Vec::new())
            }
            EpmxRequest::DeleteKeys(keys) => {
                if let Some(k) = keys.iter().find(|k| policy.protected(k)) {
                    return Err(forbidden(k));
                }
                store
                    .call(move |c| epr::delete_metadata_keys(c, &endpoint_id, &keys))
                    .await
                    .map_err(storage)?;
                Ok(Vec::new())
            }
        }
    }

    /// Creates a command for an endpoint and pushes it to the endpoint's live sessions
    /// (docs/protocol.md §2). Returns the command ID.
    pub async fn send_command(
        &self,
        endpoint_id: &str,
        instance: &str,
        command_type: &str,
        payload: Value,
        ttl_ms: i64,
    ) -> Result<i64, StoreError> {
        let inst = instance.to_owned();
        let (ep, ty, body) = (
            endpoint_id.to_owned(),
            command_type.to_owned(),
            payload.clone(),
        );
        let (id, tokens) = self
            .store
            .call(move |c| {
                let id = cex::create(c, &ep, &inst, &ty, &body, now_ms(), ttl_ms)?;
                Ok((id, epr::push_tokens(c, &ep)?))
            })
            .await?;
        let reached = self.push(
            endpoint_id,
            instance,
            &tokens,
            &format!("{instance}: command {id} ({command_type})"),
            |avn, token| format!("kp1/{avn}/{instance}/{token}/command/{command_type}/status"),
            cex::commands_payload(&[(id, payload)]),
        );
        if reached > 0 {
            self.store
                .call(move |c| cex::mark_delivered(c, &[id], now_ms()))
                .await?;
        }
        Ok(id)
    }

    /// Pushes `payload` to the live sessions of `endpoint_id` (docs/protocol.md §2) on the
    /// topic `topic(app version, token)`; returns how many sessions it reached.
    fn push(
        &self,
        endpoint_id: &str,
        instance: &str,
        tokens: &[(String, String)],
        what: &str,
        topic: impl Fn(&str, &str) -> String,
        payload: Vec<u8>,
    ) -> usize {
        let reached = self
            .hub
            .push(endpoint_id, instance, tokens, topic, &Bytes::from(payload));
        log::debug!("{what} for {endpoint_id} pushed to {reached} session(s)");
        reached
    }

    /// Sets an endpoint's configuration and, when it changed, pushes it to the endpoint's
    /// live sessions. Returns the configuration ID and whether it changed.
    pub async fn put_config(
        &self,
        endpoint_id: &str,
        instance: &str,
        name: &str,
        body: Value,
    ) -> Result<(String, bool), StoreError> {
        let (ep, n, b) = (endpoint_id.to_owned(), name.to_owned(), body.clone());
        let inst = instance.to_owned();
        let (config_id, changed, tokens) = self
            .store
            .call(move |c| {
                let (id, changed) = cmx::put(c, &ep, &inst, &n, &b, now_ms())?;
                Ok((id, changed, epr::push_tokens(c, &ep)?))
            })
            .await?;
        if changed {
            let suffix = if name.is_empty() {
                String::new()
            } else {
                format!("/{name}")
            };
            self.push(
                endpoint_id,
                instance,
                &tokens,
                &format!("{instance}: configuration {config_id}"),
                |avn, token| format!("kp1/{avn}/{instance}/{token}/config/json{suffix}/status"),
                serde_json::json!({"configId": config_id, "config": body})
                    .to_string()
                    .into_bytes(),
            );
        }
        Ok((config_id, changed))
    }
}

#[cfg(test)]
mod tests;
