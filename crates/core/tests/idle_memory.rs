//! What one idle socket costs the server's heap: authenticated sockets, each in one room, as
//! `npm run bench`'s idle case holds them (ten sockets per user), counted by the allocator.
//!
//! The bench measures the same thing as RSS, beside uWebSockets.js; this counts the heap
//! exactly and prints, by allocation size, what a socket added, so that a change that makes an
//! idle socket heavier fails here and says where. The figure is deterministic (sizes of
//! structures and tables), not a timing. Linux with glibc (it reads `mallinfo2` too).
#![cfg(all(target_os = "linux", target_env = "gnu"))]

use std::alloc::{GlobalAlloc, Layout};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use payload_realtime_core::alloc::{page_bytes, Allocator};
use payload_realtime_core::config::{Config, PayloadKey};
use payload_realtime_core::host::callbacks::Callbacks;
use payload_realtime_core::memory::{malloc_info, MallocInfo};
use payload_realtime_core::net::server::Server;
use sha2::{Digest, Sha256};

/// Heap one idle socket may hold, in bytes asked of the allocator (877 when this was set: the
/// task 256, its I/O registration 256, the socket 296, its connection slot 48, the tables'
/// share).
const BUDGET: usize = 950;

/// Size classes of 16 bytes up to this size; larger blocks share the last class.
const CLASSES: usize = 128;

/// The addon's allocator, counted.
struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
/// Live blocks by size class (16-byte steps); blocks aligned above 16 are counted apart.
static LIVE: [AtomicI64; CLASSES + 1] = [const { AtomicI64::new(0) }; CLASSES + 1];
static LIVE_ALIGNED: [AtomicI64; CLASSES + 1] = [const { AtomicI64::new(0) }; CLASSES + 1];

fn class(layout: Layout) -> usize {
    (layout.size().div_ceil(16)).min(CLASSES)
}

fn count(layout: Layout, n: i64) {
    LIVE_BYTES.fetch_add(n * layout.size() as i64, Ordering::Relaxed);
    let table = if layout.align() > 16 { &LIVE_ALIGNED } else { &LIVE };
    table[class(layout)].fetch_add(n, Ordering::Relaxed);
}

