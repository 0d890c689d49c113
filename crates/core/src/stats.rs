//! Counters read by `stats()`. Relaxed atomics: they are reports, not synchronisation.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default, Debug)]
pub struct Stats {
    /// Sockets open now.
    pub connections: AtomicU64,
    /// Sockets accepted since start.
    pub connections_total: AtomicU64,
    /// Handshakes refused (bad token, origin, path, a connection limit).
    pub handshakes_refused: AtomicU64,
    /// Of those, refused for `maxConnections`, `maxConnectionsPerUser`, `maxConnectionsPerIp`.
    pub refused_max_connections: AtomicU64,
    pub refused_per_user: AtomicU64,
    pub refused_per_ip: AtomicU64,
    /// Messages received from clients.
    pub messages_in: AtomicU64,
    /// Frames queued to clients (events, replies, broadcasts).
    pub messages_out: AtomicU64,
    /// Frames not delivered because their socket was evicted or closing.
    pub dropped: AtomicU64,
    /// Sockets closed with 4008.
    pub slow_consumers: AtomicU64,
    /// Sockets closed with 4029 (kept sending past `maxMessagesPerSecond`).
    pub rate_limited: AtomicU64,
    /// Events emitted through `emitEvent`.
    pub events: AtomicU64,
    /// Deliveries withheld by an authorize answer of `false`.
    pub authorize_denied: AtomicU64,
    /// Authorize answers that failed (throw, rejection, timeout) and so denied.
    pub authorize_errors: AtomicU64,
    /// Custom handler calls that failed.
    pub handler_errors: AtomicU64,
    /// Times a lane waited for the server's writers before queuing more: events came faster
    /// than the sockets were written (see `dispatch::catch_up`).
    pub backlog_waits: AtomicU64,
    /// Handshakes and refreshes turned away at `maxVerifying` or `maxVerifyingPerUser`.
    pub refused_verifying: AtomicU64,
    /// Sockets opened with `?auth=message` that have not authenticated yet (a gauge).
    pub pending_auth: AtomicU64,
    /// Sockets closed with 4004: no `auth` message in time, or a token that was refused.
    pub auth_failures: AtomicU64,
    /// Joins with `since` refused a replay for `maxRecoveriesPerMinute`.
    pub recoveries_limited: AtomicU64,
    /// Joins with `since` refused a replay for `maxRecoveryEvents`.
    pub recoveries_too_long: AtomicU64,
    /// Events refused before they were read because the queue from the host was at `maxBacklog`.
    pub ingest_full: AtomicU64,
    /// Sockets closed with 4008 because messages the server cannot hold back (from Redis,
    /// broadcasts) brought the backlog to `maxBacklog` while the lane waited for them.
    pub backlog_evictions: AtomicU64,
    /// Messages from Redis and broadcasts dropped at twice `maxBacklog` (their rooms' members are
    /// told `recovery-failed`).
    pub backlog_dropped: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub connections: u64,
    pub connections_total: u64,
    pub handshakes_refused: u64,
    pub refused_max_connections: u64,
    pub refused_per_user: u64,
    pub refused_per_ip: u64,
    pub rooms: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub dropped: u64,
    pub slow_consumers: u64,
    pub rate_limited: u64,
    pub events: u64,
    pub authorize_denied: u64,
    pub authorize_errors: u64,
    pub handler_errors: u64,
    pub backlog_waits: u64,
    /// Bytes of events waiting for the server's writers now (see `Hub::backlog`).
    pub backlog_bytes: u64,
    /// Bytes handed to sockets by reference rather than copied, by every server of the process
    /// since it started (see `splice`).
    pub spliced_bytes: u64,
    pub broker: Option<crate::broker::BrokerStats>,
    /// `verifyUser` calls in flight now.
    pub verifying: u64,
    pub refused_verifying: u64,
    pub pending_auth: u64,
    pub auth_failures: u64,
    pub recoveries_limited: u64,
    pub recoveries_too_long: u64,
    pub ingest_full: u64,
    pub backlog_evictions: u64,
    pub backlog_dropped: u64,
    /// Bytes of events dropped from room histories for their `maxBytes` (set by the hub).
    pub history_evicted_bytes: u64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn snapshot(&self, rooms: u64, backlog_bytes: u64, broker: Option<crate::broker::BrokerStats>) -> Snapshot {
        Snapshot {
            connections: self.connections.load(Relaxed),
            connections_total: self.connections_total.load(Relaxed),
            handshakes_refused: self.handshakes_refused.load(Relaxed),
            refused_max_connections: self.refused_max_connections.load(Relaxed),
            refused_per_user: self.refused_per_user.load(Relaxed),
            refused_per_ip: self.refused_per_ip.load(Relaxed),
            rooms,
            messages_in: self.messages_in.load(Relaxed),
            messages_out: self.messages_out.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            slow_consumers: self.slow_consumers.load(Relaxed),
            rate_limited: self.rate_limited.load(Relaxed),
            events: self.events.load(Relaxed),
            authorize_denied: self.authorize_denied.load(Relaxed),
            authorize_errors: self.authorize_errors.load(Relaxed),
            handler_errors: self.handler_errors.load(Relaxed),
            backlog_waits: self.backlog_waits.load(Relaxed),
            backlog_bytes,
            spliced_bytes: crate::splice::SPLICED_BYTES.load(Relaxed) as u64,
            broker,
            verifying: 0,
            refused_verifying: self.refused_verifying.load(Relaxed),
            pending_auth: self.pending_auth.load(Relaxed),
            auth_failures: self.auth_failures.load(Relaxed),
            recoveries_limited: self.recoveries_limited.load(Relaxed),
            recoveries_too_long: self.recoveries_too_long.load(Relaxed),
            ingest_full: self.ingest_full.load(Relaxed),
            backlog_evictions: self.backlog_evictions.load(Relaxed),
            backlog_dropped: self.backlog_dropped.load(Relaxed),
            history_evicted_bytes: 0,
        }
    }
}
