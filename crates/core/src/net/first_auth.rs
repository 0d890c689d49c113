//! First-message auth (`?auth=message`, as Centrifugo's connect command): the socket opens with
//! no credential in the request, so no token is written into a URL that proxies and APM tools
//! log, and its first message must be `{ "type": "auth", "token" }` within `authTimeout`.
//!
//! Until then the socket is no peer: it is in no room, gets no event, and nothing but that one
//! message is acted on. It holds its place in `maxConnections` and `maxConnectionsPerIp` from the
//! upgrade, and in `maxConnectionsPerUser` once the token names its user. The token is checked
//! as a handshake's would be (signature, expiry, revoked sessions, then `verifyUser` within its
//! caps); a refusal closes the socket with 4004, a full limit (or revoked sessions that cannot be
//! checked now) with 1013.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};

use crate::delivery::hub::Hub;
use crate::limits::Slot;
use crate::net::verify::{verify_capped, Unverified};
use crate::protocol::frame_reader::{FrameReader, Message};
use crate::protocol::{self, close_code, ClientMessage, RequestId};
use crate::stats::Stats;
use crate::write::socket::Socket;

/// How long the close that ends an unauthenticated socket may take to write, and how long what
/// the client still sends is then read and dropped (closing with unread bytes resets the
/// connection, and a reset can reach the client before the close frame does).
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Bytes read at a time while waiting for the first message.
const READ_CHUNK: usize = 4096;

/// Why an unauthenticated socket ends.
enum End {
    /// Closed by us with this code and reason.
    Close(u16, String),
    /// The client went away, or closed first (its close is answered with its code).
    Gone(Option<u16>),
}

fn unauthorized(reason: impl Into<String>) -> End {
    End::Close(close_code::UNAUTHORIZED, reason.into())
}

/// Counts a socket in `stats().pendingAuth` while it lives. Made before the 101 is written: once
/// the client sees the socket open, the stats count it.
pub(crate) struct Pending(Arc<Hub>);

