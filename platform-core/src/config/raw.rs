//! The `[core]` section as written (TOML → serde), before validation, with its defaults.
//!
//! Every struct denies unknown fields so a typo is an error, not a silently ignored key.
//! [`super::validate`] turns it into the runtime [`super::CoreConfig`].

use serde::Deserialize;

use crate::secret::Secret;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCore {
    #[serde(default = "defaults::core_file")]
    pub database: String,
    /// `full` or `normal` (SQLite `synchronous` of the database).
    #[serde(default = "defaults::core_synchronous")]
    pub synchronous: String,
    #[serde(default)]
    pub mqtt: RawCoreMqtt,
    /// The 1/KP HTTP binding; absent: no HTTP listener.
    pub http: Option<RawCoreHttp>,
    #[serde(default)]
    pub epl: RawCoreEpl,
    /// The REST API's admin; absent: no REST API.
    pub api: Option<RawCoreApi>,
    /// The MQTT/TLS listener; absent: none.
    pub tls: Option<RawCoreTls>,
    #[serde(default)]
    pub epmx: RawCoreEpmx,
    #[serde(default)]
    pub bcx: RawCoreBcx,
    #[serde(default = "defaults::max_payload_bytes")]
    pub max_payload_bytes: usize,
    #[serde(default = "defaults::extension_timeout_ms")]
    pub extension_timeout_ms: u64,
    /// Extension instances besides the default `dcx`, `epmx`, `cmx`, `cex`.
    #[serde(default)]
    pub extensions: Vec<RawCoreExtension>,
    #[serde(default)]
    pub applications: Vec<crate::epr::ApplicationSpec>,
    #[serde(default)]
    pub endpoints: Vec<crate::epr::EndpointSpec>,
    #[serde(default)]
    pub credentials: Vec<crate::ccm::BasicCredentialSpec>,
    pub nats: Option<RawCoreNats>,
}

/// `[core.nats]`: the NATS servers, how to log in, and the names this core goes by.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCoreNats {
    pub servers: Vec<String>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    pub creds_file: Option<String>,
    pub tls_ca_file: Option<String>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    #[serde(default)]
    pub tls_required: bool,
    pub replica_id: Option<String>,
    #[serde(default = "defaults::kpc_instance")]
    pub kpc_instance: String,
    #[serde(default = "defaults::epr_instance")]
    pub epr_instance: String,
    #[serde(default = "defaults::epts_instance")]
    pub epts_instance: String,
    #[serde(default = "defaults::nats_queue_capacity")]
    pub queue_capacity: usize,
    pub registry_owner: Option<String>,
    pub ecap_provider: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCoreMqtt {
    #[serde(default = "defaults::core_listen")]
    pub listen: String,
    #[serde(default = "defaults::max_packet_size")]
    pub max_packet_size: usize,
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    #[serde(default = "defaults::connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    #[serde(default = "defaults::max_requests_in_flight")]
    pub max_requests_in_flight: usize,
    #[serde(default)]
    pub allow_anonymous: bool,
}

