//! Revoked sessions, remembered on every instance: a logout must hold everywhere and for as long
//! as the token could still be presented, not only on the instance that saw it and only while a
//! pub/sub message was in flight.
//!
//! - Each instance keeps a bounded cache of the revocations it knows (its own, and those other
//!   instances announced): a known revoked session is refused without a round trip. Past
//!   `maxRevokedSessions` the entry that expires first is forgotten (and counted).
//! - With Redis, revocations are also stored there (keys under the app's prefix, TTL = the
//!   token's remaining life, capped by `maxTokenLifetime`), and a handshake or a token refresh
//!   asks the store. If the store cannot answer in time the handshake is refused (fail closed):
//!   a possibly revoked session is never accepted.
//! - A write that fails while Redis is away stays pending and is retried every second; after a
//!   reconnect every known revocation is written again (Redis may have restarted empty) and the
//!   instance checks its open sockets against the store.
//!
//! A revocation is of one session (`sid`), or of a user as a whole: every token of that user
//! issued before the revocation.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::auth::User;

/// How long a handshake waits for the store before it is refused (fail closed).
pub(crate) const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Open sockets checked against the store in one round, after a reconnect.
const RECHECK_CHUNK: usize = 500;
/// How often pending writes are retried while the store is away.
pub(crate) const RETRY_EVERY: Duration = Duration::from_secs(1);

/// One revocation, as stored and as announced to the other instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Revocation {
    /// `<collection>:<id>`.
    pub(crate) user: String,
    /// The session; `None`: every session of the user issued before `at_ms`.
    pub(crate) sid: Option<String>,
    /// When it was revoked (milliseconds since the epoch).
    pub(crate) at_ms: u64,
    /// Seconds since the epoch after which no token it covers is valid any more.
    pub(crate) expires: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Key {
    Session(String, String),
    User(String),
}

impl Revocation {
    fn key(&self) -> Key {
        match &self.sid {
            Some(sid) => Key::Session(self.user.clone(), sid.clone()),
            None => Key::User(self.user.clone()),
        }
    }

    /// The seconds it still has to live in the store (at least 1).
    pub(crate) fn ttl(&self, now_s: u64) -> u64 {
        self.expires.saturating_sub(now_s).max(1)
    }
}

/// What the store knows of one session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Found {
    /// The session itself was revoked.
    pub(crate) session: bool,
    /// The user was revoked as a whole at this time (milliseconds).
    pub(crate) user_at_ms: Option<u64>,
}

/// What a check asks about: a user and, if the token has one, its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Query {
    pub(crate) user: String,
    pub(crate) sid: Option<String>,
}

pub(crate) type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send>>;

/// Where revocations are shared between instances (Redis).
pub(crate) trait RevocationStore: Send + Sync + 'static {
    fn write(&self, items: Vec<Revocation>) -> StoreFuture<()>;
    /// One answer per query, in order.
    fn lookup(&self, queries: Vec<Query>) -> StoreFuture<Vec<Found>>;
}

/// A token as a check sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Token<'a> {
    pub(crate) user: &'a str,
    pub(crate) sid: Option<&'a str>,
    /// `iat` (seconds); `None` counts as issued before any revocation.
    pub(crate) issued_at: Option<u64>,
}

impl<'a> Token<'a> {
    pub(crate) fn of(user: &'a User, sid: Option<&'a str>) -> Token<'a> {
        Token {
            user: &user.key,
            sid,
            issued_at: user.issued_at(),
        }
    }
}

/// Whether a user-wide revocation at `at_ms` covers a token issued at `iat` (seconds). A token
/// issued in the very second of the revocation may be either side of it: it is covered when
/// `same_second` says so (no one else can tell; with `verifyUser`, Payload can).
fn covers(at_ms: u64, issued_at: Option<u64>, same_second: bool) -> bool {
    let Some(iat) = issued_at else { return true };
    let at_s = at_ms / 1000;
    iat < at_s || (iat == at_s && same_second)
}

