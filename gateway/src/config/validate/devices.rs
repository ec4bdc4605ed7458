//! `[[devices]]`: each device, its source kind, and who owns which bus resource.

use crate::source::modbus::{Bus, BusTransport};
use crate::source::simulated::{SimulatedDevice, SimulatedPoint, Waveform};
use crate::source::{Device, DeviceSource};
use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use platform_core::config::Problems;
use platform_core::epr::is_valid_metadata_key;
use platform_core::kp1::{AppVersionName, EndpointToken};

use super::modbus::modbus;
use super::serial::serial_line;
use crate::config::raw::*;

fn toml_to_json(v: toml::Value) -> serde_json::Value {
    match v {
        toml::Value::String(s) => s.into(),
        toml::Value::Integer(i) => i.into(),
        toml::Value::Float(f) => {
            serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into)
        }
        toml::Value::Boolean(b) => b.into(),
        toml::Value::Datetime(d) => d.to_string().into(),
        toml::Value::Array(a) => a.into_iter().map(toml_to_json).collect(),
        toml::Value::Table(t) => t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect(),
    }
}

pub(super) fn device(
    d: RawDevice,
    buses: &[(String, u16)],
    path: &str,
    e: &mut Problems,
) -> Option<Device> {
    let before = e.len();
    if d.name.trim().is_empty() {
        e.add(format!("{path}.name"), "must not be empty");
    }
    let token = EndpointToken::new(d.token.expose())
        .map_err(|err| e.add(format!("{path}.token"), err.to_string()))
        .ok();
    let app_version = AppVersionName::new(&d.app_version)
        .map_err(|err| e.add(format!("{path}.app_version"), err.to_string()))
        .ok();
    if d.poll_interval_ms < 10 {
        e.add(
            format!("{path}.poll_interval_ms"),
            format!("{} is below the minimum of 10 ms", d.poll_interval_ms),
        );
    }
    let mut metadata = serde_json::Map::new();
    for (k, v) in d.metadata {
        if !is_valid_metadata_key(&k) {
            e.add(
                format!("{path}.metadata.{k}"),
                "key must match ^[a-zA-Z0-9_]+$",
            );
        }
        metadata.insert(k, toml_to_json(v));
    }
    if d.points.is_empty() && d.serial_line.is_none() {
        e.add(
            format!("{path}.points"),
            "a device needs at least one point",
        );
    }
    let mut seen = HashSet::new();
    for (i, p) in d.points.iter().enumerate() {
        if !is_valid_metadata_key(&p.name) {
            e.add(
                format!("{path}.points[{i}].name"),
                format!("{:?} must match ^[a-zA-Z0-9_]+$", p.name),
            );
        } else if p.name == "timestamp" {
            e.add(
                format!("{path}.points[{i}].name"),
                "\"timestamp\" is reserved for the sample time",
            );
        } else if !seen.insert(p.name.clone()) {
            e.add(
                format!("{path}.points[{i}].name"),
                format!("duplicate point name {:?}", p.name),
            );
        }
    }
    if let Some(m) = &d.modbus {
        for (k, v) in [("vendor", &m.vendor), ("model", &m.model)] {
            if let Some(v) = v {
                metadata.entry(k).or_insert_with(|| v.clone().into());
            }
        }
        metadata
            .entry("unit_id")
            .or_insert_with(|| m.unit_id.into());
        metadata
            .entry("bus")
            .or_insert_with(|| m.bus.clone().into());
    }
    let sources = usize::from(d.modbus.is_some())
        + usize::from(d.simulated.is_some())
        + usize::from(d.serial_line.is_some());
    let source = match (d.modbus, d.simulated, d.serial_line) {
        (Some(m), None, None) => modbus(
            m,
            &d.points,
            buses,
            Duration::from_millis(d.poll_interval_ms),
            path,
            e,
        )
        .map(DeviceSource::Modbus),
        (None, Some(s), None) => simulated(s, &d.points, path, e).map(DeviceSource::Simulated),
        (None, None, Some(s)) => serial_line(s, &d.points, path, e).map(DeviceSource::SerialLine),
        _ if sources == 0 => {
            e.add(
                path,
                "needs a source: [devices.modbus], [devices.simulated] or [devices.serial_line]",
            );
            None
        }
        _ => {
            e.add(path, "has more than one source: keep one of [devices.modbus], [devices.simulated], [devices.serial_line]");
            None
        }
    };
    if e.len() != before {
        return None;
    }
    Some(Device {
        name: d.name,
        token: token?,
        app_version: app_version?,
        poll_interval: Duration::from_millis(d.poll_interval_ms),
        metadata,
        source: source?,
    })
}

