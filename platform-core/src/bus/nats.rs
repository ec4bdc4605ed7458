//! The NATS backend of the bus (I/O actor): publishes events as Kaa Avro records on Kaa
//! subjects, and carries 4/ESP requests to external extension services and their answers
//! back, with session affinity on this replica's own subject.
//!
//! Publishing goes through a bounded queue drained by one task; a full queue (NATS down
//! long enough) drops the event and counts it. The client reconnects by itself, forever;
//! the core starts even when NATS is not up yet.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

#[path = "nats_replicas.rs"]
mod replicas;
pub use replicas::{HeldHere, RemoteChange};

use super::avro::{self, ClientData, ExtensionData};
use super::directory::Directory;
use super::subjects::{self, Names};
use super::{Event, EventBus};
use crate::secret::Secret;

/// How the core proves itself to the NATS server.
#[derive(Debug, Clone, Default)]
pub enum NatsAuth {
    #[default]
    None,
    UserPassword {
        user: String,
        password: Secret,
    },
    Token(Secret),
    /// A `.creds` file (JWT + NKey seed).
    CredsFile(PathBuf),
}

/// `[core.nats]`, validated.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    pub servers: Vec<String>,
    pub auth: NatsAuth,
    /// CA bundle the server's certificate must chain to (implies TLS).
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    pub tls_required: bool,
    pub names: Names,
    /// Events waiting to be published at most; past it new events are dropped and counted.
    pub queue_capacity: usize,
    /// The replica whose registry every replica copies (`None`: each keeps its own).
    pub registry_owner: Option<String>,
    /// The 16/ECAP provider asked about endpoint tokens this registry does not know.
    pub ecap_provider: Option<String>,
}

/// Why an ESP request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EspError {
    #[error("NATS is not connected")]
    Unavailable,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Encode(String),
}

/// What the bus does with an `ExtensionData` nobody is waiting for (a push): returns how
/// many sessions here got it.
pub type PushHandler = Arc<dyn Fn(ExtensionData) -> usize + Send + Sync>;

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<ExtensionData>>>>;

/// Counters of the NATS bus.
#[derive(Debug, Default)]
pub struct NatsCounters {
    pub published: AtomicU64,
    pub dropped: AtomicU64,
    pub esp_requests: AtomicU64,
    pub esp_timeouts: AtomicU64,
    pub malformed: AtomicU64,
}

/// The NATS bus; cheap to share behind an `Arc`.
pub struct NatsBus {
    client: async_nats::Client,
    names: Names,
    queue: mpsc::Sender<(String, Bytes)>,
    local: broadcast::Sender<Event>,
    pending: Pending,
    pub counters: Arc<NatsCounters>,
    closing: CancellationToken,
    publisher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    ecap_provider: Option<String>,
    directory: Arc<Mutex<Directory>>,
    remote: broadcast::Sender<RemoteChange>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// Errors that stop the NATS bus from starting (bad settings, not an absent server).
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("NATS credentials file {path}: {source}")]
    Creds {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("NATS: {0}")]
    Connect(String),
    #[error("NATS subscription: {0}")]
    Subscribe(String),
}

