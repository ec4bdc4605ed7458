//! The core's REST API under `/api/v1` (admin-authenticated JSON, Kaa-shaped), served on
//! the core's HTTP listener next to the 1/KP binding. Documented in
//! `platform-core/openapi.yaml`; a test keeps [`ROUTES`], the router and that document in
//! step.
//!
//! Every route needs the admin's HTTP Basic credentials (checked by a middleware against
//! an Argon2 hash; a verified header is remembered so Argon2 runs once per client, not per
//! request). Errors are JSON `{"error": "<message>"}`. Registry and credential routes live
//! in `manage`, commands and configurations in `control`, time series here.

mod control;
mod credentials;
mod files;
mod forward;
mod manage;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::epr;
use crate::ext::Extensions;
use crate::kpc::stats::{Incident, Stats};
use crate::secret::Secret;
use crate::store::{StoreError, StoreHandle};
use crate::tsdb;

/// Every route: (method, path as in the OpenAPI document).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/v1/applications"),
    ("post", "/api/v1/applications"),
    ("get", "/api/v1/applications/{applicationName}"),
    ("get", "/api/v1/applications/{applicationName}/app-versions"),
    (
        "post",
        "/api/v1/applications/{applicationName}/app-versions",
    ),
    ("get", "/api/v1/endpoints"),
    ("post", "/api/v1/endpoints"),
    ("get", "/api/v1/endpoints/{endpointId}"),
    ("delete", "/api/v1/endpoints/{endpointId}"),
    ("get", "/api/v1/endpoints/{endpointId}/metadata"),
    ("put", "/api/v1/endpoints/{endpointId}/metadata"),
    ("patch", "/api/v1/endpoints/{endpointId}/metadata"),
    ("get", "/api/v1/endpoints/{endpointId}/tokens"),
    ("post", "/api/v1/endpoints/{endpointId}/tokens"),
    ("put", "/api/v1/endpoints/{endpointId}/tokens/{token}/state"),
    ("get", "/api/v1/credentials/basic"),
    ("post", "/api/v1/credentials/basic"),
    ("get", "/api/v1/credentials/basic/{username}"),
    ("put", "/api/v1/credentials/basic/{username}/state"),
    ("put", "/api/v1/credentials/basic/{username}/scope"),
    ("get", "/api/v1/credentials/x509"),
    ("post", "/api/v1/credentials/x509"),
    ("get", "/api/v1/credentials/x509/{fingerprint}"),
    ("put", "/api/v1/credentials/x509/{fingerprint}/state"),
    (
        "post",
        "/api/v1/endpoints/{endpointId}/commands/{commandType}",
    ),
    (
        "get",
        "/api/v1/endpoints/{endpointId}/commands/{commandType}/{commandId}",
    ),
    ("get", "/api/v1/endpoints/{endpointId}/config"),
    ("put", "/api/v1/endpoints/{endpointId}/config"),
    ("get", "/api/v1/endpoints/{endpointId}/config/{configName}"),
    ("put", "/api/v1/endpoints/{endpointId}/config/{configName}"),
    ("get", "/api/v1/app-versions/{appVersionName}/config"),
    ("put", "/api/v1/app-versions/{appVersionName}/config"),
    (
        "get",
        "/api/v1/app-versions/{appVersionName}/config/{configName}",
    ),
    (
        "put",
        "/api/v1/app-versions/{appVersionName}/config/{configName}",
    ),
    ("get", "/api/v1/endpoints/{endpointId}/binary-data"),
    ("get", "/api/v1/endpoints/{endpointId}/binary-data/{name}"),
    (
        "get",
        "/api/v1/applications/{applicationName}/time-series/last",
    ),
    (
        "get",
        "/api/v1/applications/{applicationName}/time-series/data",
    ),
    ("get", "/api/v1/kpc/stats"),
];

/// Who may use the API: one admin user, checked against an Argon2 hash.
#[derive(Debug, Clone)]
pub struct AdminAuth {
    pub username: String,
    pub password_hash: Secret,
}

/// What the API needs from the core.
#[derive(Debug, Clone)]
pub struct ApiContext {
    pub extensions: Extensions,
    pub auth: AdminAuth,
    pub stats: Stats,
    /// The core's bounded, throttled password checks (shared with the MQTT listeners).
    pub passwords: crate::ccm::password::PasswordChecker,
}

