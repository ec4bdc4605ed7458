//! Commissioning tools on a bus, shared by the web page (through the bus's owner task,
//! which pauses its polling while a tool runs) and the command line (on its own link):
//! a unit-ID scan with live progress, a raw read of any range of any table, and a write of
//! one value.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::link::{Answer, Link, Op};
use super::{BusActor, BusError, BusHandle, BusTransport, Job};
use crate::modbus::codec::{encode, PointCodec, WriteData};
use crate::modbus::types::RegisterTable;

/// What a scan is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanRequest {
    pub first: u8,
    pub last: u8,
    /// How long to wait for each unit ID (no retries).
    pub timeout: Duration,
}

/// A unit ID that answered the probe.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ScanHit {
    pub unit: u8,
    /// `holding 0 = 0x1234` or `exception: Illegal data address`.
    pub answer: String,
}

/// A scan's progress, published after every unit ID.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ScanProgress {
    pub bus: String,
    pub done: u32,
    pub total: u32,
    pub found: Vec<ScanHit>,
    /// IDs whose probe got an answer that did not parse (a collision, wrong line settings).
    pub garbled: Vec<ScanHit>,
    pub elapsed_ms: u64,
    /// Estimated time left, from the time per ID so far.
    pub eta_ms: u64,
    /// The least a scan of this range can take on the wire: per absent ID one request
    /// frame, the inter-frame silence and the time-out; per answering ID the request and
    /// its answer (RTU only; 0 for TCP). Estimated for all-absent while running, exact for
    /// what was found at the end.
    pub lower_bound_ms: u64,
    pub finished: bool,
    pub cancelled: bool,
    pub error: Option<String>,
}

/// The probe: one holding register at address 0 (any answer, exceptions included,
/// means something is there).
const PROBE: Op = Op::Read(RegisterTable::Holding, 0, 1);

/// RTU bits per character (start, 8 data, parity or second stop, stop).
const BITS_PER_CHAR: f64 = 11.0;

/// Time on the wire for `bytes` RTU characters (zero for TCP, whose frame time is not the
/// bound).
fn wire(link: &Link, bytes: f64) -> Duration {
    match &link.bus.transport {
        BusTransport::Rtu(s) => {
            Duration::from_secs_f64(bytes * BITS_PER_CHAR / f64::from(s.baud.max(1)))
        }
        _ => Duration::ZERO,
    }
}

/// The physical lower bound of a scan (see [`ScanProgress`]): a read request is 8 bytes
/// and the answer to the probe 7.
pub fn lower_bound(link: &Link, absent: u32, answered: u32, timeout: Duration) -> Duration {
    if !matches!(link.bus.transport, BusTransport::Rtu(_)) {
        return Duration::ZERO;
    }
    let gap = link.bus.inter_frame_delay;
    (wire(link, 8.0) + gap + timeout) * absent + (wire(link, 15.0) + gap * 2) * answered
}

/// Probes unit IDs `first..=last` one by one, publishing progress after each.
pub async fn scan(
    link: &mut Link,
    req: &ScanRequest,
    progress: &watch::Sender<ScanProgress>,
    cancel: &CancellationToken,
) -> ScanProgress {
    let started = Instant::now();
    let total = u32::from(req.last.saturating_sub(req.first)) + 1;
    let mut state = ScanProgress {
        bus: link.bus.name.clone(),
        total,
        lower_bound_ms: lower_bound(link, total, 0, req.timeout).as_millis() as u64,
        ..ScanProgress::default()
    };
    progress.send_replace(state.clone());
    for unit in req.first..=req.last {
        if cancel.is_cancelled() {
            state.cancelled = true;
            break;
        }
        if let Err(e) = probe(link, unit, req.timeout, &mut state).await {
            state.error = Some(e);
            break;
        }
        state.done += 1;
        let elapsed = started.elapsed();
        state.elapsed_ms = elapsed.as_millis() as u64;
        state.eta_ms = (elapsed / state.done * (total - state.done)).as_millis() as u64;
        progress.send_replace(state.clone());
    }
    state.finished = true;
    state.eta_ms = 0;
    let found = state.found.len() as u32;
    state.lower_bound_ms =
        lower_bound(link, state.done.saturating_sub(found), found, req.timeout).as_millis() as u64;
    progress.send_replace(state.clone());
    state
}

