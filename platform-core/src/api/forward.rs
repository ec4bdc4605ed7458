//! Commands for an endpoint whose session lives on another core replica: the REST call
//! goes to that replica over NATS and its answer comes back as it is (docs/protocol.md
//! §11), so a command reaches the device whichever replica's API was called.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::Api;
use crate::bus::nats::NatsBus;

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

/// In front of the API: a command call for an endpoint no session here holds, but
/// another replica does, is answered by that replica.
pub(super) async fn to_holder(State(api): State<Api>, req: Request, next: Next) -> Response {
    let Some(nats) = api.extensions.remote.clone() else {
        return next.run(req).await;
    };
    let Some(id) = command_endpoint(req.uri().path()).map(str::to_owned) else {
        return next.run(req).await;
    };
    if req.headers().contains_key(FORWARDED)
        || api.extensions.hub.online_endpoints().contains_key(&id)
    {
        return next.run(req).await;
    }
    let Some(replica) = nats.holders(&id).into_iter().next() else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("request body: {e}")).into_response();
        }
    };
    let call = Call {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        body: base64::engine::general_purpose::STANDARD.encode(&body),
    };
    let timeout =
        Duration::from_millis(super::control::MAX_AWAIT_TIMEOUT_MS) + Duration::from_secs(10);
    let sent = serde_json::to_vec(&call).map_err(|e| e.to_string());
    let answered = match sent {
        Ok(bytes) => nats.forward_rest(&replica, bytes, timeout).await,
        Err(e) => Err(e),
    };
    match answered.and_then(|a| decode_answer(&a)) {
        Ok(resp) => {
            log::debug!(
                "api: {} {} answered by replica {replica}",
                call.method,
                call.uri
            );
            resp
        }
        Err(e) => {
            // The holder is gone or NATS is down: answer from here (the command waits for
            // the device's next session here, as for any offline endpoint).
            log::warn!("api: replica {replica} did not take {}: {e}", call.uri);
            next.run(Request::from_parts(parts, Body::from(body))).await
        }
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
    let mut calls = match nats.forwarded_rest_calls().await {
        Ok(s) => s,
        Err(e) => {
            log::error!("api: calls from other replicas not taken: {e}");
            return;
        }
    };
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = calls.next() => match m {
                Some(m) => m,
                None => break,
            },
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
    if command_endpoint(uri.path()).is_none() {
        return error(
            StatusCode::FORBIDDEN,
            "only command calls are taken from other replicas".into(),
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
}
