//! Client credentials (CCM): basic username/password credentials, stored as Argon2 hashes,
//! and X.509 client certificates, known by their SHA-256 fingerprint.
//!
//! Plaintext passwords are never stored: config carries a PHC hash string
//! (`kp-gateway hash-password` prints one). Verification is CPU-heavy by design, so
//! [`verify_basic`] runs it on the blocking pool, never on the async runtime.
//! States follow docs/protocol.md §6: `inactive` becomes `active` on the first successful use;
//! `suspended` and `revoked` credentials are refused.

pub mod password;
pub mod scope;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Deserialize;

use crate::secret::Secret;
pub use crate::sessions::Identity;
use crate::store::{StoreError, StoreHandle};
use password::{Check, PasswordChecker};

/// A basic credential as provisioned from config.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BasicCredentialSpec {
    pub username: String,
    /// Argon2 PHC string, e.g. `$argon2id$v=19$m=19456,t=2,p=1$...`.
    pub password_hash: Secret,
    /// Applications this credential may act for (`["*"]`: all). Required: a new
    /// credential is bound unless it says otherwise (checked in validation).
    #[serde(default)]
    pub applications: Option<Vec<String>>,
    /// Optionally only these endpoint tokens of those applications.
    #[serde(default)]
    pub endpoints: Vec<String>,
}

impl BasicCredentialSpec {
    /// The scope it asks for (`None` when `applications` is missing).
    pub fn scope(&self) -> Option<scope::Scope> {
        Some(scope::Scope {
            applications: self.applications.clone()?,
            endpoints: self.endpoints.clone(),
        })
    }
}

/// Result of checking a username/password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Too many password checks under way: try again later (nothing was checked).
    Busy,
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
    /// Bounded, cached, throttled password checks (shared by every listener and the API).
    passwords: PasswordChecker,
}

impl Authenticator {
    pub fn new(store: StoreHandle, allow_anonymous: bool, passwords: PasswordChecker) -> Self {
        Self {
            store,
            allow_anonymous,
            passwords,
        }
    }

    /// The store credentials live in.
    pub fn store(&self) -> &StoreHandle {
        &self.store
    }

    /// A copy with another anonymous-access setting (one per listener).
    pub fn with_anonymous(&self, allow_anonymous: bool) -> Self {
        Self {
            store: self.store.clone(),
            allow_anonymous,
            passwords: self.passwords.clone(),
        }
    }

    /// Checks a CONNECT from `addr`. `login`: the user name and password, if sent;
    /// `cert`: the fingerprint of the TLS client certificate, if one was presented. A
    /// presented certificate must be registered (its state decides); otherwise the login
    /// decides.
    pub async fn check(
        &self,
        login: Option<(&str, &str)>,
        cert: Option<&str>,
        addr: Option<std::net::IpAddr>,
    ) -> Result<(Verdict, Identity), StoreError> {
        if let Some(fp) = cert {
            let verdict = verify_x509(&self.store, fp).await?;
            return Ok((verdict, Identity::X509(fp.to_owned())));
        }
        match login {
            None if self.allow_anonymous => Ok((Verdict::Accepted, Identity::Anonymous)),
            None => Ok((Verdict::NotAuthorized, Identity::Anonymous)),
            Some((user, password)) => Ok((
                verify_basic(&self.store, &self.passwords, user, password, addr).await?,
                Identity::Basic(user.to_owned()),
            )),
        }
    }
}

/// The state of a credential or token (docs/protocol.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Inactive,
    Active,
    Suspended,
    Revoked,
}

