//! Server-Sent Events on the WebSocket's port: `GET <path>/sse?rooms=posts,comments`, for
//! networks and hosts where WebSockets are blocked.
//!
//! An SSE stream is a peer like a socket: it is registered in the hub, joins its rooms with a
//! `join-collection` handled by the same [`Requests`] as a socket's (join rules, history
//! recovery, authorize and read access), and fan-out queues the same shared frames on its
//! outbound queue. Its writer is the response body: each poll takes what is queued and writes
//! every frame's JSON (the payload of the shared WebSocket frame, serialized once) as an SSE
//! message, `event:` its `type`, `id:` the stream's history positions. A close (drain 1001,
//! revocation 4003, token expiry 4001, slow consumer 4008) becomes a last `event: close` with
//! `{ code, reason }` and the stream ends.
//!
//! The slow-consumer bound: hyper takes from the body only while its own write buffer has room
//! (at most 16 buffers), and polls again at once while it has. So a stream whose last chunk
//! was not followed by a poll is a client not reading (the queue's `blocked`): a push past
//! `maxBackpressure` then closes it with 4008. A stream hyper has not polled yet since it was
//! woken is the server behind, as for a socket ([`crate::write::outbound::Push::Behind`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame};
use hyper::{header, Request, Response, StatusCode};
use serde::Deserialize;
use tokio::time::{Instant, Sleep};

use crate::auth::now_secs;
use crate::delivery::hub::Hub;
use crate::limits::Slot;
use crate::net::requests::Requests;
use crate::protocol::{self, close_code};
use crate::stats::Stats;
use crate::write::socket::Socket;

/// Longest wait between two writes on a quiet stream: a comment line keeps proxies (which often
/// cut a response silent for 60 s) and the client's liveness check satisfied. Shorter with a
/// short `idleTimeout` (half of it).
const HEARTBEAT: Duration = Duration::from_secs(15);

/// Whether a request is for the SSE endpoint: `<path>/sse` (any path ending in `/sse` when no
/// `path` is set, as a socket may connect on any path then).
pub(crate) fn is_sse_request<B>(path: Option<&str>, req: &Request<B>) -> bool {
    is_get_of(path, req, "/sse")
}

/// A plain GET (no upgrade) of `<path><leaf>`, or of any path ending in `leaf` without `path`.
pub(crate) fn is_get_of<B>(path: Option<&str>, req: &Request<B>, leaf: &str) -> bool {
    if req.method() != hyper::Method::GET || req.headers().contains_key(header::UPGRADE) {
        return false;
    }
    let p = req.uri().path();
    match path {
        Some(base) => p.strip_suffix(leaf) == Some(base.trim_end_matches('/')),
        None => p.ends_with(leaf),
    }
}

/// A query parameter's value, percent-decoded (`None` when absent).
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every value of a query parameter, percent-decoded, in order (`room=a&room=b`).
pub(crate) fn query_params(query: Option<&str>, name: &str) -> Vec<String> {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| percent_decode(v))
        })
        .collect()
}

/// The rooms of a stream or a poll, by their room names (`collection:<slug>` for a collection's):
/// the collections of `rooms=posts,comments` (as `join-collection` names them), then each app
/// room of `room=admins&room=orders:42` (as `{ type: "join", room }` names one; a
/// `collection:<slug>` there is that collection). `Err` says why the query is not acceptable.
/// At most `max` of them (`maxRoomsPerSocket`, as for a socket's joins).
pub(crate) fn rooms_of(query: Option<&str>, max: usize) -> Result<Vec<String>, String> {
    let collections = query_param(query, "rooms");
    let apps = query_params(query, "room");
    if collections.is_none() && apps.is_empty() {
        return Err(
            "name the rooms to follow: ?rooms=posts,comments (collections) and/or ?room=admins (app rooms)".into(),
        );
    }
    let mut rooms: Vec<String> = Vec::new();
    for slug in collections
        .iter()
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if !protocol::is_valid_slug(slug) {
            return Err(format!("not a collection slug: {slug:?}"));
        }
        let room = protocol::collection_room(slug);
        if !rooms.contains(&room) {
            rooms.push(room);
        }
    }
    for room in apps {
        if !protocol::is_valid_room(&room) {
            return Err(format!(
                "not a room name: {room:?} (1 to 256 characters, no control characters, not ending in '*')"
            ));
        }
        if !rooms.contains(&room) {
            rooms.push(room);
        }
    }
    if rooms.is_empty() {
        return Err("`rooms` is empty: name the rooms to follow".into());
    }
    if rooms.len() > max {
        return Err(format!("at most {max} rooms per stream (maxRoomsPerSocket)"));
    }
    Ok(rooms)
}

