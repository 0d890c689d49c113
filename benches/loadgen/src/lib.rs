//! What the load generators (`loadgen`, `tungstenite`) and the ceiling server share: frames,
//! tokens, the connect phase, the stdin command loop and its reports.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Notify, Semaphore};

/// Wall-clock time in microseconds since the Unix epoch (comparable with JS
/// `performance.timeOrigin + performance.now()` on the same machine).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// CPU time (user + system) of this process so far, in microseconds.
pub fn cpu_us() -> u64 {
    // SAFETY: getrusage only writes into the struct we give it.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut ru) != 0 {
            return 0;
        }
        let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
}

/// Resident set size of this process in bytes (from /proc/self/statm).
pub fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

/// `--key value` arguments.
pub struct Args(HashMap<String, String>);

impl Args {
    pub fn parse() -> Args {
        let mut map = HashMap::new();
        let mut it = std::env::args().skip(1);
        while let Some(k) = it.next() {
            if let Some(k) = k.strip_prefix("--") {
                let v = it.next().unwrap_or_default();
                map.insert(k.to_string(), v);
            }
        }
        Args(map)
    }
    pub fn str(&self, k: &str, default: &str) -> String {
        self.0.get(k).cloned().unwrap_or_else(|| default.to_string())
    }
    pub fn num(&self, k: &str, default: u64) -> u64 {
        self.0
            .get(k)
            .map(|v| v.parse().unwrap_or_else(|_| panic!("--{k}: not a number: {v}")))
            .unwrap_or(default)
    }
}

/// Encodes one server-to-client (unmasked) frame.
pub fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(len as u8);
    } else if len <= 0xffff {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// Encodes one client-to-server frame, masked with `key` (RFC 6455 requires client masking).
pub fn client_frame(opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
    out
}

/// After the complete frames of `buf[*start..*end]` were taken: makes room for the next read
/// (an emptied buffer starts over; a partial frame at the very end moves to the front).
pub fn make_room(buf: &mut [u8], start: &mut usize, end: &mut usize) {
    if *start == *end {
        *start = 0;
        *end = 0;
    } else if *end == buf.len() {
        buf.copy_within(*start..*end, 0);
        *end -= *start;
        *start = 0;
    }
}

/// A parsed frame header: `(fin, opcode, masked, header_len, payload_len)`, or `None` when
/// `buf` does not hold the whole header yet.
pub fn frame_header(buf: &[u8]) -> Option<(bool, u8, bool, usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let mut len = (buf[1] & 0x7f) as usize;
    let mut h = 2;
    if len == 126 {
        if buf.len() < 4 {
            return None;
        }
        len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        h = 4;
    } else if len == 127 {
        if buf.len() < 10 {
            return None;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[2..10]);
        len = u64::from_be_bytes(b) as usize;
        h = 10;
    }
    if masked {
        h += 4;
    }
    if buf.len() < h {
        return None;
    }
    Some((fin, opcode, masked, h, len))
}

/// Finds `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// The number after `"t":` in a JSON text (the emit time in ms, with a fraction), in µs.
///
/// Read once per delivered message, so it is written by hand: digits, then at most three digits
/// of the fraction (the µs); anything else (an exponent, a sign) goes through the float parser.
pub fn embedded_time_us(payload: &[u8]) -> Option<u64> {
    static KEY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"t\":"));
    let at = KEY.find(payload)? + 4;
    let rest = &payload[at..];
    let mut us: u64 = 0;
    let mut i = 0;
    while i < rest.len() && rest[i].is_ascii_digit() {
        us = us.checked_mul(10)?.checked_add((rest[i] - b'0') as u64)?;
        i += 1;
    }
    if i == 0 {
        return None;
    }
    us = us.checked_mul(1000)?;
    if rest.get(i) == Some(&b'.') {
        i += 1;
        let mut scale = 100;
        while i < rest.len() && rest[i].is_ascii_digit() {
            us += (rest[i] - b'0') as u64 * scale;
            scale /= 10;
            i += 1;
        }
    }
    match rest.get(i) {
        Some(b'e' | b'E') => embedded_time_us_slow(rest),
        _ => Some(us),
    }
}

