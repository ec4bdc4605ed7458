//! Fuzz: decoding register words from a device, and encoding command values.
#![no_main]
use kp_gateway::modbus::codec::{decode_words, encode, PointCodec};
use kp_gateway::modbus::types::{ByteOrder, DataType, RegisterTable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let types = [
        DataType::Bool, DataType::U16, DataType::I16, DataType::U32, DataType::I32,
        DataType::U64, DataType::I64, DataType::F32, DataType::F64, DataType::String(3),
    ];
    let orders = [ByteOrder::Abcd, ByteOrder::Dcba, ByteOrder::Badc, ByteOrder::Cdab];
    let c = PointCodec {
        table: RegisterTable::Holding,
        data_type: types[data[0] as usize % types.len()],
        order: orders[data[1] as usize % orders.len()],
        bit: Some(data[0] % 16),
        scale: 0.1,
        offset: 3.0,
    };
    let words: Vec<u16> = data[2..].chunks(2).map(|c| u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)])).collect();
    let _ = decode_words(&c, &words);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&data[2..]) {
        let _ = encode(&c, &v);
    }
});
