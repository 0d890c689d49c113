//! Server options, their defaults, and the checks that turn a bad option into a clear error at
//! start-up rather than a surprise under load.

use std::collections::HashSet;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::protocol::is_valid_slug;

/// Everything the server needs to know, already validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on (default `0.0.0.0`).
    pub host: String,
    /// Port to listen on; 0 picks a free one.
    pub port: u16,
    /// Only upgrade requests to this path are accepted; `None` accepts any path.
    pub path: Option<String>,
    /// The key Payload signs its tokens with, derived from the Payload secret.
    pub key: Option<PayloadKey>,
    /// Origins allowed to connect (exact `scheme://host[:port]` strings).
    pub allowed_origins: Option<Vec<String>>,
    /// Lets clients without a token in, with `user: null`.
    pub allow_anonymous: bool,
    /// Largest inbound message, in bytes; more closes the socket with 1009.
    pub max_payload_length: usize,
    /// Outbound bytes that may wait for a client that takes nothing (its send buffer full)
    /// before it is closed as a slow consumer (4008).
    pub max_backpressure: usize,
    /// Bytes of emitted events that may wait for the server's writers (events come faster than
    /// the sockets are written) before `emitEvent` refuses more: what bounds memory when the
    /// application outruns the server for long.
    pub max_backlog: usize,
    /// A socket that sends nothing (not even a pong) for this long is closed; `None` disables.
    pub idle_timeout: Option<Duration>,
    /// Worker threads of the server's own tokio runtime, which read and write the sockets
    /// (default: `default_worker_threads`); the lanes have a thread of their own (`server`).
    pub worker_threads: usize,
    /// Which rooms the host decides about, as the server starts (see [`HostRules`]).
    pub host_rules: HostRules,
    /// How long one authorize answer may take before that user is denied.
    pub authorize_timeout: Duration,
    /// How long a custom handler may take before the request gets an `internal` error.
    pub handler_timeout: Duration,
    /// Messages a client may send per second (sustained; the same number as burst); 0 = no limit.
    pub max_messages_per_second: u32,
    /// Rooms one socket may be in at once.
    pub max_rooms_per_socket: usize,
    /// Sockets the server holds at once; past it a handshake gets 503 (default:
    /// `default_max_connections`).
    pub max_connections: usize,
    /// Sockets one user may hold at once; past it a handshake gets 429. 0 = no limit.
    pub max_connections_per_user: usize,
    /// Sockets one client address may hold at once; past it a handshake gets 429. 0 = no limit.
    pub max_connections_per_ip: usize,
    /// Proxies whose `Forwarded` or `X-Forwarded-For` names the client's address (see
    /// `limits::client_ip`); from anyone else these headers are ignored.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Whether a loopback peer counts as a trusted proxy (default yes: only a process of this
    /// machine can be one, and a reverse proxy beside the app would otherwise make every client
    /// one address, capped by `maxConnectionsPerIp`).
    pub trust_loopback: bool,
    /// History kept per room (rules by room name or `prefix*`), for recovery after reconnects.
    pub history: Vec<HistoryRule>,
    /// Rooms with presence (room names or `prefix*`).
    pub presence: Vec<String>,
    /// How long another instance's presence counts without a fresh state (it died otherwise).
    pub presence_expiry: Duration,
    /// Redis URL for many instances (`redis://`, `rediss://`, `redis-cluster://`); `None` runs alone.
    pub redis_url: Option<String>,
    /// What every Redis channel and key of this app starts with; `None` derives one from the
    /// secret, so two apps (or environments) on one Redis never meet.
    pub redis_prefix: Option<String>,
    /// Echo every message back instead of speaking the protocol: for the conformance suite
    /// (Autobahn), which must exercise the very same connection code. Not exposed to JS.
    pub echo_mode: bool,
    /// `verifyUser` calls (each a database read through `payload.auth`) in flight at once, for
    /// handshakes and `{ type: "auth" }` together; past it a handshake gets 503 and a refresh
    /// `rate-limited`, so a burst of handshakes cannot queue unbounded work on Payload.
    pub max_verifying: usize,
    /// `verifyUser` calls in flight for one user (the token's `<collection>:<id>`); past it 429.
    /// 0 = no limit.
    pub max_verifying_per_user: usize,
    /// How long one `verifyUser` may take before it counts as a refusal and frees its place:
    /// one that never answers cannot hold the cap.
    pub verify_timeout: Duration,
    /// How long a socket opened with `?auth=message` has to send its `{ type: "auth" }` message
    /// before it is closed with 4004.
    pub auth_timeout: Duration,
    /// Recoveries (joins with `since`) one socket may make of one room per minute; past it the
    /// join goes on live with `recovery-failed` (`Limited`): each replays up to
    /// `max_recovery_events` events through authorize. 0 = no limit.
    pub max_recoveries_per_minute: u32,
    /// Most events one recovery replays; more missed and the join goes on live with
    /// `recovery-failed` (`TooManyEvents`): refetching is cheaper than a replay that long.
    pub max_recovery_events: usize,
    /// `GET /metrics`: off (`None`, the default), or how it is reached.
    pub metrics: Option<MetricsAccess>,
    /// How long a shutdown gives sockets to go after their 1001 before cutting them.
    pub drain_timeout: Duration,
    /// Revoked sessions each instance remembers; past it the one expiring first is forgotten
    /// (counted in `stats().sessions.evicted`).
    pub max_revoked_sessions: usize,
    /// The longest a token can live (the longest `tokenExpiration` of the auth collections): how
    /// long a user-wide revocation, or one whose token's expiry is unknown, is kept.
    pub max_token_lifetime: Duration,
    /// The host's `onConnect` runs for every new socket (through the custom-handler crossing,
    /// as kind `""`, a type no client can send): it may send the socket its initial state and
    /// join it to rooms, before the socket's own joins are acted on.
    pub on_connect: bool,
}