impl NatsBus {
    /// Connects (in the background when the server is not up yet), subscribes to this
    /// replica's and KPC's `ExtensionData` subjects and starts the publisher.
    /// `on_push` gets the `ExtensionData` that answer no pending request.
    pub async fn start(
        settings: NatsSettings,
        on_push: PushHandler,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, NatsError> {
        let names = settings.names.clone();
        let errors = Arc::new(AtomicU64::new(0));
        let mut opts = async_nats::ConnectOptions::new()
            .name(format!("kp-gateway core {}", names.replica_id))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            // The client's own outgoing buffer is bounded like ours, so an outage fills
            // them and drops events (counted) instead of holding memory without end.
            .client_capacity(settings.queue_capacity.clamp(16, 1 << 20))
            .event_callback(move |ev| {
                let errors = errors.clone();
                async move { log_event(ev, &errors) }
            });
        opts = match &settings.auth {
            NatsAuth::None => opts,
            NatsAuth::UserPassword { user, password } => {
                opts.user_and_password(user.clone(), password.expose().to_owned())
            }
            NatsAuth::Token(t) => opts.token(t.expose().to_owned()),
            NatsAuth::CredsFile(path) => {
                opts.credentials_file(path)
                    .await
                    .map_err(|source| NatsError::Creds {
                        path: path.clone(),
                        source,
                    })?
            }
        };
        if let Some(ca) = &settings.tls_ca_file {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &settings.tls_client {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        if settings.tls_required {
            opts = opts.require_tls(true);
        }
        let client = opts
            .connect(settings.servers.clone())
            .await
            .map_err(|e| NatsError::Connect(e.to_string()))?;
        let pending: Pending = Arc::default();
        let counters = Arc::new(NatsCounters::default());
        let replica = client
            .subscribe(subjects::replica_extension_data(&names.replica_id))
            .await
            .map_err(|e| NatsError::Subscribe(e.to_string()))?;
        let service = client
            .queue_subscribe(
                subjects::service_extension_data(&names.kpc),
                names.kpc.clone(),
            )
            .await
            .map_err(|e| NatsError::Subscribe(e.to_string()))?;
        let inbound = futures_util::stream::select(replica, service);
        let directory: Arc<Mutex<Directory>> = Arc::default();
        tokio::spawn(receive(
            Inbound {
                client: client.clone(),
                pending: pending.clone(),
                counters: counters.clone(),
                directory: directory.clone(),
                on_push,
                service_subject: subjects::service_extension_data(&names.kpc),
            },
            inbound,
            shutdown.clone(),
        ));
        let events = client
            .subscribe(subjects::connectivity_events(&names.kpc))
            .await
            .map_err(|e| NatsError::Subscribe(e.to_string()))?;
        let remote = broadcast::channel(1024).0;
        tokio::spawn(replicas::watch_replicas(
            events,
            names.replica_id.clone(),
            directory.clone(),
            remote.clone(),
            counters.clone(),
            shutdown.clone(),
        ));
        let (queue, rx) = mpsc::channel(settings.queue_capacity.max(1));
        // The publisher outlives the core's shutdown token: events of closing sessions
        // still go out; `close` stops it once the listeners are done.
        let closing = CancellationToken::new();
        let publisher = tokio::spawn(publish_loop(
            client.clone(),
            rx,
            counters.clone(),
            closing.clone(),
        ));
        Ok(Arc::new(Self {
            client,
            names,
            queue,
            local: broadcast::channel(1024).0,
            pending,
            counters,
            closing,
            publisher: Mutex::new(Some(publisher)),
            ecap_provider: settings.ecap_provider.clone(),
            directory,
            remote,
        }))
    }

    /// The names this core answers to and publishes as.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Stops publishing: what is queued goes out while NATS is up (2 s at most), the rest
    /// is counted as dropped. Call after the listeners have stopped.
    pub async fn close(&self) {
        self.closing.cancel();
        let publisher = lock(&self.publisher).take();
        if let Some(p) = publisher {
            let _ = p.await;
        }
    }

    /// The counters as JSON (`/api/v1/kpc/stats`, key `nats`).
    pub fn stats_json(&self) -> serde_json::Value {
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "connected": self.connected(),
            "replicaId": self.names.replica_id,
            "eventsPublished": n(&c.published),
            "eventsDropped": n(&c.dropped),
            "espRequests": n(&c.esp_requests),
            "espTimeouts": n(&c.esp_timeouts),
            "malformed": n(&c.malformed),
        })
    }

    /// Asks the 16/ECAP provider, if one is configured, about `token` of application
    /// `app`: `None` without a provider.
    pub async fn validate_token(
        &self,
        app: &str,
        token: &str,
        timeout: Duration,
    ) -> Option<Result<avro::TokenAnswer, EspError>> {
        let provider = self.ecap_provider.as_deref()?;
        if !self.connected() {
            return Some(Err(EspError::Unavailable));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let now = crate::store::now_ms();
        let body = match avro::encode_token_request(&id, now, timeout_ms, app, token) {
            Ok(b) => b,
            Err(e) => return Some(Err(EspError::Encode(e.to_string()))),
        };
        let request = async_nats::Request::new()
            .payload(body.into())
            .timeout(Some(timeout));
        let asked = self
            .client
            .send_request(subjects::ecap_token_request(provider), request)
            .await;
        Some(match asked {
            Ok(msg) => avro::decode_token_response(&msg.payload).map_err(|e| {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                EspError::Encode(format!("malformed answer from {provider}: {e}"))
            }),
            Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => {
                Err(EspError::Timeout(timeout))
            }
            Err(e) => {
                log::warn!("nats: token provider {provider}: {e}");
                Err(EspError::Unavailable)
            }
        })
    }

    /// Is the connection to NATS up?
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Sends `ClientData` to extension `instance` and waits for its `ExtensionData`
    /// (matched by correlation ID) on this replica's subject.
    pub async fn esp_request(
        &self,
        instance: &str,
        request: ClientData,
        timeout: Duration,
    ) -> Result<ExtensionData, EspError> {
        if !self.connected() {
            return Err(EspError::Unavailable);
        }
        let bytes =
            avro::encode_client_data(&request).map_err(|e| EspError::Encode(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        let id = request.correlation_id.clone();
        lock(&self.pending).insert(id.clone(), tx);
        self.counters.esp_requests.fetch_add(1, Ordering::Relaxed);
        // The timeout covers sending too: during an outage the client's buffer may be full.
        let round_trip = async {
            self.client
                .publish_with_reply(
                    subjects::client_data(instance),
                    subjects::replica_extension_data(&self.names.replica_id),
                    bytes.into(),
                )
                .await
                .map_err(|e| {
                    log::warn!("nats: ClientData to {instance} not sent: {e}");
                    EspError::Unavailable
                })?;
            rx.await.map_err(|_| EspError::Unavailable)
        };
        let answer = match tokio::time::timeout(timeout, round_trip).await {
            Ok(result) => result,
            Err(_) => {
                self.counters.esp_timeouts.fetch_add(1, Ordering::Relaxed);
                Err(EspError::Timeout(timeout))
            }
        };
        lock(&self.pending).remove(&id);
        answer
    }
}

/// Logs connection events; while reconnecting, the 1st, 2nd, 4th, 8th... error only.
fn log_event(ev: async_nats::Event, errors: &AtomicU64) {
    match ev {
        async_nats::Event::Connected => {
            errors.store(0, Ordering::Relaxed);
            log::info!("nats: connected");
        }
        async_nats::Event::Disconnected => log::warn!("nats: disconnected; reconnecting"),
        async_nats::Event::Closed => log::info!("nats: connection closed"),
        other => {
            let n = errors.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                log::warn!("nats: {other} ({n} since the last connect)");
            }
        }
    }
}

/// The next message of `messages`, or `None` once `shutdown` fired or the stream ended:
/// the loop of every NATS actor here.
pub async fn next_or_stop<S>(messages: &mut S, shutdown: &CancellationToken) -> Option<S::Item>
where
    S: futures_util::Stream + Unpin,
{
    tokio::select! {
        _ = shutdown.cancelled() => None,
        m = messages.next() => m,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EventBus for NatsBus {
    fn publish(&self, event: Event) {
        match &event {
            Event::Connected { endpoints, .. } => lock(&self.directory).held_here(endpoints),
            Event::Disconnected { endpoints, .. } => lock(&self.directory).disconnected(endpoints),
            _ => {}
        }
        let subject = subjects::event(&self.names, &event);
        let id = uuid::Uuid::new_v4().to_string();
        match avro::encode_event(&event, &id, &self.names.replica_id) {
            Ok(bytes) => {
                if self.queue.try_send((subject, bytes.into())).is_err() {
                    let n = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_power_of_two() {
                        log::warn!("nats: event queue full; {n} event(s) dropped so far");
                    }
                }
            }
            Err(e) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                log::error!("nats: event not encoded ({e}): {event:?}");
            }
        }
        let _ = self.local.send(event);
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.local.subscribe()
    }

    fn wants_data(&self) -> bool {
        true
    }

    fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    fn held_elsewhere(
        &self,
        endpoints: Vec<String>,
    ) -> futures_util::future::BoxFuture<'_, std::collections::HashSet<String>> {
        Box::pin(self.still_held_elsewhere(endpoints))
    }

    fn orphans(&self) -> futures_util::future::BoxFuture<'_, Vec<(String, String)>> {
        Box::pin(self.find_orphans())
    }
}

async fn publish_loop(
    client: async_nats::Client,
    mut rx: mpsc::Receiver<(String, Bytes)>,
    counters: Arc<NatsCounters>,
    shutdown: CancellationToken,
) {
    loop {
        let (subject, payload) = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = rx.recv() => match next {
                Some(m) => m,
                None => break,
            },
        };
        let sent = tokio::select! {
            _ = shutdown.cancelled() => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                break;
            }
            sent = client.publish(subject, payload) => sent,
        };
        match sent {
            Ok(()) => {
                counters.published.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                log::warn!("nats: event not published: {e}");
            }
        }
    }
    // Shutting down: what is queued still goes out when NATS is up (2 s at most); the rest
    // is counted as dropped.
    let connected = client.connection_state() == async_nats::connection::State::Connected;
    if connected {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok((subject, payload)) = rx.try_recv() {
                if client.publish(subject, payload).await.is_err() {
                    break;
                }
                counters.published.fetch_add(1, Ordering::Relaxed);
            }
            let _ = client.flush().await;
        })
        .await;
    }
    counters
        .dropped
        .fetch_add(rx.len() as u64, Ordering::Relaxed);
    let dropped = counters.dropped.load(Ordering::Relaxed);
    let published = counters.published.load(Ordering::Relaxed);
    if dropped > 0 {
        log::warn!(
            "nats: {published} event(s) handed to the NATS client, {dropped} dropped (queue full or NATS away)"
        );
    } else {
        log::info!("nats: {published} event(s) handed to the NATS client, none dropped");
    }
}