/// The revocations one instance holds, bounded: past `max` the one expiring first goes.
#[derive(Debug)]
struct Cache {
    max: usize,
    entries: HashMap<Key, (u64, u64)>,
    by_expiry: BTreeSet<(u64, Key)>,
}

impl Cache {
    fn new(max: usize) -> Cache {
        Cache {
            max: max.max(1),
            entries: HashMap::new(),
            by_expiry: BTreeSet::new(),
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Adds (or widens) a revocation; returns how many entries were evicted to make room.
    fn insert(&mut self, r: &Revocation, now_s: u64) -> u64 {
        self.prune(now_s);
        if r.expires < now_s {
            return 0;
        }
        let key = r.key();
        let (at_ms, expires) = match self.entries.get(&key) {
            Some(&(at, exp)) => {
                self.by_expiry.remove(&(exp, key.clone()));
                (at.max(r.at_ms), exp.max(r.expires))
            }
            None => (r.at_ms, r.expires),
        };
        self.entries.insert(key.clone(), (at_ms, expires));
        self.by_expiry.insert((expires, key));
        let mut evicted = 0;
        while self.entries.len() > self.max {
            let Some((_, key)) = self.by_expiry.pop_first() else {
                break;
            };
            self.entries.remove(&key);
            evicted += 1;
        }
        evicted
    }

    fn prune(&mut self, now_s: u64) {
        while let Some((exp, _)) = self.by_expiry.first() {
            if *exp >= now_s {
                break;
            }
            let (_, key) = self.by_expiry.pop_first().expect("first exists");
            self.entries.remove(&key);
        }
    }

    fn remove(&mut self, r: &Revocation) {
        let key = r.key();
        if let Some((at, exp)) = self.entries.get(&key).copied() {
            // Only what was written: a newer revocation of the same key stays pending.
            if at <= r.at_ms && exp <= r.expires {
                self.entries.remove(&key);
                self.by_expiry.remove(&(exp, key));
            }
        }
    }

    fn found(&self, token: &Token, now_s: u64) -> Found {
        // Nearly always: no revocation known, and no key to build for the lookup.
        if self.entries.is_empty() {
            return Found::default();
        }
        let live = |k: &Key| self.entries.get(k).filter(|(_, exp)| *exp >= now_s).copied();
        Found {
            session: token
                .sid
                .is_some_and(|sid| live(&Key::Session(token.user.to_string(), sid.to_string())).is_some()),
            user_at_ms: live(&Key::User(token.user.to_string())).map(|(at, _)| at),
        }
    }

    fn all(&self) -> Vec<Revocation> {
        self.entries
            .iter()
            .map(|(key, &(at_ms, expires))| match key {
                Key::Session(user, sid) => Revocation {
                    user: user.clone(),
                    sid: Some(sid.clone()),
                    at_ms,
                    expires,
                },
                Key::User(user) => Revocation {
                    user: user.clone(),
                    sid: None,
                    at_ms,
                    expires,
                },
            })
            .collect()
    }
}

/// The answer of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Valid,
    Revoked,
    /// The store could not be asked in time: refuse (fail closed).
    Unavailable,
}

/// Counters `stats().sessions` reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Revocations this instance holds now.
    pub revoked: u64,
    /// Revocations waiting to be written to the store.
    pub pending: u64,
    /// Revocations forgotten to stay within `maxRevokedSessions`.
    pub evicted: u64,
    /// Checks the store could not answer (each refused its handshake or refresh).
    pub check_failures: u64,
}

