//! What this instance tells the others through the broker and what it hears from them: every
//! message leaves through [`Hub::publish`] as one envelope, and arrives in [`Hub::on_remote`].
//! Events of rooms whose history is in Redis are numbered there first, in order, by one task
//! (the appender).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::{Hub, EVERYONE};
use crate::auth::revocations::Revocation;
use crate::cluster::broker::redis_history::RedisHistory;
use crate::cluster::broker::{raw, Broker, Channel, Envelope, Kind};
use crate::config::HistoryPolicy;
use crate::delivery::event;
use crate::delivery::rooms::Except;
use crate::protocol::{collection_room, text_frame};
use crate::warn;

/// How long a join waits for its room's broker subscription before it is answered anyway (a
/// Redis that is connected but not answering must not hold joins).
pub(crate) const SUBSCRIBE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// An event for a room with Redis-backed history, waiting for its offset.
pub(super) struct Append {
    pub(super) room: String,
    pub(super) except: Except,
    pub(super) except_socket: Option<String>,
    pub(super) body: Value,
    pub(super) json: String,
    pub(super) policy: HistoryPolicy,
    pub(super) done: oneshot::Sender<usize>,
}

impl Hub {
    /// Hands a message to the other instances on `channel` (nothing without a broker).
    pub(super) fn publish(&self, channel: Channel, kind: Kind<'_>) {
        if let Some(broker) = self.broker.get() {
            let envelope = Envelope {
                v: 1,
                from: &self.instance,
                kind,
            };
            broker.publish(channel, envelope.encode());
        }
    }

    /// Whether other instances share this one's rooms through a broker.
    pub(crate) fn clustered(&self) -> bool {
        self.broker.get().is_some()
    }

    /// Waits until this instance hears what other instances publish to `room` (a socket was
    /// just put in it), at most [`SUBSCRIBE_WAIT`]. A join is answered after this, and a room's
    /// history read after it: an event emitted anywhere once the client has its ack reaches it,
    /// and one emitted before is in the history it recovers from. Redis pub/sub keeps nothing
    /// for a channel nobody here subscribed to yet.
    pub(crate) async fn subscribed(&self, room: &str) {
        let Some(settled) = self.broker.get().and_then(|b| b.settled(room)) else {
            return;
        };
        if tokio::time::timeout(SUBSCRIBE_WAIT, settled).await.is_err() {
            crate::debug!("the broker's subscription to {room:?} took over {SUBSCRIBE_WAIT:?}; join answered");
        }
    }

    /// Connects the broker: publishes go to it, and rooms subscribe as they gain local members.
    pub(crate) fn set_broker(self: &Arc<Self>, broker: Arc<dyn Broker>) {
        let hooked = broker.clone();
        self.registry.set_room_hook(Box::new(move |room, created| {
            if created {
                hooked.subscribe(room)
            } else {
                hooked.unsubscribe(room)
            }
        }));
        if self.histories.is_enabled() {
            if let Some(history) = broker.history() {
                let (tx, rx) = mpsc::unbounded_channel();
                let _ = self.appender.set(tx);
                tokio::spawn(run_appender(Arc::downgrade(self), history, rx));
            }
        }
        if let Some(store) = broker.revocations() {
            self.revocations.set_store(Arc::new(store));
            let weak = Arc::downgrade(self);
            tokio::spawn(self.revocations.clone().run_writer(
                move |written| {
                    if let Some(hub) = weak.upgrade() {
                        hub.announce_revocations(written);
                    }
                },
                self.shutdown.clone(),
            ));
        }
        let _ = self.broker.set(broker);
    }

    /// Publishes an event (JSON) for the other instances: a collection's under its slug (as
    /// always), an app event under its room, with whom it is not for.
    pub(super) fn publish_event(&self, room: &str, json: &str, offset: Option<u64>, except: &impl ExceptOf) {
        if self.broker.get().is_none() {
            return;
        }
        let Some(body) = raw(json) else { return };
        let collection = crate::protocol::collection_of_room(room);
        self.publish(
            Channel::Room(Arc::from(room)),
            Kind::Event {
                collection: collection.unwrap_or(""),
                room: collection.is_none().then_some(room),
                body: &body,
                offset,
                except: except.socket(),
                except_user: except.user(),
            },
        );
    }

