//! What every MQTT connection shares with its listener, and who is on the other end.

use std::net::SocketAddr;
use std::time::Duration;

use super::router::Dispatcher;
use super::stats::Stats;
use super::turns::Budget;
use crate::ccm::Authenticator;
use crate::sessions::Hub;

/// Everything a connection needs from its listener; shared by every connection (each
/// holds an `Arc` of it, not a copy: most of a site's connections idle).
#[derive(Debug, Clone)]
pub struct ConnContext {
    pub router: Dispatcher,
    pub auth: Authenticator,
    pub hub: Hub,
    pub limits: ConnectionLimits,
    pub stats: Stats,
    /// The core's budget of requests in flight over all connections (see
    /// [`super::turns::MAX_REQUESTS_IN_FLIGHT`]).
    pub in_flight: Budget,
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// `tcp`, `tls` or `ws`, for logs.
    pub transport: &'static str,
    /// SHA-256 fingerprint of the TLS client certificate, when one was presented.
    pub cert_fingerprint: Option<String>,
}

/// Per-connection limits, from the listener's config.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Largest accepted MQTT packet (whole frame), in bytes.
    pub max_packet_size: usize,
    /// How long a new connection may take to send CONNECT.
    pub connect_timeout: Duration,
}
