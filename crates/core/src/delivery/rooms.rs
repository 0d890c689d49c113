//! The room registry: which sockets are in which room, and the fan-out that pushes one shared
//! frame onto every member's queue.
//!
//! Rooms and sockets live in sharded maps behind `parking_lot` locks that are never held across
//! an `.await`. Lock order, everywhere: a peer's room list, then a room shard (and under it,
//! only while reading, the room's list of users), then a peer's outbound queue. Fan-out holds a
//! shard's read lock only while pushing (a pointer copy per member); sockets evicted during a
//! fan-out are removed after the lock is released.

use std::borrow::Borrow;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxBuildHasher;
use serde_json::Value;

use crate::host::callbacks::UserList;
use crate::stats::Stats;
use crate::write::flush::Wakes;
use crate::write::outbound::{OutFrame, Push};
use crate::write::socket::{Doc, Socket, SocketId};
use crate::write::splice::{self, Piped};

const SHARDS: usize = 32;

/// A socket in a set found by its id: an entry is the `Arc` alone (8 bytes), not an id beside
/// it (16), in the tables that hold an entry per socket (every socket, every room's members).
struct ById(Arc<Socket>);

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

impl Hash for ById {
    /// As the id hashes, so that a set of these is searched by id (`Borrow`).
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id.hash(state);
    }
}

impl Borrow<SocketId> for ById {
    fn borrow(&self) -> &SocketId {
        &self.0.id
    }
}

/// A room: its sockets, and its distinct users (what authorize asks about).
#[derive(Default)]
struct Room {
    members: HashSet<ById>,
    /// Each user with sockets in the room (by [`Socket::user_key`]): the user as the first of
    /// those sockets shows it, and how many of them are here. Kept up to date on join and
    /// leave, so an authorized event asks about the room's users without walking its sockets.
    users: HashMap<Arc<str>, (Doc, usize), FxBuildHasher>,
    /// `users` as authorize asks about them, made the first time it asks and dropped when a
    /// user comes or goes: the events of a burst share it (see [`UserList`]).
    list: Mutex<Option<Arc<UserList>>>,
}

impl Room {
    fn insert(&mut self, peer: &Arc<Socket>) {
        self.members.insert(ById(peer.clone()));
        let key = peer.user_key();
        match self.users.get_mut(key) {
            Some((_, n)) => *n += 1,
            None => {
                self.users.insert(Arc::from(key), (peer.doc(), 1));
                *self.list.get_mut() = None;
            }
        }
    }

    fn remove(&mut self, peer: &Socket) -> bool {
        if !self.members.remove(&peer.id) {
            return false;
        }
        let key = peer.user_key();
        if let Some((_, n)) = self.users.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.users.remove(key);
                *self.list.get_mut() = None;
            }
        }
        true
    }
}

/// The users allowed to receive one event (by [`Socket::user_key`]).
pub(crate) enum AllowedUsers {
    /// Every user of the list that was asked, each with the event's own frame.
    Every(Arc<UserList>),
    /// These users, each with a frame of its own when its answer carried a document of its own.
    Only(HashMap<Arc<str>, Option<Bytes>, FxBuildHasher>),
}

impl Default for AllowedUsers {
    /// Nobody.
    fn default() -> AllowedUsers {
        AllowedUsers::Only(HashMap::default())
    }
}

impl AllowedUsers {
    /// Whether the user with this key may have the event: `None` if not, else its own frame if
    /// it has one (`Some(None)`: the event's frame).
    pub(crate) fn get(&self, user_key: &str) -> Option<Option<&Bytes>> {
        match self {
            AllowedUsers::Every(list) => list.contains(user_key).then_some(None),
            AllowedUsers::Only(users) => users.get(user_key).map(Option::as_ref),
        }
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        match self {
            AllowedUsers::Every(list) => list.is_empty(),
            AllowedUsers::Only(users) => users.is_empty(),
        }
    }
}

/// Who a fan-out leaves out: one socket (the sender of a broadcast), and every socket of one
/// user (by [`Socket::user_key`]: an app event published "to everyone but the user who caused it").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Except {
    pub(crate) peer: Option<SocketId>,
    pub(crate) user: Option<Arc<str>>,
}

