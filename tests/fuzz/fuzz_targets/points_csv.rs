//! Fuzz: an uploaded CSV point map (the web page's import, `config/points_csv.rs`) —
//! never a panic, and a map read without problems exports and reads back to the same rows.
#![no_main]
use kp_gateway::config::points_csv;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
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
});
