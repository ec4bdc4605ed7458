//! Password checks that a login flood cannot turn into an outage.
//!
//! Every Argon2id check uses ~19 MiB and tens of milliseconds of CPU, and it is reachable
//! by anyone who can open a connection. So ([`PasswordChecker`]):
//! - **bounded work:** at most `max_concurrent` checks run at once, on that many worker
//!   threads of their own, and at most `max_waiting` wait for a slot; beyond that a login
//!   is refused at once as [`Check::Busy`] (the client may retry) instead of queueing
//!   memory without bound. Own threads rather than tokio's blocking pool, because the
//!   allocator keeps a freed 19 MiB block in the arena of the thread that used it: spread
//!   over a growing pool of threads, a flood left hundreds of MiB resident for good;
//!   reused by a fixed few, it stays at `max_concurrent` × 19 MiB;
//! - **no re-hashing of good clients:** a verified (user, stored hash, password) is
//!   remembered as a keyed SHA-256 digest (never the password) for [`CACHE_TTL`], so a
//!   site reconnecting after a power cut costs one Argon2 check per client, not one per
//!   connect; a changed stored hash never matches an old entry;
//! - **back-off:** failures are counted per client address and per user name
//!   ([`Throttle`], pure); after [`FREE_FAILURES`] failures in a row a key must wait an
//!   exponentially growing pause (capped at [`MAX_PAUSE`]) before it may try again, and
//!   is refused without hashing meanwhile; a success clears the user's and the
//!   address's record; a login remembered as verified passes regardless (it proves the
//!   password), so good clients keep working during a flood from their own address;
//! - **one check for many identical logins:** clients that send the same user name and
//!   password while a check of exactly that is running wait for its answer instead of
//!   queueing checks of their own (a site of devices sharing a credential, all
//!   reconnecting after a power cut, costs one Argon2 check, not a "busy" for most);
//! - **constant work for unknown users:** an unknown user name is checked against a dummy
//!   hash with the same parameters, so the answer time does not tell which names exist.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};

/// Password checks running at once by default (each holds ~19 MiB while it runs).
pub const DEFAULT_MAX_CONCURRENT: usize = 2;
/// Logins waiting for a check slot by default; more are answered "busy" at once.
pub const DEFAULT_MAX_WAITING: usize = 64;
/// How long a verified login is remembered.
pub const CACHE_TTL: Duration = Duration::from_secs(600);
/// Most remembered logins (the oldest half is dropped beyond).
pub const CACHE_MAX: usize = 4096;
/// Failures in a row a key may have before it must pause.
pub const FREE_FAILURES: u32 = 5;
/// Longest pause imposed on a key.
pub const MAX_PAUSE: Duration = Duration::from_secs(60);
/// Most keys whose failures are tracked (the stalest are forgotten beyond).
pub const THROTTLE_MAX: usize = 10_000;

/// The outcome of a password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The password matches the stored hash.
    Good,
    /// It does not (or the user is unknown: not distinguished).
    Bad,
    /// This address or user failed too often and must wait this long; nothing was hashed.
    Throttled(Duration),
    /// Too many checks are running and waiting; try again later. Nothing was hashed.
    Busy,
}

/// Failure records per key (pure: time is passed in).
#[derive(Debug, Default)]
pub struct Throttle {
    /// key → (failures in a row, not before).
    keys: HashMap<String, (u32, Instant)>,
}

impl Throttle {
    /// How long `key` must still wait, if at all.
    pub fn wait(&self, key: &str, now: Instant) -> Option<Duration> {
        let (_, until) = self.keys.get(key)?;
        (*until > now).then(|| *until - now)
    }

