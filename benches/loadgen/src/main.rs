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
//! Everything is bounded: connect phase (`--connect-timeout-ms`), each measurement (its timeout),
//! retries per socket (5).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use payload_realtime_loadgen::{client_frame, cpu_us, embedded_time_us, find, frame_header, now_us, rss_bytes, Args};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore};

#[derive(Default)]
struct Shared {
    // connect phase
    handshakes: Cell<u64>,
    last_handshake_us: Cell<u64>,
    joined: Cell<u64>,
    failed: Cell<u64>,
    retries: Cell<u64>,
    join_errors: Cell<u64>,
    settled: Cell<u64>,
    // measurement
    armed: Cell<bool>,
    expected: Cell<u64>,
    delivered: Cell<u64>,
    stray: Cell<u64>,
    first_recv_us: Cell<u64>,
    last_recv_us: Cell<u64>,
    lat: RefCell<Vec<u32>>,
    per_socket: RefCell<Vec<u32>>,
    closed: Cell<u64>,
    notify: Notify,
}

struct Conf {
    addr: SocketAddr,
    host_header: String,
    path: String,
    join: bool,
    buf: usize,
    conns: u64,
    /// Source address to connect from (a distinct 127.x address per process avoids sharing
    /// ephemeral ports and TIME_WAIT entries between runs).
    src: Option<std::net::IpAddr>,
}

fn payload_key(secret: &str) -> Vec<u8> {
    let hex: String = Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    hex.as_bytes()[..32].to_vec()
}

/// A token as Payload 3 mints it (HS256, key = sha256(secret) hex, first 32 chars).
fn make_token(key: &[u8], user: u64, now: u64) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"HS256","typ":"JWT","authVersion":1}"#);
    let claims = format!(
        r#"{{"id":"u{user}","collection":"users","email":"u{user}@example.com","sid":"bench-sid-{user}","iat":{now},"exp":{}}}"#,
        now + 7200
    );
    let body = format!("{header}.{}", b64.encode(claims.as_bytes()));
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("hmac key");
    mac.update(body.as_bytes());
    let sig = b64.encode(mac.finalize().into_bytes());
    format!("{body}.{sig}")
}

fn settle(shared: &Shared, conf: &Conf) {
    shared.settled.set(shared.settled.get() + 1);
    if shared.settled.get() == conf.conns {
        shared.notify.notify_waiters();
    }
}

