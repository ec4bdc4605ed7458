//! Series numbers the appends already know, kept between appends so that a steady flow
//! of samples skips its look-ups in `series`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Most series the cache holds. Past that it starts again empty: a site with more
/// series than this looks some of them up again, nothing else changes.
pub const MAX_SERIES: usize = 16_384;

/// (endpoint, series name) → series number, for the store generation it was filled in.
///
/// An entry is right while its row of `series` exists. Rows go away in two ways only: a
/// deleted endpoint takes its series with it, and a rolled-back append takes the series
/// it made. Both move the store's generation (`StoreHandle::generation`), and the cache
/// empties when it sees the generation move: call [`SeriesCache::at`] with the current
/// generation before each use, on the store thread.
#[derive(Debug, Default)]
pub struct SeriesCache {
    generation: u64,
    /// Endpoint ID → its series (name, number); an endpoint has few series.
    by_endpoint: HashMap<String, Vec<(String, i64)>>,
    len: usize,
}

impl SeriesCache {
    /// The cache, emptied first if `generation` is not the one it was filled in.
    pub fn at(&mut self, generation: u64) -> &mut Self {
        if generation != self.generation {
            self.clear();
            self.generation = generation;
        }
        self
    }

    /// How many series the cache holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the cache holds no series.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn clear(&mut self) {
        self.by_endpoint.clear();
        self.len = 0;
    }

    /// The number of `endpoint_id`'s series `name`, if the cache has it.
    pub(super) fn get(&self, endpoint_id: &str, name: &str) -> Option<i64> {
        let series = self.by_endpoint.get(endpoint_id)?;
        series.iter().find(|(n, _)| n == name).map(|(_, id)| *id)
    }

    /// Remembers the number of `endpoint_id`'s series `name`.
    pub(super) fn put(&mut self, endpoint_id: &str, name: &str, id: i64) {
        if self.len >= MAX_SERIES {
            self.clear();
        }
        let series = match self.by_endpoint.get_mut(endpoint_id) {
            Some(s) => s,
            None => self.by_endpoint.entry(endpoint_id.to_owned()).or_default(),
        };
        match series.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = id,
            None => {
                series.push((name.to_owned(), id));
                self.len += 1;
            }
        }
    }
}

/// One [`SeriesCache`] for all the appends of one store; cheap to clone. The appends run
/// one at a time on the store thread, so the lock is never waited for.
#[derive(Debug, Default, Clone)]
pub struct SharedSeries(Arc<Mutex<SeriesCache>>);

impl SharedSeries {
    /// The cache, current for the store's `generation` (read on the store thread).
    pub fn lock(&self, generation: u64) -> MutexGuard<'_, SeriesCache> {
        let mut known = self.0.lock().unwrap_or_else(|poisoned| {
            // An append panicked while holding it: its entries are not trusted.
            self.0.clear_poison();
            let mut known = poisoned.into_inner();
            *known = SeriesCache::default();
            known
        });
        known.at(generation);
        known
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StoreError, StoreHandle};
    use crate::tsdb::{append_samples, range, DataPoint, StoredSample};

    #[test]
    fn entries_last_until_the_generation_moves_or_the_cache_is_full() {
        let mut c = SeriesCache::default();
        c.at(3).put("ep", "auto~t", 7);
        c.put("ep", "auto~h", 8);
        c.put("ep", "auto~t", 9);
        assert_eq!(c.at(3).get("ep", "auto~t"), Some(9));
        assert_eq!(c.get("ep", "auto~h"), Some(8));
        assert_eq!(c.get("other", "auto~t"), None);
        assert_eq!(c.len(), 2);
        assert!(c.at(4).is_empty());
        assert_eq!(c.get("ep", "auto~t"), None);
        for i in 0..MAX_SERIES {
            c.put(&format!("ep{i}"), "auto~t", i as i64);
        }
        assert_eq!(c.len(), MAX_SERIES);
        c.put("one-more", "auto~t", -1);
        assert_eq!(c.len(), 1);
        assert_eq!(c.get("one-more", "auto~t"), Some(-1));
    }

    /// One sample of `endpoint`'s series `auto~x` at `ts`, through `known` as DCX does.
    async fn append(
        store: &StoreHandle,
        known: &SharedSeries,
        endpoint: &'static str,
        ts: i64,
        fail: bool,
    ) -> Result<(), StoreError> {
        let (known, s) = (known.clone(), store.clone());
        let sample = StoredSample::new(
            "{}",
            vec![DataPoint {
                series: "auto~x".into(),
                ts_ms: ts,
                value: 1.0,
            }],
        );
        store
            .call_grouped(move |c| {
                append_samples(
                    c,
                    &mut known.lock(s.generation()),
                    endpoint,
                    0,
                    std::slice::from_ref(&sample),
                )?;
                match fail {
                    true => Err(StoreError::Internal("this append fails".into())),
                    false => Ok(()),
                }
            })
            .await
    }

    async fn points(store: &StoreHandle, endpoint: &'static str) -> Vec<i64> {
        let got = store
            .call(move |c| range(c, endpoint, "auto~x", 0, 100))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        got.into_iter().map(|p| p.ts_ms).collect()
    }

    #[tokio::test]
    async fn a_series_gone_with_a_rollback_or_its_endpoint_is_not_used_again() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store =
            StoreHandle::open(&dir.path().join("c.sqlite")).unwrap_or_else(|e| panic!("{e}"));
        let known = SharedSeries::default();
        // An append that makes the series and then fails: the series goes with it.
        assert!(append(&store, &known, "ep", 1, true).await.is_err());
        append(&store, &known, "ep", 2, false).await.unwrap();
        assert_eq!(points(&store, "ep").await, vec![2]);
        // Cached now; still right on the next append.
        append(&store, &known, "ep", 3, false).await.unwrap();
        assert_eq!(points(&store, "ep").await, vec![2, 3]);
        assert_eq!(known.lock(store.generation()).len(), 1);
        // A deleted endpoint takes its series; the same ID coming back gets a new one.
        let deleted = store.call(|c| crate::epr::delete_endpoint(c, "ep")).await;
        deleted.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(points(&store, "ep").await, Vec::<i64>::new());
        append(&store, &known, "ep", 4, false).await.unwrap();
        assert_eq!(points(&store, "ep").await, vec![4]);
    }
}
