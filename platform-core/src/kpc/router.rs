//! Routes one 1/KP request to its extension and shapes the `/status` or `/error` reply.
//!
//! Checks run in the order of docs/protocol.md §4: topic syntax (400), payload size (413),
//! the credential's scope (403), app version (404), extension instance (404), token
//! (401/403), then the extension.
//! A session's first request for an endpoint also hands it what waited (configurations,
//! commands: `Extensions::catch_up`).

use crate::bus::avro::TokenAnswer;
use crate::bus::nats::EspError;
use crate::epl::Epl;
use crate::epr::{self, TokenLookup};
use crate::ext::{ExtensionKind, Extensions};
use crate::kp1::{Direction, Kp1Error, Kp1TopicRef};
use crate::sessions::SessionId;
use crate::store::StoreHandle;

use super::token_cache::{Flight, TokenCache};
use std::sync::Arc;

/// A response to publish back to the requesting client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Shared by every connection: where requests go.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    store: StoreHandle,
    extensions: Extensions,
    max_payload_bytes: usize,
    /// Connectivity tracking of endpoints used by MQTT sessions.
    epl: Option<Epl>,
    /// Active tokens recently looked up.
    tokens: Arc<TokenCache>,
}

impl Dispatcher {
    pub fn new(extensions: Extensions, max_payload_bytes: usize) -> Self {
        Self {
            store: extensions.store.clone(),
            extensions,
            max_payload_bytes,
            epl: None,
            tokens: Arc::default(),
        }
    }

    /// The extensions requests go to.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Tracks endpoint connectivity (EPL) for requests that come with a session.
    pub fn with_epl(mut self, epl: Epl) -> Self {
        self.epl = Some(epl);
        self
    }

    /// An MQTT session ended (its endpoints may now be disconnected).
    pub async fn session_closed(&self, session: SessionId) {
        if let Some(epl) = &self.epl {
            epl.session_closed(session).await;
        }
    }

    /// Whether a request on `topic` may be answered while later requests of the same
    /// connection run: data samples (DCX) only — they add rows and read nothing another
    /// request could change; everything else keeps strict order.
    pub fn may_overlap(&self, topic: &str) -> bool {
        Kp1TopicRef::parse(topic).is_ok_and(|t| {
            t.direction == Direction::Request
                && self.extensions.kind_of(t.extension) == Some(ExtensionKind::Dcx)
        })
    }

    /// Handles a request on `path` (an MQTT topic or the HTTP path without its leading
    /// `/`) and returns the success payload or the error (HTTP binding, docs/protocol.md §5).
    pub async fn handle(&self, path: &str, payload: &[u8]) -> Result<Vec<u8>, Kp1Error> {
        let parsed = Kp1TopicRef::parse(path).map_err(|e| Kp1Error::bad_request(e.to_string()))?;
        if parsed.direction != Direction::Request {
            return Err(Kp1Error::bad_request(
                "a /status or /error path is a response, not a request",
            ));
        }
        self.dispatch(&parsed, payload, None).await
    }

    /// Handles a request published on `topic`. Returns the reply to send, if any: errors
    /// always; success when the request carried a request ID, or when it fetched data
    /// that would otherwise never reach the client (docs/protocol.md §1).
    pub async fn route(
        &self,
        topic: &str,
        payload: &[u8],
        session: Option<SessionId>,
    ) -> Option<Reply> {
        let parsed = match Kp1TopicRef::parse(topic) {
            Ok(t) => t,
            Err(e) => {
                return Some(Reply {
                    topic: format!("{topic}/error"),
                    payload: Kp1Error::bad_request(e.to_string()).to_payload(),
                })
            }
        };
        if parsed.direction != Direction::Request {
            // A client publishing a response topic: nothing to answer (answering would loop).
            log::debug!("ignoring client publish on response topic {topic}");
            return None;
        }
        match self.dispatch(&parsed, payload, session).await {
            Ok(body) => {
                let kind = self.extensions.kind_of(parsed.extension);
                let answer = parsed.request_id.is_some()
                    || kind.is_some_and(|k| carries_data(k, parsed.resource, &body));
                answer.then(|| Reply {
                    topic: parsed.status_topic(),
                    payload: body,
                })
            }
            Err(e) => Some(Reply {
                topic: parsed.error_topic(),
                payload: e.to_payload(),
            }),
        }
    }

