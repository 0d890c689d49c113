//! The room registry: which sockets are in which room, and the fan-out that pushes one shared
//! frame onto every member's queue.
//!
//! Rooms and sockets live in sharded maps behind `parking_lot` locks that are never held across
//! an `.await`. Lock order, everywhere: a peer's room list, then a room shard, then a peer's
//! outbound queue. Fan-out holds a shard's read lock only while pushing (a pointer copy per
//! member); sockets evicted during a fan-out are removed after the lock is released.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::RwLock;

use crate::outbound::Push;
use crate::peer::{Peer, PeerId};
use crate::stats::Stats;

const SHARDS: usize = 32;

type Members = HashMap<PeerId, Arc<Peer>>;

/// Told when a room gains its first member (`true`) or loses its last (`false`), under the
/// room's shard lock, so the calls for one room come in order. It must not block.
pub type RoomHook = Box<dyn Fn(&str, bool) + Send + Sync>;

/// Told when a socket joins (`true`) or leaves a room, under the room's shard lock: it must not
/// block nor touch the registry (presence queues its announcements on the room's lane).
pub type MemberHook = Box<dyn Fn(&str, &Peer, bool) + Send + Sync>;

pub struct Registry {
    peers: Vec<RwLock<HashMap<PeerId, Arc<Peer>>>>,
    rooms: Vec<RwLock<HashMap<Arc<str>, Members>>>,
    hook: OnceLock<RoomHook>,
    member_hook: OnceLock<MemberHook>,
    room_count: AtomicUsize,
}

/// The result of a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
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

impl Default for Registry {
    fn default() -> Self {
        Registry {
            peers: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            rooms: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            room_count: AtomicUsize::new(0),
            hook: OnceLock::new(),
            member_hook: OnceLock::new(),
        }
    }
}

impl Registry {
    /// Sets the member hook (presence). Once.
    pub fn set_member_hook(&self, hook: MemberHook) {
        let _ = self.member_hook.set(hook);
    }

    /// Sets the room hook (the broker's subscribe and unsubscribe). Once.
    pub fn set_room_hook(&self, hook: RoomHook) {
        let _ = self.hook.set(hook);
    }
    pub fn add_peer(&self, peer: Arc<Peer>) {
        self.peers[shard_of(&peer.id)].write().insert(peer.id, peer);
    }

    pub fn peer(&self, id: PeerId) -> Option<Arc<Peer>> {
        self.peers[shard_of(&id)].read().get(&id).cloned()
    }

    /// Every connected socket (for shutdown).
    pub fn all_peers(&self) -> Vec<Arc<Peer>> {
        self.peers
            .iter()
            .flat_map(|s| s.read().values().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Removes a socket from every room and from the socket map, in one step: after this no
    /// fan-out can reach it. Idempotent.
    pub fn remove_peer(&self, peer: &Peer) -> bool {
        let rooms = peer.rooms.lock().take();
        if let Some(rooms) = &rooms {
            for room in rooms {
                self.remove_member(room, peer);
            }
        }
        self.peers[shard_of(&peer.id)].write().remove(&peer.id);
        rooms.is_some()
    }

    fn remove_member(&self, room: &str, peer: &Peer) {
        let mut shard = self.rooms[shard_of(room)].write();
        if let Some(members) = shard.get_mut(room) {
            if members.remove(&peer.id).is_some() {
                if let Some(hook) = self.member_hook.get() {
                    hook(room, peer, false);
                }
            }
            if members.is_empty() {
                shard.remove(room);
                self.room_count.fetch_sub(1, Ordering::Relaxed);
                if let Some(hook) = self.hook.get() {
                    hook(room, false);
                }
            }
        }
    }

    pub fn join(&self, peer: &Arc<Peer>, room: &str, max_rooms: usize) -> Joined {
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
                shard.insert(k.clone(), HashMap::new());
                self.room_count.fetch_add(1, Ordering::Relaxed);
                if let Some(hook) = self.hook.get() {
                    hook(room, true);
                }
                k
            }
        };
        shard.get_mut(room).expect("just ensured").insert(peer.id, peer.clone());
        if let Some(hook) = self.member_hook.get() {
            hook(room, peer, true);
        }
        list.push(key);
        Joined::New
    }

