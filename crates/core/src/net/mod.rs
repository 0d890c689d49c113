//! Sockets in and out: the listener and handshake, a connection's one task, the requests a
//! client sends, first-message auth, SSE and long-poll, adopted connections.

pub mod adopt;
pub(crate) mod connection;
pub(crate) mod first_auth;
pub(crate) mod head;
pub(crate) mod longpoll;
pub(crate) mod requests;
pub mod server;
pub(crate) mod sse;
pub(crate) mod verify;

/// The reason of the 1001 a drain sends: clients (the SDK does) reconnect, to another instance.
pub(crate) const DRAIN_REASON: &str = "server shutting down, reconnect elsewhere";
