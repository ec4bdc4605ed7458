//! The core's configuration: the `[core]` section as written ([`raw`]), its defaults, its
//! validation ([`validate`]) and the runtime [`CoreConfig`] the core starts from.
//!
//! The core owns its invariants: whoever embeds it (the gateway) parses its own file,
//! hands the `[core]` table to [`validate::validate`] and gets every problem back as
//! `core.<path>: <message>` in the same [`Problems`] list as its own.

mod nats;
pub mod raw;
pub mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ccm::BasicCredentialSpec;
use crate::epr::{ApplicationSpec, EndpointSpec};

/// Default largest MQTT packet accepted by KPC.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 256 * 1024;
/// Default largest 1/KP payload an extension accepts (over it: 413).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 128 * 1024;

/// Every problem found in a configuration, one per line as `path: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigErrors(pub Vec<String>);

/// Collects `path: message` problems while a configuration is checked, so that every
/// one is reported at once.
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    pub fn add(&mut self, path: impl AsRef<str>, msg: impl AsRef<str>) {
        self.0.push(format!("{}: {}", path.as_ref(), msg.as_ref()));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many problems so far (to tell whether a part added any).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `Ok(value)` when nothing was found, else every problem.
    pub fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.0))
        }
    }
}

/// A file name from the configuration: absolute as given, relative to `state_dir` else.
pub fn resolve(state_dir: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        p.to_owned()
    } else {
        state_dir.join(p)
    }
}

/// Reports listeners that would bind the same port on overlapping addresses (the same
/// IP, or one of them on the unspecified address). Port 0 (any free port) never clashes.
pub fn check_listen_clashes(listeners: &[(&str, SocketAddr)], e: &mut Problems) {
    for (i, (path, a)) in listeners.iter().enumerate() {
        for (other, b) in &listeners[..i] {
            let overlap = a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified();
            if a.port() != 0 && a.port() == b.port() && overlap {
                e.add(path, format!("{a} clashes with {other} ({b})"));
            }
        }
    }
}

impl CoreConfig {
    /// A core with every default of `[core]`, storing in `database`: MQTT on 127.0.0.1
    /// with any free port, no HTTP, TLS or REST API, nothing provisioned. Embedders and
    /// tests change what they need with struct update syntax.
    pub fn new(database: PathBuf) -> Self {
        use raw::defaults as d;
        Self {
            database: database.clone(),
            durability: crate::store::Durability::Full,
            mqtt: MqttListener {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                max_packet_size: DEFAULT_MAX_PACKET_SIZE,
                max_connections: d::max_connections(),
                connect_timeout: Duration::from_secs(d::connect_timeout_secs()),
                max_requests_in_flight: d::max_requests_in_flight(),
                allow_anonymous: false,
            },
            http: None,
            tls: None,
            epmx: crate::ext::EpmxPolicy::default(),
            bcx: crate::ext::bcx::BcxConfig {
                directory: database
                    .parent()
                    .unwrap_or_else(|| Path::new("."))
                    .join(d::bcx_directory()),
                max_file_bytes: d::bcx_max_file_bytes(),
                quota_bytes: d::bcx_quota_bytes(),
            },
            extension_timeout: crate::ext::DEFAULT_EXTENSION_TIMEOUT,
            extensions: Vec::new(),
            api: None,
            epl: crate::epl::EplConfig::default(),
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            applications: Vec::new(),
            endpoints: Vec::new(),
            credentials: Vec::new(),
            nats: None,
        }
    }

    /// What is valid but risky: worth a warning at start and in `check-config`.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if let Some(http) = &self.http {
            if http.tls.is_none() && !http.listen.ip().is_loopback() {
                let what = if self.api.is_some() {
                    "the REST API (admin password in HTTP Basic), the 1/KP binding and MQTT over WebSocket"
                } else {
                    "the 1/KP binding and MQTT over WebSocket"
                };
                w.push(format!(
                    "core.http.listen: {} is reachable from the network without TLS: {what} travel in clear; set core.http.cert_file and key_file",
                    http.listen
                ));
            }
        }
        w
    }

    /// Every address the core listens on, with its config path.
    pub fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut v = vec![("core.mqtt.listen", self.mqtt.listen)];
        v.extend(self.tls.as_ref().map(|t| ("core.tls.listen", t.listen)));
        v.extend(self.http.as_ref().map(|h| ("core.http.listen", h.listen)));
        v
    }
}

/// The MQTT/TCP listener.
#[derive(Debug, Clone)]
pub struct MqttListener {
    pub listen: SocketAddr,
    pub max_packet_size: usize,
    pub max_connections: usize,
    pub connect_timeout: Duration,
    /// The core's budget of requests read and not yet answered, over every MQTT
    /// connection of every transport (see [`crate::kpc::turns`]).
    pub max_requests_in_flight: usize,
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
    /// Most connections at once (one more is closed at once).
    pub max_connections: usize,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
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
    /// `core.synchronous`: fsync every commit (`Full`) or not (`Normal`).
    pub durability: crate::store::Durability,
    pub mqtt: MqttListener,
    /// `None`: no HTTP listener.
    pub http: Option<HttpListener>,
    /// `None`: no MQTT/TLS listener.
    pub tls: Option<TlsListener>,
    /// Per-key metadata restrictions for endpoints (EPMX).
    pub epmx: crate::ext::EpmxPolicy,
    /// Binary uploads (BCX): where, and how much.
    pub bcx: crate::ext::bcx::BcxConfig,
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
    /// `[core.nats]`: events and external extensions over NATS (none: in-process bus).
    pub nats: Option<crate::bus::nats::NatsSettings>,
}
