//! REST handlers that reach endpoints: commands (11/CEP) and configurations (7/CMP), plus
//! KPC's counters.
//!
//! `POST .../commands/{type}?awaitTimeout=&commandTtl=` creates a command, pushes it to
//! the endpoint's live sessions and waits up to `awaitTimeout` ms for the result: 200 with
//! the result, or 202 with the pending command (fetch it later with GET). Times are in
//! milliseconds like Kaa's; `commandTtl` defaults to [`DEFAULT_COMMAND_TTL_MS`].

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use super::{endpoint_app_version, rfc3339, storage, Api, ApiError};
use crate::ext::cex::{self, is_valid_command_type, Command};
use crate::ext::cmx::{self, is_valid_config_name};
use crate::ext::ExtensionKind;
use crate::store::now_ms;

/// Time to live of a command when the request does not say.
pub const DEFAULT_COMMAND_TTL_MS: u64 = 60_000;
/// Longest time to live accepted (30 days).
pub const MAX_COMMAND_TTL_MS: u64 = 30 * 24 * 3600 * 1000;
/// Longest a request may wait for a result.
pub const MAX_AWAIT_TIMEOUT_MS: u64 = 300_000;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct CommandQuery {
    #[serde(default)]
    await_timeout: Option<u64>,
    #[serde(default)]
    command_ttl: Option<u64>,
    /// The CEX instance (default `cex`).
    #[serde(default)]
    instance: Option<String>,
}

/// `?instance=`: which CMX or CEX instance (default: the kind's default instance).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InstanceQuery {
    #[serde(default)]
    instance: Option<String>,
}

/// Resolves `?instance=` to a configured instance of `kind`.
fn instance_of(api: &Api, given: Option<String>, kind: ExtensionKind) -> Result<String, ApiError> {
    let name = given.unwrap_or_else(|| kind.default_instance().to_owned());
    if api.extensions.kind_of(&name) == Some(kind) {
        Ok(name)
    } else {
        Err(ApiError::not_found(format!(
            "no {} instance {name:?} is configured",
            kind.default_instance()
        )))
    }
}

fn command_json(c: &Command) -> Value {
    json!({
        "id": c.id,
        "endpointId": c.endpoint_id,
        "instance": c.instance,
        "commandType": c.command_type,
        "payload": c.payload,
        "status": c.status,
        "createdAt": rfc3339(c.created_ms),
        "expiresAt": rfc3339(c.expires_ms),
        "deliveredAt": c.delivered_ms.map(rfc3339),
        "result": c.result.as_ref().map(|r| json!({
            "statusCode": r.status_code,
            "reasonPhrase": r.reason_phrase,
            "payload": r.payload,
            "receivedAt": rfc3339(r.received_ms),
        })),
    })
}

async fn load_command(api: &Api, endpoint_id: &str, id: i64) -> Result<Option<Command>, ApiError> {
    let ep = endpoint_id.to_owned();
    api.store
        .call(move |c| cex::get(c, &ep, id, now_ms()))
        .await
        .map_err(storage)
}