    /// Whether the app version exists and what its token allows: from the cache while the
    /// registry is unchanged, else from the store (an active answer is then cached).
    async fn look_up(&self, t: &Kp1TopicRef<'_>) -> Result<(bool, TokenLookup), Kp1Error> {
        let (avn, token) = (t.app_version, t.token);
        if let Some(endpoint_id) = self.tokens.get(avn, token, self.store.generation()) {
            return Ok((true, TokenLookup::Active { endpoint_id }));
        }
        let flight = self.tokens.flight(avn, token);
        if matches!(flight, Flight::Follow(_)) {
            flight.wait().await;
            if let Some(endpoint_id) = self.tokens.get(avn, token, self.store.generation()) {
                return Ok((true, TokenLookup::Active { endpoint_id }));
            }
        }
        let (a, k) = (avn.to_owned(), token.to_owned());
        let store = self.store.clone();
        // Outside the registry's generation: the look-up's only change (an inactive
        // token turning active) makes no cached answer wrong, and a site whose tokens
        // all start inactive would otherwise empty the cache once per endpoint.
        let (known, lookup, generation) = self
            .store
            .call_outside_registry(move |c| {
                let generation = store.generation();
                if !epr::app_version_exists(c, &a)? {
                    return Ok((false, TokenLookup::Unknown, generation));
                }
                Ok((true, epr::use_token(c, &a, &k)?, generation))
            })
            .await
            .map_err(|e| {
                log::error!("token lookup failed: {e}");
                Kp1Error::internal()
            })?;
        if known && lookup == TokenLookup::Unknown {
            // Boxed, as every rare path here: kept out of each request's future.
            if let Some(found) = Box::pin(self.ask_provider(avn, token)).await? {
                // Provisioned just now: cached from the next look-up on.
                return Ok((known, found));
            }
        }
        if let TokenLookup::Active { endpoint_id } = &lookup {
            self.tokens.put(avn, token, endpoint_id, generation);
        }
        Ok((known, lookup))
    }

    /// A token this registry does not know, with `[core.nats] ecap_provider`: the 16/ECAP
    /// provider is asked; a token it accepts is recorded here (its endpoint too) and used.
    /// `None`: no provider, or it does not know the token either.
    async fn ask_provider(&self, avn: &str, token: &str) -> Result<Option<TokenLookup>, Kp1Error> {
        let Some(nats) = &self.extensions.remote else {
            return Ok(None);
        };
        let a = avn.to_owned();
        let app = self
            .store
            .call(move |c| epr::application_of(c, &a))
            .await
            .map_err(|e| {
                log::error!("application look-up failed: {e}");
                Kp1Error::internal()
            })?
            .unwrap_or_default();
        let timeout = self.extensions.timeout();
        let Some(answer) = nats.validate_token(&app, token, timeout).await else {
            return Ok(None);
        };
        match answer {
            Err(EspError::Timeout(d)) => Err(Kp1Error::new(
                504,
                format!(
                    "the token provider did not answer within {} ms",
                    d.as_millis()
                ),
            )),
            Err(EspError::Unavailable) => Err(Kp1Error::new(
                503,
                "the token provider is unreachable".to_owned(),
            )),
            Err(EspError::Encode(e)) => {
                log::warn!("ecap: {e}");
                Err(Kp1Error::new(
                    502,
                    "the token provider's answer could not be read".to_owned(),
                ))
            }
            Ok(TokenAnswer {
                status_code: 200,
                endpoint_id: Some(id),
                ..
            }) => {
                let spec = epr::EndpointSpec {
                    id: Some(id.clone()),
                    token: token.to_owned().into(),
                    app_version: avn.to_owned(),
                    metadata: serde_json::Map::new(),
                };
                let (a, k) = (avn.to_owned(), token.to_owned());
                let recorded = self
                    .store
                    .call(move |c| {
                        epr::provision(c, &[], &[spec])?;
                        epr::use_token(c, &a, &k)
                    })
                    .await;
                match recorded {
                    Ok(found) => {
                        log::info!("ecap: token of endpoint {id} accepted by the provider");
                        Ok(Some(found))
                    }
                    Err(e) => {
                        log::warn!("ecap: token of endpoint {id} accepted but not recorded: {e}");
                        Ok(None)
                    }
                }
            }
            Ok(refused) => {
                log::info!(
                    "ecap: the provider does not accept a token of {avn}: {} {}",
                    refused.status_code,
                    refused.reason_phrase.unwrap_or_default()
                );
                Ok(None)
            }
        }
    }

