//! The upstream 1/KP session: one MQTT connection (rumqttc) carrying every endpoint.
//!
//! One task owns the connection and drives rumqttc's event loop in a single `select!`:
//! incoming responses resolve outstanding requests, new buffer data and a periodic tick
//! lease batches and publish them, and shutdown sends DISCONNECT. Each batch goes to
//! `kp1/<avn>/dcx/<token>/json/<request id>` at QoS 1 and stays in the buffer until its
//! `/status` arrives (PROTOCOL.md §7): `/error` 4xx parks it in the dead-letter table,
//! 5xx, a timeout or a lost connection sends it again after a backoff.

pub mod inflight;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use platform_core::kp1::{Direction, ErrorPayload, ExtensionInstance, Kp1Topic};
use rand::Rng;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS, SubscribeFilter};
use tokio_util::sync::CancellationToken;

use crate::buffer::{Batch, BufferHandle, EndpointKey, LeaseLimits};
use crate::config::Upstream;
use crate::downlink::{self, CommandResult, Downlink};
use crate::remote_config::{self, RemoteConfig};
use inflight::InFlight;

/// Largest MQTT packet sent or accepted upstream.
pub const MAX_PACKET_SIZE: usize = 1024 * 1024;
/// How often timeouts are checked and the buffer is looked at without a notification.
const TICK: Duration = Duration::from_millis(250);

/// The upstream session actor.
#[derive(Debug)]
pub struct UpstreamSession {
    config: Upstream,
    buffer: BufferHandle,
    endpoints: Vec<EndpointKey>,
    downlink: Downlink,
    /// Remote configuration, when the gateway has its own endpoint.
    remote: Option<RemoteConfigLink>,
    /// True while connected (read by the health report).
    connected: Arc<AtomicBool>,
    /// Endpoint metadata published (10/EPMP `/update/keys`) on every connect.
    metadata: Vec<(EndpointKey, serde_json::Map<String, serde_json::Value>)>,
}

/// The session's side of remote configuration (7/CMP) for the gateway's own endpoint.
#[derive(Debug)]
pub struct RemoteConfigLink {
    pub endpoint: EndpointKey,
    /// The local configuration file's text: the base every remote field side is merged into.
    pub base_toml: String,
    pub state_dir: std::path::PathBuf,
    /// ID of the configuration in force (remote), if any.
    pub current_id: Option<String>,
    /// A configuration ID to report as applied (200) once connected.
    pub announce: Option<String>,
    /// Valid configurations go here; the supervisor applies them.
    pub reload: tokio::sync::mpsc::Sender<(RemoteConfig, crate::config::Config)>,
}

/// A finished command, on its way back to the session task for publishing.
type Finished = (EndpointKey, String, CommandResult);

impl UpstreamSession {
    pub fn new(
        config: Upstream,
        buffer: BufferHandle,
        endpoints: Vec<EndpointKey>,
        downlink: Downlink,
    ) -> Self {
        Self {
            config,
            buffer,
            endpoints,
            downlink,
            connected: Arc::new(AtomicBool::new(false)),
            metadata: Vec::new(),
            remote: None,
        }
    }

    /// Takes remote configuration for the gateway's own endpoint.
    pub fn with_remote_config(mut self, link: RemoteConfigLink) -> Self {
        self.remote = Some(link);
        self
    }

    /// A flag that is true while the session is connected.
    pub fn connected_flag(&self) -> Arc<AtomicBool> {
        self.connected.clone()
    }

    /// Metadata to publish for each endpoint on every connect (empty maps are skipped).
    pub fn with_metadata(
        mut self,
        metadata: Vec<(EndpointKey, serde_json::Map<String, serde_json::Value>)>,
    ) -> Self {
        self.metadata = metadata
            .into_iter()
            .filter(|(_, m)| !m.is_empty())
            .collect();
        self
    }

