use super::*;
use std::time::Duration;

use crate::buffer::Synchronous;
use crate::modbus::types::{ByteOrder, DataType, RegisterTable};
use crate::source::modbus::ModbusPoint;
use crate::source::DeviceSource;

const MINIMAL_BRIDGE: &str = r#"
[upstream]
host = "kaa.example"

[[modbus.buses]]
name = "plant"
kind = "tcp"
address = "127.0.0.1:502"

[[devices]]
name = "d1"
token = "tok-1"
app_version = "app-v1"
[devices.modbus]
bus = "plant"
[[devices.points]]
name = "t"
address = 0
type = "i16"
scale = 0.1
"#;

fn errors(text: &str) -> Vec<String> {
    Config::from_toml(text).unwrap_err().0
}

#[test]
fn a_minimal_bridge_config_gets_the_documented_defaults() {
    let c = Config::from_toml(MINIMAL_BRIDGE).unwrap();
    let u = c.upstream.as_ref().unwrap();
    assert_eq!(
        (u.port, u.client_id.as_str(), u.batch_max_samples),
        (1883, "kp-gateway", 100)
    );
    assert_eq!(
        c.buffer.path,
        PathBuf::from("/var/lib/kp-gateway/buffer.sqlite")
    );
    assert_eq!(c.buffer.synchronous, Synchronous::Full);
    assert!(c.core.is_none());
    let DeviceSource::Modbus(m) = &c.devices[0].source else {
        panic!("not modbus")
    };
    assert_eq!((m.unit_id, m.bus.as_str()), (1, "plant"));
    assert_eq!(
        m.points[0],
        ModbusPoint {
            name: "t".into(),
            address: 0,
            codec: crate::modbus::codec::PointCodec {
                table: RegisterTable::Holding,
                data_type: DataType::I16,
                order: ByteOrder::Abcd,
                bit: None,
                scale: 0.1,
                offset: 0.0,
            },
            deadband: None,
            writable: false,
            readback: false,
            write_multiple: false,
            poll_interval: None,
        }
    );
    assert_eq!(c.buses[0].timeout, Duration::from_secs(1));
    assert_eq!(c.buses[0].inter_frame_delay, Duration::ZERO);
    assert_eq!(m.groups.len(), 1);
    assert_eq!(m.groups[0].period, Duration::from_secs(1));
    assert_eq!(m.groups[0].plan.len(), 1);
    assert_eq!(c.devices[0].metadata["bus"], "plant");
    assert_eq!(c.devices[0].poll_interval, Duration::from_secs(1));
}

#[test]
fn the_demo_config_is_valid_and_standalone() {
    let c = Config::from_toml(crate::DEMO_CONFIG).unwrap();
    assert!(c.upstream.is_none());
    assert!(c.core.is_some());
    assert_eq!(c.devices.len(), 2);
}

#[test]
fn every_error_is_reported_at_once_with_its_path() {
    let text = r#"
[gateway]
log_level = "chatty"

[upstream]
host = ""
keepalive_secs = 1
password = "x"

[buffer]
synchronous = "sometimes"

[[modbus.buses]]
name = "b"
kind = "tcp"
address = "not-an-address"

[[devices]]
name = "d1"
token = "a/b"
app_version = "App"
poll_interval_ms = 1
[devices.modbus]
bus = "b"
[[devices.points]]
name = "t"
address = 65535
type = "u17"
waveform = "sine"
[[devices.points]]
name = "t"
address = 1
type = "f32"
scale = 0.0

[[devices]]
name = "d1"
token = "ok"
app_version = "app"
[[devices.points]]
name = "timestamp"
"#;
    let e = errors(text);
    let expect = [
        "gateway.log_level: unknown level \"chatty\"",
        "upstream.host: must not be empty",
        "upstream.password: set without upstream.username",
        "upstream.keepalive_secs: 1 is out of range",
        "buffer.synchronous: unknown value \"sometimes\"",
        "devices[0].token: invalid endpoint token \"a/b\"",
        "devices[0].app_version: invalid app version name \"App\"",
        "devices[0].poll_interval_ms: 1 is below the minimum",
        "devices[0].points[1].name: duplicate point name \"t\"",
        "modbus.buses[0].address: \"not-an-address\" is not an IP:port address",
        "devices[0].points[0].waveform: not a field of modbus points",
        "devices[0].points[0].type: unknown data type \"u17\"",
        "devices[0].points[1].scale: must be a finite, non-zero number",
        "devices[1].name: duplicate device name \"d1\"",
        "devices[1].points[0].name: \"timestamp\" is reserved",
        "devices[1]: needs a source",
    ];
    for want in expect {
        assert!(
            e.iter().any(|line| line.starts_with(want)),
            "missing {want:?} in:\n{}",
            e.join("\n")
        );
    }
    assert_eq!(
        e.len(),
        expect.len(),
        "unexpected extra errors:\n{}",
        e.join("\n")
    );
}

