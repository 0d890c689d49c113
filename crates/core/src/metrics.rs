//! `GET /metrics`: the counters of [`crate::stats`] in Prometheus's text exposition format
//! (version 0.0.4). [`METRICS`] is the one list of what is exported, with each metric's type and
//! help text; docs/operations.md's table is checked against the output by a test.

use std::fmt::Write;

use crate::stats::{HistogramSnapshot, Snapshot, LATENCY_BUCKETS};

/// The `Content-Type` of the exposition.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// What a metric reads from a snapshot.
pub(crate) enum Value<'a> {
    One(u64),
    /// One sample per value of the label.
    Labeled(&'static str, Vec<(&'a str, u64)>),
    Histogram(&'a HistogramSnapshot),
}

pub(crate) struct Metric {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    pub(crate) help: &'static str,
    pub(crate) value: fn(&Snapshot) -> Value<'_>,
}

fn redis(s: &Snapshot, f: fn(&crate::cluster::broker::BrokerStats) -> u64) -> Value<'_> {
    Value::One(s.broker.as_ref().map_or(0, f))
}

/// Every exported metric, in the order they are written.
pub(crate) static METRICS: &[Metric] = &[
    Metric {
        name: "payload_realtime_connections",
        kind: Kind::Gauge,
        help: "WebSocket connections open now.",
        value: |s| Value::One(s.connections),
    },
    Metric {
        name: "payload_realtime_connections_accepted_total",
        kind: Kind::Counter,
        help: "WebSocket connections accepted since start.",
        value: |s| Value::One(s.connections_total),
    },
    Metric {
        name: "payload_realtime_streams",
        kind: Kind::Gauge,
        help: "Of the connections: SSE streams open and long polls waiting now.",
        value: |s| Value::One(s.streams),
    },
    Metric {
        name: "payload_realtime_handshakes_refused_total",
        kind: Kind::Counter,
        help: "Upgrade requests refused, by the error of the answer.",
        value: |s| Value::Labeled("reason", s.refused_by_reason.iter().map(|(r, n)| (*r, *n)).collect()),
    },
    Metric {
        name: "payload_realtime_rooms",
        kind: Kind::Gauge,
        help: "Rooms with at least one local member.",
        value: |s| Value::One(s.rooms),
    },
    Metric {
        name: "payload_realtime_messages_in_total",
        kind: Kind::Counter,
        help: "Messages received from clients.",
        value: |s| Value::One(s.messages_in),
    },
    Metric {
        name: "payload_realtime_messages_out_total",
        kind: Kind::Counter,
        help: "Frames queued to clients (events, broadcasts, sendToSocket).",
        value: |s| Value::One(s.messages_out),
    },
    Metric {
        name: "payload_realtime_bytes_in_total",
        kind: Kind::Counter,
        help: "Bytes of WebSocket frames read from clients.",
        value: |s| Value::One(s.bytes_in),
    },
    Metric {
        name: "payload_realtime_bytes_out_total",
        kind: Kind::Counter,
        help: "Bytes of the frames counted by messages_out.",
        value: |s| Value::One(s.bytes_out),
    },
    Metric {
        name: "payload_realtime_dropped_total",
        kind: Kind::Counter,
        help: "Frames not delivered because their socket was evicted or closing.",
        value: |s| Value::One(s.dropped),
    },
    Metric {
        name: "payload_realtime_evicted_total",
        kind: Kind::Counter,
        help: "Sockets closed with 4008 (slow consumer, past maxBackpressure).",
        value: |s| Value::One(s.slow_consumers),
    },
    Metric {
        name: "payload_realtime_rate_limited_total",
        kind: Kind::Counter,
        help: "Sockets closed with 4029 (kept sending past maxMessagesPerSecond).",
        value: |s| Value::One(s.rate_limited),
    },
    Metric {
        name: "payload_realtime_events_total",
        kind: Kind::Counter,
        help: "Events emitted through emitEvent.",
        value: |s| Value::One(s.events),
    },
    Metric {
        name: "payload_realtime_authorize_calls_total",
        kind: Kind::Counter,
        help: "Calls of the authorize callback (one per event and room).",
        value: |s| Value::One(s.authorize_calls),
    },
    Metric {
        name: "payload_realtime_authorize_duration_seconds",
        kind: Kind::Histogram,
        help: "How long the authorize callback took to answer.",
        value: |s| Value::Histogram(&s.authorize_latency),
    },
    Metric {
        name: "payload_realtime_authorize_denied_total",
        kind: Kind::Counter,
        help: "Deliveries withheld by an authorize answer of false.",
        value: |s| Value::One(s.authorize_denied),
    },
    Metric {
        name: "payload_realtime_authorize_errors_total",
        kind: Kind::Counter,
        help: "Users denied because authorize failed or timed out.",
        value: |s| Value::One(s.authorize_errors),
    },
    Metric {
        name: "payload_realtime_handler_errors_total",
        kind: Kind::Counter,
        help: "Custom handler calls that failed.",
        value: |s| Value::One(s.handler_errors),
    },
    Metric {
        name: "payload_realtime_backlog_bytes",
        kind: Kind::Gauge,
        help: "Bytes of events waiting for the server's writers (bounded by maxBacklog).",
        value: |s| Value::One(s.backlog_bytes),
    },
    Metric {
        name: "payload_realtime_backlog_waits_total",
        kind: Kind::Counter,
        help: "Times delivery waited for the server's writers.",
        value: |s| Value::One(s.backlog_waits),
    },
    Metric {
        name: "payload_realtime_history_events",
        kind: Kind::Gauge,
        help: "Events kept in memory for recovery.",
        value: |s| Value::One(s.history_events),
    },
    Metric {
        name: "payload_realtime_history_rooms",
        kind: Kind::Gauge,
        help: "Rooms with an in-memory history.",
        value: |s| Value::One(s.history_rooms),
    },
    Metric {
        name: "payload_realtime_redis_connected",
        kind: Kind::Gauge,
        help: "1 while connected to Redis; 0 when disconnected or not configured.",
        value: |s| redis(s, |b| u64::from(b.connected)),
    },
    Metric {
        name: "payload_realtime_redis_errors_total",
        kind: Kind::Counter,
        help: "Redis publishes that failed or were dropped.",
        value: |s| redis(s, |b| b.errors),
    },
    Metric {
        name: "payload_realtime_redis_reconnects_total",
        kind: Kind::Counter,
        help: "Times the Redis connection was established again after a loss.",
        value: |s| redis(s, |b| b.reconnects),
    },
    Metric {
        name: "payload_realtime_redis_published_total",
        kind: Kind::Counter,
        help: "Messages published to Redis.",
        value: |s| redis(s, |b| b.published),
    },
    Metric {
        name: "payload_realtime_redis_received_total",
        kind: Kind::Counter,
        help: "Messages received from Redis.",
        value: |s| redis(s, |b| b.received),
    },
    Metric {
        name: "payload_realtime_redis_rejected_total",
        kind: Kind::Counter,
        help: "Messages from Redis dropped because no instance of this app wrote them.",
        value: |s| redis(s, |b| b.rejected),
    },
    Metric {
        name: "payload_realtime_log_lines_dropped_total",
        kind: Kind::Counter,
        help: "Log lines dropped because the logger's queue was full.",
        value: |s| Value::One(s.log_dropped),
    },
    Metric {
        name: "payload_realtime_revoked_sessions",
        kind: Kind::Gauge,
        help: "Revoked sessions this instance remembers now (at most maxRevokedSessions).",
        value: |s| Value::One(s.sessions.revoked),
    },
    Metric {
        name: "payload_realtime_revocations_pending",
        kind: Kind::Gauge,
        help: "Revocations waiting to be written to Redis.",
        value: |s| Value::One(s.sessions.pending),
    },
    Metric {
        name: "payload_realtime_revocations_evicted_total",
        kind: Kind::Counter,
        help: "Revoked sessions forgotten to stay within maxRevokedSessions.",
        value: |s| Value::One(s.sessions.evicted),
    },
    Metric {
        name: "payload_realtime_session_check_failures_total",
        kind: Kind::Counter,
        help: "Session checks Redis could not answer in time (each refused its handshake or refresh).",
        value: |s| Value::One(s.sessions.check_failures),
    },
];