    /// Runs until `shutdown`; then sends DISCONNECT (leased batches stay in the buffer).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let c = self.config.clone();
        let mut opts = MqttOptions::new(c.client_id.clone(), c.host.clone(), c.port);
        opts.set_keep_alive(c.keepalive)
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE);
        if let Some(user) = &c.username {
            opts.set_credentials(user.clone(), c.password.clone().unwrap_or_default());
        }
        if let Some(tls) = &c.tls {
            match tls_transport(tls) {
                Ok(t) => {
                    opts.set_transport(t);
                }
                Err(e) => {
                    log::error!(
                        "upstream: TLS files unusable: {e}; not connecting (fix the config)"
                    );
                    shutdown.cancelled().await;
                    return;
                }
            }
        }
        let (client, mut events) = AsyncClient::new(opts, 1024);
        let mut inflight = InFlight::new(c.reconnect_max.max(Duration::from_secs(1)));
        let mut connected = false;
        let mut reconnect_failures: u32 = 0;
        let mut tick = tokio::time::interval(TICK);
        let dcx = ExtensionInstance::new("dcx").unwrap_or_else(|_| unreachable!("valid name"));
        let (finished_tx, mut finished) = tokio::sync::mpsc::channel::<Finished>(256);
        let mut observe_id: u32 = 0;
        log::info!(
            "upstream: connecting to {}:{} as {:?}",
            c.host,
            c.port,
            c.client_id
        );
        loop {
            tokio::select! {
                // Shutdown: say goodbye; unconfirmed batches stay in the buffer for next time.
                _ = shutdown.cancelled() => break,
                // The connection: CONNACK, responses, errors (rumqttc reconnects on the next poll).
                ev = events.poll() => match ev {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        connected = true;
                        self.connected.store(true, Ordering::Relaxed);
                        reconnect_failures = 0;
                        log::info!("upstream: connected to {}:{}", c.host, c.port);
                        self.subscribe(&client);
                        self.observe_commands(&client, &mut observe_id);
                        self.publish_metadata(&client, &mut observe_id);
                        self.observe_config(&client, &mut observe_id);
                        self.send_batches(&client, &mut inflight, &dcx).await;
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        if p.topic.contains("/cmx/") {
                            self.on_config(&p.topic, &p.payload, &client);
                        } else if p.topic.contains("/epmx/") {
                            log::warn!("upstream: metadata update refused on {}: {}", p.topic, String::from_utf8_lossy(&p.payload));
                        } else if p.topic.contains("/cex/") {
                            self.on_command(&p.topic, &p.payload, &client, &finished_tx);
                        } else {
                            self.on_response(&p.topic, &p.payload, &mut inflight).await;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        for key in inflight.clear() {
                            let _ = self.buffer.release(key).await;
                        }
                        reconnect_failures = reconnect_failures.saturating_add(1);
                        let delay = reconnect_delay(reconnect_failures, c.reconnect_max);
                        if connected {
                            log::warn!("upstream: connection lost: {e}; reconnecting");
                        } else if reconnect_failures == 1 || reconnect_failures.is_multiple_of(20) {
                            log::warn!("upstream: cannot connect to {}:{}: {e} (attempt {reconnect_failures}, next in {delay:?})", c.host, c.port);
                        }
                        connected = false;
                        self.connected.store(false, Ordering::Relaxed);
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                },
                // A command finished on its bus: remember and publish its result.
                Some((ep, kind, result)) = finished.recv() => {
                    self.downlink.remember(&ep, result.clone());
                    publish_result(&client, &ep, &kind, &result);
                }
                // New samples in the buffer: send them now rather than at the next tick.
                _ = self.buffer.new_data.notified(), if connected => {
                    self.send_batches(&client, &mut inflight, &dcx).await;
                }
                // Time-outs of unanswered requests, retries after backoff.
                _ = tick.tick(), if connected => {
                    for key in inflight.expired(Instant::now(), c.response_timeout) {
                        log::warn!("upstream: no answer for {:?}/{:?} within {:?}; will resend", key.endpoint.app_version, key.endpoint.token, c.response_timeout);
                        inflight.fail(&key.endpoint, Instant::now(), rand::thread_rng().gen());
                        let _ = self.buffer.release(key).await;
                    }
                    self.send_batches(&client, &mut inflight, &dcx).await;
                }
            }
        }
        if connected {
            let _ = client.try_disconnect();
            // Drive the event loop until DISCONNECT is on the wire (bounded).
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Ok(ev) = events.poll().await {
                    if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                        break;
                    }
                }
            })
            .await;
        }
        log::info!("upstream: stopped");
    }

    fn subscribe(&self, client: &AsyncClient) {
        let mut filters: Vec<SubscribeFilter> = self
            .endpoints
            .iter()
            .flat_map(|ep| {
                let base = format!(
                    "kp1/{}/dcx/{}/json/+",
                    ep.app_version.as_str(),
                    ep.token.as_str()
                );
                [
                    SubscribeFilter::new(format!("{base}/status"), QoS::AtLeastOnce),
                    SubscribeFilter::new(format!("{base}/error"), QoS::AtLeastOnce),
                ]
            })
            .collect();
        // Configuration pushes for the gateway itself, and answers to /applied.
        if let Some(r) = &self.remote {
            let (avn, token) = (r.endpoint.app_version.as_str(), r.endpoint.token.as_str());
            filters.push(SubscribeFilter::new(
                format!("kp1/{avn}/cmx/{token}/config/json/#"),
                QoS::AtLeastOnce,
            ));
            filters.push(SubscribeFilter::new(
                format!("kp1/{avn}/cmx/{token}/applied/json/#"),
                QoS::AtLeastOnce,
            ));
        }
        // Refusals of our metadata updates (logged).
        filters.extend(self.metadata.iter().map(|(ep, _)| {
            SubscribeFilter::new(
                format!(
                    "kp1/{}/epmx/{}/update/keys/+/error",
                    ep.app_version.as_str(),
                    ep.token.as_str()
                ),
                QoS::AtLeastOnce,
            )
        }));
        // Command pushes (and answers to our observe requests) for devices that take writes.
        filters.extend(self.downlink.endpoints().map(|ep| {
            SubscribeFilter::new(
                format!(
                    "kp1/{}/cex/{}/command/#",
                    ep.app_version.as_str(),
                    ep.token.as_str()
                ),
                QoS::AtLeastOnce,
            )
        }));
        for chunk in filters.chunks(64) {
            if let Err(e) = client.try_subscribe_many(chunk.to_vec()) {
                log::warn!("upstream: cannot queue SUBSCRIBE: {e}");
            }
        }
    }

    /// Reports a pending applied configuration, then asks for the current one (7/CMP).
    fn observe_config(&mut self, client: &AsyncClient, request_id: &mut u32) {
        let Some(r) = self.remote.as_mut() else {
            return;
        };
        let base = format!(
            "kp1/{}/cmx/{}",
            r.endpoint.app_version.as_str(),
            r.endpoint.token.as_str()
        );
        if let Some(id) = r.announce.take() {
            let body = remote_config::applied_payload(&id, 200, None);
            log::info!("upstream: remote configuration {id:?} applied");
            let _ = client.try_publish(
                format!("{base}/applied/json"),
                QoS::AtLeastOnce,
                false,
                body,
            );
        }
        *request_id = if *request_id >= platform_core::kp1::MAX_REQUEST_ID {
            1
        } else {
            *request_id + 1
        };
        let body = serde_json::json!({"configId": r.current_id.clone().unwrap_or_default(), "observe": true}).to_string();
        if let Err(e) = client.try_publish(
            format!("{base}/config/json/{request_id}"),
            QoS::AtLeastOnce,
            false,
            body,
        ) {
            log::warn!("upstream: cannot queue the configuration request: {e}");
        }
    }

    /// A message on the gateway's `cmx` topics: a configuration to validate and apply.
    fn on_config(&self, topic: &str, payload: &[u8], client: &AsyncClient) {
        let Some(r) = &self.remote else { return };
        let Ok(t) = Kp1Topic::parse(topic) else {
            return;
        };
        if t.token != r.endpoint.token || !t.resource.starts_with("config/json") {
            if t.direction == Direction::Error {
                log::warn!(
                    "upstream: configuration request refused on {topic}: {}",
                    String::from_utf8_lossy(payload)
                );
            }
            return;
        }
        match t.direction {
            Direction::Status => {}
            Direction::Error => {
                log::debug!(
                    "upstream: configuration request refused on {topic}: {}",
                    String::from_utf8_lossy(payload)
                );
                return;
            }
            Direction::Request => return,
        }
        let applied = format!(
            "kp1/{}/cmx/{}/applied/json",
            r.endpoint.app_version.as_str(),
            r.endpoint.token.as_str()
        );
        let remote = match remote_config::parse_push(payload) {
            Ok(Some(rc)) => rc,
            Ok(None) => return,
            Err(e) => {
                log::warn!("upstream: unreadable configuration on {topic}: {e}");
                return;
            }
        };
        if r.current_id.as_deref() == Some(remote.config_id.as_str()) {
            return;
        }
        match remote_config::validate(&r.base_toml, &remote) {
            Err(errors) => {
                log::warn!(
                    "upstream: remote configuration {:?} refused: {}",
                    remote.config_id,
                    errors.0.join("; ")
                );
                let body = remote_config::applied_payload(
                    &remote.config_id,
                    400,
                    Some(&errors.0.join("; ")),
                );
                let _ = client.try_publish(applied, QoS::AtLeastOnce, false, body);
            }
            Ok(config) => {
                if let Err(e) = remote_config::save(&r.state_dir, &remote) {
                    log::error!(
                        "upstream: cannot save remote configuration {:?}: {e}",
                        remote.config_id
                    );
                    let body = remote_config::applied_payload(
                        &remote.config_id,
                        500,
                        Some("cannot save the configuration"),
                    );
                    let _ = client.try_publish(applied, QoS::AtLeastOnce, false, body);
                    return;
                }
                log::info!(
                    "upstream: remote configuration {:?} is valid; applying",
                    remote.config_id
                );
                if r.reload.try_send((remote, config)).is_err() {
                    log::warn!("upstream: a reload is already under way");
                }
            }
        }
    }

    /// Publishes each endpoint's metadata (partial update: keys set elsewhere are kept).
    fn publish_metadata(&self, client: &AsyncClient, request_id: &mut u32) {
        for (ep, meta) in &self.metadata {
            *request_id = if *request_id >= platform_core::kp1::MAX_REQUEST_ID {
                1
            } else {
                *request_id + 1
            };
            let topic = format!(
                "kp1/{}/epmx/{}/update/keys/{request_id}",
                ep.app_version.as_str(),
                ep.token.as_str()
            );
            let body = serde_json::Value::Object(meta.clone()).to_string();
            if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, false, body) {
                log::warn!("upstream: cannot queue a metadata update: {e}");
            }
        }
    }

    /// Asks for commands that were pending while we were away (11/CEP observe request).
    fn observe_commands(&self, client: &AsyncClient, observe_id: &mut u32) {
        for ep in self.downlink.endpoints() {
            *observe_id = if *observe_id >= platform_core::kp1::MAX_REQUEST_ID {
                1
            } else {
                *observe_id + 1
            };
            let topic = format!(
                "kp1/{}/cex/{}/command/{}/{}",
                ep.app_version.as_str(),
                ep.token.as_str(),
                downlink::WRITE,
                observe_id
            );
            if let Err(e) =
                client.try_publish(topic, QoS::AtLeastOnce, false, r#"{"observe":true}"#)
            {
                log::warn!("upstream: cannot queue the command observe request: {e}");
            }
        }
    }

    /// A message on a `cex` topic: commands to run (or an error answer to our observe).
    fn on_command(
        &self,
        topic: &str,
        payload: &[u8],
        client: &AsyncClient,
        finished: &tokio::sync::mpsc::Sender<Finished>,
    ) {
        let Ok(t) = Kp1Topic::parse(topic) else {
            log::debug!("upstream: ignoring message on {topic}");
            return;
        };
        let Some(kind) = t.resource.strip_prefix("command/").map(str::to_owned) else {
            return;
        };
        let ep = EndpointKey {
            app_version: t.app_version.clone(),
            token: t.token.clone(),
        };
        match t.direction {
            Direction::Status => {}
            Direction::Error => {
                log::debug!(
                    "upstream: command request refused on {topic}: {}",
                    String::from_utf8_lossy(payload)
                );
                return;
            }
            Direction::Request => return,
        }
        let Some(target) = self.downlink.target(&ep).cloned() else {
            log::debug!("upstream: commands for an endpoint without writable points: {topic}");
            return;
        };
        let commands = match downlink::parse_commands(payload) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("upstream: unreadable command push on {topic}: {e}");
                return;
            }
        };
        for cmd in commands {
            if let Some(done) = self.downlink.remembered(&ep, &cmd.id) {
                log::info!(
                    "upstream: command {} for {} already ran; answering again",
                    cmd.id,
                    target.device
                );
                publish_result(client, &ep, &kind, done);
                continue;
            }
            log::info!(
                "upstream: command {} ({kind}) for {}: {}",
                cmd.id,
                target.device,
                cmd.payload
            );
            let (target, kind, ep, tx) =
                (target.clone(), kind.clone(), ep.clone(), finished.clone());
            tokio::spawn(async move {
                let result = downlink::execute(target, &kind, cmd).await;
                let _ = tx.send((ep, kind, result)).await;
            });
        }
    }

    async fn send_batches(
        &self,
        client: &AsyncClient,
        inflight: &mut InFlight,
        dcx: &ExtensionInstance,
    ) {
        let now = Instant::now();
        let c = &self.config;
        let limits = LeaseLimits {
            max_samples: c.batch_max_samples,
            max_bytes: c.batch_max_bytes,
            max_batches: c.max_inflight_batches,
            live_window: c.live_window,
        };
        let batches = match self.buffer.lease(limits, inflight.busy(now)).await {
            Ok(b) => b,
            Err(e) => {
                log::error!("upstream: cannot read the buffer: {e}");
                return;
            }
        };
        for Batch { key, seqs, payload } in batches {
            let id = inflight.start(&key, now);
            let topic = Kp1Topic::request(
                key.endpoint.app_version.clone(),
                dcx.clone(),
                key.endpoint.token.clone(),
                "json",
                Some(id),
            )
            .request_topic();
            log::debug!(
                "upstream: sending {} samples ({:?} lane) on {topic}",
                seqs.len(),
                key.lane
            );
            if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, false, payload) {
                log::warn!("upstream: cannot queue publish: {e}");
                inflight.abandon(&key);
                inflight.fail(&key.endpoint, now, rand::thread_rng().gen());
                let _ = self.buffer.release(key).await;
            }
        }
    }

    async fn on_response(&self, topic: &str, payload: &[u8], inflight: &mut InFlight) {
        let Ok(t) = Kp1Topic::parse(topic) else {
            log::debug!("upstream: ignoring message on {topic}");
            return;
        };
        let Some(id) = t.request_id.filter(|_| t.direction != Direction::Request) else {
            return;
        };
        let ep = EndpointKey {
            app_version: t.app_version.clone(),
            token: t.token.clone(),
        };
        let key = match inflight.resolve(&ep, id) {
            Some(k) if t.extension.as_str() == "dcx" => k,
            _ => {
                log::debug!("upstream: no outstanding request for {topic}");
                return;
            }
        };
        match t.direction {
            Direction::Status => {
                inflight.succeed(&ep);
                match self.buffer.ack(key).await {
                    Ok(n) => log::debug!("upstream: {n} samples confirmed ({topic})"),
                    Err(e) => {
                        log::error!("upstream: confirmed samples not removed from the buffer: {e}")
                    }
                }
            }
            Direction::Error => {
                let err: Option<ErrorPayload> = serde_json::from_slice(payload).ok();
                let (status, reason) = err
                    .map(|e| (e.status_code, e.reason_phrase))
                    .unwrap_or((500, String::from_utf8_lossy(payload).into_owned()));
                if (400..500).contains(&status) {
                    match self.buffer.park(key, status, reason.clone()).await {
                        Ok(n) => log::error!("upstream: {n} samples refused with {status} {reason:?} ({topic}); parked in the dead-letter table"),
                        Err(e) => log::error!("upstream: cannot park refused samples: {e}"),
                    }
                } else {
                    let delay = inflight.fail(&ep, Instant::now(), rand::thread_rng().gen());
                    log::warn!("upstream: {status} {reason:?} for {topic}; retrying in {delay:?}");
                    let _ = self.buffer.release(key).await;
                }
            }
            Direction::Request => unreachable!("filtered above"),
        }
    }
}

