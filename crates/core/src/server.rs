//! The listener: its own tokio runtime, the accept loop, HTTP routes (`/healthz`, the upgrade,
//! 404/426 for the rest), the handshake checks, and a shutdown every task hears.
//!
//! Shaped like mini-redis: one task accepts, one task per HTTP connection, and after the
//! upgrade one task per socket (see [`crate::connection`]); the HTTP task ends with the
//! upgrade. `shutdown()` stops accepting, sends 1001 to every socket after what is queued for
//! it, waits briefly, then cuts what is left.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio_util::task::TaskTracker;

use crate::auth::{self, Refusal};
use crate::broker::redis::RedisBroker;
use crate::callbacks::{Callbacks, UserVerifier};
use crate::config::Config;
use crate::connection;
use crate::dispatch::run_lane;
use crate::error::Error;
use crate::hub::Hub;
use crate::ingest::Ingest;
use crate::protocol::close_code;
use crate::stats::Stats;
use crate::warn;

/// How long `shutdown()` waits for sockets to finish their close handshake.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// How long a client may take to send its HTTP request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A running server: its runtimes, its hub, and the address it listens on.
pub struct Server {
    hub: Arc<Hub>,
    runtime: Option<Runtime>,
    /// The delivery lanes' own thread (see [`Server::start`]).
    dispatch: Option<Runtime>,
    /// Where the host's events come in (taken on the lanes' thread).
    ingest: Ingest,
    local_addr: SocketAddr,
    tracker: TaskTracker,
}

impl Server {
    /// Starts the runtime, binds the address (so a busy port fails here, clearly), and starts
    /// accepting.
    pub fn start(config: Config, callbacks: Callbacks) -> Result<Server, Error> {
        config.validate()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads)
            .thread_name("payload-realtime")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the runtime: {e}")))?;
        let addr = format!("{}:{}", config.host, config.port);
        let listener = {
            let _guard = runtime.enter();
            bind(&addr)?
        };
        let local_addr = listener.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
        // The lanes (which queue each event for its sockets) run on a thread of their own, not
        // among the sockets' tasks: an event emitted while the workers are still writing the
        // last one is queued at once (a socket still waiting for the last one then writes both
        // in one syscall), instead of the lane waiting its turn behind thousands of socket
        // tasks. Paced fan-out to 10,000 sockets, one event every 100 ms, same build, runs
        // interleaved: p50 61-76 ms and p99 134-165 ms with the lanes apart, 109-137 ms and
        // 237-267 ms among the sockets. Queueing is a small share of the CPU; the writing
        // stays on the workers.
        let dispatch = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("payload-realtime-dispatch")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the dispatch runtime: {e}")))?;
        let (hub, lanes) = Hub::new(config, callbacks);
        let _ = hub.flushers.set(crate::flush::Flushers::new(runtime.handle().clone()));
        let tracker = TaskTracker::new();
        for lane in lanes {
            dispatch.spawn(run_lane(hub.clone(), lane));
        }
        let (ingest, take) = Ingest::new(hub.clone());
        dispatch.spawn(take);
        {
            let _guard = runtime.enter();
            if let Some(url) = hub.config.redis_url.clone() {
                let weak = Arc::downgrade(&hub);
                let on_message = Arc::new(move |text: &str| {
                    if let Some(hub) = weak.upgrade() {
                        hub.on_remote(text)
                    }
                });
                // Once subscribed to a presence room, ask the others who is there.
                let weak = Arc::downgrade(&hub);
                let on_subscribed = Arc::new(move |room: &str| {
                    if let Some(hub) = weak.upgrade() {
                        if hub.presence.enabled_for(room) {
                            hub.publish_presence(room, "sync", &[]);
                        }
                    }
                });
                let namespace = crate::broker::redis::Namespace::new(&hub.config);
                let broker = RedisBroker::start(
                    &url,
                    namespace,
                    &hub.instance,
                    on_message,
                    on_subscribed,
                    hub.shutdown.clone(),
                )?;
                hub.set_broker(broker);
            }
            runtime.spawn(accept_loop(hub.clone(), listener, tracker.clone()));
            if hub.histories.is_enabled() {
                runtime.spawn(sweep_histories(hub.clone()));
            }
            hub.install_presence();
            if hub.presence.is_enabled() {
                runtime.spawn(presence_ticks(hub.clone()));
            }
        }
        Ok(Server {
            hub,
            runtime: Some(runtime),
            dispatch: Some(dispatch),
            ingest,
            local_addr,
            tracker,
        })
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Where the host hands over its events.
    pub fn ingest(&self) -> &Ingest {
        &self.ingest
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle to run work on the server's runtime.
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.runtime
            .as_ref()
            .expect("runtime lives until drop")
            .handle()
            .clone()
    }

