//! Active endpoint tokens seen recently, so a request does not ask the store thread who
//! its token names each time (pure; the store's change counter decides what is current).
//!
//! An entry is `(app version, token) → endpoint ID`, stamped with
//! [`crate::store::StoreHandle::generation`] as read next to the look-up. Any change to
//! the registry (a token suspended or revoked, an endpoint deleted) moves that counter,
//! so an entry is used only while nothing has changed since it was read. Only active
//! tokens are kept: the other answers are errors, and errors are not worth caching.
//!
//! Look-ups of one token that miss at the same time share one trip to the store (a
//! client that connects and sends its window of requests at once would otherwise send
//! the store thread as many look-ups; a site's clients after a power cut, all of them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

/// Most entries; when full the cache starts over (a site rarely has this many tokens).
const CAPACITY: usize = 65_536;

#[derive(Debug, Default)]
pub struct TokenCache {
    entries: Mutex<Entries>,
    /// Look-ups under way: whoever else misses the same key waits for the first one. The
    /// semaphore never has permits; it is closed when the look-up ends, which wakes every
    /// waiter, including those that start waiting after it ended.
    flights: Mutex<HashMap<(String, String), Arc<Semaphore>>>,
}

/// App version → token → (generation, endpoint ID): looked up by borrowed parts, with
/// no key to build per request.
#[derive(Debug, Default)]
struct Entries {
    by_version: HashMap<String, HashMap<String, (u64, Arc<str>)>>,
    len: usize,
}

/// What a miss does: look the token up itself, or wait for the look-up under way.
#[derive(Debug)]
pub enum Flight<'a> {
    /// Look it up; other misses of the key wait until this is dropped.
    Lead(FlightGuard<'a>),
    /// Another look-up of this key is under way: wait for it, then read the cache again.
    Follow(Arc<Semaphore>),
}

/// Ends a look-up (on drop): wakes its followers.
#[derive(Debug)]
pub struct FlightGuard<'a> {
    cache: &'a TokenCache,
    key: (String, String),
    done: Arc<Semaphore>,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut flights = self.cache.flights.lock().unwrap_or_else(|p| p.into_inner());
        flights.remove(&self.key);
        self.done.close();
    }
}

impl Flight<'_> {
    /// For a follower, waits until the leading look-up ended (at once if it has).
    pub async fn wait(&self) {
        if let Flight::Follow(done) = self {
            // Never succeeds: the semaphore has no permits and is only ever closed.
            let _ = done.acquire().await;
        }
    }
}

impl TokenCache {
    /// A miss of `token` of `app_version`: lead its look-up, or follow the one under way.
    pub fn flight(&self, app_version: &str, token: &str) -> Flight<'_> {
        let key = (app_version.to_owned(), token.to_owned());
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(done) = flights.get(&key) {
            return Flight::Follow(done.clone());
        }
        let done = Arc::new(Semaphore::new(0));
        flights.insert(key.clone(), done.clone());
        Flight::Lead(FlightGuard {
            cache: self,
            key,
            done,
        })
    }

    /// The endpoint `token` of `app_version` names, if known at `generation`.
    pub fn get(&self, app_version: &str, token: &str, generation: u64) -> Option<Arc<str>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (gen, endpoint) = entries.by_version.get(app_version)?.get(token)?;
        (*gen == generation).then(|| endpoint.clone())
    }

    /// Remembers that `token` named `endpoint_id` at `generation`.
    pub fn put(&self, app_version: &str, token: &str, endpoint_id: &Arc<str>, generation: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len >= CAPACITY {
            *entries = Entries::default();
        }
        let tokens = entries
            .by_version
            .entry(app_version.to_owned())
            .or_default();
        let new = tokens
            .insert(token.to_owned(), (generation, endpoint_id.clone()))
            .is_none();
        entries.len += usize::from(new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_used_only_at_the_generation_it_was_read() {
        let c = TokenCache::default();
        assert_eq!(c.get("v1", "t", 3), None);
        c.put("v1", "t", &"ep-1".into(), 3);
        assert_eq!(c.get("v1", "t", 3).as_deref(), Some("ep-1"));
        assert_eq!(c.get("v1", "t", 4), None, "the registry changed since");
        assert_eq!(c.get("v2", "t", 3), None, "another app version");
    }

    #[test]
    fn a_full_cache_starts_over_and_a_token_put_again_counts_once() {
        let c = TokenCache::default();
        for _ in 0..3 {
            c.put("v1", "same", &"ep-0".into(), 1);
        }
        for i in 1..CAPACITY {
            c.put("v1", &format!("t{i}"), &"ep".into(), 1);
        }
        assert_eq!(
            c.get("v1", "same", 1).as_deref(),
            Some("ep-0"),
            "not full yet"
        );
        c.put("v2", "next", &"ep-2".into(), 1);
        assert_eq!(c.get("v1", "same", 1), None, "started over when full");
        assert_eq!(c.get("v2", "next", 1).as_deref(), Some("ep-2"));
    }

    #[tokio::test]
    async fn misses_of_one_token_at_once_are_led_by_the_first_and_followers_wake_when_it_ends() {
        let c = TokenCache::default();
        let lead = c.flight("v1", "t");
        assert!(matches!(lead, Flight::Lead(_)));
        let Flight::Follow(done) = c.flight("v1", "t") else {
            panic!("a second miss of the key must follow the first");
        };
        assert!(
            matches!(c.flight("v1", "other"), Flight::Lead(_)),
            "another token has its own look-up"
        );
        let waiting = tokio::spawn(async move { Flight::Follow(done).wait().await });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "waits while the look-up is under way"
        );
        c.put("v1", "t", &"ep-1".into(), 0);
        drop(lead);
        assert!(waiting.await.is_ok());
        // A follower that starts waiting after the end does not wait at all.
        let late = c.flight("v1", "t");
        assert!(
            matches!(late, Flight::Lead(_)),
            "nothing under way any more"
        );
    }
}
