//! Raw → runtime configuration: every check, every error collected with its path.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use platform_core::config::MqttListener;
use platform_core::epr::is_valid_metadata_key;
use platform_core::kp1::{AppVersionName, EndpointToken};
use platform_core::CoreConfig;

use super::raw::*;
use super::*;

/// Collects `path: message` lines.
#[derive(Default)]
struct Errors(Vec<String>);

impl Errors {
    fn add(&mut self, path: impl AsRef<str>, msg: impl AsRef<str>) {
        self.0.push(format!("{}: {}", path.as_ref(), msg.as_ref()));
    }
}

fn resolve(state_dir: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        p.to_owned()
    } else {
        state_dir.join(p)
    }
}

pub(super) fn validate(raw: RawConfig) -> Result<Config, ConfigErrors> {
    let mut e = Errors::default();
    let state_dir = PathBuf::from(&raw.gateway.state_dir);
    if raw.gateway.state_dir.is_empty() {
        e.add("gateway.state_dir", "must not be empty");
    }
    let log_level = log::LevelFilter::from_str(&raw.gateway.log_level).unwrap_or_else(|_| {
        e.add(
            "gateway.log_level",
            format!(
                "unknown level {:?} (off, error, warn, info, debug, trace)",
                raw.gateway.log_level
            ),
        );
        log::LevelFilter::Info
    });

    let upstream = raw.upstream.map(|u| upstream(u, &mut e));
    if upstream.is_none() && raw.core.is_none() {
        e.add(
            "upstream",
            "missing: configure [upstream] (a Kaa server) or [core] (the embedded core)",
        );
    }

    let synchronous = match raw.buffer.synchronous.as_str() {
        "full" => Synchronous::Full,
        "normal" => Synchronous::Normal,
        other => {
            e.add(
                "buffer.synchronous",
                format!("unknown value {other:?} (full, normal)"),
            );
            Synchronous::Full
        }
    };
    if raw.buffer.file.is_empty() {
        e.add("buffer.file", "must not be empty");
    }
    let buffer = Buffer {
        path: resolve(&state_dir, &raw.buffer.file),
        synchronous,
    };

    let core = raw.core.map(|c| core(c, &state_dir, &mut e));

    let mut devices = Vec::new();
    let mut names = HashSet::new();
    let mut tokens = HashSet::new();
    for (i, d) in raw.devices.into_iter().enumerate() {
        let path = format!("devices[{i}]");
        if !names.insert(d.name.clone()) {
            e.add(
                format!("{path}.name"),
                format!("duplicate device name {:?}", d.name),
            );
        }
        if !tokens.insert((d.app_version.clone(), d.token.clone())) {
            e.add(
                format!("{path}.token"),
                "another device already uses this token in this app version",
            );
        }
        if let Some(dev) = device(d, &path, &mut e) {
            devices.push(dev);
        }
    }

    // Standalone site: the devices' app versions must exist in the embedded core.
    if let (None, Some(core)) = (&upstream, &core) {
        let known: BTreeSet<&str> = core
            .applications
            .iter()
            .flat_map(|a| a.versions.iter().map(String::as_str))
            .collect();
        for (i, d) in devices.iter().enumerate() {
            if !known.contains(d.app_version.as_str()) {
                e.add(
                    format!("devices[{i}].app_version"),
                    format!(
                        "{:?} is not a version of any [[core.applications]] (the embedded core is the upstream)",
                        d.app_version.as_str()
                    ),
                );
            }
        }
    }

    if e.0.is_empty() {
        Ok(Config {
            state_dir,
            log_level,
            upstream,
            buffer,
            core,
            devices,
        })
    } else {
        Err(ConfigErrors(e.0))
    }
}

