//! The plain-TCP MQTT listener: accepts connections and spawns one task per connection.
//!
//! Connections beyond `max_connections` are closed at once (before CONNECT is read), so
//! a flood cannot exhaust memory. On shutdown the listener stops accepting and waits for
//! its connections to close (each sees the same cancellation token).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::connection::{serve, ConnectionLimits};
use super::hub::Hub;
use super::router::Router;
use crate::ccm::Authenticator;

/// Accepts MQTT clients on `listener` until `shutdown` fires.
pub async fn run(
    listener: TcpListener,
    router: Router,
    auth: Authenticator,
    limits: ConnectionLimits,
    max_connections: usize,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let hub = Hub::new();
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
                    log::warn!("mqtt connection from {peer} refused: limit of {max_connections} connections reached");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (router, auth, hub, shutdown) = (router.clone(), auth.clone(), hub.clone(), shutdown.clone());
                conns.spawn(async move {
                    serve(stream, peer, router, auth, hub, limits, shutdown).await;
                    drop(permit);
                });
            }
            // Reap finished connection tasks so the set does not grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    while conns.join_next().await.is_some() {}
}

/// Binds the listener (port 0 picks a free port) and returns it with its address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr).await?;
    let local = l.local_addr()?;
    Ok((l, local))
}