impl State {
    /// The stored (lower-case) name.
    pub fn as_db(self) -> &'static str {
        match self {
            Self::Inactive => "inactive",
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Revoked => "revoked",
        }
    }

    pub fn from_db(s: &str) -> Result<Self, StoreError> {
        match s {
            "inactive" => Ok(Self::Inactive),
            "active" => Ok(Self::Active),
            "suspended" => Ok(Self::Suspended),
            "revoked" => Ok(Self::Revoked),
            other => Err(StoreError::Corrupt(format!(
                "unknown stored state {other:?}"
            ))),
        }
    }

    /// Whether `self → to` is allowed: `Inactive → Active` (first use, or by hand),
    /// `Active ⇄ Suspended`, `Inactive → Suspended`, any state `→ Revoked` (final).
    /// Setting the current state again is allowed (idempotent), except from `Revoked`.
    pub fn can_become(self, to: State) -> bool {
        use State::*;
        match (self, to) {
            (Revoked, _) => false,
            (_, Revoked) => true,
            (a, b) if a == b => true,
            (Inactive, Active) | (Inactive, Suspended) => true,
            (Active, Suspended) | (Suspended, Active) => true,
            _ => false,
        }
    }

    /// Whether a session using something in this state must end.
    pub fn cuts_sessions(self) -> bool {
        matches!(self, Self::Suspended | Self::Revoked)
    }
}

/// Why a state change was refused.
#[derive(Debug, thiserror::Error)]
pub enum StateChangeError {
    #[error("not found")]
    NotFound,
    #[error("cannot change state from {from:?} to {to:?}")]
    NotAllowed { from: State, to: State },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Which credential table a state change applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Basic,
    X509,
}

impl Kind {
    fn table_and_key(self) -> (&'static str, &'static str) {
        match self {
            Self::Basic => ("credentials_basic", "username"),
            Self::X509 => ("credentials_x509", "fingerprint"),
        }
    }
}

/// Changes a credential's state following [`State::can_become`]; returns the old state.
pub fn set_state(
    conn: &Connection,
    kind: Kind,
    key: &str,
    to: State,
) -> Result<State, StateChangeError> {
    let (table, col) = kind.table_and_key();
    let from: Option<String> = conn
        .query_row(
            &format!("SELECT state FROM {table} WHERE {col} = ?1"),
            [key],
            |r| r.get(0),
        )
        .optional()
        .map_err(StoreError::from)?;
    let from = State::from_db(&from.ok_or(StateChangeError::NotFound)?)?;
    if !from.can_become(to) {
        return Err(StateChangeError::NotAllowed { from, to });
    }
    conn.execute(
        &format!("UPDATE {table} SET state = ?1 WHERE {col} = ?2"),
        params![to.as_db(), key],
    )
    .map_err(StoreError::from)?;
    Ok(from)
}

/// A credential as the REST API shows it (never the hash).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialInfo {
    /// Username (basic) or fingerprint (X.509).
    pub id: String,
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub created_ms: i64,
    /// A basic credential's scope (`None`: unbound).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<scope::Scope>,
}

/// Lists credentials of one kind, or one of them (`key`).
pub fn list(
    conn: &Connection,
    kind: Kind,
    key: Option<&str>,
) -> Result<Vec<CredentialInfo>, StoreError> {
    let sql = match kind {
        Kind::Basic => "SELECT username, state, NULL, created_ms, scope FROM credentials_basic WHERE ?1 IS NULL OR username = ?1 ORDER BY username",
        Kind::X509 => "SELECT fingerprint, state, subject, created_ms, NULL FROM credentials_x509 WHERE ?1 IS NULL OR fingerprint = ?1 ORDER BY fingerprint",
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([key], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, Option<String>>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, state, subject, created_ms, scope) = row?;
        let scope = scope
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("scope of credential {id:?}: {e}")))?;
        out.push(CredentialInfo {
            id,
            state: State::from_db(&state)?,
            subject,
            created_ms,
            scope,
        });
    }
    Ok(out)
}

/// Creates a basic credential (state `Inactive`); false when the username is taken.
pub fn create_basic(
    conn: &Connection,
    username: &str,
    hash: &str,
    scope: &scope::Scope,
) -> Result<bool, StoreError> {
    if username.is_empty() || username.contains(':') {
        return Err(StoreError::Invalid(
            "a username must be non-empty and must not contain ':'".into(),
        ));
    }
    check_hash(hash).map_err(|e| StoreError::Invalid(e.to_string()))?;
    if let Some(p) = scope.problem() {
        return Err(StoreError::Invalid(p));
    }
    let n = conn.execute(
        "INSERT OR IGNORE INTO credentials_basic(username, password_hash, state, created_ms, scope)
         VALUES (?1, ?2, 'inactive', ?3, ?4)",
        params![username, hash, crate::store::now_ms(), scope.to_db()],
    )?;
    Ok(n == 1)
}

