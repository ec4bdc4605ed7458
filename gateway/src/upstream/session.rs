//! The upstream session's event loop: one rumqttc connection, one `select!`, and no
//! decisions — it feeds what happens to the pure [`ClientState`] and carries out the
//! [`Effect`]s it returns (publish, buffer ack/release/park, run a command, hand a
//! configuration over). rumqttc reconnects on the next poll after an error; the loop only
//! waits a capped backoff between attempts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, QoS, SubscribeFilter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::cmp::{RemoteConfig, Verdict};
use super::link::LinkStatus;
use super::protocol::{ClientState, Effect};
use super::{Tls, Upstream};
use crate::buffer::{BufferHandle, LeaseLimits};
use crate::downlink::{self, CommandResult, CommandTargets};
use crate::endpoint::Endpoint;

/// Largest MQTT packet sent or accepted upstream.
pub const MAX_PACKET_SIZE: usize = 1024 * 1024;
/// How often time-outs are checked and the buffer is looked at without a notification.
const TICK: Duration = Duration::from_millis(250);
/// Longest wait at a stop or reload for the answers to batches already sent (bounded by
/// `response_timeout` too): long enough for a healthy link, short enough that a reload
/// does not hold up sampling for long.
const DRAIN_LIMIT: Duration = Duration::from_secs(3);

/// Whether the connection is up, and how many attempts failed in a row.
#[derive(Debug, Default, Clone, Copy)]
struct LinkState {
    connected: bool,
    failures: u32,
}

/// A finished command, on its way back to the session task for publishing.
type Finished = (Endpoint, String, CommandResult);

/// The session's link to whoever judges pushed configurations (the supervisor).
#[derive(Debug)]
pub struct ConfigLink {
    /// Pushed configurations go here to be validated and saved.
    pub pushed: mpsc::Sender<RemoteConfig>,
    /// Refusals come back here, to be reported on `/applied`.
    pub verdicts: mpsc::Receiver<Verdict>,
}

/// The upstream session actor.
#[derive(Debug)]
pub struct UpstreamSession {
    config: Upstream,
    buffer: BufferHandle,
    state: ClientState,
    targets: CommandTargets,
    /// Where pushed configurations go (none: remote configuration is off).
    pushed: Option<mpsc::Sender<RemoteConfig>>,
    /// Where refusals come back from; taken by `run`.
    verdicts: Option<mpsc::Receiver<Verdict>>,
    /// Up or down, since when (read by the health report and the web page).
    status: Arc<LinkStatus>,
}

impl UpstreamSession {
    pub fn new(
        config: Upstream,
        buffer: BufferHandle,
        state: ClientState,
        targets: CommandTargets,
    ) -> Self {
        Self {
            config,
            buffer,
            state,
            targets,
            pushed: None,
            verdicts: None,
            status: Arc::default(),
        }
    }

    /// Hands pushed configurations of the gateway's own endpoint to `link`.
    pub fn with_config_link(mut self, link: ConfigLink) -> Self {
        self.pushed = Some(link.pushed);
        self.verdicts = Some(link.verdicts);
        self
    }

    /// Reports the link's state to `status` (shared with the health report and the web page).
    pub fn with_status(mut self, status: Arc<LinkStatus>) -> Self {
        self.status = status;
        self
    }

    /// The link's state, as this session reports it.
    pub fn status(&self) -> Arc<LinkStatus> {
        self.status.clone()
    }

