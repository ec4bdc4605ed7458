//! Per-device health, shared between the source tasks (writers) and the status
//! reporters (status log, web page, the gateway's own endpoint).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Where a device stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Not polled yet.
    #[default]
    Unknown,
    /// The last poll produced a sample.
    Ok,
    /// Not answering: backing off, probed now and then.
    Failing,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Ok => "ok",
            Self::Failing => "failing",
        }
    }
}

/// What is known of one device's recent polls.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeviceHealth {
    pub state: HealthState,
    pub polls: u64,
    /// Polls that produced no sample (timeout, transport error, every point bad).
    pub failures: u64,
    pub consecutive_failures: u32,
    /// Modbus exception answers (bad readings, not failures of the device).
    pub exceptions: u64,
    /// Serial lines that could not be parsed.
    pub bad_lines: u64,
    pub last_success_ms: Option<i64>,
    pub last_error: Option<String>,
    /// Duration of the last successful poll (all its requests), in milliseconds.
    pub last_latency_ms: Option<f64>,
}

/// Shared map device name → health; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct HealthRegistry {
    inner: Arc<Mutex<BTreeMap<String, DeviceHealth>>>,
}

impl HealthRegistry {
    /// Applies `f` to a device's entry (created on first use).
    pub fn update(&self, device: &str, f: impl FnOnce(&mut DeviceHealth)) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(device.to_owned()).or_default());
    }

    pub fn snapshot(&self) -> BTreeMap<String, DeviceHealth> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
