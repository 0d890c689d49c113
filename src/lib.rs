//! payload-realtime: a real-time event server for Payload CMS.
//!
//! This crate holds only the napi bindings: JS values in, core calls, JS values out, and the one
//! place where core errors become JS errors. Everything below
//! (the `payload-realtime-core` crate in `crates/core`) knows nothing of JS
//! and is tested with `cargo test`.

// Every `unsafe` block says why it is sound; clippy checks it.
#![warn(clippy::undocumented_unsafe_blocks)]
// What the crate does not export is `pub(crate)`, so that rustc finds what nothing uses.
#![warn(unreachable_pub)]

mod js_callbacks;

use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::ThreadsafeFunction;
use napi_derive::napi;
use parking_lot::Mutex;
use serde_json::Value;

use payload_realtime_core::config::{
    Config, HistoryPolicy, HistoryRule, HostRules, MetricsAccess, PayloadKey, DEFAULT_HISTORY_MAX_BYTES,
};
use payload_realtime_core::delivery::hub::Hub;
use payload_realtime_core::delivery::ingest::{self, Events};
use payload_realtime_core::error;
use payload_realtime_core::host::callbacks::{self, Callbacks};
use payload_realtime_core::net::adopt;
use payload_realtime_core::net::server::{RequestHead, Server};

use crate::js_callbacks::{
    AuthorizeFn, HandlerFn, JsAuthorizer, JsHandlers, JsJoinRule, JsLogger, JsVerifier, LogFn, MayJoinFn, VerifyFn,
};

/// Cache-aligned blocks (every socket's task and I/O registration) from pages of their own, not
/// glibc's `memalign`: see `payload_realtime_core::alloc`.
#[global_allocator]
static ALLOCATOR: payload_realtime_core::alloc::Allocator = payload_realtime_core::alloc::Allocator;

/// Maps a core error to a JS error: the one place this happens. The JS error's `code` is napi's
/// status, or, for an error the JS layer acts on, this package's own code: a connection that
/// cannot be adopted is `cannot-adopt`. A function that can fail so returns
/// `napi::Error<String>` (a code of any text); the others keep napi's `Status`.
fn js_error<C: JsCode>(e: error::Error) -> napi::Error<C> {
    let status = match e {
        error::Error::InvalidOption(_) | error::Error::InvalidInput(_) => Status::InvalidArg,
        _ => Status::GenericFailure,
    };
    let own = match e {
        error::Error::CannotAdopt(_) => Some("cannot-adopt"),
        _ => None,
    };
    napi::Error::new(C::of(status, own), e.to_string())
}

