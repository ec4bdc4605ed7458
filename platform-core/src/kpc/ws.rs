//! MQTT over WebSocket on `GET /ws` (subprotocol `mqtt`), served on the HTTP listener.
//!
//! Each WebSocket becomes a byte stream for the ordinary MQTT connection actor: binary
//! messages carry MQTT bytes in, server bytes go out as binary messages. Frames need not
//! align with MQTT packets (MQTT 3.1.1 §6). A text message is a protocol error and closes
//! the connection. The MQTT listener's limits apply (max packet size, connection limit).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router as HttpRouter;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::connection::serve;
use super::context::{ConnContext, Peer};
use super::stats::Incident;

/// Size of the in-memory pipe between the WebSocket and the MQTT connection actor.
const PIPE_BYTES: usize = 64 * 1024;

#[derive(Clone)]
struct WsState {
    ctx: Arc<ConnContext>,
    slots: Arc<Semaphore>,
    max_connections: usize,
    shutdown: CancellationToken,
}

/// The `/ws` route.
pub fn routes(
    ctx: Arc<ConnContext>,
    max_connections: usize,
    shutdown: CancellationToken,
) -> HttpRouter {
    HttpRouter::new()
        .route("/ws", get(upgrade))
        .with_state(WsState {
            ctx,
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            shutdown,
        })
}

async fn upgrade(
    State(s): State<WsState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let Ok(permit) = s.slots.clone().try_acquire_owned() else {
        s.ctx.stats.report(Incident::ConnectionLimit, || {
            format!(
                "mqtt ws {addr}: refused, limit of {} connections reached",
                s.max_connections
            )
        });
        return (StatusCode::SERVICE_UNAVAILABLE, "connection limit reached").into_response();
    };
    let max = s.ctx.limits.max_packet_size;
    ws.protocols(["mqtt"])
        .max_message_size(max.saturating_add(16))
        .max_frame_size(max.saturating_add(16))
        .on_upgrade(move |socket| async move {
            bridge(socket, addr, s.ctx, s.shutdown).await;
            drop(permit);
        })
}

async fn bridge(
    socket: WebSocket,
    addr: SocketAddr,
    ctx: Arc<ConnContext>,
    shutdown: CancellationToken,
) {
    let (mqtt_side, ws_side) = tokio::io::duplex(PIPE_BYTES);
    let stats = ctx.stats.clone();
    let peer = Peer {
        addr,
        transport: "ws",
        cert_fingerprint: None,
    };
    let conn = tokio::spawn(serve(mqtt_side, peer, ctx, shutdown));
    let (mut from_conn, mut to_conn) = tokio::io::split(ws_side);
    let (mut sink, mut stream) = socket.split();
    // Client → MQTT actor.
    let up = async move {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(Message::Binary(data)) => {
                    if to_conn.write_all(&data).await.is_err() {
                        break;
                    }
                }
                Ok(Message::Text(_)) => {
                    stats.report(Incident::TransportError, || {
                        format!("mqtt ws {addr}: text frame (MQTT needs binary frames), closing")
                    });
                    break;
                }
                Ok(Message::Close(_)) => break,
                Ok(_) => {} // ping/pong are answered by the WebSocket layer
                Err(e) => {
                    stats.report(Incident::TransportError, || format!("mqtt ws {addr}: {e}"));
                    break;
                }
            }
        }
        let _ = to_conn.shutdown().await;
    };
    // MQTT actor → client.
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from_conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let data = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
                    if sink.send(Message::Binary(data)).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    };
    tokio::pin!(up, down);
    tokio::select! {
        _ = &mut down => {}
        _ = &mut up => down.await,
    }
    let _ = conn.await;
}