/// Most verified Authorization headers remembered.
const VERIFIED_CACHE: usize = 16;

#[derive(Clone)]
struct Api {
    store: StoreHandle,
    extensions: Extensions,
    stats: Stats,
}

/// The admin check in front of every route.
#[derive(Clone)]
struct AdminGuard {
    stats: Stats,
    auth: AdminAuth,
    passwords: crate::ccm::password::PasswordChecker,
    verified: Arc<Mutex<HashSet<String>>>,
}

/// An API error: a status and a clear message, as JSON `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad_request(msg: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, msg.into())
    }
    fn not_found(msg: impl Into<String>) -> Self {
        Self(StatusCode::NOT_FOUND, msg.into())
    }
    fn conflict(msg: impl Into<String>) -> Self {
        Self(StatusCode::CONFLICT, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(json!({"error": self.1}))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"kp-gateway core\""),
            );
        }
        r
    }
}

fn storage(e: StoreError) -> ApiError {
    match e {
        // Validation failures and clashes are the caller's to fix; everything else is ours.
        StoreError::Invalid(msg) => ApiError::bad_request(msg),
        StoreError::Conflict(msg) => ApiError::conflict(msg),
        e => {
            log::error!("api: storage failure: {e}");
            ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
        }
    }
}

/// The API router (mounted by the HTTP listener): every route needs the admin.
pub fn router(ctx: ApiContext) -> Router {
    let guard = AdminGuard {
        stats: ctx.stats.clone(),
        auth: ctx.auth,
        passwords: ctx.passwords,
        verified: Arc::default(),
    };
    let api = Api {
        store: ctx.extensions.store.clone(),
        extensions: ctx.extensions,
        stats: ctx.stats,
    };
    // The admin check runs first (outermost), then a command call may go to the replica
    // holding the endpoint's session.
    routes()
        .route_layer(middleware::from_fn_with_state(api.clone(), forward::route))
        .route_layer(middleware::from_fn_with_state(guard, require_admin))
        .with_state(api)
}

/// Answers command calls other core replicas pass on over NATS (see `forward`).
pub async fn serve_forwarded(
    nats: Arc<crate::bus::nats::NatsBus>,
    extensions: Extensions,
    stats: Stats,
    shutdown: tokio_util::sync::CancellationToken,
) {
    forward::serve(
        nats,
        router_for_authenticated_caller(extensions, stats),
        shutdown,
    )
    .await
}

/// The same routes and handlers for a caller that has authenticated the user itself
/// (the gateway's web console, behind its session and CSRF checks). Never mount this on
/// a listener without such a check in front.
pub fn router_for_authenticated_caller(extensions: Extensions, stats: Stats) -> Router {
    let api = Api {
        store: extensions.store.clone(),
        extensions,
        stats,
    };
    routes()
        .route_layer(middleware::from_fn_with_state(api.clone(), forward::route))
        .route_layer(middleware::from_fn(json_errors))
        .with_state(api)
}

