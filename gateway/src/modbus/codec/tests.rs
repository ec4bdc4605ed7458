use super::*;
use proptest::prelude::*;
use serde_json::json;

const ORDERS: [ByteOrder; 4] = [
    ByteOrder::Abcd,
    ByteOrder::Dcba,
    ByteOrder::Badc,
    ByteOrder::Cdab,
];

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

#[test]
fn a_32_bit_value_in_each_order_matches_the_textbook_layout() {
    // 0xAABBCCDD as u32
    let layouts = [
        (ByteOrder::Abcd, [0xAABB, 0xCCDD]),
        (ByteOrder::Dcba, [0xDDCC, 0xBBAA]),
        (ByteOrder::Badc, [0xBBAA, 0xDDCC]),
        (ByteOrder::Cdab, [0xCCDD, 0xAABB]),
    ];
    for (order, words) in layouts {
        let c = codec(DataType::U32, order);
        assert_eq!(
            decode_words(&c, &words),
            Ok(json!(0xAABBCCDDu32)),
            "{order:?}"
        );
        assert_eq!(
            encode(&c, &json!(0xAABBCCDDu32)),
            Ok(WriteData::Words(words.to_vec())),
            "{order:?}"
        );
    }
}

#[test]
fn a_64_bit_value_in_each_order() {
    let v = 0x1122_3344_5566_7788u64;
    let layouts = [
        (ByteOrder::Abcd, [0x1122, 0x3344, 0x5566, 0x7788]),
        (ByteOrder::Dcba, [0x8877, 0x6655, 0x4433, 0x2211]),
        (ByteOrder::Badc, [0x2211, 0x4433, 0x6655, 0x8877]),
        (ByteOrder::Cdab, [0x7788, 0x5566, 0x3344, 0x1122]),
    ];
    for (order, words) in layouts {
        let c = codec(DataType::U64, order);
        assert_eq!(decode_words(&c, &words), Ok(json!(v)), "{order:?}");
    }
}

#[test]
fn sixteen_bit_values_only_care_about_byte_swaps() {
    assert_eq!(
        decode_words(&codec(DataType::I16, ByteOrder::Abcd), &[0xFFFE]),
        Ok(json!(-2))
    );
    assert_eq!(
        decode_words(&codec(DataType::I16, ByteOrder::Cdab), &[0xFFFE]),
        Ok(json!(-2))
    );
    assert_eq!(
        decode_words(&codec(DataType::U16, ByteOrder::Badc), &[0x3412]),
        Ok(json!(0x1234))
    );
}

#[test]
fn scale_and_offset_turn_integers_into_floats() {
    let mut c = codec(DataType::I16, ByteOrder::Abcd);
    c.scale = 0.1;
    assert_eq!(decode_words(&c, &[(-215i16) as u16]), Ok(json!(-21.5)));
    c.offset = 100.0;
    assert_eq!(
        encode(&c, &json!(78.5)),
        Ok(WriteData::Words(vec![(-215i16) as u16]))
    );
}

#[test]
fn u64_and_i64_stay_exact_without_scaling() {
    let c = codec(DataType::U64, ByteOrder::Abcd);
    assert_eq!(decode_words(&c, &[0xFFFF; 4]), Ok(json!(u64::MAX)));
    assert_eq!(
        encode(&c, &json!(u64::MAX)),
        Ok(WriteData::Words(vec![0xFFFF; 4]))
    );
    let c = codec(DataType::I64, ByteOrder::Abcd);
    assert_eq!(decode_words(&c, &[0x8000, 0, 0, 0]), Ok(json!(i64::MIN)));
}

