//! Modbus application layer helpers (pure): register tables, data types and decoding.

pub mod decode;
