//! 1/KP resource paths and MQTT topics: parse and format (pure, no I/O).
//!
//! Grammar (Kaa RFC 1/KP, docs/protocol.md §1):
//! `kp1/<app_version_name>/<extension_instance>/<endpoint_token>/<resource...>[/<request_id>][/status|/error]`
//!
//! Invariants enforced here, so that every later stage can trust a [`Kp1Topic`]:
//! - app version names and extension instances match `^[a-z0-9_-]+$`;
//! - tokens are non-empty and contain none of `+ # / .`;
//! - the resource path has at least one level and no empty level;
//! - a request ID is an integer in `1..=2^31-1` (docs/protocol.md §1); `0` or a larger
//!   number in the last level is rejected instead of being read as part of the resource.

mod error;

pub use error::{ErrorPayload, Kp1Error};

use std::fmt;

/// Literal first topic level of every 1/KP topic.
pub const PREFIX: &str = "kp1";

/// Largest request ID accepted (Avro `int`, docs/protocol.md §1).
pub const MAX_REQUEST_ID: u32 = i32::MAX as u32;

/// Why a topic is not a valid 1/KP topic. Every variant maps to 400 Bad Request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic {0:?} does not start with \"kp1/\"")]
    NotKp1(String),
    #[error(
        "topic {0:?} has fewer than 5 levels (kp1/<app version>/<extension>/<token>/<resource>)"
    )]
    TooShort(String),
    #[error("topic {0:?} has an empty level")]
    EmptyLevel(String),
    #[error("invalid app version name {0:?}: must match ^[a-z0-9_-]+$")]
    AppVersionName(String),
    #[error("invalid extension instance {0:?}: must match ^[a-z0-9_-]+$")]
    ExtensionInstance(String),
    #[error("invalid endpoint token {0:?}: must be non-empty without '+', '#', '/' or '.'")]
    EndpointToken(String),
    #[error("invalid request id {0:?}: must be an integer in 1..=2147483647")]
    RequestId(String),
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && !s.contains(['+', '#', '/', '.'])
}

/// Application version name, e.g. `demo-v1` (globally unique in a Kaa platform).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppVersionName(String);

