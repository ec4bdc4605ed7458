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
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::hub::Hub;
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

/// What the head of the buffer says about the first packet.
enum Peek {
    NeedMore,
    NotConnect,
    Connect { name: String, level: u8 },
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

    /// Looks at a CONNECT frame at the head of the buffer before the full decode, so that
    /// MQTT 3.1 and 5 clients get a proper refusal (MQTT 3.1.1 §3.1.2.2).
    fn peek_connect(&self) -> Peek {
        let b = &self.buf[..];
        let Some(first) = b.first() else {
            return Peek::NeedMore;
        };
        if first >> 4 != 1 {
            return Peek::NotConnect;
        }
        // Remaining length: at most 4 bytes of 7 bits each (§2.2.3).
        let mut i = 1;
        loop {
            match b.get(i) {
                None => return Peek::NeedMore,
                Some(byte) if byte & 0x80 == 0 => break,
                Some(_) if i == 4 => return Peek::NotConnect,
                Some(_) => i += 1,
            }
        }
        i += 1;
        let (Some(hi), Some(lo)) = (b.get(i), b.get(i + 1)) else {
            return Peek::NeedMore;
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        match (b.get(i + 2..i + 2 + len), b.get(i + 2 + len)) {
            (Some(name), Some(level)) => Peek::Connect {
                name: String::from_utf8_lossy(name).into_owned(),
                level: *level,
            },
            _ => Peek::NeedMore,
        }
    }
}

/// Serves one client until it disconnects, breaks the protocol, idles out or `shutdown`.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    peer: SocketAddr,
    router: Router,
    auth: Authenticator,
    hub: Hub,
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
        r = run(&mut conn, peer, &router, &auth, &hub, limits) => r,
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
    hub: &Hub,
    limits: ConnectionLimits,
) -> Result<(), ConnError> {
    // Wait until the protocol name and level are readable, then refuse what we do not speak.
    let first = tokio::time::timeout(limits.connect_timeout, async {
        loop {
            match conn.peek_connect() {
                Peek::NeedMore => {}
                // Not a CONNECT, or a mangled header: the full decode below reports it.
                Peek::NotConnect => return Ok::<_, ConnError>(None),
                Peek::Connect { name, level } => return Ok(Some((name, level))),
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
    let (registration, mut copies) = hub.register();
    let mut session = Session::new();
    let mut deadline = idle.map(|d| Instant::now() + d);
    let outcome: Result<(), ConnError> = async {
    loop {
        tokio::select! {
            // A packet from the client (cancel-safe: partial frames stay in the buffer).
            packet = conn.next() => {
                let packet = packet?;
                deadline = idle.map(|d| Instant::now() + d);
                let resubscribed = matches!(packet, Packet::Subscribe(_) | Packet::Unsubscribe(_));
                for action in session.handle(packet) {
                    match action {
                        Action::Send(p) => conn.send(&p).await?,
                        Action::Request { publish, ack } => {
                            if let Some(reply) = router.route(&publish.topic, &publish.payload, Some(registration.id)).await {
                                let qos = match publish.qos {
                                    QoS::AtMostOnce => QoS::AtMostOnce,
                                    _ => QoS::AtLeastOnce,
                                };
                                let payload = Bytes::from(reply.payload);
                                hub.fan_out(registration.id, &reply.topic, &payload);
                                let out = session.publish(reply.topic, qos, payload);
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
                if resubscribed {
                    registration.set_filters(session.subscriptions().to_vec());
                }
            }
            // A copy of another session's reply that this session subscribed to.
            Some(copy) = copies.recv() => {
                let out = session.publish(copy.topic, copy.qos, copy.payload);
                conn.send(&out).await?;
            }
            // §3.1.2.10: nothing from the client for 1.5 × keepalive.
            _ = sleep_until_deadline(deadline) => return Err(ConnError::Idle),
        }
    }
    }
    .await;
    // EPL: the endpoints this session used may now be disconnected.
    router.session_closed(registration.id).await;
    outcome
}

async fn sleep_until_deadline(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
