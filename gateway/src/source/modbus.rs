//! Modbus TCP source: owns one connection to one device and reads its points.
//!
//! One read request per point for now (the read planner that merges neighbouring
//! registers arrives with the bus scheduler). A Modbus exception for one point is a bad
//! reading of that point, not a failure of the device; a transport error or timeout drops
//! the connection, which is re-established on the next cycle.

use std::time::Duration;

use tokio_modbus::client::{tcp, Context, Reader};
use tokio_modbus::Slave;

use super::{SourceError, Values};
use crate::config::{ModbusPoint, ModbusTcpDevice};
use crate::modbus::decode::{decode, RegisterTable};

/// Polls one Modbus TCP device.
pub struct ModbusTcpPoller {
    device: ModbusTcpDevice,
    /// The open connection; `None` until connected and after a transport failure.
    ctx: Option<Context>,
}

impl std::fmt::Debug for ModbusTcpPoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModbusTcpPoller")
            .field("device", &self.device)
            .field("connected", &self.ctx.is_some())
            .finish()
    }
}

async fn connect(device: &ModbusTcpDevice) -> Result<Context, SourceError> {
    let addr = device.address;
    let t = device.timeout;
    tokio::time::timeout(t, tcp::connect_slave(addr, Slave(device.unit_id)))
        .await
        .map_err(|_| SourceError::Timeout(t))?
        .map_err(|source| SourceError::Connect { addr, source })
}

impl ModbusTcpPoller {
    pub fn new(device: ModbusTcpDevice) -> Self {
        Self { device, ctx: None }
    }

    /// Reads every point; see the module doc for what counts as a failure.
    pub async fn poll(&mut self) -> Result<Values, SourceError> {
        let mut ctx = match self.ctx.take() {
            Some(c) => c,
            None => connect(&self.device).await?,
        };
        let mut values = Vec::with_capacity(self.device.points.len());
        let mut first_bad: Option<String> = None;
        for point in &self.device.points {
            match read_point(&mut ctx, point, self.device.timeout).await {
                Ok(Ok(v)) => values.push((point.name.clone(), v)),
                Ok(Err(bad)) => {
                    log::debug!("point {}: {bad}", point.name);
                    first_bad.get_or_insert(format!("{}: {bad}", point.name));
                }
                // Transport trouble: the connection is in an unknown state; drop it.
                Err(e) => return Err(e),
            }
        }
        self.ctx = Some(ctx);
        if values.is_empty() {
            if let Some(bad) = first_bad {
                return Err(SourceError::AllPointsFailed(bad));
            }
        }
        Ok(values)
    }
}

/// `Ok(Ok(value))`, `Ok(Err(bad reading))` for exceptions and undecodable words, or
/// `Err` for transport failures.
async fn read_point(
    ctx: &mut Context,
    p: &ModbusPoint,
    timeout: Duration,
) -> Result<Result<f64, String>, SourceError> {
    let count = p.data_type.registers();
    let request = async {
        match p.table {
            RegisterTable::Holding => ctx.read_holding_registers(p.address, count).await,
            RegisterTable::Input => ctx.read_input_registers(p.address, count).await,
        }
    };
    let words = match tokio::time::timeout(timeout, request).await {
        Err(_) => return Err(SourceError::Timeout(timeout)),
        Ok(Err(e)) => return Err(SourceError::Transport(e.to_string())),
        Ok(Ok(Err(exception))) => return Ok(Err(format!("modbus exception {exception}"))),
        Ok(Ok(Ok(words))) => words,
    };
    Ok(decode(p.data_type, &words, p.scale, p.offset).map_err(|e| e.to_string()))
}
