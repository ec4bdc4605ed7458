//! `/metrics` in the Prometheus text exposition format (0.0.4) and `/healthz`.
//!
//! Access rule (config/README.md, `[web]`): `/healthz` is open — it says only whether the
//! gateway runs and its upstream is up, nothing else. `/metrics` is served to a logged-in
//! session, to loopback clients (a scraper on the box, or through an SSH tunnel), and to
//! anyone presenting `Authorization: Bearer <web.metrics_token>`; `web.metrics = false`
//! turns it off.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::json;

use super::guard::{cookie, Client, SESSION_COOKIE};
use super::Web;
use crate::source::health::{HealthState, LATENCY_BUCKETS};

/// Escapes a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Text of one metric family.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self
    }

    fn line(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let l = if labels.is_empty() {
            String::new()
        } else {
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        };
        let _ = writeln!(self.out, "{name}{l} {value}");
        self
    }
}

/// Everything, rendered.
pub async fn render(web: &Web) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    let link = web.link.snapshot();
    f.head(
        "kpgw_upstream_connected",
        "gauge",
        "1 while the upstream MQTT link is up.",
    )
    .line(
        "kpgw_upstream_connected",
        &[],
        f64::from(u8::from(link.connected)),
    );
    let b = web.buffer.stats().await.unwrap_or_default();
    let now = crate::now_ms();
    f.head(
        "kpgw_buffer_pending_samples",
        "gauge",
        "Samples waiting for the platform's confirmation.",
    )
    .line("kpgw_buffer_pending_samples", &[], b.pending as f64);
    f.head(
        "kpgw_buffer_in_flight_samples",
        "gauge",
        "Samples sent and not yet confirmed.",
    )
    .line("kpgw_buffer_in_flight_samples", &[], b.leased as f64);
    f.head("kpgw_buffer_bytes", "gauge", "Bytes of waiting samples.")
        .line("kpgw_buffer_bytes", &[], b.bytes as f64);
    f.head(
        "kpgw_buffer_dead_letters",
        "gauge",
        "Batches the platform refused for good.",
    )
    .line("kpgw_buffer_dead_letters", &[], b.dead_letters as f64);
    f.head(
        "kpgw_buffer_oldest_sample_age_seconds",
        "gauge",
        "Age of the oldest waiting sample.",
    )
    .line(
        "kpgw_buffer_oldest_sample_age_seconds",
        &[],
        b.oldest_ts_ms
            .map_or(0.0, |t| ((now - t).max(0) as f64) / 1000.0),
    );
    let (config, _) = web.running();
    let names: std::collections::BTreeMap<(String, String), String> = config
        .devices
        .iter()
        .map(|d| {
            (
                (
                    d.app_version.as_str().to_owned(),
                    d.token.as_str().to_owned(),
                ),
                d.name.clone(),
            )
        })
        .collect();
    f.head(
        "kpgw_buffer_dropped_samples_total",
        "counter",
        "Samples dropped, by device and reason.",
    );
    for ((avn, token), per) in &b.drops {
        let device = names
            .get(&(avn.clone(), token.clone()))
            .map_or("(other)", String::as_str);
        for (reason, n) in per {
            f.line(
                "kpgw_buffer_dropped_samples_total",
                &[("device", device), ("reason", reason)],
                *n as f64,
            );
        }
    }
    let health = web.health.snapshot();
    f.head(
        "kpgw_device_up",
        "gauge",
        "1 while the device's last poll succeeded.",
    );
    for d in &config.devices {
        let up = health
            .get(&d.name)
            .is_some_and(|h| h.state == HealthState::Ok);
        f.line(
            "kpgw_device_up",
            &[("device", &d.name)],
            f64::from(u8::from(up)),
        );
    }
    for (name, help, get) in [
        (
            "kpgw_device_polls_total",
            "Polls done.",
            (|h| h.polls) as fn(&crate::source::health::DeviceHealth) -> u64,
        ),
        (
            "kpgw_device_poll_failures_total",
            "Polls that produced no sample.",
            |h| h.failures,
        ),
        (
            "kpgw_device_exceptions_total",
            "Modbus exception answers.",
            |h| h.exceptions,
        ),
        (
            "kpgw_device_bad_lines_total",
            "Serial lines that could not be parsed.",
            |h| h.bad_lines,
        ),
    ] {
        f.head(name, "counter", help);
        for (device, h) in &health {
            f.line(name, &[("device", device)], get(h) as f64);
        }
    }
    let hist = "kpgw_device_poll_latency_seconds";
    f.head(
        hist,
        "histogram",
        "Duration of successful polls (all requests of one poll).",
    );
    for (device, h) in &health {
        if h.latency_count == 0 {
            continue;
        }
        let mut cumulative = 0;
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += h.latency_buckets[i];
            f.line(
                &format!("{hist}_bucket"),
                &[("device", device), ("le", &le.to_string())],
                cumulative as f64,
            );
        }
        f.line(
            &format!("{hist}_bucket"),
            &[("device", device), ("le", "+Inf")],
            h.latency_count as f64,
        )
        .line(
            &format!("{hist}_sum"),
            &[("device", device)],
            h.latency_sum_secs,
        )
        .line(
            &format!("{hist}_count"),
            &[("device", device)],
            h.latency_count as f64,
        );
    }
    if let Some(rss) = crate::self_report::rss_bytes() {
        f.head(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        )
        .line("process_resident_memory_bytes", &[], rss as f64);
    }
    if let Some(cpu) = crate::self_report::cpu_seconds() {
        f.head(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time in seconds.",
        )
        .line("process_cpu_seconds_total", &[], cpu);
    }
    if let Some(free) = crate::buffer::free_space(&web.state_dir) {
        f.head(
            "kpgw_state_dir_free_bytes",
            "gauge",
            "Free space where the buffer lives.",
        )
        .line("kpgw_state_dir_free_bytes", &[], free as f64);
    }
    if let Some(core) = &web.core {
        let (accepted, requests) = core.stats.traffic();
        f.head(
            "kpc_sessions",
            "gauge",
            "Live 1/KP MQTT sessions of the embedded core.",
        )
        .line("kpc_sessions", &[], core.extensions.hub.sessions() as f64);
        f.head(
            "kpc_connections_accepted_total",
            "counter",
            "MQTT connections accepted (TCP, TLS, WebSocket).",
        )
        .line("kpc_connections_accepted_total", &[], accepted as f64);
        f.head(
            "kpc_requests_total",
            "counter",
            "1/KP requests routed over MQTT.",
        )
        .line("kpc_requests_total", &[], requests as f64);
        f.head(
            "kpc_incidents_total",
            "counter",
            "Bad input and refusals, by kind.",
        );
        for i in platform_core::kpc::stats::Incident::ALL {
            f.line(
                "kpc_incidents_total",
                &[("kind", i.name())],
                core.stats.get(i) as f64,
            );
        }
    }
    out
}

