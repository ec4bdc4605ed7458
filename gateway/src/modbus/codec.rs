//! Register words ↔ engineering values (pure), for every data type and byte order.
//!
//! Decoding: registers are put in significance order (reversed for `CDAB`/`DCBA`), each
//! register's two bytes are swapped for `BADC`/`DCBA`, and the resulting big-endian bytes
//! are read as the type. Numbers then get `value = raw × scale + offset`. Integers with
//! scale 1 and offset 0 stay exact JSON integers (u64/i64 included); everything else is
//! a float. Strings use only the byte swap (their registers are always in address order).
//! Encoding for writes is the exact inverse, with range checks.

use serde_json::Value;

use super::types::{ByteOrder, DataType, RegisterTable};

/// How one point maps to registers or bits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PointCodec {
    pub table: RegisterTable,
    pub data_type: DataType,
    pub order: ByteOrder,
    /// For `bool` in a register table: the bit (0..=15, 0 least significant).
    pub bit: Option<u8>,
    pub scale: f64,
    pub offset: f64,
}

/// Why a value could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("expected {expected} registers/bits, got {got}")]
    WrongLength { expected: usize, got: usize },
    #[error("value is not a finite number")]
    NotFinite,
    #[error("value {0} is out of range for the point's type")]
    OutOfRange(String),
    #[error("expected {0}")]
    WrongKind(&'static str),
    #[error("text of {len} bytes does not fit in {registers} registers")]
    TooLong { len: usize, registers: u16 },
}

/// What to write for a point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteData {
    Bits(Vec<bool>),
    Words(Vec<u16>),
    /// Set one bit of a register (read-modify-write by the bus owner).
    RegisterBit {
        bit: u8,
        value: bool,
    },
}

fn to_bytes(words: &[u16], order: ByteOrder, reorder_words: bool) -> Vec<u8> {
    let mut ws = words.to_vec();
    if reorder_words && order.swaps_words() {
        ws.reverse();
    }
    ws.iter()
        .flat_map(|w| {
            let [hi, lo] = w.to_be_bytes();
            if order.swaps_bytes() {
                [lo, hi]
            } else {
                [hi, lo]
            }
        })
        .collect()
}

fn from_bytes(bytes: &[u8], order: ByteOrder, reorder_words: bool) -> Vec<u16> {
    let mut ws: Vec<u16> = bytes
        .chunks(2)
        .map(|c| {
            let (hi, lo) = (c[0], c.get(1).copied().unwrap_or(0));
            if order.swaps_bytes() {
                u16::from_be_bytes([lo, hi])
            } else {
                u16::from_be_bytes([hi, lo])
            }
        })
        .collect();
    if reorder_words && order.swaps_words() {
        ws.reverse();
    }
    ws
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

fn number(c: &PointCodec, raw: f64, exact: Option<Value>) -> Result<Value, CodecError> {
    if c.scale == 1.0 && c.offset == 0.0 {
        if let Some(v) = exact {
            return Ok(v);
        }
    }
    let v = raw * c.scale + c.offset;
    serde_json::Number::from_f64(v)
        .map(Value::Number)
        .ok_or(CodecError::NotFinite)
}

/// Decodes the registers of one point (exactly `data_type.width()` words).
pub fn decode_words(c: &PointCodec, words: &[u16]) -> Result<Value, CodecError> {
    let expected = usize::from(c.data_type.width());
    if words.len() != expected {
        return Err(CodecError::WrongLength {
            expected,
            got: words.len(),
        });
    }
    if let DataType::Bool = c.data_type {
        let bit = c.bit.unwrap_or(0);
        return Ok(Value::Bool((words[0] >> bit) & 1 == 1));
    }
    if let DataType::String(_) = c.data_type {
        let bytes = to_bytes(words, c.order, false);
        let text = String::from_utf8_lossy(&bytes);
        return Ok(Value::String(text.trim_end_matches(['\0', ' ']).to_owned()));
    }
    let b = to_bytes(words, c.order, true);
    match c.data_type {
        DataType::U16 => {
            let v = u16::from_be_bytes(arr(&b));
            number(c, f64::from(v), Some(v.into()))
        }
        DataType::I16 => {
            let v = i16::from_be_bytes(arr(&b));
            number(c, f64::from(v), Some(v.into()))
        }
        DataType::U32 => {
            let v = u32::from_be_bytes(arr(&b));
            number(c, f64::from(v), Some(v.into()))
        }
        DataType::I32 => {
            let v = i32::from_be_bytes(arr(&b));
            number(c, f64::from(v), Some(v.into()))
        }
        DataType::U64 => {
            let v = u64::from_be_bytes(arr(&b));
            number(c, v as f64, Some(v.into()))
        }
        DataType::I64 => {
            let v = i64::from_be_bytes(arr(&b));
            number(c, v as f64, Some(v.into()))
        }
        DataType::F32 => {
            let v = f32::from_be_bytes(arr(&b));
            if !v.is_finite() {
                return Err(CodecError::NotFinite);
            }
            number(c, f64::from(v), None)
        }
        DataType::F64 => {
            let v = f64::from_be_bytes(arr(&b));
            if !v.is_finite() {
                return Err(CodecError::NotFinite);
            }
            number(c, v, None)
        }
        DataType::Bool | DataType::String(_) => unreachable!("handled above"),
    }
}

/// Decodes a bit-table point (one coil or discrete input).
pub fn decode_bits(bits: &[bool]) -> Result<Value, CodecError> {
    match bits {
        [b] => Ok(Value::Bool(*b)),
        _ => Err(CodecError::WrongLength {
            expected: 1,
            got: bits.len(),
        }),
    }
}

fn as_bool(v: &Value) -> Result<bool, CodecError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) if n.as_f64() == Some(0.0) => Ok(false),
        Value::Number(n) if n.as_f64() == Some(1.0) => Ok(true),
        _ => Err(CodecError::WrongKind("true/false (or 0/1)")),
    }
}

