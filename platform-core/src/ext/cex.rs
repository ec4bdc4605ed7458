//! CEX: the command execution extension (Kaa RFC 11/CEP): request parsing (pure) and the
//! command table.
//!
//! A command is created by the REST API with a time to live, pushed to live sessions of
//! its endpoint, handed out by `/command/<type>` while it is pending, and closed by the
//! first result for it on `/result/<type>`. Command IDs are integers (the 0011 schema).
//! Decision: a result for an unknown or already answered command ID is ignored (logged),
//! not an error, so a client resending results after a lost `/status` is not punished.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::kp1::Kp1Error;
use crate::store::StoreError;

/// Is `s` a valid command type (`^[a-zA-Z0-9._-]+$`, one topic level)?
pub fn is_valid_command_type(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A parsed CEX request.
#[derive(Debug, Clone, PartialEq)]
pub enum CexRequest {
    /// `/command/<type>`: pending commands of that type.
    Commands {
        command_type: String,
        /// `None` when the request did not say.
        observe: Option<bool>,
    },
    /// `/result/<type>`: results of commands of that type.
    Results {
        command_type: String,
        results: Vec<CommandResult>,
    },
}

/// One command result from the endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommandResult {
    /// An integer; a string of digits is accepted too (lenient with sloppy clients).
    #[serde(deserialize_with = "lenient_id")]
    pub id: i64,
    /// Required by the schema; `null` is read as 200 (lenient with sloppy clients).
    pub status_code: Option<i64>,
    #[serde(default)]
    pub reason_phrase: Option<String>,
    #[serde(default)]
    pub payload: Option<Value>,
}

fn lenient_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match Value::deserialize(d)? {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| serde::de::Error::custom("id must be an integer")),
        Value::String(s) => s
            .parse()
            .map_err(|_| serde::de::Error::custom("id must be an integer")),
        _ => Err(serde::de::Error::custom("id must be an integer")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandRequest {
    #[serde(default)]
    observe: Option<bool>,
}

/// Parses a request for `resource` (the path after the token).
pub fn parse(resource: &str, payload: &[u8]) -> Result<CexRequest, Kp1Error> {
    let (kind, command_type) = resource
        .split_once('/')
        .ok_or_else(|| Kp1Error::not_found(format!("unknown cex resource {resource:?}")))?;
    if !is_valid_command_type(command_type) {
        return Err(Kp1Error::bad_request(format!(
            "invalid command type {command_type:?}: must match ^[a-zA-Z0-9._-]+$"
        )));
    }
    let command_type = command_type.to_owned();
    match kind {
        "command" => {
            let observe = if payload.iter().all(u8::is_ascii_whitespace) {
                None
            } else {
                let r: CommandRequest = serde_json::from_slice(payload).map_err(|e| {
                    Kp1Error::bad_request(format!(
                        "command request must be {{\"observe\": bool}} or empty: {e}"
                    ))
                })?;
                r.observe
            };
            Ok(CexRequest::Commands {
                command_type,
                observe,
            })
        }
        "result" => {
            let v: Value = serde_json::from_slice(payload)
                .map_err(|e| Kp1Error::bad_request(format!("payload is not valid JSON: {e}")))?;
            let items = match v {
                Value::Array(items) => items,
                obj @ Value::Object(_) => vec![obj],
                _ => {
                    return Err(Kp1Error::bad_request(
                        "results must be an array of {\"id\", \"statusCode\", ...} objects",
                    ))
                }
            };
            let mut results = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                let r: CommandResult = serde_json::from_value(item)
                    .map_err(|e| Kp1Error::bad_request(format!("result [{i}]: {e}")))?;
                results.push(r);
            }
            Ok(CexRequest::Results {
                command_type,
                results,
            })
        }
        _ => Err(Kp1Error::not_found(format!(
            "unknown cex resource {resource:?}"
        ))),
    }
}

/// A command as the REST API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Command {
    pub id: i64,
    pub endpoint_id: String,
    /// The CEX instance (`cex` unless more are configured).
    pub instance: String,
    pub command_type: String,
    pub payload: Value,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub delivered_ms: Option<i64>,
    pub status: CommandStatus,
    pub result: Option<ResultView>,
}

/// Where a command is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CommandStatus {
    /// Not yet handed to the endpoint.
    Pending,
    /// Handed out (pushed or fetched), no result yet.
    Delivered,
    /// A result came back.
    Executed,
    /// The time to live passed without a result.
    Expired,
}

/// The endpoint's result of a command.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultView {
    pub status_code: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_phrase: Option<String>,
    pub payload: Value,
    pub received_ms: i64,
}

