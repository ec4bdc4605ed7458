//! REST handlers of the registry: applications, app versions, endpoints, metadata and
//! tokens, with their state changes (credentials are in `credentials`).
//!
//! A token or credential that becomes suspended or revoked ends the live sessions using
//! it at once (docs/protocol.md §6); deleting an endpoint ends the sessions that used it.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{endpoint_app_version, rfc3339, storage, Api, ApiError};
use crate::ccm::{State as CredState, StateChangeError};
use crate::epr::{self, is_valid_endpoint_id, is_valid_metadata_key};

type JsonResult = Result<Json<Value>, ApiError>;

pub(super) fn state_change(e: StateChangeError, what: &str) -> ApiError {
    match e {
        StateChangeError::NotFound => ApiError::not_found(format!("no {what}")),
        e @ StateChangeError::NotAllowed { .. } => ApiError::conflict(e.to_string()),
        StateChangeError::Store(e) => storage(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NameBody {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StateBody {
    pub(super) state: CredState,
}

pub(super) async fn list_applications(State(api): State<Api>) -> JsonResult {
    let apps = api
        .store
        .call(|c| epr::applications(c))
        .await
        .map_err(storage)?;
    Ok(Json(
        apps.into_iter()
            .map(|a| json!({"name": a.name, "appVersions": a.versions}))
            .collect(),
    ))
}

pub(super) async fn create_application(
    State(api): State<Api>,
    Json(body): Json<NameBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = body.name.clone();
    let created = api
        .store
        .call(move |c| epr::create_application(c, &name))
        .await
        .map_err(storage)?;
    if !created {
        return Err(ApiError::conflict(format!(
            "application {:?} already exists",
            body.name
        )));
    }
    Ok((StatusCode::CREATED, Json(json!({"name": body.name}))))
}

async fn application(api: &Api, name: &str) -> Result<epr::ApplicationSpec, ApiError> {
    let apps = api
        .store
        .call(|c| epr::applications(c))
        .await
        .map_err(storage)?;
    apps.into_iter()
        .find(|a| a.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no application {name:?}")))
}

pub(super) async fn get_application(State(api): State<Api>, Path(app): Path<String>) -> JsonResult {
    let a = application(&api, &app).await?;
    Ok(Json(json!({"name": a.name, "appVersions": a.versions})))
}

pub(super) async fn list_app_versions(
    State(api): State<Api>,
    Path(app): Path<String>,
) -> JsonResult {
    let a = application(&api, &app).await?;
    Ok(Json(
        a.versions
            .into_iter()
            .map(|v| json!({"name": v, "applicationName": app}))
            .collect(),
    ))
}

pub(super) async fn create_app_version(
    State(api): State<Api>,
    Path(app): Path<String>,
    Json(body): Json<NameBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    application(&api, &app).await?;
    let (a, v) = (app.clone(), body.name.clone());
    let existed_elsewhere = api
        .store
        .call(move |c| Ok(epr::application_of(c, &v)?.filter(|owner| *owner != a)))
        .await
        .map_err(storage)?;
    if let Some(owner) = existed_elsewhere {
        return Err(ApiError::conflict(format!(
            "app version {:?} already belongs to application {owner:?}",
            body.name
        )));
    }
    let (a, v) = (app.clone(), body.name.clone());
    let created = api
        .store
        .call(move |c| epr::create_app_version(c, &a, &v))
        .await
        .map_err(storage)?;
    if !created {
        return Err(ApiError::conflict(format!(
            "app version {:?} already exists",
            body.name
        )));
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": body.name, "applicationName": app})),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct EndpointFilter {
    application_name: Option<String>,
    app_version_name: Option<String>,
}

fn endpoint_json(e: &epr::EndpointInfo) -> Value {
    json!({
        "endpointId": e.endpoint_id,
        "appVersion": {"name": e.app_version},
        "applicationName": e.application,
        "createdAt": rfc3339(e.created_ms),
    })
}

pub(super) async fn list_endpoints(
    State(api): State<Api>,
    Query(f): Query<EndpointFilter>,
) -> JsonResult {
    let list = api
        .store
        .call(move |c| {
            epr::endpoints(
                c,
                f.application_name.as_deref(),
                f.app_version_name.as_deref(),
            )
        })
        .await
        .map_err(storage)?;
    let online = api.extensions.hub.online_endpoints();
    Ok(Json(
        list.iter()
            .map(|e| {
                let mut v = endpoint_json(e);
                v["connected"] = online.contains_key(&e.endpoint_id).into();
                v
            })
            .collect(),
    ))
}

/// `appVersion` as Kaa writes it (`{"name": "..."}`) or as a plain string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum AppVersionRef {
    Named { name: String },
    Plain(String),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct NewEndpoint {
    app_version: AppVersionRef,
    #[serde(default)]
    endpoint_id: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    metadata: Map<String, Value>,
}

pub(super) async fn create_endpoint(
    State(api): State<Api>,
    Json(body): Json<NewEndpoint>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let avn = match body.app_version {
        AppVersionRef::Named { name } | AppVersionRef::Plain(name) => name,
    };
    if let Some(id) = &body.endpoint_id {
        if !is_valid_endpoint_id(id) {
            return Err(ApiError::bad_request(format!(
                "invalid endpointId {id:?}: must match ^[a-zA-Z0-9._~-]+$"
            )));
        }
    }
    if let Some(bad) = body.metadata.keys().find(|k| !is_valid_metadata_key(k)) {
        return Err(ApiError::bad_request(format!(
            "invalid metadata key {bad:?}: must match ^[a-zA-Z0-9_]+$"
        )));
    }
    let avn2 = avn.clone();
    let known = api
        .store
        .call(move |c| epr::app_version_exists(c, &avn2))
        .await
        .map_err(storage)?;
    if !known {
        return Err(ApiError::not_found(format!("no app version {avn:?}")));
    }
    let avn2 = avn.clone();
    let (id, token) = api
        .store
        .call(move |c| {
            epr::create_endpoint(
                c,
                &avn2,
                body.endpoint_id.as_deref(),
                body.token.as_deref(),
                &body.metadata,
            )
        })
        .await
        .map_err(storage)?;
    api.extensions.bus.publish(crate::bus::Event::Registered {
        endpoint_id: id.clone(),
        app_version: avn.clone(),
        timestamp_ms: crate::store::now_ms(),
    });
    Ok((
        StatusCode::CREATED,
        Json(json!({"endpointId": id, "appVersion": {"name": avn}, "token": token})),
    ))
}

pub(super) async fn get_endpoint(State(api): State<Api>, Path(id): Path<String>) -> JsonResult {
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

pub(super) async fn delete_endpoint(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let avn = endpoint_app_version(&api, &id).await?;
    let id2 = id.clone();
    let deleted = api
        .store
        .call(move |c| epr::delete_endpoint(c, &id2))
        .await
        .map_err(storage)?;
    if deleted {
        api.extensions.bus.publish(crate::bus::Event::Unregistered {
            endpoint_id: id.clone(),
            app_version: avn,
            timestamp_ms: crate::store::now_ms(),
        });
    }
    let cut = api.extensions.hub.cut_endpoint(&id);
    // Its raw samples, in steps (appends go on between them); gone when this answers.
    crate::tsdb::purge_deleted(&api.store)
        .await
        .map_err(storage)?;
    log::info!("api: endpoint {id} deleted ({cut} live session(s) ended)");
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn get_metadata(State(api): State<Api>, Path(id): Path<String>) -> JsonResult {
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
    id: String,
    body: Value,
    replace_all: bool,
) -> Result<StatusCode, ApiError> {
    endpoint_app_version(&api, &id).await?;
    let Value::Object(values) = body else {
        return Err(ApiError::bad_request("metadata must be a JSON object"));
    };
    if let Some(bad) = values.keys().find(|k| !is_valid_metadata_key(k)) {
        return Err(ApiError::bad_request(format!(
            "invalid metadata key {bad:?}: must match ^[a-zA-Z0-9_]+$"
        )));
    }
    api.store
        .call(move |c| epr::write_metadata(c, &id, &values, replace_all))
        .await
        .map_err(storage)?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn put_metadata(
    State(api): State<Api>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<StatusCode, ApiError> {
    write_metadata(api, id, body, true).await
}

pub(super) async fn patch_metadata(
    State(api): State<Api>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<StatusCode, ApiError> {
    write_metadata(api, id, body, false).await
}

fn token_json(t: &epr::TokenInfo) -> Value {
    json!({"token": t.token, "state": t.state, "createdAt": rfc3339(t.created_ms)})
}

pub(super) async fn list_tokens(State(api): State<Api>, Path(id): Path<String>) -> JsonResult {
    endpoint_app_version(&api, &id).await?;
    let list = api
        .store
        .call(move |c| epr::tokens(c, &id))
        .await
        .map_err(storage)?;
    Ok(Json(list.iter().map(token_json).collect()))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct NewToken {
    #[serde(default)]
    token: Option<String>,
    /// Revoke the endpoint's other tokens (re-issue).
    #[serde(default)]
    revoke_others: bool,
}

pub(super) async fn issue_token(
    State(api): State<Api>,
    Path(id): Path<String>,
    body: Option<Json<NewToken>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    endpoint_app_version(&api, &id).await?;
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let id2 = id.clone();
    let (token, revoked) = api
        .store
        .call(move |c| {
            let others: Vec<String> = epr::tokens(c, &id2)?
                .into_iter()
                .filter(|t| t.state != CredState::Revoked)
                .map(|t| t.token)
                .collect();
            let token = epr::issue_token(c, &id2, body.token.as_deref())?;
            let mut revoked = Vec::new();
            if body.revoke_others {
                for t in others {
                    epr::set_token_state(c, &id2, &t, CredState::Revoked)
                        .map_err(|e| crate::store::StoreError::Invalid(e.to_string()))?;
                    revoked.push(t);
                }
            }
            Ok((token, revoked))
        })
        .await
        .map_err(storage)?;
    for t in &revoked {
        api.extensions.hub.cut_token(t);
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({"endpointId": id, "token": token, "revoked": revoked.len()})),
    ))
}

pub(super) async fn set_token_state(
    State(api): State<Api>,
    Path((id, token)): Path<(String, String)>,
    Json(body): Json<StateBody>,
) -> JsonResult {
    endpoint_app_version(&api, &id).await?;
    let (id2, t2, to) = (id.clone(), token.clone(), body.state);
    let from = api
        .store
        .call(move |c| Ok(epr::set_token_state(c, &id2, &t2, to)))
        .await
        .map_err(storage)?
        .map_err(|e| state_change(e, "such token for this endpoint"))?;
    let cut = if to.cuts_sessions() {
        api.extensions.hub.cut_token(&token)
    } else {
        0
    };
    Ok(Json(
        json!({"token": token, "state": to, "previousState": from, "sessionsEnded": cut}),
    ))
}