    /// Runs until `shutdown`; then waits a little for the answers to batches in flight,
    /// gives what stays unanswered back to the buffer (the next session sends it again)
    /// and sends DISCONNECT.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let c = self.config.clone();
        let opts = match mqtt_options(&c) {
            Ok(o) => o,
            Err(e) => {
                log::error!("upstream: TLS files unusable: {e}; not connecting (fix the config)");
                shutdown.cancelled().await;
                return;
            }
        };
        self.status.starting(format!("{}:{}", c.host, c.port));
        let (client, mut events) = AsyncClient::new(opts, 1024);
        // No Nagle: a batch must not wait for the ACK of an earlier small packet (a
        // PUBACK for a command), which a server with nothing to send delays up to 40 ms.
        let mut net = events.network_options();
        net.set_tcp_nodelay(true);
        events.set_network_options(net);
        let (finished_tx, mut finished) = mpsc::channel::<Finished>(256);
        let mut verdicts = self.verdicts.take();
        let mut link = LinkState::default();
        let mut tick = tokio::time::interval(TICK);
        log::info!(
            "upstream: connecting to {}:{} as {:?}",
            c.host,
            c.port,
            c.client_id
        );
        loop {
            let connected = link.connected;
            let effects = tokio::select! {
                // Shutdown: drain, then say goodbye (below).
                _ = shutdown.cancelled() => break,
                // The connection: CONNACK, messages, errors (then a backoff before rumqttc
                // reconnects on the next poll; `None`: shutdown came during the backoff).
                ev = events.poll() => {
                    match self.on_event(ev, &mut link, &client, &finished_tx, &shutdown).await {
                        Some(effects) => effects,
                        None => break,
                    }
                }
                // A command finished on its bus: remember and publish its result.
                Some((ep, kind, result)) = finished.recv() => {
                    self.state.command_finished(&ep, &kind, result)
                }
                // A pushed configuration was refused by the supervisor.
                Some(v) = recv(&mut verdicts) => {
                    self.state.config_refused(&v.config_id, v.status, &v.reason)
                }
                // New samples in the buffer: send them now rather than at the next tick.
                _ = self.buffer.new_data.notified(), if connected => self.lease().await,
                // Time-outs of unanswered requests; retries after backoff.
                _ = tick.tick(), if connected => self.on_tick().await,
            };
            self.apply(&client, effects, &finished_tx).await;
        }
        if link.connected {
            self.drain(&client, &mut events, &finished_tx).await;
        }
        let unanswered = self.state.disconnected();
        self.apply(&client, unanswered, &finished_tx).await;
        if link.connected {
            disconnect(&client, &mut events).await;
        }
        log::info!("upstream: stopped");
    }

    /// At a stop or reload: waits (at most [`DRAIN_LIMIT`]) for the answers to the batches
    /// already sent, so that the platform does not get them again from the next session.
    /// Nothing new is sent, and commands or configurations arriving now are not taken.
    async fn drain(
        &mut self,
        client: &AsyncClient,
        events: &mut EventLoop,
        finished: &mpsc::Sender<Finished>,
    ) {
        let waiting = self.state.outstanding();
        if waiting == 0 {
            return;
        }
        let limit = self.config.response_timeout.min(DRAIN_LIMIT);
        log::info!(
            "upstream: stopping: waiting up to {limit:?} for the answers to {waiting} batches sent"
        );
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        while self.state.outstanding() > 0 {
            let ev = tokio::select! {
                _ = &mut deadline => break,
                ev = events.poll() => ev,
            };
            let effects = match ev {
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    self.state
                        .message(&p.topic, &p.payload, Instant::now(), jitter())
                }
                Ok(_) => continue,
                Err(e) => {
                    log::warn!("upstream: connection lost while stopping: {e}");
                    break;
                }
            };
            let (settle, other): (Vec<Effect>, Vec<Effect>) = effects.into_iter().partition(|e| {
                matches!(e, Effect::Ack(_) | Effect::Release(_) | Effect::Park { .. })
            });
            for e in other {
                if let Effect::Execute { endpoint, kind, .. } = e {
                    log::warn!(
                        "upstream: a {kind:?} command for {:?} came while stopping; not run",
                        endpoint.token
                    );
                }
            }
            self.apply(client, settle, finished).await;
        }
        match self.state.outstanding() {
            0 => log::info!("upstream: every batch sent was answered"),
            n => log::warn!(
                "upstream: {n} batches unanswered at the stop; they stay in the buffer and the next session sends them again"
            ),
        }
    }

    /// One event of the connection. `None`: shutdown came while waiting to reconnect.
    async fn on_event(
        &mut self,
        ev: Result<Event, rumqttc::ConnectionError>,
        link: &mut LinkState,
        client: &AsyncClient,
        finished: &mpsc::Sender<Finished>,
        shutdown: &CancellationToken,
    ) -> Option<Vec<Effect>> {
        let c = &self.config;
        match ev {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                *link = LinkState {
                    connected: true,
                    failures: 0,
                };
                self.status.up();
                log::info!("upstream: connected to {}:{}", c.host, c.port);
                let mut effects = self.state.connected();
                effects.extend(self.lease().await);
                Some(effects)
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                Some(
                    self.state
                        .message(&p.topic, &p.payload, Instant::now(), jitter()),
                )
            }
            Ok(_) => Some(Vec::new()),
            Err(e) => {
                let failures = link.failures.saturating_add(1);
                let delay = reconnect_delay(failures, c.reconnect_max);
                if link.connected {
                    log::warn!("upstream: connection lost: {e}; reconnecting");
                } else if failures == 1 || failures.is_multiple_of(20) {
                    log::warn!(
                        "upstream: cannot connect to {}:{}: {e} (attempt {failures}, next in {delay:?})",
                        c.host,
                        c.port
                    );
                }
                *link = LinkState {
                    connected: false,
                    failures,
                };
                self.status.down(e.to_string());
                let effects = self.state.disconnected();
                self.apply(client, effects, finished).await;
                tokio::select! {
                    _ = shutdown.cancelled() => None,
                    _ = tokio::time::sleep(delay) => Some(Vec::new()),
                }
            }
        }
    }

    /// Gives up on requests unanswered for too long, then leases what is due.
    async fn on_tick(&mut self) -> Vec<Effect> {
        let timeout = self.config.response_timeout;
        let mut effects = self.state.tick(Instant::now(), timeout, jitter());
        effects.extend(self.lease().await);
        effects
    }

    /// Leases what the buffer has for endpoints that are not busy.
    async fn lease(&mut self) -> Vec<Effect> {
        let c = &self.config;
        let limits = LeaseLimits {
            max_samples: c.batch_max_samples,
            max_bytes: c.batch_max_bytes,
            max_batches: c.max_inflight_batches,
            live_window: c.live_window,
        };
        let now = Instant::now();
        match self.buffer.lease(limits, self.state.busy(now)).await {
            Ok(batches) => self.state.batches_leased(batches, now),
            Err(e) => {
                log::error!("upstream: cannot read the buffer: {e}");
                Vec::new()
            }
        }
    }

    /// Carries out effects in order.
    async fn apply(
        &mut self,
        client: &AsyncClient,
        effects: Vec<Effect>,
        finished: &mpsc::Sender<Finished>,
    ) {
        let mut queue = std::collections::VecDeque::from(effects);
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::Subscribe(filters) => subscribe(client, filters),
                Effect::Publish { topic, payload } => {
                    if let Err(e) = client.try_publish(&topic, QoS::AtLeastOnce, false, payload) {
                        log::warn!("upstream: cannot queue a publish on {topic}: {e}");
                    }
                }
                Effect::SendBatch {
                    key,
                    topic,
                    payload,
                } => {
                    if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, false, payload) {
                        log::warn!("upstream: cannot queue a batch: {e}");
                        queue.extend(self.state.send_failed(key, Instant::now(), jitter()));
                    }
                }
                Effect::Ack(key) => match self.buffer.ack(key).await {
                    Ok(n) => log::debug!("upstream: {n} samples confirmed"),
                    Err(e) => {
                        log::error!("upstream: confirmed samples not removed from the buffer: {e}")
                    }
                },
                Effect::Release(key) => {
                    if let Err(e) = self.buffer.release(key).await {
                        log::warn!("upstream: cannot release a batch: {e}");
                    }
                }
                Effect::Park {
                    key,
                    status,
                    reason,
                } => {
                    if let Err(e) = self.buffer.park(key, status, reason).await {
                        log::error!("upstream: cannot park refused samples: {e}");
                    }
                }
                Effect::Execute {
                    endpoint,
                    kind,
                    command,
                } => {
                    let Some(target) = self.targets.get(&endpoint).cloned() else {
                        continue;
                    };
                    let tx = finished.clone();
                    tokio::spawn(async move {
                        let result = downlink::execute(target, &kind, command).await;
                        let _ = tx.send((endpoint, kind, result)).await;
                    });
                }
                Effect::ConfigPushed(remote) => match &self.pushed {
                    Some(pushed) => {
                        if pushed.try_send(remote).is_err() {
                            log::warn!("upstream: a configuration is already being applied");
                        }
                    }
                    None => log::debug!("upstream: remote configuration is off"),
                },
            }
        }
    }
}

