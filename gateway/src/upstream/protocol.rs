//! The gateway's 1/KP client state (pure: no I/O, no tokio; time and randomness are
//! passed in). The event loop in `session.rs` tells it what happened — connected, a
//! message arrived, batches were leased, a command finished, a tick — and carries out
//! the [`Effect`]s it returns. Every topic is parsed once with platform-core's codec and
//! dispatched on its extension instance, never by substring.
//!
//! What it keeps (docs/protocol.md §7–§9):
//! - 2/DCP: one outstanding request per batch key ([`InFlight`]); `/status` → the
//!   batch is acknowledged (deleted from the buffer), `/error` 4xx → parked as dead
//!   letters, 5xx, a time-out or a lost connection → released and sent again after a
//!   backoff;
//! - 11/CEP: command pushes for endpoints that take commands become `Execute` effects;
//!   a command that already ran is answered again from the [`CommandLog`], not re-run;
//! - 7/CMP: a changed configuration for the gateway's own endpoint is handed over
//!   (`ConfigPushed`) to be validated and saved off the MQTT task; the verdict comes
//!   back through [`ClientState::config_refused`] or, once applied, as the next
//!   session's `/applied` report;
//! - 10/EPMP: metadata updates are published on connect; answers are only logged.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use platform_core::kp1::{Direction, ErrorPayload, ExtensionInstance, Kp1Topic, RequestId};
use serde_json::{Map, Value};

use super::cmp::{self, RemoteConfig};
use super::inflight::InFlight;
use crate::buffer::{Batch, BatchKey};
use crate::downlink::{self, Command, CommandLog, CommandResult};
use crate::endpoint::Endpoint;

/// Extension instance names the gateway talks to (Kaa's defaults).
pub const DCX: &str = "dcx";
pub const EPMX: &str = "epmx";
pub const CMX: &str = "cmx";
pub const CEX: &str = "cex";

/// What the event loop must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Subscribe to these topic filters (QoS 1).
    Subscribe(Vec<String>),
    /// Publish at QoS 1.
    Publish { topic: String, payload: Vec<u8> },
    /// Publish a leased batch; if it cannot be queued, call [`ClientState::send_failed`].
    SendBatch {
        key: BatchKey,
        topic: String,
        payload: Vec<u8>,
    },
    /// The platform has these samples: delete them from the buffer.
    Ack(BatchKey),
    /// Send these samples again later.
    Release(BatchKey),
    /// The platform refused these samples: keep them as dead letters.
    Park {
        key: BatchKey,
        status: u16,
        reason: String,
    },
    /// Run a command on its device; report with [`ClientState::command_finished`].
    Execute {
        endpoint: Endpoint,
        kind: String,
        command: Command,
    },
    /// A new configuration for the gateway: validate, save and apply it (or refuse it).
    ConfigPushed(RemoteConfig),
}

/// The gateway's own endpoint, as far as remote configuration goes.
#[derive(Debug, Clone)]
pub struct OwnConfig {
    pub endpoint: Endpoint,
    /// ID of the configuration in force, if it came from the platform.
    pub current_id: Option<String>,
    /// A configuration ID to report as applied (200) once connected.
    pub announce: Option<String>,
}

/// The 1/KP client state of one upstream session.
#[derive(Debug)]
pub struct ClientState {
    dcx: ExtensionInstance,
    epmx: ExtensionInstance,
    cmx: ExtensionInstance,
    cex: ExtensionInstance,
    /// Endpoints whose samples go upstream.
    data_endpoints: Vec<Endpoint>,
    /// Endpoints that take commands, with their device's name (for logs).
    command_endpoints: BTreeMap<Endpoint, String>,
    /// Metadata published on every connect (non-empty maps only).
    metadata: Vec<(Endpoint, Map<String, Value>)>,
    own: Option<OwnConfig>,
    /// A pushed configuration handed over and not yet judged.
    judging: Option<String>,
    inflight: InFlight,
    commands: CommandLog,
    /// Last request ID used for requests other than 2/DCP batches.
    last_id: Option<RequestId>,
    /// The first request ID (see [`ClientState::with_first_id`]).
    first_id: RequestId,
}

impl ClientState {
    pub fn new(
        data_endpoints: Vec<Endpoint>,
        command_endpoints: BTreeMap<Endpoint, String>,
        backoff_max: Duration,
    ) -> Self {
        let name = |n| ExtensionInstance::new(n).unwrap_or_else(|_| unreachable!("valid name"));
        Self {
            dcx: name(DCX),
            epmx: name(EPMX),
            cmx: name(CMX),
            cex: name(CEX),
            data_endpoints,
            command_endpoints,
            metadata: Vec::new(),
            own: None,
            judging: None,
            inflight: InFlight::new(backoff_max.max(Duration::from_secs(1))),
            commands: CommandLog::default(),
            last_id: None,
            first_id: RequestId::FIRST,
        }
    }

