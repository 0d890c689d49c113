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
use payload_realtime_loadgen::{
    client_frame, cpu_us, embedded_time_us, find, frame_header, now_us, rss_bytes, Args,
};
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
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(Duration::from_secs(10), sock.connect(conf.addr)).await
        else {
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

