//! The state one connected socket shares with the rest of the server: who it is, its outbound
//! queue, and the rooms it is in. The room registry holds `Arc<Socket>`s; the connection's task
//! holds the same `Arc`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use smallvec::SmallVec;

use crate::auth::{Claims, User};
use crate::write::outbound::Outbound;

pub(crate) type SocketId = u64;

pub(crate) struct Socket {
    pub(crate) id: SocketId,
    pub(crate) user: Option<User>,
    /// The user as the host sees it (the verified user document in plugin mode, else the
    /// token's claims), shared with every authorize and handler call; replaced when the user
    /// changes (`updateUser`, on any instance).
    /// `None`: the token's claims (`user.claims`, parsed when first asked for), or `null` for
    /// an anonymous socket; kept as one pointer, in every idle socket.
    user_value: RwLock<Option<Arc<Value>>>,
    /// The claims of a fresh token sent with `{ type: "auth" }`, if one was; until then the
    /// current token's are `user.claims` (shared by the user's sockets, not copied per socket).
    /// Logout revokes by their session id (`sid`).
    fresh_claims: Mutex<Option<Arc<Claims>>>,
    /// When the current token expires (seconds since the epoch; 0 = never). A fresh token sent
    /// with `{ type: "auth" }` moves it. Seconds fit 32 bits until 2106 (later is kept as
    /// `u32::MAX`); this is part of every idle socket.
    expires_at: AtomicU32,
    /// When the current token was issued (`iat`, seconds; 0 = unknown): a user-wide revocation
    /// covers the tokens issued before it.
    issued_at: AtomicU32,
    pub(crate) outbound: Outbound,
    /// Rooms this socket is in; `None` once it has left them all for good (closed). The first
    /// is kept inline: most sockets are in one room, and this is in every idle socket.
    pub(crate) rooms: Mutex<Option<SmallVec<[Arc<str>; 1]>>>,
    /// Milliseconds (server clock) of the last frame received: the idle timer reads it.
    pub(crate) last_seen_ms: AtomicU64,
    /// Recoveries (see [`Recovery`]): boxed on a socket's first recovery, since most sockets
    /// never recover and an idle socket's size is what the server holds most of.
    recovery: Mutex<Option<Box<Recovery>>>,
    /// Whether `recovery` holds frames to keep back or drop (read on the fan-out path without
    /// locking).
    is_recovering: AtomicBool,
    /// The server's sweep keeps this socket's timers (idle check, token expiry): a WebSocket
    /// served by `net::connection`. Other transports keep their own.
    swept: AtomicBool,
    /// The sweep sent a ping since the last frame from the client.
    pinged: AtomicBool,
}

/// What a socket that has recovered keeps.
#[derive(Default)]
struct Recovery {
    recovering: Recovering,
    /// Recoveries per room in the current minute (`maxRecoveriesPerMinute`).
    recoveries: HashMap<Arc<str>, (std::time::Instant, u32)>,
}

/// The window `maxRecoveriesPerMinute` counts in.
const RECOVERY_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Live frames kept back with their offsets.
pub(crate) type Held = Vec<(Option<u64>, Bytes)>;

/// How long live copies of replayed events are watched for after a recovery: an event can be
/// in Redis (and so replayed) before its publish reaches this instance.
const REPLAYED_WATCH: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Default)]
pub(crate) struct Recovering {
    /// Rooms being recovered: live frames wait here until the replay is sent.
    held: HashMap<Arc<str>, Held>,
    /// Rooms recovered lately: the offsets replayed, whose live copies are dropped.
    replayed: HashMap<Arc<str>, (HashSet<u64>, std::time::Instant)>,
}

impl Socket {
    #[cfg(test)]
    pub(crate) fn new(id: SocketId, user: Option<User>, max_backpressure: usize) -> Socket {
        Socket::with_user_value(id, user, None, max_backpressure)
    }

