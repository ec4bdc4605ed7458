//! The local web page: claim the gateway, watch it, configure it and diagnose it from a
//! browser on the site LAN (axum + askama, server-rendered, every asset in the binary).
//!
//! - [`crate::web_settings`]: `[web]` at run time (a leaf module, built by `config`);
//! - [`auth`]: setup code, admin password, sessions, CSRF tokens, login throttling;
//! - [`guard`]: the middleware every request passes (session, CSRF, security headers);
//! - [`pages`]: dashboard, devices and live values, logs; [`buffer_page`]: dead letters,
//!   drops, export;
//! - [`config_pages`], [`edit_forms`] + [`forms`]: configuration forms, raw editor,
//!   history, rollback;
//! - [`tools`]: "test connection" and "read now";
//! - [`metrics`]: `/metrics` (Prometheus text) and `/healthz`;
//! - [`assets`]: the embedded CSS and JavaScript.
//!
//! The page never changes the running gateway itself: a saved configuration goes to the
//! supervisor as an [`ApplyRequest`], which restarts the field side exactly as a remote
//! configuration does (the buffer and everything in it stay).

pub mod assets;
pub mod auth;
pub mod buffer_page;
pub mod commission;
pub mod config_pages;
pub mod edit_forms;
pub mod forms;
pub mod guard;
pub mod metrics;
pub mod pages;
pub mod tools;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::buffer::BufferHandle;
use crate::config::Config;
use crate::config_store::ConfigStore;
use crate::live::LiveValues;
use crate::source::health::HealthRegistry;
use crate::source::modbus::BusHandle;
use crate::upstream::LinkStatus;
pub use crate::web_settings::WebSettings;

/// Largest request body (the raw configuration editor is the biggest).
pub const MAX_BODY: usize = 2 * 1024 * 1024;

/// A validated, saved configuration for the supervisor to apply.
#[derive(Debug)]
pub struct ApplyRequest {
    pub config: Config,
    pub text: String,
    /// Answered once the new field side runs.
    pub done: oneshot::Sender<()>,
}

/// What is running now (replaced by the supervisor on every apply).
#[derive(Debug)]
pub struct Running {
    pub config: Config,
    /// The configuration text in force (secrets included: never shown as is).
    pub text: String,
    /// The bus tasks of the current field side ("read now" goes through them).
    pub buses: Vec<(String, BusHandle)>,
}

/// The embedded core, as the page sees it.
#[derive(Debug, Clone)]
pub struct CoreView {
    /// The REST API's routes, for a caller that authenticated the user itself.
    pub api: Router,
    pub stats: platform_core::kpc::stats::Stats,
    pub extensions: platform_core::ext::Extensions,
}

/// Everything the page reads; cheap to clone.
#[derive(Debug, Clone)]
pub struct Web {
    pub settings: WebSettings,
    pub state_dir: PathBuf,
    pub buffer: BufferHandle,
    pub health: HealthRegistry,
    pub link: Arc<LinkStatus>,
    pub live: Arc<LiveValues>,
    pub running: Arc<RwLock<Running>>,
    pub store: ConfigStore,
    pub apply: mpsc::Sender<ApplyRequest>,
    pub core: Option<CoreView>,
    pub auth: Arc<auth::Auth>,
    pub started: Instant,
    /// Buffer depth samples of the last hour (for the dashboard's chart).
    pub depth: Arc<pages::DepthHistory>,
    /// Bus scans started from the page.
    pub scans: Arc<commission::Scans>,
}

impl Web {
    /// A copy of the running configuration and its text.
    pub fn running(&self) -> (Config, String) {
        let r = self.running.read().unwrap_or_else(|p| p.into_inner());
        (r.config.clone(), r.text.clone())
    }
}