/// What a JS error's `code` can be built from.
trait JsCode: AsRef<str> {
    fn of(status: Status, own: Option<&'static str>) -> Self;
}

impl JsCode for Status {
    fn of(status: Status, _: Option<&'static str>) -> Status {
        status
    }
}

impl JsCode for String {
    fn of(status: Status, own: Option<&'static str>) -> String {
        own.unwrap_or(status.as_ref()).to_string()
    }
}

/// Node's HTTP parser gives header lines and the request target as latin1 strings: each
/// character is one byte as received.
fn latin1(s: String) -> Vec<u8> {
    if s.is_ascii() {
        return s.into_bytes();
    }
    s.chars().map(|c| u8::try_from(c).unwrap_or(b'?')).collect()
}

/// Options of the native server (the JS layer fills in defaults and checks types).
#[napi(object)]
pub struct NativeOptions {
    pub host: Option<String>,
    pub port: Option<u32>,
    pub path: Option<String>,
    pub secret: Option<String>,
    pub allowed_origins: Option<Vec<String>>,
    pub allow_anonymous: Option<bool>,
    pub max_payload_length: Option<u32>,
    pub max_backpressure: Option<u32>,
    pub max_backlog: Option<u32>,
    /// Seconds; 0 disables the idle timeout.
    pub idle_timeout: Option<u32>,
    pub worker_threads: Option<u32>,
    pub include_collections: Option<Vec<String>>,
    pub authorize_collections: Option<Vec<String>>,
    /// Rooms (names or `prefix*`) a client joins only once `mayJoin` allows it.
    pub join_rules: Option<Vec<String>>,
    /// Milliseconds.
    pub authorize_timeout: Option<u32>,
    /// Milliseconds.
    pub handler_timeout: Option<u32>,
    pub max_messages_per_second: Option<u32>,
    pub max_rooms_per_socket: Option<u32>,
    /// Absent: derived from the descriptor limit (`config::default_max_connections`).
    pub max_connections: Option<u32>,
    /// 0 = no limit.
    pub max_connections_per_user: Option<u32>,
    /// 0 = no limit.
    pub max_connections_per_ip: Option<u32>,
    /// IP addresses whose `Forwarded` / `X-Forwarded-For` is believed (checked by the JS layer).
    pub trusted_proxies: Option<Vec<String>>,
    /// `redis://`, `rediss://` or `redis-cluster://` URL for many instances.
    pub redis_url: Option<String>,
    /// What this app's Redis channels and keys start with (default: derived from the secret).
    pub redis_prefix: Option<String>,
    /// History rules: a room name or `prefix*`, how many events, for how long.
    pub history: Option<Vec<NativeHistoryRule>>,
    /// Rooms with presence: room names or `prefix*`.
    pub presence: Option<Vec<String>>,
    /// Milliseconds another instance's presence counts without a refresh (default 15000).
    pub presence_expiry: Option<u32>,
    /// `verifyUser` calls in flight at once (default 64).
    pub max_verifying: Option<u32>,
    /// `verifyUser` calls in flight for one user (default 4; 0 = no limit).
    pub max_verifying_per_user: Option<u32>,
    /// Milliseconds one `verifyUser` may take (default 5000).
    pub verify_timeout: Option<u32>,
    /// Milliseconds a `?auth=message` socket has to send its token (default 10000).
    pub auth_timeout: Option<u32>,
    /// Recoveries one socket may make of one room per minute (0 = no limit).
    pub max_recoveries_per_minute: Option<u32>,
    /// Most events one recovery replays.
    pub max_recovery_events: Option<u32>,
    /// `GET /metrics` on the server's port, for `Authorization: Bearer <metrics_token>`.
    pub metrics_token: Option<String>,
    /// `GET /metrics` on a listener of its own (0 picks a free port), on `metrics_host`.
    pub metrics_port: Option<u32>,
    pub metrics_host: Option<String>,
    /// Milliseconds a drain gives sockets to go after their 1001 (default 5000).
    pub drain_timeout: Option<u32>,
    /// Revoked sessions remembered per instance (default 100000).
    pub max_revoked_sessions: Option<u32>,
    /// Seconds: the longest a token lives (default 7 days); how long revocations are kept.
    pub max_token_lifetime: Option<u32>,
    /// Whether the host has an `onConnect` (called through `handle` with type `""`).
    pub on_connect: Option<bool>,
}

#[napi(object)]
pub struct NativeHistoryRule {
    pub pattern: String,
    pub size: u32,
    /// Seconds; absent or 0 keeps events until `size` pushes them out.
    pub ttl_seconds: Option<u32>,
    /// Most bytes of events the room keeps (default 1 MiB).
    pub max_bytes: Option<u32>,
}

/// The host's rules from their napi shape (also what `setHostRules` takes).
fn host_rules(
    include_collections: Option<Vec<String>>,
    authorize_collections: Option<Vec<String>>,
    join_rules: Option<Vec<String>>,
) -> HostRules {
    HostRules {
        include_collections: include_collections.map(|v| v.into_iter().collect()),
        authorize_collections: authorize_collections.unwrap_or_default().into_iter().collect(),
        join_rules: join_rules.unwrap_or_default(),
    }
}

impl NativeOptions {
    fn into_config(self) -> Config {
        let d = Config::default();
        Config {
            host: self.host.unwrap_or(d.host),
            port: self.port.map(|p| p as u16).unwrap_or(d.port),
            path: self.path,
            key: self
                .secret
                .filter(|s| !s.is_empty())
                .map(|s| PayloadKey::from_payload_secret(&s)),
            allowed_origins: self.allowed_origins,
            allow_anonymous: self.allow_anonymous.unwrap_or(d.allow_anonymous),
            max_payload_length: self.max_payload_length.map_or(d.max_payload_length, |v| v as usize),
            max_backpressure: self.max_backpressure.map_or(d.max_backpressure, |v| v as usize),
            max_backlog: self.max_backlog.map_or(d.max_backlog, |v| v as usize),
            idle_timeout: match self.idle_timeout {
                Some(0) => None,
                Some(s) => Some(Duration::from_secs(s as u64)),
                None => d.idle_timeout,
            },
            worker_threads: self.worker_threads.map_or(d.worker_threads, |v| v as usize),
            host_rules: host_rules(self.include_collections, self.authorize_collections, self.join_rules),
            authorize_timeout: millis(self.authorize_timeout, d.authorize_timeout),
            handler_timeout: millis(self.handler_timeout, d.handler_timeout),
            max_messages_per_second: self.max_messages_per_second.unwrap_or(d.max_messages_per_second),
            max_rooms_per_socket: self.max_rooms_per_socket.map_or(d.max_rooms_per_socket, |v| v as usize),
            max_connections: self.max_connections.map_or(d.max_connections, |v| v as usize),
            max_connections_per_user: self
                .max_connections_per_user
                .map_or(d.max_connections_per_user, |v| v as usize),
            max_connections_per_ip: self
                .max_connections_per_ip
                .map_or(d.max_connections_per_ip, |v| v as usize),
            // `loopback` names every loopback address; absent, that is the default.
            trust_loopback: self
                .trusted_proxies
                .as_ref()
                .is_none_or(|list| list.iter().any(|ip| ip == "loopback")),
            trusted_proxies: self
                .trusted_proxies
                .unwrap_or_default()
                .iter()
                .filter_map(|ip| ip.parse().ok())
                .collect(),
            presence: self.presence.unwrap_or_default(),
            presence_expiry: self
                .presence_expiry
                .map_or(d.presence_expiry, |ms| Duration::from_millis(ms.max(100) as u64)),
            redis_url: self.redis_url.filter(|u| !u.is_empty()),
            redis_prefix: self.redis_prefix.filter(|p| !p.is_empty()),
            history: self
                .history
                .unwrap_or_default()
                .into_iter()
                .map(|r| HistoryRule {
                    pattern: r.pattern,
                    policy: HistoryPolicy {
                        size: r.size as usize,
                        ttl: r.ttl_seconds.filter(|s| *s > 0).map(|s| Duration::from_secs(s as u64)),
                        max_bytes: r.max_bytes.map_or(DEFAULT_HISTORY_MAX_BYTES, |b| b as usize),
                    },
                })
                .collect(),
            echo_mode: false,
            max_verifying: self.max_verifying.map_or(d.max_verifying, |v| v as usize),
            max_verifying_per_user: self
                .max_verifying_per_user
                .map_or(d.max_verifying_per_user, |v| v as usize),
            verify_timeout: millis(self.verify_timeout, d.verify_timeout),
            auth_timeout: millis(self.auth_timeout, d.auth_timeout),
            max_recoveries_per_minute: self.max_recoveries_per_minute.unwrap_or(d.max_recoveries_per_minute),
            max_recovery_events: self.max_recovery_events.map_or(d.max_recovery_events, |v| v as usize),
            metrics: match (self.metrics_token, self.metrics_port) {
                (Some(token), _) => Some(MetricsAccess::Token(token)),
                (None, Some(port)) => Some(MetricsAccess::Listen {
                    host: self.metrics_host.unwrap_or_else(|| "127.0.0.1".into()),
                    port: port as u16,
                }),
                (None, None) => None,
            },
            drain_timeout: millis(self.drain_timeout, d.drain_timeout),
            max_revoked_sessions: self.max_revoked_sessions.map_or(d.max_revoked_sessions, |v| v as usize),
            max_token_lifetime: self
                .max_token_lifetime
                .map_or(d.max_token_lifetime, |s| Duration::from_secs(s as u64)),
            on_connect: self.on_connect.unwrap_or(d.on_connect),
        }
    }
}

/// An option given in milliseconds, or the default.
fn millis(option: Option<u32>, default: Duration) -> Duration {
    option.map_or(default, |ms| Duration::from_millis(u64::from(ms)))
}

#[napi(object)]
pub struct NativeSocketInfo {
    pub id: String,
    pub user: Value,
}

#[napi(object)]
pub struct NativeStats {
    pub connections: f64,
    pub connections_total: f64,
    /// Of `connections`: SSE streams open and long polls waiting now.
    pub streams: f64,
    pub handshakes_refused: f64,
    /// Handshakes refused with 503 for `maxConnections`.
    pub refused_max_connections: f64,
    /// Handshakes refused with 429 for `maxConnectionsPerUser`.
    pub refused_per_user: f64,
    /// Handshakes refused with 429 for `maxConnectionsPerIp`.
    pub refused_per_ip: f64,
    pub rooms: f64,
    pub messages_in: f64,
    pub messages_out: f64,
    pub dropped: f64,
    pub slow_consumers: f64,
    /// Sockets closed with 4029: they kept sending past `maxMessagesPerSecond`.
    pub rate_limited: f64,
    pub events: f64,
    pub authorize_denied: f64,
    pub authorize_errors: f64,
    pub handler_errors: f64,
    /// Times delivery waited for the server's writers: events came faster than the sockets
    /// were written, and `emitEvent` answered later instead of clients being closed.
    pub backlog_waits: f64,
    /// Bytes of events waiting for the server's writers now; `emitEvent` refuses events while it
    /// is at `maxBacklog`.
    pub backlog_bytes: f64,
    /// Bytes handed to sockets by reference (`splice`) rather than copied, since the process
    /// started: large buffers that many sockets send.
    pub spliced_bytes: f64,
    /// With Redis: whether the broker is connected, and its counters.
    pub redis: Option<NativeBrokerStats>,
    /// Tasks alive on the server's runtime (one per socket, plus a few): a leak shows here.
    pub tasks: f64,
    /// Bytes allocated by the process's native heap and not freed (glibc 2.33+ only; includes Node's
    /// own native allocations, not its JS heap).
    pub heap_bytes: Option<f64>,
    /// `verifyUser` calls in flight now (handshakes and `{ type: "auth" }` together).
    pub verifying: f64,
    /// Handshakes and refreshes turned away at `maxVerifying` / `maxVerifyingPerUser`.
    pub refused_verifying: f64,
    /// Sockets opened with `?auth=message` still waiting for their token.
    pub pending_auth: f64,
    /// Sockets closed with 4004 (no token in time, something else first, a refused token).
    pub auth_failures: f64,
    /// Joins with `since` that went on live without a replay for `maxRecoveriesPerMinute`.
    pub recoveries_limited: f64,
    /// Joins with `since` that went on live without a replay for `maxRecoveryEvents`.
    pub recoveries_too_long: f64,
    /// Events refused at once because the queue from JS was at `maxBacklog`.
    pub ingest_full: f64,
    /// Sockets closed with 4008 because messages from Redis or broadcasts brought the backlog
    /// to `maxBacklog` while delivery waited for them.
    pub backlog_evictions: f64,
    /// Messages from Redis and broadcasts dropped at twice `maxBacklog` (their rooms were sent
    /// `recovery-failed`).
    pub backlog_dropped: f64,
    /// Bytes of events dropped from room histories for their `maxBytes`.
    pub history_evicted_bytes: f64,
    /// Bytes of WebSocket frames read from clients.
    pub bytes_in: f64,
    /// Bytes of the frames `messages_out` counts.
    pub bytes_out: f64,
    /// Calls of the authorize callback (one per event and room).
    pub authorize_calls: f64,
    /// Log lines dropped because the logger's queue was full.
    pub log_lines_dropped: f64,
    /// Revoked sessions: held here, waiting for Redis, forgotten past `maxRevokedSessions`,
    /// and checks Redis could not answer.
    pub sessions: NativeSessionStats,
}

#[napi(object)]
pub struct NativeSessionStats {
    pub revoked: f64,
    pub pending: f64,
    pub evicted: f64,
    pub check_failures: f64,
}

#[napi(object)]
pub struct NativeBrokerStats {
    pub connected: bool,
    pub published: f64,
    pub received: f64,
    pub errors: f64,
    pub subscriptions: f64,
    /// Messages dropped because no instance of this app wrote them.
    pub rejected: f64,
    /// Times the connection was established again after a loss.
    pub reconnects: f64,
}

/// A strong function held while the server runs, so Node stays alive like it does for any
/// listening server; `close()` drops it.
type KeepAliveFn = ThreadsafeFunction<(), (), (), Status, false, false>;

/// A running server.
#[napi]
pub struct RealtimeServer {
    hub: Arc<Hub>,
    server: Arc<Mutex<Option<Server>>>,
    keep_alive: Mutex<Option<KeepAliveFn>>,
    port: u16,
    metrics_port: Option<u16>,
}

/// Starts the server: binds the port (a busy port throws here) and returns at once.
#[napi(
    js_name = "initUWebSocket",
    catch_unwind,
    ts_args_type = "options: NativeOptions, authorize?: ((json: string) => Promise<string>) | null, handle?: ((calls: Array<{ type: string, socketId: string, user: any, message: any }>) => Promise<Array<{ ok: boolean, reply?: any, code?: string, message?: string }>>) | null, keepAlive?: (() => void) | null, verifyUser?: ((token: string, claims: any) => Promise<any>) | null, mayJoin?: ((questions: Array<{ user: any, rooms: Array<string> }>) => Promise<Array<Array<boolean>>>) | null, log?: ((level: 'error' | 'warn' | 'info' | 'debug', line: string) => void) | null"
)]
pub fn init_u_web_socket(
    options: NativeOptions,
    authorize: Option<AuthorizeFn>,
    handle: Option<HandlerFn>,
    keep_alive: Option<KeepAliveFn>,
    verify_user: Option<VerifyFn>,
    may_join: Option<MayJoinFn>,
    log: Option<LogFn>,
) -> Result<RealtimeServer> {
    let config = options.into_config();
    let mut batchers: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> = Vec::new();
    let mut authorize_batcher = None;
    let authorizer = authorize.map(|f| {
        let (a, task) = JsAuthorizer::new(Arc::new(f));
        authorize_batcher = Some(task);
        Arc::new(a) as Arc<dyn callbacks::Authorizer>
    });
    let handlers = handle.map(|f| {
        let (h, task) = JsHandlers::new(Arc::new(f));
        batchers.push(Box::pin(task));
        Arc::new(h) as Arc<dyn callbacks::CustomHandlers>
    });
    let join_rule = may_join.map(|f| {
        let (j, task) = JsJoinRule::new(Arc::new(f));
        batchers.push(Box::pin(task));
        Arc::new(j) as Arc<dyn callbacks::JoinRule>
    });
    let server = Server::start(
        config,
        Callbacks {
            authorizer,
            handlers,
            verifier: verify_user.map(|f| Arc::new(JsVerifier { f: Arc::new(f) }) as Arc<dyn callbacks::UserVerifier>),
            join_rule,
            logger: log.map(|f| {
                Arc::new(payload_realtime_core::log::Sink {
                    out: Box::new(JsLogger { f }),
                    dropped: Default::default(),
                })
            }),
        },
    )
    .map_err(js_error)?;
    for task in batchers {
        server.handle().spawn(task);
    }
    // On the lanes' thread: the questions a lane asks in one go are all queued before the
    // batcher runs, so they cross together.
    if let Some(task) = authorize_batcher {
        server.dispatch_handle().spawn(task);
    }
    Ok(RealtimeServer {
        hub: server.hub().clone(),
        port: server.local_addr().port(),
        metrics_port: server.metrics_addr().map(|a| a.port()),
        server: Arc::new(Mutex::new(Some(server))),
        keep_alive: Mutex::new(keep_alive),
    })
}

