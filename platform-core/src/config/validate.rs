//! `[core]` raw → runtime: every check, every problem collected with its path.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use super::raw::RawCore;
use super::{resolve, CoreConfig, HttpListener, MqttListener, Problems, TlsListener};
use crate::epr::is_valid_metadata_key;
use crate::kp1::{AppVersionName, EndpointToken};

/// Largest `core.mqtt.max_requests_in_flight` accepted.
const MOST_REQUESTS_IN_FLIGHT: usize = 1 << 20;

/// Validates `[core]`; paths are reported under `core.`, files resolved against `state_dir`.
pub fn validate(c: RawCore, state_dir: &Path, e: &mut Problems) -> CoreConfig {
    let listen = SocketAddr::from_str(&c.mqtt.listen).unwrap_or_else(|_| {
        e.add(
            "core.mqtt.listen",
            format!("{:?} is not an IP:port address", c.mqtt.listen),
        );
        SocketAddr::from(([127, 0, 0, 1], 0))
    });
    let http = c.http.as_ref().map(|h| HttpListener {
        listen: SocketAddr::from_str(&h.listen).unwrap_or_else(|_| {
            e.add(
                "core.http.listen",
                format!("{:?} is not an IP:port address", h.listen),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        }),
        websocket: h.websocket,
        max_connections: h.max_connections,
        idle_timeout: Duration::from_secs(h.idle_timeout_secs),
        websocket_allow_anonymous: h.websocket_allow_anonymous,
        tls: match (&h.cert_file, &h.key_file) {
            (Some(cert), Some(key)) => Some(crate::kpc::tls::TlsFiles {
                cert_file: resolve(state_dir, cert),
                key_file: resolve(state_dir, key),
                client_ca_file: None,
            }),
            (None, None) => None,
            _ => {
                e.add(
                    "core.http",
                    "cert_file and key_file go together (both for HTTPS, neither for HTTP)",
                );
                None
            }
        },
    });
    if let Some(f) = http.as_ref().and_then(|h| h.tls.as_ref()) {
        for (key, p) in [("cert_file", &f.cert_file), ("key_file", &f.key_file)] {
            if !p.is_file() {
                e.add(
                    format!("core.http.{key}"),
                    format!("{} is not a readable file", p.display()),
                );
            }
        }
    }
    let tls = c.tls.as_ref().map(|t| TlsListener {
        listen: SocketAddr::from_str(&t.listen).unwrap_or_else(|_| {
            e.add(
                "core.tls.listen",
                format!("{:?} is not an IP:port address", t.listen),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        }),
        files: crate::kpc::tls::TlsFiles {
            cert_file: resolve(state_dir, &t.cert_file),
            key_file: resolve(state_dir, &t.key_file),
            client_ca_file: t.client_ca_file.as_ref().map(|f| resolve(state_dir, f)),
        },
        allow_anonymous: t.allow_anonymous,
    });
    if let Some(t) = &tls {
        let f = &t.files;
        for (key, path) in [
            ("cert_file", Some(&f.cert_file)),
            ("key_file", Some(&f.key_file)),
            ("client_ca_file", f.client_ca_file.as_ref()),
        ] {
            if let Some(p) = path {
                if !p.is_file() {
                    e.add(
                        format!("core.tls.{key}"),
                        format!("{} is not a readable file", p.display()),
                    );
                }
            }
        }
    }
    for (list, keys) in [
        ("read_only_keys", &c.epmx.read_only_keys),
        ("hidden_keys", &c.epmx.hidden_keys),
    ] {
        for (i, k) in keys.iter().enumerate() {
            if !is_valid_metadata_key(k) {
                e.add(
                    format!("core.epmx.{list}[{i}]"),
                    format!("{k:?} must match ^[a-zA-Z0-9_]+$"),
                );
            }
        }
    }
    let durability = match c.synchronous.as_str() {
        "full" => crate::store::Durability::Full,
        "normal" => crate::store::Durability::Normal,
        other => {
            e.add(
                "core.synchronous",
                format!("unknown value {other:?} (expected \"full\" or \"normal\")"),
            );
            crate::store::Durability::Full
        }
    };
    if c.extension_timeout_ms == 0 {
        e.add("core.extension_timeout_ms", "must be at least 1");
    }
    let mut extensions = Vec::new();
    for (i, x) in c.extensions.iter().enumerate() {
        let external = x.kind == "external";
        let kind = if external {
            if c.nats.is_none() {
                e.add(
                    format!("core.extensions[{i}].kind"),
                    "\"external\" instances are reached over NATS: configure [core.nats]",
                );
            }
            Some(crate::ext::ExtensionKind::External)
        } else {
            crate::ext::ExtensionKind::for_default_instance(&x.kind)
                .filter(|k| *k != crate::ext::ExtensionKind::Bcx)
        };
        if kind.is_none() {
            e.add(
                format!("core.extensions[{i}].kind"),
                format!("{:?} is not one of dcx, epmx, cmx, cex, external", x.kind),
            );
        }
        if !crate::ext::is_valid_instance_name(&x.instance) {
            e.add(
                format!("core.extensions[{i}].instance"),
                format!("{:?} must match ^[a-z0-9_-]+$", x.instance),
            );
        } else if (!external
            && crate::ext::ExtensionKind::for_default_instance(&x.instance).is_some())
            || c.extensions[..i].iter().any(|o| o.instance == x.instance)
        {
            e.add(
                format!("core.extensions[{i}].instance"),
                format!("{:?} is already an instance", x.instance),
            );
        }
        if let Some(k) = kind {
            extensions.push((x.instance.clone(), k));
        }
    }
    for (key, v) in [
        ("connected_key", &c.epl.connected_key),
        ("connectivity_ts_key", &c.epl.connectivity_ts_key),
    ] {
        if !is_valid_metadata_key(v) {
            e.add(
                format!("core.epl.{key}"),
                format!("{v:?} must match ^[a-zA-Z0-9_]+$"),
            );
        }
    }
    if let Some(a) = &c.api {
        if a.admin_username.is_empty() {
            e.add("core.api.admin_username", "must not be empty");
        }
        if let Err(msg) = crate::ccm::check_hash(a.admin_password_hash.expose()) {
            e.add("core.api.admin_password_hash", msg.to_string());
        }
        if c.http.is_none() {
            e.add(
                "core.api",
                "the REST API is served on the HTTP listener: add [core.http]",
            );
        }
    }
    if c.mqtt.max_packet_size < 1024 {
        e.add("core.mqtt.max_packet_size", "must be at least 1024 bytes");
    }
    if let Some(h) = &c.http {
        if h.max_connections == 0 {
            e.add("core.http.max_connections", "must be at least 1");
        }
        if h.idle_timeout_secs == 0 {
            e.add("core.http.idle_timeout_secs", "must be at least 1");
        }
    }
    if c.mqtt.max_connections == 0 {
        e.add("core.mqtt.max_connections", "must be at least 1");
    }
    if !(1..=MOST_REQUESTS_IN_FLIGHT).contains(&c.mqtt.max_requests_in_flight) {
        e.add(
            "core.mqtt.max_requests_in_flight",
            format!("must be 1 to {MOST_REQUESTS_IN_FLIGHT}"),
        );
    }
    if c.mqtt.connect_timeout_secs == 0 {
        e.add("core.mqtt.connect_timeout_secs", "must be at least 1");
    }
    if c.max_payload_bytes == 0 {
        e.add("core.max_payload_bytes", "must be at least 1");
    }
    let mut versions = HashSet::new();
    for (i, a) in c.applications.iter().enumerate() {
        if !crate::kp1::is_valid_application_name(&a.name) {
            e.add(
                format!("core.applications[{i}].name"),
                format!("{:?} must match ^[a-z0-9_-]+$", a.name),
            );
        }
        for (j, v) in a.versions.iter().enumerate() {
            if AppVersionName::new(v).is_err() {
                e.add(
                    format!("core.applications[{i}].versions[{j}]"),
                    format!("{v:?} must match ^[a-z0-9_-]+$"),
                );
            }
            if !versions.insert(v.clone()) {
                e.add(
                    format!("core.applications[{i}].versions[{j}]"),
                    format!("app version {v:?} is listed twice"),
                );
            }
        }
    }
    for (i, ep) in c.endpoints.iter().enumerate() {
        if EndpointToken::new(ep.token.expose()).is_err() {
            e.add(
                format!("core.endpoints[{i}].token"),
                "must be non-empty without '+', '#', '/' or '.'",
            );
        }
        if !versions.contains(&ep.app_version) {
            e.add(
                format!("core.endpoints[{i}].app_version"),
                format!(
                    "{:?} is not listed in [[core.applications]]",
                    ep.app_version
                ),
            );
        }
        if let Some(id) = &ep.id {
            if !crate::epr::is_valid_endpoint_id(id) {
                e.add(
                    format!("core.endpoints[{i}].id"),
                    format!("{id:?} must match ^[a-zA-Z0-9._~-]+$"),
                );
            }
        }
        for k in ep.metadata.keys() {
            if !is_valid_metadata_key(k) {
                e.add(
                    format!("core.endpoints[{i}].metadata.{k}"),
                    "key must match ^[a-zA-Z0-9_]+$",
                );
            }
        }
    }
    for (i, cred) in c.credentials.iter().enumerate() {
        if cred.username.is_empty() {
            e.add(
                format!("core.credentials[{i}].username"),
                "must not be empty",
            );
        }
        if let Err(msg) = crate::ccm::check_hash(cred.password_hash.expose()) {
            e.add(
                format!("core.credentials[{i}].password_hash"),
                msg.to_string(),
            );
        }
        match cred.scope() {
            None => e.add(
                format!("core.credentials[{i}].applications"),
                "missing: name the applications this credential may act for (a credential is bound to them), or [\"*\"] for every application",
            ),
            Some(scope) => {
                if let Some(msg) = scope.problem() {
                    e.add(format!("core.credentials[{i}].applications"), msg);
                }
            }
        }
    }
    if c.bcx.max_file_bytes == 0 || c.bcx.quota_bytes < c.bcx.max_file_bytes {
        e.add(
            "core.bcx",
            "max_file_bytes must be at least 1 and quota_bytes at least max_file_bytes",
        );
    }
    if c.bcx.directory.is_empty() {
        e.add("core.bcx.directory", "must not be empty");
    }
    let config = CoreConfig {
        database: resolve(state_dir, &c.database),
        durability,
        mqtt: MqttListener {
            listen,
            max_packet_size: c.mqtt.max_packet_size,
            max_connections: c.mqtt.max_connections,
            connect_timeout: Duration::from_secs(c.mqtt.connect_timeout_secs),
            max_requests_in_flight: c.mqtt.max_requests_in_flight,
            allow_anonymous: c.mqtt.allow_anonymous,
        },
        http,
        tls,
        bcx: crate::ext::bcx::BcxConfig {
            directory: resolve(state_dir, &c.bcx.directory),
            max_file_bytes: c.bcx.max_file_bytes,
            quota_bytes: c.bcx.quota_bytes,
        },
        epmx: crate::ext::EpmxPolicy {
            read_only: c.epmx.read_only_keys.clone(),
            hidden: c.epmx.hidden_keys.clone(),
        },
        extension_timeout: Duration::from_millis(c.extension_timeout_ms),
        extensions,
        api: c.api.as_ref().map(|a| crate::api::AdminAuth {
            username: a.admin_username.clone(),
            password_hash: a.admin_password_hash.clone(),
        }),
        epl: crate::epl::EplConfig {
            connected_key: c.epl.connected_key.clone(),
            connectivity_ts_key: c.epl.connectivity_ts_key.clone(),
            idle_timeout: (c.epl.idle_timeout_secs > 0)
                .then(|| Duration::from_secs(c.epl.idle_timeout_secs)),
        },
        max_payload_bytes: c.max_payload_bytes,
        applications: c.applications,
        endpoints: c.endpoints,
        credentials: c.credentials,
        nats: c.nats.map(|n| super::nats::validate(n, state_dir, e)),
    };
    super::check_listen_clashes(&config.listeners(), e);
    refuse_known_passwords_beyond_loopback(&config, e);
    config
}

/// Passwords published with kp-gateway (the demo's) or guessed first by anyone.
pub const KNOWN_PASSWORDS: [&str; 6] =
    ["demo", "admin", "password", "changeme", "kaa", "kp-gateway"];

/// A credential whose password is one of [`KNOWN_PASSWORDS`] is refused when a listener
/// it opens is reachable beyond this machine: copying the demo and changing `listen` to
/// `0.0.0.0` must not serve `admin/demo` to the LAN.
fn refuse_known_passwords_beyond_loopback(c: &CoreConfig, e: &mut Problems) {
    let known = |hash: &str| {
        KNOWN_PASSWORDS
            .iter()
            .find(|p| crate::ccm::verify_hash(hash, p))
            .copied()
    };
    let exposed = |addr: std::net::SocketAddr| !addr.ip().is_loopback();
    if let (Some(api), Some(http)) = (&c.api, &c.http) {
        if exposed(http.listen) {
            if let Some(p) = known(api.password_hash.expose()) {
                e.add(
                    "core.api.admin_password_hash",
                    format!(
                        "is the well-known password {p:?}, and core.http.listen ({}) is reachable from the network: set your own (kp-gateway hash-password) or listen on 127.0.0.1",
                        http.listen
                    ),
                );
            }
        }
    }
    let mqtt_exposed = c.listeners().into_iter().any(|(_, a)| exposed(a));
    if mqtt_exposed {
        for (i, cred) in c.credentials.iter().enumerate() {
            if let Some(p) = known(cred.password_hash.expose()) {
                e.add(
                    format!("core.credentials[{i}].password_hash"),
                    format!(
                        "is the well-known password {p:?} on a listener reachable from the network: set your own"
                    ),
                );
            }
        }
    }
}
