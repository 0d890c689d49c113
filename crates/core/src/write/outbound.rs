//! One socket's outbound side: a bounded queue of ready-made frames and the writer that drains
//! it with one vectored write per burst.
//!
//! Fan-out pushes a shared [`Bytes`] frame onto each recipient's queue and, once the burst is
//! queued, has each queue that went from empty to non-empty written: by a flusher that writes it
//! straight to the socket ([`Outbound::write_through`]), or by the socket's task, woken for what
//! the flusher leaves. Either takes everything queued at once and hands it to the kernel as one
//! `writev`: with 10,000 sockets the cost is one syscall per socket per burst, not per message
//! (see the fan-out table in the design facts). The two never write at once: the task's batch
//! (`taken`) and the flusher's (`flushing`) exclude each other under the queue's lock.
//!
//! The queue is bounded in bytes (`maxBackpressure`, counting what the writer has taken but not
//! yet written), against clients that do not read: a push past the bound while the socket's send
//! buffer is full (the last write was refused) evicts the socket. The queue is dropped and the
//! socket is closed with 4008 once the write in flight completes, or cut after a grace period if
//! the client never reads again.
//!
//! A queue past the bound whose writes still go through is the server being behind, not the
//! client: the writer has not had its turn yet (10,000 sockets take a while to write), or one
//! burst was bigger than the bound. That push is kept ([`Push::Behind`]) and the lane that made
//! it waits for the writer before queuing more (`dispatch`), so an application that emits a few
//! megabytes at once (a bulk update of large documents) reaches every client that reads, where
//! evicting on bytes alone closed them all.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use crate::protocol::{close_code, close_frame};
use crate::write::splice::Piped;

/// How long an evicted socket's in-flight write may still take before the TCP connection is cut.
pub(crate) const EVICTION_GRACE: Duration = Duration::from_secs(10);

/// Most frames taken into one batch: leaves room under [`IOV_MAX`] for the control frames and
/// the close that go with them.
const MAX_IOVECS: usize = 512;

/// Most buffers one `sendmsg` may be handed (Linux's `UIO_MAXIOV`): more fails with `EINVAL`,
/// which would drop the client.
const IOV_MAX: usize = 1024;

/// A queued frame: its bytes, and for a large buffer that many sockets send, a pipe holding a
/// copy that the kernel hands to the socket by reference (see [`crate::write::splice`]).
#[derive(Clone)]
pub(crate) struct OutFrame {
    pub(crate) bytes: Bytes,
    pub(crate) piped: Option<Arc<Piped>>,
}

impl From<Bytes> for OutFrame {
    fn from(bytes: Bytes) -> OutFrame {
        OutFrame { bytes, piped: None }
    }
}

impl Deref for OutFrame {
    type Target = Bytes;
    fn deref(&self) -> &Bytes {
        &self.bytes
    }
}

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Push {
    Queued,
    /// The socket is closing; the frame was dropped.
    Closed,
    /// This push passed `maxBackpressure` while the client was not taking what is written (its
    /// send buffer full): the socket is now evicted (4008).
    Evicted,
    /// Queued, and the queue is now past `maxBackpressure` while the client still takes what is
    /// written: the server is behind. Queue nothing more for it until [`Outbound::is_behind`]
    /// turns false (the writer caught up, or the client stopped taking: then the next push
    /// evicts).
    Behind,
}

/// How the writer should end.
#[derive(Debug, Clone)]
enum Ending {
    /// Write what is queued, then this close frame.
    AfterQueue(Bytes),
    /// Drop what is queued, write this close frame right away.
    Now(Bytes),
}

/// Pongs that may wait for a client at once: enough to answer every ping of a short burst (a
/// client checking its connection), few enough that one that pings and never reads holds
/// little (each is at most 131 bytes).
pub(crate) const MAX_PENDING_PONGS: usize = 16;

const PONG: u8 = 0xA;

#[derive(Default)]
struct State {
    queue: VecDeque<OutFrame>,
    /// Bytes queued (control frames too) plus bytes taken by the writer and not yet written.
    bytes: usize,
    /// Control frames (pong, ping) that go before data: at most [`MAX_PENDING_PONGS`] pongs
    /// (the answers to the latest pings; RFC 6455 5.5.3 allows answering only the latest) and
    /// our own ping, so a client that pings and never reads cannot grow it.
    control: Vec<OutFrame>,
    /// Boxed: a socket closes once, and every idle socket holds this state.
    ending: Option<Box<Ending>>,
    /// The socket's task holds a batch it has not fully written ([`Outbound::take_into`] to
    /// [`Outbound::written`]): bytes of it may be in the socket already, so no one else writes.
    taken: bool,
    /// A flusher is writing queued frames straight to the socket ([`Outbound::write_through`]):
    /// the task takes nothing until it is done.
    flushing: bool,
}

