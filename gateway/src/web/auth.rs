//! Who may use the web page: claiming with the one-time setup code, the admin password
//! (an Argon2id hash in the state directory), sessions with an idle timeout and a CSRF
//! token each, and login throttling per client address.
//!
//! Files (`<state_dir>/web/`, mode 0700, files 0600): `admin` (the PHC hash) and, until
//! the device is claimed, `setup-code`. `kp-gateway reset-admin` deletes `admin` and
//! writes a fresh code; the running page notices (it looks at the file on every request)
//! and ends every session.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use platform_core::ccm::password::{Check, PasswordChecker};
use rand::RngCore;

use crate::config_store::write_atomic;

/// The web page's folder inside the state directory.
pub const DIR: &str = "web";
/// Shortest admin password accepted.
pub const MIN_PASSWORD: usize = 10;
/// Most sessions at once (the oldest is ended beyond it).
pub const MAX_SESSIONS: usize = 64;
/// The one user name of the page.
pub const ADMIN: &str = "admin";

/// Random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A setup code a person can type: 12 letters and digits (no 0/O/1/I), in groups of 4.
pub fn new_setup_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut b = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut b);
    let chars: Vec<char> = b
        .iter()
        .map(|x| ALPHABET[usize::from(*x) % ALPHABET.len()] as char)
        .collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// Compares what a person typed with the code: case, spaces and dashes do not matter;
/// the time taken does not depend on where they differ.
pub fn code_matches(typed: &str, code: &str) -> bool {
    let norm = |s: &str| -> Vec<u8> {
        s.bytes()
            .filter(|b| b.is_ascii_alphanumeric())
            .map(|b| b.to_ascii_uppercase())
            .collect()
    };
    let (a, b) = (norm(typed), norm(code));
    if a.len() != b.len() || b.is_empty() {
        return false;
    }
    a.iter().zip(&b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a password cannot be the admin's.
pub fn password_problem(password: &str, repeated: &str) -> Option<String> {
    if password != repeated {
        return Some("the two passwords differ".into());
    }
    if password.chars().count() < MIN_PASSWORD {
        return Some(format!("use at least {MIN_PASSWORD} characters"));
    }
    let lower = password.to_lowercase();
    if platform_core::config::validate::KNOWN_PASSWORDS
        .iter()
        .any(|k| lower.starts_with(k) && lower.len() < k.len() + 4)
    {
        return Some("this password is too easy to guess".into());
    }
    None
}

/// One logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub csrf: String,
    pub last_seen: Instant,
    pub from: IpAddr,
}

#[derive(Debug, Default)]
struct AdminCache {
    /// (modified time, length) of the file when read; `None`: not read or absent.
    stamp: Option<(SystemTime, u64)>,
    hash: Option<String>,
}

/// Why a claim was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimError {
    #[error("this gateway is already claimed; log in instead")]
    AlreadyClaimed,
    #[error("wrong setup code (it is in the journal and in {0})")]
    WrongCode(String),
    #[error("{0}")]
    Password(String),
    #[error("cannot save the admin password: {0}")]
    Io(String),
}

/// Why a login was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoginError {
    #[error("wrong password")]
    Wrong,
    #[error("too many failed logins from this address; wait {0} s")]
    Throttled(u64),
    #[error("the gateway is busy checking other logins; try again")]
    Busy,
    #[error("not claimed yet: use the setup code")]
    NotClaimed,
}

/// Admin password, setup code and sessions of one state directory.
#[derive(Debug)]
pub struct Auth {
    dir: PathBuf,
    idle: Duration,
    admin: Mutex<AdminCache>,
    sessions: Mutex<HashMap<String, Session>>,
    passwords: PasswordChecker,
    /// Failed setup codes per address (the throttle of the password checker, reused).
    codes: Mutex<platform_core::ccm::password::Throttle>,
}

impl Auth {
    pub fn new(state_dir: &Path, idle: Duration) -> Self {
        Self {
            dir: state_dir.join(DIR),
            idle,
            admin: Mutex::default(),
            sessions: Mutex::default(),
            // One Argon2 check at a time (19 MiB each), a few waiting: a login flood
            // cannot take the memory of a Pi.
            passwords: PasswordChecker::new(1, 8),
            codes: Mutex::default(),
        }
    }

    pub fn setup_code_path(&self) -> PathBuf {
        self.dir.join("setup-code")
    }

