//! A look at the first frame of a connection before the full decode (pure).
//!
//! The packet codec decodes MQTT 3.1.1 only, so a CONNECT of MQTT 3.1 (`MQIsdp`, level 3)
//! or MQTT 5 (level 5) would just be "malformed". To refuse those clients properly —
//! CONNACK with return code 0x01, unacceptable protocol version (MQTT 3.1.1 §3.1.2.2) —
//! the connection peeks at the protocol name and level first. The peek reads only the
//! fixed header (§2.2), the remaining length (§2.2.3, at most 4 bytes) and the protocol
//! name and level of the variable header (§3.1.2.1–2); it never reads past the bytes given
//! or past the frame the header declares.

/// What the head of the buffer says about the first packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectPeek {
    /// Not enough bytes yet to tell.
    NeedMore,
    /// Not a CONNECT, or a header the full decoder must judge (it reports the error).
    NotConnect,
    /// A CONNECT with this protocol name and level.
    Connect { name: String, level: u8 },
}

/// Peeks at the protocol name and level of a CONNECT frame at the head of `buf`.
pub fn peek_connect(buf: &[u8]) -> ConnectPeek {
    let Some(first) = buf.first() else {
        return ConnectPeek::NeedMore;
    };
    if first >> 4 != 1 {
        return ConnectPeek::NotConnect;
    }
    // Remaining length: at most 4 bytes of 7 bits each (§2.2.3).
    let mut i = 1;
    let mut remaining = 0usize;
    loop {
        match buf.get(i) {
            None => return ConnectPeek::NeedMore,
            Some(byte) => {
                remaining |= usize::from(byte & 0x7f) << (7 * (i - 1));
                if byte & 0x80 == 0 {
                    break;
                }
                if i == 4 {
                    return ConnectPeek::NotConnect;
                }
                i += 1;
            }
        }
    }
    i += 1;
    // A whole frame too short for a protocol name and level: let the decoder report it.
    let frame_end = i + remaining;
    let complete = buf.len() >= frame_end;
    let (Some(hi), Some(lo)) = (buf.get(i), buf.get(i + 1)) else {
        return if complete {
            ConnectPeek::NotConnect
        } else {
            ConnectPeek::NeedMore
        };
    };
    let len = usize::from(u16::from_be_bytes([*hi, *lo]));
    if i + 2 + len >= frame_end {
        // The declared frame cannot hold the name and the level.
        return ConnectPeek::NotConnect;
    }
    match (buf.get(i + 2..i + 2 + len), buf.get(i + 2 + len)) {
        (Some(name), Some(level)) => ConnectPeek::Connect {
            name: String::from_utf8_lossy(name).into_owned(),
            level: *level,
        },
        _ => ConnectPeek::NeedMore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A CONNECT frame with this protocol name and level and a 1-byte client ID.
    fn connect(name: &[u8], level: u8) -> Vec<u8> {
        let mut body = vec![0, name.len() as u8];
        body.extend_from_slice(name);
        body.extend_from_slice(&[level, 0x02, 0, 60, 0, 1, b'c']);
        let mut f = vec![0x10, body.len() as u8];
        f.extend(body);
        f
    }

    #[test]
    fn an_mqtt_3_1_1_connect_shows_its_name_and_level() {
        let f = connect(b"MQTT", 4);
        let want = ConnectPeek::Connect {
            name: "MQTT".into(),
            level: 4,
        };
        assert_eq!(peek_connect(&f), want);
    }

    #[test]
    fn mqtt_3_1_and_5_are_recognised_so_they_can_be_refused() {
        assert_eq!(
            peek_connect(&connect(b"MQIsdp", 3)),
            ConnectPeek::Connect {
                name: "MQIsdp".into(),
                level: 3
            }
        );
        assert!(matches!(
            peek_connect(&connect(b"MQTT", 5)),
            ConnectPeek::Connect { level: 5, .. }
        ));
    }

    #[test]
    fn every_proper_prefix_of_a_connect_needs_more() {
        let f = connect(b"MQTT", 4);
        let name_end = 2 + 2 + 4; // fixed header, name length, name
        for cut in 0..=name_end {
            assert_eq!(
                peek_connect(&f[..cut]),
                ConnectPeek::NeedMore,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn another_packet_type_first_is_not_a_connect() {
        assert_eq!(peek_connect(&[0xC0, 0]), ConnectPeek::NotConnect); // PINGREQ
        assert_eq!(peek_connect(&[0x30, 2, 0, 0]), ConnectPeek::NotConnect); // PUBLISH
    }

    #[test]
    fn a_remaining_length_of_more_than_four_bytes_is_not_a_connect() {
        assert_eq!(
            peek_connect(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]),
            ConnectPeek::NotConnect
        );
    }

    #[test]
    fn a_frame_too_short_for_its_protocol_name_is_left_to_the_decoder() {
        // Declares 2 remaining bytes: only the name length fits.
        assert_eq!(peek_connect(&[0x10, 2, 0, 4]), ConnectPeek::NotConnect);
        // Complete, but too short even for the name length.
        assert_eq!(peek_connect(&[0x10, 1, 0]), ConnectPeek::NotConnect);
        assert_eq!(peek_connect(&[0x10, 0]), ConnectPeek::NotConnect);
    }

    proptest! {
        #[test]
        fn any_bytes_give_an_answer_without_panicking(data in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = peek_connect(&data);
        }

        #[test]
        fn a_recognised_name_is_always_inside_the_declared_frame(
            name in prop::collection::vec(any::<u8>(), 0..20), level: u8, extra in 0usize..8
        ) {
            let mut f = connect(&name, level);
            f.extend(std::iter::repeat_n(0u8, extra));
            match peek_connect(&f) {
                ConnectPeek::Connect { name: n, level: l } => {
                    prop_assert_eq!(n, String::from_utf8_lossy(&name).into_owned());
                    prop_assert_eq!(l, level);
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
