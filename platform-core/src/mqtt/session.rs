//! One client's MQTT 3.1.1 session after CONNECT: a state machine with no I/O.
//!
//! [`Session::handle`] takes a decoded packet and returns [`Action`]s for the connection
//! actor: packets to send, requests to route to the extensions, or a reason to close.
//!
//! Invariants:
//! - a QoS 1 request is acknowledged (PUBACK) only after it was processed, so a crash
//!   before that makes the client resend it (at-least-once, MQTT 3.1.1 §4.3.2);
//! - a QoS 2 request is processed once per packet ID: PUBREC is sent after processing and
//!   the ID is remembered until PUBREL, so a resend with DUP is acknowledged, not re-run;
//! - packet IDs of our own QoS 1 publishes are unique among those awaiting PUBACK;
//! - at most [`MAX_OUTGOING_INFLIGHT`] QoS 1 publishes await PUBACK (the in-flight window);
//!   more wait in a bounded queue and go out, in order, as PUBACKs free the window;
//! - a persistent session (`clean session` = 0) keeps its subscriptions, unacknowledged
//!   publishes and queue across connections; [`Session::resume`] resends the
//!   unacknowledged ones with DUP set (MQTT 3.1.1 §4.4).

use std::collections::{BTreeMap, HashSet, VecDeque};

use bytes::Bytes;
use rumqttc::mqttbytes::v4::{
    Packet, PubAck, PubComp, PubRec, PubRel, Publish, SubAck, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::QoS;
use smallvec::{smallvec, SmallVec};

use super::filter::{validate_filter, validate_topic_name};

/// Why the server closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent DISCONNECT.
    ClientDisconnect,
    /// The client broke the protocol; the text says how.
    ProtocolViolation(String),
}

/// What the connection actor must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Send(Packet),
    /// Route this PUBLISH to the extensions, then send `ack` (if any).
    Request {
        publish: Publish,
        ack: Option<Ack>,
    },
    Close(CloseReason),
}

/// What one packet asks for: nearly always one action, kept inline (no allocation per
/// packet).
pub type Actions = SmallVec<[Action; 1]>;

/// The acknowledgement a request gets once it was processed: 4 bytes, where a whole
/// [`Packet`] would take the size of its largest kind in every request in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// QoS 1: PUBACK.
    PubAck(u16),
    /// QoS 2: PUBREC (PUBCOMP follows the client's PUBREL).
    PubRec(u16),
}

impl Ack {
    /// The packet to send.
    pub fn packet(self) -> Packet {
        match self {
            Ack::PubAck(pkid) => Packet::PubAck(PubAck::new(pkid)),
            Ack::PubRec(pkid) => Packet::PubRec(PubRec::new(pkid)),
        }
    }
}

/// Upper bound on our own unacknowledged QoS 1 publishes per session (in-flight window).
pub const MAX_OUTGOING_INFLIGHT: usize = 100;
/// Upper bound on QoS 1 publishes waiting for the window, in messages and in payload
/// bytes; beyond either the oldest is dropped.
pub const MAX_QUEUED: usize = 1000;
pub const MAX_QUEUED_BYTES: usize = 1 << 20;

/// Session state of one connected client.
#[derive(Debug)]
pub struct Session {
    /// Filters with the QoS granted for them.
    subscriptions: Vec<(String, QoS)>,
    /// Last packet ID we used; the next one is searched from here.
    last_pkid: u16,
    /// Our QoS 1 publishes not yet acknowledged, by packet ID.
    outgoing: BTreeMap<u16, Publish>,
    /// QoS 2 packet IDs received and processed, awaiting PUBREL.
    incoming_qos2: HashSet<u16>,
    /// QoS 1 publishes waiting for room in the in-flight window.
    queued: VecDeque<Publish>,
    /// Payload bytes in `queued`.
    queued_bytes: usize,
    /// Publishes dropped because the queue was full.
    dropped: u64,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    pub fn new() -> Self {
        Self {
            subscriptions: Vec::new(),
            last_pkid: 0,
            outgoing: BTreeMap::new(),
            incoming_qos2: HashSet::new(),
            queued: VecDeque::new(),
            queued_bytes: 0,
            dropped: 0,
        }
    }

    /// A persistent session's client is back: the packets to send again, in order —
    /// unacknowledged publishes with DUP set, then what the window has room for.
    pub fn resume(&mut self) -> Vec<Packet> {
        let mut out: Vec<Packet> = self
            .outgoing
            .values()
            .map(|p| {
                let mut p = p.clone();
                p.dup = true;
                Packet::Publish(p)
            })
            .collect();
        out.extend(self.release());
        out
    }