/// How `GET /metrics` is reached: never anonymously on the port clients use.
#[derive(Clone, PartialEq, Eq)]
pub enum MetricsAccess {
    /// On the server's own port, for requests with `Authorization: Bearer <token>`.
    Token(String),
    /// On a listener of its own (loopback by default), without a token.
    Listen { host: String, port: u16 },
}

impl std::fmt::Debug for MetricsAccess {
    /// Never the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsAccess::Token(_) => f.write_str("Token(***)"),
            MetricsAccess::Listen { host, port } => write!(f, "Listen({host}:{port})"),
        }
    }
}

/// Shortest `metrics.token`: a bearer token must not be guessable.
pub(crate) const MIN_METRICS_TOKEN: usize = 16;

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "0.0.0.0".into(),
            port: 3002,
            path: None,
            key: None,
            allowed_origins: None,
            allow_anonymous: false,
            max_payload_length: 64 * 1024,
            max_backpressure: 1024 * 1024,
            max_backlog: 128 * 1024 * 1024,
            idle_timeout: Some(Duration::from_secs(120)),
            worker_threads: default_worker_threads(),
            host_rules: HostRules::default(),
            authorize_timeout: Duration::from_secs(5),
            handler_timeout: Duration::from_secs(30),
            max_messages_per_second: 100,
            max_rooms_per_socket: 1000,
            max_connections: default_max_connections(),
            max_connections_per_user: 32,
            max_connections_per_ip: 256,
            trusted_proxies: Vec::new(),
            trust_loopback: true,
            history: Vec::new(),
            presence: Vec::new(),
            presence_expiry: Duration::from_secs(15),
            redis_url: None,
            redis_prefix: None,
            echo_mode: false,
            max_verifying: 64,
            max_verifying_per_user: 4,
            verify_timeout: Duration::from_secs(5),
            auth_timeout: Duration::from_secs(10),
            max_recoveries_per_minute: 10,
            max_recovery_events: 1000,
            metrics: None,
            drain_timeout: Duration::from_secs(5),
            max_revoked_sessions: 100_000,
            max_token_lifetime: Duration::from_secs(7 * 24 * 3600),
            on_connect: false,
        }
    }
}

