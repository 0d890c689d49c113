//! The listener: its own tokio runtime, the accept loop, HTTP routes (`/healthz`, `/readyz`,
//! `/metrics`, the upgrade, 404/426 for the rest), the handshake checks, and a shutdown every
//! task hears.
//!
//! Shaped like mini-redis: one task accepts, and one task per connection. A connection's head
//! is read here ([`crate::net::head`]): an upgrade is answered in that task, which then serves the
//! socket (see [`crate::net::connection`]) and holds nothing of its handshake; anything else is
//! served by hyper. `shutdown()` drains: new upgrades get 503 and `/readyz` 503 while every socket is
//! sent 1001 after what is queued for it and given the grace to go; then the rest are cut and
//! the port is freed.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use crate::auth::{self, Refusal, User};
use crate::cluster::broker::redis::RedisBroker;
use crate::config::Config;
use crate::config::MetricsAccess;
use crate::delivery::dispatch::run_lane;
use crate::delivery::hub::Hub;
use crate::delivery::ingest::Ingest;
use crate::error::Error;
use crate::host::callbacks::Callbacks;
use crate::limits::{client_ip, Over, Slot};
use crate::net::connection::{self, Serving};
use crate::net::first_auth::Pending;
use crate::net::head::{Head, Rewind};
use crate::net::verify::{verify_capped, Unverified};
use crate::net::DRAIN_REASON;
use crate::protocol::close_code;
use crate::stats::Stats;
use crate::write::socket::Socket;
use crate::{debug, warn};

/// How long a client may take to send its HTTP request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a refused adopted connection is drained after the answer before it is closed.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// A running server: its runtimes, its hub, and the address it listens on.
pub struct Server {
    hub: Arc<Hub>,
    runtime: Option<Runtime>,
    /// The delivery lanes' own thread (see [`Server::start`]).
    dispatch: Option<Runtime>,
    /// Where the host's events come in (taken on the lanes' thread).
    ingest: Ingest,
    local_addr: SocketAddr,
    /// The accept loop and the HTTP connections before their upgrade.
    tracker: TaskTracker,
    /// The sockets, from their upgrade to their close: what a drain waits for.
    sockets: TaskTracker,
    /// Stops the accept loop (the port is freed), at the end of a drain.
    listening: tokio_util::sync::CancellationToken,
    /// Where `/metrics` listens when it has a listener of its own.
    metrics_addr: Option<SocketAddr>,
}

impl Server {
    /// Starts the runtime, binds the address (so a busy port fails here, clearly), and starts
    /// accepting.
    pub fn start(config: Config, callbacks: Callbacks) -> Result<Server, Error> {
        config.validate()?;
        // Every thread of the server's runtimes logs to the host's logger.
        let logger = callbacks.logger.clone();
        let log_to = move || {
            let logger = logger.clone();
            move || crate::log::set_thread_sink(logger.clone())
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads)
            .thread_name("payload-realtime")
            .on_thread_start(log_to())
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the runtime: {e}")))?;
        let addr = format!("{}:{}", config.host, config.port);
        let listener = {
            let _guard = runtime.enter();
            bind(&addr)?
        };
        let local_addr = listener.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
        let metrics_listener = match &config.metrics {
            Some(MetricsAccess::Listen { host, port }) => {
                let _guard = runtime.enter();
                let addr = if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                };
                Some(bind(&addr)?)
            }
            _ => None,
        };
        let metrics_addr = match &metrics_listener {
            Some(l) => Some(l.local_addr().map_err(|e| Error::Internal(e.to_string()))?),
            None => None,
        };
        // The lanes (which queue each event for its sockets) run on a thread of their own, not
        // among the sockets' tasks: an event emitted while the workers are still writing the
        // last one is queued at once (a socket still waiting for the last one then writes both
        // in one syscall), instead of the lane waiting its turn behind thousands of socket
        // tasks (measured in docs/design.md). Queueing is a small share of the CPU; the
        // writing stays on the workers.
        let dispatch = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("payload-realtime-dispatch")
            .on_thread_start(log_to())
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the dispatch runtime: {e}")))?;
        let (hub, lanes) = Hub::new(config, callbacks);
        let _ = hub
            .flushers
            .set(crate::write::flush::Flushers::new(runtime.handle().clone()));
        let tracker = TaskTracker::new();
        let sockets = TaskTracker::new();
        let listening = tokio_util::sync::CancellationToken::new();
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
                // Back on the control channel after an outage: what was revoked meanwhile is in
                // Redis, and this instance's open sockets are checked against it.
                let weak = Arc::downgrade(&hub);
                let on_reconnected = Arc::new(move || {
                    if let Some(hub) = weak.upgrade() {
                        tokio::spawn(async move { hub.recheck_sessions().await });
                    }
                });
                let namespace = crate::cluster::broker::redis::Namespace::new(&hub.config);
                let broker = RedisBroker::start(
                    &url,
                    namespace,
                    &hub.instance,
                    on_message,
                    on_subscribed,
                    on_reconnected,
                    hub.shutdown.clone(),
                )?;
                hub.set_broker(broker);
            }
            tracker.spawn(accept_loop(
                hub.clone(),
                listener,
                listening.clone(),
                tracker.clone(),
                sockets.clone(),
            ));
            if let Some(listener) = metrics_listener {
                runtime.spawn(metrics_loop(hub.clone(), listener));
            }
            runtime.spawn(crate::net::connection::sweep(hub.clone()));
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
            sockets,
            listening,
            metrics_addr,
        })
    }

    /// Where `/metrics` listens when it has a listener of its own (`metrics: { port }`).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
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

    /// Takes over a connection the host's own HTTP server accepted and read an upgrade request
    /// from (the stream comes from [`crate::net::adopt::dup_tcp_stream`]). The upgrade is checked
    /// and answered as on the server's own port (same refusals, same `path`), and an accepted
    /// socket runs the same connection code. `early` holds what the host read past the request
    /// head; it is acted on before anything read from the socket.
    pub fn adopt(&self, stream: std::net::TcpStream, head: RequestHead, early: Vec<u8>) -> Result<(), Error> {
        let runtime = self.runtime.as_ref().expect("runtime lives until drop");
        // The stream is registered with the reactor of the runtime it is entered in.
        let _guard = runtime.enter();
        stream
            .set_nonblocking(true)
            .map_err(|e| Error::CannotAdopt(format!("the socket cannot be made non-blocking: {e}")))?;
        let stream = TcpStream::from_std(stream)
            .map_err(|e| Error::CannotAdopt(format!("the socket cannot be registered: {e}")))?;
        let _ = stream.set_nodelay(true);
        self.sockets.spawn(ConnectionTask::new(open_adopted(
            self.hub.clone(),
            stream,
            head,
            Bytes::from(early),
            self.sockets.clone(),
        )));
        Ok(())
    }

    /// Graceful stop (a drain): new upgrades get `503 {"error":"shutting-down"}` and `/readyz`
    /// 503 from now on; every socket is sent 1001 ([`DRAIN_REASON`]) after what is queued for
    /// it and has `grace` (default: `drainTimeout`) to go; the rest are then cut, and every task
    /// is told to stop. The port is free when this returns.
    pub async fn shutdown(&self, grace: Option<Duration>) {
        let grace = grace.unwrap_or(self.hub.config.drain_timeout);
        let hub = self.hub.clone();
        let tracker = self.tracker.clone();
        let sockets = self.sockets.clone();
        let listening = self.listening.clone();
        let task = self.handle().spawn(async move {
            hub.stopping.cancel();
            let mut peers = hub.registry.all_sockets();
            for peer in &peers {
                hub.registry.remove_socket(peer);
                peer.outbound.close(close_code::GOING_AWAY, DRAIN_REASON);
            }
            sockets.close();
            if tokio::time::timeout(grace, sockets.wait()).await.is_err() {
                warn!(
                    "{} socket(s) had not closed when the drain timeout ({} ms) ended; cutting them",
                    sockets.len(),
                    grace.as_millis()
                );
                // With any that registered since (an upgrade answered as the drain began).
                peers.extend(hub.registry.all_sockets());
                for peer in &peers {
                    hub.registry.remove_socket(peer);
                    peer.outbound.cut();
                }
            }
            drop(peers);
            listening.cancel();
            tracker.close();
            let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
            hub.shutdown.cancel();
            tracker.wait().await;
            sockets.wait().await;
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
        // Linux gives an accepted socket its listener's TCP_NODELAY: one system call less per
        // connection (see `accept_loop`).
        #[cfg(target_os = "linux")]
        socket.set_nodelay(true).map_err(bind_error)?;
        #[cfg(target_os = "linux")]
        defer_accept(&socket).map_err(bind_error)?;
        match socket.bind(sa).and_then(|_| socket.listen(LISTEN_BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(bind_error(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
    })))
}

/// `TCP_DEFER_ACCEPT`: the kernel hands a connection to `accept` once its first bytes (the
/// request head) have arrived, not at the end of TCP's handshake. A connection's task then
/// finds its head there on its first read: no `recv` that answers `WouldBlock` and no wake-up
/// for the bytes, per connection (a connection storm's clients are accepted faster than their
/// requests arrive); and a client that connects and sends nothing holds no descriptor, task
/// or slot here until it does (or until `HEADER_TIMEOUT`, after which the kernel hands it over
/// anyway and the head's own timeout applies). Every client of this port speaks first.
#[cfg(target_os = "linux")]
fn defer_accept(socket: &tokio::net::TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let secs: libc::c_int = HEADER_TIMEOUT.as_secs() as libc::c_int;
    // SAFETY: the descriptor is the socket's own, open while `socket` is borrowed; the option
    // value is a `c_int` that lives across the call, and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
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

/// Shortest and longest wait after a failed `accept` (out of descriptors, most often): doubled
/// on each failure in a row, so a process at its limit is not woken to fail over and over.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

async fn accept_loop(
    hub: Arc<Hub>,
    listener: TcpListener,
    stop: tokio_util::sync::CancellationToken,
    tracker: TaskTracker,
    sockets: TaskTracker,
) {
    // Set while accepts fail: one log line when it starts and one when it ends, not one per try.
    let mut backoff: Option<Duration> = None;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => break,
        };
        match accepted {
            Ok((stream, remote)) => {
                if backoff.take().is_some() {
                    warn!("accepting connections again");
                }
                #[cfg(not(target_os = "linux"))]
                let _ = stream.set_nodelay(true);
                // Inherited from the listener (see `bind`); every test's connection checks it.
                #[cfg(target_os = "linux")]
                debug_assert!(stream.nodelay().unwrap_or(true), "TCP_NODELAY not inherited");
                tracker.spawn(ConnectionTask::new(open_tcp(
                    hub.clone(),
                    stream,
                    remote,
                    sockets.clone(),
                )));
            }
            Err(e) => {
                // Never stop listening: wait for descriptors to be freed and go on.
                let wait = match backoff {
                    None => {
                        warn!("accept failed ({e}); backing off until it succeeds");
                        ACCEPT_BACKOFF.0
                    }
                    Some(w) => (w * 2).min(ACCEPT_BACKOFF.1),
                };
                backoff = Some(wait);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => break,
                }
            }
        }
    }
    // Dropping the listener here frees the port.
}