/// Where a stream is in each room with history, by room name: the room's `(epoch, offset)`.
pub(crate) type Positions = BTreeMap<String, (String, u64)>;

/// A room's key in an event id: a collection's slug, or `@` and the app room's name
/// percent-encoded (so `,` `/` and the rest of a room name cannot break the id apart).
fn id_key(room: &str) -> String {
    if let Some(slug) = protocol::collection_of_room(room) {
        return slug.to_string();
    }
    let mut out = String::from("@");
    for b in room.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The room an event id's key names (see [`id_key`]).
fn room_of_key(key: &str) -> Option<String> {
    match key.strip_prefix('@') {
        Some(encoded) => Some(percent_decode(&encoded.replace('+', "%2B"))).filter(|r| protocol::is_valid_room(r)),
        None => protocol::is_valid_slug(key).then(|| protocol::collection_room(key)),
    }
}

/// Reads a `Last-Event-ID`: `<epoch>:<offset>` for a stream of one room, or `<key>/<epoch>:<offset>`
/// entries joined by `,` for several (`key`: a collection's slug, or `@` and an app room's
/// percent-encoded name). Malformed entries are ignored (those rooms join live). Entries of rooms
/// the stream does not name are kept: the rooms `onConnect` joins recover from them.
pub(crate) fn parse_last_event_id(id: &str, rooms: &[String]) -> Positions {
    let mut out = Positions::new();
    for entry in id.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (room, rest) = match entry.split_once('/') {
            Some((key, rest)) => match room_of_key(key) {
                Some(room) => (room, rest),
                None => continue,
            },
            None if rooms.len() == 1 => (rooms[0].clone(), entry),
            None => continue,
        };
        let Some((epoch, offset)) = rest.rsplit_once(':') else {
            continue;
        };
        let Ok(offset) = offset.parse::<u64>() else { continue };
        // A header is bounded already; the rooms recovered are too.
        if epoch.is_empty() || out.len() >= 2 * rooms.len().max(32) {
            continue;
        }
        out.insert(room, (epoch.to_string(), offset));
    }
    out
}

/// The `id:` of a stream at `positions`; `None` before it has any. `only`: the stream's room
/// when it names one (its position alone is then written without the room's key).
pub(crate) fn event_id(positions: &Positions, only: Option<&str>) -> Option<String> {
    if positions.is_empty() {
        return None;
    }
    if let (1, Some((room, (epoch, offset)))) = (positions.len(), positions.iter().next()) {
        if only == Some(room.as_str()) {
            return Some(format!("{epoch}:{offset}"));
        }
    }
    let parts: Vec<String> = positions
        .iter()
        .map(|(room, (epoch, offset))| format!("{}/{epoch}:{offset}", id_key(room)))
        .collect();
    Some(parts.join(","))
}

/// The request id of the join of an app room made for a stream or poll: `<prefix>:<room>`
/// (the collections' join is `<prefix>`), so its ack or refusal says which room it is.
pub(crate) fn room_join_id(prefix: &str, room: &str) -> String {
    format!("{prefix}:{room}")
}

/// The fields of a message the SSE framing needs (the rest is passed through as it is).
#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type")]
    kind: Option<String>,
    collection: Option<String>,
    /// An app event's room (it names the room even when the event has a `collection`).
    room: Option<String>,
    offset: Option<u64>,
    epoch: Option<String>,
    /// An ack's request id: the collections' join (`sse`, `poll`) or an app room's (`sse:<room>`).
    id: Option<serde_json::Value>,
    /// An ack's `positions` (`{ [slug or room]: { offset, epoch } }`).
    positions: Option<BTreeMap<String, Position>>,
    recovered: Option<bool>,
}

impl Head {
    /// The room of an event: its `room`, else its collection's.
    fn room(&self) -> Option<String> {
        match (&self.room, &self.collection) {
            (Some(r), _) => Some(r.clone()),
            (None, Some(c)) => Some(protocol::collection_room(c)),
            _ => None,
        }
    }

