//! Ordered delivery lanes. Every event and broadcast for a room goes through the same lane (the
//! room's hash picks it), so members see a room's messages in the order they were emitted even
//! when an authorize answer for one event takes longer than the next event's.
//!
//! A lane keeps several authorize questions in flight at once (`FuturesOrdered`) and delivers
//! the answers in order. Head-of-line blocking is limited to rooms that share a lane, and bounded
//! by the authorize timeout.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{FuturesOrdered, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::authorize::{allowed_members, Allowed};
use crate::history::Entry;
use crate::hub::Hub;
use crate::peer::{Peer, PeerId};
use crate::rooms::Joined;

/// Lanes per server.
pub const LANES: usize = 16;

/// Authorize questions one lane keeps in flight before it stops taking new jobs.
const MAX_IN_FLIGHT: usize = 256;

/// Work for a lane.
pub enum Job {
    /// A collection event; `authorize` names the collection when a rule applies.
    Event {
        room: Arc<str>,
        authorize: Option<String>,
        body: Arc<Value>,
        frame: Bytes,
        done: Option<oneshot::Sender<usize>>,
    },
    /// A socket rejoining with `since`: replay what it missed (each event through the authorize
    /// rule), then join. A barrier: the lane finishes everything before it first, and prepares
    /// nothing after it until it is done, so the replay meets live delivery with no gap and no
    /// duplicate.
    Recover {
        room: Arc<str>,
        authorize: Option<String>,
        peer: Arc<Peer>,
        entries: Vec<Entry>,
    },
    /// A room broadcast (no authorize rule).
    Broadcast {
        room: Arc<str>,
        frame: Bytes,
        except: Option<PeerId>,
    },
}

pub fn lane_of(room: &str) -> usize {
    let mut h = DefaultHasher::new();
    room.hash(&mut h);
    (h.finish() as usize) % LANES
}

/// Who a prepared job goes to.
enum Target {
    /// Every member at delivery time, but `except`.
    Room(Option<PeerId>),
    /// Only these sockets (authorized), if still in the room, some with a frame of their own.
    Only(Vec<Allowed>),
}

struct Prepared {
    room: Arc<str>,
    frame: Bytes,
    target: Target,
    done: Option<oneshot::Sender<usize>>,
}

/// Runs one lane until its channel closes or the server shuts down.
pub async fn run_lane(hub: Arc<Hub>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut pending = FuturesOrdered::new();
    loop {
        tokio::select! {
            job = jobs.recv(), if pending.len() < MAX_IN_FLIGHT => {
                let Some(job) = job else { break };
                if let Job::Recover { room, authorize, peer, entries } = job {
                    while let Some(ready) = pending.next().await {
                        deliver(&hub, ready);
                    }
                    recover(&hub, &room, authorize.as_deref(), &peer, entries).await;
                    continue;
                }
                pending.push_back(prepare(hub.clone(), job));
            }
            Some(ready) = pending.next(), if !pending.is_empty() => deliver(&hub, ready),
            _ = hub.shutdown.cancelled() => break,
        }
    }
}

/// Replays missed events to one socket, then makes it a member (see [`Job::Recover`]).
async fn recover(hub: &Hub, room: &Arc<str>, authorize: Option<&str>, peer: &Arc<Peer>, entries: Vec<Entry>) {
    let frames: Vec<Bytes> = match (authorize, &hub.callbacks.authorizer) {
        (Some(collection), Some(a)) => {
            let checks = entries.iter().map(|e| {
                allowed_members(
                    &**a,
                    collection,
                    e.body.clone(),
                    vec![peer.clone()],
                    hub.config.authorize_timeout,
                    &hub.stats,
                )
            });
            let answers = futures_util::future::join_all(checks).await;
            entries
                .iter()
                .zip(answers)
                .filter_map(|(e, allowed)| {
                    let (_, own) = allowed.into_iter().next()?;
                    Some(own.unwrap_or_else(|| e.frame.clone()))
                })
                .collect()
        }
        _ => entries.into_iter().map(|e| e.frame).collect(),
    };
    if hub.registry.join(peer, room, hub.config.max_rooms_per_socket) != Joined::New {
        return;
    }
    for frame in frames {
        hub.registry.send_to(peer, frame, &hub.stats);
    }
}

async fn prepare(hub: Arc<Hub>, job: Job) -> Prepared {
    match job {
        // `run_lane` runs recoveries itself; should one get here, it delivers nothing.
        Job::Recover { room, .. } => Prepared {
            room,
            frame: Bytes::new(),
            target: Target::Only(Vec::new()),
            done: None,
        },
        Job::Broadcast { room, frame, except } => Prepared {
            room,
            frame,
            target: Target::Room(except),
            done: None,
        },
        Job::Event {
            room,
            authorize: None,
            frame,
            done,
            ..
        } => Prepared {
            room,
            frame,
            target: Target::Room(None),
            done,
        },
        Job::Event {
            room,
            authorize: Some(collection),
            body,
            frame,
            done,
        } => {
            let members = hub.registry.members(&room);
            let allowed = match &hub.callbacks.authorizer {
                Some(a) => {
                    allowed_members(
                        &**a,
                        &collection,
                        body,
                        members,
                        hub.config.authorize_timeout,
                        &hub.stats,
                    )
                    .await
                }
                None => members.into_iter().map(|p| (p, None)).collect(),
            };
            Prepared {
                room,
                frame,
                target: Target::Only(allowed),
                done,
            }
        }
    }
}

fn deliver(hub: &Hub, p: Prepared) {
    let n = match p.target {
        Target::Room(except) => hub.registry.fan_out(&p.room, &p.frame, except, &hub.stats),
        Target::Only(peers) => hub.registry.deliver_to(&p.room, &peers, &p.frame, &hub.stats),
    };
    if let Some(done) = p.done {
        let _ = done.send(n);
    }
}
