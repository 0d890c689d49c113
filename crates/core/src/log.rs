//! Leveled logging: to the host's logger when it gave one (a [`Sink`], installed on the threads
//! of the server's runtimes), else to stderr.
//!
//! Two rules hold for every line:
//! - one line per kind per episode (`Episodes`): a kind is a call site, an episode a run of
//!   occurrences less than `EPISODE_GAP` apart, so a failure repeated per message or per retry
//!   (Redis down, the descriptor limit, a broken rule) is one line, not thousands; a long episode
//!   is reported again every `EPISODE_REMINDER` with how many lines it held back;
//! - no secret: every line goes through [`redact`] (tokens, cookies, passwords, URL
//!   credentials). Callers log ids, codes and counts, never document data.
//!
//! The level comes from `PAYLOAD_REALTIME_LOG` (error, warn, info, debug, off); without it,
//! warn for stderr and info for a host's logger (which has its own level).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    /// The logger method it goes to.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// Occurrences of one kind less than this apart are one episode (one line).
pub(crate) const EPISODE_GAP: Duration = Duration::from_secs(60);

/// A long episode is logged again this often, with the number of lines it held back.
pub(crate) const EPISODE_REMINDER: Duration = Duration::from_secs(600);

/// Episodes remembered before those that are over are forgotten.
const MAX_EPISODES: usize = 1024;

/// The host's logger: takes a line without waiting, or says `false` (its queue is full).
pub trait LogOut: Send + Sync {
    fn line(&self, level: Level, text: &str) -> bool;
}

/// Where the lines of one server go, and the count of those its queue had no room for.
pub struct Sink {
    pub out: Box<dyn LogOut>,
    pub dropped: Arc<AtomicU64>,
}

thread_local! {
    static SINK: RefCell<Option<Arc<Sink>>> = const { RefCell::new(None) };
}

/// Sends this thread's lines to `sink` (called as each thread of a server's runtimes starts).
pub(crate) fn set_thread_sink(sink: Option<Arc<Sink>>) {
    SINK.with(|s| *s.borrow_mut() = sink);
}

/// The level from `PAYLOAD_REALTIME_LOG`, if set.
fn env_level() -> Option<Option<Level>> {
    static LEVEL: OnceLock<Option<Option<Level>>> = OnceLock::new();
    *LEVEL.get_or_init(|| match std::env::var("PAYLOAD_REALTIME_LOG").as_deref() {
        Ok("error") => Some(Some(Level::Error)),
        Ok("warn") => Some(Some(Level::Warn)),
        Ok("info") => Some(Some(Level::Info)),
        Ok("debug") => Some(Some(Level::Debug)),
        Ok("off") | Ok("none") => Some(None),
        _ => None,
    })
}

pub fn enabled(level: Level) -> bool {
    let max = match env_level() {
        Some(max) => max,
        None if SINK.with(|s| s.borrow().is_some()) => Some(Level::Info),
        None => Some(Level::Warn),
    };
    max.is_some_and(|max| level <= max)
}

/// One kind's episode: when it was last seen and logged, and what it held back since.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Episode {
    seen: Instant,
    logged: Instant,
    held: u64,
}

impl Episode {
    /// An occurrence at `now` of a kind last seen as `prev`: `Some(held back lines)` when it is
    /// to be logged, `None` when it belongs to an episode already logged.
    pub(crate) fn observe(prev: Option<&mut Episode>, now: Instant) -> (Option<u64>, Episode) {
        match prev {
            Some(e)
                if now.saturating_duration_since(e.seen) < EPISODE_GAP
                    && now.saturating_duration_since(e.logged) < EPISODE_REMINDER =>
            {
                e.seen = now;
                e.held += 1;
                (None, *e)
            }
            prev => {
                let held = prev.map_or(0, |e| e.held);
                (
                    Some(held),
                    Episode {
                        seen: now,
                        logged: now,
                        held: 0,
                    },
                )
            }
        }
    }
}

