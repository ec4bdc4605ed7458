//! Which sessions may want a copy of a topic: subscribers indexed by the token level of
//! their filters, so a reply's copies cost a look-up, not a pass over every session (pure).
//!
//! A 1/KP topic is `kp1/<app version>/<extension>/<token>/<resource>…`. A filter whose
//! first four levels hold no `#` and whose fourth is a literal matches only topics with
//! that token; it is filed under it. Any other filter (`#`, `kp1/+/+/+/#`, fewer levels)
//! is "wide": its session is a candidate for every topic. Candidates are then checked
//! against their filters by the caller.

use std::collections::{HashMap, HashSet};

use super::SessionId;

/// The index; kept beside the live sessions, under the same lock.
#[derive(Debug, Default)]
pub struct Watchers {
    by_token: HashMap<String, HashSet<SessionId>>,
    wide: HashSet<SessionId>,
}

/// The token level a filter is bound to; `None`: it may match any token.
fn token_of(filter: &str) -> Option<&str> {
    let mut levels = filter.split('/');
    for _ in 0..3 {
        if levels.next()? == "#" {
            return None;
        }
    }
    levels.next().filter(|t| *t != "#" && *t != "+")
}

impl Watchers {
    /// Files `session` under each of its filters.
    pub fn add<'a>(&mut self, session: SessionId, filters: impl IntoIterator<Item = &'a str>) {
        for f in filters {
            match token_of(f) {
                Some(t) => {
                    self.by_token
                        .entry(t.to_owned())
                        .or_default()
                        .insert(session);
                }
                None => {
                    self.wide.insert(session);
                }
            }
        }
    }

    /// Takes `session` out from under each of these (its former) filters.
    pub fn remove<'a>(&mut self, session: SessionId, filters: impl IntoIterator<Item = &'a str>) {
        for f in filters {
            match token_of(f) {
                Some(t) => {
                    if let Some(set) = self.by_token.get_mut(t) {
                        set.remove(&session);
                        if set.is_empty() {
                            self.by_token.remove(t);
                        }
                    }
                }
                None => {
                    self.wide.remove(&session);
                }
            }
        }
    }

    /// Sessions with a filter that may match `topic`, each once, in no order.
    pub fn candidates(&self, topic: &str) -> Vec<SessionId> {
        let token = topic.split('/').nth(3);
        let filed = token.and_then(|t| self.by_token.get(t));
        let mut out: Vec<SessionId> = self.wide.iter().copied().collect();
        if let Some(set) = filed {
            out.extend(set.iter().filter(|id| !self.wide.contains(id)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_with_a_literal_token_are_filed_under_it_and_the_rest_are_wide() {
        assert_eq!(token_of("kp1/v1/dcx/tok/json/status"), Some("tok"));
        assert_eq!(token_of("kp1/+/cex/tok/#"), Some("tok"));
        assert_eq!(token_of("kp1/v1/dcx/+/json"), None);
        assert_eq!(token_of("kp1/#"), None);
        assert_eq!(token_of("#"), None);
        assert_eq!(token_of("a/b/c"), None);
        assert_eq!(token_of("kp1/v1/dcx/#"), None);
    }

    #[test]
    fn candidates_are_the_wide_sessions_and_those_of_the_topics_token_once_each() {
        let mut w = Watchers::default();
        w.add(1, ["kp1/v1/dcx/a/json/status"]);
        w.add(2, ["kp1/v1/dcx/b/#"]);
        w.add(3, ["#", "kp1/v1/dcx/a/#"]);
        let mut got = w.candidates("kp1/v1/dcx/a/json/status");
        got.sort_unstable();
        assert_eq!(got, vec![1, 3]);
        assert_eq!(w.candidates("kp1/v1/dcx/c/json"), vec![3]);
        w.remove(3, ["#", "kp1/v1/dcx/a/#"]);
        assert_eq!(w.candidates("kp1/v1/dcx/a/json/status"), vec![1]);
        w.remove(1, ["kp1/v1/dcx/a/json/status"]);
        assert!(w.candidates("kp1/v1/dcx/a/json/status").is_empty());
        assert!(!w.by_token.contains_key("a"), "empty entries go");
    }
}
