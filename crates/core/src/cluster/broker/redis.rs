//! The Redis broker (fred): one connection publishes, one subscribes.
//!
//! - Publishing goes through a bounded queue drained by one task, in order (Redis keeps the
//!   order of one connection's publishes, so each emitter's events arrive in order). While Redis
//!   is down publishes fail within the command timeout, are counted, and the failure is logged
//!   once per outage, not per message; local delivery is not affected.
//! - Subscriptions follow the registry: this instance subscribes to a room's channel when the
//!   room gains its first local member and unsubscribes after the last leaves. The broker keeps
//!   the set it wants and reconciles it with Redis after every change and every reconnect, so
//!   no subscription is lost to an outage.
//! - With a cluster URL (`redis-cluster://`) it uses sharded pub/sub (SPUBLISH/SSUBSCRIBE), so
//!   the pub/sub load spreads over the shards.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::prelude::{Builder, Client, Config, ReconnectPolicy};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::redis_history::RedisHistory;
use super::redis_revocations::RedisRevocations;
use super::{Broker, BrokerStats, Channel};
use crate::error::Error;
use crate::{info, warn};

/// Publishes waiting for Redis; past this they are dropped (and counted).
const OUTBOX: usize = 65_536;

/// What keeps one app's messages apart from another's on a shared Redis (pub/sub ignores the
/// database index, and a fixed prefix let an app's logout close another app's sockets): every
/// channel and key starts with `prefix`, by default derived from the secret, and every envelope
/// carries an HMAC of its text under a key derived from the secret. An envelope without a valid
/// one was not written by an instance of this app: it is dropped and counted.
#[derive(Clone, Debug)]
pub(crate) struct Namespace {
    pub(crate) prefix: String,
    key: Option<[u8; 32]>,
}

/// Hex digits of an envelope's signature, before the `.` and the text.
const SIGNATURE_HEX: usize = 64;

impl Namespace {
    pub(crate) fn new(config: &crate::config::Config) -> Namespace {
        let key = config.key.as_ref().map(|k| k.derive("redis envelopes"));
        let prefix = match (&config.redis_prefix, &config.key) {
            (Some(p), _) => p.clone(),
            (None, Some(k)) => format!("payload-realtime:{}:", hex(&k.derive("redis prefix")[..6])),
            (None, None) => "payload-realtime:".to_string(),
        };
        Namespace { prefix, key }
    }

    pub(crate) fn channel(&self, channel: &Channel) -> String {
        let p = &self.prefix;
        match channel {
            Channel::Room(room) => format!("{p}room:{room}"),
            Channel::Instance(id) => format!("{p}instance:{id}"),
            Channel::Control => format!("{p}control"),
        }
    }

    fn mac(&self, key: &[u8; 32], text: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any size");
        mac.update(text.as_bytes());
        mac
    }

    /// The envelope as it travels: `<signature>.<text>` (the text alone without a secret).
    pub(crate) fn seal(&self, text: String) -> String {
        let Some(key) = &self.key else { return text };
        let signature = hex(&self.mac(key, &text).finalize().into_bytes());
        format!("{signature}.{text}")
    }

    /// The text of an envelope this app's instances wrote, or `None`.
    pub(crate) fn open<'a>(&self, sealed: &'a str) -> Option<&'a str> {
        let Some(key) = &self.key else { return Some(sealed) };
        let (signature, text) = sealed.split_at_checked(SIGNATURE_HEX)?;
        let text = text.strip_prefix('.')?;
        let signature = unhex(signature)?;
        self.mac(key, text).verify_slice(&signature).ok()?;
        Some(text)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    received: AtomicU64,
    errors: AtomicU64,
    rejected: AtomicU64,
    subscriptions: AtomicU64,
    connected: AtomicBool,
    reconnects: AtomicU64,
    /// Set at the first connection: later ones are reconnects.
    connected_once: AtomicBool,
}

enum Sub {
    Add(String),
    Remove(String),
    /// Answered once the channel is subscribed, or is not wanted, or Redis is not connected.
    Settled(String, oneshot::Sender<()>),
}

