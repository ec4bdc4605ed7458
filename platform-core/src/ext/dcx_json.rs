//! DCX's reading of a `/json` payload straight into the samples to store (pure): one pass
//! of the JSON parser, no `serde_json::Value` tree for the batch or its samples.
//!
//! What is stored is what reading the payload into `serde_json::Value`s and writing each
//! sample back out would give, byte for byte: compact JSON, an object's keys in sorted
//! order, a key given twice keeping its last value, numbers as `serde_json` prints them.
//! Only nested objects and arrays inside a sample are still read as `Value`s. A sample's
//! keys are borrowed from the payload (unless they hold escapes) and up to
//! [`INLINE_FIELDS`] fields are kept without a heap allocation, so a typical request's
//! parse allocates only the batch and each sample's one buffer (it made five or more
//! allocations per sample before, each freed on another thread after the group commit).

use std::borrow::Cow;
use std::fmt;

use serde::de::value::SeqAccessDeserializer;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use smallvec::SmallVec;

use super::dcx::{field_points, parse_timestamp, TIMESTAMP_FIELD};
use crate::tsdb::{StoredSample, AUTO_PREFIX};

/// Fields of a sample kept without a heap allocation of their own.
pub const INLINE_FIELDS: usize = 4;

/// A sample object's fields in payload order; keys borrowed from the payload where they
/// hold no escapes.
pub type Fields<'a> = SmallVec<[(Cow<'a, str>, Value); INLINE_FIELDS]>;

/// What a payload held: a batch (an array, or one object as a batch of one), or a JSON
/// value of another kind (named for the error message).
#[derive(Debug, PartialEq, Eq)]
pub enum Shape {
    Batch,
    Other(&'static str),
}

/// The samples read so far, and the first sample that could not be stored (its index
/// and why). Reading goes on after such a sample, so that a payload that is not valid
/// JSON further on is reported as such, as a parse of the whole payload first would.
#[derive(Debug)]
pub struct Batch {
    pub now_ms: i64,
    pub stored: Vec<StoredSample>,
    pub first_error: Option<(usize, String)>,
}

impl Batch {
    pub fn new(now_ms: i64) -> Self {
        Self {
            now_ms,
            // Most requests carry one sample; a longer batch grows as it is read.
            stored: Vec::with_capacity(1),
            first_error: None,
        }
    }

    /// Reads one sample object from `map` and stores it.
    fn object<'de, A: MapAccess<'de>>(&mut self, map: A) -> Result<(), A::Error> {
        let fields = read_fields(map)?;
        let sample = stored_from_fields(fields, self.now_ms);
        self.push(sample);
        Ok(())
    }

    fn push(&mut self, sample: Result<StoredSample, String>) {
        if self.first_error.is_some() {
            return;
        }
        match sample {
            Ok(s) => self.stored.push(s),
            Err(e) => self.first_error = Some((self.stored.len(), e)),
        }
    }
}

/// Reads `payload` into `batch`. `Err` only when the payload is not valid JSON.
pub fn read(payload: &[u8], batch: &mut Batch) -> Result<Shape, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let shape = TopSeed(batch).deserialize(&mut de)?;
    de.end()?;
    Ok(shape)
}

/// A sample object's stored text and points. Its fields are sorted by key, and a key
/// given twice keeps its last value (as reading the object into a map does).
pub fn stored_from_fields(mut fields: Fields<'_>, now_ms: i64) -> Result<StoredSample, String> {
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    // `later` comes after `kept` in the payload: the kept slot takes its value.
    fields.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            std::mem::swap(&mut later.1, &mut kept.1);
        }
        same
    });
    let ts_ms = match fields.iter().find(|(k, _)| k == TIMESTAMP_FIELD) {
        None | Some((_, Value::Null)) => now_ms,
        Some((_, v)) => parse_timestamp(v)?,
    };
    let points = || field_points(fields.iter().map(|(k, v)| (k.as_ref(), v)));
    let (count, names) = points().fold((0, 0), |(n, len), (name, _)| {
        (n + 1, len + AUTO_PREFIX.len() + name.len())
    });
    let object = AsObject(&fields);
    let mut stored = StoredSample::from_text(text(&object, names)?, count);
    for (name, value) in points() {
        stored.push(&[AUTO_PREFIX, name], ts_ms, value);
    }
    Ok(stored)
}

/// A sample that is not an object: stored as it is, with no points.
fn stored_from_value(value: &Value) -> Result<StoredSample, String> {
    Ok(StoredSample::from_text(text(value, 0)?, 0))
}

