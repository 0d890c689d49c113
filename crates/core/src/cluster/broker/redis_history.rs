//! Room history in Redis, so any instance can recover any client: one stream per room (capped
//! with MAXLEN), and a small hash with the room's epoch and last offset. Offsets are handed out
//! by Redis, so the same event has the same offset on every instance.
//!
//! Both operations are Lua scripts, atomic on the server: appending numbers the event and adds
//! it to the stream; reading checks the epoch and the offsets and returns the events after
//! `since` in one step. Keys share a hash tag (`{room}`) so a Redis Cluster keeps them on one
//! shard.

use fred::interfaces::LuaInterface;
use fred::prelude::{Client, Value as RedisValue};

use crate::cluster::history::RecoveryFailed;
use crate::config::HistoryPolicy;
use crate::protocol::Since;

/// Appends `ARGV[5..]` (event bodies, in order) to one room, then drops the oldest while the
/// stream holds more than `ARGV[2]` events or more than `ARGV[4]` bytes of bodies (kept in the
/// meta hash as `bytes`); returns `{first offset, epoch, bytes dropped for the byte cap}`.
const APPEND: &str = r#"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[2], 'epoch', epoch)
end
local n = #ARGV - 4
local last = redis.call('HINCRBY', KEYS[2], 'offset', n)
local first = last - n + 1
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added = 0
for i = 1, n do
  local b = ARGV[4 + i]
  redis.call('XADD', KEYS[1], (first + i - 1) .. '-1', 'b', b, 't', now)
  added = added + #b
end
local bytes = redis.call('HINCRBY', KEYS[2], 'bytes', added)
local size = tonumber(ARGV[2])
local max_bytes = tonumber(ARGV[4])
local evicted = 0
local len = redis.call('XLEN', KEYS[1])
while len > 0 and (len > size or bytes > max_bytes) do
  local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
  local fields = oldest[2]
  local ob = 0
  for j = 1, #fields, 2 do
    if fields[j] == 'b' then ob = #fields[j + 1] end
  end
  redis.call('XDEL', KEYS[1], oldest[1])
  if len <= size then evicted = evicted + ob end
  len = len - 1
  bytes = math.max(bytes - ob, 0)
end
redis.call('HSET', KEYS[2], 'bytes', bytes)
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return {first, epoch, evicted}
"#;

/// Returns `{epoch, last offset, now ms, [[id, [field, value, ...]], ...]}`; a room without
/// history gets its epoch (`ARGV[2]`) here, so a client that joins it has a position to recover
/// from. More than `ARGV[4]` events after `since` are not read (the recovery is refused).
const SINCE: &str = r#"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[2]
  redis.call('HSET', KEYS[2], 'epoch', epoch)
  local ttl = tonumber(ARGV[3])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
local offset = tonumber(redis.call('HGET', KEYS[2], 'offset') or '0')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entries = {}
if ARGV[1] ~= '' and offset - tonumber(ARGV[1]) <= tonumber(ARGV[4]) then
  entries = redis.call('XRANGE', KEYS[1], (tonumber(ARGV[1]) + 1) .. '-0', '+')
end
return {epoch, offset, now, entries}
"#;

/// The keys of a room's history (one hash slot per room, for Redis Cluster).
fn keys(prefix: &str, room: &str) -> Vec<String> {
    vec![format!("{prefix}{{{room}}}:stream"), format!("{prefix}{{{room}}}:meta")]
}

/// One recorded event, as Redis gives it back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stored {
    pub(crate) offset: u64,
    pub(crate) body: String,
}

#[derive(Clone)]
pub(crate) struct RedisHistory {
    client: Client,
    /// The app's namespace on Redis (`Namespace::prefix`).
    prefix: String,
}

impl RedisHistory {
    pub(crate) fn new(client: Client, prefix: &str) -> RedisHistory {
        RedisHistory {
            client,
            prefix: prefix.to_string(),
        }
    }