fn embedded_time_us_slow(rest: &[u8]) -> Option<u64> {
    let end = rest
        .iter()
        .position(|&b| !(b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')))
        .unwrap_or(rest.len());
    let ms: f64 = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
    Some((ms * 1000.0) as u64)
}

/// The unsigned integer after the first `key` (e.g. `b"\"id\":"`) in a JSON text.
pub fn embedded_uint(payload: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(payload, key)? + key.len();
    let rest = &payload[at..];
    let end = rest.iter().position(|b| !b.is_ascii_digit()).unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// The key Payload 3 signs its tokens with: sha256(secret) as hex, the first 32 characters.
pub fn payload_key(secret: &str) -> Vec<u8> {
    let hex: String = Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    hex.as_bytes()[..32].to_vec()
}

/// A token as Payload 3 mints it (HS256, key = sha256(secret) hex, first 32 chars; the header
/// of `jwtSign` since 3.90, its members in that order).
pub fn make_token(key: &[u8], user: u64, now: u64) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"HS256","authVersion":1,"typ":"JWT"}"#);
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

/// The `p` quantile (0 to 1) of sorted samples, or 0 when there are none.
pub fn percentile(sorted: &[u32], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as u64
}

/// The `--key value` arguments both load generators share: where to connect, how many sockets,
/// which rooms they join, with whose tokens.
pub struct Setup {
    pub host: String,
    pub port: u64,
    pub conns: u64,
    /// Global index of this process's first socket (rooms and users are picked by it).
    pub offset: u64,
    pub rooms: u64,
    pub room: String,
    pub prefix: String,
    pub join: bool,
    pub users: u64,
    pub secret: String,
    pub concurrency: usize,
    pub connect_timeout: Duration,
    pub path: String,
}

impl Setup {
    pub fn from_args(args: &Args) -> Setup {
        let conns = args.num("conns", 1000);
        Setup {
            host: args.str("host", "127.0.0.1"),
            port: args.num("port", 3002),
            conns,
            offset: args.num("offset", 0),
            rooms: args.num("rooms", 1),
            room: args.str("room", "posts"),
            prefix: args.str("room-prefix", "r"),
            join: args.num("join", 1) == 1,
            users: args.num("users", conns).max(1),
            secret: args.str("secret", "bench-secret"),
            concurrency: args.num("concurrency", 200) as usize,
            connect_timeout: Duration::from_millis(args.num("connect-timeout-ms", 120_000)),
            path: args.str("path", "/"),
        }
    }

    /// The room the socket with global index `g` joins (`None` without `--join 1`).
    fn room_for(&self, g: u64) -> Option<String> {
        self.join.then(|| {
            if self.rooms <= 1 {
                self.room.clone()
            } else {
                format!("{}{}", self.prefix, g % self.rooms)
            }
        })
    }
}

/// The counters of the connect phase and of a measurement round that both generators keep alike.
#[derive(Default)]
pub struct Counters {
    pub conns: u64,
    // connect phase
    pub handshakes: Cell<u64>,
    pub last_handshake_us: Cell<u64>,
    pub joined: Cell<u64>,
    pub failed: Cell<u64>,
    pub retries: Cell<u64>,
    pub join_errors: Cell<u64>,
    pub settled: Cell<u64>,
    // measurement
    pub armed: Cell<bool>,
    pub armed_us: Cell<u64>,
    pub expected: Cell<u64>,
    pub delivered: Cell<u64>,
    pub stray: Cell<u64>,
    pub first_recv_us: Cell<u64>,
    pub last_recv_us: Cell<u64>,
    pub lat: RefCell<Vec<u32>>,
    pub per_socket: RefCell<Vec<u32>>,
    pub closed: Cell<u64>,
    pub notify: Notify,
}

impl Counters {
    pub fn new(conns: u64) -> Counters {
        Counters {
            conns,
            per_socket: RefCell::new(vec![0; conns as usize]),
            ..Counters::default()
        }
    }

    /// One socket is done connecting (joined, refused, failed or not joining).
    pub fn settle(&self) {
        self.settled.set(self.settled.get() + 1);
        if self.settled.get() == self.conns {
            self.notify.notify_waiters();
        }
    }

    /// One handshake completed.
    pub fn handshake(&self) {
        self.handshakes.set(self.handshakes.get() + 1);
        self.last_handshake_us.set(now_us());
    }

    /// Counts one message received at `now` on socket `idx` (a stray one outside a measurement);
    /// `extra` records what only one generator keeps, given the message's emit time.
    pub fn record(&self, idx: usize, payload: &[u8], now: u64, extra: impl FnOnce(Option<u64>)) {
        if !self.armed.get() {
            self.stray.set(self.stray.get() + 1);
            return;
        }
        let d = self.delivered.get() + 1;
        self.delivered.set(d);
        if self.first_recv_us.get() == 0 {
            self.first_recv_us.set(now);
        }
        self.last_recv_us.set(now);
        let t = embedded_time_us(payload);
        if let Some(t) = t {
            self.lat.borrow_mut().push(micros_since(t, now));
        }
        self.per_socket.borrow_mut()[idx] += 1;
        extra(t);
        if d == self.expected.get() {
            self.notify.notify_waiters();
        }
    }
}

/// `now - then` in µs, as a sample (saturating at both ends).
pub fn micros_since(then: u64, now: u64) -> u32 {
    now.saturating_sub(then).min(u32::MAX as u64) as u32
}

/// Signs the tokens (before the clock starts), starts one client per socket with
/// `spawn(index, token, room, connect permits)`, waits until every socket settled (or the connect
/// timeout) and returns the `ready` report.
pub async fn connect_all(
    setup: &Setup,
    counters: &Counters,
    mut spawn: impl FnMut(usize, Rc<String>, Option<String>, Rc<Semaphore>),
) -> Map<String, Value> {
    let key = payload_key(&setup.secret);
    let now = now_us() / 1_000_000;
    let tokens: Vec<Rc<String>> = (0..setup.users).map(|u| Rc::new(make_token(&key, u, now))).collect();

    let sem = Rc::new(Semaphore::new(setup.concurrency));
    let started = Instant::now();
    let started_us = now_us();
    let cpu0 = cpu_us();
    for i in 0..setup.conns {
        let g = i + setup.offset;
        let token = tokens[(g % setup.users) as usize].clone();
        spawn(i as usize, token, setup.room_for(g), sem.clone());
    }
    let deadline = tokio::time::Instant::now() + setup.connect_timeout;
    while counters.settled.get() < setup.conns {
        tokio::select! {
            _ = counters.notify.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let hs = counters.handshakes.get();
    let hs_secs = (counters.last_handshake_us.get().saturating_sub(started_us)) as f64 / 1e6;
    let ready = serde_json::json!({
        "event": "ready",
        "conns": setup.conns,
        "handshakes": hs,
        "joined": counters.joined.get(),
        "join_errors": counters.join_errors.get(),
        "failed": counters.failed.get(),
        "retries": counters.retries.get(),
        "timed_out": counters.settled.get() < setup.conns,
        "connect_ms": started.elapsed().as_secs_f64() * 1e3,
        "handshake_secs": hs_secs,
        "handshakes_per_s": if hs_secs > 0.0 { hs as f64 / hs_secs } else { 0.0 },
        "cpu_us": cpu_us() - cpu0,
        "rss": rss_bytes(),
    });
    match ready {
        Value::Object(m) => m,
        _ => unreachable!("json! of an object"),
    }
}

/// What a generator keeps per round beyond [`Counters`].
pub trait Round {
    /// Clears it before a round is armed.
    fn reset(&self);
    /// Adds its fields to the round's `result` report (called after the round's CPU time was taken).
    fn report(&self, armed_us: u64, out: &mut Map<String, Value>);
}

/// Obeys the stdin commands (`measure <expected> <timeout_ms>`, `stats`, `quit`) until `quit` or
/// EOF, then exits the process (the kernel closes every socket).
pub async fn command_loop(name: &str, c: &Counters, round: &impl Round) {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["measure", expected, timeout_ms] => {
                let expected: u64 = expected.parse().unwrap_or(0);
                let timeout = Duration::from_millis(timeout_ms.parse().unwrap_or(60_000));
                let result = measure(c, round, expected, timeout).await;
                println!("{}", Value::Object(result));
            }
            ["stats"] => println!(
                "{}",
                serde_json::json!({
                    "event": "stats",
                    "closed": c.closed.get(),
                    "stray": c.stray.get(),
                    "cpu_us": cpu_us(),
                    "rss": rss_bytes(),
                })
            ),
            ["quit"] => break,
            _ => eprintln!("{name}: unknown command {line:?}"),
        }
    }
    std::process::exit(0);
}

/// One round: resets the counters, prints `armed`, waits for `expected` messages (or the timeout)
/// and returns the `result` report.
async fn measure(c: &Counters, round: &impl Round, expected: u64, timeout: Duration) -> Map<String, Value> {
    c.delivered.set(0);
    // Messages that arrived while not measuring (late ones from an earlier round).
    let stray_before = c.stray.replace(0);
    c.first_recv_us.set(0);
    c.last_recv_us.set(0);
    c.lat.borrow_mut().clear();
    c.per_socket.borrow_mut().iter_mut().for_each(|n| *n = 0);
    round.reset();
    c.expected.set(expected);
    let closed0 = c.closed.get();
    let cpu0 = cpu_us();
    let armed_us = now_us();
    c.armed_us.set(armed_us);
    c.armed.set(true);
    println!("{}", serde_json::json!({ "event": "armed", "armed_us": armed_us }));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut timed_out = false;
    while c.delivered.get() < expected {
        tokio::select! {
            _ = c.notify.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = tokio::time::sleep_until(deadline) => { timed_out = true; break }
        }
    }
    c.armed.set(false);
    let cpu = cpu_us() - cpu0;
    let mut lat = std::mem::take(&mut *c.lat.borrow_mut());
    lat.sort_unstable();
    let mut out = Map::new();
    round.report(armed_us, &mut out);
    let per = c.per_socket.borrow();
    let receiving: Vec<u32> = per.iter().copied().filter(|&n| n > 0).collect();
    let mean = if lat.is_empty() {
        0.0
    } else {
        lat.iter().map(|&v| v as f64).sum::<f64>() / lat.len() as f64
    };
    let common = serde_json::json!({
        "event": "result",
        "stray_before": stray_before,
        "expected": expected,
        "delivered": c.delivered.get(),
        "timed_out": timed_out,
        "armed_us": armed_us,
        "first_recv_us": c.first_recv_us.get(),
        "last_recv_us": c.last_recv_us.get(),
        "latency_samples": lat.len(),
        "p50_us": percentile(&lat, 0.50),
        "p99_us": percentile(&lat, 0.99),
        "max_us": lat.last().copied().unwrap_or(0),
        "mean_us": mean,
        "sockets_receiving": receiving.len(),
        "min_per_socket": receiving.iter().min().copied().unwrap_or(0),
        "max_per_socket": receiving.iter().max().copied().unwrap_or(0),
        "closed_during": c.closed.get() - closed0,
        "cpu_us": cpu,
        "rss": rss_bytes(),
    });
    if let Value::Object(m) = common {
        out.extend(m);
    }
    out
}

/// Runs a generator: one tokio current_thread runtime and a `LocalSet` (the clients share `Rc`s).
pub fn run_local<F: Future<Output = ()>>(run: impl FnOnce(Args) -> F) {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(args));
}

#[cfg(test)]
mod tests {
    use super::embedded_time_us;

    #[test]
    fn emit_times_read_as_microseconds() {
        let t = |s: &str| embedded_time_us(format!(r#"{{"doc":{{"t":{s},"pad":"x"}}}}"#).as_bytes());
        assert_eq!(t("1764734400123.4567"), Some(1_764_734_400_123_456));
        assert_eq!(t("1764734400123.4"), Some(1_764_734_400_123_400));
        assert_eq!(t("1764734400123"), Some(1_764_734_400_123_000));
        assert_eq!(t("1.7647344001234e12"), Some(1_764_734_400_123_400));
        assert_eq!(t("\"x\""), None);
        assert_eq!(embedded_time_us(br#"{"doc":{}}"#), None);
    }
}