/// What the receiving task needs.
struct Inbound {
    client: async_nats::Client,
    pending: Pending,
    counters: Arc<NatsCounters>,
    directory: Arc<Mutex<Directory>>,
    on_push: PushHandler,
    service_subject: String,
}

async fn receive(
    io: Inbound,
    mut inbound: impl futures_util::Stream<Item = async_nats::Message> + Unpin,
    shutdown: CancellationToken,
) {
    loop {
        let Some(msg) = next_or_stop(&mut inbound, &shutdown).await else {
            break;
        };
        if msg.status.is_some() && msg.payload.is_empty() {
            // A server status (e.g. "no responders" for a ClientData nobody serves): it
            // names no request, so the request runs into its timeout (504).
            log::debug!("nats: status {:?} on {}", msg.status, msg.subject);
            continue;
        }
        let x = match avro::decode_extension_data(&msg.payload) {
            Ok(x) => x,
            Err(e) => {
                io.counters.malformed.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "nats: malformed ExtensionData on {} ({} bytes) ignored: {e}",
                    msg.subject,
                    msg.payload.len()
                );
                continue;
            }
        };
        let waiter = lock(&io.pending).remove(&x.correlation_id);
        if let Some(tx) = waiter {
            let _ = tx.send(x);
            continue;
        }
        let endpoint = x.endpoint_id.clone();
        let delivered = (io.on_push)(x);
        // A push to the service subject that no session here took goes on to the
        // replicas holding that endpoint (on their own subject: never passed on again).
        if delivered == 0 && msg.subject.as_str() == io.service_subject {
            let holders = endpoint
                .map(|e| lock(&io.directory).holders(&[e]))
                .unwrap_or_default();
            for (replica, _) in holders {
                log::debug!("nats: push passed on to replica {replica}");
                let subject = subjects::replica_extension_data(&replica);
                if let Err(e) = io.client.publish(subject, msg.payload.clone()).await {
                    log::warn!("nats: push not passed on to {replica}: {e}");
                }
            }
        }
    }
}
