//! Parsers for sensors that print text lines (pure): JSON lines, `key=value` pairs, CSV
//! with a column map, NMEA 0183 (GGA and RMC, checksum checked), and a regex with named
//! groups. A line yields the fields of one data sample, is ignored (a well-formed NMEA
//! sentence of a type we do not map), or is bad (with the reason; counted by the caller).

use regex::Regex;
use serde_json::{Map, Value};

/// A line format with its settings.
#[derive(Debug, Clone)]
pub enum LineFormat {
    Json,
    /// Pairs separated by `separator` (default: whitespace), key and value by `=`.
    KeyValue {
        separator: Option<String>,
    },
    Csv {
        columns: Vec<String>,
        separator: char,
    },
    Nmea,
    Regex(Regex),
}

/// Why a line was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("not a JSON object: {0}")]
    Json(String),
    #[error("pair {0:?} has no '='")]
    NoEquals(String),
    #[error("expected {expected} columns, got {got}")]
    Columns { expected: usize, got: usize },
    #[error("NMEA checksum mismatch: line says {stated}, computed {computed:02X}")]
    Checksum { stated: String, computed: u8 },
    #[error("malformed NMEA sentence: {0}")]
    Nmea(String),
    #[error("line does not match the pattern")]
    NoMatch,
    #[error("empty line")]
    Empty,
    #[error("line longer than {0} bytes")]
    TooLong(usize),
    #[error("line is not UTF-8")]
    NotUtf8,
}

/// A field value: a number when it reads as one, `true`/`false`, else text.
pub fn scalar(s: &str) -> Value {
    let t = s.trim();
    if let Ok(i) = t.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(f) = t.parse::<f64>() {
        if f.is_finite() {
            return Value::from(f);
        }
    }
    match t {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(t.to_owned()),
    }
}

/// Parses one line (without its line ending). `Ok(None)`: a valid line we do not map.
pub fn parse_line(
    format: &LineFormat,
    line: &str,
) -> Result<Option<Map<String, Value>>, LineError> {
    let line = line.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    if line.is_empty() {
        return Err(LineError::Empty);
    }
    match format {
        LineFormat::Json => match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(m)) => Ok(Some(m)),
            Ok(other) => Err(LineError::Json(format!("got {other}"))),
            Err(e) => Err(LineError::Json(e.to_string())),
        },
        LineFormat::KeyValue { separator } => {
            let pairs: Vec<&str> = match separator {
                Some(sep) => line
                    .split(sep.as_str())
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .collect(),
                None => line.split_whitespace().collect(),
            };
            let mut m = Map::new();
            for pair in pairs {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| LineError::NoEquals(pair.to_owned()))?;
                m.insert(k.trim().to_owned(), scalar(v));
            }
            Ok(Some(m))
        }
        LineFormat::Csv { columns, separator } => {
            let cells: Vec<&str> = line.split(*separator).collect();
            if cells.len() != columns.len() {
                return Err(LineError::Columns {
                    expected: columns.len(),
                    got: cells.len(),
                });
            }
            Ok(Some(
                columns
                    .iter()
                    .zip(cells)
                    .filter(|(name, _)| !name.is_empty())
                    .map(|(name, cell)| (name.clone(), scalar(cell)))
                    .collect(),
            ))
        }
        LineFormat::Nmea => nmea(line),
        LineFormat::Regex(re) => {
            let caps = re.captures(line).ok_or(LineError::NoMatch)?;
            Ok(Some(
                re.capture_names()
                    .flatten()
                    .filter_map(|name| {
                        caps.name(name)
                            .map(|m| (name.to_owned(), scalar(m.as_str())))
                    })
                    .collect(),
            ))
        }
    }
}

