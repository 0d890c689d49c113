//! The flushers: tasks on the sockets' threads that write what fan-out queued, one socket after
//! another, instead of waking each socket's task to write its own.
//!
//! Why: waking a socket's task costs a schedule and a poll of the whole connection (readiness,
//! timer, queue), with its state brought back into cache: a sixth of what a socket costs per
//! event, where the write itself is the rest (docs/design.md). A flusher pays only
//! the write, as uWS.js's `publish` does in its loop over subscribers
//! ([`crate::write::outbound::Outbound::write_through`]; the socket's task still writes whatever the
//! flusher cannot: a full send buffer, control frames, a close).
//!
//! The sockets to write wait in one queue, in the order their bursts were queued, so the tail
//! of one event's sockets is written before the next event's (flushers per burst, taking turns,
//! stretched the tail of each event). A flusher yields every [`TURN`] sockets so that reads,
//! handshakes and timers on its thread get their turn, and as many flushers run as there are
//! worker threads with at least [`SHARE_MIN`] sockets each.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::write::outbound::{OutFrame, Push};
use crate::write::socket::Socket;

/// Sockets a flusher writes before it lets the other tasks of its thread run: 64 writes are
/// about half a millisecond here.
const TURN: usize = 64;

/// Fewest waiting sockets per flusher before another flusher starts on another thread.
const SHARE_MIN: usize = 256;

/// The queue of sockets to write and the flushers that drain it.
pub(crate) struct Flushers {
    runtime: tokio::runtime::Handle,
    threads: usize,
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    peers: VecDeque<Arc<Socket>>,
    /// Flushers running (each one ends when it finds the queue empty).
    active: usize,
}

impl Flushers {
    /// Flushers on `runtime`'s worker threads.
    pub(crate) fn new(runtime: tokio::runtime::Handle) -> Arc<Flushers> {
        let threads = runtime.metrics().num_workers().max(1);
        Arc::new(Flushers {
            runtime,
            threads,
            waiting: Mutex::new(Waiting::default()),
        })
    }

    /// Has these sockets' queues written, after any already waiting.
    pub(crate) fn write(self: &Arc<Self>, peers: impl IntoIterator<Item = Arc<Socket>>) {
        let start = {
            let mut w = self.waiting.lock();
            w.peers.extend(peers);
            let wanted = w.peers.len().div_ceil(SHARE_MIN).clamp(1, self.threads);
            let start = wanted.saturating_sub(w.active);
            w.active += start;
            start
        };
        // Spawned without the lock: on a runtime shutting down, `spawn` drops the task at once,
        // and its `Active` takes the lock to count itself out.
        for _ in 0..start {
            let active = Active {
                flushers: self.clone(),
                counted: true,
            };
            self.runtime.spawn(active.run());
        }
    }
}

/// A running flusher: counted in `active` until it finds the queue empty, or is dropped
/// unfinished (its runtime shutting down), so the count never keeps a new flusher from
/// starting.
struct Active {
    flushers: Arc<Flushers>,
    /// Still counted in `active`.
    counted: bool,
}