    /// A handle to the lanes' runtime: work that lanes wait on and that must not race them
    /// (the authorize batcher, which takes the questions a lane asks in one go together).
    pub fn dispatch_handle(&self) -> tokio::runtime::Handle {
        self.dispatch
            .as_ref()
            .expect("runtime lives until drop")
            .handle()
            .clone()
    }

    /// Graceful stop: no new connections, 1001 to every socket, a short wait, then every task
    /// is told to stop. The port is free when this returns.
    pub async fn shutdown(&self) {
        let hub = self.hub.clone();
        let tracker = self.tracker.clone();
        let task = self.handle().spawn(async move {
            hub.stopping.cancel();
            let peers = hub.registry.all_peers();
            for peer in &peers {
                hub.registry.remove_peer(peer);
                peer.outbound.close(close_code::GOING_AWAY, "server shutting down");
            }
            tracker.close();
            if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
                warn!("some sockets did not close in time; cutting them");
                for peer in &peers {
                    peer.outbound.cut();
                }
            }
            drop(peers);
            hub.shutdown.cancel();
            tracker.wait().await;
        });
        let _ = task.await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.hub.shutdown.cancel();
        // Never blocks: safe to drop from inside another runtime or a napi call.
        for rt in [self.runtime.take(), self.dispatch.take()].into_iter().flatten() {
            rt.shutdown_background();
        }
    }
}

/// Pending connections the kernel queues for `accept`: a burst of handshakes (a deploy, a
/// reconnect storm) must not overflow it, or clients wait a second per dropped SYN.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds the address with a large accept backlog (std's `bind` uses 128).
fn bind(addr: &str) -> Result<TcpListener, Error> {
    use std::net::ToSocketAddrs;
    let bind_error = |source| Error::Bind {
        addr: addr.to_string(),
        source,
    };
    let mut last = None;
    for sa in addr.to_socket_addrs().map_err(bind_error)? {
        let socket = if sa.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(bind_error)?;
        socket.set_reuseaddr(true).map_err(bind_error)?;
        match socket.bind(sa).and_then(|_| socket.listen(LISTEN_BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(bind_error(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
    })))
}

/// Refreshes presence for the other instances and expires theirs, three times per expiry.
async fn presence_ticks(hub: Arc<Hub>) {
    let mut tick = tokio::time::interval((hub.config.presence_expiry / 3).max(Duration::from_millis(50)));
    loop {
        tokio::select! {
            _ = tick.tick() => hub.presence_tick(),
            _ = hub.shutdown.cancelled() => return,
        }
    }
}

/// Forgets the history of rooms that are empty and whose events have all expired.
async fn sweep_histories(hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = tick.tick() => hub.histories.sweep(|room| hub.registry.member_count(room) > 0),
            _ = hub.shutdown.cancelled() => return,
        }
    }
}

