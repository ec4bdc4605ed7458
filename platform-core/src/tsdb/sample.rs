//! A data sample as it waits for its group commit: its stored text and its points, in
//! as few allocations as the sample's size allows.
//!
//! Thousands of samples wait together for a commit and are freed together after it, on
//! whichever thread answers the group: every allocation a sample makes is one more for
//! the allocator to take back in bulk. So a sample keeps its JSON text and its series
//! names in one buffer, and up to [`INLINE_POINTS`] points without a heap allocation of
//! their own. (A request's batch stays a `Vec`: inline, a batch of one would make every
//! request's future larger than glibc's per-thread cache takes, 1 032 bytes.)

use smallvec::SmallVec;

use super::DataPoint;

/// Points a sample holds without a separate allocation.
pub const INLINE_POINTS: usize = 2;

/// A sample to store: its JSON text and the points derived from it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSample {
    /// The sample's text, then each point's series name, one after the other.
    text: String,
    /// Where the sample's text ends in `text`.
    raw_len: usize,
    points: SmallVec<[Point; INLINE_POINTS]>,
}

/// A point of a [`StoredSample`]: its series name is `text[start..end]`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Point {
    start: usize,
    end: usize,
    ts_ms: i64,
    value: f64,
}

/// A point of a [`StoredSample`], borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PointRef<'a> {
    pub series: &'a str,
    pub ts_ms: i64,
    pub value: f64,
}

impl StoredSample {
    /// A sample whose text is `text`, with room for `points` points (any spare capacity
    /// of `text` is kept for their series names).
    pub fn from_text(text: String, points: usize) -> Self {
        Self {
            raw_len: text.len(),
            text,
            points: SmallVec::with_capacity(points),
        }
    }

    /// A sample of text `raw` with these points (tests and callers that have
    /// [`DataPoint`]s at hand).
    pub fn new(raw: &str, points: impl IntoIterator<Item = DataPoint>) -> Self {
        let mut sample = Self::from_text(raw.to_owned(), 0);
        for p in points {
            sample.push(&[&p.series], p.ts_ms, p.value);
        }
        sample
    }

    /// Adds a point to the series whose name is `parts` joined.
    pub fn push(&mut self, parts: &[&str], ts_ms: i64, value: f64) {
        let start = self.text.len();
        for part in parts {
            self.text.push_str(part);
        }
        self.points.push(Point {
            start,
            end: self.text.len(),
            ts_ms,
            value,
        });
    }

    /// The sample's JSON text, as stored.
    pub fn raw(&self) -> &str {
        &self.text[..self.raw_len]
    }

    /// The sample's points, in the order they were added.
    pub fn points(&self) -> impl ExactSizeIterator<Item = PointRef<'_>> + '_ {
        self.points.iter().map(|p| PointRef {
            series: &self.text[p.start..p.end],
            ts_ms: p.ts_ms,
            value: p.value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dp(series: &str, ts_ms: i64, value: f64) -> DataPoint {
        DataPoint {
            series: series.into(),
            ts_ms,
            value,
        }
    }

    #[test]
    fn text_and_series_names_share_one_buffer_and_read_back_apart() {
        let raw = r#"{"t":1,"h":2}"#;
        let mut text = String::with_capacity(raw.len() + 12);
        text.push_str(raw);
        let mut s = StoredSample::from_text(text, 2);
        let capacity = s.text.capacity();
        s.push(&["auto~", "t"], 5, 1.0);
        s.push(&["auto~", "h"], 5, 2.0);
        assert_eq!(s.raw(), raw);
        let points: Vec<_> = s.points().collect();
        assert_eq!(
            points,
            [
                PointRef {
                    series: "auto~t",
                    ts_ms: 5,
                    value: 1.0
                },
                PointRef {
                    series: "auto~h",
                    ts_ms: 5,
                    value: 2.0
                },
            ]
        );
        // The room asked for was enough: no second allocation, points inline.
        assert_eq!(s.text.capacity(), capacity);
        assert!(!s.points.spilled());
    }

    #[test]
    fn more_points_than_fit_inline_are_all_kept_in_order() {
        let s = StoredSample::new("{}", (0..5).map(|i| dp(&format!("s{i}"), i, i as f64)));
        assert_eq!(s.raw(), "{}");
        let got: Vec<_> = s.points().map(|p| (p.series.to_owned(), p.ts_ms)).collect();
        let want: Vec<_> = (0..5).map(|i| (format!("s{i}"), i)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_sample_without_points_is_its_text_alone() {
        let s = StoredSample::new(r#"{"note":"x"}"#, []);
        assert_eq!(s.raw(), r#"{"note":"x"}"#);
        assert_eq!(s.points().len(), 0);
    }
}
