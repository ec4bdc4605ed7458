//! The gateway as an endpoint of its own: every `health_interval_secs` it stores a health
//! sample (buffer depth and age, drops, dead letters, upstream state, device health,
//! CPU and memory) in the buffer, so it reaches the platform like any reading.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::buffer::BufferHandle;
use std::time::Duration;

use crate::endpoint::Endpoint;
use crate::sample::Sample;
use crate::source::health::{HealthRegistry, HealthState};
use crate::upstream::LinkStatus;
use platform_core::kp1::{AppVersionName, EndpointToken};

/// Kernel clock ticks per second for /proc CPU times (USER_HZ, 100 on Linux everywhere).
const USER_HZ: f64 = 100.0;

/// Resident memory of this process in bytes (`VmRSS` of /proc/self/status).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// User + system CPU time of this process, in seconds.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the ")" that ends the command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// The values of one health sample (pure apart from reading /proc).
pub fn health_values(
    stats: &crate::buffer::BufferStats,
    connected: bool,
    devices: &HealthRegistry,
    now_ms: i64,
    cpu_percent: Option<f64>,
) -> Map<String, Value> {
    let snapshot = devices.snapshot();
    let count = |state| snapshot.values().filter(|h| h.state == state).count();
    let mut m = Map::new();
    m.insert("buffer_pending".into(), stats.pending.into());
    m.insert("buffer_bytes".into(), stats.bytes.into());
    m.insert(
        "buffer_oldest_age_s".into(),
        stats
            .oldest_ts_ms
            .map_or(0.0, |t| ((now_ms - t).max(0) as f64) / 1000.0)
            .into(),
    );
    m.insert("buffer_dropped".into(), stats.dropped_total().into());
    m.insert("dead_letters".into(), stats.dead_letters.into());
    m.insert("upstream_connected".into(), connected.into());
    m.insert("devices_ok".into(), count(HealthState::Ok).into());
    m.insert("devices_failing".into(), count(HealthState::Failing).into());
    if let Some(rss) = rss_bytes() {
        m.insert("rss_bytes".into(), rss.into());
    }
    if let Some(cpu) = cpu_percent {
        m.insert("cpu_percent".into(), ((cpu * 10.0).round() / 10.0).into());
    }
    m.insert("devices".into(), json!(snapshot));
    m
}

/// Appends a health sample for `own` every interval until `shutdown`.
pub async fn run(
    own: OwnEndpoint,
    buffer: BufferHandle,
    devices: HealthRegistry,
    link: Arc<LinkStatus>,
    shutdown: CancellationToken,
) {
    let key = Endpoint::new(own.app_version.clone(), own.token.clone());
    let mut tick = tokio::time::interval(own.interval);
    let mut last_cpu: Option<(Instant, f64)> = cpu_seconds().map(|c| (Instant::now(), c));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let cpu_percent = match (last_cpu, cpu_seconds()) {
            (Some((t, before)), Some(now)) => {
                let wall = t.elapsed().as_secs_f64();
                last_cpu = Some((Instant::now(), now));
                (wall > 0.0).then(|| (now - before) / wall * 100.0)
            }
            _ => None,
        };
        let stats = match buffer.stats().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("health report: cannot read buffer stats: {e}");
                continue;
            }
        };
        let ts = crate::now_ms();
        let mut values = health_values(&stats, link.is_connected(), &devices, ts, cpu_percent);
        // Loud until the next clean start: a damaged buffer was found and kept aside.
        if let Some(kept) = &buffer.recovered_from {
            values.insert(
                "buffer_recovered_from".into(),
                kept.display().to_string().into(),
            );
        }
        let sample = Sample::builder(key.clone(), ts).values(values).build();
        if let Err(e) = buffer.append(vec![sample]).await {
            crate::buffer::log_refusal("health report", &e);
        }
    }
}

/// The gateway as an endpoint of its own.
#[derive(Debug, Clone)]
pub struct OwnEndpoint {
    pub token: EndpointToken,
    pub app_version: AppVersionName,
    pub interval: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_readings_are_plausible() {
        let rss = rss_bytes().unwrap();
        assert!(rss > 100_000 && rss < 10_000_000_000, "{rss}");
        assert!(cpu_seconds().unwrap() >= 0.0);
    }

    #[test]
    fn the_health_sample_has_the_documented_fields() {
        let devices = HealthRegistry::default();
        devices.update("a", |h| h.state = HealthState::Ok);
        devices.update("b", |h| h.state = HealthState::Failing);
        let stats = crate::buffer::BufferStats {
            pending: 5,
            oldest_ts_ms: Some(1_000),
            ..Default::default()
        };
        let m = health_values(&stats, true, &devices, 11_000, Some(12.34));
        assert_eq!(m["buffer_pending"], 5);
        assert_eq!(m["buffer_oldest_age_s"], 10.0);
        assert_eq!(m["upstream_connected"], true);
        assert_eq!(
            (m["devices_ok"].clone(), m["devices_failing"].clone()),
            (json!(1), json!(1))
        );
        assert_eq!(m["cpu_percent"], 12.3);
        assert_eq!(m["devices"]["b"]["state"], "failing");
    }
}