    /// Redis numbered an event (or could not): deliver it here and publish it for the others.
    fn finish_append(&self, a: Append, numbered: Result<(u64, String), String>) {
        self.backlog.fetch_sub(a.json.len(), Ordering::Relaxed);
        let skip = Skipped {
            socket: a.except_socket.clone(),
            except: a.except.clone(),
        };
        let mut body = a.body;
        let offset = match numbered {
            Ok((offset, epoch)) => {
                if let Value::Object(m) = &mut body {
                    m.insert("offset".into(), Value::from(offset));
                    m.insert("epoch".into(), Value::String(epoch));
                }
                Some(offset)
            }
            Err(e) => {
                warn!("could not record an event in the Redis history ({e}); delivered without an offset");
                None
            }
        };
        let json = if offset.is_some() {
            serde_json::to_string(&body).unwrap_or(a.json)
        } else {
            a.json
        };
        self.publish_event(&a.room, &json, offset, &skip);
        let frame = text_frame(json.as_bytes());
        if let Err(e) = self.queue_event(&a.room, Arc::new(body), frame, offset, Some(a.done), None, skip.except) {
            warn!("could not deliver an event: {e}");
        }
    }

    /// Delivers what another instance published, to this instance's sockets only, through this
    /// instance's authorize rules. Never published again.
    pub(crate) fn on_remote(&self, text: &str) {
        let Some(decoded) = Envelope::decode(text) else {
            warn!("ignored a malformed message from the broker");
            return;
        };
        let Some(envelope) = decoded.envelope() else {
            warn!("ignored a malformed message from the broker");
            return;
        };
        if envelope.from == self.instance || self.stopping.is_cancelled() {
            return; // our own echo: already delivered locally
        }
        let result = match envelope.kind {
            Kind::Event {
                collection,
                room,
                body,
                offset,
                except,
                except_user,
            } => {
                let room = match room {
                    Some(room) => room.to_string(),
                    None => collection_room(collection),
                };
                if !self.admit_unheld(&room) {
                    return;
                }
                let except = Except {
                    peer: except.and_then(|id| self.local_peer_id(id)),
                    user: except_user.map(Arc::from),
                };
                self.queue_event(
                    &room,
                    self.rule_body(&room, body.get()),
                    text_frame(body.get().as_bytes()),
                    offset,
                    None,
                    None,
                    except,
                )
                .map(|_| ())
            }
            Kind::Broadcast { room, msg, .. } if room == EVERYONE => {
                self.broadcast_all_local(msg.get().as_bytes());
                Ok(())
            }
            Kind::Broadcast { room, msg, except } => self.broadcast_local(room, msg.get().as_bytes(), except),
            Kind::Send { socket, msg } => {
                if let Some(peer) = self.peer_by_public_id(socket) {
                    self.registry
                        .send_to(&peer, text_frame(msg.get().as_bytes()), &self.stats);
                }
                Ok(())
            }
            Kind::Revoke { user, sid, at, exp } => {
                if let Some(at_ms) = at {
                    self.revocations.learn(&Revocation {
                        user: user.to_string(),
                        sid: sid.map(str::to_string),
                        at_ms,
                        expires: exp.unwrap_or(u64::MAX),
                    });
                }
                self.revoke_local(user, sid);
                Ok(())
            }
            Kind::User { user, doc } => {
                self.apply_user(user, serde_json::from_str(doc.get()).ok());
                Ok(())
            }
            Kind::Presence { room, op, users } => {
                self.on_remote_presence(envelope.from, room, op, users.get());
                Ok(())
            }
        };
        if let Err(e) = result {
            warn!("could not deliver a message from the broker: {e}");
        }
    }
}

/// Numbers events in Redis in order, a pipeline per burst, then delivers and publishes them.
/// One task, so events leave in the order they were emitted.
async fn run_appender(hub: std::sync::Weak<Hub>, history: RedisHistory, mut rx: mpsc::UnboundedReceiver<Append>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 256).await > 0 {
        let Some(hub) = hub.upgrade() else { return };
        let items: Vec<(String, String, HistoryPolicy)> = batch
            .iter()
            .map(|a| (a.room.clone(), a.json.clone(), a.policy))
            .collect();
        let (results, evicted) = history.append(&items, &hub.new_epoch()).await;
        hub.histories.count_evicted(evicted);
        for (a, r) in batch.drain(..).zip(results) {
            hub.finish_append(a, r);
        }
    }
}

/// Whom an event is not for, as the other instances are told: a socket id and a user key.
pub(super) trait ExceptOf {
    fn socket(&self) -> Option<&str>;
    fn user(&self) -> Option<&str>;
}

impl ExceptOf for event::Event {
    fn socket(&self) -> Option<&str> {
        self.except_socket.as_deref()
    }
    fn user(&self) -> Option<&str> {
        self.except.user.as_deref()
    }
}

/// An appended event's `except`, kept while its JSON moves on.
struct Skipped {
    socket: Option<String>,
    except: Except,
}

impl ExceptOf for Skipped {
    fn socket(&self) -> Option<&str> {
        self.socket.as_deref()
    }
    fn user(&self) -> Option<&str> {
        self.except.user.as_deref()
    }
}
