//! `[[modbus.buses]]` and the Modbus side of devices: points, codecs and read plans.

use crate::source::modbus::{Bus, BusTransport, ModbusDevice, ModbusPoint, PollGroup};
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use platform_core::config::Problems;

use super::devices::reject_fields;
use super::serial::serial_settings;
use crate::config::raw::*;
use crate::modbus::codec::PointCodec;
use crate::modbus::planner::{plan, Limits, PlanPoint, MAX_BITS, MAX_REGISTERS};
use crate::modbus::rtu::rtu_inter_frame_delay;
use crate::modbus::types::{ByteOrder, DataType, RegisterTable};

pub(super) fn bus(b: RawBus, i: usize, e: &mut Problems) -> Bus {
    let path = format!("modbus.buses[{i}]");
    if b.name.trim().is_empty() {
        e.add(format!("{path}.name"), "must not be empty");
    }
    let tcp_address = |e: &mut Problems| match b.address.as_deref().map(SocketAddr::from_str) {
        Some(Ok(a)) => a,
        Some(Err(_)) => {
            e.add(
                format!("{path}.address"),
                format!(
                    "{:?} is not an IP:port address",
                    b.address.as_deref().unwrap_or("")
                ),
            );
            SocketAddr::from(([127, 0, 0, 1], 502))
        }
        None => {
            e.add(
                format!("{path}.address"),
                "missing (IP:port of the Modbus TCP server)",
            );
            SocketAddr::from(([127, 0, 0, 1], 502))
        }
    };
    let transport = match b.kind.as_str() {
        "rtu" => {
            let port = b.port.clone().unwrap_or_default();
            BusTransport::Rtu(serial_settings(
                &port,
                b.baud,
                &b.parity,
                b.data_bits,
                b.stop_bits,
                &path,
                e,
            ))
        }
        "tcp" => BusTransport::Tcp(tcp_address(e)),
        "rtu_over_tcp" => BusTransport::RtuOverTcp(tcp_address(e)),
        other => {
            e.add(
                format!("{path}.kind"),
                format!("unknown bus kind {other:?} (rtu, tcp, rtu_over_tcp)"),
            );
            BusTransport::Tcp(SocketAddr::from(([127, 0, 0, 1], 502)))
        }
    };
    if b.timeout_ms == 0 {
        e.add(format!("{path}.timeout_ms"), "must be at least 1");
    }
    if b.retries > 10 {
        e.add(
            format!("{path}.retries"),
            format!("{} is more than 10", b.retries),
        );
    }
    let inter_frame_delay = match (b.inter_frame_delay_ms, &transport) {
        (Some(ms), _) if !(0.0..=10_000.0).contains(&ms) => {
            e.add(format!("{path}.inter_frame_delay_ms"), "must be 0..=10000");
            Duration::ZERO
        }
        (Some(ms), _) => Duration::from_secs_f64(ms / 1000.0),
        (None, BusTransport::Rtu(s)) => rtu_inter_frame_delay(s.baud),
        (None, _) => Duration::ZERO,
    };
    if b.backoff_max_ms < b.timeout_ms {
        e.add(
            format!("{path}.backoff_max_ms"),
            "must be at least timeout_ms",
        );
    }
    Bus {
        name: b.name,
        transport,
        timeout: Duration::from_millis(b.timeout_ms.max(1)),
        retries: b.retries,
        inter_frame_delay,
        backoff_max: Duration::from_millis(b.backoff_max_ms.max(1)),
    }
}

pub(super) fn modbus(
    m: RawDeviceModbus,
    points: &[RawPoint],
    buses: &[(String, u16)],
    device_period: Duration,
    path: &str,
    e: &mut Problems,
) -> Option<ModbusDevice> {
    let Some((_, max_gap)) = buses.iter().find(|(n, _)| *n == m.bus) else {
        e.add(
            format!("{path}.modbus.bus"),
            format!("no [[modbus.buses]] is named {:?}", m.bus),
        );
        return None;
    };
    if m.unit_id > 247 {
        e.add(
            format!("{path}.modbus.unit_id"),
            format!("{} is out of range 0..=247", m.unit_id),
        );
    }
    if !(1..=MAX_REGISTERS).contains(&m.max_read_registers) {
        e.add(
            format!("{path}.modbus.max_read_registers"),
            format!("{} is out of range 1..=125", m.max_read_registers),
        );
    }
    if !(1..=MAX_BITS).contains(&m.max_read_bits) {
        e.add(
            format!("{path}.modbus.max_read_bits"),
            format!("{} is out of range 1..=2000", m.max_read_bits),
        );
    }
    let limits = Limits {
        max_registers: m.max_read_registers,
        max_bits: m.max_read_bits,
        max_gap: *max_gap,
    };
    let mut out = Vec::new();
    for (i, p) in points.iter().enumerate() {
        let pp = format!("{path}.points[{i}]");
        reject_fields(
            &pp,
            &[
                ("waveform", p.waveform.is_some()),
                ("period_secs", p.period_secs.is_some()),
                ("amplitude", p.amplitude.is_some()),
                ("center", p.center.is_some()),
            ],
            "modbus",
            e,
        );
        if let Some(point) = modbus_point(p, &pp, e) {
            out.push(point);
        }
    }
    Some(ModbusDevice {
        bus: m.bus,
        unit_id: m.unit_id,
        groups: poll_groups(&out, device_period, limits, path, e),
        points: out,
    })
}

