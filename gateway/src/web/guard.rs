//! The one gate every request of the page passes: who is asking (session cookie), may
//! they (pages → login, API → 401), did the form come from our page (CSRF), and the
//! security headers on every answer.
//!
//! Open without a session: `/setup`, `/login`, `/assets/*`, `/favicon.ico`, `/healthz`,
//! and `/metrics`
//! (which checks its own rule, see [`super::metrics`]). Every POST needs a CSRF token: the
//! session's (form field `csrf` or header `X-CSRF-Token`), or before login the
//! double-submit cookie `kpgw_pre`.

use std::net::IpAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use super::Web;

/// The session cookie.
pub const SESSION_COOKIE: &str = "kpgw_session";
/// The pre-login CSRF cookie (double submit).
pub const PRE_COOKIE: &str = "kpgw_pre";

/// Content-Security-Policy: our own scripts and styles only, no inline script, no frames.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The logged-in user of a request (put there by [`guard`]).
#[derive(Debug, Clone)]
pub struct Authed {
    pub session: String,
    pub csrf: String,
    pub from: IpAddr,
}

/// The client address of a request (put there by [`guard`]).
#[derive(Debug, Clone, Copy)]
pub struct Client(pub IpAddr);

/// A cookie's value from the request.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// `Set-Cookie` for our cookies: HttpOnly, SameSite=Strict, Path=/, Secure under TLS.
pub fn set_cookie(name: &str, value: &str, secure: bool, max_age: Option<u64>) -> HeaderValue {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if secure {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/setup" | "/login" | "/healthz" | "/metrics" | "/favicon.ico"
    ) || path.starts_with("/assets/")
}

fn wants_json(path: &str) -> bool {
    path.starts_with("/api/") || path.starts_with("/core/")
}

fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && !a.is_empty()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The `csrf` field of an urlencoded body, if any.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// The middleware (see the module header).
pub async fn guard(State(web): State<Web>, req: Request, next: Next) -> Response {
    let from = req
        .extensions()
        .get::<ConnectInfo<super::Peer>>()
        .map(|c| c.0 .0.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let path = req.uri().path().to_owned();
    let mut resp = match check(&web, req, from, &path).await {
        Ok(req) => next.run(req).await,
        Err(r) => r,
    };
    let h = resp.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    if !path.starts_with("/assets/") {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// Lets the request on (with [`Client`] and, when logged in, [`Authed`]) or answers it.
async fn check(web: &Web, req: Request, from: IpAddr, path: &str) -> Result<Request, Response> {
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(Client(from));
    let public = is_public(path);
    let session = cookie(&parts.headers, SESSION_COOKIE)
        .and_then(|id| web.auth.session(&id).map(|s| (id, s)));
    if !public && session.is_none() {
        if wants_json(path) {
            return Err((StatusCode::UNAUTHORIZED, "log in first").into_response());
        }
        let to = if web.auth.is_claimed() {
            "/login"
        } else {
            "/setup"
        };
        return Err(Redirect::to(to).into_response());
    }
    // Setup is only for an unclaimed gateway; login only for a claimed one.
    if path == "/setup" && web.auth.is_claimed() {
        return Err(Redirect::to("/login").into_response());
    }
    if path == "/login" && !web.auth.is_claimed() {
        return Err(Redirect::to("/setup").into_response());
    }
    let mut body = body;
    if parts.method != Method::GET && parts.method != Method::HEAD {
        let expected = match &session {
            Some((_, s)) if !public => Some(s.csrf.clone()),
            _ => cookie(&parts.headers, PRE_COOKIE),
        };
        let header_token = parts
            .headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let is_form = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        let (given, rebuilt) = match header_token {
            Some(t) => (Some(t), body),
            None if is_form => {
                let bytes = axum::body::to_bytes(body, super::MAX_BODY)
                    .await
                    .map_err(|_| {
                        (StatusCode::PAYLOAD_TOO_LARGE, "request too large").into_response()
                    })?;
                (form_field(&bytes, "csrf"), Body::from(bytes))
            }
            None => (None, body),
        };
        body = rebuilt;
        let ok = matches!((&expected, &given), (Some(e), Some(g)) if same_token(e, g));
        if !ok {
            log::warn!("web page: {path} from {from} refused: missing or wrong CSRF token");
            return Err((
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token: reload the page and try again",
            )
                .into_response());
        }
    }
    if let Some((id, s)) = session {
        parts.extensions.insert(Authed {
            session: id,
            csrf: s.csrf,
            from,
        });
    }
    Ok(Request::from_parts(parts, body))
}
