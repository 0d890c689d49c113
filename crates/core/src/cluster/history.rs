//! Per-room history, so a client that was briefly away can recover exactly what it missed.
//!
//! A room with a history policy numbers its events: `offset` grows by one per event, and `epoch`
//! names the history itself (a new epoch means the history was lost, e.g. a restart). Events
//! carry both; a client that rejoins with `since: { offset, epoch }` gets the events after that
//! offset replayed (through the same authorize rules as live delivery), then live ones, or
//! `recovery-failed` when the epoch changed or the events were trimmed.
//!
//! The seam between replay and live delivery: an event is recorded and queued on its room's
//! lane under the room's history lock, and a recovery snapshots the history and joins the socket
//! under the same lock, with its live frames of the room held back (`Socket::start_recovery`).
//! Every event recorded before the snapshot is replayed; every event after it reaches the socket
//! live, released after the replay. Held copies of events up to the snapshot are dropped (the
//! client has them, or the replay carries them). The replay's authorize questions are asked
//! outside the lane, so a long replay never holds back the lane's other rooms.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::Value;

use crate::config::{HistoryPolicy, HistoryRule};
use crate::protocol::{encode_value, Since};

/// One recorded event: its frame alone. A history keeps its entries for a long time while
/// sockets come and go around them; one allocation each (not a tree of values) keeps them from
/// pinning pages all over the heap (the churn soak's RSS rose with the waves when entries held
/// their event as a value too).
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) offset: u64,
    pub(crate) at: Instant,
    /// The encoded frame (the event with its `offset` and `epoch`), shared by live delivery and
    /// every replay.
    pub(crate) frame: Bytes,
}

impl Entry {
    /// The event's JSON text.
    pub(crate) fn json(&self) -> &str {
        // The frame was encoded from a value: valid UTF-8.
        std::str::from_utf8(crate::protocol::payload(&self.frame)).unwrap_or("null")
    }

    /// The event as a value (what an authorize rule sees), read from the frame.
    pub(crate) fn body(&self) -> Arc<Value> {
        Arc::new(crate::protocol::value_of(self.json()))
    }
}

/// Why a recovery cannot be done; the client must refetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecoveryFailed {
    /// The room keeps no history.
    NoHistory,
    /// The history was lost since (another epoch).
    EpochChanged,
    /// The events after `since` are no longer all kept.
    Trimmed,
    /// More events were missed than one recovery replays (`maxRecoveryEvents`).
    TooManyEvents,
    /// The socket recovered this room too often lately (`maxRecoveriesPerMinute`).
    Limited,
    /// `since` is ahead of the history: not from this history.
    Ahead,
    /// The history could not be read (Redis unavailable).
    Unavailable,
}

pub(crate) struct RoomHistory {
    pub(crate) epoch: String,
    /// The last offset handed out (0: none yet).
    pub(crate) last: u64,
    entries: VecDeque<Entry>,
    /// Bytes of the kept entries' frames (`maxBytes` bounds it).
    bytes: usize,
    policy: HistoryPolicy,
    /// Bytes dropped for `maxBytes`, shared by every room ([`Histories::evicted_bytes`]).
    evicted: Arc<AtomicU64>,
}

impl RoomHistory {
    fn trim(&mut self, now: Instant) {
        while self.entries.len() > self.policy.size {
            self.pop();
        }
        while self.bytes > self.policy.max_bytes {
            let Some(e) = self.pop() else { break };
            self.evicted.fetch_add(e.frame.len() as u64, Ordering::Relaxed);
        }
        if let Some(ttl) = self.policy.ttl {
            while self.entries.front().is_some_and(|e| now.duration_since(e.at) > ttl) {
                self.pop();
            }
        }
    }

    fn pop(&mut self) -> Option<Entry> {
        let e = self.entries.pop_front()?;
        self.bytes -= e.frame.len();
        Some(e)
    }

    /// Bytes of the events kept.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Numbers an event, encodes it once, keeps it.
    pub(crate) fn record(&mut self, mut body: Value) -> Entry {
        self.last += 1;
        if let Value::Object(m) = &mut body {
            m.insert("offset".into(), Value::from(self.last));
            m.insert("epoch".into(), Value::String(self.epoch.clone()));
        }
        let now = Instant::now();
        let entry = Entry {
            offset: self.last,
            at: now,
            frame: encode_value(&body),
        };
        self.bytes += entry.frame.len();
        self.entries.push_back(entry.clone());
        self.trim(now);
        entry
    }

