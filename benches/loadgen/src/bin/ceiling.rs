//! The ceiling: a bare tokio WebSocket server with no logic beyond what the benchmark needs.
//! It accepts handshakes (no token check), answers `join-collection` with an ack, and on an
//! `emit` command writes pre-encoded frames to every member of the room with one vectored write
//! per socket per burst. Every other server's result reads as a fraction of this one.
//!
//! Control: JSON lines on stdin, one JSON reply line on stdout each, the same protocol as the
//! Node servers in benches/servers/ (`stats`, `emit`, `gc`, `quit`).

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use payload_realtime_loadgen::{cpu_us, find, frame_header, make_room, now_us, rss_bytes, server_frame, Args};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

type Burst = Arc<Vec<Vec<u8>>>;
type Tx = mpsc::UnboundedSender<Burst>;

#[derive(Default)]
struct State {
    rooms: Mutex<HashMap<String, Vec<Tx>>>,
    connections: AtomicU64,
}

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_IOVECS: usize = 512;

async fn writer(mut wr: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Burst>) {
    let mut pending: VecDeque<(Burst, usize)> = VecDeque::new();
    let mut off = 0usize;
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(b) => pending.extend((0..b.len()).map(|i| (b.clone(), i))),
                None => return,
            }
        }
        while let Ok(b) = rx.try_recv() {
            pending.extend((0..b.len()).map(|i| (b.clone(), i)));
        }
        let n = {
            let slices: Vec<IoSlice> = pending
                .iter()
                .take(MAX_IOVECS)
                .enumerate()
                .map(|(k, (b, i))| IoSlice::new(if k == 0 { &b[*i][off..] } else { &b[*i] }))
                .collect();
            match wr.write_vectored(&slices).await {
                Ok(n) if n > 0 => n,
                _ => return,
            }
        };
        let mut n = n;
        while n > 0 {
            let (b, i) = pending.front().expect("written more than pending");
            let left = b[*i].len() - off;
            if n >= left {
                n -= left;
                off = 0;
                pending.pop_front();
            } else {
                off += n;
                n = 0;
            }
        }
    }
}

async fn handle(mut stream: TcpStream, state: Arc<State>) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 4096];
    let mut end = 0;
    let head_end = loop {
        match stream.read(&mut buf[end..]).await {
            Ok(n) if n > 0 => end += n,
            _ => return,
        }
        if let Some(i) = find(&buf[..end], b"\r\n\r\n") {
            break i + 4;
        }
        if end == buf.len() {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let key = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| v.trim().to_string())
    });
    let Some(key) = key else { return };
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if stream.write_all(resp.as_bytes()).await.is_err() {
        return;
    }
    buf.copy_within(head_end..end, 0);
    end -= head_end;
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(writer(wr, rx));
    state.connections.fetch_add(1, Ordering::Relaxed);
    let mut start = 0;
    'conn: loop {
        while let Some((_fin, opcode, masked, h, len)) = frame_header(&buf[start..end]) {
            if end - start < h + len {
                if h + len > buf.len() {
                    buf.copy_within(start..end, 0);
                    end -= start;
                    start = 0;
                    buf.resize(h + len, 0);
                }
                break;
            }
            let mut payload = buf[start + h..start + h + len].to_vec();
            if masked {
                let k = [
                    buf[start + h - 4],
                    buf[start + h - 3],
                    buf[start + h - 2],
                    buf[start + h - 1],
                ];
                payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= k[i & 3]);
            }
            start += h + len;
            match opcode {
                0x1 => {
                    let msg: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
                    if let Some(room) = msg.get("collection").and_then(Value::as_str) {
                        state
                            .rooms
                            .lock()
                            .unwrap()
                            .entry(room.to_string())
                            .or_default()
                            .push(tx.clone());
                        let id = msg.get("id").cloned().unwrap_or(Value::Null);
                        let ack = json!({ "type": "ack", "id": id }).to_string();
                        let _ = tx.send(Arc::new(vec![server_frame(0x1, ack.as_bytes())]));
                    }
                }
                0x9 => {
                    let _ = tx.send(Arc::new(vec![server_frame(0xA, &payload)]));
                }
                0x8 => {
                    let _ = tx.send(Arc::new(vec![server_frame(0x8, &payload[..payload.len().min(2)])]));
                    break 'conn;
                }
                _ => {}
            }
        }
        make_room(&mut buf, &mut start, &mut end);
        match rd.read(&mut buf[end..]).await {
            Ok(n) if n > 0 => end += n,
            _ => break,
        }
    }
    state.connections.fetch_sub(1, Ordering::Relaxed);
}

