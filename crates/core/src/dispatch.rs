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
        /// Its offset in the room's history, if it has one.
        offset: Option<u64>,
        done: Option<oneshot::Sender<usize>>,
    },
    /// Redis-backed recovery, step one (a barrier): the socket joins, its live frames of the
    /// room held back until step two.
    RecoverStart {
        room: Arc<str>,
        peer: Arc<Peer>,
        ready: oneshot::Sender<bool>,
    },
    /// Step two (a barrier): replay what was read from Redis (through the authorize rule), then
    /// release the held-back live frames that come after it.
    RecoverFinish {
        room: Arc<str>,
        authorize: Option<String>,
        peer: Arc<Peer>,
        entries: Vec<Entry>,
        done: oneshot::Sender<()>,
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
    offset: Option<u64>,
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
                let job = match job {
                    Job::Recover { .. } | Job::RecoverStart { .. } | Job::RecoverFinish { .. } => {
                        // Barriers: everything before them is delivered first.
                        while let Some(ready) = pending.next().await {
                            deliver(&hub, ready);
                        }
                        run_barrier(&hub, job).await;
                        continue;
                    }
                    job => job,
                };
                pending.push_back(prepare(hub.clone(), job));
            }
            Some(ready) = pending.next(), if !pending.is_empty() => deliver(&hub, ready),
            _ = hub.shutdown.cancelled() => break,
        }
    }
}

async fn run_barrier(hub: &Hub, job: Job) {
    match job {
        Job::Recover {
            room,
            authorize,
            peer,
            entries,
        } => {
            let frames = replay_frames(hub, authorize.as_deref(), &peer, &entries).await;
            if hub.registry.join(&peer, &room, hub.config.max_rooms_per_socket) == Joined::New {
                for frame in frames {
                    hub.registry.send_to(&peer, frame, &hub.stats);
                }
            }
        }
        Job::RecoverStart { room, peer, ready } => {
            peer.start_recovery(&room);
            let joined = hub.registry.join(&peer, &room, hub.config.max_rooms_per_socket) == Joined::New;
            if !joined {
                peer.end_recovery(&room, Default::default());
            }
            let _ = ready.send(joined);
        }
        Job::RecoverFinish {
            room,
            authorize,
            peer,
            entries,
            done,
        } => {
            for frame in replay_frames(hub, authorize.as_deref(), &peer, &entries).await {
                hub.registry.send_to(&peer, frame, &hub.stats);
            }
            // Live copies of what the replay carried are dropped: each offset once.
            let replayed = entries.iter().map(|e| e.offset).collect();
            for (_, frame) in peer.end_recovery(&room, replayed) {
                hub.registry.send_to(&peer, frame, &hub.stats);
            }
            let _ = done.send(());
        }
        other => {
            let p = prepare_now(other);
            deliver(hub, p);
        }
    }
}

/// A job that needs no preparation, as prepared.
fn prepare_now(job: Job) -> Prepared {
    match job {
        Job::Broadcast { room, frame, except } => Prepared {
            room,
            frame,
            offset: None,
            target: Target::Room(except),
            done: None,
        },
        Job::Event {
            room,
            frame,
            offset,
            done,
            ..
        } => Prepared {
            room,
            frame,
            offset,
            target: Target::Room(None),
            done,
        },
        Job::Recover { room, .. } | Job::RecoverStart { room, .. } | Job::RecoverFinish { room, .. } => Prepared {
            room,
            frame: Bytes::new(),
            offset: None,
            target: Target::Only(Vec::new()),
            done: None,
        },
    }
}

/// The frames of missed events one socket may see, in order (each through the authorize rule).
async fn replay_frames(hub: &Hub, authorize: Option<&str>, peer: &Arc<Peer>, entries: &[Entry]) -> Vec<Bytes> {
    match (authorize, &hub.callbacks.authorizer) {
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
        _ => entries.iter().map(|e| e.frame.clone()).collect(),
    }
}

async fn prepare(hub: Arc<Hub>, job: Job) -> Prepared {
    match job {
        Job::Event {
            room,
            authorize: Some(collection),
            body,
            frame,
            offset,
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
                offset,
                target: Target::Only(allowed),
                done,
            }
        }
        other => prepare_now(other),
    }
}

fn deliver(hub: &Hub, p: Prepared) {
    let n = match p.target {
        Target::Room(except) => hub.registry.fan_out(&p.room, &p.frame, except, p.offset, &hub.stats),
        Target::Only(peers) => hub.registry.deliver_to(&p.room, &peers, &p.frame, p.offset, &hub.stats),
    };
    if let Some(done) = p.done {
        let _ = done.send(n);
    }
}