    /// Appends events in order: one script call per room (the room's keys share a shard), the
    /// rooms concurrently. Each event gets its `(offset, epoch)` or an error; beside them, the
    /// bytes dropped for the rooms' `maxBytes`.
    pub(crate) async fn append(
        &self,
        items: &[(String, String, HistoryPolicy)],
        epoch: &str,
    ) -> (Vec<Result<(u64, String), String>>, u64) {
        let mut rooms: Vec<(&str, HistoryPolicy, Vec<usize>)> = Vec::new();
        for (i, (room, _, policy)) in items.iter().enumerate() {
            match rooms.iter_mut().find(|(r, _, _)| r == room) {
                Some((_, _, idx)) => idx.push(i),
                None => rooms.push((room, *policy, vec![i])),
            }
        }
        let calls = rooms.iter().map(|(room, policy, idx)| {
            let ttl = policy.ttl.map_or(0, |t| t.as_millis() as u64);
            let mut args = vec![
                epoch.to_string(),
                policy.size.to_string(),
                ttl.to_string(),
                policy.max_bytes.to_string(),
            ];
            args.extend(idx.iter().map(|&i| items[i].1.clone()));
            async move {
                let reply: Result<RedisValue, _> = self.client.eval(APPEND, keys(&self.prefix, room), args).await;
                let parts = reply.map_err(|e| e.to_string())?.into_array();
                let first = parts.first().and_then(|v| v.as_u64()).ok_or("bad append reply")?;
                let epoch = parts.get(1).and_then(|v| v.as_string()).ok_or("bad append reply")?;
                let evicted = parts.get(2).and_then(|v| v.as_u64()).unwrap_or(0);
                Ok::<_, String>((first, epoch, evicted))
            }
        });
        let answers = futures_util::future::join_all(calls).await;
        let mut out: Vec<Result<(u64, String), String>> = vec![Err("not appended".into()); items.len()];
        let mut evicted = 0;
        for ((_, _, idx), answer) in rooms.iter().zip(answers) {
            evicted += answer.as_ref().map_or(0, |(_, _, e)| *e);
            for (k, &i) in idx.iter().enumerate() {
                out[i] = answer.clone().map(|(first, epoch, _)| (first + k as u64, epoch));
            }
        }
        (out, evicted)
    }

    /// The room's position and, with `since`, the events after it or why they cannot be had.
    pub(crate) async fn since(
        &self,
        room: &str,
        since: Option<&Since>,
        policy: HistoryPolicy,
        new_epoch: &str,
    ) -> Result<Recovery, String> {
        self.since_at_most(room, since, policy, new_epoch, usize::MAX).await
    }

    /// [`RedisHistory::since`] refusing (`TooManyEvents`, without reading them) more than `max`
    /// events after `since`.
    pub(crate) async fn since_at_most(
        &self,
        room: &str,
        since: Option<&Since>,
        policy: HistoryPolicy,
        new_epoch: &str,
        max: usize,
    ) -> Result<Recovery, String> {
        let from = since.map_or(String::new(), |s| s.offset.to_string());
        let ttl = policy.ttl.map_or(0, |t| t.as_millis() as u64);
        let reply: RedisValue = self
            .client
            .eval(
                SINCE,
                keys(&self.prefix, room),
                vec![
                    from,
                    new_epoch.to_string(),
                    ttl.to_string(),
                    max.min(1 << 52).to_string(),
                ],
            )
            .await
            .map_err(|e| e.to_string())?;
        let parts = reply.into_array();
        let epoch = parts.first().and_then(|v| v.as_string());
        let last = parts.get(1).and_then(|v| v.as_u64()).unwrap_or(0);
        let now = parts.get(2).and_then(|v| v.as_u64()).unwrap_or(0);
        let position = epoch.clone().map(|epoch| Since { offset: last, epoch });
        let Some(since) = since else {
            return Ok(Recovery {
                position,
                result: Ok(Vec::new()),
            });
        };
        let fail = |why| {
            Ok(Recovery {
                position: position.clone(),
                result: Err(why),
            })
        };
        let Some(epoch) = epoch else {
            return fail(RecoveryFailed::EpochChanged);
        };
        if epoch != since.epoch {
            return fail(RecoveryFailed::EpochChanged);
        }
        if since.offset > last {
            return fail(RecoveryFailed::Ahead);
        }
        if last - since.offset > max as u64 {
            return fail(RecoveryFailed::TooManyEvents);
        }
        let mut events = Vec::new();
        for entry in parts.get(3).cloned().map(RedisValue::into_array).unwrap_or_default() {
            let pair = entry.into_array();
            let id = pair.first().and_then(|v| v.as_string()).unwrap_or_default();
            let offset: u64 = id.split('-').next().and_then(|n| n.parse().ok()).unwrap_or(0);
            let fields = pair.get(1).cloned().map(RedisValue::into_array).unwrap_or_default();
            let mut body = None;
            let mut at = 0u64;
            for kv in fields.chunks(2) {
                match (kv[0].as_string().as_deref(), kv.get(1)) {
                    (Some("b"), Some(v)) => body = v.as_string(),
                    (Some("t"), Some(v)) => at = v.as_u64().unwrap_or(0),
                    _ => {}
                }
            }
            if let Some(ttl) = policy.ttl {
                if now.saturating_sub(at) > ttl.as_millis() as u64 {
                    continue; // expired: counts as trimmed below
                }
            }
            if let Some(body) = body {
                events.push(Stored { offset, body });
            }
        }
        // Every offset after `since` must still be there.
        let expected = last - since.offset;
        if events.len() as u64 != expected || events.first().is_some_and(|e| e.offset != since.offset + 1) {
            return fail(RecoveryFailed::Trimmed);
        }
        Ok(Recovery {
            position,
            result: Ok(events),
        })
    }
}

/// A room's position, and the events after `since` (or why not).
#[derive(Debug)]
pub(crate) struct Recovery {
    pub(crate) position: Option<Since>,
    pub(crate) result: Result<Vec<Stored>, RecoveryFailed>,
}
