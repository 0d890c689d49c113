//! One upgraded socket, from its first frame to its close, in one task: reading frames, writing
//! the outbound queue, pings, the idle timer, token expiry and the close handshake.
//!
//! Why one task, polled by hand: an idle socket is most of what the server holds, and fan-out
//! wakes every socket for every burst. A reader task and a writer task doubled what a socket
//! costs; a `select!` over a dozen futures re-registered each of them (several locks) on every
//! wake-up. Here the task polls the socket's readiness (one waker slot per direction) and its
//! outbound queue (an `AtomicWaker`); a timer only once it closes (the close deadline). The idle
//! check and token expiry of every socket are one sweep's ([`sweep`]), which queues a ping or a
//! close and so wakes the socket. Reads go into a buffer shared by the thread's sockets (see
//! [`crate::protocol::frame_reader`]); writes are non-blocking `writev`s of the queued batch. An
//! idle socket holds no buffer and no timer.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::{MissedTickBehavior, Sleep};

use crate::auth::now_secs;
use crate::delivery::hub::Hub;
use crate::limits::Slot;
use crate::net::requests::Requests;
use crate::protocol::frame_reader::{FrameReader, Message};
use crate::protocol::{self, close_code, ErrorCode};
use crate::stats::Stats;
use crate::write::outbound::{Batch, Flush, Push, EVICTION_GRACE};
use crate::write::socket::Socket;
use crate::{debug, warn};

/// How long to wait for the client's close frame after ours is out before dropping the
/// connection (a close still being written has `EVICTION_GRACE`).
const CLOSE_HANDSHAKE_WAIT: Duration = Duration::from_secs(2);

/// Size of the read buffer each runtime thread shares among its sockets.
const READ_CHUNK: usize = 64 * 1024;

/// Longest time between two sweeps: token expiry is checked to the second.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Reads per wake-up before the task lets the others run (a fast sender cannot starve them).
const READS_PER_WAKE: usize = 8;

thread_local! {
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// Runs a socket until it closes (the handshake registered the peer). It is removed from every room
/// before this returns.
pub(crate) async fn serve(hub: Arc<Hub>, peer: Arc<Socket>, upgraded: Upgraded) {
    let Some((stream, early)) = into_tcp(upgraded) else {
        hub.registry.remove_socket(&peer);
        warn!("upgraded connection is not a TCP stream; dropped");
        return;
    };
    Serving::new(hub, peer, stream, early, None).await;
}

/// The TCP stream under hyper's upgraded connection, and what hyper read past the handshake.
/// That `Bytes` shares the allocation of hyper's whole read buffer, so it must not outlive the
/// first step of whoever reads it.
pub(crate) fn into_tcp(upgraded: Upgraded) -> Option<(TcpStream, Bytes)> {
    let parts = upgraded.downcast::<TokioIo<crate::net::head::Rewind>>().ok()?;
    let rewind = parts.io.into_inner();
    // Hyper read the bytes put back before anything else, so they are gone by now; should any
    // be left, they come first.
    let early = if rewind.prefix.is_empty() {
        parts.read_buf
    } else {
        [rewind.prefix, parts.read_buf].concat().into()
    };
    Some((rewind.inner, early))
}

pin_project_lite::pin_project! {
    /// A socket from its open to its close, as a future written out by hand. `early` holds the
    /// bytes the client sent right after its handshake that were read before the socket was
    /// handed over (by hyper, by the host whose connection was adopted, or by the server's own
    /// head reader); they are acted on before anything read from the stream.
    ///
    /// Written out by hand: an idle socket is
    /// most of what the server holds, and this is all its task holds (an `async fn` would also
    /// keep room for its arguments and for every step before the socket opened).
    pub(crate) struct Serving {
        // `None` once the connection is over.
        conn: Option<Connection>,
        // The socket's place under the connection limits, given back when it closes (boxed:
        // this is in every idle socket's task, which tokio sizes in steps of 128 bytes).
        slot: Option<Box<Slot>>,
    }
}

impl Serving {
    /// The socket is open (the handshake registered the peer): from here fan-out may write to
    /// it. `early` is acted on at once.
    pub(crate) fn new(
        hub: Arc<Hub>,
        peer: Arc<Socket>,
        stream: TcpStream,
        early: Bytes,
        slot: Option<Slot>,
    ) -> Serving {
        Stats::add(&hub.stats.connections, 1);
        Stats::add(&hub.stats.connections_total, 1);
        peer.sweep_timers();
        // From here fan-out may write to the socket itself (`Outbound::write_through`); the
        // connection's `Drop` takes that back before the stream closes.
        #[cfg(unix)]
        peer.outbound.attach(std::os::fd::AsRawFd::as_raw_fd(&stream));
        let mut conn = Connection::new(hub, peer, stream);
        conn.requests.on_connect();
        if !early.is_empty() {
            conn.on_bytes(&early);
        }
        drop(early);
        Serving {
            conn: Some(conn),
            slot: slot.map(Box::new),
        }
    }
}

impl Future for Serving {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let Some(conn) = this.conn else {
            return Poll::Ready(());
        };
        if conn.poll_run(cx).is_pending() {
            return Poll::Pending;
        }
        let (hub, peer) = (conn.requests.hub().clone(), conn.requests.peer().clone());
        // Dropping the stream closes the TCP connection.
        *this.conn = None;
        hub.registry.remove_socket(&peer);
        if hub.stats.connections.fetch_sub(1, Ordering::Relaxed) == 1 {
            hub.memory.on_idle(hub.stats.connections_total.load(Ordering::Relaxed));
        }
        drop(this.slot.take());
        debug!("socket {} closed", hub.public_id(&peer));
        Poll::Ready(())
    }
}