impl Active {
    async fn run(mut self) {
        let mut turn = Vec::with_capacity(TURN);
        loop {
            {
                let mut w = self.flushers.waiting.lock();
                let n = w.peers.len().min(TURN);
                if n == 0 {
                    // Counted out under the same lock that saw the queue empty: sockets handed
                    // over from here on find one flusher fewer and start another. Counted out
                    // later (when dropped), a hand-over in between found this one still counted
                    // and started none, and its sockets waited for the next.
                    w.active -= 1;
                    self.counted = false;
                    return;
                }
                turn.extend(w.peers.drain(..n));
            }
            for peer in turn.drain(..) {
                peer.outbound.write_through();
            }
            tokio::task::yield_now().await;
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if self.counted {
            self.flushers.waiting.lock().active -= 1;
        }
    }
}

/// Sockets to write once a burst of deliveries is queued.
///
/// Fan-out queues frames without writing or waking anyone, and has each socket that got
/// something written once, at the end of the burst ([`Wakes::flush`]): every frame of the burst
/// is then in the socket's queue, and they go out in one `writev`. Written one frame at a time
/// instead, the first sockets would be written while the burst is still being queued, one
/// frame per syscall. Dropping it flushes whoever is left: no socket sleeps on queued frames.
///
/// It also keeps the sockets a push left [`Push::Behind`]: the lane waits for their writers
/// before it queues more (`dispatch`), so the server's own backlog stays within a run of the
/// bound instead of growing with what the application emits.
#[derive(Default)]
pub(crate) struct Wakes {
    peers: Vec<Arc<Socket>>,
    behind: Vec<Arc<Socket>>,
    /// Who writes the sockets; without them each socket's task is woken to write.
    flushers: Option<Arc<Flushers>>,
}

impl Wakes {
    /// Wakes whose flush has `flushers` write the sockets (see [`Wakes::flush`]).
    pub(crate) fn on(flushers: Option<&Arc<Flushers>>) -> Wakes {
        Wakes {
            peers: Vec::new(),
            behind: Vec::new(),
            flushers: flushers.cloned(),
        }
    }

    /// Queues `frame` for `peer`, to be written at the next [`Wakes::flush`].
    pub(crate) fn push(&mut self, peer: &Arc<Socket>, frame: impl Into<OutFrame>) -> Push {
        let (push, wake) = peer.outbound.push_unwoken(frame);
        if wake {
            self.peers.push(peer.clone());
        }
        if push == Push::Behind && !self.behind.last().is_some_and(|p| Arc::ptr_eq(p, peer)) {
            self.behind.push(peer.clone());
        }
        push
    }

    /// How many sockets the next flush writes.
    #[cfg(test)]
    pub(crate) fn to_write(&self) -> usize {
        self.peers.len()
    }

    /// The sockets left behind since the last call (the caller waits for them).
    pub(crate) fn take_behind(&mut self) -> Vec<Arc<Socket>> {
        std::mem::take(&mut self.behind)
    }

    /// Has every socket queued to since the last flush written, by the flushers (see
    /// [`crate::write::flush`]), or without them by waking each socket's task. The caller goes on at
    /// once: frames it queues meanwhile for a socket not yet written go out in the same write.
    pub(crate) fn flush(&mut self) {
        if self.peers.is_empty() {
            return;
        }
        match &self.flushers {
            Some(flushers) => flushers.write(self.peers.drain(..)),
            None => {
                for peer in self.peers.drain(..) {
                    peer.outbound.wake();
                }
            }
        }
    }
}

impl Drop for Wakes {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::protocol::text_frame;
    use std::os::fd::AsRawFd;
    use tokio::io::AsyncReadExt;

    /// What a socket's own task does with its queue (`connection::poll_writes`): the flushers
    /// wake it for what they leave, as when a flusher is still writing a socket that another
    /// flusher reaches.
    async fn socket_task(peer: Arc<Socket>, stream: Arc<tokio::net::TcpStream>) {
        use crate::write::outbound::{Batch, Flush};
        let mut batch = Batch::default();
        std::future::poll_fn(|cx| loop {
            peer.outbound.register(cx.waker());
            if batch.is_empty() {
                peer.outbound.take_into(&mut batch);
                if batch.is_empty() {
                    return std::task::Poll::Pending;
                }
            }
            match batch.write_to(&peer.outbound, &*stream) {
                Ok(Flush::Done) => {}
                Ok(Flush::Blocked) => {
                    if stream.poll_write_ready(cx).is_pending() {
                        return std::task::Poll::Pending;
                    }
                }
                Err(_) => return std::task::Poll::Ready(()),
            }
        })
        .await
    }

