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