/// NMEA 0183 §5.3: `$<talker><type>,<fields>*<hh>`, hh = XOR of the bytes between `$` and `*`.
fn nmea(line: &str) -> Result<Option<Map<String, Value>>, LineError> {
    let body = line
        .strip_prefix('$')
        .ok_or_else(|| LineError::Nmea("does not start with '$'".into()))?;
    let (data, stated) = body
        .rsplit_once('*')
        .ok_or_else(|| LineError::Nmea("no '*' checksum".into()))?;
    let computed = data.bytes().fold(0u8, |acc, b| acc ^ b);
    if u8::from_str_radix(stated, 16).ok() != Some(computed) || stated.len() != 2 {
        return Err(LineError::Checksum {
            stated: stated.to_owned(),
            computed,
        });
    }
    let fields: Vec<&str> = data.split(',').collect();
    let kind = fields[0];
    let sentence = kind
        .get(2..)
        .filter(|_| kind.len() == 5 && kind.is_ascii())
        .ok_or_else(|| LineError::Nmea(format!("bad sentence id {kind:?}")))?;
    let field = |i: usize| fields.get(i).copied().unwrap_or("");
    let mut m = Map::new();
    match sentence {
        "GGA" => {
            if fields.len() < 10 {
                return Err(LineError::Nmea(format!(
                    "GGA has {} fields, needs 10",
                    fields.len()
                )));
            }
            let quality = field(6)
                .parse::<u8>()
                .map_err(|_| LineError::Nmea("GGA fix quality".into()))?;
            m.insert("fix_quality".into(), quality.into());
            if quality > 0 {
                m.insert("latitude".into(), coord(field(2), field(3), 2)?.into());
                m.insert("longitude".into(), coord(field(4), field(5), 3)?.into());
                put_number(&mut m, "satellites", field(7))?;
                put_number(&mut m, "hdop", field(8))?;
                put_number(&mut m, "altitude", field(9))?;
            }
        }
        "RMC" => {
            if fields.len() < 9 {
                return Err(LineError::Nmea(format!(
                    "RMC has {} fields, needs 9",
                    fields.len()
                )));
            }
            let valid = match field(2) {
                "A" => true,
                "V" => false,
                other => return Err(LineError::Nmea(format!("RMC status {other:?}"))),
            };
            m.insert("valid".into(), valid.into());
            if valid {
                m.insert("latitude".into(), coord(field(3), field(4), 2)?.into());
                m.insert("longitude".into(), coord(field(5), field(6), 3)?.into());
                put_number(&mut m, "speed_knots", field(7))?;
                put_number(&mut m, "course", field(8))?;
            }
        }
        _ => return Ok(None),
    }
    Ok(Some(m))
}

fn put_number(m: &mut Map<String, Value>, name: &str, s: &str) -> Result<(), LineError> {
    if s.is_empty() {
        return Ok(());
    }
    let v: f64 = s
        .parse()
        .map_err(|_| LineError::Nmea(format!("{name} {s:?} is not a number")))?;
    m.insert(name.into(), v.into());
    Ok(())
}

