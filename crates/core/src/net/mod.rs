//! Sockets in and out: the listener and handshake, a connection's one task, the requests a
//! client sends, first-message auth, SSE and long-poll, adopted connections.

pub mod adopt;
pub mod connection;
pub mod first_auth;
pub(crate) mod head;
pub mod longpoll;
pub mod requests;
pub mod server;
pub mod sse;
pub mod verify;

/// The reason of the 1001 a drain sends: clients (the SDK does) reconnect, to another instance.
pub const DRAIN_REASON: &str = "server shutting down, reconnect elsewhere";
