//! Fuzz: what the commissioning tools read from outside — an uploaded CSV point map (the
//! web page), a site's device-profile file, and any register window a device returns
//! (every interpretation of it).
#![no_main]
use kp_gateway::config::points_csv;
use kp_gateway::modbus::interpret::{as_text, interpret, render_text};
use kp_gateway::profiles;
use libfuzzer_sys::fuzz_target;

/// A CSV read without problems exports and reads back to the same rows.
fn csv_round_trip(text: &str) {
    let Ok((points, problems)) = points_csv::read(text) else {
        return;
    };
    if !problems.is_empty() {
        return;
    }
    let csv = points_csv::export(&points);
    let (again, problems) = points_csv::read(&csv).expect("an export has a header");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(points_csv::export(&again), csv);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        csv_round_trip(text);
        if let Ok(p) = profiles::parse(text) {
            let _ = profiles::points_toml(&p);
        }
    }
    let words: Vec<u16> = data
        .chunks(2)
        .take(125)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
        .collect();
    let views = interpret(0xFFF0, &words);
    assert_eq!(views.len(), words.len());
    let _ = render_text(&views);
    let _ = as_text(&words);
});
