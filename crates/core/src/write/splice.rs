//! Large buffers that many sockets send, handed to each socket by reference instead of copied.
//!
//! `sendmsg` copies what it sends into the socket's buffers: a burst of 100 KB to each of
//! 10,000 sockets is a gigabyte of copying, and the reader then copies out of a gigabyte of distinct pages. Here
//! the buffer is written once into a pipe ([`Piped`]); each socket gets it with `tee` (the
//! pipe's pages referenced again, into a scratch pipe of the thread) and `splice` (those
//! references moved into the socket), so the segments of every socket point at the same few
//! pages, hot in cache. The writer's CPU per socket write falls by half for 100 KB, less for
//! smaller buffers, and not at all for 4 KB and less (measured in docs/design.md). Hence
//! [`MIN_BYTES`], and
//! a buffer is piped only once [`MIN_SOCKETS`] sockets have taken it (making the pipe costs a
//! few syscalls and one copy).
//!
//! Linux only. Elsewhere, or whenever a pipe cannot be had (descriptors, the user's pipe
//! quota), [`Piped::new`] is `None` and the bytes go through `sendmsg` as before.
//!
//! Nothing is written into a pipe after it is filled (the pages `tee` shares are never
//! changed), and a `splice` into a socket whose peer has gone raises `SIGPIPE`, which Node
//! (like any Rust binary) ignores: the call fails with `EPIPE`, as `sendmsg` would.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Smallest buffer worth piping.
pub(crate) const MIN_BYTES: usize = 16 * 1024;

/// Sockets that take one buffer by copy before it is piped for the others.
pub(crate) const MIN_SOCKETS: usize = 32;

/// Largest buffer piped: a pipe of 64 pages (a run of events is at most this, see `dispatch`).
pub(crate) const MAX_BYTES: usize = 256 * 1024;

/// Pipes alive at once, at most: each holds a descriptor until the last socket has sent its
/// buffer (the process shares its open-file limit with its sockets), and up to 64 pages of the
/// user's pipe quota (`fs.pipe-user-pages-soft`, 16,384 pages by default, which the rest of the
/// process may need too). A burst to one room has one or two alive.
const MAX_LIVE: usize = 64;

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Bytes handed to sockets by reference since the process started (see `stats`).
pub(crate) static SPLICED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// A buffer's bytes held in a pipe, which `tee` can reference any number of times. Dropped
/// (the pipe closed) with the last queued frame that carries it.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) struct Piped {
    #[cfg(target_os = "linux")]
    read: std::os::fd::OwnedFd,
    len: usize,
}

impl Drop for Piped {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Piped {
    /// A pipe holding `bytes`, or `None` when it is not worth it or cannot be had.
    pub(crate) fn new(bytes: &[u8]) -> Option<Arc<Piped>> {
        if !(MIN_BYTES..=MAX_BYTES).contains(&bytes.len()) {
            return None;
        }
        if LIVE.fetch_add(1, Ordering::Relaxed) >= MAX_LIVE {
            LIVE.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        // From here a `Piped` (or its failure) gives the slot back.
        Self::fill(bytes).map(Arc::new).or_else(|| {
            LIVE.fetch_sub(1, Ordering::Relaxed);
            None
        })
    }

    #[cfg(target_os = "linux")]
    fn fill(bytes: &[u8]) -> Option<Piped> {
        let (read, write) = sys::pipe(bytes.len())?;
        let mut at = 0;
        while at < bytes.len() {
            // Non-blocking, sized to hold it all: a short write means it cannot.
            // SAFETY: the pointer and length name the initialized tail of `bytes`, which
            // outlives the call; `write` is an open descriptor this function owns.
            let n = unsafe {
                libc::write(
                    std::os::fd::AsRawFd::as_raw_fd(&write),
                    bytes[at..].as_ptr().cast(),
                    bytes.len() - at,
                )
            };
            if n <= 0 {
                return None;
            }
            at += n as usize;
        }
        Some(Piped { read, len: bytes.len() })
    }

    #[cfg(not(target_os = "linux"))]
    fn fill(_bytes: &[u8]) -> Option<Piped> {
        None
    }
}

/// Sends the whole of `piped` to the socket `fd` (non-blocking) without copying it: `Ok(n)`
/// bytes went, fewer than its length when the socket's buffer filled (the caller writes the
/// rest from the bytes themselves); `WouldBlock` when none did; any other error means this
/// way is not available and the caller should write the bytes instead.
#[cfg(target_os = "linux")]
pub(crate) fn send(piped: &Piped, fd: std::os::fd::RawFd) -> std::io::Result<usize> {
    sys::send(piped, fd)
}

#[cfg(target_os = "linux")]
mod sys {
    use std::cell::RefCell;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

    use super::{Piped, MAX_BYTES, SPLICED_BYTES};

