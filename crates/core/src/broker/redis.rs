//! The Redis broker (fred): one connection publishes, one subscribes.
//!
//! - Publishing goes through a bounded queue drained by one task, in order (Redis keeps the
//!   order of one connection's publishes, so each emitter's events arrive in order). While Redis
//!   is down publishes fail fast (`fail_fast`), are counted, and the failure is logged once per
//!   outage, not per message; local delivery is not affected.
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
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::redis_history::RedisHistory;
use super::{Broker, BrokerStats, Channel};
use crate::error::Error;
use crate::{info, warn};

/// Publishes waiting for Redis; past this they are dropped (and counted).
const OUTBOX: usize = 65_536;

/// Every channel name starts with this.
pub const PREFIX: &str = "payload-realtime:";

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    received: AtomicU64,
    errors: AtomicU64,
    subscriptions: AtomicU64,
    connected: AtomicBool,
}

enum Sub {
    Add(String),
    Remove(String),
}

pub struct RedisBroker {
    history: RedisHistory,
    outbox: mpsc::Sender<(String, String)>,
    subs: mpsc::UnboundedSender<Sub>,
    counters: Arc<Counters>,
    failing: Arc<AtomicBool>,
}

/// The channel names of this instance's rooms, instance and control channels.
pub fn channel_name(channel: &Channel) -> String {
    match channel {
        Channel::Room(room) => format!("{PREFIX}room:{room}"),
        Channel::Instance(id) => format!("{PREFIX}instance:{id}"),
        Channel::Control => format!("{PREFIX}control"),
    }
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
    pub fn start(
        url: &str,
        instance: &str,
        on_message: Arc<dyn Fn(&str) + Send + Sync>,
        on_subscribed: Arc<dyn Fn(&str) + Send + Sync>,
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
        config.fail_fast = true;
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
            on_message,
            counters.clone(),
            shutdown.clone(),
        ));
        let always = [
            channel_name(&Channel::Instance(instance.to_string())),
            channel_name(&Channel::Control),
        ];
        tokio::spawn(subscription_loop(
            subscriber.clone(),
            sharded,
            always,
            subs_rx,
            counters.clone(),
            on_subscribed,
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
            history: RedisHistory::new(publisher),
            outbox,
            subs,
            counters,
            failing,
        }))
    }
}

impl Broker for RedisBroker {
    fn publish(&self, channel: Channel, envelope: String) {
        if self.outbox.try_send((channel_name(&channel), envelope)).is_err() {
            self.counters.errors.fetch_add(1, Relaxed);
            if !self.failing.swap(true, Relaxed) {
                warn!("redis publish queue is full; cross-instance messages are being dropped");
            }
        }
    }

    fn subscribe(&self, room: &str) {
        let _ = self.subs.send(Sub::Add(channel_name(&Channel::Room(Arc::from(room)))));
    }

    fn unsubscribe(&self, room: &str) {
        let _ = self
            .subs
            .send(Sub::Remove(channel_name(&Channel::Room(Arc::from(room)))));
    }

    fn history(&self) -> Option<RedisHistory> {
        Some(self.history.clone())
    }

    fn stats(&self) -> BrokerStats {
        BrokerStats {
            connected: self.counters.connected.load(Relaxed),
            published: self.counters.published.load(Relaxed),
            received: self.counters.received.load(Relaxed),
            errors: self.counters.errors.load(Relaxed),
            subscriptions: self.counters.subscriptions.load(Relaxed),
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
                if let Some(text) = message.value.as_bytes().and_then(|b| std::str::from_utf8(b).ok()) {
                    on_message(text);
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
async fn subscription_loop(
    client: SubscriberClient,
    sharded: bool,
    always: [String; 2],
    mut changes: mpsc::UnboundedReceiver<Sub>,
    counters: Arc<Counters>,
    on_subscribed: Arc<dyn Fn(&str) + Send + Sync>,
    shutdown: CancellationToken,
) {
    let mut wanted: HashSet<String> = always.iter().cloned().collect();
    let mut active: HashSet<String> = HashSet::new();
    let mut reconnects = client.reconnect_rx();
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_connected = false;
    loop {
        tokio::select! {
            change = changes.recv() => {
                match change {
                    Some(Sub::Add(c)) => { wanted.insert(c); }
                    Some(Sub::Remove(c)) => { wanted.remove(&c); }
                    None => return,
                }
                // Take every change already queued before talking to Redis.
                while let Ok(change) = changes.try_recv() {
                    match change {
                        Sub::Add(c) => { wanted.insert(c); }
                        Sub::Remove(c) => { wanted.remove(&c); }
                    }
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
            continue;
        }
        was_connected = true;
        for channel in wanted.difference(&active).cloned().collect::<Vec<_>>() {
            let r = if sharded {
                client.ssubscribe(channel.clone()).await
            } else {
                client.subscribe(channel.clone()).await
            };
            if r.is_ok() {
                if let Some(room) = channel.strip_prefix(&format!("{PREFIX}room:")) {
                    on_subscribed(room);
                }
                active.insert(channel);
            }
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
        let rooms = active
            .iter()
            .filter(|c| c.starts_with(&format!("{PREFIX}room:")))
            .count();
        counters.subscriptions.store(rooms as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "i",
            Arc::new(|_: &str| {}),
            Arc::new(|_: &str| {}),
            CancellationToken::new(),
        )
        .err()
        .expect("a URL that cannot be parsed fails at start")
        .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains(":***@"), "{err}");
    }
}
