//! Extension services behind KPC: maps an extension instance to its handler and runs it.
//!
//! Parsing is pure (in `dcx`, `epmx`); this module applies a parsed request to storage on
//! the store thread and shapes the success payload of PROTOCOL.md §3.

pub mod dcx;
pub mod epmx;

use serde_json::Value;

use crate::epr;
use crate::kp1::Kp1Error;
use crate::store::{now_ms, StoreError, StoreHandle};
use crate::tsdb;
use epmx::EpmxRequest;

/// The kinds of extension this core implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionKind {
    Dcx,
    Epmx,
}

impl ExtensionKind {
    /// The kind served by a default instance name (`dcx`, `epmx`).
    pub fn for_default_instance(instance: &str) -> Option<Self> {
        match instance {
            "dcx" => Some(Self::Dcx),
            "epmx" => Some(Self::Epmx),
            _ => None,
        }
    }
}

fn storage(e: StoreError) -> Kp1Error {
    log::error!("extension storage failure: {e}");
    Kp1Error::internal()
}

/// Runs one request; `Ok(payload)` is the success payload (empty for "no content").
pub async fn handle(
    store: &StoreHandle,
    kind: ExtensionKind,
    endpoint_id: String,
    resource: &str,
    payload: &[u8],
) -> Result<Vec<u8>, Kp1Error> {
    match kind {
        ExtensionKind::Dcx => {
            let now = now_ms();
            let samples = if resource == "json" {
                dcx::parse_json(payload, now)?
            } else if let Some(metric) = resource.strip_prefix("plain/") {
                vec![dcx::parse_plain(metric, payload, now)?]
            } else {
                return Err(Kp1Error::not_found(format!(
                    "unknown dcx resource {resource:?}"
                )));
            };
            if !samples.is_empty() {
                store
                    .call(move |c| tsdb::insert_samples(c, &endpoint_id, now, &samples))
                    .await
                    .map_err(storage)?;
            }
            Ok(Vec::new())
        }
        ExtensionKind::Epmx => match epmx::parse(resource, payload)? {
            EpmxRequest::GetKeys => {
                let m = store
                    .call(move |c| epr::metadata(c, &endpoint_id, None))
                    .await
                    .map_err(storage)?;
                let keys: Vec<&String> = m.keys().collect();
                Ok(serde_json::to_vec(&keys).unwrap_or_default())
            }
            EpmxRequest::Get(keys) => {
                let m = store
                    .call(move |c| epr::metadata(c, &endpoint_id, keys.as_deref()))
                    .await
                    .map_err(storage)?;
                Ok(serde_json::to_vec(&Value::Object(m)).unwrap_or_default())
            }
            EpmxRequest::Update {
                values,
                replace_all,
            } => {
                store
                    .call(move |c| epr::write_metadata(c, &endpoint_id, &values, replace_all))
                    .await
                    .map_err(storage)?;
                Ok(Vec::new())
            }
            EpmxRequest::DeleteKeys(keys) => {
                store
                    .call(move |c| epr::delete_metadata_keys(c, &endpoint_id, &keys))
                    .await
                    .map_err(storage)?;
                Ok(Vec::new())
            }
        },
    }
}
