//! One upgraded socket, from its first frame to its close: the reader (frames to protocol
//! messages to actions), the writer task that drains the outbound queue, pings, the idle timer,
//! token expiry, and the close codes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, WebSocketError};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::auth::now_secs;
use crate::callbacks::{HandlerCall, HandlerOutcome};
use crate::history::Since;
use crate::hub::{Hub, JoinOutcome};
use crate::inbound_guard::{InboundGuard, Violation};
use crate::outbound::{run_writer, WriterEnd};
use crate::peer::Peer;
use crate::protocol::{self, close_code, collection_room, ClientMessage, ErrorCode, RequestId};
use crate::stats::Stats;
use crate::{debug, warn};

/// How long to wait for the client's close frame after ours before dropping the connection.
const CLOSE_HANDSHAKE_WAIT: Duration = Duration::from_secs(2);

/// Custom handler calls one socket may have in flight; more are refused as `rate-limited`.
const MAX_HANDLERS_IN_FLIGHT: usize = 32;

/// Runs a socket until it closes (the handshake registered the peer). It is removed from every room
/// before this returns.
pub async fn serve(hub: Arc<Hub>, peer: Arc<Peer>, upgraded: Upgraded) {
    let parts = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => parts,
        Err(_) => {
            hub.registry.remove_peer(&peer);
            warn!("upgraded connection is not a TCP stream; dropped");
            return;
        }
    };
    let (read_half, mut write_half) = parts.io.into_inner().into_split();
    // Bytes the client sent right after its handshake are in `read_buf`: read them first.
    let reader = std::io::Cursor::new(parts.read_buf).chain(read_half);
    let guarded = InboundGuard::new(reader, hub.config.max_payload_length);
    let (ws_read, _) = fastwebsockets::after_handshake_split(guarded, tokio::io::sink(), fastwebsockets::Role::Server);
    let mut ws = FragmentCollectorRead::new(ws_read);

    Stats::add(&hub.stats.connections, 1);
    Stats::add(&hub.stats.connections_total, 1);

    let writer_peer = peer.clone();
    let writer =
        tokio::spawn(async move { run_writer(&writer_peer.outbound, &mut write_half, &writer_peer.cancel).await });

    read_loop(&hub, &peer, &mut ws, writer).await;

    hub.registry.remove_peer(&peer);
    peer.cancel.cancel();
    if hub.stats.connections.fetch_sub(1, Ordering::Relaxed) == 1 {
        hub.memory.on_idle(hub.stats.connections_total.load(Ordering::Relaxed));
    }
    debug!("socket {} closed", peer.public_id);
}

/// Per-socket reader state that no other task touches.
struct Reader<'a> {
    hub: &'a Arc<Hub>,
    peer: &'a Arc<Peer>,
    /// Token bucket for `maxMessagesPerSecond`.
    tokens: f64,
    refilled: Instant,
    handlers_in_flight: Arc<AtomicUsize>,
}

