//! Field sources: one polling task per device, each producing one data sample per cycle.
//!
//! A sample is the JSON object `{"timestamp": <epoch ms>, "<point>": <value>, ...}` that
//! 2/DCP carries; it goes to the buffer (and is durable there) before the next cycle.
//! A read that fails leaves its point out of the sample; a cycle where every point failed
//! produces no sample. Failures are logged when they start and when they end, not on
//! every cycle, so a dead device does not flood the log.

pub mod modbus;
pub mod simulated;

use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::buffer::{BufferHandle, EndpointKey, NewSample};
use crate::config::{Device, DeviceSource};

/// Why a poll cycle produced no values.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("transport: {0}")]
    Transport(String),
    #[error("every point failed; first: {0}")]
    AllPointsFailed(String),
}

/// One cycle's values, in point order.
pub type Values = Vec<(String, f64)>;

enum Poller {
    Modbus(modbus::ModbusTcpPoller),
    Simulated(simulated::SimulatedPoller),
}

impl Poller {
    async fn poll(&mut self, now_ms: i64) -> Result<Values, SourceError> {
        match self {
            Self::Modbus(p) => p.poll().await,
            Self::Simulated(p) => Ok(p.poll(now_ms)),
        }
    }
}

/// Renders a sample object; non-finite values never reach here (decode rejects them).
pub fn sample_json(ts_ms: i64, values: &Values) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("timestamp".into(), ts_ms.into());
    for (name, v) in values {
        obj.insert(name.clone(), serde_json::json!(v));
    }
    serde_json::Value::Object(obj).to_string()
}

/// Polls `device` every `poll_interval` until `shutdown`, appending samples to `buffer`.
pub async fn run_device(device: Device, buffer: BufferHandle, shutdown: CancellationToken) {
    let key = EndpointKey {
        app_version: device.app_version.clone(),
        token: device.token.clone(),
    };
    let mut poller = match device.source {
        DeviceSource::ModbusTcp(m) => Poller::Modbus(modbus::ModbusTcpPoller::new(m)),
        DeviceSource::Simulated(s) => Poller::Simulated(simulated::SimulatedPoller::new(s)),
    };
    let mut tick = tokio::time::interval(device.poll_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = crate::now_ms();
        let values = tokio::select! {
            // A poll in progress is abandoned on shutdown: nothing was taken yet.
            _ = shutdown.cancelled() => break,
            v = poller.poll(now) => v,
        };
        match values {
            Ok(values) => {
                if failing {
                    log::info!("device {}: reading again", device.name);
                    failing = false;
                }
                let sample = NewSample {
                    endpoint: key.clone(),
                    ts_ms: now,
                    payload: sample_json(now, &values),
                };
                // Not cancelled by shutdown: a sample taken is made durable first.
                if let Err(e) = buffer.append(vec![sample]).await {
                    log::error!(
                        "device {}: sample lost, buffer refused it: {e}",
                        device.name
                    );
                }
            }
            Err(e) => {
                if !failing {
                    log::warn!("device {}: poll failed: {e}", device.name);
                    failing = true;
                }
            }
        }
    }
}