impl Config {
    /// Checks the options that can be wrong in ways the type does not prevent.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let bad = |msg: String| Err(Error::InvalidOption(msg));
        if self.host.is_empty() {
            return bad("`host` must not be empty".into());
        }
        if let Some(path) = &self.path {
            if !path.starts_with('/') {
                return bad(format!("`path` must start with '/', got {path:?}"));
            }
        }
        if self.max_payload_length < 16 {
            return bad("`maxPayloadLength` must be at least 16 bytes".into());
        }
        if self.max_backpressure < 1024 {
            return bad("`maxBackpressure` must be at least 1024 bytes".into());
        }
        if self.max_backlog < 1024 {
            return bad("`maxBacklog` must be at least 1024 bytes".into());
        }
        if self.max_recovery_events == 0 {
            return bad("`maxRecoveryEvents` must be at least 1".into());
        }
        for rule in &self.history {
            if rule.policy.max_bytes < 1024 {
                return bad(format!(
                    "history `maxBytes` for {:?} must be at least 1024",
                    rule.pattern
                ));
            }
        }
        if self.max_connections == 0 {
            return bad("`maxConnections` must be at least 1".into());
        }
        if self.max_verifying == 0 {
            return bad("`maxVerifying` must be at least 1".into());
        }
        if self.max_revoked_sessions == 0 {
            return bad("`maxRevokedSessions` must be at least 1".into());
        }
        if self.max_token_lifetime < Duration::from_secs(1) {
            return bad("`maxTokenLifetime` must be at least 1 second".into());
        }
        if self.worker_threads == 0 || self.worker_threads > 256 {
            return bad("`workerThreads` must be between 1 and 256".into());
        }
        if let Some(origins) = &self.allowed_origins {
            for o in origins {
                if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                    return bad(format!(
                        "`allowedOrigins` entries look like \"https://example.com\", got {o:?}"
                    ));
                }
            }
        }
        match &self.metrics {
            Some(MetricsAccess::Token(t)) if t.len() < MIN_METRICS_TOKEN => {
                return bad(format!(
                    "`metrics.token` must be at least {MIN_METRICS_TOKEN} characters"
                ));
            }
            Some(MetricsAccess::Token(t)) if t.bytes().any(|b| !b.is_ascii_graphic()) => {
                return bad("`metrics.token` must be printable ASCII without spaces".into());
            }
            Some(MetricsAccess::Listen { host, .. }) if host.is_empty() => {
                return bad("`metrics.host` must not be empty".into());
            }
            _ => {}
        }
        self.host_rules.validate()
    }
}

/// Which rooms the host decides about: the collections a client may join, those whose events
/// ask the authorize callback, the rooms whose joins ask the join rule. The host may replace
/// them while the server runs (a dev reload of the app brings new rules, and its sockets should
/// not be dropped for it), so the hub holds the current ones (`Hub::host_rules`).
#[derive(Clone, Debug, Default)]
pub struct HostRules {
    /// Collections a client may join; `None` accepts any valid slug.
    pub include_collections: Option<HashSet<String>>,
    /// The keys of the authorize rules: collection slugs (their events), and room names or
    /// `prefix*` patterns, which may contain ':' (app events published to those rooms; a bare
    /// name is both a slug and a room's exact name).
    pub authorize_collections: HashSet<String>,
    /// Rooms a client may join only once the host's join rule allows it (room names or
    /// `prefix*`); the others are joined at once. Plugin mode: every collection whose events
    /// follow Payload's read access, so a user who may read none of it is refused.
    pub join_rules: Vec<String>,
}