pub(crate) struct Outbound {
    state: Mutex<State>,
    /// The socket's task, woken when the queue goes from empty to not, and on any ending.
    /// Waking it is a couple of atomic operations: fan-out does it for every socket.
    waker: AtomicWaker,
    limit: usize,
    /// Set when the socket was evicted as a slow consumer.
    evicted: AtomicBool,
    /// Set when the connection must stop now, written or not (server shutdown after its grace).
    cut: AtomicBool,
    /// Set once an ending is queued (read without the lock on every poll of the socket).
    closing: AtomicBool,
    /// Set while the socket's send buffer is full: its last write was refused and none has gone
    /// through since. A queue past the bound is the client's doing only then.
    blocked: AtomicBool,
    /// The socket's descriptor while its connection owns the stream ([`Outbound::attach`]), for
    /// [`Outbound::write_through`]. Cleared under this lock before the stream is dropped, and a
    /// flusher holds the lock while it writes: a descriptor number, which the kernel hands to
    /// the next socket accepted once it is closed, is never written after its close.
    #[cfg(unix)]
    sink: Mutex<Option<std::os::fd::RawFd>>,
}

impl Outbound {
    pub(crate) fn new(limit: usize) -> Outbound {
        Outbound {
            state: Mutex::new(State::default()),
            waker: AtomicWaker::new(),
            limit,
            evicted: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
            #[cfg(unix)]
            sink: Mutex::new(None),
        }
    }

    /// Lets [`Outbound::write_through`] write to this descriptor, until [`Outbound::detach`].
    #[cfg(unix)]
    pub(crate) fn attach(&self, fd: std::os::fd::RawFd) {
        *self.sink.lock() = Some(fd);
    }

    /// Stops every write through the descriptor, waiting for one under way: call before the
    /// stream is closed.
    pub(crate) fn detach(&self) {
        #[cfg(unix)]
        {
            *self.sink.lock() = None;
        }
    }

    /// Writes what is queued straight to the socket from the calling thread, when nothing else
    /// is writing to it; wakes the socket's task for whatever is left (a refused or partial
    /// write, control frames, a close) or when it cannot write now.
    ///
    /// Why: fan-out wakes every recipient's task, and each wake is a schedule, a poll of the
    /// whole connection (readiness, timer, queue) and its caches warmed again (measured in
    /// docs/design.md); a flusher that goes through the recipients in
    /// one loop, as uWS.js's `publish` does, pays only the write. Its writes hold
    /// [`Outbound::sink`] so the connection cannot close the descriptor under them.
    pub(crate) fn write_through(&self) {
        #[cfg(unix)]
        let written = match self.sink.try_lock() {
            Some(sink) => match *sink {
                Some(fd) => self.write_through_to(&FdSink(fd)),
                None => false,
            },
            // Being detached.
            None => false,
        };
        // Elsewhere the task writes everything.
        #[cfg(not(unix))]
        let written = false;
        if !written {
            self.waker.wake();
        }
    }

    /// [`Outbound::write_through`] to `io`: `true` when everything queued was written (or
    /// nothing was: a socket can be listed twice) and the task has nothing to do.
    #[cfg_attr(not(unix), allow(dead_code))]
    fn write_through_to(&self, io: &impl TryWrite) -> bool {
        let mut batch = {
            let mut s = self.state.lock();
            if s.queue.is_empty() && s.control.is_empty() && s.ending.is_none() {
                return true;
            }
            if s.taken
                || s.flushing
                || !s.control.is_empty()
                || s.ending.is_some()
                || self.blocked.load(Ordering::Acquire)
            {
                return false;
            }
            let n = s.queue.len().min(MAX_IOVECS);
            let frames: Vec<OutFrame> = if n == s.queue.len() {
                Vec::from(std::mem::take(&mut s.queue))
            } else {
                s.queue.drain(..n).collect()
            };
            s.flushing = true;
            Batch::of_data(frames)
        };
        // Without the state lock: pushes, and the task's polls, go on meanwhile.
        let result = batch.write_to(self, io);
        let mut s = self.state.lock();
        s.flushing = false;
        if !batch.is_empty() {
            // Refused, partial or failed: what is left goes back to the head of the queue, for
            // the task (which meets the same failure and ends the connection).
            let (rest, written) = batch.into_rest();
            s.bytes -= written;
            for frame in rest.into_iter().rev() {
                s.queue.push_front(frame);
            }
        }
        result.is_ok() && s.queue.is_empty() && s.control.is_empty() && s.ending.is_none()
    }

    /// Registers the task to wake. Call before checking for work, so a push in between is seen.
    pub(crate) fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// Stops the connection at once (what is queued is dropped).
    pub(crate) fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub(crate) fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    /// Queues a data frame, unless the socket is closing, or this frame passes the bound while
    /// the client is not taking what is written.
    pub(crate) fn push(&self, frame: impl Into<OutFrame>) -> Push {
        let (push, wake) = self.push_unwoken(frame);
        if wake {
            self.wake();
        }
        push
    }

    /// [`Outbound::push`] that leaves the writer asleep: `true` beside a queued push means
    /// the queue was empty and the caller must call [`Outbound::wake`] once it has queued the
    /// rest of its burst (see [`crate::write::flush::Wakes`]). An eviction wakes the writer itself.
    pub(crate) fn push_unwoken(&self, frame: impl Into<OutFrame>) -> (Push, bool) {
        let frame = frame.into();
        let mut s = self.state.lock();
        if s.ending.is_some() {
            return (Push::Closed, false);
        }
        if s.bytes + frame.len() > self.limit && s.bytes > 0 && self.blocked.load(Ordering::Acquire) {
            drop(s);
            self.evict();
            return (Push::Evicted, false);
        }
        let was_empty = s.queue.is_empty() && s.control.is_empty();
        s.bytes += frame.len();
        s.queue.push_back(frame);
        let push = if s.bytes > self.limit {
            Push::Behind
        } else {
            Push::Queued
        };
        (push, was_empty)
    }