    /// The events after `since`, at most `max` of them, or why they cannot be had.
    pub(crate) fn since(&mut self, since: &Since, max: usize) -> Result<Vec<Entry>, RecoveryFailed> {
        if since.epoch != self.epoch {
            return Err(RecoveryFailed::EpochChanged);
        }
        if since.offset > self.last {
            return Err(RecoveryFailed::Ahead);
        }
        self.trim(Instant::now());
        let first_kept = self.entries.front().map_or(self.last + 1, |e| e.offset);
        if since.offset + 1 < first_kept {
            return Err(RecoveryFailed::Trimmed);
        }
        if self.last - since.offset > max as u64 {
            return Err(RecoveryFailed::TooManyEvents);
        }
        Ok(self
            .entries
            .iter()
            .filter(|e| e.offset > since.offset)
            .cloned()
            .collect())
    }

    pub(crate) fn position(&self) -> Since {
        Since {
            offset: self.last,
            epoch: self.epoch.clone(),
        }
    }
}

/// Swept histories whose position is kept (see [`Histories::sweep`]); past this many the
/// oldest is forgotten, and its room starts a new epoch when used again.
pub(crate) const SWEPT_POSITIONS_KEPT: usize = 10_000;

/// The positions of swept histories, oldest first.
#[derive(Default)]
struct Swept {
    by_room: HashMap<Arc<str>, (String, u64)>,
    order: VecDeque<Arc<str>>,
}

/// Every room's history.
pub(crate) struct Histories {
    rules: Vec<HistoryRule>,
    rooms: Mutex<HashMap<Arc<str>, Arc<Mutex<RoomHistory>>>>,
    /// Where swept rooms were: taken up again when they are used again.
    swept: Mutex<Swept>,
    epoch_prefix: String,
    epochs: AtomicU64,
    evicted: Arc<AtomicU64>,
}

impl Histories {
    pub(crate) fn new(rules: Vec<HistoryRule>, instance: &str) -> Histories {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Histories {
            rules,
            rooms: Mutex::new(HashMap::new()),
            swept: Mutex::default(),
            epoch_prefix: format!("{instance}{started:x}"),
            epochs: AtomicU64::new(0),
            evicted: Arc::default(),
        }
    }

