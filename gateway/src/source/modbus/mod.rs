//! The Modbus bus scheduler: one task owns one bus (a serial port or a TCP connection)
//! and every request to every slave on it goes through that task, one at a time.
//!
//! - Polls: each slave's points are grouped by poll period (the device's, or a point's
//!   own `poll_interval_ms`), each group with its own [`schedule::Schedule`]; the task
//!   sleeps until the earliest due group, runs its planned reads (`modbus::planner`,
//!   merged within the group only) and turns them into one data sample, which is durable
//!   in the buffer before the next poll.
//! - Serial timing: at least `inter_frame_delay` of silence before every frame (Modbus
//!   over serial line §2.5.1.1).
//! - Failures: a timeout or transport error is retried `retries` times; a slave whose
//!   poll still fails is backed off exponentially and probed, so it cannot starve the
//!   others. A Modbus exception is a bad reading of the points it covers (listed in the
//!   sample's `bad` object), never a failure of the bus.
//! - Recovery: a transport error drops the connection (or closes the serial port); the
//!   next request re-opens it, so an unplugged USB adapter that comes back, or a
//!   restarted TCP server, is picked up without a restart.
//! - Writes (from 11/CEP commands) arrive on a channel that is served before any due poll.

mod link;
mod read_now;
pub mod schedule;
pub mod settings;
pub mod tools;
pub mod transport;
mod write;

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::health::{HealthRegistry, HealthState};
use crate::buffer::BufferHandle;
use crate::endpoint::Endpoint;
use crate::modbus::codec::{decode_bits, decode_words};
use crate::modbus::planner::ReadRequest;
use crate::modbus::types::RegisterTable;
use crate::sample::Sample;
use crate::source::{Device, DeviceSource};
pub use link::{Answer, Link, Op};
pub use read_now::{PointRead, RawRead, ReadNow};
use schedule::Schedule;
pub use settings::{Bus, BusTransport, ModbusDevice, ModbusPoint, PollGroup};

/// Why a request produced no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("transport: {0}")]
    Transport(String),
}

/// Why a write did not happen (or did not stick).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("no device {device:?} on bus {bus}")]
    NoDevice { device: String, bus: String },
    #[error("device {device:?} has no point {point:?}")]
    NoPoint { device: String, point: String },
    #[error("point {0:?} is not writable")]
    NotWritable(String),
    #[error("cannot write {value} to {point:?}: {reason}")]
    BadValue {
        point: String,
        value: String,
        reason: String,
    },
    /// The device answered, but not with success (an exception, a read-back mismatch).
    #[error("{0}")]
    Refused(String),
    #[error("device did not answer: {0}")]
    NoAnswer(BusError),
    #[error("{0}")]
    Transport(BusError),
    #[error("{0}")]
    BusNotRunning(&'static str),
}

/// Outcome of a write: the value the point now holds (read back when configured).
pub type WriteOutcome = Result<Value, WriteError>;

struct WriteJob {
    device: String,
    point: String,
    value: Value,
    reply: oneshot::Sender<WriteOutcome>,
}

/// What a bus task is asked to do besides polling.
#[derive(Debug)]
enum Job {
    Write(WriteJob),
    ReadNow(read_now::ReadNowJob),
    Tool(tools::ToolJob),
}

/// Sends writes (and one-off diagnostic reads) to a bus task; cheap to clone.
#[derive(Debug, Clone)]
pub struct BusHandle {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for WriteJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WriteJob({}.{})", self.device, self.point)
    }
}

impl BusHandle {
    /// Writes `value` to `device`'s `point` (ahead of pending polls) and reports the result.
    pub async fn write(&self, device: &str, point: &str, value: Value) -> WriteOutcome {
        let (reply, rx) = oneshot::channel();
        let job = WriteJob {
            device: device.to_owned(),
            point: point.to_owned(),
            value,
            reply,
        };
        if self.tx.send(Job::Write(job)).await.is_err() {
            return Err(WriteError::BusNotRunning("the bus is not running"));
        }
        rx.await.unwrap_or(Err(WriteError::BusNotRunning(
            "the bus stopped before the write",
        )))
    }
}

struct SlaveState {
    name: String,
    endpoint: Endpoint,
    dev: ModbusDevice,
    /// One schedule per poll group (`dev.groups`, same order).
    schedules: Vec<Schedule>,
    /// Whether the slave is failing (its last poll of any group failed): logs once per outage.
    failing: bool,
    /// Last reported value per point (deadband / report-on-change).
    last_reported: Vec<Option<Value>>,
}

