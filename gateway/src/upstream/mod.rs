//! The upstream 1/KP session: one MQTT connection carrying every endpoint.
//!
//! - [`protocol`]: the pure 1/KP client state; it decides everything and returns effects;
//! - [`session`]: the rumqttc event loop that only moves data between the connection,
//!   the buffer, the bus tasks (commands) and the supervisor (configurations);
//! - [`inflight`]: outstanding 2/DCP requests, request IDs and retry backoff (pure).
//!
//! Each batch goes to `kp1/<avn>/dcx/<token>/json/<request id>` at QoS 1 and stays in the
//! buffer until its `/status` arrives (docs/protocol.md §7): `/error` 4xx parks it in the
//! dead-letter table, 5xx, a time-out or a lost connection sends it again after a backoff.

pub mod cmp;
pub mod inflight;
pub mod link;
pub mod probe;
pub mod protocol;
pub mod session;

use std::path::PathBuf;
use std::time::Duration;

use platform_core::secret::Secret;

pub use link::{LinkSnapshot, LinkStatus};
pub use protocol::{ClientState, Effect, OwnConfig};
pub use session::{ConfigLink, UpstreamSession, MAX_PACKET_SIZE};

/// The upstream MQTT server speaking 1/KP (a Kaa cloud, or a core elsewhere).
#[derive(Debug, Clone)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub keepalive: Duration,
    /// A request unanswered this long is sent again.
    pub response_timeout: Duration,
    pub batch_max_samples: usize,
    pub batch_max_bytes: usize,
    pub max_inflight_batches: usize,
    /// Samples younger than this go out ahead of an old backlog.
    pub live_window: Duration,
    /// Longest wait between reconnect attempts (and between retries of one endpoint).
    pub reconnect_max: Duration,
    pub tls: Option<Tls>,
}

/// Defaults of the upstream settings (the config reference lists the same numbers).
pub mod defaults {
    use std::time::Duration;

    pub const PORT: u16 = 1883;
    pub const CLIENT_ID: &str = "kp-gateway";
    pub const KEEPALIVE: Duration = Duration::from_secs(30);
    pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const BATCH_MAX_SAMPLES: usize = 100;
    pub const BATCH_MAX_BYTES: usize = 64 * 1024;
    pub const MAX_INFLIGHT_BATCHES: usize = 16;
    pub const LIVE_WINDOW: Duration = Duration::from_secs(60);
    pub const RECONNECT_MAX: Duration = Duration::from_secs(30);
}

impl Upstream {
    /// Settings with every default, for `host:port` without credentials.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            client_id: defaults::CLIENT_ID.into(),
            username: None,
            password: None,
            keepalive: defaults::KEEPALIVE,
            response_timeout: defaults::RESPONSE_TIMEOUT,
            batch_max_samples: defaults::BATCH_MAX_SAMPLES,
            batch_max_bytes: defaults::BATCH_MAX_BYTES,
            max_inflight_batches: defaults::MAX_INFLIGHT_BATCHES,
            live_window: defaults::LIVE_WINDOW,
            reconnect_max: defaults::RECONNECT_MAX,
            tls: None,
        }
    }
}

/// TLS settings of the upstream connection (files are read at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// The CA certificates the server must chain to; `None`: the system's trust store.
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}
