//! The server's shared state and the operations the host calls: emit an event, broadcast to a
//! room, send to one socket, move sockets between rooms, read the counters.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::RwLock;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use bytes::Bytes;

use crate::auth::revocations::{Revocation, Revocations, Token, Verdict};
use crate::auth::User;
use crate::cluster::broker::redis_history::{Recovery, RedisHistory};
use crate::cluster::broker::{raw, Broker, Channel, Envelope, Kind};
use crate::cluster::history::{Entry, Histories, RecoveryFailed};
use crate::cluster::presence::{summary_of, Change, Presence};
use crate::config::{Config, HistoryPolicy, HostRules};
use crate::delivery::authorize::allowed_users;
use crate::delivery::event;
use crate::delivery::lanes::{lane_of, Job, LANES};
use crate::delivery::rooms::{Except, Joined, Registry};
use crate::error::Error;
use crate::host::callbacks::{Callbacks, UserList};
use crate::protocol::Since;
use crate::protocol::{close_code, collection_room, encode_value, text_frame};
use crate::stats::{Snapshot, Stats};
use crate::warn;
use crate::write::peer::{Peer, PeerId};

/// The room name a broadcast to everyone travels under: never a real room (a room name cannot
/// end in `*`), so an instance that does not know it delivers it to nobody.
const EVERYONE: &str = "*";

/// What a collection join did.
#[derive(Debug)]
pub(crate) struct JoinOutcome {
    /// The room's position (last offset and epoch), for rooms with history.
    pub(crate) position: Option<Since>,
    /// With `since`: `Ok` when the missed events are being replayed, else why not.
    pub(crate) recovery: Option<Result<(), RecoveryFailed>>,
}

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
    pub(crate) registry: Registry,
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
    /// Rooms whose members have a "you missed messages" signal on its way ([`Job::Missed`]).
    pub(crate) missed: parking_lot::Mutex<HashSet<Arc<str>>>,
    /// Revoked sessions: checked at handshake and refresh, shared through Redis when configured.
    pub(crate) revocations: Arc<Revocations>,
    /// One copy of each user for all of its sockets.
    users: crate::auth::users::SharedUsers,
}

/// An event for a room with Redis-backed history, waiting for its offset.
struct Append {
    room: String,
    except: Except,
    except_socket: Option<String>,
    body: Value,
    json: String,
    policy: HistoryPolicy,
    done: oneshot::Sender<usize>,
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
            registry: Registry::default(),
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
    pub(crate) fn new_peer(&self, user: Option<User>, user_value: Option<Value>) -> Arc<Peer> {
        let id = self.next_peer.fetch_add(1, Ordering::Relaxed);
        let (user, value) = match user {
            Some(mut u) => {
                // The user's other sockets may hold the same claims and document already.
                let (key, claims) = self.users.share(&u.key, u.claims);
                u.key = key;
                u.claims = claims;
                let value = match user_value {
                    Some(v) => self.users.share(&u.key, Arc::new(v)).1,
                    None => u.claims.clone(),
                };
                (Some(u), value)
            }
            None => (
                None,
                user_value.map_or_else(crate::auth::users::SharedUsers::anonymous, Arc::new),
            ),
        };
        let peer = Arc::new(Peer::with_user_value(
            id,
            &self.instance,
            user,
            value,
            self.config.max_backpressure,
        ));
        peer.touch(self.now_ms());
        peer
    }

