//! Presence: who is in a room, as distinct users (a user with several sockets, on one instance or
//! several, is one member), with `presence-join` / `presence-leave` announcements to the room.
//!
//! Each instance knows its own sockets exactly and keeps a view of the other instances' users,
//! fed by their join/leave messages and a periodic state message through the broker. An entry
//! of another instance expires when its state stops coming (the instance died), which makes its
//! users leave. Every instance computes announcements for its own sockets from the merged view,
//! so each socket hears each join and leave once, whatever instance the user is on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};

/// A change in a room's membership to announce.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change {
    Join(Value),
    Leave(Value),
}

impl Change {
    /// `{ type: "presence-join" | "presence-leave", room, collection?, user }`.
    pub(crate) fn message(&self, room: &str) -> Value {
        let (kind, user) = match self {
            Change::Join(u) => ("presence-join", u),
            Change::Leave(u) => ("presence-leave", u),
        };
        let mut m = json!({ "type": kind, "room": room });
        if let Some(c) = room.strip_prefix("collection:") {
            m["collection"] = Value::String(c.to_string());
        }
        m["user"] = user.clone();
        m
    }
}

#[derive(Default)]
struct RoomState {
    /// user key -> (local sockets, summary)
    local: HashMap<String, (u32, Value)>,
    /// user key -> instance -> (summary, expires)
    remote: HashMap<String, HashMap<String, (Value, Instant)>>,
}

impl RoomState {
    fn is_member(&self, user_key: &str, now: Instant) -> bool {
        self.local.get(user_key).is_some_and(|(n, _)| *n > 0)
            || self
                .remote
                .get(user_key)
                .is_some_and(|m| m.values().any(|(_, exp)| *exp > now))
    }
}

/// A user key and what others see of that user.
pub(crate) type Member = (String, Value);

pub(crate) struct Presence {
    patterns: Vec<String>,
    rooms: Mutex<HashMap<Arc<str>, RoomState>>,
    /// How long another instance's users count without a fresh state message.
    pub(crate) expiry: Duration,
}

impl Presence {
    pub(crate) fn new(patterns: Vec<String>, expiry: Duration) -> Presence {
        Presence {
            patterns,
            rooms: Mutex::new(HashMap::new()),
            expiry,
        }
    }

    pub(crate) fn is_enabled(&self) -> bool {
        !self.patterns.is_empty()
    }

    pub(crate) fn enabled_for(&self, room: &str) -> bool {
        self.patterns.iter().any(|p| crate::protocol::room_matches(p, room))
    }

    /// A socket of this user joined the room here.
    pub(crate) fn local_join(&self, room: &str, user_key: &str, user: &Value) -> Option<Change> {
        let now = Instant::now();
        let mut rooms = self.rooms.lock();
        let state = rooms.entry(Arc::from(room)).or_default();
        let was = state.is_member(user_key, now);
        let entry = state.local.entry(user_key.to_string()).or_insert((0, user.clone()));
        entry.0 += 1;
        (!was).then(|| Change::Join(user.clone()))
    }

    /// A socket of this user left the room here.
    pub(crate) fn local_leave(&self, room: &str, user_key: &str) -> Option<Change> {
        let now = Instant::now();
        let mut rooms = self.rooms.lock();
        let state = rooms.get_mut(room)?;
        let (n, user) = state.local.get_mut(user_key)?;
        *n -= 1;
        let user = user.clone();
        if *n == 0 {
            state.local.remove(user_key);
        }
        let change = (!state.is_member(user_key, now)).then(|| Change::Leave(user));
        if state.local.is_empty() && state.remote.is_empty() {
            rooms.remove(room);
        }
        change
    }