// SAFETY: every call is passed on to the addon's allocator unchanged; the counting beside it
// allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout, 1);
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { Allocator.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(layout, -1);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { Allocator.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout, 1);
        // SAFETY: as in `alloc`.
        unsafe { Allocator.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(layout, -1);
        // SAFETY: the new layout has the old one's alignment and a valid size, as required.
        count(
            unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) },
            1,
        );
        // SAFETY: `ptr` came from this allocator with `layout`.
        unsafe { Allocator.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

struct Snapshot {
    malloc: MallocInfo,
    pages: usize,
    bytes: i64,
    live: Vec<i64>,
    aligned: Vec<i64>,
}

fn snapshot() -> Snapshot {
    Snapshot {
        malloc: malloc_info().expect("glibc 2.33 or newer"),
        pages: page_bytes(),
        bytes: LIVE_BYTES.load(Ordering::Relaxed),
        live: LIVE.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
        aligned: LIVE_ALIGNED.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
    }
}

const SECRET: &str = "idle-memory-secret";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token as Payload signs it (header in `jwtSign`'s order, the secret derived as Payload
/// derives it), with the claims the bench's load generator writes.
fn token(user: usize, now: u64) -> String {
    let secret = &hex(&Sha256::digest(SECRET.as_bytes()))[..32];
    let header = b64(br#"{"alg":"HS256","authVersion":1,"typ":"JWT"}"#);
    let claims = b64(format!(
        r#"{{"id":"u{user}","collection":"users","email":"u{user}@example.com","sid":"bench-sid-{user}","iat":{now},"exp":{}}}"#,
        now + 3600
    )
    .as_bytes());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{header}.{claims}").as_bytes());
    format!("{header}.{claims}.{}", b64(&mac.finalize().into_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A client's masked text frame.
fn text_frame(text: &str) -> Vec<u8> {
    let mask = [7u8, 1, 9, 3];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Opens a socket with `token`, joins one collection room, and waits for the join's answer.
fn open(addr: SocketAddr, token: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!(
        "GET /?token={} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token
    );
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = [0u8; 1024];
    let mut got = 0;
    while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf[got..]).unwrap();
        assert!(n > 0, "closed during the handshake");
        got += n;
    }
    assert!(
        buf.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&buf[..got])
    );
    let head_end = buf[..got].windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    s.write_all(&text_frame(r#"{"type":"join-collection","collection":"posts","id":1}"#))
        .unwrap();
    // The join's answer (it may have come with the handshake's response).
    if got == head_end {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after the join");
    }
    s
}

/// Opens sockets `from..from + n`, socket `i` as user `i % users.len()`.
fn open_many(addr: SocketAddr, tokens: &[String], from: usize, n: usize, into: &mut Vec<TcpStream>) {
    for i in from..from + n {
        into.push(open(addr, &tokens[i % tokens.len()]));
    }
}

#[test]
fn an_idle_socket_holds_little_heap() {
    const FIRST: usize = 1000;
    const MEASURED: usize = 2000;
    let config = Config {
        host: "127.0.0.1".into(),
        port: 0,
        key: Some(PayloadKey::from_payload_secret(SECRET)),
        worker_threads: 1,
        max_connections_per_ip: 0,
        ..Config::default()
    };
    let server = Server::start(config, Callbacks::default()).unwrap();
    let addr = server.local_addr();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // One token per user, as a user's tabs share one: 1,000 users, as in the bench.
    let tokens: Vec<String> = (0..1000).map(|u| token(u, now)).collect();
    let mut clients = Vec::with_capacity(FIRST + MEASURED);
    // The first sockets pay for what is made once (thread buffers, tables' first sizes).
    open_many(addr, &tokens, 0, FIRST, &mut clients);
    std::thread::sleep(Duration::from_millis(300));
    let before = snapshot();
    open_many(addr, &tokens, FIRST, MEASURED, &mut clients);
    std::thread::sleep(Duration::from_millis(300));
    let after = snapshot();

    let per_socket = (after.bytes - before.bytes) as f64 / MEASURED as f64;
    let mut rows: Vec<(String, f64)> = Vec::new();
    for (name, a, b) in [
        ("", &after.live, &before.live),
        (" aligned", &after.aligned, &before.aligned),
    ] {
        for c in 0..=CLASSES {
            let blocks = (a[c] - b[c]) as f64 / MEASURED as f64;
            if blocks.abs() >= 0.05 {
                let size = if c == CLASSES {
                    format!(">{}", 16 * CLASSES)
                } else {
                    format!("{}", 16 * c)
                };
                rows.push((format!("{size:>6} B{name}"), blocks));
            }
        }
    }
    let d = |f: fn(&MallocInfo) -> usize| (f(&after.malloc) as f64 - f(&before.malloc) as f64) / MEASURED as f64;
    let pages = (after.pages as f64 - before.pages as f64) / MEASURED as f64;
    eprintln!(
        "per socket: malloc's arena {:.0} (in use {:.0}, free {:.0}), aligned pages {pages:.0}",
        d(|m| m.arena),
        d(|m| m.in_use),
        d(|m| m.free),
    );
    eprintln!("heap per idle socket: {per_socket:.0} B; blocks per socket by size (up to):");
    for (size, blocks) in &rows {
        eprintln!("  {size}: {blocks:.2}");
    }
    drop(clients);
    drop(server);
    // What `npm run bench`'s idle case compares with uWebSockets.js (as RSS) rests on this; a
    // socket that grows past it is a change to explain there.
    assert!(
        per_socket <= BUDGET as f64,
        "an idle socket holds {per_socket:.0} B of heap, over {BUDGET} B (see the sizes above)"
    );
}