    /// Records a failure; returns the pause now imposed (zero while under the free count).
    pub fn failed(&mut self, key: &str, now: Instant) -> Duration {
        if self.keys.len() >= THROTTLE_MAX && !self.keys.contains_key(key) {
            // Forget the records whose pause is longest over.
            let mut by_age: Vec<(String, Instant)> = self
                .keys
                .iter()
                .map(|(k, (_, u))| (k.clone(), *u))
                .collect();
            by_age.sort_by_key(|(_, u)| *u);
            for (k, _) in by_age.into_iter().take(THROTTLE_MAX / 10) {
                self.keys.remove(&k);
            }
        }
        let entry = self.keys.entry(key.to_owned()).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        let pause = match entry.0.checked_sub(FREE_FAILURES) {
            None | Some(0) => Duration::ZERO,
            Some(over) => Duration::from_secs(1u64 << (over - 1).min(6)).min(MAX_PAUSE),
        };
        entry.1 = now + pause;
        pause
    }

    /// A success: the key starts over.
    pub fn succeeded(&mut self, key: &str) {
        self.keys.remove(key);
    }
}

/// Bounded, cached, throttled Argon2 checks; cheap to clone.
#[derive(Debug, Clone)]
pub struct PasswordChecker {
    slots: Arc<Semaphore>,
    /// Jobs for the hashing threads (there are never more queued than slots).
    jobs: std::sync::mpsc::SyncSender<Job>,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
    /// Random per process: cache digests mean nothing outside it.
    key: Arc<[u8; 32]>,
    /// digest → when it was verified.
    verified: Arc<Mutex<HashMap<String, Instant>>>,
    /// digest → the answer of the check of it now running.
    running: Arc<Mutex<HashMap<String, watch::Sender<Option<bool>>>>>,
    throttle: Arc<Mutex<Throttle>>,
}

impl PasswordChecker {
    pub fn new(max_concurrent: usize, max_waiting: usize) -> Self {
        let mut key = [0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut key);
        let workers = max_concurrent.max(1);
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(workers);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers {
            let rx = rx.clone();
            // The threads end when every checker (and so the sender) is dropped.
            let spawned = std::thread::Builder::new()
                .name(format!("password-{i}"))
                .spawn(move || {
                    // This thread's Argon2 memory, allocated once and reused by every check.
                    let mut memory = Vec::new();
                    loop {
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok(job) = job else { break };
                        job(&mut memory);
                    }
                });
            if let Err(e) = spawned {
                log::error!("ccm: cannot start a password-check thread: {e}");
            }
        }
        Self {
            slots: Arc::new(Semaphore::new(workers)),
            jobs,
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting,
            key: Arc::new(key),
            verified: Arc::default(),
            running: Arc::default(),
            throttle: Arc::default(),
        }
    }

    /// Checks `password` for `user` against `stored` (the user's PHC hash; `None`: the user
    /// is unknown), for a client at `addr` (`None`: no address to throttle by).
    pub async fn check(
        &self,
        user: &str,
        stored: Option<&str>,
        password: &str,
        addr: Option<IpAddr>,
    ) -> Check {
        let now = Instant::now();
        let keys = throttle_keys(user, addr);
        // A login verified a moment ago passes even while its address or user name is
        // throttled: knowing the password is what the throttle guards, so a good client
        // behind the same address as a flood keeps its access.
        let digest = stored.map(|h| self.digest(user, h, password));
        if let Some(d) = &digest {
            if self.remembered(d, now) {
                return Check::Good;
            }
        }
        if let Some(wait) = self.throttled(&keys, now) {
            return Check::Throttled(wait);
        }
        let ok = match &digest {
            Some(d) => self.check_once(d, stored, password).await,
            None => self.hash(stored, password).await,
        };
        let Some(ok) = ok else {
            return Check::Busy;
        };
        let good = ok && stored.is_some();
        if let (true, Some(d)) = (good, digest) {
            self.remember(d, now);
        }
        self.record(&keys, good);
        if good {
            Check::Good
        } else {
            Check::Bad
        }
    }