pub(super) async fn send_command(
    State(api): State<Api>,
    Path((id, command_type)): Path<(String, String)>,
    Query(q): Query<CommandQuery>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    endpoint_app_version(&api, &id).await?;
    let instance = instance_of(&api, q.instance, ExtensionKind::Cex)?;
    if !is_valid_command_type(&command_type) {
        return Err(ApiError::bad_request(format!(
            "invalid command type {command_type:?}: must match ^[a-zA-Z0-9._-]+$"
        )));
    }
    let ttl = q.command_ttl.unwrap_or(DEFAULT_COMMAND_TTL_MS);
    if ttl == 0 || ttl > MAX_COMMAND_TTL_MS {
        return Err(ApiError::bad_request(format!(
            "commandTtl must be 1..={MAX_COMMAND_TTL_MS} ms"
        )));
    }
    let wait = q.await_timeout.unwrap_or(0);
    if wait > MAX_AWAIT_TIMEOUT_MS {
        return Err(ApiError::bad_request(format!(
            "awaitTimeout must be at most {MAX_AWAIT_TIMEOUT_MS} ms"
        )));
    }
    let payload: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the command payload is not JSON: {e}")))?
    };
    // Listen before sending, so a fast result is not missed.
    let mut results = api.extensions.subscribe_results();
    let cmd_id = api
        .extensions
        .send_command(&id, &instance, &command_type, payload, ttl as i64)
        .await
        .map_err(storage)?;
    if wait > 0 {
        let waiting = async {
            loop {
                match results.recv().await {
                    Ok(done) if done == cmd_id => break,
                    Ok(_) => {}
                    // Missed some notifications: the stored command tells the truth.
                    Err(RecvError::Lagged(_)) => {
                        if load_command(&api, &id, cmd_id)
                            .await
                            .ok()
                            .flatten()
                            .is_some_and(|c| c.result.is_some())
                        {
                            break;
                        }
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(wait), waiting).await;
    }
    let cmd = load_command(&api, &id, cmd_id)
        .await?
        .ok_or_else(|| ApiError::not_found("the command vanished (endpoint deleted?)"))?;
    let status = if cmd.result.is_some() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(command_json(&cmd))))
}

pub(super) async fn get_command(
    State(api): State<Api>,
    Path((id, command_type, command_id)): Path<(String, String, String)>,
    Query(q): Query<InstanceQuery>,
) -> Result<Json<Value>, ApiError> {
    endpoint_app_version(&api, &id).await?;
    let instance = instance_of(&api, q.instance, ExtensionKind::Cex)?;
    let not_found = || {
        ApiError::not_found(format!(
            "no command {command_id:?} of type {command_type:?} for this endpoint"
        ))
    };
    let n: i64 = command_id.parse().map_err(|_| not_found())?;
    let cmd = load_command(&api, &id, n).await?.ok_or_else(not_found)?;
    if cmd.command_type != command_type || cmd.instance != instance {
        return Err(not_found());
    }
    Ok(Json(command_json(&cmd)))
}

async fn get_config(
    api: Api,
    id: String,
    name: String,
    q: InstanceQuery,
) -> Result<Json<Value>, ApiError> {
    endpoint_app_version(&api, &id).await?;
    let inst = instance_of(&api, q.instance, ExtensionKind::Cmx)?;
    let (current, applied) = api
        .store
        .call(move |c| {
            Ok((
                cmx::effective(c, &id, &inst, &name)?,
                cmx::applied(c, &id, &inst, &name)?,
            ))
        })
        .await
        .map_err(storage)?;
    let (config_id, config, source) = match current {
        Some((id, body, source)) => (id, body, Some(source)),
        None => (String::new(), Value::Null, None),
    };
    Ok(Json(json!({
        "configId": config_id,
        "config": config,
        "source": source,
        "applied": applied.map(|a| json!({
            "configId": a.config_id,
            "statusCode": a.status_code,
            "reasonPhrase": a.reason_phrase,
            "appliedAt": rfc3339(a.applied_ms),
        })),
    })))
}

async fn put_config(
    api: Api,
    id: String,
    name: String,
    q: InstanceQuery,
    body: Value,
) -> Result<Json<Value>, ApiError> {
    endpoint_app_version(&api, &id).await?;
    let inst = instance_of(&api, q.instance, ExtensionKind::Cmx)?;
    let (config_id, changed) = api
        .extensions
        .put_config(&id, &inst, &name, body)
        .await
        .map_err(storage)?;
    Ok(Json(json!({"configId": config_id, "changed": changed})))
}

fn config_name(name: &str) -> Result<String, ApiError> {
    if is_valid_config_name(name) {
        Ok(name.to_owned())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid configuration name {name:?}: must match ^[a-zA-Z0-9_-]+$"
        )))
    }
}

pub(super) async fn get_default_config(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(q): Query<InstanceQuery>,
) -> Result<Json<Value>, ApiError> {
    get_config(api, id, String::new(), q).await
}