async fn read_loop<S>(
    hub: &Arc<Hub>,
    peer: &Arc<Peer>,
    ws: &mut FragmentCollectorRead<S>,
    writer: tokio::task::JoinHandle<WriterEnd>,
) where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut state = Reader {
        hub,
        peer,
        tokens: hub.config.max_messages_per_second as f64,
        refilled: Instant::now(),
        handlers_in_flight: Arc::new(AtomicUsize::new(0)),
    };
    let idle = hub.config.idle_timeout;
    let mut ticker =
        tokio::time::interval(idle.map_or(Duration::from_secs(3600), |d| (d / 4).max(Duration::from_millis(100))));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.reset();
    // The token's expiry; a fresh token (`{ type: "auth" }`) moves `peer.expires_at`, so when
    // the timer fires it checks again before closing.
    let expiry_at = |peer: &Peer| match peer.expires_at.load(Ordering::Relaxed) {
        0 => None,
        exp => Some(tokio::time::Instant::now() + Duration::from_secs(exp.saturating_sub(now_secs()))),
    };
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    let expired = tokio::time::sleep_until(expiry_at(peer).unwrap_or(far));
    tokio::pin!(expired);
    tokio::pin!(writer);
    let mut writer_done = false;
    let mut expiry_done = false;
    let mut close_deadline: Option<tokio::time::Instant> = None;
    let mut ping_sent = false;
    let out = &peer.outbound;

    // Frames the protocol obliges us to send (pong, close echo) go through the outbound queue.
    let mut send_fn = |frame: Frame<'_>| {
        let bytes = protocol::frame(frame.opcode as u8, &frame.payload);
        match frame.opcode {
            OpCode::Close => out.close_now(bytes),
            _ => out.push_control(bytes),
        }
        std::future::ready(Ok::<(), std::io::Error>(()))
    };

    loop {
        let read = ws.read_frame(&mut send_fn);
        tokio::pin!(read);
        // Wait for the next frame; timers and the writer's end are handled while it is pending
        // (the read future itself is never dropped half-way: fastwebsockets' read is not
        // cancel-safe).
        let result = loop {
            tokio::select! {
                r = &mut read => break r,
                _ = ticker.tick() => {
                    if let Some(idle) = idle {
                        let quiet = Duration::from_millis(hub.now_ms().saturating_sub(peer.last_seen_ms.load(Ordering::Relaxed)));
                        if quiet >= idle {
                            hub.registry.remove_peer(peer);
                            out.close(close_code::GOING_AWAY, "idle timeout");
                        } else if quiet >= idle / 2 && !ping_sent {
                            out.push_control(protocol::frame(0x9, b""));
                            ping_sent = true;
                        }
                    }
                }
                _ = &mut expired, if !expiry_done => {
                    let exp = peer.expires_at.load(Ordering::Relaxed);
                    if exp != 0 && exp > now_secs() {
                        expired.as_mut().reset(expiry_at(peer).unwrap_or(far));
                    } else {
                        // A fired sleep stays ready: the flag keeps the select from spinning on it.
                        expiry_done = true;
                        hub.registry.remove_peer(peer);
                        out.close(close_code::TOKEN_EXPIRED, "token expired");
                    }
                }
                end = &mut writer, if !writer_done => {
                    writer_done = true;
                    match end {
                        Ok(WriterEnd::Closed) => {
                            close_deadline.get_or_insert(tokio::time::Instant::now() + CLOSE_HANDSHAKE_WAIT);
                        }
                        _ => return,
                    }
                }
                _ = sleep_until_opt(close_deadline) => return,
                _ = peer.cancel.cancelled() => return,
            }
        };
        match result {
            Ok(frame) => {
                peer.touch(hub.now_ms());
                ping_sent = false;
                match frame.opcode {
                    OpCode::Text | OpCode::Binary if hub.config.echo_mode => {
                        out.push(protocol::frame(frame.opcode as u8, &frame.payload));
                    }
                    OpCode::Text if !out.is_closing() => state.on_text(&frame.payload),
                    OpCode::Binary if !out.is_closing() => {
                        Stats::add(&hub.stats.messages_in, 1);
                        state.reply(protocol::error(
                            ErrorCode::BadMessage,
                            "binary frames are not supported; send JSON text",
                            None,
                        ));
                    }
                    OpCode::Close => {
                        // The echo is queued by `send_fn`; stop reading and let the writer finish.
                        hub.registry.remove_peer(peer);
                        break;
                    }
                    _ => {}
                }
            }
            Err(e) => {
                hub.registry.remove_peer(peer);
                if let Some((code, reason)) = close_for(&e) {
                    out.close_now(protocol::close_frame(code, reason));
                } else {
                    // The peer is gone: nothing can be sent.
                    peer.cancel.cancel();
                    return;
                }
                break;
            }
        }
    }
    // We sent (or are sending) a close frame: give the writer a moment to put it on the wire.
    if !writer_done {
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE_WAIT, &mut writer).await;
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The close code and reason for a read error; `None` when the connection is simply gone.
fn close_for(e: &WebSocketError) -> Option<(u16, &'static str)> {
    Some(match e {
        WebSocketError::IoError(io) => match Violation::of(io) {
            Some(Violation::Unmasked) => (close_code::PROTOCOL_ERROR, "client frames must be masked"),
            Some(Violation::TooLarge) => (close_code::MESSAGE_TOO_BIG, "message exceeds maxPayloadLength"),
            Some(Violation::ControlTooLarge) => (close_code::PROTOCOL_ERROR, "control frame over 125 bytes"),
            None => return None,
        },
        WebSocketError::UnexpectedEOF | WebSocketError::ConnectionClosed => return None,
        WebSocketError::FrameTooLarge => (close_code::MESSAGE_TOO_BIG, "message exceeds maxPayloadLength"),
        WebSocketError::InvalidUTF8 => (close_code::INVALID_PAYLOAD, "text is not valid UTF-8"),
        _ => (close_code::PROTOCOL_ERROR, "protocol error"),
    })
}

