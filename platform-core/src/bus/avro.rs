//! Kaa's Avro records as raw binary datums (no container header), encoded and decoded with
//! the schemas in `platform-core/schemas/` compiled into the binary (pure).
//!
//! Records are built by field name and resolved against their schema by `apache-avro`, so
//! every union gets the branch index its own .avsc declares (`["string","null"]` in
//! ClientData's `endpointId`, `["null","string"]` for `reasonPhrase`, null as branch 7 of a
//! TSTP value); the unit tests pin those bytes.

use std::collections::HashMap;
use std::sync::OnceLock;

use apache_avro::types::Value;
use apache_avro::Schema;
use serde::Serialize;

use super::Event;

/// An Avro encoding or decoding failure (a bug or a peer's malformed record).
#[derive(Debug, thiserror::Error)]
#[error("avro: {0}")]
pub struct AvroError(String);

fn err(e: impl std::fmt::Display) -> AvroError {
    AvroError(e.to_string())
}

struct Schemas {
    client_data: Schema,
    extension_data: Schema,
    connected: Schema,
    disconnected: Schema,
    registered: Schema,
    unregistered: Schema,
    appversion_updated: Schema,
    data_samples: Schema,
    time_series: Schema,
    token_request: Schema,
    token_response: Schema,
}

fn schemas() -> &'static Schemas {
    static S: OnceLock<Schemas> = OnceLock::new();
    S.get_or_init(|| {
        // The files are part of the source tree; a parse failure is caught by the unit tests.
        let p = |text: &str| Schema::parse_str(text).expect("bundled Kaa schema parses");
        Schemas {
            client_data: p(include_str!("../../schemas/0004-client-data.avsc")),
            extension_data: p(include_str!("../../schemas/0004-extension-data.avsc")),
            connected: p(include_str!("../../schemas/0009-ep-connected.avsc")),
            disconnected: p(include_str!("../../schemas/0009-ep-disconnected.avsc")),
            registered: p(include_str!("../../schemas/0009-ep-registered.avsc")),
            unregistered: p(include_str!("../../schemas/0009-ep-unregistered.avsc")),
            appversion_updated: p(include_str!(
                "../../schemas/0009-ep-appversion-updated.avsc"
            )),
            data_samples: p(include_str!(
                "../../schemas/0013-ep-data-samples-event.avsc"
            )),
            time_series: p(include_str!("../../schemas/0014-ep-time-series-event.avsc")),
            token_request: p(include_str!(
                "../../schemas/0016-endpoint-token-validation-request.avsc"
            )),
            token_response: p(include_str!(
                "../../schemas/0016-endpoint-token-validation-response.avsc"
            )),
        }
    })
}

/// Resolves `fields` (by name, any order, unions left bare) against `schema` and encodes.
fn encode(schema: &Schema, fields: Vec<(&str, Value)>) -> Result<Vec<u8>, AvroError> {
    let record = Value::Record(fields.into_iter().map(|(k, v)| (k.into(), v)).collect());
    let resolved = record.resolve(schema).map_err(err)?;
    apache_avro::to_avro_datum(schema, resolved).map_err(err)
}

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

fn opt_s(v: Option<&str>) -> Value {
    v.map_or(Value::Null, s)
}

fn header(correlation_id: &str, timestamp_ms: i64, timeout_ms: i64) -> Vec<(&'static str, Value)> {
    vec![
        ("correlationId", s(correlation_id)),
        ("timestamp", Value::Long(timestamp_ms)),
        ("timeout", Value::Long(timeout_ms)),
    ]
}

fn endpoints_map(endpoints: &[(String, String)]) -> Value {
    Value::Map(
        endpoints
            .iter()
            .map(|(id, avn)| (id.clone(), s(avn)))
            .collect::<HashMap<_, _>>(),
    )
}