impl Except {
    fn skips(&self, peer: &Socket) -> bool {
        Some(peer.id) == self.peer
            || self
                .user
                .as_deref()
                .is_some_and(|u| peer.user.is_some() && peer.user_key() == u)
    }
}

impl From<Option<SocketId>> for Except {
    fn from(peer: Option<SocketId>) -> Except {
        Except { peer, user: None }
    }
}

/// One frame of a run: its history offset, and who may have it (`None`: every member).
pub(crate) struct RunFrame {
    pub(crate) frame: Bytes,
    pub(crate) offset: Option<u64>,
    pub(crate) allowed: Option<AllowedUsers>,
}

/// Told when a room gains its first member (`true`) or loses its last (`false`), under the
/// room's shard lock, so the calls for one room come in order. It must not block.
pub(crate) type RoomHook = Box<dyn Fn(&str, bool) + Send + Sync>;

/// Told when a socket joins (`true`) or leaves a room, under the room's shard lock: it must not
/// block nor touch the registry (presence queues its announcements on the room's lane).
pub(crate) type MemberHook = Box<dyn Fn(&str, &Socket, bool) + Send + Sync>;

pub(crate) struct RoomRegistry {
    peers: Vec<RwLock<HashSet<ById>>>,
    rooms: Vec<RwLock<HashMap<Arc<str>, Room>>>,
    hook: OnceLock<RoomHook>,
    member_hook: OnceLock<MemberHook>,
    room_count: AtomicUsize,
}

/// The result of a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Joined {
    New,
    Already,
    /// The socket is closed.
    Closed,
    /// The socket is in `max_rooms` rooms already.
    TooMany,
}

fn shard_of<K: Hash + ?Sized>(key: &K) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

impl Default for RoomRegistry {
    fn default() -> Self {
        RoomRegistry {
            peers: (0..SHARDS).map(|_| RwLock::new(HashSet::new())).collect(),
            rooms: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            room_count: AtomicUsize::new(0),
            hook: OnceLock::new(),
            member_hook: OnceLock::new(),
        }
    }
}

impl RoomRegistry {
    /// Sets the member hook (presence). Once.
    pub(crate) fn set_member_hook(&self, hook: MemberHook) {
        let _ = self.member_hook.set(hook);
    }

    /// Sets the room hook (the broker's subscribe and unsubscribe). Once.
    pub(crate) fn set_room_hook(&self, hook: RoomHook) {
        let _ = self.hook.set(hook);
    }
    pub(crate) fn add_socket(&self, peer: Arc<Socket>) {
        self.peers[shard_of(&peer.id)].write().insert(ById(peer));
    }

    pub(crate) fn peer(&self, id: SocketId) -> Option<Arc<Socket>> {
        self.peers[shard_of(&id)].read().get(&id).map(|p| p.0.clone())
    }

    /// A user changed: its sockets, and the rooms' lists of users that authorize asks about,
    /// show `value` from now on. Returns how many sockets that user has here.
    pub(crate) fn replace_user(&self, user_key: &str, value: Arc<Value>) -> usize {
        let peers: Vec<Arc<Socket>> = self
            .all_sockets()
            .into_iter()
            .filter(|p| p.user.is_some() && p.user_key() == user_key)
            .collect();
        let mut rooms: Vec<Arc<str>> = Vec::new();
        for peer in &peers {
            peer.set_user_doc(value.clone());
            if let Some(list) = peer.rooms.lock().as_ref() {
                rooms.extend(list.iter().cloned());
            }
        }
        rooms.sort();
        rooms.dedup();
        for room in rooms {
            let mut shard = self.rooms[shard_of(&*room)].write();
            if let Some(r) = shard.get_mut(&room) {
                if let Some((v, _)) = r.users.get_mut(user_key) {
                    *v = Doc::Value(value.clone());
                    *r.list.get_mut() = None;
                }
            }
        }
        peers.len()
    }

    /// Every connected socket (for shutdown).
    pub(crate) fn all_sockets(&self) -> Vec<Arc<Socket>> {
        self.peers
            .iter()
            .flat_map(|s| s.read().iter().map(|p| p.0.clone()).collect::<Vec<_>>())
            .collect()
    }

    /// Calls `f` with every socket, one shard's read lock at a time (so `f` must not take a
    /// registry lock: collect, then act).
    pub(crate) fn for_each_socket(&self, mut f: impl FnMut(&Arc<Socket>)) {
        for shard in &self.peers {
            shard.read().iter().for_each(|p| f(&p.0));
        }
    }

