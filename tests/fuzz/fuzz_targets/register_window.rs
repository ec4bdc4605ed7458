//! Fuzz: any register window a device returns to the commissioning read (up to 125
//! words), with every interpretation of it — one view per register, never a panic.
#![no_main]
use kp_gateway::modbus::interpret::{as_text, interpret, render_text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