impl HostRules {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        for key in &self.authorize_collections {
            let pattern = key.len() <= 256 && (key.contains(':') || key.ends_with('*'));
            if !is_valid_slug(key) && !pattern {
                return Err(Error::InvalidOption(format!(
                    "{key:?} is neither a collection slug nor a room pattern"
                )));
            }
        }
        for slug in self.include_collections.iter().flatten() {
            if !is_valid_slug(slug) {
                return Err(Error::InvalidOption(format!("{slug:?} is not a valid collection slug")));
            }
        }
        Ok(())
    }

    /// Whether a client may join this collection.
    pub(crate) fn collection_allowed(&self, slug: &str) -> bool {
        match &self.include_collections {
            Some(set) => set.contains(slug),
            None => true,
        }
    }

    /// Whether this collection's events ask the authorize callback.
    pub(crate) fn authorizes(&self, collection: &str) -> bool {
        self.authorize_collections.contains(collection)
    }

    /// The key of the authorize rule that events of `room` ask, if one applies: the most
    /// specific key naming the room (its exact name, then for a collection's room its slug, else
    /// the longest `prefix*`), so that one answer never depends on a set's order. The exact name
    /// comes first so a host can give `collection:posts` a rule of its own (the plugin's read
    /// access) that the app room `posts`, also named by a bare `posts` key, does not get.
    pub(crate) fn authorize_key(&self, room: &str) -> Option<String> {
        if self.authorize_collections.contains(room) {
            return Some(room.to_string());
        }
        if let Some(slug) = crate::protocol::collection_of_room(room) {
            if self.authorizes(slug) {
                return Some(slug.to_string());
            }
        }
        self.authorize_collections
            .iter()
            .filter(|k| k.ends_with('*') && crate::protocol::room_matches(k, room))
            .max_by(|a, b| a.len().cmp(&b.len()).then_with(|| b.cmp(a)))
            .cloned()
    }

    /// Whether joining this room waits for the host's join rule.
    pub(crate) fn join_ruled(&self, room: &str) -> bool {
        self.join_rules.iter().any(|p| crate::protocol::room_matches(p, room))
    }
}

/// The CPU cores this process may use, minus one for Node's own thread (where Payload runs),
/// at least 1 and at most 16. On a 2-core machine that is one worker: two competed with the JS
/// thread for two cores and woke each other's sockets across threads, at more CPU per message
/// and a higher p99 (measured in docs/design.md).
pub(crate) fn default_worker_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    cores.saturating_sub(1).clamp(1, 16)
}

/// Descriptors left to the rest of the process: the server shares Node's process with Payload,
/// whose database pool, uploads, Redis client and (in development) file watchers need their own,
/// and running out of them fails those, not only new sockets.
const DESCRIPTOR_RESERVE: u64 = 1024;

/// What the process may open (`RLIMIT_NOFILE`, which Node raises to its hard limit at start)
/// minus [`DESCRIPTOR_RESERVE`], but at least half of it: each socket is one descriptor, so
/// past this the server would take the ones Payload needs and `accept` would fail anyway.
pub(crate) fn default_max_connections() -> usize {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            // `rlim_t` is narrower than `u64` on some targets.
            #[allow(clippy::useless_conversion)]
            let soft = u64::from(limit.rlim_cur);
            let n = soft.saturating_sub(DESCRIPTOR_RESERVE).max(soft / 2);
            return usize::try_from(n).unwrap_or(usize::MAX).max(1);
        }
    }
    10_000
}

/// The key Payload signs tokens with.
#[derive(Clone)]
pub struct PayloadKey {
    /// HMAC-SHA256 keyed with the signing secret, its key blocks hashed once: a token's check
    /// starts from a copy of it (keying is two of the check's SHA-256 blocks).
    mac: Hmac<Sha256>,
    /// Payload's signing secret, from which the server's own keys are derived.
    signing_secret: String,
}

impl std::fmt::Debug for PayloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PayloadKey(..)")
    }
}

