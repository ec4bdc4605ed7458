//! One MQTT client connection: the I/O actor around [`crate::mqtt::session::Session`].
//!
//! Lifecycle: read CONNECT within `connect_timeout` → authenticate (CCM) → CONNACK →
//! loop { read a packet or time out after 1.5 × keepalive (MQTT 3.1.1 §3.1.2.10) → act }.
//! Requests are processed in arrival order, one at a time, so replies keep the order of
//! requests. Malformed or oversized packets, protocol violations and idle timeouts close
//! the connection; none of them affects other connections (counted and logged with a rate
//! limit, see [`super::stats`]). Will messages are accepted and never relayed; the retain
//! flag is ignored (KPC is not a broker: nothing is stored for later subscribers).
//! Clean sessions start empty; a persistent session (`clean session` = 0) is resumed from
//! the hub, and its unacknowledged pushes are sent again (DUP) before anything else.

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
use super::stats::{Event, Stats};
use crate::ccm::{Authenticator, Verdict};
use crate::mqtt::session::{Action, CloseReason, Session};

/// Everything a connection needs from its listener; cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnContext {
    pub router: Router,
    pub auth: Authenticator,
    pub hub: Hub,
    pub limits: ConnectionLimits,
    pub stats: Stats,
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// `tcp`, `tls` or `ws`, for logs.
    pub transport: &'static str,
    /// SHA-256 fingerprint of the TLS client certificate, when one was presented.
    pub cert_fingerprint: Option<String>,
}

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
    #[error("the client has not read what we sent for {0:?}")]
    WriteStalled(Duration),
}

/// A client that does not read for this long is disconnected (it would otherwise hold
/// its connection task, and its queue, forever).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

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
        tokio::time::timeout(WRITE_TIMEOUT, self.io.write_all(&out))
            .await
            .map_err(|_| ConnError::WriteStalled(WRITE_TIMEOUT))??;
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
        let mut remaining = 0usize;
        loop {
            match b.get(i) {
                None => return Peek::NeedMore,
                Some(byte) => {
                    remaining |= usize::from(byte & 0x7f) << (7 * (i - 1));
                    if byte & 0x80 == 0 {
                        break;
                    }
                    if i == 4 {
                        return Peek::NotConnect;
                    }
                    i += 1;
                }
            }
        }
        i += 1;
        // A whole frame too short for a protocol name and level: let the decoder report it.
        let frame_end = i + remaining;
        let complete = b.len() >= frame_end;
        let (Some(hi), Some(lo)) = (b.get(i), b.get(i + 1)) else {
            return if complete {
                Peek::NotConnect
            } else {
                Peek::NeedMore
            };
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        if i + 2 + len >= frame_end {
            // The declared frame cannot hold the name and the level.
            return Peek::NotConnect;
        }
        match (b.get(i + 2..i + 2 + len), b.get(i + 2 + len)) {
            (Some(name), Some(level)) => Peek::Connect {
                name: String::from_utf8_lossy(name).into_owned(),
                level: *level,
            },
            _ => Peek::NeedMore,
        }
    }
}

