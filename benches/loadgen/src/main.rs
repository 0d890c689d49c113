//! The load generator: many WebSocket clients on one thread (tokio current_thread), raw TCP and a
//! minimal hand-written client (handshake, masked outgoing frames, frame parsing).
//!
//! It connects `--conns` sockets with a Payload-style token (`?token=`), optionally joins a room
//! per socket and waits for each ack, prints `{"event":"ready",...}`, then obeys stdin lines:
//!   `measure <expected> <timeout_ms>`  resets the counters, prints `{"event":"armed"}`, waits
//!                                      until `expected` events arrived (or the timeout), prints
//!                                      `{"event":"result",...}` with count, latency percentiles.
//!   `quit` (or EOF)                    exits (the kernel closes every socket).
//! Latency is emit-to-receive: each event carries `"t":<wall-clock ms with a fraction>`, set by
//! the sender just before emitting; same machine, same clock.
//!
//! `--kernel-ts 1` also measures latency to the moment each event reached the socket (the kernel's
//! receive timestamp, `SO_TIMESTAMPNS`, of the read that completed its frame) rather than the moment
//! this one thread got round to reading it: with one event to thousands of sockets, reading them one
//! after another adds the generator's own time to the later sockets' figures. Reported as
//! `*_arrival_us` beside the usual figures.
//!
//! `--check-ids N` checks exactly-once delivery: each event's `"id":<n>` (n < N) is recorded per
//! socket, and the result counts duplicates, ids out of order and ids out of range.
//!
//! `--protocol socketio` speaks Socket.IO 4 (Engine.IO v4) over the same raw WebSocket (for the
//! Socket.IO anchor; use `--path "/socket.io/?EIO=4&transport=websocket"`): it answers the open
//! packet `0{...}` with `40`, joins with `420["join","<room>"]` and waits for the ack `430[...]`,
//! answers pings `2` with `3`, and counts `42[...]` packets as events.
//!
//! Everything is bounded: connect phase (`--connect-timeout-ms`), each measurement (its timeout),
//! retries per socket (5).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use payload_realtime_loadgen::{
    client_frame, command_loop, connect_all, embedded_uint, find, frame_header, micros_since, now_us, percentile,
    run_local, Args, Counters, Round, Setup,
};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

struct Shared {
    c: Counters,
    /// --kernel-ts: latency to the kernel's receive timestamp.
    lat_arrival: RefCell<Vec<u32>>,
    // exactly-once check (--check-ids): a bitset of ids per socket, the last id per socket
    seen: RefCell<Vec<u64>>,
    last_id: RefCell<Vec<i64>>,
    duplicates: Cell<u64>,
    out_of_order: Cell<u64>,
    id_out_of_range: Cell<u64>,
    /// The read buffer every socket of this thread reads into (see `conn_task`).
    scratch: RefCell<Vec<u8>>,
}

struct Conf {
    addr: SocketAddr,
    host_header: String,
    path: String,
    /// Size of the shared read buffer.
    buf: usize,
    /// Source address to connect from (a distinct 127.x address per process avoids sharing
    /// ephemeral ports and TIME_WAIT entries between runs).
    src: Option<std::net::IpAddr>,
    /// Speak Socket.IO 4 / Engine.IO v4 (text packets) instead of payload-realtime's JSON.
    sio: bool,
    /// Ids per socket to track for the exactly-once check (0: off).
    check_ids: usize,
    /// Ask the kernel for receive timestamps (SO_TIMESTAMPNS).
    kernel_ts: bool,
}

/// SO_TIMESTAMPNS (= SCM_TIMESTAMPNS) on Linux x86_64 and aarch64: a `timespec` of CLOCK_REALTIME.
const SO_TIMESTAMPNS: libc::c_int = 35;

/// One `recvmsg` on a readable socket: the bytes read and the kernel's receive timestamp (µs since
/// the Unix epoch, the same clock as `now_us`) of the last segment read, when there is one.
fn recv_stamped(fd: libc::c_int, buf: &mut [u8]) -> std::io::Result<(usize, Option<u64>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data; every pointer in it points to a live buffer of the size given.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut stamp = None;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == SO_TIMESTAMPNS {
                let t: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                stamp = Some(t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1_000);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        Ok((n as usize, stamp))
    }
}

impl Conf {
    fn id_words(&self) -> usize {
        self.check_ids.div_ceil(64)
    }
}

