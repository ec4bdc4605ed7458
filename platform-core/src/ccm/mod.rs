//! Client credentials (CCM): basic username/password credentials, stored as Argon2 hashes.
//!
//! Plaintext passwords are never stored: config carries a PHC hash string
//! (`kp-gateway hash-password` prints one). Verification is CPU-heavy by design, so
//! [`verify_basic`] runs it on the blocking pool, never on the async runtime.
//! States follow PROTOCOL.md §6: `inactive` becomes `active` on the first successful use;
//! `suspended` and `revoked` credentials are refused.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Deserialize;

use crate::store::{StoreError, StoreHandle};

/// A basic credential as provisioned from config.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BasicCredentialSpec {
    pub username: String,
    /// Argon2 PHC string, e.g. `$argon2id$v=19$m=19456,t=2,p=1$...`.
    pub password_hash: String,
}

impl std::fmt::Debug for BasicCredentialSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicCredentialSpec")
            .field("username", &self.username)
            .field("password_hash", &"<redacted>")
            .finish()
    }
}

/// Result of checking a username/password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Unknown user or wrong password (not distinguished, on purpose).
    BadCredentials,
    /// The credential exists but is suspended or revoked.
    NotAuthorized,
}

/// Checks CONNECT credentials for the listeners; cheap to clone.
#[derive(Debug, Clone)]
pub struct Authenticator {
    store: StoreHandle,
    /// Let clients without user name and password in (they are then known by token only).
    allow_anonymous: bool,
}

impl Authenticator {
    pub fn new(store: StoreHandle, allow_anonymous: bool) -> Self {
        Self {
            store,
            allow_anonymous,
        }
    }

    /// `None`: the client sent no username/password.
    pub async fn check(&self, login: Option<(&str, &str)>) -> Result<Verdict, StoreError> {
        match login {
            None if self.allow_anonymous => Ok(Verdict::Accepted),
            None => Ok(Verdict::NotAuthorized),
            Some((user, password)) => verify_basic(&self.store, user, password).await,
        }
    }
}

/// Hashes a password into an Argon2id PHC string.
pub fn hash_password(password: &str) -> Result<String, StoreError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| StoreError::Invalid(format!("cannot hash password: {e}")))
}

/// Does `password` match the PHC `hash`? (CPU-heavy: call from a blocking thread.)
pub fn verify_hash(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Checks that `hash` is a PHC string this build can verify.
pub fn check_hash(hash: &str) -> Result<(), String> {
    PasswordHash::new(hash).map(|_| ()).map_err(|e| {
        format!("not a PHC password hash ({e}); make one with `kp-gateway hash-password`")
    })
}

/// Inserts or updates credentials (the hash is replaced; the state is kept).
pub fn provision(conn: &mut Connection, creds: &[BasicCredentialSpec]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    for c in creds {
        if c.username.is_empty() {
            return Err(StoreError::Invalid(
                "credential with an empty username".into(),
            ));
        }
        check_hash(&c.password_hash).map_err(StoreError::Invalid)?;
        tx.execute(
            "INSERT INTO credentials_basic(username, password_hash, state) VALUES (?1, ?2, 'inactive')
             ON CONFLICT(username) DO UPDATE SET password_hash = excluded.password_hash",
            params![c.username, c.password_hash],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// Verifies a username/password against the stored hash.
pub async fn verify_basic(
    store: &StoreHandle,
    username: &str,
    password: &str,
) -> Result<Verdict, StoreError> {
    let user = username.to_owned();
    let row: Option<(String, String)> = store
        .call(move |c| {
            Ok(c.query_row(
                "SELECT password_hash, state FROM credentials_basic WHERE username = ?1",
                [&user],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
        })
        .await?;
    let Some((hash, state)) = row else {
        return Ok(Verdict::BadCredentials);
    };
    let password = password.to_owned();
    let ok = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .map_err(|e| StoreError::Invalid(format!("password check failed: {e}")))?;
    if !ok {
        return Ok(Verdict::BadCredentials);
    }
    if state == "suspended" || state == "revoked" {
        return Ok(Verdict::NotAuthorized);
    }
    if state == "inactive" {
        let user = username.to_owned();
        store
            .call(move |c| {
                c.execute(
                    "UPDATE credentials_basic SET state = 'active' WHERE username = ?1 AND state = 'inactive'",
                    [user],
                )?;
                Ok(())
            })
            .await?;
    }
    Ok(Verdict::Accepted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn right_password_is_accepted_and_activates_the_credential() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreHandle::open(&dir.path().join("c.sqlite")).unwrap();
        let hash = hash_password("s3cret").unwrap();
        assert!(!hash.contains("s3cret"));
        let creds = vec![BasicCredentialSpec {
            username: "gw".into(),
            password_hash: hash,
        }];
        store.call(move |c| provision(c, &creds)).await.unwrap();
        assert_eq!(
            verify_basic(&store, "gw", "wrong").await.unwrap(),
            Verdict::BadCredentials
        );
        assert_eq!(
            verify_basic(&store, "nobody", "s3cret").await.unwrap(),
            Verdict::BadCredentials
        );
        assert_eq!(
            verify_basic(&store, "gw", "s3cret").await.unwrap(),
            Verdict::Accepted
        );
        let state: String = store
            .call(|c| Ok(c.query_row("SELECT state FROM credentials_basic", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(state, "active");
    }

    #[tokio::test]
    async fn a_suspended_credential_is_not_authorized() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreHandle::open(&dir.path().join("c.sqlite")).unwrap();
        let creds = vec![BasicCredentialSpec {
            username: "gw".into(),
            password_hash: hash_password("pw").unwrap(),
        }];
        store.call(move |c| provision(c, &creds)).await.unwrap();
        store
            .call(|c| Ok(c.execute("UPDATE credentials_basic SET state='suspended'", [])?))
            .await
            .unwrap();
        assert_eq!(
            verify_basic(&store, "gw", "pw").await.unwrap(),
            Verdict::NotAuthorized
        );
    }

    #[test]
    fn a_plaintext_password_in_place_of_a_hash_is_refused() {
        assert!(check_hash("hunter2").is_err());
    }
}