#[test]
fn an_unknown_key_is_an_error_with_its_line() {
    let e = errors("[gateway]\nstate_dir = \"/tmp\"\nlog_levle = \"info\"\n");
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("gateway.log_levle: (line 3) unknown field `log_levle`"),
        "{}",
        e[0]
    );
}

#[test]
fn nothing_to_send_to_is_an_error() {
    let e = errors("");
    assert_eq!(
        e,
        vec![
            "upstream: missing: configure [upstream] (a Kaa server) or [core] (the embedded core), or [web] to do it on the web page"
        ]
    );
}

#[test]
fn standalone_devices_need_an_app_version_known_to_the_core() {
    let text = r#"
[core]
[[core.applications]]
name = "demo"
versions = ["demo-v1"]
[[core.credentials]]
username = "u"
password_hash = "plaintext"
[[devices]]
name = "d"
token = "t"
app_version = "other-v1"
[devices.simulated]
[[devices.points]]
name = "x"
"#;
    let e = errors(text);
    assert!(
        e.iter()
            .any(|l| l.starts_with("devices[0].app_version: \"other-v1\" is not a version")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|l| l.starts_with("core.credentials[0].password_hash: not a PHC password hash")),
        "{e:?}"
    );
}

#[test]
fn upstream_password_is_redacted_in_debug_output() {
    let mut text = MINIMAL_BRIDGE.replace(
        "host = \"kaa.example\"",
        "host = \"h\"\nusername = \"u\"\npassword = \"hunter2\"",
    );
    text.push('\n');
    let c = Config::from_toml(&text).unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("hunter2"), "{dbg}");
    assert!(!dbg.contains("tok-1"), "{dbg}");
}

#[test]
fn the_shipped_default_config_is_valid() {
    // The first run: no upstream and no devices yet, the web page to set them.
    let c = Config::from_toml(include_str!("../../../config/gateway.toml")).unwrap();
    assert!(c.upstream.is_none() && c.core.is_none() && c.devices.is_empty());
    assert!(c.web.is_some());
}

