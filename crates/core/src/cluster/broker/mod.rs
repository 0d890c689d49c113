//! Many instances: the broker behind the room registry, in the style of centrifuge's hub. Each
//! instance delivers to its own sockets at once and publishes what it emits for the others; what
//! arrives from the broker is delivered locally, through this instance's own authorize rules, and
//! never published again. Every envelope names its origin, so an instance ignores its own echo:
//! each socket gets each message exactly once.
//!
//! An instance subscribes only to the rooms it has local members in (the registry tells the
//! broker when a room gains its first or loses its last local member), plus its own instance
//! channel (`sendToSocket` for its sockets) and the control channel (session revocation).

pub(crate) mod redis;
pub(crate) mod redis_history;
pub(crate) mod redis_revocations;

use std::sync::Arc;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Where an envelope goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Channel {
    /// Everyone with local members in the room.
    Room(Arc<str>),
    /// One instance (messages for its sockets).
    Instance(String),
    /// Every instance.
    Control,
}

/// Counters the broker keeps; `stats()` reports them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BrokerStats {
    pub connected: bool,
    pub published: u64,
    pub received: u64,
    /// Publishes that failed or were dropped (Redis down, queue full).
    pub errors: u64,
    /// Rooms this instance is subscribed to.
    pub subscriptions: u64,
    /// Messages dropped because no instance of this app wrote them (no valid signature).
    pub rejected: u64,
    /// Times the connection was established again after a loss.
    pub reconnects: u64,
}

/// The broker as the hub uses it. Every method returns at once: publishing and subscribing
/// happen on the broker's own tasks, so a slow or absent Redis never blocks a write, an emit or
/// the JS event loop.
pub(crate) trait Broker: Send + Sync + 'static {
    fn publish(&self, channel: Channel, envelope: String);
    /// The room gained its first local member.
    fn subscribe(&self, room: &str);
    /// The room lost its last local member.
    fn unsubscribe(&self, room: &str);
    /// Answered once this instance hears what is published to `room` (its subscription is in
    /// place), or once it cannot now (the room is no longer wanted, the broker is not
    /// connected). `None`: there is nothing to wait for.
    fn settled(&self, _room: &str) -> Option<tokio::sync::oneshot::Receiver<()>> {
        None
    }
    fn stats(&self) -> BrokerStats;
    /// Room history kept in the broker, shared by every instance (Redis streams).
    fn history(&self) -> Option<redis_history::RedisHistory> {
        None
    }
    /// Revoked sessions kept in the broker, shared by every instance.
    fn revocations(&self) -> Option<redis_revocations::RedisRevocations> {
        None
    }
}

/// What travels between instances.
#[derive(Debug)]
pub(crate) struct Envelope<'a> {
    /// Format version.
    pub(crate) v: u8,
    /// The instance that published it.
    pub(crate) from: &'a str,
    pub(crate) kind: Kind<'a>,
}

#[derive(Debug)]
pub(crate) enum Kind<'a> {
    /// An event (already normalized); each instance applies its own authorize rule. A
    /// collection's names its slug (`room` absent, as before app events); an app event names
    /// its `room` (and `collection` is empty).
    Event {
        collection: &'a str,
        room: Option<&'a str>,
        body: &'a RawValue,
        /// Its offset in the room's history (Redis-backed history only).
        offset: Option<u64>,
        /// A socket id and a user key (`<collection>:<id>`) it is not for.
        except: Option<&'a str>,
        except_user: Option<&'a str>,
    },
    /// A room broadcast: the message as JSON, `except` a socket id.
    Broadcast {
        room: &'a str,
        msg: &'a RawValue,
        except: Option<&'a str>,
    },
    /// A message for one socket of the receiving instance.
    Send { socket: &'a str, msg: &'a RawValue },
    /// Close a user's session (logout) on every instance. `at` (ms) and `exp` (s) say what to
    /// remember of it (absent from instances before revocations were stored).
    Revoke {
        user: &'a str,
        sid: Option<&'a str>,
        at: Option<u64>,
        exp: Option<u64>,
    },
    /// A user's document changed (`null`: deleted): sockets of that user judge rules with it.
    User { user: &'a str, doc: &'a RawValue },
    /// Presence in a room: `op` is `join` / `leave` (users changed here), `state` (all of this
    /// instance's users, refreshed periodically) or `sync` (asks the others for their state);
    /// `users` is `[[key, { id, collection }], ...]`.
    Presence {
        room: &'a str,
        op: &'a str,
        users: &'a RawValue,
    },
}

