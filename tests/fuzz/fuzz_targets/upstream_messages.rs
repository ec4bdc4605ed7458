//! Fuzz: what the upstream server sends, through the gateway's pure 1/KP client state —
//! any topic with any payload (command pushes, config pushes, error payloads, answers to
//! requests it never sent) — plus the payload parsers on their own.
#![no_main]
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kp_gateway::downlink::{parse_commands, parse_write};
use kp_gateway::endpoint::Endpoint;
use kp_gateway::upstream::cmp::parse_push;
use kp_gateway::upstream::{ClientState, OwnConfig};
use libfuzzer_sys::fuzz_target;
use platform_core::kp1::{AppVersionName, EndpointToken};

fn ep(avn: &str, token: &str) -> Endpoint {
    Endpoint::new(
        AppVersionName::new(avn).expect("valid"),
        EndpointToken::new(token).expect("valid"),
    )
}

fuzz_target!(|data: &[u8]| {
    if let Ok(cmds) = parse_commands(data) {
        for c in cmds {
            let _ = parse_write(&c.payload);
        }
    }
    let _ = parse_push(data);
    let _ = serde_json::from_slice::<platform_core::kp1::ErrorPayload>(data);

    // First line: the topic; the rest: the payload.
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let topic = String::from_utf8_lossy(&data[..split]);
    let payload = data.get(split + 1..).unwrap_or_default();
    let mut commands = BTreeMap::new();
    commands.insert(ep("a-v1", "t1"), "dev".to_owned());
    let mut state = ClientState::new(vec![ep("a-v1", "t1")], commands, Duration::from_secs(5))
        .with_own_config(OwnConfig {
            endpoint: ep("gw-v1", "gw"),
            current_id: None,
            announce: None,
        });
    let _ = state.connected();
    let _ = state.message(&topic, payload, Instant::now(), 0.5);
});
