//! One upgraded socket, from its first frame to its close, in one task: reading frames, writing
//! the outbound queue, pings, the idle timer, token expiry and the close handshake.
//!
//! Why one task and readiness rather than a reader task and a writer task: an idle socket is
//! most of what the server holds, and a task per direction doubled what each one costs. This
//! task waits on the socket's readiness (`readable`/`writable`, both cancel-safe), on its
//! outbound queue and on its timers; reads go into a buffer shared by the thread's sockets (see
//! [`crate::frame_reader`]), writes are non-blocking `writev`s of the queued batch. An idle socket
//! holds no buffer at all.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::auth::now_secs;
use crate::frame_reader::{FrameReader, Message};
use crate::hub::Hub;
use crate::outbound::{Batch, Flush, EVICTION_GRACE};
use crate::peer::Peer;
use crate::protocol::{self, close_code, ErrorCode};
use crate::requests::Requests;
use crate::stats::Stats;
use crate::{debug, warn};

/// How long to wait for the client's close frame after ours before dropping the connection,
/// and how long a close we send may take to go out.
const CLOSE_HANDSHAKE_WAIT: Duration = Duration::from_secs(2);

/// Size of the read buffer each runtime thread shares among its sockets.
const READ_CHUNK: usize = 64 * 1024;

/// Reads per wake-up before the task lets the others run (a fast sender cannot starve them).
const READS_PER_WAKE: usize = 8;

thread_local! {
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// Runs a socket until it closes (the handshake registered the peer). It is removed from every room
/// before this returns.
pub async fn serve(hub: Arc<Hub>, peer: Arc<Peer>, upgraded: Upgraded) {
    let parts = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => parts,
        Err(_) => {
            hub.registry.remove_peer(&peer);
            warn!("upgraded connection is not a TCP stream; dropped");
            return;
        }
    };
    Stats::add(&hub.stats.connections, 1);
    Stats::add(&hub.stats.connections_total, 1);

    // `read_buf` is what hyper read past the handshake; it shares the allocation of hyper's
    // whole read buffer (8 KB or more), so it must not outlive this first step.
    let (io, read_buf) = (parts.io, parts.read_buf);
    let mut conn = Connection {
        frames: FrameReader::new(hub.config.max_payload_length),
        requests: Requests::new(hub.clone(), peer.clone()),
        stream: io.into_inner(),
        batch: Batch::default(),
        reading: true,
        write_closed: false,
        ping_sent: false,
        hub: hub.clone(),
        peer: peer.clone(),
    };
    // Bytes the client sent right after its handshake were read by hyper.
    if !read_buf.is_empty() {
        conn.on_bytes(&read_buf);
    }
    drop(read_buf);
    conn.run().await;
    // Dropping the stream closes the TCP connection.
    drop(conn);

    hub.registry.remove_peer(&peer);
    peer.cancel.cancel();
    if hub.stats.connections.fetch_sub(1, Ordering::Relaxed) == 1 {
        hub.memory.on_idle(hub.stats.connections_total.load(Ordering::Relaxed));
    }
    debug!("socket {} closed", peer.public_id);
}

struct Connection {
    hub: Arc<Hub>,
    peer: Arc<Peer>,
    stream: TcpStream,
    frames: FrameReader,
    requests: Requests,
    /// Frames taken from the outbound queue and not yet written.
    batch: Batch,
    /// Still reading frames: false once the client's close arrived or the stream broke a rule.
    reading: bool,
    /// Our close frame is written and our side shut down.
    write_closed: bool,
    /// A ping was sent since the last frame from the client (idle detection).
    ping_sent: bool,
}

/// What woke the task.
enum Wake {
    Readable,
    Writable,
    Queue,
    Evicted,
    Tick,
    Expiry,
    Stop,
}

/// What the reads found.
enum ReadEnd {
    /// Read everything the socket had (or the per-wake share of it).
    More,
    /// The client is gone (end of stream or a reset).
    Gone,
    /// The client answered our close: the handshake is over.
    CloseAnswered,
}