/// Creates a command; it lives until `now + ttl_ms`.
pub fn create(
    conn: &Connection,
    endpoint_id: &str,
    instance: &str,
    command_type: &str,
    payload: &Value,
    now: i64,
    ttl_ms: i64,
) -> Result<i64, StoreError> {
    conn.execute(
        "INSERT INTO commands(endpoint_id, instance, type, payload, created_ms, expires_ms)
         VALUES (?1, ?6, ?2, ?3, ?4, ?5)",
        params![
            endpoint_id,
            command_type,
            payload.to_string(),
            now,
            now.saturating_add(ttl_ms),
            instance
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Marks commands as handed to the endpoint (first time only).
pub fn mark_delivered(conn: &Connection, ids: &[i64], now: i64) -> Result<(), StoreError> {
    for id in ids {
        conn.execute(
            "UPDATE commands SET delivered_ms = ?2 WHERE id = ?1 AND delivered_ms IS NULL",
            params![id, now],
        )?;
    }
    Ok(())
}

/// Pending (unanswered, unexpired) commands of a type, oldest first, as `(id, payload)`;
/// they are marked delivered.
pub fn take_pending(
    conn: &Connection,
    endpoint_id: &str,
    instance: &str,
    command_type: &str,
    now: i64,
) -> Result<Vec<(i64, Value)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, payload FROM commands
         WHERE endpoint_id = ?1 AND instance = ?4 AND type = ?2 AND result_ms IS NULL
               AND expires_ms > ?3
         ORDER BY id",
    )?;
    let rows = stmt.query_map(params![endpoint_id, command_type, now, instance], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, payload) = row?;
        out.push((id, serde_json::from_str(&payload).unwrap_or(Value::Null)));
    }
    let ids: Vec<i64> = out.iter().map(|(id, _)| *id).collect();
    mark_delivered(conn, &ids, now)?;
    Ok(out)
}

/// Every pending (unanswered, unexpired) command of an endpoint's instance, oldest first,
/// as `(type, id, payload)`; nothing is marked.
pub fn pending(
    conn: &Connection,
    endpoint_id: &str,
    instance: &str,
    now: i64,
) -> Result<Vec<(String, i64, Value)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT type, id, payload FROM commands
         WHERE endpoint_id = ?1 AND instance = ?2 AND result_ms IS NULL AND expires_ms > ?3
         ORDER BY id",
    )?;
    let rows = stmt.query_map(params![endpoint_id, instance, now], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (ty, id, payload) = row?;
        out.push((
            ty,
            id,
            serde_json::from_str(&payload).unwrap_or(Value::Null),
        ));
    }
    Ok(out)
}

/// The `[{"id", "payload"}]` body of a command response or push.
pub fn commands_payload(cmds: &[(i64, Value)]) -> Vec<u8> {
    let arr: Vec<Value> = cmds
        .iter()
        .map(|(id, p)| serde_json::json!({"id": id, "payload": p}))
        .collect();
    serde_json::to_vec(&arr).unwrap_or_else(|_| b"[]".to_vec())
}

/// Stores results; returns the IDs of the commands they closed (others are ignored).
pub fn store_results(
    conn: &mut Connection,
    endpoint_id: &str,
    instance: &str,
    command_type: &str,
    results: &[CommandResult],
    now: i64,
) -> Result<Vec<i64>, StoreError> {
    let tx = conn.transaction()?;
    let mut closed = Vec::new();
    for r in results {
        let n = tx.execute(
            "UPDATE commands SET result_ms = ?4, result_status = ?5, result_reason = ?6,
                    result_payload = ?7, delivered_ms = coalesce(delivered_ms, ?4)
             WHERE id = ?1 AND endpoint_id = ?2 AND type = ?3 AND instance = ?8
                   AND result_ms IS NULL",
            params![
                r.id,
                endpoint_id,
                command_type,
                now,
                r.status_code.unwrap_or(200),
                r.reason_phrase,
                r.payload.as_ref().map(Value::to_string),
                instance,
            ],
        )?;
        if n == 1 {
            closed.push(r.id);
        } else {
            log::info!(
                "cex: result for command {} ({command_type}) of endpoint {endpoint_id} ignored: unknown or already answered",
                r.id
            );
        }
    }
    tx.commit()?;
    Ok(closed)
}

