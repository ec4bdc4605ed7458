//! BCX, binary data collection (KaaIoT's binary uploads): its whole behaviour.
//!
//! 1. Over 1/KP an endpoint asks `kp1/<avn>/bcx/<token>/token` (any payload) and gets
//!    `{"token": "<upload token>"}` on `/status` — also without a request ID, since that is
//!    how KaaIoT's Python client asks (docs/protocol.md §3).
//! 2. It uploads with `POST /bcx/api/v1/binary-data?name=<file>` on the core's HTTP
//!    listener, header `X-Auth-Token: <upload token>`, the raw bytes as the body.
//!
//! Invariants: an upload token names one endpoint and expires after [`TOKEN_LIFETIME_MS`];
//! a file is at most `max_file_bytes`, an endpoint's files together at most
//! `quota_bytes` (413 beyond either; a replaced file's old size does not count); a file
//! lands under `<directory>/<endpoint id>/<name>` only complete (written to a temporary
//! file, synced, renamed), and its row is written after the rename, so the listing never
//! names a partial file. Names are reduced to `[A-Za-z0-9._-]` (others become `_`).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use rand::distributions::{Alphanumeric, DistString};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::store::StoreError;

/// How long an upload token stays valid.
pub const TOKEN_LIFETIME_MS: i64 = 24 * 3600 * 1000;
/// Default largest single upload.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Default total of one endpoint's files.
pub const DEFAULT_QUOTA_BYTES: u64 = 256 * 1024 * 1024;

/// Where and how much BCX stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BcxConfig {
    /// Files go under `<directory>/<endpoint id>/`.
    pub directory: PathBuf,
    pub max_file_bytes: u64,
    pub quota_bytes: u64,
}

/// Why an upload was not stored; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("missing or unknown upload token (ask kp1/<app version>/bcx/<token>/token)")]
    BadToken,
    #[error("the file name is empty or not allowed")]
    BadName,
    #[error("the file is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the endpoint's files would exceed its quota of {0} bytes")]
    OverQuota(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One stored file, as the REST API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredFile {
    pub name: String,
    pub size: u64,
    pub uploaded_ms: i64,
}

/// Issues an upload token for an endpoint (and forgets expired ones).
pub fn issue_token(conn: &Connection, endpoint_id: &str, now: i64) -> Result<String, StoreError> {
    conn.execute(
        "DELETE FROM bcx_tokens WHERE expires_ms <= ?1",
        params![now],
    )?;
    let token = Alphanumeric.sample_string(&mut rand::thread_rng(), 32);
    conn.execute(
        "INSERT INTO bcx_tokens(token, endpoint_id, expires_ms) VALUES (?1, ?2, ?3)",
        params![token, endpoint_id, now + TOKEN_LIFETIME_MS],
    )?;
    Ok(token)
}

/// The endpoint an unexpired upload token belongs to.
pub fn token_endpoint(
    conn: &Connection,
    token: &str,
    now: i64,
) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT endpoint_id FROM bcx_tokens WHERE token = ?1 AND expires_ms > ?2",
            params![token, now],
            |r| r.get(0),
        )
        .optional()?)
}

/// The `{"token"}` answer to a token request.
pub fn token_payload(token: &str) -> Vec<u8> {
    serde_json::json!({ "token": token })
        .to_string()
        .into_bytes()
}

/// A file name reduced to safe characters; `None` for an empty or dot-only name.
pub fn safe_name(name: &str) -> Option<String> {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let ok = !safe.is_empty() && !safe.chars().all(|c| c == '.') && safe.len() <= 255;
    ok.then_some(safe)
}

/// Checks an upload against the size bound and the endpoint's quota (the old size of a
/// file being replaced does not count).
pub fn check_room(
    conn: &Connection,
    config: &BcxConfig,
    endpoint_id: &str,
    name: &str,
    size: u64,
) -> Result<(), UploadError> {
    if size > config.max_file_bytes {
        return Err(UploadError::TooLarge(config.max_file_bytes));
    }
    let used: i64 = conn
        .query_row(
            "SELECT coalesce(sum(size), 0) FROM bcx_files WHERE endpoint_id = ?1 AND name != ?2",
            params![endpoint_id, name],
            |r| r.get(0),
        )
        .map_err(StoreError::from)?;
    if u64::try_from(used).unwrap_or(0) + size > config.quota_bytes {
        return Err(UploadError::OverQuota(config.quota_bytes));
    }
    Ok(())
}

/// Where a file of an endpoint lives.
pub fn file_path(config: &BcxConfig, endpoint_id: &str, name: &str) -> PathBuf {
    config.directory.join(endpoint_id).join(name)
}

/// Writes the bytes completely (temporary file, fsync, rename); blocking.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), UploadError> {
    let io = |source| UploadError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("part");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Records a stored file (after it is complete on disk).