pub(crate) struct Revocations {
    max_lifetime: u64,
    cache: Mutex<Cache>,
    pending: Mutex<Cache>,
    /// Whether the last write failed: what is written next is announced again.
    failing: std::sync::atomic::AtomicBool,
    store: OnceLock<Arc<dyn RevocationStore>>,
    wake: Notify,
    evicted: AtomicU64,
    check_failures: AtomicU64,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Revocations {
    pub(crate) fn new(max_entries: usize, max_token_lifetime: Duration) -> Revocations {
        Revocations {
            max_lifetime: max_token_lifetime.as_secs().max(1),
            cache: Mutex::new(Cache::new(max_entries)),
            pending: Mutex::new(Cache::new(max_entries)),
            failing: false.into(),
            store: OnceLock::new(),
            wake: Notify::new(),
            evicted: AtomicU64::new(0),
            check_failures: AtomicU64::new(0),
        }
    }

    pub(crate) fn set_store(&self, store: Arc<dyn RevocationStore>) {
        let _ = self.store.set(store);
    }

    pub(crate) fn has_store(&self) -> bool {
        self.store.get().is_some()
    }

    /// A revocation made here now: of session `sid` (whose token expires at `exp`, seconds), or
    /// of the whole user. Remembered, and written to the store in the background.
    pub(crate) fn revoke(&self, user_key: &str, sid: Option<&str>, exp: Option<u64>) -> Revocation {
        let at_ms = now_ms();
        let now_s = at_ms / 1000;
        let cap = now_s + self.max_lifetime;
        let expires = match (sid, exp) {
            (Some(_), Some(exp)) => exp.min(cap),
            _ => cap,
        };
        let r = Revocation {
            user: user_key.to_string(),
            sid: sid.map(str::to_string),
            at_ms,
            expires,
        };
        self.learn(&r);
        if self.has_store() {
            self.add_pending(&r, now_s);
            self.wake.notify_one();
        }
        r
    }

    /// A revocation another instance announced.
    pub(crate) fn learn(&self, r: &Revocation) {
        let now_s = now_ms() / 1000;
        let capped = Revocation {
            expires: r.expires.min(now_s + self.max_lifetime),
            ..r.clone()
        };
        let evicted = self.cache.lock().insert(&capped, now_s);
        self.evicted.fetch_add(evicted, Relaxed);
    }

    fn add_pending(&self, r: &Revocation, now_s: u64) {
        let evicted = self.pending.lock().insert(r, now_s);
        self.evicted.fetch_add(evicted, Relaxed);
    }

    /// Whether this instance already knows the token is revoked (no round trip).
    pub(crate) fn known_revoked(&self, token: &Token, same_second: bool) -> bool {
        let found = self.cache.lock().found(token, now_ms() / 1000);
        found.session
            || found
                .user_at_ms
                .is_some_and(|at| covers(at, token.issued_at, same_second))
    }

    /// The full check of a handshake or a refresh: this instance's cache, then the store.
    pub(crate) async fn check(&self, token: Token<'_>, same_second: bool) -> Verdict {
        if self.known_revoked(&token, same_second) {
            return Verdict::Revoked;
        }
        let Some(store) = self.store.get() else {
            return Verdict::Valid;
        };
        // Boxed: without a store (no Redis) a handshake's future need not be as large as this.
        Box::pin(self.ask_store(&**store, token, same_second)).await
    }

    /// The store's answer for a token this instance knows nothing of.
    async fn ask_store(&self, store: &dyn RevocationStore, token: Token<'_>, same_second: bool) -> Verdict {
        let query = Query {
            user: token.user.to_string(),
            sid: token.sid.map(str::to_string),
        };
        match tokio::time::timeout(CHECK_TIMEOUT, store.lookup(vec![query])).await {
            Ok(Ok(found)) => {
                let found = found.first().copied().unwrap_or_default();
                self.remember_found(&token, found);
                if found.session
                    || found
                        .user_at_ms
                        .is_some_and(|at| covers(at, token.issued_at, same_second))
                {
                    Verdict::Revoked
                } else {
                    Verdict::Valid
                }
            }
            _ => {
                self.check_failures.fetch_add(1, Relaxed);
                Verdict::Unavailable
            }
        }
    }

    /// Keeps what the store said, so the next check of it needs no round trip.
    fn remember_found(&self, token: &Token, found: Found) {
        let expires = now_ms() / 1000 + self.max_lifetime;
        if let (true, Some(sid)) = (found.session, token.sid) {
            self.learn(&Revocation {
                user: token.user.to_string(),
                sid: Some(sid.to_string()),
                at_ms: 0,
                expires,
            });
        }
        if let Some(at_ms) = found.user_at_ms {
            self.learn(&Revocation {
                user: token.user.to_string(),
                sid: None,
                at_ms,
                expires,
            });
        }
    }

    /// Which of these tokens are revoked, by the store (`Err`: it could not be asked).
    pub(crate) async fn check_many(&self, tokens: &[Token<'_>], same_second: bool) -> Result<Vec<bool>, String> {
        let Some(store) = self.store.get() else {
            return Ok(tokens.iter().map(|t| self.known_revoked(t, same_second)).collect());
        };
        let mut found = Vec::with_capacity(tokens.len());
        // A chunk at a time: a reconnect with many sockets open does not flood Redis.
        for chunk in tokens.chunks(RECHECK_CHUNK) {
            let queries = chunk
                .iter()
                .map(|t| Query {
                    user: t.user.to_string(),
                    sid: t.sid.map(str::to_string),
                })
                .collect();
            let answers = tokio::time::timeout(CHECK_TIMEOUT, store.lookup(queries))
                .await
                .map_err(|_| "timed out".to_string())??;
            found.extend(answers);
        }
        Ok(tokens
            .iter()
            .zip(found)
            .map(|(t, f)| {
                self.remember_found(t, f);
                self.known_revoked(t, same_second)
            })
            .collect())
    }

    /// After a reconnect: writes every revocation this instance knows again (the store may have
    /// lost them) and retries the pending ones at once.
    pub(crate) fn rewrite_all(&self) {
        if !self.has_store() {
            return;
        }
        let now_s = now_ms() / 1000;
        let all = self.cache.lock().all();
        for r in &all {
            self.add_pending(r, now_s);
        }
        self.wake.notify_one();
    }

    /// Writes pending revocations until `stop`: at once when there are new ones, every
    /// [`RETRY_EVERY`] while the store fails. `announce` is told of those whose write was
    /// delayed, so instances that missed their first announcement (Redis was away) hear of them.
    pub(crate) async fn run_writer(
        self: Arc<Self>,
        announce: impl Fn(&[Revocation]) + Send + 'static,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let Some(store) = self.store.get().cloned() else { return };
        let mut retry = tokio::time::interval(RETRY_EVERY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = retry.tick() => {}
                _ = stop.cancelled() => return,
            }
            let batch = self.pending.lock().all();
            if batch.is_empty() {
                continue;
            }
            let result = tokio::time::timeout(CHECK_TIMEOUT, store.write(batch.clone())).await;
            match result {
                Ok(Ok(())) => {
                    {
                        let mut pending = self.pending.lock();
                        for r in &batch {
                            pending.remove(r);
                        }
                    }
                    if self.failing.swap(false, Relaxed) {
                        crate::info!(
                            "revoked sessions written to Redis again ({} pending were kept)",
                            batch.len()
                        );
                        announce(&batch);
                    }
                }
                Ok(Err(e)) => self.failed(&e),
                Err(_) => self.failed("timed out"),
            }
        }
    }

    fn failed(&self, why: &str) {
        if !self.failing.swap(true, Relaxed) {
            crate::warn!(
                "revoked sessions could not be written to Redis ({why}); they are kept and retried every second"
            );
        }
    }

    pub(crate) fn stats(&self) -> SessionStats {
        SessionStats {
            revoked: self.cache.lock().len() as u64,
            pending: self.pending.lock().len() as u64,
            evicted: self.evicted.load(Relaxed),
            check_failures: self.check_failures.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(user: &str, sid: Option<&str>, at_ms: u64, expires: u64) -> Revocation {
        Revocation {
            user: user.into(),
            sid: sid.map(Into::into),
            at_ms,
            expires,
        }
    }

    fn token<'a>(user: &'a str, sid: Option<&'a str>, iat: Option<u64>) -> Token<'a> {
        Token {
            user,
            sid,
            issued_at: iat,
        }
    }

    #[test]
    fn the_cache_evicts_what_expires_first_and_counts_it() {
        let mut c = Cache::new(3);
        assert_eq!(c.insert(&rev("users:1", Some("a"), 0, 300), 100), 0);
        assert_eq!(c.insert(&rev("users:1", Some("b"), 0, 200), 100), 0);
        assert_eq!(c.insert(&rev("users:2", None, 0, 400), 100), 0);
        assert_eq!(c.insert(&rev("users:3", Some("c"), 0, 500), 100), 1);
        assert_eq!(c.len(), 3);
        assert!(
            !c.found(&token("users:1", Some("b"), None), 100).session,
            "b expired first"
        );
        assert!(c.found(&token("users:1", Some("a"), None), 100).session);
        // Expired entries go before anything is evicted.
        assert_eq!(c.insert(&rev("users:4", Some("d"), 0, 600), 350), 0);
        assert!(!c.found(&token("users:1", Some("a"), None), 350).session);
        assert_eq!(c.len(), 3);
        // Already expired: not kept.
        assert_eq!(c.insert(&rev("users:5", Some("e"), 0, 10), 350), 0);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn a_user_revocation_covers_tokens_issued_before_it() {
        let mut c = Cache::new(10);
        c.insert(&rev("users:1", None, 100_500, 1000), 100);
        let at = c.found(&token("users:1", Some("x"), Some(99)), 100).user_at_ms.unwrap();
        assert_eq!(at, 100_500);
        assert!(covers(at, Some(99), false));
        assert!(!covers(at, Some(101), true), "issued after");
        assert!(
            covers(at, Some(100), true) && !covers(at, Some(100), false),
            "the same second"
        );
        assert!(covers(at, None, false), "no iat");
        assert_eq!(c.found(&token("users:2", Some("x"), Some(1)), 100), Found::default());
        // Widening keeps the later time and the later expiry.
        c.insert(&rev("users:1", None, 50_000, 2000), 100);
        assert_eq!(c.found(&token("users:1", None, None), 1500).user_at_ms, Some(100_500));
    }

    #[test]
    fn remove_leaves_a_newer_revocation_of_the_same_key() {
        let mut c = Cache::new(10);
        let old = rev("users:1", None, 1000, 500);
        c.insert(&old, 100);
        c.insert(&rev("users:1", None, 2000, 500), 100);
        c.remove(&old);
        assert_eq!(c.len(), 1);
        c.remove(&rev("users:1", None, 2000, 500));
        assert_eq!(c.len(), 0);
    }

    /// A store whose answers the test decides (what is under test is the instance's logic:
    /// pending writes, retries, fail closed; the Redis store is tested against a real Redis).
    #[derive(Default)]
    struct Scripted {
        up: std::sync::atomic::AtomicBool,
        written: Mutex<Vec<Revocation>>,
    }

    impl RevocationStore for Arc<Scripted> {
        fn write(&self, items: Vec<Revocation>) -> StoreFuture<()> {
            let me = self.clone();
            Box::pin(async move {
                if !me.up.load(Relaxed) {
                    return Err("down".into());
                }
                me.written.lock().extend(items);
                Ok(())
            })
        }
        fn lookup(&self, queries: Vec<Query>) -> StoreFuture<Vec<Found>> {
            let me = self.clone();
            Box::pin(async move {
                if !me.up.load(Relaxed) {
                    return Err("down".into());
                }
                let written = me.written.lock();
                Ok(queries
                    .iter()
                    .map(|q| Found {
                        session: written
                            .iter()
                            .any(|r| r.user == q.user && r.sid.is_some() && r.sid == q.sid),
                        user_at_ms: written
                            .iter()
                            .filter(|r| r.user == q.user && r.sid.is_none())
                            .map(|r| r.at_ms)
                            .max(),
                    })
                    .collect())
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn writes_wait_while_the_store_is_down_and_checks_fail_closed() {
        let store = Arc::new(Scripted::default());
        let revs = Arc::new(Revocations::new(100, Duration::from_secs(3600)));
        revs.set_store(Arc::new(store.clone()));
        let announced = Arc::new(Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let a = announced.clone();
        tokio::spawn(
            revs.clone()
                .run_writer(move |r| a.lock().extend_from_slice(r), stop.clone()),
        );

        revs.revoke("users:1", Some("s1"), None);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(revs.stats().pending, 1, "kept while the store is down");
        assert_eq!(revs.stats().revoked, 1);
        // Known here: refused without asking; unknown: the store cannot be asked.
        assert_eq!(
            revs.check(token("users:1", Some("s1"), None), false).await,
            Verdict::Revoked
        );
        assert_eq!(
            revs.check(token("users:2", Some("s2"), None), false).await,
            Verdict::Unavailable
        );
        assert_eq!(revs.stats().check_failures, 1);

        store.up.store(true, Relaxed);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(revs.stats().pending, 0);
        assert_eq!(store.written.lock().len(), 1);
        assert_eq!(announced.lock().len(), 1, "a delayed write is announced again");
        assert_eq!(
            revs.check(token("users:2", Some("s2"), None), false).await,
            Verdict::Valid
        );

        // Another instance's store entry is found and then known locally.
        let other = Arc::new(Revocations::new(100, Duration::from_secs(3600)));
        other.set_store(Arc::new(store.clone()));
        assert_eq!(
            other.check(token("users:1", Some("s1"), None), false).await,
            Verdict::Revoked
        );
        assert!(other.known_revoked(&token("users:1", Some("s1"), None), false));
        stop.cancel();
    }

    #[tokio::test]
    async fn open_sockets_are_checked_against_the_store_in_chunks() {
        let store = Arc::new(Scripted::default());
        store.up.store(true, Relaxed);
        store.written.lock().push(rev("users:1", None, 10_000_000, u64::MAX));
        let revs = Revocations::new(100, Duration::from_secs(3600));
        revs.set_store(Arc::new(store.clone()));
        let users: Vec<String> = (0..RECHECK_CHUNK + 3).map(|i| format!("users:{}", i % 3)).collect();
        let tokens: Vec<Token> = users.iter().map(|u| token(u, Some("s"), Some(5))).collect();
        let revoked = revs.check_many(&tokens, false).await.unwrap();
        assert_eq!(revoked.len(), tokens.len());
        for (t, r) in tokens.iter().zip(&revoked) {
            assert_eq!(*r, t.user == "users:1", "{}", t.user);
        }
        // Issued after the revocation: not covered.
        assert_eq!(
            revs.check_many(&[token("users:1", None, Some(20_000))], false).await,
            Ok(vec![false])
        );
        store.up.store(false, Relaxed);
        assert!(revs.check_many(&tokens, false).await.is_err());
    }

    #[test]
    fn without_a_store_nothing_is_pending_and_the_bound_holds() {
        let revs = Revocations::new(2, Duration::from_secs(60));
        for i in 0..5 {
            revs.revoke("users:1", Some(&format!("s{i}")), None);
        }
        let s = revs.stats();
        assert_eq!((s.revoked, s.pending, s.evicted), (2, 0, 3));
        // The token's own expiry is kept when it is sooner than the cap.
        let r = revs.revoke("users:2", Some("x"), Some(now_ms() / 1000 + 5));
        assert_eq!(r.expires, now_ms() / 1000 + 5);
        let r = revs.revoke("users:2", Some("y"), Some(u64::MAX));
        assert!(r.expires <= now_ms() / 1000 + 60, "capped by maxTokenLifetime");
    }
}