fn upstream(u: RawUpstream, e: &mut Errors) -> Upstream {
    if u.host.trim().is_empty() {
        e.add("upstream.host", "must not be empty");
    }
    if u.port == 0 {
        e.add("upstream.port", "must be 1..=65535");
    }
    if u.client_id.is_empty() || u.client_id.len() > 65535 {
        e.add("upstream.client_id", "must be 1..=65535 bytes");
    }
    if u.password.is_some() && u.username.is_none() {
        e.add(
            "upstream.password",
            "set without upstream.username (MQTT 3.1.1 §3.1.2.9)",
        );
    }
    if !(5..=65535).contains(&u.keepalive_secs) {
        e.add(
            "upstream.keepalive_secs",
            format!("{} is out of range 5..=65535", u.keepalive_secs),
        );
    }
    if u.response_timeout_secs == 0 {
        e.add("upstream.response_timeout_secs", "must be at least 1");
    }
    if !(1..=10_000).contains(&u.batch_max_samples) {
        e.add(
            "upstream.batch_max_samples",
            format!("{} is out of range 1..=10000", u.batch_max_samples),
        );
    }
    if u.reconnect_max_secs == 0 {
        e.add("upstream.reconnect_max_secs", "must be at least 1");
    }
    Upstream {
        host: u.host,
        port: u.port,
        client_id: u.client_id,
        username: u.username,
        password: u.password,
        keepalive: Duration::from_secs(u.keepalive_secs),
        response_timeout: Duration::from_secs(u.response_timeout_secs),
        batch_max_samples: u.batch_max_samples,
        reconnect_max: Duration::from_secs(u.reconnect_max_secs),
    }
}

fn core(c: RawCore, state_dir: &Path, e: &mut Errors) -> CoreConfig {
    let listen = SocketAddr::from_str(&c.mqtt.listen).unwrap_or_else(|_| {
        e.add(
            "core.mqtt.listen",
            format!("{:?} is not an IP:port address", c.mqtt.listen),
        );
        SocketAddr::from(([127, 0, 0, 1], 0))
    });
    if c.mqtt.max_packet_size < 1024 {
        e.add("core.mqtt.max_packet_size", "must be at least 1024 bytes");
    }
    if c.mqtt.max_connections == 0 {
        e.add("core.mqtt.max_connections", "must be at least 1");
    }
    if c.mqtt.connect_timeout_secs == 0 {
        e.add("core.mqtt.connect_timeout_secs", "must be at least 1");
    }
    if c.max_payload_bytes == 0 {
        e.add("core.max_payload_bytes", "must be at least 1");
    }
    let mut versions = HashSet::new();
    for (i, a) in c.applications.iter().enumerate() {
        if !platform_core::kp1::is_valid_application_name(&a.name) {
            e.add(
                format!("core.applications[{i}].name"),
                format!("{:?} must match ^[a-z0-9_-]+$", a.name),
            );
        }
        for (j, v) in a.versions.iter().enumerate() {
            if AppVersionName::new(v).is_err() {
                e.add(
                    format!("core.applications[{i}].versions[{j}]"),
                    format!("{v:?} must match ^[a-z0-9_-]+$"),
                );
            }
            if !versions.insert(v.clone()) {
                e.add(
                    format!("core.applications[{i}].versions[{j}]"),
                    format!("app version {v:?} is listed twice"),
                );
            }
        }
    }
    for (i, ep) in c.endpoints.iter().enumerate() {
        if EndpointToken::new(&ep.token).is_err() {
            e.add(
                format!("core.endpoints[{i}].token"),
                "must be non-empty without '+', '#', '/' or '.'",
            );
        }
        if !versions.contains(&ep.app_version) {
            e.add(
                format!("core.endpoints[{i}].app_version"),
                format!(
                    "{:?} is not listed in [[core.applications]]",
                    ep.app_version
                ),
            );
        }
        if let Some(id) = &ep.id {
            if !platform_core::epr::is_valid_endpoint_id(id) {
                e.add(
                    format!("core.endpoints[{i}].id"),
                    format!("{id:?} must match ^[a-zA-Z0-9._~-]+$"),
                );
            }
        }
        for k in ep.metadata.keys() {
            if !is_valid_metadata_key(k) {
                e.add(
                    format!("core.endpoints[{i}].metadata.{k}"),
                    "key must match ^[a-zA-Z0-9_]+$",
                );
            }
        }
    }
    for (i, cred) in c.credentials.iter().enumerate() {
        if cred.username.is_empty() {
            e.add(
                format!("core.credentials[{i}].username"),
                "must not be empty",
            );
        }
        if let Err(msg) = platform_core::ccm::check_hash(&cred.password_hash) {
            e.add(format!("core.credentials[{i}].password_hash"), msg);
        }
    }
    CoreConfig {
        database: resolve(state_dir, &c.database),
        mqtt: MqttListener {
            listen,
            max_packet_size: c.mqtt.max_packet_size,
            max_connections: c.mqtt.max_connections,
            connect_timeout: Duration::from_secs(c.mqtt.connect_timeout_secs),
        },
        max_payload_bytes: c.max_payload_bytes,
        applications: c.applications,
        endpoints: c.endpoints,
        credentials: c.credentials,
    }
}

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

