//! Endpoints: list, create (with a first token), delete (with everything that belongs to them).

use rusqlite::{params, Connection};
use serde_json::{Map, Value};

use super::*;
use crate::store::StoreError;

/// Is `s` a valid user-chosen endpoint ID (`^[a-zA-Z0-9._~-]+$`)?
pub fn is_valid_endpoint_id(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

/// An endpoint as the REST API lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointInfo {
    pub endpoint_id: String,
    pub app_version: String,
    pub application: String,
    pub created_ms: i64,
}

/// Endpoints, optionally only those of one application or app version.
pub fn endpoints(
    conn: &Connection,
    application: Option<&str>,
    app_version: Option<&str>,
) -> Result<Vec<EndpointInfo>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT e.id, e.app_version, v.application, e.created_ms
         FROM endpoints e JOIN app_versions v ON v.name = e.app_version
         WHERE (?1 IS NULL OR v.application = ?1) AND (?2 IS NULL OR e.app_version = ?2)
         ORDER BY e.created_ms, e.id",
    )?;
    let rows = stmt.query_map(params![application, app_version], |r| {
        Ok(EndpointInfo {
            endpoint_id: r.get(0)?,
            app_version: r.get(1)?,
            application: r.get(2)?,
            created_ms: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Creates an endpoint (ID given or a new UUID) with a first token (given or generated).
/// Returns `(endpoint id, token)`.
pub fn create_endpoint(
    conn: &mut Connection,
    app_version: &str,
    id: Option<&str>,
    token: Option<&str>,
    metadata: &Map<String, Value>,
) -> Result<(String, String), StoreError> {
    let token = token.map_or_else(new_token, str::to_owned);
    let id = id.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    if endpoint_app_version(conn, &id)?.is_some() {
        return Err(StoreError::Conflict(format!(
            "endpoint {id:?} already exists"
        )));
    }
    let spec = EndpointSpec {
        id: Some(id.clone()),
        token: token.clone().into(),
        app_version: app_version.to_owned(),
        metadata: metadata.clone(),
    };
    if token_owner(conn, &token)?.is_some() {
        return Err(StoreError::Conflict("that token is already in use".into()));
    }
    provision(conn, &[], &[spec])?;
    Ok((id, token))
}

/// Deletes an endpoint with its tokens, metadata, data, commands and configurations.
pub fn delete_endpoint(conn: &mut Connection, id: &str) -> Result<bool, StoreError> {
    let tx = conn.transaction()?;
    let deleted = delete_endpoint_in(&tx, id)?;
    tx.commit()?;
    Ok(deleted)
}

/// [`delete_endpoint`] inside the caller's transaction.
pub fn delete_endpoint_in(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    for sql in [
        "DELETE FROM tokens WHERE endpoint_id = ?1",
        "DELETE FROM metadata WHERE endpoint_id = ?1",
        // Raw samples have no per-endpoint index: they go in steps (tsdb::purge_step).
        "INSERT OR REPLACE INTO sample_purges(endpoint_id, next_id) VALUES (?1, 0)",
        "DELETE FROM points WHERE series_id IN (SELECT id FROM series WHERE endpoint_id = ?1)",
        "DELETE FROM points_recent WHERE series_id IN
            (SELECT id FROM series WHERE endpoint_id = ?1)",
        "DELETE FROM point_blocks WHERE series_id IN
            (SELECT id FROM series WHERE endpoint_id = ?1)",
        "DELETE FROM series WHERE endpoint_id = ?1",
        "DELETE FROM commands WHERE endpoint_id = ?1",
        "DELETE FROM configs WHERE endpoint_id = ?1",
        "DELETE FROM configs_applied WHERE endpoint_id = ?1",
    ] {
        conn.execute(sql, [id])?;
    }
    let n = conn.execute("DELETE FROM endpoints WHERE id = ?1", [id])?;
    Ok(n == 1)
}