    /// Flushers on two threads write every socket's queue, in order, each frame once, and end
    /// when the queue is empty; a socket listed twice is written once.
    #[test]
    fn flushers_write_every_queue_and_end() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let flushers = Flushers::new(tokio::runtime::Handle::current());
            let mut sockets = Vec::new();
            // More than one flusher's share, so both threads write.
            for id in 0..(SHARE_MIN as u64 + 100) {
                let client = tokio::net::TcpStream::connect(addr).await.unwrap();
                let server = Arc::new(listener.accept().await.unwrap().0);
                let peer = Arc::new(Socket::new(id, None, 1 << 20));
                peer.outbound.attach(server.as_raw_fd());
                let task = tokio::spawn(socket_task(peer.clone(), server.clone()));
                sockets.push((peer, server, task, client));
            }
            let peers = || sockets.iter().map(|(p, ..)| p.clone()).collect::<Vec<_>>();
            let frames = [text_frame(b"one"), text_frame(b"two")];
            for (peer, ..) in &sockets {
                peer.outbound.push(frames[0].clone());
            }
            flushers.write(peers());
            // Queued while the flushers write the first.
            for (peer, ..) in &sockets {
                peer.outbound.push(frames[1].clone());
            }
            flushers.write(peers());
            flushers.write(peers());
            let expect: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
            for (peer, _, _, client) in &mut sockets {
                let mut got = vec![0u8; expect.len()];
                client.read_exact(&mut got).await.unwrap();
                assert_eq!(got, expect);
                peer.outbound.detach();
            }
            // The flushers end once the queue is empty.
            for _ in 0..1000 {
                if flushers.waiting.lock().active == 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            let left = {
                let w = flushers.waiting.lock();
                (w.active, w.peers.len())
            };
            assert_eq!(left, (0, 0));
            // Nothing more was written: every frame went once.
            for (_, server, task, mut client) in sockets {
                task.abort();
                let _ = task.await;
                drop(server);
                let mut rest = Vec::new();
                client.read_to_end(&mut rest).await.unwrap();
                assert!(rest.is_empty());
            }
        });
    }

    /// Sockets handed over while the last flusher is ending are written all the same: a flusher
    /// that found the queue empty no longer counts by the time `write` looks (one socket, one
    /// frame at a time, handed over as the flushers come and go).
    #[test]
    fn sockets_handed_over_as_the_last_flusher_ends_are_written() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let server = Arc::new(listener.accept().await.unwrap().0);
            let peer = Arc::new(Socket::new(1, None, 1 << 20));
            peer.outbound.attach(server.as_raw_fd());
            let task = tokio::spawn(socket_task(peer.clone(), server.clone()));
            let flushers = Flushers::new(tokio::runtime::Handle::current());
            let frame = text_frame(b"x");
            let mut got = vec![0u8; frame.len() * 2];
            for round in 0..3000 {
                // Two hand-overs back to back: the second often meets the first's flusher as it
                // ends. The socket's task is not woken for them: only a flusher writes them.
                for _ in 0..2 {
                    peer.outbound.push_unwoken(frame.clone());
                    flushers.write([peer.clone()]);
                    for _ in 0..round % 50 {
                        std::hint::spin_loop();
                    }
                }
                let read = client.read_exact(&mut got);
                tokio::time::timeout(std::time::Duration::from_secs(5), read)
                    .await
                    .unwrap_or_else(|_| panic!("round {round}: a frame handed over was never written"))
                    .unwrap();
            }
            peer.outbound.detach();
            task.abort();
        });
    }

    /// Fan-out after the sockets' runtime has shut down (a server stopping) neither hangs nor
    /// panics: the flusher is dropped unstarted and counts itself out.
    #[test]
    fn writing_after_the_runtime_is_gone_returns() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let flushers = Flushers::new(runtime.handle().clone());
        drop(runtime);
        let peer = Arc::new(Socket::new(1, None, 1 << 20));
        peer.outbound.push(text_frame(b"late"));
        flushers.write([peer.clone()]);
        assert_eq!(flushers.waiting.lock().active, 0);
        // A later write tries again.
        flushers.write([peer]);
        assert_eq!(flushers.waiting.lock().active, 0);
    }
}
