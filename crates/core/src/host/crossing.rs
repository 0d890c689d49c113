//! What one authorize crossing sends the host: each question's event and list of users, as
//! JSON text. The host keeps the lists it is sent, so a room's list (about 100 KB of JSON for
//! 1,000 users) crosses once rather than with every event ([`SentLists`]); the napi layer
//! (`src/js_callbacks.rs`) hands the text over and reads the answers.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};

use serde_json::Value;

use crate::host::callbacks::{AuthorizeRequest, UserList};

/// The lists of users (see [`UserList`]) the host has been sent and keeps, so that a room's list
/// crosses once, not with every event: 1,000 users are about 100 KB of JSON to write, hand
/// over and parse, which a lone event to such a room paid each time.
///
/// Safe with crossings in flight together and taken by the host in any order:
/// - a list is sent whole until a crossing that carried it has been answered (the host took that
///   crossing, so it holds the list before any crossing built afterwards arrives); only then
///   is it named by id alone;
/// - a list is forgotten once nothing holds it any more (its room has a newer one or is gone):
///   the questions of a crossing hold their lists until it is answered, so no crossing that
///   names it can still be on its way, and none can name it again.
#[derive(Default)]
pub struct SentLists {
    /// By id: the list, and whether a crossing that carried it was answered.
    lists: HashMap<u64, (Weak<UserList>, bool)>,
}

impl SentLists {
    /// For a crossing of these requests: the lists to send whole (each once, in the order the
    /// requests name them), and the ids the host may drop.
    pub fn plan(&mut self, requests: &[AuthorizeRequest]) -> (Vec<Arc<UserList>>, Vec<u64>) {
        let mut forget = Vec::new();
        self.lists.retain(|id, (list, _)| {
            let alive = list.strong_count() > 0;
            if !alive {
                forget.push(*id);
            }
            alive
        });
        let mut whole = Vec::new();
        let mut planned = HashSet::new();
        for r in requests {
            let (_, known) = self
                .lists
                .entry(r.users.id)
                .or_insert_with(|| (Arc::downgrade(&r.users), false));
            if !*known && planned.insert(r.users.id) {
                whole.push(r.users.clone());
            }
        }
        (whole, forget)
    }

    /// A crossing that carried these lists was answered: the host holds them.
    pub fn answered(&mut self, sent: &[Arc<UserList>]) {
        for list in sent {
            if let Some((_, known)) = self.lists.get_mut(&list.id) {
                *known = true;
            }
        }
    }
}

/// The questions of one crossing as JSON text: the lists in `whole` written out (each distinct
/// user once), every request naming its list by id.
pub fn authorize_json(
    requests: &[AuthorizeRequest],
    whole: &[Arc<UserList>],
    forget: &[u64],
) -> serde_json::Result<String> {
    #[derive(serde::Serialize)]
    struct Request<'a> {
        collection: &'a str,
        event: &'a Value,
        list: u64,
    }
    #[derive(serde::Serialize)]
    struct Crossing<'a> {
        users: Vec<&'a Value>,
        define: Vec<(u64, Vec<usize>)>,
        forget: &'a [u64],
        requests: Vec<Request<'a>>,
    }
    let mut user_at: HashMap<*const Value, usize> = HashMap::new();
    let mut users = Vec::new();
    let define = whole
        .iter()
        .map(|list| {
            let at = list
                .values
                .iter()
                .map(|u| {
                    *user_at.entry(Arc::as_ptr(u)).or_insert_with(|| {
                        users.push(&**u);
                        users.len() - 1
                    })
                })
                .collect();
            (list.id, at)
        })
        .collect();
    let requests = requests
        .iter()
        .map(|r| Request {
            collection: &r.collection,
            event: &r.event,
            list: r.users.id,
        })
        .collect();
    serde_json::to_string(&Crossing {
        users,
        define,
        forget,
        requests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(users: &Arc<UserList>) -> AuthorizeRequest {
        AuthorizeRequest {
            collection: "posts".into(),
            event: Arc::new(json!({"id": 1})),
            users: users.clone(),
        }
    }

    fn list(ids: &[u64]) -> Arc<UserList> {
        Arc::new(UserList::new(
            ids.iter()
                .map(|i| (Arc::from(format!("users:{i}")), Arc::new(json!({"id": i})))),
        ))
    }

    #[test]
    fn a_list_crosses_whole_until_answered_then_by_id_and_is_forgotten_once_dropped() {
        let mut sent = SentLists::default();
        let (a, b) = (list(&[1, 2]), list(&[3]));
        // Two crossings in flight before either is answered: both carry `a` whole.
        let ids = |lists: &[Arc<UserList>]| lists.iter().map(|l| l.id).collect::<Vec<u64>>();
        let (whole1, forget1) = sent.plan(&[request(&a), request(&a)]);
        let (whole2, _) = sent.plan(&[request(&a), request(&b)]);
        assert_eq!(ids(&whole1), vec![a.id], "once, though named twice");
        assert!(forget1.is_empty());
        assert_eq!(ids(&whole2), vec![a.id, b.id]);
        let json: Value =
            serde_json::from_str(&authorize_json(&[request(&a), request(&b)], &whole2, &[]).unwrap()).unwrap();
        assert_eq!(json["define"], json!([[a.id, [0, 1]], [b.id, [2]]]));
        assert_eq!(json["requests"][1]["list"], json!(b.id));
        // The first is answered: `a` goes by id from now on; `b` still whole.
        sent.answered(&whole1);
        let (whole3, _) = sent.plan(&[request(&a), request(&b)]);
        assert_eq!(ids(&whole3), vec![b.id]);
        let (whole4, _) = sent.plan(&[request(&a)]);
        assert!(whole4.is_empty());
        let json: Value = serde_json::from_str(&authorize_json(&[request(&a)], &whole4, &[]).unwrap()).unwrap();
        assert_eq!(json["define"], json!([]));
        assert_eq!(json["users"], json!([]));
        assert_eq!(json["requests"][0]["list"], json!(a.id));
        // `a` dropped by its room and by every question (the crossings above are over, and
        // what they sent whole with them): the next crossing lets JS drop it.
        let a_id = a.id;
        drop((whole1, whole2, whole3, whole4));
        drop(a);
        let (_, forget) = sent.plan(&[request(&b)]);
        assert_eq!(forget, vec![a_id]);
        let (_, forget) = sent.plan(&[request(&b)]);
        assert!(forget.is_empty(), "once");
    }
}
