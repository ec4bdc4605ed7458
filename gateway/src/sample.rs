//! The one [`Sample`] type and its builder: a reading of one endpoint at one time.
//!
//! Every source (Modbus, serial lines, simulated devices, the gateway's own health
//! report) builds its samples here, so they all have one shape — the JSON object a
//! 2/DCP data sample is (Kaa RFC 2/DCP; docs/protocol.md §3):
//!
//! ```json
//! {"timestamp": 1700000000000, "<point>": <value>, ..., "bad": {"<point>": "<why>"}}
//! ```
//!
//! - `timestamp` is the gateway's time of the reading in Unix milliseconds; a field the
//!   device itself calls `timestamp` is kept as `sensor_timestamp`.
//! - `bad` (only when not empty) names the points whose reading failed and why (a Modbus
//!   exception, a decoding error): a bad reading is data, not an error.
//!
//! The buffer stores samples as this JSON text and knows nothing of 2/DCP batches; the
//! upstream session puts them into request payloads.

use serde_json::{Map, Value};

use crate::endpoint::Endpoint;

/// Key of the gateway's time of a reading in a sample object.
pub const TIMESTAMP: &str = "timestamp";
/// Where a device's own `timestamp` field goes.
pub const SENSOR_TIMESTAMP: &str = "sensor_timestamp";
/// Key of the object naming failed readings.
pub const BAD: &str = "bad";

/// A sample ready for the buffer: its endpoint, time and JSON object text.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub endpoint: Endpoint,
    pub ts_ms: i64,
    /// The sample as a JSON object (see the module header).
    pub payload: String,
}

impl Sample {
    /// Starts a sample of `endpoint` taken at `ts_ms` (Unix milliseconds).
    pub fn builder(endpoint: Endpoint, ts_ms: i64) -> SampleBuilder {
        SampleBuilder {
            endpoint,
            ts_ms,
            values: Map::new(),
            bad: Map::new(),
        }
    }
}

/// Collects the values of one sample.
#[derive(Debug, Clone)]
pub struct SampleBuilder {
    endpoint: Endpoint,
    ts_ms: i64,
    values: Map<String, Value>,
    bad: Map<String, Value>,
}

impl SampleBuilder {
    /// Adds one value; a field named `timestamp` is kept as `sensor_timestamp`, a field
    /// named `bad` as `bad_value` (both names are the sample's own).
    pub fn value(mut self, name: impl Into<String>, value: Value) -> Self {
        self.insert(name.into(), value);
        self
    }

    /// Adds every field of `values` (see [`SampleBuilder::value`]).
    pub fn values(mut self, values: Map<String, Value>) -> Self {
        for (k, v) in values {
            self.insert(k, v);
        }
        self
    }

    /// Marks a point whose reading failed, with the reason.
    pub fn bad(mut self, name: impl Into<String>, reason: impl Into<String>) -> Self {
        self.bad.insert(name.into(), Value::String(reason.into()));
        self
    }

    /// True when the sample would carry nothing but its timestamp.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.bad.is_empty()
    }

    pub fn build(self) -> Sample {
        let mut obj = Map::with_capacity(self.values.len() + 2);
        obj.insert(TIMESTAMP.into(), self.ts_ms.into());
        obj.extend(self.values);
        if !self.bad.is_empty() {
            obj.insert(BAD.into(), Value::Object(self.bad));
        }
        Sample {
            endpoint: self.endpoint,
            ts_ms: self.ts_ms,
            payload: Value::Object(obj).to_string(),
        }
    }

    fn insert(&mut self, name: String, value: Value) {
        let name = match name.as_str() {
            TIMESTAMP => SENSOR_TIMESTAMP.to_owned(),
            BAD => "bad_value".to_owned(),
            _ => name,
        };
        self.values.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use platform_core::kp1::{AppVersionName, EndpointToken};
    use serde_json::json;

    fn ep() -> Endpoint {
        Endpoint::new(
            AppVersionName::new("app-v1").unwrap(),
            EndpointToken::new("t1").unwrap(),
        )
    }

    #[test]
    fn a_sample_carries_its_timestamp_values_and_bad_readings() {
        let s = Sample::builder(ep(), 1_000)
            .value("temperature", json!(21.5))
            .bad("humidity", "exception 2 (illegal data address)")
            .build();
        let v: Value = serde_json::from_str(&s.payload).unwrap();
        assert_eq!(
            v,
            json!({"timestamp": 1000, "temperature": 21.5,
                   "bad": {"humidity": "exception 2 (illegal data address)"}})
        );
        assert_eq!(s.ts_ms, 1_000);
    }

    #[test]
    fn a_device_timestamp_does_not_overwrite_the_gateways() {
        let mut m = Map::new();
        m.insert("timestamp".into(), json!("12:00:01"));
        m.insert("lat".into(), json!(52.1));
        let s = Sample::builder(ep(), 5).values(m).build();
        let v: Value = serde_json::from_str(&s.payload).unwrap();
        assert_eq!(
            v,
            json!({"timestamp": 5, "sensor_timestamp": "12:00:01", "lat": 52.1})
        );
    }

    #[test]
    fn a_sample_without_values_is_empty_and_without_bad_has_no_bad_object() {
        let b = Sample::builder(ep(), 1);
        assert!(b.is_empty());
        let s = b.value("x", json!(1)).build();
        assert!(!s.payload.contains("bad"));
    }
}