    /// Numbers requests from `first` on rather than from 1. Each configuration (each
    /// session) gets a random start: an answer to a request of the previous session that
    /// arrives late on the new connection (same client ID and subscriptions) then cannot
    /// be taken for the answer to a new request with the same number.
    pub fn with_first_id(mut self, first: RequestId) -> Self {
        self.inflight.set_first_id(first);
        self.first_id = first;
        self
    }

    /// Metadata to publish for each endpoint on every connect (empty maps are skipped).
    pub fn with_metadata(mut self, metadata: Vec<(Endpoint, Map<String, Value>)>) -> Self {
        self.metadata = metadata
            .into_iter()
            .filter(|(_, m)| !m.is_empty())
            .collect();
        self
    }

    /// Takes remote configuration (7/CMP) for the gateway's own endpoint.
    pub fn with_own_config(mut self, own: OwnConfig) -> Self {
        self.own = Some(own);
        self
    }

    /// The connection is up (CONNACK): subscribe, ask for what waited, publish metadata.
    pub fn connected(&mut self) -> Vec<Effect> {
        let mut effects = vec![Effect::Subscribe(self.filters())];
        // 11/CEP: ask for commands that were pending while we were away.
        let kinds: Vec<Endpoint> = self.command_endpoints.keys().cloned().collect();
        for ep in kinds {
            let resource = format!("command/{}", downlink::WRITE);
            let topic = self.request(&ep, Ext::Cex, &resource);
            effects.push(publish(topic, br#"{"observe":true}"#.to_vec()));
        }
        // 10/EPMP: partial update, keys set elsewhere are kept.
        for (ep, meta) in self.metadata.clone() {
            let topic = self.request(&ep, Ext::Epmx, "update/keys");
            effects.push(publish(topic, Value::Object(meta).to_string().into_bytes()));
        }
        // 7/CMP: report what was applied, then ask for the current configuration.
        if let Some(own) = self.own.as_mut() {
            let endpoint = own.endpoint.clone();
            if let Some(id) = own.announce.take() {
                log::info!("upstream: remote configuration {id:?} applied");
                let topic = endpoint
                    .topic(&self.cmx, "applied/json", None)
                    .request_topic();
                let body = cmp::applied_payload(&id, 200, None);
                effects.push(publish(topic, body.into_bytes()));
            }
            let current = own.current_id.clone().unwrap_or_default();
            let topic = self.request(&endpoint, Ext::Cmx, "config/json");
            let body = serde_json::json!({"configId": current, "observe": true}).to_string();
            effects.push(publish(topic, body.into_bytes()));
        }
        effects
    }

    /// The connection is gone: every outstanding batch goes back to the buffer.
    pub fn disconnected(&mut self) -> Vec<Effect> {
        self.judging = None;
        self.inflight
            .clear()
            .into_iter()
            .map(Effect::Release)
            .collect()
    }

    /// Batches that must not be leased now (outstanding, or backing off).
    pub fn busy(&self, now: Instant) -> Vec<BatchKey> {
        self.inflight.busy(now)
    }

    /// Leased batches become 2/DCP requests (a JSON array of the samples, oldest first).
    pub fn batches_leased(&mut self, batches: Vec<Batch>, now: Instant) -> Vec<Effect> {
        batches
            .into_iter()
            .map(|Batch { key, seqs, samples }| {
                let id = self.inflight.start(&key, now);
                let topic = key
                    .endpoint
                    .topic(&self.dcx, "json", Some(id))
                    .request_topic();
                log::debug!(
                    "upstream: sending {} samples ({:?} lane) on {topic}",
                    seqs.len(),
                    key.lane
                );
                Effect::SendBatch {
                    key,
                    topic,
                    payload: dcp_payload(&samples),
                }
            })
            .collect()
    }

    /// A batch could not be queued for sending: back off and send it again later.
    pub fn send_failed(&mut self, key: BatchKey, now: Instant, jitter: f64) -> Vec<Effect> {
        self.inflight.abandon(&key);
        self.inflight.fail(&key.endpoint, now, jitter);
        vec![Effect::Release(key)]
    }

    /// Requests unanswered for `timeout` are given up and their batches sent again later.
    pub fn tick(&mut self, now: Instant, timeout: Duration, jitter: f64) -> Vec<Effect> {
        self.inflight
            .expired(now, timeout)
            .into_iter()
            .map(|key| {
                log::warn!(
                    "upstream: no answer for {:?}/{:?} within {timeout:?}; will resend",
                    key.endpoint.app_version,
                    key.endpoint.token
                );
                self.inflight.fail(&key.endpoint, now, jitter);
                Effect::Release(key)
            })
            .collect()
    }

    /// A message from the platform.
    pub fn message(
        &mut self,
        topic: &str,
        payload: &[u8],
        now: Instant,
        jitter: f64,
    ) -> Vec<Effect> {
        let t = match Kp1Topic::parse(topic) {
            Ok(t) if t.direction != Direction::Request => t,
            _ => {
                log::debug!("upstream: ignoring message on {topic}");
                return Vec::new();
            }
        };
        if t.extension == self.dcx {
            self.on_dcx(&t, payload, now, jitter)
        } else if t.extension == self.cex {
            self.on_cex(&t, payload)
        } else if t.extension == self.cmx {
            self.on_cmx(&t, payload)
        } else if t.extension == self.epmx {
            on_epmx(&t, payload);
            Vec::new()
        } else {
            log::debug!("upstream: ignoring message on {topic}");
            Vec::new()
        }
    }

    /// A command ran: remember its result and publish it (11/CEP `/result/<type>`).
    pub fn command_finished(
        &mut self,
        endpoint: &Endpoint,
        kind: &str,
        result: CommandResult,
    ) -> Vec<Effect> {
        let effect = self.result_effect(endpoint, kind, &result);
        self.commands.remember(endpoint, result);
        vec![effect]
    }

    /// A pushed configuration was refused (invalid, or could not be saved): say so on
    /// `/applied` (7/CMP); the running configuration stays.
    pub fn config_refused(&mut self, config_id: &str, status: u16, reason: &str) -> Vec<Effect> {
        if self.judging.as_deref() == Some(config_id) {
            self.judging = None;
        }
        let Some(own) = &self.own else {
            return Vec::new();
        };
        log::warn!("upstream: remote configuration {config_id:?} refused: {reason}");
        let topic = own.endpoint.topic(&self.cmx, "applied/json", None);
        let body = cmp::applied_payload(config_id, status, Some(reason));
        vec![publish(topic.request_topic(), body.into_bytes())]
    }

    /// How many batches wait for an answer.
    pub fn outstanding(&self) -> usize {
        self.inflight.outstanding()
    }

    fn on_dcx(&mut self, t: &Kp1Topic, payload: &[u8], now: Instant, jitter: f64) -> Vec<Effect> {
        let ep = Endpoint::of_topic(t);
        let Some(key) = t.request_id.and_then(|id| self.inflight.resolve(&ep, id)) else {
            log::debug!("upstream: no outstanding request for {t}");
            return Vec::new();
        };
        if t.direction == Direction::Status {
            self.inflight.succeed(&ep);
            return vec![Effect::Ack(key)];
        }
        let (status, reason) = error_of(payload);
        if (400..500).contains(&status) {
            log::error!(
                "upstream: samples refused with {status} {reason:?} ({t}); parked in the dead-letter table"
            );
            vec![Effect::Park {
                key,
                status,
                reason,
            }]
        } else {
            let delay = self.inflight.fail(&ep, now, jitter);
            log::warn!("upstream: {status} {reason:?} for {t}; retrying in {delay:?}");
            vec![Effect::Release(key)]
        }
    }

    fn on_cex(&mut self, t: &Kp1Topic, payload: &[u8]) -> Vec<Effect> {
        let Some(kind) = t.resource.strip_prefix("command/") else {
            return Vec::new(); // answers to our results
        };
        if t.direction == Direction::Error {
            log::debug!(
                "upstream: command request refused on {t}: {}",
                lossy(payload)
            );
            return Vec::new();
        }
        let ep = Endpoint::of_topic(t);
        let Some(device) = self.command_endpoints.get(&ep).cloned() else {
            log::debug!("upstream: commands for an endpoint without writable points: {t}");
            return Vec::new();
        };
        let commands = match downlink::parse_commands(payload) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("upstream: unreadable command push on {t}: {e}");
                return Vec::new();
            }
        };
        commands
            .into_iter()
            .map(|command| {
                if let Some(done) = self.commands.remembered(&ep, &command.id) {
                    log::info!(
                        "upstream: command {} for {device} already ran; answering again",
                        command.id
                    );
                    return self.result_effect(&ep, kind, done);
                }
                log::info!(
                    "upstream: command {} ({kind}) for {device}: {}",
                    command.id,
                    command.payload
                );
                Effect::Execute {
                    endpoint: ep.clone(),
                    kind: kind.to_owned(),
                    command,
                }
            })
            .collect()
    }