    fn admin_path(&self) -> PathBuf {
        self.dir.join("admin")
    }

    /// The admin's hash, re-read when the file changed; a change or removal (reset-admin)
    /// ends every session.
    pub fn admin_hash(&self) -> Option<String> {
        let path = self.admin_path();
        let stamp = std::fs::metadata(&path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        let mut cache = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        if cache.stamp != stamp || (stamp.is_some() && cache.hash.is_none()) {
            let hash = stamp.and_then(|_| std::fs::read_to_string(&path).ok());
            let hash = hash.map(|h| h.trim().to_owned()).filter(|h| !h.is_empty());
            if cache.hash.is_some() && cache.hash != hash {
                self.sessions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
            }
            cache.hash = hash;
            cache.stamp = stamp;
        }
        cache.hash.clone()
    }

    pub fn is_claimed(&self) -> bool {
        self.admin_hash().is_some()
    }

    /// Unclaimed: makes sure a setup code exists (written 0600, logged once when new)
    /// and returns it.
    pub fn ensure_setup_code(&self) -> std::io::Result<Option<String>> {
        if self.is_claimed() {
            return Ok(None);
        }
        let path = self.setup_code_path();
        if let Ok(code) = std::fs::read_to_string(&path) {
            if !code.trim().is_empty() {
                return Ok(Some(code.trim().to_owned()));
            }
        }
        make_private_dir(&self.dir)?;
        let code = new_setup_code();
        write_atomic(&path, format!("{code}\n").as_bytes())?;
        log::info!(
            "web page: not claimed yet. Open the page and enter the setup code {code} (also in {})",
            path.display()
        );
        Ok(Some(code))
    }

    /// Claims the gateway: right code, acceptable password → the admin hash is saved and
    /// the code is gone for good.
    pub async fn claim(
        &self,
        from: IpAddr,
        code: &str,
        password: &str,
        repeated: &str,
    ) -> Result<(), ClaimError> {
        if self.is_claimed() {
            return Err(ClaimError::AlreadyClaimed);
        }
        let key = from.to_string();
        let wrong = || ClaimError::WrongCode(self.setup_code_path().display().to_string());
        if self
            .codes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .wait(&key, Instant::now())
            .is_some()
        {
            return Err(wrong());
        }
        let expected = self
            .ensure_setup_code()
            .map_err(|e| ClaimError::Io(e.to_string()))?
            .unwrap_or_default();
        if !code_matches(code, &expected) {
            self.codes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .failed(&key, Instant::now());
            log::warn!("web page: wrong setup code from {from}");
            return Err(wrong());
        }
        if let Some(p) = password_problem(password, repeated) {
            return Err(ClaimError::Password(p));
        }
        let password = password.to_owned();
        let hash =
            tokio::task::spawn_blocking(move || platform_core::ccm::hash_password(&password))
                .await
                .map_err(|e| ClaimError::Io(e.to_string()))?
                .map_err(|e| ClaimError::Io(e.to_string()))?;
        make_private_dir(&self.dir).map_err(|e| ClaimError::Io(e.to_string()))?;
        write_atomic(&self.admin_path(), format!("{hash}\n").as_bytes())
            .map_err(|e| ClaimError::Io(e.to_string()))?;
        let _ = std::fs::remove_file(self.setup_code_path());
        log::info!("web page: claimed from {from}; the setup code is used up");
        Ok(())
    }

    /// Checks the admin password for a client at `from` (throttled per address).
    pub async fn login(&self, from: IpAddr, password: &str) -> Result<(), LoginError> {
        let Some(hash) = self.admin_hash() else {
            return Err(LoginError::NotClaimed);
        };
        match self
            .passwords
            .check(ADMIN, Some(&hash), password, Some(from))
            .await
        {
            Check::Good => Ok(()),
            Check::Bad => {
                log::warn!("web page: failed login from {from}");
                Err(LoginError::Wrong)
            }
            Check::Throttled(d) => Err(LoginError::Throttled(d.as_secs().max(1))),
            Check::Busy => Err(LoginError::Busy),
        }
    }

    /// Starts a session; returns its id (the cookie) and its CSRF token.
    pub fn start_session(&self, from: IpAddr) -> (String, String) {
        let id = random_hex(32);
        let csrf = random_hex(32);
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| now.duration_since(s.last_seen) < self.idle);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                last_seen: now,
                from,
            },
        );
        (id, csrf)
    }

    /// The live session with this id (touched), if any.
    pub fn session(&self, id: &str) -> Option<Session> {
        // A reset-admin ends sessions: look at the file first.
        self.admin_hash()?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let s = sessions.get_mut(id)?;
        if now.duration_since(s.last_seen) >= self.idle {
            sessions.remove(id);
            return None;
        }
        s.last_seen = now;
        Some(s.clone())
    }

    pub fn end_session(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// Makes `dir` (mode 0700) if missing.
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// `kp-gateway reset-admin`: forgets the admin password and writes a new setup code
/// (owned like the state directory, so the service can read it). Returns the code.
pub fn reset_admin(state_dir: &Path) -> std::io::Result<String> {
    let dir = state_dir.join(DIR);
    make_private_dir(&dir)?;
    match std::fs::remove_file(dir.join("admin")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let code = new_setup_code();
    let path = dir.join("setup-code");
    write_atomic(&path, format!("{code}\n").as_bytes())?;
    // Run as root for the service user: hand the files to the state directory's owner.
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(state_dir)?;
    let (uid, gid) = (owner.uid(), owner.gid());
    for p in [&dir, &path] {
        rustix::fs::chown(
            p,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )
        .map_err(std::io::Error::from)?;
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_codes_are_typable_and_compared_loosely() {
        let c = new_setup_code();
        assert_eq!(c.len(), 14);
        assert!(code_matches(&c.to_lowercase().replace('-', " "), &c));
        assert!(!code_matches("", &c));
        assert!(!code_matches("ABCD-EFGH-JKLM", "ABCD-EFGH-JKLN"));
        assert_ne!(new_setup_code(), c);
    }

    #[test]
    fn weak_or_mistyped_passwords_are_refused() {
        assert!(password_problem("short", "short").is_some());
        assert!(password_problem("a-long-password-1", "a-long-password-2").is_some());
        assert!(password_problem("password12", "password12").is_some());
        assert!(password_problem("correct horse battery", "correct horse battery").is_none());
    }

    #[tokio::test]
    async fn the_setup_code_claims_once_then_the_password_logs_in() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::new(dir.path(), Duration::from_secs(60));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let code = auth.ensure_setup_code().unwrap().unwrap();
        let on_disk = std::fs::read_to_string(auth.setup_code_path()).unwrap();
        assert_eq!(on_disk.trim(), code);
        assert!(matches!(
            auth.claim(ip, "WRONG-CODE-1234", "long enough pw", "long enough pw")
                .await,
            Err(ClaimError::WrongCode(_))
        ));
        auth.claim(ip, &code, "long enough pw", "long enough pw")
            .await
            .unwrap();
        assert!(!auth.setup_code_path().exists(), "single use");
        assert_eq!(
            auth.claim(ip, &code, "another password", "another password")
                .await,
            Err(ClaimError::AlreadyClaimed)
        );
        assert_eq!(
            auth.login(ip, "not it at all").await,
            Err(LoginError::Wrong)
        );
        auth.login(ip, "long enough pw").await.unwrap();
        let (id, csrf) = auth.start_session(ip);
        assert_eq!(auth.session(&id).unwrap().csrf, csrf);
        // reset-admin (another process) ends the session and re-opens setup.
        let new_code = reset_admin(dir.path()).unwrap();
        assert!(auth.session(&id).is_none());
        assert_eq!(auth.ensure_setup_code().unwrap(), Some(new_code));
    }

    #[tokio::test]
    async fn failed_logins_are_throttled_per_address() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::new(dir.path(), Duration::from_secs(60));
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let code = auth.ensure_setup_code().unwrap().unwrap();
        auth.claim(ip, &code, "long enough pw", "long enough pw")
            .await
            .unwrap();
        let mut throttled = false;
        for _ in 0..10 {
            if let Err(LoginError::Throttled(_)) = auth.login(ip, "wrong wrong").await {
                throttled = true;
                break;
            }
        }
        assert!(throttled, "ten wrong passwords in a row must be throttled");
    }

    #[test]
    fn idle_sessions_end() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(DIR)).unwrap();
        std::fs::write(dir.path().join(DIR).join("admin"), "$argon2id$x\n").unwrap();
        let auth = Auth::new(dir.path(), Duration::from_millis(0));
        let (id, _) = auth.start_session("127.0.0.1".parse().unwrap());
        assert!(auth.session(&id).is_none());
    }
}