    /// Whether this is an event for the client (a collection's change, or an app event), not
    /// a reply or an announcement of the protocol's own.
    fn is_event(&self) -> bool {
        let kind = self.kind.as_deref().unwrap_or("");
        match (&self.room, &self.collection) {
            (None, Some(_)) => matches!(kind, "create" | "update" | "delete"),
            (Some(_), _) => {
                self.offset.is_some()
                    || !(kind.is_empty()
                        || kind.starts_with("presence")
                        || matches!(kind, "ack" | "error" | "pong" | "recovery-failed" | "auth"))
            }
            (None, None) => false,
        }
    }
}

#[derive(Deserialize)]
struct Position {
    offset: u64,
    epoch: String,
}

/// Appends one message (a queued frame's JSON) to `out` as an SSE message, moving `positions`
/// on for an event of a room with history (or a join's ack). `event:` is the message's `type`
/// when it is a plain token; the data is one line (JSON never holds a raw newline).
pub(crate) fn write_message(out: &mut BytesMut, json: &[u8], positions: &mut Positions, only: Option<&str>) {
    let head: Option<Head> = serde_json::from_slice(json).ok();
    let moved = head.as_ref().is_some_and(|h| move_positions(h, positions));
    let kind = head.as_ref().and_then(|h| h.kind.as_deref());
    write_framed(out, json, kind, moved.then(|| event_id(positions, only)).flatten());
}

/// Moves `positions` on for a message: an event of a room with history, or a join's ack.
fn move_positions(head: &Head, positions: &mut Positions) -> bool {
    let mut moved = false;
    if let (Some(room), Some(o), Some(e)) = (head.room(), head.offset, &head.epoch) {
        if head.kind.as_deref() != Some("ack") {
            positions.insert(room, (e.clone(), o));
            moved = true;
        }
    }
    if head.kind.as_deref() == Some("ack") {
        // The ack of an app room's join names it by room; the collections' join by slug.
        let app = head
            .id
            .as_ref()
            .and_then(|id| id.as_str())
            .is_some_and(|id| id.contains(':'));
        // A room being recovered keeps the position it came with: the replay moves it
        // (taking the ack's, the room's latest, would skip the replay on a reconnect).
        for (key, p) in head.positions.iter().flatten() {
            let room = if app {
                key.clone()
            } else {
                protocol::collection_room(key)
            };
            if !positions.contains_key(&room) || head.recovered == Some(false) {
                positions.insert(room, (p.epoch.clone(), p.offset));
                moved = true;
            }
        }
    }
    moved
}

/// Moves `positions` on for one message's JSON; whether it is an event (a collection's change
/// or an app event), which a waiting poll answers with.
pub(crate) fn track(json: &[u8], positions: &mut Positions) -> bool {
    let Ok(head) = serde_json::from_slice::<Head>(json) else {
        return false;
    };
    move_positions(&head, positions);
    head.is_event()
}

fn write_framed(out: &mut BytesMut, json: &[u8], kind: Option<&str>, id: Option<String>) {
    if let Some(kind) = kind.filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_graphic())) {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\n");
    }
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b"\n");
    }
    // Serialized JSON has no raw line breaks; one split anyway keeps the framing whole if a
    // host's broadcast was pretty-printed.
    for line in json.split(|&b| b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"\n");
}

/// Appends the last message of a stream: `event: close` with the close frame's code and reason.
pub(crate) fn write_close(out: &mut BytesMut, close_frame: &[u8]) {
    let payload = protocol::payload(close_frame);
    let (code, reason) = match payload {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), String::from_utf8_lossy(rest).into_owned()),
        _ => (close_code::NORMAL, String::new()),
    };
    let json = serde_json::json!({ "type": "close", "code": code, "reason": reason }).to_string();
    out.extend_from_slice(b"event: close\ndata: ");
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Joins a stream's or a poll's rooms for it, recovering from `last` where it has a position:
/// its collections with one `join-collection` (request id `prefix`), as a socket would, then
/// its app rooms, each as `{ type: "join", room }` would (request id `<prefix>:<room>`), under
/// the same rules (a room no rule of `rooms` names is refused).
pub(crate) fn join_rooms(requests: &mut Requests, prefix: &str, rooms: &[String], last: &Positions) {
    let since = |room: &str| {
        last.get(room).map(|(epoch, offset)| crate::protocol::Since {
            offset: *offset,
            epoch: epoch.clone(),
        })
    };
    let collections: Vec<&str> = rooms.iter().filter_map(|r| protocol::collection_of_room(r)).collect();
    if !collections.is_empty() {
        let mut join = serde_json::json!({ "type": "join-collection", "id": prefix, "data": collections });
        let from: serde_json::Map<String, serde_json::Value> = collections
            .iter()
            .filter_map(|c| {
                let s = since(&protocol::collection_room(c))?;
                Some((
                    c.to_string(),
                    serde_json::json!({ "offset": s.offset, "epoch": s.epoch }),
                ))
            })
            .collect();
        if !from.is_empty() {
            join["since"] = serde_json::Value::Object(from);
        }
        requests.on_text(join.to_string().as_bytes());
    }
    let apps: Vec<(String, String, Option<crate::protocol::Since>)> = rooms
        .iter()
        .filter(|r| protocol::collection_of_room(r).is_none())
        .map(|r| (room_join_id(prefix, r), r.clone(), since(r)))
        .collect();
    if !apps.is_empty() {
        requests.join_rooms(apps);
    }
}

