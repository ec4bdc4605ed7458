//! RTU timing (pure): the silence a serial Modbus line needs between frames.

use std::time::Duration;

/// Modbus over serial line §2.5.1.1: 3.5 character times between frames; above 19200 baud
/// a fixed 1.75 ms. A character is 11 bits (start, 8 data, parity or 2nd stop, stop).
pub fn rtu_inter_frame_delay(baud: u32) -> Duration {
    if baud > 19_200 {
        Duration::from_micros(1750)
    } else {
        Duration::from_secs_f64(3.5 * 11.0 / f64::from(baud.max(1)))
    }
}
