//! From an event to the sockets that may have it: intake, the hub, the lanes, the room
//! registry and its fan-out, the authorize rule.

pub mod authorize;
pub mod dispatch;
pub mod event;
pub mod hub;
pub mod ingest;
pub mod lanes;
pub mod rooms;
