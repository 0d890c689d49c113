//! Counters read by `stats()`. Relaxed atomics: they are reports, not synchronisation.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;

#[derive(Default, Debug)]
pub(crate) struct Stats {
    /// Sockets open now.
    pub(crate) connections: AtomicU64,
    /// Sockets accepted since start.
    pub(crate) connections_total: AtomicU64,
    /// Of `connections`: SSE streams open and long polls waiting now.
    pub(crate) streams: AtomicU64,
    /// Handshakes refused (bad token, origin, path, a connection limit).
    pub(crate) handshakes_refused: AtomicU64,
    /// Of those, refused for `maxConnections`, `maxConnectionsPerUser`, `maxConnectionsPerIp`.
    pub(crate) refused_max_connections: AtomicU64,
    pub(crate) refused_per_user: AtomicU64,
    pub(crate) refused_per_ip: AtomicU64,
    /// Messages received from clients.
    pub(crate) messages_in: AtomicU64,
    /// Frames queued to clients (events, replies, broadcasts).
    pub(crate) messages_out: AtomicU64,
    /// Frames not delivered because their socket was evicted or closing.
    pub(crate) dropped: AtomicU64,
    /// Sockets closed with 4008.
    pub(crate) slow_consumers: AtomicU64,
    /// Sockets closed with 4029 (kept sending past `maxMessagesPerSecond`).
    pub(crate) rate_limited: AtomicU64,
    /// Events emitted through `emitEvent`.
    pub(crate) events: AtomicU64,
    /// Deliveries withheld by an authorize answer of `false`.
    pub(crate) authorize_denied: AtomicU64,
    /// Authorize answers that failed (throw, rejection, timeout) and so denied.
    pub(crate) authorize_errors: AtomicU64,
    /// Custom handler calls that failed.
    pub(crate) handler_errors: AtomicU64,
    /// Times a lane waited for the server's writers before queuing more: events came faster
    /// than the sockets were written (see `dispatch::catch_up`).
    pub(crate) backlog_waits: AtomicU64,
    /// Handshakes and refreshes turned away at `maxVerifying` or `maxVerifyingPerUser`.
    pub(crate) refused_verifying: AtomicU64,
    /// Sockets opened with `?auth=message` that have not authenticated yet (a gauge).
    pub(crate) pending_auth: AtomicU64,
    /// Sockets closed with 4004: no `auth` message in time, or a token that was refused.
    pub(crate) auth_failures: AtomicU64,
    /// Joins with `since` refused a replay for `maxRecoveriesPerMinute`.
    pub(crate) recoveries_limited: AtomicU64,
    /// Joins with `since` refused a replay for `maxRecoveryEvents`.
    pub(crate) recoveries_too_long: AtomicU64,
    /// Events refused before they were read because the queue from the host was at `maxBacklog`.
    pub(crate) ingest_full: AtomicU64,
    /// Sockets closed with 4008 because messages the server cannot hold back (from Redis,
    /// broadcasts) brought the backlog to `maxBacklog` while the lane waited for them.
    pub(crate) backlog_evictions: AtomicU64,
    /// Messages from Redis and broadcasts dropped at twice `maxBacklog` (their rooms' members are
    /// told `recovery-failed`).
    pub(crate) backlog_dropped: AtomicU64,
    /// Bytes of WebSocket frames read from clients (headers included).
    pub(crate) bytes_in: AtomicU64,
    /// Bytes of the frames `messages_out` counts.
    pub(crate) bytes_out: AtomicU64,
    /// Calls of the authorize callback (one per event and room), and how long each took.
    pub(crate) authorize_calls: AtomicU64,
    pub(crate) authorize_latency: Histogram,
    /// Refused handshakes by the `error` of their answer (a few fixed reasons: a short list,
    /// and refusals are not a hot path).
    pub(crate) refused_by_reason: Mutex<Vec<(&'static str, u64)>>,
}

/// Upper bounds of the authorize latency histogram's buckets, in seconds (Prometheus's `le`).
pub(crate) const LATENCY_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// A latency histogram with fixed buckets ([`LATENCY_BUCKETS`]); each bucket counts only its own
/// range, made cumulative when read.
#[derive(Default, Debug)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// A histogram read at one moment: cumulative counts per bucket (the last is `+Inf`).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct HistogramSnapshot {
    pub(crate) cumulative: Vec<u64>,
    pub(crate) sum_seconds: f64,
}

impl HistogramSnapshot {
    pub(crate) fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }
}

impl Histogram {
    pub(crate) fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let at = LATENCY_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[at].fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Relaxed);
                total
            })
            .collect();
        HistogramSnapshot {
            cumulative,
            sum_seconds: self.sum_micros.load(Relaxed) as f64 / 1e6,
        }
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub connections: u64,
    pub connections_total: u64,
    pub streams: u64,
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
    pub broker: Option<crate::cluster::broker::BrokerStats>,
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
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub authorize_calls: u64,
    pub(crate) authorize_latency: HistogramSnapshot,
    /// Refused handshakes by reason, in the order the reasons were first seen.
    pub(crate) refused_by_reason: Vec<(&'static str, u64)>,
    /// Log lines dropped because the logger's queue was full.
    pub log_dropped: u64,
    /// Events kept in this instance's in-memory histories, and the rooms they belong to.
    pub(crate) history_events: u64,
    pub(crate) history_rooms: u64,
    pub sessions: crate::auth::revocations::SessionStats,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn snapshot(
        &self,
        rooms: u64,
        backlog_bytes: u64,
        broker: Option<crate::cluster::broker::BrokerStats>,
    ) -> Snapshot {
        Snapshot {
            connections: self.connections.load(Relaxed),
            connections_total: self.connections_total.load(Relaxed),
            streams: self.streams.load(Relaxed),
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
            spliced_bytes: crate::write::splice::SPLICED_BYTES.load(Relaxed) as u64,
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
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            authorize_calls: self.authorize_calls.load(Relaxed),
            authorize_latency: self.authorize_latency.snapshot(),
            refused_by_reason: self.refused_by_reason.lock().clone(),
            log_dropped: 0,
            history_events: 0,
            history_rooms: 0,
            sessions: Default::default(),
        }
    }

    /// Counts a refused handshake under its reason (and in `handshakes_refused`).
    pub(crate) fn refused(&self, reason: &'static str) {
        Stats::add(&self.handshakes_refused, 1);
        let mut by = self.refused_by_reason.lock();
        match by.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => by.push((reason, 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_inf_counts_all() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500)); // <= 1 ms
        h.observe(Duration::from_millis(3)); // <= 5 ms
        h.observe(Duration::from_secs(10)); // past the last bucket
        let s = h.snapshot();
        assert_eq!(s.cumulative.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(s.cumulative[0], 1);
        assert_eq!(s.cumulative[1], 1);
        assert_eq!(s.cumulative[2], 2);
        assert_eq!(s.cumulative[LATENCY_BUCKETS.len() - 1], 2);
        assert_eq!(s.count(), 3);
        assert!((s.sum_seconds - 10.0035).abs() < 1e-9, "{}", s.sum_seconds);
    }

    #[test]
    fn refusals_are_counted_by_reason_and_in_total() {
        let stats = Stats::default();
        stats.refused("unauthorized");
        stats.refused("forbidden-origin");
        stats.refused("unauthorized");
        let s = stats.snapshot(0, 0, None);
        assert_eq!(s.handshakes_refused, 3);
        assert_eq!(s.refused_by_reason, vec![("unauthorized", 2), ("forbidden-origin", 1)]);
    }
}