/// Groups the points by poll period (the device's first, then shorter to longer) and plans
/// each group's reads: merged reads never mix periods.
fn poll_groups(
    points: &[ModbusPoint],
    device_period: Duration,
    limits: Limits,
    path: &str,
    e: &mut Problems,
) -> Vec<PollGroup> {
    let mut periods: Vec<Duration> = points
        .iter()
        .map(|p| p.poll_interval.unwrap_or(device_period))
        .collect();
    periods.sort();
    periods.dedup();
    periods.sort_by_key(|p| *p != device_period);
    let mut groups = Vec::new();
    for period in periods {
        let members: Vec<PlanPoint> = points
            .iter()
            .enumerate()
            .filter(|(_, p)| p.poll_interval.unwrap_or(device_period) == period)
            .map(|(index, p)| PlanPoint {
                index,
                table: p.codec.table,
                address: p.address,
                width: p.codec.data_type.width(),
            })
            .collect();
        match plan(&members, limits) {
            Ok(plan) => groups.push(PollGroup { period, plan }),
            Err(err) => e.add(format!("{path}.points[{}]", err.index), err.to_string()),
        }
    }
    groups
}

fn modbus_point(p: &RawPoint, pp: &str, e: &mut Problems) -> Option<ModbusPoint> {
    let before = e.len();
    let table = match p.table.as_deref() {
        None => RegisterTable::Holding,
        Some(t) => RegisterTable::from_str(t).unwrap_or_else(|msg| {
            e.add(format!("{pp}.table"), msg);
            RegisterTable::Holding
        }),
    };
    let data_type = match p.data_type.as_deref() {
        None if table.is_bits() => DataType::Bool,
        None => {
            e.add(
                format!("{pp}.type"),
                "missing (bool, u16, i16, u32, i32, u64, i64, f32, f64, string)",
            );
            DataType::U16
        }
        Some(t) => DataType::parse(t, p.length).unwrap_or_else(|msg| {
            e.add(format!("{pp}.type"), msg);
            DataType::U16
        }),
    };
    if p.length.is_some() && !matches!(data_type, DataType::String(_)) {
        e.add(format!("{pp}.length"), "only for type = \"string\"");
    }
    if table.is_bits() && data_type != DataType::Bool {
        e.add(
            format!("{pp}.type"),
            format!("{} points are bool", table.name()),
        );
    }
    match (p.bit, data_type, table.is_bits()) {
        (Some(b), DataType::Bool, false) if b > 15 => {
            e.add(format!("{pp}.bit"), format!("{b} is out of range 0..=15"))
        }
        (Some(_), DataType::Bool, false) => {}
        (Some(_), _, _) => e.add(
            format!("{pp}.bit"),
            "only for bool points in holding or input registers",
        ),
        (None, DataType::Bool, false) => e.add(
            format!("{pp}.bit"),
            "a bool in a register needs `bit` (0..=15)",
        ),
        _ => {}
    }
    let order = match p.order.as_deref() {
        None => ByteOrder::Abcd,
        Some(o) => ByteOrder::from_str(o).unwrap_or_else(|msg| {
            e.add(format!("{pp}.order"), msg);
            ByteOrder::Abcd
        }),
    };
    let Some(address) = p.address else {
        e.add(format!("{pp}.address"), "missing");
        return None;
    };
    if u32::from(address) + u32::from(data_type.width()) > 65536 {
        e.add(
            format!("{pp}.address"),
            format!("{address} + {} runs past 65535", data_type.width()),
        );
    }
    let scale = p.scale.unwrap_or(1.0);
    let offset = p.offset.unwrap_or(0.0);
    if (p.scale.is_some() || p.offset.is_some()) && !data_type.is_numeric() {
        e.add(pp, "scale and offset apply to numeric types only");
    }
    if !scale.is_finite() || scale == 0.0 {
        e.add(format!("{pp}.scale"), "must be a finite, non-zero number");
    }
    if !offset.is_finite() {
        e.add(format!("{pp}.offset"), "must be a finite number");
    }
    if let Some(d) = p.deadband {
        if !d.is_finite() || d < 0.0 {
            e.add(format!("{pp}.deadband"), "must be a number ≥ 0");
        }
    }
    let writable = p.writable.unwrap_or(false);
    if writable && !table.is_writable() {
        e.add(
            format!("{pp}.writable"),
            format!("{} points are read-only", table.name()),
        );
    }
    let write_multiple = match p.write_function.as_deref() {
        None | Some("single") => false,
        Some("multiple") => true,
        Some(other) => {
            e.add(
                format!("{pp}.write_function"),
                format!("unknown {other:?} (single, multiple)"),
            );
            false
        }
    };
    if write_multiple && data_type == DataType::Bool && !table.is_bits() {
        e.add(
            format!("{pp}.write_function"),
            "a register bit is written with read-modify-write (FC 6)",
        );
    }
    if let Some(ms) = p.poll_interval_ms {
        if ms < 10 {
            e.add(
                format!("{pp}.poll_interval_ms"),
                format!("{ms} is below the minimum of 10 ms"),
            );
        }
    }
    if e.len() != before {
        return None;
    }
    Some(ModbusPoint {
        name: p.name.clone(),
        address,
        codec: PointCodec {
            table,
            data_type,
            order,
            bit: p.bit,
            scale,
            offset,
        },
        deadband: p.deadband,
        writable,
        readback: p.readback.unwrap_or(writable),
        write_multiple,
        poll_interval: p.poll_interval_ms.map(Duration::from_millis),
    })
}