/// Encodes an event as its Kaa record. `replica`: this process's replica ID.
pub fn encode_event(ev: &Event, correlation_id: &str, replica: &str) -> Result<Vec<u8>, AvroError> {
    let sc = schemas();
    let origin = ("originatorReplicaId", s(replica));
    match ev {
        Event::Connected {
            endpoints,
            timestamp_ms,
        }
        | Event::Disconnected {
            endpoints,
            timestamp_ms,
        } => {
            let schema = if matches!(ev, Event::Connected { .. }) {
                &sc.connected
            } else {
                &sc.disconnected
            };
            let mut f = header(correlation_id, *timestamp_ms, 0);
            f.extend([("endpoints", endpoints_map(endpoints)), origin]);
            encode(schema, f)
        }
        Event::Registered {
            endpoint_id,
            app_version,
            timestamp_ms,
        }
        | Event::Unregistered {
            endpoint_id,
            app_version,
            timestamp_ms,
        } => {
            let schema = if matches!(ev, Event::Registered { .. }) {
                &sc.registered
            } else {
                &sc.unregistered
            };
            let mut f = header(correlation_id, *timestamp_ms, 0);
            f.extend([
                ("appVersionName", s(app_version)),
                ("endpointId", s(endpoint_id)),
                origin,
            ]);
            encode(schema, f)
        }
        Event::AppVersionUpdated {
            endpoint_id,
            app_version,
            previous_app_version,
            timestamp_ms,
        } => {
            let mut f = header(correlation_id, *timestamp_ms, 0);
            f.extend([
                ("appVersionName", s(app_version)),
                ("previousAppVersionName", s(previous_app_version)),
                ("endpointId", s(endpoint_id)),
                origin,
            ]);
            encode(&sc.appversion_updated, f)
        }
        Event::DataSamples { .. } | Event::TimeSeries { .. } => {
            encode_data_event(ev, correlation_id)
        }
    }
}

/// The data events, one per stored batch or series (the hot path): written straight from
/// borrowed fields by apache-avro's schema-aware serializer, which takes each union's
/// branch from the schema as resolving a value does (`value_reference` in the tests keeps
/// the two in step), without building a value tree first.
fn encode_data_event(ev: &Event, correlation_id: &str) -> Result<Vec<u8>, AvroError> {
    let sc = schemas();
    let mut out = Vec::with_capacity(128);
    match ev {
        Event::DataSamples {
            endpoint_id,
            app_version,
            samples,
            timestamp_ms,
            ..
        } => {
            let record = DataSamplesRecord {
                correlation_id,
                timestamp: *timestamp_ms,
                timeout: 0,
                app_version_name: app_version,
                endpoint_id,
                content_type: "application/json",
                data_samples: samples.iter().map(|x| AvroBytes(x.as_bytes())).collect(),
            };
            apache_avro::write_avro_datum_ref(&sc.data_samples, &record, &mut out).map_err(err)?;
        }
        Event::TimeSeries {
            endpoint_id,
            app_version,
            series,
            points,
            timestamp_ms,
        } => {
            let record = TimeSeriesRecord {
                correlation_id,
                timestamp: *timestamp_ms,
                timeout: 0,
                app_version_name: app_version,
                endpoint_id,
                time_series_name: series,
                data_points: points
                    .iter()
                    .map(|p| DataPointRecord {
                        ingestion_timestamp: p.ingestion_ms,
                        timestamp: p.ts_ms,
                        values: [("value", p.value)],
                    })
                    .collect(),
            };
            apache_avro::write_avro_datum_ref(&sc.time_series, &record, &mut out).map_err(err)?;
        }
        _ => return Err(AvroError("not a data event".into())),
    }
    Ok(out)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DataSamplesRecord<'a> {
    correlation_id: &'a str,
    timestamp: i64,
    timeout: i64,
    app_version_name: &'a str,
    endpoint_id: &'a str,
    content_type: &'a str,
    data_samples: Vec<AvroBytes<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TimeSeriesRecord<'a> {
    correlation_id: &'a str,
    timestamp: i64,
    timeout: i64,
    app_version_name: &'a str,
    endpoint_id: &'a str,
    time_series_name: &'a str,
    data_points: Vec<DataPointRecord>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DataPointRecord {
    ingestion_timestamp: i64,
    timestamp: i64,
    #[serde(serialize_with = "one_value")]
    values: [(&'static str, f64); 1],
}

/// A TSTP `values` map with one entry, its value in the union's `double` branch (the
/// serializer, left to choose, would take `float` and lose precision).
fn one_value<S: serde::Serializer>(v: &[(&str, f64); 1], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(1))?;
    m.serialize_entry(v[0].0, &AvroDouble(v[0].1))?;
    m.end()
}

struct AvroDouble(f64);

impl Serialize for AvroDouble {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match double_branch() {
            Some(i) => s.serialize_newtype_variant("value", i, "double", &self.0),
            None => Err(serde::ser::Error::custom(
                "the TSTP value union has no double",
            )),
        }
    }
}

/// Where `double` is in the union of a TSTP data point's values, read from the schema.
fn double_branch() -> Option<u32> {
    static BRANCH: OnceLock<Option<u32>> = OnceLock::new();
    *BRANCH.get_or_init(|| {
        let Schema::Record(ts) = &schemas().time_series else {
            return None;
        };
        let points = ts.fields.iter().find(|f| f.name == "dataPoints")?;
        let Schema::Array(points) = &points.schema else {
            return None;
        };
        let Schema::Record(point) = points.items.as_ref() else {
            return None;
        };
        let values = point.fields.iter().find(|f| f.name == "values")?;
        let Schema::Map(values) = &values.schema else {
            return None;
        };
        let Schema::Union(u) = values.types.as_ref() else {
            return None;
        };
        let i = u.variants().iter().position(|v| *v == Schema::Double)?;
        u32::try_from(i).ok()
    })
}

/// Avro `bytes` (serde would write a `Vec<u8>` as a sequence).
struct AvroBytes<'a>(&'a [u8]);

