//! The Modbus bus actor against a real Modbus TCP server (tokio-modbus): it polls every
//! point into the buffer with the right values, writes through its handle ahead of polls,
//! and reports typed write outcomes.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{modbus_server, wait_for, Registers};
use kp_gateway::buffer::{BufferHandle, LeaseLimits};
use kp_gateway::config::Config;
use kp_gateway::source::health::{HealthRegistry, HealthState};
use kp_gateway::source::modbus::{BusActor, WriteError};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

fn config(addr: std::net::SocketAddr, state: &std::path::Path) -> Config {
    let text = format!(
        r#"
[gateway]
state_dir = "{}"
[upstream]
host = "127.0.0.1"
[[modbus.buses]]
name = "plant"
kind = "tcp"
address = "{addr}"
timeout_ms = 5000
[[devices]]
name = "boiler"
token = "boiler"
app_version = "plant-v1"
poll_interval_ms = 100
[devices.modbus]
bus = "plant"
[[devices.points]]
name = "temperature"
address = 0
type = "i16"
scale = 0.1
[[devices.points]]
name = "setpoint"
address = 2
type = "f32"
order = "CDAB"
writable = true
readback = true
[[devices.points]]
name = "counter"
address = 4
type = "u32"
"#,
        state.display()
    );
    Config::from_toml(&text).expect("valid config")
}

/// The latest sample of the buffer, parsed.
async fn latest(buffer: &BufferHandle) -> Option<Value> {
    let limits = LeaseLimits {
        max_samples: 10_000,
        max_bytes: 1 << 24,
        max_batches: 8,
        live_window: Duration::from_secs(3600),
    };
    let batches = buffer.lease(limits, vec![]).await.ok()?;
    let last = batches
        .iter()
        .flat_map(|b| b.samples.iter())
        .last()
        .cloned();
    for b in batches {
        buffer.release(b.key).await.ok()?;
    }
    serde_json::from_str(&last?).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_polls_every_point_and_writes_through_its_handle() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    // temperature -12.3 °C (i16 × 0.1), setpoint 21.5 as f32 CDAB, counter 70000 as u32.
    let sp = 21.5f32.to_bits();
    let regs = Registers::new(&[
        (-123i16) as u16,
        0,
        (sp & 0xffff) as u16,
        (sp >> 16) as u16,
        1,
        4464,
    ]);
    let addr = modbus_server(regs.clone(), stop.clone()).await;
    let cfg = config(addr, dir.path());
    let (buffer, _thread) = BufferHandle::open(
        &dir.path().join("buffer.sqlite"),
        cfg.buffer.synchronous,
        cfg.buffer.bounds,
    )
    .unwrap();
    let health = HealthRegistry::default();
    let bus = cfg.buses[0].clone();
    let (actor, handle) = BusActor::new(bus, &cfg.devices, buffer.clone(), health.clone());
    let task = tokio::spawn(actor.run(stop.clone()));

    let sample = wait_for("a sample with every point", || async {
        latest(&buffer).await.filter(|s| s.get("counter").is_some())
    })
    .await;
    assert_eq!(sample["temperature"], json!(-12.3));
    assert_eq!(sample["setpoint"], json!(21.5));
    assert_eq!(sample["counter"], json!(70000));
    assert!(sample["timestamp"].as_i64().unwrap() > 1_600_000_000_000);
    assert_eq!(health.snapshot()["boiler"].state, HealthState::Ok);

    // A write goes to the device, is read back, and the point holds the new value.
    let held = handle.write("boiler", "setpoint", json!(18.25)).await;
    assert_eq!(held, Ok(json!(18.25)));
    let bits = u32::from(regs.get(2)) | (u32::from(regs.get(3)) << 16);
    assert_eq!(f32::from_bits(bits), 18.25);

    // Typed refusals: the downlink maps them to 11/CEP codes.
    assert_eq!(
        handle.write("boiler", "temperature", json!(1)).await,
        Err(WriteError::NotWritable("temperature".into()))
    );
    assert!(matches!(
        handle.write("boiler", "nope", json!(1)).await,
        Err(WriteError::NoPoint { .. })
    ));
    assert!(matches!(
        handle.write("boiler", "setpoint", json!("warm")).await,
        Err(WriteError::BadValue { .. })
    ));

    stop.cancel();
    task.await.unwrap();
    // With the actor gone, a write says so instead of hanging.
    assert!(matches!(
        handle.write("boiler", "setpoint", json!(1)).await,
        Err(WriteError::BusNotRunning(_))
    ));
}