pub(crate) struct RedisBroker {
    namespace: Namespace,
    history: RedisHistory,
    revocations: RedisRevocations,
    outbox: mpsc::Sender<(String, String)>,
    subs: mpsc::UnboundedSender<Sub>,
    counters: Arc<Counters>,
    failing: Arc<AtomicBool>,
}

/// The password of a `scheme://[user]:password@host` URL, if it has one.
fn password_of(url: &str) -> Option<&str> {
    let authority = url.split_once("://")?.1.split(['/', '?']).next()?;
    let userinfo = &authority[..authority.rfind('@')?];
    userinfo.split_once(':').map(|(_, p)| p).filter(|p| !p.is_empty())
}

/// The URL with its password replaced by `***`: what errors and logs may show of it.
pub(crate) fn redacted(url: &str) -> String {
    match password_of(url) {
        Some(p) => url.replacen(&format!(":{p}@"), ":***@", 1),
        None => url.to_string(),
    }
}

impl RedisBroker {
    /// Connects in the background (never blocks the caller) and starts the broker's tasks on
    /// the current runtime. Only a URL that cannot be parsed fails here.
    pub(crate) fn start(
        url: &str,
        namespace: Namespace,
        instance: &str,
        on_message: Arc<dyn Fn(&str) + Send + Sync>,
        on_subscribed: Arc<dyn Fn(&str) + Send + Sync>,
        on_reconnected: Arc<dyn Fn() + Send + Sync>,
        shutdown: CancellationToken,
    ) -> Result<Arc<RedisBroker>, Error> {
        let mut config = Config::from_url(url).map_err(|e| {
            let why = e.to_string();
            let why = match password_of(url) {
                Some(p) => why.replace(p, "***"),
                None => why,
            };
            Error::InvalidOption(format!("redis.url {:?}: {why}", redacted(url)))
        })?;
        // The first connection is retried by the policy like any later one: Redis may come up
        // after the application (a compose file, a restart of both), and a server that gave up
        // at start would stay alone, and `/readyz` 503, until restarted.
        config.fail_fast = false;
        let sharded = config.server.is_clustered();
        let policy = ReconnectPolicy::new_exponential(0, 100, 2_000, 2);
        let mut builder = Builder::from_config(config);
        builder.set_policy(policy);
        builder.with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.internal_command_timeout = Duration::from_secs(2);
        });
        builder.with_performance_config(|p| {
            p.default_command_timeout = Duration::from_secs(2);
            // Messages wait here between the connection and `receive_loop`; too small a buffer
            // loses messages in a burst.
            p.broadcast_channel_capacity = 16_384;
        });
        let publisher = builder
            .build()
            .map_err(|e| Error::InvalidOption(format!("redis: {e}")))?;
        let subscriber = builder
            .build_subscriber_client()
            .map_err(|e| Error::InvalidOption(format!("redis: {e}")))?;

        let counters = Arc::new(Counters::default());
        let failing = Arc::new(AtomicBool::new(false));
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX);
        let (subs, subs_rx) = mpsc::unbounded_channel();

        publisher.connect();
        subscriber.connect();

        tokio::spawn(publish_loop(
            publisher.clone(),
            sharded,
            outbox_rx,
            counters.clone(),
            failing.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(receive_loop(
            subscriber.clone(),
            namespace.clone(),
            on_message,
            counters.clone(),
            shutdown.clone(),
        ));
        let channels = Channels {
            always: [
                namespace.channel(&Channel::Instance(instance.to_string())),
                namespace.channel(&Channel::Control),
            ],
            room_prefix: format!("{}room:", namespace.prefix),
        };
        tokio::spawn(subscription_loop(
            subscriber.clone(),
            sharded,
            channels,
            subs_rx,
            counters.clone(),
            Told {
                on_subscribed,
                on_reconnected,
            },
            shutdown.clone(),
        ));
        let (p, s, c) = (publisher.clone(), subscriber.clone(), counters.clone());
        let publisher = publisher.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            c.connected.store(false, Relaxed);
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = s.quit().await;
                let _ = p.quit().await;
            })
            .await;
        });
        Ok(Arc::new(RedisBroker {
            revocations: RedisRevocations::new(publisher.clone(), &namespace.prefix),
            history: RedisHistory::new(publisher, &namespace.prefix),
            namespace,
            outbox,
            subs,
            counters,
            failing,
        }))
    }
}

