//! Revoked sessions in Redis, shared by every instance of the app (see [`crate::auth::revocations`]).
//!
//! A session's key is `<prefix>revoked:{<user>}:sid:<sid>`, a user's `<prefix>revoked:{<user>}:all`
//! (its value: when the user was revoked, in milliseconds); each expires with the tokens it covers.
//! A user's keys share a hash tag, so one script reads both on a Redis Cluster.

use fred::interfaces::{ClientLike, LuaInterface};
use fred::prelude::{Client, Value as RedisValue};

use crate::auth::revocations::{now_ms, Found, Query, Revocation, RevocationStore, StoreFuture};

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
pub(crate) struct RedisRevocations {
    client: Client,
    prefix: String,
}

impl RedisRevocations {
    pub(crate) fn new(client: Client, prefix: &str) -> RedisRevocations {
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
            // Commands fail at once while disconnected (`fail_fast`): a check waits for the
            // connection instead (the caller's deadline bounds it), so a server that has just
            // started, or Redis back within the deadline, does not refuse anyone.
            if !me.client.is_connected() {
                me.client.wait_for_connect().await.map_err(|e| e.to_string())?;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use fred::prelude::{Builder, Config};

    /// A redis-server of its own on a free loopback port, killed on drop; `None` without one.
    struct RedisServer(std::process::Child, u16);

    impl RedisServer {
        fn start() -> Option<RedisServer> {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .ok()?
                .local_addr()
                .ok()?
                .port();
            let child = std::process::Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .ok()?;
            Some(RedisServer(child, port))
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[tokio::test]
    async fn revocations_round_trip_through_a_real_redis() {
        let Some(server) = RedisServer::start() else {
            eprintln!("redis-server is not installed: skipped");
            return;
        };
        let config = Config::from_url(&format!("redis://127.0.0.1:{}", server.1)).unwrap();
        let client = Builder::from_config(config).build().unwrap();
        let mut connected = false;
        for _ in 0..100 {
            if client.init().await.is_ok() {
                connected = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(connected, "redis-server answers");
        let store = RedisRevocations::new(client.clone(), "app:");
        let now_s = now_ms() / 1000;
        let q = |user: &str, sid: Option<&str>| Query {
            user: user.into(),
            sid: sid.map(Into::into),
        };
        store
            .write(vec![
                Revocation {
                    user: "users:1".into(),
                    sid: Some("s1".into()),
                    at_ms: 1,
                    expires: now_s + 60,
                },
                Revocation {
                    user: "users:2".into(),
                    sid: None,
                    at_ms: 5_000,
                    expires: now_s + 600,
                },
            ])
            .await
            .unwrap();
        // An older user-wide revocation does not move the time back.
        store
            .write(vec![Revocation {
                user: "users:2".into(),
                sid: None,
                at_ms: 4_000,
                expires: now_s + 30,
            }])
            .await
            .unwrap();
        let found = store
            .lookup(vec![
                q("users:1", Some("s1")),
                q("users:1", Some("s2")),
                q("users:2", Some("x")),
                q("users:3", None),
            ])
            .await
            .unwrap();
        assert_eq!(
            found,
            vec![
                Found {
                    session: true,
                    user_at_ms: None
                },
                Found::default(),
                Found {
                    session: false,
                    user_at_ms: Some(5_000)
                },
                Found::default(),
            ]
        );
        // Keys live under the app's prefix and expire with the tokens they cover.
        let ttl: i64 = client
            .eval(
                "return redis.call('TTL', KEYS[1])",
                vec!["app:revoked:{users:1}:sid:s1"],
                Vec::<String>::new(),
            )
            .await
            .unwrap();
        assert!((1..=60).contains(&ttl), "{ttl}");
        let ttl: i64 = client
            .eval(
                "return redis.call('TTL', KEYS[1])",
                vec!["app:revoked:{users:2}:all"],
                Vec::<String>::new(),
            )
            .await
            .unwrap();
        assert!((31..=600).contains(&ttl), "the longer life is kept: {ttl}");
        drop(server);
        assert!(
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                store.lookup(vec![q("users:1", None)])
            )
            .await
            .map_or(true, |r| r.is_err()),
            "no answer without Redis"
        );
    }
}