impl PayloadKey {
    /// Derives the key from the string given to Payload's `buildConfig({ secret })`.
    pub fn from_payload_secret(secret: &str) -> PayloadKey {
        let signing_secret = derive_signing_secret(secret);
        PayloadKey {
            mac: Hmac::new_from_slice(signing_secret.as_bytes()).expect("HMAC takes a key of any length"),
            signing_secret,
        }
    }

    /// HS256 under Payload's key, ready for a message (clone it, then update).
    pub(crate) fn mac(&self) -> &Hmac<Sha256> {
        &self.mac
    }

    /// A key of the server's own for `purpose`, derived from Payload's secret: instances of the
    /// same app agree on it, another app (another secret) cannot know it.
    pub(crate) fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"payload-realtime\0");
        h.update(purpose.as_bytes());
        h.update(b"\0");
        h.update(self.signing_secret.as_bytes());
        h.finalize().into()
    }
}

/// `sha256(secret)` as lowercase hex, first 32 characters: what Payload calls `payload.secret`.
pub(crate) fn derive_signing_secret(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex.truncate(32);
    hex
}

/// How much history a room keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Most events kept.
    pub size: usize,
    /// Events older than this are dropped; `None` keeps them until `size` pushes them out.
    pub ttl: Option<Duration>,
    /// Most bytes of events kept (their frames): a room of large documents would otherwise hold
    /// `size` times the largest one. The oldest go first; an event larger than this alone is
    /// not kept (a recovery over it fails as trimmed).
    pub max_bytes: usize,
}

/// The default of the `history` rule's `maxBytes`: 1 MiB per room.
pub const DEFAULT_HISTORY_MAX_BYTES: usize = 1024 * 1024;

/// A room name or a prefix ending in `*`, and its policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRule {
    pub pattern: String,
    pub policy: HistoryPolicy,
}

impl HistoryRule {
    /// Whether the rule applies to `room`.
    pub(crate) fn matches(&self, room: &str) -> bool {
        crate::protocol::room_matches(&self.pattern, room)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_contract() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.max_payload_length, 65536);
        assert_eq!(c.max_backpressure, 1 << 20);
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(120)));
        assert_eq!(c.host, "0.0.0.0");
    }

    #[test]
    fn bad_options_are_named() {
        let mut c = Config {
            path: Some("ws".into()),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("path"));
        c.path = None;
        c.allowed_origins = Some(vec!["example.com".into()]);
        assert!(c.validate().unwrap_err().to_string().contains("allowedOrigins"));
        c.allowed_origins = None;
        c.host_rules.include_collections = Some(["bad slug".to_string()].into());
        assert!(c.validate().is_err());
    }

    #[test]
    fn authorize_keys_name_collections_and_rooms_the_most_specific_first() {
        let rules = HostRules {
            authorize_collections: ["posts", "orders:*", "orders:vip:*", "orders:public", "ops"]
                .into_iter()
                .map(String::from)
                .collect(),
            ..Default::default()
        };
        rules.validate().unwrap();
        let key = |room: &str| rules.authorize_key(room);
        assert_eq!(key("collection:posts").as_deref(), Some("posts"));
        assert_eq!(
            key("posts").as_deref(),
            Some("posts"),
            "a bare key is also the room of that name"
        );
        assert_eq!(key("orders:1").as_deref(), Some("orders:*"));
        assert_eq!(key("orders:vip:2").as_deref(), Some("orders:vip:*"));
        assert_eq!(key("orders:public").as_deref(), Some("orders:public"));
        assert_eq!(key("ops:1"), None);
        assert_eq!(key("collection:pages"), None);
        let explicit = HostRules {
            authorize_collections: ["posts", "collection:posts"].into_iter().map(String::from).collect(),
            ..Default::default()
        };
        assert_eq!(
            explicit.authorize_key("collection:posts").as_deref(),
            Some("collection:posts"),
            "the exact name is more specific than the slug"
        );
        assert_eq!(explicit.authorize_key("posts").as_deref(), Some("posts"));
        let bad = HostRules {
            authorize_collections: ["not a slug".to_string()].into_iter().collect(),
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}
