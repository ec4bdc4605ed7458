//! The MQTT listeners over TCP and TLS: accept connections, spawn one task per connection.
//!
//! Connections beyond `max_connections` are closed at once (before CONNECT is read), so
//! a flood cannot exhaust memory. A TLS handshake must finish within the connect timeout;
//! a failed handshake is counted and logged (rate-limited) and affects no one else. On
//! shutdown the listener stops accepting and waits for its connections to close (each
//! sees the same cancellation token).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::connection::{serve, ConnContext, Peer};
use super::quickack::QuickAck;
use super::stats::Incident;
use crate::ccm::fingerprint_der;

/// Accepts MQTT clients on `listener` until `shutdown` fires; TLS when `tls` is given.
pub async fn run(
    listener: TcpListener,
    ctx: Arc<ConnContext>,
    tls: Option<TlsAcceptor>,
    max_connections: usize,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            // Shutdown wins: stop accepting, then drain connections below.
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        log::warn!("mqtt accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    ctx.stats.report(Incident::ConnectionLimit, || format!(
                        "mqtt connection from {peer} refused: limit of {max_connections} connections reached"
                    ));
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (ctx, tls, shutdown) = (ctx.clone(), tls.clone(), shutdown.clone());
                conns.spawn(async move {
                    match tls {
                        None => {
                            let who = Peer { addr: peer, transport: "tcp", cert_fingerprint: None };
                            serve(QuickAck(stream), who, ctx, shutdown).await;
                        }
                        // Boxed: the TLS state would otherwise size every connection's task.
                        Some(acceptor) => {
                            Box::pin(serve_tls(stream, peer, acceptor, ctx, shutdown)).await
                        }
                    }
                    drop(permit);
                });
            }
            // Reap finished connection tasks so the set does not grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    while conns.join_next().await.is_some() {}
}

async fn serve_tls(
    stream: TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    ctx: Arc<ConnContext>,
    shutdown: CancellationToken,
) {
    let handshake = tokio::time::timeout(
        ctx.limits.connect_timeout,
        acceptor.accept(QuickAck(stream)),
    );
    let tls = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = handshake => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                ctx.stats.report(Incident::TransportError, || format!("mqtt tls {addr}: handshake failed: {e}"));
                return;
            }
            Err(_) => {
                ctx.stats.report(Incident::TransportError, || format!("mqtt tls {addr}: handshake timed out"));
                return;
            }
        },
    };
    let cert_fingerprint = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|c| fingerprint_der(c.as_ref()));
    let who = Peer {
        addr,
        transport: "tls",
        cert_fingerprint,
    };
    serve(tls, who, ctx, shutdown).await;
}

/// Binds a listener (port 0 picks a free port) and returns it with its address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr).await?;
    let local = l.local_addr()?;
    Ok((l, local))
}