impl Connection {
    async fn run(&mut self) {
        let hub = self.hub.clone();
        let peer = self.peer.clone();
        let idle = hub.config.idle_timeout;
        let mut ticker =
            tokio::time::interval(idle.map_or(Duration::from_secs(3600), |d| (d / 4).max(Duration::from_millis(100))));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.reset();
        // The token's expiry; a fresh token (`{ type: "auth" }`) moves `peer.expires_at`, so when
        // the timer fires it checks again before closing.
        let expiry_at = |peer: &Peer| match peer.expires_at.load(Ordering::Relaxed) {
            0 => None,
            exp => Some(Instant::now() + Duration::from_secs(exp.saturating_sub(now_secs()))),
        };
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let expired = tokio::time::sleep_until(expiry_at(&peer).unwrap_or(far));
        tokio::pin!(expired);
        let mut expiry_done = false;
        // When the close handshake (or a close we must send) has to be over.
        let mut close_deadline: Option<Instant> = None;
        // When an evicted socket's write in flight must be over.
        let mut evict_deadline: Option<Instant> = None;
        let out = &peer.outbound;

        loop {
            let in_flight = !self.batch.is_empty();
            let deadline = close_deadline.into_iter().chain(evict_deadline).min();
            let wake = tokio::select! {
                _ = peer.cancel.cancelled() => Wake::Stop,
                r = self.stream.readable(), if self.reading => if r.is_ok() { Wake::Readable } else { Wake::Stop },
                r = self.stream.writable(), if in_flight => if r.is_ok() { Wake::Writable } else { Wake::Stop },
                _ = out.woken(), if !in_flight && !self.write_closed => Wake::Queue,
                _ = out.evicted(), if in_flight && evict_deadline.is_none() => Wake::Evicted,
                _ = ticker.tick() => Wake::Tick,
                _ = &mut expired, if !expiry_done => Wake::Expiry,
                _ = sleep_until_opt(deadline) => Wake::Stop,
            };
            match wake {
                Wake::Stop => return,
                Wake::Readable => match self.on_readable() {
                    ReadEnd::More => {}
                    ReadEnd::Gone | ReadEnd::CloseAnswered => return,
                },
                Wake::Queue | Wake::Writable => {
                    if matches!(wake, Wake::Queue) {
                        // Let whatever is fanning out right now queue a few more frames first:
                        // one write for a burst of events rather than one per event.
                        tokio::task::yield_now().await;
                    }
                    match self.flush() {
                        Err(_) => return,
                        Ok(false) => {}
                        Ok(true) => {
                            // Our close is out: nothing more is sent.
                            self.write_closed = true;
                            let _ = self.stream.shutdown().await;
                            if !self.reading {
                                return;
                            }
                            close_deadline = Some(Instant::now() + CLOSE_HANDSHAKE_WAIT);
                        }
                    }
                }
                Wake::Evicted => evict_deadline = Some(Instant::now() + EVICTION_GRACE),
                Wake::Tick => {
                    let Some(idle) = idle else { continue };
                    let quiet =
                        Duration::from_millis(hub.now_ms().saturating_sub(peer.last_seen_ms.load(Ordering::Relaxed)));
                    if quiet >= idle {
                        hub.registry.remove_peer(&peer);
                        out.close(close_code::GOING_AWAY, "idle timeout");
                    } else if quiet >= idle / 2 && !self.ping_sent {
                        out.push_control(protocol::frame(0x9, b""));
                        self.ping_sent = true;
                    }
                }
                Wake::Expiry => {
                    let exp = peer.expires_at.load(Ordering::Relaxed);
                    if exp != 0 && exp > now_secs() {
                        expired.as_mut().reset(expiry_at(&peer).unwrap_or(far));
                    } else {
                        // A fired sleep stays ready: the flag keeps the select from spinning on it.
                        expiry_done = true;
                        hub.registry.remove_peer(&peer);
                        out.close(close_code::TOKEN_EXPIRED, "token expired");
                    }
                }
            }
            if !self.reading && close_deadline.is_none() {
                // We are answering a close or failing the connection: the close frame has this
                // long to go out.
                close_deadline = Some(Instant::now() + CLOSE_HANDSHAKE_WAIT);
            }
        }
    }

    /// Reads what the socket has, into the thread's shared buffer, and acts on each message.
    fn on_readable(&mut self) -> ReadEnd {
        READ_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            for _ in 0..READS_PER_WAKE {
                match self.stream.try_read(&mut buf[..]) {
                    Ok(0) => return ReadEnd::Gone,
                    Ok(n) => {
                        if let Some(end) = self.on_bytes(&buf[..n]) {
                            return end;
                        }
                        if !self.reading {
                            return ReadEnd::More;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return ReadEnd::More,
                    Err(_) => return ReadEnd::Gone,
                }
            }
            ReadEnd::More
        })
    }

    /// Feeds bytes to the frame reader and acts on what comes out; `Some` when the connection
    /// is over.
    fn on_bytes(&mut self, bytes: &[u8]) -> Option<ReadEnd> {
        let Connection {
            hub,
            peer,
            frames,
            requests,
            reading,
            write_closed,
            ping_sent,
            ..
        } = self;
        let out = &peer.outbound;
        let mut close_answered = false;
        let mut any = false;
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
                    requests.reply(protocol::error(
                        ErrorCode::BadMessage,
                        "binary frames are not supported; send JSON text",
                        None,
                    ));
                }
                Message::Text(_) | Message::Binary(_) | Message::Pong => {}
                Message::Ping(payload) => out.push_control(protocol::frame(0xA, payload)),
                Message::Close(code) => {
                    *reading = false;
                    if *write_closed {
                        close_answered = true;
                        return;
                    }
                    // Answer with the same code (RFC 6455 5.5.1), dropping what is queued.
                    hub.registry.remove_peer(peer);
                    out.close_now(match code {
                        Some(code) => protocol::close_frame(code, ""),
                        None => protocol::frame(0x8, b""),
                    });
                }
            }
        });
        if any {
            peer.touch(hub.now_ms());
            *ping_sent = false;
        }
        if let Err(e) = result {
            *reading = false;
            if *write_closed {
                return Some(ReadEnd::Gone);
            }
            hub.registry.remove_peer(peer);
            let (code, reason) = e.close();
            out.close_now(protocol::close_frame(code, reason));
        }
        close_answered.then_some(ReadEnd::CloseAnswered)
    }

    /// Writes queued frames until the queue is empty or the socket's buffer is full; `true` once
    /// the close frame is written.
    fn flush(&mut self) -> std::io::Result<bool> {
        let out = &self.peer.outbound;
        loop {
            if self.batch.is_empty() {
                if !out.has_work() {
                    return Ok(false);
                }
                out.take_into(&mut self.batch);
                if self.batch.is_empty() {
                    return Ok(false);
                }
            }
            match self.batch.write_to(out, &self.stream)? {
                Flush::Blocked => return Ok(false),
                Flush::Done if self.batch.closes => return Ok(true),
                Flush::Done => {}
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
