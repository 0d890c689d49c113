//! Applying a collection's authorize rule to one event: group the room's sockets by user, ask
//! the host once for all distinct users, and keep the sockets whose user was allowed.
//!
//! A failed or late answer denies only the users it covers; everyone else still gets the event.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use bytes::Bytes;

use crate::callbacks::{AuthorizeRequest, Authorizer, Decision};
use crate::peer::Peer;
use crate::protocol::encode_value;
use crate::stats::Stats;
use crate::warn;

/// A member allowed to receive the event, with its own frame when its answer carried a doc.
pub type Allowed = (Arc<Peer>, Option<Bytes>);

/// Returns the members allowed to receive `event`.
pub async fn allowed_members(
    authorizer: &dyn Authorizer,
    collection: &str,
    event: Arc<Value>,
    members: Vec<Arc<Peer>>,
    timeout: Duration,
    stats: &Stats,
) -> Vec<Allowed> {
    if members.is_empty() {
        return Vec::new();
    }
    // Group sockets by user: one question per user, however many sockets they have open. The
    // keys come from verified tokens (no one can choose many colliding ones): a fast hash.
    let mut index: HashMap<&str, usize, rustc_hash::FxBuildHasher> = HashMap::default();
    let mut users: Vec<Arc<Value>> = Vec::new();
    let mut group_of: Vec<usize> = Vec::with_capacity(members.len());
    for peer in &members {
        let g = *index.entry(peer.user_key()).or_insert_with(|| {
            users.push(peer.user_json());
            users.len() - 1
        });
        group_of.push(g);
    }
    let asked = users.len();
    let request = AuthorizeRequest {
        collection: collection.to_string(),
        event: event.clone(),
        users,
    };
    // The host applies its own per-user timeout; this one only guards against a host that
    // never answers at all.
    let answers = match tokio::time::timeout(timeout + Duration::from_secs(1), authorizer.authorize(request)).await {
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
    // A user-specific doc is encoded once per user, shared by that user's sockets.
    let frames: Vec<Option<Bytes>> = answers
        .iter()
        .map(|d| match d {
            Decision::AllowWithDoc(doc) => Some(frame_with_doc(&event, doc)),
            _ => None,
        })
        .collect();
    let mut allowed = Vec::with_capacity(members.len());
    let mut denied = 0u64;
    for (peer, g) in members.into_iter().zip(group_of) {
        match answers.get(g) {
            Some(Decision::Allow) => allowed.push((peer, None)),
            Some(Decision::AllowWithDoc(_)) => allowed.push((peer, frames[g].clone())),
            _ => denied += 1,
        }
    }
    Stats::add(&stats.authorize_denied, denied);
    allowed
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
    use crate::auth::User;
    use crate::callbacks::BoxFuture;
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

    fn peer(id: u64, user: Option<u64>) -> Arc<Peer> {
        let user = user.map(|u| User::from_claims(json!({"id": u, "collection": "users"})).unwrap());
        Arc::new(Peer::new(id, "t", user, 1 << 20))
    }

    #[tokio::test]
    async fn one_question_per_event_for_all_distinct_users() {
        let rec = Recorder {
            calls: Mutex::new(vec![]),
        };
        let members: Vec<_> = (0..15).map(|i| peer(i, Some(i % 3))).chain([peer(99, None)]).collect();
        let stats = Stats::default();
        let event = Arc::new(json!({"type": "update", "doc": {"secret": 1}}));
        let allowed = allowed_members(&rec, "posts", event, members, Duration::from_secs(1), &stats).await;
        assert_eq!(*rec.calls.lock(), vec![4]); // users 0, 1, 2 and anonymous: one call
        let mut ids: Vec<u64> = allowed.iter().map(|(p, _)| p.id).collect();
        ids.sort();
        assert_eq!(ids, vec![0, 2, 3, 5, 6, 8, 9, 11, 12, 14]); // users 0 and 2
        let user2: Vec<_> = allowed.iter().filter(|(p, _)| p.user_key() == "users:2").collect();
        assert_eq!(user2.len(), 5);
        let frame = user2[0].1.clone().expect("user 2 has its own doc");
        assert!(
            user2.iter().all(|(_, f)| f.as_ref() == Some(&frame)),
            "encoded once, shared"
        );
        assert_eq!(&frame[2..], br#"{"type":"update","doc":{"for":2}}"#);
        let user0 = allowed.iter().filter(|(p, _)| p.user_key() == "users:0");
        assert!(user0.clone().count() == 5 && user0.into_iter().all(|(_, f)| f.is_none()));
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
        let allowed = allowed_members(
            &Never,
            "posts",
            Arc::new(json!({})),
            vec![peer(1, Some(2))],
            Duration::from_millis(10),
            &stats,
        )
        .await;
        assert!(allowed.is_empty());
        assert_eq!(stats.authorize_errors.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