    fn peer_by_public_id(&self, socket_id: &str) -> Option<Arc<Peer>> {
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

    /// [`Hub::emit_event`] in two steps: queues the event now (in call order: events emitted one
    /// after the other are delivered in that order), and returns what resolves with the number
    /// of local sockets once it was queued to them.
    #[cfg(test)]
    pub(crate) fn submit_event(&self, input: Value) -> Result<oneshot::Receiver<usize>, Error> {
        self.submit_text(&input.to_string())
    }

    /// [`Hub::submit_event`] for an event as JSON text (as the host hands it over).
    pub(crate) fn submit_text(&self, text: &str) -> Result<oneshot::Receiver<usize>, Error> {
        self.queue_checked(self.check_event(text)?, None)
    }

    /// [`Hub::submit_event`] for several events, in order: all are checked and encoded first,
    /// then queued one right after the other, so the lane finds them together and delivers
    /// them as one burst (see `dispatch`).
    #[cfg(test)]
    pub(crate) fn submit_events(&self, inputs: Vec<Value>) -> Vec<Result<oneshot::Receiver<usize>, Error>> {
        let texts: Vec<String> = inputs.iter().map(Value::to_string).collect();
        self.submit_texts(texts.iter().map(String::as_str))
    }

    /// Publishes an application event (`publish(room, message, { except })`, JSON text) on the
    /// same path as a collection event: checked and written once, numbered by the room's
    /// history, asked through the authorize rule whose key names the room, sent to the other
    /// instances, and delivered in order with the room's other events. `except_socket` is a
    /// socket id, `except_user` a user key (`<collection>:<id>`): none of that user's sockets
    /// get it, on any instance.
    pub(crate) fn submit_app(
        &self,
        room: &str,
        text: &str,
        except_socket: Option<&str>,
        except_user: Option<&str>,
    ) -> Result<oneshot::Receiver<usize>, Error> {
        if self.stopping.is_cancelled() {
            return Err(Error::Closed);
        }
        let mut event = event::normalize_app(room, text)?;
        event.except = Except {
            peer: except_socket.and_then(|id| self.local_peer_id(id)),
            user: except_user.map(Arc::from),
        };
        event.except_socket = except_socket.map(str::to_string);
        self.queue_checked(event, None)
    }

    /// [`Hub::submit_events`] for events as JSON text.
    pub(crate) fn submit_texts<'a>(
        &self,
        texts: impl IntoIterator<Item = &'a str>,
    ) -> Vec<Result<oneshot::Receiver<usize>, Error>> {
        let checked: Vec<_> = texts.into_iter().map(|text| self.check_event(text)).collect();
        let mut batch = LaneBatch::default();
        let queued = checked
            .into_iter()
            .map(|event| event.and_then(|e| self.queue_checked(e, Some(&mut batch))))
            .collect();
        for (lane, jobs) in batch.jobs {
            let _ = self.lanes[lane].send(Job::Many(jobs));
        }
        queued
    }

    /// The first step of a submit: the event checked and written once in its final shape (the
    /// same JSON goes into the local frame and the broker envelope).
    fn check_event(&self, text: &str) -> Result<event::Event, Error> {
        if self.stopping.is_cancelled() {
            return Err(Error::Closed);
        }
        event::normalize(text)
    }

    /// What the collection's authorize rule is shown of an event: the event as a value, read
    /// from its JSON only when there is a rule (`Null` otherwise: nothing reads it).
    fn rule_body(&self, room: &str, json: &str) -> Arc<Value> {
        Arc::new(if self.authorize_rule(room).is_some() {
            crate::protocol::value_of(json)
        } else {
            Value::Null
        })
    }

    /// The second step: numbered, published and queued on its room's lane.
    /// With `batch`, the job is kept there to be sent with the others (events numbered by a
    /// history are sent at once, under its lock, as always).
    fn queue_checked(
        &self,
        event: event::Event,
        batch: Option<&mut LaneBatch>,
    ) -> Result<oneshot::Receiver<usize>, Error> {
        if self.stopping.is_cancelled() {
            return Err(Error::Closed);
        }
        // Refused before it is numbered or published: an event is sent everywhere or nowhere.
        let backlog = self.backlog.load(Ordering::Relaxed);
        if backlog >= self.config.max_backlog {
            return Err(Error::Behind {
                backlog,
                limit: self.config.max_backlog,
            });
        }
        Stats::add(&self.stats.events, 1);
        if let (Some(appender), Some(policy)) = (self.appender.get(), self.histories.policy_for(&event.room)) {
            // Redis-backed history: Redis numbers the event first (see `run_appender`). It counts
            // in the backlog while it waits for Redis too.
            self.backlog.fetch_add(event.json.len(), Ordering::Relaxed);
            let (done, delivered) = oneshot::channel();
            let append = Append {
                body: event.body(),
                room: event.room,
                except: event.except,
                except_socket: event.except_socket,
                json: event.json,
                policy,
                done,
            };
            if let Err(mpsc::error::SendError(a)) = appender.send(append) {
                self.backlog.fetch_sub(a.json.len(), Ordering::Relaxed);
                return Err(Error::Closed);
            }
            return Ok(delivered);
        }
        self.publish_event(&event.room, &event.json, None, &event);
        let (done, delivered) = oneshot::channel();
        let room = event.room.clone();
        let queued = match self.histories.room(&room) {
            // Numbered and queued under the room's history lock (see `history`).
            Some(history) => {
                let mut history = history.lock();
                let entry = history.record(event.body());
                self.queue_event(
                    &room,
                    self.rule_body(&room, entry.json()),
                    entry.frame,
                    Some(entry.offset),
                    Some(done),
                    None,
                    event.except,
                )?
            }
            None => self.queue_event(
                &room,
                self.rule_body(&room, &event.json),
                text_frame(event.json.as_bytes()),
                None,
                Some(done),
                batch,
                event.except,
            )?,
        };
        // Not queued (no local member): `done` already got 0.
        let _ = queued;
        Ok(delivered)
    }

    /// Joins a socket to a collection's room, recovering what it missed since `since` when
    /// given. Returns the room's position (for rooms with history) and, with `since`, whether
    /// recovery is under way (`Err` says why it cannot be: the socket joined live instead).
    pub(crate) fn join_collection(
        &self,
        peer: &Arc<Peer>,
        collection: &str,
        since: Option<&Since>,
    ) -> Result<JoinOutcome, Error> {
        self.join_with_history(peer, &collection_room(collection), since)
    }

