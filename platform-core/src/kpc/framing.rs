//! MQTT packets in and out of one connection's byte stream: whole packets read through
//! the `mqttbytes` codec (with read-ahead for a busy client), replies written in one go
//! with a timeout, and the errors that end a connection.

use std::cell::Cell;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::Packet;
use rumqttc::mqttbytes::Error as CodecError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed packet: {0}")]
    Malformed(CodecError),
    #[error("packet larger than the limit of {0} bytes")]
    TooLarge(usize),
    #[error("closed by peer")]
    Eof,
    #[error("no packet within the keepalive window")]
    Idle,
    #[error("the client has not read what we sent for {0:?}")]
    WriteStalled(Duration),
}

/// A client that does not read for this long is disconnected (it would otherwise hold
/// its connection task, and its queue, forever).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads whole packets from a byte stream through the `mqttbytes` codec.
#[derive(Debug)]
pub struct PacketReader<S> {
    pub io: S,
    pub buf: BytesMut,
    max_packet_size: usize,
    /// The last read filled all the room the buffer had: more is likely waiting, so the
    /// next read gets [`READ_AHEAD`] more room (one read then takes many packets).
    filled: bool,
}

/// Payloads up to this size are copied out of the read buffer (see [`PacketReader::next`]).
const OWN_PAYLOAD: usize = 1024;

/// Room added before a read when the last one filled the buffer. A connection that only
/// ever sends a little keeps its small buffer.
const READ_AHEAD: usize = 4096;

impl<S: AsyncRead + AsyncWrite + Unpin> PacketReader<S> {
    pub async fn next(&mut self) -> Result<Packet, ConnError> {
        loop {
            match Packet::read(&mut self.buf, self.max_packet_size) {
                Ok(Packet::Publish(mut p)) if p.payload.len() <= OWN_PAYLOAD => {
                    // A small payload gets its own copy, so the request does not keep
                    // the read buffer: the next read reuses it instead of allocating.
                    p.payload = Bytes::copy_from_slice(&p.payload);
                    return Ok(Packet::Publish(p));
                }
                Ok(p) => return Ok(p),
                Err(CodecError::InsufficientBytes(_)) => {}
                Err(CodecError::PayloadSizeLimitExceeded(_)) => {
                    return Err(ConnError::TooLarge(self.max_packet_size))
                }
                Err(e) => return Err(ConnError::Malformed(e)),
            }
            if self.filled {
                self.buf.reserve(READ_AHEAD);
            }
            let room = self.buf.capacity() - self.buf.len();
            let n = self.io.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(ConnError::Eof);
            }
            self.filled = n >= room;
        }
    }

    /// Whether [`Self::next`] has a whole packet (or a decode error) without reading.
    pub fn has_packet(&self) -> bool {
        !matches!(
            rumqttc::mqttbytes::check(self.buf.iter(), self.max_packet_size),
            Err(CodecError::InsufficientBytes(_))
        )
    }

    pub async fn send(&mut self, p: &Packet) -> Result<(), ConnError> {
        self.send_all(std::slice::from_ref(p)).await
    }

    /// Sends packets in one write.
    pub async fn send_all(&mut self, packets: &[Packet]) -> Result<(), ConnError> {
        let mut out = Outgoing::new();
        for p in packets {
            out.push(p)?;
        }
        self.write(out).await
    }

    /// Writes what `out` holds in one go (nothing if it is empty).
    pub async fn write(&mut self, out: Outgoing) -> Result<(), ConnError> {
        if out.buf.is_empty() {
            return Ok(());
        }
        tokio::time::timeout(WRITE_TIMEOUT, self.io.write_all(&out.buf))
            .await
            .map_err(|_| ConnError::WriteStalled(WRITE_TIMEOUT))??;
        Ok(())
    }
}

thread_local! {
    /// The thread's spare write buffer. Packets are encoded into it and written, so a
    /// busy connection allocates no buffer for each write, and an idle one holds none.
    static SPARE: Cell<Option<BytesMut>> = const { Cell::new(None) };
}

/// A spare buffer larger than this is let go after its write.
const MAX_SPARE: usize = 64 * 1024;

/// Packets encoded for one write, in the thread's spare buffer (a fresh one if another
/// write on this thread holds it); the buffer goes back to the thread when done.
#[derive(Debug)]
pub struct Outgoing {
    buf: BytesMut,
}

