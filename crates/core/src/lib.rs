//! The core of payload-realtime: a WebSocket server for Payload CMS events that knows nothing
//! of JS. The Node addon (the root crate, `src/`) drives it through [`net::server::Server`] and
//! [`delivery::hub::Hub`], and answers its questions through the traits in
//! [`host::callbacks`]. Everything else is `pub(crate)`.
//!
//! # Modules
//!
//! Grouped by the path data takes: an event comes in through `delivery/`, a client's bytes
//! through `net/` and `protocol/`, and both leave through `write/`; `cluster/` is what
//! instances share through Redis. A module uses the ones beside or below it, never one that
//! uses it: no file and no group reaches itself through `crate::` paths (`tests/layout.rs`
//! checks this tree against the files and that rule).
//!
//! ```text
//! lib.rs                  this map and the glossary
//! config.rs               server options, their defaults and checks; the Payload key; history options
//! error.rs                the core's error type
//! limits.rs               connection caps (total, per user, per address), the verify caps, client_ip
//! log.rs                  leveled logging to the host's logger or stderr, redaction
//! alloc.rs                the addon's allocator: cache-aligned blocks cut from pages of their own
//! memory.rs               giving freed memory back after a crowd of sockets has gone
//! metrics.rs              GET /metrics in Prometheus's text format
//! stats.rs                the counters behind stats() and /metrics
//! auth/                   who is connecting
//!   mod.rs                the credential, Payload's token check, the Origin rule
//!   claims.rs             a verified token's claims: kept as signed, parsed when asked
//!   revocations.rs        revoked sessions (logout), remembered on every instance
//!   users.rs              one copy of a user's document for all of its sockets
//! cluster/                what instances share through Redis
//!   mod.rs                the group
//!   broker/               many instances
//!     mod.rs              the Broker trait, channels and envelopes
//!     redis.rs            the Redis broker: one connection publishes, one subscribes
//!     redis_history.rs    room history in Redis streams, for recovery on any instance
//!     redis_revocations.rs revoked sessions in Redis
//!   history.rs            per-room history, numbered events, recovery from it
//!   presence.rs           who is in a room, as distinct users, across instances
//! delivery/               from an event to the sockets that may have it
//!   mod.rs                the group
//!   authorize.rs          one event through a collection's authorize rule, once per user
//!   dispatch.rs           the lanes: ordered delivery, bursts, catching up with the writers
//!   event.rs              the checks and normalisation of an emitted event
//!   hub/                  the shared state and the operations the host calls
//!     mod.rs              the hub: its state and registries, broadcasts, routing to the lanes
//!     intake.rs           events in: checked, numbered, published, queued on their lane
//!     presence.rs         presence announced to a room and told to the other instances
//!     recovery.rs         joining with `since`: the missed events, from here or Redis
//!     remote.rs           the broker's envelopes out (one publish) and in; the Redis appender
//!     sessions.rs         revoked sessions and changed users, on every instance
//!   ingest.rs             events from the host, parsed and queued off the host's thread
//!   lanes.rs              a lane's jobs (deliveries and barriers), and which lane a room's go to
//!   rooms.rs              the room registry: memberships, and the fan-out of a run
//! host/                   what the core asks of its host
//!   mod.rs                the group
//!   callbacks.rs          the traits: authorize, handlers, verifyUser, join rule
//!   crossing.rs           the authorize questions' wire format (JSON text)
//! net/                    sockets in and out
//!   mod.rs                the group; the drain's close reason
//!   adopt.rs              taking over a connection the host's HTTP server accepted
//!   connection.rs         one socket's one task: reads, writes, pings, timers, close
//!   first_auth.rs         first-message auth (?auth=message)
//!   head.rs               an upgrade's request head read and parsed here, not by hyper
//!   longpoll.rs           long polling
//!   requests.rs           what a socket's messages ask for: join, leave, presence, handlers
//!   server.rs             the listener, each connection's task, HTTP routes, handshake checks, shutdown
//!   sse.rs                Server-Sent Events
//!   verify.rs             the host's verifyUser, within maxVerifying
//! protocol/               the v1 wire protocol
//!   mod.rs                client messages, replies, room names, close codes, frames
//!   frame_reader.rs       client frames to messages, with RFC 6455's checks early
//! write/                  a socket and the bytes on their way to it
//!   mod.rs                the group
//!   flush.rs              the flushers: write what fan-out queued, socket after socket
//!   outbound.rs           one socket's bounded queue of frames and its writer
//!   socket.rs             the state a socket shares with the server: user, queue, rooms
//!   splice.rs             large shared buffers sent by reference (splice), not copied
//! bin/
//!   autobahn_echo.rs      an echo server for the Autobahn test suite
//! ```
//!
//! # Glossary
//!
//! - **socket** (type `Socket`): one client connection (WebSocket, SSE stream or
//!   long poll) as the rest of the server sees it.
//! - **user**: who a socket belongs to, from its token; its **user key** is `collection:id`.
//!   Several sockets of one user share one user document (`auth::users`).
//! - **room**: a name sockets join (`collection:posts`, or an app room); events go to rooms.
//! - **registry**: the room registry (`delivery::rooms::RoomRegistry`): sockets by id, members by
//!   room, and the fan-out.
//! - **hub**: the server's shared state ([`delivery::hub::Hub`]); it holds the registries and
//!   routes what the host and the sockets ask.
//! - **lane**: one of the `LANES` ordered queues of jobs; a room's jobs always go
//!   to the same lane, so its members see its events in order.
//! - **barrier**: a job that waits for everything before it in its lane (a recovery's steps).
//! - **run**: consecutive events of one room queued to its members together, as one buffer.
//! - **burst**: what a lane finds ready at once, delivered together; the sockets are woken once
//!   it is queued, so each writes it with one syscall.
//! - **backpressure**: what waits in one socket's queue; past `maxBackpressure` the socket is
//!   **evicted** (closed 4008, slow consumer).
//! - **backlog**: emitted events waiting for the writers, bounded by `maxBacklog`.
//! - **flusher**: a task on the sockets' threads that writes the queues a burst filled, socket
//!   after socket (`write::flush`).
//! - **splice**: a large buffer many sockets send, given to each by reference through a pipe.
//! - **authorize rule**: the host's function that decides, per user, whether and what version
//!   of an event a user may see; a **crossing** is one batch of its questions to the host.
//! - **history**: a room's last events, numbered by **offset** within an **epoch**; a client
//!   rejoining with `since` (an epoch and offset) gets what it missed: **recovery**.
//! - **presence**: who is in a room, as distinct users.
//! - **instance**: one server process; instances share events, history, presence and
//!   revocations through the **broker** (Redis).
//! - **host**: the program that embeds the core, the Node addon.

// Every `unsafe` block says why it is sound; clippy checks it.
#![warn(clippy::undocumented_unsafe_blocks)]
// What the crate does not export is `pub(crate)`, so that rustc finds what nothing uses.
#![warn(unreachable_pub)]

pub mod alloc;
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

// The tests run on the addon's allocator.
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: alloc::Allocator = alloc::Allocator;