    /// [`Hub::join_collection`] for any room (a client's `join` of a room with a rule).
    pub(crate) fn join_with_history(
        &self,
        peer: &Arc<Peer>,
        room: &str,
        since: Option<&Since>,
    ) -> Result<JoinOutcome, Error> {
        let room = room.to_string();
        let Some(history) = self.histories.room(&room) else {
            if self.registry.join(peer, &room, self.config.max_rooms_per_socket) == Joined::TooMany {
                return Err(self.too_many_rooms());
            }
            let recovery = since.map(|_| Err(RecoveryFailed::NoHistory));
            return Ok(JoinOutcome {
                position: None,
                recovery,
            });
        };
        let mut history = history.lock();
        let position = Some(history.position());
        let recovery = match since {
            Some(since) if !peer.in_room(&room) => match self.recovery_allowed(peer, &room).and_then(|()| {
                history
                    .since(since, self.config.max_recovery_events)
                    .inspect_err(|why| self.count_failed_recovery(*why))
            }) {
                Ok(entries) => {
                    if peer.room_count() >= self.config.max_rooms_per_socket {
                        return Err(self.too_many_rooms());
                    }
                    let room: Arc<str> = Arc::from(room);
                    // Joined now, under the history lock, with its live frames of the room held
                    // back: every event after the snapshot reaches it (an event queued before
                    // the join found no member otherwise), and the replay is sent before them.
                    peer.start_recovery(&room);
                    match self.registry.join(peer, &room, self.config.max_rooms_per_socket) {
                        Joined::New => {}
                        joined => {
                            peer.end_recovery(&room, Default::default(), 0);
                            if joined == Joined::TooMany {
                                return Err(self.too_many_rooms());
                            }
                            return Ok(JoinOutcome {
                                position,
                                recovery: Some(Ok(())),
                            });
                        }
                    }
                    let job = match self.authorize_rule(&room) {
                        // Asked outside the lane (see `dispatch::Job::Recover`).
                        Some(collection) => Job::Recover {
                            room: room.clone(),
                            authorize: Some(collection),
                            peer: peer.clone(),
                            entries,
                            through: since.offset,
                        },
                        None => Job::RecoverFinish {
                            room: room.clone(),
                            peer: peer.clone(),
                            replayed: entries.iter().map(|e| e.offset).collect(),
                            frames: entries.into_iter().map(|e| e.frame).collect(),
                            through: since.offset,
                            done: None,
                        },
                    };
                    self.send_job(&room, job)?;
                    return Ok(JoinOutcome {
                        position,
                        recovery: Some(Ok(())),
                    });
                }
                Err(why) => Some(Err(why)),
            },
            Some(_) => Some(Ok(())), // already a member: nothing was missed
            None => None,
        };
        // Joined under the history lock: every event after `position` reaches this socket live.
        if self.registry.join(peer, &room, self.config.max_rooms_per_socket) == Joined::TooMany {
            return Err(self.too_many_rooms());
        }
        drop(history);
        Ok(JoinOutcome { position, recovery })
    }

    /// Counts a recovery of `room` by this socket: `Err(Limited)` past `maxRecoveriesPerMinute`
    /// (the socket then joins live and is told to refetch).
    fn recovery_allowed(&self, peer: &Peer, room: &str) -> Result<(), RecoveryFailed> {
        if peer.may_recover(room, self.config.max_recoveries_per_minute) {
            return Ok(());
        }
        Stats::add(&self.stats.recoveries_limited, 1);
        Err(RecoveryFailed::Limited)
    }

    fn count_failed_recovery(&self, why: RecoveryFailed) {
        if why == RecoveryFailed::TooManyEvents {
            Stats::add(&self.stats.recoveries_too_long, 1);
        }
    }

    /// Queues an event for local delivery in its room's lane, or into `batch` when given (sent
    /// with the others of its call); `false` if the room has no local member.
    #[allow(clippy::too_many_arguments)]
    fn queue_event(
        &self,
        room: &str,
        body: Arc<Value>,
        frame: Bytes,
        offset: Option<u64>,
        done: Option<oneshot::Sender<usize>>,
        batch: Option<&mut LaneBatch>,
        except: Except,
    ) -> Result<bool, Error> {
        let room: Arc<str> = Arc::from(room);
        if self.registry.member_count(&room) == 0 {
            if let Some(done) = done {
                let _ = done.send(0);
            }
            return Ok(false);
        }
        let authorize = self.authorize_rule(&room);
        self.backlog.fetch_add(frame.len(), Ordering::Relaxed);
        let job = Job::Event {
            room: room.clone(),
            authorize,
            body,
            frame,
            offset,
            done,
            except,
        };
        match batch {
            Some(batch) => batch.push(lane_of(&room), job),
            None => self.send_job(&room, job)?,
        }
        Ok(true)
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
        if let (Some(broker), Ok(text)) = (self.broker.get(), std::str::from_utf8(json)) {
            if let Some(msg) = raw(text) {
                let envelope = Envelope {
                    v: 1,
                    from: &self.instance,
                    kind: Kind::Broadcast {
                        room,
                        msg: &msg,
                        except,
                    },
                };
                broker.publish(channel, envelope.encode());
            }
        }
    }

