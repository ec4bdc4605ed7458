//! Gateway configuration: TOML file → [`raw::RawConfig`] → validated [`Config`].
//!
//! This module only parses and assembles: each feature owns its runtime settings type
//! (`upstream::Upstream`, `buffer::Buffer`, `source::Device`, `source::modbus::Bus`,
//! `source::serial::SerialSettings`, `self_report::OwnEndpoint`, `web_settings::WebSettings`) and the embedded core
//! owns `[core]` (`platform_core::config`). Imports point from here to them, never back.
//!
//! [`Config::from_toml`] reports every problem at once, each as `path: message`
//! (`devices[1].points[0].type: unknown data type "u17"`), and never panics. Secrets
//! (upstream password, tokens) are redacted from `Debug` output.

pub mod dropins;
mod locate;
pub mod points_csv;
pub mod raw;
mod validate;

use std::path::{Path, PathBuf};

use platform_core::CoreConfig;

use crate::buffer::Buffer;
use crate::self_report::OwnEndpoint;
use crate::source::modbus::Bus;
use crate::source::Device;
use crate::upstream::Upstream;
use crate::web_settings::WebSettings;

pub use platform_core::config::ConfigErrors;

/// The validated, runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    /// The site's own device profiles (`gateway.profiles_dir`).
    pub profiles_dir: PathBuf,
    pub log_level: log::LevelFilter,
    /// Where samples go; `None` with `core` set means "the in-process core" (standalone site).
    pub upstream: Option<Upstream>,
    pub buffer: Buffer,
    /// The gateway's own endpoint, reporting health samples.
    pub own_endpoint: Option<OwnEndpoint>,
    pub core: Option<CoreConfig>,
    pub buses: Vec<Bus>,
    pub devices: Vec<Device>,
    /// The local web page; `None`: off.
    pub web: Option<WebSettings>,
}

impl Config {
    /// Parses and validates a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, ConfigErrors> {
        validate::validate(Self::parse_raw(text)?)
    }

    /// File descriptors the configured listeners may hold at their caps, plus a reserve
    /// (databases, serial ports, the upstream, logs): what `LimitNOFILE` must allow.
    pub fn open_files_needed(&self) -> u64 {
        /// Databases, serial ports, the upstream connection, the journal, spare.
        const RESERVE: u64 = 256;
        /// The web page's share (it serves one admin; its listener is not capped here).
        const WEB: u64 = 256;
        let core = self.core.as_ref().map_or(0, |c| {
            let mqtt = c.mqtt.max_connections as u64;
            let tls = c.tls.as_ref().map_or(0, |_| mqtt);
            let http = c.http.as_ref().map_or(0, |h| {
                h.max_connections as u64 + if h.websocket { mqtt } else { 0 }
            });
            mqtt + tls + http
        });
        core + self.web.as_ref().map_or(0, |_| WEB) + RESERVE
    }

    /// One `[[modbus.buses]]` table on its own (the command-line tools' `--rtu`/`--tcp`
    /// options are turned into one), checked by the same rules as in a file.
    pub fn bus_from_toml(text: &str) -> Result<Bus, ConfigErrors> {
        let raw: raw::RawBus =
            toml::from_str(text).map_err(|e| ConfigErrors(vec![e.message().to_owned()]))?;
        validate::one_bus(raw)
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

    /// Parses the TOML; an error names its key path when one is found (`devices[1].modbus.
    /// unit_id: ...`), with the line, so it reads like a validation error.
    fn parse_raw(text: &str) -> Result<raw::RawConfig, ConfigErrors> {
        toml::from_str(text).map_err(|e| {
            let msg = plain_words(e.message().trim_end());
            let place = e
                .span()
                .map(|s| {
                    let line = text.as_bytes()[..s.start.min(text.len())]
                        .iter()
                        .filter(|b| **b == b'\n')
                        .count()
                        + 1;
                    match locate::path_at(text, s.start) {
                        Some(path) => format!("{path}: (line {line})"),
                        None => format!("line {line}:"),
                    }
                })
                .unwrap_or_else(|| "file:".into());
            ConfigErrors(vec![format!("{place} {msg}")])
        })
    }

    /// The core's settings when the gateway runs as a core and nothing else (no upstream,
    /// no devices, no endpoint of its own): then it needs no buffer at all.
    pub fn core_only(&self) -> Option<&CoreConfig> {
        let idle =
            self.upstream.is_none() && self.devices.is_empty() && self.own_endpoint.is_none();
        self.core.as_ref().filter(|_| idle)
    }

    /// What is valid but unwise on this machine: worth a warning, not a refusal.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = self
            .core
            .as_ref()
            .map(CoreConfig::warnings)
            .unwrap_or_default();
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

    /// Reads a file and its `conf.d` fragments, parses and validates them.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        Self::from_toml(&dropins::read(path)?)
    }
}

/// The TOML reader's Rust type names in words a user knows.
fn plain_words(msg: &str) -> String {
    [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number of at least 0"),
        ("expected usize", "expected a whole number of at least 0"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ]
    .iter()
    .fold(msg.to_owned(), |m, (from, to)| m.replace(from, to))
}

#[cfg(test)]
mod tests;