#[test]
fn bools_from_register_bits_and_coils() {
    let mut c = codec(DataType::Bool, ByteOrder::Abcd);
    c.bit = Some(3);
    assert_eq!(decode_words(&c, &[0b1000]), Ok(json!(true)));
    assert_eq!(decode_words(&c, &[0b0111]), Ok(json!(false)));
    assert_eq!(
        encode(&c, &json!(true)),
        Ok(WriteData::RegisterBit {
            bit: 3,
            value: true
        })
    );
    assert_eq!(decode_bits(&[true]), Ok(json!(true)));
    let coil = PointCodec {
        table: RegisterTable::Coil,
        ..codec(DataType::Bool, ByteOrder::Abcd)
    };
    assert_eq!(encode(&coil, &json!(1)), Ok(WriteData::Bits(vec![true])));
    assert!(encode(&coil, &json!("on")).is_err());
}

#[test]
fn strings_are_trimmed_and_byte_swapped_when_asked() {
    let c = codec(DataType::String(3), ByteOrder::Abcd);
    assert_eq!(
        decode_words(&c, &[0x4142, 0x4300, 0x0000]),
        Ok(json!("ABC"))
    );
    assert_eq!(
        encode(&c, &json!("ABC")),
        Ok(WriteData::Words(vec![0x4142, 0x4300, 0]))
    );
    let c = codec(DataType::String(2), ByteOrder::Badc);
    assert_eq!(decode_words(&c, &[0x4241, 0x2043]), Ok(json!("ABC")));
    assert_eq!(
        encode(&c, &json!("ABCDE")),
        Err(CodecError::TooLong {
            len: 5,
            registers: 2
        })
    );
}

#[test]
fn out_of_range_and_wrong_kind_writes_are_refused() {
    assert!(matches!(
        encode(&codec(DataType::U16, ByteOrder::Abcd), &json!(70000)),
        Err(CodecError::OutOfRange(_))
    ));
    assert!(matches!(
        encode(&codec(DataType::U16, ByteOrder::Abcd), &json!(-1)),
        Err(CodecError::OutOfRange(_))
    ));
    assert!(matches!(
        encode(&codec(DataType::I16, ByteOrder::Abcd), &json!("x")),
        Err(CodecError::WrongKind(_))
    ));
    assert!(matches!(
        encode(&codec(DataType::F32, ByteOrder::Abcd), &json!(1e300)),
        Err(CodecError::OutOfRange(_))
    ));
}

#[test]
fn nan_and_wrong_lengths_are_bad_readings() {
    let nan = f32::NAN.to_bits();
    assert_eq!(
        decode_words(
            &codec(DataType::F32, ByteOrder::Abcd),
            &[(nan >> 16) as u16, nan as u16]
        ),
        Err(CodecError::NotFinite)
    );
    assert!(matches!(
        decode_words(&codec(DataType::F64, ByteOrder::Abcd), &[1, 2]),
        Err(CodecError::WrongLength { .. })
    ));
}

fn numeric_type() -> impl Strategy<Value = DataType> {
    prop::sample::select(vec![
        DataType::U16,
        DataType::I16,
        DataType::U32,
        DataType::I32,
        DataType::U64,
        DataType::I64,
        DataType::F32,
        DataType::F64,
    ])
}

proptest! {
    #[test]
    fn decode_then_encode_gives_back_the_same_words(
        t in numeric_type(),
        order in prop::sample::select(ORDERS.to_vec()),
        words in prop::collection::vec(any::<u16>(), 4),
    ) {
        let c = codec(t, order);
        let words = &words[..usize::from(t.width())];
        if let Ok(v) = decode_words(&c, words) {
            prop_assert_eq!(encode(&c, &v), Ok(WriteData::Words(words.to_vec())));
        }
    }

    #[test]
    fn decoding_never_panics(
        t in numeric_type(),
        order in prop::sample::select(ORDERS.to_vec()),
        words in prop::collection::vec(any::<u16>(), 0..6),
        scale in -1e6f64..1e6,
    ) {
        let mut c = codec(t, order);
        c.scale = scale;
        let _ = decode_words(&c, &words);
    }
}