/// Every route of the page.
pub fn router(web: Web) -> Router {
    let mut app = Router::new()
        .route("/setup", get(pages::setup_page).post(pages::setup_submit))
        .route("/login", get(pages::login_page).post(pages::login_submit))
        .route("/logout", post(pages::logout))
        .route("/", get(pages::dashboard))
        .route("/devices", get(pages::devices))
        .route("/buffer", get(buffer_page::buffer_page))
        .route("/buffer/retry", post(buffer_page::dead_letters_retry))
        .route("/buffer/purge", post(buffer_page::dead_letters_purge))
        .route("/buffer/pending.csv", get(buffer_page::export_pending))
        .route("/logs", get(pages::logs_page))
        .route("/logs/download", get(pages::logs_download))
        .route("/api/status", get(pages::status_json))
        .route("/api/devices", get(pages::devices_json))
        .route("/api/history", get(pages::history_json))
        .route("/api/logs", get(pages::logs_json))
        .route("/config", get(config_pages::overview))
        .route(
            "/config/upstream",
            get(config_pages::upstream_form).post(config_pages::upstream_save),
        )
        .route(
            "/config/buses/{index}",
            get(config_pages::bus_form).post(config_pages::bus_save),
        )
        .route(
            "/config/buses/{index}/delete",
            post(config_pages::bus_delete),
        )
        .route(
            "/config/devices/{index}",
            get(config_pages::device_form).post(config_pages::device_save),
        )
        .route(
            "/config/devices/{index}/delete",
            post(config_pages::device_delete),
        )
        .route(
            "/config/devices/{index}/points.csv",
            get(edit_forms::points_csv::export),
        )
        .route(
            "/config/devices/{index}/import",
            get(edit_forms::points_csv::import_form).post(edit_forms::points_csv::import),
        )
        .route(
            "/config/raw",
            get(config_pages::raw_form).post(config_pages::raw_save),
        )
        .route("/config/download", get(config_pages::download))
        .route("/config/versions", get(config_pages::versions))
        .route("/config/diff", get(config_pages::diff))
        .route("/config/rollback/{number}", post(config_pages::rollback))
        .route("/tools/test-upstream", post(tools::test_upstream))
        .route("/tools/read-now", post(tools::read_now))
        .route(
            "/tools/scan",
            get(commission::scan_page).post(commission::scan_start),
        )
        .route("/tools/scan/cancel", post(commission::scan_cancel))
        .route("/tools/scan/progress.json", get(commission::scan_progress))
        .route("/tools/registers", get(commission::registers))
        .route("/tools/registers/write", post(commission::registers_write))
        .route("/console", get(pages::console))
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(metrics::healthz))
        .route("/assets/{file}", get(assets::asset))
        .route("/favicon.ico", get(assets::favicon));
    if let Some(core) = &web.core {
        app = app.nest_service("/core", core.api.clone());
    }
    app.layer(axum::middleware::from_fn_with_state(
        web.clone(),
        guard::guard,
    ))
    .layer(DefaultBodyLimit::max(MAX_BODY))
    .with_state(web)
}

/// The client's address, for both plain and TLS connections.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for Peer
{
    fn connect_info(s: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Peer(*s.remote_addr())
    }
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, platform_core::kpc::https::HttpsListener>,
    > for Peer
{
    fn connect_info(
        s: axum::serve::IncomingStream<'_, platform_core::kpc::https::HttpsListener>,
    ) -> Self {
        Peer(*s.remote_addr())
    }
}

/// Why the page could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("web.listen {addr}: cannot listen: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("web TLS: {0}")]
    Tls(#[from] platform_core::kpc::tls::TlsError),
}

/// Binds the listener and serves until `shutdown`; returns the bound address and the task.
pub async fn serve(
    web: Web,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ServeError> {
    let settings = web.settings.clone();
    if let Err(e) = web.auth.ensure_setup_code() {
        log::error!("web page: cannot write the setup code: {e}");
    }
    let tcp = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: settings.listen,
            source,
        })?;
    let addr = tcp.local_addr().map_err(|source| ServeError::Bind {
        addr: settings.listen,
        source,
    })?;
    let app = router(web.clone()).into_make_service_with_connect_info::<Peer>();
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    log::info!("web page: {scheme}://{addr}/");
    tokio::spawn(pages::sample_depth(web, shutdown.clone()));
    let stop = shutdown.clone();
    let task = match &settings.tls {
        Some(files) => {
            let acceptor = platform_core::kpc::tls::https_acceptor(files)?;
            let listener = platform_core::kpc::https::HttpsListener::new(
                tcp,
                acceptor,
                platform_core::kpc::stats::Stats::new(),
                shutdown.clone(),
            )
            .map_err(|source| ServeError::Bind {
                addr: settings.listen,
                source,
            })?;
            tokio::spawn(async move {
                let r = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
                if let Err(e) = r {
                    log::error!("web page stopped: {e}");
                }
            })
        }
        None => tokio::spawn(async move {
            let r = axum::serve(tcp, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = r {
                log::error!("web page stopped: {e}");
            }
        }),
    };
    Ok((addr, task))
}

#[cfg(test)]
mod tests;
