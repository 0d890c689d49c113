//! The server's shared state and the operations the host calls: emit an event, broadcast to a
//! room, send to one socket, move sockets between rooms, read the counters. The hub holds the
//! registries and routes; what it does for recovery, presence, sessions and the other instances
//! is in its submodules, each an `impl Hub` of its own, as is the intake of events.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::RwLock;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use bytes::Bytes;

mod intake;
mod presence;
pub(crate) mod recovery;
mod remote;
mod sessions;

use remote::Append;

use crate::auth::revocations::Revocations;
use crate::auth::User;
use crate::cluster::broker::{raw, Broker, Channel, Kind};
use crate::cluster::history::Histories;
use crate::cluster::presence::Presence;
use crate::config::{Config, HostRules};
use crate::delivery::lanes::{lane_of, Delivery, Job, LANES};
use crate::delivery::rooms::{Joined, RoomRegistry};
use crate::error::Error;
use crate::host::callbacks::Callbacks;
use crate::protocol::text_frame;
use crate::stats::{Snapshot, Stats};
use crate::write::socket::{Socket, SocketId};

/// The room name a broadcast to everyone travels under: never a real room (a room name cannot
/// end in `*`), so an instance that does not know it delivers it to nobody.
const EVERYONE: &str = "*";

/// A socket as the host sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketInfo {
    pub id: String,
    pub user: Arc<Value>,
}

pub struct Hub {
    pub(crate) config: Config,
    /// The host's rules now: `config.host_rules` as the server started, then whatever the host
    /// set since ([`Hub::set_host_rules`]). Read these, never the config's.
    host_rules: RwLock<Arc<HostRules>>,
    pub(crate) registry: RoomRegistry,
    pub(crate) stats: Stats,
    /// Sockets counted against the connection limits.
    pub(crate) limits: Arc<crate::limits::Limits>,
    pub(crate) callbacks: Callbacks,
    /// This server's id, the prefix of every socket id it hands out.
    pub instance: String,
    /// Cancelled when `shutdown()` starts: no new sockets, no new events.
    pub(crate) stopping: CancellationToken,
    /// Cancelled when the server must stop now; every task listens to it.
    pub(crate) shutdown: CancellationToken,
    custom_types: RwLock<HashSet<String>>,
    next_peer: AtomicU64,
    lanes: Vec<mpsc::UnboundedSender<Job>>,
    started: Instant,
    broker: OnceLock<Arc<dyn Broker>>,
    /// Per-room history for recovery.
    pub(crate) histories: Histories,
    /// Who is in presence-enabled rooms.
    pub(crate) presence: Presence,
    /// With Redis and history: the queue of events waiting for Redis to number them.
    appender: OnceLock<mpsc::UnboundedSender<Append>>,
    /// Gives memory back to the system when the server goes idle.
    pub(crate) memory: crate::memory::Trim,
    /// Bytes of event frames on the lanes, not yet queued for their sockets: what waits for
    /// the server's writers when events come faster than they write (`maxBacklog` bounds it).
    pub(crate) backlog: AtomicUsize,
    /// Fan-out's writers, on the sockets' runtime (see `flush`); unset in tests that run a hub
    /// without a server, where each socket's task is woken instead.
    pub(crate) flushers: OnceLock<Arc<crate::write::flush::Flushers>>,
    /// `verifyUser` calls in flight, against `maxVerifying` and `maxVerifyingPerUser`.
    pub(crate) verifying: Arc<crate::limits::Verifying>,
    /// Set when a message the server cannot hold back (from Redis, a broadcast) came with the
    /// backlog at `maxBacklog`: the lanes then stop waiting for slow readers and close them
    /// (see `dispatch::catch_up`). Cleared once the backlog is back under the bound.
    pub(crate) overflow: std::sync::atomic::AtomicBool,
    /// Rooms whose members have a "you missed messages" signal on its way ([`Delivery::Missed`]).
    pub(crate) missed: parking_lot::Mutex<HashSet<Arc<str>>>,
    /// Revoked sessions: checked at handshake and refresh, shared through Redis when configured.
    pub(crate) revocations: Arc<Revocations>,
    /// One copy of each user for all of its sockets.
    users: crate::auth::users::SharedUsers<crate::auth::Claims>,
    /// The users' documents from the host's `verifyUser`, shared as the claims are.
    docs: crate::auth::users::SharedUsers<Value>,
}

