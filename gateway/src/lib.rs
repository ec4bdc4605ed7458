//! kp-gateway: polls field devices, buffers every sample in SQLite and forwards it to a
//! Kaa platform (or the embedded platform core) over one 1/KP MQTT connection.
//!
//! `main.rs` only parses the command line; [`supervisor::run`] wires the parts:
//! sources → buffer → upstream session, plus the optional in-process core.

pub mod buffer;
pub mod clock;
pub mod commission;
pub mod config;
pub mod config_store;
pub mod downlink;
pub mod endpoint;
pub mod footprint;
pub mod live;
pub mod logring;
pub mod malloc_tuning;
pub mod modbus;
pub mod profiles;
pub mod remote_config;
pub mod sample;
pub mod self_report;
pub mod source;
pub mod supervisor;
pub mod systemd;
pub mod upstream;
pub mod web;
pub mod web_settings;

/// The demo configuration: simulated devices and the in-process core, no hardware.
pub const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
