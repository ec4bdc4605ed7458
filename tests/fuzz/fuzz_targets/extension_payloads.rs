//! Fuzz: DCX, EPMX, CMX and CEX request payloads (bytes from any client).
#![no_main]
use libfuzzer_sys::fuzz_target;
use platform_core::ext::{cex, cmx, dcx, epmx};

fuzz_target!(|data: &[u8]| {
    let _ = dcx::parse_json(data, 0);
    let _ = dcx::parse_plain("m", data, 0);
    for r in ["get/keys", "get", "update", "update/keys", "delete/keys"] {
        let _ = epmx::parse(r, data);
    }
    for r in ["config/json", "config/json/ota", "applied/json", "applied/json/ota"] {
        let _ = cmx::parse(r, data);
    }
    for r in ["command/reboot", "result/reboot"] {
        let _ = cex::parse(r, data);
    }
    // The resource path is client input too.
    if let Ok(path) = std::str::from_utf8(data) {
        let _ = cmx::parse(path, b"{}");
        let _ = cex::parse(path, b"[]");
    }
});