/// The replies to a join: `recovery-failed` for each room that could not recover, then the ack
/// (with `recovered` and the rooms' `positions`), or the first error.
fn join_replies(
    id: Option<&RequestId>,
    outcomes: Vec<(String, Result<JoinOutcome, crate::error::Error>)>,
) -> Vec<Bytes> {
    let mut frames = Vec::new();
    let mut positions = serde_json::Map::new();
    let mut recovered = None;
    for (c, outcome) in outcomes {
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                frames.push(protocol::error(ErrorCode::TooLarge, &e.to_string(), id));
                return frames;
            }
        };
        if let Some(p) = outcome.position {
            positions.insert(c.clone(), serde_json::json!({ "offset": p.offset, "epoch": p.epoch }));
        }
        if let Some(result) = outcome.recovery {
            recovered = Some(recovered.unwrap_or(true) && result.is_ok());
            if let Err(why) = result {
                frames.push(protocol::recovery_failed(&collection_room(&c), &c, &format!("{why:?}")));
            }
        }
    }
    if let Some(id) = id {
        let mut extra = serde_json::Map::new();
        if let Some(r) = recovered {
            extra.insert("recovered".into(), serde_json::Value::Bool(r));
        }
        if !positions.is_empty() {
            extra.insert("positions".into(), serde_json::Value::Object(positions));
        }
        frames.push(protocol::ack_with(id, extra));
    }
    frames
}

