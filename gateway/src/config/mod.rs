//! Gateway configuration: TOML file → [`raw::RawConfig`] → validated [`Config`].
//!
//! [`Config::from_toml`] reports every problem at once, each as `path: message`
//! (`devices[1].points[0].type: unknown data type "u17"`), and never panics. Secrets
//! (upstream password, tokens) are redacted from `Debug` output.

pub mod raw;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use platform_core::kp1::{AppVersionName, EndpointToken};
use platform_core::CoreConfig;

use crate::modbus::codec::PointCodec;
use crate::modbus::planner::{Limits, ReadRequest};
use crate::source::line_format::LineFormat;
use crate::source::simulated::Waveform;
pub use crate::upstream::{Tls, Upstream};

pub use platform_core::config::ConfigErrors;

/// The validated, runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub log_level: log::LevelFilter,
    /// Where samples go; `None` with `core` set means "the in-process core" (standalone site).
    pub upstream: Option<Upstream>,
    pub buffer: Buffer,
    /// The gateway's own endpoint, reporting health samples.
    pub own_endpoint: Option<OwnEndpoint>,
    pub core: Option<CoreConfig>,
    pub buses: Vec<Bus>,
    pub devices: Vec<Device>,
}

/// One Modbus bus, owned by exactly one task.
#[derive(Debug, Clone)]
pub struct Bus {
    pub name: String,
    pub transport: BusTransport,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Extra attempts after a timeout or transport error (not after an exception).
    pub retries: u32,
    /// Silence kept between the end of one frame and the next request.
    pub inter_frame_delay: Duration,
    /// Longest backoff of a slave that stopped answering.
    pub backoff_max: Duration,
}

/// How a bus reaches its slaves.
#[derive(Debug, Clone, PartialEq)]
pub enum BusTransport {
    Rtu(SerialSettings),
    Tcp(SocketAddr),
    RtuOverTcp(SocketAddr),
}

/// Serial port line settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSettings {
    pub path: String,
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// The gateway as an endpoint of its own.
#[derive(Debug, Clone)]
pub struct OwnEndpoint {
    pub token: EndpointToken,
    pub app_version: AppVersionName,
    pub interval: Duration,
}

/// SQLite `synchronous` setting of the buffer (durability vs. SD-card wear and speed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    /// fsync on every commit: an acknowledged sample survives power loss (default).
    Full,
    /// WAL checkpoints fsync; the last commits may be lost on power loss (not on a crash).
    Normal,
}

/// The store-and-forward buffer.
#[derive(Debug, Clone)]
pub struct Buffer {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    pub bounds: crate::buffer::Bounds,
}

/// One field device: one 1/KP endpoint.
#[derive(Debug, Clone)]
pub struct Device {
    pub name: String,
    pub token: EndpointToken,
    pub app_version: AppVersionName,
    pub poll_interval: Duration,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub source: DeviceSource,
}

/// Where a device's values come from.
#[derive(Debug, Clone)]
pub enum DeviceSource {
    Modbus(ModbusDevice),
    Simulated(SimulatedDevice),
    SerialLine(SerialLineDevice),
}

/// A Modbus slave on a bus.
#[derive(Debug, Clone)]
pub struct ModbusDevice {
    pub bus: String,
    pub unit_id: u8,
    pub limits: Limits,
    pub points: Vec<ModbusPoint>,
    /// The read plan, computed once at validation.
    pub plan: Vec<ReadRequest>,
}

/// One value in Modbus registers or bits.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusPoint {
    pub name: String,
    pub address: u16,
    pub codec: PointCodec,
    /// Report only when the value moved at least this much (0: on any change).
    pub deadband: Option<f64>,
    pub writable: bool,
    /// After a write, read the point back and compare.
    pub readback: bool,
    /// Use FC 15/16 even for a single coil/register (some devices lack FC 5/6).
    pub write_multiple: bool,
}

/// A sensor printing lines on a serial port.
#[derive(Debug, Clone)]
pub struct SerialLineDevice {
    pub serial: SerialSettings,
    pub format: LineFormat,
}

#[derive(Debug, Clone)]
pub struct SimulatedDevice {
    pub phase_secs: f64,
    pub points: Vec<SimulatedPoint>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SimulatedPoint {
    pub name: String,
    pub waveform: Waveform,
    pub period_secs: f64,
    pub amplitude: f64,
    pub center: f64,
}

impl Config {
    /// Parses and validates a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, ConfigErrors> {
        validate::validate(Self::parse_raw(text)?)
    }

    /// The local TOML document with its field side (`modbus`, `devices`) replaced by a
    /// remote configuration (7/CMP JSON), validated as a whole.
    pub fn with_remote_field_side(
        text: &str,
        remote: &serde_json::Value,
    ) -> Result<Self, ConfigErrors> {
        let mut raw = Self::parse_raw(text)?;
        let serde_json::Value::Object(obj) = remote else {
            return Err(ConfigErrors(vec![
                "config: must be a JSON object with \"modbus\" and \"devices\"".into(),
            ]));
        };
        let mut errors = Vec::new();
        for key in obj.keys() {
            if key != "modbus" && key != "devices" {
                errors.push(format!(
                    "config.{key}: only \"modbus\" and \"devices\" can be set remotely"
                ));
            }
        }
        match obj
            .get("modbus")
            .map(|v| serde_json::from_value::<raw::RawModbus>(v.clone()))
        {
            Some(Ok(m)) => raw.modbus = m,
            Some(Err(e)) => errors.push(format!("config.modbus: {e}")),
            None => raw.modbus = raw::RawModbus::default(),
        }
        match obj
            .get("devices")
            .map(|v| serde_json::from_value::<Vec<raw::RawDevice>>(v.clone()))
        {
            Some(Ok(d)) => raw.devices = d,
            Some(Err(e)) => errors.push(format!("config.devices: {e}")),
            None => raw.devices = Vec::new(),
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        validate::validate(raw)
    }

    fn parse_raw(text: &str) -> Result<raw::RawConfig, ConfigErrors> {
        toml::from_str(text).map_err(|e| {
            let msg = e.message().to_owned();
            let place = e
                .span()
                .map(|s| {
                    let line = text.as_bytes()[..s.start.min(text.len())]
                        .iter()
                        .filter(|b| **b == b'\n')
                        .count()
                        + 1;
                    format!("line {line}")
                })
                .unwrap_or_else(|| "file".into());
            ConfigErrors(vec![format!("{place}: {msg}")])
        })
    }

    /// What is valid but unwise on this machine: worth a warning, not a refusal.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if let Some(free) = crate::buffer::free_space(&self.buffer.path) {
            if self.buffer.bounds.max_bytes > free {
                w.push(format!(
                    "buffer.max_bytes: {} is more than the {} bytes free where the buffer lives ({}); \
                     the disk fills before the buffer's own bound applies",
                    self.buffer.bounds.max_bytes,
                    free,
                    self.buffer.path.display()
                ));
            }
        }
        w
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: cannot read: {e}", path.display())]))?;
        Self::from_toml(&text)
    }
}

#[cfg(test)]
mod tests;
