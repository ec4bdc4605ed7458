//! Byte-level checks of the Avro records against the bundled Kaa schemas.

use super::*;
use crate::bus::SeriesPoint;

fn client_data(config_name: Option<&str>) -> ClientData {
    ClientData {
        correlation_id: "c".into(),
        timestamp_ms: 1,
        timeout_ms: 0,
        app_version: "v".into(),
        endpoint_id: Some("e".into()),
        resource_path: "json".into(),
        request_id: Some(5),
        payload: b"x".to_vec(),
        config_name: config_name.map(str::to_owned),
    }
}

#[test]
fn client_data_uses_each_fields_own_union_order() {
    let bytes = encode_client_data(&client_data(None)).unwrap();
    #[rustfmt::skip]
    let want: Vec<u8> = vec![
        2, b'c',            // correlationId
        2,                  // timestamp 1
        0,                  // timeout 0
        2, b'v',            // appVersionName
        0, 2, b'e',         // endpointId: branch 0 of ["string","null"]
        8, b'j', b's', b'o', b'n',
        0, 10,              // requestId: branch 0 of ["int","null"], 5
        2, b'x',            // payload
        0,                  // configName: branch 0 of ["null","string"] = null
    ];
    assert_eq!(bytes, want);
    let named = encode_client_data(&client_data(Some("n"))).unwrap();
    assert_eq!(
        &named[named.len() - 3..],
        &[2, 2, b'n'],
        "branch 1 = string"
    );
    assert_eq!(decode_client_data(&named).unwrap(), client_data(Some("n")));
}

#[test]
fn extension_data_round_trips_and_puts_null_first_for_reason_phrase() {
    let x = ExtensionData {
        correlation_id: "c".into(),
        timestamp_ms: 1,
        timeout_ms: 0,
        app_version: None,
        extension_instance: Some("ext".into()),
        endpoint_id: None,
        resource_path: "json".into(),
        request_id: None,
        payload: None,
        status_code: 200,
        reason_phrase: Some("OK".into()),
    };
    let bytes = encode_extension_data(&x).unwrap();
    // ... appVersionName null = branch 1 of ["string","null"]
    assert_eq!(bytes[4], 2);
    // ... statusCode 200 (zigzag 400), reasonPhrase branch 1 of ["null","string"], "OK"
    assert_eq!(&bytes[bytes.len() - 6..], &[0x90, 0x03, 2, 4, b'O', b'K']);
    assert_eq!(decode_extension_data(&bytes).unwrap(), x);
}

#[test]
fn a_truncated_or_padded_record_is_an_error_not_a_panic() {
    let bytes = encode_client_data(&client_data(None)).unwrap();
    // apache-avro reads a union that has a null branch at the very end of the input as
    // null, so dropping only the final configName byte (null) still decodes, to the same
    // record; every other cut is an error.
    let last = bytes.len() - 1;
    for n in 0..last {
        assert!(decode_client_data(&bytes[..n]).is_err(), "cut at {n}");
    }
    assert_eq!(
        decode_client_data(&bytes[..last]).unwrap(),
        client_data(None)
    );
    let mut padded = bytes.clone();
    padded.push(0);
    assert!(decode_client_data(&padded).is_err());
    assert!(decode_extension_data(&[0xff; 40]).is_err());
}

fn decode_value(schema: &Schema, bytes: &[u8]) -> Value {
    apache_avro::from_avro_datum(schema, &mut &bytes[..], None).unwrap()
}

