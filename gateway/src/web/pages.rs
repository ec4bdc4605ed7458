//! The pages that watch the gateway: claim and login, dashboard, devices with live values,
//! logs, and the core console's shell; plus the JSON the page's script refreshes them
//! from. The buffer page is in [`super::buffer_page`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::auth::{ClaimError, LoginError};
use super::guard::{cookie, set_cookie, Authed, Client, PRE_COOKIE, SESSION_COOKIE};
use super::Web;
use crate::logring::RING;
use crate::source::{endpoint_of, DeviceSource};

/// What every page's frame needs.
#[derive(Debug, Clone)]
pub struct Chrome {
    pub title: String,
    /// Which menu entry is current.
    pub nav: &'static str,
    pub csrf: String,
    pub has_core: bool,
    pub logged_in: bool,
    pub version: &'static str,
    pub status: StatusCode,
}

impl Chrome {
    pub fn new(web: &Web, who: &Authed, title: &str, nav: &'static str) -> Self {
        Self {
            title: title.into(),
            nav,
            csrf: who.csrf.clone(),
            has_core: web.core.is_some(),
            logged_in: true,
            version: env!("CARGO_PKG_VERSION"),
            status: StatusCode::OK,
        }
    }

    fn public(title: &str, csrf: String) -> Self {
        Self {
            title: title.into(),
            nav: "",
            csrf,
            has_core: false,
            logged_in: false,
            version: env!("CARGO_PKG_VERSION"),
            status: StatusCode::OK,
        }
    }
}

/// A rendered page.
pub trait Page: Template {
    fn chrome(&self) -> &Chrome;
}

/// Implements [`Page`] for page structs with a `chrome` field.
macro_rules! page {
    ($($t:ty),*) => {$(
        impl $crate::web::pages::Page for $t {
            fn chrome(&self) -> &$crate::web::pages::Chrome {
                &self.chrome
            }
        }
    )*};
}
pub(crate) use page;

/// Renders a page (a template failure is a 500 with a plain message, never a panic).
pub fn html<T: Page>(page: T) -> Response {
    let status = page.chrome().status;
    match page.render() {
        Ok(body) => (status, Html(body)).into_response(),
        Err(e) => {
            log::error!("web page: template failed: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "page rendering failed").into_response()
        }
    }
}

/// Unix ms as `2026-12-01 10:20:43 UTC`.
pub fn when(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    t.format(&f).unwrap_or_default()
}

// ---- claim and login -------------------------------------------------------------------

#[derive(Template)]
#[template(path = "setup.html")]
struct SetupPage {
    chrome: Chrome,
    code_file: String,
    error: String,
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    chrome: Chrome,
    error: String,
}

page!(SetupPage, LoginPage);

/// The pre-login CSRF token: the cookie's, or a new one to set.
fn pre_token(headers: &axum::http::HeaderMap) -> (String, bool) {
    match cookie(headers, PRE_COOKIE) {
        Some(t) if t.len() == 64 => (t, false),
        _ => (super::auth::random_hex(32), true),
    }
}

fn with_pre_cookie(web: &Web, mut resp: Response, token: &str, fresh: bool) -> Response {
    if fresh {
        resp.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(PRE_COOKIE, token, web.settings.tls.is_some(), None),
        );
    }
    resp
}

/// `GET /setup`: the claim form (only while unclaimed; the guard sends others to login).
pub async fn setup_page(State(web): State<Web>, headers: axum::http::HeaderMap) -> Response {
    let _ = web.auth.ensure_setup_code();
    let (token, fresh) = pre_token(&headers);
    let page = SetupPage {
        chrome: Chrome::public("Claim this gateway", token.clone()),
        code_file: web.auth.setup_code_path().display().to_string(),
        error: String::new(),
    };
    with_pre_cookie(&web, html(page), &token, fresh)
}

#[derive(Debug, Deserialize)]
pub struct SetupForm {
    code: String,
    password: String,
    password2: String,
}

/// Logs the browser in: a fresh session cookie (a new id at every login).
fn logged_in(web: &Web, from: std::net::IpAddr) -> Response {
    let (id, _) = web.auth.start_session(from);
    let mut resp = Redirect::to("/").into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &id, web.settings.tls.is_some(), None),
    );
    resp
}