    /// Moves queued publishes into the window while it has room.
    fn release(&mut self) -> Vec<Packet> {
        let mut out = Vec::new();
        while self.outgoing.len() < MAX_OUTGOING_INFLIGHT {
            let Some(mut p) = self.queued.pop_front() else {
                break;
            };
            self.queued_bytes -= p.payload.len();
            p.pkid = self.next_pkid();
            self.outgoing.insert(p.pkid, p.clone());
            out.push(Packet::Publish(p));
        }
        out
    }

    /// Reacts to one packet from the client.
    pub fn handle(&mut self, packet: Packet) -> Actions {
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubRel(rel) => {
                self.incoming_qos2.remove(&rel.pkid);
                // §4.3.3: answer PUBCOMP even for an unknown ID (a resend after our PUBCOMP got lost).
                smallvec![Action::Send(Packet::PubComp(PubComp::new(rel.pkid)))]
            }
            Packet::PubAck(ack) => {
                self.outgoing.remove(&ack.pkid);
                self.release().into_iter().map(Action::Send).collect()
            }
            Packet::PubRec(rec) => {
                // We never publish QoS 2, but answer correctly if a client treats ours so.
                self.outgoing.remove(&rec.pkid);
                let mut out = smallvec![Action::Send(Packet::PubRel(PubRel::new(rec.pkid)))];
                out.extend(self.release().into_iter().map(Action::Send));
                out
            }
            Packet::PubComp(_) => smallvec![],
            Packet::Subscribe(sub) => {
                let mut codes = Vec::with_capacity(sub.filters.len());
                for f in sub.filters {
                    if validate_filter(&f.path).is_err() {
                        codes.push(SubscribeReasonCode::Failure);
                        continue;
                    }
                    // Responses go out at QoS 1 at most (docs/protocol.md §1: QoS 2 answered with QoS 1).
                    let granted = match f.qos {
                        QoS::AtMostOnce => QoS::AtMostOnce,
                        _ => QoS::AtLeastOnce,
                    };
                    self.subscriptions.retain(|(p, _)| *p != f.path);
                    self.subscriptions.push((f.path, granted));
                    codes.push(SubscribeReasonCode::Success(granted));
                }
                smallvec![Action::Send(Packet::SubAck(SubAck::new(sub.pkid, codes)))]
            }
            Packet::Unsubscribe(unsub) => {
                self.subscriptions
                    .retain(|(p, _)| !unsub.topics.contains(p));
                smallvec![Action::Send(Packet::UnsubAck(UnsubAck::new(unsub.pkid)))]
            }
            Packet::PingReq => smallvec![Action::Send(Packet::PingResp)],
            Packet::Disconnect => smallvec![Action::Close(CloseReason::ClientDisconnect)],
            Packet::Connect(_) => smallvec![violation("second CONNECT on one connection")],
            other => smallvec![violation(&format!(
                "server-only packet from client: {other:?}"
            ))],
        }
    }

    fn on_publish(&mut self, p: Publish) -> Actions {
        if let Err(e) = validate_topic_name(&p.topic) {
            return smallvec![violation(&e.to_string())];
        }
        match p.qos {
            QoS::AtMostOnce => smallvec![Action::Request {
                publish: p,
                ack: None,
            }],
            QoS::AtLeastOnce => {
                let ack = Some(Ack::PubAck(p.pkid));
                smallvec![Action::Request { publish: p, ack }]
            }
            QoS::ExactlyOnce => {
                let rec = Ack::PubRec(p.pkid);
                if self.incoming_qos2.insert(p.pkid) {
                    smallvec![Action::Request {
                        publish: p,
                        ack: Some(rec),
                    }]
                } else {
                    smallvec![Action::Send(rec.packet())]
                }
            }
        }
    }

    /// This session's filters with their granted QoS.
    pub fn subscriptions(&self) -> &[(String, QoS)] {
        &self.subscriptions
    }

    /// The QoS a subscription of this session grants for `topic`, if any matches.
    #[cfg(test)]
    pub fn subscribed_qos(&self, topic: &str) -> Option<QoS> {
        self.subscriptions
            .iter()
            .filter(|(f, _)| super::filter::matches(f, topic))
            .map(|(_, q)| *q)
            .max_by_key(|q| *q as u8)
    }

    /// Builds a PUBLISH to this client, or queues it when the in-flight window is full
    /// (`None`; it goes out when a PUBACK frees the window). QoS 2 is sent as QoS 1.
    pub fn publish(&mut self, topic: String, qos: QoS, payload: Bytes) -> Option<Packet> {
        let mut out = None;
        let sent: Result<(), std::convert::Infallible> =
            self.publish_to(topic, qos, payload, |p| {
                out = Some(p.clone());
                Ok(())
            });
        let Ok(()) = sent;
        out
    }

    /// [`Session::publish`], handing the packet to `send` (which writes it out) instead
    /// of returning it: a QoS 1 packet is then kept for a resend as it is, with no copy
    /// of its topic made (every answered request publishes one).
    pub fn publish_to<E>(
        &mut self,
        topic: String,
        qos: QoS,
        payload: Bytes,
        send: impl FnOnce(&Packet) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut p = Publish::from_bytes(topic, QoS::AtMostOnce, payload);
        if qos == QoS::AtMostOnce {
            return send(&Packet::Publish(p));
        }
        p.qos = QoS::AtLeastOnce;
        if self.outgoing.len() < MAX_OUTGOING_INFLIGHT && self.queued.is_empty() {
            p.pkid = self.next_pkid();
            let packet = Packet::Publish(p);
            let sent = send(&packet);
            if let Packet::Publish(p) = packet {
                self.outgoing.insert(p.pkid, p);
            }
            return sent;
        }
        self.queued_bytes += p.payload.len();
        self.queued.push_back(p);
        while self.queued.len() > MAX_QUEUED
            || (self.queued_bytes > MAX_QUEUED_BYTES && self.queued.len() > 1)
        {
            if let Some(old) = self.queued.pop_front() {
                self.queued_bytes -= old.payload.len();
            }
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                log::warn!(
                    "mqtt: a client is not acknowledging: {} queued messages dropped",
                    self.dropped
                );
            }
        }
        Ok(())
    }

    /// Number of QoS 1 publishes waiting for room in the window.
    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Number of our QoS 1 publishes awaiting PUBACK.
    #[cfg(test)]
    pub fn outgoing_inflight(&self) -> usize {
        self.outgoing.len()
    }

    fn next_pkid(&mut self) -> u16 {
        // Caller guarantees fewer than MAX_OUTGOING_INFLIGHT IDs in use, so this terminates.
        loop {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            if !self.outgoing.contains_key(&self.last_pkid) {
                return self.last_pkid;
            }
        }
    }
}

