//! "Read now": one diagnostic poll of a device through its bus task (never a second opener
//! of the port), returning each request's raw registers and each point's decoded value or
//! failure. Nothing read here goes to the buffer; the regular polls go on as before.

use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;

use super::{decode_member, Answer, BusActor, BusHandle, Job, Op};

/// One request of the device's read plan and what came back.
#[derive(Debug, Clone, Serialize)]
pub struct RawRead {
    pub table: String,
    pub start: u16,
    pub count: u16,
    /// Registers as read (words) or bits as 0/1; empty when the request failed.
    pub raw: Vec<u16>,
    pub error: Option<String>,
}

/// One point's decoded value (scaled as configured) or why it has none.
#[derive(Debug, Clone, Serialize)]
pub struct PointRead {
    pub name: String,
    pub value: Option<Value>,
    pub error: Option<String>,
}

/// The whole diagnostic read.
#[derive(Debug, Clone, Serialize)]
pub struct ReadNow {
    pub unit_id: u8,
    pub requests: Vec<RawRead>,
    pub points: Vec<PointRead>,
    pub millis: f64,
}

pub(super) struct ReadNowJob {
    pub device: String,
    pub reply: oneshot::Sender<Result<ReadNow, String>>,
}

impl std::fmt::Debug for ReadNowJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReadNowJob({})", self.device)
    }
}

impl BusHandle {
    /// Reads every point of `device` once, now (ahead of due polls).
    pub async fn read_now(&self, device: &str) -> Result<ReadNow, String> {
        let (reply, rx) = oneshot::channel();
        let job = ReadNowJob {
            device: device.to_owned(),
            reply,
        };
        if self.tx.send(Job::ReadNow(job)).await.is_err() {
            return Err("the bus is not running".into());
        }
        rx.await
            .unwrap_or_else(|_| Err("the bus stopped before the read".into()))
    }
}

impl BusActor {
    pub(super) async fn read_now(&mut self, device: &str) -> Result<ReadNow, String> {
        let started = std::time::Instant::now();
        let i = self
            .slaves
            .iter()
            .position(|s| s.name == device)
            .ok_or_else(|| format!("no Modbus device {device:?} on this bus"))?;
        let unit = self.slaves[i].dev.unit_id;
        let plan = self.slaves[i].dev.all_reads();
        let mut requests = Vec::new();
        let mut points: Vec<PointRead> = self.slaves[i]
            .dev
            .points
            .iter()
            .map(|p| PointRead {
                name: p.name.clone(),
                value: None,
                error: Some("not read".into()),
            })
            .collect();
        for req in &plan {
            let mut raw = RawRead {
                table: format!("{:?}", req.table),
                start: req.start,
                count: req.count,
                raw: Vec::new(),
                error: None,
            };
            match self
                .link
                .request(unit, &Op::Read(req.table, req.start, req.count))
                .await
            {
                Ok(Ok(answer)) => {
                    raw.raw = match &answer {
                        Answer::Words(w) => w.clone(),
                        Answer::Bits(b) => b.iter().map(|x| u16::from(*x)).collect(),
                        Answer::Done => Vec::new(),
                    };
                    for (idx, off) in &req.members {
                        let p = &self.slaves[i].dev.points[*idx];
                        let r = decode_member(p, &answer, usize::from(*off));
                        if let Some(out) = points.get_mut(*idx) {
                            (out.value, out.error) = match r {
                                Ok(v) => (Some(v), None),
                                Err(e) => (None, Some(e)),
                            };
                        }
                    }
                }
                Ok(Err(code)) => {
                    let why = format!("modbus exception: {code}");
                    for (idx, _) in &req.members {
                        if let Some(out) = points.get_mut(*idx) {
                            out.error = Some(why.clone());
                        }
                    }
                    raw.error = Some(why);
                }
                Err(e) => {
                    let why = e.to_string();
                    for (idx, _) in &req.members {
                        if let Some(out) = points.get_mut(*idx) {
                            out.error = Some(why.clone());
                        }
                    }
                    raw.error = Some(why);
                }
            }
            requests.push(raw);
        }
        Ok(ReadNow {
            unit_id: unit,
            requests,
            points,
            millis: started.elapsed().as_secs_f64() * 1000.0,
        })
    }
}