/// Probes one unit ID and records what answered. A late answer from an earlier ID (its
/// reply came after its time-out, during this probe) marks that ID present and this probe
/// is repeated once; a garbled answer is kept apart from the hits. `Err`: the bus cannot
/// be opened.
async fn probe(
    link: &mut Link,
    unit: u8,
    timeout: Duration,
    state: &mut ScanProgress,
) -> Result<(), String> {
    for _attempt in 0..2 {
        let answer = match link.request_with(unit, &PROBE, timeout, 0).await {
            Ok(Ok(Answer::Words(w))) if !w.is_empty() => format!("holding 0 = 0x{:04X}", w[0]),
            Ok(Ok(_)) => "answered".into(),
            Ok(Err(code)) => format!("exception: {code}"),
            Err(BusError::Timeout(_)) => return Ok(()),
            Err(BusError::Transport(e)) if e.starts_with("cannot open") => return Err(e),
            Err(BusError::Transport(e)) => {
                match late_answerer(&e).filter(|&u| u != unit) {
                    Some(late) if !state.found.iter().any(|h| h.unit == late) => {
                        state.found.push(ScanHit {
                            unit: late,
                            answer: format!("answered after the {timeout:?} time-out"),
                        });
                        state.found.sort_by_key(|h| h.unit);
                    }
                    Some(_) => {}
                    None => state.garbled.push(ScanHit { unit, answer: e }),
                }
                continue;
            }
        };
        state.found.push(ScanHit { unit, answer });
        return Ok(());
    }
    Ok(())
}

/// The unit ID of an answer that came for another request (tokio-modbus's header check:
/// `actual/response = Header { slave_id: N }`).
fn late_answerer(error: &str) -> Option<u8> {
    let (_, rest) = error.split_once("actual/response = Header { slave_id: ")?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// What a raw read returned.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValues {
    Bits(Vec<bool>),
    Words(Vec<u16>),
}

/// Reads `count` registers or bits of `table` from `start` (one request, ≤ 125 registers
/// or 2 000 bits as the protocol allows).
pub async fn read_range(
    link: &mut Link,
    unit: u8,
    table: RegisterTable,
    start: u16,
    count: u16,
) -> Result<RawValues, String> {
    let max = if table.is_bits() { 2000 } else { 125 };
    if count == 0 || count > max {
        return Err(format!("count must be 1..={max} for {}", table.name()));
    }
    if u32::from(start) + u32::from(count) > 65_536 {
        return Err("the range runs past address 65535".into());
    }
    match link.request(unit, &Op::Read(table, start, count)).await {
        Ok(Ok(Answer::Words(w))) => Ok(RawValues::Words(w)),
        Ok(Ok(Answer::Bits(mut b))) => {
            b.truncate(usize::from(count));
            Ok(RawValues::Bits(b))
        }
        Ok(Ok(Answer::Done)) => Err("unexpected answer".into()),
        Ok(Err(code)) => Err(format!("device answered exception: {code}")),
        Err(e) => Err(format!("no answer: {e}")),
    }
}

/// Writes one value encoded by `codec` at `address` (FC 5/6, or 16 for several registers),
/// then reads it back; returns the registers or bit read back.
pub async fn write_value(
    link: &mut Link,
    unit: u8,
    codec: &PointCodec,
    address: u16,
    value: &Value,
) -> Result<RawValues, String> {
    if !codec.table.is_writable() {
        return Err(format!("{} is read-only", codec.table.name()));
    }
    let op = match encode(codec, value).map_err(|e| format!("cannot write {value}: {e}"))? {
        WriteData::Bits(bits) => Op::WriteBits(address, bits, false),
        WriteData::Words(words) => Op::WriteWords(address, words, false),
        WriteData::RegisterBit { .. } => {
            return Err("a single bit of a register is written from a point".into())
        }
    };
    match link.request(unit, &op).await {
        Ok(Ok(_)) => {}
        Ok(Err(code)) => return Err(format!("device answered exception: {code}")),
        Err(e) => return Err(format!("no answer: {e}")),
    }
    let width = if codec.table.is_bits() {
        1
    } else {
        codec.data_type.width()
    };
    read_range(link, unit, codec.table, address, width).await
}

