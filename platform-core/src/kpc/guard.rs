//! Connection cap and idle deadline for the HTTP listener (REST API, 1/KP binding,
//! WebSocket), so idle or trickling sockets cannot lock everyone out.
//!
//! - [`GuardedListener`] admits at most `max_connections` connections at once; one more is
//!   accepted and closed at once (counted as a connection-limit refusal), so the kernel's
//!   backlog never fills with sockets nobody will serve.
//! - [`Guarded`] closes a connection on which nothing was read or written for `idle`: a
//!   socket that never sends a request, stops mid-header (slowloris), or idles between
//!   keep-alive requests. A WebSocket that carries MQTT keeps it alive with its own
//!   traffic (MQTT keepalive pings are far shorter than the default idle time).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use super::stats::{Incident, Stats};

/// A listener that admits a bounded number of connections with an idle deadline each.
#[derive(Debug)]
pub struct GuardedListener<L> {
    inner: L,
    slots: Arc<Semaphore>,
    idle: Duration,
    stats: Stats,
}

impl<L> GuardedListener<L> {
    pub fn new(inner: L, max_connections: usize, idle: Duration, stats: Stats) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
            idle,
            stats,
        }
    }
}

impl<L: Listener> Listener for GuardedListener<L> {
    type Io = Guarded<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = self.inner.accept().await;
            match self.slots.clone().try_acquire_owned() {
                Ok(permit) => return (Guarded::new(io, permit, self.idle), addr),
                Err(_) => {
                    self.stats.report(Incident::ConnectionLimit, || {
                        "http: connection limit reached; closing a new connection".to_owned()
                    });
                    drop(io);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that holds its slot and fails once idle for too long.
#[derive(Debug)]
pub struct Guarded<IO> {
    io: IO,
    _slot: OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<IO> Guarded<IO> {
    fn new(io: IO, slot: OwnedSemaphorePermit, idle: Duration) -> Self {
        Self {
            io,
            _slot: slot,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn touch(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// Pending I/O: an error once the deadline passed (the caller then closes).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle for too long")
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.touch();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_fails_after_the_idle_time_and_traffic_keeps_it_alive() {
        let (client, server) = tokio::io::duplex(64);
        let slots = Arc::new(Semaphore::new(1));
        let permit = slots.clone().try_acquire_owned().unwrap();
        let mut g = Guarded::new(server, permit, Duration::from_secs(30));
        let mut client = client;
        let mut buf = [0u8; 8];
        // Traffic every 20 s (less than the idle time) keeps it open.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(20)).await;
            client.write_all(b"x").await.unwrap();
            assert_eq!(g.read(&mut buf).await.unwrap(), 1);
        }
        // Silence: the next read fails once 30 s passed.
        let err = g.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // Its slot is free again once the connection is gone.
        drop(g);
        assert_eq!(slots.available_permits(), 1);
    }
}
