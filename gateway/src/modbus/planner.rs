//! The read planner (pure): merges a device's points into as few read requests as possible.
//!
//! Rules, per slave and table:
//! - a request covers one contiguous address range and never exceeds the limit
//!   (125 registers / 2000 bits by the protocol, less when the device says so);
//! - it may bridge unused addresses between points, but never more than `max_gap` in a row
//!   (some devices answer an exception for unmapped registers, and bridging costs bytes);
//! - among all ways to split the address-sorted points into consecutive groups that obey
//!   these rules, the plan has the fewest requests, then the fewest registers read.
//!   (Dynamic programming over the sorted points, O(n²): n is a device's point count.)

use super::types::RegisterTable;

/// Protocol maximum registers per read (FC 3/4, Modbus Application Protocol §6.3).
pub const MAX_REGISTERS: u16 = 125;
/// Protocol maximum bits per read (FC 1/2, §6.1).
pub const MAX_BITS: u16 = 2000;

/// What the planner needs to know of a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanPoint {
    /// Caller's index of the point.
    pub index: usize,
    pub table: RegisterTable,
    pub address: u16,
    /// Registers (or bits) the point occupies.
    pub width: u16,
}

/// Request size rules for one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_registers: u16,
    pub max_bits: u16,
    pub max_gap: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_registers: MAX_REGISTERS,
            max_bits: MAX_BITS,
            max_gap: 8,
        }
    }
}

impl Limits {
    fn for_table(&self, t: RegisterTable) -> u32 {
        if t.is_bits() {
            u32::from(self.max_bits.min(MAX_BITS))
        } else {
            u32::from(self.max_registers.min(MAX_REGISTERS))
        }
    }
}

/// One read request and where each of its points sits in the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub table: RegisterTable,
    pub start: u16,
    pub count: u16,
    /// (point index, offset of its first register/bit in the answer).
    pub members: Vec<(usize, u16)>,
}

/// A point that cannot be read in one request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("point {index} needs {width} {unit}, more than one request may read ({limit})")]
pub struct TooWide {
    pub index: usize,
    pub width: u16,
    pub limit: u32,
    pub unit: &'static str,
}

/// Plans the reads for one device's points.
pub fn plan(points: &[PlanPoint], limits: Limits) -> Result<Vec<ReadRequest>, TooWide> {
    let mut out = Vec::new();
    for table in [
        RegisterTable::Coil,
        RegisterTable::DiscreteInput,
        RegisterTable::Holding,
        RegisterTable::Input,
    ] {
        let mut pts: Vec<PlanPoint> = points
            .iter()
            .copied()
            .filter(|p| p.table == table)
            .collect();
        if pts.is_empty() {
            continue;
        }
        pts.sort_by_key(|p| (p.address, std::cmp::Reverse(p.width), p.index));
        let limit = limits.for_table(table);
        if let Some(p) = pts.iter().find(|p| u32::from(p.width) > limit) {
            return Err(TooWide {
                index: p.index,
                width: p.width,
                limit,
                unit: if table.is_bits() { "bits" } else { "registers" },
            });
        }
        out.extend(plan_table(&pts, table, limit, u32::from(limits.max_gap)));
    }
    Ok(out)
}

fn end(p: &PlanPoint) -> u32 {
    u32::from(p.address) + u32::from(p.width)
}