    /// Another instance says these are its users in the room (replacing what it said before).
    pub(crate) fn remote_state(&self, room: &str, instance: &str, users: &[(String, Value)]) -> Vec<Change> {
        let now = Instant::now();
        let expires = now + self.expiry;
        let mut rooms = self.rooms.lock();
        let state = rooms.entry(Arc::from(room)).or_default();
        let mut changes = Vec::new();
        // Users it no longer has.
        let gone: Vec<String> = state
            .remote
            .iter()
            .filter(|(key, m)| m.contains_key(instance) && !users.iter().any(|(k, _)| k == *key))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            let was = state.is_member(&key, now);
            let user = state
                .remote
                .get_mut(&key)
                .and_then(|m| m.remove(instance))
                .map(|(u, _)| u);
            if state.remote.get(&key).is_some_and(HashMap::is_empty) {
                state.remote.remove(&key);
            }
            if let Some(user) = user {
                if was && !state.is_member(&key, now) {
                    changes.push(Change::Leave(user));
                }
            }
        }
        for (key, user) in users {
            let was = state.is_member(key, now);
            state
                .remote
                .entry(key.clone())
                .or_default()
                .insert(instance.to_string(), (user.clone(), expires));
            if !was {
                changes.push(Change::Join(user.clone()));
            }
        }
        changes
    }

    /// Another instance's user joined (`true`) or left the room.
    pub(crate) fn remote_change(
        &self,
        room: &str,
        instance: &str,
        key: &str,
        user: &Value,
        joined: bool,
    ) -> Option<Change> {
        let now = Instant::now();
        let mut rooms = self.rooms.lock();
        let state = rooms.entry(Arc::from(room)).or_default();
        let was = state.is_member(key, now);
        if joined {
            state
                .remote
                .entry(key.to_string())
                .or_default()
                .insert(instance.to_string(), (user.clone(), now + self.expiry));
        } else if let Some(m) = state.remote.get_mut(key) {
            m.remove(instance);
            if m.is_empty() {
                state.remote.remove(key);
            }
        }
        let is = state.is_member(key, now);
        match (was, is) {
            (false, true) => Some(Change::Join(user.clone())),
            (true, false) => Some(Change::Leave(user.clone())),
            _ => None,
        }
    }

    /// Drops other instances' entries that were not refreshed in time; the users that leave.
    pub(crate) fn expire(&self) -> Vec<(Arc<str>, Change)> {
        let now = Instant::now();
        let mut changes = Vec::new();
        let mut rooms = self.rooms.lock();
        for (room, state) in rooms.iter_mut() {
            let keys: Vec<String> = state.remote.keys().cloned().collect();
            for key in keys {
                let m = state.remote.get_mut(&key).expect("listed above");
                let expired: Vec<Value> = m.values().filter(|(_, e)| *e <= now).map(|(u, _)| u.clone()).collect();
                if expired.is_empty() {
                    continue;
                }
                m.retain(|_, (_, e)| *e > now);
                if m.is_empty() {
                    state.remote.remove(&key);
                }
                if !state.is_member(&key, now) && !state.local.contains_key(&key) {
                    changes.push((room.clone(), Change::Leave(expired[0].clone())));
                }
            }
        }
        rooms.retain(|_, s| !s.local.is_empty() || !s.remote.is_empty());
        changes
    }

    /// The room's members: one summary per distinct user.
    pub(crate) fn members(&self, room: &str) -> Vec<Value> {
        let now = Instant::now();
        let rooms = self.rooms.lock();
        let Some(state) = rooms.get(room) else {
            return Vec::new();
        };
        let mut keys: Vec<&String> = state.local.keys().collect();
        for (key, m) in &state.remote {
            if !state.local.contains_key(key) && m.values().any(|(_, e)| *e > now) {
                keys.push(key);
            }
        }
        keys.sort();
        keys.into_iter()
            .filter_map(|k| {
                state
                    .local
                    .get(k)
                    .map(|(_, u)| u.clone())
                    .or_else(|| state.remote.get(k)?.values().next().map(|(u, _)| u.clone()))
            })
            .collect()
    }

    /// This instance's users per room, for the state message other instances expire by.
    pub(crate) fn local_state(&self) -> Vec<(Arc<str>, Vec<Member>)> {
        self.rooms
            .lock()
            .iter()
            .filter(|(_, s)| !s.local.is_empty())
            .map(|(room, s)| {
                let users = s.local.iter().map(|(k, (_, u))| (k.clone(), u.clone())).collect();
                (room.clone(), users)
            })
            .collect()
    }

    /// This instance's users in one room.
    pub(crate) fn local_users(&self, room: &str) -> Vec<(String, Value)> {
        self.rooms
            .lock()
            .get(room)
            .map(|s| s.local.iter().map(|(k, (_, u))| (k.clone(), u.clone())).collect())
            .unwrap_or_default()
    }
}