/// The JSON form: flat, so payloads stay raw (never parsed or escaped again on the way).
#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    v: u8,
    #[serde(borrow)]
    from: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    collection: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    room: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    socket: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    user: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    sid: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    except: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    op: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    body: Option<&'a RawValue>,
}

/// A decoded envelope; it owns what it borrowed when the JSON had escapes.
pub(crate) struct Decoded<'a> {
    wire: Wire<'a>,
}

impl Envelope<'_> {
    pub(crate) fn encode(&self) -> String {
        let b = |s: &str| Some(Cow::Owned(s.to_string()));
        let mut w = Wire {
            v: self.v,
            from: Cow::Borrowed(self.from),
            kind: Cow::Borrowed(""),
            collection: None,
            room: None,
            socket: None,
            user: None,
            sid: None,
            except: None,
            op: None,
            offset: None,
            at: None,
            exp: None,
            body: None,
        };
        match &self.kind {
            Kind::Event {
                collection,
                room,
                body,
                offset,
                except,
                except_user,
            } => {
                w.kind = Cow::Borrowed("event");
                w.collection = Some(collection).filter(|c| !c.is_empty()).and_then(|c| b(c));
                w.room = room.and_then(b);
                w.body = Some(body);
                w.offset = *offset;
                w.except = except.and_then(b);
                w.user = except_user.and_then(b);
            }
            Kind::Broadcast { room, msg, except } => {
                w.kind = Cow::Borrowed("broadcast");
                w.room = b(room);
                w.body = Some(msg);
                w.except = except.and_then(b);
            }
            Kind::Send { socket, msg } => {
                w.kind = Cow::Borrowed("send");
                w.socket = b(socket);
                w.body = Some(msg);
            }
            Kind::Revoke { user, sid, at, exp } => {
                w.kind = Cow::Borrowed("revoke");
                w.user = b(user);
                w.sid = sid.and_then(b);
                w.at = *at;
                w.exp = *exp;
            }
            Kind::User { user, doc } => {
                w.kind = Cow::Borrowed("user");
                w.user = b(user);
                w.body = Some(doc);
            }
            Kind::Presence { room, op, users } => {
                w.kind = Cow::Borrowed("presence");
                w.room = b(room);
                w.op = b(op);
                w.body = Some(users);
            }
        }
        serde_json::to_string(&w).unwrap_or_default()
    }

    /// Parses an envelope of version 1; `None` for anything else.
    pub(crate) fn decode(text: &str) -> Option<Decoded<'_>> {
        let wire: Wire = serde_json::from_str(text).ok()?;
        (wire.v == 1).then_some(Decoded { wire })
    }
}

impl Decoded<'_> {
    pub(crate) fn envelope(&self) -> Option<Envelope<'_>> {
        let w = &self.wire;
        let kind = match &*w.kind {
            "event" => {
                let room = w.room.as_deref();
                Kind::Event {
                    collection: match room {
                        Some(_) => "",
                        None => w.collection.as_deref()?,
                    },
                    room,
                    body: w.body?,
                    offset: w.offset,
                    except: w.except.as_deref(),
                    except_user: w.user.as_deref(),
                }
            }
            "broadcast" => Kind::Broadcast {
                room: w.room.as_deref()?,
                msg: w.body?,
                except: w.except.as_deref(),
            },
            "send" => Kind::Send {
                socket: w.socket.as_deref()?,
                msg: w.body?,
            },
            "revoke" => Kind::Revoke {
                user: w.user.as_deref()?,
                sid: w.sid.as_deref(),
                at: w.at,
                exp: w.exp,
            },
            "user" => Kind::User {
                user: w.user.as_deref()?,
                doc: w.body?,
            },
            "presence" => Kind::Presence {
                room: w.room.as_deref()?,
                op: w.op.as_deref()?,
                users: w.body?,
            },
            _ => return None,
        };
        Some(Envelope {
            v: w.v,
            from: &w.from,
            kind,
        })
    }
}