/// A connection on the server's own port until its socket is open (or to its close, when it is
/// not one): a WebSocket upgrade is answered here, in the connection's task (see
/// [`crate::net::head`]); anything else is hyper's.
async fn open_tcp(
    hub: Arc<Hub>,
    mut stream: TcpStream,
    remote: SocketAddr,
    sockets: TaskTracker,
) -> Option<(Opened, Option<TaskTrackerToken>)> {
    match read_route(&hub, &mut stream, remote).await? {
        Route::Upgrade(checked, early) => {
            // Counted as a socket from here, as an adopted connection is: a drain waits for it.
            let socket = sockets.token();
            let serving = open_upgrade(hub, stream, checked, early).await?;
            Some((serving, Some(socket)))
        }
        Route::Http(read) => {
            let rewind = Rewind {
                prefix: read,
                inner: stream,
            };
            // Boxed: a handshake's future need not be as large as hyper's connection.
            Box::pin(serve_http(hub, rewind, remote, sockets)).await;
            None
        }
    }
}

/// Where a connection goes once its head is read.
enum Route {
    /// A WebSocket upgrade, answered here: its checks so far, and the bytes after its head.
    Upgrade(Result<Accepting, Refused>, Bytes),
    /// Anything else: hyper's, with the bytes read so far.
    Http(Bytes),
}

/// Reads a connection's head and decides where it goes; `None` when it goes nowhere (closed, or
/// no whole head within the timeout, as hyper's `header_read_timeout` did).
async fn read_route(hub: &Hub, stream: &mut TcpStream, remote: SocketAddr) -> Option<Route> {
    let head = tokio::select! {
        head = tokio::time::timeout(HEADER_TIMEOUT, crate::net::head::read(stream)) => head,
        _ = hub.shutdown.cancelled() => return None,
    };
    route_head(hub, head.ok()?, remote)
}

/// Decides, without waiting, where a connection goes (`None`: the client closed first). A
/// plain function, so that the head and its request are gone before anything is awaited.
fn route_head(hub: &Hub, head: Head, remote: SocketAddr) -> Option<Route> {
    match head {
        Head::Upgrade { req, read, len } => {
            let path = hub.config.path.as_deref();
            if ops_route(hub, &req, false).is_none()
                && !crate::net::sse::is_sse_request(path, &req)
                && !crate::net::longpoll::is_poll_request(path, &req)
            {
                let checked = check_read_upgrade(hub, Some(remote), Ok(req));
                return Some(Route::Upgrade(checked, read.slice(len..)));
            }
            // Not ours to answer here: hyper reads the head again.
            Some(Route::Http(read))
        }
        Head::Other(read) => Some(Route::Http(read)),
        Head::Closed => None,
    }
}