/// `POST /setup`.
pub async fn setup_submit(
    State(web): State<Web>,
    Extension(Client(from)): Extension<Client>,
    headers: axum::http::HeaderMap,
    Form(f): Form<SetupForm>,
) -> Response {
    match web
        .auth
        .claim(from, &f.code, &f.password, &f.password2)
        .await
    {
        Ok(()) => logged_in(&web, from),
        Err(e) => {
            let (token, _) = pre_token(&headers);
            let mut chrome = Chrome::public("Claim this gateway", token);
            chrome.status = match e {
                ClaimError::WrongCode(_) => StatusCode::FORBIDDEN,
                ClaimError::AlreadyClaimed => StatusCode::CONFLICT,
                ClaimError::Password(_) => StatusCode::UNPROCESSABLE_ENTITY,
                ClaimError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            html(SetupPage {
                chrome,
                code_file: web.auth.setup_code_path().display().to_string(),
                error: e.to_string(),
            })
        }
    }
}

/// `GET /login`.
pub async fn login_page(State(web): State<Web>, headers: axum::http::HeaderMap) -> Response {
    let (token, fresh) = pre_token(&headers);
    let page = LoginPage {
        chrome: Chrome::public("Log in", token.clone()),
        error: String::new(),
    };
    with_pre_cookie(&web, html(page), &token, fresh)
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    password: String,
}

/// `POST /login`.
pub async fn login_submit(
    State(web): State<Web>,
    Extension(Client(from)): Extension<Client>,
    headers: axum::http::HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    match web.auth.login(from, &f.password).await {
        Ok(()) => logged_in(&web, from),
        Err(e) => {
            let (token, _) = pre_token(&headers);
            let mut chrome = Chrome::public("Log in", token);
            chrome.status = match e {
                LoginError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
                LoginError::Busy => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::UNAUTHORIZED,
            };
            html(LoginPage {
                chrome,
                error: e.to_string(),
            })
        }
    }
}

/// `POST /logout`.
pub async fn logout(State(web): State<Web>, Extension(who): Extension<Authed>) -> Response {
    web.auth.end_session(&who.session);
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", web.settings.tls.is_some(), Some(0)),
    );
    resp
}

// ---- dashboard -------------------------------------------------------------------------

/// Buffer depth and process CPU over the last hour, sampled every [`DEPTH_EVERY`].
#[derive(Debug, Default)]
pub struct DepthHistory {
    points: Mutex<VecDeque<(i64, u64)>>,
    cpu_percent: Mutex<Option<f64>>,
}

/// How often the depth is sampled.
pub const DEPTH_EVERY: Duration = Duration::from_secs(10);

impl DepthHistory {
    pub fn push(&self, ts_ms: i64, depth: u64) {
        let mut p = self.points.lock().unwrap_or_else(|p| p.into_inner());
        if p.len() >= 360 {
            p.pop_front();
        }
        p.push_back((ts_ms, depth));
    }

    pub fn series(&self) -> Vec<(i64, u64)> {
        let p = self.points.lock().unwrap_or_else(|p| p.into_inner());
        p.iter().copied().collect()
    }

