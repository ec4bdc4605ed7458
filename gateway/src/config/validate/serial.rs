//! Serial port settings and `serial_line` sensors.

use crate::source::serial::{Parity, SerialSettings};
use crate::source::serial_line::SerialLineDevice;
use platform_core::config::Problems;

use crate::config::raw::*;
use crate::source::line_format::LineFormat;

fn parity(s: &str, path: &str, e: &mut Problems) -> Parity {
    match s {
        "none" => Parity::None,
        "even" => Parity::Even,
        "odd" => Parity::Odd,
        other => {
            e.add(path, format!("unknown parity {other:?} (none, even, odd)"));
            Parity::None
        }
    }
}

pub(super) fn serial_settings(
    port: &str,
    baud: u32,
    parity_name: &str,
    data_bits: u8,
    stop_bits: u8,
    path: &str,
    e: &mut Problems,
) -> SerialSettings {
    if port.is_empty() {
        e.add(
            format!("{path}.port"),
            "must be a serial device path, e.g. /dev/ttyUSB0",
        );
    }
    if !(50..=4_000_000).contains(&baud) {
        e.add(
            format!("{path}.baud"),
            format!("{baud} is out of range 50..=4000000"),
        );
    }
    if !(5..=8).contains(&data_bits) {
        e.add(
            format!("{path}.data_bits"),
            format!("{data_bits} is out of range 5..=8"),
        );
    }
    if !(1..=2).contains(&stop_bits) {
        e.add(
            format!("{path}.stop_bits"),
            format!("{stop_bits} must be 1 or 2"),
        );
    }
    SerialSettings {
        path: port.to_owned(),
        baud,
        parity: parity(parity_name, &format!("{path}.parity"), e),
        data_bits,
        stop_bits,
    }
}

pub(super) fn serial_line(
    s: RawSerialLine,
    points: &[RawPoint],
    path: &str,
    e: &mut Problems,
) -> Option<SerialLineDevice> {
    let serial = serial_settings(
        &s.port,
        s.baud,
        &s.parity,
        s.data_bits,
        s.stop_bits,
        &format!("{path}.serial_line"),
        e,
    );
    if !points.is_empty() {
        e.add(
            format!("{path}.points"),
            "serial line devices take their fields from each line; remove the points",
        );
    }
    let sp = format!("{path}.serial_line");
    let format = match s.format.as_str() {
        "json" => LineFormat::Json,
        "key_value" => LineFormat::KeyValue {
            separator: s.separator.clone(),
        },
        "csv" => {
            if s.columns.is_empty() {
                e.add(
                    format!("{sp}.columns"),
                    "csv needs the column names, in order",
                );
            }
            let sep = s.separator.as_deref().unwrap_or(",");
            let mut chars = sep.chars();
            let separator = match (chars.next(), chars.next()) {
                (Some(c), None) => c,
                _ => {
                    e.add(
                        format!("{sp}.separator"),
                        "csv separator must be one character",
                    );
                    ','
                }
            };
            LineFormat::Csv {
                columns: s.columns.clone(),
                separator,
            }
        }
        "nmea" => LineFormat::Nmea,
        "regex" => match s.pattern.as_deref().map(regex::Regex::new) {
            Some(Ok(re)) if re.capture_names().flatten().next().is_some() => LineFormat::Regex(re),
            Some(Ok(_)) => {
                e.add(
                    format!("{sp}.pattern"),
                    "needs at least one named group, e.g. (?P<temp>[0-9.]+)",
                );
                LineFormat::Json
            }
            Some(Err(err)) => {
                e.add(format!("{sp}.pattern"), format!("invalid regex: {err}"));
                LineFormat::Json
            }
            None => {
                e.add(format!("{sp}.pattern"), "regex format needs a pattern");
                LineFormat::Json
            }
        },
        other => {
            e.add(
                format!("{sp}.format"),
                format!("unknown format {other:?} (json, key_value, csv, nmea, regex)"),
            );
            LineFormat::Json
        }
    };
    Some(SerialLineDevice { serial, format })
}
