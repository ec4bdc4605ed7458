//! Fuzz: serial line formats (bytes from a sensor).
#![no_main]
use kp_gateway::source::line_format::{parse_line, LineFormat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data) {
        for f in [
            LineFormat::Json,
            LineFormat::Nmea,
            LineFormat::KeyValue { separator: None },
            LineFormat::KeyValue { separator: Some(";".into()) },
            LineFormat::Csv { columns: vec!["a".into(), "".into(), "c".into()], separator: ',' },
        ] {
            let _ = parse_line(&f, line);
        }
    }
});