impl Outgoing {
    pub fn new() -> Self {
        // `try_with`: a thread being torn down has no spare, and gets a fresh buffer.
        let buf = SPARE
            .try_with(Cell::take)
            .ok()
            .flatten()
            .unwrap_or_default();
        Self { buf }
    }

    /// Encodes `p` after what is already there.
    pub fn push(&mut self, p: &Packet) -> Result<(), ConnError> {
        p.write(&mut self.buf, usize::MAX)
            .map_err(ConnError::Malformed)?;
        Ok(())
    }
}

impl Default for Outgoing {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        if self.buf.capacity() <= MAX_SPARE {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            // On a thread being torn down the buffer is simply freed.
            let _ = SPARE.try_with(|spare| spare.set(Some(buf)));
        }
    }
}

impl<S> PacketReader<S> {
    /// A reader with a small buffer (most of a site's connections idle); it grows with
    /// what arrives.
    pub fn new(io: S, max_packet_size: usize) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(256),
            max_packet_size,
            filled: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::v4::{PingReq, Publish};

    use rumqttc::mqttbytes::QoS;

    fn publish_bytes(n: usize) -> Vec<u8> {
        let mut out = BytesMut::new();
        for i in 0..n {
            let mut p = Publish::new("kp1/app/dcx/token/json/1", QoS::AtLeastOnce, vec![b'x'; 40]);
            p.pkid = (i + 1) as u16;
            Packet::Publish(p)
                .write(&mut out, usize::MAX)
                .expect("encode");
        }
        out.to_vec()
    }

    #[tokio::test]
    async fn a_busy_client_is_read_ahead_and_every_packet_comes_out_whole() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let bytes = publish_bytes(200);
        client.write_all(&bytes).await.expect("write");
        let mut reader = PacketReader::new(server, 1024);
        for i in 0..200 {
            match reader.next().await.expect("packet") {
                Packet::Publish(p) => assert_eq!(usize::from(p.pkid), i + 1),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(
            reader.buf.capacity() > 1024,
            "a full read asks for more room next time: {}",
            reader.buf.capacity()
        );
        assert!(!reader.has_packet());
    }

    #[tokio::test]
    async fn a_quiet_client_keeps_its_small_buffer() {
        let (mut client, server) = tokio::io::duplex(4096);
        let mut reader = PacketReader::new(server, 1024);
        for _ in 0..20 {
            let mut one = BytesMut::new();
            PingReq.write(&mut one).map(|_| ()).expect("encode");
            client.write_all(&one).await.expect("write");
            assert!(matches!(reader.next().await, Ok(Packet::PingReq)));
        }
        assert!(reader.buf.capacity() <= 256);
    }

    #[tokio::test]
    async fn a_request_does_not_keep_the_read_buffer_unless_its_payload_is_large() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut reader = PacketReader::new(server, 64 * 1024);
        for (size, keeps) in [(40, false), (OWN_PAYLOAD, false), (OWN_PAYLOAD + 1, true)] {
            let mut p = Publish::new(
                "kp1/app/dcx/token/json/1",
                QoS::AtLeastOnce,
                vec![b'x'; size],
            );
            p.pkid = 1;
            let mut one = BytesMut::new();
            Packet::Publish(p)
                .write(&mut one, usize::MAX)
                .expect("encode");
            client.write_all(&one).await.expect("write");
            let held = reader.next().await.expect("packet");
            let Packet::Publish(held) = held else {
                panic!("unexpected {held:?}")
            };
            assert_eq!(held.payload.len(), size);
            // Taking back the room the packet used, without allocating, works only if
            // nothing else shares the buffer.
            let room = reader.buf.capacity() - reader.buf.len();
            assert_eq!(
                !reader.buf.try_reclaim(room + 1),
                keeps,
                "payload of {size} bytes"
            );
        }
    }

    #[test]
    fn writes_on_one_thread_reuse_its_spare_buffer() {
        let mut first = Outgoing::new();
        first.push(&Packet::PingResp).expect("encode");
        assert_eq!(&first.buf[..], [0xd0, 0]);
        // A second write while the first holds the spare gets a buffer of its own.
        let second = Outgoing::new();
        assert_eq!(second.buf.capacity(), 0);
        drop(second);
        drop(first);
        let third = Outgoing::new();
        assert!(third.buf.is_empty(), "handed back cleared");
        assert!(third.buf.capacity() > 0, "the spare is reused");
    }
}
