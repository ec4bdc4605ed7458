//! DCX: the data collection extension (Kaa RFC 2/DCP): parses sample batches (pure).
//!
//! `/json` takes a JSON array of samples (a single object is accepted as a batch of one);
//! `/plain/<metric>` takes one number, optionally followed by `%`. Each sample's numeric
//! and boolean top-level fields become points of `auto~<field>`; the sample's `timestamp`
//! field (epoch ms, or an RFC 3339 string) dates them and is not itself a series.

use std::borrow::Cow;

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::dcx_json;
use crate::bus::{Event, SeriesPoint};
use crate::kp1::Kp1Error;
use crate::tsdb::StoredSample;

/// Name of the sample field that carries its timestamp.
pub const TIMESTAMP_FIELD: &str = "timestamp";

/// Parses a `/json` payload into the samples to store (see [`dcx_json`]).
pub fn parse_json(payload: &[u8], now_ms: i64) -> Result<Vec<StoredSample>, Kp1Error> {
    let mut batch = dcx_json::Batch::new(now_ms);
    let shape = dcx_json::read(payload, &mut batch)
        .map_err(|e| Kp1Error::bad_request(format!("payload is not valid JSON: {e}")))?;
    if let dcx_json::Shape::Other(kind) = shape {
        return Err(Kp1Error::bad_request(format!(
            "payload must be a JSON array of samples (or one sample object), got {kind}"
        )));
    }
    match batch.first_error {
        Some((i, e)) => Err(Kp1Error::bad_request(format!("sample {i}: {e}"))),
        None => Ok(batch.stored),
    }
}

/// The events announcing stored samples: one 13/DSTP event with every sample, and one
/// 14/TSTP event per time series (points in arrival order).
pub fn events(
    instance: &str,
    endpoint_id: &str,
    app_version: &str,
    now_ms: i64,
    samples: &[StoredSample],
) -> Vec<Event> {
    let mut series: Vec<(String, Vec<SeriesPoint>)> = Vec::new();
    for p in samples.iter().flat_map(|s| s.points()) {
        let point = SeriesPoint {
            ingestion_ms: now_ms,
            ts_ms: p.ts_ms,
            value: p.value,
        };
        match series.iter_mut().find(|(name, _)| *name == p.series) {
            Some((_, points)) => points.push(point),
            None => series.push((p.series.to_owned(), vec![point])),
        }
    }
    let mut out = Vec::with_capacity(1 + series.len());
    out.push(Event::DataSamples {
        instance: instance.to_owned(),
        endpoint_id: endpoint_id.to_owned(),
        app_version: app_version.to_owned(),
        samples: samples.iter().map(|s| s.raw().to_owned()).collect(),
        timestamp_ms: now_ms,
    });
    out.extend(series.into_iter().map(|(name, points)| Event::TimeSeries {
        endpoint_id: endpoint_id.to_owned(),
        app_version: app_version.to_owned(),
        series: name,
        points,
        timestamp_ms: now_ms,
    }));
    out
}

/// Parses a `/plain/<metric>` payload (`47`, `-1.5`, `47%`).
pub fn parse_plain(metric: &str, payload: &[u8], now_ms: i64) -> Result<StoredSample, Kp1Error> {
    if metric.is_empty() || metric.contains('/') {
        return Err(Kp1Error::bad_request(
            "plain data needs exactly one metric name: /plain/<metric>",
        ));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|_| Kp1Error::bad_request("plain payload is not UTF-8"))?
        .trim();
    let number = text.strip_suffix('%').unwrap_or(text).trim();
    let value: f64 = number
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .ok_or_else(|| Kp1Error::bad_request(format!("plain payload {text:?} is not a number")))?;
    let fields = [(Cow::Borrowed(metric), Value::from(value))]
        .into_iter()
        .collect();
    dcx_json::stored_from_fields(fields, now_ms).map_err(Kp1Error::bad_request)
}

/// The kind of a JSON value, for error messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The fields of a sample that are points (field name, value): numbers as they are,
/// booleans as 1 and 0; not the timestamp.
pub fn field_points<'a>(
    fields: impl Iterator<Item = (&'a str, &'a Value)>,
) -> impl Iterator<Item = (&'a str, f64)> {
    fields.filter_map(|(name, v)| {
        let value = match v {
            _ if name == TIMESTAMP_FIELD => None,
            Value::Number(n) => n.as_f64(),
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            _ => None,
        }?;
        Some((name, value))
    })
}