#[test]
fn events_encode_as_their_kaa_records() {
    let ev = Event::Disconnected {
        endpoints: vec![("a".into(), "v1".into()), ("b".into(), "v2".into())],
        timestamp_ms: 42,
    };
    let bytes = encode_event(&ev, "corr", "r1").unwrap();
    let Value::Record(f) = decode_value(&schemas().disconnected, &bytes) else {
        panic!("not a record");
    };
    assert_eq!(f[0], ("correlationId".into(), Value::String("corr".into())));
    assert_eq!(f[1], ("timestamp".into(), Value::Long(42)));
    let Value::Map(m) = &f[3].1 else {
        panic!("endpoints is not a map")
    };
    assert_eq!(m.len(), 2);
    assert_eq!(m["b"], Value::String("v2".into()));
    assert_eq!(
        f[4],
        ("originatorReplicaId".into(), Value::String("r1".into()))
    );

    let ts = Event::TimeSeries {
        endpoint_id: "e".into(),
        app_version: "v".into(),
        series: "temp".into(),
        points: vec![SeriesPoint {
            ingestion_ms: 7,
            ts_ms: 5,
            value: 21.5,
        }],
        timestamp_ms: 7,
    };
    let Value::Record(f) = decode_value(
        &schemas().time_series,
        &encode_event(&ts, "c", "r").unwrap(),
    ) else {
        panic!("not a record");
    };
    let Value::Array(points) = &f[6].1 else {
        panic!("no points")
    };
    let Value::Record(p) = &points[0] else {
        panic!("point")
    };
    assert_eq!(
        p[0],
        ("ingestionTimestamp".into(), Value::Long(7)),
        "first field"
    );
    let Value::Map(values) = &p[2].1 else {
        panic!("values")
    };
    assert_eq!(
        values["value"],
        Value::Union(4, Box::new(Value::Double(21.5))),
        "double is branch 4 of the value union"
    );

    for ev in [
        Event::Registered {
            endpoint_id: "e".into(),
            app_version: "v".into(),
            timestamp_ms: 1,
        },
        Event::Unregistered {
            endpoint_id: "e".into(),
            app_version: "v".into(),
            timestamp_ms: 1,
        },
        Event::AppVersionUpdated {
            endpoint_id: "e".into(),
            app_version: "v2".into(),
            previous_app_version: "v".into(),
            timestamp_ms: 1,
        },
        Event::DataSamples {
            instance: "dcx".into(),
            endpoint_id: "e".into(),
            app_version: "v".into(),
            samples: vec!["{\"t\":1}".into()],
            timestamp_ms: 1,
        },
        Event::Connected {
            endpoints: vec![],
            timestamp_ms: 1,
        },
    ] {
        assert!(encode_event(&ev, "c", "r").is_ok(), "{ev:?}");
    }
}

#[test]
fn connectivity_events_decode_back() {
    let ev = Event::Disconnected {
        endpoints: vec![("b".into(), "v2".into()), ("a".into(), "v1".into())],
        timestamp_ms: 42,
    };
    let bytes = encode_event(&ev, "corr", "r1").unwrap();
    assert_eq!(
        decode_connectivity(&bytes, false).unwrap(),
        (
            vec![("a".into(), "v1".into()), ("b".into(), "v2".into())],
            "r1".to_string()
        )
    );
    assert!(decode_connectivity(&bytes[..bytes.len() - 1], false).is_err());
}