    /// Removes a socket from every room and from the socket map, in one step: after this no
    /// fan-out can reach it. Idempotent.
    pub(crate) fn remove_socket(&self, peer: &Socket) -> bool {
        let rooms = peer.rooms.lock().take();
        if let Some(rooms) = &rooms {
            for room in rooms {
                self.remove_member(room, peer);
            }
        }
        self.peers[shard_of(&peer.id)].write().remove(&peer.id);
        rooms.is_some()
    }

    fn remove_member(&self, room: &str, peer: &Socket) {
        let mut shard = self.rooms[shard_of(room)].write();
        if let Some(members) = shard.get_mut(room) {
            if members.remove(peer) {
                if let Some(hook) = self.member_hook.get() {
                    hook(room, peer, false);
                }
            }
            if members.members.is_empty() {
                shard.remove(room);
                self.room_count.fetch_sub(1, Ordering::Relaxed);
                if let Some(hook) = self.hook.get() {
                    hook(room, false);
                }
            }
        }
    }

    pub(crate) fn join(&self, peer: &Arc<Socket>, room: &str, max_rooms: usize) -> Joined {
        let mut rooms = peer.rooms.lock();
        let Some(list) = rooms.as_mut() else {
            return Joined::Closed;
        };
        if list.iter().any(|r| &**r == room) {
            return Joined::Already;
        }
        if list.len() >= max_rooms {
            return Joined::TooMany;
        }
        let mut shard = self.rooms[shard_of(room)].write();
        let key = match shard.get_key_value(room) {
            Some((k, _)) => k.clone(),
            None => {
                let k: Arc<str> = Arc::from(room);
                shard.insert(k.clone(), Room::default());
                self.room_count.fetch_add(1, Ordering::Relaxed);
                if let Some(hook) = self.hook.get() {
                    hook(room, true);
                }
                k
            }
        };
        shard.get_mut(room).expect("just ensured").insert(peer);
        if let Some(hook) = self.member_hook.get() {
            hook(room, peer, true);
        }
        // Most sockets are in one or two rooms: grow one at a time at first, not to four.
        if list.len() < 4 {
            list.reserve_exact(1);
        }
        list.push(key);
        Joined::New
    }

    pub(crate) fn leave(&self, peer: &Socket, room: &str) -> bool {
        let mut rooms = peer.rooms.lock();
        let Some(list) = rooms.as_mut() else {
            return false;
        };
        let Some(pos) = list.iter().position(|r| &**r == room) else {
            return false;
        };
        list.swap_remove(pos);
        self.remove_member(room, peer);
        true
    }

    /// A snapshot of a room's members.
    pub(crate) fn members(&self, room: &str) -> Vec<Arc<Socket>> {
        self.rooms[shard_of(room)]
            .read()
            .get(room)
            .map(|m| m.members.iter().map(|p| p.0.clone()).collect())
            .unwrap_or_default()
    }

    /// A room's distinct users: the key its sockets are grouped by, and the user as the host
    /// sees it. The same list (one `Arc`) until a user comes or goes.
    pub(crate) fn users(&self, room: &str) -> Arc<UserList> {
        let shard = self.rooms[shard_of(room)].read();
        let Some(r) = shard.get(room) else {
            return Arc::default();
        };
        let mut list = r.list.lock();
        list.get_or_insert_with(|| Arc::new(UserList::new(r.users.iter().map(|(k, (u, _))| (k.clone(), u.value())))))
            .clone()
    }

    pub(crate) fn member_count(&self, room: &str) -> usize {
        self.rooms[shard_of(room)]
            .read()
            .get(room)
            .map_or(0, |r| r.members.len())
    }

    pub(crate) fn room_count(&self) -> usize {
        self.room_count.load(Ordering::Relaxed)
    }

