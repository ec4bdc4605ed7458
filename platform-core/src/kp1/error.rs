//! The 1/KP error response payload (RFC 1/KP, schema 0001) and the error type extensions return.

use serde::{Deserialize, Serialize};

/// `{"statusCode": <http code>, "reasonPhrase": "<text>"}` published on `<request topic>/error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ErrorPayload {
    pub status_code: u16,
    pub reason_phrase: String,
}

/// A request that failed, with the HTTP-style status code of docs/protocol.md §4.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {reason}")]
pub struct Kp1Error {
    pub status: u16,
    pub reason: String,
}

impl Kp1Error {
    pub fn new(status: u16, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }
    /// Malformed topic or a payload that breaks the extension's schema.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(400, reason)
    }
    /// Unknown or revoked token.
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Self::new(401, reason)
    }
    /// Suspended token, metadata key not writable.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self::new(403, reason)
    }
    /// Unknown app version or extension instance.
    pub fn not_found(reason: impl Into<String>) -> Self {
        Self::new(404, reason)
    }
    /// Payload over the configured limit.
    pub fn payload_too_large(reason: impl Into<String>) -> Self {
        Self::new(413, reason)
    }
    /// Internal failure (storage). The reason must not leak internals.
    pub fn internal() -> Self {
        Self::new(500, "internal error")
    }

    /// The JSON error payload.
    pub fn to_payload(&self) -> Vec<u8> {
        let p = ErrorPayload {
            status_code: self.status,
            reason_phrase: self.reason.clone(),
        };
        serde_json::to_vec(&p).unwrap_or_else(|_| b"{\"statusCode\":500}".to_vec())
    }
}