impl Hub {
    /// Builds the hub and the receiving ends of its lanes (the server spawns their tasks).
    pub(crate) fn new(config: Config, callbacks: Callbacks) -> (Arc<Hub>, Vec<mpsc::UnboundedReceiver<Job>>) {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..LANES).map(|_| mpsc::unbounded_channel()).unzip();
        let instance = format!("{:08x}", RandomState::new().hash_one(std::process::id()) as u32);
        let histories = Histories::new(config.history.clone(), &instance);
        let presence = Presence::new(config.presence.clone(), config.presence_expiry);
        let limits = crate::limits::Limits::new(&config);
        let verifying = crate::limits::Verifying::new(&config);
        let config_revocations = (config.max_revoked_sessions, config.max_token_lifetime);
        let hub = Hub {
            host_rules: RwLock::new(Arc::new(config.host_rules.clone())),
            config,
            registry: RoomRegistry::default(),
            stats: Stats::default(),
            limits,
            callbacks,
            instance,
            stopping: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            custom_types: RwLock::new(HashSet::new()),
            next_peer: AtomicU64::new(1),
            lanes: senders,
            started: Instant::now(),
            broker: OnceLock::new(),
            histories,
            presence,
            appender: OnceLock::new(),
            flushers: OnceLock::new(),
            memory: crate::memory::Trim::default(),
            backlog: AtomicUsize::new(0),
            verifying,
            overflow: Default::default(),
            missed: Default::default(),
            revocations: Arc::new(Revocations::new(config_revocations.0, config_revocations.1)),
            users: Default::default(),
            docs: Default::default(),
        };
        (Arc::new(hub), receivers)
    }

    /// A fresh epoch name, for a room history that starts now.
    fn new_epoch(&self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        format!("{}{now:x}", self.instance)
    }

    /// Milliseconds since the server started (the idle timer's clock).
    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// A socket for this user; `user_value` is what the host verified (plugin mode), or `None`
    /// to use the token's claims.
    pub(crate) fn new_socket(&self, user: Option<User>, user_value: Option<Value>) -> Arc<Socket> {
        let id = self.next_peer.fetch_add(1, Ordering::Relaxed);
        let (user, value) = match user {
            Some(mut u) => {
                // The user's other sockets may hold the same claims and document already.
                let (key, claims) = self.users.share(&u.key, u.claims);
                u.key = key;
                u.claims = claims;
                let value = user_value.map(|v| self.docs.share(&u.key, Arc::new(v)).1);
                (Some(u), value)
            }
            None => (None, user_value.map(Arc::new)),
        };
        let peer = Arc::new(Socket::with_user_value(id, user, value, self.config.max_backpressure));
        peer.touch(self.now_ms());
        peer
    }

    fn peer_by_public_id(&self, socket_id: &str) -> Option<Arc<Socket>> {
        self.registry.peer(self.local_peer_id(socket_id)?)
    }

    /// The key of the authorize rule that applies to a room's events, if one does.
    fn authorize_rule(&self, room: &str) -> Option<String> {
        self.callbacks.authorizer.as_ref()?;
        self.host_rules().authorize_key(room)
    }

    /// The host's rules now.
    pub(crate) fn host_rules(&self) -> Arc<HostRules> {
        self.host_rules.read().clone()
    }

    /// Replaces the host's rules; sockets keep their rooms, and events already handed over keep
    /// the rules they were judged by.
    pub fn set_host_rules(&self, rules: HostRules) -> Result<(), Error> {
        rules.validate()?;
        *self.host_rules.write() = Arc::new(rules);
        Ok(())
    }

    fn too_many_rooms(&self) -> Error {
        Error::InvalidInput(format!(
            "a socket may be in at most {} rooms",
            self.config.max_rooms_per_socket
        ))
    }

    pub(crate) fn send_job(&self, room: &str, job: Job) -> Result<(), Error> {
        self.lanes[lane_of(room)].send(job).map_err(|_| Error::Closed)
    }

    /// Sends a message (JSON text) to every socket in a room but `except` (a socket id), framed
    /// once, on every instance.
    pub fn broadcast_to_room(&self, room: &str, json: &[u8], except: Option<&str>) -> Result<(), Error> {
        if room.is_empty() {
            return Err(Error::InvalidInput("broadcastToRoom: the room name is empty".into()));
        }
        self.publish_broadcast(Channel::Room(Arc::from(room)), room, json, except);
        self.broadcast_local(room, json, except)
    }

    /// Sends a message (JSON text) to every authenticated socket connected, on every instance
    /// (`broadcast`), framed once. Returns how many local sockets it was queued to.
    pub fn broadcast_all(&self, json: &[u8]) -> usize {
        self.publish_broadcast(Channel::Control, EVERYONE, json, None);
        self.broadcast_all_local(json)
    }

    /// Hands a broadcast to the other instances (with Redis), on `channel`.
    fn publish_broadcast(&self, channel: Channel, room: &str, json: &[u8], except: Option<&str>) {
        if self.broker.get().is_none() {
            return;
        }
        if let Ok(text) = std::str::from_utf8(json) {
            if let Some(msg) = raw(text) {
                self.publish(
                    channel,
                    Kind::Broadcast {
                        room,
                        msg: &msg,
                        except,
                    },
                );
            }
        }
    }

    fn broadcast_all_local(&self, json: &[u8]) -> usize {
        let frame = text_frame(json);
        self.registry
            .all_sockets()
            .iter()
            .filter(|p| self.registry.send_to(p, frame.clone(), &self.stats))
            .count()
    }

    /// This instance's sockets in id order, after the socket `after` (a page's last id), at most
    /// `limit`: each with its user and rooms. The id to pass for the next page, if there is one.
    pub fn list_sockets(&self, after: Option<&str>, limit: usize) -> (Vec<(SocketInfo, Vec<String>)>, Option<String>) {
        let after = after.and_then(|id| self.local_peer_id(id)).unwrap_or(0);
        let mut peers: Vec<Arc<Socket>> = self
            .registry
            .all_sockets()
            .into_iter()
            .filter(|p| p.id > after)
            .collect();
        peers.sort_by_key(|p| p.id);
        let more = peers.len() > limit;
        peers.truncate(limit);
        let next = more.then(|| peers.last().map(|p| self.public_id(p))).flatten();
        let page = peers
            .iter()
            .map(|p| {
                let rooms = p
                    .rooms
                    .lock()
                    .as_ref()
                    .map(|r| r.iter().map(|x| x.to_string()).collect())
                    .unwrap_or_default();
                (self.socket_info(p), rooms)
            })
            .collect();
        (page, next)
    }

    fn broadcast_local(&self, room: &str, json: &[u8], except: Option<&str>) -> Result<(), Error> {
        if self.registry.member_count(room) == 0 {
            return Ok(());
        }
        let except = except.and_then(|id| self.local_peer_id(id));
        self.queue_broadcast(room, text_frame(json), except)
    }

    /// Queues a frame for a room's members, counted in the backlog (see [`Hub::admit_unheld`]).
    fn queue_broadcast(&self, room: &str, frame: Bytes, except: Option<SocketId>) -> Result<(), Error> {
        if !self.admit_unheld(room) {
            return Ok(());
        }
        self.backlog.fetch_add(frame.len(), Ordering::Relaxed);
        self.send_job(
            room,
            Job::Deliver(Delivery::Broadcast {
                room: Arc::from(room),
                frame,
                except,
            }),
        )
    }

    /// Whether a message the server cannot hold back (an event from Redis, a broadcast: unlike
    /// `emitEvent`, nobody waits for an answer) may be queued for `room`, by the backlog. Up to
    /// `maxBacklog`, yes. Past it, yes, and the lanes stop waiting for readers that are behind:
    /// they are closed with 4008 as slow consumers (`dispatch::catch_up`), which lets the
    /// backlog drain to the readers that keep up. Past twice `maxBacklog` (the server itself
    /// cannot keep up) it is dropped, counted, and the room's members are sent
    /// `recovery-failed` (`reason: "Dropped"`): never a message lost without a word.
    fn admit_unheld(&self, room: &str) -> bool {
        let backlog = self.backlog.load(Ordering::Relaxed);
        if backlog < self.config.max_backlog {
            return true;
        }
        self.overflow.store(true, Ordering::Relaxed);
        if backlog < self.config.max_backlog.saturating_mul(2) {
            return true;
        }
        Stats::add(&self.stats.backlog_dropped, 1);
        let room: Arc<str> = Arc::from(room);
        if self.missed.lock().insert(room.clone()) {
            let _ = self.send_job(&room.clone(), Job::Deliver(Delivery::Missed { room }));
        }
        false
    }

    /// Sends a message (JSON text) to one socket. A socket of this instance: `false` if it is
    /// not connected. A socket of another instance: handed to the broker (`true` if there is one).
    pub fn send_to_socket(&self, socket_id: &str, json: &[u8]) -> bool {
        if let Some(peer) = self.peer_by_public_id(socket_id) {
            return self.registry.send_to(&peer, text_frame(json), &self.stats);
        }
        let Some((instance, _)) = socket_id.split_once('.') else {
            return false;
        };
        match (self.broker.get(), std::str::from_utf8(json).ok().and_then(raw)) {
            (Some(_), Some(msg)) if instance != self.instance => {
                self.publish(
                    Channel::Instance(instance.to_string()),
                    Kind::Send {
                        socket: socket_id,
                        msg: &msg,
                    },
                );
                true
            }
            _ => false,
        }
    }

    /// The local peer number of a socket id of this instance.
    /// A socket's id as JS and clients see it: `<instance>.<n>` ([`Hub::local_peer_id`] reads
    /// it back). Made when asked for (a JS call about the socket), not kept: an idle socket is
    /// smaller without it.
    pub(crate) fn public_id(&self, peer: &Socket) -> String {
        format!("{}.{}", self.instance, peer.id)
    }

    fn local_peer_id(&self, socket_id: &str) -> Option<SocketId> {
        let (instance, n) = socket_id.split_once('.')?;
        (instance == self.instance).then(|| n.parse().ok()).flatten()
    }

    /// Puts a socket in any room (server-side rooms need no `includeCollections` entry).
    pub fn join_room(&self, socket_id: &str, room: &str) -> Result<bool, Error> {
        let Some(peer) = self.peer_by_public_id(socket_id) else {
            return Ok(false);
        };
        match self.registry.join(&peer, room, self.config.max_rooms_per_socket) {
            Joined::New | Joined::Already => Ok(true),
            Joined::Closed => Ok(false),
            Joined::TooMany => Err(Error::InvalidInput(format!(
                "joinRoom: socket {socket_id} is already in {} rooms",
                self.config.max_rooms_per_socket
            ))),
        }
    }

    pub fn leave_room(&self, socket_id: &str, room: &str) -> bool {
        match self.peer_by_public_id(socket_id) {
            Some(peer) => self.registry.leave(&peer, room),
            None => false,
        }
    }

    pub fn sockets_in_room(&self, room: &str) -> Vec<SocketInfo> {
        let mut peers = self.registry.members(room);
        peers.sort_by_key(|p| p.id);
        peers
            .into_iter()
            .map(|p| SocketInfo {
                id: self.public_id(&p),
                user: p.user_doc(),
            })
            .collect()
    }

    pub(crate) fn socket_info(&self, peer: &Socket) -> SocketInfo {
        SocketInfo {
            id: self.public_id(peer),
            user: peer.user_doc(),
        }
    }

    pub fn stats(&self) -> Snapshot {
        let mut snapshot = self.stats.snapshot(
            self.registry.room_count() as u64,
            self.backlog.load(Ordering::Relaxed) as u64,
            self.broker.get().map(|b| b.stats()),
        );
        snapshot.verifying = self.verifying.in_flight() as u64;
        snapshot.history_evicted_bytes = self.histories.evicted_bytes();
        (snapshot.history_rooms, snapshot.history_events) = self.histories.sizes();
        snapshot.log_dropped = self
            .callbacks
            .logger
            .as_ref()
            .map_or(0, |l| l.dropped.load(Ordering::Relaxed));
        snapshot.sessions = self.revocations.stats();
        snapshot
    }

    /// Why the server is not ready for new clients (`/readyz`), or `None` when it is: draining,
    /// or Redis configured but not connected.
    pub(crate) fn not_ready(&self) -> Option<&'static str> {
        if self.stopping.is_cancelled() {
            return Some("draining");
        }
        if self.config.redis_url.is_some() && !self.broker.get().is_some_and(|b| b.stats().connected) {
            return Some("redis-disconnected");
        }
        None
    }

    pub fn register_custom_type(&self, kind: &str) {
        self.custom_types.write().insert(kind.to_string());
    }

    pub(crate) fn has_custom_type(&self, kind: &str) -> bool {
        self.callbacks.handlers.is_some() && self.custom_types.read().contains(kind)
    }
}