async fn open(conf: &Conf, shared: &Shared, token: &str) -> Option<(TcpStream, Vec<u8>)> {
    for attempt in 0..5u64 {
        if attempt > 0 {
            shared.c.retries.set(shared.c.retries.get() + 1);
            tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
        }
        let Ok(sock) = TcpSocket::new_v4() else {
            continue;
        };
        if let Some(ip) = conf.src {
            // IP_BIND_ADDRESS_NO_PORT: pick the port at connect time (per 4-tuple), not at bind.
            let one: libc::c_int = 1;
            // SAFETY: a valid socket fd and a pointer to an int of the size given.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&sock),
                    libc::IPPROTO_IP,
                    24,
                    &one as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            if sock.bind(SocketAddr::new(ip, 0)).is_err() {
                continue;
            }
        }
        let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(10), sock.connect(conf.addr)).await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        if conf.kernel_ts {
            let one: libc::c_int = 1;
            // SAFETY: a valid socket fd and a pointer to an int of the size given.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&stream),
                    libc::SOL_SOCKET,
                    SO_TIMESTAMPNS,
                    &one as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        let sep = if conf.path.contains('?') { '&' } else { '?' };
        let req = format!(
            "GET {}{sep}token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            conf.path, conf.host_header
        );
        if stream.write_all(req.as_bytes()).await.is_err() {
            continue;
        }
        // The response head, and any frames that came with it.
        let mut buf = vec![0u8; 8192];
        let mut end = 0;
        let head_end = loop {
            let r = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf[end..])).await;
            match r {
                Ok(Ok(n)) if n > 0 => end += n,
                _ => break None,
            }
            if let Some(i) = find(&buf[..end], b"\r\n\r\n") {
                break Some(i + 4);
            }
            if end == buf.len() {
                break None;
            }
        };
        let Some(head_end) = head_end else { continue };
        if !buf.starts_with(b"HTTP/1.1 101") {
            // Refused (a token problem is not retried).
            return None;
        }
        buf.copy_within(head_end..end, 0);
        buf.truncate(end - head_end);
        return Some((stream, buf));
    }
    None
}

/// Counts one event received on socket `idx` (latency, per-socket count, exactly-once check).
/// `now`: when the read that completed the frame returned (one clock read per read, not per
/// frame: the frames of one read arrived together).
fn record_event(shared: &Shared, conf: &Conf, idx: usize, payload: &[u8], now: u64, arrival: Option<u64>) {
    shared.c.record(idx, payload, now, |t| {
        if let (Some(t), Some(at)) = (t, arrival) {
            shared.lat_arrival.borrow_mut().push(micros_since(t, at));
        }
        if conf.check_ids > 0 {
            match embedded_uint(payload, b"\"id\":") {
                Some(id) if (id as usize) < conf.check_ids => {
                    let id = id as usize;
                    let word = idx * conf.id_words() + id / 64;
                    let bit = 1u64 << (id % 64);
                    let mut seen = shared.seen.borrow_mut();
                    if seen[word] & bit != 0 {
                        shared.duplicates.set(shared.duplicates.get() + 1);
                    }
                    seen[word] |= bit;
                    let mut last = shared.last_id.borrow_mut();
                    if (id as i64) <= last[idx] {
                        shared.out_of_order.set(shared.out_of_order.get() + 1);
                    }
                    last[idx] = id as i64;
                }
                _ => shared.id_out_of_range.set(shared.id_out_of_range.get() + 1),
            }
        }
    });
}

impl Round for Shared {
    fn reset(&self) {
        self.lat_arrival.borrow_mut().clear();
        self.seen.borrow_mut().iter_mut().for_each(|w| *w = 0);
        self.last_id.borrow_mut().iter_mut().for_each(|l| *l = -1);
        self.duplicates.set(0);
        self.out_of_order.set(0);
        self.id_out_of_range.set(0);
    }

    fn report(&self, _armed_us: u64, out: &mut Map<String, Value>) {
        let mut lat_arrival = std::mem::take(&mut *self.lat_arrival.borrow_mut());
        lat_arrival.sort_unstable();
        out.insert("arrival_samples".into(), json!(lat_arrival.len()));
        out.insert("p50_arrival_us".into(), json!(percentile(&lat_arrival, 0.50)));
        out.insert("p99_arrival_us".into(), json!(percentile(&lat_arrival, 0.99)));
        out.insert("max_arrival_us".into(), json!(lat_arrival.last().copied().unwrap_or(0)));
        out.insert("duplicates".into(), json!(self.duplicates.get()));
        out.insert("out_of_order".into(), json!(self.out_of_order.get()));
        out.insert("id_out_of_range".into(), json!(self.id_out_of_range.get()));
    }
}

/// What a frame asks of its connection.
enum Flow {
    Go,
    /// The server closed (or the connection must end): reply, then stop reading.
    Close,
}

