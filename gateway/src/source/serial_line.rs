//! A sensor that prints lines on a serial port: one task owns the port, reads lines,
//! parses them (`line_format`) and stores one sample per accepted line.
//!
//! Bad lines are counted (device health) and logged at most once per 30 s with the
//! count, never fatal. A port that cannot be opened or fails while reading (USB adapter
//! unplugged) is re-opened every second until it is back.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use super::health::{HealthRegistry, HealthState};
use super::line_format::{parse_line, LineError, LineFormat};
use super::serial::SerialSettings;
use super::{Device, DeviceSource};
use crate::buffer::BufferHandle;
use crate::sample::Sample;

/// Longest accepted line; longer input is discarded as bad.
pub const MAX_LINE: usize = 4096;
const REOPEN_EVERY: Duration = Duration::from_secs(1);
const BAD_LINE_LOG_EVERY: Duration = Duration::from_secs(30);

/// Reads `device`'s port until `shutdown`.
pub async fn run(
    device: Device,
    buffer: BufferHandle,
    health: HealthRegistry,
    shutdown: CancellationToken,
) {
    let DeviceSource::SerialLine(cfg) = &device.source else {
        return;
    };
    let key = super::endpoint_of(&device);
    let mut open_failing = false;
    let mut last_bad_log: Option<Instant> = None;
    let mut bad_since_log = 0u64;
    'reopen: loop {
        let port = match super::serial::open_serial(&cfg.serial) {
            Ok(p) => {
                log::info!("serial sensor {}: reading {}", device.name, cfg.serial.path);
                open_failing = false;
                p
            }
            Err(e) => {
                if !open_failing {
                    log::warn!(
                        "serial sensor {}: cannot open {}: {e}; retrying every {REOPEN_EVERY:?}",
                        device.name,
                        cfg.serial.path
                    );
                    open_failing = true;
                    health.update(&device.name, |h| {
                        h.state = HealthState::Failing;
                        h.last_error = Some(format!("cannot open {}: {e}", cfg.serial.path));
                    });
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break 'reopen,
                    _ = tokio::time::sleep(REOPEN_EVERY) => continue 'reopen,
                }
            }
        };
        let mut reader = BufReader::new(port);
        let mut buf = Vec::with_capacity(256);
        loop {
            buf.clear();
            let read = tokio::select! {
                _ = shutdown.cancelled() => break 'reopen,
                r = read_line(&mut reader, &mut buf) => r,
            };
            let line = match read {
                Ok(Some(l)) => l,
                Ok(None) | Err(_) => {
                    log::warn!(
                        "serial sensor {}: {} closed or failed; re-opening",
                        device.name,
                        cfg.serial.path
                    );
                    health.update(&device.name, |h| {
                        h.state = HealthState::Failing;
                        h.last_error = Some("port closed or failed".into());
                    });
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'reopen,
                        _ = tokio::time::sleep(REOPEN_EVERY) => continue 'reopen,
                    }
                }
            };
            match accept(&cfg.format, &line) {
                Ok(Some(fields)) => {
                    let ts = crate::now_ms();
                    let sample = Sample::builder(key.clone(), ts).values(fields).build();
                    health.update(&device.name, |h| {
                        h.state = HealthState::Ok;
                        h.polls += 1;
                        h.last_success_ms = Some(ts);
                    });
                    if let Err(e) = buffer.append(vec![sample]).await {
                        crate::buffer::log_refusal(&format!("serial sensor {}", device.name), &e);
                    }
                }
                Ok(None) => {}
                Err(reason) => {
                    bad_since_log += 1;
                    health.update(&device.name, |h| {
                        h.bad_lines += 1;
                        h.last_error = Some(reason.to_string());
                    });
                    if last_bad_log.is_none_or(|t| t.elapsed() >= BAD_LINE_LOG_EVERY) {
                        log::warn!(
                            "serial sensor {}: {bad_since_log} bad line(s); latest: {reason}",
                            device.name
                        );
                        last_bad_log = Some(Instant::now());
                        bad_since_log = 0;
                    }
                }
            }
        }
    }
    log::info!("serial sensor {}: stopped", device.name);
}

/// Parses a raw line; invalid UTF-8 or an over-long line is a bad line.
fn accept(
    format: &LineFormat,
    raw: &[u8],
) -> Result<Option<serde_json::Map<String, Value>>, LineError> {
    if raw.len() > MAX_LINE {
        return Err(LineError::TooLong(MAX_LINE));
    }
    let text = std::str::from_utf8(raw).map_err(|_| LineError::NotUtf8)?;
    parse_line(format, text)
}

/// Reads up to `\n` (bounded: an endless line without newline is cut at MAX_LINE + 1).
/// `Ok(None)` at end of stream.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Vec<u8>>> {
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if buf.is_empty() {
                None
            } else {
                Some(std::mem::take(buf))
            });
        }
        match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => {
                if buf.len() <= MAX_LINE {
                    buf.extend_from_slice(&chunk[..i]);
                }
                r.consume(i + 1);
                return Ok(Some(std::mem::take(buf)));
            }
            None => {
                let n = chunk.len();
                if buf.len() <= MAX_LINE {
                    buf.extend_from_slice(chunk);
                }
                r.consume(n);
            }
        }
    }
}

/// A sensor printing lines on a serial port.
#[derive(Debug, Clone)]
pub struct SerialLineDevice {
    pub serial: SerialSettings,
    pub format: LineFormat,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_split_on_newlines_and_bounded() {
        let long = vec![b'x'; MAX_LINE * 3];
        let mut input = b"a=1\r\nb=2\n".to_vec();
        input.extend_from_slice(&long);
        input.extend_from_slice(b"\nlast");
        let mut r = BufReader::new(&input[..]);
        let mut buf = Vec::new();
        assert_eq!(
            read_line(&mut r, &mut buf).await.unwrap(),
            Some(b"a=1\r".to_vec())
        );
        assert_eq!(
            read_line(&mut r, &mut buf).await.unwrap(),
            Some(b"b=2".to_vec())
        );
        let big = read_line(&mut r, &mut buf).await.unwrap().unwrap();
        assert!(big.len() > MAX_LINE && big.len() < long.len());
        assert!(accept(&LineFormat::Json, &big).is_err());
        assert_eq!(
            read_line(&mut r, &mut buf).await.unwrap(),
            Some(b"last".to_vec())
        );
        assert_eq!(read_line(&mut r, &mut buf).await.unwrap(), None);
    }

    #[test]
    fn invalid_utf8_is_a_bad_line() {
        assert!(accept(&LineFormat::Json, &[0xff, 0xfe]).is_err());
    }
}
