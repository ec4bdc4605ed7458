//! Opening a bus: RTU on a serial port, Modbus TCP, or RTU framing over a TCP stream.

use std::time::Duration;

use tokio_modbus::client::{rtu, tcp, Context};
use tokio_modbus::Slave;
use tokio_serial::SerialPortBuilderExt;

use crate::config::{BusTransport, Parity, SerialSettings};

/// Opens the serial port with the configured line settings.
pub fn open_serial(s: &SerialSettings) -> std::io::Result<tokio_serial::SerialStream> {
    let parity = match s.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let data_bits = match s.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    };
    let stop_bits = if s.stop_bits == 2 {
        tokio_serial::StopBits::Two
    } else {
        tokio_serial::StopBits::One
    };
    tokio_serial::new(&s.path, s.baud)
        .parity(parity)
        .data_bits(data_bits)
        .stop_bits(stop_bits)
        .open_native_async()
        .map_err(std::io::Error::from)
}

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