    pub fn leave(&self, peer: &Peer, room: &str) -> bool {
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
    pub fn members(&self, room: &str) -> Vec<Arc<Peer>> {
        self.rooms[shard_of(room)]
            .read()
            .get(room)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn member_count(&self, room: &str) -> usize {
        self.rooms[shard_of(room)].read().get(room).map_or(0, HashMap::len)
    }

    pub fn room_count(&self) -> usize {
        self.room_count.load(Ordering::Relaxed)
    }

    /// Pushes one frame to every member of a room but `except`. Returns how many got it.
    pub fn fan_out(
        &self,
        room: &str,
        frame: &Bytes,
        except: Option<PeerId>,
        offset: Option<u64>,
        stats: &Stats,
    ) -> usize {
        let mut evicted = Vec::new();
        let mut delivered = 0;
        {
            let shard = self.rooms[shard_of(room)].read();
            if let Some(members) = shard.get(room) {
                for peer in members.values() {
                    if Some(peer.id) == except || peer.hold_back(room, offset, frame) {
                        continue;
                    }
                    match peer.outbound.push(frame.clone()) {
                        Push::Queued => delivered += 1,
                        Push::Closed => Stats::add(&stats.dropped, 1),
                        Push::Evicted => evicted.push(peer.clone()),
                    }
                }
            }
        }
        Stats::add(&stats.messages_out, delivered as u64);
        self.evict_all(&evicted, stats);
        delivered
    }

    /// Pushes one frame to the given sockets (authorized delivery), skipping any that left the
    /// room meanwhile.
    pub fn deliver_to(
        &self,
        room: &str,
        peers: &[(Arc<Peer>, Option<Bytes>)],
        frame: &Bytes,
        offset: Option<u64>,
        stats: &Stats,
    ) -> usize {
        let mut evicted = Vec::new();
        let mut delivered = 0;
        for (peer, own) in peers {
            let frame = own.as_ref().unwrap_or(frame);
            if !peer.in_room(room) || peer.hold_back(room, offset, frame) {
                continue;
            }
            match peer.outbound.push(frame.clone()) {
                Push::Queued => delivered += 1,
                Push::Closed => Stats::add(&stats.dropped, 1),
                Push::Evicted => evicted.push(peer.clone()),
            }
        }
        Stats::add(&stats.messages_out, delivered as u64);
        self.evict_all(&evicted, stats);
        delivered
    }

    /// Sends one frame to one socket; `false` if it is gone or closing.
    pub fn send_to(&self, peer: &Arc<Peer>, frame: Bytes, stats: &Stats) -> bool {
        match peer.outbound.push(frame) {
            Push::Queued => {
                Stats::add(&stats.messages_out, 1);
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

    fn evict_all(&self, peers: &[Arc<Peer>], stats: &Stats) {
        for peer in peers {
            Stats::add(&stats.slow_consumers, 1);
            Stats::add(&stats.dropped, 1);
            self.remove_peer(peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: PeerId, limit: usize) -> Arc<Peer> {
        Arc::new(Peer::new(id, "t", None, limit))
    }

    #[test]
    fn join_leave_and_count() {
        let reg = Registry::default();
        let a = peer(1, 1 << 20);
        let b = peer(2, 1 << 20);
        reg.add_peer(a.clone());
        reg.add_peer(b.clone());
        assert_eq!(reg.join(&a, "r", 10), Joined::New);
        assert_eq!(reg.join(&a, "r", 10), Joined::Already);
        assert_eq!(reg.join(&b, "r", 10), Joined::New);
        assert_eq!(reg.join(&b, "s", 10), Joined::New);
        assert_eq!(reg.room_count(), 2);
        assert_eq!(reg.member_count("r"), 2);
        assert!(reg.leave(&a, "r"));
        assert!(!reg.leave(&a, "r"));
        assert_eq!(reg.member_count("r"), 1);
        reg.remove_peer(&b);
        assert_eq!(reg.room_count(), 0);
        assert_eq!(reg.join(&b, "r", 10), Joined::Closed);
        assert!(reg.peer(2).is_none());
        assert!(reg.peer(1).is_some());
    }

    #[test]
    fn room_limit_per_socket() {
        let reg = Registry::default();
        let a = peer(1, 1 << 20);
        assert_eq!(reg.join(&a, "1", 2), Joined::New);
        assert_eq!(reg.join(&a, "2", 2), Joined::New);
        assert_eq!(reg.join(&a, "3", 2), Joined::TooMany);
    }

    #[test]
    fn fan_out_skips_except_and_evicts_slow_members() {
        let reg = Registry::default();
        let stats = Stats::default();
        let fast = peer(1, 1 << 20);
        let slow = peer(2, 100);
        let other = peer(3, 1 << 20);
        for p in [&fast, &slow, &other] {
            reg.add_peer(p.clone());
            reg.join(p, "r", 10);
        }
        let frame = Bytes::from(vec![0u8; 60]);
        assert_eq!(reg.fan_out("r", &frame, Some(3), None, &stats), 2);
        // The second push passes slow's bound: it is evicted and leaves the room.
        assert_eq!(reg.fan_out("r", &frame, Some(3), None, &stats), 1);
        assert!(slow.outbound.was_evicted());
        assert!(!slow.in_room("r"));
        assert_eq!(reg.member_count("r"), 2);
        assert_eq!(stats.slow_consumers.load(Ordering::Relaxed), 1);
        assert_eq!(fast.outbound.queued_bytes(), 120);
        assert_eq!(other.outbound.queued_bytes(), 0);
    }
}