    fn throttled(&self, keys: &[String], now: Instant) -> Option<Duration> {
        let t = self.throttle.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter().filter_map(|k| t.wait(k, now)).max()
    }

    fn record(&self, keys: &[String], good: bool) {
        let mut t = self.throttle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for k in keys {
            if good {
                t.succeeded(k);
            } else {
                t.failed(k, now);
            }
        }
    }

    /// The answer for `digest`: from the identical check already running, else from a
    /// check of its own that later identical logins wait for. `None`: busy.
    async fn check_once(&self, digest: &str, stored: Option<&str>, password: &str) -> Option<bool> {
        let joined = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            match running.get(digest) {
                Some(tx) => Some(tx.subscribe()),
                None => {
                    running.insert(digest.to_owned(), watch::channel(None).0);
                    None
                }
            }
        };
        if let Some(mut rx) = joined {
            // The running check ended without an answer (busy, or its client left): a
            // check of this login's own, like any other.
            let answer = rx.wait_for(Option::is_some).await.map(|a| *a);
            return match answer {
                Ok(answer) => answer,
                Err(_) => self.hash(stored, password).await,
            };
        }
        // Ends the entry however this check ends (answered, busy, or cancelled).
        struct Running<'a>(&'a PasswordChecker, &'a str);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                let mut running = self.0.running.lock().unwrap_or_else(|p| p.into_inner());
                running.remove(self.1);
            }
        }
        let entry = Running(self, digest);
        let answer = self.hash(stored, password).await;
        if answer == Some(true) && stored.is_some() {
            // Remembered before the entry goes: a login arriving in between finds one or
            // the other.
            self.remember(digest.to_owned(), Instant::now());
        }
        if let Some(tx) = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
        {
            tx.send_replace(answer);
        }
        drop(entry);
        answer
    }

    /// One Argon2 check on the bounded pool; `None` when the pool and its queue are full.
    async fn hash(&self, stored: Option<&str>, password: &str) -> Option<bool> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return None;
                }
                let permit = self.slots.clone().acquire_owned().await;
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                permit.ok()?
            }
        };
        // Unknown users cost the same as known ones.
        let hash = stored.map(str::to_owned);
        let password = password.to_owned();
        let (done, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |memory: &mut Vec<argon2::Block>| {
            let hash = hash.as_deref().unwrap_or_else(|| dummy_hash());
            let ok = verify_reusing(memory, hash, &password);
            // The slot is free before anyone hears the answer.
            drop(permit);
            let _ = done.send(ok);
        });
        // Never blocks: a job is only sent with a slot, and there are as many as threads.
        self.jobs.try_send(job).ok()?;
        Some(answer.await.unwrap_or(false))
    }

    fn digest(&self, user: &str, stored: &str, password: &str) -> String {
        let mut input = Vec::with_capacity(32 + user.len() + stored.len() + password.len() + 2);
        input.extend_from_slice(&self.key[..]);
        for part in [user, stored, password] {
            input.extend_from_slice(part.as_bytes());
            input.push(0);
        }
        super::fingerprint_der(&input)
    }

    fn remembered(&self, digest: &str, now: Instant) -> bool {
        let cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(digest)
            .is_some_and(|at| now.duration_since(*at) < CACHE_TTL)
    }

    fn remember(&self, digest: String, now: Instant) {
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            let mut by_age: Vec<(String, Instant)> =
                cache.iter().map(|(k, v)| (k.clone(), *v)).collect();
            by_age.sort_by_key(|(_, at)| *at);
            for (k, _) in by_age.into_iter().take(CACHE_MAX / 2) {
                cache.remove(&k);
            }
        }
        cache.insert(digest, now);
    }
}

/// One password check for a hashing thread, given the thread's reusable Argon2 memory.
type Job = Box<dyn FnOnce(&mut Vec<argon2::Block>) + Send>;

