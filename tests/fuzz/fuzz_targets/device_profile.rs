//! Fuzz: a site's device-profile file (`*.toml` in `gateway.profiles_dir`) — never a panic,
//! and a profile that parses prints its points as TOML.
#![no_main]
use kp_gateway::profiles;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(p) = profiles::parse(text) {
            let _ = profiles::points_toml(&p);
        }
    }
});