async fn open(conf: &Conf, shared: &Shared, token: &str) -> Option<(TcpStream, Vec<u8>)> {
    for attempt in 0..5u64 {
        if attempt > 0 {
            shared.retries.set(shared.retries.get() + 1);
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
        let req = format!(
            "GET {}?token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            conf.path, conf.host_header
        );
        if stream.write_all(req.as_bytes()).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; conf.buf.max(4096)];
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

/// One client socket: handshake, optional join (holding a connect permit until the ack), then
/// reads frames until the connection ends.
async fn conn_task(
    idx: usize,
    conf: Rc<Conf>,
    shared: Rc<Shared>,
    token: Rc<String>,
    room: Option<String>,
    sem: Rc<Semaphore>,
) {
    let mut permit = Some(sem.acquire().await.expect("semaphore"));
    let Some((mut stream, leftover)) = open(&conf, &shared, &token).await else {
        shared.failed.set(shared.failed.get() + 1);
        settle(&shared, &conf);
        return;
    };
    shared.handshakes.set(shared.handshakes.get() + 1);
    shared.last_handshake_us.set(now_us());
    let mut buf = leftover;
    let mut end = buf.len();
    buf.resize(conf.buf.max(end), 0);
    let mut start = 0usize;
    let mask = (idx as u32).wrapping_mul(2_654_435_761).to_be_bytes();
    let mut awaiting_ack = false;
    if let Some(room) = &room {
        let msg = format!(r#"{{"type":"join-collection","collection":"{room}","id":1}}"#);
        if stream
            .write_all(&client_frame(0x1, msg.as_bytes(), mask))
            .await
            .is_err()
        {
            shared.failed.set(shared.failed.get() + 1);
            settle(&shared, &conf);
            return;
        }
        awaiting_ack = true;
    } else {
        permit.take();
        settle(&shared, &conf);
    }
    loop {
        // Every complete frame in buf[start..end].
        while let Some((fin, opcode, _masked, h, len)) = frame_header(&buf[start..end]) {
            let total = h + len;
            if end - start < total {
                if total > buf.len() {
                    buf.copy_within(start..end, 0);
                    end -= start;
                    start = 0;
                    buf.resize(total, 0);
                }
                break;
            }
            let payload = start + h..start + total;
            start += total;
            match opcode {
                0x0..=0x2 => {
                    if awaiting_ack {
                        let p = &buf[payload];
                        if find(p, b"\"ack\"").is_some() {
                            shared.joined.set(shared.joined.get() + 1);
                        } else {
                            shared.join_errors.set(shared.join_errors.get() + 1);
                        }
                        awaiting_ack = false;
                        permit.take();
                        settle(&shared, &conf);
                    } else if fin {
                        if shared.armed.get() {
                            let now = now_us();
                            let d = shared.delivered.get() + 1;
                            shared.delivered.set(d);
                            if shared.first_recv_us.get() == 0 {
                                shared.first_recv_us.set(now);
                            }
                            shared.last_recv_us.set(now);
                            if let Some(t) = embedded_time_us(&buf[payload]) {
                                shared
                                    .lat
                                    .borrow_mut()
                                    .push(now.saturating_sub(t).min(u32::MAX as u64) as u32);
                            }
                            shared.per_socket.borrow_mut()[idx] += 1;
                            if d == shared.expected.get() {
                                shared.notify.notify_waiters();
                            }
                        } else {
                            shared.stray.set(shared.stray.get() + 1);
                        }
                    }
                }
                0x9 => {
                    let pong = client_frame(0xA, &buf[payload], mask);
                    if stream.write_all(&pong).await.is_err() {
                        break;
                    }
                }
                0x8 => {
                    let close = client_frame(0x8, &buf[payload.start..payload.start + len.min(2)], mask);
                    let _ = stream.write_all(&close).await;
                    shared.closed.set(shared.closed.get() + 1);
                    if awaiting_ack {
                        shared.failed.set(shared.failed.get() + 1);
                        settle(&shared, &conf);
                    }
                    return;
                }
                _ => {}
            }
        }
        if start == end {
            start = 0;
            end = 0;
        } else if end == buf.len() {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        match stream.read(&mut buf[end..]).await {
            Ok(n) if n > 0 => end += n,
            _ => {
                shared.closed.set(shared.closed.get() + 1);
                if awaiting_ack {
                    shared.failed.set(shared.failed.get() + 1);
                    settle(&shared, &conf);
                }
                return;
            }
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as u64
}

async fn run(args: Args) {
    let host = args.str("host", "127.0.0.1");
    let port = args.num("port", 3002);
    let conns = args.num("conns", 1000);
    let offset = args.num("offset", 0);
    let rooms = args.num("rooms", 1);
    let room = args.str("room", "posts");
    let prefix = args.str("room-prefix", "r");
    let join = args.num("join", 1) == 1;
    let users = args.num("users", conns).max(1);
    let secret = args.str("secret", "bench-secret");
    let concurrency = args.num("concurrency", 200) as usize;
    let connect_timeout = Duration::from_millis(args.num("connect-timeout-ms", 120_000));
    let conf = Rc::new(Conf {
        addr: format!("{host}:{port}").parse().expect("address"),
        host_header: format!("{host}:{port}"),
        path: args.str("path", "/"),
        join,
        buf: args.num("buf", 16 * 1024) as usize,
        conns,
        src: match args.str("src", "").as_str() {
            "" => None,
            ip => Some(ip.parse().expect("--src: an IP address")),
        },
    });
    let shared = Rc::new(Shared::default());
    shared.per_socket.replace(vec![0; conns as usize]);

    // Tokens are signed before the clock starts.
    let key = payload_key(&secret);
    let now = now_us() / 1_000_000;
    let tokens: Vec<Rc<String>> = (0..users).map(|u| Rc::new(make_token(&key, u, now))).collect();

    let sem = Rc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let started_us = now_us();
    let cpu0 = cpu_us();
    for i in 0..conns {
        let g = i + offset;
        let token = tokens[(g % users) as usize].clone();
        let room = conf.join.then(|| {
            if rooms <= 1 {
                room.clone()
            } else {
                format!("{prefix}{}", g % rooms)
            }
        });
        tokio::task::spawn_local(conn_task(
            i as usize,
            conf.clone(),
            shared.clone(),
            token,
            room,
            sem.clone(),
        ));
    }
    let deadline = tokio::time::Instant::now() + connect_timeout;
    while shared.settled.get() < conns {
        tokio::select! {
            _ = shared.notify.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let hs = shared.handshakes.get();
    let hs_secs = (shared.last_handshake_us.get().saturating_sub(started_us)) as f64 / 1e6;
    println!(
        "{}",
        serde_json::json!({
            "event": "ready",
            "conns": conns,
            "handshakes": hs,
            "joined": shared.joined.get(),
            "join_errors": shared.join_errors.get(),
            "failed": shared.failed.get(),
            "retries": shared.retries.get(),
            "timed_out": shared.settled.get() < conns,
            "connect_ms": started.elapsed().as_secs_f64() * 1e3,
            "handshake_secs": hs_secs,
            "handshakes_per_s": if hs_secs > 0.0 { hs as f64 / hs_secs } else { 0.0 },
            "cpu_us": cpu_us() - cpu0,
            "rss": rss_bytes(),
        })
    );

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["measure", expected, timeout_ms] => {
                let expected: u64 = expected.parse().unwrap_or(0);
                let timeout = Duration::from_millis(timeout_ms.parse().unwrap_or(60_000));
                shared.delivered.set(0);
                // Messages that arrived while not measuring (late ones from an earlier round).
                let stray_before = shared.stray.replace(0);
                shared.first_recv_us.set(0);
                shared.last_recv_us.set(0);
                shared.lat.borrow_mut().clear();
                shared.per_socket.borrow_mut().iter_mut().for_each(|c| *c = 0);
                shared.expected.set(expected);
                let closed0 = shared.closed.get();
                let cpu0 = cpu_us();
                let armed_us = now_us();
                shared.armed.set(true);
                println!("{}", serde_json::json!({ "event": "armed", "armed_us": armed_us }));
                let deadline = tokio::time::Instant::now() + timeout;
                let mut timed_out = false;
                while shared.delivered.get() < expected {
                    tokio::select! {
                        _ = shared.notify.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                        _ = tokio::time::sleep_until(deadline) => { timed_out = true; break }
                    }
                }
                shared.armed.set(false);
                let cpu = cpu_us() - cpu0;
                let mut lat = std::mem::take(&mut *shared.lat.borrow_mut());
                lat.sort_unstable();
                let per = shared.per_socket.borrow();
                let receiving: Vec<u32> = per.iter().copied().filter(|&c| c > 0).collect();
                let mean = if lat.is_empty() {
                    0.0
                } else {
                    lat.iter().map(|&v| v as f64).sum::<f64>() / lat.len() as f64
                };
                println!(
                    "{}",
                    serde_json::json!({
                        "event": "result",
                        "stray_before": stray_before,
                        "expected": expected,
                        "delivered": shared.delivered.get(),
                        "timed_out": timed_out,
                        "armed_us": armed_us,
                        "first_recv_us": shared.first_recv_us.get(),
                        "last_recv_us": shared.last_recv_us.get(),
                        "latency_samples": lat.len(),
                        "p50_us": percentile(&lat, 0.50),
                        "p99_us": percentile(&lat, 0.99),
                        "max_us": lat.last().copied().unwrap_or(0),
                        "mean_us": mean,
                        "sockets_receiving": receiving.len(),
                        "min_per_socket": receiving.iter().min().copied().unwrap_or(0),
                        "max_per_socket": receiving.iter().max().copied().unwrap_or(0),
                        "closed_during": shared.closed.get() - closed0,
                        "cpu_us": cpu,
                        "rss": rss_bytes(),
                    })
                );
            }
            ["stats"] => println!(
                "{}",
                serde_json::json!({
                    "event": "stats",
                    "closed": shared.closed.get(),
                    "stray": shared.stray.get(),
                    "cpu_us": cpu_us(),
                    "rss": rss_bytes(),
                })
            ),
            ["quit"] => break,
            _ => eprintln!("loadgen: unknown command {line:?}"),
        }
    }
    std::process::exit(0);
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(args));
}