impl AppVersionName {
    pub fn new(s: &str) -> Result<Self, TopicError> {
        if is_name(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(TopicError::AppVersionName(s.to_owned()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Application name: the same rule as app version names.
pub fn is_valid_application_name(s: &str) -> bool {
    is_name(s)
}

/// Extension instance name, the routing key (`dcx`, `epmx`, `cmx_ota`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExtensionInstance(String);

impl ExtensionInstance {
    pub fn new(s: &str) -> Result<Self, TopicError> {
        if is_name(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(TopicError::ExtensionInstance(s.to_owned()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Endpoint token: what a device puts in its topics to say which endpoint it is.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointToken(String);

impl EndpointToken {
    pub fn new(s: &str) -> Result<Self, TopicError> {
        if is_token(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(TopicError::EndpointToken(s.to_owned()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EndpointToken {
    // Tokens are credentials of a sort: show only a prefix in logs and Debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: String = self.0.chars().take(4).collect();
        write!(f, "EndpointToken({shown}…)")
    }
}

/// Request ID chosen by the client to match a response to its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u32);

impl RequestId {
    /// The first ID a client uses.
    pub const FIRST: Self = Self(1);

    pub fn new(id: u32) -> Option<Self> {
        (1..=MAX_REQUEST_ID).contains(&id).then_some(Self(id))
    }

    /// The ID after this one; after `2^31-1` comes `1` again.
    #[must_use]
    pub fn next(self) -> Self {
        if self.0 >= MAX_REQUEST_ID {
            Self::FIRST
        } else {
            Self(self.0 + 1)
        }
    }
    pub fn get(self) -> u32 {
        self.0
    }
}

/// Which way a message travels: a request, or the server's success / error answer to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Request,
    Status,
    Error,
}

/// A 1/KP topic's parts borrowed from the topic: the checks of [`Kp1Topic::parse`]
/// without its allocations (every request is routed with one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kp1TopicRef<'a> {
    pub app_version: &'a str,
    pub extension: &'a str,
    pub token: &'a str,
    /// Resource path after the token (e.g. `json`, `get/keys`).
    pub resource: &'a str,
    pub request_id: Option<RequestId>,
    pub direction: Direction,
}

impl<'a> Kp1TopicRef<'a> {
    /// Checks `topic` as [`Kp1Topic::parse`] does, in the same order.
    pub fn parse(topic: &'a str) -> Result<Self, TopicError> {
        if topic.split('/').next() != Some(PREFIX) {
            return Err(TopicError::NotKp1(topic.to_owned()));
        }
        if topic.split('/').any(str::is_empty) {
            return Err(TopicError::EmptyLevel(topic.to_owned()));
        }
        let mut levels = topic.split('/').count();
        // `kept` is the topic without the suffix and request ID levels taken off.
        let mut kept = topic;
        let last_level = |t: &'a str| t.rsplit('/').next().unwrap_or(t);
        let drop_last = |t: &'a str| t.rsplit_once('/').map_or(t, |(head, _)| head);
        // A `status`/`error` suffix needs a resource before it, else it *is* the resource.
        let direction = match last_level(kept) {
            "status" if levels > 5 => Direction::Status,
            "error" if levels > 5 => Direction::Error,
            _ => Direction::Request,
        };
        if direction != Direction::Request {
            kept = drop_last(kept);
            levels -= 1;
        }
        let mut request_id = None;
        let last = last_level(kept);
        if levels > 5 && last.bytes().all(|b| b.is_ascii_digit()) {
            let id = last
                .parse::<u32>()
                .ok()
                .and_then(RequestId::new)
                .ok_or_else(|| TopicError::RequestId(last.to_owned()))?;
            request_id = Some(id);
            kept = drop_last(kept);
            levels -= 1;
        }
        if levels < 5 {
            return Err(TopicError::TooShort(topic.to_owned()));
        }
        let mut parts = kept.splitn(5, '/').skip(1);
        let mut next = || parts.next().unwrap_or_default();
        let (app_version, extension, token, resource) = (next(), next(), next(), next());
        if !is_name(app_version) {
            return Err(TopicError::AppVersionName(app_version.to_owned()));
        }
        if !is_name(extension) {
            return Err(TopicError::ExtensionInstance(extension.to_owned()));
        }
        if !is_token(token) {
            return Err(TopicError::EndpointToken(token.to_owned()));
        }
        Ok(Self {
            app_version,
            extension,
            token,
            resource,
            request_id,
            direction,
        })
    }

    /// The success response topic: the request topic + `/status`.
    pub fn status_topic(&self) -> String {
        self.topic_with("/status")
    }

    /// The error response topic: the request topic + `/error`.
    pub fn error_topic(&self) -> String {
        self.topic_with("/error")
    }

    fn topic_with(&self, suffix: &str) -> String {
        let parts = [self.app_version, self.extension, self.token, self.resource];
        topic_with(parts, self.request_id, suffix)
    }
}

/// `kp1/<app version>/<extension>/<token>/<resource>[/<request ID>]` followed by
/// `suffix`, built in one allocation (every answered request needs one).
fn topic_with(parts: [&str; 4], request_id: Option<RequestId>, suffix: &str) -> String {
    use std::fmt::Write as _;
    // `kp1`, a `/` before each part, and `/` + at most 10 digits for a request ID.
    let len = PREFIX.len() + parts.iter().map(|p| p.len() + 1).sum::<usize>() + 11 + suffix.len();
    let mut t = String::with_capacity(len);
    t.push_str(PREFIX);
    for part in parts {
        t.push('/');
        t.push_str(part);
    }
    if let Some(id) = request_id {
        // Writing to a String cannot fail.
        let _ = write!(t, "/{}", id.0);
    }
    t.push_str(suffix);
    t
}

/// A parsed 1/KP topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Kp1Topic {
    pub app_version: AppVersionName,
    pub extension: ExtensionInstance,
    pub token: EndpointToken,
    /// Resource path after the token, levels joined by `/` (e.g. `json`, `get/keys`).
    pub resource: String,
    pub request_id: Option<RequestId>,
    pub direction: Direction,
}

impl Kp1Topic {
    /// A request topic without request ID.
    pub fn request(
        app_version: AppVersionName,
        extension: ExtensionInstance,
        token: EndpointToken,
        resource: &str,
        request_id: Option<RequestId>,
    ) -> Self {
        Self {
            app_version,
            extension,
            token,
            resource: resource.to_owned(),
            request_id,
            direction: Direction::Request,
        }
    }

    /// Parses an MQTT topic or an HTTP path (without the leading `/`).
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let t = Kp1TopicRef::parse(topic)?;
        Ok(Self {
            app_version: AppVersionName(t.app_version.to_owned()),
            extension: ExtensionInstance(t.extension.to_owned()),
            token: EndpointToken(t.token.to_owned()),
            resource: t.resource.to_owned(),
            request_id: t.request_id,
            direction: t.direction,
        })
    }

    /// The request topic (no `/status` or `/error` suffix).
    pub fn request_topic(&self) -> String {
        self.topic_with("")
    }

    /// The success response topic: request topic + `/status`.
    pub fn status_topic(&self) -> String {
        self.topic_with("/status")
    }

    /// The error response topic: request topic + `/error`.
    pub fn error_topic(&self) -> String {
        self.topic_with("/error")
    }

    fn topic_with(&self, suffix: &str) -> String {
        let parts = [
            self.app_version.0.as_str(),
            &self.extension.0,
            &self.token.0,
            &self.resource,
        ];
        topic_with(parts, self.request_id, suffix)
    }
}

impl fmt::Display for Kp1Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.direction {
            Direction::Request => f.write_str(&self.request_topic()),
            Direction::Status => f.write_str(&self.status_topic()),
            Direction::Error => f.write_str(&self.error_topic()),
        }
    }
}

#[cfg(test)]
mod tests;
