//! Endpoint tokens: look-up on use (with the INACTIVE → ACTIVE step), issue, states, and which
//! tokens a push goes to.

use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};

use super::*;
use crate::store::{now_ms, StoreError};

/// What a token currently allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLookup {
    /// Usable; the endpoint it names (shared: every request of the endpoint carries it).
    Active {
        endpoint_id: Arc<str>,
    },
    Suspended,
    Revoked,
    /// No such token in this app version.
    Unknown,
}

/// Resolves a token used in `avn`'s topics. An inactive token becomes active on first use
/// (docs/protocol.md §6). A token of another app version is `Unknown` here.
pub fn use_token(conn: &Connection, avn: &str, token: &str) -> Result<TokenLookup, StoreError> {
    let row: Option<(String, String)> = conn
        .query_row(
            "SELECT t.endpoint_id, t.state FROM tokens t JOIN endpoints e ON e.id = t.endpoint_id
             WHERE t.token = ?1 AND e.app_version = ?2",
            params![token, avn],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match row {
        None => TokenLookup::Unknown,
        Some((_, s)) if s == "suspended" => TokenLookup::Suspended,
        Some((_, s)) if s == "revoked" => TokenLookup::Revoked,
        Some((endpoint_id, s)) => {
            if s == "inactive" {
                conn.execute(
                    "UPDATE tokens SET state = 'active' WHERE token = ?1 AND state = 'inactive'",
                    [token],
                )?;
            }
            TokenLookup::Active {
                endpoint_id: endpoint_id.into(),
            }
        }
    })
}

/// The tokens a push for `endpoint_id` may use: `(app version, token)` of tokens that are
/// not suspended or revoked.
pub fn push_tokens(
    conn: &Connection,
    endpoint_id: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT e.app_version, t.token FROM tokens t JOIN endpoints e ON e.id = t.endpoint_id
         WHERE t.endpoint_id = ?1 AND t.state IN ('inactive', 'active') ORDER BY t.token",
    )?;
    let rows = stmt.query_map([endpoint_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A fresh random token (URL- and topic-safe).
pub fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The endpoint a token belongs to.
pub fn token_owner(conn: &Connection, token: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT endpoint_id FROM tokens WHERE token = ?1",
            [token],
            |r| r.get(0),
        )
        .optional()?)
}

/// A token as the REST API shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub token: String,
    pub state: crate::ccm::State,
    pub created_ms: i64,
}

/// The tokens of an endpoint.
pub fn tokens(conn: &Connection, endpoint_id: &str) -> Result<Vec<TokenInfo>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT token, state, created_ms FROM tokens WHERE endpoint_id = ?1 ORDER BY created_ms, token",
    )?;
    let rows = stmt.query_map([endpoint_id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (token, state, created_ms) = row?;
        out.push(TokenInfo {
            token,
            state: crate::ccm::State::from_db(&state)?,
            created_ms,
        });
    }
    Ok(out)
}

/// Issues a new token for an existing endpoint (the endpoint ID stays the same).
pub fn issue_token(
    conn: &Connection,
    endpoint_id: &str,
    token: Option<&str>,
) -> Result<String, StoreError> {
    let token = token.map_or_else(new_token, str::to_owned);
    EndpointToken::new(&token).map_err(|e| StoreError::Invalid(e.to_string()))?;
    if token_owner(conn, &token)?.is_some() {
        return Err(StoreError::Conflict("that token is already in use".into()));
    }
    conn.execute(
        "INSERT INTO tokens(token, endpoint_id, state, created_ms) VALUES (?1, ?2, 'inactive', ?3)",
        params![token, endpoint_id, now_ms()],
    )?;
    Ok(token)
}

/// Changes a token's state (rules of [`crate::ccm::State::can_become`]); returns the old one.
pub fn set_token_state(
    conn: &Connection,
    endpoint_id: &str,
    token: &str,
    to: crate::ccm::State,
) -> Result<crate::ccm::State, crate::ccm::StateChangeError> {
    let from: Option<String> = conn
        .query_row(
            "SELECT state FROM tokens WHERE token = ?1 AND endpoint_id = ?2",
            params![token, endpoint_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(StoreError::from)?;
    let from = crate::ccm::State::from_db(&from.ok_or(crate::ccm::StateChangeError::NotFound)?)?;
    if !from.can_become(to) {
        return Err(crate::ccm::StateChangeError::NotAllowed { from, to });
    }
    conn.execute(
        "UPDATE tokens SET state = ?1 WHERE token = ?2",
        params![to.as_db(), token],
    )
    .map_err(StoreError::from)?;
    Ok(from)
}
