//! `[core.nats]` raw → runtime: servers, one way to log in, TLS files, the names this core
//! goes by on NATS.

use std::path::Path;
use std::str::FromStr;

use super::raw::RawCoreNats;
use super::{resolve, Problems};
use crate::bus::nats::{NatsAuth, NatsSettings};
use crate::bus::subjects::{is_plain_token, Names};

/// Validates `[core.nats]`; problems are reported under `core.nats.`.
pub fn validate(n: RawCoreNats, state_dir: &Path, e: &mut Problems) -> NatsSettings {
    if n.servers.is_empty() {
        e.add(
            "core.nats.servers",
            "list at least one server (nats://host:port)",
        );
    }
    for (i, s) in n.servers.iter().enumerate() {
        if let Err(err) = async_nats::ServerAddr::from_str(s) {
            e.add(
                format!("core.nats.servers[{i}]"),
                format!("{s:?} is not a NATS server address: {err}"),
            );
        }
    }
    let ways = usize::from(n.user.is_some() || n.password.is_some())
        + usize::from(n.token.is_some())
        + usize::from(n.creds_file.is_some());
    if ways > 1 {
        e.add(
            "core.nats",
            "set one way to log in: user and password, token, or creds_file",
        );
    }
    let auth = match (n.user, n.password, n.token, n.creds_file) {
        (Some(user), Some(password), _, _) => NatsAuth::UserPassword { user, password },
        (Some(_), None, _, _) => {
            e.add("core.nats.password", "user is set: set its password too");
            NatsAuth::None
        }
        (None, Some(_), _, _) => {
            e.add("core.nats.user", "password is set: set the user too");
            NatsAuth::None
        }
        (None, None, Some(t), _) => NatsAuth::Token(t),
        (None, None, None, Some(f)) => NatsAuth::CredsFile(resolve(state_dir, &f)),
        (None, None, None, None) => NatsAuth::None,
    };
    let tls_client = match (n.tls_cert_file, n.tls_key_file) {
        (Some(c), Some(k)) => Some((resolve(state_dir, &c), resolve(state_dir, &k))),
        (None, None) => None,
        _ => {
            e.add(
                "core.nats.tls_cert_file",
                "tls_cert_file and tls_key_file go together",
            );
            None
        }
    };
    let has_replica_id = n.replica_id.is_some();
    let replica_id = n.replica_id.unwrap_or_else(|| {
        let id = uuid::Uuid::new_v4().simple().to_string();
        format!("kpc-{}", &id[..12])
    });
    for (key, v) in [
        ("replica_id", &replica_id),
        ("kpc_instance", &n.kpc_instance),
        ("epr_instance", &n.epr_instance),
        ("epts_instance", &n.epts_instance),
    ] {
        if !is_plain_token(v) || v.contains('$') {
            e.add(
                format!("core.nats.{key}"),
                format!("{v:?} must be one NATS subject token (no '.', '*', '>', '%', spaces)"),
            );
        }
    }
    if let Some(owner) = &n.registry_owner {
        if !is_plain_token(owner) || owner.contains('$') {
            e.add(
                "core.nats.registry_owner",
                format!("{owner:?} must be a replica ID (one NATS subject token)"),
            );
        }
        if !has_replica_id {
            e.add(
                "core.nats.replica_id",
                "with registry_owner, set this replica's ID (the owner is found by it)",
            );
        }
    }
    if let Some(p) = &n.ecap_provider {
        if !is_plain_token(p) || p.contains('$') {
            e.add(
                "core.nats.ecap_provider",
                format!("{p:?} must be a service instance name (one NATS subject token)"),
            );
        }
    }
    if n.ecap_provider.is_some() && n.registry_owner.as_ref().is_some_and(|o| *o != replica_id) {
        e.add(
            "core.nats.ecap_provider",
            "a registry mirror takes its tokens from the owner: set ecap_provider on the owner only",
        );
    }
    if n.queue_capacity == 0 {
        e.add("core.nats.queue_capacity", "must be at least 1");
    }
    NatsSettings {
        servers: n.servers,
        auth,
        tls_ca_file: n.tls_ca_file.map(|f| resolve(state_dir, &f)),
        tls_client,
        tls_required: n.tls_required,
        names: Names {
            kpc: n.kpc_instance,
            epr: n.epr_instance,
            epts: n.epts_instance,
            replica_id,
        },
        queue_capacity: n.queue_capacity,
        registry_owner: n.registry_owner,
        ecap_provider: n.ecap_provider,
    }
}
