//! Small helpers shared by the load generator and the ceiling server.

use std::collections::HashMap;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

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

/// A token as Payload 3 mints it (HS256, key = sha256(secret) hex, first 32 chars).
pub fn make_token(key: &[u8], user: u64, now: u64) -> String {
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

/// The `p` quantile (0 to 1) of sorted samples, or 0 when there are none.
pub fn percentile(sorted: &[u32], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as u64
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
