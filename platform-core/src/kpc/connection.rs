//! One MQTT client connection: the I/O actor around [`crate::mqtt::session::Session`].
//!
//! Lifecycle: read CONNECT within `connect_timeout` → authenticate (CCM) → CONNACK →
//! loop { read a packet or time out after 1.5 × keepalive (MQTT 3.1.1 §3.1.2.10) → act }.
//! Data-sample requests are answered while the next packets are read (up to
//! `MAX_OVERLAP` at once, so their appends share the store's group commit); any other
//! request waits for those and runs alone. Replies keep the order of requests.
//! Malformed or oversized packets, protocol violations and idle timeouts close the
//! connection; none of them affects other connections (counted and logged with a rate
//! limit, see [`super::stats`]). Will messages are accepted and never relayed; the retain
//! flag is ignored (KPC is not a broker: nothing is stored for later subscribers).
//! Clean sessions start empty; a persistent session (`clean session` = 0) is resumed from
//! the hub, and its unacknowledged pushes are sent again (DUP) before anything else.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::{FuturesOrdered, StreamExt};

use rumqttc::mqttbytes::v4::{Packet, Publish};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::context::{ConnContext, Peer};
use super::framing::{ConnError, Outgoing, PacketReader};
use super::handshake::{accept, read_connect, Live};
use super::router::Reply;
use super::stats::Incident;
use super::turns::{self, Turn, Turns};
use crate::mqtt::session::{self, Ack, Action, CloseReason};

/// Serves one client until it disconnects, breaks the protocol, idles out, is cut, or `shutdown`.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    peer: Peer,
    ctx: Arc<ConnContext>,
    shutdown: CancellationToken,
) {
    let mut conn = PacketReader::new(io, ctx.limits.max_packet_size);
    let outcome = run(&mut conn, &peer, &ctx, &shutdown).await;
    let (addr, transport) = (peer.addr, peer.transport);
    match outcome {
        Ok(()) => log::debug!("mqtt {transport} {addr}: closed"),
        Err(ConnError::Eof) => log::debug!("mqtt {transport} {addr}: closed by peer"),
        Err(e @ (ConnError::Idle | ConnError::WriteStalled(_))) => {
            log::info!("mqtt {transport} {addr}: closing connection: {e}")
        }
        Err(e @ ConnError::TooLarge(_)) => ctx.stats.report(Incident::Oversized, || {
            format!("mqtt {transport} {addr}: closing connection: {e}")
        }),
        Err(e @ ConnError::Malformed(_)) => ctx.stats.report(Incident::Malformed, || {
            format!("mqtt {transport} {addr}: closing connection: {e}")
        }),
        Err(e @ ConnError::Io(_)) => log::debug!("mqtt {transport} {addr}: {e}"),
    }
    let _ = conn.io.shutdown().await;
}

/// One connection from CONNECT to close. A shutdown cuts the handshake or the packet loop,
/// never the cleanup after it (the session's endpoints are disconnected either way).
async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut PacketReader<S>,
    peer: &Peer,
    ctx: &ConnContext,
    shutdown: &CancellationToken,
) -> Result<(), ConnError> {
    // The handshake's futures are boxed (and gone once done): a task's size is that of
    // its largest state, and an idle connection should not carry the handshake's.
    let handshake = async {
        let Some(connect) = Box::pin(read_connect(conn, peer, ctx)).await? else {
            return Ok(None);
        };
        let live = Box::pin(accept(conn, peer, ctx, &connect)).await?;
        // Only this of the CONNECT is needed later; its strings are not kept.
        Ok::<_, ConnError>(live.map(|l| (connect.clean_session, l)))
    };
    let (clean_session, mut live) = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = handshake => match r? {
            Some(started) => started,
            None => return Ok(()),
        },
    };
    let outcome = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        r = live.serve(conn, peer, ctx) => r,
    };
    if !clean_session {
        ctx.hub.park(&live.client_id, live.session);
    }
    let sid = live.attached.registration.id;
    drop(live.attached);
    // EPL: the endpoints this session used may now be disconnected.
    ctx.router.session_closed(sid).await;
    outcome
}

