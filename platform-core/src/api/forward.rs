//! REST calls between core replicas on NATS (docs/protocol.md §11): a registry call goes
//! to the registry owner, a command call to the replica holding the endpoint's session;
//! the answer comes back as it is, so every replica's API shows the same registry and a
//! command reaches the device whichever replica was called.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::Api;
use crate::bus::nats::{next_or_stop, NatsBus};
use crate::bus::subjects;
use crate::mirror::Registry;

/// Marks a call another replica passed on: it is never passed on again.
const FORWARDED: &str = "x-kpgw-forwarded";
/// Largest body passed on (commands are small JSON documents).
const MAX_BODY: usize = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
struct Call {
    method: String,
    uri: String,
    /// Base64 of the request body.
    body: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    status: u16,
    /// Base64 of the response body (JSON).
    body: String,
}

/// The endpoint ID of a command route (`/api/v1/endpoints/<id>/commands/...`).
fn command_endpoint(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/api/v1/endpoints/")?;
    let (id, tail) = rest.split_once('/')?;
    (tail.starts_with("commands/") && !id.is_empty()).then_some(id)
}

/// Routes about the registry: applications and their versions, endpoints and their
/// tokens, credentials (not metadata, data, commands, configurations or files).
fn is_registry_route(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/api/v1/") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    matches!(
        parts.as_slice(),
        ["applications"]
            | ["applications", _]
            | ["applications", _, "app-versions"]
            | ["endpoints"]
            | ["endpoints", _]
            | ["endpoints", _, "tokens", ..]
            | ["credentials", ..]
    )
}

/// In front of the API (after the admin check): with several replicas on NATS, a
/// registry call goes to the registry owner, and a command call for an endpoint no
/// session here holds goes to the replica that holds it.
pub(super) async fn route(State(api): State<Api>, req: Request, next: Next) -> Response {
    let Some(nats) = api.extensions.remote.clone() else {
        return next.run(req).await;
    };
    let path = req.uri().path().to_owned();
    let forwarded = req.headers().contains_key(FORWARDED);
    let write = !matches!(*req.method(), Method::GET | Method::HEAD);
    if is_registry_route(&path) {
        match &api.extensions.registry {
            Registry::Mirror(mirror) if !forwarded => {
                let mirror = mirror.clone();
                return match pass_on(&nats, mirror.owner(), req).await {
                    Ok(resp) => {
                        if write && resp.status().is_success() {
                            // What this caller made, its next call here sees.
                            if let Err(e) = mirror.sync_now().await {
                                log::warn!("mirror: copy after a change failed: {e}");
                            }
                        }
                        resp
                    }
                    Err((parts, body, e)) if !write => {
                        log::warn!(
                            "api: registry owner {} unreachable ({e}); answering from the copy",
                            mirror.owner()
                        );
                        next.run(Request::from_parts(parts, Body::from(body))).await
                    }
                    Err((_, _, e)) => super::ApiError(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("the registry owner {} is unreachable: {e}", mirror.owner()),
                    )
                    .into_response(),
                };
            }
            Registry::Owner => {
                let resp = next.run(req).await;
                if write && resp.status().is_success() {
                    crate::mirror::sync::announce(&nats).await;
                }
                return resp;
            }
            _ => {}
        }
    }
    let Some(id) = command_endpoint(&path).map(str::to_owned) else {
        return next.run(req).await;
    };
    if forwarded || api.extensions.hub.online_endpoints().contains_key(&id) {
        return next.run(req).await;
    }
    let Some(replica) = nats.holders(&id).into_iter().next() else {
        return next.run(req).await;
    };
    match pass_on(&nats, &replica, req).await {
        Ok(resp) => resp,
        Err((parts, body, e)) => {
            // The holder is gone or NATS is down: answer from here (the command waits for
            // the device's next session here, as for any offline endpoint).
            log::warn!("api: replica {replica} did not take {}: {e}", parts.uri);
            next.run(Request::from_parts(parts, Body::from(body))).await
        }
    }
}

type NotTaken = (axum::http::request::Parts, Bytes, String);

/// Passes the call to `replica` and returns its answer; on failure, the call back.
async fn pass_on(nats: &NatsBus, replica: &str, req: Request) -> Result<Response, NotTaken> {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return Ok((StatusCode::BAD_REQUEST, format!("request body: {e}")).into_response());
        }
    };
    let call = Call {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        body: base64::engine::general_purpose::STANDARD.encode(&body),
    };
    let timeout =
        Duration::from_millis(super::control::MAX_AWAIT_TIMEOUT_MS) + Duration::from_secs(10);
    let answered = match serde_json::to_vec(&call) {
        Ok(bytes) => {
            nats.request_raw(subjects::forwarded_rest(replica), bytes, timeout)
                .await
        }
        Err(e) => Err(e.to_string()),
    };
    match answered.and_then(|a| decode_answer(&a)) {
        Ok(resp) => {
            log::debug!(
                "api: {} {} answered by replica {replica}",
                call.method,
                call.uri
            );
            Ok(resp)
        }
        Err(e) => Err((parts, body, e)),
    }
}

