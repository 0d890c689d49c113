//! The core of payload-realtime: a WebSocket server for Payload CMS events that knows nothing
//! of JS. The Node addon (the root crate) drives it through [`server::Server`] and
//! [`hub::Hub`], and answers its questions through the traits in [`callbacks`].
//!
//! Where things happen:
//! - an event from the host is parsed and queued in [`ingest`] (on the lanes' thread);
//! - a socket's frames are parsed in [`frame_reader`], its messages in [`protocol`], and acted
//!   on in [`requests`]; [`connection`] is the socket's one task (reads, writes, timers);
//! - a room fans out in [`rooms::Registry::fan_out_run`], in order per room and in bursts thanks
//!   to [`dispatch`];
//! - an authorize rule is applied in [`authorize`], its questions written for the host in
//!   [`crossing`];
//! - a socket's bytes are queued and written by [`outbound`], after a burst by the [`flush`]ers
//!   that go through the recipients; a large buffer that many sockets send goes to each by
//!   reference, not copied ([`splice`]);
//! - a connection the host's own HTTP server accepted is taken over in [`adopt`] and
//!   [`server::Server::adopt`], then served like any other.

pub(crate) mod auth;
pub(crate) mod cluster;
pub mod config;
pub mod delivery;
pub mod error;
pub mod host;
pub(crate) mod limits;
pub mod log;
pub mod memory;
pub(crate) mod metrics;
pub mod net;
pub mod protocol;
pub(crate) mod stats;
pub(crate) mod write;