async fn serve_http(hub: Arc<Hub>, stream: Rewind, remote: SocketAddr, tracker: TaskTracker) {
    let service_hub = hub.clone();
    // Set when this connection carries an SSE stream: a drain lets the stream end itself.
    let streaming = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let service_streaming = streaming.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let hub = service_hub.clone();
        let tracker = tracker.clone();
        let streaming = service_streaming.clone();
        async move {
            let mut response = if crate::net::longpoll::is_poll_request(hub.config.path.as_deref(), &req) {
                poll_route(hub, req, remote).await.map(Either::Left)
            } else if crate::net::sse::is_sse_request(hub.config.path.as_deref(), &req) {
                streaming.store(true, std::sync::atomic::Ordering::Relaxed);
                sse_route(hub, req, remote, tracker).await
            } else {
                route(hub, req, remote, tracker).await.map(Either::Left)
            };
            // Every answer but an upgrade ends the connection: a client that is refused or
            // asks for something else does not keep a connection (and a task) open here.
            if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response)
        }
    });
    // During a drain a connection still gets its answer (a 503, `/readyz`), one per connection.
    let draining = hub.stopping.is_cancelled();
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(!draining)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let stop = if draining {
        hub.shutdown.clone()
    } else {
        hub.stopping.clone()
    };
    tokio::select! {
        _ = &mut conn => {}
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            if streaming.load(std::sync::atomic::Ordering::Relaxed) {
                // The drain closes the stream after what is queued for it, within its grace.
                tokio::select! {
                    _ = &mut conn => {}
                    _ = hub.shutdown.cancelled() => {}
                }
            } else {
                let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
            }
        }
    }
}

/// `GET <path>/sse`: the checks of an upgrade (credentials, Origin rule, limits, the host's
/// `verifyUser`, revoked sessions), then a stream that is a peer like a socket (see
/// [`crate::net::sse`]).
async fn sse_route(
    hub: Arc<Hub>,
    req: Request<Incoming>,
    remote: SocketAddr,
    sockets: TaskTracker,
) -> Response<Either<Full<Bytes>, crate::net::sse::SseBody>> {
    let (parts, _) = req.into_parts();
    let req = Request::from_parts(parts, ());
    match open_sse(&hub, &req, remote, &sockets).await {
        Ok(body) => crate::net::sse::response(&req, Either::Right(body)),
        Err(refused) => refused.response().map(Either::Left),
    }
}

async fn open_sse(
    hub: &Arc<Hub>,
    req: &Request<()>,
    remote: SocketAddr,
    sockets: &TaskTracker,
) -> Result<crate::net::sse::SseBody, Refused> {
    let (peer, slot, rooms, last) = admit_stream(hub, req, remote).await?;
    Ok(crate::net::sse::SseBody::open(
        hub.clone(),
        peer,
        slot,
        sockets.token(),
        rooms,
        last,
    ))
}

/// What a stream or a poll is, once admitted: its registered peer, its place in the limits,
/// its rooms, and where it stands in them (`Last-Event-ID`, `lastEventId=` or `cursor=`).
type Admitted = (Arc<Socket>, Slot, Vec<String>, crate::net::sse::Positions);

/// The checks of an upgrade for `GET <path>/sse` and `/poll`: path parameters, credentials,
/// the Origin rule, limits, the host's `verifyUser`, revoked sessions.
async fn admit_stream(hub: &Arc<Hub>, req: &Request<()>, remote: SocketAddr) -> Result<Admitted, Refused> {
    if hub.stopping.is_cancelled() {
        return Err(shutting_down(hub));
    }
    let bad = |reason: String| {
        hub.stats.refused("bad-request");
        Refused::new(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": "bad-request", "reason": reason }).to_string(),
        )
    };
    let rooms = crate::net::sse::rooms_of(req.uri().query(), hub.config.max_rooms_per_socket).map_err(bad)?;
    if auth::auth_in_message(req.uri()).map_err(|r| refuse(hub, &r))? {
        return Err(bad(
            "an SSE stream sends nothing: give the token in the Authorization header, the cookie or ?token=".into(),
        ));
    }
    let rules = hub.host_rules();
    let unknown: Vec<&str> = rooms
        .iter()
        .filter_map(|r| crate::protocol::collection_of_room(r))
        .filter(|c| !rules.collection_allowed(c))
        .collect();
    if !unknown.is_empty() {
        hub.stats.refused("unknown-collection");
        return Err(Refused::new(
            StatusCode::NOT_FOUND,
            serde_json::json!({
                "error": "unknown-collection",
                "reason": format!("not a realtime collection: {}", unknown.join(", ")),
            })
            .to_string(),
        ));
    }
    let user = auth::authenticate_in(&hub.config, req.headers(), req.uri()).map_err(|r| refuse(hub, &r))?;
    let token = match (&hub.callbacks.verifier, &user) {
        (Some(_), Some(_)) => auth::find_credential_in(req.headers(), req.uri()).map_or_else(String::new, |(t, _)| t),
        _ => String::new(),
    };
    let slot = take_slot(hub, req, user.as_ref(), Some(remote))?;
    let user_value = confirm_user(hub, user.as_ref(), token).await?;
    if hub.stopping.is_cancelled() {
        return Err(shutting_down(hub));
    }
    let last = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| crate::net::sse::query_param(req.uri().query(), "lastEventId"))
        .or_else(|| crate::net::sse::query_param(req.uri().query(), "cursor"))
        .map(|id| crate::net::sse::parse_last_event_id(&id, &rooms))
        .unwrap_or_default();
    let peer = hub.new_socket(user, user_value);
    hub.registry.add_socket(peer.clone());
    Ok((peer, slot, rooms, last))
}

/// `GET <path>/poll`: admitted as a stream, answered by [`crate::net::longpoll`].
async fn poll_route(hub: Arc<Hub>, req: Request<Incoming>, remote: SocketAddr) -> Response<Full<Bytes>> {
    let (parts, _) = req.into_parts();
    let req = Request::from_parts(parts, ());
    match admit_stream(&hub, &req, remote).await {
        Ok((peer, slot, rooms, last)) => {
            let counted = crate::net::sse::Counted::new(hub.clone());
            let body = crate::net::longpoll::answer(&hub, peer, rooms, last).await;
            drop((counted, slot));
            crate::net::sse::response(&req, Full::new(Bytes::from(body)))
        }
        Err(refused) => refused.response(),
    }
}

/// The listener of `/metrics` (with `/healthz` and `/readyz`) when it has a port of its own;
/// it answers until the end of a shutdown, so a drain can be watched.
async fn metrics_loop(hub: Arc<Hub>, listener: TcpListener) {
    loop {
        let stream = tokio::select! {
            a = listener.accept() => match a {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of descriptors, most often: the accept loop logs that.
                    tokio::time::sleep(ACCEPT_BACKOFF.1).await;
                    continue;
                }
            },
            _ = hub.shutdown.cancelled() => return,
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            let service_hub = hub.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let hub = service_hub.clone();
                async move {
                    Ok::<_, Infallible>(
                        ops_route(&hub, &req, true)
                            .unwrap_or_else(|| json_response(StatusCode::NOT_FOUND, r#"{"error":"not-found"}"#.into())),
                    )
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = hub.shutdown.cancelled() => {}
            }
        });
    }
}

