//! One socket's outbound side: a bounded queue of ready-made frames and the writer that drains
//! it with one vectored write per burst.
//!
//! Fan-out pushes a shared [`Bytes`] frame onto each recipient's queue and wakes the writer only
//! when the queue goes from empty to non-empty. The writer takes everything queued at once and
//! hands it to the kernel as one `writev`: with 10,000 sockets the cost is one syscall per socket
//! per burst, not per message (see the fan-out table in the design facts).
//!
//! The queue is bounded in bytes (`maxBackpressure`, counting what the writer has taken but not
//! yet written). A push past the bound evicts the socket: the queue is dropped and the socket is
//! closed with 4008 once the write in flight completes, or cut after a grace period if the client
//! never reads again.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::protocol::{close_code, close_frame};

/// How long an evicted socket's in-flight write may still take before the TCP connection is cut.
pub const EVICTION_GRACE: Duration = Duration::from_secs(10);

/// Most frames handed to one `writev` (Linux's IOV_MAX is 1024).
const MAX_IOVECS: usize = 512;

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The socket is closing; the frame was dropped.
    Closed,
    /// This push passed `maxBackpressure`: the socket is now evicted (4008).
    Evicted,
}

/// How the writer should end.
#[derive(Debug, Clone)]
enum Ending {
    /// Write what is queued, then this close frame.
    AfterQueue(Bytes),
    /// Drop what is queued, write this close frame right away.
    Now(Bytes),
}

#[derive(Default)]
struct State {
    queue: VecDeque<Bytes>,
    /// Bytes queued plus bytes taken by the writer and not yet written.
    bytes: usize,
    /// Control frames (pong, ping) that bypass the byte bound and go first.
    control: Vec<Bytes>,
    ending: Option<Ending>,
    /// Set when the socket was evicted as a slow consumer.
    evicted: bool,
}

pub struct Outbound {
    state: Mutex<State>,
    wake: Notify,
    limit: usize,
    /// Cancelled when the writer must give up on a write that does not progress.
    evict: CancellationToken,
}

impl Outbound {
    pub fn new(limit: usize) -> Outbound {
        Outbound {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            limit,
            evict: CancellationToken::new(),
        }
    }

    /// Queues a data frame, unless the socket is closing or this frame passes the bound.
    pub fn push(&self, frame: Bytes) -> Push {
        let mut s = self.state.lock();
        if s.ending.is_some() {
            return Push::Closed;
        }
        if s.bytes + frame.len() > self.limit {
            let queued: usize = s.queue.iter().map(Bytes::len).sum();
            s.bytes -= queued;
            s.queue = VecDeque::new();
            s.evicted = true;
            s.ending = Some(Ending::Now(close_frame(
                close_code::SLOW_CONSUMER,
                "slow consumer: outbound queue over maxBackpressure",
            )));
            drop(s);
            self.evict.cancel();
            self.wake.notify_one();
            return Push::Evicted;
        }
        let was_empty = s.queue.is_empty() && s.control.is_empty();
        s.bytes += frame.len();
        s.queue.push_back(frame);
        drop(s);
        if was_empty {
            self.wake.notify_one();
        }
        Push::Queued
    }

    /// Queues a control frame (pong, ping): small, exempt from the bound, sent before data.
    pub fn push_control(&self, frame: Bytes) {
        let mut s = self.state.lock();
        if s.ending.is_some() {
            return;
        }
        s.control.push(frame);
        drop(s);
        self.wake.notify_one();
    }

    /// Closes after what is already queued has been written. The first ending wins.
    pub fn close(&self, code: u16, reason: &str) {
        self.end(Ending::AfterQueue(close_frame(code, reason)));
    }

    /// Closes at once, dropping what is queued (protocol errors, the client's own close).
    pub fn close_now(&self, frame: Bytes) {
        self.end(Ending::Now(frame));
    }

    fn end(&self, ending: Ending) {
        let mut s = self.state.lock();
        if s.ending.is_none() {
            if let Ending::Now(_) = ending {
                let queued: usize = s.queue.iter().map(Bytes::len).sum();
                s.bytes -= queued;
                s.queue.clear();
            }
            s.ending = Some(ending);
        }
        drop(s);
        self.wake.notify_one();
    }

    /// Whether the socket is closing (nothing more will be queued).
    pub fn is_closing(&self) -> bool {
        self.state.lock().ending.is_some()
    }

    /// Whether the socket was evicted as a slow consumer.
    pub fn was_evicted(&self) -> bool {
        self.state.lock().evicted
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// Waits until there is something to write; `true` if it had to wait (woken by a push).
    async fn wait(&self) -> bool {
        let mut waited = false;
        loop {
            {
                let s = self.state.lock();
                if !s.queue.is_empty() || !s.control.is_empty() || s.ending.is_some() {
                    return waited;
                }
            }
            self.wake.notified().await;
            waited = true;
        }
    }

    /// Takes the next batch: control frames first, then data; `ending` when the socket must
    /// close after this batch.
    fn take_batch(&self) -> (Vec<Bytes>, usize, Option<Bytes>) {
        let mut s = self.state.lock();
        let ending = match &s.ending {
            Some(Ending::Now(f)) | Some(Ending::AfterQueue(f)) => Some(f.clone()),
            None => None,
        };
        let mut batch = std::mem::take(&mut s.control);
        let mut data_bytes = 0;
        while batch.len() < MAX_IOVECS {
            let Some(f) = s.queue.pop_front() else { break };
            data_bytes += f.len();
            batch.push(f);
        }
        // Only end once the queue is empty: a long queue takes several batches.
        let ending = if s.queue.is_empty() { ending } else { None };
        (batch, data_bytes, ending)
    }

    /// Marks bytes as written.
    fn written(&self, n: usize) {
        self.state.lock().bytes -= n;
    }
}

/// Why the writer stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum WriterEnd {
    /// It wrote the close frame.
    Closed,
    /// The connection broke or was cut.
    Broken,
}

