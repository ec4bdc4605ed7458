//! The latest value of every point and its last hour, in memory only (no SD-card writes),
//! for the web page's live view and charts.
//!
//! Fed from the buffer's append path (every sample a source takes passes there). Each
//! numeric point keeps one averaged value per [`BUCKET_SECS`] for [`HISTORY_BUCKETS`]
//! buckets (one hour): 8 bytes a bucket, so at most ~2.9 KiB of history per point,
//! whatever the poll rate. Points per endpoint are capped ([`MAX_POINTS`]) so a serial
//! sensor that invents keys cannot grow it without bound.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use serde_json::Value;

use crate::endpoint::Endpoint;
use crate::sample::{Sample, BAD, TIMESTAMP};

/// Width of one history bucket.
pub const BUCKET_SECS: i64 = 10;
/// Buckets kept per point: one hour.
pub const HISTORY_BUCKETS: usize = 360;
/// Most points remembered per endpoint (further new names are not tracked).
pub const MAX_POINTS: usize = 256;

/// The latest reading of one point.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PointNow {
    /// The value as sent upstream (`null` when the last reading was bad).
    pub value: Value,
    pub ts_ms: i64,
    /// Why the last reading failed (Modbus exception, time-out), if it did.
    pub bad: Option<String>,
}

#[derive(Debug)]
struct PointLive {
    now: PointNow,
    /// Finished buckets: (bucket start, Unix seconds; mean value).
    history: VecDeque<(u32, f32)>,
    /// The bucket being filled: (start, sum, count).
    open: Option<(u32, f64, u32)>,
}

impl PointLive {
    fn new(now: PointNow) -> Self {
        Self {
            now,
            history: VecDeque::new(),
            open: None,
        }
    }

    fn add(&mut self, ts_ms: i64, x: f64) {
        let start = (ts_ms.div_euclid(1000).div_euclid(BUCKET_SECS) * BUCKET_SECS).max(0) as u32;
        match &mut self.open {
            Some((s, sum, n)) if *s == start => {
                *sum += x;
                *n += 1;
            }
            // An older bucket than the open one (a clock step back): start afresh there.
            open => {
                if let Some((s, sum, n)) = open.take() {
                    if self.history.capacity() == 0 {
                        // Exactly an hour's worth, once: no doubling beyond the bound.
                        self.history.reserve_exact(HISTORY_BUCKETS);
                    }
                    self.history.push_back((s, (sum / f64::from(n)) as f32));
                    while self.history.len() >= HISTORY_BUCKETS {
                        self.history.pop_front();
                    }
                }
                *open = Some((start, x, 1));
            }
        }
    }

    fn series(&self) -> Vec<(i64, f64)> {
        let mut v: Vec<(i64, f64)> = self
            .history
            .iter()
            .map(|(s, x)| (i64::from(*s) * 1000, f64::from(*x)))
            .collect();
        if let Some((s, sum, n)) = self.open {
            v.push((i64::from(s) * 1000, sum / f64::from(n)));
        }
        v
    }
}

/// Every endpoint's points.
#[derive(Debug, Default)]
pub struct LiveValues {
    inner: Mutex<HashMap<Endpoint, BTreeMap<String, PointLive>>>,
}