#[test]
fn core_tls_websocket_and_epmx_keys_are_checked_with_their_paths() {
    let errs = errors(
        r#"
[core]
extension_timeout_ms = 0
[core.mqtt]
max_requests_in_flight = 0
[core.tls]
listen = "nowhere"
cert_file = "/nonexistent/server.pem"
key_file = "/nonexistent/server.key"
[core.http]
cert_file = "/nonexistent/https.pem"
[core.epmx]
read_only_keys = ["fine", "not fine"]
[[core.extensions]]
instance = "cmx"
kind = "cex"
[[core.extensions]]
instance = "Bad"
kind = "nope"
"#,
    );
    for want in [
        "core.extension_timeout_ms: must be at least 1",
        "core.mqtt.max_requests_in_flight: must be 1 to 1048576",
        "core.tls.listen: \"nowhere\" is not an IP:port address",
        "core.tls.cert_file: /nonexistent/server.pem is not a readable file",
        "core.tls.key_file: /nonexistent/server.key is not a readable file",
        "core.epmx.read_only_keys[1]: \"not fine\" must match ^[a-zA-Z0-9_]+$",
        "core.extensions[0].instance: \"cmx\" is already an instance",
        "core.http: cert_file and key_file go together (both for HTTPS, neither for HTTP)",
        "core.extensions[1].kind: \"nope\" is not one of dcx, epmx, cmx, cex, external",
        "core.extensions[1].instance: \"Bad\" must match ^[a-z0-9_-]+$",
    ] {
        assert!(errs.iter().any(|e| e == want), "{want:?} not in {errs:#?}");
    }
    let ok = Config::from_toml(
        "[core]\n[core.http]\n[core.epmx]\nhidden_keys = [\"secret\"]\n\
         [[core.extensions]]\ninstance = \"cmx_ota\"\nkind = \"cmx\"\n",
    )
    .unwrap();
    let core = ok.core.unwrap();
    let http = core.http.unwrap();
    assert!(http.websocket && !http.websocket_allow_anonymous);
    assert!(core.tls.is_none());
    assert_eq!(core.epmx.hidden, vec!["secret".to_owned()]);
    assert_eq!(core.extension_timeout, Duration::from_secs(10));
    assert_eq!(
        core.extensions,
        vec![("cmx_ota".to_owned(), platform_core::ext::ExtensionKind::Cmx)]
    );
}

#[test]
fn core_listeners_on_the_same_port_and_address_clash() {
    let text = r#"
[core]
[core.mqtt]
listen = "0.0.0.0:1883"
[core.http]
listen = "127.0.0.1:1883"
"#;
    let e = errors(text);
    assert!(
        e.iter()
            .any(|l| l.starts_with("core.http.listen:") && l.contains("core.mqtt.listen")),
        "{e:?}"
    );
    // Port 0 (any free port) never clashes, nor do different ports.
    let ok =
        "[core]\n[core.mqtt]\nlisten = \"127.0.0.1:0\"\n[core.http]\nlisten = \"127.0.0.1:0\"\n";
    assert!(Config::from_toml(ok).is_ok());
}

#[test]
fn a_buffer_bound_larger_than_the_free_disk_is_a_warning_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().display().to_string().replace('\\', "/");
    let text = format!(
        "[gateway]\nstate_dir = \"{state}\"\n[upstream]\nhost = \"h\"\n[buffer]\nmax_bytes = {}\n",
        u64::MAX / 2
    );
    let c = Config::from_toml(&text).expect("valid");
    let w = c.warnings();
    assert!(
        w.iter().any(|l| l.starts_with("buffer.max_bytes:")),
        "{w:?}"
    );
    assert!(a_small_buffer_has_no_warning(&state));
}

fn a_small_buffer_has_no_warning(state: &str) -> bool {
    let text = format!("[gateway]\nstate_dir = \"{state}\"\n[upstream]\nhost = \"h\"\n");
    Config::from_toml(&text)
        .expect("valid")
        .warnings()
        .is_empty()
}

#[test]
fn a_published_password_on_the_network_is_refused_and_the_demo_ships_none() {
    let hash = platform_core::ccm::hash_password("demo").unwrap();
    let text = |listen: &str| {
        format!(
            "[core]\n[core.http]\nlisten = \"{listen}\"\n[core.api]\nadmin_username = \"admin\"\nadmin_password_hash = \"{hash}\"\n"
        )
    };
    let e = errors(&text("0.0.0.0:8080"));
    assert!(
        e.iter()
            .any(|l| l.starts_with("core.api.admin_password_hash:")
                && l.contains("\"demo\"")
                && l.contains("0.0.0.0:8080")),
        "{e:?}"
    );
    assert!(
        Config::from_toml(&text("127.0.0.1:8080")).is_ok(),
        "loopback only: allowed"
    );
    // No password ships with kp-gateway: the demo has no REST admin at all.
    assert!(!crate::DEMO_CONFIG.contains("[core.api]"));
    assert!(Config::from_toml(crate::DEMO_CONFIG).is_ok());
}

