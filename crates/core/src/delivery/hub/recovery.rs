//! Joining a room with `since`: what the socket missed, read from the room's history here or in
//! Redis, sent before its live frames of the room (through the authorize rule), within
//! `maxRecoveriesPerMinute` and `maxRecoveryEvents`.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::oneshot;

use super::Hub;
use crate::cluster::broker::redis_history::{Recovery, RedisHistory};
use crate::cluster::history::{Entry, RecoveryFailed};
use crate::config::HistoryPolicy;
use crate::delivery::authorize::allowed_users;
use crate::delivery::lanes::{Barrier, Job};
use crate::delivery::rooms::Joined;
use crate::error::Error;
use crate::host::callbacks::UserList;
use crate::protocol::{collection_room, encode_value, Since};
use crate::stats::Stats;
use crate::warn;
use crate::write::socket::Socket;

/// What a collection join did.
#[derive(Debug)]
pub(crate) struct JoinOutcome {
    /// The room's position (last offset and epoch), for rooms with history.
    pub(crate) position: Option<Since>,
    /// With `since`: `Ok` when the missed events are being replayed, else why not.
    pub(crate) recovery: Option<Result<(), RecoveryFailed>>,
}

impl Hub {
    /// Joins a socket to a collection's room, recovering what it missed since `since` when
    /// given. Returns the room's position (for rooms with history) and, with `since`, whether
    /// recovery is under way (`Err` says why it cannot be: the socket joined live instead).
    pub(crate) fn join_collection(
        &self,
        peer: &Arc<Socket>,
        collection: &str,
        since: Option<&Since>,
    ) -> Result<JoinOutcome, Error> {
        self.join_with_history(peer, &collection_room(collection), since)
    }

    /// [`Hub::join_collection`] for any room (a client's `join` of a room with a rule).
    pub(crate) fn join_with_history(
        &self,
        peer: &Arc<Socket>,
        room: &str,
        since: Option<&Since>,
    ) -> Result<JoinOutcome, Error> {
        let room = room.to_string();
        let Some(history) = self.histories.room(&room) else {
            if self.registry.join(peer, &room, self.config.max_rooms_per_socket) == Joined::TooMany {
                return Err(self.too_many_rooms());
            }
            let recovery = since.map(|_| Err(RecoveryFailed::NoHistory));
            return Ok(JoinOutcome {
                position: None,
                recovery,
            });
        };
        let mut history = history.lock();
        let position = Some(history.position());
        let recovery = match since {
            Some(since) if !peer.in_room(&room) => match self.recovery_allowed(peer, &room).and_then(|()| {
                history
                    .since(since, self.config.max_recovery_events)
                    .inspect_err(|why| self.count_failed_recovery(*why))
            }) {
                Ok(entries) => {
                    if peer.room_count() >= self.config.max_rooms_per_socket {
                        return Err(self.too_many_rooms());
                    }
                    let room: Arc<str> = Arc::from(room);
                    // Joined now, under the history lock, with its live frames of the room held
                    // back: every event after the snapshot reaches it (an event queued before
                    // the join found no member otherwise), and the replay is sent before them.
                    peer.start_recovery(&room);
                    match self.registry.join(peer, &room, self.config.max_rooms_per_socket) {
                        Joined::New => {}
                        joined => {
                            peer.end_recovery(&room, Default::default(), 0);
                            if joined == Joined::TooMany {
                                return Err(self.too_many_rooms());
                            }
                            return Ok(JoinOutcome {
                                position,
                                recovery: Some(Ok(())),
                            });
                        }
                    }
                    let job = match self.authorize_rule(&room) {
                        // Asked outside the lane (see `lanes::Job::Recover`).
                        Some(collection) => Job::Recover {
                            room: room.clone(),
                            authorize: Some(collection),
                            peer: peer.clone(),
                            entries,
                            through: since.offset,
                        },
                        None => Job::Barrier(Barrier::RecoverFinish {
                            room: room.clone(),
                            peer: peer.clone(),
                            replayed: entries.iter().map(|e| e.offset).collect(),
                            frames: entries.into_iter().map(|e| e.frame).collect(),
                            through: since.offset,
                            done: None,
                        }),
                    };
                    self.send_job(&room, job)?;
                    return Ok(JoinOutcome {
                        position,
                        recovery: Some(Ok(())),
                    });
                }
                Err(why) => Some(Err(why)),
            },
            Some(_) => Some(Ok(())), // already a member: nothing was missed
            None => None,
        };
        // Joined under the history lock: every event after `position` reaches this socket live.
        if self.registry.join(peer, &room, self.config.max_rooms_per_socket) == Joined::TooMany {
            return Err(self.too_many_rooms());
        }
        drop(history);
        Ok(JoinOutcome { position, recovery })
    }

    /// Counts a recovery of `room` by this socket: `Err(Limited)` past `maxRecoveriesPerMinute`
    /// (the socket then joins live and is told to refetch).
    fn recovery_allowed(&self, peer: &Socket, room: &str) -> Result<(), RecoveryFailed> {
        if peer.may_recover(room, self.config.max_recoveries_per_minute) {
            return Ok(());
        }
        Stats::add(&self.stats.recoveries_limited, 1);
        Err(RecoveryFailed::Limited)
    }

    fn count_failed_recovery(&self, why: RecoveryFailed) {
        if why == RecoveryFailed::TooManyEvents {
            Stats::add(&self.stats.recoveries_too_long, 1);
        }
    }

    /// Whether a room's history lives in Redis (history configured, Redis connected).
    pub(crate) fn remote_history(&self, room: &str) -> Option<(RedisHistory, HistoryPolicy)> {
        let policy = self.histories.policy_for(room)?;
        self.appender.get()?;
        Some((self.broker.get()?.history()?, policy))
    }

