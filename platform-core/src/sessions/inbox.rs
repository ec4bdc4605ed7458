//! A session's queue of copies and pushes: bounded in messages and bytes, and free while empty.
//!
//! Most of a site's connections are idle, so an empty queue costs a few words: no
//! buffer is allocated until a message arrives (a `tokio::sync::mpsc` channel allocates
//! a block of 32 slots up front, ~2 KiB per connection). Senders never wait: a full
//! queue refuses the message and the caller counts it (see [`super::Hub`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::Outbound;

/// The shared queue; the hub holds one side ([`Inbox::try_send`]), the connection the
/// other ([`Inbox::recv`]).
#[derive(Debug)]
pub struct Inbox {
    state: Mutex<Queue>,
    ready: Notify,
    max_messages: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Queue {
    messages: VecDeque<Outbound>,
    bytes: usize,
}

impl Inbox {
    /// An empty queue holding at most `max_messages` messages and `max_bytes` payload
    /// bytes (a message is always let in when the queue is empty).
    pub fn new(max_messages: usize, max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            ready: Notify::new(),
            max_messages,
            max_bytes,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Every operation leaves the queue consistent: a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `msg`, or gives it back when the queue is full.
    pub fn try_send(&self, msg: Outbound) -> Result<(), Outbound> {
        {
            let mut q = self.lock();
            let len = msg.payload.len();
            let empty = q.messages.is_empty();
            if !empty && (q.messages.len() >= self.max_messages || q.bytes + len > self.max_bytes) {
                return Err(msg);
            }
            q.bytes += len;
            q.messages.push_back(msg);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// The oldest message, if any.
    pub fn try_recv(&self) -> Option<Outbound> {
        let mut q = self.lock();
        let msg = q.messages.pop_front()?;
        q.bytes -= msg.payload.len();
        if q.messages.is_empty() {
            // Give the buffer back: an idle connection keeps nothing.
            q.messages = VecDeque::new();
        }
        Some(msg)
    }

    /// Waits for the next message. Cancel-safe: a message is taken only when returned
    /// (and a wake-up lost to a dropped wait is passed on by `Notify`).
    pub async fn recv(&self) -> Outbound {
        loop {
            if let Some(msg) = self.try_recv() {
                return msg;
            }
            self.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rumqttc::mqttbytes::QoS;

    fn msg(n: usize) -> Outbound {
        Outbound {
            topic: "t".into(),
            qos: QoS::AtMostOnce,
            payload: Bytes::from(vec![0u8; n]),
        }
    }

    #[test]
    fn bounded_by_messages_and_bytes_but_one_message_always_fits() {
        let q = Inbox::new(2, 10);
        assert!(q.try_send(msg(50)).is_ok(), "an empty queue takes anything");
        assert!(q.try_send(msg(1)).is_err(), "over the byte bound");
        assert_eq!(q.try_recv().map(|m| m.payload.len()), Some(50));
        assert!(q.try_send(msg(4)).is_ok());
        assert!(q.try_send(msg(4)).is_ok());
        assert!(q.try_send(msg(0)).is_err(), "over the message bound");
        assert_eq!(q.try_recv().map(|m| m.payload.len()), Some(4));
        assert!(q.try_send(msg(6)).is_ok(), "room again once taken");
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_and_a_dropped_wait_loses_nothing() {
        let q = Inbox::new(8, 1024);
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.recv().await.payload.len() })
        };
        tokio::task::yield_now().await;
        assert!(q.try_send(msg(3)).is_ok());
        assert_eq!(waiter.await.ok(), Some(3));
        // A wait cancelled after the message arrived: the message stays for the next one.
        assert!(q.try_send(msg(5)).is_ok());
        {
            let cancelled = q.recv();
            drop(cancelled);
        }
        assert_eq!(q.recv().await.payload.len(), 5);
    }
}