/// `/healthz`, `/readyz` and `/metrics`, at the root and under the `path` option; `None` for
/// any other request. `own_listener`: the metrics listener, where `/metrics` needs no token.
/// Anonymous callers learn no counts: the probes answer a status only.
fn ops_route<B>(hub: &Hub, req: &Request<B>, own_listener: bool) -> Option<Response<Full<Bytes>>> {
    if req.method() != Method::GET {
        return None;
    }
    let full = req.uri().path();
    let path = match hub.config.path.as_deref().map(|p| p.trim_end_matches('/')) {
        Some(base) if !base.is_empty() && full.starts_with(base) && full[base.len()..].starts_with('/') => {
            &full[base.len()..]
        }
        _ => full,
    };
    match path {
        "/healthz" => Some(json_response(StatusCode::OK, r#"{"status":"ok"}"#.into())),
        "/readyz" => Some(match hub.not_ready() {
            None => json_response(StatusCode::OK, r#"{"status":"ok"}"#.into()),
            Some(why) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "status": why }).to_string(),
            ),
        }),
        "/metrics" => {
            let allowed = match &hub.config.metrics {
                _ if own_listener => true,
                Some(MetricsAccess::Token(token)) => bearer_matches(req, token),
                // Not served on this port at all.
                _ => return None,
            };
            if !allowed {
                let mut refused = json_response(
                    StatusCode::UNAUTHORIZED,
                    r#"{"error":"unauthorized","reason":"GET /metrics needs Authorization: Bearer <metrics.token>"}"#
                        .into(),
                );
                refused
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
                return Some(refused);
            }
            Some(
                Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)
                    .header(header::CACHE_CONTROL, "no-store")
                    .body(Full::new(Bytes::from(crate::metrics::render(&hub.stats()))))
                    .expect("static response parts are valid"),
            )
        }
        _ => None,
    }
}

/// Whether the request carries `Authorization: Bearer <token>`, compared in constant time.
fn bearer_matches<B>(req: &Request<B>, token: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.trim()
                .strip_prefix("Bearer ")
                .or_else(|| v.trim().strip_prefix("bearer "))
        })
    else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn json_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// An upgrade turned away: the status and JSON body of its answer.
struct Refused {
    status: StatusCode,
    body: String,
    /// Sent with `Retry-After: 1`: the refusal is about load, not about the client.
    retry_after: bool,
}

impl Refused {
    fn new(status: StatusCode, body: impl Into<String>) -> Refused {
        Refused {
            status,
            body: body.into(),
            retry_after: false,
        }
    }

    fn response(self) -> Response<Full<Bytes>> {
        let retry_after = self.retry_after;
        let mut response = json_response(self.status, self.body);
        if retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }

    /// The answer as bytes, for an adopted connection: its last, so it says so.
    fn into_bytes(self) -> Vec<u8> {
        let Refused {
            status,
            body,
            retry_after,
        } = self;
        let (mut parts, _) = Refused {
            status,
            body: String::new(),
            retry_after,
        }
        .response()
        .into_parts();
        parts.headers.insert(header::CONTENT_LENGTH, body.len().into());
        parts
            .headers
            .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        let mut out = head_bytes(&parts);
        out.extend_from_slice(body.as_bytes());
        out
    }
}

fn refuse(hub: &Hub, r: &Refusal) -> Refused {
    hub.stats.refused(r.error);
    Refused::new(
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::UNAUTHORIZED),
        r.body(),
    )
}

/// Takes the socket's place in the connection limits, or the refusal that says which is full.
fn take_slot<B>(hub: &Hub, req: &Request<B>, user: Option<&User>, remote: Option<SocketAddr>) -> Result<Slot, Refused> {
    let ip = remote.map(|r| {
        client_ip(
            r.ip(),
            req.headers(),
            &hub.config.trusted_proxies,
            hub.config.trust_loopback,
        )
    });
    hub.limits.reserve(user.map(|u| &u.key), ip).map_err(|over| {
        hub.stats.refused(match over {
            Over::Total => "max-connections",
            Over::User => "max-connections-per-user",
            Over::Ip => "max-connections-per-ip",
        });
        let (counter, status, reason) = match over {
            Over::Total => (
                &hub.stats.refused_max_connections,
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is at maxConnections",
            ),
            Over::User => (
                &hub.stats.refused_per_user,
                StatusCode::TOO_MANY_REQUESTS,
                "this user is at maxConnectionsPerUser",
            ),
            Over::Ip => (
                &hub.stats.refused_per_ip,
                StatusCode::TOO_MANY_REQUESTS,
                "this address is at maxConnectionsPerIp",
            ),
        };
        Stats::add(counter, 1);
        Refused::new(
            status,
            serde_json::json!({ "error": "too-many-connections", "reason": reason }).to_string(),
        )
    })
}

async fn route(
    hub: Arc<Hub>,
    mut req: Request<Incoming>,
    remote: SocketAddr,
    sockets: TaskTracker,
) -> Response<Full<Bytes>> {
    if let Some(answer) = ops_route(&hub, &req, false) {
        return answer;
    }
    let (user, token) = match check_upgrade(&hub, &req) {
        Ok(Checked::Now(user, token)) => (user, token),
        Ok(Checked::InMessage) => return upgrade_pending(hub, req, remote, sockets),
        Err(refused) => return refused.response(),
    };
    // Before `verifyUser`: a client past a limit costs no database read.
    let slot = match take_slot(&hub, &req, user.as_ref(), Some(remote)) {
        Ok(slot) => slot,
        Err(refused) => return refused.response(),
    };
    let user_value = match confirm_user(&hub, user.as_ref(), token).await {
        Ok(v) => v,
        Err(refused) => return refused.response(),
    };
    // A drain began while `verifyUser` ran: the socket would only be told to go.
    if hub.stopping.is_cancelled() {
        return shutting_down(&hub).response();
    }
    let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(r) => r,
        Err(e) => return bad_handshake(&hub, &e).response(),
    };
    let peer = hub.new_socket(user, user_value);
    // Registered before the 101 goes out: once the client sees the socket open, the server
    // knows it (a logout right after the handshake must find it; frames queued meanwhile wait).
    hub.registry.add_socket(peer.clone());
    sockets.spawn(async move {
        match upgrade.await {
            Ok(ws) => {
                let upgraded = ws.into_inner().into_inner();
                connection::serve(hub, peer, upgraded).await;
                drop(slot);
            }
            Err(e) => {
                hub.registry.remove_socket(&peer);
                warn!("upgrade failed: {e}");
            }
        }
    });
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Full::new(Bytes::new()))
}

/// Opens a socket that authenticates in its first message. It counts against
/// `maxConnections` and `maxConnectionsPerIp` from here, and against its user's limit once it
/// says who it is.
fn upgrade_pending(
    hub: Arc<Hub>,
    mut req: Request<Incoming>,
    remote: SocketAddr,
    sockets: TaskTracker,
) -> Response<Full<Bytes>> {
    let slot = match take_slot(&hub, &req, None, Some(remote)) {
        Ok(slot) => slot,
        Err(refused) => return refused.response(),
    };
    let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(r) => r,
        Err(e) => return bad_handshake(&hub, &e).response(),
    };
    let pending = Pending::new(&hub);
    sockets.spawn(async move {
        match upgrade.await {
            Ok(ws) => match connection::into_tcp(ws.into_inner().into_inner()) {
                Some((stream, early)) => crate::net::first_auth::serve(pending, stream, early, slot).await,
                None => warn!("upgraded connection is not a TCP stream; dropped"),
            },
            Err(e) => warn!("upgrade failed: {e}"),
        }
    });
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Full::new(Bytes::new()))
}