/// Epoch milliseconds (integer or float) or an RFC 3339 string.
pub fn parse_timestamp(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            })
            .ok_or_else(|| format!("timestamp {n} is out of range")),
        Value::String(s) => OffsetDateTime::parse(s, &Rfc3339)
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
            .map_err(|e| format!("timestamp {s:?} is not RFC 3339: {e}")),
        other => Err(format!(
            "timestamp must be epoch ms or RFC 3339, got {}",
            kind(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pts(s: &StoredSample) -> Vec<(&str, i64, f64)> {
        let mut v: Vec<_> = s.points().map(|p| (p.series, p.ts_ms, p.value)).collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }

    #[test]
    fn numeric_and_boolean_fields_become_auto_series_dated_by_timestamp() {
        let p =
            json!([{"timestamp": 1000, "temp": 21.5, "on": true, "name": "x", "nested": {"a": 1}}]);
        let s = parse_json(p.to_string().as_bytes(), 5).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(
            pts(&s[0]),
            vec![("auto~on", 1000, 1.0), ("auto~temp", 1000, 21.5)]
        );
        let back: Value = serde_json::from_str(s[0].raw()).unwrap();
        assert_eq!(back, p[0]);
    }

    #[test]
    fn samples_without_timestamp_get_the_ingestion_time() {
        let s = parse_json(br#"{"v": 3}"#, 777).unwrap();
        assert_eq!(pts(&s[0]), vec![("auto~v", 777, 3.0)]);
    }

    #[test]
    fn rfc3339_timestamps_are_accepted() {
        let s = parse_json(br#"[{"timestamp": "1970-01-01T00:00:01.5Z", "v": 1}]"#, 0).unwrap();
        assert_eq!(pts(&s[0]), vec![("auto~v", 1500, 1.0)]);
    }

    #[test]
    fn a_bad_timestamp_is_a_bad_request_naming_the_sample() {
        let e = parse_json(br#"[{"v":1},{"timestamp":"yesterday"}]"#, 0).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.reason.starts_with("sample 1:"), "{}", e.reason);
    }

    #[test]
    fn non_json_and_scalar_payloads_are_bad_requests() {
        assert_eq!(parse_json(b"{not json", 0).unwrap_err().status, 400);
        assert_eq!(parse_json(b"47", 0).unwrap_err().status, 400);
        assert_eq!(parse_json(b"", 0).unwrap_err().status, 400);
    }

    #[test]
    fn an_empty_batch_is_valid_and_stores_nothing() {
        assert!(parse_json(b"[]", 0).unwrap().is_empty());
    }

    #[test]
    fn plain_values_with_and_without_percent() {
        assert_eq!(
            pts(&parse_plain("humidity", b"47%", 9).unwrap()),
            vec![("auto~humidity", 9, 47.0)]
        );
        assert_eq!(
            pts(&parse_plain("t", b" -1.5\n", 9).unwrap()),
            vec![("auto~t", 9, -1.5)]
        );
        assert_eq!(parse_plain("t", b"NaN", 0).unwrap_err().status, 400);
        assert_eq!(parse_plain("t", b"abc", 0).unwrap_err().status, 400);
        assert_eq!(parse_plain("a/b", b"1", 0).unwrap_err().status, 400);
    }

    #[test]
    fn events_are_one_dstp_with_every_sample_and_one_tstp_per_series() {
        let s = parse_json(br#"[{"timestamp":1,"t":1,"h":5},{"timestamp":2,"t":2}]"#, 9).unwrap();
        let ev = events("dcx", "ep", "v1", 100, &s);
        assert_eq!(ev.len(), 3);
        let Event::DataSamples {
            instance,
            samples,
            timestamp_ms,
            ..
        } = &ev[0]
        else {
            panic!("first event is not DSTP: {:?}", ev[0]);
        };
        assert_eq!(
            (instance.as_str(), samples.len(), *timestamp_ms),
            ("dcx", 2, 100)
        );
        type Series = (String, Vec<(i64, i64, f64)>);
        let mut series: Vec<Series> = ev[1..]
            .iter()
            .map(|e| match e {
                Event::TimeSeries { series, points, .. } => (
                    series.clone(),
                    points
                        .iter()
                        .map(|p| (p.ingestion_ms, p.ts_ms, p.value))
                        .collect(),
                ),
                other => panic!("not TSTP: {other:?}"),
            })
            .collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            series,
            vec![
                ("auto~h".to_owned(), vec![(100, 1, 5.0)]),
                ("auto~t".to_owned(), vec![(100, 1, 1.0), (100, 2, 2.0)]),
            ]
        );
    }

    #[test]
    fn no_samples_still_give_one_empty_dstp_event() {
        let ev = events("dcx", "ep", "v1", 0, &[]);
        assert!(matches!(&ev[..], [Event::DataSamples { samples, .. }] if samples.is_empty()));
    }
}
