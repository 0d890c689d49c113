//! The state one connected socket shares with the rest of the server: who it is, its outbound
//! queue, and the rooms it is in. The room registry holds `Arc<Peer>`s; the connection's reader
//! and writer tasks hold the same `Arc`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::auth::User;
use crate::outbound::Outbound;

pub type PeerId = u64;

pub struct Peer {
    pub id: PeerId,
    /// The id as JS and clients see it: `<instance>.<n>`.
    pub public_id: String,
    pub user: Option<User>,
    /// The user as the host sees it (the verified user document in plugin mode, else the
    /// token's claims), shared with every authorize and handler call.
    pub user_value: Arc<Value>,
    /// The session id (`sid` claim) of the current token: logout revokes by it.
    pub sid: Mutex<Option<String>>,
    /// When the current token expires (seconds since the epoch; 0 = never). A fresh token sent
    /// with `{ type: "auth" }` moves it.
    pub expires_at: AtomicU64,
    pub outbound: Outbound,
    /// Rooms this socket is in; `None` once it has left them all for good (closed).
    pub(crate) rooms: Mutex<Option<Vec<Arc<str>>>>,
    /// Milliseconds (server clock) of the last frame received: the idle timer reads it.
    pub last_seen_ms: AtomicU64,
    /// Cancelled when the connection must stop now (shutdown, eviction timeout).
    pub cancel: CancellationToken,
    /// Rooms this socket is recovering from Redis history: live frames wait here (with their
    /// offsets) until the replay is sent, so the two meet with no gap and no duplicate.
    recovering: Mutex<HashMap<Arc<str>, Vec<(Option<u64>, Bytes)>>>,
    /// Whether `recovering` has any room (read on the fan-out path without locking).
    is_recovering: AtomicBool,
}

impl Peer {
    pub fn new(
        id: PeerId,
        instance: &str,
        user: Option<User>,
        max_backpressure: usize,
        cancel: CancellationToken,
    ) -> Peer {
        let user_value = Arc::new(user.as_ref().map(|u| u.claims.clone()).unwrap_or(Value::Null));
        Peer::with_user_value(id, instance, user, user_value, max_backpressure, cancel)
    }

    pub fn with_user_value(
        id: PeerId,
        instance: &str,
        user: Option<User>,
        user_value: Arc<Value>,
        max_backpressure: usize,
        cancel: CancellationToken,
    ) -> Peer {
        let sid = user.as_ref().and_then(|u| u.sid());
        let expires_at = user.as_ref().and_then(|u| u.expires_at).unwrap_or(0);
        Peer {
            id,
            public_id: format!("{instance}.{id}"),
            user,
            user_value,
            sid: Mutex::new(sid),
            expires_at: AtomicU64::new(expires_at),
            outbound: Outbound::new(max_backpressure),
            rooms: Mutex::new(Some(Vec::new())),
            last_seen_ms: AtomicU64::new(0),
            cancel,
            recovering: Mutex::new(HashMap::new()),
            is_recovering: AtomicBool::new(false),
        }
    }

    /// Holds live frames of `room` back until [`Peer::end_recovery`].
    pub fn start_recovery(&self, room: &Arc<str>) {
        self.recovering.lock().insert(room.clone(), Vec::new());
        self.is_recovering.store(true, Ordering::Release);
    }

    /// Keeps a live frame back if the socket is recovering that room; `false` otherwise.
    pub fn hold_back(&self, room: &str, offset: Option<u64>, frame: &Bytes) -> bool {
        if !self.is_recovering.load(Ordering::Acquire) {
            return false;
        }
        match self.recovering.lock().get_mut(room) {
            Some(held) => {
                held.push((offset, frame.clone()));
                true
            }
            None => false,
        }
    }

    /// Ends a recovery: the live frames held back, in order.
    pub fn end_recovery(&self, room: &str) -> Vec<(Option<u64>, Bytes)> {
        let mut recovering = self.recovering.lock();
        let held = recovering.remove(room).unwrap_or_default();
        self.is_recovering.store(!recovering.is_empty(), Ordering::Release);
        held
    }

    /// The key that groups sockets of one user for authorize.
    pub fn user_key(&self) -> &str {
        self.user.as_ref().map(|u| u.key.as_str()).unwrap_or("")
    }

    pub fn in_room(&self, room: &str) -> bool {
        self.rooms
            .lock()
            .as_ref()
            .is_some_and(|r| r.iter().any(|x| &**x == room))
    }

    pub fn room_count(&self) -> usize {
        self.rooms.lock().as_ref().map_or(0, Vec::len)
    }

    pub fn touch(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The user as JS sees it (`null` for anonymous).
    pub fn user_json(&self) -> Arc<Value> {
        self.user_value.clone()
    }
}
