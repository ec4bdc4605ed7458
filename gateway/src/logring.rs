//! The last few thousand log lines in memory, for the web page's log view: a logger that
//! hands every record to the real one (journal or stderr) and keeps a copy in a ring.
//!
//! Bounded: [`CAPACITY`] lines of at most [`MAX_LINE`] bytes each (≤ 10 MiB worst case,
//! typically under 1 MiB). Nothing here writes to disk.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

/// Lines kept.
pub const CAPACITY: usize = 5000;
/// Longest message kept (longer ones are cut, with a mark).
pub const MAX_LINE: usize = 2048;

/// One log record as kept.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub ts_ms: i64,
    pub level: &'static str,
    pub target: String,
    pub message: String,
}

/// The process-wide ring (filled once [`install`] has run).
pub static RING: LogRing = LogRing {
    lines: Mutex::new(VecDeque::new()),
};

#[derive(Debug)]
pub struct LogRing {
    lines: Mutex<VecDeque<LogLine>>,
}

impl LogRing {
    pub fn push(&self, line: LogLine) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() >= CAPACITY {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// Lines at `min_level` or more severe whose text contains `needle` (case-insensitive),
    /// oldest first.
    pub fn select(&self, min_level: log::Level, needle: &str) -> Vec<LogLine> {
        let needle = needle.to_lowercase();
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines
            .iter()
            .filter(|l| {
                l.level
                    .parse::<log::Level>()
                    .map(|lv| lv <= min_level)
                    .unwrap_or(true)
            })
            .filter(|l| {
                needle.is_empty()
                    || l.message.to_lowercase().contains(&needle)
                    || l.target.to_lowercase().contains(&needle)
            })
            .cloned()
            .collect()
    }
}

/// Forwards to the real logger and keeps a copy.
struct Tee {
    inner: Box<dyn log::Log>,
}

impl log::Log for Tee {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if !self.inner.enabled(record.metadata()) {
            return;
        }
        self.inner.log(record);
        let mut message = record.args().to_string();
        if message.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" …(cut)");
        }
        RING.push(LogLine {
            ts_ms: crate::now_ms(),
            level: record.level().as_str(),
            target: record.target().to_owned(),
            message,
        });
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Installs `inner` as the process logger, with the ring beside it.
pub fn install(
    inner: Box<dyn log::Log>,
    level: log::LevelFilter,
) -> Result<(), log::SetLoggerError> {
    log::set_boxed_logger(Box::new(Tee { inner }))?;
    log::set_max_level(level);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_is_bounded_and_filters_by_level_and_text() {
        let ring = LogRing {
            lines: Mutex::new(VecDeque::new()),
        };
        for i in 0..CAPACITY + 10 {
            ring.push(LogLine {
                ts_ms: i as i64,
                level: if i % 2 == 0 { "INFO" } else { "WARN" },
                target: "kp".into(),
                message: format!("line {i}"),
            });
        }
        let all = ring.select(log::Level::Trace, "");
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0].message, "line 10");
        let warn = ring.select(log::Level::Warn, "");
        assert!(warn.iter().all(|l| l.level == "WARN"));
        assert_eq!(ring.select(log::Level::Trace, "LINE 5009").len(), 1);
    }
}