impl Broker for RedisBroker {
    fn publish(&self, channel: Channel, envelope: String) {
        let sealed = self.namespace.seal(envelope);
        if self
            .outbox
            .try_send((self.namespace.channel(&channel), sealed))
            .is_err()
        {
            self.counters.errors.fetch_add(1, Relaxed);
            if !self.failing.swap(true, Relaxed) {
                warn!("redis publish queue is full; cross-instance messages are being dropped");
            }
        }
    }

    fn subscribe(&self, room: &str) {
        let _ = self
            .subs
            .send(Sub::Add(self.namespace.channel(&Channel::Room(Arc::from(room)))));
    }

    fn unsubscribe(&self, room: &str) {
        let _ = self
            .subs
            .send(Sub::Remove(self.namespace.channel(&Channel::Room(Arc::from(room)))));
    }

    fn settled(&self, room: &str) -> Option<oneshot::Receiver<()>> {
        let (tx, rx) = oneshot::channel();
        // After the room's `Add` in the same queue: the loop sees what is wanted first.
        let channel = self.namespace.channel(&Channel::Room(Arc::from(room)));
        self.subs.send(Sub::Settled(channel, tx)).ok()?;
        Some(rx)
    }

    fn history(&self) -> Option<RedisHistory> {
        Some(self.history.clone())
    }

    fn revocations(&self) -> Option<RedisRevocations> {
        Some(self.revocations.clone())
    }

    fn stats(&self) -> BrokerStats {
        BrokerStats {
            connected: self.counters.connected.load(Relaxed),
            published: self.counters.published.load(Relaxed),
            received: self.counters.received.load(Relaxed),
            errors: self.counters.errors.load(Relaxed),
            subscriptions: self.counters.subscriptions.load(Relaxed),
            rejected: self.counters.rejected.load(Relaxed),
            reconnects: self.counters.reconnects.load(Relaxed),
        }
    }
}

/// Most publishes sent to Redis in one pipeline (one round trip).
const MAX_PIPELINE: usize = 512;

async fn publish_loop(
    client: Client,
    sharded: bool,
    mut outbox: mpsc::Receiver<(String, String)>,
    counters: Arc<Counters>,
    failing: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_PIPELINE);
    loop {
        tokio::select! {
            n = outbox.recv_many(&mut batch, MAX_PIPELINE) => if n == 0 { return },
            _ = shutdown.cancelled() => return,
        }
        // One pipeline per burst: in order, one round trip, and while Redis is unreachable one
        // timeout per burst rather than per message.
        let pipeline = client.pipeline();
        for (channel, payload) in batch.drain(..) {
            let queued: Result<(), _> = if sharded {
                pipeline.spublish(channel, payload).await
            } else {
                pipeline.publish(channel, payload).await
            };
            if queued.is_err() {
                counters.errors.fetch_add(1, Relaxed);
            }
        }
        let results = pipeline.try_all::<i64>().await;
        let failed = results.iter().filter(|r| r.is_err()).count() as u64;
        counters.published.fetch_add(results.len() as u64 - failed, Relaxed);
        if failed > 0 {
            counters.errors.fetch_add(failed, Relaxed);
            if !failing.swap(true, Relaxed) {
                let e = results
                    .iter()
                    .find_map(|r| r.as_ref().err())
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                warn!("redis publish failed ({e}); local delivery goes on, cross-instance messages are dropped until Redis is back");
            }
        } else if failing.swap(false, Relaxed) {
            info!("redis publishing recovered");
        }
    }
}