pub fn record_file(
    conn: &Connection,
    endpoint_id: &str,
    name: &str,
    size: u64,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO bcx_files(endpoint_id, name, size, uploaded_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(endpoint_id, name) DO UPDATE SET size = excluded.size,
             uploaded_ms = excluded.uploaded_ms",
        params![endpoint_id, name, size as i64, now],
    )?;
    Ok(())
}

/// An endpoint's files, by name.
pub fn files(conn: &Connection, endpoint_id: &str) -> Result<Vec<StoredFile>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, size, uploaded_ms FROM bcx_files WHERE endpoint_id = ?1 ORDER BY name",
    )?;
    let rows = stmt
        .query_map(params![endpoint_id], |r| {
            Ok(StoredFile {
                name: r.get(0)?,
                size: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                uploaded_ms: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

impl super::Extensions {
    /// Stores an upload made with `token`: checks the token, the name, the size and the
    /// quota, writes the file completely (off the runtime), then lists it.
    pub async fn upload_binary(
        &self,
        token: &str,
        name: &str,
        bytes: bytes::Bytes,
    ) -> Result<StoredFile, UploadError> {
        let name = safe_name(name).ok_or(UploadError::BadName)?;
        let size = bytes.len() as u64;
        let now = crate::store::now_ms();
        let (t, n, cfg) = (token.to_owned(), name.clone(), self.bcx.clone());
        let endpoint_id = self
            .store
            .call(move |c| {
                let Some(ep) = token_endpoint(c, &t, now)? else {
                    return Ok(Err(UploadError::BadToken));
                };
                Ok(check_room(c, &cfg, &ep, &n, size).map(|()| ep))
            })
            .await??;
        let path = file_path(&self.bcx, &endpoint_id, &name);
        tokio::task::spawn_blocking(move || write_file(&path, &bytes))
            .await
            .map_err(|e| UploadError::Io {
                path: PathBuf::from(&name),
                source: std::io::Error::other(e),
            })??;
        let (ep, n) = (endpoint_id.clone(), name.clone());
        self.store
            .call(move |c| record_file(c, &ep, &n, size, now))
            .await?;
        log::info!("bcx: {endpoint_id} uploaded {name:?} ({size} bytes)");
        Ok(StoredFile {
            name,
            size,
            uploaded_ms: now,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MIGRATIONS;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        for m in MIGRATIONS {
            c.execute_batch(m).unwrap();
        }
        c.execute_batch(
            "INSERT INTO applications VALUES ('a');
             INSERT INTO app_versions VALUES ('a-v1', 'a');
             INSERT INTO endpoints VALUES ('ep1', 'a-v1', 0);",
        )
        .unwrap();
        c
    }

    fn config(dir: &Path) -> BcxConfig {
        BcxConfig {
            directory: dir.to_owned(),
            max_file_bytes: 10,
            quota_bytes: 15,
        }
    }

    #[test]
    fn an_upload_token_names_its_endpoint_until_it_expires() {
        let c = db();
        let t = issue_token(&c, "ep1", 1_000).unwrap();
        assert_eq!(
            token_endpoint(&c, &t, 2_000).unwrap().as_deref(),
            Some("ep1")
        );
        assert_eq!(
            token_endpoint(&c, &t, 1_000 + TOKEN_LIFETIME_MS).unwrap(),
            None
        );
        assert_eq!(token_endpoint(&c, "guess", 2_000).unwrap(), None);
    }

    #[test]
    fn names_are_reduced_to_safe_characters() {
        assert_eq!(
            safe_name("logs/2026-12-01.txt").unwrap(),
            "logs_2026-12-01.txt"
        );
        assert_eq!(safe_name("../../etc/passwd").unwrap(), ".._.._etc_passwd");
        assert_eq!(safe_name(".."), None);
        assert_eq!(safe_name(""), None);
    }

    #[test]
    fn the_size_bound_and_the_quota_are_kept_and_a_replacement_does_not_count_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (c, cfg) = (db(), config(dir.path()));
        assert!(matches!(
            check_room(&c, &cfg, "ep1", "a", 11),
            Err(UploadError::TooLarge(10))
        ));
        check_room(&c, &cfg, "ep1", "a", 10).unwrap();
        record_file(&c, "ep1", "a", 10, 1).unwrap();
        assert!(matches!(
            check_room(&c, &cfg, "ep1", "b", 6),
            Err(UploadError::OverQuota(15))
        ));
        check_room(&c, &cfg, "ep1", "b", 5).unwrap();
        check_room(&c, &cfg, "ep1", "a", 10).unwrap(); // replacing "a"
    }

    #[test]
    fn a_written_file_is_complete_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let (c, cfg) = (db(), config(dir.path()));
        let p = file_path(&cfg, "ep1", "x.bin");
        write_file(&p, b"\x00\x01\x02").unwrap();
        record_file(&c, "ep1", "x.bin", 3, 7).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"\x00\x01\x02");
        assert!(!p.with_extension("part").exists());
        assert_eq!(
            files(&c, "ep1").unwrap(),
            vec![StoredFile {
                name: "x.bin".into(),
                size: 3,
                uploaded_ms: 7
            }]
        );
    }
}