impl Serialize for AvroBytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// 4/ESP `ClientData`: a client's request forwarded to an extension service.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientData {
    pub correlation_id: String,
    pub timestamp_ms: i64,
    pub timeout_ms: i64,
    pub app_version: String,
    pub endpoint_id: Option<String>,
    pub resource_path: String,
    pub request_id: Option<i32>,
    pub payload: Vec<u8>,
    pub config_name: Option<String>,
}

/// 4/ESP `ExtensionData`: an extension service's answer or push.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtensionData {
    pub correlation_id: String,
    pub timestamp_ms: i64,
    pub timeout_ms: i64,
    pub app_version: Option<String>,
    pub extension_instance: Option<String>,
    pub endpoint_id: Option<String>,
    pub resource_path: String,
    pub request_id: Option<i32>,
    pub payload: Option<Vec<u8>>,
    pub status_code: i32,
    pub reason_phrase: Option<String>,
}

pub fn encode_client_data(c: &ClientData) -> Result<Vec<u8>, AvroError> {
    let mut f = header(&c.correlation_id, c.timestamp_ms, c.timeout_ms);
    f.extend([
        ("appVersionName", s(&c.app_version)),
        ("endpointId", opt_s(c.endpoint_id.as_deref())),
        ("resourcePath", s(&c.resource_path)),
        ("requestId", c.request_id.map_or(Value::Null, Value::Int)),
        ("payload", Value::Bytes(c.payload.clone())),
        ("configName", opt_s(c.config_name.as_deref())),
    ]);
    encode(&schemas().client_data, f)
}

/// The service side of 4/ESP (an extension written against this crate; the tests).
pub fn encode_extension_data(x: &ExtensionData) -> Result<Vec<u8>, AvroError> {
    let mut f = header(&x.correlation_id, x.timestamp_ms, x.timeout_ms);
    f.extend([
        ("appVersionName", opt_s(x.app_version.as_deref())),
        (
            "extensionInstanceName",
            opt_s(x.extension_instance.as_deref()),
        ),
        ("endpointId", opt_s(x.endpoint_id.as_deref())),
        ("resourcePath", s(&x.resource_path)),
        ("requestId", x.request_id.map_or(Value::Null, Value::Int)),
        (
            "payload",
            x.payload.clone().map_or(Value::Null, Value::Bytes),
        ),
        ("statusCode", Value::Int(x.status_code)),
        ("reasonPhrase", opt_s(x.reason_phrase.as_deref())),
    ]);
    encode(&schemas().extension_data, f)
}

/// Decodes one record datum against `schema` into its fields by name (unions unwrapped).
fn decode(schema: &Schema, bytes: &[u8]) -> Result<HashMap<String, Value>, AvroError> {
    let mut reader = bytes;
    let v = apache_avro::from_avro_datum(schema, &mut reader, None).map_err(err)?;
    if !reader.is_empty() {
        return Err(AvroError(format!(
            "{} bytes left after the record",
            reader.len()
        )));
    }
    let Value::Record(fields) = v else {
        return Err(AvroError("not a record".into()));
    };
    Ok(fields
        .into_iter()
        .map(|(k, v)| match v {
            Value::Union(_, inner) => (k, *inner),
            v => (k, v),
        })
        .collect())
}

struct Fields(HashMap<String, Value>);