/// Raw integer for an engineering value: `(value - offset) / scale`, rounded.
fn raw_integer(c: &PointCodec, v: &Value, min: f64, max: f64) -> Result<i128, CodecError> {
    // Exact path for big integers that f64 cannot hold.
    if c.scale == 1.0 && c.offset == 0.0 {
        if let Some(i) = v.as_i64() {
            let i = i128::from(i);
            return if (i as f64) >= min && (i as f64) <= max {
                Ok(i)
            } else {
                Err(CodecError::OutOfRange(v.to_string()))
            };
        }
        if let Some(u) = v.as_u64() {
            let i = i128::from(u);
            return if (i as f64) <= max {
                Ok(i)
            } else {
                Err(CodecError::OutOfRange(v.to_string()))
            };
        }
    }
    let x = v.as_f64().ok_or(CodecError::WrongKind("a number"))?;
    let raw = ((x - c.offset) / c.scale).round();
    if !raw.is_finite() {
        return Err(CodecError::NotFinite);
    }
    if raw < min || raw > max {
        return Err(CodecError::OutOfRange(v.to_string()));
    }
    Ok(raw as i128)
}

/// Encodes a value for writing to the point.
pub fn encode(c: &PointCodec, v: &Value) -> Result<WriteData, CodecError> {
    if c.table.is_bits() {
        return Ok(WriteData::Bits(vec![as_bool(v)?]));
    }
    let bytes: Vec<u8> = match c.data_type {
        DataType::Bool => {
            return Ok(WriteData::RegisterBit {
                bit: c.bit.unwrap_or(0),
                value: as_bool(v)?,
            })
        }
        DataType::String(n) => {
            let Value::String(s) = v else {
                return Err(CodecError::WrongKind("a string"));
            };
            let mut b = s.as_bytes().to_vec();
            if b.len() > usize::from(n) * 2 {
                return Err(CodecError::TooLong {
                    len: b.len(),
                    registers: n,
                });
            }
            b.resize(usize::from(n) * 2, 0);
            return Ok(WriteData::Words(from_bytes(&b, c.order, false)));
        }
        DataType::U16 => (raw_integer(c, v, 0.0, f64::from(u16::MAX))? as u16)
            .to_be_bytes()
            .to_vec(),
        DataType::I16 => (raw_integer(c, v, f64::from(i16::MIN), f64::from(i16::MAX))? as i16)
            .to_be_bytes()
            .to_vec(),
        DataType::U32 => (raw_integer(c, v, 0.0, f64::from(u32::MAX))? as u32)
            .to_be_bytes()
            .to_vec(),
        DataType::I32 => (raw_integer(c, v, f64::from(i32::MIN), f64::from(i32::MAX))? as i32)
            .to_be_bytes()
            .to_vec(),
        DataType::U64 => (raw_integer(c, v, 0.0, u64::MAX as f64)? as u64)
            .to_be_bytes()
            .to_vec(),
        DataType::I64 => (raw_integer(c, v, i64::MIN as f64, i64::MAX as f64)? as i64)
            .to_be_bytes()
            .to_vec(),
        DataType::F32 | DataType::F64 => {
            let x = v.as_f64().ok_or(CodecError::WrongKind("a number"))?;
            let raw = (x - c.offset) / c.scale;
            if !raw.is_finite() {
                return Err(CodecError::NotFinite);
            }
            if c.data_type == DataType::F32 {
                let f = raw as f32;
                if !f.is_finite() {
                    return Err(CodecError::OutOfRange(v.to_string()));
                }
                f.to_be_bytes().to_vec()
            } else {
                raw.to_be_bytes().to_vec()
            }
        }
    };
    Ok(WriteData::Words(from_bytes(&bytes, c.order, true)))
}

#[cfg(test)]
mod tests;
