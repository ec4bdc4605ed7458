//! A TCP stream that chooses, after every read that returned data, whether the kernel
//! acknowledges what arrives next at once (`TCP_QUICKACK` on) or delays its ACKs (off).
//!
//! Quick ACKs while the core has room: a client with Nagle's algorithm on (rumqttc's and
//! paho's default) holds a small packet back while an earlier one is unacknowledged. A
//! request is answered only after its group commit, and a packet that needs no answer at
//! all (a PUBACK for a reply) leaves the server nothing to carry the ACK on, so Linux
//! delays that ACK by up to 40 ms and the client's next requests wait with it. Quick ACKs
//! cost one `setsockopt` per read (a read takes in every packet that has arrived), not one
//! per packet.
//!
//! Delayed ACKs while the core's budget of requests in flight is used up
//! ([`Budget::saturated`]): the client's next requests would wait in the socket buffer
//! anyway, and an ACK for each of its packets only makes it send each request in a TCP
//! segment of its own. With 1 000 busy clients each connection's requests come in bursts
//! further apart than the retransmission timeout, and Linux then acknowledges every
//! segment at once (its quick-ACK mode) unless the socket is in delayed-ACK mode: there
//! were 1.5 segments per request instead of 0.14 at 100 clients, and the load tool's CPU
//! per request doubled (BENCHMARKS.md, 2026-12-04, late). Delayed, the client's Nagle
//! gathers its requests again: 0.7 segments per request, and 17 % less client CPU.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::turns::Budget;

/// A [`TcpStream`] whose reads are acknowledged at once while `budget` has room (see the
/// module docs); always at once without a budget.
#[derive(Debug)]
pub struct QuickAck {
    pub stream: TcpStream,
    pub budget: Option<Budget>,
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            // Best effort: a failure only means the ACK goes out on the kernel's schedule.
            let quick = self.budget.as_ref().is_none_or(|b| !b.saturated());
            let _ = SockRef::from(&self.stream).set_tcp_quickack(quick);
        }
        read
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair: (client, server).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    fn quick(s: &TcpStream) -> bool {
        SockRef::from(s).tcp_quickack().unwrap()
    }

    /// Answering at once puts a Linux socket into delayed-ACK ("ping-pong") mode; a read
    /// through [`QuickAck`] takes it out again (with room in the budget, or without a
    /// budget), and the bytes pass through unchanged.
    #[tokio::test]
    async fn a_read_switches_delayed_acks_off_again() {
        for budget in [None, Some(Budget::new(64))] {
            let (mut client, mut server) = pair().await;
            let mut byte = [0u8; 1];
            // Request and immediate answer, until the kernel delays its ACKs (it counts them).
            let mut rounds = 0;
            while quick(&server) {
                rounds += 1;
                assert!(rounds <= 100, "the socket never entered delayed-ACK mode");
                client.write_all(b"q").await.unwrap();
                server.read_exact(&mut byte).await.unwrap();
                server.write_all(b"a").await.unwrap();
                client.read_exact(&mut byte).await.unwrap();
            }
            let mut server = QuickAck {
                stream: server,
                budget,
            };
            client.write_all(b"hello").await.unwrap();
            let mut got = [0u8; 5];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"hello");
            assert!(
                quick(&server.stream),
                "a read must leave the socket in quick-ACK mode"
            );
            server.write_all(b"back").await.unwrap();
            let mut back = [0u8; 4];
            client.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"back");
        }
    }

    /// While the budget is used up, a read leaves the socket in delayed-ACK mode (a new
    /// socket starts in quick-ACK mode); once turns are free again, the next read turns
    /// quick ACKs back on.
    #[tokio::test]
    async fn a_read_while_the_budget_is_used_up_delays_acks() {
        let (mut client, server) = pair().await;
        assert!(quick(&server), "a new socket acknowledges at once");
        let budget = Budget::new(64);
        let mut server = QuickAck {
            stream: server,
            budget: Some(budget.clone()),
        };
        let mut turns = super::super::turns::Turns::new(budget.clone());
        let taken: Vec<_> = std::iter::from_fn(|| turns.take(1)).collect();
        assert_eq!(taken.len(), 64);
        assert!(budget.saturated());
        let mut got = [0u8; 5];
        client.write_all(b"first").await.unwrap();
        server.read_exact(&mut got).await.unwrap();
        assert!(
            !quick(&server.stream),
            "delayed ACKs while the budget is used up"
        );
        drop(taken);
        assert!(!budget.saturated());
        client.write_all(b"again").await.unwrap();
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"again");
        assert!(quick(&server.stream), "quick ACKs once turns are free");
    }
}
