//! Active endpoint tokens seen recently, so a request does not ask the store thread who
//! its token names each time (pure; the store's change counter decides what is current).
//!
//! An entry is `(app version, token) → endpoint ID`, stamped with
//! [`crate::store::StoreHandle::generation`] as read next to the look-up. Any change to
//! the registry (a token suspended or revoked, an endpoint deleted) moves that counter,
//! so an entry is used only while nothing has changed since it was read. Only active
//! tokens are kept: the other answers are errors, and errors are not worth caching.

use std::collections::HashMap;
use std::sync::Mutex;

/// Most entries; when full the cache starts over (a site rarely has this many tokens).
const CAPACITY: usize = 65_536;

#[derive(Debug, Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<(String, String), (u64, String)>>,
}

impl TokenCache {
    /// The endpoint `token` of `app_version` names, if known at `generation`.
    pub fn get(&self, app_version: &str, token: &str, generation: u64) -> Option<String> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // A tuple key cannot be looked up by borrowed parts without allocating; the
        // two short strings cost less than the store round trip they save.
        let (gen, endpoint) = entries.get(&(app_version.to_owned(), token.to_owned()))?;
        (*gen == generation).then(|| endpoint.clone())
    }

    /// Remembers that `token` named `endpoint_id` at `generation`.
    pub fn put(&self, app_version: &str, token: &str, endpoint_id: &str, generation: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(
            (app_version.to_owned(), token.to_owned()),
            (generation, endpoint_id.to_owned()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_used_only_at_the_generation_it_was_read() {
        let c = TokenCache::default();
        assert_eq!(c.get("v1", "t", 3), None);
        c.put("v1", "t", "ep-1", 3);
        assert_eq!(c.get("v1", "t", 3).as_deref(), Some("ep-1"));
        assert_eq!(c.get("v1", "t", 4), None, "the registry changed since");
        assert_eq!(c.get("v2", "t", 3), None, "another app version");
    }
}