/// The response body of one SSE stream: the peer's writer for as long as it is polled.
pub(crate) struct SseBody {
    hub: Arc<Hub>,
    peer: Arc<Socket>,
    /// Kept for the stream's life: its place in the connection limits.
    _slot: Slot,
    /// Kept for the stream's life: counted in `connections` and `streams`.
    _counted: Counted,
    /// Kept for the stream's life: a drain waits for it as for a socket.
    _token: tokio_util::task::task_tracker::TaskTrackerToken,
    /// Joins and leaves sent on the stream's behalf (only the first join).
    _requests: Requests,
    positions: Positions,
    /// The stream's room when it names only one.
    only: Option<String>,
    heartbeat: Duration,
    timer: Pin<Box<Sleep>>,
    /// The first poll writes a comment at once (the client sees the stream open).
    started: bool,
    done: bool,
}

impl SseBody {
    /// Opens a stream for a registered peer: joins `rooms` (recovering from `last` where given)
    /// as the socket message `join-collection` does.
    pub(crate) fn open(
        hub: Arc<Hub>,
        peer: Arc<Socket>,
        slot: Slot,
        token: tokio_util::task::task_tracker::TaskTrackerToken,
        rooms: Vec<String>,
        last: Positions,
    ) -> SseBody {
        let counted = Counted::new(hub.clone());
        let mut requests = Requests::new(hub.clone(), peer.clone());
        // As a socket: `onConnect` first (its initial state, its rooms, recovered from the
        // positions the id gives for them), then the rooms the stream names.
        let elsewhere: Positions = last
            .iter()
            .filter(|(room, _)| !rooms.contains(room))
            .map(|(r, p)| (r.clone(), p.clone()))
            .collect();
        requests.on_connect_from(&elsewhere);
        join_rooms(&mut requests, "sse", &rooms, &last);
        let heartbeat = hub
            .config
            .idle_timeout
            .map_or(HEARTBEAT, |idle| (idle / 2).min(HEARTBEAT));
        let heartbeat = heartbeat.max(Duration::from_millis(100));
        let timer = Box::pin(tokio::time::sleep(heartbeat));
        SseBody {
            only: (rooms.len() == 1).then(|| rooms[0].clone()),
            positions: last,
            heartbeat,
            timer,
            started: false,
            done: false,
            _slot: slot,
            _counted: counted,
            _token: token,
            _requests: requests,
            hub,
            peer,
        }
    }