/// Does `password` match the PHC `hash`? Like [`super::verify_hash`], but computing in
/// `memory` (grown once to the hash's size and kept), so a thread that checks all day
/// holds one block of Argon2 memory instead of asking the allocator for 19 MiB each time
/// (which the allocator then keeps around, growing the process by that much per check).
pub fn verify_reusing(memory: &mut Vec<argon2::Block>, hash: &str, password: &str) -> bool {
    use argon2::password_hash::{Output, PasswordHash};
    let Ok(h) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(params), Ok(algorithm)) = (
        argon2::Params::try_from(&h),
        argon2::Algorithm::try_from(h.algorithm),
    ) else {
        return false;
    };
    let version = match h.version.map(argon2::Version::try_from) {
        None => argon2::Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let (Some(salt), Some(expected)) = (h.salt, h.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, argon2::Block::new());
    }
    let mut out = vec![0u8; expected.len()];
    let argon = argon2::Argon2::new(algorithm, version, params);
    if argon
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut memory[..blocks])
        .is_err()
    {
        return false;
    }
    // Output's equality is constant-time.
    Output::new(&out).is_ok_and(|o| o == expected)
}

/// The keys a login is throttled by: its user name and its address.
fn throttle_keys(user: &str, addr: Option<IpAddr>) -> Vec<String> {
    let mut keys = vec![format!("user:{user}")];
    keys.extend(addr.map(|a| format!("addr:{a}")));
    keys
}

