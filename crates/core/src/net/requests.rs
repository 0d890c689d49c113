//! What a socket's messages ask for, once parsed (the parsing is in [`crate::protocol`]): join
//! and leave (with recovery), presence, a fresh token, custom handlers, with the per-socket
//! message rate and the cap on handler calls in flight.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::delivery::hub::recovery::JoinOutcome;
use crate::delivery::hub::Hub;
use crate::host::callbacks::{HandlerCall, HandlerOutcome};
use crate::protocol::Since;
use crate::protocol::{self, collection_room, ClientMessage, ErrorCode, RequestId};
use crate::stats::Stats;
use crate::write::socket::Socket;

/// Custom handler calls one socket may have in flight; more are refused as `rate-limited`.
const MAX_HANDLERS_IN_FLIGHT: usize = 32;

/// Joins and leaves of one socket that may wait at once (for a join rule or a history in
/// Redis); more are refused as `rate-limited`.
const MAX_MEMBERSHIP_IN_FLIGHT: usize = 32;

/// One socket's request state; only its connection task touches it.
pub(crate) struct Requests {
    hub: Arc<Hub>,
    peer: Arc<Socket>,
    /// Token bucket for `maxMessagesPerSecond`.
    tokens: f64,
    /// When the bucket was last refilled (`Hub::now_ms`).
    refilled_ms: u64,
    /// Messages dropped since the client last kept to its rate for a whole second (its bucket
    /// full again): one episode of going over, answered once, closed if it goes on.
    over: u32,
    /// Made on the first handler call or waiting join: most sockets never make one, and this
    /// is part of every idle socket's task.
    waits: Option<Box<Waits>>,
}

/// What a socket that has made handler calls or waiting joins keeps of them.
#[derive(Default)]
struct Waits {
    handlers_in_flight: Arc<AtomicUsize>,
    /// The last of this socket's joins and leaves that wait on something, done when it sends:
    /// a join or leave sent after it waits for it, so they take effect in the client's order.
    membership: Option<oneshot::Receiver<()>>,
    membership_in_flight: Arc<AtomicUsize>,
}

impl Requests {
    pub(crate) fn new(hub: Arc<Hub>, peer: Arc<Socket>) -> Requests {
        Requests {
            tokens: hub.config.max_messages_per_second as f64,
            refilled_ms: hub.now_ms(),
            over: 0,
            waits: None,
            hub,
            peer,
        }
    }

    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub(crate) fn peer(&self) -> &Arc<Socket> {
        &self.peer
    }

    fn waits(&mut self) -> &mut Waits {
        self.waits.get_or_insert_with(Box::default)
    }
}

/// The `since` a join gave for this collection.
fn since_for(since: &[(String, Since)], collection: &str) -> Option<Since> {
    since
        .iter()
        .find(|(slug, _)| slug == collection)
        .map(|(_, s)| s.clone())
}

/// The replies to a join: `recovery-failed` for each room that could not recover, then the ack
/// (with `recovered` and the rooms' `positions`), or the first error. Outcomes are named by
/// collection slug (`join-collection`), or by room name (`join`).
pub(crate) fn join_replies(
    id: Option<&RequestId>,
    outcomes: Vec<(String, Result<JoinOutcome, crate::error::Error>)>,
) -> Vec<Bytes> {
    replies_of_join(id, outcomes, |c| (collection_room(c), c.to_string()))
}