    /// Whether the queue is past the bound while the client takes what is written: the writer
    /// has yet to catch up, and whoever queues for this socket should wait (see [`Push::Behind`]).
    pub(crate) fn is_behind(&self) -> bool {
        !self.is_closing() && !self.blocked.load(Ordering::Acquire) && self.state.lock().bytes > self.limit
    }

    /// Marks the socket's send buffer full (a write was refused) or taking again.
    fn set_blocked(&self, blocked: bool) {
        if self.blocked.load(Ordering::Relaxed) != blocked {
            self.blocked.store(blocked, Ordering::Release);
        }
    }

    /// As if a write had been refused: the client is not reading (tests without a socket).
    #[cfg(test)]
    pub(crate) fn block(&self) {
        self.set_blocked(true);
    }

    /// Wakes the writer (after [`Outbound::push_unwoken`]).
    pub(crate) fn wake(&self) {
        self.waker.wake();
    }

    /// Queues a control frame (pong, ping), sent before data. Past [`MAX_PENDING_PONGS`]
    /// waiting pongs, the oldest goes; a ping replaces ours if it still waits. Its bytes count
    /// in the bound: past it while the client takes nothing, the socket is evicted as for data.
    pub(crate) fn push_control(&self, frame: Bytes) -> Push {
        let mut s = self.state.lock();
        if s.ending.is_some() {
            return Push::Closed;
        }
        let opcode_of = |f: &[u8]| f.first().map_or(0, |b| b & 0x0F);
        let opcode = opcode_of(&frame);
        let same: Vec<usize> = (0..s.control.len())
            .filter(|&i| opcode_of(&s.control[i]) == opcode)
            .collect();
        let keep = if opcode == PONG { MAX_PENDING_PONGS - 1 } else { 0 };
        if same.len() > keep {
            // The latest answers are the ones worth sending.
            let old = s.control.remove(same[0]);
            s.bytes -= old.len();
        }
        if s.bytes + frame.len() > self.limit && s.bytes > 0 && self.blocked.load(Ordering::Acquire) {
            drop(s);
            self.evict();
            return Push::Evicted;
        }
        s.bytes += frame.len();
        s.control.push(frame.into());
        drop(s);
        self.waker.wake();
        Push::Queued
    }

    /// Control frames waiting (tests).
    #[cfg(test)]
    pub(crate) fn queued_control(&self) -> usize {
        self.state.lock().control.len()
    }

