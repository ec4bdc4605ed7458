//! The runtime settings of Modbus buses and the devices on them (validated by `config`).

use std::net::SocketAddr;
use std::time::Duration;

use crate::modbus::codec::PointCodec;
use crate::modbus::planner::ReadRequest;
use crate::source::serial::SerialSettings;

/// One Modbus bus, owned by exactly one task.
#[derive(Debug, Clone)]
pub struct Bus {
    pub name: String,
    pub transport: BusTransport,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Extra attempts after a timeout or transport error (not after an exception).
    pub retries: u32,
    /// Silence kept between the end of one frame and the next request.
    pub inter_frame_delay: Duration,
    /// Longest backoff of a slave that stopped answering.
    pub backoff_max: Duration,
}

/// How a bus reaches its slaves.
#[derive(Debug, Clone, PartialEq)]
pub enum BusTransport {
    Rtu(SerialSettings),
    Tcp(SocketAddr),
    RtuOverTcp(SocketAddr),
}

/// A Modbus slave on a bus.
#[derive(Debug, Clone)]
pub struct ModbusDevice {
    pub bus: String,
    pub unit_id: u8,
    pub points: Vec<ModbusPoint>,
    /// The points grouped by poll period, each group with its read plan (computed once at
    /// validation; reads merge within a group only). The device's own period comes first.
    pub groups: Vec<PollGroup>,
}

/// Points polled at one period, and their merged reads.
#[derive(Debug, Clone)]
pub struct PollGroup {
    pub period: Duration,
    pub plan: Vec<ReadRequest>,
}

impl ModbusDevice {
    /// Every read of every group (a diagnostic read of the whole device).
    pub fn all_reads(&self) -> Vec<ReadRequest> {
        self.groups.iter().flat_map(|g| g.plan.clone()).collect()
    }
}

/// One value in Modbus registers or bits.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusPoint {
    pub name: String,
    pub address: u16,
    pub codec: PointCodec,
    /// Report only when the value moved at least this much (0: on any change).
    pub deadband: Option<f64>,
    pub writable: bool,
    /// After a write, read the point back and compare.
    pub readback: bool,
    /// Use FC 15/16 even for a single coil/register (some devices lack FC 5/6).
    pub write_multiple: bool,
    /// This point's own poll period, when it differs from the device's.
    pub poll_interval: Option<Duration>,
}
