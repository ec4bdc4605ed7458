//! The configuration file as written (TOML → serde), before validation.
//!
//! Every struct denies unknown fields so a typo is an error, not a silently ignored key.
//! Defaults live in `defaults` below, in one place; [`super::validate`] turns this into
//! the runtime [`super::Config`].

use std::collections::BTreeMap;

use platform_core::secret::Secret;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub gateway: RawGateway,
    pub upstream: Option<RawUpstream>,
    #[serde(default)]
    pub buffer: RawBuffer,
    /// The embedded core's section: platform-core owns its types and validation.
    pub core: Option<platform_core::config::raw::RawCore>,
    #[serde(default)]
    pub modbus: RawModbus,
    #[serde(default)]
    pub devices: Vec<RawDevice>,
    /// The local web page; absent: no web page.
    pub web: Option<RawWeb>,
}

/// `[web]`: the local web page (claim, dashboard, configuration, diagnostics).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeb {
    #[serde(default = "defaults::web_enabled")]
    pub enabled: bool,
    #[serde(default = "defaults::web_listen")]
    pub listen: String,
    /// HTTPS: both files, or neither.
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    #[serde(default = "defaults::web_session_idle_mins")]
    pub session_idle_mins: u64,
    /// Serve `/metrics` (Prometheus text format).
    #[serde(default = "defaults::web_enabled")]
    pub metrics: bool,
    /// Bearer token that opens `/metrics` to a scraper beyond loopback.
    pub metrics_token: Option<Secret>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModbus {
    #[serde(default)]
    pub buses: Vec<RawBus>,
}

/// One Modbus bus: a serial port (RTU), a TCP connection, or RTU framing over TCP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBus {
    pub name: String,
    /// `rtu`, `tcp` or `rtu_over_tcp`.
    pub kind: String,
    /// Serial device path (`rtu`).
    pub port: Option<String>,
    #[serde(default = "defaults::baud")]
    pub baud: u32,
    #[serde(default = "defaults::parity")]
    pub parity: String,
    #[serde(default = "defaults::data_bits")]
    pub data_bits: u8,
    #[serde(default = "defaults::stop_bits")]
    pub stop_bits: u8,
    /// `IP:port` (`tcp`, `rtu_over_tcp`).
    pub address: Option<String>,
    #[serde(default = "defaults::modbus_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "defaults::retries")]
    pub retries: u32,
    /// Silence between frames; default 3.5 character times for RTU (at least 1.75 ms), 0 for TCP.
    pub inter_frame_delay_ms: Option<f64>,
    #[serde(default = "defaults::max_gap")]
    pub max_gap: u16,
    #[serde(default = "defaults::backoff_max_ms")]
    pub backoff_max_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    #[serde(default = "defaults::state_dir")]
    pub state_dir: String,
    #[serde(default = "defaults::log_level")]
    pub log_level: String,
    /// The gateway's own endpoint token (its health samples); none: no health samples.
    pub token: Option<String>,
    pub app_version: Option<String>,
    #[serde(default = "defaults::health_interval_secs")]
    pub health_interval_secs: u64,
    /// Where the site's own device profiles are (`*.toml`).
    #[serde(default = "defaults::profiles_dir")]
    pub profiles_dir: String,
}

