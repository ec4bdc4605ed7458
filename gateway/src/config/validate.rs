//! Raw → runtime configuration: every check, every error collected with its path.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use platform_core::config::{HttpListener, MqttListener, TlsListener};
use platform_core::epr::is_valid_metadata_key;
use platform_core::kp1::{AppVersionName, EndpointToken};
use platform_core::CoreConfig;

use super::raw::*;
use super::*;
use crate::buffer::{Bounds, FullPolicy};
use crate::modbus::codec::PointCodec;
use crate::modbus::planner::{plan, Limits, PlanPoint, MAX_BITS, MAX_REGISTERS};
use crate::modbus::types::{ByteOrder, DataType, RegisterTable};
use crate::source::line_format::LineFormat;

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
    let when_full = match raw.buffer.when_full.as_str() {
        "drop_oldest" => FullPolicy::DropOldest,
        "drop_newest" => FullPolicy::DropNewest,
        "block" => FullPolicy::Block,
        other => {
            e.add(
                "buffer.when_full",
                format!("unknown policy {other:?} (drop_oldest, drop_newest, block)"),
            );
            FullPolicy::DropOldest
        }
    };
    if raw.buffer.max_bytes < 64 * 1024 {
        e.add(
            "buffer.max_bytes",
            format!("{} is below the minimum of 65536", raw.buffer.max_bytes),
        );
    }
    if raw.buffer.max_age_secs < 60 {
        e.add(
            "buffer.max_age_secs",
            format!("{} is below the minimum of 60", raw.buffer.max_age_secs),
        );
    }
    let buffer = Buffer {
        path: resolve(&state_dir, &raw.buffer.file),
        synchronous,
        bounds: Bounds {
            max_bytes: raw.buffer.max_bytes,
            max_age: Duration::from_secs(raw.buffer.max_age_secs),
            when_full,
        },
    };
    let own_endpoint = match (&raw.gateway.token, &raw.gateway.app_version) {
        (None, None) => None,
        (Some(t), Some(a)) => {
            let token = EndpointToken::new(t)
                .map_err(|err| e.add("gateway.token", err.to_string()))
                .ok();
            let app_version = AppVersionName::new(a)
                .map_err(|err| e.add("gateway.app_version", err.to_string()))
                .ok();
            if raw.gateway.health_interval_secs == 0 {
                e.add("gateway.health_interval_secs", "must be at least 1");
            }
            token
                .zip(app_version)
                .map(|(token, app_version)| OwnEndpoint {
                    token,
                    app_version,
                    interval: Duration::from_secs(raw.gateway.health_interval_secs.max(1)),
                })
        }
        _ => {
            e.add(
                "gateway",
                "token and app_version go together (the gateway's own endpoint)",
            );
            None
        }
    };

    let core = raw.core.map(|c| core(c, &state_dir, &mut e));

    let mut buses = Vec::new();
    let mut bus_gaps: Vec<(String, u16)> = Vec::new();
    let mut bus_names = HashSet::new();
    for (i, b) in raw.modbus.buses.into_iter().enumerate() {
        if !bus_names.insert(b.name.clone()) {
            e.add(
                format!("modbus.buses[{i}].name"),
                format!("duplicate bus name {:?}", b.name),
            );
        }
        let gap = b.max_gap;
        let bus = bus(b, i, &mut e);
        bus_gaps.push((bus.name.clone(), gap));
        buses.push(bus);
    }
    check_resources(&buses, &raw.devices, &mut e);

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
        if let Some(dev) = device(d, &bus_gaps, &path, &mut e) {
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
        if let Some(own) = &own_endpoint {
            if !known.contains(own.app_version.as_str()) {
                e.add(
                    "gateway.app_version",
                    format!(
                        "{:?} is not a version of any [[core.applications]]",
                        own.app_version.as_str()
                    ),
                );
            }
        }
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
            own_endpoint,
            core,
            buses,
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
    if !(256..=crate::upstream::MAX_PACKET_SIZE / 2).contains(&u.batch_max_bytes) {
        e.add(
            "upstream.batch_max_bytes",
            format!("{} is out of range 256..=524288", u.batch_max_bytes),
        );
    }
    if !(1..=1000).contains(&u.max_inflight_batches) {
        e.add(
            "upstream.max_inflight_batches",
            format!("{} is out of range 1..=1000", u.max_inflight_batches),
        );
    }
    let tls = u.tls.map(|t| {
        if t.client_cert_file.is_some() != t.client_key_file.is_some() {
            e.add(
                "upstream.tls",
                "client_cert_file and client_key_file go together",
            );
        }
        for (key, file) in [
            ("ca_file", Some(&t.ca_file)),
            ("client_cert_file", t.client_cert_file.as_ref()),
            ("client_key_file", t.client_key_file.as_ref()),
        ] {
            if let Some(f) = file {
                if !Path::new(f).is_file() {
                    e.add(
                        format!("upstream.tls.{key}"),
                        format!("{f:?} is not a readable file"),
                    );
                }
            }
        }
        Tls {
            ca_file: t.ca_file.into(),
            client_cert_file: t.client_cert_file.map(Into::into),
            client_key_file: t.client_key_file.map(Into::into),
        }
    });
    Upstream {
        host: u.host,
        port: u.port,
        client_id: u.client_id,
        username: u.username,
        password: u.password,
        keepalive: Duration::from_secs(u.keepalive_secs),
        response_timeout: Duration::from_secs(u.response_timeout_secs),
        batch_max_samples: u.batch_max_samples,
        batch_max_bytes: u.batch_max_bytes,
        max_inflight_batches: u.max_inflight_batches,
        live_window: Duration::from_secs(u.live_window_secs),
        reconnect_max: Duration::from_secs(u.reconnect_max_secs),
        tls,
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
    let http = c.http.as_ref().map(|h| HttpListener {
        listen: SocketAddr::from_str(&h.listen).unwrap_or_else(|_| {
            e.add(
                "core.http.listen",
                format!("{:?} is not an IP:port address", h.listen),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        }),
        websocket: h.websocket,
        websocket_allow_anonymous: h.websocket_allow_anonymous,
        tls: match (&h.cert_file, &h.key_file) {
            (Some(cert), Some(key)) => Some(platform_core::kpc::tls::TlsFiles {
                cert_file: resolve(state_dir, cert),
                key_file: resolve(state_dir, key),
                client_ca_file: None,
            }),
            (None, None) => None,
            _ => {
                e.add(
                    "core.http",
                    "cert_file and key_file go together (both for HTTPS, neither for HTTP)",
                );
                None
            }
        },
    });
    if let Some(f) = http.as_ref().and_then(|h| h.tls.as_ref()) {
        for (key, p) in [("cert_file", &f.cert_file), ("key_file", &f.key_file)] {
            if !p.is_file() {
                e.add(
                    format!("core.http.{key}"),
                    format!("{} is not a readable file", p.display()),
                );
            }
        }
    }
    let tls = c.tls.as_ref().map(|t| TlsListener {
        listen: SocketAddr::from_str(&t.listen).unwrap_or_else(|_| {
            e.add(
                "core.tls.listen",
                format!("{:?} is not an IP:port address", t.listen),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        }),
        files: platform_core::kpc::tls::TlsFiles {
            cert_file: resolve(state_dir, &t.cert_file),
            key_file: resolve(state_dir, &t.key_file),
            client_ca_file: t.client_ca_file.as_ref().map(|f| resolve(state_dir, f)),
        },
        allow_anonymous: t.allow_anonymous,
    });
    if let Some(t) = &tls {
        let f = &t.files;
        for (key, path) in [
            ("cert_file", Some(&f.cert_file)),
            ("key_file", Some(&f.key_file)),
            ("client_ca_file", f.client_ca_file.as_ref()),
        ] {
            if let Some(p) = path {
                if !p.is_file() {
                    e.add(
                        format!("core.tls.{key}"),
                        format!("{} is not a readable file", p.display()),
                    );
                }
            }
        }
    }
    for (list, keys) in [
        ("read_only_keys", &c.epmx.read_only_keys),
        ("hidden_keys", &c.epmx.hidden_keys),
    ] {
        for (i, k) in keys.iter().enumerate() {
            if !is_valid_metadata_key(k) {
                e.add(
                    format!("core.epmx.{list}[{i}]"),
                    format!("{k:?} must match ^[a-zA-Z0-9_]+$"),
                );
            }
        }
    }
    if c.extension_timeout_ms == 0 {
        e.add("core.extension_timeout_ms", "must be at least 1");
    }
    let mut extensions = Vec::new();
    for (i, x) in c.extensions.iter().enumerate() {
        let kind = platform_core::ext::ExtensionKind::for_default_instance(&x.kind);
        if kind.is_none() {
            e.add(
                format!("core.extensions[{i}].kind"),
                format!("{:?} is not one of dcx, epmx, cmx, cex", x.kind),
            );
        }
        if !platform_core::ext::is_valid_instance_name(&x.instance) {
            e.add(
                format!("core.extensions[{i}].instance"),
                format!("{:?} must match ^[a-z0-9_-]+$", x.instance),
            );
        } else if platform_core::ext::ExtensionKind::for_default_instance(&x.instance).is_some()
            || c.extensions[..i].iter().any(|o| o.instance == x.instance)
        {
            e.add(
                format!("core.extensions[{i}].instance"),
                format!("{:?} is already an instance", x.instance),
            );
        }
        if let Some(k) = kind {
            extensions.push((x.instance.clone(), k));
        }
    }
    for (key, v) in [
        ("connected_key", &c.epl.connected_key),
        ("connectivity_ts_key", &c.epl.connectivity_ts_key),
    ] {
        if !is_valid_metadata_key(v) {
            e.add(
                format!("core.epl.{key}"),
                format!("{v:?} must match ^[a-zA-Z0-9_]+$"),
            );
        }
    }
    if let Some(a) = &c.api {
        if a.admin_username.is_empty() {
            e.add("core.api.admin_username", "must not be empty");
        }
        if let Err(msg) = platform_core::ccm::check_hash(&a.admin_password_hash) {
            e.add("core.api.admin_password_hash", msg);
        }
        if c.http.is_none() {
            e.add(
                "core.api",
                "the REST API is served on the HTTP listener: add [core.http]",
            );
        }
    }
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
            allow_anonymous: c.mqtt.allow_anonymous,
        },
        http,
        tls,
        epmx: platform_core::ext::EpmxPolicy {
            read_only: c.epmx.read_only_keys.clone(),
            hidden: c.epmx.hidden_keys.clone(),
        },
        extension_timeout: Duration::from_millis(c.extension_timeout_ms),
        extensions,
        api: c.api.as_ref().map(|a| platform_core::api::AdminAuth {
            username: a.admin_username.clone(),
            password_hash: a.admin_password_hash.clone(),
        }),
        epl: platform_core::epl::EplConfig {
            connected_key: c.epl.connected_key.clone(),
            connectivity_ts_key: c.epl.connectivity_ts_key.clone(),
            idle_timeout: (c.epl.idle_timeout_secs > 0)
                .then(|| Duration::from_secs(c.epl.idle_timeout_secs)),
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

fn device(d: RawDevice, buses: &[(String, u16)], path: &str, e: &mut Errors) -> Option<Device> {
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
        (Some(m), None, None) => modbus(m, &d.points, buses, path, e).map(DeviceSource::Modbus),
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

/// Resource conflicts: a serial port or TCP server has one owner; a unit ID is used by one
/// device per bus.
fn check_resources(buses: &[Bus], devices: &[RawDevice], e: &mut Errors) {
    let mut ports: Vec<(String, String)> = Vec::new();
    let mut claim = |port: &str, owner: String, e: &mut Errors| {
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

fn parity(s: &str, path: &str, e: &mut Errors) -> Parity {
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

fn serial_settings(
    port: &str,
    baud: u32,
    parity_name: &str,
    data_bits: u8,
    stop_bits: u8,
    path: &str,
    e: &mut Errors,
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

/// Modbus over serial line §2.5.1.1: 3.5 character times between frames; above 19200 baud
/// a fixed 1.75 ms. A character is 11 bits (start, 8 data, parity or 2nd stop, stop).
pub fn rtu_inter_frame_delay(baud: u32) -> Duration {
    if baud > 19_200 {
        Duration::from_micros(1750)
    } else {
        Duration::from_secs_f64(3.5 * 11.0 / f64::from(baud.max(1)))
    }
}

fn bus(b: RawBus, i: usize, e: &mut Errors) -> Bus {
    let path = format!("modbus.buses[{i}]");
    if b.name.trim().is_empty() {
        e.add(format!("{path}.name"), "must not be empty");
    }
    let tcp_address = |e: &mut Errors| match b.address.as_deref().map(SocketAddr::from_str) {
        Some(Ok(a)) => a,
        Some(Err(_)) => {
            e.add(
                format!("{path}.address"),
                format!(
                    "{:?} is not an IP:port address",
                    b.address.as_deref().unwrap_or("")
                ),
            );
            SocketAddr::from(([127, 0, 0, 1], 502))
        }
        None => {
            e.add(
                format!("{path}.address"),
                "missing (IP:port of the Modbus TCP server)",
            );
            SocketAddr::from(([127, 0, 0, 1], 502))
        }
    };
    let transport = match b.kind.as_str() {
        "rtu" => {
            let port = b.port.clone().unwrap_or_default();
            BusTransport::Rtu(serial_settings(
                &port,
                b.baud,
                &b.parity,
                b.data_bits,
                b.stop_bits,
                &path,
                e,
            ))
        }
        "tcp" => BusTransport::Tcp(tcp_address(e)),
        "rtu_over_tcp" => BusTransport::RtuOverTcp(tcp_address(e)),
        other => {
            e.add(
                format!("{path}.kind"),
                format!("unknown bus kind {other:?} (rtu, tcp, rtu_over_tcp)"),
            );
            BusTransport::Tcp(SocketAddr::from(([127, 0, 0, 1], 502)))
        }
    };
    if b.timeout_ms == 0 {
        e.add(format!("{path}.timeout_ms"), "must be at least 1");
    }
    if b.retries > 10 {
        e.add(
            format!("{path}.retries"),
            format!("{} is more than 10", b.retries),
        );
    }
    let inter_frame_delay = match (b.inter_frame_delay_ms, &transport) {
        (Some(ms), _) if !(0.0..=10_000.0).contains(&ms) => {
            e.add(format!("{path}.inter_frame_delay_ms"), "must be 0..=10000");
            Duration::ZERO
        }
        (Some(ms), _) => Duration::from_secs_f64(ms / 1000.0),
        (None, BusTransport::Rtu(s)) => rtu_inter_frame_delay(s.baud),
        (None, _) => Duration::ZERO,
    };
    if b.backoff_max_ms < b.timeout_ms {
        e.add(
            format!("{path}.backoff_max_ms"),
            "must be at least timeout_ms",
        );
    }
    Bus {
        name: b.name,
        transport,
        timeout: Duration::from_millis(b.timeout_ms.max(1)),
        retries: b.retries,
        inter_frame_delay,
        backoff_max: Duration::from_millis(b.backoff_max_ms.max(1)),
    }
}

fn modbus(
    m: RawDeviceModbus,
    points: &[RawPoint],
    buses: &[(String, u16)],
    path: &str,
    e: &mut Errors,
) -> Option<ModbusDevice> {
    let Some((_, max_gap)) = buses.iter().find(|(n, _)| *n == m.bus) else {
        e.add(
            format!("{path}.modbus.bus"),
            format!("no [[modbus.buses]] is named {:?}", m.bus),
        );
        return None;
    };
    if m.unit_id > 247 {
        e.add(
            format!("{path}.modbus.unit_id"),
            format!("{} is out of range 0..=247", m.unit_id),
        );
    }
    if !(1..=MAX_REGISTERS).contains(&m.max_read_registers) {
        e.add(
            format!("{path}.modbus.max_read_registers"),
            format!("{} is out of range 1..=125", m.max_read_registers),
        );
    }
    if !(1..=MAX_BITS).contains(&m.max_read_bits) {
        e.add(
            format!("{path}.modbus.max_read_bits"),
            format!("{} is out of range 1..=2000", m.max_read_bits),
        );
    }
    let limits = Limits {
        max_registers: m.max_read_registers,
        max_bits: m.max_read_bits,
        max_gap: *max_gap,
    };
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
        if let Some(point) = modbus_point(p, &pp, e) {
            out.push(point);
        }
    }
    let plan_points: Vec<PlanPoint> = out
        .iter()
        .enumerate()
        .map(|(index, p)| PlanPoint {
            index,
            table: p.codec.table,
            address: p.address,
            width: p.codec.data_type.width(),
        })
        .collect();
    let plan = match plan(&plan_points, limits) {
        Ok(plan) => plan,
        Err(err) => {
            e.add(format!("{path}.points[{}]", err.index), err.to_string());
            Vec::new()
        }
    };
    Some(ModbusDevice {
        bus: m.bus,
        unit_id: m.unit_id,
        limits,
        points: out,
        plan,
    })
}

fn modbus_point(p: &RawPoint, pp: &str, e: &mut Errors) -> Option<ModbusPoint> {
    let before = e.0.len();
    let table = match p.table.as_deref() {
        None => RegisterTable::Holding,
        Some(t) => RegisterTable::from_str(t).unwrap_or_else(|msg| {
            e.add(format!("{pp}.table"), msg);
            RegisterTable::Holding
        }),
    };
    let data_type = match p.data_type.as_deref() {
        None if table.is_bits() => DataType::Bool,
        None => {
            e.add(
                format!("{pp}.type"),
                "missing (bool, u16, i16, u32, i32, u64, i64, f32, f64, string)",
            );
            DataType::U16
        }
        Some(t) => DataType::parse(t, p.length).unwrap_or_else(|msg| {
            e.add(format!("{pp}.type"), msg);
            DataType::U16
        }),
    };
    if p.length.is_some() && !matches!(data_type, DataType::String(_)) {
        e.add(format!("{pp}.length"), "only for type = \"string\"");
    }
    if table.is_bits() && data_type != DataType::Bool {
        e.add(
            format!("{pp}.type"),
            format!("{} points are bool", table.name()),
        );
    }
    match (p.bit, data_type, table.is_bits()) {
        (Some(b), DataType::Bool, false) if b > 15 => {
            e.add(format!("{pp}.bit"), format!("{b} is out of range 0..=15"))
        }
        (Some(_), DataType::Bool, false) => {}
        (Some(_), _, _) => e.add(
            format!("{pp}.bit"),
            "only for bool points in holding or input registers",
        ),
        (None, DataType::Bool, false) => e.add(
            format!("{pp}.bit"),
            "a bool in a register needs `bit` (0..=15)",
        ),
        _ => {}
    }
    let order = match p.order.as_deref() {
        None => ByteOrder::Abcd,
        Some(o) => ByteOrder::from_str(o).unwrap_or_else(|msg| {
            e.add(format!("{pp}.order"), msg);
            ByteOrder::Abcd
        }),
    };
    let Some(address) = p.address else {
        e.add(format!("{pp}.address"), "missing");
        return None;
    };
    if u32::from(address) + u32::from(data_type.width()) > 65536 {
        e.add(
            format!("{pp}.address"),
            format!("{address} + {} runs past 65535", data_type.width()),
        );
    }
    let scale = p.scale.unwrap_or(1.0);
    let offset = p.offset.unwrap_or(0.0);
    if (p.scale.is_some() || p.offset.is_some()) && !data_type.is_numeric() {
        e.add(pp, "scale and offset apply to numeric types only");
    }
    if !scale.is_finite() || scale == 0.0 {
        e.add(format!("{pp}.scale"), "must be a finite, non-zero number");
    }
    if !offset.is_finite() {
        e.add(format!("{pp}.offset"), "must be a finite number");
    }
    if let Some(d) = p.deadband {
        if !d.is_finite() || d < 0.0 {
            e.add(format!("{pp}.deadband"), "must be a number ≥ 0");
        }
    }
    let writable = p.writable.unwrap_or(false);
    if writable && !table.is_writable() {
        e.add(
            format!("{pp}.writable"),
            format!("{} points are read-only", table.name()),
        );
    }
    let write_multiple = match p.write_function.as_deref() {
        None | Some("single") => false,
        Some("multiple") => true,
        Some(other) => {
            e.add(
                format!("{pp}.write_function"),
                format!("unknown {other:?} (single, multiple)"),
            );
            false
        }
    };
    if write_multiple && data_type == DataType::Bool && !table.is_bits() {
        e.add(
            format!("{pp}.write_function"),
            "a register bit is written with read-modify-write (FC 6)",
        );
    }
    if e.0.len() != before {
        return None;
    }
    Some(ModbusPoint {
        name: p.name.clone(),
        address,
        codec: PointCodec {
            table,
            data_type,
            order,
            bit: p.bit,
            scale,
            offset,
        },
        deadband: p.deadband,
        writable,
        readback: p.readback.unwrap_or(writable),
        write_multiple,
    })
}

fn serial_line(
    s: RawSerialLine,
    points: &[RawPoint],
    path: &str,
    e: &mut Errors,
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