    fn on_cmx(&mut self, t: &Kp1Topic, payload: &[u8]) -> Vec<Effect> {
        let Some(own) = &self.own else {
            return Vec::new();
        };
        if t.token != own.endpoint.token || t.app_version != own.endpoint.app_version {
            return Vec::new();
        }
        match (t.resource.as_str(), t.direction) {
            ("config/json", Direction::Status) => {}
            ("config/json", _) => {
                log::debug!(
                    "upstream: configuration request answered on {t}: {}",
                    lossy(payload)
                );
                return Vec::new();
            }
            (_, Direction::Error) => {
                log::warn!(
                    "upstream: configuration report refused on {t}: {}",
                    lossy(payload)
                );
                return Vec::new();
            }
            _ => return Vec::new(),
        }
        let remote = match cmp::parse_push(payload) {
            Ok(Some(rc)) => rc,
            Ok(None) => return Vec::new(),
            Err(e) => {
                log::warn!("upstream: unreadable configuration on {t}: {e}");
                return Vec::new();
            }
        };
        let id = Some(remote.config_id.as_str());
        if own.current_id.as_deref() == id || self.judging.as_deref() == id {
            return Vec::new();
        }
        self.judging = Some(remote.config_id.clone());
        vec![Effect::ConfigPushed(remote)]
    }

