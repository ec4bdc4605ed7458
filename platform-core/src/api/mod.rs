//! The core's REST API under `/api/v1` (admin-authenticated JSON, Kaa-shaped), served on
//! the core's HTTP listener next to the 1/KP binding. Documented in `platform-core/openapi.yaml`;
//! a test keeps [`ROUTES`], the router and that document in step.
//!
//! This first cut covers endpoints, their metadata and time-series queries; the rest of
//! the API (applications, tokens, credentials, commands, configurations) comes with the
//! matching services.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::epr::{self, is_valid_metadata_key};
use crate::store::{StoreError, StoreHandle};
use crate::tsdb;

/// Every route: (method, path as in the OpenAPI document).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/v1/endpoints/{endpointId}"),
    ("get", "/api/v1/endpoints/{endpointId}/metadata"),
    ("put", "/api/v1/endpoints/{endpointId}/metadata"),
    ("patch", "/api/v1/endpoints/{endpointId}/metadata"),
    (
        "get",
        "/api/v1/applications/{applicationName}/time-series/last",
    ),
    (
        "get",
        "/api/v1/applications/{applicationName}/time-series/data",
    ),
];

/// Who may use the API: one admin user, checked against an Argon2 hash.
#[derive(Clone)]
pub struct AdminAuth {
    pub username: String,
    pub password_hash: String,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Api {
    store: StoreHandle,
    auth: AdminAuth,
}

/// An API error: a status and a clear message, as JSON `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

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
    log::error!("api: storage failure: {e}");
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
}

/// The API router (mounted by the HTTP listener).
pub fn router(store: StoreHandle, auth: AdminAuth) -> Router {
    Router::new()
        .route("/api/v1/endpoints/{endpointId}", get(get_endpoint))
        .route(
            "/api/v1/endpoints/{endpointId}/metadata",
            get(get_metadata).put(put_metadata).patch(patch_metadata),
        )
        .route(
            "/api/v1/applications/{applicationName}/time-series/last",
            get(ts_last),
        )
        .route(
            "/api/v1/applications/{applicationName}/time-series/data",
            get(ts_data),
        )
        .with_state(Api { store, auth })
}

async fn authorize(api: &Api, headers: &HeaderMap) -> Result<(), ApiError> {
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
    let encoded = value.strip_prefix("Basic ").ok_or_else(denied)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| denied())?;
    let text = String::from_utf8(decoded).map_err(|_| denied())?;
    let (user, password) = text.split_once(':').ok_or_else(denied)?;
    if user != api.auth.username {
        return Err(denied());
    }
    let (hash, password) = (api.auth.password_hash.clone(), password.to_owned());
    let ok = tokio::task::spawn_blocking(move || crate::ccm::verify_hash(&hash, &password))
        .await
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(denied())
    }
}

async fn endpoint_app_version(api: &Api, id: &str) -> Result<String, ApiError> {
    let id2 = id.to_owned();
    api.store
        .call(move |c| epr::endpoint_app_version(c, &id2))
        .await
        .map_err(storage)?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no endpoint {id:?}")))
}

async fn get_endpoint(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&api, &headers).await?;
    let avn = endpoint_app_version(&api, &id).await?;
    let id2 = id.clone();
    let metadata = api
        .store
        .call(move |c| epr::metadata(c, &id2, None))
        .await
        .map_err(storage)?;
    Ok(Json(
        json!({"endpointId": id, "appVersion": {"name": avn}, "metadata": metadata}),
    ))
}

async fn get_metadata(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&api, &headers).await?;
    endpoint_app_version(&api, &id).await?;
    let m = api
        .store
        .call(move |c| epr::metadata(c, &id, None))
        .await
        .map_err(storage)?;
    Ok(Json(Value::Object(m)))
}

async fn write_metadata(
    api: Api,
    headers: HeaderMap,
    id: String,
    body: Value,
    replace_all: bool,
) -> Result<StatusCode, ApiError> {
    authorize(&api, &headers).await?;
    endpoint_app_version(&api, &id).await?;
    let Value::Object(values) = body else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "metadata must be a JSON object".into(),
        ));
    };
    if let Some(bad) = values.keys().find(|k| !is_valid_metadata_key(k)) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("invalid metadata key {bad:?}: must match ^[a-zA-Z0-9_]+$"),
        ));
    }
    api.store
        .call(move |c| epr::write_metadata(c, &id, &values, replace_all))
        .await
        .map_err(storage)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn put_metadata(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<StatusCode, ApiError> {
    write_metadata(api, headers, id, body, true).await
}

async fn patch_metadata(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<StatusCode, ApiError> {
    write_metadata(api, headers, id, body, false).await
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

fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
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
    headers: HeaderMap,
    app: String,
    q: TsQuery,
    last: bool,
) -> Result<Json<Value>, ApiError> {
    authorize(&api, &headers).await?;
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
    headers: HeaderMap,
    Path(app): Path<String>,
    Query(q): Query<TsQuery>,
) -> Result<Json<Value>, ApiError> {
    time_series(api, headers, app, q, true).await
}

async fn ts_data(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(app): Path<String>,
    Query(q): Query<TsQuery>,
) -> Result<Json<Value>, ApiError> {
    time_series(api, headers, app, q, false).await
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
