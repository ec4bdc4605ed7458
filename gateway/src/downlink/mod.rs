//! Downlink: 11/CEP commands from the platform to field devices.
//!
//! A command push (`kp1/<avn>/cex/<token>/command/<type>/status`, an array of
//! `{"id", "payload"}`) for a device endpoint becomes a Modbus write of one point, e.g.
//! type `write` with payload `{"point": "setpoint", "value": 21.5}`. The bus task runs it
//! ahead of pending polls and reads the point back when configured; the outcome goes to
//! `kp1/<avn>/cex/<token>/result/<type>` as `[{"id", "statusCode", "reasonPhrase"?, "payload"?}]`.
//!
//! Results are remembered per endpoint (the last [`REMEMBERED_RESULTS`] command IDs), so a
//! command delivered twice (a push and the answer to our observe request, or a resend)
//! is written once and answered twice with the same result.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;
use serde_json::Value;

use crate::endpoint::Endpoint;
use crate::source::modbus::{BusHandle, WriteError, WriteOutcome};

/// The only command type field devices understand.
pub const WRITE: &str = "write";
/// How many command results are remembered per endpoint.
pub const REMEMBERED_RESULTS: usize = 64;

/// One command of a push.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub id: String,
    pub payload: Value,
}

/// One entry of a `/result/<type>` payload (schema 0011-result-request).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandResult {
    /// Sent back as a JSON number when it is one (11/CEP IDs are integers), else a string.
    #[serde(serialize_with = "id_as_sent")]
    pub id: String,
    pub status_code: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_phrase: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

fn id_as_sent<S: serde::Serializer>(id: &str, s: S) -> Result<S::Ok, S::Error> {
    match id.parse::<i64>() {
        Ok(n) if n.to_string() == id => s.serialize_i64(n),
        _ => s.serialize_str(id),
    }
}

impl CommandResult {
    pub fn error(id: &str, status: u16, reason: impl Into<String>) -> Self {
        Self {
            id: id.to_owned(),
            status_code: status,
            reason_phrase: Some(reason.into()),
            payload: None,
        }
    }

    /// The 11/CEP result of a write: 200 with the value the point holds, or the status
    /// code that says why not.
    pub fn of_write(id: &str, point: &str, outcome: WriteOutcome) -> Self {
        match outcome {
            Ok(value) => Self {
                id: id.to_owned(),
                status_code: 200,
                reason_phrase: None,
                payload: Some(serde_json::json!({"point": point, "value": value})),
            },
            Err(e) => Self::error(id, write_status(&e), e.to_string()),
        }
    }
}

/// The 11/CEP status code of a failed write.
fn write_status(e: &WriteError) -> u16 {
    match e {
        WriteError::NoDevice { .. } | WriteError::NoPoint { .. } => 404,
        WriteError::NotWritable(_) => 403,
        WriteError::BadValue { .. } => 400,
        WriteError::Refused(_) | WriteError::Transport(_) => 502,
        WriteError::NoAnswer(_) => 504,
        WriteError::BusNotRunning(_) => 503,
    }
}

/// Why a command push or a command's payload cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command push is not JSON: {0}")]
    NotJson(String),
    #[error("command push must be an array of {{id, payload}}")]
    NotAnArray,
    #[error("command without an id: {0}")]
    NoId(String),
    #[error("write needs {{\"point\": \"<name>\", \"value\": <value>}}")]
    NoPoint,
    #[error("write needs a \"value\"")]
    NoValue,
}

/// Parses a command push payload: an array of `{"id": string, "payload": any}`.
/// Entries without a usable `id` cannot be answered and are reported as errors.
pub fn parse_commands(payload: &[u8]) -> Result<Vec<Command>, CommandError> {
    let v: Value =
        serde_json::from_slice(payload).map_err(|e| CommandError::NotJson(e.to_string()))?;
    let items = match v {
        Value::Array(items) => items,
        obj @ Value::Object(_) => vec![obj],
        _ => return Err(CommandError::NotAnArray),
    };
    items
        .into_iter()
        .map(|item| {
            let id = match item.get("id") {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => return Err(CommandError::NoId(item.to_string())),
            };
            Ok(Command {
                id,
                payload: item.get("payload").cloned().unwrap_or(Value::Null),
            })
        })
        .collect()
}

/// Parses a `write` command payload: `{"point": "<name>", "value": <value>}`.
pub fn parse_write(payload: &Value) -> Result<(String, Value), CommandError> {
    let point = payload
        .get("point")
        .and_then(Value::as_str)
        .ok_or(CommandError::NoPoint)?;
    let value = payload.get("value").ok_or(CommandError::NoValue)?;
    Ok((point.to_owned(), value.clone()))
}

/// Where a device endpoint's commands go.
#[derive(Debug, Clone)]
pub struct CommandTarget {
    pub device: String,
    pub bus: BusHandle,
}