    fn result_effect(&self, ep: &Endpoint, kind: &str, result: &CommandResult) -> Effect {
        let topic = ep
            .topic(&self.cex, &format!("result/{kind}"), None)
            .request_topic();
        log::info!(
            "upstream: command {} result {} on {topic}",
            result.id,
            result.status_code
        );
        publish(topic, serde_json::to_vec(&[result]).unwrap_or_default())
    }

    /// A request topic with the next request ID.
    fn request(&mut self, ep: &Endpoint, ext: Ext, resource: &str) -> String {
        let id = self.last_id.map_or(self.first_id, RequestId::next);
        self.last_id = Some(id);
        let ext = match ext {
            Ext::Cex => &self.cex,
            Ext::Cmx => &self.cmx,
            Ext::Epmx => &self.epmx,
        };
        ep.topic(ext, resource, Some(id)).request_topic()
    }

    /// Every topic filter the session needs.
    fn filters(&self) -> Vec<String> {
        let filter = |ep: &Endpoint, ext: &ExtensionInstance, rest: &str| {
            format!(
                "kp1/{}/{}/{}/{rest}",
                ep.app_version.as_str(),
                ext.as_str(),
                ep.token.as_str()
            )
        };
        let mut filters = Vec::new();
        for ep in &self.data_endpoints {
            filters.push(filter(ep, &self.dcx, "json/+/status"));
            filters.push(filter(ep, &self.dcx, "json/+/error"));
        }
        if let Some(own) = &self.own {
            filters.push(filter(&own.endpoint, &self.cmx, "config/json/#"));
            filters.push(filter(&own.endpoint, &self.cmx, "applied/json/#"));
        }
        let metadata: BTreeSet<&Endpoint> = self.metadata.iter().map(|(ep, _)| ep).collect();
        for ep in metadata {
            filters.push(filter(ep, &self.epmx, "update/keys/+/error"));
        }
        for ep in self.command_endpoints.keys() {
            filters.push(filter(ep, &self.cex, "command/#"));
        }
        filters
    }
}

#[derive(Debug, Clone, Copy)]
enum Ext {
    Cex,
    Cmx,
    Epmx,
}

fn publish(topic: String, payload: Vec<u8>) -> Effect {
    Effect::Publish { topic, payload }
}

/// A 2/DCP request payload: the samples as one JSON array, oldest first.
pub fn dcp_payload(samples: &[String]) -> Vec<u8> {
    let len = samples.iter().map(|s| s.len() + 1).sum::<usize>() + 1;
    let mut out = Vec::with_capacity(len);
    out.push(b'[');
    for (i, s) in samples.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(s.as_bytes());
    }
    out.push(b']');
    out
}

/// Status code and reason of an `/error` payload (500 when it is not one).
fn error_of(payload: &[u8]) -> (u16, String) {
    serde_json::from_slice::<ErrorPayload>(payload)
        .map(|e| (e.status_code, e.reason_phrase))
        .unwrap_or_else(|_| (500, lossy(payload)))
}

/// Answers to metadata updates are only logged.
fn on_epmx(t: &Kp1Topic, payload: &[u8]) {
    let verdict = match t.direction {
        Direction::Error => "refused",
        _ => "accepted",
    };
    log::log!(
        epmx_log_level(t.direction),
        "upstream: metadata update {verdict} on {t}: {}",
        lossy(payload)
    );
}

/// A refused metadata update is worth a warning; an accepted one is not.
fn epmx_log_level(direction: Direction) -> log::Level {
    match direction {
        Direction::Error => log::Level::Warn,
        _ => log::Level::Debug,
    }
}

fn lossy(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