impl Reader<'_> {
    fn reply(&self, frame: Bytes) {
        self.hub.registry.send_to(self.peer, frame, &self.hub.stats);
    }

    fn reply_error(&self, code: ErrorCode, message: &str, id: Option<&RequestId>) {
        self.reply(protocol::error(code, message, id));
    }

    fn ack(&self, id: Option<&RequestId>) {
        if let Some(id) = id {
            self.reply(protocol::ack(id));
        }
    }

    /// Takes one token from the bucket; `false` when the client is over its rate.
    fn take_token(&mut self) -> bool {
        let rate = self.hub.config.max_messages_per_second as f64;
        if rate == 0.0 {
            return true;
        }
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate).min(rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn on_text(&mut self, text: &[u8]) {
        let hub = self.hub;
        Stats::add(&hub.stats.messages_in, 1);
        if !self.take_token() {
            let id = protocol::parse_client_message(text).ok().and_then(|m| match m {
                ClientMessage::Join { id, .. }
                | ClientMessage::Leave { id, .. }
                | ClientMessage::Ping { id }
                | ClientMessage::Auth { id, .. }
                | ClientMessage::Presence { id, .. }
                | ClientMessage::Custom { id, .. } => id,
            });
            self.reply_error(ErrorCode::RateLimited, "too many messages; slow down", id.as_ref());
            return;
        }
        let message = match protocol::parse_client_message(text) {
            Ok(m) => m,
            Err(r) => return self.reply_error(r.code, &r.message, r.id.as_ref()),
        };
        match message {
            ClientMessage::Ping { id } => self.reply(protocol::pong(id.as_ref())),
            ClientMessage::Auth { id, token } => self.refresh_token(id, token),
            ClientMessage::Presence { id, collection } => {
                if let Some(e) = self.unknown(std::slice::from_ref(&collection)) {
                    return self.reply_error(ErrorCode::UnknownCollection, &e, id.as_ref());
                }
                let room = collection_room(&collection);
                let Some(members) = hub.presence_members(&room) else {
                    let msg = format!("presence is not enabled for {collection:?}");
                    return self.reply_error(ErrorCode::BadMessage, &msg, id.as_ref());
                };
                if !self.peer.in_room(&room) {
                    let msg = format!("join {collection:?} to see who is there");
                    return self.reply_error(ErrorCode::Forbidden, &msg, id.as_ref());
                }
                self.reply(protocol::presence(id.as_ref(), &room, &collection, members));
            }
            ClientMessage::Join { id, collections, since } => {
                if let Some(e) = self.unknown(&collections) {
                    return self.reply_error(ErrorCode::UnknownCollection, &e, id.as_ref());
                }
                let since_for = |c: &str| since.iter().find(|(slug, _)| slug == c).map(|(_, s)| s.clone());
                if collections
                    .iter()
                    .any(|c| hub.remote_history(&collection_room(c)).is_some())
                {
                    // The history is in Redis: reading it is asynchronous.
                    let (hub, peer) = (hub.clone(), self.peer.clone());
                    let plan: Vec<(String, Option<Since>)> =
                        collections.iter().map(|c| (c.clone(), since_for(c))).collect();
                    tokio::spawn(async move {
                        let mut outcomes = Vec::new();
                        for (c, s) in plan {
                            let outcome = hub.join_collection_remote(&peer, &c, s.as_ref()).await;
                            outcomes.push((c, outcome));
                        }
                        for frame in join_replies(id.as_ref(), outcomes) {
                            hub.registry.send_to(&peer, frame, &hub.stats);
                        }
                    });
                    return;
                }
                let outcomes = collections
                    .iter()
                    .map(|c| (c.clone(), hub.join_collection(self.peer, c, since_for(c).as_ref())))
                    .collect();
                for frame in join_replies(id.as_ref(), outcomes) {
                    self.reply(frame);
                }
            }
            ClientMessage::Leave { id, collections } => {
                if let Some(e) = self.unknown(&collections) {
                    return self.reply_error(ErrorCode::UnknownCollection, &e, id.as_ref());
                }
                for c in &collections {
                    hub.registry.leave(self.peer, &collection_room(c));
                }
                self.ack(id.as_ref());
            }
            ClientMessage::Custom { id, kind, message } => self.custom(id, kind, message),
        }
    }

    /// `{ type: "auth", token }`: a fresh token for the same user moves the socket's expiry.
    fn refresh_token(&self, id: Option<RequestId>, token: String) {
        let hub = self.hub;
        let Some(current) = &self.peer.user else {
            return self.reply_error(
                ErrorCode::Forbidden,
                "an anonymous socket cannot authenticate; reconnect with a token",
                id.as_ref(),
            );
        };
        let user = match crate::auth::verify_token(&hub.config, &token) {
            Ok(user) if user.key == current.key => user,
            Ok(_) => return self.reply_error(ErrorCode::Forbidden, "the token names another user", id.as_ref()),
            Err(refusal) => return self.reply_error(ErrorCode::Forbidden, &refusal.reason, id.as_ref()),
        };
        let hub = hub.clone();
        let peer = self.peer.clone();
        tokio::spawn(async move {
            if let Some(verifier) = &hub.callbacks.verifier {
                let verified = crate::server::verify_user(
                    &**verifier,
                    token,
                    (*user.claims).clone(),
                    hub.config.authorize_timeout,
                )
                .await;
                if let Err(refusal) = verified {
                    let frame = protocol::error(ErrorCode::Forbidden, &refusal.reason, id.as_ref());
                    hub.registry.send_to(&peer, frame, &hub.stats);
                    return;
                }
            }
            peer.expires_at.store(user.expires_at.unwrap_or(0), Ordering::Relaxed);
            *peer.sid.lock() = user.sid();
            if let Some(id) = &id {
                hub.registry.send_to(&peer, protocol::ack(id), &hub.stats);
            }
        });
    }

    /// An error message naming the collections a client may not join, if any.
    fn unknown(&self, collections: &[String]) -> Option<String> {
        let unknown: Vec<&str> = collections
            .iter()
            .filter(|c| !self.hub.config.collection_allowed(c))
            .map(String::as_str)
            .collect();
        (!unknown.is_empty()).then(|| format!("not a realtime collection: {}", unknown.join(", ")))
    }

    fn custom(&self, id: Option<RequestId>, kind: String, message: serde_json::Value) {
        let hub = self.hub;
        let Some(handlers) = hub.callbacks.handlers.clone().filter(|_| hub.has_custom_type(&kind)) else {
            return self.reply_error(
                ErrorCode::UnknownType,
                &format!("no handler for type {kind:?}"),
                id.as_ref(),
            );
        };
        let in_flight = self.handlers_in_flight.clone();
        if in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_HANDLERS_IN_FLIGHT {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            return self.reply_error(ErrorCode::RateLimited, "too many requests in flight", id.as_ref());
        }
        let call = HandlerCall {
            kind: kind.clone(),
            socket_id: self.peer.public_id.clone(),
            user: self.peer.user.as_ref().map(|_| self.peer.user_json()),
            message,
        };
        let hub = hub.clone();
        let peer = self.peer.clone();
        let timeout = hub.config.handler_timeout;
        tokio::spawn(async move {
            let outcome = match tokio::time::timeout(timeout, handlers.call(call)).await {
                Ok(o) => o,
                Err(_) => HandlerOutcome::Failed {
                    code: ErrorCode::Internal,
                    message: format!("handler for {kind:?} timed out"),
                },
            };
            in_flight.fetch_sub(1, Ordering::AcqRel);
            let frame = match outcome {
                HandlerOutcome::Reply(v) => protocol::custom_reply(&kind, id.as_ref(), v),
                HandlerOutcome::NoReply => match &id {
                    Some(id) => protocol::ack(id),
                    None => return,
                },
                HandlerOutcome::Failed { code, message } => {
                    Stats::add(&hub.stats.handler_errors, 1);
                    protocol::error(code, &message, id.as_ref())
                }
            };
            hub.registry.send_to(&peer, frame, &hub.stats);
        });
    }
}
