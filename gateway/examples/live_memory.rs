//! Benchmark: memory of the web page's live values (latest reading + one hour of
//! 10-second means per point) with D devices × P points sampled every second for a full
//! simulated hour and more, and the time `record` takes per sample.
//!
//! Usage: `cargo run --release -p kp-gateway --example live_memory -- [devices] [points]`
//! (default 50 × 30). Prints RSS before and after, tracked points and buckets.

use std::time::Instant;

use kp_gateway::endpoint::Endpoint;
use kp_gateway::live::LiveValues;
use kp_gateway::sample::Sample;
use kp_gateway::self_report::rss_bytes;
use platform_core::kp1::{AppVersionName, EndpointToken};

fn main() {
    let mut args = std::env::args().skip(1);
    let devices: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let points: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(30);
    let endpoints: Vec<Endpoint> = (0..devices)
        .map(|d| {
            Endpoint::new(
                AppVersionName::new("bench-v1").expect("valid"),
                EndpointToken::new(&format!("dev{d}")).expect("valid"),
            )
        })
        .collect();
    let before = rss_bytes().unwrap_or(0);
    let live = LiveValues::default();
    // 75 minutes of 1 s polls: the history is full (one hour) and has wrapped.
    let seconds = 75 * 60;
    let started = Instant::now();
    let mut samples = 0u64;
    for s in 0..seconds {
        for (d, ep) in endpoints.iter().enumerate() {
            let mut b = Sample::builder(ep.clone(), 1_700_000_000_000 + s * 1000);
            for p in 0..points {
                b = b.value(
                    format!("p{p}"),
                    serde_json::json!((s as f64 + d as f64) * 0.1 + p as f64),
                );
            }
            live.record(&[b.build()]);
            samples += 1;
        }
    }
    let took = started.elapsed();
    let after = rss_bytes().unwrap_or(0);
    let (tracked, buckets) = live.size();
    println!(
        "devices={devices} points/device={points} samples={samples} (1 s polls for {} min)",
        seconds / 60
    );
    println!("tracked points={tracked} history buckets={buckets}");
    println!(
        "rss before={:.1} MiB after={:.1} MiB added={:.2} MiB ({:.0} bytes per point)",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        (after.saturating_sub(before)) as f64 / 1048576.0,
        after.saturating_sub(before) as f64 / tracked.max(1) as f64
    );
    println!(
        "record: {:.1} µs per sample of {points} values ({:.0} samples/s on one core)",
        took.as_secs_f64() * 1e6 / samples as f64,
        samples as f64 / took.as_secs_f64()
    );
}