    /// Bytes of events dropped from histories for `maxBytes` since start (here and, counted
    /// by the hub, in Redis).
    pub(crate) fn evicted_bytes(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Counts bytes Redis dropped from a history for `maxBytes`.
    pub(crate) fn count_evicted(&self, bytes: u64) {
        self.evicted.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn is_enabled(&self) -> bool {
        !self.rules.is_empty()
    }

    pub(crate) fn policy_for(&self, room: &str) -> Option<HistoryPolicy> {
        self.rules.iter().find(|r| r.matches(room)).map(|r| r.policy)
    }

    /// The room's history, created (with a new epoch) on first use; `None` without a policy.
    pub(crate) fn room(&self, room: &str) -> Option<Arc<Mutex<RoomHistory>>> {
        let policy = self.policy_for(room)?;
        let mut rooms = self.rooms.lock();
        if let Some(h) = rooms.get(room) {
            return Some(h.clone());
        }
        // A swept room goes on from where it was: its epoch, its offsets.
        let (epoch, last) = self.take_swept(room).unwrap_or_else(|| {
            let n = self.epochs.fetch_add(1, Ordering::Relaxed);
            (format!("{}-{n:x}", self.epoch_prefix), 0)
        });
        let h = Arc::new(Mutex::new(RoomHistory {
            epoch,
            last,
            entries: VecDeque::new(),
            bytes: 0,
            policy,
            evicted: self.evicted.clone(),
        }));
        rooms.insert(Arc::from(room), h.clone());
        Some(h)
    }

    /// Drops the history of rooms whose events have all expired and that nobody is in, so that
    /// rooms do not accumulate forever. `in_use` says whether a room has members.
    ///
    /// The room's position (epoch and last offset, not its events) is kept, up to
    /// [`SWEPT_POSITIONS_KEPT`] rooms: used again, the room goes on in the same epoch, so a
    /// client that saw its last event recovers with nothing missed, and one that did not is
    /// told the events were trimmed. A new epoch there would say "history lost" to a client
    /// that missed nothing. A room whose position was forgotten starts a new epoch: then
    /// nobody can tell what was missed, and recovery fails, as it must.
    pub(crate) fn sweep(&self, in_use: impl Fn(&str) -> bool) {
        let now = Instant::now();
        let mut gone = Vec::new();
        self.rooms.lock().retain(|room, h| {
            let mut h = h.lock();
            h.trim(now);
            let keep = !h.entries.is_empty() || in_use(room);
            if !keep {
                gone.push((room.clone(), h.epoch.clone(), h.last));
            }
            keep
        });
        let mut swept = self.swept.lock();
        for (room, epoch, last) in gone {
            if swept.by_room.insert(room.clone(), (epoch, last)).is_none() {
                swept.order.push_back(room);
            }
        }
        while swept.order.len() > SWEPT_POSITIONS_KEPT {
            if let Some(old) = swept.order.pop_front() {
                swept.by_room.remove(&old);
            }
        }
    }

    /// The position a swept room was at, forgotten here (the room is in use again).
    fn take_swept(&self, room: &str) -> Option<(String, u64)> {
        let mut swept = self.swept.lock();
        let position = swept.by_room.remove(room)?;
        swept.order.retain(|r| &**r != room);
        Some(position)
    }

    #[cfg(test)]
    pub(crate) fn room_count(&self) -> usize {
        self.rooms.lock().len()
    }

    /// Rooms with a history, and the events they keep (for `/metrics`).
    pub(crate) fn sizes(&self) -> (u64, u64) {
        let rooms = self.rooms.lock();
        let events = rooms.values().map(|h| h.lock().entries.len() as u64).sum();
        (rooms.len() as u64, events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_HISTORY_MAX_BYTES;
    use serde_json::json;
    use std::time::Duration;

    fn histories(size: usize) -> Histories {
        Histories::new(
            vec![HistoryRule {
                pattern: "collection:*".into(),
                policy: HistoryPolicy {
                    size,
                    ttl: None,
                    max_bytes: DEFAULT_HISTORY_MAX_BYTES,
                },
            }],
            "i",
        )
    }

    /// A history swept once its events expired goes on in the same epoch: a client that saw
    /// its last event recovers (nothing missed); one that missed expired events is told so.
    #[test]
    fn a_swept_history_keeps_its_position() {
        let h = Histories::new(
            vec![HistoryRule {
                pattern: "feed:*".into(),
                policy: HistoryPolicy {
                    size: 10,
                    ttl: Some(Duration::from_millis(1)),
                    max_bytes: DEFAULT_HISTORY_MAX_BYTES,
                },
            }],
            "i",
        );
        let (epoch, last) = {
            let room = h.room("feed:1").unwrap();
            let mut room = room.lock();
            room.record(json!({"type": "a"}));
            room.record(json!({"type": "b"}));
            (room.epoch.clone(), room.last)
        };
        std::thread::sleep(Duration::from_millis(5));
        h.sweep(|_| false);
        assert_eq!(h.room_count(), 0, "swept");
        let room = h.room("feed:1").unwrap();
        let mut room = room.lock();
        let since = |offset| Since {
            offset,
            epoch: epoch.clone(),
        };
        assert_eq!(
            room.since(&since(last), 100).unwrap().len(),
            0,
            "saw everything: recovered"
        );
        assert_eq!(room.since(&since(1), 100).unwrap_err(), RecoveryFailed::Trimmed);
        assert_eq!(room.record(json!({"type": "c"})).offset, last + 1);
        assert_eq!(room.since(&since(last), 100).unwrap().len(), 1);
        drop(room);
        // Forgotten past the bound (the oldest first): a new epoch, so recovery from it fails.
        let old = h.room("feed:x0").unwrap().lock().epoch.clone();
        h.sweep(|room| room != "feed:x0");
        for i in 1..=SWEPT_POSITIONS_KEPT {
            h.room(&format!("feed:x{i}")).unwrap();
        }
        let kept = h.room("feed:x9").unwrap().lock().epoch.clone();
        h.sweep(|_| false);
        assert!(h.swept.lock().by_room.len() <= SWEPT_POSITIONS_KEPT);
        assert!(h.room("feed:x0").unwrap().lock().epoch != old);
        assert_eq!(h.room("feed:x9").unwrap().lock().epoch, kept, "a recent one is kept");
    }

    #[test]
    fn offsets_grow_by_one_and_events_carry_them() {
        let h = histories(10);
        assert!(h.room("other").is_none());
        let room = h.room("collection:posts").unwrap();
        let mut room = room.lock();
        let a = room.record(json!({"type": "create"}));
        let b = room.record(json!({"type": "update"}));
        assert_eq!((a.offset, b.offset), (1, 2));
        assert_eq!(b.body()["offset"], 2);
        assert_eq!(b.body()["epoch"], room.epoch.as_str());
        assert!(std::str::from_utf8(&b.frame[2..]).unwrap().contains("\"offset\":2"));
    }

    #[test]
    fn recovery_gives_what_was_missed_or_says_why_not() {
        let h = histories(3);
        let room = h.room("collection:posts").unwrap();
        let mut room = room.lock();
        let epoch = room.epoch.clone();
        let since = |offset| Since {
            offset,
            epoch: epoch.clone(),
        };
        assert_eq!(room.since(&since(0), 1000).unwrap().len(), 0);
        for _ in 0..5 {
            room.record(json!({}));
        }
        // Keeps 3, 4, 5.
        let got: Vec<u64> = room.since(&since(2), 1000).unwrap().iter().map(|e| e.offset).collect();
        assert_eq!(got, vec![3, 4, 5]);
        assert_eq!(room.since(&since(5), 1000).unwrap().len(), 0);
        assert_eq!(room.since(&since(1), 1000).unwrap_err(), RecoveryFailed::Trimmed);
        assert_eq!(room.since(&since(6), 1000).unwrap_err(), RecoveryFailed::Ahead);
        let other = Since {
            offset: 4,
            epoch: "old".into(),
        };
        assert_eq!(room.since(&other, 1000).unwrap_err(), RecoveryFailed::EpochChanged);
    }

    #[test]
    fn ttl_trims_old_events() {
        let h = Histories::new(
            vec![HistoryRule {
                pattern: "r".into(),
                policy: HistoryPolicy {
                    size: 100,
                    ttl: Some(Duration::from_millis(1)),
                    max_bytes: DEFAULT_HISTORY_MAX_BYTES,
                },
            }],
            "i",
        );
        let room = h.room("r").unwrap();
        let epoch = room.lock().epoch.clone();
        room.lock().record(json!({}));
        std::thread::sleep(Duration::from_millis(5));
        let r = room.lock().since(&Since { offset: 0, epoch }, 1000);
        assert_eq!(r.unwrap_err(), RecoveryFailed::Trimmed);
        h.sweep(|_| false);
        assert_eq!(h.room_count(), 0);
    }

    /// Large events push the oldest out past `maxBytes`, whatever `size` allows, and the bytes
    /// dropped are counted; an event bigger than the cap is not kept at all.
    #[test]
    fn max_bytes_bounds_a_room_of_large_events() {
        let h = Histories::new(
            vec![HistoryRule {
                pattern: "r".into(),
                policy: HistoryPolicy {
                    size: 1000,
                    ttl: None,
                    max_bytes: 10_000,
                },
            }],
            "i",
        );
        let room = h.room("r").unwrap();
        let mut room = room.lock();
        let pad = "x".repeat(3000);
        for _ in 0..10 {
            room.record(json!({ "pad": pad }));
            assert!(room.bytes() <= 10_000, "{}", room.bytes());
        }
        // Three of about 3 KB fit; the other seven were dropped and counted.
        assert_eq!(room.entries.len(), 3);
        let one = room.entries[0].frame.len() as u64;
        assert_eq!(h.evicted_bytes(), 7 * one);
        let epoch = room.epoch.clone();
        let since = |offset| Since {
            offset,
            epoch: epoch.clone(),
        };
        assert_eq!(room.since(&since(7), 1000).unwrap().len(), 3);
        assert_eq!(room.since(&since(6), 1000).unwrap_err(), RecoveryFailed::Trimmed);
        // Larger than the cap alone: not kept.
        room.record(json!({ "pad": "y".repeat(20_000) }));
        assert_eq!(room.bytes(), 0);
        assert_eq!(room.since(&since(10), 1000).unwrap_err(), RecoveryFailed::Trimmed);
    }

    #[test]
    fn a_recovery_past_max_events_is_refused() {
        let h = histories(100);
        let room = h.room("collection:posts").unwrap();
        let mut room = room.lock();
        for _ in 0..20 {
            room.record(json!({}));
        }
        let since = |offset| Since {
            offset,
            epoch: room.epoch.clone(),
        };
        let (ten, eleven) = (since(10), since(9));
        assert_eq!(room.since(&ten, 10).unwrap().len(), 10);
        assert_eq!(room.since(&eleven, 10).unwrap_err(), RecoveryFailed::TooManyEvents);
    }

    #[test]
    fn each_room_has_its_own_epoch() {
        let h = histories(3);
        let a = h.room("collection:a").unwrap().lock().epoch.clone();
        let b = h.room("collection:b").unwrap().lock().epoch.clone();
        assert_ne!(a, b);
        assert_eq!(h.room("collection:a").unwrap().lock().epoch, a);
    }
}