/// `ddmm.mmmm` / `dddmm.mmmm` + hemisphere → signed decimal degrees (6 decimals).
fn coord(value: &str, hemi: &str, deg_digits: usize) -> Result<f64, LineError> {
    let bad = || LineError::Nmea(format!("coordinate {value:?} {hemi:?}"));
    if value.len() < deg_digits + 2 || !value.is_char_boundary(deg_digits) {
        return Err(bad());
    }
    let deg: f64 = value[..deg_digits].parse().map_err(|_| bad())?;
    let min: f64 = value[deg_digits..].parse().map_err(|_| bad())?;
    if !(0.0..60.0).contains(&min) {
        return Err(bad());
    }
    let v = deg + min / 60.0;
    let v = match hemi {
        "N" | "E" => v,
        "S" | "W" => -v,
        _ => return Err(bad()),
    };
    Ok((v * 1e6).round() / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(f: &LineFormat, line: &str) -> Value {
        Value::Object(parse_line(f, line).unwrap().unwrap())
    }

    #[test]
    fn json_lines() {
        assert_eq!(
            ok(&LineFormat::Json, r#"{"t": 21.5, "ok": true}"#),
            json!({"t": 21.5, "ok": true})
        );
        assert!(matches!(
            parse_line(&LineFormat::Json, "[1]"),
            Err(LineError::Json(_))
        ));
        assert!(matches!(
            parse_line(&LineFormat::Json, "{oops"),
            Err(LineError::Json(_))
        ));
    }

    #[test]
    fn key_value_pairs() {
        let f = LineFormat::KeyValue { separator: None };
        assert_eq!(
            ok(&f, "temp=21.5  hum=40 state=ok\r"),
            json!({"temp": 21.5, "hum": 40, "state": "ok"})
        );
        assert_eq!(
            parse_line(&f, "temp 21"),
            Err(LineError::NoEquals("temp".into()))
        );
        let f = LineFormat::KeyValue {
            separator: Some(";".into()),
        };
        assert_eq!(ok(&f, "a=1; b = 2"), json!({"a": 1, "b": 2}));
    }

    #[test]
    fn csv_with_a_column_map_and_skipped_columns() {
        let f = LineFormat::Csv {
            columns: vec!["id".into(), "".into(), "temp".into()],
            separator: ',',
        };
        assert_eq!(ok(&f, "7,junk,21.5"), json!({"id": 7, "temp": 21.5}));
        assert_eq!(
            parse_line(&f, "7,21.5"),
            Err(LineError::Columns {
                expected: 3,
                got: 2
            })
        );
    }

    #[test]
    fn nmea_gga_and_rmc_with_checksums() {
        let gga = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47";
        assert_eq!(
            ok(&LineFormat::Nmea, gga),
            json!({"fix_quality": 1, "latitude": 48.1173, "longitude": 11.516667, "satellites": 8.0, "hdop": 0.9, "altitude": 545.4})
        );
        let rmc = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A";
        assert_eq!(
            ok(&LineFormat::Nmea, rmc),
            json!({"valid": true, "latitude": 48.1173, "longitude": 11.516667, "speed_knots": 22.4, "course": 84.4})
        );
        let south_west = "$GNGGA,000000,3351.000,S,15112.000,W,2,05,1.0,10.0,M,,M,,*";
        let sum = south_west[1..south_west.len() - 1]
            .bytes()
            .fold(0u8, |a, b| a ^ b);
        let line = format!("{south_west}{sum:02X}");
        let v = ok(&LineFormat::Nmea, &line);
        assert_eq!(
            (v["latitude"].clone(), v["longitude"].clone()),
            (json!(-33.85), json!(-151.2))
        );
    }

    #[test]
    fn a_bad_nmea_checksum_is_a_bad_line() {
        let bad = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*48";
        assert!(matches!(
            parse_line(&LineFormat::Nmea, bad),
            Err(LineError::Checksum { computed: 0x47, .. })
        ));
        assert!(parse_line(&LineFormat::Nmea, "GPGGA,1*00").is_err());
        assert!(parse_line(&LineFormat::Nmea, "$GPGGA,1").is_err());
    }

    #[test]
    fn other_nmea_sentences_are_ignored_and_no_fix_has_no_position() {
        let gsv = "$GPGSV,1,1,00*79";
        assert_eq!(parse_line(&LineFormat::Nmea, gsv), Ok(None));
        let nofix = "$GPGGA,000000,,,,,0,00,,,M,,M,,*";
        let sum = nofix[1..nofix.len() - 1].bytes().fold(0u8, |a, b| a ^ b);
        assert_eq!(
            ok(&LineFormat::Nmea, &format!("{nofix}{sum:02X}")),
            json!({"fix_quality": 0})
        );
    }

    #[test]
    fn regex_named_groups() {
        let f = LineFormat::Regex(Regex::new(r"T:(?P<temp>-?\d+\.\d) H:(?P<hum>\d+)%").unwrap());
        assert_eq!(ok(&f, "T:-3.5 H:80%"), json!({"temp": -3.5, "hum": 80}));
        assert_eq!(parse_line(&f, "garbage"), Err(LineError::NoMatch));
    }

    #[test]
    fn empty_lines_are_bad_and_nothing_panics_on_junk() {
        for f in [
            LineFormat::Json,
            LineFormat::Nmea,
            LineFormat::KeyValue { separator: None },
        ] {
            assert_eq!(parse_line(&f, " \r"), Err(LineError::Empty));
            for junk in [
                "$*",
                "$GPGGA*",
                "$ÄÖÜÄÖ,1*00",
                "\u{0}\u{1}",
                "$GPRMC,1,A,4,N,5,E,,,*00",
            ] {
                let _ = parse_line(&f, junk);
            }
        }
    }
}
