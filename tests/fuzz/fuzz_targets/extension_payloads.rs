//! Fuzz: DCX and EPMX request payloads (bytes from any client).
#![no_main]
use libfuzzer_sys::fuzz_target;
use platform_core::ext::{dcx, epmx};

fuzz_target!(|data: &[u8]| {
    let _ = dcx::parse_json(data, 0);
    let _ = dcx::parse_plain("m", data, 0);
    for r in ["get/keys", "get", "update", "update/keys", "delete/keys"] {
        let _ = epmx::parse(r, data);
    }
});