/// The checks of an upgrade that need no waiting, the same on the server's own port and for an
/// adopted connection: the path, the shutdown, the credential and the Origin rules. `Ok` gives
/// the user (`None`: anonymous) and the credential for the host's `verifyUser`; `Err` the
/// response that refuses the upgrade.
fn check_upgrade<B>(hub: &Hub, req: &Request<B>) -> Result<Checked, Refused> {
    let path_ok = hub.config.path.as_deref().is_none_or(|p| p == req.uri().path());
    if !fastwebsockets::upgrade::is_upgrade_request(req) {
        return Err(if path_ok && hub.config.path.is_some() {
            Refused::new(
                StatusCode::UPGRADE_REQUIRED,
                r#"{"error":"upgrade-required","reason":"this path accepts WebSocket connections only"}"#,
            )
        } else {
            Refused::new(StatusCode::NOT_FOUND, r#"{"error":"not-found"}"#)
        });
    }
    if !path_ok {
        return Err(Refused::new(StatusCode::NOT_FOUND, r#"{"error":"not-found"}"#));
    }
    if hub.stopping.is_cancelled() {
        return Err(shutting_down(hub));
    }
    if auth::auth_in_message(req.uri()).map_err(|r| refuse(hub, &r))? {
        // The credential comes in the first message; any other one is not looked at.
        auth::check_origin(&hub.config, req.headers()).map_err(|r| refuse(hub, &r))?;
        if hub.config.key.is_none() {
            let r = Refusal::unauthorized("the server has no secret configured and cannot verify tokens");
            return Err(refuse(hub, &r));
        }
        return Ok(Checked::InMessage);
    }
    let user = auth::authenticate_in(&hub.config, req.headers(), req.uri()).map_err(|r| refuse(hub, &r))?;
    let token = match (&hub.callbacks.verifier, &user) {
        (Some(_), Some(_)) => auth::find_credential_in(req.headers(), req.uri()).map_or_else(String::new, |(t, _)| t),
        _ => String::new(),
    };
    Ok(Checked::Now(user, token))
}

/// Who an upgrade belongs to, as far as its request says.
enum Checked {
    /// The user (`None`: anonymous) and the credential for `verifyUser`.
    Now(Option<User>, String),
    /// `?auth=message`: the socket opens unauthenticated and must send `{ type: "auth" }`
    /// first (see [`crate::net::first_auth`]).
    InMessage,
}

/// Plugin mode: Payload itself confirms the user (sessions, disabled or deleted users). `Ok`
/// gives what the host returned for the user (`None` without a verifier or a user).
///
/// Before that, the session is checked against the revoked ones (this instance's, then Redis'):
/// a revoked session gets 401, and when Redis cannot be asked in time, 503 `unavailable`
/// (never a possibly revoked session).
async fn confirm_user(hub: &Hub, user: Option<&User>, token: String) -> Result<Option<serde_json::Value>, Refused> {
    let Some(user) = user else { return Ok(None) };
    let sid = user.sid();
    session_allowed(hub, hub.check_session(user, sid).await)?;
    let Some(verifier) = &hub.callbacks.verifier else {
        return Ok(None);
    };
    let value = match verify_capped(hub, &**verifier, user, token).await {
        Ok(v) => v,
        Err(Unverified::Refused(refusal)) => return Err(refuse(hub, &refusal)),
        Err(Unverified::Busy(over)) => {
            Stats::add(&hub.stats.handshakes_refused, 1);
            let (status, reason) = match over {
                Over::User => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "this user is at maxVerifyingPerUser; retry shortly",
                ),
                _ => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the server is at maxVerifying; retry shortly",
                ),
            };
            let body = serde_json::json!({ "error": "too-many-verifications", "reason": reason });
            let mut refused = Refused::new(status, body.to_string());
            refused.retry_after = true;
            return Err(refused);
        }
    };
    // A logout may have been announced while the host was verifying.
    let token = crate::auth::revocations::Token::of(user, sid);
    if hub.revocations.known_revoked(&token, false) {
        return Err(refuse(hub, &Refusal::unauthorized("session revoked")));
    }
    Ok(Some(value))
}

/// The refusal for a session that is revoked, or that cannot be checked.
fn session_allowed(hub: &Hub, verdict: crate::auth::revocations::Verdict) -> Result<(), Refused> {
    use crate::auth::revocations::Verdict;
    match verdict {
        Verdict::Valid => Ok(()),
        Verdict::Revoked => Err(refuse(hub, &Refusal::unauthorized("session revoked"))),
        Verdict::Unavailable => {
            hub.stats.refused("unavailable");
            Err(Refused::new(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":"unavailable","reason":"revoked sessions cannot be checked now (Redis is unreachable)"}"#,
            ))
        }
    }
}

/// The answer to an upgrade during a drain.
fn shutting_down(hub: &Hub) -> Refused {
    hub.stats.refused("shutting-down");
    Refused::new(StatusCode::SERVICE_UNAVAILABLE, r#"{"error":"shutting-down"}"#)
}

fn bad_handshake(hub: &Hub, e: &fastwebsockets::WebSocketError) -> Refused {
    hub.stats.refused("bad-handshake");
    Refused::new(
        StatusCode::BAD_REQUEST,
        serde_json::json!({ "error": "bad-handshake", "reason": e.to_string() }).to_string(),
    )
}

/// An upgrade request's head as the host's HTTP server received it, for [`Server::adopt`]:
/// bytes as they came, header lines in order with duplicates kept.
#[derive(Debug, Clone, Default)]
pub struct RequestHead {
    pub method: Vec<u8>,
    /// The request target, e.g. `/realtime?token=...`.
    pub target: Vec<u8>,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RequestHead {
    /// The request hyper would have parsed from these bytes; `Err` says what it would refuse.
    fn into_request(self) -> Result<Request<()>, String> {
        let mut builder = Request::builder()
            .method(Method::from_bytes(&self.method).map_err(|_| "invalid method".to_string())?)
            .uri(hyper::Uri::try_from(self.target).map_err(|e| format!("invalid request target: {e}"))?);
        let headers = builder.headers_mut().expect("method and target are valid");
        for (name, value) in self.headers {
            let name = header::HeaderName::from_bytes(&name).map_err(|_| "invalid header name".to_string())?;
            let value = header::HeaderValue::from_bytes(&value).map_err(|_| "invalid header value".to_string())?;
            headers.append(name, value);
        }
        builder.body(()).map_err(|e| e.to_string())
    }
}

/// An adopted connection until its socket is open (or to its close, when it is not one).
async fn open_adopted(
    hub: Arc<Hub>,
    stream: TcpStream,
    head: RequestHead,
    early: Bytes,
    sockets: TaskTracker,
) -> Option<(Opened, Option<TaskTrackerToken>)> {
    let parsed = head.into_request();
    if let Ok(req) = &parsed {
        let path = hub.config.path.as_deref();
        if crate::net::sse::is_sse_request(path, req) || crate::net::longpoll::is_poll_request(path, req) {
            Box::pin(serve_adopted_stream(hub, stream, parsed.expect("matched Ok"), sockets)).await;
            return None;
        }
    }
    // The whole task is a socket's (spawned on the sockets' tracker).
    let checked = check_read_upgrade(&hub, stream.peer_addr().ok(), parsed);
    Some((open_upgrade(hub, stream, checked, early).await?, None))
}

/// An upgrade whose head was read here (on the server's own port, or by the host for an
/// adopted connection): answered, and the socket ready to serve once it is open.
async fn open_upgrade(
    hub: Arc<Hub>,
    mut stream: TcpStream,
    checked: Result<Accepting, Refused>,
    early: Bytes,
) -> Option<Opened> {
    // Before the socket is open it waits on nobody but the host's `verifyUser`, which a
    // shutdown does not wait for.
    let peer = match checked {
        Ok(accepting) => tokio::select! {
            peer = answer_upgrade(&hub, &mut stream, accepting) => peer,
            _ = hub.shutdown.cancelled() => None,
        },
        Err(refused) => {
            let _ = stream.write_all(&refused.into_bytes()).await;
            None
        }
    };
    match peer {
        Some((Answered::Open(peer), slot)) => Some(Opened::Serving(Serving::new(hub, peer, stream, early, Some(slot)))),
        Some((Answered::Pending(pending), slot)) => Some(Opened::FirstAuth {
            pending,
            stream,
            early,
            slot,
        }),
        None => {
            // Boxed: few connections are refused, and every handshake's future would otherwise
            // be as large as this one.
            Box::pin(linger(&hub, stream)).await;
            None
        }
    }
}

/// What a connection's opening ends in.
// Held only until the task takes it apart: boxing the socket would be an allocation per socket.
#[allow(clippy::large_enum_variant)]
enum Opened {
    /// An open socket.
    Serving(Serving),
    /// A socket that authenticates in its first message: the task's next opening future is
    /// [`crate::net::first_auth::open`], made once the handshake's own is freed (the SDK's
    /// default way in, so neither future is as large as both).
    FirstAuth {
        pending: Pending,
        stream: TcpStream,
        early: Bytes,
        slot: Slot,
    },
}

/// A connection's opening future, boxed: see [`ConnectionTask`].
type Opening = Pin<Box<dyn Future<Output = Option<(Opened, Option<TaskTrackerToken>)>> + Send>>;

/// The task of a connection whose head is read here: while it opens, a boxed future (the
/// handshake; or all of a connection that is not a socket); once a socket is open, the socket
/// itself, in the same place. An idle socket's task so holds the socket and nothing of its
/// handshake.
struct ConnectionTask {
    stage: Stage,
    // Counts the socket among those a drain waits for (the task itself may be tracked as an
    // HTTP connection).
    socket: Option<TaskTrackerToken>,
}

enum Stage {
    Opening(Opening),
    Serving(Serving),
    Done,
}

impl ConnectionTask {
    fn new(opening: impl Future<Output = Option<(Opened, Option<TaskTrackerToken>)>> + Send + 'static) -> Self {
        ConnectionTask {
            stage: Stage::Opening(Box::pin(opening)),
            socket: None,
        }
    }
}

impl Future for ConnectionTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Every field is `Unpin` (the opening is boxed, the socket's state holds no
        // self-reference).
        let this = self.get_mut();
        loop {
            match &mut this.stage {
                Stage::Opening(opening) => {
                    let Poll::Ready(opened) = opening.as_mut().poll(cx) else {
                        return Poll::Pending;
                    };
                    // Freed before anything else is made.
                    this.stage = Stage::Done;
                    let Some((opened, socket)) = opened else {
                        return Poll::Ready(());
                    };
                    if socket.is_some() {
                        this.socket = socket;
                    }
                    this.stage = match opened {
                        Opened::Serving(serving) => Stage::Serving(serving),
                        Opened::FirstAuth {
                            pending,
                            stream,
                            early,
                            slot,
                        } => Stage::Opening(Box::pin(async move {
                            let serving = crate::net::first_auth::open(pending, stream, early, slot).await?;
                            Some((Opened::Serving(serving), None))
                        })),
                    };
                }
                Stage::Serving(serving) => return Pin::new(serving).poll(cx),
                Stage::Done => return Poll::Ready(()),
            }
        }
    }
}

/// An upgrade whose head was read here, past every check that needs no waiting.
struct Accepting {
    checked: Checked,
    slot: Slot,
    /// The 101, to be sent once the socket is registered.
    response: Vec<u8>,
}

/// The checks of an upgrade whose head was read here (on the server's own port, or by the host
/// for an adopted connection) that need no waiting. Made before anything is awaited, so that
/// the request (a few hundred bytes) is not part of the connection's future; `Err` is the
/// answer that refuses it.
fn check_read_upgrade(
    hub: &Hub,
    remote: Option<SocketAddr>,
    parsed: Result<Request<()>, String>,
) -> Result<Accepting, Refused> {
    let req = parsed.map_err(|reason| {
        let body = serde_json::json!({ "error": "bad-request", "reason": reason }).to_string();
        Refused::new(StatusCode::BAD_REQUEST, body)
    })?;
    let checked = check_upgrade(hub, &req)?;
    let user = match &checked {
        Checked::Now(user, _) => user.as_ref(),
        Checked::InMessage => None,
    };
    let slot = take_slot(hub, &req, user, remote)?;
    // Before `verifyUser`: a request that cannot be upgraded costs no database read.
    let response = switching_protocols(&req).map_err(|e| bad_handshake(hub, &e))?;
    Ok(Accepting {
        checked,
        slot,
        response,
    })
}

/// A socket whose 101 is out.
enum Answered {
    /// Registered, as every open socket.
    Open(Arc<Socket>),
    /// Authenticates in its first message, and is counted as pending until then.
    Pending(Pending),
}

/// Answers an upgrade that passed [`check_read_upgrade`]: `Some` once the 101 is out.
async fn answer_upgrade(hub: &Arc<Hub>, stream: &mut TcpStream, accepting: Accepting) -> Option<(Answered, Slot)> {
    let Accepting {
        checked,
        slot,
        response,
    } = accepting;
    let who = match checked {
        Checked::Now(user, token) => match confirm_user(hub, user.as_ref(), token).await {
            Ok(value) => Some((user, value)),
            Err(refused) => {
                let _ = stream.write_all(&refused.into_bytes()).await;
                return None;
            }
        },
        Checked::InMessage => None,
    };
    // A drain began while `verifyUser` ran: the socket would only be told to go.
    if hub.stopping.is_cancelled() {
        let _ = stream.write_all(&shutting_down(hub).into_bytes()).await;
        return None;
    }
    let Some((user, user_value)) = who else {
        let pending = Pending::new(hub);
        if let Err(e) = stream.write_all(&response).await {
            debug!("upgrade not answered: {e}");
            return None;
        }
        return Some((Answered::Pending(pending), slot));
    };
    let peer = hub.new_socket(user, user_value);
    // Registered before the 101 goes out, as on the server's own port.
    hub.registry.add_socket(peer.clone());
    if let Err(e) = stream.write_all(&response).await {
        hub.registry.remove_socket(&peer);
        debug!("upgrade not answered: {e}");
        return None;
    }
    Some((Answered::Open(peer), slot))
}

/// An SSE stream or a long poll the host's HTTP server read the request of (its `'request'`
/// event): admitted and answered as on the server's own port, the response written here
/// (`Connection: close`, the body until the end of the connection).
async fn serve_adopted_stream(hub: Arc<Hub>, mut stream: TcpStream, req: Request<()>, sockets: TaskTracker) {
    let Ok(remote) = stream.peer_addr() else { return };
    let admitted = tokio::select! {
        a = admit_stream(&hub, &req, remote) => a,
        _ = hub.shutdown.cancelled() => return,
    };
    let (peer, slot, rooms, last) = match admitted {
        Ok(admitted) => admitted,
        Err(refused) => {
            let _ = stream.write_all(&refused.into_bytes()).await;
            return linger(&hub, stream).await;
        }
    };
    let closing = |mut parts: hyper::http::response::Parts| {
        parts
            .headers
            .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        parts
    };
    if crate::net::longpoll::is_poll_request(hub.config.path.as_deref(), &req) {
        let counted = crate::net::sse::Counted::new(hub.clone());
        let body = crate::net::longpoll::answer(&hub, peer, rooms, last).await;
        drop((counted, slot));
        let (mut parts, ()) = crate::net::sse::response(&req, ()).into_parts();
        parts.headers.insert(header::CONTENT_LENGTH, body.len().into());
        let mut out = head_bytes(&closing(parts));
        out.extend_from_slice(body.as_bytes());
        let _ = stream.write_all(&out).await;
        return linger(&hub, stream).await;
    }
    let body = crate::net::sse::SseBody::open(hub.clone(), peer, slot, sockets.token(), rooms, last);
    let (parts, ()) = crate::net::sse::response(&req, ()).into_parts();
    let (mut rd, mut wr) = stream.into_split();
    if wr.write_all(&head_bytes(&closing(parts))).await.is_err() {
        return;
    }
    let mut body = std::pin::pin!(body);
    let mut scratch = [0u8; 512];
    loop {
        let frame = tokio::select! {
            f = std::future::poll_fn(|cx| hyper::body::Body::poll_frame(body.as_mut(), cx)) => f,
            // The client went away (or sent something a stream does not read).
            r = rd.read(&mut scratch) => match r {
                Ok(n) if n > 0 => continue,
                _ => break,
            },
            _ = hub.shutdown.cancelled() => break,
        };
        let Some(Ok(frame)) = frame else { break };
        if let Ok(data) = frame.into_data() {
            if wr.write_all(&data).await.is_err() {
                break;
            }
        }
    }
    let _ = wr.shutdown().await;
}

/// Closes a connection that was answered with a refusal: our side is shut down first and what
/// the client still sends is read and dropped for a moment, since closing with unread bytes
/// resets the connection, and a reset can reach the client before it has read the answer.
async fn linger(hub: &Hub, mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let drain = async {
        // On the heap: a future that holds it is not a kilobyte larger.
        let mut buf = vec![0u8; 1024];
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    tokio::select! {
        _ = tokio::time::timeout(REFUSAL_LINGER, drain) => {}
        _ = hub.shutdown.cancelled() => {}
    }
}

/// The 101 that accepts an upgrade, as bytes, or why the request cannot have one: the checks
/// and the answer of `fastwebsockets::upgrade::upgrade`, written straight into one buffer
/// without building an `http::Response` (a handshake answered here has no hyper connection,
/// so its upgrade future would be unused). A test holds the two to the same bytes.
fn switching_protocols<B>(req: &Request<B>) -> Result<Vec<u8>, fastwebsockets::WebSocketError> {
    use base64::Engine;
    use sha1::Digest;
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(fastwebsockets::WebSocketError::MissingSecWebSocketKey)?;
    if req.headers().get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(fastwebsockets::WebSocketError::InvalidSecWebsocketVersion);
    }
    let mut sha1 = sha1::Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let mut accept = [0u8; 28];
    let n = base64::engine::general_purpose::STANDARD
        .encode_slice(sha1.finalize(), &mut accept)
        .expect("a SHA-1 is 28 base64 characters");
    const HEAD: &[u8] =
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: ";
    let mut out = Vec::with_capacity(HEAD.len() + n + 4);
    out.extend_from_slice(HEAD);
    out.extend_from_slice(&accept[..n]);
    out.extend_from_slice(b"\r\n\r\n");
    Ok(out)
}

/// A response's status line and headers as HTTP/1.1 bytes, for an adopted connection (hyper
/// does not serve it).
fn head_bytes(parts: &hyper::http::response::Parts) -> Vec<u8> {
    let status = parts.status;
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream as StdStream;

    use super::*;
    use crate::auth::tests::{payload_token, SECRET};
    use crate::config::PayloadKey;

    fn start() -> Server {
        let config = Config {
            host: "127.0.0.1".into(),
            port: 0,
            key: Some(PayloadKey::from_payload_secret(SECRET)),
            worker_threads: 1,
            ..Config::default()
        };
        Server::start(config, Callbacks::default()).unwrap()
    }

    #[test]
    fn the_101_written_here_is_fastwebsockets_own() {
        let request = |key: Option<&str>, version: &str| {
            let mut b = Request::builder().uri("/ws").header("sec-websocket-version", version);
            if let Some(key) = key {
                b = b.header("Sec-WebSocket-Key", key);
            }
            b.body(()).unwrap()
        };
        for key in ["dGhlIHNhbXBsZSBub25jZQ==", "x", ""] {
            let mut req = request(Some(key), "13");
            let ours = switching_protocols(&req).unwrap();
            let (theirs, _) = fastwebsockets::upgrade::upgrade(&mut req).unwrap();
            assert_eq!(ours, head_bytes(&theirs.into_parts().0), "key {key:?}");
        }
        // RFC 6455's example.
        let ours = switching_protocols(&request(Some("dGhlIHNhbXBsZSBub25jZQ=="), "13")).unwrap();
        assert!(String::from_utf8(ours)
            .unwrap()
            .contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"));
        for (key, version) in [(None, "13"), (Some("x"), "12"), (Some("x"), "")] {
            let mut req = request(key, version);
            let ours = switching_protocols(&req).unwrap_err().to_string();
            let theirs = fastwebsockets::upgrade::upgrade(&mut req).unwrap_err().to_string();
            assert_eq!(ours, theirs);
        }
    }

    /// The listener hands over connections once their first bytes are in (`TCP_DEFER_ACCEPT`),
    /// and a client that connects, waits, and then sends its head is answered all the same.
    #[cfg(target_os = "linux")]
    #[test]
    fn connections_are_accepted_with_their_first_bytes() {
        use std::os::fd::AsRawFd;
        let server = start();
        let listener = {
            let _guard = server.handle().enter();
            bind("127.0.0.1:0").unwrap()
        };
        let mut secs: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the descriptor is the listener's own, open while it is borrowed; `secs` and
        // `len` are writable and `len` says how large `secs` is.
        let rc = unsafe {
            libc::getsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&mut secs as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        assert!(secs > 0, "TCP_DEFER_ACCEPT is {secs}");
        drop(listener);

        let mut client = StdStream::connect(server.local_addr()).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let head = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: JWT {}\r\n\r\n",
            payload_token(1, 60)
        );
        client.write_all(head.as_bytes()).unwrap();
        let got = read_until(&mut client, |b| b.windows(4).any(|w| w == b"\r\n\r\n"));
        assert!(got.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&got));
    }

    /// A connection as the host's server holds it: the client's end, and the host's.
    fn accepted() -> (StdStream, StdStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = StdStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (host, _) = listener.accept().unwrap();
        (client, host)
    }

    /// The upgrade request the host read, with a token in the header as a client sends it.
    fn request(token: &str) -> RequestHead {
        let headers = [
            ("Host", "127.0.0.1:3000".to_string()),
            ("Upgrade", "websocket".into()),
            ("Connection", "Upgrade".into()),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==".into()),
            ("Sec-WebSocket-Version", "13".into()),
            ("Authorization", format!("JWT {token}")),
        ];
        RequestHead {
            method: b"GET".to_vec(),
            target: b"/realtime".to_vec(),
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.into_bytes()))
                .collect(),
        }
    }

    /// A client's text frame (masked, as clients must).
    fn text_frame(text: &str) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | text.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    /// Reads until `done` says what came is enough; returns all of it.
    fn read_until(client: &mut StdStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !done(&got) {
            let n = client.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// The server's unmasked frames after the response head: (opcode, payload).
    fn frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while rest.len() >= 2 && rest.len() >= 2 + (rest[1] & 0x7f) as usize {
            let len = (rest[1] & 0x7f) as usize;
            out.push((rest[0] & 0x0f, rest[2..2 + len].to_vec()));
            rest = &rest[2 + len..];
        }
        out
    }

    fn head_end(bytes: &[u8]) -> Option<usize> {
        bytes.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
    }

    /// Checks that `got` starts with a 101 for RFC 6455's example key (its accept value is the
    /// RFC's); where the head ends.
    fn accepted_with_rfc_key(got: &[u8]) -> usize {
        let at = head_end(got).unwrap();
        let head = String::from_utf8_lossy(&got[..at]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101 switching protocols\r\n"), "{head}");
        assert!(
            head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
            "{head}"
        );
        at
    }

    #[test]
    fn a_head_that_comes_in_pieces_is_answered_and_the_bytes_behind_it_kept() {
        let server = start();
        let mut client = StdStream::connect(server.local_addr()).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        client.set_nodelay(true).unwrap();
        let token = payload_token(7, 60);
        // Long enough to take more than one read of the head (a cookie-laden browser's).
        let filler = "x".repeat(6000);
        let head = format!(
            "GET /?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Filler: {filler}\r\n\r\n"
        );
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&text_frame(r#"{"type":"ping","id":1}"#));
        for piece in bytes.chunks(700) {
            client.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        let got = read_until(&mut client, |b| {
            head_end(b).is_some_and(|at| !frames(&b[at..]).is_empty())
        });
        let at = accepted_with_rfc_key(&got);
        let (_, pong) = frames(&got[at..]).remove(0);
        assert_eq!(pong, br#"{"type":"pong","id":1}"#);
    }

    #[test]
    fn an_adopted_connection_acts_on_the_hosts_bytes_first() {
        let server = start();
        let (mut client, host) = accepted();
        // The host read the request and the client's first message behind it; the second is
        // still in the socket when the connection is handed over.
        let early = text_frame(r#"{"type":"ping","id":1}"#);
        client.write_all(&text_frame(r#"{"type":"ping","id":2}"#)).unwrap();
        server.adopt(host, request(&payload_token(7, 60)), early).unwrap();

        let pongs = |b: &[u8]| head_end(b).is_some_and(|at| frames(&b[at..]).len() >= 2);
        let got = read_until(&mut client, pongs);
        let at = accepted_with_rfc_key(&got);
        let replies: Vec<String> = frames(&got[at..])
            .into_iter()
            .map(|(_, p)| String::from_utf8(p).unwrap())
            .collect();
        assert_eq!(replies, [r#"{"type":"pong","id":1}"#, r#"{"type":"pong","id":2}"#]);
        assert_eq!(server.hub().stats().connections, 1);

        // A shutdown closes it like the sockets of the server's own port.
        server.handle().block_on(server.shutdown(None));
        let close = read_until(&mut client, |b| !frames(b).is_empty());
        let (opcode, payload) = frames(&close).remove(0);
        assert_eq!(opcode, 0x8);
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), close_code::GOING_AWAY);
    }

    #[test]
    fn an_adopted_connection_is_refused_as_on_the_servers_own_port() {
        let server = start();
        let (mut client, host) = accepted();
        server.adopt(host, request("not-a-token"), Vec::new()).unwrap();
        let mut got = Vec::new();
        // Answered, then closed by the server: the read ends.
        client.read_to_end(&mut got).unwrap();
        let text = String::from_utf8(got).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
        assert!(head.contains("content-type: application/json\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}\r\n", body.len())), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert_eq!(body, Refusal::unauthorized("malformed token").body());
        assert_eq!(server.hub().stats().connections, 0);
        assert_eq!(server.hub().stats().handshakes_refused, 1);

        // A request the server would not take on its own port either: not an upgrade.
        let (mut client, host) = accepted();
        let mut plain = request(&payload_token(7, 60));
        plain.headers.retain(|(k, _)| k != b"Upgrade");
        server.adopt(host, plain, Vec::new()).unwrap();
        let mut got = String::new();
        client.read_to_string(&mut got).unwrap();
        assert!(got.starts_with("HTTP/1.1 404 Not Found\r\n"), "{got}");
        assert!(got.ends_with(r#"{"error":"not-found"}"#), "{got}");
    }

    #[cfg(unix)]
    #[test]
    fn a_duplicated_descriptor_is_served_after_the_host_closes_its_own() {
        use std::os::fd::AsRawFd;

        let server = start();
        let (mut client, host) = accepted();
        // SAFETY: `host` is open for the call.
        let copy = unsafe { crate::net::adopt::dup_tcp_stream(host.as_raw_fd()) }.unwrap();
        drop(host);
        server
            .adopt(copy, request(&payload_token(7, 60)), text_frame(r#"{"type":"ping"}"#))
            .unwrap();
        let got = read_until(&mut client, |b| {
            head_end(b).is_some_and(|at| !frames(&b[at..]).is_empty())
        });
        let at = head_end(&got).unwrap();
        assert_eq!(frames(&got[at..])[0].1, br#"{"type":"pong"}"#);
    }
}