/// A number for the chart: numbers as they are, booleans as 0/1, anything else none.
fn numeric(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

impl LiveValues {
    /// Takes in samples on their way into the buffer.
    pub fn record(&self, samples: &[Sample]) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for s in samples {
            let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(&s.payload) else {
                continue;
            };
            let points = map.entry(s.endpoint.clone()).or_default();
            let mut put = |name: &str, now: PointNow| {
                let x = numeric(&now.value);
                let ts = now.ts_ms;
                if let Some(p) = points.get_mut(name) {
                    p.now = now;
                } else if points.len() < MAX_POINTS {
                    points.insert(name.to_owned(), PointLive::new(now));
                } else {
                    return;
                }
                if let (Some(x), Some(p)) = (x, points.get_mut(name)) {
                    p.add(ts, x);
                }
            };
            for (name, value) in &obj {
                if name == TIMESTAMP || name == BAD {
                    continue;
                }
                put(
                    name,
                    PointNow {
                        value: value.clone(),
                        ts_ms: s.ts_ms,
                        bad: None,
                    },
                );
            }
            if let Some(Value::Object(bad)) = obj.get(BAD) {
                for (name, why) in bad {
                    put(
                        name,
                        PointNow {
                            value: Value::Null,
                            ts_ms: s.ts_ms,
                            bad: Some(why.as_str().unwrap_or("bad reading").to_owned()),
                        },
                    );
                }
            }
        }
    }

    /// The latest reading of each point of `endpoint`.
    pub fn now(&self, endpoint: &Endpoint) -> BTreeMap<String, PointNow> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.get(endpoint)
            .map(|points| {
                points
                    .iter()
                    .map(|(k, p)| (k.clone(), p.now.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One point's last hour: (bucket start in Unix ms, mean value).
    pub fn history(&self, endpoint: &Endpoint, point: &str) -> Vec<(i64, f64)> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.get(endpoint)
            .and_then(|points| points.get(point))
            .map(PointLive::series)
            .unwrap_or_default()
    }

    /// Forgets endpoints that are no longer configured (after a configuration change).
    pub fn retain(&self, keep: &[Endpoint]) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|ep, _| keep.contains(ep));
    }

    /// Points tracked, and history buckets held (for the memory figure).
    pub fn size(&self) -> (usize, usize) {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.values()
            .flat_map(|p| p.values())
            .fold((0, 0), |(n, b), p| {
                (n + 1, b + p.history.len() + usize::from(p.open.is_some()))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use platform_core::kp1::{AppVersionName, EndpointToken};

    fn ep() -> Endpoint {
        Endpoint::new(
            AppVersionName::new("app-v1").unwrap(),
            EndpointToken::new("tok").unwrap(),
        )
    }

    fn sample(ts_ms: i64, t: f64) -> Sample {
        Sample::builder(ep(), ts_ms)
            .value("t", t.into())
            .bad("p", "exception 0x02 (illegal data address)")
            .build()
    }

    #[test]
    fn keeps_the_latest_value_and_the_reason_of_a_bad_reading() {
        let live = LiveValues::default();
        live.record(&[sample(1_000, 1.5), sample(2_000, 2.5)]);
        let now = live.now(&ep());
        assert_eq!(now["t"].value, serde_json::json!(2.5));
        assert_eq!(now["t"].ts_ms, 2_000);
        assert_eq!(
            now["p"].bad.as_deref(),
            Some("exception 0x02 (illegal data address)")
        );
        assert!(!now.contains_key(TIMESTAMP));
    }

    #[test]
    fn history_is_one_mean_per_bucket_and_bounded_to_an_hour() {
        let live = LiveValues::default();
        live.record(&[sample(0, 1.0), sample(5_000, 3.0), sample(10_000, 10.0)]);
        assert_eq!(live.history(&ep(), "t"), vec![(0, 2.0), (10_000, 10.0)]);
        // Two hours at 1 s: never more than an hour of buckets.
        let many: Vec<Sample> = (0..7200).map(|i| sample(i * 1000, i as f64)).collect();
        live.record(&many);
        let h = live.history(&ep(), "t");
        assert!(h.len() <= HISTORY_BUCKETS, "{}", h.len());
        assert!(h.len() >= HISTORY_BUCKETS - 1);
        assert_eq!(live.size().0, 2);
    }

    #[test]
    fn new_point_names_are_capped_per_endpoint() {
        let live = LiveValues::default();
        let mut b = Sample::builder(ep(), 0);
        for i in 0..MAX_POINTS + 50 {
            b = b.value(format!("k{i}"), 1.into());
        }
        live.record(&[b.build()]);
        assert_eq!(live.now(&ep()).len(), MAX_POINTS);
    }
}
