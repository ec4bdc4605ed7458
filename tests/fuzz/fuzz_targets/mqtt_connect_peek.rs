//! Fuzz: the look at a connection's first bytes before the full CONNECT decode.
#![no_main]
use libfuzzer_sys::fuzz_target;
use platform_core::mqtt::connect::{peek_connect, ConnectPeek};

fuzz_target!(|data: &[u8]| {
    // Whatever the bytes, a recognised protocol name lies inside them (counted in
    // characters: invalid UTF-8 bytes are shown as U+FFFD, three bytes each).
    if let ConnectPeek::Connect { name, .. } = peek_connect(data) {
        assert!(name.chars().count() <= data.len());
    }
});
