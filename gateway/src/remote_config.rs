//! Remote configuration of the gateway's field side over 7/CMP.
//!
//! The gateway's own endpoint observes `kp1/<avn>/cmx/<token>/config/json`. A pushed
//! `{"configId", "config"}` whose `config` is `{"modbus": {...}, "devices": [...]}` (the
//! same shape as the TOML sections) replaces the local file's field side. It is validated
//! with the file's other sections exactly like a local edit; a bad one is answered on
//! `/applied/json` with 400 and every error, and the running configuration stays. A good
//! one is saved in the state directory (so it survives restarts), applied by restarting
//! the field side and the upstream session (the buffer, and everything in it, stays), and
//! answered with 200 once the new session is up. Connection settings, the core and the
//! gateway's identity cannot be changed remotely: a mistake there could cut the gateway
//! off from the platform that would have to fix it.

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigErrors};
pub use crate::upstream::cmp::{RemoteConfig, Verdict};

/// File in the state directory holding the last applied remote configuration.
pub const SAVED_FILE: &str = "remote-config.json";

/// Validates a remote configuration against the local file's text.
pub fn validate(base_toml: &str, remote: &RemoteConfig) -> Result<Config, ConfigErrors> {
    Config::with_remote_field_side(base_toml, &remote.config)
}

/// Validates `remote` and saves it (blocking: file I/O and fsync; run it off the
/// runtime). `Ok`: the configuration to apply; `Err`: the refusal to report.
pub fn judge(base_toml: &str, state_dir: &Path, remote: &RemoteConfig) -> Result<Config, Verdict> {
    let refuse = |status, reason: String| Verdict {
        config_id: remote.config_id.clone(),
        status,
        reason,
    };
    let config = validate(base_toml, remote).map_err(|e| refuse(400, e.0.join("; ")))?;
    save(state_dir, remote).map_err(|e| {
        log::error!(
            "cannot save remote configuration {:?} in {}: {e}",
            remote.config_id,
            state_dir.display()
        );
        refuse(500, "cannot save the configuration".into())
    })?;
    Ok(config)
}

fn saved_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SAVED_FILE)
}

/// Saves atomically (temp file, fsync, rename).
pub fn save(state_dir: &Path, remote: &RemoteConfig) -> std::io::Result<()> {
    use std::io::Write;
    let path = saved_path(state_dir);
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(remote).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)
}

/// The local text with its field side replaced by `remote`'s (for the configuration
/// history; comments elsewhere in the file stay). `None` when the remote part cannot be
/// written as TOML (it is still applied; only its history entry is missing).
pub fn merged_text(base: &str, remote: &RemoteConfig) -> Option<String> {
    let mut doc: toml_edit::DocumentMut = base.parse().ok()?;
    let obj = remote.config.as_object()?;
    let mut part = toml::Table::new();
    for key in ["modbus", "devices"] {
        if let Some(v) = obj.get(key) {
            part.insert(key.into(), toml::Value::try_from(v).ok()?);
        }
    }
    let part: toml_edit::DocumentMut = toml::to_string(&part).ok()?.parse().ok()?;
    doc.remove("modbus");
    doc.remove("devices");
    for (k, v) in part.iter() {
        doc.insert(k, v.clone());
    }
    Some(doc.to_string())
}

/// Forgets the saved remote configuration (a local save replaced it).
pub fn forget(state_dir: &Path) {
    match std::fs::remove_file(saved_path(state_dir)) {
        Ok(()) => log::info!("the saved remote configuration is replaced by a local one"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("cannot remove the saved remote configuration: {e}"),
    }
}

/// The saved remote configuration, if any (an unreadable file is reported and ignored).
pub fn load(state_dir: &Path) -> Option<RemoteConfig> {
    let path = saved_path(state_dir);
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(r) => Some(r),
        Err(e) => {
            log::error!(
                "{}: unreadable saved remote configuration, ignored: {e}",
                path.display()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BASE: &str = r#"
[upstream]
host = "h"
[gateway]
token = "gw"
app_version = "gw-v1"
"#;

    #[test]
    fn a_valid_field_side_replaces_the_local_one() {
        let remote = RemoteConfig {
            config_id: "c1".into(),
            config: json!({
                "modbus": {"buses": [{"name": "b", "kind": "tcp", "address": "127.0.0.1:502"}]},
                "devices": [{"name": "d", "token": "t", "app_version": "a-v1",
                             "modbus": {"bus": "b"}, "points": [{"name": "x", "address": 1, "type": "u16"}]}]
            }),
        };
        let c = validate(BASE, &remote).unwrap();
        assert_eq!((c.buses.len(), c.devices.len()), (1, 1));
        assert_eq!(
            c.upstream.unwrap().host,
            "h",
            "the connection comes from the local file"
        );
    }

    #[test]
    fn every_error_is_reported_and_other_sections_are_refused() {
        let remote = RemoteConfig {
            config_id: "c2".into(),
            config: json!({
                "upstream": {"host": "evil"},
                "devices": [{"name": "d", "token": "t", "app_version": "A", "simulated": {}, "points": []}]
            }),
        };
        let e = validate(BASE, &remote).unwrap_err().0;
        assert!(
            e.iter().any(|l| l.starts_with("config.upstream: only")),
            "{e:?}"
        );
        let remote = RemoteConfig {
            config_id: "c3".into(),
            config: json!({"devices": [{"name": "d", "token": "t", "app_version": "A", "simulated": {}, "points": []}]}),
        };
        let e = validate(BASE, &remote).unwrap_err().0;
        assert!(
            e.iter().any(|l| l.starts_with("devices[0].app_version")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|l| l.starts_with("devices[0].points")),
            "{e:?}"
        );
    }

    #[test]
    fn the_merged_text_keeps_the_local_sections_and_validates_the_same() {
        let remote = RemoteConfig {
            config_id: "c4".into(),
            config: json!({
                "modbus": {"buses": [{"name": "b", "kind": "tcp", "address": "127.0.0.1:502"}]},
                "devices": [{"name": "d", "token": "t", "app_version": "a-v1",
                             "modbus": {"bus": "b"}, "points": [{"name": "x", "address": 1, "type": "u16"}]}]
            }),
        };
        let text = merged_text(&format!("# local\n{BASE}"), &remote).unwrap();
        assert!(text.contains("# local") && text.contains("host = \"h\""));
        let c = Config::from_toml(&text).unwrap();
        assert_eq!((c.buses.len(), c.devices.len()), (1, 1));
    }

    #[test]
    fn saved_configs_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), None);
        let r = RemoteConfig {
            config_id: "c9".into(),
            config: json!({"devices": []}),
        };
        save(dir.path(), &r).unwrap();
        assert_eq!(load(dir.path()), Some(r));
    }
}
