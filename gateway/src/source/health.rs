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
    /// Successful poll durations: counts per [`LATENCY_BUCKETS`] (cumulative is made at
    /// export), their sum in seconds, and their number.
    pub latency_buckets: [u64; LATENCY_BUCKETS.len()],
    pub latency_sum_secs: f64,
    pub latency_count: u64,
}

/// Upper bounds (seconds) of the poll latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

impl DeviceHealth {
    /// Records one successful poll's duration.
    pub fn observe_latency(&mut self, secs: f64) {
        self.last_latency_ms = Some(secs * 1000.0);
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.latency_buckets[i] += 1;
        }
        self.latency_sum_secs += secs;
        self.latency_count += 1;
    }
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