impl Pending {
    pub(crate) fn new(hub: &Arc<Hub>) -> Pending {
        Stats::add(&hub.stats.pending_auth, 1);
        Pending(hub.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0
            .stats
            .pending_auth
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Runs a socket opened with `?auth=message`: waits for its token, then serves it as any other
/// socket, or closes it with the code that says why not. `early` holds the bytes read past the
/// upgrade request.
pub(crate) async fn serve(pending: Pending, stream: TcpStream, early: Bytes, slot: Slot) {
    if let Some(serving) = open(pending, stream, early, slot).await {
        serving.await;
    }
}

/// [`serve`] until the socket is open: `Some` with the socket to serve, `None` once a socket
/// that did not authenticate is closed.
pub(crate) async fn open(
    pending: Pending,
    mut stream: TcpStream,
    early: Bytes,
    mut slot: Slot,
) -> Option<crate::net::connection::Serving> {
    let hub = pending.0.clone();
    let outcome = tokio::select! {
        outcome = authenticate(&hub, &mut stream, early, &mut slot) => outcome,
        _ = hub.stopping.cancelled() => Err(End::Close(close_code::GOING_AWAY, crate::net::DRAIN_REASON.into())),
    };
    drop(pending);
    match outcome {
        Ok((peer, id, rest)) => {
            hub.registry.add_socket(peer.clone());
            if let Some(id) = &id {
                hub.registry.send_to(&peer, protocol::ack(id), &hub.stats);
            }
            if hub.stopping.is_cancelled() {
                // The shutdown's round of 1001s may have passed before this socket was added.
                hub.registry.remove_socket(&peer);
                peer.outbound.close(close_code::GOING_AWAY, "server shutting down");
            }
            Some(crate::net::connection::Serving::new(
                hub,
                peer,
                stream,
                rest,
                Some(slot),
            ))
        }
        Err(end) => {
            let frame = match &end {
                End::Close(code, reason) => {
                    if *code == close_code::UNAUTHORIZED {
                        Stats::add(&hub.stats.auth_failures, 1);
                    }
                    protocol::close_frame(*code, reason)
                }
                End::Gone(Some(code)) => protocol::close_frame(*code, ""),
                End::Gone(None) => protocol::frame(0x8, b""),
            };
            let _ = timeout(CLOSE_LINGER, stream.write_all(&frame)).await;
            let _ = stream.shutdown().await;
            let drain = async {
                let mut buf = [0u8; 1024];
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            };
            tokio::select! {
                _ = timeout(CLOSE_LINGER, drain) => {}
                _ = hub.shutdown.cancelled() => {}
            }
            drop(slot);
            None
        }
    }
}

/// Reads the first message and checks its token; `Ok` with the peer (not yet registered), the
/// auth message's `id` for its ack, and the bytes that came after it.
async fn authenticate(
    hub: &Hub,
    stream: &mut TcpStream,
    early: Bytes,
    slot: &mut Slot,
) -> Result<(Arc<Socket>, Option<RequestId>, Bytes), End> {
    let deadline = Instant::now() + hub.config.auth_timeout;
    let mut reader = FrameReader::first_message_only(hub.config.max_payload_length);
    let mut input = early.to_vec();
    drop(early);
    let mut buf = vec![0u8; READ_CHUNK];
    let (id, token) = loop {
        let mut first = None;
        let mut pongs = Vec::new();
        let mut closed = None;
        let fed = reader.feed(&input, &mut |message| match message {
            Message::Text(text) => {
                first = Some(match protocol::parse_client_message(text) {
                    Ok(ClientMessage::Auth { id, token }) => Ok((id, token)),
                    Ok(_) => Err(unauthorized("the first message must be { type: \"auth\", token }")),
                    Err(bad) => Err(unauthorized(bad.message)),
                })
            }
            Message::Binary(_) => {
                first = Some(Err(unauthorized("the first message must be { type: \"auth\", token }")))
            }
            Message::Ping(payload) => pongs.push(protocol::frame(0xA, payload)),
            Message::Pong => {}
            Message::Close(code) => closed = Some(code),
        });
        if let Err(e) = fed {
            let (code, reason) = e.close();
            return Err(End::Close(code, reason.into()));
        }
        if let Some(code) = closed {
            return Err(End::Gone(code));
        }
        for pong in pongs {
            // Bounded by the same deadline: a client that pings and reads nothing gets 4004.
            match timeout_at(deadline, stream.write_all(&pong)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(End::Gone(None)),
                Err(_) => return Err(unauthorized("no auth message within authTimeout")),
            }
        }
        if let Some(first) = first {
            Stats::add(&hub.stats.messages_in, 1);
            break first?;
        }
        input.clear();
        match timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return Err(unauthorized("no auth message within authTimeout")),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(End::Gone(None)),
            Ok(Ok(n)) => input.extend_from_slice(&buf[..n]),
        }
    };
    let rest = Bytes::from(reader.into_rest());
    let user = crate::auth::verify_token(&hub.config, &token).map_err(|r| unauthorized(r.reason))?;
    if slot.add_user(&user.key).is_err() {
        Stats::add(&hub.stats.refused_per_user, 1);
        return Err(End::Close(
            close_code::TRY_AGAIN_LATER,
            "this user is at maxConnectionsPerUser".into(),
        ));
    }
    // Revoked sessions, as at a handshake: refused (4004), or 1013 when Redis cannot be asked.
    let sid = user.sid();
    match hub.check_session(&user, sid).await {
        crate::auth::revocations::Verdict::Valid => {}
        crate::auth::revocations::Verdict::Revoked => return Err(unauthorized("session revoked")),
        crate::auth::revocations::Verdict::Unavailable => {
            return Err(End::Close(
                close_code::TRY_AGAIN_LATER,
                "revoked sessions cannot be checked now; retry shortly".into(),
            ))
        }
    }
    let user_value = match &hub.callbacks.verifier {
        None => None,
        Some(verifier) => match verify_capped(hub, &**verifier, &user, token).await {
            Ok(v) => Some(v),
            Err(Unverified::Busy(_)) => {
                return Err(End::Close(
                    close_code::TRY_AGAIN_LATER,
                    "too many token checks in flight; retry shortly".into(),
                ))
            }
            Err(Unverified::Refused(r)) => return Err(unauthorized(r.reason)),
        },
    };
    Ok((hub.new_socket(Some(user), user_value), id, rest))
}