/// Receives from an optional channel; pending forever without one.
async fn recv<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn jitter() -> f64 {
    rand::thread_rng().gen()
}

fn subscribe(client: &AsyncClient, filters: Vec<String>) {
    let filters: Vec<SubscribeFilter> = filters
        .into_iter()
        .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce))
        .collect();
    for chunk in filters.chunks(64) {
        if let Err(e) = client.try_subscribe_many(chunk.to_vec()) {
            log::warn!("upstream: cannot queue SUBSCRIBE: {e}");
        }
    }
}

/// Sends DISCONNECT and drives the event loop until it is on the wire (bounded).
async fn disconnect(client: &AsyncClient, events: &mut EventLoop) {
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(ev) = events.poll().await {
            if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
}

pub(super) fn mqtt_options(c: &Upstream) -> std::io::Result<MqttOptions> {
    let mut opts = MqttOptions::new(c.client_id.clone(), c.host.clone(), c.port);
    opts.set_keep_alive(c.keepalive)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE);
    if let Some(user) = &c.username {
        let password = c.password.as_ref().map(|p| p.expose().to_owned());
        opts.set_credentials(user.clone(), password.unwrap_or_default());
    }
    if let Some(tls) = &c.tls {
        opts.set_transport(tls_transport(tls)?);
    }
    Ok(opts)
}