fn routes() -> Router<Api> {
    Router::new()
        .route(
            "/api/v1/applications",
            get(manage::list_applications).post(manage::create_application),
        )
        .route(
            "/api/v1/applications/{applicationName}",
            get(manage::get_application),
        )
        .route(
            "/api/v1/applications/{applicationName}/app-versions",
            get(manage::list_app_versions).post(manage::create_app_version),
        )
        .route(
            "/api/v1/endpoints",
            get(manage::list_endpoints).post(manage::create_endpoint),
        )
        .route(
            "/api/v1/endpoints/{endpointId}",
            get(manage::get_endpoint).delete(manage::delete_endpoint),
        )
        .route(
            "/api/v1/endpoints/{endpointId}/metadata",
            get(manage::get_metadata)
                .put(manage::put_metadata)
                .patch(manage::patch_metadata),
        )
        .route(
            "/api/v1/endpoints/{endpointId}/tokens",
            get(manage::list_tokens).post(manage::issue_token),
        )
        .route(
            "/api/v1/endpoints/{endpointId}/tokens/{token}/state",
            put(manage::set_token_state),
        )
        .route(
            "/api/v1/credentials/basic",
            get(credentials::list_basic).post(credentials::create_basic),
        )
        .route(
            "/api/v1/credentials/basic/{username}",
            get(credentials::get_basic),
        )
        .route(
            "/api/v1/credentials/basic/{username}/state",
            put(credentials::set_basic_state),
        )
        .route(
            "/api/v1/credentials/basic/{username}/scope",
            put(credentials::set_basic_scope),
        )
        .route(
            "/api/v1/credentials/x509",
            get(credentials::list_x509).post(credentials::create_x509),
        )
        .route(
            "/api/v1/credentials/x509/{fingerprint}",
            get(credentials::get_x509),
        )
        .route(
            "/api/v1/credentials/x509/{fingerprint}/state",
            put(credentials::set_x509_state),
        )
        .route(
            "/api/v1/endpoints/{endpointId}/commands/{commandType}",
            post(control::send_command),
        )
        .route(
            "/api/v1/endpoints/{endpointId}/commands/{commandType}/{commandId}",
            get(control::get_command),
        )
        .route(
            "/api/v1/endpoints/{endpointId}/config",
            get(control::get_default_config).put(control::put_default_config),
        )
        .route(
            "/api/v1/endpoints/{endpointId}/config/{configName}",
            get(control::get_named_config).put(control::put_named_config),
        )
        .route(
            "/api/v1/app-versions/{appVersionName}/config",
            get(control::get_avn_default_config).put(control::put_avn_default_config),
        )
        .route(
            "/api/v1/app-versions/{appVersionName}/config/{configName}",
            get(control::get_avn_named_config).put(control::put_avn_named_config),
        )
        .route(
            "/api/v1/endpoints/{endpointId}/binary-data",
            get(files::list_files),
        )
        .route(
            "/api/v1/endpoints/{endpointId}/binary-data/{name}",
            get(files::download_file),
        )
        .route(
            "/api/v1/applications/{applicationName}/time-series/last",
            get(ts_last),
        )
        .route(
            "/api/v1/applications/{applicationName}/time-series/data",
            get(ts_data),
        )
        .route("/api/v1/kpc/stats", get(control::kpc_stats))
}

/// Checks the admin, then runs the route (see [`json_errors`]).
async fn require_admin(State(guard): State<AdminGuard>, req: Request, next: Next) -> Response {
    if let Err(e) = authorize(&guard, req.headers()).await {
        return e.into_response();
    }
    json_errors(req, next).await
}

/// Runs the handler and turns axum's plain-text rejections (bad JSON body, bad query or
/// path) into the API's JSON errors (as 400).
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if resp.status().is_client_error() && !is_json {
        let body = axum::body::to_bytes(resp.into_body(), 64 * 1024)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        return ApiError::bad_request(if text.is_empty() {
            "bad request".to_owned()
        } else {
            text.into_owned()
        })
        .into_response();
    }
    resp
}

async fn authorize(api: &AdminGuard, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let denied = || {
        ApiError(
            StatusCode::UNAUTHORIZED,
            "admin credentials required (HTTP Basic)".into(),
        )
    };
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(denied)?;
    // Only a digest of a verified header is kept, never the header itself.
    let digest = crate::ccm::fingerprint_der(value.as_bytes());
    let known = api
        .verified
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&digest);
    if known {
        return Ok(());
    }
    let encoded = value.strip_prefix("Basic ").ok_or_else(denied)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| denied())?;
    let text = String::from_utf8(decoded).map_err(|_| denied())?;
    let (user, password) = text.split_once(':').ok_or_else(denied)?;
    // A wrong user name costs the same check as a wrong password (no name oracle).
    let stored = (user == api.auth.username).then(|| api.auth.password_hash.expose());
    use crate::ccm::password::Check;
    match api.passwords.check(user, stored, password, None).await {
        Check::Good => {}
        Check::Busy => {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many logins under way; try again".into(),
            ))
        }
        Check::Bad | Check::Throttled(_) => {
            api.stats.report(Incident::AdminLoginFailed, || {
                format!("api: admin login as {user:?} failed (wrong user name or password, or backing off)")
            });
            return Err(denied());
        }
    }
    let mut cache = api.verified.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= VERIFIED_CACHE {
        cache.clear();
    }
    cache.insert(digest);
    Ok(())
}

