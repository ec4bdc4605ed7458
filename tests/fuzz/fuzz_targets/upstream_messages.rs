//! Fuzz: what the upstream server sends: command pushes, config pushes, error payloads.
#![no_main]
use kp_gateway::downlink::{parse_commands, parse_write};
use kp_gateway::remote_config::parse_push;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cmds) = parse_commands(data) {
        for c in cmds {
            let _ = parse_write(&c.payload);
        }
    }
    let _ = parse_push(data);
    let _ = serde_json::from_slice::<platform_core::kp1::ErrorPayload>(data);
});