#[test]
fn an_own_password_on_the_network_without_tls_is_a_warning() {
    let hash = platform_core::ccm::hash_password("a-long-own-password").unwrap();
    let text = format!(
        "[core]\n[core.http]\nlisten = \"0.0.0.0:0\"\n[core.api]\nadmin_username = \"admin\"\nadmin_password_hash = \"{hash}\"\n"
    );
    let c = Config::from_toml(&text).expect("valid: not a well-known password");
    let w = c.warnings();
    assert!(
        w.iter()
            .any(|l| l.starts_with("core.http.listen:") && l.contains("without TLS")),
        "{w:?}"
    );
}

#[test]
fn points_with_their_own_period_are_planned_apart_and_merged_within_it() {
    let text = MINIMAL_BRIDGE.replace(
        "scale = 0.1\n",
        "scale = 0.1\n\
         [[devices.points]]\nname = \"fast_a\"\naddress = 10\ntype = \"u16\"\npoll_interval_ms = 100\n\
         [[devices.points]]\nname = \"fast_b\"\naddress = 11\ntype = \"u16\"\npoll_interval_ms = 100\n\
         [[devices.points]]\nname = \"slow\"\naddress = 1\ntype = \"u16\"\n",
    );
    let c = Config::from_toml(&text).unwrap();
    let DeviceSource::Modbus(m) = &c.devices[0].source else {
        panic!("not modbus")
    };
    let shape: Vec<(Duration, Vec<(u16, u16)>)> = m
        .groups
        .iter()
        .map(|g| {
            (
                g.period,
                g.plan.iter().map(|r| (r.start, r.count)).collect(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            (Duration::from_secs(1), vec![(0, 2)]),
            (Duration::from_millis(100), vec![(10, 2)]),
        ]
    );
    let too_fast = text.replacen("poll_interval_ms = 100", "poll_interval_ms = 5", 1);
    assert_eq!(
        errors(&too_fast),
        vec!["devices[0].points[1].poll_interval_ms: 5 is below the minimum of 10 ms"]
    );
}

#[test]
fn core_nats_keys_are_checked_with_their_paths() {
    let errs = errors(
        r#"
[core]
[[core.extensions]]
instance = "remote_dcx"
kind = "external"
"#,
    );
    assert!(
        errs.iter().any(|e| e
            .starts_with("core.extensions[0].kind: \"external\" instances are reached over NATS")),
        "{errs:#?}"
    );
    let errs = errors(
        r#"
[core]
[core.nats]
servers = ["nats://127.0.0.1:4222", "no such thing://x"]
user = "kpc"
token = "t"
tls_cert_file = "client.pem"
replica_id = "a.b"
queue_capacity = 0
"#,
    );
    for want in [
        "core.nats: set one way to log in: user and password, token, or creds_file",
        "core.nats.password: user is set: set its password too",
        "core.nats.tls_cert_file: tls_cert_file and tls_key_file go together",
        "core.nats.queue_capacity: must be at least 1",
    ] {
        assert!(errs.iter().any(|e| e == want), "{want:?} not in {errs:#?}");
    }
    assert!(
        errs.iter().any(|e| e.starts_with("core.nats.servers[1]:")),
        "{errs:#?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with("core.nats.replica_id:")),
        "{errs:#?}"
    );
    let ok = Config::from_toml(
        "[core]\n[core.nats]\nservers = [\"nats://127.0.0.1:4222\"]\ntoken = \"secret-token\"\n\
         [[core.extensions]]\ninstance = \"dcx\"\nkind = \"external\"\n",
    )
    .unwrap();
    let nats = ok.core.unwrap().nats.unwrap();
    assert!(
        nats.names.replica_id.starts_with("kpc-"),
        "{:?}",
        nats.names
    );
    assert_eq!(
        (nats.names.kpc.as_str(), nats.names.epts.as_str()),
        ("kpc", "epts")
    );
    assert!(
        !format!("{nats:?}").contains("secret-token"),
        "the token is not shown"
    );
}
