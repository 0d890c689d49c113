//! Sessions and users that change under open sockets: a revoked session (logout) or a deleted
//! user closes its sockets (4003) on every instance and is remembered; a changed user document
//! replaces the one its sockets show.

use std::sync::Arc;

use serde_json::Value;

use super::Hub;
use crate::auth::revocations::{Revocation, Token, Verdict};
use crate::auth::User;
use crate::cluster::broker::{raw, Channel, Kind};
use crate::protocol::close_code;
use crate::warn;
use crate::write::socket::Socket;

impl Hub {
    /// Closes with 4003 every socket of this user (`<collection>:<id>`) whose session is `sid`,
    /// or all of the user's sockets when `sid` is `None`. Returns how many were closed.
    ///
    /// The revocation is remembered (in Redis too, when configured) until the token expires
    /// (`exp`, seconds), at most `maxTokenLifetime`: the session is refused at handshake and
    /// refresh on every instance.
    /// `remember: false` only closes the sockets (a logout whose write may still be rolled back:
    /// it is remembered once committed).
    pub fn revoke_session(&self, user_key: &str, sid: Option<&str>, exp: Option<u64>, remember: bool) -> usize {
        if remember {
            let r = self.revocations.revoke(user_key, sid, exp);
            self.announce_revocations(std::slice::from_ref(&r));
        } else {
            self.publish(
                Channel::Control,
                Kind::Revoke {
                    user: user_key,
                    sid,
                    at: None,
                    exp: None,
                },
            );
        }
        self.revoke_local(user_key, sid)
    }

    /// Tells the other instances of revocations (they close those sockets and remember them).
    pub(crate) fn announce_revocations(&self, revocations: &[Revocation]) {
        if self.broker.get().is_none() {
            return;
        }
        for r in revocations {
            self.publish(
                Channel::Control,
                Kind::Revoke {
                    user: &r.user,
                    sid: r.sid.as_deref(),
                    at: Some(r.at_ms),
                    exp: Some(r.expires),
                },
            );
        }
    }

    /// Whether a token (`user`, its current `sid`) may be used: known revocations, then the
    /// store. A token issued in the second of a user-wide revocation counts as revoked unless
    /// the host verifies users itself (Payload knows which sessions are left).
    pub(crate) async fn check_session(&self, user: &User, sid: Option<&str>) -> Verdict {
        let same_second = self.callbacks.verifier.is_none();
        self.revocations.check(Token::of(user, sid), same_second).await
    }

    /// After Redis came back: this instance's revocations are written again and its open
    /// sockets are checked against the store; revoked ones are closed (4003).
    pub(crate) async fn recheck_sessions(&self) {
        self.revocations.rewrite_all();
        let peers: Vec<Arc<Socket>> = self
            .registry
            .all_sockets()
            .into_iter()
            .filter(|p| p.user.is_some())
            .collect();
        if peers.is_empty() {
            return;
        }
        let tokens: Vec<(Option<String>, Option<u64>)> = peers.iter().map(|p| p.token_sid()).collect();
        let queries: Vec<Token> = peers
            .iter()
            .zip(&tokens)
            .map(|(p, (sid, iat))| Token {
                user: p.user_key(),
                sid: sid.as_deref(),
                issued_at: *iat,
            })
            .collect();
        let same_second = self.callbacks.verifier.is_none();
        match self.revocations.check_many(&queries, same_second).await {
            Ok(revoked) => {
                for (peer, revoked) in peers.iter().zip(revoked) {
                    if revoked {
                        self.registry.remove_socket(peer);
                        peer.outbound.close(close_code::SESSION_REVOKED, "session revoked");
                    }
                }
            }
            Err(e) => warn!("could not check open sessions against Redis after a reconnect ({e})"),
        }
    }

    /// A user changed (`doc`) or was deleted (`None`): every instance's sockets of that user
    /// show the new document to rules, read access and handlers; a deleted user's sockets are
    /// closed (4003) and the user is revoked as a whole. Returns the sockets affected here.
    pub fn update_user(&self, user_key: &str, doc: Option<Value>) -> usize {
        if doc.is_none() {
            return self.revoke_session(user_key, None, None, true);
        }
        if self.broker.get().is_some() {
            let json = doc.as_ref().map_or_else(|| "null".to_string(), Value::to_string);
            if let Some(body) = raw(&json) {
                self.publish(
                    Channel::Control,
                    Kind::User {
                        user: user_key,
                        doc: &body,
                    },
                );
            }
        }
        self.apply_user(user_key, doc)
    }

    pub(super) fn apply_user(&self, user_key: &str, doc: Option<Value>) -> usize {
        match doc {
            Some(doc) if !doc.is_null() => self.registry.replace_user(user_key, Arc::new(doc)),
            _ => self.revoke_local(user_key, None),
        }
    }

    pub(super) fn revoke_local(&self, user_key: &str, sid: Option<&str>) -> usize {
        let mut closed = 0;
        for peer in self.registry.all_sockets() {
            if peer.user_key() != user_key {
                continue;
            }
            if let Some(sid) = sid {
                if peer.with_sid(|s| s != Some(sid)) {
                    continue;
                }
            }
            self.registry.remove_socket(&peer);
            peer.outbound.close(close_code::SESSION_REVOKED, "session revoked");
            closed += 1;
        }
        closed
    }
}