/// One event as JSON text of about `size` bytes, `"t"` = now in wall-clock ms.
fn event_json(collection: &str, id: u64, size: usize) -> Vec<u8> {
    let t = now_us() as f64 / 1000.0;
    let ts = "2026-01-01T00:00:00.000Z";
    let head = format!(r#"{{"type":"update","collection":"{collection}","id":{id},"doc":{{"t":{t:.3},"pad":""#);
    let tail = format!(r#""}},"timestamp":"{ts}"}}"#);
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut s = head.into_bytes();
    s.extend(std::iter::repeat_n(b'x', pad));
    s.extend_from_slice(tail.as_bytes());
    s
}

/// Hands `burst` to every writer of `room` (dropping the ones that are gone); the messages sent.
fn send_burst(rooms: &mut HashMap<String, Vec<Tx>>, room: &str, burst: Burst) -> u64 {
    let Some(members) = rooms.get_mut(room) else { return 0 };
    members.retain(|tx| tx.send(burst.clone()).is_ok());
    (members.len() * burst.len()) as u64
}

/// `intervalMs`: one event every so many ms, each written to the room as it comes (the paced
/// fan-out case), each scheduled from the start.
async fn emit_paced(state: &State, cmd: &Value, interval_ms: f64) -> Value {
    let count = cmd["count"].as_u64().unwrap_or(1);
    let size = cmd["size"].as_u64().unwrap_or(1024) as usize;
    let collection = cmd["collection"].as_str().unwrap_or("posts").to_string();
    let t0 = now_us();
    let start = tokio::time::Instant::now();
    let mut sent = 0u64;
    for i in 0..count {
        tokio::time::sleep_until(start + std::time::Duration::from_secs_f64(i as f64 * interval_ms / 1000.0)).await;
        let burst: Burst = Arc::new(vec![server_frame(0x1, &event_json(&collection, i, size))]);
        sent += send_burst(&mut state.rooms.lock().unwrap(), &collection, burst);
    }
    json!({ "ok": true, "t0_us": t0, "t1_us": now_us(), "sent": sent })
}

fn emit(state: &State, cmd: &Value) -> Value {
    let count = cmd["count"].as_u64().unwrap_or(1);
    let size = cmd["size"].as_u64().unwrap_or(1024) as usize;
    let rooms = cmd["rooms"].as_u64().unwrap_or(1).max(1);
    let collection = cmd["collection"].as_str().unwrap_or("posts").to_string();
    let prefix = cmd["prefix"].as_str().unwrap_or("r").to_string();
    let t0 = now_us();
    // Events for each room, in order; one burst per room.
    let mut per_room: Vec<Vec<Vec<u8>>> = vec![Vec::new(); rooms.min(count) as usize];
    let room_name = |r: u64| {
        if rooms == 1 {
            collection.clone()
        } else {
            format!("{prefix}{r}")
        }
    };
    for i in 0..count {
        let r = i % rooms;
        let body = event_json(&room_name(r), i, size);
        per_room[r as usize].push(server_frame(0x1, &body));
    }
    let mut sent = 0u64;
    let mut map = state.rooms.lock().unwrap();
    for (r, frames) in per_room.into_iter().enumerate() {
        sent += send_burst(&mut map, &room_name(r as u64), Arc::new(frames));
    }
    drop(map);
    json!({ "ok": true, "t0_us": t0, "t1_us": now_us(), "sent": sent })
}

async fn run(args: Args) {
    let host = args.str("host", "127.0.0.1");
    // Backlog 1024 (std's and mio's default is 128, too small for a connection storm).
    let addr: std::net::SocketAddr = format!("{host}:{}", args.num("port", 0)).parse().expect("address");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("reuseaddr");
    socket.bind(addr).expect("bind");
    let listener: TcpListener = socket.listen(1024).expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let state = Arc::new(State::default());
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = listener.accept().await {
                tokio::spawn(handle(s, st.clone()));
            }
        }
    });
    println!(
        "{}",
        json!({ "event": "listening", "port": port, "pid": std::process::id() })
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let cmd: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        let mut reply = match cmd["cmd"].as_str() {
            Some("stats") => json!({
                "ok": true,
                "cpu_us": cpu_us(),
                "rss": rss_bytes(),
                "connections": state.connections.load(Ordering::Relaxed),
            }),
            Some("emit") => match cmd["intervalMs"].as_f64().filter(|ms| *ms > 0.0) {
                Some(ms) => emit_paced(&state, &cmd, ms).await,
                None => emit(&state, &cmd),
            },
            Some("gc") => json!({ "ok": true }),
            Some("quit") => break,
            _ => json!({ "ok": false, "error": "unknown command" }),
        };
        reply["seq"] = cmd["seq"].clone();
        println!("{reply}");
    }
    std::process::exit(0);
}

fn main() {
    let args = Args::parse();
    let threads = args.num("threads", 2) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run(args));
}
