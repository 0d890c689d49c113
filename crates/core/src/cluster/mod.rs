//! What instances share through Redis: the broker, each room's history and recovery, presence.

pub mod broker;
pub mod history;
pub mod presence;