/// A tool run by the bus's owner task (polling waits until it is done).
#[derive(Debug)]
pub(super) enum ToolJob {
    Scan {
        req: ScanRequest,
        progress: watch::Sender<ScanProgress>,
        cancel: CancellationToken,
    },
    Read {
        unit: u8,
        table: RegisterTable,
        start: u16,
        count: u16,
        reply: oneshot::Sender<Result<RawValues, String>>,
    },
    Write {
        unit: u8,
        codec: PointCodec,
        address: u16,
        value: Value,
        reply: oneshot::Sender<Result<RawValues, String>>,
    },
}

impl BusHandle {
    async fn tool(&self, job: ToolJob) -> Result<(), String> {
        self.tx
            .send(Job::Tool(job))
            .await
            .map_err(|_| "the bus is not running".to_owned())
    }

    /// Starts a scan on this bus; its progress is published on the returned receiver.
    pub async fn start_scan(
        &self,
        req: ScanRequest,
        cancel: CancellationToken,
    ) -> Result<watch::Receiver<ScanProgress>, String> {
        let (progress, rx) = watch::channel(ScanProgress::default());
        self.tool(ToolJob::Scan {
            req,
            progress,
            cancel,
        })
        .await?;
        Ok(rx)
    }

    /// [`read_range`] through the bus's owner task.
    pub async fn read_range(
        &self,
        unit: u8,
        table: RegisterTable,
        start: u16,
        count: u16,
    ) -> Result<RawValues, String> {
        let (reply, rx) = oneshot::channel();
        self.tool(ToolJob::Read {
            unit,
            table,
            start,
            count,
            reply,
        })
        .await?;
        rx.await.unwrap_or_else(|_| Err("the bus stopped".into()))
    }

    /// [`write_value`] through the bus's owner task.
    pub async fn write_value(
        &self,
        unit: u8,
        codec: PointCodec,
        address: u16,
        value: Value,
    ) -> Result<RawValues, String> {
        let (reply, rx) = oneshot::channel();
        self.tool(ToolJob::Write {
            unit,
            codec,
            address,
            value,
            reply,
        })
        .await?;
        rx.await.unwrap_or_else(|_| Err("the bus stopped".into()))
    }
}

impl BusActor {
    pub(super) async fn run_tool(&mut self, job: ToolJob) {
        let bus = self.link.bus.name.clone();
        match job {
            ToolJob::Scan {
                req,
                progress,
                cancel,
            } => {
                log::info!(
                    "modbus bus {bus}: scanning unit IDs {}..={} ({:?} each); polling paused",
                    req.first,
                    req.last,
                    req.timeout
                );
                let done = scan(&mut self.link, &req, &progress, &cancel).await;
                let ids: Vec<u8> = done.found.iter().map(|h| h.unit).collect();
                log::info!(
                    "modbus bus {bus}: scan {} after {} ms, found {ids:?}; polling resumes",
                    if done.cancelled { "cancelled" } else { "done" },
                    done.elapsed_ms
                );
            }
            ToolJob::Read {
                unit,
                table,
                start,
                count,
                reply,
            } => {
                let r = read_range(&mut self.link, unit, table, start, count).await;
                let _ = reply.send(r);
            }
            ToolJob::Write {
                unit,
                codec,
                address,
                value,
                reply,
            } => {
                log::info!(
                    "modbus bus {bus}: write of {value} to unit {unit} {} {address} from the web page",
                    codec.table.name()
                );
                let r = write_value(&mut self.link, unit, &codec, address, &value).await;
                let _ = reply.send(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_late_answer_names_its_unit() {
        let e = "transport: mismatching headers: expected/request = Header { slave_id: 2 }, \
                 actual/response = Header { slave_id: 1 } Ok(ReadHoldingRegisters([215]))";
        assert_eq!(super::late_answerer(e), Some(1));
        assert_eq!(super::late_answerer("transport: invalid CRC"), None);
    }
}
