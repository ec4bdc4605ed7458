//! Field sources: the tasks that produce data samples.
//!
//! - `modbus`: one task per Modbus bus, polling every slave on it (the bus scheduler);
//! - `serial_line`: one task per line-printing serial sensor;
//! - `simulated`: one task per simulated device (deterministic waveforms).
//!
//! Every source builds its samples with [`crate::sample::Sample`]; a sample is durable in
//! the buffer before the source moves on. Failures are
//! logged when they start and when they end, not on every cycle, so a dead device does
//! not flood the log.

pub mod health;
pub mod line_format;
pub mod modbus;
pub mod serial;
pub mod serial_line;
pub mod simulated;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::buffer::BufferHandle;
use std::time::Duration;

use platform_core::kp1::{AppVersionName, EndpointToken};

use crate::endpoint::Endpoint;
use crate::sample::Sample;
use modbus::ModbusDevice;
use serial_line::SerialLineDevice;
use simulated::SimulatedDevice;

/// One cycle's values, in point order.
pub type Values = Vec<(String, f64)>;

/// The endpoint a device reports as.
pub fn endpoint_of(device: &Device) -> Endpoint {
    Endpoint::new(device.app_version.clone(), device.token.clone())
}

/// Runs a simulated device every `poll_interval` until `shutdown`.
pub async fn run_simulated(
    device: Device,
    buffer: BufferHandle,
    health: health::HealthRegistry,
    shutdown: CancellationToken,
) {
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
        health.update(&device.name, |h| {
            h.state = health::HealthState::Ok;
            h.polls += 1;
            h.last_success_ms = Some(now);
        });
        let sample = poller
            .poll(now)
            .into_iter()
            .fold(Sample::builder(key.clone(), now), |s, (name, v)| {
                s.value(name, serde_json::json!(v))
            })
            .build();
        // Not cancelled by shutdown: a sample taken is made durable first.
        if let Err(e) = buffer.append(vec![sample]).await {
            crate::buffer::log_refusal(&format!("device {}", device.name), &e);
        }
    }
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