    pub(crate) fn with_user_value(
        id: SocketId,
        user: Option<User>,
        user_value: Option<Arc<Value>>,
        max_backpressure: usize,
    ) -> Socket {
        let expires_at = secs(user.as_ref().and_then(User::expires_at));
        let issued_at = secs(user.as_ref().and_then(User::issued_at));
        Socket {
            id,
            user,
            user_value: RwLock::new(user_value),
            fresh_claims: Mutex::new(None),
            expires_at: AtomicU32::new(expires_at),
            issued_at: AtomicU32::new(issued_at),
            outbound: Outbound::new(max_backpressure),
            rooms: Mutex::new(Some(SmallVec::new())),
            last_seen_ms: AtomicU64::new(0),
            recovery: Mutex::new(None),
            is_recovering: AtomicBool::new(false),
            swept: AtomicBool::new(false),
            pinged: AtomicBool::new(false),
        }
    }

    /// Counts a recovery of `room`; `false` when this socket already made `limit` of them in
    /// the last minute (0 = no limit). Rooms whose minute is over are forgotten.
    pub(crate) fn may_recover(&self, room: &str, limit: u32) -> bool {
        if limit == 0 {
            return true;
        }
        let now = std::time::Instant::now();
        let mut recovery = self.recovery.lock();
        let r = &mut recovery.get_or_insert_with(Box::default).recoveries;
        r.retain(|_, (start, _)| now.duration_since(*start) < RECOVERY_WINDOW);
        let (_, n) = r.entry(Arc::from(room)).or_insert((now, 0));
        if *n >= limit {
            return false;
        }
        *n += 1;
        true
    }

    /// Holds live frames of `room` back until [`Socket::end_recovery`].
    pub(crate) fn start_recovery(&self, room: &Arc<str>) {
        let mut recovery = self.recovery.lock();
        let r = &mut recovery.get_or_insert_with(Box::default).recovering;
        r.held.insert(room.clone(), Vec::new());
        r.replayed.remove(room);
        self.is_recovering.store(true, Ordering::Release);
    }

    /// Whether live frames may be held back or dropped ([`Socket::hold_back`] has work to do).
    pub(crate) fn is_recovering(&self) -> bool {
        self.is_recovering.load(Ordering::Acquire)
    }

    /// Takes a live frame out of normal delivery: kept back while the room is being recovered,
    /// dropped when it is a live copy of an event just replayed. `false`: deliver it.
    pub(crate) fn hold_back(&self, room: &str, offset: Option<u64>, frame: &Bytes) -> bool {
        if !self.is_recovering.load(Ordering::Acquire) {
            return false;
        }
        let mut recovery = self.recovery.lock();
        let Some(r) = recovery.as_mut().map(|r| &mut r.recovering) else {
            return false;
        };
        if let Some(held) = r.held.get_mut(room) {
            held.push((offset, frame.clone()));
            return true;
        }
        let Some((offsets, since)) = r.replayed.get(room) else {
            return false;
        };
        if since.elapsed() > REPLAYED_WATCH {
            r.replayed.remove(room);
            self.is_recovering
                .store(!r.held.is_empty() || !r.replayed.is_empty(), Ordering::Release);
            return false;
        }
        offset.is_some_and(|o| offsets.contains(&o))
    }

    /// Ends a recovery that replayed `replayed` of what came after offset `through`: the live
    /// frames held back, in order, without the replayed ones and those at or before `through`
    /// (the client has them); later live copies of the replayed ones are dropped too.
    pub(crate) fn end_recovery(&self, room: &str, replayed: HashSet<u64>, through: u64) -> Held {
        let mut recovery = self.recovery.lock();
        let r = &mut recovery.get_or_insert_with(Box::default).recovering;
        let mut held = r.held.remove(room).unwrap_or_default();
        // Offsets start at 1: `through` 0 (nothing seen) drops none.
        held.retain(|(o, _)| !o.is_some_and(|o| (1..=through).contains(&o) || replayed.contains(&o)));
        if !replayed.is_empty() {
            r.replayed
                .insert(Arc::from(room), (replayed, std::time::Instant::now()));
        }
        self.is_recovering
            .store(!r.held.is_empty() || !r.replayed.is_empty(), Ordering::Release);
        held
    }

