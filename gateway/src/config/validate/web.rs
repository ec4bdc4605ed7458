//! `[web]`: the listen address, TLS files that go together, a sane session timeout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use platform_core::config::Problems;
use platform_core::kpc::tls::TlsFiles;

use crate::config::raw::RawWeb;
use crate::web_settings::WebSettings;

/// `None` when the page is turned off (or the section is unusable; the errors say why).
pub(super) fn web(raw: RawWeb, e: &mut Problems) -> Option<WebSettings> {
    let listen = raw
        .listen
        .parse::<SocketAddr>()
        .map_err(|_| {
            e.add(
                "web.listen",
                format!(
                    "{:?} is not an address:port (e.g. \"0.0.0.0:8088\")",
                    raw.listen
                ),
            )
        })
        .ok();
    let tls = match (raw.tls_cert_file, raw.tls_key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert_file: PathBuf::from(cert),
            key_file: PathBuf::from(key),
            client_ca_file: None,
        }),
        _ => {
            e.add(
                "web.tls_cert_file",
                "tls_cert_file and tls_key_file go together",
            );
            None
        }
    };
    if !(1..=24 * 60).contains(&raw.session_idle_mins) {
        e.add(
            "web.session_idle_mins",
            format!("{} is outside 1..=1440", raw.session_idle_mins),
        );
    }
    if let Some(t) = &raw.metrics_token {
        if t.expose().len() < 16 {
            e.add(
                "web.metrics_token",
                "too short: use at least 16 random characters",
            );
        }
    }
    if !raw.enabled {
        return None;
    }
    Some(WebSettings {
        listen: listen?,
        tls,
        session_idle: Duration::from_secs(raw.session_idle_mins.max(1) * 60),
        metrics: raw.metrics,
        metrics_token: raw.metrics_token,
    })
}