/// Drains the queue into the socket until the socket closes. `cancel` cuts it at once
/// (server shutdown after its grace period).
pub async fn run_writer<W: AsyncWrite + Unpin>(out: &Outbound, io: &mut W, cancel: &CancellationToken) -> WriterEnd {
    loop {
        let woken = tokio::select! {
            b = out.wait() => b,
            _ = cancel.cancelled() => return WriterEnd::Broken,
        };
        if woken {
            // Let whatever is fanning out right now queue a few more frames first: one write
            // for a burst of events rather than one per event (measured: many rooms).
            tokio::task::yield_now().await;
        }
        let (batch, data_bytes, ending) = out.take_batch();
        if !batch.is_empty() {
            let write = write_all_vectored(io, &batch);
            tokio::pin!(write);
            let res = tokio::select! {
                r = &mut write => r,
                _ = cancel.cancelled() => return WriterEnd::Broken,
                _ = out.evict.cancelled() => {
                    match tokio::time::timeout(EVICTION_GRACE, &mut write).await {
                        Ok(r) => r,
                        Err(_) => return WriterEnd::Broken,
                    }
                }
            };
            if res.is_err() {
                return WriterEnd::Broken;
            }
            out.written(data_bytes);
        }
        if let Some(close) = ending {
            let res = tokio::time::timeout(EVICTION_GRACE, async {
                io.write_all(&close).await?;
                io.flush().await?;
                io.shutdown().await
            })
            .await;
            return match res {
                Ok(Ok(())) => WriterEnd::Closed,
                _ => WriterEnd::Broken,
            };
        }
    }
}

/// Writes every frame of the batch, as few `writev` calls as the kernel allows.
async fn write_all_vectored<W: AsyncWrite + Unpin>(io: &mut W, frames: &[Bytes]) -> std::io::Result<()> {
    let mut index = 0; // first frame not fully written
    let mut offset = 0; // bytes of frames[index] already written
    while index < frames.len() {
        let slices: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&frames[index][offset..]))
            .chain(frames[index + 1..].iter().map(|f| IoSlice::new(f)))
            .collect();
        let mut n = io.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let left = frames[index].len() - offset;
            if n >= left {
                n -= left;
                index += 1;
                offset = 0;
            } else {
                offset += n;
                n = 0;
            }
        }
        // Skip empty frames so `index` never points past written data.
        while index < frames.len() && frames[index].len() == offset {
            index += 1;
            offset = 0;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::text_frame;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn batches_are_written_in_order_and_end_with_close() {
        let out = Outbound::new(1 << 20);
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        for i in 0..100u32 {
            assert_eq!(out.push(text_frame(i.to_string().as_bytes())), Push::Queued);
        }
        out.close(close_code::GOING_AWAY, "bye");
        let cancel = CancellationToken::new();
        let end = run_writer(&out, &mut a, &cancel).await;
        assert_eq!(end, WriterEnd::Closed);
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        let mut expect = Vec::new();
        for i in 0..100u32 {
            expect.extend_from_slice(&text_frame(i.to_string().as_bytes()));
        }
        expect.extend_from_slice(&close_frame(close_code::GOING_AWAY, "bye"));
        assert_eq!(got, expect);
        assert_eq!(out.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn passing_the_bound_evicts_with_4008() {
        let out = Outbound::new(1000);
        assert_eq!(out.push(Bytes::from(vec![0u8; 600])), Push::Queued);
        assert_eq!(out.push(Bytes::from(vec![0u8; 600])), Push::Evicted);
        assert!(out.was_evicted());
        assert_eq!(out.push(Bytes::from(vec![0u8; 1])), Push::Closed);
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let end = run_writer(&out, &mut a, &CancellationToken::new()).await;
        assert_eq!(end, WriterEnd::Closed);
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got[0], 0x88);
        assert_eq!(u16::from_be_bytes([got[2], got[3]]), 4008);
    }

    #[tokio::test]
    async fn partial_writes_keep_frames_whole() {
        // A tiny pipe forces many short writes.
        let out = Outbound::new(1 << 20);
        let (mut a, mut b) = tokio::io::duplex(7);
        let frames: Vec<Bytes> = (0..50).map(|i| text_frame(&vec![b'a' + (i % 26) as u8; 300])).collect();
        for f in &frames {
            out.push(f.clone());
        }
        out.close(1000, "");
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            got
        });
        run_writer(&out, &mut a, &CancellationToken::new()).await;
        drop(a);
        let got = reader.await.unwrap();
        let mut expect: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        expect.extend_from_slice(&close_frame(1000, ""));
        assert_eq!(got, expect);
    }
}