    /// Pushes a run of a room's frames (consecutive events, oldest first) to its members but
    /// `except`, each frame to the members it allows. A member gets what it may have as one
    /// buffer, the frames end to end: a burst of events costs one queue push per socket, not
    /// one per event. The buffer is built once per distinct set of frames (once for the whole
    /// room without authorize, once per user with it). A member recovering missed events gets
    /// its frames one by one, each through [`Socket::hold_back`]. Membership is read now: a
    /// socket that left meanwhile gets nothing, and one whose user was not asked is skipped.
    /// Returns the queue pushes made, and how many sockets each frame was queued to.
    pub(crate) fn fan_out_run(
        &self,
        room: &str,
        run: &[RunFrame],
        except: impl Into<Except>,
        stats: &Stats,
        wakes: &mut Wakes,
    ) -> (usize, Vec<usize>) {
        let except = except.into();
        let everyone = run.iter().all(|f| f.allowed.is_none());
        let mut tally = Tally::new(run.len());
        {
            let shard = self.rooms[shard_of(room)].read();
            if let Some(members) = shard.get(room) {
                let mut buffers = Buffers::default();
                for ById(peer) in &members.members {
                    if except.skips(peer) {
                        continue;
                    }
                    let key = if everyone { "" } else { peer.user_key() };
                    if peer.is_recovering() {
                        tally.push_one_by_one(room, peer, frames_of(run, key), wakes);
                    } else {
                        tally.push_merged(peer, buffers.of_user(run, key, everyone), wakes);
                    }
                }
                buffers.count_into(&mut tally.counts);
            }
        }
        tally.record(stats);
        self.evict_all(&tally.evicted, stats);
        (tally.pushes, tally.counts)
    }

    /// Sends one frame to one socket; `false` if it is gone or closing.
    pub(crate) fn send_to(&self, peer: &Arc<Socket>, frame: Bytes, stats: &Stats) -> bool {
        let len = frame.len() as u64;
        match peer.outbound.push(frame) {
            Push::Queued | Push::Behind => {
                Stats::add(&stats.messages_out, 1);
                Stats::add(&stats.bytes_out, len);
                true
            }
            Push::Closed => {
                Stats::add(&stats.dropped, 1);
                false
            }
            Push::Evicted => {
                self.evict_all(std::slice::from_ref(peer), stats);
                false
            }
        }
    }

    pub(crate) fn evict_all(&self, peers: &[Arc<Socket>], stats: &Stats) {
        for peer in peers {
            Stats::add(&stats.slow_consumers, 1);
            Stats::add(&stats.dropped, 1);
            self.remove_socket(peer);
        }
    }
}

/// The frames of a run one user may have, with their places in the run.
fn frames_of<'r>(run: &'r [RunFrame], key: &str) -> Vec<(usize, &'r Bytes, Option<u64>)> {
    // The events of a burst that every user may read share one list: the user is looked up in
    // it once, the list known by its address.
    let mut on_list: Option<(*const UserList, bool)> = None;
    run.iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let own = match &f.allowed {
                None => None,
                Some(AllowedUsers::Every(list)) => {
                    let at = Arc::as_ptr(list);
                    let yes = match on_list {
                        Some((seen, yes)) if seen == at => yes,
                        _ => {
                            let yes = list.contains(key);
                            on_list = Some((at, yes));
                            yes
                        }
                    };
                    if !yes {
                        return None;
                    }
                    None // on the list: the event's own frame
                }
                Some(AllowedUsers::Only(users)) => users.get(key)?.as_ref(),
            };
            Some((i, own.unwrap_or(&f.frame), f.offset))
        })
        .collect()
}

/// Each user's buffer of one fan-out, found by user key. Users whose frames are the same (the
/// same frames of the run, no doc of their own: most users of most rules) share one buffer,
/// built once. The kernel then copies the same bytes into every socket, hot in cache, instead
/// of one copy of the run per user.
#[derive(Default)]
struct Buffers<'a> {
    merged: Vec<Merged>,
    by_user: HashMap<&'a str, usize, FxBuildHasher>,
    /// With no rule every socket has the same frames: their buffer, found once.
    everyones: Option<usize>,
    /// Buffers by the frames they hold: same frame, same place, same bytes (the run holds
    /// every frame alive).
    by_shape: HashMap<Vec<(usize, usize, usize)>, usize, FxBuildHasher>,
}

