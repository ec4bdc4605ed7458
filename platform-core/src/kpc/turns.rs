//! A connection's share of the core's budget of requests in flight: turns are taken from
//! the shared, first-come-first-served budget a few at a time, spent one per request, and
//! the spare ones are given back before the connection waits on its client.
//!
//! Taking turns in small batches keeps the budget's cost per request low when many
//! connections wait for it (one wake-up per batch, not per request), and giving the spare
//! ones back whenever the connection has nothing more to read keeps an idle connection
//! from holding any.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most requests read and not yet answered, over every connection together. A PUBLISH
/// is acted on only with one of these in hand, and a connection waiting for one reads
/// nothing more, so under more load than the core can take, requests wait in the kernel's
/// socket buffers (where TCP slows the senders down) instead of in the core's memory,
/// and connections take turns (the budget is fair). Enough to keep the store's group
/// commit full.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 8192;

/// Most turns a connection takes from the budget at once (never more than the budget
/// holds). When the budget is short, each wait for turns costs a wake-up of the
/// connection and a trip through the budget's queue; with 1 000 busy clients and the
/// default budget, batches of 32 instead of 8 gave about 23 % more requests per second
/// (BENCHMARKS.md, 2026-12-04 evening). A batch's spare turns go back as soon as the
/// connection has nothing more to act on.
pub const BATCH: usize = 32;

/// One turn per request read and not yet answered; dropping it gives it back.
pub type Turn = OwnedSemaphorePermit;

/// The core's budget of requests in flight, shared by every connection: the turns free
/// now, and how many there are in all.
#[derive(Debug, Clone)]
pub struct Budget {
    free: Arc<Semaphore>,
    size: usize,
}

impl Budget {
    /// A budget of `size` turns (at least one).
    pub fn new(size: usize) -> Self {
        let size = size.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            free: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    /// How many turns to ask for at once, given room for `room` more requests: never
    /// more than the budget holds, or a wait for them would never end.
    fn batch(&self, room: usize) -> u32 {
        let want = room.clamp(1, BATCH).min(self.size);
        u32::try_from(want).unwrap_or(1)
    }
}

/// A connection's turns: the spare ones in hand and the wait for more.
pub struct Turns {
    budget: Budget,
    spare: Option<Turn>,
    waiting: Option<BoxFuture<'static, Option<Turn>>>,
}

impl std::fmt::Debug for Turns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turns")
            .field("spare", &self.spare.as_ref().map_or(0, Turn::num_permits))
            .field("waiting", &self.waiting.is_some())
            .finish()
    }
}

impl Turns {
    pub fn new(budget: Budget) -> Self {
        Self {
            budget,
            spare: None,
            waiting: None,
        }
    }

    /// One turn, from the spare ones or else from the budget (up to `room` taken at once,
    /// at most [`BATCH`]); `None` when the budget has none free now: then [`Self::wait`].
    pub fn take(&mut self, room: usize) -> Option<Turn> {
        if self.spare.is_none() {
            let want = self.budget.batch(room);
            let free = &self.budget.free;
            self.spare = free
                .clone()
                .try_acquire_many_owned(want)
                .or_else(|_| free.clone().try_acquire_owned())
                .ok();
        }
        let spare = self.spare.as_mut()?;
        if spare.num_permits() > 1 {
            spare.split(1)
        } else {
            self.spare.take()
        }
    }

    /// Starts waiting for up to `room` turns (at most [`BATCH`], at most the whole
    /// budget), behind every connection that started waiting before; a wait already
    /// started goes on.
    pub fn wait(&mut self, room: usize) {
        if self.waiting.is_none() {
            let want = self.budget.batch(room);
            let free = self.budget.free.clone();
            self.waiting = Some(Box::pin(
                async move { free.acquire_many_owned(want).await.ok() },
            ));
        }
    }

    pub fn is_waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// Resolves when the turns waited for are in hand (`true`), or the budget was closed
    /// (`false`: only when the core stops); never while not waiting. Cancel-safe: a wait
    /// interrupted goes on at the next call.
    pub async fn arrived(&mut self) -> bool {
        let Some(waiting) = self.waiting.as_mut() else {
            return std::future::pending().await;
        };
        let got = waiting.await;
        self.waiting = None;
        match got {
            Some(turns) => {
                self.give_back(turns);
                true
            }
            None => false,
        }
    }