    pub fn cpu_percent(&self) -> Option<f64> {
        *self.cpu_percent.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Samples buffer depth and CPU until `shutdown`.
pub async fn sample_depth(web: Web, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(DEPTH_EVERY);
    let mut last = crate::self_report::cpu_seconds().map(|c| (std::time::Instant::now(), c));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Ok(s) = web.buffer.stats().await {
            web.depth.push(crate::now_ms(), s.pending);
        }
        if let (Some((t, before)), Some(now)) = (last, crate::self_report::cpu_seconds()) {
            let wall = t.elapsed().as_secs_f64();
            if wall > 0.0 {
                *web.depth
                    .cpu_percent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some((now - before) / wall * 100.0);
            }
            last = Some((std::time::Instant::now(), now));
        }
    }
}

/// Everything the dashboard shows, as JSON (`GET /api/status`).
pub async fn status_value(web: &Web) -> Value {
    let link = web.link.snapshot();
    let b = web.buffer.stats().await.unwrap_or_default();
    let now = crate::now_ms();
    let mut drops: BTreeMap<String, u64> = BTreeMap::new();
    for per in b.drops.values() {
        for (reason, n) in per {
            *drops.entry(reason.clone()).or_default() += n;
        }
    }
    let health = web.health.snapshot();
    let (config, _) = web.running();
    let devices: Vec<Value> = config
        .devices
        .iter()
        .map(|d| {
            let h = health.get(&d.name).cloned().unwrap_or_default();
            let kind = match d.source {
                DeviceSource::Modbus(_) => "modbus",
                DeviceSource::SerialLine(_) => "serial line",
                DeviceSource::Simulated(_) => "simulated",
            };
            json!({
                "name": d.name, "kind": kind, "state": h.state.as_str(),
                "last_success": h.last_success_ms.map(when),
                "consecutive_failures": h.consecutive_failures,
                "polls": h.polls, "failures": h.failures, "exceptions": h.exceptions,
                "latency_ms": h.last_latency_ms, "last_error": h.last_error,
            })
        })
        .collect();
    json!({
        "upstream": {
            "connected": link.connected,
            "broker": if config.upstream.is_none() && config.core.is_some() { format!("{} (embedded core)", link.broker) } else { link.broker },
            "since": link.since_ms.map(when),
            "last_error": link.last_error,
        },
        "buffer": {
            "pending": b.pending, "bytes": b.bytes, "in_flight": b.leased,
            "dead_letters": b.dead_letters,
            "oldest_age_s": b.oldest_ts_ms.map(|t| (now - t).max(0) / 1000),
            "drops": drops, "dropped_total": b.dropped_total(),
        },
        "depth": web.depth.series(),
        "devices": devices,
        "process": {
            "cpu_percent": web.depth.cpu_percent(),
            "rss_bytes": crate::self_report::rss_bytes(),
            "free_bytes": crate::buffer::free_space(&web.state_dir),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": web.started.elapsed().as_secs(),
        },
    })
}

/// `GET /api/status`.
pub async fn status_json(State(web): State<Web>) -> Json<Value> {
    Json(status_value(&web).await)
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    chrome: Chrome,
}

#[derive(Template)]
#[template(path = "devices.html")]
struct DevicesPage {
    chrome: Chrome,
}

#[derive(Template)]
#[template(path = "logs.html")]
struct LogsPage {
    chrome: Chrome,
}

#[derive(Template)]
#[template(path = "console.html")]
struct ConsolePage {
    chrome: Chrome,
}

page!(DashboardPage, DevicesPage, LogsPage, ConsolePage);

/// `GET /`: the dashboard (filled and kept fresh by the page's script).
pub async fn dashboard(State(web): State<Web>, Extension(who): Extension<Authed>) -> Response {
    html(DashboardPage {
        chrome: Chrome::new(&web, &who, "Dashboard", "dashboard"),
    })
}

/// `GET /devices`.
pub async fn devices(State(web): State<Web>, Extension(who): Extension<Authed>) -> Response {
    html(DevicesPage {
        chrome: Chrome::new(&web, &who, "Devices", "devices"),
    })
}

/// `GET /api/devices`: every device's points with unit, value, time and quality.
pub async fn devices_json(State(web): State<Web>) -> Json<Value> {
    let (config, text) = web.running();
    let units = super::forms::point_units(&text);
    let health = web.health.snapshot();
    let devices: Vec<Value> = config
        .devices
        .iter()
        .map(|d| {
            let now = web.live.now(&endpoint_of(d));
            let points: Vec<Value> = now
                .iter()
                .map(|(name, p)| {
                    json!({
                        "name": name,
                        "unit": units.get(&(d.name.clone(), name.clone())),
                        "value": p.value, "time": when(p.ts_ms), "ts_ms": p.ts_ms,
                        "bad": p.bad,
                    })
                })
                .collect();
            let state = health.get(&d.name).map(|h| h.state.as_str());
            json!({"name": d.name, "state": state, "points": points,
                   "modbus": matches!(d.source, DeviceSource::Modbus(_))})
        })
        .collect();
    Json(json!({ "devices": devices }))
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    device: String,
    point: String,
}

/// `GET /api/history?device=&point=`: the point's last hour (10 s means).
pub async fn history_json(State(web): State<Web>, Query(q): Query<HistoryQuery>) -> Response {
    let (config, _) = web.running();
    let Some(d) = config.devices.iter().find(|d| d.name == q.device) else {
        return (StatusCode::NOT_FOUND, "no such device").into_response();
    };
    Json(json!({"device": q.device, "point": q.point,
                "series": web.live.history(&endpoint_of(d), &q.point)}))
    .into_response()
}

// ---- logs ------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub struct LogQuery {
    #[serde(default)]
    level: String,
    #[serde(default)]
    q: String,
}

fn level_of(s: &str) -> log::Level {
    s.parse().unwrap_or(log::Level::Trace)
}

/// `GET /logs`.
pub async fn logs_page(State(web): State<Web>, Extension(who): Extension<Authed>) -> Response {
    html(LogsPage {
        chrome: Chrome::new(&web, &who, "Logs", "logs"),
    })
}

/// `GET /api/logs?level=&q=`: the newest 1000 matching lines, newest last.
pub async fn logs_json(Query(q): Query<LogQuery>) -> Json<Value> {
    let lines = RING.select(level_of(&q.level), &q.q);
    let total = lines.len();
    let shown: Vec<Value> = lines
        .into_iter()
        .skip(total.saturating_sub(1000))
        .map(|l| json!({"time": when(l.ts_ms), "level": l.level, "target": l.target, "message": l.message}))
        .collect();
    Json(json!({"total": total, "lines": shown}))
}

/// `GET /logs/download?level=&q=`: every matching line as text.
pub async fn logs_download(Query(q): Query<LogQuery>) -> Response {
    let mut out = String::new();
    for l in RING.select(level_of(&q.level), &q.q) {
        out.push_str(&format!(
            "{} {:5} {}: {}\n",
            when(l.ts_ms),
            l.level,
            l.target,
            l.message
        ));
    }
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"kp-gateway.log\"",
            ),
        ],
        out,
    )
        .into_response()
}

/// `GET /console`: the core console (its script calls `/core/api/v1/...`).
pub async fn console(State(web): State<Web>, Extension(who): Extension<Authed>) -> Response {
    if web.core.is_none() {
        return (
            StatusCode::NOT_FOUND,
            "the embedded core is not running ([core] is not configured)",
        )
            .into_response();
    }
    html(ConsolePage {
        chrome: Chrome::new(&web, &who, "Core console", "console"),
    })
}
