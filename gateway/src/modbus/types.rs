//! What a Modbus point is: its table, data type and byte/word order (pure).

use std::str::FromStr;

/// The four Modbus data tables (Modbus Application Protocol v1.1b3 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RegisterTable {
    /// Read/write bits, FC 1 (read), 5/15 (write).
    Coil,
    /// Read-only bits, FC 2.
    DiscreteInput,
    /// Read/write 16-bit registers, FC 3 (read), 6/16 (write).
    Holding,
    /// Read-only 16-bit registers, FC 4.
    Input,
}

impl RegisterTable {
    /// Coils and discrete inputs hold bits; the others 16-bit words.
    pub fn is_bits(self) -> bool {
        matches!(self, Self::Coil | Self::DiscreteInput)
    }
    pub fn is_writable(self) -> bool {
        matches!(self, Self::Coil | Self::Holding)
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Coil => "coil",
            Self::DiscreteInput => "discrete_input",
            Self::Holding => "holding",
            Self::Input => "input",
        }
    }
}

impl FromStr for RegisterTable {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "coil" => Ok(Self::Coil),
            "discrete_input" => Ok(Self::DiscreteInput),
            "holding" => Ok(Self::Holding),
            "input" => Ok(Self::Input),
            other => Err(format!(
                "unknown register table {other:?} (coil, discrete_input, holding, input)"
            )),
        }
    }
}

/// How a point's registers (or bit) encode its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// A coil/discrete input, or bit `n` (0 = least significant) of a register.
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// Text in `n` registers, two bytes each; trailing NULs and spaces are trimmed.
    String(u16),
}

impl DataType {
    /// Parses a type name; `length` is the register count of `string`.
    pub fn parse(s: &str, length: Option<u16>) -> Result<Self, String> {
        Ok(match s {
            "bool" => Self::Bool,
            "u16" => Self::U16,
            "i16" => Self::I16,
            "u32" => Self::U32,
            "i32" => Self::I32,
            "u64" => Self::U64,
            "i64" => Self::I64,
            "f32" => Self::F32,
            "f64" => Self::F64,
            "string" => match length {
                Some(n) if (1..=125).contains(&n) => Self::String(n),
                Some(n) => return Err(format!("string length {n} is out of range 1..=125 registers")),
                None => return Err("string needs `length` (registers)".into()),
            },
            other => {
                return Err(format!(
                    "unknown data type {other:?} (bool, u16, i16, u32, i32, u64, i64, f32, f64, string)"
                ))
            }
        })
    }

    /// Number of registers (for bit tables: bits) the type occupies.
    pub fn width(self) -> u16 {
        match self {
            Self::Bool | Self::U16 | Self::I16 => 1,
            Self::U32 | Self::I32 | Self::F32 => 2,
            Self::U64 | Self::I64 | Self::F64 => 4,
            Self::String(n) => n,
        }
    }

    pub fn is_numeric(self) -> bool {
        !matches!(self, Self::Bool | Self::String(_))
    }
}

/// Byte and word order of multi-byte values, named by where bytes A (most significant)
/// to D land: `ABCD` big-endian (Modbus default), `DCBA` little-endian, `BADC` bytes
/// swapped within each word, `CDAB` words swapped ("word-swapped big-endian"). For 64-bit
/// values the word rule extends to four words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ByteOrder {
    #[default]
    Abcd,
    Dcba,
    Badc,
    Cdab,
}

impl ByteOrder {
    /// Are the bytes inside each 16-bit register swapped?
    pub fn swaps_bytes(self) -> bool {
        matches!(self, Self::Dcba | Self::Badc)
    }
    /// Do the registers run least significant first?
    pub fn swaps_words(self) -> bool {
        matches!(self, Self::Dcba | Self::Cdab)
    }
}

impl FromStr for ByteOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ABCD" => Ok(Self::Abcd),
            "DCBA" => Ok(Self::Dcba),
            "BADC" => Ok(Self::Badc),
            "CDAB" => Ok(Self::Cdab),
            other => Err(format!(
                "unknown byte order {other:?} (ABCD, DCBA, BADC, CDAB)"
            )),
        }
    }
}