    /// A non-blocking pipe with room for `len` bytes: (read end, write end).
    pub(crate) fn pipe(len: usize) -> Option<(OwnedFd, OwnedFd)> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return None;
        }
        // SAFETY: pipe2 succeeded, so both are new open descriptors owned by no one else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let size = len.next_multiple_of(4096).max(16 * 4096);
        // SAFETY: F_SETPIPE_SZ on an open pipe descriptor takes an int and touches no memory.
        let got = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
        (got >= 0 && got as usize >= len).then_some((read, write))
    }

    thread_local! {
        /// This thread's scratch pipe, empty between sends: `tee` fills it, `splice` empties
        /// it into the socket. Remade when a send leaves something in it.
        static SCRATCH: RefCell<Option<(OwnedFd, OwnedFd)>> = const { RefCell::new(None) };
    }

    pub(crate) fn send(piped: &Piped, fd: RawFd) -> io::Result<usize> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            if scratch.is_none() {
                *scratch = Some(pipe(MAX_BYTES).ok_or_else(|| io::Error::other("no scratch pipe"))?);
            }
            let (read, write) = scratch.as_ref().expect("made above");
            // SAFETY: both are open pipe descriptors (the piped frame's read end, owned by
            // `piped`, and this thread's scratch pipe); tee touches no memory of ours.
            let teed = unsafe {
                libc::tee(
                    piped.read.as_raw_fd(),
                    write.as_raw_fd(),
                    piped.len,
                    libc::SPLICE_F_NONBLOCK,
                )
            };
            if teed <= 0 {
                // Never `WouldBlock` from here: that would have the caller wait for the socket,
                // which is not what is full. The bytes are written the ordinary way instead.
                let why = if teed < 0 {
                    io::Error::last_os_error()
                } else {
                    io::Error::other("nothing moved")
                };
                return Err(io::Error::other(format!("tee: {why}")));
            }
            let teed = teed as usize;
            // SAFETY: `read` is the scratch pipe's open read end; `fd` is the socket, which the
            // caller keeps open for the call (a flusher holds the outbound's sink lock, see
            // `Outbound::write_through`); null offsets are what splice takes for a pipe and a
            // socket.
            let spliced = unsafe {
                libc::splice(
                    read.as_raw_fd(),
                    std::ptr::null_mut(),
                    fd,
                    std::ptr::null_mut(),
                    teed,
                    libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
                )
            };
            // The error is read before anything else can overwrite it (the closes below).
            let result = if spliced < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(spliced as usize)
            };
            let sent = spliced.max(0) as usize;
            if sent < teed {
                // What the socket did not take stays in the scratch pipe: a new one is made
                // for the next send rather than reading this out.
                *scratch = None;
            }
            SPLICED_BYTES.fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
            match result {
                Ok(0) => Err(io::ErrorKind::WouldBlock.into()),
                other => other,
            }
        })
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (s, c)
    }

    #[test]
    fn small_and_oversized_buffers_are_not_piped() {
        assert!(Piped::new(&vec![1u8; MIN_BYTES - 1]).is_none());
        assert!(Piped::new(&vec![1u8; MAX_BYTES + 1]).is_none());
    }

    /// The same pipe, sent to several sockets, gives each the same bytes; a socket whose buffer
    /// fills takes part, and the rest is left to the caller; the pipe itself is unchanged.
    #[test]
    fn one_pipe_reaches_many_sockets_and_a_full_socket_takes_part() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let piped = Piped::new(&data).expect("a pipe");
        assert_eq!(piped.len, data.len());
        for _ in 0..3 {
            let (server, mut client) = pair();
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                client.read_to_end(&mut got).unwrap();
                got
            });
            server.set_nonblocking(true).unwrap();
            let sent = loop {
                match send(&piped, server.as_raw_fd()) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
            };
            // Whatever the socket did not take goes the ordinary way.
            server.set_nonblocking(false).unwrap();
            (&server).write_all(&data[sent..]).unwrap();
            drop(server);
            assert!(reader.join().unwrap() == data, "the bytes arrive whole");
        }
        // A socket nobody reads: the sends stop at its buffer, each took what it could.
        let (server, _client) = pair();
        server.set_nonblocking(true).unwrap();
        let mut total = 0;
        let blocked = loop {
            match send(&piped, server.as_raw_fd()) {
                Ok(n) => {
                    assert!(n <= data.len());
                    total += n;
                    if n < data.len() {
                        // Partly taken: the rest of this buffer would go by `sendmsg`; the
                        // next buffer starts whole again.
                        continue;
                    }
                }
                Err(e) => break e,
            }
            assert!(total < 1 << 30, "a socket that is not read fills up");
        };
        assert_eq!(blocked.kind(), std::io::ErrorKind::WouldBlock);
        assert!(total > 0);
    }
}