/// What a socket's task holds: kept small, since tokio sizes every task in steps of 128 bytes
/// and an idle socket is mostly this. The hub and the socket are the request state's.
struct Connection {
    stream: TcpStream,
    frames: FrameReader,
    requests: Requests,
    /// Frames taken from the outbound queue and not yet written; made when there are some
    /// (fan-out's flusher writes most bursts itself).
    batch: Option<Box<Batch>>,
    /// Still reading frames: false once the client's close arrived or the stream broke a rule.
    reading: bool,
    /// Our close frame is written and our side shut down.
    write_closed: bool,
    /// When the connection must be over: a close being sent, or a close handshake under way.
    /// Made when it closes: an open socket's timers are the sweep's.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Drop for Connection {
    /// Runs before the stream (a field) is dropped, on every way out, a panic or a cancelled
    /// task too: no flusher writes to the descriptor once it may be closed.
    fn drop(&mut self) {
        self.requests.peer().outbound.detach();
    }
}

/// What the reads found.
enum ReadEnd {
    /// The socket has nothing more for now (its readiness is cleared).
    Drained,
    /// Read its share for this wake-up; more may be waiting.
    Busy,
    /// The client is gone (end of stream or a reset).
    Gone,
    /// The client answered our close: the handshake is over.
    CloseAnswered,
}

impl Connection {
    fn new(hub: Arc<Hub>, peer: Arc<Socket>, stream: TcpStream) -> Connection {
        Connection {
            frames: FrameReader::new(hub.config.max_payload_length),
            requests: Requests::new(hub, peer),
            stream,
            batch: None,
            reading: true,
            write_closed: false,
            deadline: None,
        }
    }

