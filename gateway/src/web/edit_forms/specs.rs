//! What each form shows: (field name, label, input, kind, options, help) per field.
//! The field name is the key's path inside the edited table (`modbus.unit_id`).

use super::Spec;
use crate::web::forms::Kind;

#[rustfmt::skip]
pub(super) const UPSTREAM: &[Spec] = &[
    ("host", "Host", "text", Kind::Text, &[], "Kaa server name or address"),
    ("port", "Port", "number", Kind::Int, &[], "1883, or 8883 with TLS"),
    ("client_id", "Client ID", "text", Kind::Text, &[], ""),
    ("username", "User name", "text", Kind::Text, &[], ""),
    ("password", "Password", "password", Kind::Secret, &[], "write-only: empty keeps the one in force"),
    ("tls_on", "Use TLS", "checkbox", Kind::Bool, &[], "the server's certificate is always verified"),
    ("tls.ca_file", "TLS CA file", "text", Kind::Text, &[], "empty: the system's trust store (public clouds)"),
    ("tls.client_cert_file", "TLS client certificate", "text", Kind::Text, &[], ""),
    ("tls.client_key_file", "TLS client key", "text", Kind::Text, &[], ""),
    ("keepalive_secs", "Keepalive (s)", "number", Kind::Int, &[], ""),
];

#[rustfmt::skip]
pub(super) const BUS: &[Spec] = &[
    ("name", "Name", "text", Kind::Text, &[], "devices refer to the bus by it"),
    ("kind", "Kind", "select", Kind::Text, &["rtu", "tcp", "rtu_over_tcp"], ""),
    ("port", "Serial port (RTU)", "text", Kind::Text, &[], "/dev/ttyUSB0, /dev/ttySC0, …"),
    ("baud", "Baud (RTU)", "number", Kind::Int, &[], ""),
    ("parity", "Parity (RTU)", "select", Kind::Text, &["", "none", "even", "odd"], ""),
    ("data_bits", "Data bits (RTU)", "number", Kind::Int, &[], ""),
    ("stop_bits", "Stop bits (RTU)", "number", Kind::Int, &[], ""),
    ("address", "Address (TCP)", "text", Kind::Text, &[], "IP:port, e.g. 192.168.1.20:502"),
    ("timeout_ms", "Time-out (ms)", "number", Kind::Int, &[], ""),
    ("retries", "Retries", "number", Kind::Int, &[], ""),
];

#[rustfmt::skip]
pub(super) const DEVICE: &[Spec] = &[
    ("name", "Name", "text", Kind::Text, &[], ""),
    ("token", "Endpoint token", "password", Kind::Secret, &[], "write-only: empty keeps the one in force"),
    ("app_version", "Application version", "text", Kind::Text, &[], ""),
    ("poll_interval_ms", "Poll period (ms)", "number", Kind::Int, &[], ""),
    ("modbus.bus", "Modbus bus", "select", Kind::Text, &[], "Modbus devices: the bus"),
    ("modbus.unit_id", "Unit ID", "number", Kind::Int, &[], "1–247"),
    ("modbus.vendor", "Vendor", "text", Kind::Text, &[], ""),
    ("modbus.model", "Model", "text", Kind::Text, &[], ""),
    ("serial_line.port", "Serial port (line sensor)", "text", Kind::Text, &[], "serial line sensors only"),
    ("serial_line.baud", "Baud (line sensor)", "number", Kind::Int, &[], ""),
    ("serial_line.format", "Line format", "select", Kind::Text, &["", "json", "key_value", "csv", "nmea", "regex"], ""),
    ("serial_line.columns", "CSV columns", "text", Kind::List, &[], "comma-separated"),
    ("serial_line.separator", "Separator", "text", Kind::Text, &[], ""),
    ("serial_line.pattern", "Regex pattern", "text", Kind::Text, &[], "named groups are fields"),
];

#[rustfmt::skip]
pub(super) const POINT: &[Spec] = &[
    ("name", "Name", "text", Kind::Text, &[], ""),
    ("unit", "Unit", "text", Kind::Text, &[], ""),
    ("table", "Table", "select", Kind::Text, &["", "holding", "input", "coil", "discrete_input"], ""),
    ("address", "Address", "number", Kind::Int, &[], ""),
    ("type", "Type", "select", Kind::Text, &[ "", "bool", "u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "string", ], ""),
    ("order", "Order", "select", Kind::Text, &["", "ABCD", "DCBA", "BADC", "CDAB"], ""),
    ("scale", "Scale", "text", Kind::Float, &[], ""),
    ("offset", "Offset", "text", Kind::Float, &[], ""),
    ("deadband", "Deadband", "text", Kind::Float, &[], ""),
    ("poll_interval_ms", "Own period (ms)", "number", Kind::Int, &[], "empty: the device's period"),
    ("writable", "Writable", "checkbox", Kind::Bool, &[], ""),
];