    fn broadcast_all_local(&self, json: &[u8]) -> usize {
        let frame = text_frame(json);
        self.registry
            .all_peers()
            .iter()
            .filter(|p| self.registry.send_to(p, frame.clone(), &self.stats))
            .count()
    }

    /// This instance's sockets in id order, after the socket `after` (a page's last id), at most
    /// `limit`: each with its user and rooms. The id to pass for the next page, if there is one.
    pub fn list_sockets(&self, after: Option<&str>, limit: usize) -> (Vec<(SocketInfo, Vec<String>)>, Option<String>) {
        let after = after.and_then(|id| self.local_peer_id(id)).unwrap_or(0);
        let mut peers: Vec<Arc<Peer>> = self.registry.all_peers().into_iter().filter(|p| p.id > after).collect();
        peers.sort_by_key(|p| p.id);
        let more = peers.len() > limit;
        peers.truncate(limit);
        let next = more.then(|| peers.last().map(|p| p.public_id.clone())).flatten();
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
    fn queue_broadcast(&self, room: &str, frame: Bytes, except: Option<PeerId>) -> Result<(), Error> {
        if !self.admit_unheld(room) {
            return Ok(());
        }
        self.backlog.fetch_add(frame.len(), Ordering::Relaxed);
        self.send_job(
            room,
            Job::Broadcast {
                room: Arc::from(room),
                frame,
                except,
            },
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
            let _ = self.send_job(&room.clone(), Job::Missed { room });
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
            (Some(broker), Some(msg)) if instance != self.instance => {
                let envelope = Envelope {
                    v: 1,
                    from: &self.instance,
                    kind: Kind::Send {
                        socket: socket_id,
                        msg: &msg,
                    },
                };
                broker.publish(Channel::Instance(instance.to_string()), envelope.encode());
                true
            }
            _ => false,
        }
    }

    /// The local peer number of a socket id of this instance.
    fn local_peer_id(&self, socket_id: &str) -> Option<PeerId> {
        let (instance, n) = socket_id.split_once('.')?;
        (instance == self.instance).then(|| n.parse().ok()).flatten()
    }

    /// Watches memberships of presence-enabled rooms: the first socket of a user makes it a
    /// member, its last socket's leave makes it leave; both are announced to the room and told
    /// to the other instances.
    pub(crate) fn install_presence(self: &Arc<Self>) {
        if !self.presence.is_enabled() {
            return;
        }
        let weak = Arc::downgrade(self);
        self.registry.set_member_hook(Box::new(move |room, peer, joined| {
            let Some(hub) = weak.upgrade() else { return };
            let Some(user) = &peer.user else { return };
            if !hub.presence.enabled_for(room) {
                return;
            }
            let summary = summary_of(&user.claims);
            let change = if joined {
                hub.presence.local_join(room, &user.key, &summary)
            } else {
                hub.presence.local_leave(room, &user.key)
            };
            hub.publish_presence(
                room,
                if joined { "join" } else { "leave" },
                &[(user.key.to_string(), summary)],
            );
            if let Some(change) = change {
                hub.announce(room, &change);
            }
        }));
    }

    /// Tells the room's local members about a join or leave.
    fn announce(&self, room: &str, change: &Change) {
        let frame = encode_value(&change.message(room));
        let _ = self.queue_broadcast(room, frame, None);
    }

    /// Sends presence news to the other instances (no-op without a broker).
    pub(crate) fn publish_presence(&self, room: &str, op: &str, users: &[(String, Value)]) {
        let Some(broker) = self.broker.get() else { return };
        let Some(list) = raw(&serde_json::to_string(users).unwrap_or_else(|_| "[]".into())) else {
            return;
        };
        let envelope = Envelope {
            v: 1,
            from: &self.instance,
            kind: Kind::Presence { room, op, users: &list },
        };
        broker.publish(Channel::Room(Arc::from(room)), envelope.encode());
    }

    fn on_remote_presence(&self, from: &str, room: &str, op: &str, users: &str) {
        if !self.presence.enabled_for(room) {
            return;
        }
        let users: Vec<(String, Value)> = serde_json::from_str(users).unwrap_or_default();
        let changes: Vec<Change> = match op {
            "join" | "leave" => users
                .iter()
                .filter_map(|(key, user)| self.presence.remote_change(room, from, key, user, op == "join"))
                .collect(),
            "state" => self.presence.remote_state(room, from, &users),
            "sync" => {
                let mine = self.presence.local_users(room);
                if !mine.is_empty() {
                    self.publish_presence(room, "state", &mine);
                }
                Vec::new()
            }
            _ => Vec::new(),
        };
        for change in changes {
            self.announce(room, &change);
        }
    }

    /// Periodic presence work: refresh this instance's state for the others, and let the users
    /// of instances that stopped refreshing (died) leave.
    pub(crate) fn presence_tick(&self) {
        for (room, users) in self.presence.local_state() {
            self.publish_presence(&room, "state", &users);
        }
        for (room, change) in self.presence.expire() {
            self.announce(&room, &change);
        }
    }

    /// A room's members, one per distinct user, across instances.
    pub(crate) fn presence_members(&self, room: &str) -> Option<Vec<Value>> {
        self.presence.enabled_for(room).then(|| self.presence.members(room))
    }

    /// Connects the broker: publishes go to it, and rooms subscribe as they gain local members.
    pub(crate) fn set_broker(self: &Arc<Self>, broker: Arc<dyn Broker>) {
        let hooked = broker.clone();
        self.registry.set_room_hook(Box::new(move |room, created| {
            if created {
                hooked.subscribe(room)
            } else {
                hooked.unsubscribe(room)
            }
        }));
        if self.histories.is_enabled() {
            if let Some(history) = broker.history() {
                let (tx, rx) = mpsc::unbounded_channel();
                let _ = self.appender.set(tx);
                tokio::spawn(run_appender(Arc::downgrade(self), history, rx));
            }
        }
        if let Some(store) = broker.revocations() {
            self.revocations.set_store(Arc::new(store));
            let weak = Arc::downgrade(self);
            tokio::spawn(self.revocations.clone().run_writer(
                move |written| {
                    if let Some(hub) = weak.upgrade() {
                        hub.announce_revocations(written);
                    }
                },
                self.shutdown.clone(),
            ));
        }
        let _ = self.broker.set(broker);
    }

    /// Publishes an event (JSON) for the other instances: a collection's under its slug (as
    /// always), an app event under its room, with whom it is not for.
    fn publish_event(&self, room: &str, json: &str, offset: Option<u64>, except: &impl ExceptOf) {
        let Some(broker) = self.broker.get() else { return };
        let Some(body) = raw(json) else { return };
        let collection = crate::protocol::collection_of_room(room);
        let envelope = Envelope {
            v: 1,
            from: &self.instance,
            kind: Kind::Event {
                collection: collection.unwrap_or(""),
                room: collection.is_none().then_some(room),
                body: &body,
                offset,
                except: except.socket(),
                except_user: except.user(),
            },
        };
        broker.publish(Channel::Room(Arc::from(room)), envelope.encode());
    }

    /// Redis numbered an event (or could not): deliver it here and publish it for the others.
    fn finish_append(&self, a: Append, numbered: Result<(u64, String), String>) {
        self.backlog.fetch_sub(a.json.len(), Ordering::Relaxed);
        let skip = Skipped {
            socket: a.except_socket.clone(),
            except: a.except.clone(),
        };
        let mut body = a.body;
        let offset = match numbered {
            Ok((offset, epoch)) => {
                if let Value::Object(m) = &mut body {
                    m.insert("offset".into(), Value::from(offset));
                    m.insert("epoch".into(), Value::String(epoch));
                }
                Some(offset)
            }
            Err(e) => {
                warn!("could not record an event in the Redis history ({e}); delivered without an offset");
                None
            }
        };
        let json = if offset.is_some() {
            serde_json::to_string(&body).unwrap_or(a.json)
        } else {
            a.json
        };
        self.publish_event(&a.room, &json, offset, &skip);
        let frame = text_frame(json.as_bytes());
        if let Err(e) = self.queue_event(&a.room, Arc::new(body), frame, offset, Some(a.done), None, skip.except) {
            warn!("could not deliver an event: {e}");
        }
    }

    /// Whether a room's history lives in Redis (history configured, Redis connected).
    pub(crate) fn remote_history(&self, room: &str) -> Option<(RedisHistory, HistoryPolicy)> {
        let policy = self.histories.policy_for(room)?;
        self.appender.get()?;
        Some((self.broker.get()?.history()?, policy))
    }

    /// [`Hub::join_collection`] for a room whose history is in Redis: the socket joins with its
    /// live frames held back, the missed events are read from Redis and replayed, then the held
    /// frames that come after them are released (see `dispatch::Job::RecoverStart`).
    pub(crate) async fn join_collection_remote(
        &self,
        peer: &Arc<Peer>,
        collection: &str,
        since: Option<&Since>,
    ) -> Result<JoinOutcome, Error> {
        self.join_with_history_remote(peer, &collection_room(collection), since)
            .await
    }

    /// [`Hub::join_collection_remote`] for any room.
    pub(crate) async fn join_with_history_remote(
        &self,
        peer: &Arc<Peer>,
        room: &str,
        since: Option<&Since>,
    ) -> Result<JoinOutcome, Error> {
        let room: Arc<str> = Arc::from(room);
        let Some((history, policy)) = self.remote_history(&room) else {
            return self.join_with_history(peer, &room, since);
        };
        let limited = match since {
            Some(_) if !peer.in_room(&room) => self.recovery_allowed(peer, &room).err(),
            _ => None,
        };
        let since = match since {
            Some(s) if !peer.in_room(&room) && limited.is_none() => s,
            other => {
                let recovery = match limited {
                    Some(why) => Some(Err(why)),
                    None => other.map(|_| Ok(())),
                };
                if self.registry.join(peer, &room, self.config.max_rooms_per_socket) == Joined::TooMany {
                    return Err(self.too_many_rooms());
                }
                let position = history
                    .since(&room, None, policy, &self.new_epoch())
                    .await
                    .ok()
                    .and_then(|r| r.position);
                return Ok(JoinOutcome { position, recovery });
            }
        };
        let (ready, joined) = oneshot::channel();
        self.send_job(
            &room,
            Job::RecoverStart {
                room: room.clone(),
                peer: peer.clone(),
                ready,
            },
        )?;
        if !joined.await.map_err(|_| Error::Closed)? {
            return Err(self.too_many_rooms());
        }
        let (position, entries, result) = match history
            .since_at_most(
                &room,
                Some(since),
                policy,
                &self.new_epoch(),
                self.config.max_recovery_events,
            )
            .await
        {
            Ok(Recovery {
                position,
                result: Ok(stored),
            }) => {
                let epoch = position.as_ref().map(|p| p.epoch.clone()).unwrap_or_default();
                let entries = stored
                    .into_iter()
                    .filter_map(|s| {
                        let mut body: Value = serde_json::from_str(&s.body).ok()?;
                        if let Value::Object(m) = &mut body {
                            m.insert("offset".into(), Value::from(s.offset));
                            m.insert("epoch".into(), Value::String(epoch.clone()));
                        }
                        Some(Entry {
                            offset: s.offset,
                            at: std::time::Instant::now(),
                            frame: encode_value(&body),
                        })
                    })
                    .collect();
                (position, entries, Ok(()))
            }
            Ok(Recovery {
                position,
                result: Err(why),
            }) => {
                self.count_failed_recovery(why);
                (position, Vec::new(), Err(why))
            }
            Err(e) => {
                warn!("could not read the Redis history of {room} ({e})");
                (None, Vec::new(), Err(RecoveryFailed::Unavailable))
            }
        };
        // Asked here, not in the lane: the lane's other rooms go on meanwhile (the socket's live
        // frames of this room wait, held back since `RecoverStart`).
        let authorize = self.authorize_rule(&room);
        let frames = replay_frames(self, authorize.as_deref(), peer, &entries).await;
        let (done, finished) = oneshot::channel();
        self.send_job(
            &room,
            Job::RecoverFinish {
                room: room.clone(),
                peer: peer.clone(),
                frames,
                replayed: entries.iter().map(|e| e.offset).collect(),
                through: since.offset,
                done: Some(done),
            },
        )?;
        let _ = finished.await;
        Ok(JoinOutcome {
            position,
            recovery: Some(result),
        })
    }

    /// Delivers what another instance published, to this instance's sockets only, through this
    /// instance's authorize rules. Never published again.
    pub(crate) fn on_remote(&self, text: &str) {
        let Some(decoded) = Envelope::decode(text) else {
            warn!("ignored a malformed message from the broker");
            return;
        };
        let Some(envelope) = decoded.envelope() else {
            warn!("ignored a malformed message from the broker");
            return;
        };
        if envelope.from == self.instance || self.stopping.is_cancelled() {
            return; // our own echo: already delivered locally
        }
        let result = match envelope.kind {
            Kind::Event {
                collection,
                room,
                body,
                offset,
                except,
                except_user,
            } => {
                let room = match room {
                    Some(room) => room.to_string(),
                    None => collection_room(collection),
                };
                if !self.admit_unheld(&room) {
                    return;
                }
                let except = Except {
                    peer: except.and_then(|id| self.local_peer_id(id)),
                    user: except_user.map(Arc::from),
                };
                self.queue_event(
                    &room,
                    self.rule_body(&room, body.get()),
                    text_frame(body.get().as_bytes()),
                    offset,
                    None,
                    None,
                    except,
                )
                .map(|_| ())
            }
            Kind::Broadcast { room, msg, .. } if room == EVERYONE => {
                self.broadcast_all_local(msg.get().as_bytes());
                Ok(())
            }
            Kind::Broadcast { room, msg, except } => self.broadcast_local(room, msg.get().as_bytes(), except),
            Kind::Send { socket, msg } => {
                if let Some(peer) = self.peer_by_public_id(socket) {
                    self.registry
                        .send_to(&peer, text_frame(msg.get().as_bytes()), &self.stats);
                }
                Ok(())
            }
            Kind::Revoke { user, sid, at, exp } => {
                if let Some(at_ms) = at {
                    self.revocations.learn(&Revocation {
                        user: user.to_string(),
                        sid: sid.map(str::to_string),
                        at_ms,
                        expires: exp.unwrap_or(u64::MAX),
                    });
                }
                self.revoke_local(user, sid);
                Ok(())
            }
            Kind::User { user, doc } => {
                self.apply_user(user, serde_json::from_str(doc.get()).ok());
                Ok(())
            }
            Kind::Presence { room, op, users } => {
                self.on_remote_presence(envelope.from, room, op, users.get());
                Ok(())
            }
        };
        if let Err(e) = result {
            warn!("could not deliver a message from the broker: {e}");
        }
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
                id: p.public_id.clone(),
                user: p.user_json(),
            })
            .collect()
    }

    pub(crate) fn socket_info(&self, peer: &Peer) -> SocketInfo {
        SocketInfo {
            id: peer.public_id.clone(),
            user: peer.user_json(),
        }
    }

    /// Closes with 4003 every socket of this user (`<collection>:<id>`) whose session is `sid`,
    /// or all of the user's sockets when `sid` is `None`. Returns how many were closed.
    ///
    /// The revocation is remembered (in Redis too, when configured) until the token expires
    /// (`exp`, seconds), at most `maxTokenLifetime`: the session is refused at handshake and
    /// refresh on every instance.
    /// `remember: false` only closes the sockets (a logout whose write may still be rolled back:
    /// it is remembered once committed).
    pub fn revoke_session(&self, user_key: &str, sid: Option<&str>, exp: Option<u64>, remember: bool) -> usize {
        if remember {
            let r = self.revocations.revoke(user_key, sid, exp);
            self.announce_revocations(std::slice::from_ref(&r));
        } else if let Some(broker) = self.broker.get() {
            let envelope = Envelope {
                v: 1,
                from: &self.instance,
                kind: Kind::Revoke {
                    user: user_key,
                    sid,
                    at: None,
                    exp: None,
                },
            };
            broker.publish(Channel::Control, envelope.encode());
        }
        self.revoke_local(user_key, sid)
    }

    /// Tells the other instances of revocations (they close those sockets and remember them).
    pub(crate) fn announce_revocations(&self, revocations: &[Revocation]) {
        let Some(broker) = self.broker.get() else { return };
        for r in revocations {
            let envelope = Envelope {
                v: 1,
                from: &self.instance,
                kind: Kind::Revoke {
                    user: &r.user,
                    sid: r.sid.as_deref(),
                    at: Some(r.at_ms),
                    exp: Some(r.expires),
                },
            };
            broker.publish(Channel::Control, envelope.encode());
        }
    }

    /// Whether a token (`user`, its current `sid`) may be used: known revocations, then the
    /// store. A token issued in the second of a user-wide revocation counts as revoked unless
    /// the host verifies users itself (Payload knows which sessions are left).
    pub(crate) async fn check_session(&self, user: &User, sid: Option<&str>) -> Verdict {
        let same_second = self.callbacks.verifier.is_none();
        self.revocations.check(Token::of(user, sid), same_second).await
    }

    /// After Redis came back: this instance's revocations are written again and its open
    /// sockets are checked against the store; revoked ones are closed (4003).
    pub(crate) async fn recheck_sessions(&self) {
        self.revocations.rewrite_all();
        let peers: Vec<Arc<Peer>> = self
            .registry
            .all_peers()
            .into_iter()
            .filter(|p| p.user.is_some())
            .collect();
        if peers.is_empty() {
            return;
        }
        let tokens: Vec<(Option<String>, Option<u64>)> = peers.iter().map(|p| p.token_sid()).collect();
        let queries: Vec<Token> = peers
            .iter()
            .zip(&tokens)
            .map(|(p, (sid, iat))| Token {
                user: p.user_key(),
                sid: sid.as_deref(),
                issued_at: *iat,
            })
            .collect();
        let same_second = self.callbacks.verifier.is_none();
        match self.revocations.check_many(&queries, same_second).await {
            Ok(revoked) => {
                for (peer, revoked) in peers.iter().zip(revoked) {
                    if revoked {
                        self.registry.remove_peer(peer);
                        peer.outbound.close(close_code::SESSION_REVOKED, "session revoked");
                    }
                }
            }
            Err(e) => warn!("could not check open sessions against Redis after a reconnect ({e})"),
        }
    }

    /// A user changed (`doc`) or was deleted (`None`): every instance's sockets of that user
    /// show the new document to rules, read access and handlers; a deleted user's sockets are
    /// closed (4003) and the user is revoked as a whole. Returns the sockets affected here.
    pub fn update_user(&self, user_key: &str, doc: Option<Value>) -> usize {
        if doc.is_none() {
            return self.revoke_session(user_key, None, None, true);
        }
        if let Some(broker) = self.broker.get() {
            let json = doc.as_ref().map_or_else(|| "null".to_string(), Value::to_string);
            if let Some(body) = raw(&json) {
                let envelope = Envelope {
                    v: 1,
                    from: &self.instance,
                    kind: Kind::User {
                        user: user_key,
                        doc: &body,
                    },
                };
                broker.publish(Channel::Control, envelope.encode());
            }
        }
        self.apply_user(user_key, doc)
    }

    fn apply_user(&self, user_key: &str, doc: Option<Value>) -> usize {
        match doc {
            Some(doc) if !doc.is_null() => self.registry.replace_user(user_key, Arc::new(doc)),
            _ => self.revoke_local(user_key, None),
        }
    }

    fn revoke_local(&self, user_key: &str, sid: Option<&str>) -> usize {
        let mut closed = 0;
        for peer in self.registry.all_peers() {
            if peer.user_key() != user_key {
                continue;
            }
            if let Some(sid) = sid {
                if peer.sid.lock().as_deref() != Some(sid) {
                    continue;
                }
            }
            self.registry.remove_peer(&peer);
            peer.outbound.close(close_code::SESSION_REVOKED, "session revoked");
            closed += 1;
        }
        closed
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

/// The frames of missed events one socket may see, in order (each through the authorize rule).
pub(crate) async fn replay_frames(
    hub: &Hub,
    authorize: Option<&str>,
    peer: &Arc<Peer>,
    entries: &[Entry],
) -> Vec<Bytes> {
    match (authorize, &hub.callbacks.authorizer) {
        (Some(collection), Some(a)) => {
            let key: Arc<str> = Arc::from(peer.user_key());
            let user = Arc::new(UserList::new([(key.clone(), peer.user_json())]));
            let checks = entries.iter().map(|e| {
                allowed_users(
                    &**a,
                    collection,
                    e.body(),
                    user.clone(),
                    hub.config.authorize_timeout,
                    &hub.stats,
                )
            });
            let answers = futures_util::future::join_all(checks).await;
            entries
                .iter()
                .zip(answers)
                .filter_map(|(e, allowed)| Some(allowed.get(&key)?.unwrap_or(&e.frame).clone()))
                .collect()
        }
        _ => entries.iter().map(|e| e.frame.clone()).collect(),
    }
}

/// Numbers events in Redis in order, a pipeline per burst, then delivers and publishes them.
/// One task, so events leave in the order they were emitted.
async fn run_appender(hub: std::sync::Weak<Hub>, history: RedisHistory, mut rx: mpsc::UnboundedReceiver<Append>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 256).await > 0 {
        let Some(hub) = hub.upgrade() else { return };
        let items: Vec<(String, String, HistoryPolicy)> = batch
            .iter()
            .map(|a| (a.room.clone(), a.json.clone(), a.policy))
            .collect();
        let (results, evicted) = history.append(&items, &hub.new_epoch()).await;
        hub.histories.count_evicted(evicted);
        for (a, r) in batch.drain(..).zip(results) {
            hub.finish_append(a, r);
        }
    }
}