fn replies_of_join(
    id: Option<&RequestId>,
    outcomes: Vec<(String, Result<JoinOutcome, crate::error::Error>)>,
    room_of: impl Fn(&str) -> (String, String),
) -> Vec<Bytes> {
    let mut frames = Vec::new();
    let mut positions = serde_json::Map::new();
    let mut recovered = None;
    for (c, outcome) in outcomes {
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                // Too many rooms is the client's to fix; anything else (the server closing) is not.
                let code = match e {
                    crate::error::Error::InvalidInput(_) => ErrorCode::TooLarge,
                    _ => ErrorCode::Internal,
                };
                frames.push(protocol::error(code, &e.to_string(), id));
                return frames;
            }
        };
        if let Some(p) = outcome.position {
            positions.insert(c.clone(), serde_json::json!({ "offset": p.offset, "epoch": p.epoch }));
        }
        if let Some(result) = outcome.recovery {
            recovered = Some(recovered.unwrap_or(true) && result.is_ok());
            if let Err(why) = result {
                let (room, collection) = room_of(&c);
                frames.push(protocol::recovery_failed(&room, &collection, &format!("{why:?}")));
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

impl Requests {
    pub(crate) fn reply(&self, frame: Bytes) {
        self.hub.registry.send_to(&self.peer, frame, &self.hub.stats);
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
        let now = self.hub.now_ms();
        let elapsed = now.saturating_sub(self.refilled_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.refilled_ms = now;
        if self.tokens >= rate {
            self.over = 0;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Counts one message (text, binary or ping) against `maxMessagesPerSecond`; `false` when
    /// it is over the rate and must be dropped unread. Going over is answered with one
    /// `rate-limited` error per episode, not one per message (a flood would otherwise get a
    /// flood back); a client still going over by another second's worth of messages is closed
    /// with 4029, since it is not slowing down.
    pub(crate) fn admit(&mut self) -> bool {
        if self.take_token() {
            return true;
        }
        self.over = self.over.saturating_add(1);
        if self.over == 1 {
            self.reply_error(ErrorCode::RateLimited, "too many messages; slow down", None);
        } else if self.over > self.hub.config.max_messages_per_second {
            let (hub, peer) = (&self.hub, &self.peer);
            if !peer.outbound.is_closing() {
                Stats::add(&hub.stats.rate_limited, 1);
                hub.registry.remove_socket(peer);
                // After what is queued (the replies it did get, the error saying why); a client
                // that reads nothing is cut after the grace, its queue bounded meanwhile.
                peer.outbound.close(
                    protocol::close_code::RATE_LIMITED,
                    "rate limited: over maxMessagesPerSecond",
                );
            }
        }
        false
    }

    /// Acts on one text message.
    pub(crate) fn on_text(&mut self, text: &[u8]) {
        let hub = self.hub.clone();
        Stats::add(&hub.stats.messages_in, 1);
        if !self.admit() {
            return;
        }
        let message = match protocol::parse_client_message(text) {
            Ok(m) => m,
            Err(r) => return self.reply_error(r.code, &r.message, r.id.as_ref()),
        };
        match message {
            ClientMessage::Ping { id } => self.reply(protocol::pong(id.as_ref())),
            ClientMessage::Auth { id, token } => self.refresh_token(id, token),
            ClientMessage::Presence { id, room, collection } => {
                if let Some(slug) = &collection {
                    if let Some(e) = self.unknown(std::slice::from_ref(slug)) {
                        return self.reply_error(ErrorCode::UnknownCollection, &e, id.as_ref());
                    }
                }
                let name = collection.as_deref().unwrap_or(&room);
                let Some(members) = hub.presence_members(&room) else {
                    let msg = format!("presence is not enabled for {name:?}");
                    return self.reply_error(ErrorCode::BadMessage, &msg, id.as_ref());
                };
                // Only members see who is there: the same rules that let them in.
                if !self.peer.in_room(&room) {
                    let msg = format!("join {name:?} to see who is there");
                    return self.reply_error(ErrorCode::Forbidden, &msg, id.as_ref());
                }
                self.reply(protocol::presence(id.as_ref(), &room, collection.as_deref(), members));
            }
            ClientMessage::Join { id, collections, since } => {
                if let Some(e) = self.unknown(&collections) {
                    return self.reply_error(ErrorCode::UnknownCollection, &e, id.as_ref());
                }
                let host_rules = hub.host_rules();
                let ruled: Vec<String> = collections
                    .iter()
                    .map(|c| collection_room(c))
                    .filter(|room| host_rules.join_ruled(room))
                    .collect();
                let rule = hub.callbacks.join_rule.clone().filter(|_| !ruled.is_empty());
                // With a broker (and so with a history in Redis), the ack waits for the room's
                // subscription (`Hub::subscribed`).
                if rule.is_none() && !hub.clustered() && !self.membership_pending() {
                    let outcomes = collections
                        .iter()
                        .map(|c| {
                            (
                                c.clone(),
                                hub.join_collection(&self.peer, c, since_for(&since, c).as_ref()),
                            )
                        })
                        .collect();
                    for frame in join_replies(id.as_ref(), outcomes) {
                        self.reply(frame);
                    }
                    return;
                }
                // The join rule's answer, a subscription or a history in Redis is asynchronous.
                let (hub, peer) = (hub.clone(), self.peer.clone());
                self.in_order(id.clone(), async move {
                    if let Some(rule) = rule {
                        let user = peer.user_doc();
                        let asked = ruled.len();
                        let answers =
                            tokio::time::timeout(hub.config.authorize_timeout, rule.may_join(user, ruled.clone()))
                                .await
                                .map_err(|_| "the join rule took too long".to_string())
                                .and_then(|r| r);
                        let refused: Vec<&str> = match &answers {
                            Ok(a) => (0..asked)
                                .filter(|&i| a.get(i) != Some(&true))
                                .map(|i| ruled[i].as_str())
                                .collect(),
                            Err(_) => ruled.iter().map(String::as_str).collect(),
                        };
                        if let Err(e) = &answers {
                            crate::warn!("join rule failed: {e}");
                        }
                        if !refused.is_empty() {
                            let names: Vec<&str> =
                                refused.iter().map(|r| r.trim_start_matches("collection:")).collect();
                            let msg = format!("not allowed to read: {}", names.join(", "));
                            let frame = protocol::error(ErrorCode::Forbidden, &msg, id.as_ref());
                            hub.registry.send_to(&peer, frame, &hub.stats);
                            return;
                        }
                    }
                    let mut outcomes = Vec::new();
                    for c in collections {
                        let s = since_for(&since, &c);
                        let outcome = hub.join_collection_remote(&peer, &c, s.as_ref()).await;
                        outcomes.push((c, outcome));
                    }
                    for frame in join_replies(id.as_ref(), outcomes) {
                        hub.registry.send_to(&peer, frame, &hub.stats);
                    }
                });
            }
            ClientMessage::Leave { id, collections } => {
                if let Some(e) = self.unknown(&collections) {
                    return self.reply_error(ErrorCode::UnknownCollection, &e, id.as_ref());
                }
                if !self.membership_pending() {
                    for c in &collections {
                        hub.registry.leave(&self.peer, &collection_room(c));
                    }
                    return self.ack(id.as_ref());
                }
                let (hub, peer) = (hub.clone(), self.peer.clone());
                self.in_order(id.clone(), async move {
                    for c in &collections {
                        hub.registry.leave(&peer, &collection_room(c));
                    }
                    if let Some(id) = &id {
                        hub.registry.send_to(&peer, protocol::ack(id), &hub.stats);
                    }
                });
            }
            ClientMessage::JoinRoom { id, room, since } => self.join_room(id, room, since),
            ClientMessage::LeaveRoom { id, room } => {
                if !self.membership_pending() {
                    hub.registry.leave(&self.peer, &room);
                    return self.ack(id.as_ref());
                }
                let (hub, peer) = (hub.clone(), self.peer.clone());
                self.in_order(id.clone(), async move {
                    hub.registry.leave(&peer, &room);
                    if let Some(id) = &id {
                        hub.registry.send_to(&peer, protocol::ack(id), &hub.stats);
                    }
                });
            }
            ClientMessage::Custom { id, kind, message } => self.custom(id, kind, message),
        }
    }

    /// `{ type: "join", room }`: only a room that a rule of the `rooms` option names, and only
    /// once every such rule allowed this socket's user (secure by default: a room without a
    /// rule is the server's to fill, with `joinRoom` or `onConnect`). Recovers with `since`
    /// when the room has history, as a collection join does.
    fn join_room(&mut self, id: Option<RequestId>, room: String, since: Option<Since>) {
        let hub = self.hub.clone();
        if !hub.host_rules().join_ruled(&room) || hub.callbacks.join_rule.is_none() {
            let msg = format!("no rule of the `rooms` option lets clients join {room:?}");
            return self.reply_error(ErrorCode::Forbidden, &msg, id.as_ref());
        }
        let peer = self.peer.clone();
        self.in_order(
            id.clone(),
            async move { join_room_now(&hub, &peer, id, room, since).await },
        );
    }

    /// The app rooms an SSE stream or a poll names, each joined as `{ type: "join", room, id }`
    /// would be (its rule, its recovery, its reply), in one step of the line of joins: the join
    /// rule is asked once for all of them (a stream may name up to `maxRoomsPerSocket`).
    pub(crate) fn join_rooms(&mut self, rooms: Vec<(String, String, Option<Since>)>) {
        let (hub, peer) = (self.hub.clone(), self.peer.clone());
        self.in_order(None, async move {
            let names: Vec<String> = rooms.iter().map(|(_, room, _)| room.clone()).collect();
            let verdicts = may_join_rooms(&hub, &peer, &names).await;
            for ((id, room, since), verdict) in rooms.into_iter().zip(verdicts) {
                join_if_allowed(&hub, &peer, Some(RequestId::Str(id)), room, since, verdict).await;
            }
        });
    }

    /// Runs the host's `onConnect` for this new socket, first in its line of joins and leaves:
    /// the initial messages it returns are sent, then the rooms it names are joined, before any
    /// join the client sent meanwhile is acted on, so the initial state comes before any event.
    /// A failure or timeout leaves the socket as it is (the host logs its own failures).
    pub(crate) fn on_connect(&mut self) {
        self.on_connect_from(&Default::default());
    }

    /// [`Requests::on_connect`], the rooms it joins recovering from `last` (an SSE stream's
    /// `Last-Event-ID`: `room -> (epoch, offset)`) where it names them.
    pub(crate) fn on_connect_from(&mut self, last: &std::collections::BTreeMap<String, (String, u64)>) {
        let last = last.clone();
        let hub = self.hub.clone();
        let Some(handlers) = hub.callbacks.handlers.clone().filter(|_| hub.config.on_connect) else {
            return;
        };
        let call = HandlerCall {
            kind: String::new(),
            socket_id: self.hub.public_id(&self.peer),
            user: self.peer.user.as_ref().map(|_| self.peer.user_doc()),
            message: serde_json::Value::Null,
        };
        let peer = self.peer.clone();
        self.in_order(None, async move {
            let Ok(HandlerOutcome::Reply(reply)) =
                tokio::time::timeout(hub.config.handler_timeout, handlers.call(call)).await
            else {
                return;
            };
            let (initial, rooms) = connect_plan(&reply);
            for message in initial {
                hub.registry.send_to(&peer, protocol::encode_value(message), &hub.stats);
            }
            for room in rooms {
                let since = last.get(room).map(|(epoch, offset)| Since {
                    offset: *offset,
                    epoch: epoch.clone(),
                });
                if let Err(e) = hub.join_with_history_remote(&peer, room, since.as_ref()).await {
                    crate::warn!("onConnect could not join a socket to {room:?}: {e}");
                }
            }
        });
    }

    /// Whether a join or leave of this socket is still waiting.
    fn membership_pending(&mut self) -> bool {
        let Some(waits) = self.waits.as_mut() else {
            return false;
        };
        match waits.membership.as_mut().map(|rx| rx.try_recv()) {
            Some(Err(oneshot::error::TryRecvError::Empty)) => true,
            _ => {
                waits.membership = None;
                false
            }
        }
    }

    /// Runs a join or leave that waits on something after the ones before it.
    fn in_order(&mut self, id: Option<RequestId>, work: impl std::future::Future<Output = ()> + Send + 'static) {
        let in_flight = self.waits().membership_in_flight.clone();
        if in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_MEMBERSHIP_IN_FLIGHT {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            return self.reply_error(
                ErrorCode::RateLimited,
                "too many joins and leaves in flight",
                id.as_ref(),
            );
        }
        let (done, after) = oneshot::channel();
        let before = self.waits().membership.replace(after);
        tokio::spawn(async move {
            if let Some(before) = before {
                let _ = before.await;
            }
            work.await;
            in_flight.fetch_sub(1, Ordering::AcqRel);
            let _ = done.send(());
        });
    }

    /// `{ type: "auth", token }`: a fresh token for the same user moves the socket's expiry.
    fn refresh_token(&self, id: Option<RequestId>, token: String) {
        let hub = &self.hub;
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
            let sid = user.sid();
            let why = match hub.check_session(&user, sid).await {
                crate::auth::revocations::Verdict::Valid => None,
                crate::auth::revocations::Verdict::Revoked => Some("session revoked"),
                crate::auth::revocations::Verdict::Unavailable => Some("revoked sessions cannot be checked now"),
            };
            if let Some(why) = why {
                let frame = protocol::error(ErrorCode::Forbidden, why, id.as_ref());
                hub.registry.send_to(&peer, frame, &hub.stats);
                return;
            }
            if let Some(verifier) = &hub.callbacks.verifier {
                use crate::net::verify::{verify_capped, Unverified};
                let refused = match verify_capped(&hub, &**verifier, &user, token).await {
                    Ok(_) => None,
                    // Past a cap the socket keeps its session: the client retries later.
                    Err(Unverified::Busy(_)) => Some((
                        ErrorCode::RateLimited,
                        "too many token checks in flight; send the token again shortly".to_string(),
                    )),
                    Err(Unverified::Refused(refusal)) => Some((ErrorCode::Forbidden, refusal.reason)),
                };
                if let Some((code, message)) = refused {
                    let frame = protocol::error(code, &message, id.as_ref());
                    hub.registry.send_to(&peer, frame, &hub.stats);
                    return;
                }
            }
            peer.set_fresh_token(&user);
            if let Some(id) = &id {
                hub.registry.send_to(&peer, protocol::ack(id), &hub.stats);
            }
        });
    }

    /// An error message naming the collections a client may not join, if any.
    fn unknown(&self, collections: &[String]) -> Option<String> {
        let rules = self.hub.host_rules();
        let unknown: Vec<&str> = collections
            .iter()
            .filter(|c| !rules.collection_allowed(c))
            .map(String::as_str)
            .collect();
        (!unknown.is_empty()).then(|| format!("not a realtime collection: {}", unknown.join(", ")))
    }

    fn custom(&mut self, id: Option<RequestId>, kind: String, message: serde_json::Value) {
        let hub = &self.hub;
        let Some(handlers) = hub.callbacks.handlers.clone().filter(|_| hub.has_custom_type(&kind)) else {
            return self.reply_error(
                ErrorCode::UnknownType,
                &format!("no handler for type {kind:?}"),
                id.as_ref(),
            );
        };
        let in_flight = self.waits.get_or_insert_with(Box::default).handlers_in_flight.clone();
        if in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_HANDLERS_IN_FLIGHT {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            return self.reply_error(ErrorCode::RateLimited, "too many requests in flight", id.as_ref());
        }
        let call = HandlerCall {
            kind: kind.clone(),
            socket_id: self.hub.public_id(&self.peer),
            user: self.peer.user.as_ref().map(|_| self.peer.user_doc()),
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

/// Whether the join rule lets `peer`'s user join each of `rooms` (`Err`: the refusal's
/// message), asked in one call for all of them.
async fn may_join_rooms(hub: &Arc<Hub>, peer: &Socket, rooms: &[String]) -> Vec<Result<(), String>> {
    let rules = hub.host_rules();
    let rule = hub.callbacks.join_rule.clone();
    let ruled: Vec<String> = rooms
        .iter()
        .filter(|r| rule.is_some() && rules.join_ruled(r))
        .cloned()
        .collect();
    let answers = match rule.filter(|_| !ruled.is_empty()) {
        None => Vec::new(),
        Some(rule) => tokio::time::timeout(
            hub.config.authorize_timeout,
            rule.may_join(peer.user_doc(), ruled.clone()),
        )
        .await
        .map_err(|_| "the join rule took too long".to_string())
        .and_then(|r| r)
        .unwrap_or_else(|e| {
            crate::warn!("join rule failed: {e}");
            Vec::new()
        }),
    };
    rooms
        .iter()
        .map(|room| match ruled.iter().position(|r| r == room) {
            None => Err(format!("no rule of the `rooms` option lets clients join {room:?}")),
            Some(i) if answers.get(i) == Some(&true) => Ok(()),
            Some(_) => Err(format!("not allowed to join {room:?}")),
        })
        .collect()
}

/// Joins `room` for `peer` if the join rule allows its user, answering as a `join` does.
async fn join_room_now(hub: &Arc<Hub>, peer: &Arc<Socket>, id: Option<RequestId>, room: String, since: Option<Since>) {
    let verdict = may_join_rooms(hub, peer, std::slice::from_ref(&room)).await;
    join_if_allowed(
        hub,
        peer,
        id,
        room,
        since,
        verdict.into_iter().next().unwrap_or(Err(String::new())),
    )
    .await;
}

/// Joins an app room the join rule allowed (with its recovery) and answers, or answers the refusal.
async fn join_if_allowed(
    hub: &Arc<Hub>,
    peer: &Arc<Socket>,
    id: Option<RequestId>,
    room: String,
    since: Option<Since>,
    verdict: Result<(), String>,
) {
    if let Err(msg) = verdict {
        let frame = protocol::error(ErrorCode::Forbidden, &msg, id.as_ref());
        hub.registry.send_to(peer, frame, &hub.stats);
        return;
    }
    let outcome = hub.join_with_history_remote(peer, &room, since.as_ref()).await;
    let frames = replies_of_join(id.as_ref(), vec![(room, outcome)], |r| (r.to_string(), String::new()));
    for frame in frames {
        hub.registry.send_to(peer, frame, &hub.stats);
    }
}

/// What an `onConnect` answered (`{ initial?: object | object[], rooms?: string[] }`, checked
/// by the host): the messages to send first, and the valid room names to join.
fn connect_plan(reply: &serde_json::Value) -> (Vec<&serde_json::Value>, Vec<&str>) {
    let initial = match reply.get("initial") {
        Some(serde_json::Value::Array(items)) => items.iter().filter(|m| m.is_object()).collect(),
        Some(m) if m.is_object() => vec![m],
        _ => Vec::new(),
    };
    let rooms = reply
        .get("rooms")
        .and_then(serde_json::Value::as_array)
        .map(|rooms| {
            rooms
                .iter()
                .filter_map(serde_json::Value::as_str)
                .filter(|r| protocol::is_valid_room(r))
                .collect()
        })
        .unwrap_or_default();
    (initial, rooms)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_on_connect_answer_gives_the_messages_then_the_valid_rooms() {
        let reply = serde_json::json!({ "initial": [{ "type": "state" }, 3], "rooms": ["role:admin", "", "x*", 7] });
        let (initial, rooms) = super::connect_plan(&reply);
        assert_eq!(initial, vec![&serde_json::json!({ "type": "state" })]);
        assert_eq!(rooms, vec!["role:admin"]);
        let one = serde_json::json!({ "initial": { "type": "one" } });
        let (initial, rooms) = super::connect_plan(&one);
        assert_eq!((initial.len(), rooms.len()), (1, 0));
    }

    use super::*;
    use crate::delivery::dispatch::test_hub_with;
    use crate::error::Error;

    fn code_of(outcome: Result<JoinOutcome, Error>) -> String {
        let frames = join_replies(Some(&RequestId::Str("j".into())), vec![("posts".into(), outcome)]);
        let reply: serde_json::Value = serde_json::from_slice(&frames[0][2..]).unwrap();
        reply["code"].as_str().unwrap_or("").to_string()
    }

    #[test]
    fn a_refused_join_names_its_cause() {
        assert_eq!(
            code_of(Err(Error::InvalidInput("a socket may be in at most 2 rooms".into()))),
            "too-large"
        );
        assert_eq!(
            code_of(Err(Error::Closed)),
            "internal",
            "a closing server is not the client's doing"
        );
    }

    fn rate_limited_socket(rate: u32) -> (Arc<Hub>, Arc<Socket>, Requests) {
        let hub = test_hub_with(crate::config::Config {
            max_messages_per_second: rate,
            ..Default::default()
        });
        let peer = hub.new_socket(None, None);
        hub.registry.add_socket(peer.clone());
        let requests = Requests::new(hub.clone(), peer.clone());
        (hub, peer, requests)
    }

    /// Past the rate, messages are dropped unparsed with one `rate-limited` reply for the
    /// episode; a client that goes on by another second's worth is closed with 4029.
    #[tokio::test]
    async fn going_over_the_rate_is_answered_once_then_closed_with_4029() {
        let (hub, peer, mut requests) = rate_limited_socket(10);
        let ping = br#"{"type":"ping","id":1}"#;
        for _ in 0..10 {
            requests.on_text(ping);
        }
        // Over: these are not answered, only the first of them with one error.
        for _ in 0..10 {
            requests.on_text(ping);
        }
        assert!(!peer.outbound.is_closing(), "a second's worth over is still tolerated");
        let replies = peer.outbound.drain_messages();
        let errors: Vec<_> = replies.iter().filter(|m| m["type"] == "error").collect();
        assert_eq!(replies.len(), 11, "ten pongs and one error: {replies:?}");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0]["code"], "rate-limited");
        requests.on_text(b"not even JSON");
        assert!(peer.outbound.is_closing());
        assert_eq!(hub.stats.rate_limited.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(hub.registry.all_sockets().is_empty(), "out of every room and list");
        // Nothing was queued for the messages dropped: only the close is left.
        assert_eq!(peer.outbound.queued_bytes(), 0);
        let mut batch = crate::write::outbound::Batch::default();
        peer.outbound.take_into(&mut batch);
        assert!(batch.closes);
    }

    /// A rate of 0 is no limit at all.
    #[tokio::test]
    async fn no_rate_means_no_limit() {
        let (_hub, peer, mut requests) = rate_limited_socket(0);
        for _ in 0..1000 {
            assert!(requests.admit());
        }
        assert!(!peer.outbound.is_closing());
    }
}