    /// The key that groups sockets of one user for authorize.
    pub(crate) fn user_key(&self) -> &str {
        self.user.as_ref().map(|u| &*u.key).unwrap_or("")
    }

    pub(crate) fn in_room(&self, room: &str) -> bool {
        self.rooms
            .lock()
            .as_ref()
            .is_some_and(|r| r.iter().any(|x| &**x == room))
    }

    pub(crate) fn room_count(&self) -> usize {
        self.rooms.lock().as_ref().map_or(0, |r| r.len())
    }

    /// A frame came from the client at `now_ms`.
    pub(crate) fn touch(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
        // Read first: a store on every frame would dirty the line for nothing.
        if self.pinged.load(Ordering::Relaxed) {
            self.pinged.store(false, Ordering::Relaxed);
        }
    }

    /// Hands this socket's idle check and token expiry to the server's sweep.
    pub(crate) fn sweep_timers(&self) {
        self.swept.store(true, Ordering::Relaxed);
    }

    /// Whether the sweep keeps this socket's timers.
    pub(crate) fn is_swept(&self) -> bool {
        self.swept.load(Ordering::Relaxed)
    }

    /// Marks a ping sent by the sweep; `false` when one is out already since the last frame.
    pub(crate) fn mark_pinged(&self) -> bool {
        !self.pinged.swap(true, Ordering::Relaxed)
    }

    /// The user as JS sees it (`null` for anonymous).
    pub(crate) fn user_doc(&self) -> Arc<Value> {
        self.doc().value()
    }

    /// The user as JS sees it, not yet parsed if it is the token's claims.
    pub(crate) fn doc(&self) -> Doc {
        match (&*self.user_value.read(), &self.user) {
            (Some(value), _) => Doc::Value(value.clone()),
            (None, Some(user)) => Doc::Claims(user.claims.clone()),
            (None, None) => Doc::Value(crate::auth::users::anonymous()),
        }
    }

    /// The user changed: what rules see of this socket's user from now on.
    pub(crate) fn set_user_doc(&self, value: Arc<Value>) {
        *self.user_value.write() = Some(value);
    }

    /// The current token as a revocation check sees it.
    pub(crate) fn token_sid(&self) -> (Option<String>, Option<u64>) {
        let iat = u64::from(self.issued_at.load(Ordering::Relaxed));
        (self.with_sid(|sid| sid.map(str::to_string)), (iat > 0).then_some(iat))
    }

    /// Calls `f` with the session id (`sid` claim) of the current token.
    pub(crate) fn with_sid<R>(&self, f: impl FnOnce(Option<&str>) -> R) -> R {
        let fresh = self.fresh_claims.lock();
        let claims = fresh.as_deref().or(self.user.as_ref().map(|u| &*u.claims));
        f(claims.and_then(Claims::sid))
    }

    /// A fresh token for the same user: its claims, expiry and issue time are the current
    /// token's from now on.
    pub(crate) fn set_fresh_token(&self, user: &User) {
        self.expires_at.store(secs(user.expires_at()), Ordering::Relaxed);
        self.issued_at.store(secs(user.issued_at()), Ordering::Relaxed);
        *self.fresh_claims.lock() = Some(user.claims.clone());
    }

    /// When the current token expires, in seconds since the epoch; 0 = never.
    pub(crate) fn expires_at(&self) -> u64 {
        u64::from(self.expires_at.load(Ordering::Relaxed))
    }
}

/// A socket's user as the host sees it: the token's claims (parsed into a value when first
/// asked for: most sockets never are), or a value (the host's user document, `null`).
#[derive(Clone)]
pub(crate) enum Doc {
    Claims(Arc<Claims>),
    Value(Arc<Value>),
}

impl Doc {
    /// The user as a JSON value.
    pub(crate) fn value(&self) -> Arc<Value> {
        match self {
            Doc::Claims(claims) => claims.value().clone(),
            Doc::Value(value) => value.clone(),
        }
    }
}

/// Seconds since the epoch as a socket keeps them: 0 for none, `u32::MAX` past 2106.
fn secs(at: Option<u64>) -> u32 {
    at.map_or(0, |s| u32::try_from(s).unwrap_or(u32::MAX))
}
