//! `[web]` at run time: where the page listens, with or without TLS, and its session and
//! metrics rules. A leaf module (the configuration builds it, the web page reads it), so
//! imports point one way: `config` → `web_settings` ← `web`.

use std::net::SocketAddr;
use std::time::Duration;

use platform_core::kpc::tls::TlsFiles;
use platform_core::secret::Secret;

/// The validated `[web]` section.
#[derive(Debug, Clone)]
pub struct WebSettings {
    pub listen: SocketAddr,
    /// HTTPS when set (cookies are then `Secure`).
    pub tls: Option<TlsFiles>,
    /// A session unused this long is ended.
    pub session_idle: Duration,
    /// Serve `/metrics`.
    pub metrics: bool,
    /// Opens `/metrics` to a scraper beyond loopback (`Authorization: Bearer …`).
    pub metrics_token: Option<Secret>,
}