/// Jobs kept to be sent together, one message per lane: the lane takes them in one go, so the
/// events emitted together are prepared, asked about and delivered together.
#[derive(Default)]
struct LaneBatch {
    jobs: Vec<(usize, Vec<Job>)>,
}

impl LaneBatch {
    fn push(&mut self, lane: usize, job: Job) {
        match self.jobs.iter_mut().find(|(l, _)| *l == lane) {
            Some((_, jobs)) => jobs.push(job),
            None => self.jobs.push((lane, vec![job])),
        }
    }
}

/// Whom an event is not for, as the other instances are told: a socket id and a user key.
trait ExceptOf {
    fn socket(&self) -> Option<&str>;
    fn user(&self) -> Option<&str>;
}

impl ExceptOf for event::Event {
    fn socket(&self) -> Option<&str> {
        self.except_socket.as_deref()
    }
    fn user(&self) -> Option<&str> {
        self.except.user.as_deref()
    }
}

/// An appended event's `except`, kept while its JSON moves on.
struct Skipped {
    socket: Option<String>,
    except: Except,
}

impl ExceptOf for Skipped {
    fn socket(&self) -> Option<&str> {
        self.socket.as_deref()
    }
    fn user(&self) -> Option<&str> {
        self.except.user.as_deref()
    }
}