/// Serves one client until it disconnects, breaks the protocol, idles out, is cut, or `shutdown`.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    peer: Peer,
    ctx: ConnContext,
    shutdown: CancellationToken,
) {
    let mut conn = PacketReader {
        io,
        buf: BytesMut::with_capacity(4096),
        max_packet_size: ctx.limits.max_packet_size,
    };
    let outcome = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        r = run(&mut conn, &peer, &ctx) => r,
    };
    let (addr, transport) = (peer.addr, peer.transport);
    match outcome {
        Ok(()) => log::debug!("mqtt {transport} {addr}: closed"),
        Err(ConnError::Eof) => log::debug!("mqtt {transport} {addr}: closed by peer"),
        Err(e @ (ConnError::Idle | ConnError::WriteStalled(_))) => {
            log::info!("mqtt {transport} {addr}: closing connection: {e}")
        }
        Err(e @ ConnError::TooLarge(_)) => ctx.stats.report(Event::Oversized, || {
            format!("mqtt {transport} {addr}: closing connection: {e}")
        }),
        Err(e @ ConnError::Malformed(_)) => ctx.stats.report(Event::Malformed, || {
            format!("mqtt {transport} {addr}: closing connection: {e}")
        }),
        Err(e @ ConnError::Io(_)) => log::debug!("mqtt {transport} {addr}: {e}"),
    }
    let _ = conn.io.shutdown().await;
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut PacketReader<S>,
    peer: &Peer,
    ctx: &ConnContext,
) -> Result<(), ConnError> {
    let (addr, transport) = (peer.addr, peer.transport);
    let limits = ctx.limits;
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
            ctx.stats.report(Event::ConnectRefused, || {
                format!("mqtt {transport} {addr}: refusing protocol {name:?} level {level} (only MQTT 3.1.1 is served)")
            });
            let ack = ConnAck::new(ConnectReturnCode::RefusedProtocolVersion, false);
            return conn.send(&Packet::ConnAck(ack)).await;
        }
    }
    let connect = match tokio::time::timeout(limits.connect_timeout, conn.next()).await {
        Err(_) => return Err(ConnError::Idle),
        Ok(Ok(Packet::Connect(c))) if c.protocol == Protocol::V4 => c,
        Ok(Ok(other)) => {
            ctx.stats.report(Event::ProtocolViolation, || {
                format!("mqtt {transport} {addr}: first packet is not CONNECT: {other:?}")
            });
            return Ok(());
        }
        Ok(Err(e)) => return Err(e),
    };
    let login = connect
        .login
        .as_ref()
        .map(|l| (l.username.as_str(), l.password.as_str()));
    let (verdict, identity) = ctx
        .auth
        .check(login, peer.cert_fingerprint.as_deref())
        .await
        .unwrap_or_else(|e| {
            log::error!("mqtt {transport} {addr}: credential check failed: {e}");
            (Verdict::NotAuthorized, crate::ccm::Identity::Anonymous)
        });
    let mut code = match verdict {
        Verdict::Accepted => ConnectReturnCode::Success,
        Verdict::BadCredentials => ConnectReturnCode::BadUserNamePassword,
        Verdict::NotAuthorized => ConnectReturnCode::NotAuthorized,
    };
    let client_id = connect.client_id.clone();
    // §3.1.3.1: a persistent session needs a client ID to be found again.
    if code == ConnectReturnCode::Success && !connect.clean_session && client_id.is_empty() {
        code = ConnectReturnCode::BadClientId;
    }
    if code != ConnectReturnCode::Success {
        conn.send(&Packet::ConnAck(ConnAck::new(code, false)))
            .await?;
        ctx.stats.report(Event::ConnectRefused, || {
            format!(
                "mqtt {transport} {addr}: CONNECT refused ({code:?}) for client {client_id:?} as {identity:?}"
            )
        });
        return Ok(());
    }
    let attached = ctx.hub.register(&client_id, identity.clone());
    let registration = attached.registration;
    let mut copies = attached.inbox;
    let queued_bytes = attached.queued_bytes;
    let kill = attached.kill;
    if !client_id.is_empty() {
        // Takeover: give the old connection of this client ID a moment to park its session.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !ctx.hub.client_gone(&client_id, registration.id) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let parked = if client_id.is_empty() {
        None
    } else {
        ctx.hub.take_parked(&client_id)
    };
    let (mut session, present) = match parked {
        Some(s) if !connect.clean_session => (s, true),
        _ => (Session::new(), false),
    };
    conn.send(&Packet::ConnAck(ConnAck::new(code, present)))
        .await?;
    log::info!(
        "mqtt {transport} {addr}: client {client_id:?} connected as {identity:?}{}",
        if present { " (session resumed)" } else { "" }
    );
    if connect.last_will.is_some() {
        log::debug!("mqtt {transport} {addr}: will message accepted (KPC does not relay wills)");
    }
    if present {
        registration.set_filters(session.subscriptions().to_vec());
        for p in session.resume() {
            conn.send(&p).await?;
        }
    }
    // §3.1.2.10: the server closes after 1.5 × keepalive without a packet; 0 disables it.
    let idle = (connect.keep_alive > 0)
        .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
    let mut deadline = idle.map(|d| Instant::now() + d);
    let router = &ctx.router;
    let hub = &ctx.hub;
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
                                if reply.topic.ends_with("/error") {
                                    ctx.stats.report(Event::RequestError, || format!(
                                        "mqtt {transport} {addr}: request on {} refused: {}",
                                        publish.topic,
                                        String::from_utf8_lossy(&reply.payload)
                                    ));
                                }
                                let payload = Bytes::from(reply.payload);
                                hub.fan_out(registration.id, &reply.topic, &payload);
                                if let Some(out) = session.publish(reply.topic, qos, payload) {
                                    conn.send(&out).await?;
                                }
                            }
                            if let Some(ack) = ack {
                                conn.send(&ack).await?;
                            }
                        }
                        Action::Close(CloseReason::ClientDisconnect) => return Ok(()),
                        Action::Close(CloseReason::ProtocolViolation(why)) => {
                            ctx.stats.report(Event::ProtocolViolation, || {
                                format!("mqtt {transport} {addr}: protocol violation, closing: {why}")
                            });
                            return Ok(());
                        }
                    }
                }
                if resubscribed {
                    registration.set_filters(session.subscriptions().to_vec());
                }
            }
            // A push for an endpoint this session used, or a copy of another session's reply.
            Some(msg) = copies.recv() => {
                queued_bytes.fetch_sub(msg.payload.len(), std::sync::atomic::Ordering::Relaxed);
                if let Some(out) = session.publish(msg.topic, msg.qos, msg.payload) {
                    conn.send(&out).await?;
                }
            }
            // The token or credential this session uses was suspended or revoked, or the
            // same client ID connected again.
            _ = kill.cancelled() => {
                ctx.stats.report(Event::SessionCut, || {
                    format!("mqtt {transport} {addr}: session of client {client_id:?} ended by the server")
                });
                return Ok(());
            }
            // §3.1.2.10: nothing from the client for 1.5 × keepalive.
            _ = sleep_until_deadline(deadline) => return Err(ConnError::Idle),
        }
    }
    }
    .await;
    if !connect.clean_session {
        ctx.hub.park(&client_id, session);
    }
    let sid = registration.id;
    drop(registration);
    // EPL: the endpoints this session used may now be disconnected.
    router.session_closed(sid).await;
    outcome
}

async fn sleep_until_deadline(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
