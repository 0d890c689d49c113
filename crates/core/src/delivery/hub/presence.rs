//! The hub's side of presence: a user's first socket in a presence-enabled room makes it a
//! member and its last one's leave ends that; both are announced to the room's local sockets
//! and told to the other instances, whose news arrive here too. Who is in a room is kept by
//! [`crate::cluster::presence`].

use std::sync::Arc;

use serde_json::Value;

use super::Hub;
use crate::cluster::broker::{raw, Channel, Kind};
use crate::cluster::presence::{summary_of, Change};
use crate::protocol::encode_value;

impl Hub {
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
            let summary = summary_of(user.claims.value());
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
        if self.broker.get().is_none() {
            return;
        }
        let Some(list) = raw(&serde_json::to_string(users).unwrap_or_else(|_| "[]".into())) else {
            return;
        };
        self.publish(
            Channel::Room(Arc::from(room)),
            Kind::Presence { room, op, users: &list },
        );
    }

    pub(super) fn on_remote_presence(&self, from: &str, room: &str, op: &str, users: &str) {
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
}
