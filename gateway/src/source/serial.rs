//! Serial ports: their line settings and how they are opened (tokio-serial). Both the
//! Modbus RTU buses and the line-printing sensors open their ports here.

use tokio_serial::SerialPortBuilderExt;

/// Serial port line settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSettings {
    pub path: String,
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
}

/// Parity bit of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// Opens the serial port with the configured line settings. The port is taken
/// exclusively (serialport sets `TIOCEXCL` and an exclusive `flock`): a second process —
/// a command-line tool while the service polls the bus — is told the port is in use
/// instead of interleaving its frames with the owner's.
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
        .map_err(|e| {
            if e.description.contains("exclusive lock") {
                std::io::Error::new(
                    std::io::ErrorKind::ResourceBusy,
                    format!(
                        "{} is in use by another process (if the kp-gateway service polls it, \
                         use the web page's tools or stop the service first)",
                        s.path
                    ),
                )
            } else {
                std::io::Error::from(e)
            }
        })
}