pub(super) async fn put_default_config(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(q): Query<InstanceQuery>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    put_config(api, id, String::new(), q, body).await
}

pub(super) async fn get_named_config(
    State(api): State<Api>,
    Path((id, name)): Path<(String, String)>,
    Query(q): Query<InstanceQuery>,
) -> Result<Json<Value>, ApiError> {
    let name = config_name(&name)?;
    get_config(api, id, name, q).await
}

pub(super) async fn put_named_config(
    State(api): State<Api>,
    Path((id, name)): Path<(String, String)>,
    Query(q): Query<InstanceQuery>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    let name = config_name(&name)?;
    put_config(api, id, name, q, body).await
}

/// An app version's default configuration (`name` empty: the default one).
async fn get_app_version_config(
    api: Api,
    avn: String,
    name: String,
    q: InstanceQuery,
) -> Result<Json<Value>, ApiError> {
    app_version_known(&api, &avn).await?;
    let inst = instance_of(&api, q.instance, ExtensionKind::Cmx)?;
    let current = api
        .store
        .call(move |c| cmx::default_of(c, &avn, &inst, &name))
        .await
        .map_err(storage)?;
    let (config_id, config) = current.unwrap_or((String::new(), Value::Null));
    Ok(Json(json!({"configId": config_id, "config": config})))
}

async fn put_app_version_config(
    api: Api,
    avn: String,
    name: String,
    q: InstanceQuery,
    body: Value,
) -> Result<Json<Value>, ApiError> {
    app_version_known(&api, &avn).await?;
    let inst = instance_of(&api, q.instance, ExtensionKind::Cmx)?;
    let (config_id, changed) = api
        .extensions
        .put_default_config(&avn, &inst, &name, body)
        .await
        .map_err(storage)?;
    Ok(Json(json!({"configId": config_id, "changed": changed})))
}

async fn app_version_known(api: &Api, avn: &str) -> Result<(), ApiError> {
    let a = avn.to_owned();
    let known = api
        .store
        .call(move |c| crate::epr::app_version_exists(c, &a))
        .await
        .map_err(storage)?;
    if known {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("no app version {avn:?}")))
    }
}

pub(super) async fn get_avn_default_config(
    State(api): State<Api>,
    Path(avn): Path<String>,
    Query(q): Query<InstanceQuery>,
) -> Result<Json<Value>, ApiError> {
    get_app_version_config(api, avn, String::new(), q).await
}

pub(super) async fn put_avn_default_config(
    State(api): State<Api>,
    Path(avn): Path<String>,
    Query(q): Query<InstanceQuery>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    put_app_version_config(api, avn, String::new(), q, body).await
}

pub(super) async fn get_avn_named_config(
    State(api): State<Api>,
    Path((avn, name)): Path<(String, String)>,
    Query(q): Query<InstanceQuery>,
) -> Result<Json<Value>, ApiError> {
    let name = config_name(&name)?;
    get_app_version_config(api, avn, name, q).await
}

pub(super) async fn put_avn_named_config(
    State(api): State<Api>,
    Path((avn, name)): Path<(String, String)>,
    Query(q): Query<InstanceQuery>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    let name = config_name(&name)?;
    put_app_version_config(api, avn, name, q, body).await
}

pub(super) async fn kpc_stats(State(api): State<Api>) -> Json<Value> {
    let mut v = api.stats.to_json();
    if let Some(o) = v.as_object_mut() {
        o.insert("liveSessions".into(), api.extensions.hub.sessions().into());
        o.insert(
            "messagesDropped".into(),
            api.extensions.hub.dropped().into(),
        );
        if let Some(nats) = &api.extensions.remote {
            let mut n = nats.stats_json();
            if let Some(m) = n.as_object_mut() {
                m.insert("registry".into(), api.extensions.registry.stats_json());
            }
            o.insert("nats".into(), n);
        }
    }
    Json(v)
}
