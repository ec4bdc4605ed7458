//! Decoding Modbus register words into engineering values (pure).
//!
//! Multi-register values are big-endian in both bytes and words (ABCD, the Modbus
//! Application Protocol §4.2 convention for 16-bit words, extended to 32 bits the way
//! most devices do). `value = raw × scale + offset`.

use std::str::FromStr;

/// Which register table a point lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RegisterTable {
    /// Function code 3.
    Holding,
    /// Function code 4.
    Input,
}

impl FromStr for RegisterTable {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "holding" => Ok(Self::Holding),
            "input" => Ok(Self::Input),
            other => Err(format!("unknown register table {other:?} (holding, input)")),
        }
    }
}

/// How the registers of a point encode its raw value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    U16,
    I16,
    U32,
    I32,
    F32,
}

impl FromStr for DataType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "u16" => Ok(Self::U16),
            "i16" => Ok(Self::I16),
            "u32" => Ok(Self::U32),
            "i32" => Ok(Self::I32),
            "f32" => Ok(Self::F32),
            other => Err(format!(
                "unknown data type {other:?} (u16, i16, u32, i32, f32)"
            )),
        }
    }
}

impl DataType {
    /// Number of 16-bit registers the type occupies.
    pub fn registers(self) -> u16 {
        match self {
            Self::U16 | Self::I16 => 1,
            Self::U32 | Self::I32 | Self::F32 => 2,
        }
    }
}

/// Why words could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{data_type:?} needs {needed} registers, got {got}")]
    WrongLength {
        data_type: DataType,
        needed: u16,
        got: usize,
    },
    #[error("register value is not a finite number (NaN or infinity)")]
    NotFinite,
}

/// Decodes `words` (exactly `data_type.registers()` of them) and applies scale and offset.
pub fn decode(
    data_type: DataType,
    words: &[u16],
    scale: f64,
    offset: f64,
) -> Result<f64, DecodeError> {
    let needed = data_type.registers();
    if words.len() != usize::from(needed) {
        return Err(DecodeError::WrongLength {
            data_type,
            needed,
            got: words.len(),
        });
    }
    let wide = || (u32::from(words[0]) << 16) | u32::from(words[1]);
    let raw = match data_type {
        DataType::U16 => f64::from(words[0]),
        DataType::I16 => f64::from(words[0] as i16),
        DataType::U32 => f64::from(wide()),
        DataType::I32 => f64::from(wide() as i32),
        DataType::F32 => f64::from(f32::from_bits(wide())),
    };
    let value = raw * scale + offset;
    if value.is_finite() {
        Ok(value)
    } else {
        Err(DecodeError::NotFinite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sixteen_bit_types() {
        assert_eq!(decode(DataType::U16, &[0xFFFF], 1.0, 0.0), Ok(65535.0));
        assert_eq!(decode(DataType::I16, &[0xFFFF], 1.0, 0.0), Ok(-1.0));
        assert_eq!(decode(DataType::I16, &[215], 0.1, 0.0), Ok(21.5));
    }

    #[test]
    fn thirty_two_bit_types_are_big_endian_words() {
        assert_eq!(
            decode(DataType::U32, &[0x0001, 0x0002], 1.0, 0.0),
            Ok(65538.0)
        );
        assert_eq!(decode(DataType::I32, &[0xFFFF, 0xFFFE], 1.0, 0.0), Ok(-2.0));
        let bits = 21.5f32.to_bits();
        assert_eq!(
            decode(DataType::F32, &[(bits >> 16) as u16, bits as u16], 1.0, 0.0),
            Ok(21.5)
        );
    }

    #[test]
    fn scale_then_offset() {
        assert_eq!(decode(DataType::U16, &[100], 0.5, -10.0), Ok(40.0));
    }

    #[test]
    fn wrong_length_and_nan_are_errors() {
        assert!(matches!(
            decode(DataType::F32, &[1], 1.0, 0.0),
            Err(DecodeError::WrongLength { .. })
        ));
        let nan = f32::NAN.to_bits();
        assert_eq!(
            decode(DataType::F32, &[(nan >> 16) as u16, nan as u16], 1.0, 0.0),
            Err(DecodeError::NotFinite)
        );
    }

    proptest! {
        #[test]
        fn i32_round_trips(v in any::<i32>()) {
            let u = v as u32;
            prop_assert_eq!(decode(DataType::I32, &[(u >> 16) as u16, u as u16], 1.0, 0.0), Ok(f64::from(v)));
        }

        #[test]
        fn finite_f32_round_trips(v in any::<f32>().prop_filter("finite", |f| f.is_finite())) {
            let u = v.to_bits();
            prop_assert_eq!(decode(DataType::F32, &[(u >> 16) as u16, u as u16], 1.0, 0.0), Ok(f64::from(v)));
        }
    }
}