impl Fields {
    fn string(&self, k: &str) -> Result<String, AvroError> {
        match self.0.get(k) {
            Some(Value::String(v)) => Ok(v.clone()),
            _ => Err(AvroError(format!("{k}: no string"))),
        }
    }
    fn opt_string(&self, k: &str) -> Option<String> {
        match self.0.get(k) {
            Some(Value::String(v)) => Some(v.clone()),
            _ => None,
        }
    }
    fn long(&self, k: &str) -> Result<i64, AvroError> {
        match self.0.get(k) {
            Some(Value::Long(v)) => Ok(*v),
            _ => Err(AvroError(format!("{k}: no long"))),
        }
    }
    fn opt_int(&self, k: &str) -> Option<i32> {
        match self.0.get(k) {
            Some(Value::Int(v)) => Some(*v),
            _ => None,
        }
    }
    fn opt_bytes(&self, k: &str) -> Option<Vec<u8>> {
        match self.0.get(k) {
            Some(Value::Bytes(v)) => Some(v.clone()),
            _ => None,
        }
    }
}

/// 16/ECAP: asks an authentication provider about an endpoint token of application `app`.
pub fn encode_token_request(
    correlation_id: &str,
    timestamp_ms: i64,
    timeout_ms: i64,
    app: &str,
    token: &str,
) -> Result<Vec<u8>, AvroError> {
    let mut f = header(correlation_id, timestamp_ms, timeout_ms);
    f.extend([("appName", s(app)), ("token", s(token))]);
    encode(&schemas().token_request, f)
}

/// A 16/ECAP token validation answer: the endpoint the token names, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenAnswer {
    pub endpoint_id: Option<String>,
    pub status_code: i32,
    pub reason_phrase: Option<String>,
}

pub fn decode_token_response(bytes: &[u8]) -> Result<TokenAnswer, AvroError> {
    let f = Fields(decode(&schemas().token_response, bytes)?);
    Ok(TokenAnswer {
        endpoint_id: f.opt_string("endpointId"),
        status_code: f
            .opt_int("statusCode")
            .ok_or_else(|| AvroError("statusCode: no int".into()))?,
        reason_phrase: f.opt_string("reasonPhrase"),
    })
}

/// A 9/ELCE connectivity event another replica published: its endpoints (ID, app
/// version, sorted) and its `originatorReplicaId`.
pub fn decode_connectivity(
    bytes: &[u8],
    connected: bool,
) -> Result<(Vec<(String, String)>, String), AvroError> {
    let s = schemas();
    let f = Fields(decode(
        if connected {
            &s.connected
        } else {
            &s.disconnected
        },
        bytes,
    )?);
    let Some(Value::Map(m)) = f.0.get("endpoints") else {
        return Err(AvroError("endpoints: no map".into()));
    };
    let mut endpoints = Vec::with_capacity(m.len());
    for (id, v) in m {
        let Value::String(avn) = v else {
            return Err(AvroError(format!("endpoints[{id}]: no string")));
        };
        endpoints.push((id.clone(), avn.clone()));
    }
    endpoints.sort();
    Ok((endpoints, f.string("originatorReplicaId")?))
}

pub fn decode_extension_data(bytes: &[u8]) -> Result<ExtensionData, AvroError> {
    let f = Fields(decode(&schemas().extension_data, bytes)?);
    Ok(ExtensionData {
        correlation_id: f.string("correlationId")?,
        timestamp_ms: f.long("timestamp")?,
        timeout_ms: f.long("timeout")?,
        app_version: f.opt_string("appVersionName"),
        extension_instance: f.opt_string("extensionInstanceName"),
        endpoint_id: f.opt_string("endpointId"),
        resource_path: f.string("resourcePath")?,
        request_id: f.opt_int("requestId"),
        payload: f.opt_bytes("payload"),
        status_code: f
            .opt_int("statusCode")
            .ok_or_else(|| AvroError("statusCode: no int".into()))?,
        reason_phrase: f.opt_string("reasonPhrase"),
    })
}

/// The service side of 4/ESP (an extension written against this crate; the tests).
pub fn decode_client_data(bytes: &[u8]) -> Result<ClientData, AvroError> {
    let f = Fields(decode(&schemas().client_data, bytes)?);
    Ok(ClientData {
        correlation_id: f.string("correlationId")?,
        timestamp_ms: f.long("timestamp")?,
        timeout_ms: f.long("timeout")?,
        app_version: f.string("appVersionName")?,
        endpoint_id: f.opt_string("endpointId"),
        resource_path: f.string("resourcePath")?,
        request_id: f.opt_int("requestId"),
        payload: f.opt_bytes("payload").unwrap_or_default(),
        config_name: f.opt_string("configName"),
    })
}

#[cfg(test)]
#[path = "avro_tests.rs"]
mod tests;