impl<'a> Buffers<'a> {
    /// The buffer of user `key` (of everyone when `everyone`), built on first use.
    fn of_user(&mut self, run: &[RunFrame], key: &'a str, everyone: bool) -> &mut Merged {
        let at = match self.everyones {
            Some(at) => at,
            None => {
                let (merged, by_shape) = (&mut self.merged, &mut self.by_shape);
                let at = *self.by_user.entry(key).or_insert_with(|| {
                    let frames = frames_of(run, key);
                    let shape = frames
                        .iter()
                        .map(|(i, f, _)| (*i, f.as_ptr() as usize, f.len()))
                        .collect();
                    *by_shape.entry(shape).or_insert_with(|| {
                        merged.push(Merged::of(&frames));
                        merged.len() - 1
                    })
                });
                if everyone {
                    self.everyones = Some(at);
                }
                at
            }
        };
        &mut self.merged[at]
    }

    /// Adds to each frame's count the sockets its buffers were queued to.
    fn count_into(&self, counts: &mut [usize]) {
        for merged in &self.merged {
            for &i in &merged.frames {
                counts[i] += merged.sockets;
            }
        }
    }
}

/// What one fan-out did: its result, and what goes into the counters.
struct Tally {
    /// How many sockets each frame of the run was queued to.
    counts: Vec<usize>,
    /// Queue pushes made.
    pushes: usize,
    /// Frames not queued: the socket was closing, or is evicted.
    dropped: usize,
    /// Frames the authorize rule kept from a member.
    denied: usize,
    /// Bytes queued.
    bytes: usize,
    /// Members whose queue overflowed, removed once the room's shard is unlocked.
    evicted: Vec<Arc<Socket>>,
}

impl Tally {
    fn new(frames: usize) -> Tally {
        Tally {
            counts: vec![0; frames],
            pushes: 0,
            dropped: 0,
            denied: 0,
            bytes: 0,
            evicted: Vec::new(),
        }
    }

    /// A member recovering missed events gets its frames of the run one by one, each through
    /// [`Socket::hold_back`] (its live frames of the room wait behind the replay).
    fn push_one_by_one(
        &mut self,
        room: &str,
        peer: &Arc<Socket>,
        frames: Vec<(usize, &Bytes, Option<u64>)>,
        wakes: &mut Wakes,
    ) {
        self.denied += self.counts.len() - frames.len();
        for (i, frame, offset) in frames {
            if peer.hold_back(room, offset, frame) {
                continue;
            }
            self.pushes += 1;
            match wakes.push(peer, frame.clone()) {
                Push::Queued | Push::Behind => {
                    self.counts[i] += 1;
                    self.bytes += frame.len();
                }
                Push::Closed => self.dropped += 1,
                Push::Evicted => {
                    self.evicted.push(peer.clone());
                    break;
                }
            }
        }
    }

    /// A member gets its user's frames of the run as one buffer.
    fn push_merged(&mut self, peer: &Arc<Socket>, merged: &mut Merged, wakes: &mut Wakes) {
        self.denied += self.counts.len() - merged.frames.len();
        let Some(frame) = merged.next_frame() else {
            return;
        };
        self.pushes += 1;
        let len = frame.len();
        match wakes.push(peer, frame) {
            Push::Queued | Push::Behind => {
                merged.sockets += 1;
                self.bytes += len;
            }
            Push::Closed => self.dropped += merged.frames.len(),
            Push::Evicted => {
                // `evict_all` counts one of them.
                self.dropped += merged.frames.len() - 1;
                self.evicted.push(peer.clone());
            }
        }
    }

    fn record(&self, stats: &Stats) {
        Stats::add(&stats.messages_out, self.counts.iter().sum::<usize>() as u64);
        Stats::add(&stats.bytes_out, self.bytes as u64);
        Stats::add(&stats.dropped, self.dropped as u64);
        Stats::add(&stats.authorize_denied, self.denied as u64);
    }
}

/// What the members of one user get of a run: the frames end to end as one buffer (the frame
/// itself when there is one; `None` when there are none), which frames of the run those are,
/// and to how many sockets it was queued.
struct Merged {
    buf: Option<Bytes>,
    frames: Vec<usize>,
    sockets: usize,
    /// Sockets it was handed to so far, and once that passed [`splice::MIN_SOCKETS`], the pipe
    /// that hands it to the rest by reference (large buffers only).
    handed: usize,
    piped: Option<Arc<Piped>>,
}

