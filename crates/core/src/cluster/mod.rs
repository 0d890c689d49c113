//! What instances share through Redis: the broker, each room's history and recovery, presence.

pub(crate) mod broker;
pub(crate) mod history;
pub(crate) mod presence;