/// The episodes of every kind, by call site and sink.
struct Episodes(Mutex<HashMap<(&'static str, usize), Episode>>);

fn episodes() -> &'static Episodes {
    static E: OnceLock<Episodes> = OnceLock::new();
    E.get_or_init(|| Episodes(Mutex::new(HashMap::new())))
}

/// Logs a line of `kind` (its call site) unless its episode was logged already. Use the macros.
pub fn emit(level: Level, kind: &'static str, args: std::fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let sink = SINK.with(|s| s.borrow().clone());
    let key = (kind, sink.as_ref().map_or(0, |s| Arc::as_ptr(s) as usize));
    let held = {
        let mut all = episodes().0.lock();
        let now = Instant::now();
        let (log, episode) = Episode::observe(all.get_mut(&key), now);
        // Kinds are call sites, but sinks come and go with servers (a dev reload starts new
        // ones): past a bound, episodes that are over are forgotten.
        if all.len() >= MAX_EPISODES {
            all.retain(|_, e| now.saturating_duration_since(e.seen) < EPISODE_GAP);
        }
        all.insert(key, episode);
        match log {
            Some(held) => held,
            None => return,
        }
    };
    let mut text = redact(&args.to_string());
    if held > 0 {
        text.push_str(&format!(" ({held} more like this were not logged)"));
    }
    match sink {
        Some(sink) => {
            if !sink.out.line(level, &text) {
                sink.dropped.fetch_add(1, Relaxed);
            }
        }
        None => eprintln!("[payload-realtime] {}: {text}", level.as_str()),
    }
}

/// Names whose value is a secret wherever it follows as `name=value` or `name: value`.
const SECRET_KEYS: [&str; 8] = [
    "token",
    "password",
    "passwd",
    "secret",
    "cookie",
    "authorization",
    "api_key",
    "apikey",
];

/// Bytes that end a secret value in `key=value` text.
fn ends_value(b: u8) -> bool {
    matches!(b, b'&' | b';' | b',' | b'"' | b'\'' | b')' | b']' | b'}') || b.is_ascii_whitespace()
}

/// Bytes of a run that may be a token (base64url, hex, JWT dots).
fn token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+' | b'/')
}

/// Removes what may be a secret from a log line: the value after a secret-looking name
/// (`token=`, `password: `, `Cookie: `, `Authorization: Bearer ...`), the password of a URL
/// (`redis://user:pass@`), JWTs, and any run of 32 or more token characters with letters and
/// digits (opaque tokens, keys). What is left keeps its shape, so the line still reads.
pub fn redact(text: &str) -> String {
    let b = text.as_bytes();
    let lower = text.to_ascii_lowercase();
    let l = lower.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        // `scheme://user:password@`: keep the user.
        if b[i..].starts_with(b"://") {
            let rest = &text[i + 3..];
            let authority_end = rest.find(['/', '?', '#', ' ']).unwrap_or(rest.len());
            if let Some(at) = rest[..authority_end].rfind('@') {
                if let Some(colon) = rest[..at].find(':') {
                    out.push_str(&text[copied..i + 3 + colon + 1]);
                    out.push_str("***");
                    i += 3 + at;
                    copied = i;
                    continue;
                }
            }
        }
        // `name=value`, `name: value`, `"name":"value"`.
        if let Some(key) = SECRET_KEYS.iter().find(|k| l[i..].starts_with(k.as_bytes())) {
            let mut j = i + key.len();
            // `payload-token`, `x_api_key`: a name may go on with word bytes before the separator.
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'-' || b[j] == b'_') {
                j += 1;
            }
            let mut k = j;
            if k < b.len() && b[k] == b'"' {
                k += 1;
            }
            if k < b.len() && (b[k] == b'=' || b[k] == b':') {
                k += 1;
                while k < b.len() && (b[k] == b' ' || b[k] == b'"') {
                    k += 1;
                }
                // `Authorization: Bearer <token>`: the scheme stays.
                for scheme in ["bearer ", "jwt ", "basic "] {
                    if l[k..].starts_with(scheme.as_bytes()) {
                        k += scheme.len();
                    }
                }
                let mut end = k;
                while end < b.len() && !ends_value(b[end]) {
                    end += 1;
                }
                if end > k {
                    out.push_str(&text[copied..k]);
                    out.push_str("***");
                    i = end;
                    copied = i;
                    continue;
                }
            }
        }
        if token_byte(b[i]) && (i == 0 || !token_byte(b[i - 1])) {
            let mut end = i;
            while end < b.len() && token_byte(b[end]) {
                end += 1;
            }
            let run = &b[i..end];
            let jwt = run.starts_with(b"eyJ") && run.iter().filter(|c| **c == b'.').count() >= 2;
            let opaque = run.len() >= 32
                && run.iter().any(|c| c.is_ascii_digit())
                && run.iter().any(|c| c.is_ascii_alphabetic());
            if jwt || opaque {
                out.push_str(&text[copied..i]);
                out.push_str("[redacted]");
                copied = end;
                i = end;
                continue;
            }
        }
        i += text[i..].chars().next().map_or(1, char::len_utf8);
    }
    out.push_str(&text[copied..]);
    out
}