    /// [`Hub::join_collection`] where other instances publish to the room too: it returns once
    /// this instance hears the room (see [`Hub::subscribed`]). For a room whose history is in
    /// Redis, the socket joins with its live frames held back, the missed events are read from
    /// Redis and replayed, then the held frames that come after them are released (see
    /// `lanes::Barrier::RecoverStart`).
    pub(crate) async fn join_collection_remote(
        &self,
        peer: &Arc<Socket>,
        collection: &str,
        since: Option<&Since>,
    ) -> Result<JoinOutcome, Error> {
        self.join_with_history_remote(peer, &collection_room(collection), since)
            .await
    }

    /// [`Hub::join_collection_remote`] for any room.
    pub(crate) async fn join_with_history_remote(
        &self,
        peer: &Arc<Socket>,
        room: &str,
        since: Option<&Since>,
    ) -> Result<JoinOutcome, Error> {
        let room: Arc<str> = Arc::from(room);
        let Some((history, policy)) = self.remote_history(&room) else {
            let outcome = self.join_with_history(peer, &room, since)?;
            self.subscribed(&room).await;
            return Ok(outcome);
        };
        let limited = match since {
            Some(_) if !peer.in_room(&room) => self.recovery_allowed(peer, &room).err(),
            _ => None,
        };
        let since = match since {
            Some(s) if !peer.in_room(&room) && limited.is_none() => s,
            other => {
                let recovery = match limited {
                    Some(why) => Some(Err(why)),
                    None => other.map(|_| Ok(())),
                };
                if self.registry.join(peer, &room, self.config.max_rooms_per_socket) == Joined::TooMany {
                    return Err(self.too_many_rooms());
                }
                // Subscribed before the position is read: every event after it reaches the socket.
                self.subscribed(&room).await;
                let position = history
                    .since(&room, None, policy, &self.new_epoch())
                    .await
                    .ok()
                    .and_then(|r| r.position);
                return Ok(JoinOutcome { position, recovery });
            }
        };
        let (ready, joined) = oneshot::channel();
        self.send_job(
            &room,
            Job::Barrier(Barrier::RecoverStart {
                room: room.clone(),
                peer: peer.clone(),
                ready,
            }),
        )?;
        if !joined.await.map_err(|_| Error::Closed)? {
            return Err(self.too_many_rooms());
        }
        // Subscribed before the history is read: an event it does not hold is heard live.
        self.subscribed(&room).await;
        let (position, entries, result) = match history
            .since_at_most(
                &room,
                Some(since),
                policy,
                &self.new_epoch(),
                self.config.max_recovery_events,
            )
            .await
        {
            Ok(Recovery {
                position,
                result: Ok(stored),
            }) => {
                let epoch = position.as_ref().map(|p| p.epoch.clone()).unwrap_or_default();
                let entries = stored
                    .into_iter()
                    .filter_map(|s| {
                        let mut body: Value = serde_json::from_str(&s.body).ok()?;
                        if let Value::Object(m) = &mut body {
                            m.insert("offset".into(), Value::from(s.offset));
                            m.insert("epoch".into(), Value::String(epoch.clone()));
                        }
                        Some(Entry {
                            offset: s.offset,
                            at: std::time::Instant::now(),
                            frame: encode_value(&body),
                        })
                    })
                    .collect();
                (position, entries, Ok(()))
            }
            Ok(Recovery {
                position,
                result: Err(why),
            }) => {
                self.count_failed_recovery(why);
                (position, Vec::new(), Err(why))
            }
            Err(e) => {
                warn!("could not read the Redis history of {room} ({e})");
                (None, Vec::new(), Err(RecoveryFailed::Unavailable))
            }
        };
        // Asked here, not in the lane: the lane's other rooms go on meanwhile (the socket's live
        // frames of this room wait, held back since `RecoverStart`).
        let authorize = self.authorize_rule(&room);
        let frames = replay_frames(self, authorize.as_deref(), peer, &entries).await;
        let (done, finished) = oneshot::channel();
        self.send_job(
            &room,
            Job::Barrier(Barrier::RecoverFinish {
                room: room.clone(),
                peer: peer.clone(),
                frames,
                replayed: entries.iter().map(|e| e.offset).collect(),
                through: since.offset,
                done: Some(done),
            }),
        )?;
        let _ = finished.await;
        Ok(JoinOutcome {
            position,
            recovery: Some(result),
        })
    }
}

/// The frames of missed events one socket may see, in order (each through the authorize rule).
pub(crate) async fn replay_frames(
    hub: &Hub,
    authorize: Option<&str>,
    peer: &Arc<Socket>,
    entries: &[Entry],
) -> Vec<Bytes> {
    match (authorize, &hub.callbacks.authorizer) {
        (Some(collection), Some(a)) => {
            let key: Arc<str> = Arc::from(peer.user_key());
            let user = Arc::new(UserList::new([(key.clone(), peer.user_doc())]));
            let checks = entries.iter().map(|e| {
                allowed_users(
                    &**a,
                    collection,
                    e.body(),
                    user.clone(),
                    hub.config.authorize_timeout,
                    &hub.stats,
                )
            });
            let answers = futures_util::future::join_all(checks).await;
            entries
                .iter()
                .zip(answers)
                .filter_map(|(e, allowed)| Some(allowed.get(&key)?.unwrap_or(&e.frame).clone()))
                .collect()
        }
        _ => entries.iter().map(|e| e.frame.clone()).collect(),
    }
}