    /// The socket's whole life: reads, writes and the close deadline, until each of them waits;
    /// ready when the connection is over.
    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.requests.peer().outbound.is_cut() {
            return Poll::Ready(());
        }
        while self.reading {
            match self.stream.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => match self.on_readable() {
                    // Poll again: that registers for the next bytes.
                    ReadEnd::Drained => {}
                    ReadEnd::Busy => {
                        cx.waker().wake_by_ref();
                        break;
                    }
                    ReadEnd::Gone | ReadEnd::CloseAnswered => return Poll::Ready(()),
                },
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => break,
            }
        }
        if self.poll_writes(cx).is_ready() {
            return Poll::Ready(());
        }
        if self.deadline.is_none() && (!self.reading || self.requests.peer().outbound.is_closing()) {
            // A close is on its way out (ours, or the answer to the client's): it has this
            // long, then the connection is dropped.
            self.set_deadline(EVICTION_GRACE);
        }
        match &mut self.deadline {
            Some(deadline) => deadline.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }

    /// The connection is over in `after`, whatever is left to do.
    fn set_deadline(&mut self, after: Duration) {
        let at = tokio::time::Instant::now() + after;
        match &mut self.deadline {
            Some(deadline) => deadline.as_mut().reset(at),
            None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// Writes what is queued until the queue is empty or the socket's buffer is full. Ready when
    /// the connection is over (a write failed, or our close went out after the client's).
    fn poll_writes(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.write_closed {
            return Poll::Pending;
        }
        let out = &self.requests.peer().outbound;
        // Registered before looking at the queue: a push after the look wakes the task.
        out.register(cx.waker());
        loop {
            let batch = match &mut self.batch {
                Some(batch) if !batch.is_empty() => batch,
                _ => {
                    // Fan-out wakes a socket once its whole burst is queued
                    // (`write::flush::Wakes`): what is there now is the burst, taken at once.
                    let batch = self.batch.get_or_insert_with(Box::default);
                    out.take_into(batch);
                    if batch.is_empty() {
                        self.batch = None;
                        return Poll::Pending;
                    }
                    batch
                }
            };
            match batch.write_to(out, &self.stream) {
                Err(_) => return Poll::Ready(()),
                Ok(Flush::Blocked) => match self.stream.poll_write_ready(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                },
                Ok(Flush::Done) if batch.closes => {
                    // Our close is out: nothing more is sent.
                    self.write_closed = true;
                    let _ = Pin::new(&mut self.stream).poll_shutdown(cx);
                    if !self.reading {
                        return Poll::Ready(());
                    }
                    self.set_deadline(CLOSE_HANDSHAKE_WAIT);
                    return Poll::Pending;
                }
                Ok(Flush::Done) => {}
            }
        }
    }

    /// Reads what the socket has, into the thread's shared buffer, and acts on each message.
    fn on_readable(&mut self) -> ReadEnd {
        READ_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            for _ in 0..READS_PER_WAKE {
                match crate::net::head::read_drained(&self.stream, &mut buf[..]) {
                    Ok(0) => return ReadEnd::Gone,
                    Ok(n) => {
                        if let Some(end) = self.on_bytes(&buf[..n]) {
                            return end;
                        }
                        if !self.reading {
                            return ReadEnd::Drained;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return ReadEnd::Drained,
                    Err(_) => return ReadEnd::Gone,
                }
            }
            ReadEnd::Busy
        })
    }

    /// Feeds bytes to the frame reader and acts on what comes out; `Some` when the connection
    /// is over.
    fn on_bytes(&mut self, bytes: &[u8]) -> Option<ReadEnd> {
        let (hub, peer) = (self.requests.hub().clone(), self.requests.peer().clone());
        let (hub, peer) = (&hub, &peer);
        let Connection {
            frames,
            requests,
            reading,
            write_closed,
            ..
        } = self;
        let out = &peer.outbound;
        let mut close_answered = false;
        let mut any = false;
        Stats::add(&hub.stats.bytes_in, bytes.len() as u64);
        let result = frames.feed(bytes, &mut |message| {
            any = true;
            match message {
                Message::Text(payload) | Message::Binary(payload) if hub.config.echo_mode => {
                    let opcode = if matches!(message, Message::Text(_)) { 0x1 } else { 0x2 };
                    out.push(protocol::frame(opcode, payload));
                }
                // After our close (or during it) data is no longer acted on.
                _ if *write_closed && !matches!(message, Message::Close(_)) => {}
                Message::Text(text) if !out.is_closing() => requests.on_text(text),
                Message::Binary(_) if !out.is_closing() => {
                    Stats::add(&hub.stats.messages_in, 1);
                    if !requests.admit() {
                        return;
                    }
                    requests.reply(protocol::error(
                        ErrorCode::BadMessage,
                        "binary frames are not supported; send JSON text",
                        None,
                    ));
                }
                Message::Text(_) | Message::Binary(_) | Message::Pong => {}
                // Pings count against the rate too: answering is work, and a flood of them is
                // a flood like any other.
                Message::Ping(payload) => {
                    if !out.is_closing()
                        && requests.admit()
                        && out.push_control(protocol::frame(0xA, payload)) == Push::Evicted
                    {
                        evicted(hub, peer);
                    }
                }
                Message::Close(code) => {
                    *reading = false;
                    if *write_closed {
                        close_answered = true;
                        return;
                    }
                    // Answer with the same code (RFC 6455 5.5.1), dropping what is queued.
                    hub.registry.remove_socket(peer);
                    out.close_now(match code {
                        Some(code) => protocol::close_frame(code, ""),
                        None => protocol::frame(0x8, b""),
                    });
                }
            }
        });
        if any {
            peer.touch(hub.now_ms());
        }
        if let Err(e) = result {
            *reading = false;
            if *write_closed {
                return Some(ReadEnd::Gone);
            }
            hub.registry.remove_socket(peer);
            let (code, reason) = e.close();
            out.close_now(protocol::close_frame(code, reason));
        }
        close_answered.then_some(ReadEnd::CloseAnswered)
    }
}

/// A control frame of ours evicted the socket (its client takes nothing): counted and taken out
/// of every room as fan-out does for data.
fn evicted(hub: &Hub, peer: &Arc<Socket>) {
    Stats::add(&hub.stats.slow_consumers, 1);
    hub.registry.remove_socket(peer);
}

/// How often the sweep runs for a given `idleTimeout`.
fn idle_period(idle: Duration) -> Duration {
    (idle / 4).max(Duration::from_millis(100))
}

/// The idle check and token expiry of every open WebSocket, in one task for the server. A timer
/// in each socket's task held over a hundred bytes in every idle socket and woke each socket on
/// its own (every `idleTimeout / 4`); the sweep reads two atomics per socket and wakes only the
/// sockets it queues a ping or a close for.
pub(crate) async fn sweep(hub: Arc<Hub>) {
    let every = hub
        .config
        .idle_timeout
        .map_or(SWEEP_EVERY, |idle| idle_period(idle).min(SWEEP_EVERY));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut due = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => sweep_once(&hub, &mut due),
            _ = hub.shutdown.cancelled() => return,
        }
    }
}