    /// Drops what is queued and closes with 4008: the client is not taking what is written.
    pub(crate) fn evict(&self) {
        let mut s = self.state.lock();
        if s.ending.is_some() {
            return;
        }
        let queued: usize = s.queue.iter().chain(s.control.iter()).map(|f| f.len()).sum();
        s.bytes -= queued;
        s.queue = VecDeque::new();
        s.control = Vec::new();
        s.ending = Some(Box::new(Ending::Now(close_frame(
            close_code::SLOW_CONSUMER,
            "slow consumer: outbound queue over maxBackpressure",
        ))));
        drop(s);
        self.closing.store(true, Ordering::Release);
        self.evicted.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Closes after what is already queued has been written. The first ending wins.
    pub(crate) fn close(&self, code: u16, reason: &str) {
        self.end(Ending::AfterQueue(close_frame(code, reason)));
    }

    /// Closes at once, dropping what is queued (protocol errors, the client's own close).
    pub(crate) fn close_now(&self, frame: Bytes) {
        self.end(Ending::Now(frame));
    }

    fn end(&self, ending: Ending) {
        let mut s = self.state.lock();
        if s.ending.is_none() {
            if let Ending::Now(_) = ending {
                let queued: usize = s.queue.iter().map(|f| f.len()).sum();
                s.bytes -= queued;
                s.queue.clear();
            }
            s.ending = Some(Box::new(ending));
            self.closing.store(true, Ordering::Release);
        }
        drop(s);
        self.waker.wake();
    }

    /// Whether the socket is closing (nothing more will be queued).
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Whether the socket was evicted as a slow consumer.
    #[cfg(test)]
    pub(crate) fn was_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Bytes waiting to be written.
    #[cfg(test)]
    pub(crate) fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// Buffers waiting to be written (each push one).
    #[cfg(test)]
    pub(crate) fn queued_buffers(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// The buffers waiting to be written, as they are (the same allocation when shared).
    #[cfg(test)]
    pub(crate) fn queued(&self) -> Vec<Bytes> {
        self.state.lock().queue.iter().map(|f| f.bytes.clone()).collect()
    }

    /// Whether each buffer waiting to be written carries a pipe (see [`crate::write::splice`]).
    #[cfg(test)]
    pub(crate) fn queued_piped(&self) -> Vec<bool> {
        self.state.lock().queue.iter().map(|f| f.piped.is_some()).collect()
    }

    /// The `id` of each message [`Outbound::drain_messages`] returns.
    #[cfg(test)]
    pub(crate) fn drain_ids(&self) -> Vec<u64> {
        self.drain_messages()
            .iter()
            .map(|m| m["id"].as_u64().expect("an id"))
            .collect()
    }

    /// Writes out everything queued, as a socket would, and returns the messages (JSON).
    #[cfg(test)]
    pub(crate) fn drain_messages(&self) -> Vec<serde_json::Value> {
        struct Sink(std::cell::RefCell<Vec<u8>>);
        impl TryWrite for Sink {
            fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
                bufs.iter().for_each(|b| self.0.borrow_mut().extend_from_slice(b));
                Ok(bufs.iter().map(|b| b.len()).sum())
            }
        }
        let sink = Sink(Default::default());
        let mut batch = Batch::default();
        loop {
            self.take_into(&mut batch);
            if batch.is_empty() {
                break;
            }
            batch.write_to(self, &sink).expect("a sink takes everything");
        }
        let bytes = sink.0.into_inner();
        let mut payloads = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let (len, head) = match bytes[at + 1] {
                126 => (u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(bytes[at + 2..at + 10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            payloads.push(serde_json::from_slice(&bytes[at + head..at + head + len]).expect("JSON"));
            at += head + len;
        }
        payloads
    }

    /// Moves the next batch into `batch` (which must be empty): control frames first, then up to
    /// `MAX_IOVECS` (512) data frames, then the close frame once the queue is empty.
    pub(crate) fn take_into(&self, batch: &mut Batch) {
        debug_assert!(batch.is_empty());
        let mut s = self.state.lock();
        if s.flushing {
            // The flusher wakes the task when it is done, if anything is left.
            return;
        }
        let mut frames = std::mem::take(&mut s.control);
        let mut data_bytes: usize = frames.iter().map(|f| f.len()).sum();
        if frames.is_empty() && s.queue.len() <= MAX_IOVECS {
            // The whole queue, allocation and all: it is freed once written, so a socket keeps
            // no queue memory between bursts.
            frames = Vec::from(std::mem::take(&mut s.queue));
            data_bytes = frames.iter().map(|f| f.len()).sum();
        } else {
            let n = s.queue.len().min(MAX_IOVECS.saturating_sub(frames.len()));
            data_bytes += s.queue.iter().take(n).map(|f| f.len()).sum::<usize>();
            frames.extend(s.queue.drain(..n));
        }
        let mut closes = false;
        if s.queue.is_empty() {
            if let Some(Ending::Now(f) | Ending::AfterQueue(f)) = s.ending.as_deref() {
                frames.push(f.clone().into());
                closes = true;
            }
        }
        s.taken = !frames.is_empty();
        *batch = Batch {
            frames,
            index: 0,
            offset: 0,
            data_bytes,
            closes,
        };
    }

    /// For a writer that does not write to the socket itself (an SSE stream, whose bytes hyper
    /// writes): `true` while what it handed over has not been taken further (see
    /// [`Outbound::set_blocked`]).
    pub(crate) fn mark_blocked(&self, blocked: bool) {
        self.set_blocked(blocked);
    }

    /// Takes everything queued for a writer of another framing (an SSE stream): control frames
    /// and data in order, their bytes released from the bound at once, and the ending's close
    /// frame once the queue is empty.
    pub(crate) fn take_all(&self) -> (Vec<Bytes>, Option<Bytes>) {
        let mut s = self.state.lock();
        let mut frames: Vec<Bytes> = std::mem::take(&mut s.control).into_iter().map(|f| f.bytes).collect();
        frames.extend(std::mem::take(&mut s.queue).into_iter().map(|f| f.bytes));
        let taken: usize = frames.iter().map(Bytes::len).sum();
        s.bytes -= taken;
        let ending = match s.ending.as_deref() {
            Some(Ending::Now(f) | Ending::AfterQueue(f)) => Some(f.clone()),
            None => None,
        };
        (frames, ending)
    }

    /// Marks a batch written whole: its data bytes leave the bound, and the task holds nothing.
    fn written(&self, n: usize) {
        let mut s = self.state.lock();
        s.bytes -= n;
        s.taken = false;
    }
}

/// A socket the writer can write to without waiting (`WouldBlock` when its buffer is full).
pub(crate) trait TryWrite {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize>;

    /// Sends a piped buffer whole by reference (see [`crate::write::splice::send`]); any error but
    /// `WouldBlock` means the bytes are to be written instead.
    fn try_splice(&self, _piped: &Piped) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

impl TryWrite for tokio::net::TcpStream {
    /// `sendmsg`, not tokio's `writev`: on a socket it goes straight to the socket layer, where
    /// `writev` first walks the file layer (`vfs_writev`, `fdget_pos`), which shows when events
    /// come one at a time (docs/design.md). Readiness is cleared on `WouldBlock` as tokio's own
    /// writes do.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        self.try_io(tokio::io::Interest::WRITABLE, || {
            socket2::SockRef::from(self).send_vectored(bufs)
        })
    }

    #[cfg(target_os = "linux")]
    fn try_splice(&self, piped: &Piped) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        self.try_io(tokio::io::Interest::WRITABLE, || {
            crate::write::splice::send(piped, self.as_raw_fd())
        })
    }
}

/// A socket's descriptor, written by a flusher beside the socket's own task (see
/// [`Outbound::write_through`]); the same calls as [`tokio::net::TcpStream`]'s, without its
/// readiness, which the task keeps (a refusal here is met again by the task's own write).
#[cfg(unix)]
struct FdSink(std::os::fd::RawFd);

#[cfg(unix)]
impl TryWrite for FdSink {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        // SAFETY: the descriptor is open: `sink` is held, and it is cleared before the close.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.0) };
        socket2::SockRef::from(&fd).send_vectored(bufs)
    }

