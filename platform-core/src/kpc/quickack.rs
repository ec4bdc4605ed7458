//! A TCP stream that acknowledges what it reads at once: `TCP_QUICKACK` is set again after
//! every read that returned data.
//!
//! Why: a client with Nagle's algorithm on (rumqttc's and paho's default) holds a small
//! packet back while an earlier one is unacknowledged. A request is answered only after its
//! group commit, and a packet that needs no answer at all (a PUBACK for a reply) leaves the
//! server nothing to carry the ACK on, so Linux delays that ACK by up to 40 ms and the
//! client's next requests wait with it. Quick ACKs cost one `setsockopt` per read (a read
//! takes in every packet that has arrived), not one per packet.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A [`TcpStream`] whose reads are acknowledged at once (see the module docs).
#[derive(Debug)]
pub struct QuickAck(pub TcpStream);

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.0).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            // Best effort: a failure only means the ACK goes out on the kernel's schedule.
            let _ = SockRef::from(&self.0).set_tcp_quickack(true);
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
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Answering at once puts a Linux socket into delayed-ACK ("ping-pong") mode; a read
    /// through [`QuickAck`] takes it out again, and the bytes pass through unchanged.
    #[tokio::test]
    async fn a_read_switches_delayed_acks_off_again() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let quick = |s: &TcpStream| SockRef::from(s).tcp_quickack().unwrap();
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
        let mut server = QuickAck(server);
        client.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        assert!(
            quick(&server.0),
            "a read must leave the socket in quick-ACK mode"
        );
        server.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }
}
