//! The connection to one bus and the request path every Modbus exchange takes: open on
//! demand, inter-frame silence, a time-out and retries per request, and the link dropped
//! (re-opened by the next request) when the transport fails or a TCP answer comes late.

use std::time::{Duration, Instant};

use tokio_modbus::client::{Client, Context, Reader, Writer};
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};

use super::{describe, transport, Bus, BusError, BusTransport};
use crate::modbus::types::RegisterTable;

/// One Modbus request.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Read(RegisterTable, u16, u16),
    /// Coils from an address; `true`: always FC 15.
    WriteBits(u16, Vec<bool>, bool),
    /// Registers from an address; `true`: always FC 16.
    WriteWords(u16, Vec<u16>, bool),
}

/// A device's answer that was not an exception.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Bits(Vec<bool>),
    Words(Vec<u16>),
    Done,
}

/// The bus's connection, owned by its bus task (or by a command-line tool).
pub struct Link {
    pub bus: Bus,
    ctx: Option<Context>,
    /// When the last frame on the wire ended (inter-frame delay).
    last_frame: Option<Instant>,
    /// Whether the last attempt to open the bus failed (to log once per outage).
    open_failing: bool,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("bus", &self.bus.name)
            .field("open", &self.ctx.is_some())
            .finish()
    }
}

impl Link {
    /// Not opened until the first request.
    pub fn new(bus: Bus) -> Self {
        Self {
            bus,
            ctx: None,
            last_frame: None,
            open_failing: false,
        }
    }

    /// Closes the connection (the next request re-opens it).
    pub async fn close(&mut self) {
        if let Some(mut ctx) = self.ctx.take() {
            let _ = ctx.disconnect().await;
        }
    }

    /// One request with the bus's time-out and retries. `Ok(Err(code))` is a Modbus
    /// exception answer.
    pub async fn request(
        &mut self,
        unit: u8,
        op: &Op,
    ) -> Result<Result<Answer, ExceptionCode>, BusError> {
        let (timeout, retries) = (self.bus.timeout, self.bus.retries);
        self.request_with(unit, op, timeout, retries).await
    }

    /// One request with its own time-out and retries (a bus scan waits less per unit ID).
    pub async fn request_with(
        &mut self,
        unit: u8,
        op: &Op,
        timeout: Duration,
        retries: u32,
    ) -> Result<Result<Answer, ExceptionCode>, BusError> {
        let mut last_err = BusError::Timeout(timeout);
        for attempt in 0..=retries {
            if attempt > 0 {
                log::debug!(
                    "modbus bus {}: unit {unit}: retry {attempt} after {last_err}",
                    self.bus.name
                );
            }
            if self.ctx.is_none() {
                match transport::open(&self.bus.transport, unit, self.bus.timeout).await {
                    Ok(c) => {
                        if self.open_failing {
                            log::info!("modbus bus {}: open again", self.bus.name);
                            self.open_failing = false;
                        }
                        self.ctx = Some(c);
                    }
                    Err(e) => {
                        if !self.open_failing {
                            log::warn!(
                                "modbus bus {}: cannot open {}: {e}",
                                self.bus.name,
                                describe(&self.bus.transport)
                            );
                            self.open_failing = true;
                        }
                        return Err(BusError::Transport(format!("cannot open the bus: {e}")));
                    }
                }
            }
            if let Some(t) = self.last_frame {
                tokio::time::sleep_until((t + self.bus.inter_frame_delay).into()).await;
            }
            let Some(ctx) = self.ctx.as_mut() else {
                continue;
            };
            ctx.set_slave(Slave(unit));
            let call = async {
                Ok::<_, tokio_modbus::Error>(match op {
                    Op::Read(RegisterTable::Coil, a, n) => {
                        ctx.read_coils(*a, *n).await?.map(Answer::Bits)
                    }
                    Op::Read(RegisterTable::DiscreteInput, a, n) => {
                        ctx.read_discrete_inputs(*a, *n).await?.map(Answer::Bits)
                    }
                    Op::Read(RegisterTable::Holding, a, n) => {
                        ctx.read_holding_registers(*a, *n).await?.map(Answer::Words)
                    }
                    Op::Read(RegisterTable::Input, a, n) => {
                        ctx.read_input_registers(*a, *n).await?.map(Answer::Words)
                    }
                    Op::WriteBits(a, bits, multiple) => {
                        if *multiple || bits.len() != 1 {
                            ctx.write_multiple_coils(*a, bits)
                                .await?
                                .map(|_| Answer::Done)
                        } else {
                            ctx.write_single_coil(*a, bits[0])
                                .await?
                                .map(|_| Answer::Done)
                        }
                    }
                    Op::WriteWords(a, words, multiple) => {
                        if *multiple || words.len() != 1 {
                            ctx.write_multiple_registers(*a, words)
                                .await?
                                .map(|_| Answer::Done)
                        } else {
                            ctx.write_single_register(*a, words[0])
                                .await?
                                .map(|_| Answer::Done)
                        }
                    }
                })
            };
            let result = tokio::time::timeout(timeout, call).await;
            self.last_frame = Some(Instant::now());
            match result {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(tokio_modbus::Error::Transport(e))) => {
                    // The link itself failed (port gone, connection reset): re-open next time.
                    last_err = BusError::Transport(e.to_string());
                    self.drop_link().await;
                }
                Ok(Err(tokio_modbus::Error::Protocol(e))) => {
                    // A garbled or stray frame: the link is fine, the answer was not.
                    last_err = BusError::Transport(e.to_string());
                }
                Err(_) => {
                    last_err = BusError::Timeout(timeout);
                    // A late TCP answer would be taken for the next one's: reconnect.
                    if !matches!(self.bus.transport, BusTransport::Rtu(_)) {
                        self.drop_link().await;
                    }
                }
            }
        }
        Err(last_err)
    }

    async fn drop_link(&mut self) {
        if let Some(mut ctx) = self.ctx.take() {
            let _ = tokio::time::timeout(Duration::from_millis(200), ctx.disconnect()).await;
        }
    }
}
