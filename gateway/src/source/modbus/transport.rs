//! Opening a bus: RTU on a serial port, Modbus TCP, or RTU framing over a TCP stream.

use std::time::Duration;

use tokio_modbus::client::{rtu, tcp, Context};
use tokio_modbus::Slave;

use super::BusTransport;
use crate::source::serial::open_serial;

/// Opens a client context for the bus, addressed to `unit` until changed.
pub async fn open(
    transport: &BusTransport,
    unit: u8,
    timeout: Duration,
) -> std::io::Result<Context> {
    let slave = Slave(unit);
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
    match transport {
        BusTransport::Rtu(s) => Ok(rtu::attach_slave(open_serial(s)?, slave)),
        BusTransport::Tcp(addr) => tokio::time::timeout(timeout, tcp::connect_slave(*addr, slave))
            .await
            .map_err(|_| timed_out())?,
        BusTransport::RtuOverTcp(addr) => {
            let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(*addr))
                .await
                .map_err(|_| timed_out())??;
            stream.set_nodelay(true)?;
            Ok(rtu::attach_slave(stream, slave))
        }
    }
}
