//! The HTTP listener under idle and excess connections: the connection over the cap is
//! closed at once and counted, idle sockets are closed after the idle time, the MQTT
//! listener keeps accepting meanwhile, and the HTTP listener serves again afterwards.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use platform_core::config::HttpListener;
use platform_core::kpc::stats::Incident;
use platform_core::{Core, CoreConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const CAP: usize = 4;

/// Waits for the server to close `s` (EOF or reset), for at most 60 s.
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

async fn core(dir: &std::path::Path, idle: Duration, stop: &CancellationToken) -> Core {
    let mut config = CoreConfig {
        http: Some(HttpListener {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            websocket: true,
            websocket_allow_anonymous: false,
            tls: None,
            max_connections: CAP,
            idle_timeout: idle,
        }),
        ..CoreConfig::new(dir.join("core.sqlite"))
    };
    config.mqtt.allow_anonymous = true;
    Core::start(config, stop.clone()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_over_the_cap_is_closed_and_mqtt_still_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    // An idle time far longer than the test: no slot frees itself meanwhile.
    let core = core(dir.path(), Duration::from_secs(3600), &stop).await;
    let http = core.http_addr.unwrap();

    // CAP sockets that never send a byte (slowloris), then one more.
    let mut idle = Vec::new();
    for _ in 0..CAP {
        idle.push(TcpStream::connect(http).await.unwrap());
    }
    // One more is accepted and closed at once (counted).
    let mut extra = TcpStream::connect(http).await.unwrap();
    assert!(
        closed_by_server(&mut extra).await,
        "the connection over the cap is closed"
    );
    assert!(core.stats.get(Incident::ConnectionLimit) >= 1);

    // MQTT still accepts while HTTP is full.
    let mut mqtt = TcpStream::connect(core.mqtt_addr).await.unwrap();
    mqtt.write_all(&[
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b'm',
    ])
    .await
    .unwrap();
    let mut connack = [0u8; 4];
    mqtt.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
    drop(idle);
    stop.cancel();
    core.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_are_closed_and_the_listener_serves_again() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let core = core(dir.path(), Duration::from_secs(1), &stop).await;
    let http = core.http_addr.unwrap();
    let mut idle = Vec::new();
    for _ in 0..CAP {
        idle.push(TcpStream::connect(http).await.unwrap());
    }
    // The idle sockets are closed by the server after the idle time.
    for s in &mut idle {
        assert!(closed_by_server(s).await, "an idle socket is closed");
    }
    // And the listener serves a real request again.
    let mut req = TcpStream::connect(http).await.unwrap();
    req.write_all(
        b"POST /kp1/x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    req.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    stop.cancel();
    core.wait().await;
}
