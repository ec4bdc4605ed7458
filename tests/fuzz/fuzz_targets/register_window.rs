//! Fuzz: any register window a device returns to the commissioning read, with every
//! interpretation of it — one view per register, never a panic.
//!
//! The input is cut at 20 words: a register's views read at most the 4 words from it,
//! so 20 words reach every path (the ends of the window included) at ~6× the speed of
//! the 125 the read allows; full-size windows are in the unit tests.
#![no_main]
use kp_gateway::modbus::interpret::{as_text, interpret, render_text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let words: Vec<u16> = data
        .chunks(2)
        .take(20)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
        .collect();
    let views = interpret(0xFFF0, &words);
    assert_eq!(views.len(), words.len());
    let _ = render_text(&views);
    let _ = as_text(&words);
});
