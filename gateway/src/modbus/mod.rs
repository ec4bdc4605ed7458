//! Modbus application layer (pure): register tables and data types, value encoding and
//! decoding, and the read planner. The bus actor that does the I/O is `source::modbus`.

pub mod codec;
pub mod interpret;
pub mod planner;
pub mod rtu;
pub mod types;