/// Help text as the format wants it: `\` and newlines escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A label value as the format wants it: `\`, `"` and newlines escaped.
fn escape_label(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A float as Prometheus writes one (`+Inf`, no exponent for the buckets here).
fn float(v: f64) -> String {
    if v.is_infinite() {
        "+Inf".into()
    } else {
        format!("{v}")
    }
}

/// The exposition of `metrics` over `s`.
pub(crate) fn render_with(metrics: &[Metric], s: &Snapshot) -> String {
    let mut out = String::with_capacity(metrics.len() * 160);
    for m in metrics {
        let _ = writeln!(out, "# HELP {} {}", m.name, escape_help(m.help));
        let _ = writeln!(out, "# TYPE {} {}", m.name, m.kind.as_str());
        match (m.value)(s) {
            Value::One(v) => {
                let _ = writeln!(out, "{} {v}", m.name);
            }
            Value::Labeled(label, samples) => {
                for (value, n) in samples {
                    let _ = writeln!(out, "{}{{{label}=\"{}\"}} {n}", m.name, escape_label(value));
                }
            }
            Value::Histogram(h) => {
                let bounds = LATENCY_BUCKETS.iter().copied().chain([f64::INFINITY]);
                for (le, n) in bounds.zip(h.cumulative.iter().copied().chain(std::iter::repeat(0))) {
                    let _ = writeln!(out, "{}_bucket{{le=\"{}\"}} {n}", m.name, float(le));
                }
                let _ = writeln!(out, "{}_sum {}", m.name, float(h.sum_seconds));
                let _ = writeln!(out, "{}_count {}", m.name, h.count());
            }
        }
    }
    out
}

/// The exposition of every metric of [`METRICS`].
pub(crate) fn render(s: &Snapshot) -> String {
    render_with(METRICS, s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Histogram;

    fn valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    #[test]
    fn the_table_has_unique_valid_names_and_counters_end_in_total() {
        let mut seen = std::collections::HashSet::new();
        for m in METRICS {
            assert!(valid_name(m.name), "{}", m.name);
            assert!(seen.insert(m.name), "{} twice", m.name);
            assert_eq!(m.kind == Kind::Counter, m.name.ends_with("_total"), "{}", m.name);
            assert!(!m.help.is_empty() && !m.help.contains('\n'), "{}", m.name);
        }
    }

    #[test]
    fn every_metric_gets_help_type_and_a_sample() {
        let text = render(&Snapshot::default());
        for m in METRICS {
            assert!(text.contains(&format!("# HELP {} {}\n", m.name, m.help)), "{}", m.name);
            assert!(
                text.contains(&format!("# TYPE {} {}\n", m.name, m.kind.as_str())),
                "{}",
                m.name
            );
        }
        assert!(text.contains("\npayload_realtime_connections 0\n"), "{text}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn counters_labels_and_escapes_are_written_as_the_format_says() {
        static ONE: &[Metric] = &[
            Metric {
                name: "x_total",
                kind: Kind::Counter,
                help: "a \\ back\nslash",
                value: |s| Value::Labeled("reason", s.refused_by_reason.iter().map(|(r, n)| (*r, *n)).collect()),
            },
            Metric {
                name: "y",
                kind: Kind::Gauge,
                help: "y",
                value: |s| Value::One(s.connections),
            },
        ];
        let s = Snapshot {
            connections: 7,
            refused_by_reason: vec![("unauthorized", 2), ("a\"b", 1)],
            ..Snapshot::default()
        };
        assert_eq!(
            render_with(ONE, &s),
            "# HELP x_total a \\\\ back\\nslash\n# TYPE x_total counter\n\
             x_total{reason=\"unauthorized\"} 2\nx_total{reason=\"a\\\"b\"} 1\n\
             # HELP y y\n# TYPE y gauge\ny 7\n"
        );
    }

    #[test]
    fn a_histogram_has_cumulative_buckets_up_to_inf_then_sum_and_count() {
        let h = Histogram::default();
        h.observe(std::time::Duration::from_millis(2));
        h.observe(std::time::Duration::from_millis(2));
        h.observe(std::time::Duration::from_secs(30));
        let s = Snapshot {
            authorize_latency: h.snapshot(),
            ..Snapshot::default()
        };
        let text = render(&s);
        let name = "payload_realtime_authorize_duration_seconds";
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(name)).collect();
        assert_eq!(lines.len(), LATENCY_BUCKETS.len() + 3, "{lines:?}");
        assert_eq!(lines[0], format!("{name}_bucket{{le=\"0.001\"}} 0"));
        assert_eq!(lines[1], format!("{name}_bucket{{le=\"0.0025\"}} 2"));
        assert_eq!(lines[LATENCY_BUCKETS.len() - 1], format!("{name}_bucket{{le=\"5\"}} 2"));
        assert_eq!(lines[LATENCY_BUCKETS.len()], format!("{name}_bucket{{le=\"+Inf\"}} 3"));
        assert_eq!(lines[LATENCY_BUCKETS.len() + 1], format!("{name}_sum 30.004"));
        assert_eq!(lines[LATENCY_BUCKETS.len() + 2], format!("{name}_count 3"));
    }
}
