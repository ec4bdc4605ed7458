//! A new MQTT connection's handshake: CONNECT read within the connect timeout, the
//! client authenticated (CCM) and registered with the hub, CONNACK sent, a persistent
//! session resumed.

use std::time::Duration;

use rumqttc::mqttbytes::v4::{ConnAck, Connect, ConnectReturnCode, Packet};
use rumqttc::mqttbytes::Protocol;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::Instant;

use super::context::{ConnContext, Peer};
use super::framing::{ConnError, PacketReader};
use super::stats::Incident;
use crate::ccm::Verdict;
use crate::mqtt::connect::{peek_connect, ConnectPeek};
use crate::mqtt::session::Session;
use crate::sessions::Attached;

/// An accepted client: its MQTT session state and its place in the hub.
pub(super) struct Live {
    pub(super) session: Session,
    pub(super) attached: Attached,
    /// Longest silence allowed (1.5 × keepalive), if any.
    pub(super) idle: Option<Duration>,
    pub(super) client_id: String,
}

/// Reads the CONNECT packet within the connect timeout; `None` when the client was
/// refused (a protocol we do not speak: CONNACK 0x01 sent) or sent something else first.
pub(super) async fn read_connect<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut PacketReader<S>,
    peer: &Peer,
    ctx: &ConnContext,
) -> Result<Option<Connect>, ConnError> {
    let (addr, transport) = (peer.addr, peer.transport);
    let timeout = ctx.limits.connect_timeout;
    // Wait until the protocol name and level are readable, then refuse what we do not speak.
    let first = tokio::time::timeout(timeout, async {
        loop {
            match peek_connect(&conn.buf) {
                ConnectPeek::NeedMore => {}
                // Not a CONNECT, or a mangled header: the full decode below reports it.
                ConnectPeek::NotConnect => return Ok::<_, ConnError>(None),
                ConnectPeek::Connect { name, level } => return Ok(Some((name, level))),
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
            ctx.stats.report(Incident::ConnectRefused, || {
                format!("mqtt {transport} {addr}: refusing protocol {name:?} level {level} (only MQTT 3.1.1 is served)")
            });
            let ack = ConnAck::new(ConnectReturnCode::RefusedProtocolVersion, false);
            conn.send(&Packet::ConnAck(ack)).await?;
            return Ok(None);
        }
    }
    match tokio::time::timeout(timeout, conn.next()).await {
        Err(_) => Err(ConnError::Idle),
        Ok(Ok(Packet::Connect(c))) if c.protocol == Protocol::V4 => Ok(Some(c)),
        Ok(Ok(other)) => {
            ctx.stats.report(Incident::ProtocolViolation, || {
                format!("mqtt {transport} {addr}: first packet is not CONNECT: {other:?}")
            });
            Ok(None)
        }
        Ok(Err(e)) => Err(e),
    }
}

/// Authenticates the client (CCM), registers it with the hub, answers CONNACK and
/// resumes a persistent session; `None` when the client was refused.
pub(super) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut PacketReader<S>,
    peer: &Peer,
    ctx: &ConnContext,
    connect: &Connect,
) -> Result<Option<Live>, ConnError> {
    let (addr, transport) = (peer.addr, peer.transport);
    let login = connect
        .login
        .as_ref()
        .map(|l| (l.username.as_str(), l.password.as_str()));
    let (verdict, identity) = ctx
        .auth
        .check(
            login,
            peer.cert_fingerprint.as_deref(),
            Some(peer.addr.ip()),
        )
        .await
        .unwrap_or_else(|e| {
            log::error!("mqtt {transport} {addr}: credential check failed: {e}");
            (Verdict::NotAuthorized, crate::ccm::Identity::Anonymous)
        });
    let mut code = match verdict {
        Verdict::Accepted => ConnectReturnCode::Success,
        Verdict::BadCredentials => ConnectReturnCode::BadUserNamePassword,
        Verdict::NotAuthorized => ConnectReturnCode::NotAuthorized,
        Verdict::Busy => ConnectReturnCode::ServiceUnavailable,
    };
    let client_id = connect.client_id.as_str();
    // §3.1.3.1: a persistent session needs a client ID to be found again.
    if code == ConnectReturnCode::Success && !connect.clean_session && client_id.is_empty() {
        code = ConnectReturnCode::BadClientId;
    }
    if code != ConnectReturnCode::Success {
        conn.send(&Packet::ConnAck(ConnAck::new(code, false)))
            .await?;
        ctx.stats.report(Incident::ConnectRefused, || {
            format!(
                "mqtt {transport} {addr}: CONNECT refused ({code:?}) for client {client_id:?} as {identity:?}"
            )
        });
        return Ok(None);
    }
    let reach = match &identity {
        crate::ccm::Identity::Basic(user) => {
            let user = user.clone();
            let found = ctx
                .auth
                .store()
                .call(move |c| crate::ccm::scope::reach_of_basic(c, &user))
                .await;
            match found {
                Ok(r) => r,
                Err(e) => {
                    // Never let a client in unbound because its scope could not be read.
                    log::error!("mqtt {transport} {addr}: cannot read the credential's scope: {e}");
                    conn.send(&Packet::ConnAck(ConnAck::new(
                        ConnectReturnCode::ServiceUnavailable,
                        false,
                    )))
                    .await?;
                    return Ok(None);
                }
            }
        }
        _ => None,
    };
    let attached = ctx.hub.register_scoped(client_id, identity.clone(), reach);
    ctx.stats.connection_accepted();
    if !client_id.is_empty() {
        // Takeover: give the old connection of this client ID a moment to park its session.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !ctx.hub.client_gone(client_id, attached.registration.id) && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let parked = if client_id.is_empty() {
        None
    } else {
        ctx.hub.take_parked(client_id)
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
        attached
            .registration
            .set_filters(session.subscriptions().to_vec());
        for p in session.resume() {
            conn.send(&p).await?;
        }
    }
    // §3.1.2.10: the server closes after 1.5 × keepalive without a packet; 0 disables it.
    let idle = (connect.keep_alive > 0)
        .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
    Ok(Some(Live {
        session,
        attached,
        idle,
        client_id: client_id.to_owned(),
    }))
}