/// The task that owns one bus.
pub struct BusActor {
    slaves: Vec<SlaveState>,
    buffer: BufferHandle,
    health: HealthRegistry,
    writes: mpsc::Receiver<Job>,
    /// The connection to the bus (the only one: this task is its owner).
    link: Link,
}

impl std::fmt::Debug for BusActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusActor")
            .field("bus", &self.link.bus.name)
            .finish_non_exhaustive()
    }
}

impl BusActor {
    /// Builds the actor for `bus` and the devices on it; returns it with its write handle.
    pub fn new(
        bus: Bus,
        devices: &[Device],
        buffer: BufferHandle,
        health: HealthRegistry,
    ) -> (Self, BusHandle) {
        let now = Instant::now();
        let slaves: Vec<SlaveState> = devices
            .iter()
            .filter_map(|d| match &d.source {
                DeviceSource::Modbus(m) if m.bus == bus.name => Some(SlaveState {
                    name: d.name.clone(),
                    endpoint: Endpoint {
                        app_version: d.app_version.clone(),
                        token: d.token.clone(),
                    },
                    last_reported: vec![None; m.points.len()],
                    schedules: m
                        .groups
                        .iter()
                        .map(|g| Schedule::new(g.period, bus.backoff_max, now))
                        .collect(),
                    failing: false,
                    dev: m.clone(),
                }),
                _ => None,
            })
            .collect();
        let (tx, writes) = mpsc::channel(64);
        (
            Self {
                link: Link::new(bus),
                slaves,
                buffer,
                health,
                writes,
            },
            BusHandle { tx },
        )
    }

