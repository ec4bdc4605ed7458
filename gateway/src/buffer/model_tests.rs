//! Model-based property test: the SQLite buffer against a plain in-memory model, through
//! random appends, leases, acks, releases, parks and restarts (leases are lost, rows not).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::store::BufferStore;
use super::*;
use platform_core::kp1::{AppVersionName, EndpointToken};

/// The batch's samples as the JSON array the upstream sends.
fn body(b: &Batch) -> String {
    format!("[{}]", b.samples.join(","))
}

#[derive(Debug, Clone)]
enum Op {
    Append { ep: usize, n: usize, old: bool },
    Lease { max: usize },
    Ack(usize),
    Release(usize),
    Park(usize),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, 1..4usize, any::<bool>()).prop_map(|(ep, n, old)| Op::Append { ep, n, old }),
        (1..5usize).prop_map(|max| Op::Lease { max }),
        (0..4usize).prop_map(Op::Ack),
        (0..4usize).prop_map(Op::Release),
        (0..4usize).prop_map(Op::Park),
        Just(Op::Restart),
    ]
}

fn ep(i: usize) -> Endpoint {
    Endpoint {
        app_version: AppVersionName::new("v1").unwrap(),
        token: EndpointToken::new(&format!("t{i}")).unwrap(),
    }
}

/// What the buffer must hold: pending samples by seq, leased batches, dead letters.
#[derive(Default, Debug)]
struct Model {
    pending: BTreeMap<i64, (Endpoint, String, i64)>,
    leased: BTreeMap<BatchKey, Vec<i64>>,
    dead: BTreeSet<i64>,
    acked: BTreeSet<i64>,
    appended: usize,
}

fn limits(max: usize) -> LeaseLimits {
    LeaseLimits {
        max_samples: max,
        max_bytes: 1 << 20,
        max_batches: 4,
        live_window: Duration::from_secs(60),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_buffer_behaves_like_its_model(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sqlite");
        let mut owner = BufferStore::open(&path, Synchronous::Normal, Bounds::default()).unwrap();
        let mut m = Model::default();
        let now = crate::now_ms();
        for op in ops {
            match op {
                Op::Append { ep: e, n, old } => {
                    let ts = if old { now - 3_600_000 } else { now };
                    let samples: Vec<Sample> = (0..n)
                        .map(|i| Sample { endpoint: ep(e), ts_ms: ts, payload: format!("{{\"i\":{}}}", m.appended + i) })
                        .collect();
                    m.appended += n;
                    let a = owner.append(samples.clone()).unwrap_or_else(|_| panic!("append refused"));
                    prop_assert_eq!(a.stored, n);
                    // Sequence numbers are assigned in order, never reused.
                    let stored: Vec<i64> = {
                        let conn = rusqlite::Connection::open(&path).unwrap();
                        let mut st = conn.prepare("SELECT seq FROM samples ORDER BY seq DESC LIMIT ?1").unwrap();
                        let mut v: Vec<i64> = st.query_map([n as i64], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect();
                        v.reverse();
                        v
                    };
                    for (seq, s) in stored.into_iter().zip(samples) {
                        prop_assert!(m.pending.keys().all(|k| *k < seq) && !m.acked.contains(&seq) && !m.dead.contains(&seq));
                        m.pending.insert(seq, (s.endpoint, s.payload, s.ts_ms));
                    }
                }
                Op::Lease { max } => {
                    let batches = owner.lease(limits(max), &[], now).unwrap();
                    for b in batches {
                        prop_assert!(!m.leased.contains_key(&b.key));
                        prop_assert!(!b.seqs.is_empty() && b.seqs.len() <= max);
                        let taken: BTreeSet<i64> = m.leased.values().flatten().copied().collect();
                        for s in &b.seqs {
                            let (e, _, ts) = m.pending.get(s).expect("leased a sample that is not pending");
                            prop_assert_eq!(e, &b.key.endpoint);
                            prop_assert!(!taken.contains(s), "a sample in two batches");
                            if b.key.lane == Lane::Live {
                                prop_assert!(*ts >= now - 60_000);
                            }
                        }
                        if b.key.lane == Lane::Backlog {
                            // The backlog lane is the oldest unleased samples of the endpoint.
                            let expect: Vec<i64> = m.pending.iter()
                                .filter(|(s, (e, _, _))| *e == b.key.endpoint && !taken.contains(s))
                                .map(|(s, _)| *s).take(b.seqs.len()).collect();
                            prop_assert_eq!(&b.seqs, &expect);
                        }
                        let payload: Vec<String> = b.seqs.iter().map(|s| m.pending[s].1.clone()).collect();
                        prop_assert_eq!(body(&b), format!("[{}]", payload.join(",")));
                        m.leased.insert(b.key, b.seqs);
                    }
                }
                Op::Ack(i) | Op::Park(i) | Op::Release(i) if m.leased.is_empty() => { let _ = i; }
                Op::Ack(i) => {
                    let key = m.leased.keys().nth(i % m.leased.len()).cloned().unwrap();
                    let seqs = m.leased.remove(&key).unwrap();
                    prop_assert_eq!(owner.remove(&key, None).unwrap(), seqs.len());
                    for s in seqs { m.pending.remove(&s); m.acked.insert(s); }
                }
                Op::Park(i) => {
                    let key = m.leased.keys().nth(i % m.leased.len()).cloned().unwrap();
                    let seqs = m.leased.remove(&key).unwrap();
                    prop_assert_eq!(owner.remove(&key, Some((400, "bad"))).unwrap(), seqs.len());
                    for s in seqs { m.pending.remove(&s); m.dead.insert(s); }
                }
                Op::Release(i) => {
                    let key = m.leased.keys().nth(i % m.leased.len()).cloned().unwrap();
                    m.leased.remove(&key);
                    owner.release(&key);
                }
                Op::Restart => {
                    drop(owner);
                    owner = BufferStore::open(&path, Synchronous::Normal, Bounds::default()).unwrap();
                    m.leased.clear();
                }
            }
            let s = owner.stats().unwrap();
            prop_assert_eq!(s.pending as usize, m.pending.len());
            prop_assert_eq!(s.dead_letters as usize, m.dead.len());
            prop_assert_eq!(s.leased as usize, m.leased.values().map(Vec::len).sum::<usize>());
            prop_assert_eq!(s.bytes as usize, m.pending.values().map(|p| p.1.len()).sum::<usize>());
            prop_assert_eq!(s.dropped_total(), 0);
            // Nothing is lost: every appended sample is pending, acknowledged or parked.
            prop_assert_eq!(m.pending.len() + m.acked.len() + m.dead.len(), m.appended);
        }
    }
}