/// A hash with the production parameters that no password matches by accident.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let random: String = rand::distributions::DistString::sample_string(
            &rand::distributions::Alphanumeric,
            &mut rand::thread_rng(),
            32,
        );
        super::hash_password(&random).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checking_in_reused_memory_agrees_with_the_library() {
        let hash = super::super::hash_password("right").unwrap();
        let mut memory = Vec::new();
        assert!(verify_reusing(&mut memory, &hash, "right"));
        assert!(!verify_reusing(&mut memory, &hash, "wrong"));
        assert!(super::super::verify_hash(&hash, "right"));
        assert!(!verify_reusing(&mut memory, "not a hash", "right"));
        let len = memory.len();
        assert!(verify_reusing(&mut memory, &hash, "right"));
        assert_eq!(memory.len(), len, "memory is reused, not grown");
    }

    #[test]
    fn five_failures_are_free_then_the_pause_doubles_up_to_the_cap() {
        let mut t = Throttle::default();
        let now = Instant::now();
        for _ in 0..FREE_FAILURES {
            assert_eq!(t.failed("k", now), Duration::ZERO);
        }
        assert_eq!(t.wait("k", now), None);
        assert_eq!(t.failed("k", now), Duration::from_secs(1));
        assert_eq!(t.wait("k", now), Some(Duration::from_secs(1)));
        assert_eq!(t.failed("k", now), Duration::from_secs(2));
        for _ in 0..20 {
            t.failed("k", now);
        }
        assert_eq!(t.failed("k", now), MAX_PAUSE);
        assert_eq!(t.wait("k", now + MAX_PAUSE), None);
        t.succeeded("k");
        assert_eq!(t.failed("k", now), Duration::ZERO);
    }

    #[test]
    fn the_throttle_forgets_the_stalest_keys_when_full() {
        let mut t = Throttle::default();
        let now = Instant::now();
        for i in 0..THROTTLE_MAX + 1 {
            t.failed(&format!("k{i}"), now);
        }
        assert!(t.keys.len() <= THROTTLE_MAX);
    }

    #[tokio::test]
    async fn a_good_password_passes_a_bad_one_fails_and_an_unknown_user_looks_the_same() {
        let hash = super::super::hash_password("right").unwrap();
        let c = PasswordChecker::new(2, 8);
        assert_eq!(c.check("u", Some(&hash), "right", None).await, Check::Good);
        assert_eq!(c.check("u", Some(&hash), "wrong", None).await, Check::Bad);
        assert_eq!(c.check("nobody", None, "right", None).await, Check::Bad);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn identical_logins_at_once_share_one_check() {
        let hash = super::super::hash_password("right").unwrap();
        // One slot, no queue: without sharing, all but one of each 50 would be "busy".
        let c = PasswordChecker::new(1, 0);
        let mut logins = Vec::new();
        for _ in 0..50 {
            let (c, hash) = (c.clone(), hash.clone());
            logins.push(tokio::spawn(async move {
                c.check("u", Some(&hash), "other-password", None).await
            }));
        }
        let mut bad = 0;
        for l in logins {
            let a = l.await.unwrap();
            assert!(matches!(a, Check::Bad | Check::Busy), "{a:?}");
            bad += usize::from(a == Check::Bad);
        }
        assert!(bad >= 1);
        let mut logins = Vec::new();
        for _ in 0..50 {
            let (c, hash) = (c.clone(), hash.clone());
            logins.push(tokio::spawn(async move {
                c.check("v", Some(&hash), "right", None).await
            }));
        }
        for l in logins {
            assert_eq!(l.await.unwrap(), Check::Good);
        }
        assert!(
            c.running.lock().unwrap().is_empty(),
            "no check left registered"
        );
    }

    #[tokio::test]
    async fn a_remembered_login_is_not_hashed_again_but_a_changed_hash_is() {
        let hash = super::super::hash_password("right").unwrap();
        let c = PasswordChecker::new(1, 0);
        assert_eq!(c.check("u", Some(&hash), "right", None).await, Check::Good);
        // No room to hash at all now: only the cache can answer.
        let _all = c.slots.clone().acquire_many_owned(1).await.unwrap();
        assert_eq!(c.check("u", Some(&hash), "right", None).await, Check::Good);
        assert_eq!(c.check("u", Some(&hash), "wrong", None).await, Check::Busy);
        let other = super::super::hash_password("right").unwrap();
        assert_eq!(c.check("u", Some(&other), "right", None).await, Check::Busy);
    }

    #[tokio::test]
    async fn an_unknown_user_costs_a_real_check() {
        let c = PasswordChecker::new(1, 0);
        let _all = c.slots.clone().acquire_many_owned(1).await.unwrap();
        // It needed a hashing slot, like a known user would: no shortcut for unknown names.
        assert_eq!(c.check("nobody", None, "x", None).await, Check::Busy);
    }

    #[tokio::test]
    async fn a_verified_client_passes_while_its_address_is_throttled() {
        let hash = super::super::hash_password("right").unwrap();
        let c = PasswordChecker::new(2, 8);
        let addr: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(
            c.check("u", Some(&hash), "right", Some(addr)).await,
            Check::Good
        );
        for _ in 0..=FREE_FAILURES {
            c.check("u", Some(&hash), "wrong", Some(addr)).await;
        }
        assert!(matches!(
            c.check("u", Some(&hash), "wrong", Some(addr)).await,
            Check::Throttled(_)
        ));
        assert_eq!(
            c.check("u", Some(&hash), "right", Some(addr)).await,
            Check::Good
        );
    }

    #[tokio::test]
    async fn repeated_failures_from_one_address_are_refused_without_hashing() {
        let hash = super::super::hash_password("right").unwrap();
        let c = PasswordChecker::new(2, 8);
        let addr: IpAddr = "192.0.2.7".parse().unwrap();
        for i in 0..=FREE_FAILURES {
            let user = format!("guess{i}");
            assert_eq!(
                c.check(&user, Some(&hash), "wrong", Some(addr)).await,
                Check::Bad
            );
        }
        assert!(matches!(
            c.check("u", Some(&hash), "right", Some(addr)).await,
            Check::Throttled(_)
        ));
        // Another address with the right password is not held up by it.
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert_eq!(
            c.check("u", Some(&hash), "right", Some(other)).await,
            Check::Good
        );
    }
}
