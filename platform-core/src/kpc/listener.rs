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

use super::connection::serve;
use super::context::{ConnContext, Peer};
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

/// Connections the kernel completes and queues for a listener before it accepts them
/// (capped by `net.core.somaxconn`, 4 096 by default). A site's devices reconnect all at
/// once after a power cut: with a queue smaller than the storm, the kernel drops the
/// handshakes that do not fit and those clients retry a second or more later.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener (port 0 picks a free port, `SO_REUSEADDR` so a restart finds its
/// port free) and returns it with its address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let l = socket.listen(LISTEN_BACKLOG)?;
    let local = l.local_addr()?;
    Ok((l, local))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A storm larger than the queue the standard library's and mio's bind ask for
    /// (128) and than a backlog of 1 024 completes its handshakes while the listener
    /// accepts nothing yet; none is dropped to retry later.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_storm_bigger_than_a_default_backlog_is_queued_whole() {
        const STORM: usize = 1500;
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let limit = getrlimit(Resource::Nofile);
        let need = (STORM + 100) as u64;
        if limit.current.is_some_and(|c| c < need) {
            let raised = Rlimit {
                current: Some(limit.maximum.map_or(need, |m| m.min(need))),
                maximum: limit.maximum,
            };
            setrlimit(Resource::Nofile, raised).expect("raise the open-files limit");
        }
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096);
        assert!(
            somaxconn >= STORM,
            "net.core.somaxconn is {somaxconn}, below this test's storm"
        );
        let (listener, addr) = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let mut storm = tokio::task::JoinSet::new();
        for _ in 0..STORM {
            storm.spawn(tokio::net::TcpStream::connect(addr));
        }
        let mut connected = Vec::with_capacity(STORM);
        let all = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(done) = storm.join_next().await {
                connected.push(done.expect("task").expect("connect"));
            }
        })
        .await;
        assert!(
            all.is_ok(),
            "only {} of {STORM} handshakes completed without an accept",
            connected.len()
        );
        drop(listener);
    }
}
