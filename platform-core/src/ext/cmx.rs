//! CMX: the configuration management extension (Kaa RFC 7/CMP): request parsing (pure)
//! and the per-endpoint configuration table (default and named configurations).
//!
//! A configuration's ID is derived from its body (SHA-256, 32 hex digits), so putting the
//! same body twice changes nothing and pushes nothing. Absent configuration: `configId`
//! `""` and `config` null. An endpoint reports the outcome on `/applied`.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::kp1::Kp1Error;
use crate::store::StoreError;

/// Is `s` a valid configuration name (`^[a-zA-Z0-9_-]+$`)?
pub fn is_valid_config_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// A parsed CMX request; `name` is `""` for the default configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum CmxRequest {
    Config {
        name: String,
        config_id: Option<String>,
        /// `None` when the request did not say.
        observe: Option<bool>,
    },
    Applied {
        name: String,
        config_id: String,
        status_code: i64,
        reason_phrase: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConfigRequest {
    #[serde(default)]
    config_id: Option<String>,
    #[serde(default)]
    observe: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AppliedRequest {
    config_id: String,
    #[serde(default)]
    status_code: Option<f64>,
    #[serde(default)]
    reason_phrase: Option<String>,
}

fn name_of(rest: &str) -> Result<String, Kp1Error> {
    match rest.strip_prefix('/') {
        None if rest.is_empty() => Ok(String::new()),
        Some(n) if is_valid_config_name(n) => Ok(n.to_owned()),
        _ => Err(Kp1Error::bad_request(format!(
            "invalid configuration name {:?}: must match ^[a-zA-Z0-9_-]+$",
            rest.trim_start_matches('/')
        ))),
    }
}

fn blank(payload: &[u8]) -> bool {
    payload.iter().all(u8::is_ascii_whitespace)
}

/// Parses a request for `resource` (the path after the token).
pub fn parse(resource: &str, payload: &[u8]) -> Result<CmxRequest, Kp1Error> {
    if let Some(rest) = resource.strip_prefix("config/json") {
        let name = name_of(rest)?;
        let r = if blank(payload) {
            ConfigRequest {
                config_id: None,
                observe: None,
            }
        } else {
            serde_json::from_slice(payload).map_err(|e| {
                Kp1Error::bad_request(format!(
                    "config request must be {{\"configId\"?, \"observe\"?}} or empty: {e}"
                ))
            })?
        };
        return Ok(CmxRequest::Config {
            name,
            config_id: r.config_id,
            observe: r.observe,
        });
    }
    if let Some(rest) = resource.strip_prefix("applied/json") {
        let name = name_of(rest)?;
        let r: AppliedRequest = serde_json::from_slice(payload).map_err(|e| {
            Kp1Error::bad_request(format!(
                "applied request must be {{\"configId\", \"statusCode\"?, \"reasonPhrase\"?}}: {e}"
            ))
        })?;
        let status_code = match r.status_code {
            None => 200,
            Some(f) if f.fract() == 0.0 && (100.0..=599.0).contains(&f) => f as i64,
            Some(f) => {
                return Err(Kp1Error::bad_request(format!(
                    "statusCode {f} is not an HTTP status code"
                )))
            }
        };
        return Ok(CmxRequest::Applied {
            name,
            config_id: r.config_id,
            status_code,
            reason_phrase: r.reason_phrase,
        });
    }
    Err(Kp1Error::not_found(format!(
        "unknown cmx resource {resource:?}"
    )))
}

/// The ID of a configuration body.
pub fn config_id_of(body: &Value) -> String {
    let mut hex = crate::ccm::fingerprint_der(body.to_string().as_bytes());
    hex.truncate(32);
    hex
}

/// Sets a configuration; returns its ID and whether it changed.
pub fn put(
    conn: &Connection,
    endpoint_id: &str,
    instance: &str,
    name: &str,
    body: &Value,
    now: i64,
) -> Result<(String, bool), StoreError> {
    let id = config_id_of(body);
    let current = current(conn, endpoint_id, instance, name)?;
    if current.as_ref().is_some_and(|(cid, _)| *cid == id) {
        return Ok((id, false));
    }
    conn.execute(
        "INSERT INTO configs(endpoint_id, instance, name, config_id, body, updated_ms)
         VALUES (?1, ?6, ?2, ?3, ?4, ?5)
         ON CONFLICT(endpoint_id, instance, name) DO UPDATE SET config_id = excluded.config_id,
             body = excluded.body, updated_ms = excluded.updated_ms",
        params![endpoint_id, name, id, body.to_string(), now, instance],
    )?;
    Ok((id, true))
}

/// Sets an app version's default configuration (what its endpoints get unless they have
/// their own); returns its ID and whether it changed.
pub fn put_default(
    conn: &Connection,
    app_version: &str,
    instance: &str,
    name: &str,
    body: &Value,
    now: i64,
) -> Result<(String, bool), StoreError> {
    let id = config_id_of(body);
    if default_of(conn, app_version, instance, name)?.is_some_and(|(cid, _)| cid == id) {
        return Ok((id, false));
    }
    conn.execute(
        "INSERT INTO app_version_configs(app_version, instance, name, config_id, body, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(app_version, instance, name) DO UPDATE SET config_id = excluded.config_id,
             body = excluded.body, updated_ms = excluded.updated_ms",
        params![app_version, instance, name, id, body.to_string(), now],
    )?;
    Ok((id, true))
}

/// An app version's default configuration `(configId, body)`, if any.
pub fn default_of(
    conn: &Connection,
    app_version: &str,
    instance: &str,
    name: &str,
) -> Result<Option<(String, Value)>, StoreError> {
    let row: Option<(String, String)> = conn
        .query_row(
            "SELECT config_id, body FROM app_version_configs
             WHERE app_version = ?1 AND instance = ?2 AND name = ?3",
            params![app_version, instance, name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(row.map(|(id, b)| (id, serde_json::from_str(&b).unwrap_or(Value::Null))))
}

/// Where an endpoint's configuration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    /// Set for this endpoint: it overrides the app version's default.
    Endpoint,
    /// The app version's default.
    AppVersion,
}

/// The configuration in force for an endpoint: its own if it has one, else its app
/// version's default (docs/protocol.md §3).
pub fn effective(
    conn: &Connection,
    endpoint_id: &str,
    instance: &str,
    name: &str,
) -> Result<Option<(String, Value, Source)>, StoreError> {
    if let Some((id, body)) = current(conn, endpoint_id, instance, name)? {
        return Ok(Some((id, body, Source::Endpoint)));
    }
    let Some(avn) = crate::epr::endpoint_app_version(conn, endpoint_id)? else {
        return Ok(None);
    };
    Ok(default_of(conn, &avn, instance, name)?.map(|(id, body)| (id, body, Source::AppVersion)))
}

/// Names of every configuration in force for an endpoint (its own and its app version's).
pub fn names(
    conn: &Connection,
    endpoint_id: &str,
    instance: &str,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT name FROM configs WHERE endpoint_id = ?1 AND instance = ?2
         UNION
         SELECT c.name FROM app_version_configs c JOIN endpoints e ON e.app_version = c.app_version
         WHERE e.id = ?1 AND c.instance = ?2
         ORDER BY 1",
    )?;
    let names = stmt
        .query_map(params![endpoint_id, instance], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(names)
}

/// Endpoints of `app_version` that follow its default `name` configuration (they have no
/// own one), with the tokens a push reaches them by.
pub fn followers(
    conn: &Connection,
    app_version: &str,
    instance: &str,
    name: &str,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT e.id FROM endpoints e WHERE e.app_version = ?1 AND NOT EXISTS
           (SELECT 1 FROM configs c WHERE c.endpoint_id = e.id AND c.instance = ?2 AND c.name = ?3)
         ORDER BY e.id",
    )?;
    let ids = stmt
        .query_map(params![app_version, instance, name], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(ids)
}

/// The current configuration `(configId, body)` set for the endpoint itself, if any.
pub fn current(
    conn: &Connection,
    endpoint_id: &str,
    instance: &str,
    name: &str,
) -> Result<Option<(String, Value)>, StoreError> {
    let row: Option<(String, String)> = conn
        .query_row(
            "SELECT config_id, body FROM configs WHERE endpoint_id = ?1 AND instance = ?3 AND name = ?2",
            params![endpoint_id, name, instance],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(row.map(|(id, b)| (id, serde_json::from_str(&b).unwrap_or(Value::Null))))
}

/// The response to a config request: the configuration, or `{}` when the endpoint
/// already has it.
pub fn response(current: Option<(String, Value)>, have: Option<&str>) -> Value {
    let (id, config) = current.unwrap_or((String::new(), Value::Null));
    if have == Some(id.as_str()) {
        serde_json::json!({})
    } else {
        serde_json::json!({"configId": id, "config": config})
    }
}

/// Records what the endpoint reported on `/applied`.
#[allow(clippy::too_many_arguments)]
pub fn record_applied(
    conn: &Connection,
    endpoint_id: &str,
    instance: &str,
    name: &str,
    config_id: &str,
    status_code: i64,
    reason: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO configs_applied(endpoint_id, instance, name, config_id, status_code, reason_phrase, applied_ms)
         VALUES (?1, ?7, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(endpoint_id, instance, name) DO UPDATE SET config_id = excluded.config_id,
             status_code = excluded.status_code, reason_phrase = excluded.reason_phrase,
             applied_ms = excluded.applied_ms",
        params![endpoint_id, name, config_id, status_code, reason, now, instance],
    )?;
    Ok(())
}

/// What the endpoint last reported on `/applied`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    pub config_id: String,
    pub status_code: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_phrase: Option<String>,
    pub applied_ms: i64,
}

/// The last `/applied` report, if any.
pub fn applied(
    conn: &Connection,
    endpoint_id: &str,
    instance: &str,
    name: &str,
) -> Result<Option<Applied>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT config_id, status_code, reason_phrase, applied_ms FROM configs_applied
             WHERE endpoint_id = ?1 AND instance = ?3 AND name = ?2",
            params![endpoint_id, name, instance],
            |r| {
                Ok(Applied {
                    config_id: r.get(0)?,
                    status_code: r.get(1)?,
                    reason_phrase: r.get(2)?,
                    applied_ms: r.get(3)?,
                })
            },
        )
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_per_the_0007_schemas() {
        assert_eq!(
            parse("config/json", b"").unwrap(),
            CmxRequest::Config {
                name: String::new(),
                config_id: None,
                observe: None
            }
        );
        assert_eq!(
            parse("config/json/ota", br#"{"configId":"x","observe":true}"#).unwrap(),
            CmxRequest::Config {
                name: "ota".into(),
                config_id: Some("x".into()),
                observe: Some(true)
            }
        );
        assert_eq!(
            parse("applied/json", br#"{"configId":"x","statusCode":null}"#).unwrap(),
            CmxRequest::Applied {
                name: String::new(),
                config_id: "x".into(),
                status_code: 200,
                reason_phrase: None
            }
        );
        assert_eq!(parse("applied/json", br#"{}"#).unwrap_err().status, 400);
        assert_eq!(
            parse("config/json", br#"{"foo":1}"#).unwrap_err().status,
            400
        );
        assert_eq!(parse("config/json/a.b", b"").unwrap_err().status, 400);
        assert_eq!(parse("config/xml", b"").unwrap_err().status, 404);
        assert_eq!(parse("other", b"").unwrap_err().status, 404);
        assert_eq!(
            parse("applied/json", br#"{"configId":"x","statusCode":42}"#)
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn the_response_is_empty_when_the_endpoint_is_up_to_date() {
        let cur = Some(("abc".to_owned(), serde_json::json!({"a": 1})));
        assert_eq!(response(cur.clone(), Some("abc")), serde_json::json!({}));
        assert_eq!(
            response(cur, Some("old")),
            serde_json::json!({"configId": "abc", "config": {"a": 1}})
        );
        assert_eq!(
            response(None, None),
            serde_json::json!({"configId": "", "config": null})
        );
        assert_eq!(response(None, Some("")), serde_json::json!({}));
    }

    #[test]
    fn the_same_body_keeps_its_id() {
        let a = serde_json::json!({"x": [1, 2]});
        assert_eq!(config_id_of(&a), config_id_of(&a.clone()));
        assert_ne!(
            config_id_of(&a),
            config_id_of(&serde_json::json!({"x": [2, 1]}))
        );
        assert_eq!(config_id_of(&a).len(), 32);
    }
}