/// Where each endpoint that takes commands sends them.
pub type CommandTargets = HashMap<Endpoint, CommandTarget>;

/// The last results of each endpoint's commands (pure), so that a command delivered
/// twice runs once.
#[derive(Debug, Default)]
pub struct CommandLog {
    recent: HashMap<Endpoint, VecDeque<CommandResult>>,
}

impl CommandLog {
    /// The remembered result of command `id`, if it already ran.
    pub fn remembered(&self, ep: &Endpoint, id: &str) -> Option<&CommandResult> {
        self.recent.get(ep)?.iter().find(|r| r.id == id)
    }

    pub fn remember(&mut self, ep: &Endpoint, result: CommandResult) {
        let q = self.recent.entry(ep.clone()).or_default();
        if q.len() == REMEMBERED_RESULTS {
            q.pop_front();
        }
        q.push_back(result);
    }
}

/// Runs one command against its target.
pub async fn execute(target: CommandTarget, kind: &str, cmd: Command) -> CommandResult {
    if kind != WRITE {
        return CommandResult::error(
            &cmd.id,
            404,
            format!("unsupported command type {kind:?} (field devices take \"write\")"),
        );
    }
    match parse_write(&cmd.payload) {
        Ok((point, value)) => {
            let outcome = target.bus.write(&target.device, &point, value).await;
            CommandResult::of_write(&cmd.id, &point, outcome)
        }
        Err(reason) => CommandResult::error(&cmd.id, 400, reason.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn command_pushes_parse_with_string_or_numeric_ids() {
        let cmds =
            parse_commands(br#"[{"id":"c1","payload":{"point":"sp","value":21.5}},{"id":7}]"#)
                .unwrap();
        assert_eq!(cmds[0].id, "c1");
        assert_eq!(
            parse_write(&cmds[0].payload).unwrap(),
            ("sp".into(), json!(21.5))
        );
        assert_eq!((cmds[1].id.as_str(), &cmds[1].payload), ("7", &Value::Null));
        assert!(parse_commands(b"[{\"payload\":1}]").is_err());
        assert!(parse_commands(b"not json").is_err());
        assert!(parse_commands(b"42").is_err());
    }

    #[test]
    fn write_payloads_need_point_and_value() {
        assert!(parse_write(&json!({"value": 1})).is_err());
        assert!(parse_write(&json!({"point": "x"})).is_err());
        assert!(parse_write(&json!({"point": 3, "value": 1})).is_err());
    }

    #[test]
    fn results_serialize_as_11_cep_wants() {
        let r = CommandResult::error("c1", 400, "bad");
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"id": "c1", "statusCode": 400, "reasonPhrase": "bad"})
        );
        let ok = CommandResult {
            id: "c2".into(),
            status_code: 200,
            reason_phrase: None,
            payload: Some(json!({"point": "sp", "value": 1})),
        };
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            json!({"id": "c2", "statusCode": 200, "payload": {"point": "sp", "value": 1}})
        );
        // Integer IDs (11/CEP) go back as integers; look-alikes with leading zeros do not.
        let n = CommandResult::error("42", 404, "no point");
        assert_eq!(serde_json::to_value(&n).unwrap()["id"], json!(42));
        let z = CommandResult::error("042", 404, "no point");
        assert_eq!(serde_json::to_value(&z).unwrap()["id"], json!("042"));
    }

    #[test]
    fn write_outcomes_map_to_11_cep_status_codes() {
        let r = CommandResult::of_write("1", "sp", Ok(json!(21.5)));
        assert_eq!(r.status_code, 200);
        assert_eq!(r.payload, Some(json!({"point": "sp", "value": 21.5})));
        let code = |e| CommandResult::of_write("1", "sp", Err(e)).status_code;
        assert_eq!(code(WriteError::NotWritable("sp".into())), 403);
        assert_eq!(
            code(WriteError::NoPoint {
                device: "d".into(),
                point: "sp".into()
            }),
            404
        );
        assert_eq!(code(WriteError::Refused("exception".into())), 502);
        assert_eq!(
            code(WriteError::NoAnswer(
                crate::source::modbus::BusError::Timeout(std::time::Duration::from_secs(1))
            )),
            504
        );
        assert_eq!(code(WriteError::BusNotRunning("stopped")), 503);
    }

    #[test]
    fn remembered_results_are_bounded() {
        let mut d = CommandLog::default();
        let ep = Endpoint::new(
            platform_core::kp1::AppVersionName::new("v").unwrap(),
            platform_core::kp1::EndpointToken::new("t").unwrap(),
        );
        for i in 0..REMEMBERED_RESULTS + 1 {
            d.remember(&ep, CommandResult::error(&i.to_string(), 500, "x"));
        }
        assert!(d.remembered(&ep, "0").is_none());
        assert!(d.remembered(&ep, &REMEMBERED_RESULTS.to_string()).is_some());
    }
}