/// One command of an endpoint, with its status at `now`.
pub fn get(
    conn: &Connection,
    endpoint_id: &str,
    id: i64,
    now: i64,
) -> Result<Option<Command>, StoreError> {
    let row = conn
        .query_row(
            "SELECT type, payload, created_ms, expires_ms, delivered_ms, result_ms, result_status,
                    result_reason, result_payload, instance
             FROM commands WHERE id = ?1 AND endpoint_id = ?2",
            params![id, endpoint_id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, Option<String>>(8)?,
                    r.get::<_, String>(9)?,
                ))
            },
        )
        .optional()?;
    let Some((
        ty,
        payload,
        created,
        expires,
        delivered,
        result_ms,
        status,
        reason,
        rpayload,
        instance,
    )) = row
    else {
        return Ok(None);
    };
    let parse = |s: &str| serde_json::from_str(s).unwrap_or(Value::Null);
    let result = result_ms.map(|received_ms| ResultView {
        status_code: status.unwrap_or(200),
        reason_phrase: reason,
        payload: rpayload.as_deref().map(parse).unwrap_or(Value::Null),
        received_ms,
    });
    let status = if result.is_some() {
        CommandStatus::Executed
    } else if expires <= now {
        CommandStatus::Expired
    } else if delivered.is_some() {
        CommandStatus::Delivered
    } else {
        CommandStatus::Pending
    };
    Ok(Some(Command {
        id,
        endpoint_id: endpoint_id.to_owned(),
        instance,
        command_type: ty,
        payload: parse(&payload),
        created_ms: created,
        expires_ms: expires,
        delivered_ms: delivered,
        status,
        result,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_per_the_0011_schemas() {
        assert_eq!(
            parse("command/reboot", b"").unwrap(),
            CexRequest::Commands {
                command_type: "reboot".into(),
                observe: None
            }
        );
        assert_eq!(
            parse("command/reboot", br#"{"observe":true}"#).unwrap(),
            CexRequest::Commands {
                command_type: "reboot".into(),
                observe: Some(true)
            }
        );
        assert_eq!(
            parse("command/reboot", br#"{"x":1}"#).unwrap_err().status,
            400
        );
        let CexRequest::Results { results, .. } =
            parse("result/reboot", br#"{"id":5,"statusCode":null}"#).unwrap()
        else {
            panic!("not results")
        };
        assert_eq!(
            results[0].status_code, None,
            "a single object and null status are accepted"
        );
        assert_eq!(
            parse("result/reboot", br#"[{"statusCode":200}]"#)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            parse("result/reboot", br#"[{"id":"x","statusCode":200}]"#)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(parse("nothing/reboot", b"").unwrap_err().status, 404);
        assert_eq!(parse("command", b"").unwrap_err().status, 404);
        assert_eq!(parse("command/a+b", b"").unwrap_err().status, 400);
    }

    #[test]
    fn a_command_lives_from_pending_to_executed_or_expired() {
        let mut c = Connection::open_in_memory().unwrap();
        for m in crate::store::MIGRATIONS {
            c.execute_batch(m).unwrap();
        }
        c.execute_batch(
            "INSERT INTO applications VALUES ('a'); INSERT INTO app_versions VALUES ('v','a');
             INSERT INTO endpoints(id, app_version, created_ms) VALUES ('ep','v',0);",
        )
        .unwrap();
        let p = serde_json::json!({"delay": 1});
        let a = create(&c, "ep", "cex", "reboot", &p, 1000, 500).unwrap();
        let b = create(&c, "ep", "cex", "reboot", &p, 1000, 5000).unwrap();
        assert_eq!(
            get(&c, "ep", a, 1000).unwrap().unwrap().status,
            CommandStatus::Pending
        );
        assert_eq!(
            take_pending(&c, "ep", "cex", "reboot", 1200).unwrap().len(),
            2
        );
        assert_eq!(
            get(&c, "ep", a, 1200).unwrap().unwrap().status,
            CommandStatus::Delivered
        );
        assert_eq!(
            get(&c, "ep", a, 1600).unwrap().unwrap().status,
            CommandStatus::Expired
        );
        assert_eq!(
            take_pending(&c, "ep", "cex", "reboot", 1600).unwrap(),
            vec![(b, p.clone())]
        );
        let r = CommandResult {
            id: b,
            status_code: Some(200),
            reason_phrase: None,
            payload: Some(serde_json::json!("done")),
        };
        assert_eq!(
            store_results(
                &mut c,
                "ep",
                "cex",
                "reboot",
                std::slice::from_ref(&r),
                1700
            )
            .unwrap(),
            vec![b]
        );
        assert_eq!(
            store_results(&mut c, "ep", "cex", "reboot", &[r], 1800).unwrap(),
            Vec::<i64>::new()
        );
        let cmd = get(&c, "ep", b, 1900).unwrap().unwrap();
        assert_eq!(cmd.status, CommandStatus::Executed);
        assert_eq!(
            cmd.result.unwrap().received_ms,
            1700,
            "the first result wins"
        );
        assert!(take_pending(&c, "ep", "cex", "reboot", 1900)
            .unwrap()
            .is_empty());
        // Instances keep their commands apart.
        create(&c, "ep", "cex_ota", "reboot", &p, 2000, 5000).unwrap();
        assert!(take_pending(&c, "ep", "cex", "reboot", 2100)
            .unwrap()
            .is_empty());
        assert_eq!(
            take_pending(&c, "ep", "cex_ota", "reboot", 2100)
                .unwrap()
                .len(),
            1
        );
    }
}
