//! The second load generator: the same clients built on a real client library, `tokio-tungstenite`
//! 0.24, used as an application uses it: one tokio current_thread runtime, a task per socket,
//! `connect_async("ws://host:port/?token=...")`, `send` of the join, then `next()` message by
//! message. It reads as tungstenite does (4 KB per read, frame by frame), not as the bench's own
//! generator does (one 256 KB read per socket per burst): how the server's write pattern suits a
//! common client is measured here.
//!
//! It speaks the same stdin/stdout lines as `loadgen` (`measure <expected> <timeout_ms>`,
//! `stats`, `quit`; `{"event":"ready"|"armed"|"result"|"stats",...}`), so `benches/run.mjs`
//! drives either. Latency is emit-to-receive as `loadgen` measures it, the receive time taken
//! when the library hands the message over.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use payload_realtime_loadgen::{
    cpu_us, embedded_time_us, make_token, now_us, payload_key, percentile, rss_bytes, Args,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Notify, Semaphore};
use tokio_tungstenite::tungstenite::{Error, Message};

#[derive(Default)]
struct Shared {
    handshakes: Cell<u64>,
    last_handshake_us: Cell<u64>,
    joined: Cell<u64>,
    failed: Cell<u64>,
    retries: Cell<u64>,
    join_errors: Cell<u64>,
    settled: Cell<u64>,
    armed: Cell<bool>,
    expected: Cell<u64>,
    delivered: Cell<u64>,
    stray: Cell<u64>,
    first_recv_us: Cell<u64>,
    last_recv_us: Cell<u64>,
    lat: RefCell<Vec<u32>>,
    /// When each message arrived, µs after the measurement was armed.
    recv: RefCell<Vec<u32>>,
    armed_us: Cell<u64>,
    per_socket: RefCell<Vec<u32>>,
    closed: Cell<u64>,
    notify: Notify,
}

struct Conf {
    /// `ws://host:port/path` (the token is appended per socket).
    url: String,
    conns: u64,
}

impl Shared {
    fn settle(&self, conf: &Conf) {
        self.settled.set(self.settled.get() + 1);
        if self.settled.get() == conf.conns {
            self.notify.notify_waiters();
        }
    }

    fn record(&self, idx: usize, payload: &[u8]) {
        if !self.armed.get() {
            self.stray.set(self.stray.get() + 1);
            return;
        }
        let now = now_us();
        let d = self.delivered.get() + 1;
        self.delivered.set(d);
        if self.first_recv_us.get() == 0 {
            self.first_recv_us.set(now);
        }
        self.last_recv_us.set(now);
        self.recv
            .borrow_mut()
            .push(now.saturating_sub(self.armed_us.get()).min(u32::MAX as u64) as u32);
        if let Some(t) = embedded_time_us(payload) {
            self.lat
                .borrow_mut()
                .push(now.saturating_sub(t).min(u32::MAX as u64) as u32);
        }
        self.per_socket.borrow_mut()[idx] += 1;
        if d == self.expected.get() {
            self.notify.notify_waiters();
        }
    }
}

/// One client: connect (retried on connection errors, not on a refusal), join and wait for the
/// ack (holding a connect permit until then), then take messages until the connection ends.
async fn conn_task(
    idx: usize,
    conf: Rc<Conf>,
    shared: Rc<Shared>,
    token: Rc<String>,
    room: Option<String>,
    sem: Rc<Semaphore>,
) {
    let mut permit = Some(sem.acquire().await.expect("semaphore"));
    let sep = if conf.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}token={token}", conf.url);
    let mut ws = None;
    for attempt in 0..5u64 {
        if attempt > 0 {
            shared.retries.set(shared.retries.get() + 1);
            tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
        }
        match tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(url.as_str())).await {
            Ok(Ok((stream, _))) => {
                ws = Some(stream);
                break;
            }
            // Refused by the server (a token problem is not retried).
            Ok(Err(Error::Http(_))) => break,
            _ => {}
        }
    }
    let Some(mut ws) = ws else {
        shared.failed.set(shared.failed.get() + 1);
        shared.settle(&conf);
        return;
    };
    shared.handshakes.set(shared.handshakes.get() + 1);
    shared.last_handshake_us.set(now_us());
    let mut awaiting_ack = false;
    match room {
        Some(room) => {
            let join = format!(r#"{{"type":"join-collection","collection":"{room}","id":1}}"#);
            if ws.send(Message::Text(join)).await.is_err() {
                shared.failed.set(shared.failed.get() + 1);
                shared.settle(&conf);
                return;
            }
            awaiting_ack = true;
        }
        None => {
            permit.take();
            shared.settle(&conf);
        }
    }
    while let Some(msg) = ws.next().await {
        let payload = match &msg {
            Ok(Message::Text(t)) => t.as_bytes(),
            Ok(Message::Binary(b)) => b.as_slice(),
            // Pings are answered by the library; a close ends the loop after it.
            Ok(_) => continue,
            Err(_) => break,
        };
        if awaiting_ack {
            awaiting_ack = false;
            if memchr::memmem::find(payload, b"\"ack\"").is_some() {
                shared.joined.set(shared.joined.get() + 1);
            } else {
                shared.join_errors.set(shared.join_errors.get() + 1);
            }
            permit.take();
            shared.settle(&conf);
        } else {
            shared.record(idx, payload);
        }
    }
    shared.closed.set(shared.closed.get() + 1);
    if awaiting_ack {
        shared.failed.set(shared.failed.get() + 1);
        shared.settle(&conf);
    }
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
        url: format!("ws://{host}:{port}{}", args.str("path", "/")),
        conns,
    });
    let shared = Rc::new(Shared::default());
    shared.per_socket.replace(vec![0; conns as usize]);

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
        let room = join.then(|| {
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
            "client": "tokio-tungstenite 0.24",
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
                let stray_before = shared.stray.replace(0);
                shared.first_recv_us.set(0);
                shared.last_recv_us.set(0);
                shared.lat.borrow_mut().clear();
                shared.recv.borrow_mut().clear();
                shared.per_socket.borrow_mut().iter_mut().for_each(|c| *c = 0);
                shared.expected.set(expected);
                let closed0 = shared.closed.get();
                let cpu0 = cpu_us();
                let armed_us = now_us();
                shared.armed_us.set(armed_us);
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
                // Arrival order is already sorted.
                let recv = std::mem::take(&mut *shared.recv.borrow_mut());
                let recv_at = |p: f64| {
                    if recv.is_empty() {
                        0
                    } else {
                        armed_us + percentile(&recv, p)
                    }
                };
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
                        "recv_p50_us": recv_at(0.50),
                        "recv_p99_us": recv_at(0.99),
                        "arrival_samples": 0,
                        "mean_us": mean,
                        "sockets_receiving": receiving.len(),
                        "min_per_socket": receiving.iter().min().copied().unwrap_or(0),
                        "max_per_socket": receiving.iter().max().copied().unwrap_or(0),
                        "closed_during": shared.closed.get() - closed0,
                        "duplicates": 0,
                        "out_of_order": 0,
                        "id_out_of_range": 0,
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
            _ => eprintln!("tungstenite: unknown command {line:?}"),
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
