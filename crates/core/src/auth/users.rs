//! One copy of a user for all of its sockets.
//!
//! Idle sockets are most of what a server holds, and a user's sockets (tabs, devices, the admin
//! panel beside the site) carry the same user: the same token's claims, or the same document
//! from the host's `verifyUser`. A user is claims' text or a parsed map of a dozen small
//! allocations (several hundred bytes); one shared `Arc` replaces one per socket. A copy is
//! shared only when it is equal to the new one, so sockets of one user whose tokens or
//! documents differ keep their own.

use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use serde_json::Value;

use crate::auth::Claims;

/// Entries (users) added since the last sweep before the next one; a sweep drops the users
/// with no socket left, so the map stays about as large as the users connected.
const SWEEP_AFTER: usize = 1024;

/// What a user is kept as, and when two copies are the same.
pub(crate) trait Same {
    fn same(&self, other: &Self) -> bool;
}

impl Same for Value {
    fn same(&self, other: &Value) -> bool {
        self == other
    }
}

impl Same for Claims {
    /// The same text: sockets of one token (or of tokens signed alike) share it, unparsed.
    fn same(&self, other: &Claims) -> bool {
        self.json() == other.json()
    }
}

pub(crate) struct SharedUsers<T> {
    inner: Mutex<Inner<T>>,
}

impl<T> Default for SharedUsers<T> {
    fn default() -> Self {
        SharedUsers {
            inner: Mutex::new(Inner {
                users: FxHashMap::default(),
                added: 0,
            }),
        }
    }
}

struct Inner<T> {
    /// User key -> the key itself and the copies its sockets hold (usually one).
    users: FxHashMap<Arc<str>, Vec<Weak<T>>>,
    added: usize,
}

/// The user of anonymous sockets: one `null` for all of them.
pub(crate) fn anonymous() -> Arc<Value> {
    static NULL: std::sync::OnceLock<Arc<Value>> = std::sync::OnceLock::new();
    NULL.get_or_init(|| Arc::new(Value::Null)).clone()
}

impl<T: Same> SharedUsers<T> {
    /// The user key to keep, and `value` or an equal copy that a socket of this user holds.
    pub(crate) fn share(&self, user_key: &Arc<str>, value: Arc<T>) -> (Arc<str>, Arc<T>) {
        let mut inner = self.inner.lock();
        if let Some((k, _)) = inner.users.get_key_value(user_key) {
            let k = k.clone();
            let copies = inner.users.get_mut(user_key).expect("just found");
            copies.retain(|w| w.strong_count() > 0);
            if let Some(same) = copies.iter().filter_map(Weak::upgrade).find(|c| c.same(&value)) {
                return (k, same);
            }
            copies.push(Arc::downgrade(&value));
            return (k, value);
        }
        inner.added += 1;
        if inner.added >= SWEEP_AFTER.max(inner.users.len()) {
            inner.added = 0;
            inner.users.retain(|_, copies| {
                copies.retain(|w| w.strong_count() > 0);
                !copies.is_empty()
            });
        }
        inner.users.insert(user_key.clone(), vec![Arc::downgrade(&value)]);
        (user_key.clone(), value)
    }

    /// Users remembered (with or without a socket left), for tests.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sockets_of_one_user_with_equal_claims_share_one_copy() {
        let users = SharedUsers::<Value>::default();
        let (k1, a) = users.share(&Arc::from("users:1"), Arc::new(json!({ "id": 1, "exp": 10 })));
        let (k2, b) = users.share(&Arc::from("users:1"), Arc::new(json!({ "id": 1, "exp": 10 })));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(&k1, &k2));
    }

    #[test]
    fn a_different_copy_of_the_same_user_is_kept_apart() {
        let users = SharedUsers::<Value>::default();
        let (_, a) = users.share(&Arc::from("users:1"), Arc::new(json!({ "id": 1, "exp": 10 })));
        let (_, b) = users.share(&Arc::from("users:1"), Arc::new(json!({ "id": 1, "exp": 20 })));
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(b["exp"], 20);
        let (_, c) = users.share(&Arc::from("users:2"), Arc::new(json!({ "id": 1, "exp": 10 })));
        assert!(!Arc::ptr_eq(&a, &c), "another user's equal value is not shared");
    }

    #[test]
    fn users_with_no_socket_left_are_forgotten() {
        let users = SharedUsers::<Value>::default();
        for i in 0..3 * SWEEP_AFTER {
            // Each value is dropped at once, as when a socket closes.
            users.share(&Arc::from(format!("users:{i}")), Arc::new(json!({ "id": i })));
        }
        assert!(users.len() <= SWEEP_AFTER + 1, "{} users remembered", users.len());
        let (_, held) = users.share(&Arc::from("users:kept"), Arc::new(json!({ "id": "kept" })));
        for i in 0..3 * SWEEP_AFTER {
            users.share(&Arc::from(format!("others:{i}")), Arc::new(json!({ "id": i })));
        }
        let (_, again) = users.share(&Arc::from("users:kept"), Arc::new(json!({ "id": "kept" })));
        assert!(Arc::ptr_eq(&held, &again), "a user with a socket is kept across sweeps");
    }
}
