//! From an event to the sockets that may have it: intake, the hub, the lanes, the room
//! registry and its fan-out, the authorize rule.

pub(crate) mod authorize;
pub(crate) mod dispatch;
pub(crate) mod event;
pub mod hub;
pub mod ingest;
pub(crate) mod lanes;
pub(crate) mod rooms;