/// Resource conflicts: a serial port or TCP server has one owner; a unit ID is used by one
/// device per bus.
pub(super) fn check_resources(buses: &[Bus], devices: &[RawDevice], e: &mut Problems) {
    let mut ports: Vec<(String, String)> = Vec::new();
    let mut claim = |port: &str, owner: String, e: &mut Problems| {
        if let Some((_, first)) = ports.iter().find(|(p, _)| p == port) {
            e.add(
                &owner,
                format!("serial port {port:?} is already used by {first}"),
            );
        } else {
            ports.push((port.to_owned(), owner));
        }
    };
    for (i, b) in buses.iter().enumerate() {
        if let BusTransport::Rtu(s) = &b.transport {
            claim(&s.path, format!("modbus.buses[{i}].port"), e);
        }
    }
    let mut units: Vec<(&str, u8)> = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        if let Some(s) = &d.serial_line {
            claim(&s.port, format!("devices[{i}].serial_line.port"), e);
        }
        if let Some(m) = &d.modbus {
            if units.contains(&(m.bus.as_str(), m.unit_id)) {
                e.add(
                    format!("devices[{i}].modbus.unit_id"),
                    format!(
                        "unit {} is already used by another device on bus {:?}",
                        m.unit_id, m.bus
                    ),
                );
            }
            units.push((m.bus.as_str(), m.unit_id));
        }
    }
}

/// Fields of the other source kind set on a point are errors, not silently ignored.
pub(super) fn reject_fields(path: &str, fields: &[(&str, bool)], source: &str, e: &mut Problems) {
    for (name, present) in fields {
        if *present {
            e.add(
                format!("{path}.{name}"),
                format!("not a field of {source} points"),
            );
        }
    }
}

fn simulated(
    s: RawSimulated,
    points: &[RawPoint],
    path: &str,
    e: &mut Problems,
) -> Option<SimulatedDevice> {
    if !s.phase_secs.is_finite() {
        e.add(
            format!("{path}.simulated.phase_secs"),
            "must be a finite number",
        );
    }
    let mut out = Vec::new();
    for (i, p) in points.iter().enumerate() {
        let pp = format!("{path}.points[{i}]");
        reject_fields(
            &pp,
            &[
                ("table", p.table.is_some()),
                ("address", p.address.is_some()),
                ("type", p.data_type.is_some()),
                ("scale", p.scale.is_some()),
                ("offset", p.offset.is_some()),
                ("poll_interval_ms", p.poll_interval_ms.is_some()),
            ],
            "simulated",
            e,
        );
        let waveform = Waveform::from_str(p.waveform.as_deref().unwrap_or("sine"))
            .map_err(|msg| e.add(format!("{pp}.waveform"), msg))
            .ok();
        let period_secs = p.period_secs.unwrap_or(60.0);
        if !period_secs.is_finite() || period_secs <= 0.0 {
            e.add(format!("{pp}.period_secs"), "must be a positive number");
        }
        let amplitude = p.amplitude.unwrap_or(1.0);
        let center = p.center.unwrap_or(0.0);
        if !amplitude.is_finite() || !center.is_finite() {
            e.add(&pp, "amplitude and center must be finite numbers");
        }
        if let Some(waveform) = waveform {
            out.push(SimulatedPoint {
                name: p.name.clone(),
                waveform,
                period_secs,
                amplitude,
                center,
            });
        }
    }
    Some(SimulatedDevice {
        phase_secs: s.phase_secs,
        points: out,
    })
}