fn device(d: RawDevice, path: &str, e: &mut Errors) -> Option<Device> {
    let before = e.0.len();
    if d.name.trim().is_empty() {
        e.add(format!("{path}.name"), "must not be empty");
    }
    let token = EndpointToken::new(&d.token)
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
    if d.points.is_empty() {
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
    let source = match (d.modbus_tcp, d.simulated) {
        (Some(m), None) => modbus_tcp(m, &d.points, path, e).map(DeviceSource::ModbusTcp),
        (None, Some(s)) => simulated(s, &d.points, path, e).map(DeviceSource::Simulated),
        (None, None) => {
            e.add(
                path,
                "needs a source: [devices.modbus_tcp] or [devices.simulated]",
            );
            None
        }
        (Some(_), Some(_)) => {
            e.add(
                path,
                "has two sources: keep one of [devices.modbus_tcp] and [devices.simulated]",
            );
            None
        }
    };
    if e.0.len() != before {
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

/// Fields of the other source kind set on a point are errors, not silently ignored.
fn reject_fields(path: &str, fields: &[(&str, bool)], source: &str, e: &mut Errors) {
    for (name, present) in fields {
        if *present {
            e.add(
                format!("{path}.{name}"),
                format!("not a field of {source} points"),
            );
        }
    }
}

fn modbus_tcp(
    m: RawModbusTcp,
    points: &[RawPoint],
    path: &str,
    e: &mut Errors,
) -> Option<ModbusTcpDevice> {
    let address = SocketAddr::from_str(&m.address)
        .map_err(|_| {
            e.add(
                format!("{path}.modbus_tcp.address"),
                format!("{:?} is not an IP:port address", m.address),
            )
        })
        .ok();
    if m.unit_id > 247 {
        e.add(
            format!("{path}.modbus_tcp.unit_id"),
            format!("{} is out of range 0..=247", m.unit_id),
        );
    }
    if m.timeout_ms == 0 {
        e.add(
            format!("{path}.modbus_tcp.timeout_ms"),
            "must be at least 1",
        );
    }
    let mut out = Vec::new();
    for (i, p) in points.iter().enumerate() {
        let pp = format!("{path}.points[{i}]");
        reject_fields(
            &pp,
            &[
                ("waveform", p.waveform.is_some()),
                ("period_secs", p.period_secs.is_some()),
                ("amplitude", p.amplitude.is_some()),
                ("center", p.center.is_some()),
            ],
            "modbus",
            e,
        );
        let table = match p.table.as_deref() {
            None => Some(RegisterTable::Holding),
            Some(t) => RegisterTable::from_str(t)
                .map_err(|msg| e.add(format!("{pp}.table"), msg))
                .ok(),
        };
        let data_type = match p.data_type.as_deref() {
            None => {
                e.add(format!("{pp}.type"), "missing (u16, i16, u32, i32, f32)");
                None
            }
            Some(t) => DataType::from_str(t)
                .map_err(|msg| e.add(format!("{pp}.type"), msg))
                .ok(),
        };
        let Some(address) = p.address else {
            e.add(format!("{pp}.address"), "missing");
            continue;
        };
        let scale = p.scale.unwrap_or(1.0);
        let offset = p.offset.unwrap_or(0.0);
        if !scale.is_finite() || scale == 0.0 {
            e.add(format!("{pp}.scale"), "must be a finite, non-zero number");
        }
        if !offset.is_finite() {
            e.add(format!("{pp}.offset"), "must be a finite number");
        }
        if let Some(dt) = data_type {
            if u32::from(address) + u32::from(dt.registers()) > 65536 {
                e.add(
                    format!("{pp}.address"),
                    format!("{address} + {} registers runs past 65535", dt.registers()),
                );
            }
        }
        if let (Some(table), Some(data_type)) = (table, data_type) {
            out.push(ModbusPoint {
                name: p.name.clone(),
                table,
                address,
                data_type,
                scale,
                offset,
            });
        }
    }
    Some(ModbusTcpDevice {
        address: address?,
        unit_id: m.unit_id,
        timeout: Duration::from_millis(m.timeout_ms),
        points: out,
    })
}

fn simulated(
    s: RawSimulated,
    points: &[RawPoint],
    path: &str,
    e: &mut Errors,
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