/// A request being answered while the connection reads on: its packet's acknowledgement,
/// the reply, sent together once the reply is ready, and the turn it holds until then.
type Answer = (Publish, Option<Ack>, Option<Reply>, Option<Turn>);

/// What a packet asked for, beyond a data-sample request: see [`Live::act`].
struct Todo {
    actions: session::Actions,
    /// The turn the packet was read with (a PUBLISH), if not spent.
    turn: Option<Turn>,
    /// A SUBSCRIBE or UNSUBSCRIBE: the hub learns the new filters.
    resubscribed: bool,
}

/// Most requests of one connection answered at once (data samples only; see
/// [`super::router::Dispatcher::may_overlap`]). Replies still go out in the order of the
/// requests.
const MAX_OVERLAP: usize = 64;

/// The idle timer of a connection without keepalive (never fires: its branch is off).
const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

impl Live {
    /// Serves the client until it leaves, breaks the protocol, idles out or is cut.
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut PacketReader<S>,
        peer: &Peer,
        ctx: &ConnContext,
    ) -> Result<(), ConnError> {
        let idle = self.idle;
        // When the client was last heard from. The idle timer is set once and moved on
        // only when it fires, not at every packet.
        let mut heard = Instant::now();
        let idle_timer = tokio::time::sleep(idle.unwrap_or(NEVER));
        tokio::pin!(idle_timer);
        let kill = self.attached.kill.clone();
        let killed = kill.cancelled();
        tokio::pin!(killed);
        let mut overlap: FuturesOrdered<BoxFuture<'_, Answer>> = FuturesOrdered::new();
        let mut turns = Turns::new(ctx.in_flight.clone());
        // A PUBLISH read and waiting for a turn (MAX_REQUESTS_IN_FLIGHT); nothing more is
        // read meanwhile, so what the client sends next waits in the socket buffer.
        let mut pending: Option<Packet> = None;
        loop {
            if !conn.has_packet() {
                // What comes next is the client's to send: hold no spare turns meanwhile.
                turns.release_spare();
            }
            let room = overlap.len() < MAX_OVERLAP;
            let next = tokio::select! {
                // Our turn came for the PUBLISH read before.
                arrived = turns.arrived(), if turns.is_waiting() => {
                    if !arrived {
                        return Ok(());
                    }
                    // The wait was the core's, not the client's silence.
                    heard = Instant::now();
                    pending.take().map(|packet| (packet, turns.take(MAX_OVERLAP - overlap.len())))
                }
                // A packet from the client (cancel-safe: partial frames stay in the buffer).
                packet = conn.next(), if room && pending.is_none() => {
                    heard = Instant::now();
                    let packet = packet?;
                    // A PUBLISH may be a request: it needs a turn before it is acted on.
                    let turn = match packet {
                        Packet::Publish(_) => match turns.take(MAX_OVERLAP - overlap.len()) {
                            Some(turn) => Some(turn),
                            None => {
                                turns.wait(MAX_OVERLAP - overlap.len());
                                pending = Some(packet);
                                continue;
                            }
                        },
                        _ => None,
                    };
                    Some((packet, turn))
                }
                // Requests answered (in order); whatever is ready goes out in one write.
                Some(done) = overlap.next(), if !overlap.is_empty() => {
                    let mut replies = Replies::default();
                    self.answer(done, &mut replies, peer, ctx)?;
                    while let Some(Some(more)) = overlap.next().now_or_never() {
                        self.answer(more, &mut replies, peer, ctx)?;
                    }
                    Box::pin(replies.send(conn)).await?;
                    None
                }
                // A push for an endpoint this session used, or a copy of another session's reply.
                msg = self.attached.inbox.recv() => {
                    if let Some(out) = self.session.publish(msg.topic, msg.qos, msg.payload) {
                        Box::pin(conn.send(&out)).await?;
                    }
                    None
                }
                // The token or credential this session uses was suspended or revoked, or
                // the same client ID connected again.
                () = &mut killed => {
                    let (addr, transport, client_id) = (peer.addr, peer.transport, &self.client_id);
                    ctx.stats.report(Incident::SessionCut, || {
                        format!("mqtt {transport} {addr}: session of client {client_id:?} ended by the server")
                    });
                    return Ok(());
                }
                // §3.1.2.10: nothing from the client for 1.5 × keepalive. Time the core
                // was not reading (waiting for a turn, or its own answers) does not count.
                () = &mut idle_timer, if idle.is_some() => {
                    if pending.is_some() || overlap.len() >= MAX_OVERLAP {
                        heard = Instant::now();
                    }
                    let due = heard + idle.unwrap_or(NEVER);
                    if due <= Instant::now() {
                        return Err(ConnError::Idle);
                    }
                    idle_timer.as_mut().reset(due);
                    None
                }
            };
            // A packet to act on, just read or after waiting for its turn.
            let Some((packet, turn)) = next else { continue };
            if let Some(rest) = self.on_packet(packet, turn, &mut turns, ctx, &mut overlap) {
                // Boxed, like `answer`: kept out of the idle connection's task.
                let flow =
                    Box::pin(self.act(rest, &mut turns, conn, peer, ctx, &mut overlap)).await?;
                if flow == Flow::Close {
                    return Box::pin(self.finish(overlap, conn, peer, ctx)).await;
                }
            }
        }
    }

    /// After a DISCONNECT: what was asked before it is still answered.
    async fn finish<'c, S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mut overlap: FuturesOrdered<BoxFuture<'c, Answer>>,
        conn: &mut PacketReader<S>,
        peer: &Peer,
        ctx: &ConnContext,
    ) -> Result<(), ConnError> {
        while let Some(done) = overlap.next().await {
            let mut replies = Replies::default();
            if self.answer(done, &mut replies, peer, ctx).is_ok() {
                let _ = replies.send(conn).await;
            }
        }
        Ok(())
    }

    /// Takes one packet to the session state machine. A data-sample request, the hot
    /// path, joins the requests being answered right here, with no future of its own;
    /// whatever else the packet asks for is returned for [`Live::act`].
    fn on_packet<'c>(
        &mut self,
        packet: Packet,
        turn: Option<Turn>,
        turns: &mut Turns,
        ctx: &'c ConnContext,
        overlap: &mut FuturesOrdered<BoxFuture<'c, Answer>>,
    ) -> Option<Box<Todo>> {
        let resubscribed = matches!(packet, Packet::Subscribe(_) | Packet::Unsubscribe(_));
        let mut actions = self.session.handle(packet);
        match actions.pop() {
            Some(Action::Request { publish, ack })
                if actions.is_empty() && ctx.router.may_overlap(&publish.topic) =>
            {
                self.start(publish, ack, turn, ctx, overlap);
                return None;
            }
            Some(other) => actions.push(other),
            // Nothing to do (a PUBACK with nothing queued behind it).
            None if !resubscribed => {
                if let Some(unspent) = turn {
                    turns.give_back(unspent);
                }
                return None;
            }
            None => {}
        }
        // Boxed: rare, and kept out of the connection task's own state.
        Some(Box::new(Todo {
            actions,
            turn,
            resubscribed,
        }))
    }

    /// A request joins those being answered, holding `turn` until it is answered.
    fn start<'c>(
        &self,
        publish: Publish,
        ack: Option<Ack>,
        turn: Option<Turn>,
        ctx: &'c ConnContext,
        overlap: &mut FuturesOrdered<BoxFuture<'c, Answer>>,
    ) {
        ctx.stats.request();
        let sid = self.attached.registration.id;
        let router = &ctx.router;
        overlap.push_back(Box::pin(async move {
            let reply = router
                .route(&publish.topic, &publish.payload, Some(sid))
                .await;
            (publish, ack, reply, turn)
        }));
    }

    /// Acts on what a packet asked for beyond a data sample. A request other than a
    /// data sample first waits for those being answered, then runs alone (so a request
    /// never overtakes one sent before it, except samples). A turn left unspent goes
    /// back to `turns`.
    async fn act<'c, S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        todo: Box<Todo>,
        turns: &mut Turns,
        conn: &mut PacketReader<S>,
        peer: &Peer,
        ctx: &'c ConnContext,
        overlap: &mut FuturesOrdered<BoxFuture<'c, Answer>>,
    ) -> Result<Flow, ConnError> {
        let Todo {
            actions,
            mut turn,
            resubscribed,
        } = *todo;
        let mut flow = Flow::Continue;
        for action in actions {
            match action {
                Action::Send(p) => conn.send(&p).await?,
                Action::Request { publish, ack } => {
                    let overlaps = ctx.router.may_overlap(&publish.topic);
                    self.start(publish, ack, turn.take(), ctx, overlap);
                    if !overlaps {
                        while let Some(done) = overlap.next().await {
                            let mut replies = Replies::default();
                            self.answer(done, &mut replies, peer, ctx)?;
                            replies.send(conn).await?;
                        }
                    }
                }
                Action::Close(CloseReason::ClientDisconnect) => {
                    flow = Flow::Close;
                    break;
                }
                Action::Close(CloseReason::ProtocolViolation(why)) => {
                    let (addr, transport) = (peer.addr, peer.transport);
                    ctx.stats.report(Incident::ProtocolViolation, || {
                        format!("mqtt {transport} {addr}: protocol violation, closing: {why}")
                    });
                    flow = Flow::Close;
                    break;
                }
            }
        }
        if let Some(unspent) = turn {
            turns.give_back(unspent);
        }
        if resubscribed && flow == Flow::Continue {
            let filters = self.session.subscriptions().to_vec();
            self.attached.registration.set_filters(filters);
        }
        Ok(flow)
    }

    /// Adds an answered request's reply, then its PUBACK, to `replies` (copies go to
    /// watchers via the hub).
    fn answer(
        &mut self,
        (publish, ack, reply, turn): Answer,
        replies: &mut Replies,
        peer: &Peer,
        ctx: &ConnContext,
    ) -> Result<(), ConnError> {
        if let Some(turn) = turn {
            turns::gather(&mut replies.turn, turn);
        }
        if let Some(reply) = reply {
            let qos = match publish.qos {
                QoS::AtMostOnce => QoS::AtMostOnce,
                _ => QoS::AtLeastOnce,
            };
            if reply.topic.ends_with("/error") {
                let (addr, transport) = (peer.addr, peer.transport);
                ctx.stats.report(Incident::RequestError, || {
                    format!(
                        "mqtt {transport} {addr}: request on {} refused: {}",
                        publish.topic,
                        String::from_utf8_lossy(&reply.payload)
                    )
                });
            }
            let payload = Bytes::from(reply.payload);
            ctx.hub
                .fan_out(self.attached.registration.id, &reply.topic, &payload);
            self.session
                .publish_to(reply.topic, qos, payload, |p| replies.out.push(p))?;
        }
        if let Some(ack) = ack {
            replies.out.push(&ack.packet())?;
        }
        Ok(())
    }
}

/// Replies of answered requests on their way out in one write, and the turns those
/// requests held, given back to the budget together before the write.
#[derive(Default)]
struct Replies {
    out: Outgoing,
    turn: Option<Turn>,
}

impl Replies {
    async fn send<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        conn: &mut PacketReader<S>,
    ) -> Result<(), ConnError> {
        let Replies { out, turn } = self;
        drop(turn);
        conn.write(out).await
    }
}

/// Whether the connection goes on after a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