fn plan_table(
    pts: &[PlanPoint],
    table: RegisterTable,
    limit: u32,
    max_gap: u32,
) -> Vec<ReadRequest> {
    let n = pts.len();
    // span[i] lists, for each j ≥ i such that pts[i..=j] is a valid group, its span.
    let mut spans: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (i, row) in spans.iter_mut().enumerate() {
        let start = u32::from(pts[i].address);
        let mut cover_end = end(&pts[i]);
        for (j, p) in pts.iter().enumerate().skip(i) {
            if j > i {
                let a = u32::from(p.address);
                if a > cover_end && a - cover_end > max_gap {
                    break; // later points start even further right: no fix possible
                }
                cover_end = cover_end.max(end(p));
            }
            if cover_end - start > limit {
                break;
            }
            row.push(cover_end - start);
        }
    }
    // best[k] = (requests, registers) for the first k points.
    let mut best: Vec<(u32, u32, usize)> = vec![(u32::MAX, u32::MAX, 0); n + 1];
    best[0] = (0, 0, 0);
    for i in 0..n {
        let (reqs, regs, _) = best[i];
        if reqs == u32::MAX {
            continue;
        }
        for (k, span) in spans[i].iter().enumerate() {
            let j = i + k + 1;
            let cand = (reqs + 1, regs + span, i);
            // On a tie the later split wins: earlier requests are filled first (greedy-like).
            if (cand.0, cand.1) <= (best[j].0, best[j].1) {
                best[j] = cand;
            }
        }
    }
    let mut groups = Vec::new();
    let mut j = n;
    while j > 0 {
        let i = best[j].2;
        groups.push((i, j));
        j = i;
    }
    groups.reverse();
    groups
        .into_iter()
        .map(|(i, j)| {
            let start = pts[i].address;
            let stop = pts[i..j].iter().map(end).max().unwrap_or(u32::from(start));
            ReadRequest {
                table,
                start,
                count: (stop - u32::from(start)) as u16,
                members: pts[i..j]
                    .iter()
                    .map(|p| (p.index, p.address - start))
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pt(index: usize, table: RegisterTable, address: u16, width: u16) -> PlanPoint {
        PlanPoint {
            index,
            table,
            address,
            width,
        }
    }

    fn holding(points: &[(u16, u16)]) -> Vec<PlanPoint> {
        points
            .iter()
            .enumerate()
            .map(|(i, (a, w))| pt(i, RegisterTable::Holding, *a, *w))
            .collect()
    }

    #[test]
    fn neighbours_merge_and_members_know_their_offsets() {
        let r = plan(&holding(&[(10, 2), (12, 1), (15, 2)]), Limits::default()).unwrap();
        assert_eq!(
            r,
            vec![ReadRequest {
                table: RegisterTable::Holding,
                start: 10,
                count: 7,
                members: vec![(0, 0), (1, 2), (2, 5)]
            }]
        );
    }

    #[test]
    fn a_gap_wider_than_max_gap_splits_the_request() {
        let limits = Limits {
            max_gap: 3,
            ..Limits::default()
        };
        let r = plan(&holding(&[(0, 1), (4, 1), (9, 1)]), limits).unwrap();
        assert_eq!(
            r.iter().map(|r| (r.start, r.count)).collect::<Vec<_>>(),
            vec![(0, 5), (9, 1)]
        );
    }

    #[test]
    fn requests_never_exceed_125_registers_or_the_device_limit() {
        let pts = holding(&(0..200).map(|a| (a, 1)).collect::<Vec<_>>());
        let r = plan(&pts, Limits::default()).unwrap();
        assert_eq!(r.iter().map(|r| r.count).collect::<Vec<_>>(), vec![125, 75]);
        let small = Limits {
            max_registers: 60,
            ..Limits::default()
        };
        let r = plan(&pts, small).unwrap();
        assert_eq!(r.len(), 4);
        assert!(r.iter().all(|r| r.count <= 60));
    }

    #[test]
    fn bits_have_their_own_2000_limit_and_tables_never_mix() {
        let mut pts: Vec<PlanPoint> = (0..2500)
            .map(|a| pt(a as usize, RegisterTable::Coil, a, 1))
            .collect();
        pts.push(pt(9999, RegisterTable::Holding, 0, 1));
        pts.push(pt(9998, RegisterTable::Input, 0, 1));
        let r = plan(&pts, Limits::default()).unwrap();
        let shape: Vec<_> = r.iter().map(|r| (r.table, r.start, r.count)).collect();
        assert_eq!(
            shape,
            vec![
                (RegisterTable::Coil, 0, 2000),
                (RegisterTable::Coil, 2000, 500),
                (RegisterTable::Holding, 0, 1),
                (RegisterTable::Input, 0, 1)
            ]
        );
    }

    #[test]
    fn a_point_wider_than_the_limit_is_an_error() {
        let limits = Limits {
            max_registers: 4,
            ..Limits::default()
        };
        let e = plan(&holding(&[(0, 8)]), limits).unwrap_err();
        assert_eq!((e.index, e.limit), (0, 4));
    }

    #[test]
    fn overlapping_points_share_a_request() {
        // A u32 at 0 and its low word read alone as a u16 at 1.
        let r = plan(&holding(&[(0, 2), (1, 1)]), Limits::default()).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].count, 2);
    }

    /// A realistic energy-meter map: 40 points scattered over three register blocks of
    /// one slave (voltages/currents at 0.., power at 100.., energy counters at 300..,
    /// plus a few isolated status words). One read per point would be 40 requests.
    #[test]
    fn forty_scattered_points_need_five_reads() {
        let mut map = Vec::new();
        for i in 0..12 {
            map.push((i * 2, 2)); // f32 voltages and currents, 0..24
        }
        for i in 0..10 {
            map.push((100 + i * 2, 2)); // f32 powers, 100..120
        }
        for i in 0..8 {
            map.push((300 + i * 4, 4)); // u64 energy counters, 300..332
        }
        for a in [30, 34, 40, 126, 500, 503, 507, 600, 601, 602] {
            map.push((a, 1)); // status words
        }
        assert_eq!(map.len(), 40);
        let r = plan(&holding(&map), Limits::default()).unwrap();
        let shape: Vec<_> = r.iter().map(|r| (r.start, r.count)).collect();
        // 0..41 (gaps ≤ 6), 100..127 (gap 6), 300..332, 500..508, 600..603
        assert_eq!(
            shape,
            vec![(0, 41), (100, 27), (300, 32), (500, 8), (600, 3)]
        );
        let members: usize = r.iter().map(|r| r.members.len()).sum();
        assert_eq!(members, 40);
    }

    /// Brute force over every split of the sorted points into consecutive groups.
    fn brute_force_min(pts: &[PlanPoint], limit: u32, max_gap: u32) -> usize {
        let n = pts.len();
        let valid = |i: usize, j: usize| -> bool {
            let start = u32::from(pts[i].address);
            let mut cover = end(&pts[i]);
            for p in &pts[i + 1..j] {
                let a = u32::from(p.address);
                if a > cover && a - cover > max_gap {
                    return false;
                }
                cover = cover.max(end(p));
            }
            cover - start <= limit
        };
        let mut best = vec![usize::MAX; n + 1];
        best[0] = 0;
        for j in 1..=n {
            for i in 0..j {
                if best[i] != usize::MAX && valid(i, j) {
                    best[j] = best[j].min(best[i] + 1);
                }
            }
        }
        best[n]
    }

    proptest! {
        #[test]
        fn plans_are_valid_complete_and_minimal(
            raw in prop::collection::vec((0u16..300, 1u16..5), 1..30),
            max_gap in 0u16..10,
            max_registers in 4u16..30,
        ) {
            let pts = holding(&raw);
            let limits = Limits { max_registers, max_gap, ..Limits::default() };
            let plan = plan(&pts, limits).unwrap();
            // every point exactly once, inside its request
            let mut seen: Vec<usize> = plan.iter().flat_map(|r| r.members.iter().map(|m| m.0)).collect();
            seen.sort();
            prop_assert_eq!(seen, (0..pts.len()).collect::<Vec<_>>());
            for r in &plan {
                prop_assert!(r.count <= max_registers);
                for (i, off) in &r.members {
                    prop_assert_eq!(r.start + off, pts[*i].address);
                    prop_assert!(off + pts[*i].width <= r.count);
                }
            }
            let mut sorted = pts.clone();
            sorted.sort_by_key(|p| (p.address, std::cmp::Reverse(p.width), p.index));
            prop_assert_eq!(plan.len(), brute_force_min(&sorted, u32::from(max_registers), u32::from(max_gap)));
        }
    }
}