#[napi]
impl RealtimeServer {
    /// The port the server listens on (useful with port 0).
    #[napi(getter)]
    pub fn port(&self) -> u32 {
        self.port as u32
    }

    /// The port of `/metrics`'s own listener (`metrics: { port }`), else `null`.
    #[napi(getter)]
    pub fn metrics_port(&self) -> Option<u32> {
        self.metrics_port.map(u32::from)
    }

    /// This server's instance id (the prefix of its socket ids).
    #[napi(getter)]
    pub fn instance_id(&self) -> String {
        self.hub.instance.clone()
    }

    /// Sends a collection event to `collection:<slug>`; resolves with the number of sockets it
    /// was queued to, once authorize has answered. The text is parsed and queued off this
    /// thread (`ingest`), in the order of the calls, so events emitted one after the other
    /// keep their order.
    #[napi(catch_unwind, ts_return_type = "Promise<number>")]
    pub fn emit_event<'env>(&self, env: &'env Env, event_json: String) -> Result<Object<'env>> {
        self.hand_over(env, Events::One(event_json), |outcomes| {
            match outcomes.into_iter().next() {
                Some(Ok(n)) => Ok(Either::A(n as u32)),
                Some(Err(e)) => Err(e),
                None => Err(error::Error::Internal("emitEvent: no outcome".into())),
            }
        })
    }

    /// Several events in one call (the JS layer gathers those emitted in the same tick): one
    /// crossing and one promise for all. Resolves with one entry per event: the number of
    /// sockets, or `{ code, message }` for an event that was refused.
    #[napi(
        catch_unwind,
        ts_return_type = "Promise<Array<number | { code: string, message: string }>>"
    )]
    pub fn emit_events<'env>(&self, env: &'env Env, events_json: String) -> Result<Object<'env>> {
        self.hand_over(env, Events::Many(events_json), |outcomes| {
            Ok(Either::B(
                outcomes
                    .into_iter()
                    .map(|o| match o {
                        Ok(n) => Value::from(n),
                        Err(e) => serde_json::json!({ "code": e.code(), "message": e.to_string() }),
                    })
                    .collect(),
            ))
        })
    }

    /// Publishes an app event to `room` (see `Hub::submit_app`), in order with the events
    /// handed over before it; resolves with the number of local sockets it was queued to.
    /// `except_user` is a user key, `<collection>:<id>`. Resolves with `[count]`, or
    /// `[{ code, message }]` when refused.
    #[napi(
        catch_unwind,
        ts_return_type = "Promise<Array<number | { code: string, message: string }>>"
    )]
    pub fn publish<'env>(
        &self,
        env: &'env Env,
        room: String,
        message_json: String,
        except_socket: Option<String>,
        except_user: Option<String>,
    ) -> Result<Object<'env>> {
        let events = Events::App {
            room,
            json: message_json,
            except_socket,
            except_user,
        };
        // One entry, as `emitEvents` answers: a refusal keeps its own code.
        self.hand_over(env, events, |outcomes| {
            Ok(Either::B(
                outcomes
                    .into_iter()
                    .map(|o| match o {
                        Ok(n) => Value::from(n),
                        Err(e) => serde_json::json!({ "code": e.code(), "message": e.to_string() }),
                    })
                    .collect(),
            ))
        })
    }

    #[napi(catch_unwind)]
    /// `message_json` is the message as JSON text (JS stringifies it: faster than walking the
    /// object through napi, and it honours `toJSON`).
    pub fn broadcast_to_room(&self, room: String, message_json: String, except: Option<String>) -> Result<()> {
        self.hub
            .broadcast_to_room(&room, message_json.as_bytes(), except.as_deref())
            .map_err(js_error)
    }

    /// Replaces which collections clients may join, which ask authorize, and which rooms ask
    /// the join rule, without dropping a socket (the app's options changed in a dev reload).
    #[napi(catch_unwind)]
    pub fn set_host_rules(
        &self,
        include_collections: Option<Vec<String>>,
        authorize_collections: Vec<String>,
        join_rules: Vec<String>,
    ) -> Result<()> {
        self.hub
            .set_host_rules(host_rules(
                include_collections,
                Some(authorize_collections),
                Some(join_rules),
            ))
            .map_err(js_error)
    }

    /// Declares that JS handles messages of this type.
    #[napi(catch_unwind)]
    pub fn register_custom_handler(&self, kind: String) -> Result<()> {
        if kind.is_empty()
            || matches!(
                kind.as_str(),
                "join-collection" | "subscribe" | "leave-collection" | "unsubscribe" | "ping" | "auth" | "presence"
            )
        {
            return Err(js_error(error::Error::InvalidInput(format!(
                "registerCustomHandler: {kind:?} is a built-in message type"
            ))));
        }
        self.hub.register_custom_type(&kind);
        Ok(())
    }

    #[napi(catch_unwind)]
    pub fn send_to_socket(&self, socket_id: String, message_json: String) -> bool {
        self.hub.send_to_socket(&socket_id, message_json.as_bytes())
    }

    #[napi(catch_unwind)]
    pub fn join_room(&self, socket_id: String, room: String) -> Result<bool> {
        self.hub.join_room(&socket_id, &room).map_err(js_error)
    }

    #[napi(catch_unwind)]
    pub fn leave_room(&self, socket_id: String, room: String) -> bool {
        self.hub.leave_room(&socket_id, &room)
    }

    #[napi(catch_unwind)]
    pub fn get_sockets_in_room(&self, room: String) -> Vec<NativeSocketInfo> {
        self.hub
            .sockets_in_room(&room)
            .into_iter()
            .map(|s| NativeSocketInfo {
                id: s.id,
                user: (*s.user).clone(),
            })
            .collect()
    }

    /// Sends a message (JSON text) to every socket connected, on every instance; returns how
    /// many sockets here it was queued to.
    #[napi(catch_unwind)]
    pub fn broadcast(&self, message_json: String) -> u32 {
        self.hub.broadcast_all(message_json.as_bytes()) as u32
    }

    /// A page of this instance's sockets (id order, after `after`, at most `limit`), and the id
    /// to pass for the next page (absent on the last).
    #[napi(
        catch_unwind,
        ts_return_type = "{ sockets: Array<{ id: string, user: any, rooms: string[] }>, next?: string }"
    )]
    pub fn list_sockets(&self, after: Option<String>, limit: u32) -> Value {
        let (page, next) = self.hub.list_sockets(after.as_deref(), limit as usize);
        let sockets: Vec<Value> = page
            .into_iter()
            .map(|(s, rooms)| serde_json::json!({ "id": s.id, "user": *s.user, "rooms": rooms }))
            .collect();
        let mut out = serde_json::json!({ "sockets": sockets });
        if let Some(next) = next {
            out["next"] = Value::String(next);
        }
        out
    }

    /// Closes with 4003 the sockets of user `<collection>:<id>` on session `sid` (every session
    /// when `sid` is absent) and remembers the revocation until `exp` (the token's expiry,
    /// seconds) unless `remember` is false. Returns how many were closed here.
    #[napi(catch_unwind)]
    pub fn revoke_session(
        &self,
        collection: String,
        id: String,
        sid: Option<String>,
        exp: Option<f64>,
        remember: Option<bool>,
    ) -> u32 {
        let exp = exp.filter(|e| e.is_finite() && *e > 0.0).map(|e| e as u64);
        let key = format!("{collection}:{id}");
        self.hub
            .revoke_session(&key, sid.as_deref(), exp, remember.unwrap_or(true)) as u32
    }

    /// The user `<collection>:<id>` changed (`doc`) or was deleted (`null`), on every instance.
    /// Returns how many of its sockets are here.
    #[napi(catch_unwind)]
    pub fn update_user(&self, collection: String, id: String, doc: Value) -> u32 {
        let doc = (!doc.is_null()).then_some(doc);
        self.hub.update_user(&format!("{collection}:{id}"), doc) as u32
    }

    #[napi(catch_unwind)]
    pub fn stats(&self) -> NativeStats {
        let s = self.hub.stats();
        NativeStats {
            connections: s.connections as f64,
            connections_total: s.connections_total as f64,
            streams: s.streams as f64,
            handshakes_refused: s.handshakes_refused as f64,
            refused_max_connections: s.refused_max_connections as f64,
            refused_per_user: s.refused_per_user as f64,
            refused_per_ip: s.refused_per_ip as f64,
            rooms: s.rooms as f64,
            messages_in: s.messages_in as f64,
            messages_out: s.messages_out as f64,
            dropped: s.dropped as f64,
            slow_consumers: s.slow_consumers as f64,
            rate_limited: s.rate_limited as f64,
            events: s.events as f64,
            authorize_denied: s.authorize_denied as f64,
            authorize_errors: s.authorize_errors as f64,
            handler_errors: s.handler_errors as f64,
            backlog_waits: s.backlog_waits as f64,
            backlog_bytes: s.backlog_bytes as f64,
            spliced_bytes: s.spliced_bytes as f64,
            redis: s.broker.map(|b| NativeBrokerStats {
                connected: b.connected,
                published: b.published as f64,
                received: b.received as f64,
                errors: b.errors as f64,
                subscriptions: b.subscriptions as f64,
                rejected: b.rejected as f64,
                reconnects: b.reconnects as f64,
            }),
            tasks: self.runtime().map_or(0.0, |h| h.metrics().num_alive_tasks() as f64),
            heap_bytes: payload_realtime_core::memory::heap_in_use().map(|b| b as f64),
            verifying: s.verifying as f64,
            refused_verifying: s.refused_verifying as f64,
            pending_auth: s.pending_auth as f64,
            auth_failures: s.auth_failures as f64,
            recoveries_limited: s.recoveries_limited as f64,
            recoveries_too_long: s.recoveries_too_long as f64,
            ingest_full: s.ingest_full as f64,
            backlog_evictions: s.backlog_evictions as f64,
            backlog_dropped: s.backlog_dropped as f64,
            history_evicted_bytes: s.history_evicted_bytes as f64,
            bytes_in: s.bytes_in as f64,
            bytes_out: s.bytes_out as f64,
            authorize_calls: s.authorize_calls as f64,
            log_lines_dropped: s.log_dropped as f64,
            sessions: NativeSessionStats {
                revoked: s.sessions.revoked as f64,
                pending: s.sessions.pending as f64,
                evicted: s.sessions.evicted as f64,
                check_failures: s.sessions.check_failures as f64,
            },
        }
    }

    /// `close()` for a process that is exiting (`process.on('exit')`, where nothing
    /// asynchronous runs any more): the same drain, with half of `timeout_ms` as its grace,
    /// waited for on this thread for at most `timeout_ms`, so sockets get their 1001 before the
    /// process is gone. Returns whether it finished in time. Idempotent.
    #[napi(catch_unwind)]
    pub fn close_sync(&self, timeout_ms: u32) -> bool {
        let Some(server) = self.take_for_shutdown() else {
            return true;
        };
        let (done, finished) = std::sync::mpsc::channel();
        let grace = Duration::from_millis(timeout_ms as u64 / 2);
        std::thread::spawn(move || {
            let handle = server.handle();
            handle.block_on(server.shutdown(Some(grace)));
            drop(server);
            let _ = done.send(());
        });
        finished.recv_timeout(Duration::from_millis(timeout_ms as u64)).is_ok()
    }

    /// Takes over a connection of the host's HTTP server that sent an upgrade request: `fd` is
    /// its descriptor, which is duplicated (the host then closes its own), `raw_headers` the
    /// header lines as Node received them (name, value, name, value, ...), `head` what Node
    /// read past them. The server answers it from here on. `false` once the server is closed
    /// (nothing was taken); a connection that cannot be taken over throws `cannot-adopt`.
    #[napi(catch_unwind)]
    pub fn adopt_upgrade(
        &self,
        fd: i32,
        method: String,
        url: String,
        raw_headers: Vec<String>,
        head: Buffer,
    ) -> std::result::Result<bool, napi::Error<String>> {
        let server = self.server.lock();
        let Some(server) = server.as_ref() else {
            return Ok(false);
        };
        // SAFETY: `fd` is the descriptor of the socket the JS layer read it from in this same
        // synchronous call. Node closes a socket's descriptor only on its own thread, which is
        // inside this call, so it stays open until the call returns.
        let stream = unsafe { adopt::dup_tcp_stream(fd) }.map_err(js_error)?;
        let mut lines = raw_headers.into_iter().map(latin1);
        let mut headers = Vec::with_capacity(lines.len() / 2);
        while let (Some(name), Some(value)) = (lines.next(), lines.next()) {
            headers.push((name, value));
        }
        let request = RequestHead {
            method: method.into_bytes(),
            target: latin1(url),
            headers,
        };
        server.adopt(stream, request, head.to_vec()).map_err(js_error)?;
        Ok(true)
    }

    /// Drains (see `Server::shutdown`: 1001 to every socket, `grace_ms` or `drainTimeout` for
    /// them to go, then the rest cut), frees the port, and lets Node exit. Idempotent.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn close<'env>(&self, env: &'env Env, grace_ms: Option<u32>) -> Result<Object<'env>> {
        let grace = grace_ms.map(|ms| Duration::from_millis(ms as u64));
        let (deferred, promise) = env.create_deferred::<(), fn(Env) -> Result<()>>()?;
        match self.take_for_shutdown() {
            None => deferred.resolve(resolved),
            Some(server) => {
                // Shut down on a plain thread: a runtime cannot be dropped from inside one.
                std::thread::spawn(move || {
                    let handle = server.handle();
                    handle.block_on(server.shutdown(grace));
                    drop(server);
                    deferred.resolve(resolved);
                });
            }
        }
        Ok(promise)
    }
}