    /// Due at the next heartbeat, or at the token's expiry when sooner.
    fn next_wake(&self) -> Instant {
        let beat = Instant::now() + self.heartbeat;
        match self.peer.expires_at() {
            0 => beat,
            exp => beat.min(Instant::now() + Duration::from_secs(exp.saturating_sub(now_secs()))),
        }
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done || this.peer.outbound.is_cut() {
            this.done = true;
            return Poll::Ready(None);
        }
        let out = &this.peer.outbound;
        // Polled: hyper has room for more, the client is taking what is written.
        out.mark_blocked(false);
        out.register(cx.waker());
        let mut buf = BytesMut::new();
        if !this.started {
            this.started = true;
            buf.extend_from_slice(b": stream open\n\n");
        }
        let (frames, ending) = out.take_all();
        // Counted in `messagesOut` and `bytesOut` when queued, as for a socket.
        for frame in &frames {
            // Pings and pongs are a socket's; a stream has its heartbeat comments.
            if frame.first().map(|b| b & 0x0F) == Some(0x1) {
                write_message(
                    &mut buf,
                    protocol::payload(frame),
                    &mut this.positions,
                    this.only.as_deref(),
                );
            }
        }
        if let Some(close) = ending {
            write_close(&mut buf, &close);
            this.done = true;
        }
        if buf.is_empty() {
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let exp = this.peer.expires_at();
            let at = this.next_wake();
            this.timer.as_mut().reset(at);
            if exp != 0 && exp <= now_secs() {
                // Ends as a socket's would: 4001, then the close event on the next poll.
                this.hub.registry.remove_socket(&this.peer);
                this.peer.outbound.close(close_code::TOKEN_EXPIRED, "token expired");
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            buf.extend_from_slice(b":\n\n");
        } else {
            let at = this.next_wake();
            this.timer.as_mut().reset(at);
        }
        // Until hyper polls again: it does at once while its buffer has room, and not while
        // the client is not reading (then a push past the bound evicts).
        out.mark_blocked(true);
        Poll::Ready(Some(Ok(Frame::data(buf.freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        self.hub.registry.remove_socket(&self.peer);
        self.peer.outbound.close(close_code::NORMAL, "");
    }
}

/// An SSE stream or a waiting long poll, counted in `connections` (as a socket) and `streams`
/// for as long as it is kept.
pub(crate) struct Counted(Arc<Hub>);

impl Counted {
    pub(crate) fn new(hub: Arc<Hub>) -> Counted {
        Stats::add(&hub.stats.connections, 1);
        Stats::add(&hub.stats.connections_total, 1);
        Stats::add(&hub.stats.streams, 1);
        Counted(hub)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let stats = &self.0.stats;
        stats.streams.fetch_sub(1, Ordering::Relaxed);
        if stats.connections.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.memory.on_idle(stats.connections_total.load(Ordering::Relaxed));
        }
    }
}

/// The headers of a stream's response (with CORS for an allowed page of another origin:
/// the credential rules were applied already, so echoing the origin gives nothing away).
pub(crate) fn response<B>(req: &Request<()>, body: B) -> Response<B> {
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache, no-transform")
        .header("x-accel-buffering", "no");
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        builder = builder
            .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())
            .header(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true")
            .header(header::VARY, "Origin");
    }
    builder.body(body).expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(json: &str, positions: &mut Positions, single: bool) -> String {
        let mut out = BytesMut::new();
        write_message(
            &mut out,
            json.as_bytes(),
            positions,
            single.then_some("collection:posts"),
        );
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn an_event_is_one_message_named_by_its_type() {
        let mut p = Positions::new();
        let s = framed(r#"{"type":"create","collection":"posts","id":1}"#, &mut p, true);
        assert_eq!(
            s,
            "event: create\ndata: {\"type\":\"create\",\"collection\":\"posts\",\"id\":1}\n\n"
        );
        assert!(p.is_empty());
    }

    #[test]
    fn an_event_with_history_carries_the_streams_position() {
        let mut p = Positions::new();
        let one = r#"{"type":"update","collection":"posts","offset":7,"epoch":"e1"}"#;
        assert!(framed(one, &mut p, true).contains("\nid: e1:7\n"));
        let mut p = Positions::new();
        p.insert("collection:comments".into(), ("e2".into(), 3));
        let s = framed(one, &mut p, false);
        assert!(s.contains("\nid: comments/e2:3,posts/e1:7\n"), "{s}");
        // An app event's position is its room's, named by `@` and the room percent-encoded.
        let app = r#"{"type":"shipped","room":"orders:4/2,x","collection":"posts","offset":2,"epoch":"e3"}"#;
        let s = framed(app, &mut p, false);
        assert!(
            s.contains("\nid: comments/e2:3,posts/e1:7,@orders:4%2F2%2Cx/e3:2\n"),
            "{s}"
        );
        assert_eq!(p["orders:4/2,x"], ("e3".to_string(), 2));
        // A stream of one room with a position only in another (`onConnect`'s) names it.
        let mut p = Positions::new();
        assert!(
            framed(r#"{"type":"m","room":"role:a","offset":1,"epoch":"r"}"#, &mut p, true)
                .contains("\nid: @role:a/r:1\n")
        );
    }

    #[test]
    fn an_ack_sets_every_rooms_position() {
        let mut p = Positions::new();
        let ack = r#"{"type":"ack","id":"sse","positions":{"posts":{"offset":4,"epoch":"a"},"pages":{"offset":0,"epoch":"b"}}}"#;
        let s = framed(ack, &mut p, false);
        assert!(s.starts_with("event: ack\nid: pages/b:0,posts/a:4\n"), "{s}");
        // An app room's join names its room: its ack's positions are by room name.
        let ack = r#"{"type":"ack","id":"sse:posts","positions":{"posts":{"offset":1,"epoch":"c"}}}"#;
        let s = framed(ack, &mut p, false);
        assert!(s.starts_with("event: ack\nid: pages/b:0,posts/a:4,@posts/c:1\n"), "{s}");
    }

    #[test]
    fn a_line_break_in_the_data_stays_inside_the_message() {
        let mut p = Positions::new();
        let s = framed("{\"type\":\"x\",\n\"a\":1}", &mut p, true);
        assert_eq!(s, "event: x\ndata: {\"type\":\"x\",\ndata: \"a\":1}\n\n");
        // A type that is not a plain token is not an event name (the data still says it).
        let s = framed(r#"{"type":"a b\nevent: evil"}"#, &mut p, true);
        assert!(s.starts_with("data: "), "{s}");
    }

    #[test]
    fn a_close_is_the_last_message_with_its_code() {
        let mut out = BytesMut::new();
        write_close(&mut out, &protocol::close_frame(4003, "session revoked"));
        let text = std::str::from_utf8(&out).unwrap();
        let data = text
            .strip_prefix("event: close\ndata: ")
            .unwrap()
            .strip_suffix("\n\n")
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(
            v,
            serde_json::json!({ "type": "close", "code": 4003, "reason": "session revoked" })
        );
    }

    #[test]
    fn last_event_ids_are_read_for_one_or_many_rooms() {
        let one = vec!["collection:posts".to_string()];
        let p = parse_last_event_id("inst1-0:12", &one);
        assert_eq!(p.get("collection:posts"), Some(&("inst1-0".to_string(), 12)));
        let one_app = vec!["role:admin".to_string()];
        assert!(parse_last_event_id("e:1", &one_app).contains_key("role:admin"));
        let many = vec!["collection:posts".to_string(), "collection:pages".to_string()];
        let p = parse_last_event_id("posts/a-1:3,pages/b-2:9,bad,posts/x:y,@a%2Cb%2Fc/d:4,@/e:1", &many);
        assert_eq!(p.len(), 3, "{p:?}");
        assert_eq!(p.get("collection:pages"), Some(&("b-2".to_string(), 9)));
        // Rooms the stream does not name are kept (for the rooms `onConnect` joins).
        assert_eq!(p.get("a,b/c"), Some(&("d".to_string(), 4)));
        assert!(parse_last_event_id("a-1:3", &many).is_empty());
        assert_eq!(
            event_id(&parse_last_event_id("posts/a:3,pages/b:9,@ops%3A1/c:2", &many), None).unwrap(),
            "pages/b:9,posts/a:3,@ops:1/c:2"
        );
    }

    #[test]
    fn rooms_and_paths_are_checked() {
        assert_eq!(
            rooms_of(Some("rooms=posts,comments,posts"), 2).unwrap(),
            vec!["collection:posts", "collection:comments"]
        );
        assert_eq!(
            rooms_of(Some("x=1&rooms=posts%2Cpages"), 9).unwrap(),
            vec!["collection:posts", "collection:pages"]
        );
        // App rooms one by one (a name may hold a comma); a collection's room is the collection.
        assert_eq!(
            rooms_of(
                Some("room=admins&rooms=posts&room=orders%3A4%2C2&room=collection%3Aposts"),
                9
            )
            .unwrap(),
            vec!["collection:posts", "admins", "orders:4,2"]
        );
        assert_eq!(rooms_of(Some("room=admins"), 9).unwrap(), vec!["admins"]);
        assert!(rooms_of(Some("room=orders%3A*"), 9).is_err());
        assert!(rooms_of(Some("room="), 9).is_err());
        assert!(rooms_of(Some("rooms=a&room=b&room=c"), 2).is_err());
        assert!(rooms_of(Some("rooms=a,b,c"), 2).is_err());
        assert!(rooms_of(Some("rooms="), 9).is_err());
        assert!(rooms_of(None, 9).is_err());
        assert!(rooms_of(Some("rooms=po%20sts"), 9).is_err());
        let get = |uri: &str| Request::get(uri).body(()).unwrap();
        assert!(is_sse_request(Some("/realtime"), &get("/realtime/sse?rooms=a")));
        assert!(!is_sse_request(Some("/realtime"), &get("/other/sse")));
        assert!(is_sse_request(None, &get("/sse")));
        assert!(!is_sse_request(None, &get("/ssex")));
    }
}