/// Normalises a SHA-256 fingerprint: 64 hex digits, colons allowed, any case.
pub fn normalize_fingerprint(s: &str) -> Option<String> {
    let hex: String = s
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// The SHA-256 fingerprint (lower-case hex) of a DER certificate (or of any bytes).
pub fn fingerprint_der(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Registers an X.509 credential (state `Inactive`); false when already registered.
pub fn create_x509(
    conn: &Connection,
    fingerprint: &str,
    subject: &str,
) -> Result<bool, StoreError> {
    let fp = normalize_fingerprint(fingerprint).ok_or_else(|| {
        StoreError::Invalid(format!(
            "{fingerprint:?} is not a SHA-256 fingerprint (64 hex digits)"
        ))
    })?;
    let n = conn.execute(
        "INSERT OR IGNORE INTO credentials_x509(fingerprint, subject, state, created_ms)
         VALUES (?1, ?2, 'inactive', ?3)",
        params![fp, subject, crate::store::now_ms()],
    )?;
    Ok(n == 1)
}

/// Checks a client certificate fingerprint; an inactive one becomes active.
pub async fn verify_x509(store: &StoreHandle, fingerprint: &str) -> Result<Verdict, StoreError> {
    let fp = fingerprint.to_owned();
    store
        .call(move |c| {
            let state: Option<String> = c
                .query_row(
                    "SELECT state FROM credentials_x509 WHERE fingerprint = ?1",
                    [&fp],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(match state.as_deref() {
                None => Verdict::NotAuthorized,
                Some("suspended") | Some("revoked") => Verdict::NotAuthorized,
                Some(s) => {
                    if s == "inactive" {
                        c.execute(
                            "UPDATE credentials_x509 SET state = 'active' WHERE fingerprint = ?1",
                            [&fp],
                        )?;
                    }
                    Verdict::Accepted
                }
            })
        })
        .await
}

/// Hashes a password into an Argon2id PHC string.
pub fn hash_password(password: &str) -> Result<String, StoreError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| StoreError::Internal(format!("cannot hash password: {e}")))
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
pub fn check_hash(hash: &str) -> Result<(), BadHash> {
    PasswordHash::new(hash)
        .map(|_| ())
        .map_err(|e| BadHash(e.to_string()))
}

/// A stored or configured password hash that is not a PHC string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a PHC password hash ({0}); make one with `kp-gateway hash-password`")]
pub struct BadHash(String);

/// Inserts or updates credentials (the hash is replaced; the state is kept).
pub fn provision(conn: &mut Connection, creds: &[BasicCredentialSpec]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    for c in creds {
        if c.username.is_empty() {
            return Err(StoreError::Invalid(
                "credential with an empty username".into(),
            ));
        }
        check_hash(c.password_hash.expose()).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let scope = c.scope().ok_or_else(|| {
            StoreError::Invalid(format!("credential {:?} names no applications", c.username))
        })?;
        tx.execute(
            "INSERT INTO credentials_basic(username, password_hash, state, created_ms, scope) VALUES (?1, ?2, 'inactive', ?3, ?4)
             ON CONFLICT(username) DO UPDATE SET password_hash = excluded.password_hash, scope = excluded.scope",
            params![c.username, c.password_hash.expose(), crate::store::now_ms(), scope.to_db()],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// Verifies a username/password against the stored hash, through the bounded,
/// throttled checker (see [`password`]).
pub async fn verify_basic(
    store: &StoreHandle,
    passwords: &PasswordChecker,
    username: &str,
    password: &str,
    addr: Option<std::net::IpAddr>,
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
    let (hash, state) = match &row {
        Some((h, s)) => (Some(h.as_str()), s.as_str()),
        None => (None, ""),
    };
    match passwords.check(username, hash, password, addr).await {
        Check::Good => {}
        Check::Bad => return Ok(Verdict::BadCredentials),
        Check::Throttled(wait) => {
            log::debug!("ccm: login of {username:?} refused unchecked for {wait:?} more (too many failures)");
            return Ok(Verdict::BadCredentials);
        }
        Check::Busy => return Ok(Verdict::Busy),
    }
    let state = state.to_owned();
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
mod tests;
