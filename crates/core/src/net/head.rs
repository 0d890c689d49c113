//! The request head of a connection on the server's own port, read and parsed before hyper
//! sees it, so that a WebSocket upgrade (nearly every connection) is answered in the
//! connection's own task: no HTTP connection state machine, no upgrade channel, no second task
//! and no timer when the head is already there. Anything else (the ops routes, SSE, long
//! polls, requests hyper refuses) goes to hyper with the bytes read so far ([`Rewind`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use hyper::{header, Method, Request};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The most head bytes read here; a longer head goes to hyper, which answers it as before.
const MAX_HEAD: usize = 16 * 1024;

/// The most headers parsed here (hyper's default limit is 100): more goes to hyper.
const MAX_HEADERS: usize = 64;

/// What the first bytes of a connection turned out to be.
// Held only until the head is acted on: boxing the request would be an allocation per handshake.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Head {
    /// A whole `GET` head asking for a WebSocket upgrade, and every byte read: the head is
    /// `read[..len]`, and what the client sent after it (already) is `read[len..]`.
    Upgrade { req: Request<()>, read: Bytes, len: usize },
    /// Anything else: the bytes read so far, to be read again by hyper.
    Other(Bytes),
    /// The client closed (or the read failed) before a whole head.
    Closed,
}

/// Reads until the head is whole, or until it is clear that hyper should answer it. The bytes
/// the client sent together with its connection are usually there already: then there is no
/// wait and no timer.
pub(crate) async fn read(stream: &mut TcpStream) -> Head {
    // Empty until the first bytes come: then exactly as long as they are (see `read_some`).
    let mut buf = BytesMut::new();
    loop {
        match read_some(stream, &mut buf) {
            Ok(0) => return Head::Closed,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if stream.readable().await.is_err() {
                    return Head::Closed;
                }
                continue;
            }
            Err(_) => return Head::Closed,
        }
        if let Some(head) = parse(&mut buf) {
            return head;
        }
        if buf.len() >= MAX_HEAD {
            return Head::Other(buf.freeze());
        }
    }
}

/// One read into the thread's scratch buffer, appended to `buf`: a head (usually a few hundred
/// bytes, there whole on the first read) costs one allocation of its own size, not a
/// kilobyte-sized one, which glibc serves from its large bins after consolidating the small
/// ones (measurable in a connection storm); and no buffer is zeroed per read.
fn read_some(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<[u8; 4096]> = const { std::cell::RefCell::new([0; 4096]) };
    }
    SCRATCH.with_borrow_mut(|scratch| {
        let room = (MAX_HEAD - buf.len()).min(scratch.len());
        let n = read_drained(stream, &mut scratch[..room])?;
        buf.extend_from_slice(&scratch[..n]);
        Ok(n)
    })
}

/// Reads what the socket has, as `try_read` does; but a read that leaves `buf` short also
/// clears the socket's readiness, as tokio's own `poll_read` does: TCP gave all it had, so the
/// `recv` that would only answer `WouldBlock` is not made (one system call per wake-up, not
/// two). Bytes that arrive meanwhile raise a new readiness event, which this does not clear.
pub(crate) fn read_drained(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        let mut short = 0;
        let read = stream.try_io(tokio::io::Interest::READABLE, || {
            // SAFETY: `buf` is writable for `buf.len()` bytes for the whole call, and the
            // descriptor is the stream's own, open while `stream` is borrowed.
            let n = unsafe { libc::recv(stream.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = n as usize;
            if n > 0 && n < buf.len() {
                // `WouldBlock` is what tells tokio to clear the readiness.
                short = n;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match read {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && short > 0 => Ok(short),
            other => other,
        }
    }
    #[cfg(not(unix))]
    stream.try_read(buf)
}

/// `Some` once the bytes say what the connection is.
fn parse(buf: &mut BytesMut) -> Option<Head> {
    if buf.is_empty() {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return None,
        // Hyper gives the answer it always gave (400, 431).
        Err(_) => return Some(Head::Other(std::mem::take(buf).freeze())),
    };
    let wants_websocket = parsed.method == Some("GET")
        && parsed.version == Some(1)
        && parsed
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("upgrade") && h.value.eq_ignore_ascii_case(b"websocket"));
    if !wants_websocket {
        return Some(Head::Other(std::mem::take(buf).freeze()));
    }
    // The request's parts are slices of the bytes read, not copies of them.
    let read = std::mem::take(buf).freeze();
    let Some(req) = to_request(&read) else {
        return Some(Head::Other(read));
    };
    Some(Head::Upgrade { req, read, len })
}

/// The request as hyper would have built it, its target and header values sharing `read`'s
/// bytes; `None` when a part is not valid HTTP, so that hyper refuses it as it always did.
fn to_request(read: &Bytes) -> Option<Request<()>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    // Parsed whole once already: a second parse of a few hundred bytes costs less than
    // carrying the first one's offsets out of its borrow.
    parsed.parse(read).ok()?;
    let target = read.slice_ref(parsed.path?.as_bytes());
    let mut builder = Request::builder()
        .method(Method::GET)
        .uri(hyper::Uri::from_maybe_shared(target).ok()?);
    let map = builder.headers_mut()?;
    map.reserve(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = header::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = header::HeaderValue::from_maybe_shared(read.slice_ref(h.value)).ok()?;
        map.append(name, value);
    }
    builder.body(()).ok()
}

/// A TCP stream with bytes already read from it put back in front, for hyper.
pub(crate) struct Rewind {
    pub(crate) prefix: Bytes,
    pub(crate) inner: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Option<Head> {
        parse(&mut BytesMut::from(bytes))
    }

    #[test]
    fn an_upgrade_head_is_parsed_with_the_bytes_after_it() {
        let bytes = b"GET /ws?token=abc HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\nX-A: 1\r\nX-A: 2\r\n\r\n\x81\x00";
        let Some(Head::Upgrade { req, read, len }) = parse_all(bytes) else {
            panic!("not an upgrade");
        };
        let early = read.slice(len..);
        assert_eq!(req.uri().path(), "/ws");
        assert_eq!(req.uri().query(), Some("token=abc"));
        assert_eq!(req.headers().get_all("x-a").iter().count(), 2);
        assert_eq!(&early[..], b"\x81\x00");
    }

    #[test]
    fn a_partial_head_waits_for_more() {
        assert!(parse_all(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n").is_none());
    }

    #[test]
    fn everything_else_goes_to_hyper_whole() {
        for bytes in [
            &b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"POST /ws HTTP/1.1\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n",
            b"GET /ws HTTP/1.0\r\nUpgrade: websocket\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nBad\x01Header: 1\r\n\r\n",
            b"\x16\x03\x01 not http",
        ] {
            match parse_all(bytes) {
                Some(Head::Other(read)) => assert_eq!(&read[..], bytes),
                _ => panic!("{:?} was not left to hyper", String::from_utf8_lossy(bytes)),
            }
        }
    }

    #[test]
    fn too_many_headers_go_to_hyper() {
        let mut head = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            head.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        assert!(matches!(parse_all(&head), Some(Head::Other(_))));
    }
}