/// May this request read `/metrics`?
fn allowed(web: &Web, from: std::net::IpAddr, headers: &HeaderMap) -> bool {
    if from.is_loopback() {
        return true;
    }
    if cookie(headers, SESSION_COOKIE).is_some_and(|id| web.auth.session(&id).is_some()) {
        return true;
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match (&web.settings.metrics_token, bearer) {
        (Some(t), Some(b)) => {
            let t = t.expose().as_bytes();
            t.len() == b.len() && t.iter().zip(b.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
        }
        _ => false,
    }
}

/// `GET /metrics`.
pub async fn metrics(
    State(web): State<Web>,
    Extension(Client(from)): Extension<Client>,
    headers: HeaderMap,
) -> Response {
    if !web.settings.metrics {
        return (
            StatusCode::NOT_FOUND,
            "metrics are off (web.metrics = false)",
        )
            .into_response();
    }
    if !allowed(&web, from, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "metrics: log in, scrape from loopback, or send web.metrics_token as a Bearer token",
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&web).await,
    )
        .into_response()
}

/// `GET /healthz`: 200 `{"status":"ok", ...}` while the gateway runs (the upstream may be
/// down: that is reported, not a failure of the gateway); 503 when the buffer is gone.
pub async fn healthz(State(web): State<Web>) -> Response {
    let buffer_ok = web.buffer.stats().await.is_ok();
    let body = json!({
        "status": if buffer_ok { "ok" } else { "buffer unavailable" },
        "upstream_connected": web.link.is_connected(),
    });
    let code = if buffer_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}