fn violation(what: &str) -> Action {
    Action::Close(CloseReason::ProtocolViolation(what.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::v4::{Subscribe, Unsubscribe};

    fn publish(topic: &str, qos: QoS, pkid: u16) -> Packet {
        let mut p = Publish::new(topic, qos, b"x".to_vec());
        p.pkid = pkid;
        Packet::Publish(p)
    }

    #[test]
    fn qos0_publish_is_routed_without_ack() {
        let mut s = Session::new();
        let a = s.handle(publish("kp1/a/dcx/t/json", QoS::AtMostOnce, 0));
        assert!(matches!(&a[..], [Action::Request { ack: None, .. }]));
    }

    #[test]
    fn qos1_publish_is_acked_after_routing() {
        let mut s = Session::new();
        let a = s.handle(publish("kp1/a/dcx/t/json", QoS::AtLeastOnce, 7));
        assert!(matches!(
            &a[..],
            [Action::Request {
                ack: Some(Ack::PubAck(7)),
                ..
            }]
        ));
    }

    #[test]
    fn qos2_publish_is_processed_once_until_pubrel() {
        let mut s = Session::new();
        let first = s.handle(publish("kp1/a/dcx/t/json", QoS::ExactlyOnce, 9));
        assert!(matches!(
            &first[..],
            [Action::Request {
                ack: Some(Ack::PubRec(9)),
                ..
            }]
        ));
        let dup = s.handle(publish("kp1/a/dcx/t/json", QoS::ExactlyOnce, 9));
        assert_eq!(
            dup.into_vec(),
            vec![Action::Send(Packet::PubRec(PubRec::new(9)))]
        );
        let comp = s.handle(Packet::PubRel(PubRel::new(9)));
        assert_eq!(
            comp.into_vec(),
            vec![Action::Send(Packet::PubComp(PubComp::new(9)))]
        );
        let again = s.handle(publish("kp1/a/dcx/t/json", QoS::ExactlyOnce, 9));
        assert!(matches!(&again[..], [Action::Request { .. }]));
    }

    #[test]
    fn a_wildcard_in_a_publish_topic_closes_the_connection() {
        let mut s = Session::new();
        let a = s.handle(publish("kp1/+/dcx", QoS::AtMostOnce, 0));
        assert!(matches!(
            &a[..],
            [Action::Close(CloseReason::ProtocolViolation(_))]
        ));
    }

    #[test]
    fn subscribe_grants_at_most_qos1_and_fails_bad_filters() {
        let mut s = Session::new();
        let mut sub = Subscribe::new("kp1/a/#", QoS::ExactlyOnce);
        sub.pkid = 3;
        sub.add("a/#/b".into(), QoS::AtMostOnce);
        let a = s.handle(Packet::Subscribe(sub));
        assert_eq!(
            a.into_vec(),
            vec![Action::Send(Packet::SubAck(SubAck::new(
                3,
                vec![
                    SubscribeReasonCode::Success(QoS::AtLeastOnce),
                    SubscribeReasonCode::Failure
                ]
            )))]
        );
        assert_eq!(
            s.subscribed_qos("kp1/a/dcx/t/json/1/status"),
            Some(QoS::AtLeastOnce)
        );
        assert_eq!(s.subscribed_qos("kp1/b/x"), None);
        let mut unsub = Unsubscribe::new("kp1/a/#");
        unsub.pkid = 4;
        assert_eq!(
            s.handle(Packet::Unsubscribe(unsub)).into_vec(),
            vec![Action::Send(Packet::UnsubAck(UnsubAck::new(4)))]
        );
        assert_eq!(s.subscribed_qos("kp1/a/dcx/t/json/1/status"), None);
    }

    #[test]
    fn outgoing_qos1_ids_are_unique_and_freed_by_puback() {
        let mut s = Session::new();
        let mut ids = HashSet::new();
        for _ in 0..MAX_OUTGOING_INFLIGHT {
            let Some(Packet::Publish(p)) = s.publish("t".into(), QoS::AtLeastOnce, Bytes::new())
            else {
                panic!("not a publish")
            };
            assert_eq!(p.qos, QoS::AtLeastOnce);
            assert!(ids.insert(p.pkid));
        }
        // Window full: the next one waits for a PUBACK instead of being sent.
        assert!(s
            .publish("next".into(), QoS::AtLeastOnce, Bytes::new())
            .is_none());
        assert_eq!(s.queued(), 1);
        let released = s.handle(Packet::PubAck(PubAck::new(1)));
        let [Action::Send(Packet::Publish(p))] = &released[..] else {
            panic!("expected the queued publish, got {released:?}")
        };
        assert_eq!(p.topic, "next");
        assert!(
            !ids.contains(&p.pkid) || p.pkid == 1,
            "no id in flight is reused"
        );
        assert_eq!(s.outgoing_inflight(), MAX_OUTGOING_INFLIGHT);
        assert_eq!(s.queued(), 0);
    }

    #[test]
    fn resume_resends_unacknowledged_publishes_with_dup() {
        let mut s = Session::new();
        s.publish("a".into(), QoS::AtLeastOnce, Bytes::new());
        s.publish("b".into(), QoS::AtLeastOnce, Bytes::new());
        s.handle(Packet::PubAck(PubAck::new(1)));
        let again = s.resume();
        let [Packet::Publish(p)] = &again[..] else {
            panic!("expected one resend, got {again:?}")
        };
        assert_eq!((p.topic.as_str(), p.dup, p.pkid), ("b", true, 2));
    }

    #[test]
    fn publish_to_hands_over_the_packet_and_keeps_it_for_a_resend() {
        let mut s = Session::new();
        let mut seen = Vec::new();
        let sent: Result<(), ()> = s.publish_to(
            "kp1/a/dcx/t/json/1/status".into(),
            QoS::AtLeastOnce,
            Bytes::from_static(b"x"),
            |p| {
                seen.push(p.clone());
                Ok(())
            },
        );
        assert_eq!(sent, Ok(()));
        let [Packet::Publish(p)] = &seen[..] else {
            panic!("expected the publish, got {seen:?}")
        };
        assert_eq!(
            (p.pkid, p.qos, &p.payload[..]),
            (1, QoS::AtLeastOnce, &b"x"[..])
        );
        assert_eq!(s.outgoing_inflight(), 1);
        // What `send` failed to write is still resent.
        let failed = s.publish_to("b".into(), QoS::AtLeastOnce, Bytes::new(), |_| Err("full"));
        assert_eq!(failed, Err("full"));
        let again = s.resume();
        let topics: Vec<_> = again
            .iter()
            .map(|p| match p {
                Packet::Publish(p) => (p.topic.as_str(), p.dup),
                other => panic!("not a publish: {other:?}"),
            })
            .collect();
        assert_eq!(topics, [("kp1/a/dcx/t/json/1/status", true), ("b", true)]);
        // QoS 0 is handed over and not kept.
        let _: Result<(), ()> = s.publish_to("c".into(), QoS::AtMostOnce, Bytes::new(), |p| {
            assert!(matches!(p, Packet::Publish(p) if p.pkid == 0));
            Ok(())
        });
        assert_eq!(s.outgoing_inflight(), 2);
    }

    #[test]
    fn ping_disconnect_and_protocol_violations() {
        let mut s = Session::new();
        assert_eq!(
            s.handle(Packet::PingReq).into_vec(),
            vec![Action::Send(Packet::PingResp)]
        );
        assert_eq!(
            s.handle(Packet::Disconnect).into_vec(),
            vec![Action::Close(CloseReason::ClientDisconnect)]
        );
        assert!(matches!(
            &s.handle(Packet::PingResp)[..],
            [Action::Close(CloseReason::ProtocolViolation(_))]
        ));
    }
}