/// One client socket's protocol state (everything but its reads and writes).
struct Client<'s> {
    idx: usize,
    conf: Rc<Conf>,
    shared: Rc<Shared>,
    room: Option<String>,
    mask: [u8; 4],
    /// The connect permit, held until the socket settled (joined, refused or unjoined).
    permit: Option<tokio::sync::SemaphorePermit<'s>>,
    awaiting_ack: bool,
    /// Socket.IO: settled (and joined) only after its own handshake packets.
    sio_pending: bool,
    /// When the last read returned (µs since the Unix epoch).
    read_at: u64,
    /// --kernel-ts: the receive timestamp of the last read (the one that completes a frame).
    arrival: Option<u64>,
}

impl Client<'_> {
    fn settle(&mut self) {
        self.permit.take();
        self.shared.c.settle();
    }

    /// Takes every complete frame at the start of `data`, queueing what must be written back in
    /// `replies`; returns how many bytes it took (the rest is an incomplete frame).
    fn take_frames(&mut self, data: &[u8], replies: &mut Vec<Vec<u8>>) -> (usize, Flow) {
        let mut start = 0;
        while let Some((fin, opcode, _masked, h, len)) = frame_header(&data[start..]) {
            let total = h + len;
            if data.len() - start < total {
                break;
            }
            let payload = &data[start + h..start + total];
            start += total;
            if let Flow::Close = self.on_frame(fin, opcode, payload, replies) {
                return (start, Flow::Close);
            }
        }
        (start, Flow::Go)
    }

    fn on_frame(&mut self, fin: bool, opcode: u8, p: &[u8], replies: &mut Vec<Vec<u8>>) -> Flow {
        let (shared, conf) = (self.shared.clone(), self.conf.clone());
        match opcode {
            0x0..=0x2 if conf.sio => {
                let reply: Option<Vec<u8>> = if p.starts_with(b"42") {
                    record_event(&shared, &conf, self.idx, p, self.read_at, self.arrival);
                    None
                } else if p == b"2" {
                    Some(b"3".to_vec())
                } else if p.starts_with(b"0") {
                    Some(b"40".to_vec())
                } else if p.starts_with(b"40") && self.sio_pending {
                    self.sio_pending = false;
                    match &self.room {
                        Some(room) => {
                            self.awaiting_ack = true;
                            Some(format!(r#"420["join","{room}"]"#).into_bytes())
                        }
                        None => {
                            self.settle();
                            None
                        }
                    }
                } else if p.starts_with(b"43") && self.awaiting_ack {
                    shared.c.joined.set(shared.c.joined.get() + 1);
                    self.awaiting_ack = false;
                    self.settle();
                    None
                } else if p.starts_with(b"44") && (self.sio_pending || self.awaiting_ack) {
                    // connect_error
                    shared.c.join_errors.set(shared.c.join_errors.get() + 1);
                    self.sio_pending = false;
                    self.awaiting_ack = false;
                    self.settle();
                    None
                } else {
                    None
                };
                if let Some(reply) = reply {
                    replies.push(client_frame(0x1, &reply, self.mask));
                }
            }
            0x0..=0x2 => {
                if self.awaiting_ack {
                    if find(p, b"\"ack\"").is_some() {
                        shared.c.joined.set(shared.c.joined.get() + 1);
                    } else {
                        shared.c.join_errors.set(shared.c.join_errors.get() + 1);
                    }
                    self.awaiting_ack = false;
                    self.settle();
                } else if fin {
                    record_event(&shared, &conf, self.idx, p, self.read_at, self.arrival);
                }
            }
            0x9 => replies.push(client_frame(0xA, p, self.mask)),
            0x8 => {
                replies.push(client_frame(0x8, &p[..p.len().min(2)], self.mask));
                return Flow::Close;
            }
            _ => {}
        }
        Flow::Go
    }

    /// The connection ended: counted, and a socket that never settled fails.
    fn ended(&mut self) {
        let c = &self.shared.c;
        c.closed.set(c.closed.get() + 1);
        if self.awaiting_ack || self.sio_pending {
            c.failed.set(c.failed.get() + 1);
            self.settle();
        }
    }
}

/// One read on a readable socket into the thread's scratch buffer, and the frames it completes.
/// `Ok(None)`: nothing to read after all (readiness was stale). `Err`: the connection ended.
fn read_and_take(
    client: &mut Client<'_>,
    stream: &TcpStream,
    pending: &mut Vec<u8>,
    replies: &mut Vec<Vec<u8>>,
) -> std::io::Result<Option<Flow>> {
    let shared = client.shared.clone();
    let mut scratch = shared.scratch.borrow_mut();
    let read = if client.conf.kernel_ts {
        let fd = std::os::fd::AsRawFd::as_raw_fd(stream);
        stream.try_io(tokio::io::Interest::READABLE, || recv_stamped(fd, &mut scratch))
    } else {
        stream.try_read(&mut scratch).map(|n| (n, None))
    };
    let (n, stamp) = match read {
        Ok((0, _)) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
        Err(e) => return Err(e),
    };
    client.read_at = now_us();
    client.arrival = stamp;
    let flow = if pending.is_empty() {
        // The usual case: whole frames straight from the scratch buffer, only a torn tail kept.
        let (used, flow) = client.take_frames(&scratch[..n], replies);
        pending.extend_from_slice(&scratch[used..n]);
        flow
    } else {
        pending.extend_from_slice(&scratch[..n]);
        let (used, flow) = client.take_frames(pending, replies);
        pending.drain(..used);
        flow
    };
    Ok(Some(flow))
}

/// One client socket: handshake, optional join (holding a connect permit until the ack), then
/// reads frames until the connection ends.
///
/// Reads go into one scratch buffer shared by every socket of this thread (a socket's read is
/// complete before another task runs), large enough for a whole burst: a socket keeps only the
/// torn tail of a frame between reads. One read per socket per burst and a buffer that stays in
/// cache keep the generator's share of the CPU small, where a buffer per socket would mean
/// several reads per burst or gigabytes of buffers across 10,000 sockets.
async fn conn_task(
    idx: usize,
    conf: Rc<Conf>,
    shared: Rc<Shared>,
    token: Rc<String>,
    room: Option<String>,
    sem: Rc<Semaphore>,
) {
    let permit = Some(sem.acquire().await.expect("semaphore"));
    let Some((mut stream, leftover)) = open(&conf, &shared, &token).await else {
        shared.c.failed.set(shared.c.failed.get() + 1);
        shared.c.settle();
        return;
    };
    shared.c.handshake();
    let mut client = Client {
        idx,
        mask: (idx as u32).wrapping_mul(2_654_435_761).to_be_bytes(),
        sio_pending: conf.sio,
        conf,
        shared,
        room,
        permit,
        awaiting_ack: false,
        read_at: now_us(),
        arrival: None,
    };
    match (&client.room, client.conf.sio) {
        // Socket.IO: the connect permit is held until its handshake packets (and the join) complete.
        (_, true) => {}
        (Some(room), false) => {
            let msg = format!(r#"{{"type":"join-collection","collection":"{room}","id":1}}"#);
            if stream
                .write_all(&client_frame(0x1, msg.as_bytes(), client.mask))
                .await
                .is_err()
            {
                client.shared.c.failed.set(client.shared.c.failed.get() + 1);
                client.settle();
                return;
            }
            client.awaiting_ack = true;
        }
        (None, false) => client.settle(),
    }
    let mut replies = Vec::new();
    // Frames that came with the handshake's response.
    let mut pending = leftover;
    let (used, mut flow) = client.take_frames(&pending, &mut replies);
    pending.drain(..used);
    loop {
        for reply in replies.drain(..) {
            if stream.write_all(&reply).await.is_err() {
                flow = Flow::Close;
                break;
            }
        }
        if let Flow::Close = flow {
            break;
        }
        if stream.readable().await.is_err() {
            break;
        }
        match read_and_take(&mut client, &stream, &mut pending, &mut replies) {
            Ok(Some(f)) => flow = f,
            Ok(None) => {}
            Err(_) => break,
        }
    }
    client.ended();
}

async fn run(args: Args) {
    let setup = Setup::from_args(&args);
    let conns = setup.conns as usize;
    let conf = Rc::new(Conf {
        addr: format!("{}:{}", setup.host, setup.port).parse().expect("address"),
        host_header: format!("{}:{}", setup.host, setup.port),
        path: setup.path.clone(),
        buf: (args.num("buf", 256 * 1024) as usize).max(4096),
        src: match args.str("src", "").as_str() {
            "" => None,
            ip => Some(ip.parse().expect("--src: an IP address")),
        },
        sio: match args.str("protocol", "realtime").as_str() {
            "realtime" => false,
            "socketio" => true,
            other => panic!("--protocol: realtime or socketio, not {other}"),
        },
        check_ids: args.num("check-ids", 0) as usize,
        kernel_ts: args.num("kernel-ts", 0) == 1,
    });
    let shared = Rc::new(Shared {
        c: Counters::new(setup.conns),
        lat_arrival: RefCell::new(Vec::new()),
        seen: RefCell::new(vec![0; conns * conf.id_words()]),
        last_id: RefCell::new(vec![-1; if conf.check_ids > 0 { conns } else { 0 }]),
        duplicates: Cell::new(0),
        out_of_order: Cell::new(0),
        id_out_of_range: Cell::new(0),
        scratch: RefCell::new(vec![0; conf.buf]),
    });
    let ready = connect_all(&setup, &shared.c, |i, token, room, sem| {
        tokio::task::spawn_local(conn_task(i, conf.clone(), shared.clone(), token, room, sem));
    })
    .await;
    println!("{}", Value::Object(ready));
    command_loop("loadgen", &shared.c, &*shared).await;
}

fn main() {
    run_local(run);
}