/// A JSON text as a raw value (it is embedded as it is, never escaped or parsed again).
pub(crate) fn raw(json: &str) -> Option<Box<RawValue>> {
    RawValue::from_string(json.to_string()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_without_reencoding_the_payload() {
        let body = raw(r#"{"type":"update","collection":"posts","id":1}"#).unwrap();
        let e = Envelope {
            v: 1,
            from: "abc",
            kind: Kind::Event {
                collection: "posts",
                room: None,
                body: &body,
                offset: None,
                except: None,
                except_user: None,
            },
        };
        let text = e.encode();
        assert_eq!(
            text,
            r#"{"v":1,"from":"abc","kind":"event","collection":"posts","body":{"type":"update","collection":"posts","id":1}}"#
        );
        let decoded = Envelope::decode(&text).unwrap();
        let back = decoded.envelope().unwrap();
        assert_eq!(back.from, "abc");
        match back.kind {
            Kind::Event { collection, body, .. } => {
                assert_eq!(collection, "posts");
                assert_eq!(body.get(), r#"{"type":"update","collection":"posts","id":1}"#);
            }
            other => panic!("{other:?}"),
        }
        // An app event names its room and whom it is not for; no `collection` travels.
        let msg = raw(r#"{"type":"step","room":"ops:1"}"#).unwrap();
        let app = Envelope {
            v: 1,
            from: "abc",
            kind: Kind::Event {
                collection: "",
                room: Some("ops:1"),
                body: &msg,
                offset: Some(4),
                except: Some("abc.7"),
                except_user: Some("users:me"),
            },
        }
        .encode();
        assert!(!app.contains("\"collection\""), "{app}");
        let decoded = Envelope::decode(&app).unwrap();
        match decoded.envelope().unwrap().kind {
            Kind::Event {
                collection,
                room,
                offset,
                except,
                except_user,
                ..
            } => assert_eq!(
                (collection, room, offset, except, except_user),
                ("", Some("ops:1"), Some(4), Some("abc.7"), Some("users:me"))
            ),
            other => panic!("{other:?}"),
        }
        let revoke = Envelope {
            v: 1,
            from: "x",
            kind: Kind::Revoke {
                user: "users:1",
                sid: None,
                at: Some(5),
                exp: None,
            },
        }
        .encode();
        assert!(matches!(
            Envelope::decode(&revoke).unwrap().envelope().unwrap().kind,
            Kind::Revoke {
                user: "users:1",
                sid: None,
                at: Some(5),
                exp: None,
            }
        ));
        let doc = raw(r#"{"id":1,"role":"member"}"#).unwrap();
        let user = Envelope {
            v: 1,
            from: "x",
            kind: Kind::User {
                user: "users:1",
                doc: &doc,
            },
        }
        .encode();
        match Envelope::decode(&user).unwrap().envelope().unwrap().kind {
            Kind::User { user, doc } => assert_eq!((user, doc.get()), ("users:1", r#"{"id":1,"role":"member"}"#)),
            other => panic!("{other:?}"),
        }
        assert!(Envelope::decode("{\"v\":2,\"from\":\"x\",\"kind\":\"revoke\",\"user\":\"u\"}").is_none());
        assert!(Envelope::decode("garbage").is_none());
        // Escapes in names are fine (they are unescaped into owned strings).
        let escaped = r#"{"v":1,"from":"a","kind":"broadcast","room":"r\"1","body":{"x":1}}"#;
        let d = Envelope::decode(escaped).unwrap();
        assert!(matches!(
            d.envelope().unwrap().kind,
            Kind::Broadcast { room: "r\"1", .. }
        ));
    }
}
