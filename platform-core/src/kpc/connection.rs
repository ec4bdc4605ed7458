//! One MQTT client connection: the I/O actor around [`crate::mqtt::session::Session`].
//!
//! Lifecycle: read CONNECT within `connect_timeout` → authenticate (CCM) → CONNACK →
//! loop { read a packet or time out after 1.5 × keepalive (MQTT 3.1.1 §3.1.2.10) → act }.
//! Requests are processed in arrival order, one at a time, so replies keep the order of
//! requests. Malformed or oversized packets, protocol violations and idle timeouts close
//! the connection; none of them affects other connections.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet};
use rumqttc::mqttbytes::{Error as CodecError, Protocol, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::router::Router;
use crate::ccm::{Authenticator, Verdict};
use crate::mqtt::session::{Action, CloseReason, Session};

/// Per-connection limits, from the listener's config.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Largest accepted MQTT packet (whole frame), in bytes.
    pub max_packet_size: usize,
    /// How long a new connection may take to send CONNECT.
    pub connect_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
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
}

/// Reads whole packets from a byte stream through the `mqttbytes` codec.
struct PacketReader<S> {
    io: S,
    buf: BytesMut,
    max_packet_size: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> PacketReader<S> {
    async fn next(&mut self) -> Result<Packet, ConnError> {
        loop {
            match Packet::read(&mut self.buf, self.max_packet_size) {
                Ok(p) => return Ok(p),
                Err(CodecError::InsufficientBytes(_)) => {}
                Err(CodecError::PayloadSizeLimitExceeded(_)) => {
                    return Err(ConnError::TooLarge(self.max_packet_size))
                }
                Err(e) => return Err(ConnError::Malformed(e)),
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(ConnError::Eof);
            }
        }
    }

    async fn send(&mut self, p: &Packet) -> Result<(), ConnError> {
        let mut out = BytesMut::new();
        p.write(&mut out, usize::MAX)
            .map_err(ConnError::Malformed)?;
        self.io.write_all(&out).await?;
        Ok(())
    }

    /// The protocol level of a CONNECT frame at the head of the buffer, read before the
    /// full decode so that MQTT 3.1 and 5 clients get a proper refusal (§3.1.2.2).
    fn peek_connect_level(&self) -> Option<(String, u8)> {
        let b = &self.buf[..];
        if b.first()? >> 4 != 1 {
            return None;
        }
        let mut i = 1;
        while *b.get(i)? & 0x80 != 0 {
            i += 1;
            if i > 4 {
                return None;
            }
        }
        i += 1;
        let len = u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]) as usize;
        let name = std::str::from_utf8(b.get(i + 2..i + 2 + len)?)
            .ok()?
            .to_owned();
        Some((name, *b.get(i + 2 + len)?))
    }
}

/// Serves one client until it disconnects, breaks the protocol, idles out or `shutdown`.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    peer: SocketAddr,
    router: Router,
    auth: Authenticator,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let mut conn = PacketReader {
        io,
        buf: BytesMut::with_capacity(4096),
        max_packet_size: limits.max_packet_size,
    };
    let outcome = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        r = run(&mut conn, peer, &router, &auth, limits) => r,
    };
    match outcome {
        Ok(()) => log::debug!("mqtt {peer}: closed"),
        Err(ConnError::Eof) => log::debug!("mqtt {peer}: closed by peer"),
        Err(e) => log::info!("mqtt {peer}: closing connection: {e}"),
    }
    let _ = conn.io.shutdown().await;
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut PacketReader<S>,
    peer: SocketAddr,
    router: &Router,
    auth: &Authenticator,
    limits: ConnectionLimits,
) -> Result<(), ConnError> {
    // Wait until a first frame header is readable, then refuse protocols we do not speak.
    let first = tokio::time::timeout(limits.connect_timeout, async {
        loop {
            if let Some((name, level)) = conn.peek_connect_level() {
                return Ok::<_, ConnError>(Some((name, level)));
            }
            // Not a CONNECT at all, or a header too mangled to read: the full decode decides.
            if conn.buf.first().is_some_and(|b| b >> 4 != 1) || conn.buf.len() >= 16 {
                return Ok(None);
            }
            if conn.io.read_buf(&mut conn.buf).await? == 0 {
                return Err(ConnError::Eof);
            }
        }
    })
    .await
    .map_err(|_| ConnError::Idle)??;
    if let Some((name, level)) = first {
        if name != "MQTT" || level != 4 {
            log::info!(
                "mqtt {peer}: refusing protocol {name:?} level {level} (only MQTT 3.1.1 is served)"
            );
            let ack = ConnAck::new(ConnectReturnCode::RefusedProtocolVersion, false);
            return conn.send(&Packet::ConnAck(ack)).await;
        }
    }
    let connect = match tokio::time::timeout(limits.connect_timeout, conn.next()).await {
        Err(_) => return Err(ConnError::Idle),
        Ok(Ok(Packet::Connect(c))) if c.protocol == Protocol::V4 => c,
        Ok(Ok(other)) => {
            log::info!("mqtt {peer}: first packet is not CONNECT: {other:?}");
            return Ok(());
        }
        Ok(Err(e)) => return Err(e),
    };
    let login = connect
        .login
        .as_ref()
        .map(|l| (l.username.as_str(), l.password.as_str()));
    let verdict = auth.check(login).await.unwrap_or_else(|e| {
        log::error!("mqtt {peer}: credential check failed: {e}");
        Verdict::NotAuthorized
    });
    let code = match verdict {
        Verdict::Accepted => ConnectReturnCode::Success,
        Verdict::BadCredentials => ConnectReturnCode::BadUserNamePassword,
        Verdict::NotAuthorized => ConnectReturnCode::NotAuthorized,
    };
    conn.send(&Packet::ConnAck(ConnAck::new(code, false)))
        .await?;
    if code != ConnectReturnCode::Success {
        log::info!(
            "mqtt {peer}: CONNECT refused ({code:?}) for client {:?} user {:?}",
            connect.client_id,
            login.map(|l| l.0)
        );
        return Ok(());
    }
    log::info!("mqtt {peer}: client {:?} connected", connect.client_id);
    // §3.1.2.10: the server closes after 1.5 × keepalive without a packet; 0 disables it.
    let idle = (connect.keep_alive > 0)
        .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
    let mut session = Session::new();
    loop {
        let packet = match idle {
            Some(d) => tokio::time::timeout(d, conn.next())
                .await
                .map_err(|_| ConnError::Idle)??,
            None => conn.next().await?,
        };
        for action in session.handle(packet) {
            match action {
                Action::Send(p) => conn.send(&p).await?,
                Action::Request { publish, ack } => {
                    let reply = router.route(&publish.topic, &publish.payload).await;
                    if let Some(reply) = reply {
                        let qos = match publish.qos {
                            QoS::AtMostOnce => QoS::AtMostOnce,
                            _ => QoS::AtLeastOnce,
                        };
                        let out = session.publish(reply.topic, qos, Bytes::from(reply.payload));
                        conn.send(&out).await?;
                    }
                    if let Some(ack) = ack {
                        conn.send(&ack).await?;
                    }
                }
                Action::Close(CloseReason::ClientDisconnect) => return Ok(()),
                Action::Close(CloseReason::ProtocolViolation(why)) => {
                    log::info!("mqtt {peer}: protocol violation: {why}");
                    return Ok(());
                }
            }
        }
    }
}