fn decode_answer(bytes: &[u8]) -> Result<Response, String> {
    let a: Answer = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let body = base64::engine::general_purpose::STANDARD
        .decode(a.body)
        .map_err(|e| e.to_string())?;
    let status = StatusCode::from_u16(a.status).map_err(|e| e.to_string())?;
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Answers the command calls other replicas pass on, with `router` (the API without its
/// admin check: the replica that took the call checked the admin; NATS is trusted, as
/// between Kaa's services — protect it with credentials).
pub async fn serve(nats: Arc<NatsBus>, router: Router, shutdown: CancellationToken) {
    let own = subjects::forwarded_rest(&nats.names().replica_id);
    let mut calls = match nats.subscribe_to(own).await {
        Ok(s) => s,
        Err(e) => {
            log::error!("api: calls from other replicas not taken: {e}");
            return;
        }
    };
    loop {
        let Some(msg) = next_or_stop(&mut calls, &shutdown).await else {
            break;
        };
        let Some(reply) = msg.reply else {
            continue;
        };
        let (nats, router) = (nats.clone(), router.clone());
        tokio::spawn(async move {
            let answer = run(router, &msg.payload).await;
            let bytes = serde_json::to_vec(&answer).unwrap_or_default();
            nats.reply(reply, bytes).await;
        });
    }
}

async fn run(router: Router, call: &[u8]) -> Answer {
    let error = |status: StatusCode, text: String| Answer {
        status: status.as_u16(),
        body: base64::engine::general_purpose::STANDARD
            .encode(serde_json::json!({ "error": text }).to_string()),
    };
    let call: Call = match serde_json::from_slice(call) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed call: {e}")),
    };
    let (Ok(method), Ok(uri)) = (call.method.parse::<Method>(), call.uri.parse::<Uri>()) else {
        return error(StatusCode::BAD_REQUEST, "malformed method or URI".into());
    };
    if command_endpoint(uri.path()).is_none() && !is_registry_route(uri.path()) {
        return error(
            StatusCode::FORBIDDEN,
            "only command and registry calls are taken from other replicas".into(),
        );
    }
    let Ok(body) = base64::engine::general_purpose::STANDARD.decode(&call.body) else {
        return error(StatusCode::BAD_REQUEST, "malformed body".into());
    };
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(FORWARDED, "1")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body));
    let Ok(req) = req else {
        return error(StatusCode::BAD_REQUEST, "malformed call".into());
    };
    let Ok(resp) = router.oneshot(req).await;
    let status = resp.status().as_u16();
    match axum::body::to_bytes(resp.into_body(), MAX_BODY).await {
        Ok(b) => Answer {
            status,
            body: base64::engine::general_purpose::STANDARD.encode(&b),
        },
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("answer body: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_command_routes_name_an_endpoint() {
        assert_eq!(
            command_endpoint("/api/v1/endpoints/ep-1/commands/reboot"),
            Some("ep-1")
        );
        assert_eq!(
            command_endpoint("/api/v1/endpoints/ep-1/commands/reboot/7"),
            Some("ep-1")
        );
        assert_eq!(command_endpoint("/api/v1/endpoints/ep-1/metadata"), None);
        assert_eq!(command_endpoint("/api/v1/endpoints//commands/x"), None);
        assert_eq!(command_endpoint("/api/v1/credentials/basic"), None);
    }

    #[test]
    fn registry_routes_are_told_apart_from_data_routes() {
        for p in [
            "/api/v1/applications",
            "/api/v1/applications/demo",
            "/api/v1/applications/demo/app-versions",
            "/api/v1/endpoints",
            "/api/v1/endpoints/e1",
            "/api/v1/endpoints/e1/tokens",
            "/api/v1/endpoints/e1/tokens/t/state",
            "/api/v1/credentials/basic/u/scope",
        ] {
            assert!(is_registry_route(p), "{p}");
        }
        for p in [
            "/api/v1/applications/demo/time-series/data",
            "/api/v1/endpoints/e1/metadata",
            "/api/v1/endpoints/e1/commands/reboot",
            "/api/v1/endpoints/e1/config",
            "/api/v1/app-versions/v1/config",
            "/api/v1/kpc/stats",
        ] {
            assert!(!is_registry_route(p), "{p}");
        }
    }
}