    /// Serves the bus until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        log::info!(
            "modbus bus {}: {} slave(s) on {}",
            self.link.bus.name,
            self.slaves.len(),
            describe(&self.link.bus.transport)
        );
        loop {
            let due = self
                .slaves
                .iter()
                .enumerate()
                .flat_map(|(i, s)| {
                    s.schedules
                        .iter()
                        .enumerate()
                        .map(move |(g, sch)| (i, g, sch.next_due()))
                })
                .min_by_key(|(_, _, at)| *at);
            let (idx, at) = match due {
                Some((i, g, at)) => (Some((i, g)), at),
                None => (None, Instant::now() + Duration::from_secs(3600)),
            };
            tokio::select! {
                biased;
                // Shutdown: finish nothing new; a poll already running has completed.
                _ = shutdown.cancelled() => break,
                // Writes go before any due poll.
                Some(job) = self.writes.recv() => match job {
                    Job::Write(job) => {
                        let outcome = self.write(&job.device, &job.point, &job.value).await;
                        let _ = job.reply.send(outcome);
                    }
                    Job::ReadNow(job) => {
                        let outcome = self.read_now(&job.device).await;
                        let _ = job.reply.send(outcome);
                    }
                    Job::Tool(job) => self.run_tool(job).await,
                },
                _ = tokio::time::sleep_until(at.into()) => {
                    if let Some((i, g)) = idx {
                        self.poll(i, g).await;
                    }
                }
            }
        }
        self.link.close().await;
        log::info!("modbus bus {}: stopped", self.link.bus.name);
    }

    /// Polls group `g` of slave `i`.
    async fn poll(&mut self, i: usize, g: usize) {
        let started = Instant::now();
        let unit = self.slaves[i].dev.unit_id;
        let plan: Vec<ReadRequest> = self.slaves[i].dev.groups[g].plan.clone();
        let n = self.slaves[i].dev.points.len();
        let mut values: Vec<Option<Value>> = vec![None; n];
        let mut bad: Vec<(String, String)> = Vec::new();
        let mut exceptions = 0u64;
        let mut failure: Option<BusError> = None;
        for req in &plan {
            match self
                .link
                .request(unit, &Op::Read(req.table, req.start, req.count))
                .await
            {
                Ok(Ok(answer)) => {
                    for (idx, off) in &req.members {
                        let p = &self.slaves[i].dev.points[*idx];
                        match decode_member(p, &answer, usize::from(*off)) {
                            Ok(v) => values[*idx] = Some(v),
                            Err(reason) => {
                                bad.push((p.name.clone(), reason.to_string()));
                            }
                        }
                    }
                }
                Ok(Err(code)) => {
                    exceptions += 1;
                    for (idx, _) in &req.members {
                        let name = self.slaves[i].dev.points[*idx].name.clone();
                        bad.push((name, format!("modbus exception: {code}")));
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let now = Instant::now();
        let name = self.slaves[i].name.clone();
        if failure.is_none() && values.iter().all(Option::is_none) {
            let first = bad
                .first()
                .map_or("no points", |(_, reason)| reason.as_str())
                .to_owned();
            failure = Some(BusError::Transport(format!(
                "every point failed; first: {first}"
            )));
        }
        if let Some(err) = failure {
            // A slave that does not answer is backed off as a whole: every group probes
            // at its own backed-off time, and the first success returns that group.
            let slave = &mut self.slaves[i];
            let delay = slave.schedules[g].failed(now);
            for (other, sch) in slave.schedules.iter_mut().enumerate() {
                if other != g && sch.failures() == 0 {
                    sch.failed(now);
                }
            }
            let failures = slave.schedules[g].failures();
            let first = !std::mem::replace(&mut slave.failing, true);
            if first {
                log::warn!("modbus {name} (unit {unit} on {}): poll failed: {err}; backing off, next probe in {delay:?}", self.link.bus.name);
            } else {
                log::debug!("modbus {name}: probe {failures} failed: {err}; next in {delay:?}");
            }
            self.health.update(&name, |h| {
                h.state = HealthState::Failing;
                h.polls += 1;
                h.failures += 1;
                h.exceptions += exceptions;
                h.consecutive_failures = failures;
                h.last_error = Some(err.to_string());
            });
            return;
        }
        if std::mem::replace(&mut self.slaves[i].failing, false) {
            log::info!("modbus {name} (unit {unit}): answering again");
        }
        self.slaves[i].schedules[g].succeeded(now);
        let latency = now.duration_since(started);
        let ts = crate::now_ms();
        let slave = &mut self.slaves[i];
        let mut sample = Sample::builder(slave.endpoint.clone(), ts);
        for (idx, v) in values.into_iter().enumerate() {
            let Some(v) = v else { continue };
            let p = &slave.dev.points[idx];
            if should_report(p.deadband, slave.last_reported[idx].as_ref(), &v) {
                slave.last_reported[idx] = Some(v.clone());
                sample = sample.value(p.name.clone(), v);
            }
        }
        let has_bad = !bad.is_empty();
        for (point, reason) in bad {
            sample = sample.bad(point, reason);
        }
        self.health.update(&name, |h| {
            h.state = HealthState::Ok;
            h.polls += 1;
            h.exceptions += exceptions;
            h.consecutive_failures = 0;
            h.last_success_ms = Some(ts);
            h.observe_latency(latency.as_secs_f64());
            if !has_bad {
                h.last_error = None;
            }
        });
        if sample.is_empty() {
            return; // nothing changed beyond the deadbands
        }
        if let Err(e) = self.buffer.append(vec![sample.build()]).await {
            crate::buffer::log_refusal(&format!("modbus {name}"), &e);
        }
    }
}

fn describe(t: &BusTransport) -> String {
    match t {
        BusTransport::Rtu(s) => format!("RTU {} at {} baud", s.path, s.baud),
        BusTransport::Tcp(a) => format!("TCP {a}"),
        BusTransport::RtuOverTcp(a) => format!("RTU over TCP {a}"),
    }
}

fn decode_member(p: &ModbusPoint, answer: &Answer, off: usize) -> Result<Value, String> {
    let width = usize::from(p.codec.data_type.width());
    match answer {
        Answer::Words(w) => w
            .get(off..off + width)
            .ok_or_else(|| "short answer".to_owned())
            .and_then(|words| decode_words(&p.codec, words).map_err(|e| e.to_string())),
        Answer::Bits(b) => b
            .get(off..off + 1)
            .ok_or_else(|| "short answer".to_owned())
            .and_then(|bits| decode_bits(bits).map_err(|e| e.to_string())),
        Answer::Done => Err("no data in answer".into()),
    }
}

/// Deadband / report-on-change: without a deadband every value is reported.
fn should_report(deadband: Option<f64>, last: Option<&Value>, v: &Value) -> bool {
    let (Some(d), Some(last)) = (deadband, last) else {
        return true;
    };
    match (last.as_f64(), v.as_f64()) {
        (Some(a), Some(b)) if d > 0.0 => (b - a).abs() >= d,
        _ => last != v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deadband_reports_only_real_moves() {
        assert!(should_report(None, Some(&json!(1.0)), &json!(1.0)));
        assert!(should_report(Some(0.5), None, &json!(1.0)));
        assert!(!should_report(Some(0.5), Some(&json!(1.0)), &json!(1.4)));
        assert!(should_report(Some(0.5), Some(&json!(1.0)), &json!(0.5)));
        assert!(!should_report(Some(0.0), Some(&json!(true)), &json!(true)));
        assert!(should_report(Some(0.0), Some(&json!(3)), &json!(4)));
    }
}