/// `value` as compact JSON in a buffer of exactly its length plus `spare` bytes.
fn text(value: &impl Serialize, spare: usize) -> Result<String, String> {
    let cannot = |e: serde_json::Error| format!("cannot be stored: {e}");
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).map_err(cannot)?;
    let mut text = Vec::with_capacity(count.0 + spare);
    serde_json::to_writer(&mut text, value).map_err(cannot)?;
    String::from_utf8(text).map_err(|e| format!("cannot be stored: {e}"))
}

/// Counts the bytes written to it.
struct Count(usize);

impl std::io::Write for Count {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sorted, de-duplicated fields written as a JSON object.
struct AsObject<'f, 'a>(&'f Fields<'a>);

impl Serialize for AsObject<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k.as_ref(), v)))
    }
}

/// A key, borrowed from the payload when it holds no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

fn read_fields<'de, A: MapAccess<'de>>(mut map: A) -> Result<Fields<'de>, A::Error> {
    let mut fields = Fields::new();
    while let Some(Key(key)) = map.next_key()? {
        let value: Value = map.next_value()?;
        fields.push((key, value));
    }
    Ok(fields)
}

/// The whole payload: an array of samples, one sample object, or anything else.
struct TopSeed<'b>(&'b mut Batch);

impl<'de> DeserializeSeed<'de> for TopSeed<'_> {
    type Value = Shape;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Shape, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_> {
    type Value = Shape;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of samples or one sample object")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        while seq.next_element_seed(SampleSeed(&mut *self.0))?.is_some() {}
        Ok(Shape::Batch)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Shape, A::Error> {
        self.0.object(map)?;
        Ok(Shape::Batch)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::Other("a boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape::Other("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape::Other("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::Other("a number"))
    }
    fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape::Other("a string"))
    }
    fn visit_unit<E>(self) -> Result<Shape, E> {
        Ok(Shape::Other("null"))
    }
}

/// One element of the batch, stored as it is read.
struct SampleSeed<'b>(&'b mut Batch);