async fn receive_loop(
    client: SubscriberClient,
    namespace: Namespace,
    on_message: Arc<dyn Fn(&str) + Send + Sync>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) {
    let mut rx = client.message_rx();
    loop {
        let message = tokio::select! {
            m = rx.recv() => m,
            _ = shutdown.cancelled() => return,
        };
        match message {
            Ok(message) => {
                counters.received.fetch_add(1, Relaxed);
                let text = message.value.as_bytes().and_then(|b| std::str::from_utf8(b).ok());
                match text.and_then(|t| namespace.open(t)) {
                    Some(text) => on_message(text),
                    None => {
                        if counters.rejected.fetch_add(1, Relaxed) == 0 {
                            warn!("redis: dropped a message no instance of this app wrote (no valid signature); more are counted in stats().redis.rejected");
                        }
                    }
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                counters.errors.fetch_add(n, Relaxed);
                warn!("redis subscriber fell behind; {n} cross-instance messages were lost");
            }
            Err(_) => return,
        }
    }
}

/// Keeps Redis' subscriptions equal to the wanted set: after every change, after every
/// (re)connect, and every second while they differ.
/// The channels an instance subscribes to: its own two always, rooms by their prefix.
struct Channels {
    always: [String; 2],
    room_prefix: String,
}

/// Who the subscription loop tells: a room subscribed, and the control channel subscribed again
/// after a (re)connect.
struct Told {
    on_subscribed: Arc<dyn Fn(&str) + Send + Sync>,
    on_reconnected: Arc<dyn Fn() + Send + Sync>,
}

async fn subscription_loop(
    client: SubscriberClient,
    sharded: bool,
    Channels { always, room_prefix }: Channels,
    mut changes: mpsc::UnboundedReceiver<Sub>,
    counters: Arc<Counters>,
    Told {
        on_subscribed,
        on_reconnected,
    }: Told,
    shutdown: CancellationToken,
) {
    let mut wanted: HashSet<String> = always.iter().cloned().collect();
    let mut active: HashSet<String> = HashSet::new();
    // Joins waiting for their room's subscription (see `Sub::Settled`).
    let mut settling: Vec<(String, oneshot::Sender<()>)> = Vec::new();

    let mut reconnects = client.reconnect_rx();
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_connected = false;
    loop {
        tokio::select! {
            change = changes.recv() => {
                let Some(change) = change else { return };
                note(change, &mut wanted, &mut settling);
                // Take every change already queued before talking to Redis.
                while let Ok(change) = changes.try_recv() {
                    note(change, &mut wanted, &mut settling);
                }
            }
            r = reconnects.recv() => {
                if r.is_ok() {
                    // A new connection has no subscriptions: subscribe to everything again.
                    active.clear();
                    info!("redis connected; restoring {} subscription(s)", wanted.len());
                }
            }
            _ = retry.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let connected = client.is_connected();
        counters.connected.store(connected, Relaxed);
        if !connected {
            if was_connected {
                active.clear();
            }
            was_connected = false;
            // Nothing is heard from Redis now: a join waiting for its room is answered.
            settling.clear();
            continue;
        }
        if !was_connected && counters.connected_once.swap(true, Relaxed) {
            counters.reconnects.fetch_add(1, Relaxed);
        }
        was_connected = true;
        let mut written = Vec::new();
        for channel in wanted.difference(&active).cloned().collect::<Vec<_>>() {
            let r = if sharded {
                client.ssubscribe(channel.clone()).await
            } else {
                client.subscribe(channel.clone()).await
            };
            if r.is_ok() {
                written.push(channel);
            }
        }
        // fred answers SUBSCRIBE once it is written (Redis' confirmation comes out of band and
        // is dropped); SSUBSCRIBE once Redis answered. A PING on the same connection is answered
        // after the SUBSCRIBEs before it were carried out: only then are they in place.
        if !sharded && !written.is_empty() && client.ping::<fred::types::Value>(None).await.is_err() {
            written.clear();
        }
        for channel in written {
            if let Some(room) = channel.strip_prefix(&room_prefix) {
                on_subscribed(room);
            } else if channel == always[1] {
                // Subscribed to the control channel again: what was announced from now on is
                // heard, what was missed meanwhile is in the store.
                on_reconnected();
            }
            active.insert(channel);
        }
        for channel in active.difference(&wanted).cloned().collect::<Vec<_>>() {
            let r = if sharded {
                client.sunsubscribe(channel.clone()).await
            } else {
                client.unsubscribe(channel.clone()).await
            };
            if r.is_ok() {
                active.remove(&channel);
            }
        }
        let rooms = active.iter().filter(|c| c.starts_with(&room_prefix)).count();
        counters.subscriptions.store(rooms as u64, Relaxed);
        // Answered by being dropped: subscribed, no longer wanted, or no longer waited for.
        settling.retain(|(c, tx)| wanted.contains(c) && !active.contains(c) && !tx.is_closed());
    }
}

/// Takes one change into the wanted set, or a join's wait into `settling`.
fn note(change: Sub, wanted: &mut HashSet<String>, settling: &mut Vec<(String, oneshot::Sender<()>)>) {
    match change {
        Sub::Add(c) => {
            wanted.insert(c);
        }
        Sub::Remove(c) => {
            wanted.remove(&c);
        }
        Sub::Settled(c, tx) => settling.push((c, tx)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(secret: Option<&str>, prefix: Option<&str>) -> Namespace {
        Namespace::new(&crate::config::Config {
            key: secret.map(crate::config::PayloadKey::from_payload_secret),
            redis_prefix: prefix.map(String::from),
            ..Default::default()
        })
    }

    #[test]
    fn envelopes_open_only_for_the_app_that_sealed_them() {
        let ours = namespace(Some("secret-a"), None);
        let theirs = namespace(Some("secret-b"), None);
        let text = r#"{"v":1,"from":"x","kind":"control"}"#;
        let sealed = ours.seal(text.to_string());
        assert_eq!(ours.open(&sealed), Some(text));
        assert_eq!(theirs.open(&sealed), None, "another secret");
        assert_eq!(ours.open(text), None, "unsigned");
        let tampered = sealed.replace("control", "c0ntrol");
        assert_eq!(ours.open(&tampered), None, "changed text");
        assert_eq!(
            ours.open(&format!("{}é{}", &sealed[..10], &sealed[11..])),
            None,
            "not hex"
        );
        assert_eq!(ours.open(""), None);
        // Without a secret nothing is signed (and nothing can be checked).
        let open = namespace(None, None);
        assert_eq!(open.seal(text.to_string()), text);
        assert_eq!(open.open(text), Some(text));
    }

    #[test]
    fn the_prefix_is_derived_from_the_secret_unless_given() {
        let a = namespace(Some("secret-a"), None);
        let b = namespace(Some("secret-b"), None);
        assert_ne!(a.prefix, b.prefix);
        assert_eq!(
            a.prefix,
            namespace(Some("secret-a"), None).prefix,
            "instances of one app agree"
        );
        assert!(a.prefix.starts_with("payload-realtime:") && a.prefix.ends_with(':'));
        assert!(!a.prefix.contains("secret"));
        assert_eq!(namespace(Some("secret-a"), Some("staging:")).prefix, "staging:");
        assert_eq!(namespace(None, None).prefix, "payload-realtime:");
        assert_eq!(a.channel(&Channel::Control), format!("{}control", a.prefix));
    }

    #[test]
    fn urls_lose_their_password_in_errors() {
        assert_eq!(
            redacted("redis://user:s3cr@t@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redacted("rediss://:pw@host"), "rediss://:***@host");
        assert_eq!(redacted("redis://host:6379"), "redis://host:6379");
        assert_eq!(redacted("redis://user@host"), "redis://user@host");
        let err = RedisBroker::start(
            "redis://:hunter2@localhost:notaport",
            Namespace::new(&crate::config::Config::default()),
            "i",
            Arc::new(|_: &str| {}),
            Arc::new(|_: &str| {}),
            Arc::new(|| {}),
            CancellationToken::new(),
        )
        .err()
        .expect("a URL that cannot be parsed fails at start")
        .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains(":***@"), "{err}");
    }
}