impl Default for RawCoreMqtt {
    fn default() -> Self {
        Self {
            listen: defaults::core_listen(),
            max_packet_size: defaults::max_packet_size(),
            max_connections: defaults::max_connections(),
            connect_timeout_secs: defaults::connect_timeout_secs(),
            max_requests_in_flight: defaults::max_requests_in_flight(),
            allow_anonymous: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCoreApi {
    pub admin_username: String,
    /// An Argon2 PHC string (not the password; still not shown in `Debug`).
    pub admin_password_hash: Secret,
}

/// Endpoint lifecycle (connectivity) settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCoreEpl {
    #[serde(default = "defaults::connected_key")]
    pub connected_key: String,
    #[serde(default = "defaults::connectivity_ts_key")]
    pub connectivity_ts_key: String,
    /// 0: off.
    #[serde(default = "defaults::idle_timeout_secs")]
    pub idle_timeout_secs: u64,
}

impl Default for RawCoreEpl {
    fn default() -> Self {
        Self {
            connected_key: defaults::connected_key(),
            connectivity_ts_key: defaults::connectivity_ts_key(),
            idle_timeout_secs: defaults::idle_timeout_secs(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCoreHttp {
    #[serde(default = "defaults::core_http_listen")]
    pub listen: String,
    /// MQTT over WebSocket on `/ws`.
    #[serde(default = "defaults::yes")]
    pub websocket: bool,
    #[serde(default)]
    pub websocket_allow_anonymous: bool,
    /// HTTPS (and WSS) with this certificate chain and key; both or neither.
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    #[serde(default = "defaults::http_max_connections")]
    pub max_connections: usize,
    #[serde(default = "defaults::http_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCoreTls {
    #[serde(default = "defaults::core_tls_listen")]
    pub listen: String,
    pub cert_file: String,
    pub key_file: String,
    pub client_ca_file: Option<String>,
    #[serde(default)]
    pub allow_anonymous: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCoreExtension {
    /// Instance name, the topic level after the app version (e.g. `cmx_ota`).
    pub instance: String,
    /// `dcx`, `epmx`, `cmx` or `cex`.
    pub kind: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCoreEpmx {
    #[serde(default)]
    pub read_only_keys: Vec<String>,
    #[serde(default)]
    pub hidden_keys: Vec<String>,
}

/// Binary uploads (BCX).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCoreBcx {
    /// Directory of the uploaded files (relative: under the state directory).
    #[serde(default = "defaults::bcx_directory")]
    pub directory: String,
    #[serde(default = "defaults::bcx_max_file_bytes")]
    pub max_file_bytes: u64,
    #[serde(default = "defaults::bcx_quota_bytes")]
    pub quota_bytes: u64,
}

impl Default for RawCoreBcx {
    fn default() -> Self {
        Self {
            directory: defaults::bcx_directory(),
            max_file_bytes: defaults::bcx_max_file_bytes(),
            quota_bytes: defaults::bcx_quota_bytes(),
        }
    }
}

/// Defaults of `[core]`, in one place (documented in `config/README.md`).
pub mod defaults {
    pub fn kpc_instance() -> String {
        "kpc".into()
    }
    pub fn epr_instance() -> String {
        "epr".into()
    }
    pub fn epts_instance() -> String {
        "epts".into()
    }
    pub fn nats_queue_capacity() -> usize {
        10_000
    }
    pub fn http_max_connections() -> usize {
        256
    }
    pub fn http_idle_timeout_secs() -> u64 {
        30
    }
    pub fn bcx_directory() -> String {
        "binary".into()
    }
    pub fn bcx_max_file_bytes() -> u64 {
        crate::ext::bcx::DEFAULT_MAX_FILE_BYTES
    }
    pub fn bcx_quota_bytes() -> u64 {
        crate::ext::bcx::DEFAULT_QUOTA_BYTES
    }
    pub fn core_file() -> String {
        "core.sqlite".into()
    }
    pub fn core_listen() -> String {
        "127.0.0.1:1883".into()
    }
    pub fn core_tls_listen() -> String {
        "127.0.0.1:8883".into()
    }
    pub fn yes() -> bool {
        true
    }
    pub fn extension_timeout_ms() -> u64 {
        crate::ext::DEFAULT_EXTENSION_TIMEOUT.as_millis() as u64
    }
    pub fn connected_key() -> String {
        crate::epl::EplConfig::default().connected_key
    }
    pub fn connectivity_ts_key() -> String {
        crate::epl::EplConfig::default().connectivity_ts_key
    }
    pub fn idle_timeout_secs() -> u64 {
        crate::epl::EplConfig::default()
            .idle_timeout
            .map_or(0, |d| d.as_secs())
    }
    pub fn core_http_listen() -> String {
        "127.0.0.1:8080".into()
    }
    pub fn max_packet_size() -> usize {
        crate::config::DEFAULT_MAX_PACKET_SIZE
    }
    pub fn max_payload_bytes() -> usize {
        crate::config::DEFAULT_MAX_PAYLOAD_BYTES
    }
    pub fn max_connections() -> usize {
        1024
    }
    pub fn core_synchronous() -> String {
        "full".into()
    }
    pub fn max_requests_in_flight() -> usize {
        crate::kpc::turns::MAX_REQUESTS_IN_FLIGHT
    }
    pub fn connect_timeout_secs() -> u64 {
        10
    }
}
