//! Embedded Kaa-compatible platform core: the 1/KP codec, KPC (MQTT server), CCM, EPR,
//! the DCX and EPMX extensions and their storage. Knows nothing of the gateway.
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
pub mod mqtt;
pub mod store;
pub mod tsdb;

use std::net::SocketAddr;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::CoreConfig;
use kpc::connection::ConnectionLimits;
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
    /// The event bus (9/ELCE lifecycle events).
    pub bus: std::sync::Arc<dyn bus::EventBus>,
    pub store: StoreHandle,
    task: JoinHandle<()>,
}

impl Core {
    /// Opens storage, provisions `config`'s applications, endpoints and credentials, and
    /// starts the listeners.
    pub async fn start(config: CoreConfig, shutdown: CancellationToken) -> Result<Self, CoreError> {
        let store = StoreHandle::open(&config.database)?;
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
        let (listener, mqtt_addr) =
            kpc::listener::bind(config.mqtt.listen)
                .await
                .map_err(|source| CoreError::Bind {
                    addr: config.mqtt.listen,
                    source,
                })?;
        let bus: std::sync::Arc<dyn bus::EventBus> = std::sync::Arc::new(bus::LocalBus::new(1024));
        let epl = epl::Epl::new(store.clone(), bus.clone(), config.epl.clone());
        let router =
            kpc::Router::new(store.clone(), config.max_payload_bytes).with_epl(epl.clone());
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
        let auth = ccm::Authenticator::new(store.clone(), config.mqtt.allow_anonymous);
        let mut http_addr = None;
        let mut http_task = None;
        if let Some(http) = &config.http {
            let (listener, addr) =
                kpc::http::bind(http.listen)
                    .await
                    .map_err(|source| CoreError::BindHttp {
                        addr: http.listen,
                        source,
                    })?;
            http_addr = Some(addr);
            let api = config
                .api
                .clone()
                .map(|auth| api::router(store.clone(), auth));
            http_task = Some(tokio::spawn(kpc::http::serve(
                listener,
                router.clone(),
                api,
                config.max_payload_bytes,
                shutdown.clone(),
            )));
            log::info!("platform core: HTTP (1/KP binding) listening on {addr}");
        }
        let limits = ConnectionLimits {
            max_packet_size: config.mqtt.max_packet_size,
            connect_timeout: config.mqtt.connect_timeout,
        };
        let mqtt_task = tokio::spawn(kpc::listener::run(
            listener,
            router,
            auth,
            limits,
            config.mqtt.max_connections,
            shutdown,
        ));
        let task = tokio::spawn(async move {
            let _ = mqtt_task.await;
            if let Some(t) = http_task {
                let _ = t.await;
            }
        });
        log::info!(
            "platform core: MQTT listening on {mqtt_addr}, database {}",
            config.database.display()
        );
        Ok(Self {
            mqtt_addr,
            http_addr,
            bus,
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

    /// Waits until the listeners have stopped (after the shutdown token fired).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}
