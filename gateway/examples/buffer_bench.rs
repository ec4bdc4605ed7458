//! Benchmark: how fast the buffer takes samples durably, and how fast a large backlog
//! drains to a local upstream (the embedded platform core over MQTT on 127.0.0.1).
//!
//! Usage: `cargo run --release -p kp-gateway --example buffer_bench -- [backlog] [secs]`
//! (default 1 000 000 samples, 5 s per append run). Prints samples/s and the process RSS.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use kp_gateway::buffer::BufferHandle;
use kp_gateway::buffer::Synchronous;
use kp_gateway::endpoint::Endpoint;
use kp_gateway::sample::Sample;
use kp_gateway::self_report::rss_bytes;
use kp_gateway::upstream::{ClientState, Upstream, UpstreamSession};
use platform_core::kp1::{AppVersionName, EndpointToken};
use platform_core::secret::Secret;
use platform_core::{ccm, epr, Core, CoreConfig};
use tokio_util::sync::CancellationToken;

const DEVICES: usize = 10;

fn key(i: usize) -> Endpoint {
    Endpoint {
        app_version: AppVersionName::new("bench-v1").expect("valid"),
        token: EndpointToken::new(&format!("dev{i}")).expect("valid"),
    }
}

fn cycle(n: u64) -> Vec<Sample> {
    let ts = 1_700_000_000_000 + n as i64 * 1000;
    (0..DEVICES)
        .map(|i| Sample {
            endpoint: key(i),
            ts_ms: ts,
            payload: format!(
                r#"{{"timestamp":{ts},"temperature":{}.5,"pressure":1.0{},"running":true}}"#,
                n % 40,
                i
            ),
        })
        .collect()
}

fn mib(b: Option<u64>) -> String {
    b.map_or("?".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let backlog: u64 = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let secs: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5.0);
    let dir = tempfile_dir();
    let _ = rustls::crypto::ring::default_provider().install_default();

    // 1. Durable appends: one transaction per poll cycle of 10 devices.
    for sync in [Synchronous::Full, Synchronous::Normal] {
        let path = dir.join(format!("append-{sync:?}.sqlite"));
        let (b, _) = BufferHandle::open(&path, sync, Default::default()).expect("open");
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            b.append(cycle(n)).await.expect("append");
            n += 1;
        }
        let rate = (n * DEVICES as u64) as f64 / start.elapsed().as_secs_f64();
        println!("append, synchronous={sync:?}: {rate:>9.0} samples/s ({:.0} commits/s of {DEVICES} samples)", n as f64 / secs);
    }

    // 2. A backlog of `backlog` samples, then drain it to the embedded core.
    let path = dir.join("backlog.sqlite");
    let (buffer, _) =
        BufferHandle::open(&path, Synchronous::Normal, Default::default()).expect("open");
    let fill = Instant::now();
    let mut n = 0u64;
    while n * (DEVICES as u64) < backlog {
        let mut group = Vec::with_capacity(DEVICES * 100);
        for _ in 0..100 {
            group.extend(cycle(n));
            n += 1;
        }
        buffer.append(group).await.expect("append");
    }
    let stats = buffer.stats().await.expect("stats");
    println!(
        "backlog: {} samples ({} payload bytes) written in {:.1} s; RSS {}",
        stats.pending,
        stats.bytes,
        fill.elapsed().as_secs_f64(),
        mib(rss_bytes())
    );

    let stop = CancellationToken::new();
    let hash = ccm::hash_password("bench").expect("hash");
    let core = Core::start(
        CoreConfig {
            max_payload_bytes: 1 << 20,
            applications: vec![epr::ApplicationSpec {
                name: "bench".into(),
                versions: vec!["bench-v1".into()],
            }],
            endpoints: (0..DEVICES)
                .map(|i| epr::EndpointSpec {
                    id: None,
                    token: format!("dev{i}").into(),
                    app_version: "bench-v1".into(),
                    metadata: Default::default(),
                })
                .collect(),
            credentials: vec![ccm::BasicCredentialSpec {
                username: "bench".into(),
                password_hash: hash.into(),
                applications: Some(vec!["*".into()]),
                endpoints: vec![],
            }],
            ..CoreConfig::new(dir.join("core.sqlite"))
        },
        stop.clone(),
    )
    .await
    .expect("core");
    let upstream = Upstream {
        client_id: "bench".into(),
        username: Some("bench".into()),
        password: Some(Secret::new("bench")),
        batch_max_samples: 500,
        reconnect_max: Duration::from_secs(1),
        ..Upstream::new("127.0.0.1", core.mqtt_addr.port())
    };
    let endpoints = (0..DEVICES).map(key).collect();
    let state = ClientState::new(endpoints, BTreeMap::new(), upstream.reconnect_max);
    let session = UpstreamSession::new(upstream, buffer.clone(), state, HashMap::new());
    let drain = Instant::now();
    let task = tokio::spawn(session.run(stop.clone()));
    let mut peak_rss = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak_rss = peak_rss.max(rss_bytes().unwrap_or(0));
        let s = buffer.stats().await.expect("stats");
        if s.pending == 0 {
            break;
        }
    }
    let took = drain.elapsed().as_secs_f64();
    println!(
        "drain: {} samples in {took:.1} s = {:.0} samples/s into the core (stored, time series written); peak RSS {}",
        stats.pending,
        stats.pending as f64 / took,
        mib(Some(peak_rss))
    );
    stop.cancel();
    let _ = task.await;
    core.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("kp-buffer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}