/// What a member looks like to others: `{ id, collection }`, never an email.
pub(crate) fn summary_of(claims: &Value) -> Value {
    let mut m = serde_json::Map::new();
    if let Some(id) = claims.get("id") {
        m.insert("id".into(), id.clone());
    }
    if let Some(c) = claims.get("collection") {
        m.insert("collection".into(), c.clone());
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Presence {
        Presence::new(vec!["collection:*".into()], Duration::from_millis(50))
    }

    #[test]
    fn several_sockets_are_one_member() {
        let p = p();
        let u = json!({"id": 1});
        assert_eq!(p.local_join("r", "u1", &u), Some(Change::Join(u.clone())));
        assert_eq!(p.local_join("r", "u1", &u), None);
        assert_eq!(p.members("r"), vec![u.clone()]);
        assert_eq!(p.local_leave("r", "u1"), None);
        assert_eq!(p.local_leave("r", "u1"), Some(Change::Leave(u.clone())));
        assert!(p.members("r").is_empty());
        assert!(p.enabled_for("collection:posts") && !p.enabled_for("chat"));
    }

    #[test]
    fn other_instances_count_until_they_expire() {
        let p = p();
        let u = json!({"id": 2});
        assert_eq!(p.local_join("r", "u2", &u), Some(Change::Join(u.clone())));
        // The same user on another instance: still one member; leaving here keeps them in.
        assert!(p.remote_change("r", "B", "u2", &u, true).is_none());
        assert_eq!(p.local_leave("r", "u2"), None);
        assert_eq!(p.members("r").len(), 1);
        // A user only on B, then B's state stops coming: both leave.
        let v = json!({"id": 3});
        assert_eq!(
            p.remote_state("r", "B", &[("u2".into(), u.clone()), ("u3".into(), v.clone())]),
            vec![Change::Join(v.clone())]
        );
        std::thread::sleep(Duration::from_millis(80));
        let mut left: Vec<Value> = p
            .expire()
            .into_iter()
            .map(|(_, c)| match c {
                Change::Leave(u) => u,
                other => panic!("{other:?}"),
            })
            .collect();
        left.sort_by_key(|u| u["id"].as_u64());
        assert_eq!(left, vec![u, v]);
        assert!(p.members("r").is_empty());
    }

    #[test]
    fn a_state_without_a_user_makes_it_leave() {
        let p = p();
        let u = json!({"id": 4});
        p.remote_state("r", "B", &[("u4".into(), u.clone())]);
        assert_eq!(p.remote_state("r", "B", &[]), vec![Change::Leave(u)]);
    }

    #[test]
    fn announcements_name_room_collection_and_user() {
        let m = Change::Join(json!({"id": 1, "collection": "users"})).message("collection:posts");
        assert_eq!(
            m,
            json!({"type": "presence-join", "room": "collection:posts", "collection": "posts", "user": {"id": 1, "collection": "users"}})
        );
        assert_eq!(
            summary_of(&json!({"id": 1, "collection": "users", "email": "x@y"})),
            json!({"id": 1, "collection": "users"})
        );
    }
}