impl Default for RawGateway {
    fn default() -> Self {
        Self {
            state_dir: defaults::state_dir(),
            log_level: defaults::log_level(),
            token: None,
            app_version: None,
            health_interval_secs: defaults::health_interval_secs(),
            profiles_dir: defaults::profiles_dir(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub host: String,
    #[serde(default = "defaults::mqtt_port")]
    pub port: u16,
    #[serde(default = "defaults::client_id")]
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    #[serde(default = "defaults::keepalive_secs")]
    pub keepalive_secs: u64,
    #[serde(default = "defaults::response_timeout_secs")]
    pub response_timeout_secs: u64,
    #[serde(default = "defaults::batch_max_samples")]
    pub batch_max_samples: usize,
    #[serde(default = "defaults::reconnect_max_secs")]
    pub reconnect_max_secs: u64,
    #[serde(default = "defaults::batch_max_bytes")]
    pub batch_max_bytes: usize,
    #[serde(default = "defaults::max_inflight_batches")]
    pub max_inflight_batches: usize,
    #[serde(default = "defaults::live_window_secs")]
    pub live_window_secs: u64,
    pub tls: Option<RawTls>,
}

/// TLS to the upstream: the server is checked against `ca_file`, or the system's trust
/// store without one; a client certificate is presented when both client files are set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// None: the system's trust store (`/etc/ssl/certs`, `SSL_CERT_FILE`).
    pub ca_file: Option<String>,
    pub client_cert_file: Option<String>,
    pub client_key_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuffer {
    #[serde(default = "defaults::buffer_file")]
    pub file: String,
    #[serde(default = "defaults::synchronous")]
    pub synchronous: String,
    #[serde(default = "defaults::buffer_max_bytes")]
    pub max_bytes: u64,
    #[serde(default = "defaults::buffer_max_age_secs")]
    pub max_age_secs: u64,
    #[serde(default = "defaults::when_full")]
    pub when_full: String,
}

impl Default for RawBuffer {
    fn default() -> Self {
        Self {
            file: defaults::buffer_file(),
            synchronous: defaults::synchronous(),
            max_bytes: defaults::buffer_max_bytes(),
            max_age_secs: defaults::buffer_max_age_secs(),
            when_full: defaults::when_full(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    pub name: String,
    /// The endpoint token: it identifies the device to the platform, so it is kept out
    /// of `Debug` output like a password.
    pub token: Secret,
    pub app_version: String,
    #[serde(default = "defaults::poll_interval_ms")]
    pub poll_interval_ms: u64,
    #[serde(default)]
    pub metadata: BTreeMap<String, toml::Value>,
    pub modbus: Option<RawDeviceModbus>,
    pub simulated: Option<RawSimulated>,
    pub serial_line: Option<RawSerialLine>,
    #[serde(default)]
    pub points: Vec<RawPoint>,
}

/// A Modbus slave on one of `[[modbus.buses]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeviceModbus {
    pub bus: String,
    #[serde(default = "defaults::unit_id")]
    pub unit_id: u8,
    #[serde(default = "defaults::max_read_registers")]
    pub max_read_registers: u16,
    #[serde(default = "defaults::max_read_bits")]
    pub max_read_bits: u16,
    pub vendor: Option<String>,
    pub model: Option<String>,
}

/// A sensor that prints lines on a serial port.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSerialLine {
    pub port: String,
    #[serde(default = "defaults::baud")]
    pub baud: u32,
    #[serde(default = "defaults::parity")]
    pub parity: String,
    #[serde(default = "defaults::data_bits")]
    pub data_bits: u8,
    #[serde(default = "defaults::stop_bits")]
    pub stop_bits: u8,
    /// `json`, `key_value`, `csv`, `nmea`, `regex`.
    pub format: String,
    /// `csv`: column names in order; empty names skip a column.
    #[serde(default)]
    pub columns: Vec<String>,
    /// `csv`: field separator (default `,`); `key_value`: pair separator (default whitespace).
    pub separator: Option<String>,
    /// `regex`: a pattern with named groups; each group is a field.
    pub pattern: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSimulated {
    /// Seed for the noise-free waveforms' phase; same seed, same values.
    #[serde(default)]
    pub phase_secs: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoint {
    pub name: String,
    /// Unit shown on the web page (`°C`, `kWh`); not sent upstream.
    pub unit: Option<String>,
    // Modbus points
    pub table: Option<String>,
    pub address: Option<u16>,
    #[serde(rename = "type")]
    pub data_type: Option<String>,
    pub length: Option<u16>,
    pub bit: Option<u8>,
    pub order: Option<String>,
    pub scale: Option<f64>,
    pub offset: Option<f64>,
    pub deadband: Option<f64>,
    pub writable: Option<bool>,
    pub readback: Option<bool>,
    pub write_function: Option<String>,
    /// Poll this point every so often instead of at the device's period.
    pub poll_interval_ms: Option<u64>,
    // Simulated points
    pub waveform: Option<String>,
    pub period_secs: Option<f64>,
    pub amplitude: Option<f64>,
    pub center: Option<f64>,
}

/// Defaults, in one place (documented in `config/README.md`).
pub mod defaults {
    use crate::upstream::defaults as up;

    pub fn web_enabled() -> bool {
        true
    }
    pub fn web_listen() -> String {
        "0.0.0.0:8088".into()
    }
    pub fn web_session_idle_mins() -> u64 {
        30
    }
    pub fn state_dir() -> String {
        "/var/lib/kp-gateway".into()
    }
    pub fn profiles_dir() -> String {
        "/etc/kp-gateway/profiles".into()
    }
    pub fn log_level() -> String {
        "info".into()
    }
    pub fn mqtt_port() -> u16 {
        up::PORT
    }
    pub fn client_id() -> String {
        up::CLIENT_ID.into()
    }
    pub fn keepalive_secs() -> u64 {
        up::KEEPALIVE.as_secs()
    }
    pub fn response_timeout_secs() -> u64 {
        up::RESPONSE_TIMEOUT.as_secs()
    }
    pub fn batch_max_samples() -> usize {
        up::BATCH_MAX_SAMPLES
    }
    pub fn reconnect_max_secs() -> u64 {
        up::RECONNECT_MAX.as_secs()
    }
    pub fn batch_max_bytes() -> usize {
        up::BATCH_MAX_BYTES
    }
    pub fn max_inflight_batches() -> usize {
        up::MAX_INFLIGHT_BATCHES
    }
    pub fn live_window_secs() -> u64 {
        up::LIVE_WINDOW.as_secs()
    }
    pub fn buffer_max_bytes() -> u64 {
        crate::buffer::Bounds::default().max_bytes
    }
    pub fn buffer_max_age_secs() -> u64 {
        crate::buffer::Bounds::default().max_age.as_secs()
    }
    pub fn when_full() -> String {
        "drop_oldest".into()
    }
    pub fn health_interval_secs() -> u64 {
        60
    }
    pub fn buffer_file() -> String {
        "buffer.sqlite".into()
    }
    pub fn synchronous() -> String {
        "full".into()
    }
    pub fn poll_interval_ms() -> u64 {
        1000
    }
    pub fn unit_id() -> u8 {
        1
    }
    pub fn modbus_timeout_ms() -> u64 {
        1000
    }
    pub fn baud() -> u32 {
        9600
    }
    pub fn parity() -> String {
        "none".into()
    }
    pub fn data_bits() -> u8 {
        8
    }
    pub fn stop_bits() -> u8 {
        1
    }
    pub fn retries() -> u32 {
        1
    }
    pub fn max_gap() -> u16 {
        8
    }
    pub fn backoff_max_ms() -> u64 {
        30_000
    }
    pub fn max_read_registers() -> u16 {
        crate::modbus::planner::MAX_REGISTERS
    }
    pub fn max_read_bits() -> u16 {
        crate::modbus::planner::MAX_BITS
    }
}