async fn accept_loop(hub: Arc<Hub>, listener: TcpListener, tracker: TaskTracker) {
    let stop = hub.stopping.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => break,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tracker.spawn(serve_http(hub.clone(), stream, tracker.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: wait and go on; never stop listening.
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Dropping the listener here frees the port.
}

async fn serve_http(hub: Arc<Hub>, stream: tokio::net::TcpStream, tracker: TaskTracker) {
    let service_hub = hub.clone();
    let service = service_fn(move |req| {
        let hub = service_hub.clone();
        let tracker = tracker.clone();
        async move { Ok::<_, Infallible>(route(hub, req, tracker).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = &mut conn => {}
        _ = hub.stopping.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
    }
}

/// Asks the host to confirm a user; a refusal, an error or no answer in time is a 401.
pub async fn verify_user(
    verifier: &dyn UserVerifier,
    token: String,
    claims: serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value, Refusal> {
    match tokio::time::timeout(timeout, verifier.verify(token, claims)).await {
        Ok(Ok(Some(user))) => Ok(user),
        Ok(Ok(None)) => Err(Refusal::unauthorized("session is not valid")),
        Ok(Err(e)) => {
            warn!("verifyUser failed: {e}");
            Err(Refusal::unauthorized("session could not be verified"))
        }
        Err(_) => Err(Refusal::unauthorized("session could not be verified in time")),
    }
}

fn json_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn refuse(hub: &Hub, r: &Refusal) -> Response<Full<Bytes>> {
    Stats::add(&hub.stats.handshakes_refused, 1);
    json_response(
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::UNAUTHORIZED),
        r.body(),
    )
}

async fn route(hub: Arc<Hub>, mut req: Request<Incoming>, tracker: TaskTracker) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == "/healthz" && req.method() == Method::GET {
        let s = hub.stats();
        return json_response(
            StatusCode::OK,
            serde_json::json!({ "status": "ok", "connections": s.connections, "rooms": s.rooms }).to_string(),
        );
    }
    let path_ok = hub.config.path.as_deref().is_none_or(|p| p == path);
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return if path_ok && hub.config.path.is_some() {
            json_response(
                StatusCode::UPGRADE_REQUIRED,
                r#"{"error":"upgrade-required","reason":"this path accepts WebSocket connections only"}"#.into(),
            )
        } else {
            json_response(StatusCode::NOT_FOUND, r#"{"error":"not-found"}"#.into())
        };
    }
    if !path_ok {
        return json_response(StatusCode::NOT_FOUND, r#"{"error":"not-found"}"#.into());
    }
    if hub.stopping.is_cancelled() {
        return json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"error":"shutting-down"}"#.into());
    }
    let (parts, body) = req.into_parts();
    let user = match auth::authenticate(&hub.config, &parts) {
        Ok(user) => user,
        Err(refusal) => return refuse(&hub, &refusal),
    };
    req = Request::from_parts(parts, body);
    // Plugin mode: Payload itself confirms the user (sessions, disabled or deleted users).
    let mut user_value = None;
    if let (Some(verifier), Some(user)) = (&hub.callbacks.verifier, &user) {
        let token = auth::find_credential_in(req.headers(), req.uri())
            .map(|(t, _)| t)
            .unwrap_or_default();
        match verify_user(&**verifier, token, (*user.claims).clone(), hub.config.authorize_timeout).await {
            Ok(v) => user_value = Some(v),
            Err(refusal) => return refuse(&hub, &refusal),
        }
    }
    let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(r) => r,
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": "bad-handshake", "reason": e.to_string() }).to_string(),
            )
        }
    };
    let peer = hub.new_peer(user, user_value);
    // Registered before the 101 goes out: once the client sees the socket open, the server
    // knows it (a logout right after the handshake must find it; frames queued meanwhile wait).
    hub.registry.add_peer(peer.clone());
    tracker.spawn(async move {
        match upgrade.await {
            Ok(ws) => {
                let upgraded = ws.into_inner().into_inner();
                connection::serve(hub, peer, upgraded).await;
            }
            Err(e) => {
                hub.registry.remove_peer(&peer);
                warn!("upgrade failed: {e}");
            }
        }
    });
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Full::new(Bytes::new()))
}
