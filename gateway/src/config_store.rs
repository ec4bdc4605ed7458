//! Every configuration the gateway applied, kept in the state directory: who, when, from
//! where, and the full text; which one is active.
//!
//! Layout (`<state_dir>/config/`, mode 0700, files 0600 — they hold secrets):
//! `000012.toml` (the text), `000012.json` (its [`Version`]), `active` (the number in use).
//!
//! Precedence at start (docs: config/README.md, "Where the active configuration lives"):
//! an `active` version (saved from the web page or pushed over 7/CMP) wins over the file
//! `/etc/kp-gateway/gateway.toml`; with no `active`, the file is used and recorded as a
//! version of origin `file` when it differs from the newest one. `kp-gateway config
//! use-file` clears `active` (history stays). Package upgrades never touch this directory,
//! so nothing saved is lost on upgrade.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Versions kept (older ones are deleted as new ones are saved).
pub const KEEP: usize = 20;
/// The store's folder inside the state directory.
pub const DIR: &str = "config";

/// Where a version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The configuration file, as found at a start.
    File,
    /// Saved on the web page (forms or the raw editor).
    Web,
    /// A rollback on the web page to an earlier version.
    Rollback,
    /// Pushed by the platform over 7/CMP.
    Remote,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::File => "file",
            Origin::Web => "web",
            Origin::Rollback => "rollback",
            Origin::Remote => "remote 7/CMP",
        }
    }
}

/// One kept configuration (without its text).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    pub number: u64,
    pub ts_ms: i64,
    pub origin: Origin,
    /// Who: `admin` on the web, the config id over 7/CMP, the file's path.
    pub who: String,
    /// From where: the client address on the web, empty otherwise.
    pub from: String,
    /// What it was: "device boiler added", "rollback to 3", ...
    pub note: String,
}

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("configuration history in {dir}: {source}")]
pub struct StoreError {
    dir: PathBuf,
    source: std::io::Error,
}

/// The configuration history of one state directory.
#[derive(Debug, Clone)]
pub struct ConfigStore {
    dir: PathBuf,
}

impl ConfigStore {
    /// The store of `state_dir` (the folder is made when first written).
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join(DIR),
        }
    }

    fn err(&self, source: std::io::Error) -> StoreError {
        StoreError {
            dir: self.dir.clone(),
            source,
        }
    }

    fn path(&self, n: u64, ext: &str) -> PathBuf {
        self.dir.join(format!("{n:06}.{ext}"))
    }

    /// Every kept version, newest first.
    pub fn list(&self) -> Vec<Version> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut v: Vec<Version> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        v.sort_by_key(|x: &Version| std::cmp::Reverse(x.number));
        v
    }

    /// One version and its text.
    pub fn get(&self, n: u64) -> Option<(Version, String)> {
        let meta = serde_json::from_slice(&std::fs::read(self.path(n, "json")).ok()?).ok()?;
        let text = std::fs::read_to_string(self.path(n, "toml")).ok()?;
        Some((meta, text))
    }

    /// The number of the active version, if one is set.
    pub fn active_number(&self) -> Option<u64> {
        std::fs::read_to_string(self.dir.join("active"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The active version and its text, if one is set and readable.
    pub fn active(&self) -> Option<(Version, String)> {
        self.get(self.active_number()?)
    }

    /// Keeps `text` as a new version; `activate`: it is the one to use from now on.
    pub fn save(
        &self,
        text: &str,
        mut meta: Version,
        activate: bool,
    ) -> Result<Version, StoreError> {
        self.make_dir().map_err(|e| self.err(e))?;
        let number = self.list().first().map_or(1, |v| v.number + 1);
        meta.number = number;
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| self.err(e.into()))?;
        write_atomic(&self.path(number, "toml"), text.as_bytes()).map_err(|e| self.err(e))?;
        write_atomic(&self.path(number, "json"), &json).map_err(|e| self.err(e))?;
        if activate {
            write_atomic(&self.dir.join("active"), number.to_string().as_bytes())
                .map_err(|e| self.err(e))?;
        }
        self.prune();
        Ok(meta)
    }

    /// The file is used again at the next start (history stays).
    pub fn clear_active(&self) -> Result<bool, StoreError> {
        match std::fs::remove_file(self.dir.join("active")) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Records the configuration file as found at a start, unless the newest version
    /// already has exactly this text.
    pub fn note_file(&self, path: &Path, text: &str) -> Result<(), StoreError> {
        let newest = self.list().first().and_then(|v| self.get(v.number));
        if newest.is_some_and(|(_, t)| t == text) {
            return Ok(());
        }
        let meta = Version {
            number: 0,
            ts_ms: crate::now_ms(),
            origin: Origin::File,
            who: path.display().to_string(),
            from: String::new(),
            note: "the configuration file, as read at start".into(),
        };
        self.save(text, meta, false).map(|_| ())
    }

    fn make_dir(&self) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        if self.dir.is_dir() {
            return Ok(());
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
    }

    /// Deletes the oldest versions beyond [`KEEP`] (never the active one).
    fn prune(&self) {
        let active = self.active_number();
        for v in self.list().iter().skip(KEEP) {
            if Some(v.number) == active {
                continue;
            }
            let _ = std::fs::remove_file(self.path(v.number, "json"));
            let _ = std::fs::remove_file(self.path(v.number, "toml"));
        }
    }
}

/// Writes `bytes` to `path` through a fsync'ed temporary file (mode 0600) and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(origin: Origin) -> Version {
        Version {
            number: 0,
            ts_ms: 1,
            origin,
            who: "admin".into(),
            from: "127.0.0.1".into(),
            note: String::new(),
        }
    }

    #[test]
    fn versions_are_numbered_kept_private_and_pruned_but_never_the_active_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::new(dir.path());
        assert!(store.active().is_none() && store.list().is_empty());
        let first = store.save("a = 1\n", meta(Origin::Web), true).unwrap();
        assert_eq!(first.number, 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("config/000001.toml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "history holds secrets: {mode:o}");
        for i in 0..KEEP + 5 {
            store
                .save(&format!("a = {i}\n"), meta(Origin::Web), false)
                .unwrap();
        }
        let list = store.list();
        assert_eq!(list.len(), KEEP + 1, "KEEP newest plus the active one");
        assert_eq!(store.active().unwrap().1, "a = 1\n");
        assert!(store.clear_active().unwrap());
        assert!(store.active().is_none());
    }

    #[test]
    fn the_file_is_recorded_only_when_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::new(dir.path());
        let f = Path::new("/etc/kp-gateway/gateway.toml");
        store.note_file(f, "x = 1\n").unwrap();
        store.note_file(f, "x = 1\n").unwrap();
        assert_eq!(store.list().len(), 1);
        store.note_file(f, "x = 2\n").unwrap();
        let list = store.list();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].origin, Origin::File);
        assert!(store.active().is_none(), "the file is never made active");
    }
}
