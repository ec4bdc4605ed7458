//! 7/CMP payloads as the gateway's own endpoint sees them (pure): a pushed configuration,
//! the `/applied` report, and the verdict on a configuration that was not applied.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A configuration pushed by the platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteConfig {
    pub config_id: String,
    pub config: Value,
}

/// Why a configuration push cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("config push is not JSON: {0}")]
    NotJson(String),
    #[error("config push must be an object {{\"configId\", \"config\"}}")]
    NotAnObject,
    #[error("config push without a configId")]
    NoConfigId,
}

/// Parses a 7/CMP config response/push. `Ok(None)`: no configuration, or unchanged (`{}`).
pub fn parse_push(payload: &[u8]) -> Result<Option<RemoteConfig>, PushError> {
    let v: Value =
        serde_json::from_slice(payload).map_err(|e| PushError::NotJson(e.to_string()))?;
    let Value::Object(obj) = v else {
        return Err(PushError::NotAnObject);
    };
    let config = match obj.get("config") {
        None | Some(Value::Null) => return Ok(None),
        Some(c) => c.clone(),
    };
    let config_id = match obj.get("configId") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(PushError::NoConfigId),
    };
    Ok(Some(RemoteConfig { config_id, config }))
}

/// The `/applied/json` payload.
pub fn applied_payload(config_id: &str, status: u16, reason: Option<&str>) -> String {
    let mut v = serde_json::json!({"configId": config_id, "statusCode": status});
    if let Some(r) = reason {
        v["reasonPhrase"] = Value::String(r.to_owned());
    }
    v.to_string()
}

/// Why a pushed configuration was not applied, as reported on `/applied/json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub config_id: String,
    /// 400: invalid; 500: valid but could not be saved.
    pub status: u16,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pushes_parse_and_empty_means_unchanged() {
        let r = parse_push(br#"{"configId":"c7","config":{"devices":[]}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(r.config_id, "c7");
        assert_eq!(parse_push(b"{}").unwrap(), None);
        assert_eq!(
            parse_push(br#"{"configId":"","config":null}"#).unwrap(),
            None
        );
        assert!(parse_push(br#"{"config":{}}"#).is_err());
        assert!(parse_push(b"[]").is_err());
    }

    #[test]
    fn applied_payloads_follow_7_cmp() {
        assert_eq!(
            applied_payload("c1", 200, None),
            r#"{"configId":"c1","statusCode":200}"#
        );
        let v: Value = serde_json::from_str(&applied_payload("c2", 400, Some("x: bad"))).unwrap();
        assert_eq!(
            v,
            json!({"configId": "c2", "statusCode": 400, "reasonPhrase": "x: bad"})
        );
    }
}