    #[cfg(target_os = "linux")]
    fn try_splice(&self, piped: &Piped) -> std::io::Result<usize> {
        crate::write::splice::send(piped, self.0)
    }
}

/// Frames taken from the queue and not yet fully written.
#[derive(Default)]
pub(crate) struct Batch {
    frames: Vec<OutFrame>,
    /// First frame not fully written, and how much of it is.
    index: usize,
    offset: usize,
    /// Bytes in the batch that count in the queue's bound (all but the close), released once
    /// written.
    data_bytes: usize,
    /// The batch ends with the close frame: once written, nothing more is sent.
    pub(crate) closes: bool,
}

/// How far a write got.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flush {
    /// The whole batch is written.
    Done,
    /// The socket's send buffer is full: wait until it is writable, then write again.
    Blocked,
}

impl Batch {
    /// Data frames taken by a flusher.
    #[cfg_attr(not(unix), allow(dead_code))]
    fn of_data(frames: Vec<OutFrame>) -> Batch {
        let data_bytes = frames.iter().map(|f| f.len()).sum();
        Batch {
            frames,
            index: 0,
            offset: 0,
            data_bytes,
            closes: false,
        }
    }

    /// What is left to write, as frames (the one begun cut where it stopped, and no longer
    /// piped), and the data bytes written so far.
    #[cfg_attr(not(unix), allow(dead_code))]
    fn into_rest(mut self) -> (Vec<OutFrame>, usize) {
        let mut rest: Vec<OutFrame> = self.frames.drain(self.index.min(self.frames.len())..).collect();
        if let Some(first) = rest.first_mut() {
            if self.offset > 0 {
                *first = OutFrame::from(first.bytes.slice(self.offset..));
            }
        }
        let left: usize = rest.iter().map(|f| f.len()).sum();
        (rest, self.data_bytes - left)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.index >= self.frames.len()
    }

