//! EPMX: the endpoint metadata extension (Kaa RFC 10/EPMP): request payload parsing (pure).
//!
//! Resources: `/get/keys`, `/get` (`{"keys":[...]}` or empty), `/update` (full replace),
//! `/update/keys` (partial upsert), `/delete/keys` (`["k", ...]`). Shapes follow the
//! 0010 JSON schemas: keys match `^[a-zA-Z0-9_]+$`, update objects have at least one
//! property, delete lists are non-empty with unique keys.

use serde_json::{Map, Value};

use crate::epr::is_valid_metadata_key;
use crate::kp1::Kp1Error;

/// A parsed EPMX request.
#[derive(Debug, Clone, PartialEq)]
pub enum EpmxRequest {
    GetKeys,
    /// `None`: all keys.
    Get(Option<Vec<String>>),
    Update {
        values: Map<String, Value>,
        replace_all: bool,
    },
    DeleteKeys(Vec<String>),
}

/// Parses a request for `resource` (the path after the token).
pub fn parse(resource: &str, payload: &[u8]) -> Result<EpmxRequest, Kp1Error> {
    match resource {
        "get/keys" => Ok(EpmxRequest::GetKeys),
        "get" => parse_get(payload).map(EpmxRequest::Get),
        "update" => parse_update(payload).map(|values| EpmxRequest::Update {
            values,
            replace_all: true,
        }),
        "update/keys" => parse_update(payload).map(|values| EpmxRequest::Update {
            values,
            replace_all: false,
        }),
        "delete/keys" => parse_delete(payload).map(EpmxRequest::DeleteKeys),
        other => Err(Kp1Error::not_found(format!(
            "unknown epmx resource {other:?}"
        ))),
    }
}

fn json(payload: &[u8]) -> Result<Value, Kp1Error> {
    serde_json::from_slice(payload)
        .map_err(|e| Kp1Error::bad_request(format!("payload is not valid JSON: {e}")))
}

fn check_keys<'a>(keys: impl IntoIterator<Item = &'a String>) -> Result<(), Kp1Error> {
    for k in keys {
        if !is_valid_metadata_key(k) {
            return Err(Kp1Error::bad_request(format!(
                "invalid metadata key {k:?}: must match ^[a-zA-Z0-9_]+$"
            )));
        }
    }
    Ok(())
}

fn key_list(v: Value, what: &str) -> Result<Vec<String>, Kp1Error> {
    let Value::Array(items) = v else {
        return Err(Kp1Error::bad_request(format!(
            "{what} must be an array of key names"
        )));
    };
    let mut keys = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(k) = item else {
            return Err(Kp1Error::bad_request(format!(
                "{what} must contain only strings"
            )));
        };
        if keys.contains(&k) {
            return Err(Kp1Error::bad_request(format!(
                "{what} lists key {k:?} twice"
            )));
        }
        keys.push(k);
    }
    check_keys(&keys)?;
    Ok(keys)
}

fn parse_get(payload: &[u8]) -> Result<Option<Vec<String>>, Kp1Error> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let Value::Object(mut obj) = json(payload)? else {
        return Err(Kp1Error::bad_request(
            "get request must be an object {\"keys\": [...]}",
        ));
    };
    if let Some(extra) = obj.keys().find(|k| *k != "keys") {
        return Err(Kp1Error::bad_request(format!(
            "unknown field {extra:?} in get request"
        )));
    }
    match obj.remove("keys") {
        None => Ok(None),
        Some(v) => key_list(v, "keys").map(Some),
    }
}

fn parse_update(payload: &[u8]) -> Result<Map<String, Value>, Kp1Error> {
    let Value::Object(obj) = json(payload)? else {
        return Err(Kp1Error::bad_request(
            "update request must be a JSON object of key/value pairs",
        ));
    };
    if obj.is_empty() {
        return Err(Kp1Error::bad_request(
            "update request must set at least one key",
        ));
    }
    check_keys(obj.keys())?;
    Ok(obj)
}

fn parse_delete(payload: &[u8]) -> Result<Vec<String>, Kp1Error> {
    let keys = key_list(json(payload)?, "delete request")?;
    if keys.is_empty() {
        return Err(Kp1Error::bad_request(
            "delete request must name at least one key",
        ));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_resource_parses() {
        assert_eq!(parse("get/keys", b"").unwrap(), EpmxRequest::GetKeys);
        assert_eq!(parse("get", b"").unwrap(), EpmxRequest::Get(None));
        assert_eq!(parse("get", b"{}").unwrap(), EpmxRequest::Get(None));
        assert_eq!(
            parse("get", br#"{"keys":["a","b_2"]}"#).unwrap(),
            EpmxRequest::Get(Some(vec!["a".into(), "b_2".into()]))
        );
        assert!(matches!(
            parse("update", br#"{"a":1}"#).unwrap(),
            EpmxRequest::Update {
                replace_all: true,
                ..
            }
        ));
        assert!(matches!(
            parse("update/keys", br#"{"a":{"x":[1]}}"#).unwrap(),
            EpmxRequest::Update {
                replace_all: false,
                ..
            }
        ));
        assert_eq!(
            parse("delete/keys", br#"["a"]"#).unwrap(),
            EpmxRequest::DeleteKeys(vec!["a".into()])
        );
    }

    #[test]
    fn schema_violations_are_bad_requests() {
        for (res, body) in [
            ("get", &b"[]"[..]),
            ("get", br#"{"keys":"a"}"#),
            ("get", br#"{"keys":["a"],"x":1}"#),
            ("get", br#"{"keys":["bad-key"]}"#),
            ("update", b"{}"),
            ("update", b"[1]"),
            ("update/keys", br#"{"bad key":1}"#),
            ("update/keys", b"not json"),
            ("delete/keys", b"[]"),
            ("delete/keys", br#"["a","a"]"#),
            ("delete/keys", br#"[1]"#),
            ("delete/keys", br#"{"a":1}"#),
        ] {
            let e = parse(res, body).unwrap_err();
            assert_eq!(e.status, 400, "{res} {:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn an_unknown_resource_is_not_found() {
        assert_eq!(parse("frobnicate", b"").unwrap_err().status, 404);
    }
}