impl Merged {
    fn of(frames: &[(usize, &Bytes, Option<u64>)]) -> Merged {
        let buf = match frames {
            [] => None,
            [(_, only, _)] => Some((*only).clone()),
            frames => {
                let mut buf = BytesMut::with_capacity(frames.iter().map(|(_, f, _)| f.len()).sum());
                for (_, frame, _) in frames {
                    buf.extend_from_slice(frame);
                }
                Some(buf.freeze())
            }
        };
        Merged {
            buf,
            frames: frames.iter().map(|(i, _, _)| *i).collect(),
            sockets: 0,
            handed: 0,
            piped: None,
        }
    }

    /// The buffer for the next socket: by copy for the first [`splice::MIN_SOCKETS`], then with
    /// a pipe when the buffer is large enough to gain from it (`None`: nothing to send).
    fn next_frame(&mut self) -> Option<OutFrame> {
        let buf = self.buf.as_ref()?;
        self.handed += 1;
        if self.handed == splice::MIN_SOCKETS + 1 {
            self.piped = Piped::new(buf);
        }
        Some(OutFrame {
            bytes: buf.clone(),
            piped: self.piped.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: SocketId, limit: usize) -> Arc<Socket> {
        Arc::new(Socket::new(id, None, limit))
    }

    #[test]
    fn join_leave_and_count() {
        let reg = RoomRegistry::default();
        let a = peer(1, 1 << 20);
        let b = peer(2, 1 << 20);
        reg.add_socket(a.clone());
        reg.add_socket(b.clone());
        assert_eq!(reg.join(&a, "r", 10), Joined::New);
        assert_eq!(reg.join(&a, "r", 10), Joined::Already);
        assert_eq!(reg.join(&b, "r", 10), Joined::New);
        assert_eq!(reg.join(&b, "s", 10), Joined::New);
        assert_eq!(reg.room_count(), 2);
        assert_eq!(reg.member_count("r"), 2);
        assert!(reg.leave(&a, "r"));
        assert!(!reg.leave(&a, "r"));
        assert_eq!(reg.member_count("r"), 1);
        reg.remove_socket(&b);
        assert_eq!(reg.room_count(), 0);
        assert_eq!(reg.join(&b, "r", 10), Joined::Closed);
        assert!(reg.peer(2).is_none());
        assert!(reg.peer(1).is_some());
    }

    #[test]
    fn room_limit_per_socket() {
        let reg = RoomRegistry::default();
        let a = peer(1, 1 << 20);
        assert_eq!(reg.join(&a, "1", 2), Joined::New);
        assert_eq!(reg.join(&a, "2", 2), Joined::New);
        assert_eq!(reg.join(&a, "3", 2), Joined::TooMany);
    }

    /// One frame to the room, as a run of one; how many sockets it was queued to.
    fn fan_out(
        reg: &RoomRegistry,
        room: &str,
        frame: &Bytes,
        except: Option<SocketId>,
        stats: &Stats,
        wakes: &mut Wakes,
    ) -> usize {
        let run = [RunFrame {
            frame: frame.clone(),
            offset: None,
            allowed: None,
        }];
        reg.fan_out_run(room, &run, except, stats, wakes).1[0]
    }

    /// A large buffer goes to the first sockets by copy, then with a pipe to the rest (each
    /// the same bytes); a small one never has a pipe.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_large_buffer_is_piped_after_the_first_sockets() {
        let reg = RoomRegistry::default();
        let stats = Stats::default();
        let peers: Vec<_> = (0..40).map(|i| peer(i, 1 << 20)).collect();
        for p in &peers {
            reg.add_socket(p.clone());
            reg.join(p, "r", 10);
        }
        let mut wakes = Wakes::default();
        let big = Bytes::from(vec![7u8; 20_000]);
        assert_eq!(fan_out(&reg, "r", &big, None, &stats, &mut wakes), 40);
        let small = Bytes::from(vec![1u8; 1000]);
        assert_eq!(fan_out(&reg, "r", &small, None, &stats, &mut wakes), 40);
        let piped: Vec<Vec<bool>> = peers.iter().map(|p| p.outbound.queued_piped()).collect();
        assert_eq!(piped.iter().filter(|q| q[0]).count(), 40 - splice::MIN_SOCKETS);
        assert!(piped.iter().all(|q| !q[1]), "a small buffer is never piped");
        for p in &peers {
            assert_eq!(p.outbound.queued(), vec![big.clone(), small.clone()]);
        }
    }

    #[test]
    fn fan_out_skips_except_and_evicts_slow_members() {
        let reg = RoomRegistry::default();
        let stats = Stats::default();
        let fast = peer(1, 1 << 20);
        let slow = peer(2, 100);
        let other = peer(3, 1 << 20);
        for p in [&fast, &slow, &other] {
            reg.add_socket(p.clone());
            reg.join(p, "r", 10);
        }
        let frame = Bytes::from(vec![0u8; 60]);
        let mut wakes = Wakes::default();
        assert_eq!(fan_out(&reg, "r", &frame, Some(3), &stats, &mut wakes), 2);
        // slow's client takes nothing more (its send buffer is full).
        slow.outbound.block();
        // The second push passes slow's bound: it is evicted and leaves the room.
        assert_eq!(fan_out(&reg, "r", &frame, Some(3), &stats, &mut wakes), 1);
        // Woken once each, at the end of the burst: fast and slow (evicted, woken at once).
        assert_eq!(wakes.to_write(), 2);
        assert!(slow.outbound.was_evicted());
        assert!(!slow.in_room("r"));
        assert_eq!(reg.member_count("r"), 2);
        assert_eq!(stats.slow_consumers.load(Ordering::Relaxed), 1);
        assert_eq!(fast.outbound.queued_bytes(), 120);
        assert_eq!(other.outbound.queued_bytes(), 0);
    }

    #[test]
    fn a_run_is_one_push_per_member_and_frame_by_frame_for_a_recovering_one() {
        let reg = RoomRegistry::default();
        let stats = Stats::default();
        let live = peer(1, 1 << 20);
        let recovering = peer(2, 1 << 20);
        let sender = peer(3, 1 << 20);
        for p in [&live, &recovering, &sender] {
            reg.add_socket(p.clone());
            reg.join(p, "r", 10);
        }
        let room: Arc<str> = Arc::from("r");
        recovering.start_recovery(&room);
        let run: Vec<RunFrame> = (0..3u8)
            .map(|i| RunFrame {
                frame: Bytes::from(vec![i; 10]),
                offset: Some(i as u64),
                allowed: None,
            })
            .collect();
        let mut wakes = Wakes::default();
        // live: one push of the three; recovering: each frame held back (queued later).
        assert_eq!(
            reg.fan_out_run("r", &run, Some(3), &stats, &mut wakes),
            (1, vec![1, 1, 1])
        );
        // Nobody woken before the burst is over; then each socket that got something, once.
        assert_eq!(wakes.to_write(), 1);
        assert_eq!(live.outbound.queued_bytes(), 30);
        assert_eq!(sender.outbound.queued_bytes(), 0);
        // Held back one by one, with their offsets; replayed offset 1 is not delivered twice.
        assert_eq!(recovering.outbound.queued_bytes(), 0);
        let held = recovering.end_recovery("r", [1u64].into_iter().collect(), 0);
        let offsets: Vec<_> = held.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, vec![Some(0), Some(2)]);
        assert_eq!(stats.messages_out.load(Ordering::Relaxed), 3);
        let mut batch = crate::write::outbound::Batch::default();
        live.outbound.take_into(&mut batch);
        assert!(!batch.is_empty());
    }

