//! Applying a collection's authorize rule to one event: ask the host once for each of the
//! room's distinct users (the room keeps that list, see `rooms`), and keep the users it
//! allowed. Delivery then gives the event to the room's sockets whose user is kept.
//!
//! A failed or late answer denies only the users it covers; everyone else still gets the event.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use bytes::Bytes;

use crate::delivery::rooms::AllowedUsers;
use crate::host::callbacks::{AuthorizeRequest, Authorizer, Decision, UserList};
use crate::protocol::encode_value;
use crate::stats::Stats;
use crate::warn;

/// The users of `users` allowed to receive `event`.
pub(crate) async fn allowed_users(
    authorizer: &dyn Authorizer,
    collection: &str,
    event: Arc<Value>,
    users: Arc<UserList>,
    timeout: Duration,
    stats: &Stats,
) -> AllowedUsers {
    if users.is_empty() {
        return AllowedUsers::default();
    }
    let asked = users.len();
    let request = AuthorizeRequest {
        collection: collection.to_string(),
        event: event.clone(),
        users: users.clone(),
    };
    // The host applies its own per-user timeout; this one only guards against a host that
    // never answers at all.
    Stats::add(&stats.authorize_calls, 1);
    let asked_at = std::time::Instant::now();
    let answered = tokio::time::timeout(timeout + Duration::from_secs(1), authorizer.authorize(request)).await;
    stats.authorize_latency.observe(asked_at.elapsed());
    let answers = match answered {
        Ok(Ok(answers)) => answers,
        Ok(Err(e)) => {
            Stats::add(&stats.authorize_errors, asked as u64);
            warn!(
                "authorize for collection {collection:?} failed ({e}); the event was withheld from its {asked} user(s)"
            );
            Vec::new()
        }
        Err(_) => {
            Stats::add(&stats.authorize_errors, asked as u64);
            warn!("authorize for collection {collection:?} did not answer in time; the event was withheld");
            Vec::new()
        }
    };
    // Everyone read it as it is (a rule that looks at the user alone, or a public collection):
    // the list itself says who, with no set of users per event to build and look up.
    if answers.len() == asked && answers.iter().all(|a| *a == Decision::Allow) {
        return AllowedUsers::Every(users);
    }
    AllowedUsers::Only(
        users
            .keys
            .iter()
            .cloned()
            .zip(answers)
            .filter_map(|(key, answer)| match answer {
                Decision::Allow => Some((key, None)),
                // A user-specific doc is encoded once per user, shared by that user's sockets.
                Decision::AllowWithDoc(doc) => Some((key, Some(frame_with_doc(&event, &doc)))),
                Decision::Deny => None,
            })
            .collect(),
    )
}

/// The event with `doc` replaced, encoded as a frame.
fn frame_with_doc(event: &Value, doc: &Value) -> Bytes {
    let mut event = event.clone();
    if let Value::Object(m) = &mut event {
        m.insert("doc".into(), doc.clone());
    }
    encode_value(&event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::callbacks::BoxFuture;
    use parking_lot::Mutex;
    use serde_json::json;

    struct Recorder {
        calls: Mutex<Vec<usize>>,
    }

    impl Authorizer for Recorder {
        fn authorize(&self, req: AuthorizeRequest) -> BoxFuture<Result<Vec<Decision>, String>> {
            self.calls.lock().push(req.users.len());
            // Allow even user ids only (user 2 with its own doc); anonymous (null) is denied.
            let answers = req
                .users
                .values
                .iter()
                .map(|u| match u.get("id").and_then(Value::as_u64) {
                    Some(2) => Decision::AllowWithDoc(json!({"for": 2})),
                    Some(id) if id % 2 == 0 => Decision::Allow,
                    _ => Decision::Deny,
                })
                .collect();
            Box::pin(async move { Ok(answers) })
        }
    }

    fn user(id: Option<u64>) -> (Arc<str>, Arc<Value>) {
        match id {
            Some(id) => (Arc::from(format!("users:{id}")), Arc::new(json!({"id": id}))),
            None => (Arc::from(""), Arc::new(Value::Null)),
        }
    }

    fn list(ids: &[Option<u64>]) -> Arc<UserList> {
        Arc::new(UserList::new(ids.iter().map(|&id| user(id))))
    }

    #[tokio::test]
    async fn one_question_per_event_for_all_users() {
        let rec = Recorder {
            calls: Mutex::new(vec![]),
        };
        let users = list(&[Some(0), Some(1), Some(2), None]);
        let stats = Stats::default();
        let event = Arc::new(json!({"type": "update", "doc": {"secret": 1}}));
        let allowed = allowed_users(&rec, "posts", event, users, Duration::from_secs(1), &stats).await;
        assert_eq!(*rec.calls.lock(), vec![4]); // users 0, 1, 2 and anonymous: one call
        let AllowedUsers::Only(ref map) = allowed else {
            panic!("some were denied: not every user")
        };
        let mut keys: Vec<&str> = map.keys().map(|k| &**k).collect();
        keys.sort();
        assert_eq!(keys, vec!["users:0", "users:2"]);
        assert_eq!(allowed.get("users:0"), Some(None));
        assert_eq!(allowed.get("users:1"), None);
        assert_eq!(allowed.get(""), None);
        let frame = allowed.get("users:2").flatten().expect("user 2 has its own doc");
        assert_eq!(&frame[2..], br#"{"type":"update","doc":{"for":2}}"#);
    }

    #[tokio::test]
    async fn when_every_user_may_read_the_list_itself_is_kept() {
        let rec = Recorder {
            calls: Mutex::new(vec![]),
        };
        let users = list(&[Some(0), Some(4), Some(6)]);
        let stats = Stats::default();
        let event = Arc::new(json!({"type": "update", "doc": {}}));
        let allowed = allowed_users(&rec, "posts", event, users.clone(), Duration::from_secs(1), &stats).await;
        let AllowedUsers::Every(ref kept) = allowed else {
            panic!("every user was allowed")
        };
        assert!(Arc::ptr_eq(kept, &users));
        assert_eq!(allowed.get("users:4"), Some(None));
        // A user who was not asked (joined after the question) is not on the list.
        assert_eq!(allowed.get("users:8"), None);
        assert_eq!(allowed.get("users:1"), None);
    }

    struct Never;
    impl Authorizer for Never {
        fn authorize(&self, _: AuthorizeRequest) -> BoxFuture<Result<Vec<Decision>, String>> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_host_that_never_answers_denies() {
        let stats = Stats::default();
        let allowed = allowed_users(
            &Never,
            "posts",
            Arc::new(json!({})),
            list(&[Some(2)]),
            Duration::from_millis(10),
            &stats,
        )
        .await;
        assert!(allowed.is_empty());
        assert_eq!(stats.authorize_errors.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