/// Builds rumqttc's TLS transport from PEM files (rustls, the ring provider): the server
/// is checked against `ca_file`, or against the system's trust store when there is none.
/// Verification is always on.
fn tls_transport(tls: &Tls) -> std::io::Result<rumqttc::Transport> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
    };
    let client_auth = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        _ => None,
    };
    if let Some(ca_file) = &tls.ca_file {
        return Ok(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Simple {
            ca: read(ca_file)?,
            alpn: None,
            client_auth,
        }));
    }
    Ok(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
        std::sync::Arc::new(system_trust_config(client_auth)?),
    )))
}

/// A rustls client configuration trusting the system's CA certificates.
fn system_trust_config(
    client_auth: Option<(Vec<u8>, Vec<u8>)>,
) -> std::io::Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(invalid(format!(
            "no trusted CA certificates in the system store (install ca-certificates, or set upstream.tls.ca_file){}",
            if why.is_empty() { String::new() } else { format!(": {why}") }
        )));
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| invalid(e.to_string()))?
    .with_root_certificates(roots);
    match client_auth {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(&cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(format!("client certificate: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(&key)
                .map_err(|e| invalid(format!("client key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| invalid(format!("client certificate and key: {e}")))
        }
    }
}

/// Capped exponential backoff for reconnects: 0.5 s, 1 s, 2 s, ... up to `max`.
fn reconnect_delay(failures: u32, max: Duration) -> Duration {
    let exp = Duration::from_millis(500).saturating_mul(1u32 << failures.min(16).saturating_sub(1));
    exp.min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_double_up_to_the_cap() {
        let max = Duration::from_secs(30);
        assert_eq!(reconnect_delay(1, max), Duration::from_millis(500));
        assert_eq!(reconnect_delay(2, max), Duration::from_secs(1));
        assert_eq!(reconnect_delay(4, max), Duration::from_secs(4));
        assert_eq!(reconnect_delay(40, max), max);
    }
}
