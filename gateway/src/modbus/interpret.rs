//! Every reading of a window of registers side by side (pure): for each address the raw
//! word, u16/i16/ASCII, and the 32- and 64-bit types starting there in all four byte
//! orders, decoded by the same codec the points use, so the reading an engineer picks in
//! the register browser is exactly what the point will send.

use serde_json::Value;

use super::codec::{decode_words, PointCodec};
use super::types::{ByteOrder, DataType, RegisterTable};

/// The four byte orders, in the order they are shown.
pub const ORDERS: [(ByteOrder, &str); 4] = [
    (ByteOrder::Abcd, "ABCD"),
    (ByteOrder::Dcba, "DCBA"),
    (ByteOrder::Badc, "BADC"),
    (ByteOrder::Cdab, "CDAB"),
];

/// One multi-register type read in one byte order.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Wide {
    pub order: &'static str,
    /// u32, i32, f32 (32-bit) or u64, i64, f64 (64-bit), as text.
    pub unsigned: String,
    pub signed: String,
    pub float: String,
}

/// Everything one address can mean.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RegisterView {
    pub address: u16,
    pub raw: u16,
    pub hex: String,
    pub u16: String,
    pub i16: String,
    /// The two bytes as text (`.` for a byte that is not printable ASCII).
    pub ascii: String,
    /// Registers `address..address+2` in each order; empty at the window's last register.
    pub w32: Vec<Wide>,
    /// Registers `address..address+4` in each order; empty near the window's end.
    pub w64: Vec<Wide>,
}

fn codec(data_type: DataType, order: ByteOrder) -> PointCodec {
    PointCodec {
        table: RegisterTable::Holding,
        data_type,
        order,
        bit: None,
        scale: 1.0,
        offset: 0.0,
    }
}

/// A value as shown: integers exactly, floats in their shortest exact form.
fn show(data_type: DataType, order: ByteOrder, words: &[u16]) -> String {
    match decode_words(&codec(data_type, order), words) {
        // An f32 in its own shortest form (not the f64 it widens to).
        Ok(Value::Number(n)) if data_type == DataType::F32 => n
            .as_f64()
            .map_or_else(|| n.to_string(), |f| format!("{:?}", f as f32)),
        Ok(Value::Number(n)) => n.to_string(),
        Ok(other) => other.to_string(),
        Err(e) => format!("({e})"),
    }
}

fn wide(words: &[u16], types: [DataType; 3]) -> Vec<Wide> {
    ORDERS
        .iter()
        .map(|&(order, name)| Wide {
            order: name,
            unsigned: show(types[0], order, words),
            signed: show(types[1], order, words),
            float: show(types[2], order, words),
        })
        .collect()
}

fn printable(b: u8) -> char {
    if b.is_ascii_graphic() || b == b' ' {
        char::from(b)
    } else {
        '.'
    }
}

/// Every interpretation of `words`, read from `start`.
pub fn interpret(start: u16, words: &[u16]) -> Vec<RegisterView> {
    (0..words.len())
        .map(|i| {
            let raw = words[i];
            let [hi, lo] = raw.to_be_bytes();
            let slice = |n: usize| words.get(i..i + n).filter(|s| s.len() == n);
            RegisterView {
                address: start.wrapping_add(i as u16),
                raw,
                hex: format!("0x{raw:04X}"),
                u16: raw.to_string(),
                i16: (raw as i16).to_string(),
                ascii: [printable(hi), printable(lo)].iter().collect(),
                w32: slice(2).map_or_else(Vec::new, |w| {
                    wide(w, [DataType::U32, DataType::I32, DataType::F32])
                }),
                w64: slice(4).map_or_else(Vec::new, |w| {
                    wide(w, [DataType::U64, DataType::I64, DataType::F64])
                }),
            }
        })
        .collect()
}

/// The whole window as text (bytes in address order; NULs and trailing spaces trimmed).
pub fn as_text(words: &[u16]) -> String {
    if words.is_empty() {
        return String::new();
    }
    show(DataType::String(words.len() as u16), ByteOrder::Abcd, words)
        .trim_matches('"')
        .to_owned()
}

/// The interpretations as a fixed-width table for a terminal (`kp-gateway read`).
pub fn render_text(views: &[RegisterView]) -> String {
    let mut out = String::from("address  raw     u16    i16     ascii\n");
    for v in views {
        out.push_str(&format!(
            "{:<8} {:<7} {:<6} {:<7} {:?}\n",
            v.address, v.hex, v.u16, v.i16, v.ascii
        ));
        for w in &v.w32 {
            out.push_str(&format!(
                "    32-bit {}  u32 {:<12} i32 {:<12} f32 {}\n",
                w.order, w.unsigned, w.signed, w.float
            ));
        }
        for w in &v.w64 {
            out.push_str(&format!(
                "    64-bit {}  u64 {:<21} i64 {:<21} f64 {}\n",
                w.order, w.unsigned, w.signed, w.float
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `value` as f32 in CDAB: the low word first.
    fn cdab(value: f32) -> [u16; 2] {
        let b = value.to_bits();
        [(b & 0xFFFF) as u16, (b >> 16) as u16]
    }

    #[test]
    fn an_f32_in_cdab_shows_its_value_only_in_cdab() {
        let views = interpret(100, &cdab(-1234.5));
        assert_eq!(views.len(), 2);
        let floats: Vec<(&str, &str)> = views[0]
            .w32
            .iter()
            .map(|w| (w.order, w.float.as_str()))
            .collect();
        assert_eq!(floats.len(), 4);
        assert!(floats.contains(&("CDAB", "-1234.5")), "{floats:?}");
        assert!(
            floats
                .iter()
                .filter(|(o, _)| *o != "CDAB")
                .all(|(_, v)| *v != "-1234.5"),
            "{floats:?}"
        );
        assert!(views[1].w32.is_empty(), "no 32-bit value at the last word");
        assert_eq!(views[1].address, 101);
    }

    #[test]
    fn integers_text_and_64_bit_values_are_exact() {
        let words = [0xFFFF, 0xFFFE, 0x4B50, 0x2D47];
        let v = interpret(0, &words);
        assert_eq!((v[0].u16.as_str(), v[0].i16.as_str()), ("65535", "-1"));
        let abcd = &v[0].w32[0];
        assert_eq!(
            (abcd.unsigned.as_str(), abcd.signed.as_str()),
            ("4294967294", "-2")
        );
        assert_eq!(v[0].w64[0].unsigned, 0xFFFF_FFFE_4B50_2D47_u64.to_string());
        assert_eq!(v[2].ascii, "KP");
        assert_eq!(as_text(&[0x4B50, 0x2D47, 0x5700, 0]), "KP-GW");
        let table = render_text(&v);
        assert!(table.contains("32-bit CDAB"), "{table}");
    }

    #[test]
    fn a_full_125_register_window_at_the_top_of_the_address_space() {
        // Every bit pattern class: zeros, ones, NaN/infinity halves, printable ASCII.
        let words: Vec<u16> = (0..125u32)
            .map(|i| (i.wrapping_mul(0x9E37) ^ (i << 11)) as u16)
            .collect();
        let v = interpret(0xFFF0, &words);
        assert_eq!(v.len(), 125);
        assert_eq!(v[124].address, 0xFFF0u16.wrapping_add(124));
        assert!(v[..121].iter().all(|r| r.w64.len() == 4));
        assert!(v[122..].iter().all(|r| r.w64.is_empty()));
        assert!(v[124].w32.is_empty() && v[123].w32.len() == 4);
        assert!(render_text(&v).lines().count() > 125);
    }
}