    async fn dispatch(
        &self,
        t: &Kp1TopicRef<'_>,
        payload: &[u8],
        session: Option<SessionId>,
    ) -> Result<Vec<u8>, Kp1Error> {
        if payload.len() > self.max_payload_bytes {
            return Err(Kp1Error::payload_too_large(format!(
                "payload of {} bytes is over the limit of {} bytes",
                payload.len(),
                self.max_payload_bytes
            )));
        }
        if let Some(s) = session {
            if !self.extensions.hub.allows(s, t.app_version, t.token) {
                return Err(Kp1Error::forbidden(
                    "this client's credential is not bound to this application version or endpoint",
                ));
            }
        }
        let (known_avn, lookup) = self.look_up(t).await?;
        if !known_avn {
            return Err(Kp1Error::not_found(format!(
                "unknown application version {:?}",
                t.app_version
            )));
        }
        let kind = self.extensions.kind_of(t.extension).ok_or_else(|| {
            Kp1Error::not_found(format!("unknown extension instance {:?}", t.extension))
        })?;
        let endpoint_id = match lookup {
            TokenLookup::Active { endpoint_id } => {
                if let Some(s) = session {
                    // Pushes for this endpoint now reach this session (docs/protocol.md §2);
                    // on its first use it gets what waited for the endpoint.
                    let first =
                        self.extensions
                            .hub
                            .record_use(s, &endpoint_id, t.app_version, t.token);
                    if let Some(epl) = &self.epl {
                        epl.touch(s, &endpoint_id, t.app_version).await;
                    }
                    if first {
                        Box::pin(self.extensions.catch_up(s, &endpoint_id, t)).await?;
                    }
                }
                endpoint_id
            }
            TokenLookup::Suspended => {
                return Err(Kp1Error::forbidden("endpoint token is suspended"))
            }
            TokenLookup::Revoked => {
                return Err(Kp1Error::unauthorized("endpoint token is revoked"))
            }
            TokenLookup::Unknown => {
                return Err(Kp1Error::unauthorized(
                    "unknown endpoint token for this application version",
                ))
            }
        };
        self.extensions
            .handle(t, kind, endpoint_id, payload, session)
            .await
    }
}

/// Does a success answer carry data the client asked for and has no other way to get?
/// Then it goes out on `<request topic>/status` even without a request ID — the push topic
/// KaaIoT's clients listen on: pending commands, a configuration, an upload token. An
/// empty answer (no command, `{}` or no configuration) is not sent.
fn carries_data(kind: ExtensionKind, resource: &str, body: &[u8]) -> bool {
    match kind {
        ExtensionKind::Cex => resource.starts_with("command/") && body != b"[]",
        ExtensionKind::Cmx => {
            resource.starts_with("config/json")
                && serde_json::from_slice::<serde_json::Value>(body)
                    .is_ok_and(|v| v.get("config").is_some_and(|c| !c.is_null()))
        }
        ExtensionKind::Bcx => true,
        // An external service that answers with data means the client to have it.
        ExtensionKind::External => !body.is_empty(),
        ExtensionKind::Dcx | ExtensionKind::Epmx => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_a_client_fetched_is_answered_even_without_a_request_id() {
        assert!(carries_data(
            ExtensionKind::Cex,
            "command/reboot",
            br#"[{"id":1,"payload":null}]"#
        ));
        assert!(!carries_data(ExtensionKind::Cex, "command/reboot", b"[]"));
        assert!(!carries_data(ExtensionKind::Cex, "result/reboot", b""));
        assert!(carries_data(
            ExtensionKind::Cmx,
            "config/json",
            br#"{"configId":"a","config":{}}"#
        ));
        assert!(!carries_data(ExtensionKind::Cmx, "config/json", b"{}"));
        assert!(!carries_data(
            ExtensionKind::Cmx,
            "config/json",
            br#"{"configId":"","config":null}"#
        ));
        assert!(carries_data(
            ExtensionKind::Bcx,
            "token",
            br#"{"token":"t"}"#
        ));
        assert!(!carries_data(ExtensionKind::Dcx, "json", b""));
    }
}