    #[test]
    fn an_authorized_run_gives_each_user_what_it_may_have() {
        use crate::auth::User;
        let reg = RoomRegistry::default();
        let stats = Stats::default();
        let of = |id: SocketId, user: u64| {
            let u = User::from_claims(serde_json::json!({"id": user, "collection": "users"})).unwrap();
            Arc::new(Socket::new(id, Some(u), 1 << 20))
        };
        // Users 1 (two sockets), 2 and 3 (not asked: it joined after the question).
        let peers = [of(1, 1), of(2, 1), of(3, 2), of(4, 3)];
        for p in &peers {
            reg.add_socket(p.clone());
            reg.join(p, "r", 10);
        }
        let list = reg.users("r");
        let mut users: Vec<_> = list.keys.iter().map(|k| k.to_string()).collect();
        users.sort();
        assert_eq!(users, vec!["users:1", "users:2", "users:3"]);
        assert!(
            Arc::ptr_eq(&list, &reg.users("r")),
            "the same list until the users change"
        );
        let allow = |pairs: &[(&str, Option<&'static [u8]>)]| -> Option<AllowedUsers> {
            Some(AllowedUsers::Only(
                pairs
                    .iter()
                    .map(|(k, own)| (Arc::from(*k), own.map(Bytes::from_static)))
                    .collect(),
            ))
        };
        let run = vec![
            // Event a: user 1; user 2 with a doc of its own.
            RunFrame {
                frame: Bytes::from_static(b"a"),
                offset: None,
                allowed: allow(&[("users:1", None), ("users:2", Some(b"A2"))]),
            },
            // Event b: user 2 only.
            RunFrame {
                frame: Bytes::from_static(b"b"),
                offset: None,
                allowed: allow(&[("users:2", None)]),
            },
            // A broadcast: everyone.
            RunFrame {
                frame: Bytes::from_static(b"c"),
                offset: None,
                allowed: None,
            },
        ];
        let mut wakes = Wakes::default();
        let (pushes, counts) = reg.fan_out_run("r", &run, None, &stats, &mut wakes);
        assert_eq!((pushes, counts), (4, vec![3, 1, 4]));
        let queued = |p: &Arc<Socket>| {
            let mut batch = crate::write::outbound::Batch::default();
            p.outbound.take_into(&mut batch);
            struct Sink(std::cell::RefCell<Vec<u8>>);
            impl crate::write::outbound::TryWrite for Sink {
                fn try_write_vectored(&self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
                    let mut n = 0;
                    for b in bufs {
                        self.0.borrow_mut().extend_from_slice(b);
                        n += b.len();
                    }
                    Ok(n)
                }
            }
            let sink = Sink(Default::default());
            batch.write_to(&p.outbound, &sink).unwrap();
            sink.0.into_inner()
        };
        assert_eq!(queued(&peers[0]), b"ac");
        assert_eq!(queued(&peers[1]), b"ac");
        assert_eq!(queued(&peers[2]), b"A2bc");
        assert_eq!(queued(&peers[3]), b"c");
        // Withheld: b from user 1's two sockets, a and b from user 3's.
        assert_eq!(stats.authorize_denied.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn users_allowed_the_same_frames_share_one_buffer() {
        use crate::auth::User;
        let reg = RoomRegistry::default();
        let stats = Stats::default();
        let peers: Vec<_> = [1u64, 3, 5, 2, 4]
            .iter()
            .enumerate()
            .map(|(i, &user)| {
                let u = User::from_claims(serde_json::json!({"id": user, "collection": "users"})).unwrap();
                let p = Arc::new(Socket::new(i as SocketId + 1, Some(u), 1 << 20));
                reg.add_socket(p.clone());
                reg.join(&p, "r", 10);
                p
            })
            .collect();
        let allowed = |own2: Option<&'static [u8]>| -> Option<AllowedUsers> {
            let mut m: HashMap<Arc<str>, Option<Bytes>, FxBuildHasher> = ["users:1", "users:3", "users:5"]
                .iter()
                .map(|k| (Arc::from(*k), None))
                .collect();
            m.insert(Arc::from("users:2"), own2.map(Bytes::from_static));
            Some(AllowedUsers::Only(m))
        };
        // Users 1, 3 and 5 may read both events; user 2 reads the first with a doc of its own
        // and the second as it is; user 4 reads neither.
        let run = vec![
            RunFrame {
                frame: Bytes::from_static(b"a"),
                offset: None,
                allowed: allowed(Some(b"A2")),
            },
            RunFrame {
                frame: Bytes::from_static(b"b"),
                offset: None,
                allowed: allowed(None),
            },
        ];
        let (pushes, counts) = reg.fan_out_run("r", &run, None, &stats, &mut Wakes::default());
        assert_eq!((pushes, counts), (4, vec![4, 4]));
        let one = |p: &Arc<Socket>| {
            let q = p.outbound.queued();
            assert_eq!(q.len(), 1, "one buffer per socket for the run");
            q[0].clone()
        };
        let shared = one(&peers[0]);
        assert_eq!(&shared[..], b"ab");
        for p in &peers[1..3] {
            let b = one(p);
            assert_eq!(b.as_ptr(), shared.as_ptr(), "users 3 and 5 share user 1's buffer");
            assert_eq!(b.len(), shared.len());
        }
        let own = one(&peers[3]);
        assert_eq!(&own[..], b"A2b");
        assert!(peers[4].outbound.queued().is_empty());
        assert_eq!(stats.authorize_denied.load(Ordering::Relaxed), 2);
    }
}
