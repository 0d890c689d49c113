//! Long polling, for clients that can hold neither a socket nor a stream:
//! `GET <path>/poll?rooms=posts&cursor=...` answers `{ "messages": [...], "cursor": "..." }`.
//!
//! A poll is a short-lived peer admitted like an SSE stream (credentials, limits, join rules,
//! authorize): it joins its rooms from `cursor` (the SSE `id` format), so history replays what
//! came after it through the same rules, and answers as soon as an event is there, or after
//! [`POLL_WAIT`] with none (a first poll, without `cursor`, answers at once with the join's ack
//! and the cursor to start from). The next poll passes the
//! `cursor` it got. Without history nothing is kept between polls: events that come while no
//! poll waits are not seen (`recovery-failed` says so). The per-client buffer is the room's
//! history; what one answer holds is bounded by `maxRecoveryEvents` and `maxBackpressure`.

use std::sync::Arc;
use std::time::Duration;

use hyper::Request;
use serde_json::Value;

use crate::delivery::hub::Hub;
use crate::net::requests::Requests;
use crate::net::sse::{self, Positions};
use crate::protocol::{self, close_code};
use crate::write::socket::Socket;

/// Longest a poll waits for an event: under the 30 s many proxies allow a silent response.
pub(crate) const POLL_WAIT: Duration = Duration::from_secs(25);

/// Whether a request is for the long-poll endpoint: `<path>/poll`.
pub(crate) fn is_poll_request<B>(path: Option<&str>, req: &Request<B>) -> bool {
    sse::is_get_of(path, req, "/poll")
}

/// Joins, waits for events (or the end of [`POLL_WAIT`], a drain, a close), and answers the
/// JSON body; the peer is gone when this returns.
pub(crate) async fn answer(hub: &Arc<Hub>, peer: Arc<Socket>, rooms: Vec<String>, mut positions: Positions) -> String {
    let mut requests = Requests::new(hub.clone(), peer.clone());
    // Each poll is a request, not a connection: `onConnect` is not run for it.
    sse::join_rooms(&mut requests, "poll", &rooms, &positions);
    // A first poll (no cursor) answers once every join is answered (its ack or its refusal),
    // with the cursor to poll from.
    let first = positions.is_empty();
    let mut joins = rooms
        .iter()
        .filter(|r| protocol::collection_of_room(r).is_none())
        .count()
        + usize::from(rooms.iter().any(|r| protocol::collection_of_room(r).is_some()));
    let deadline = tokio::time::Instant::now() + POLL_WAIT;
    let mut messages: Vec<Value> = Vec::new();
    let mut closed = None;
    loop {
        let out = &peer.outbound;
        let taken = std::future::poll_fn(|cx| {
            out.register(cx.waker());
            let (frames, ending) = out.take_all();
            if frames.is_empty() && ending.is_none() {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready((frames, ending))
            }
        });
        let (frames, ending) = tokio::select! {
            t = tokio::time::timeout_at(deadline, taken) => match t {
                Ok(t) => t,
                Err(_) => break,
            },
            _ = hub.stopping.cancelled() => break,
        };
        let mut events = false;
        for frame in &frames {
            if frame.first().map(|b| b & 0x0F) != Some(0x1) {
                continue;
            }
            let json = protocol::payload(frame);
            events |= sse::track(json, &mut positions);
            if let Ok(v) = serde_json::from_slice::<Value>(json) {
                // A refused join (a join rule) ends the poll: waiting would show nothing.
                events |= v["type"] == "error";
                let ours = v["id"]
                    .as_str()
                    .is_some_and(|id| id == "poll" || id.starts_with("poll:"));
                if ours && (v["type"] == "ack" || v["type"] == "error") {
                    joins = joins.saturating_sub(1);
                }
                messages.push(v);
            }
        }
        if let Some(close) = ending {
            let payload = protocol::payload(&close);
            let code = match payload {
                [a, b, ..] => u16::from_be_bytes([*a, *b]),
                _ => close_code::NORMAL,
            };
            closed = Some(serde_json::json!({
                "code": code,
                "reason": String::from_utf8_lossy(payload.get(2..).unwrap_or(&[])),
            }));
            break;
        }
        if events || (first && joins == 0) {
            break;
        }
    }
    drop(requests);
    hub.registry.remove_socket(&peer);
    peer.outbound.close(close_code::NORMAL, "");
    let mut body = serde_json::json!({
        "messages": messages,
        "cursor": sse::event_id(&positions, None),
    });
    if let Some(closed) = closed {
        body["close"] = closed;
    }
    body.to_string()
}