    /// Writes as much of the batch as the socket takes without waiting, one `writev` per call
    /// (more only when the kernel takes part of it), and a piped buffer by `splice` when it
    /// starts one (the writes before it stop short of it).
    pub(crate) fn write_to(&mut self, out: &Outbound, io: &impl TryWrite) -> std::io::Result<Flush> {
        while !self.is_empty() {
            if let (0, Some(piped)) = (self.offset, &self.frames[self.index].piped) {
                match io.try_splice(piped) {
                    Ok(n) => {
                        out.set_blocked(false);
                        self.advance(n);
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        out.set_blocked(true);
                        return Ok(Flush::Blocked);
                    }
                    // Not available: written below instead.
                    Err(_) => {}
                }
            }
            let end = self.frames[self.index + 1..]
                .iter()
                .position(|f| f.piped.is_some())
                .map_or(self.frames.len(), |at| self.index + 1 + at)
                // The kernel refuses longer lists outright.
                .min(self.index + IOV_MAX);
            let n = {
                let first = IoSlice::new(&self.frames[self.index][self.offset..]);
                let written = if end == self.index + 1 {
                    // One buffer (a burst to one room is one): no list to allocate.
                    io.try_write_vectored(&[first])
                } else {
                    let slices: Vec<IoSlice<'_>> = std::iter::once(first)
                        .chain(self.frames[self.index + 1..end].iter().map(|f| IoSlice::new(f)))
                        .collect();
                    io.try_write_vectored(&slices)
                };
                match written {
                    Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        out.set_blocked(true);
                        return Ok(Flush::Blocked);
                    }
                    Err(e) => return Err(e),
                }
            };
            out.set_blocked(false);
            self.advance(n);
        }
        out.written(std::mem::take(&mut self.data_bytes));
        self.frames = Vec::new();
        self.index = 0;
        Ok(Flush::Done)
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let left = self.frames[self.index].len() - self.offset;
            if n >= left {
                n -= left;
                self.index += 1;
                self.offset = 0;
            } else {
                self.offset += n;
                n = 0;
            }
        }
        // Skip empty frames so `index` never points at a frame with nothing left to write.
        while self.index < self.frames.len() && self.frames[self.index].len() == self.offset {
            self.index += 1;
            self.offset = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::text_frame;
    use std::cell::{Cell, RefCell};

    /// A socket that takes at most `step` bytes per write and says `WouldBlock` every other call.
    struct Pipe {
        got: RefCell<Vec<u8>>,
        step: usize,
        calls: Cell<usize>,
    }

    impl Pipe {
        fn new(step: usize) -> Pipe {
            Pipe {
                got: RefCell::new(Vec::new()),
                step,
                calls: Cell::new(0),
            }
        }
    }

    impl TryWrite for Pipe {
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
            self.calls.set(self.calls.get() + 1);
            if self.calls.get().is_multiple_of(2) {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.step - n);
                self.got.borrow_mut().extend_from_slice(&b[..take]);
                n += take;
                if n == self.step {
                    break;
                }
            }
            Ok(n)
        }
    }

    /// Writes batches until the close frame is out; the number of batches.
    fn drain(out: &Outbound, pipe: &Pipe) -> usize {
        let mut batch = Batch::default();
        let mut batches = 0;
        loop {
            if batch.is_empty() {
                out.take_into(&mut batch);
                batches += 1;
            }
            if batch.write_to(out, pipe).unwrap() == Flush::Done && batch.closes {
                return batches;
            }
        }
    }

    #[test]
    fn batches_are_written_in_order_and_end_with_close() {
        let out = Outbound::new(1 << 20);
        for i in 0..100u32 {
            assert_eq!(out.push(text_frame(i.to_string().as_bytes())), Push::Queued);
        }
        out.push_control(protocol_ping());
        out.close(close_code::GOING_AWAY, "bye");
        let pipe = Pipe::new(usize::MAX);
        assert_eq!(drain(&out, &pipe), 1);
        let mut expect = protocol_ping().to_vec();
        for i in 0..100u32 {
            expect.extend_from_slice(&text_frame(i.to_string().as_bytes()));
        }
        expect.extend_from_slice(&close_frame(close_code::GOING_AWAY, "bye"));
        assert_eq!(*pipe.got.borrow(), expect);
        assert_eq!(out.queued_bytes(), 0);
    }

    fn protocol_ping() -> Bytes {
        crate::protocol::frame(0x9, b"")
    }

    #[test]
    fn a_long_queue_goes_out_in_several_writevs() {
        let out = Outbound::new(1 << 20);
        for _ in 0..(MAX_IOVECS * 2 + 1) {
            out.push(text_frame(b"x"));
        }
        out.close(1000, "");
        let pipe = Pipe::new(usize::MAX);
        assert_eq!(drain(&out, &pipe), 3);
        assert_eq!(pipe.got.borrow().len(), (MAX_IOVECS * 2 + 1) * 3 + 4);
    }

    /// A client that pings and never reads: the latest `MAX_PENDING_PONGS` pongs wait, their
    /// bytes in the bound, however many pings came; a short burst is answered whole.
    #[test]
    fn a_ping_flood_keeps_the_latest_pongs_waiting() {
        let out = Outbound::new(1 << 20);
        for i in 0..10_000u32 {
            out.push_control(crate::protocol::frame(0xA, &i.to_be_bytes()));
        }
        out.push_control(protocol_ping());
        assert_eq!(
            out.queued_control(),
            MAX_PENDING_PONGS + 1,
            "the latest pongs and our ping"
        );
        let pongs: Vec<u8> = (10_000 - MAX_PENDING_PONGS as u32..10_000)
            .flat_map(|i| crate::protocol::frame(0xA, &i.to_be_bytes()).to_vec())
            .collect();
        assert_eq!(out.queued_bytes(), pongs.len() + protocol_ping().len());
        out.close(1000, "");
        let pipe = Pipe::new(usize::MAX);
        drain(&out, &pipe);
        let mut expect = pongs;
        expect.extend_from_slice(&protocol_ping());
        expect.extend_from_slice(&close_frame(1000, ""));
        assert_eq!(*pipe.got.borrow(), expect, "only the latest pongs are sent, in order");
        assert_eq!(out.queued_bytes(), 0);
    }

    /// Control bytes count in `maxBackpressure`: a pong past the bound while the client takes
    /// nothing evicts, as data would.
    #[test]
    fn control_bytes_count_in_the_bound() {
        let out = Outbound::new(1024);
        assert_eq!(out.push(Bytes::from(vec![0u8; 950])), Push::Queued);
        out.block();
        assert_eq!(
            out.push_control(crate::protocol::frame(0xA, &[7u8; 100])),
            Push::Evicted
        );
        assert!(out.was_evicted());
        assert_eq!(out.queued_control(), 0, "dropped with the queue");
        assert_eq!(out.queued_bytes(), 0);
    }

    /// However long the batch, one write hands the kernel at most `IOV_MAX` buffers (more
    /// makes `sendmsg` fail with `EINVAL`).
    #[test]
    fn one_write_never_hands_the_kernel_more_than_iov_max_buffers() {
        struct Counts(Cell<usize>);
        impl TryWrite for Counts {
            fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
                if bufs.len() > IOV_MAX {
                    return Err(std::io::ErrorKind::InvalidInput.into());
                }
                self.0.set(self.0.get().max(bufs.len()));
                Ok(bufs.iter().map(|b| b.len()).sum())
            }
        }
        let frames: Vec<OutFrame> = (0..3 * IOV_MAX).map(|_| OutFrame::from(text_frame(b"x"))).collect();
        let out = Outbound::new(1 << 20);
        let mut batch = Batch {
            frames,
            index: 0,
            offset: 0,
            data_bytes: 0,
            closes: false,
        };
        let sink = Counts(Cell::new(0));
        assert_eq!(batch.write_to(&out, &sink).unwrap(), Flush::Done);
        assert_eq!(sink.0.get(), IOV_MAX);

        // And what the queue hands out at once, control frames and close included, fits too.
        for _ in 0..3 * IOV_MAX {
            out.push(text_frame(b"x"));
            out.push_control(crate::protocol::frame(0xA, b""));
        }
        out.close(1000, "");
        let mut batch = Batch::default();
        out.take_into(&mut batch);
        assert!(batch.frames.len() <= IOV_MAX);
    }

    #[test]
    fn passing_the_bound_while_the_client_takes_nothing_evicts_with_4008() {
        let out = Outbound::new(1000);
        assert_eq!(out.push(Bytes::from(vec![0u8; 600])), Push::Queued);
        out.block();
        assert!(!out.is_behind());
        assert_eq!(out.push(Bytes::from(vec![0u8; 600])), Push::Evicted);
        assert!(out.was_evicted());
        assert_eq!(out.push(Bytes::from(vec![0u8; 1])), Push::Closed);
        let pipe = Pipe::new(usize::MAX);
        drain(&out, &pipe);
        let got = pipe.got.borrow();
        assert_eq!(got[0], 0x88);
        assert_eq!(u16::from_be_bytes([got[2], got[3]]), 4008);
    }

    /// The server's own backlog is not the client's: past the bound with writes going through,
    /// the socket is behind (kept, and its queue to wait for); once a write is refused, the next
    /// push past the bound evicts; a write that goes through again clears that.
    #[test]
    fn past_the_bound_with_writes_going_through_is_behind_not_evicted() {
        let out = Outbound::new(1000);
        // One buffer bigger than the bound, nothing waiting: queued, and behind.
        assert_eq!(out.push(Bytes::from(vec![0u8; 1500])), Push::Behind);
        assert!(out.is_behind());
        assert_eq!(out.push(Bytes::from(vec![0u8; 100])), Push::Behind);
        assert!(!out.was_evicted());
        // A socket that takes 700 bytes a write, refusing every other call.
        let pipe = Pipe::new(700);
        let mut batch = Batch::default();
        out.take_into(&mut batch);
        assert_eq!(batch.write_to(&out, &pipe).unwrap(), Flush::Blocked);
        // Refused with 900 bytes left: not behind any more (the client is the one not taking).
        assert!(!out.is_behind());
        assert_eq!(out.push(Bytes::from(vec![0u8; 100])), Push::Evicted);
        assert!(out.was_evicted());

        // Taking again clears it.
        let out = Outbound::new(1000);
        out.push(Bytes::from(vec![0u8; 900]));
        let pipe = Pipe::new(500);
        let mut batch = Batch::default();
        out.take_into(&mut batch);
        assert_eq!(batch.write_to(&out, &pipe).unwrap(), Flush::Blocked);
        assert_eq!(batch.write_to(&out, &pipe).unwrap(), Flush::Done);
        assert_eq!(out.push(Bytes::from(vec![0u8; 800])), Push::Queued);
        assert_eq!(out.push(Bytes::from(vec![0u8; 800])), Push::Behind);
        assert!(out.is_behind());
        out.close(1000, "");
        assert!(!out.is_behind(), "a closing socket is waited for by no one");
    }

    /// A piped buffer goes by `splice`, the frames around it by `sendmsg`, all in order and
    /// whole, through a real socket whose buffer fills and drains on the way.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_piped_buffer_goes_by_splice_between_copied_frames_in_order() {
        use crate::write::splice::SPLICED_BYTES;
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).await.unwrap();
            got
        });
        let (server, _) = listener.accept().await.unwrap();
        let out = Outbound::new(1 << 24);
        let big = Bytes::from((0..200_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let piped = Piped::new(&big).expect("a pipe");
        let before = SPLICED_BYTES.load(Ordering::Relaxed);
        let mut expect = Vec::new();
        for i in 0..5 {
            let small = text_frame(i.to_string().as_bytes());
            out.push(small.clone());
            expect.extend_from_slice(&small);
            out.push(OutFrame {
                bytes: big.clone(),
                piped: Some(piped.clone()),
            });
            expect.extend_from_slice(&big);
        }
        out.close(1000, "");
        expect.extend_from_slice(&close_frame(1000, ""));
        // As the connection's task writes.
        let mut batch = Batch::default();
        loop {
            if batch.is_empty() {
                out.take_into(&mut batch);
            }
            match batch.write_to(&out, &server).unwrap() {
                Flush::Done if batch.closes => break,
                Flush::Done => {}
                Flush::Blocked => server.writable().await.unwrap(),
            }
        }
        drop(server);
        let got = client.await.unwrap();
        assert_eq!(got.len(), expect.len());
        assert!(got == expect, "every byte in order");
        assert!(
            SPLICED_BYTES.load(Ordering::Relaxed) > before,
            "some of it went by splice"
        );
        assert_eq!(out.queued_bytes(), 0);
    }

    #[test]
    fn partial_writes_keep_frames_whole() {
        let out = Outbound::new(1 << 20);
        let frames: Vec<Bytes> = (0..50).map(|i| text_frame(&vec![b'a' + (i % 26) as u8; 300])).collect();
        for f in &frames {
            out.push(f.clone());
        }
        out.close(1000, "");
        let pipe = Pipe::new(7);
        drain(&out, &pipe);
        let mut expect: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        expect.extend_from_slice(&close_frame(1000, ""));
        assert_eq!(*pipe.got.borrow(), expect);
        assert_eq!(out.queued_bytes(), 0);
    }

    /// A flusher writes the queue straight to the socket when the task holds nothing; what the
    /// socket refuses goes back to the head of the queue, and the task writes it and what came
    /// since, in order.
    #[test]
    fn write_through_writes_what_it_can_and_leaves_the_rest_in_order() {
        let out = Outbound::new(1 << 20);
        let frames: Vec<Bytes> = (0..6).map(|i| text_frame(&[b'a' + i as u8; 40])).collect();
        for f in &frames[..3] {
            out.push(f.clone());
        }
        // Takes 50 bytes, then refuses: a frame cut in the middle.
        let pipe = Pipe::new(50);
        assert!(!out.write_through_to(&pipe), "refused: the task has work");
        assert_eq!(pipe.got.borrow().len(), 50);
        let total: usize = frames[..3].iter().map(|f| f.len()).sum();
        assert_eq!(out.queued_bytes(), total - 50, "what was written left the bound");
        assert!(out.blocked.load(Ordering::Acquire));
        // Refused last time: the next flusher leaves it to the task.
        out.push(frames[3].clone());
        assert!(!out.write_through_to(&pipe));
        assert_eq!(pipe.calls.get(), 2);
        for f in &frames[4..] {
            out.push(f.clone());
        }
        out.close(1000, "");
        drain(&out, &pipe);
        let mut expect: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        expect.extend_from_slice(&close_frame(1000, ""));
        assert!(*pipe.got.borrow() == expect, "every byte once, in order");
        assert_eq!(out.queued_bytes(), 0);

        // A socket that takes everything: written whole, nothing for the task.
        let out = Outbound::new(1 << 20);
        for f in &frames {
            out.push(f.clone());
        }
        let sink = Pipe::new(1 << 20);
        assert!(out.write_through_to(&sink));
        assert_eq!(sink.calls.get(), 1, "one write for the whole queue");
        assert_eq!(out.queued_bytes(), 0);
        assert_eq!(out.queued_buffers(), 0);
    }

    /// No flusher writes while the task holds a batch (part of it may be in the socket), before
    /// a control frame, or once a close is queued; and the task takes nothing while a flusher
    /// writes.
    #[test]
    fn write_through_never_writes_beside_the_task() {
        /// A socket that takes everything.
        #[derive(Default)]
        struct Takes {
            calls: Cell<usize>,
        }
        impl TryWrite for Takes {
            fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
                self.calls.set(self.calls.get() + 1);
                Ok(bufs.iter().map(|b| b.len()).sum())
            }
        }
        let frame = text_frame(b"x");
        let sink = Takes::default();

        let out = Outbound::new(1 << 20);
        out.push(frame.clone());
        let mut batch = Batch::default();
        out.take_into(&mut batch);
        out.push(frame.clone());
        assert!(!out.write_through_to(&sink), "the task holds a batch");
        assert_eq!(sink.calls.get(), 0);
        assert_eq!(batch.write_to(&out, &sink).unwrap(), Flush::Done);
        assert!(out.write_through_to(&sink), "written whole: the flusher may");

        let out = Outbound::new(1 << 20);
        out.push(frame.clone());
        out.push_control(protocol_ping());
        assert!(!out.write_through_to(&sink), "control frames go first, by the task");
        let out = Outbound::new(1 << 20);
        out.push(frame.clone());
        out.close(1000, "");
        assert!(!out.write_through_to(&sink), "a close is the task's");
        assert_eq!(sink.calls.get(), 2);

        /// A socket whose write runs the task meanwhile (as another thread would).
        struct Meanwhile<'a> {
            out: &'a Outbound,
            took: Cell<Option<bool>>,
        }
        impl TryWrite for Meanwhile<'_> {
            fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
                // A push meanwhile, which the task must not take before the flusher is done.
                self.out.push(text_frame(b"later"));
                let mut batch = Batch::default();
                self.out.take_into(&mut batch);
                self.took.set(Some(!batch.is_empty()));
                Ok(bufs.iter().map(|b| b.len()).sum())
            }
        }
        let out = Outbound::new(1 << 20);
        out.push(frame.clone());
        let meanwhile = Meanwhile {
            out: &out,
            took: Cell::new(None),
        };
        assert!(!out.write_through_to(&meanwhile), "what came meanwhile is the task's");
        assert_eq!(
            meanwhile.took.get(),
            Some(false),
            "the task took nothing while the flusher wrote"
        );
        assert_eq!(out.queued(), vec![text_frame(b"later")]);
    }

    /// Through a real socket: the flusher writes through the attached descriptor, and once it is
    /// detached it only wakes the task (the queue stays for it).
    #[cfg(unix)]
    #[tokio::test]
    async fn write_through_a_real_socket_until_detached() {
        use std::os::fd::AsRawFd;
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let out = Outbound::new(1 << 20);
        out.attach(server.as_raw_fd());
        let frames: Vec<Bytes> = (0..3).map(|i| text_frame(i.to_string().as_bytes())).collect();
        for f in &frames {
            out.push(f.clone());
        }
        out.write_through();
        assert_eq!(out.queued_bytes(), 0);
        let expect: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        let mut got = vec![0u8; expect.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expect);

        out.detach();
        out.push(frames[0].clone());
        out.write_through();
        assert_eq!(out.queued_buffers(), 1, "detached: left for the task");
        drop(server);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "nothing written after the detach");
    }
}
