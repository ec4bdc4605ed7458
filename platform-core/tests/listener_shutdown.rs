//! Shutting the core down: every listener stops accepting, live connections are closed,
//! `Core::wait` returns, and the ports are free for the next start.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use platform_core::config::HttpListener;
use platform_core::{Core, CoreConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

fn config(dir: &std::path::Path) -> CoreConfig {
    let mut config = CoreConfig {
        http: Some(HttpListener {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            websocket: true,
            websocket_allow_anonymous: true,
            tls: None,
            max_connections: 16,
            idle_timeout: Duration::from_secs(30),
        }),
        ..CoreConfig::new(dir.join("core.sqlite"))
    };
    config.mqtt.allow_anonymous = true;
    config
}

/// An MQTT 3.1.1 CONNECT without credentials, keepalive 60 s, client ID "c".
const CONNECT: [u8; 15] = [
    0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'c',
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_live_connections_and_frees_the_ports() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let core = Core::start(config(dir.path()), stop.clone()).await.unwrap();
    let (mqtt, http) = (core.mqtt_addr, core.http_addr.expect("http"));

    // A live, accepted MQTT session and an idle HTTP connection.
    let mut client = TcpStream::connect(mqtt).await.unwrap();
    client.write_all(&CONNECT).await.unwrap();
    let mut connack = [0u8; 4];
    client.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "accepted");
    let mut idle_http = TcpStream::connect(http).await.unwrap();

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), core.wait())
        .await
        .expect("the core stops in time");

    // The server closed both connections (EOF or reset, never a hang).
    for s in [&mut client, &mut idle_http] {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
            .await
            .expect("closed, not left open");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    // Nobody accepts on the ports any more, and they can be bound again.
    assert!(TcpStream::connect(mqtt).await.is_err());
    std::net::TcpListener::bind(mqtt).expect("MQTT port free");
    std::net::TcpListener::bind(http).expect("HTTP port free");
}
