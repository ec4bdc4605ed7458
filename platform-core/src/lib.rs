//! Embedded Kaa-compatible platform core: the 1/KP codec, KPC (MQTT over TCP, TLS and
//! WebSocket, HTTP), CCM, EPR, EPL, the DCX, EPMX, CMX and CEX extensions, their storage
//! and the REST API. Knows nothing of the gateway.
//!
//! [`Core::start`] opens the database, provisions what the config lists, binds the
//! listeners and returns their addresses; everything stops on the given cancellation token.

pub mod api;
pub mod bus;
pub mod ccm;
pub mod config;
pub mod epl;
pub mod epr;
pub mod ext;
pub mod kp1;
pub mod kpc;
pub mod mirror;
pub mod mqtt;
pub mod secret;
pub mod sessions;
pub mod store;
pub mod tsdb;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::CoreConfig;
use kpc::context::{ConnContext, ConnectionLimits};
use kpc::turns::Budget;
pub use store::{StoreError, StoreHandle};

/// Errors that stop the core from starting.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen for HTTP on {addr}: {source}")]
    BindHttp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("MQTT/TLS listener: {0}")]
    Tls(#[from] kpc::tls::TlsError),
    #[error(transparent)]
    Nats(#[from] bus::nats::NatsError),
    #[error("cannot listen for MQTT on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running core.
#[derive(Debug)]
pub struct Core {
    /// Where the MQTT listener is bound (useful with port 0).
    pub mqtt_addr: SocketAddr,
    /// Where the HTTP listener is bound, when configured.
    pub http_addr: Option<SocketAddr>,
    /// Where the MQTT/TLS listener is bound, when configured.
    pub tls_addr: Option<SocketAddr>,
    /// The extensions (DCX, EPMX, CMX, CEX and configured instances) and the live-session hub.
    pub extensions: ext::Extensions,
    /// KPC counters.
    pub stats: kpc::stats::Stats,
    /// The event bus (9/ELCE lifecycle events).
    pub bus: std::sync::Arc<dyn bus::EventBus>,
    /// The NATS bus, with `[core.nats]`.
    pub nats: Option<std::sync::Arc<bus::nats::NatsBus>>,
    pub store: StoreHandle,
    task: JoinHandle<()>,
}

impl Core {
    /// Opens storage, provisions `config`'s applications, endpoints and credentials, and
    /// starts the listeners.
    pub async fn start(config: CoreConfig, shutdown: CancellationToken) -> Result<Self, CoreError> {
        let store = StoreHandle::open_with(&config.database, config.durability)?;
        let core_store = store.clone();
        let (apps, eps, creds) = (
            config.applications.clone(),
            config.endpoints.clone(),
            config.credentials.clone(),
        );
        store
            .call(move |c| {
                epr::provision(c, &apps, &eps)?;
                ccm::provision(c, &creds)
            })
            .await?;
        let tls_acceptor = config
            .tls
            .as_ref()
            .map(|t| kpc::tls::acceptor(&t.files))
            .transpose()?;
        let (listener, mqtt_addr) =
            kpc::listener::bind(config.mqtt.listen)
                .await
                .map_err(|source| CoreError::Bind {
                    addr: config.mqtt.listen,
                    source,
                })?;
        let hub = sessions::Hub::new();
        let (bus, remote): (std::sync::Arc<dyn bus::EventBus>, _) = match config.nats.clone() {
            None => (std::sync::Arc::new(bus::LocalBus::new(1024)), None),
            Some(settings) => {
                let push_hub = hub.clone();
                let on_push: bus::nats::PushHandler =
                    std::sync::Arc::new(move |x| ext::remote::push(&push_hub, x));
                let nats = bus::nats::NatsBus::start(settings, on_push, shutdown.clone()).await?;
                (nats.clone(), Some(nats))
            }
        };
        let stats = kpc::stats::Stats::new();
        let mut epmx = config.epmx.clone();
        // EPL owns its connectivity keys: endpoints may read them, not write them.
        for k in [&config.epl.connected_key, &config.epl.connectivity_ts_key] {
            if !epmx.read_only.contains(k) {
                epmx.read_only.push(k.clone());
            }
        }
        let mut extensions = ext::Extensions::new(
            store.clone(),
            hub.clone(),
            epmx,
            config.bcx.clone(),
            config.extension_timeout,
            &config.extensions,
            bus.clone(),
            remote.clone(),
        );
        if let (Some(nats), Some(settings)) = (&remote, &config.nats) {
            extensions.registry =
                mirror::sync::start(nats, settings, &store, &hub, &shutdown).await;
        }
        let epl = epl::Epl::new(store.clone(), bus.clone(), config.epl.clone());
        let epl_at_stop = epl.clone();
        if let Some(nats) = &remote {
            // Other replicas ask which endpoints this one holds, and announce theirs.
            let here = epl.clone();
            nats.serve_presence(
                std::sync::Arc::new(move |asked| here.held_here(asked)),
                shutdown.clone(),
            )
            .await?;
            tokio::spawn(api::serve_forwarded(
                nats.clone(),
                extensions.clone(),
                stats.clone(),
                shutdown.clone(),
            ));
            let mut changes = nats.remote_changes();
            let (follow, stop) = (epl.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        change = changes.recv() => match change {
                            Ok((endpoints, connected)) => {
                                follow.remote_change(endpoints, connected).await
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                                log::warn!("epl: {n} connectivity change(s) of other replicas missed")
                            }
                            Err(_) => break,
                        },
                    }
                }
            });
        }
        let router = kpc::Dispatcher::new(extensions.clone(), config.max_payload_bytes)
            .with_epl(epl.clone());
        // Raw samples of endpoints deleted before a stop cut their purge short.
        let purge = store.clone();
        tokio::spawn(async move {
            if let Err(e) = tsdb::purge_deleted(&purge).await {
                log::error!("core store: purging deleted endpoints' samples failed: {e}");
            }
        });
        // Idle endpoints are disconnected by a periodic sweep.
        let sweep_stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = sweep_stop.cancelled() => break,
                    _ = tick.tick() => epl.sweep().await,
                }
            }
        });
        // One bounded pool of password checks for every listener and the REST API.
        let passwords = ccm::password::PasswordChecker::new(
            ccm::password::DEFAULT_MAX_CONCURRENT,
            ccm::password::DEFAULT_MAX_WAITING,
        );
        let auth = ccm::Authenticator::new(
            store.clone(),
            config.mqtt.allow_anonymous,
            passwords.clone(),
        );
        let ctx = Arc::new(ConnContext {
            router: router.clone(),
            auth: auth.clone(),
            hub: hub.clone(),
            limits: ConnectionLimits {
                max_packet_size: config.mqtt.max_packet_size,
                connect_timeout: config.mqtt.connect_timeout,
            },
            stats: stats.clone(),
            in_flight: Budget::new(config.mqtt.max_requests_in_flight),
        });
        let mut tasks = Vec::new();
        let mut http_addr = None;
        let https = config
            .http
            .as_ref()
            .and_then(|h| h.tls.as_ref())
            .map(kpc::tls::https_acceptor)
            .transpose()?;
        if let Some(http) = &config.http {
            let (listener, addr) =
                kpc::http::bind(http.listen)
                    .await
                    .map_err(|source| CoreError::BindHttp {
                        addr: http.listen,
                        source,
                    })?;
            http_addr = Some(addr);
            let mut extra = Vec::new();
            if let Some(admin) = config.api.clone() {
                extra.push(api::router(api::ApiContext {
                    extensions: extensions.clone(),
                    auth: admin,
                    stats: stats.clone(),
                    passwords: passwords.clone(),
                }));
            }
            if http.websocket {
                let ws_ctx = Arc::new(ConnContext {
                    auth: auth.with_anonymous(http.websocket_allow_anonymous),
                    ..(*ctx).clone()
                });
                extra.push(kpc::ws::routes(
                    ws_ctx,
                    config.mqtt.max_connections,
                    shutdown.clone(),
                ));
            }
            let secure = https.is_some();
            tasks.push(tokio::spawn(kpc::http::serve(
                listener,
                https,
                kpc::http::HttpLimits {
                    max_connections: http.max_connections,
                    idle: http.idle_timeout,
                    stats: stats.clone(),
                },
                router.clone(),
                extra,
                config.max_payload_bytes,
                shutdown.clone(),
            )));
            log::info!(
                "platform core: {} listening on {addr} (1/KP binding{}{})",
                if secure { "HTTPS" } else { "HTTP" },
                if config.api.is_some() {
                    ", REST API"
                } else {
                    ""
                },
                if http.websocket {
                    ", MQTT over WebSocket on /ws"
                } else {
                    ""
                }
            );
        }
        let mut tls_addr = None;
        if let (Some(t), Some(acceptor)) = (&config.tls, tls_acceptor) {
            let (listener, addr) =
                kpc::listener::bind(t.listen)
                    .await
                    .map_err(|source| CoreError::Bind {
                        addr: t.listen,
                        source,
                    })?;
            tls_addr = Some(addr);
            let tls_ctx = Arc::new(ConnContext {
                auth: auth.with_anonymous(t.allow_anonymous),
                ..(*ctx).clone()
            });
            tasks.push(tokio::spawn(kpc::listener::run(
                listener,
                tls_ctx,
                Some(acceptor),
                config.mqtt.max_connections,
                shutdown.clone(),
            )));
            log::info!("platform core: MQTT/TLS listening on {addr}");
        }
        tasks.push(tokio::spawn(kpc::listener::run(
            listener,
            ctx,
            None,
            config.mqtt.max_connections,
            shutdown,
        )));
        let task = tokio::spawn(async move {
            for t in tasks {
                let _ = t.await;
            }
            // Sessions cut by the shutdown leave their endpoints disconnected.
            epl_at_stop.close_all().await;
        });
        log::info!(
            "platform core: MQTT listening on {mqtt_addr}, database {}",
            config.database.display()
        );
        Ok(Self {
            mqtt_addr,
            http_addr,
            tls_addr,
            extensions,
            stats,
            bus,
            nats: remote,
            store: core_store,
            task,
        })
    }

    /// Adds applications, endpoints and credentials at run time (idempotent).
    pub async fn provision(
        &self,
        apps: Vec<epr::ApplicationSpec>,
        endpoints: Vec<epr::EndpointSpec>,
        credentials: Vec<ccm::BasicCredentialSpec>,
    ) -> Result<(), StoreError> {
        self.store
            .call(move |c| {
                epr::provision(c, &apps, &endpoints)?;
                ccm::provision(c, &credentials)
            })
            .await
    }

    /// How many data samples the core has stored (all endpoints).
    pub async fn stored_samples(&self) -> Result<u64, StoreError> {
        self.store.call(tsdb::count_samples).await
    }

    /// Waits until the listeners have stopped (after the shutdown token fired).
    pub async fn wait(self) {
        let _ = self.task.await;
        if let Some(nats) = &self.nats {
            nats.close().await;
        }
    }
}