/// What the sweep found due for a socket.
enum Due {
    Expired,
    Idle,
    Ping,
}

/// One pass over the sockets: found under the registry's read locks, acted on after them
/// (closing a socket takes it out of the registry).
fn sweep_once(hub: &Hub, due: &mut Vec<(Arc<Socket>, Due)>) {
    let (now_ms, now_s) = (hub.now_ms(), now_secs());
    let idle_ms = hub.config.idle_timeout.map(|idle| idle.as_millis() as u64);
    hub.registry.for_each_socket(|peer| {
        if !peer.is_swept() {
            return;
        }
        let exp = peer.expires_at();
        if exp != 0 && exp <= now_s {
            due.push((peer.clone(), Due::Expired));
        } else if let Some(idle) = idle_ms {
            let quiet = now_ms.saturating_sub(peer.last_seen_ms.load(Ordering::Relaxed));
            if quiet >= idle {
                due.push((peer.clone(), Due::Idle));
            } else if quiet >= idle / 2 && peer.mark_pinged() {
                due.push((peer.clone(), Due::Ping));
            }
        }
    });
    for (peer, what) in due.drain(..) {
        let out = &peer.outbound;
        match what {
            Due::Expired => {
                hub.registry.remove_socket(&peer);
                out.close(close_code::TOKEN_EXPIRED, "token expired");
            }
            Due::Idle => {
                hub.registry.remove_socket(&peer);
                out.close(close_code::GOING_AWAY, "idle timeout");
            }
            Due::Ping => {
                if out.push_control(protocol::frame(0x9, b"")) == Push::Evicted {
                    evicted(hub, &peer);
                }
            }
        }
    }
}
