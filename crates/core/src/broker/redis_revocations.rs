//! Revoked sessions in Redis, shared by every instance of the app (see [`crate::revocations`]).
//!
//! A session's key is `<prefix>revoked:{<user>}:sid:<sid>`, a user's `<prefix>revoked:{<user>}:all`
//! (its value: when the user was revoked, in milliseconds); each expires with the tokens it covers.
//! A user's keys share a hash tag, so one script reads both on a Redis Cluster.

use fred::interfaces::LuaInterface;
use fred::prelude::{Client, Value as RedisValue};

use crate::revocations::{now_ms, Found, Query, Revocation, RevocationStore, StoreFuture};

/// Writes one revocation: a session's key, or a user's (keeping the later time and the longer
/// life when there is one already).
const WRITE: &str = r#"
local ttl = tonumber(ARGV[2])
local current = redis.call('GET', KEYS[1])
if current and tonumber(current) >= tonumber(ARGV[1]) then
  if redis.call('TTL', KEYS[1]) < ttl then redis.call('EXPIRE', KEYS[1], ttl) end
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
return 1
"#;

/// `{session revoked (0/1), user revoked at (ms, or false)}`.
const LOOKUP: &str = r#"
local session = 0
if KEYS[2] then session = redis.call('EXISTS', KEYS[2]) end
return {session, redis.call('GET', KEYS[1])}
"#;

#[derive(Clone)]
pub struct RedisRevocations {
    client: Client,
    prefix: String,
}

impl RedisRevocations {
    pub fn new(client: Client, prefix: &str) -> RedisRevocations {
        RedisRevocations {
            client,
            prefix: prefix.to_string(),
        }
    }

    fn user_key(&self, user: &str) -> String {
        format!("{}revoked:{{{user}}}:all", self.prefix)
    }

    fn session_key(&self, user: &str, sid: &str) -> String {
        format!("{}revoked:{{{user}}}:sid:{sid}", self.prefix)
    }
}

impl RevocationStore for RedisRevocations {
    fn write(&self, items: Vec<Revocation>) -> StoreFuture<()> {
        let me = self.clone();
        Box::pin(async move {
            let now_s = now_ms() / 1000;
            let writes = items.iter().map(|r| {
                let key = match &r.sid {
                    Some(sid) => me.session_key(&r.user, sid),
                    None => me.user_key(&r.user),
                };
                let args = vec![r.at_ms.to_string(), r.ttl(now_s).to_string()];
                let client = &me.client;
                async move { client.eval::<RedisValue, _, _, _>(WRITE, vec![key], args).await }
            });
            for result in futures_util::future::join_all(writes).await {
                result.map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    }

    fn lookup(&self, queries: Vec<Query>) -> StoreFuture<Vec<Found>> {
        let me = self.clone();
        Box::pin(async move {
            let reads = queries.iter().map(|q| {
                let mut keys = vec![me.user_key(&q.user)];
                if let Some(sid) = &q.sid {
                    keys.push(me.session_key(&q.user, sid));
                }
                let client = &me.client;
                async move {
                    let reply: RedisValue = client
                        .eval(LOOKUP, keys, Vec::<String>::new())
                        .await
                        .map_err(|e| e.to_string())?;
                    let parts = reply.into_array();
                    Ok::<_, String>(Found {
                        session: parts.first().and_then(RedisValue::as_u64).unwrap_or(0) == 1,
                        user_at_ms: parts.get(1).and_then(RedisValue::as_u64),
                    })
                }
            });
            futures_util::future::join_all(reads).await.into_iter().collect()
        })
    }
}
