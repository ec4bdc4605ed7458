//! Field sources: the tasks that produce data samples.
//!
//! - `modbus`: one task per Modbus bus, polling every slave on it (the bus scheduler);
//! - `serial_line`: one task per line-printing serial sensor;
//! - `simulated`: one task per simulated device (deterministic waveforms).
//!
//! A sample is the JSON object `{"timestamp": <epoch ms>, "<point>": <value>, ...}` that
//! 2/DCP carries; it is durable in the buffer before the source moves on. Failures are
//! logged when they start and when they end, not on every cycle, so a dead device does
//! not flood the log.

pub mod health;
pub mod line_format;
pub mod modbus;
pub mod serial_line;
pub mod simulated;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::buffer::{BufferHandle, EndpointKey, NewSample};
use crate::config::{Device, DeviceSource};

/// One cycle's values, in point order.
pub type Values = Vec<(String, f64)>;

/// Renders a sample object; non-finite values never reach here.
pub fn sample_json(ts_ms: i64, values: &Values) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("timestamp".into(), ts_ms.into());
    for (name, v) in values {
        obj.insert(name.clone(), serde_json::json!(v));
    }
    serde_json::Value::Object(obj).to_string()
}

/// The endpoint a device reports as.
pub fn endpoint_of(device: &Device) -> EndpointKey {
    EndpointKey {
        app_version: device.app_version.clone(),
        token: device.token.clone(),
    }
}

/// Runs a simulated device every `poll_interval` until `shutdown`.
pub async fn run_simulated(device: Device, buffer: BufferHandle, shutdown: CancellationToken) {
    let DeviceSource::Simulated(sim) = &device.source else {
        return;
    };
    let poller = simulated::SimulatedPoller::new(sim.clone());
    let key = endpoint_of(&device);
    let mut tick = tokio::time::interval(device.poll_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = crate::now_ms();
        let sample = NewSample {
            endpoint: key.clone(),
            ts_ms: now,
            payload: sample_json(now, &poller.poll(now)),
        };
        // Not cancelled by shutdown: a sample taken is made durable first.
        if let Err(e) = buffer.append(vec![sample]).await {
            log::error!(
                "device {}: sample lost, buffer refused it: {e}",
                device.name
            );
        }
    }
}
