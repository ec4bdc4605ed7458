//! Runtime configuration of the core (already validated; the gateway's config module
//! builds it from TOML and reports every error with its path).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::ccm::BasicCredentialSpec;
use crate::epr::{ApplicationSpec, EndpointSpec};

/// Default largest MQTT packet accepted by KPC.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 256 * 1024;
/// Default largest 1/KP payload an extension accepts (over it: 413).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 128 * 1024;

/// The MQTT/TCP listener.
#[derive(Debug, Clone)]
pub struct MqttListener {
    pub listen: SocketAddr,
    pub max_packet_size: usize,
    pub max_connections: usize,
    pub connect_timeout: Duration,
    /// Accept CONNECT without user name and password (token-only clients, like KaaIoT's
    /// example clients); a token used in a topic must still exist and be active.
    pub allow_anonymous: bool,
}

/// The HTTP listener (1/KP binding, REST API, MQTT over WebSocket on `/ws`).
#[derive(Debug, Clone)]
pub struct HttpListener {
    pub listen: SocketAddr,
    /// Serve MQTT over WebSocket on `/ws` (with the MQTT listener's limits).
    pub websocket: bool,
    /// Token-only WebSocket MQTT clients (no user name/password).
    pub websocket_allow_anonymous: bool,
    /// Certificate and key for HTTPS (and WSS); `None`: plain HTTP.
    pub tls: Option<crate::kpc::tls::TlsFiles>,
}

/// The MQTT/TLS listener.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub listen: SocketAddr,
    pub files: crate::kpc::tls::TlsFiles,
    /// Token-only clients without user name/password or client certificate.
    pub allow_anonymous: bool,
}

/// Everything the core needs to start.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// SQLite file for the registry, credentials and time series.
    pub database: PathBuf,
    pub mqtt: MqttListener,
    /// `None`: no HTTP listener.
    pub http: Option<HttpListener>,
    /// `None`: no MQTT/TLS listener.
    pub tls: Option<TlsListener>,
    /// Per-key metadata restrictions for endpoints (EPMX).
    pub epmx: crate::ext::EpmxPolicy,
    /// Deadline of one extension call (over it: 504).
    pub extension_timeout: Duration,
    /// Extension instances besides the default `dcx`, `epmx`, `cmx`, `cex`.
    pub extensions: Vec<(String, crate::ext::ExtensionKind)>,
    /// The REST API's admin; `None`: no REST API.
    pub api: Option<crate::api::AdminAuth>,
    /// Endpoint lifecycle (connectivity) settings.
    pub epl: crate::epl::EplConfig,
    pub max_payload_bytes: usize,
    pub applications: Vec<ApplicationSpec>,
    pub endpoints: Vec<EndpointSpec>,
    pub credentials: Vec<BasicCredentialSpec>,
}
