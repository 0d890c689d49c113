//! The core of payload-realtime: a WebSocket server for Payload CMS events that knows nothing
//! of JS. The Node addon (the root crate) drives it through [`server::Server`] and
//! [`hub::Hub`], and answers its questions through the traits in [`callbacks`].
//!
//! Where things happen:
//! - a client message is parsed in [`protocol`], acted on in [`connection`];
//! - a room fans out in [`rooms::Registry::fan_out`], in order per room thanks to [`dispatch`];
//! - an authorize rule is applied in [`authorize`];
//! - a socket's bytes are written by [`outbound`], read through [`inbound_guard`].

pub mod auth;
pub mod authorize;
pub mod broker;
pub mod callbacks;
pub mod config;
pub mod connection;
pub mod dispatch;
pub mod error;
pub mod event;
pub mod history;
pub mod hub;
pub mod inbound_guard;
pub mod log;
pub mod memory;
pub mod outbound;
pub mod peer;
pub mod presence;
pub mod protocol;
pub mod rooms;
pub mod server;
pub mod stats;
