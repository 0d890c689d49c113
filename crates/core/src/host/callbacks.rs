//! What the core asks of its host: authorize decisions and custom message handlers.
//!
//! The core never sees JS. The napi layer implements these traits with thread-safe functions
//! (batched, so one crossing serves many users or messages); `cargo test` implements them with
//! plain Rust closures.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustc_hash::FxBuildHasher;
use serde_json::Value;

use crate::protocol::ErrorCode;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// One authorize question: may each of these users receive this event?
#[derive(Debug, Clone)]
pub struct AuthorizeRequest {
    pub(crate) collection: String,
    pub(crate) event: Arc<Value>,
    /// Distinct users of the room's sockets. The events of one burst share the list (a room
    /// keeps it until its users change), so the host is sent each list once per crossing.
    pub users: Arc<UserList>,
}

/// The distinct users of a room at one moment: what authorize asks about. A room keeps its
/// list until a user comes or goes, so the questions of a burst of events carry the same one
/// (100 events to 1,000 users: one list, not 100 copies of it), and an answer that lets every
/// user of it read is kept as the list itself (`rooms::AllowedUsers::Every`).
#[derive(Debug, Default)]
pub struct UserList {
    /// Never the same for two lists of a process (0 for an empty default): a host may keep a
    /// list it was sent and be sent only this afterwards.
    pub(crate) id: u64,
    /// Each user's key (`Socket::user_key`): sockets with the same key are the same user.
    pub(crate) keys: Vec<Arc<str>>,
    /// Each user as the host sees it (the token claims, or `Value::Null` for anonymous), in
    /// the order of `keys`.
    pub(crate) values: Vec<Arc<Value>>,
    /// The keys again, to look one up.
    index: HashSet<Arc<str>, FxBuildHasher>,
}

impl UserList {
    pub(crate) fn new(users: impl IntoIterator<Item = (Arc<str>, Arc<Value>)>) -> UserList {
        let (keys, values): (Vec<Arc<str>>, Vec<Arc<Value>>) = users.into_iter().unzip();
        let index = keys.iter().cloned().collect();
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        UserList {
            id,
            keys,
            values,
            index,
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether the user with this key is on the list.
    pub(crate) fn contains(&self, user_key: &str) -> bool {
        self.index.contains(user_key)
    }
}

/// One user's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Deny,
    Allow,
    /// Deliver, with this document in place of the event's `doc` (the document as this user may
    /// read it: field-level access applied).
    AllowWithDoc(Value),
}

impl Decision {
    /// Reads a host answer as JS writes it (`decision()` in lib/authorize.js): `true` allows,
    /// `{ doc }` with an object `doc` allows with that document, anything else denies.
    pub fn from_value(v: &Value) -> Decision {
        match v {
            Value::Bool(true) => Decision::Allow,
            Value::Object(m) => match m.get("doc") {
                Some(doc @ Value::Object(_)) => Decision::AllowWithDoc(doc.clone()),
                _ => Decision::Deny,
            },
            _ => Decision::Deny,
        }
    }
}

/// Answers authorize questions. One call per event, never one per socket.
pub trait Authorizer: Send + Sync + 'static {
    /// One answer per user, in order. An `Err` (or a short answer) denies every user left
    /// without an answer; a per-user failure is the host's to turn into a denial.
    fn authorize(&self, request: AuthorizeRequest) -> BoxFuture<Result<Vec<Decision>, String>>;
}

/// Confirms a user after the token check (plugin mode: Payload's own `auth`, with sessions).
pub trait UserVerifier: Send + Sync + 'static {
    /// `Ok(Some(user))` accepts, with the user document the host wants sockets to carry;
    /// `Ok(None)` refuses.
    fn verify(&self, token: String, claims: Value) -> BoxFuture<Result<Option<Value>, String>>;
}

/// Decides who may join the rooms named by `HostRules::join_rules` (plugin mode: whether Payload's
/// read access lets the user read anything of the collection).
pub trait JoinRule: Send + Sync + 'static {
    /// One answer per room, in order: may this user (`Value::Null` for anonymous) join it? An
    /// `Err` or a short answer refuses the rooms left without an answer.
    fn may_join(&self, user: Arc<Value>, rooms: Vec<String>) -> BoxFuture<Result<Vec<bool>, String>>;
}

/// A client message for a custom handler.
#[derive(Debug, Clone)]
pub struct HandlerCall {
    pub kind: String,
    pub socket_id: String,
    pub user: Option<Arc<Value>>,
    pub message: Value,
}

/// What a custom handler answered.
#[derive(Debug, Clone, PartialEq)]
pub enum HandlerOutcome {
    /// Send this value back as the reply.
    Reply(Value),
    /// The handler returned nothing: an `ack` if the request had an id.
    NoReply,
    /// The handler failed: an `error` reply with this code.
    Failed { code: ErrorCode, message: String },
}

/// Runs custom handlers; the core decides which types have one.
pub trait CustomHandlers: Send + Sync + 'static {
    fn call(&self, call: HandlerCall) -> BoxFuture<HandlerOutcome>;
}

/// The host's callbacks, all optional.
#[derive(Clone, Default)]
pub struct Callbacks {
    pub authorizer: Option<Arc<dyn Authorizer>>,
    pub handlers: Option<Arc<dyn CustomHandlers>>,
    pub verifier: Option<Arc<dyn UserVerifier>>,
    pub join_rule: Option<Arc<dyn JoinRule>>,
    /// Where the server's log lines go (the threads of its runtimes); `None`: stderr.
    pub logger: Option<Arc<crate::log::Sink>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_host_answer_allows_as_js_writes_it_and_denies_anything_else() {
        assert_eq!(Decision::from_value(&json!(true)), Decision::Allow);
        assert_eq!(
            Decision::from_value(&json!({ "doc": { "title": "x" } })),
            Decision::AllowWithDoc(json!({ "title": "x" }))
        );
        // What JS never sends denies, as it does in lib/authorize.js.
        for answer in [
            json!(false),
            json!(null),
            json!(1),
            json!("yes"),
            json!({}),
            json!({ "allow": true }),
            json!({ "doc": "text" }),
            json!({ "doc": [1] }),
            json!({ "doc": null }),
            json!({ "doc": true }),
        ] {
            assert_eq!(Decision::from_value(&answer), Decision::Deny, "{answer}");
        }
    }
}