/// The data events as a value tree resolved against the schema: what the serializer path
/// must match byte for byte.
fn value_reference(ev: &Event, correlation_id: &str) -> Vec<u8> {
    let sc = schemas();
    let head = |ts: i64| {
        vec![
            (
                "correlationId".to_string(),
                Value::String(correlation_id.into()),
            ),
            ("timestamp".to_string(), Value::Long(ts)),
            ("timeout".to_string(), Value::Long(0)),
        ]
    };
    let (schema, mut f, tail) = match ev {
        Event::DataSamples {
            endpoint_id,
            app_version,
            samples,
            timestamp_ms,
            ..
        } => (
            &sc.data_samples,
            head(*timestamp_ms),
            vec![
                (
                    "appVersionName".to_string(),
                    Value::String(app_version.clone()),
                ),
                ("endpointId".to_string(), Value::String(endpoint_id.clone())),
                (
                    "contentType".to_string(),
                    Value::String("application/json".into()),
                ),
                (
                    "dataSamples".to_string(),
                    Value::Array(
                        samples
                            .iter()
                            .map(|x| Value::Bytes(x.as_bytes().to_vec()))
                            .collect(),
                    ),
                ),
            ],
        ),
        Event::TimeSeries {
            endpoint_id,
            app_version,
            series,
            points,
            timestamp_ms,
        } => (
            &sc.time_series,
            head(*timestamp_ms),
            vec![
                (
                    "appVersionName".to_string(),
                    Value::String(app_version.clone()),
                ),
                ("endpointId".to_string(), Value::String(endpoint_id.clone())),
                ("timeSeriesName".to_string(), Value::String(series.clone())),
                (
                    "dataPoints".to_string(),
                    Value::Array(
                        points
                            .iter()
                            .map(|p| {
                                Value::Record(vec![
                                    ("ingestionTimestamp".into(), Value::Long(p.ingestion_ms)),
                                    ("timestamp".into(), Value::Long(p.ts_ms)),
                                    (
                                        "values".into(),
                                        Value::Map(HashMap::from([(
                                            "value".to_string(),
                                            Value::Double(p.value),
                                        )])),
                                    ),
                                ])
                            })
                            .collect(),
                    ),
                ),
            ],
        ),
        _ => unreachable!("data events only"),
    };
    f.extend(tail);
    let resolved = Value::Record(f).resolve(schema).unwrap();
    apache_avro::to_avro_datum(schema, resolved).unwrap()
}

#[test]
fn data_events_match_the_value_tree_encoding_byte_for_byte() {
    let point = |i: i64, v: f64| SeriesPoint {
        ingestion_ms: 1_700_000_000_000 + i,
        ts_ms: -i,
        value: v,
    };
    let cases = [
        Event::DataSamples {
            instance: "dcx".into(),
            endpoint_id: "ep-1".into(),
            app_version: "v1".into(),
            samples: vec![r#"{"t":21.5}"#.into(), "{}".into(), "é".repeat(100)],
            timestamp_ms: 42,
        },
        Event::DataSamples {
            instance: "dcx".into(),
            endpoint_id: String::new(),
            app_version: "v1".into(),
            samples: vec![],
            timestamp_ms: i64::MAX,
        },
        Event::TimeSeries {
            endpoint_id: "ep-1".into(),
            app_version: "v1".into(),
            series: "auto~temp".into(),
            points: vec![
                point(0, 21.5),
                point(1, -0.0),
                point(2, f64::MAX),
                point(3, 1e-300),
            ],
            timestamp_ms: 7,
        },
        Event::TimeSeries {
            endpoint_id: "ep-1".into(),
            app_version: "v1".into(),
            series: "a.b c".into(),
            points: vec![],
            timestamp_ms: 0,
        },
    ];
    for ev in &cases {
        let ours = encode_event(ev, "8c7f0a3e-0000-4000-8000-000000000001", "r").unwrap();
        assert_eq!(
            ours,
            value_reference(ev, "8c7f0a3e-0000-4000-8000-000000000001"),
            "{ev:?}"
        );
    }
}

#[test]
fn ecap_token_request_and_response() {
    let bytes = encode_token_request("c", 1, 2000, "demo", "tok").unwrap();
    #[rustfmt::skip]
    let want: Vec<u8> = vec![
        2, b'c', 2, 0xa0, 0x1f,       // correlationId, timestamp 1, timeout 2000
        8, b'd', b'e', b'm', b'o',    // appName
        6, b't', b'o', b'k',          // token
    ];
    assert_eq!(bytes, want);
    // tokenId null (branch 1 of ["string","null"]), endpointId "e" (branch 0),
    // statusCode 200, reasonPhrase null (branch 0 of ["null","string"])
    let answer = [2, b'c', 2, 0, 2, 0, 2, b'e', 0x90, 0x03, 0];
    assert_eq!(
        decode_token_response(&answer).unwrap(),
        TokenAnswer {
            endpoint_id: Some("e".into()),
            status_code: 200,
            reason_phrase: None,
        }
    );
    assert!(decode_token_response(&answer[..answer.len() - 3]).is_err());
}
