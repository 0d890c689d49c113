//! What a lane is given: the [`Job`]s, and which lane a room's jobs go to. Every job for a
//! room goes to the same lane, so that its members see the room's messages in order; the lanes
//! themselves run in [`crate::delivery::dispatch`].

use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::cluster::history::Entry;
use crate::delivery::rooms::Except;
use crate::write::socket::{Socket, SocketId};

/// Lanes per server.
pub(crate) const LANES: usize = 16;

/// Work for a lane.
pub(crate) enum Job {
    /// Delivered to a room's members in the lane's order, after its authorize question (asked
    /// while the lane goes on) if it has one.
    Deliver(Delivery),
    /// Run once everything before it in the lane is delivered.
    Barrier(Barrier),
    /// A socket rejoining with `since`, already in the room with its live frames of it held
    /// back: what it missed is asked about (the authorize rule) outside the lane, in a task of
    /// its own, then sent by a [`Barrier::RecoverFinish`]. Not a barrier: a long replay never stalls
    /// the lane's other rooms (it once was, for up to `authorizeTimeout`).
    Recover {
        room: Arc<str>,
        authorize: Option<String>,
        peer: Arc<Socket>,
        entries: Vec<Entry>,
        /// The client's `since` (see [`Barrier::RecoverFinish`]).
        through: u64,
    },
    /// Jobs sent together (events emitted in one call), taken in order.
    Many(Vec<Job>),
}

/// What a lane delivers to a room's members.
pub(crate) enum Delivery {
    /// A collection event; `authorize` names the collection when a rule applies.
    Event {
        room: Arc<str>,
        authorize: Option<String>,
        body: Arc<Value>,
        frame: Bytes,
        /// Its offset in the room's history, if it has one.
        offset: Option<u64>,
        done: Option<oneshot::Sender<usize>>,
        /// Who it is not for (an app event's `except`).
        except: Except,
    },
    /// A room broadcast (no authorize rule).
    Broadcast {
        room: Arc<str>,
        frame: Bytes,
        except: Option<SocketId>,
    },
    /// Tells a room's members that messages for them were dropped (`recovery-failed`, reason
    /// `Dropped`: refetch), in the lane so that it comes after what was delivered before the
    /// drop (see `Hub::admit_unheld`).
    Missed { room: Arc<str> },
}

/// A recovery's steps, each run with everything before it in the lane delivered.
pub(crate) enum Barrier {
    /// Redis-backed recovery, step one: the socket joins, its live frames of the
    /// room held back until step two.
    RecoverStart {
        room: Arc<str>,
        peer: Arc<Socket>,
        ready: oneshot::Sender<bool>,
    },
    /// Step two: send the replay (already through the authorize rule, asked outside
    /// the lane), then release the held-back live frames that come after it.
    RecoverFinish {
        room: Arc<str>,
        peer: Arc<Socket>,
        frames: Vec<Bytes>,
        /// The offsets the replay carried: their live copies are dropped.
        replayed: HashSet<u64>,
        /// The client's `since`: live frames at or before it are dropped (it has them).
        through: u64,
        done: Option<oneshot::Sender<()>>,
    },
}

/// The lane of a room's jobs.
pub(crate) fn lane_of(room: &str) -> usize {
    let mut h = DefaultHasher::new();
    room.hash(&mut h);
    (h.finish() as usize) % LANES
}