#[macro_export]
macro_rules! log_at {
    ($level:expr, $($arg:tt)*) => {
        if $crate::log::enabled($level) {
            $crate::log::emit($level, concat!(file!(), ":", line!()), format_args!($($arg)*));
        }
    };
}

#[macro_export]
macro_rules! warn { ($($arg:tt)*) => { $crate::log_at!($crate::log::Level::Warn, $($arg)*) }; }
#[macro_export]
macro_rules! info { ($($arg:tt)*) => { $crate::log_at!($crate::log::Level::Info, $($arg)*) }; }
#[macro_export]
macro_rules! debug { ($($arg:tt)*) => { $crate::log_at!($crate::log::Level::Debug, $($arg)*) }; }

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_episode_is_one_line_and_the_next_one_says_what_was_held_back() {
        let t0 = Instant::now();
        let (log, mut e) = Episode::observe(None, t0);
        assert_eq!(log, Some(0));
        // A failure per message, for a minute: nothing more.
        for s in 1..=59 {
            let (log, next) = Episode::observe(Some(&mut e), t0 + Duration::from_secs(s));
            assert_eq!(log, None);
            e = next;
        }
        // Quiet for a minute: the next occurrence starts an episode and reports the 59.
        let (log, _) = Episode::observe(Some(&mut e), t0 + Duration::from_secs(59) + EPISODE_GAP);
        assert_eq!(log, Some(59));
    }

    #[test]
    fn a_long_episode_is_reported_again_every_reminder() {
        let t0 = Instant::now();
        let (_, mut e) = Episode::observe(None, t0);
        let mut logged = 0;
        let mut s = 0;
        while s < EPISODE_REMINDER.as_secs() * 2 {
            s += 1;
            let (log, next) = Episode::observe(Some(&mut e), t0 + Duration::from_secs(s));
            logged += usize::from(log.is_some());
            e = next;
        }
        assert_eq!(logged, 2);
    }

    #[test]
    fn secrets_leave_log_lines() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJpZCI6MX0.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
        let cases = [
            (
                "redis error: redis://app:hunter2@redis:6379/0 refused".to_string(),
                "redis error: redis://app:***@redis:6379/0 refused".to_string(),
            ),
            (format!("GET /?token={jwt}&x=1"), "GET /?token=***&x=1".into()),
            (
                format!("Authorization: Bearer {jwt}"),
                "Authorization: Bearer ***".into(),
            ),
            (
                format!("cookie payload-token={jwt}; other=1"),
                "cookie payload-token=***; other=1".into(),
            ),
            (format!("a token {jwt} here"), "a token [redacted] here".into()),
            (
                r#"{"password":"pa55word","id":3}"#.into(),
                r#"{"password":"***","id":3}"#.into(),
            ),
            (
                "key 0123456789abcdef0123456789abcdef0 used".into(),
                "key [redacted] used".into(),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(redact(&line), want, "{line}");
        }
        // Ordinary lines are left alone.
        for line in [
            "authorize for collection \"posts\" failed (timeout); the event was withheld from its 3 user(s)",
            "accept failed (Too many open files (os error 24)); backing off until it succeeds",
            "redis connected; restoring 2 subscription(s)",
            "ünïcödé line with a short tokenless word",
        ] {
            assert_eq!(redact(line), line);
        }
    }
}