impl RealtimeServer {
    /// The server, taken out for shutdown: later calls find nothing to close, and Node may exit
    /// once nothing else holds it.
    fn take_for_shutdown(&self) -> Option<Server> {
        self.keep_alive.lock().take();
        self.server.lock().take()
    }
}

/// A log line of the JS layer with its secrets removed, by the same rules as the server's own
/// (tokens, cookies, passwords, URL credentials).
#[napi(catch_unwind)]
pub fn redact_log_text(text: String) -> String {
    payload_realtime_core::log::redact(&text)
}

fn resolved(_: Env) -> Result<()> {
    Ok(())
}

impl RealtimeServer {
    fn runtime(&self) -> Option<tokio::runtime::Handle> {
        self.server.lock().as_ref().map(Server::handle)
    }

    /// Hands events over to the core and settles the promise with `settle` of their outcomes.
    fn hand_over<'env>(
        &self,
        env: &'env Env,
        events: Events,
        settle: impl FnOnce(ingest::Outcomes) -> std::result::Result<Either<u32, Vec<Value>>, error::Error> + Send + 'static,
    ) -> Result<Object<'env>> {
        let (deferred, promise) = env.create_deferred()?;
        let handed = self
            .server
            .lock()
            .as_ref()
            .map(|s| (s.ingest().submit(events), s.handle()));
        let Some((answer, handle)) = handed else {
            deferred.reject(js_error(error::Error::Closed));
            return Ok(promise);
        };
        handle.spawn(async move {
            match answer.await.unwrap_or(Err(error::Error::Closed)).and_then(settle) {
                Ok(v) => deferred.resolve(move |_| Ok(v)),
                Err(e) => deferred.reject(js_error(e)),
            }
        });
        Ok(promise)
    }
}