impl SampleSeed<'_> {
    /// Stores a sample that is not an object.
    fn value<E>(self, v: Value) -> Result<(), E> {
        self.0.push(stored_from_value(&v));
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for SampleSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for SampleSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sample")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.0.object(map)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        self.value(Value::deserialize(SeqAccessDeserializer::new(seq))?)
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.value(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.value(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.value(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.value(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.value(Value::String(v.to_owned()))
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.value(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ext::dcx::parse_json;

    /// What the reading this module replaced gave: the payload read into `Value`s, each
    /// sample written back out. Text, points, and the error's first words.
    fn through_values(payload: &[u8], now_ms: i64) -> Result<Vec<StoredSample>, String> {
        let value: Value = serde_json::from_slice(payload).map_err(|_| "not valid JSON")?;
        let items = match value {
            Value::Array(items) => items,
            obj @ Value::Object(_) => vec![obj],
            _ => return Err("payload must be".into()),
        };
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let text = serde_json::to_string(&item).unwrap();
            let Value::Object(map) = &item else {
                out.push(StoredSample::from_text(text, 0));
                continue;
            };
            let ts = match map.get(TIMESTAMP_FIELD) {
                None | Some(Value::Null) => now_ms,
                Some(v) => parse_timestamp(v).map_err(|_| format!("sample {i}:"))?,
            };
            let mut s = StoredSample::from_text(text, 0);
            for (name, value) in field_points(map.iter().map(|(k, v)| (k.as_str(), v))) {
                s.push(&[AUTO_PREFIX, name], ts, value);
            }
            out.push(s);
        }
        Ok(out)
    }

    #[test]
    fn stores_what_reading_into_values_stored_byte_for_byte() {
        let payloads: &[&str] = &[
            r#"[{"n":1,"temperature":1.5}]"#,
            r#"{"v": 3}"#,
            r#" [ { "b" : 1 , "a" : 2 , "c" : true, "d": false } ] "#,
            r#"[{"t":1,"t":2,"a":1,"t":3}]"#,
            r#"[{"timestamp":1000,"timestamp":null,"x":1}]"#,
            r#"[{"timestamp":"1970-01-01T00:00:01.5Z","v":-0.0,"w":1e2,"big":18446744073709551615}]"#,
            r#"[{"esc\"aped":1,"uni\u00e9":2,"é":3,"":4}]"#,
            r#"[{"nested":{"z":1,"a":[1,{"y":2,"b":3}]},"s":"x\ny","n":null,"v":7}]"#,
            r#"[1, "two", null, true, [3, {"b":1,"a":2}], {}, {"k":1.25}]"#,
            r#"[{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7}]"#,
            r#"[]"#,
            r#"{}"#,
            r#"[{"timestamp":12.9,"v":1},{"timestamp":-5,"v":2}]"#,
            r#"[{"v":1},{"timestamp":"yesterday"}]"#,
            r#"[{"timestamp":"yesterday"},{"timestamp":true}]"#,
            r#"[{"timestamp":"yesterday"}, not json]"#,
            r#"[{"v":1e400}]"#,
            r#"47"#,
            r#""text""#,
            r#"null"#,
            r#"true"#,
            r#"47 48"#,
            r#"[1] x"#,
            r#"{"a":1"#,
            r#""#,
        ];
        for p in payloads {
            let new = parse_json(p.as_bytes(), 77).map_err(|e| e.reason);
            match (through_values(p.as_bytes(), 77), new) {
                (Ok(want), Ok(got)) => assert_eq!(got, want, "{p}"),
                (Err(want), Err(got)) => {
                    assert!(got.starts_with(&want) || got.contains(&want), "{p}: {got}")
                }
                (want, got) => panic!("{p}: want {want:?}, got {got:?}"),
            }
        }
    }

    /// Compares the two readings of `payload`: the same samples, or errors of one kind.
    fn agrees(payload: &[u8]) -> Result<(), String> {
        let new = parse_json(payload, 77).map_err(|e| e.reason);
        match (through_values(payload, 77), new) {
            (Ok(want), Ok(got)) if got == want => Ok(()),
            (Err(want), Err(got)) if got.starts_with(&want) || got.contains(&want) => Ok(()),
            (want, got) => Err(format!(
                "{}: want {want:?}, got {got:?}",
                String::from_utf8_lossy(payload)
            )),
        }
    }

    #[test]
    fn stores_what_reading_into_values_stored_for_generated_payloads() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};

        let scalar = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            (-1e6f64..1e6).prop_map(|f| f.to_string()),
            (-330i32..330, 1u32..9).prop_map(|(e, m)| format!("{m}.25e{e}")),
            Just("-0.0".to_owned()),
            "[a-z\"\\\\é\n]{0,5}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            Just(r#""1970-01-01T00:00:01.5Z""#.to_owned()),
            Just(r#""\u0074ext""#.to_owned()),
        ];
        let key = prop_oneof![
            Just(r#""timestamp""#),
            Just(r#""t""#),
            Just(r#""a""#),
            Just(r#""\u0061""#),
            Just(r#""""#),
            Just(r#""é""#),
            Just(r#""x\"y""#),
        ];
        let object = |k: BoxedStrategy<&'static str>, v: BoxedStrategy<String>| {
            prop::collection::vec((k, v), 0..6).prop_map(|kv| {
                let fields: Vec<_> = kv.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", fields.join(","))
            })
        };
        let key = key.boxed();
        let k2 = key.clone();
        let value = scalar
            .prop_recursive(3, 24, 4, move |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4)
                        .prop_map(|v| format!("[{}]", v.join(","))),
                    object(k2.clone(), inner),
                ]
            })
            .boxed();
        let sample = prop_oneof![3 => object(key, value.clone()), 1 => value.clone()].boxed();
        let payload = prop_oneof![
            prop::collection::vec(sample.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            sample,
            value,
        ];
        // Some payloads cut short: every prefix of a valid payload is a case too.
        let cases = (payload, prop::option::of(any::<prop::sample::Index>()));
        let mut runner = TestRunner::new(Config::with_cases(2000));
        runner
            .run(&cases, |(text, cut)| {
                let bytes = text.as_bytes();
                let bytes = cut.map_or(bytes, |i| &bytes[..i.index(bytes.len() + 1)]);
                agrees(bytes).map_err(TestCaseError::fail)
            })
            .unwrap();
    }

    #[test]
    fn short_keys_are_borrowed_and_few_fields_stay_inline() {
        let payload = br#"{"temperature":1.5,"n":1}"#;
        let mut de = serde_json::Deserializer::from_slice(payload);
        let fields = read_fields_of(&mut de);
        assert!(!fields.spilled());
        assert!(fields.iter().all(|(k, _)| matches!(k, Cow::Borrowed(_))));
    }

    fn read_fields_of<'de>(
        de: &mut serde_json::Deserializer<serde_json::de::SliceRead<'de>>,
    ) -> Fields<'de> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Fields<'de>, A::Error> {
                read_fields(map)
            }
        }
        de.deserialize_map(V).unwrap()
    }
}