/// Publishes one command result on `kp1/<avn>/cex/<token>/result/<type>`.
fn publish_result(client: &AsyncClient, ep: &EndpointKey, kind: &str, result: &CommandResult) {
    let topic = format!(
        "kp1/{}/cex/{}/result/{kind}",
        ep.app_version.as_str(),
        ep.token.as_str()
    );
    let body = serde_json::to_vec(&[result]).unwrap_or_default();
    log::info!(
        "upstream: command {} result {} on {topic}",
        result.id,
        result.status_code
    );
    if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, false, body) {
        log::warn!("upstream: cannot queue command result {}: {e}", result.id);
    }
}

/// Builds rumqttc's TLS transport from PEM files (rustls, the ring provider).
fn tls_transport(tls: &crate::config::Tls) -> std::io::Result<rumqttc::Transport> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
    };
    let ca = read(&tls.ca_file)?;
    let client_auth = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        _ => None,
    };
    Ok(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth,
    }))
}

/// Capped exponential backoff for reconnects: 0.5 s, 1 s, 2 s, ... up to `max`.
fn reconnect_delay(failures: u32, max: Duration) -> Duration {
    let exp = Duration::from_millis(500).saturating_mul(1u32 << failures.min(16).saturating_sub(1));
    exp.min(max)
}
