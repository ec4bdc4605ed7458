//! Fuzz: 1/KP topic parsing (MQTT topics and HTTP paths from any client).
#![no_main]
use libfuzzer_sys::fuzz_target;
use platform_core::kp1::Kp1Topic;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(t) = Kp1Topic::parse(s) {
            // Whatever parses must format back to something that parses the same.
            assert_eq!(Kp1Topic::parse(&t.to_string()), Ok(t));
        }
    }
});