    /// Keeps a turn that was not spent, for the next request.
    pub fn give_back(&mut self, turn: Turn) {
        match &mut self.spare {
            Some(spare) => spare.merge(turn),
            None => self.spare = Some(turn),
        }
    }

    /// Returns the spare turns to the budget (before waiting on the client).
    pub fn release_spare(&mut self) {
        self.spare = None;
    }
}

/// Adds `turn` to the turns of requests answered together, which go back to the budget
/// together when `all` is dropped (one wake-up of the connections waiting for them, not
/// one per request).
pub fn gather(all: &mut Option<Turn>, turn: Turn) {
    match all {
        Some(all) => all.merge(turn),
        None => *all = Some(turn),
    }
}

/// Gives turns back to the budget together.
#[cfg(test)]
fn release_all(turns: impl IntoIterator<Item = Turn>) {
    let mut all = None;
    for t in turns {
        gather(&mut all, t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_come_in_batches_and_spares_go_back() {
        let budget = Budget::new(40);
        let mut turns = Turns::new(budget.clone());
        let first = turns.take(64).expect("a turn");
        // One batch was taken: the request's turn and BATCH - 1 spare.
        assert_eq!(budget.free.available_permits(), 40 - BATCH);
        let second = turns.take(64).expect("a spare turn");
        assert_eq!(budget.free.available_permits(), 40 - BATCH);
        turns.release_spare();
        assert_eq!(budget.free.available_permits(), 38);
        release_all([first, second]);
        assert_eq!(budget.free.available_permits(), 40);
    }

    #[test]
    fn room_limits_the_batch_and_a_short_budget_still_gives_one() {
        let budget = Budget::new(3);
        let mut turns = Turns::new(budget.clone());
        let one = turns.take(2).expect("a turn");
        assert_eq!(budget.free.available_permits(), 1, "room for 2: 2 taken");
        turns.release_spare();
        // 2 free, a batch of 3 wanted (the whole budget): one is taken rather than none.
        let _held = budget.free.clone().try_acquire_owned().expect("free");
        let two = turns.take(64).expect("the last turn");
        assert_eq!(budget.free.available_permits(), 0);
        assert!(turns.take(64).is_none(), "the budget is spent");
        drop((one, two));
    }

    #[tokio::test]
    async fn a_waiting_connection_gets_its_turns_in_order() {
        let budget = Budget::new(6);
        let mut held: Vec<Turn> = (0..6)
            .map(|_| budget.free.clone().try_acquire_owned().expect("free"))
            .collect();
        let mut turns = Turns::new(budget.clone());
        assert!(turns.take(64).is_none());
        turns.wait(4);
        assert!(turns.is_waiting());
        // Not enough yet: the wait goes on (polling it once must not complete it).
        drop(held.drain(..3));
        assert!(futures_util::FutureExt::now_or_never(turns.arrived()).is_none());
        assert!(turns.is_waiting(), "an interrupted wait goes on");
        drop(held);
        assert!(turns.arrived().await);
        assert!(!turns.is_waiting());
        let got: Vec<Turn> = (0..4).map(|_| turns.take(64).expect("turn")).collect();
        assert!(turns.take(4).is_some(), "the 2 left are free again");
        release_all(got);
    }

    #[test]
    fn a_budget_smaller_than_a_batch_never_waits_forever() {
        // A budget of 4 and room for 64: a wait asks for the 4 there are, not for a
        // batch the budget can never hold (that wait would never end, and every
        // connection queued behind it would stall).
        let budget = Budget::new(4);
        let mut turns = Turns::new(budget.clone());
        let spent: Vec<Turn> = (0..4).map(|_| turns.take(64).expect("turn")).collect();
        assert!(turns.take(64).is_none());
        turns.wait(64);
        release_all(spent);
        // The released turns go to the waiter as they are given back: done at once.
        let arrived = futures_util::FutureExt::now_or_never(turns.arrived());
        assert_eq!(arrived, Some(true), "the wait for turns ended");
        assert_eq!(
            budget.free.available_permits(),
            0,
            "the whole budget came in one batch"
        );
        let got: Vec<Turn> = (0..4).map(|_| turns.take(64).expect("turn")).collect();
        release_all(got);
        assert_eq!(budget.free.available_permits(), 4);
    }

    #[tokio::test]
    async fn a_closed_budget_ends_the_wait() {
        let budget = Budget::new(1);
        let mut turns = Turns::new(budget.clone());
        let _spent = turns.take(1).expect("turn");
        turns.wait(1);
        budget.free.close();
        assert!(!turns.arrived().await);
    }
}
