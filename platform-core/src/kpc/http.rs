//! The 1/KP HTTP binding (docs/protocol.md §5): `POST /kp1/<app version>/<extension>/<token>/...`.
//!
//! The body is the MQTT payload; success is 200 with the extension's success payload
//! (empty when it has none); an error is its status code with the 1/KP error JSON. Like
//! Kaa, the endpoint is identified by the token in the path alone. Bodies over the
//! configured payload limit are refused with 413 before they are read in full.
//! The same listener carries the REST API and MQTT over WebSocket (`/ws`).

use std::net::SocketAddr;

use axum::body::{to_bytes, Body};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt as _;
use axum::Router as HttpRouter;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::https::HttpsListener;
use super::router::Dispatcher;
use super::stats::Stats;
use crate::kp1::Kp1Error;

#[derive(Clone)]
struct AppState {
    router: Dispatcher,
    max_payload_bytes: usize,
}

/// The HTTP application (separate from `serve` so tests can drive it).
pub fn app(router: Dispatcher, max_payload_bytes: usize) -> HttpRouter {
    HttpRouter::new()
        .route("/kp1/{*rest}", post(kp1))
        .route("/bcx/api/v1/binary-data", post(bcx_upload))
        .with_state(AppState {
            router,
            max_payload_bytes,
        })
}

fn error_response(e: Kp1Error) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        e.to_payload(),
    )
        .into_response()
}

async fn kp1(State(s): State<AppState>, Path(rest): Path<String>, body: Body) -> Response {
    let payload = match to_bytes(body, s.max_payload_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return error_response(Kp1Error::payload_too_large(format!(
                "payload is over the limit of {} bytes",
                s.max_payload_bytes
            )))
        }
    };
    let path = format!("kp1/{rest}");
    match s.router.handle(&path, &payload).await {
        Ok(body) if body.is_empty() => StatusCode::OK.into_response(),
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => error_response(e),
    }
}

#[derive(serde::Deserialize)]
struct UploadQuery {
    name: Option<String>,
}

/// A binary upload (BCX, docs/protocol.md §3): `X-Auth-Token` from a `bcx/.../token`
/// request, `?name=`, the raw bytes as the body. 200 with `{"name", "size"}`; 401 without
/// a valid token, 400 for a bad name, 413 over the size bound or the quota.
async fn bcx_upload(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(q): axum::extract::Query<UploadQuery>,
    body: Body,
) -> Response {
    use crate::ext::bcx::UploadError;
    let ext = s.router.extensions();
    let reply = |status: StatusCode, msg: String| {
        (status, axum::Json(serde_json::json!({ "error": msg }))).into_response()
    };
    let Some(token) = headers.get("x-auth-token").and_then(|v| v.to_str().ok()) else {
        return reply(StatusCode::UNAUTHORIZED, UploadError::BadToken.to_string());
    };
    let limit = usize::try_from(ext.bcx.max_file_bytes).unwrap_or(usize::MAX);
    let Ok(bytes) = to_bytes(body, limit).await else {
        let e = UploadError::TooLarge(ext.bcx.max_file_bytes);
        return reply(StatusCode::PAYLOAD_TOO_LARGE, e.to_string());
    };
    match ext
        .upload_binary(token, q.name.as_deref().unwrap_or(""), bytes)
        .await
    {
        Ok(f) => axum::Json(serde_json::json!({"name": f.name, "size": f.size})).into_response(),
        Err(e @ UploadError::BadToken) => reply(StatusCode::UNAUTHORIZED, e.to_string()),
        Err(e @ UploadError::BadName) => reply(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ (UploadError::TooLarge(_) | UploadError::OverQuota(_))) => {
            reply(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
        }
        Err(e) => {
            log::error!("bcx: upload failed: {e}");
            reply(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
        }
    }
}

/// The HTTP listener's connection cap and idle deadline (see [`super::guard`]).
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub idle: std::time::Duration,
    pub stats: Stats,
}

impl HttpLimits {
    fn guard<L: axum::serve::Listener>(&self, l: L) -> super::guard::GuardedListener<L> {
        super::guard::GuardedListener::new(l, self.max_connections, self.idle, self.stats.clone())
    }
}

/// Binds the HTTP listener (port 0 picks a free port) and returns it with its address.
pub use super::listener::bind;

/// Serves HTTP (the 1/KP binding, plus `extra` routes: the REST API, `/ws`) until
/// `shutdown`; HTTPS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: HttpLimits,
    router: Dispatcher,
    extra: Vec<HttpRouter>,
    max_payload_bytes: usize,
    shutdown: CancellationToken,
) {
    let mut app = app(router, max_payload_bytes);
    for r in extra {
        app = app.merge(r);
    }
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    let stop = shutdown.clone();
    let result = match tls {
        None => {
            // No Nagle: a response written in two parts must not wait for a delayed ACK.
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    log::debug!("kpc http: cannot set TCP_NODELAY: {e}");
                }
            });
            // (`tap_io` gives the connect-info impl axum has for tapped listeners.)
            let listener = limits.guard(listener).tap_io(|_| {});
            axum::serve(listener, service)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        }
        Some(acceptor) => {
            let stats = limits.stats.clone();
            let listener = match HttpsListener::new(listener, acceptor, stats, shutdown.clone()) {
                Ok(l) => limits.guard(l).tap_io(|_| {}),
                Err(e) => {
                    log::error!("kpc https: {e}");
                    return;
                }
            };
            axum::serve(listener, service)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        }
    };
    if let Err(e) = result {
        log::error!("kpc http: {e}");
    }
}