async fn endpoint_app_version(api: &Api, id: &str) -> Result<String, ApiError> {
    let id2 = id.to_owned();
    api.store
        .call(move |c| epr::endpoint_app_version(c, &id2))
        .await
        .map_err(storage)?
        .ok_or_else(|| ApiError::not_found(format!("no endpoint {id:?}")))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TsQuery {
    endpoint_id: String,
    time_series_name: String,
    from_date: Option<String>,
    to_date: Option<String>,
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

pub(crate) fn rfc3339(ms: i64) -> String {
    crate::store::rfc3339_ms(ms)
}

fn parse_date(name: &str, v: &Option<String>, default: i64) -> Result<i64, ApiError> {
    match v {
        None => Ok(default),
        Some(s) => OffsetDateTime::parse(s, &Rfc3339)
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
            .map_err(|_| {
                ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("{name} {s:?} is not an RFC 3339 date"),
                )
            }),
    }
}

/// Kaa's shape: `[{"<endpointId>": {"<series>": [{"timestamp": "...", "values": {"value": v}}]}}]`.
async fn time_series(
    api: Api,
    app: String,
    q: TsQuery,
    last: bool,
) -> Result<Json<Value>, ApiError> {
    let endpoints = list(&q.endpoint_id);
    let names = list(&q.time_series_name);
    if endpoints.is_empty() || names.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "endpointId and timeSeriesName are required".into(),
        ));
    }
    let from = parse_date("fromDate", &q.from_date, i64::MIN)?;
    let to = parse_date("toDate", &q.to_date, i64::MAX)?;
    for ep in &endpoints {
        let avn = endpoint_app_version(&api, ep).await?;
        let app2 = app.clone();
        let owner = api
            .store
            .call(move |c| epr::application_of(c, &avn))
            .await
            .map_err(storage)?;
        if owner.as_deref() != Some(app2.as_str()) {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("endpoint {ep:?} is not in application {app:?}"),
            ));
        }
    }
    let result = api
        .store
        .call(move |c| {
            let mut out = Vec::new();
            for ep in &endpoints {
                let mut per_series = BTreeMap::new();
                for name in &names {
                    let points = if last {
                        tsdb::last(c, ep, name)?.into_iter().collect()
                    } else {
                        tsdb::range(c, ep, name, from, to.saturating_add(1))?
                    };
                    let pts: Vec<Value> = points
                        .into_iter()
                        .map(|p| json!({"timestamp": rfc3339(p.ts_ms), "values": {"value": p.value}}))
                        .collect();
                    per_series.insert(name.clone(), Value::Array(pts));
                }
                let mut m = Map::new();
                m.insert(ep.clone(), json!(per_series));
                out.push(Value::Object(m));
            }
            Ok(out)
        })
        .await
        .map_err(storage)?;
    Ok(Json(Value::Array(result)))
}

async fn ts_last(
    State(api): State<Api>,
    Path(app): Path<String>,
    Query(q): Query<TsQuery>,
) -> Result<Json<Value>, ApiError> {
    time_series(api, app, q, true).await
}

async fn ts_data(
    State(api): State<Api>,
    Path(app): Path<String>,
    Query(q): Query<TsQuery>,
) -> Result<Json<Value>, ApiError> {
    time_series(api, app, q, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let doc = include_str!("../../openapi.yaml");
        let mut documented = Vec::new();
        let mut path = None;
        for line in doc.lines() {
            if let Some(p) = line.strip_prefix("  /api/v1") {
                path = Some(format!("/api/v1{}", p.trim_end_matches(':')));
            } else if let (Some(p), Some(m)) = (&path, line.strip_prefix("    ")) {
                if let Some(method) = m.strip_suffix(':') {
                    if ["get", "put", "patch", "post", "delete"].contains(&method) {
                        documented.push((method.to_owned(), p.clone()));
                    }
                }
            }
        }
        let mut routes: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        documented.sort();
        routes.sort();
        assert_eq!(documented, routes);
    }
}
