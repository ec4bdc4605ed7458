//! The write path of the bus actor: a command's value encoded for its point, written with
//! the right function code (read-modify-write for a bit in a register; this task is the
//! bus's only user, so nothing can change the register in between), then read back and
//! compared in the device's own encoding when the point asks for it.

use serde_json::Value;

use super::*;
use crate::modbus::codec::{encode, WriteData};

impl BusActor {
    pub(super) async fn write(&mut self, device: &str, point: &str, value: &Value) -> WriteOutcome {
        let Some(slave) = self.slaves.iter().find(|s| s.name == device) else {
            return Err(WriteError::NoDevice {
                device: device.to_owned(),
                bus: self.link.bus.name.clone(),
            });
        };
        let Some(p) = slave.dev.points.iter().find(|p| p.name == point).cloned() else {
            return Err(WriteError::NoPoint {
                device: device.to_owned(),
                point: point.to_owned(),
            });
        };
        if !p.writable {
            return Err(WriteError::NotWritable(point.to_owned()));
        }
        let unit = slave.dev.unit_id;
        let data = match encode(&p.codec, value) {
            Ok(d) => d,
            Err(e) => {
                return Err(WriteError::BadValue {
                    point: point.to_owned(),
                    value: value.to_string(),
                    reason: e.to_string(),
                })
            }
        };
        let op = match data {
            WriteData::Bits(bits) => Op::WriteBits(p.address, bits, p.write_multiple),
            WriteData::Words(words) => Op::WriteWords(p.address, words, p.write_multiple),
            WriteData::RegisterBit { bit, value } => {
                // Read-modify-write; safe because this task is the bus's only user.
                let current = match self
                    .link
                    .request(unit, &Op::Read(RegisterTable::Holding, p.address, 1))
                    .await
                {
                    Ok(Ok(Answer::Words(w))) if w.len() == 1 => w[0],
                    Ok(Ok(_)) => {
                        return Err(WriteError::Refused(
                            "malformed answer to the read before the bit write".into(),
                        ))
                    }
                    Ok(Err(code)) => {
                        return Err(WriteError::Refused(format!(
                            "device answered exception: {code}"
                        )))
                    }
                    Err(e) => return bus_failure(e),
                };
                let word = if value {
                    current | (1 << bit)
                } else {
                    current & !(1 << bit)
                };
                Op::WriteWords(p.address, vec![word], false)
            }
        };
        match self.link.request(unit, &op).await {
            Ok(Ok(_)) => {}
            Ok(Err(code)) => {
                return Err(WriteError::Refused(format!(
                    "device answered exception: {code}"
                )))
            }
            Err(e) => return bus_failure(e),
        }
        log::info!("modbus {device}: wrote {value} to {point}");
        if !p.readback {
            return Ok(value.clone());
        }
        let width = p.codec.data_type.width();
        let read = match self
            .link
            .request(unit, &Op::Read(p.codec.table, p.address, width))
            .await
        {
            Ok(Ok(a)) => a,
            Ok(Err(code)) => {
                return Err(WriteError::Refused(format!(
                    "read-back answered exception: {code}"
                )))
            }
            Err(e) => return bus_failure(e),
        };
        let got = match decode_member(&p, &read, 0) {
            Ok(v) => v,
            Err(e) => {
                return Err(WriteError::Refused(format!(
                    "read-back value unreadable: {e}"
                )))
            }
        };
        // Compare in the device's own encoding, so float rounding in scale is not a mismatch.
        if encode(&p.codec, &got).ok() != encode(&p.codec, value).ok() {
            return Err(WriteError::Refused(format!(
                "read-back mismatch: wrote {value}, device holds {got}"
            )));
        }
        Ok(got)
    }
}

fn bus_failure(e: BusError) -> WriteOutcome {
    match e {
        BusError::Timeout(_) => Err(WriteError::NoAnswer(e)),
        BusError::Transport(_) => Err(WriteError::Transport(e)),
    }
}
