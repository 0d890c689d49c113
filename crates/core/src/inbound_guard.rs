//! Frame-level rules fastwebsockets 0.10 does not enforce, checked on the raw bytes before it
//! parses them.
//!
//! RFC 6455 5.1 requires a server to fail the connection when a client frame is not masked, but
//! fastwebsockets' parser ignores the mask bit. It also caps single frames only, so a message
//! split into many small fragments could grow without bound. This adapter follows the frame
//! boundaries of the byte stream (2 to 14 header bytes, then the payload) and fails the read with
//! a [`Violation`] as soon as a header breaks either rule.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use crate::protocol::close_code;

/// A broken frame rule, carried inside the `io::Error` the read fails with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A client frame without the mask bit (close 1002).
    Unmasked,
    /// A message larger than the configured maximum (close 1009).
    TooLarge,
    /// A control frame (close, ping, pong) with more than 125 payload bytes (close 1002).
    ControlTooLarge,
}

impl Violation {
    pub fn close_code(self) -> u16 {
        match self {
            Violation::Unmasked | Violation::ControlTooLarge => close_code::PROTOCOL_ERROR,
            Violation::TooLarge => close_code::MESSAGE_TOO_BIG,
        }
    }

    /// Finds a violation behind an error returned by a read through the guard.
    pub fn of(err: &io::Error) -> Option<Violation> {
        err.get_ref()?.downcast_ref::<ViolationError>().map(|v| v.0)
    }
}

#[derive(Debug)]
struct ViolationError(Violation);

impl std::fmt::Display for ViolationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Violation::Unmasked => f.write_str("client frame is not masked"),
            Violation::TooLarge => f.write_str("message exceeds maxPayloadLength"),
            Violation::ControlTooLarge => f.write_str("control frame over 125 bytes"),
        }
    }
}

impl std::error::Error for ViolationError {}

/// Where the parser is in the byte stream.
#[derive(Debug, Clone, Copy)]
enum Position {
    /// Collecting a frame header: `have` of its bytes seen so far.
    Header { buf: [u8; 14], have: usize },
    /// Inside a payload with this many bytes left.
    Payload { left: u64 },
}

/// An `AsyncRead` that checks frame headers as bytes pass through.
pub struct InboundGuard<R> {
    inner: R,
    position: Position,
    max_message: u64,
    /// Payload bytes of the data message being assembled (across continuation frames).
    message_len: u64,
    failed: Option<Violation>,
}

impl<R> InboundGuard<R> {
    pub fn new(inner: R, max_message: usize) -> Self {
        InboundGuard {
            inner,
            position: Position::Header { buf: [0; 14], have: 0 },
            max_message: max_message as u64,
            message_len: 0,
            failed: None,
        }
    }

    /// Feeds bytes through the frame tracker.
    fn observe(&mut self, mut bytes: &[u8]) -> Result<(), Violation> {
        while !bytes.is_empty() {
            match &mut self.position {
                Position::Payload { left } => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.position = Position::Header { buf: [0; 14], have: 0 };
                    }
                }
                Position::Header { buf, have } => {
                    buf[*have] = bytes[0];
                    *have += 1;
                    bytes = &bytes[1..];
                    if *have < 2 {
                        continue;
                    }
                    let extra = match buf[1] & 0x7f {
                        126 => 2,
                        127 => 8,
                        _ => 0,
                    };
                    let masked = buf[1] & 0x80 != 0;
                    if !masked {
                        return Err(Violation::Unmasked);
                    }
                    let need = 2 + extra + 4;
                    if *have < need {
                        continue;
                    }
                    let len = match extra {
                        0 => (buf[1] & 0x7f) as u64,
                        2 => u16::from_be_bytes([buf[2], buf[3]]) as u64,
                        _ => u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")),
                    };
                    let fin = buf[0] & 0x80 != 0;
                    let opcode = buf[0] & 0x0f;
                    if opcode >= 0x8 && len > 125 {
                        return Err(Violation::ControlTooLarge);
                    }
                    if opcode < 0x8 {
                        // Data frame (text, binary or continuation): count toward the message.
                        if opcode != 0 {
                            self.message_len = 0;
                        }
                        self.message_len = self.message_len.saturating_add(len);
                        if self.message_len > self.max_message {
                            return Err(Violation::TooLarge);
                        }
                        if fin {
                            self.message_len = 0;
                        }
                    }
                    self.position = if len == 0 {
                        Position::Header { buf: [0; 14], have: 0 }
                    } else {
                        Position::Payload { left: len }
                    };
                }
            }
        }
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for InboundGuard<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(v) = this.failed {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, ViolationError(v))));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if let Err(v) = this.observe(&buf.filled()[before..]) {
                    this.failed = Some(v);
                    // Hand nothing of the offending read to the parser.
                    buf.set_filled(before);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, ViolationError(v))));
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn client_frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let m = if masked { 0x80 } else { 0 };
        if payload.len() < 126 {
            f.push(m | payload.len() as u8);
        } else if payload.len() <= 65535 {
            f.push(m | 126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            f.push(m | 127);
            f.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend_from_slice(payload);
        f
    }

    async fn read_all(bytes: Vec<u8>, max: usize) -> Result<Vec<u8>, Option<Violation>> {
        let mut g = InboundGuard::new(&bytes[..], max);
        let mut out = Vec::new();
        g.read_to_end(&mut out).await.map_err(|e| Violation::of(&e))?;
        Ok(out)
    }

    #[tokio::test]
    async fn masked_frames_pass_untouched() {
        let mut bytes = client_frame(true, 1, b"hello", true);
        bytes.extend(client_frame(true, 2, &vec![7; 70_000], true));
        bytes.extend(client_frame(true, 9, b"", true));
        assert_eq!(read_all(bytes.clone(), 100_000).await.unwrap(), bytes);
    }

    #[tokio::test]
    async fn an_unmasked_frame_fails() {
        let mut bytes = client_frame(true, 1, b"ok", true);
        bytes.extend(client_frame(true, 1, b"not masked", false));
        assert_eq!(read_all(bytes, 1000).await.unwrap_err(), Some(Violation::Unmasked));
    }

    #[tokio::test]
    async fn too_large_counts_fragments() {
        let mut bytes = client_frame(false, 1, &[b'a'; 60], true);
        bytes.extend(client_frame(true, 9, b"ping in between", true));
        bytes.extend(client_frame(false, 0, &[b'a'; 60], true));
        assert_eq!(read_all(bytes.clone(), 200).await.unwrap(), bytes);
        bytes.extend(client_frame(true, 0, &[b'a'; 100], true));
        assert_eq!(read_all(bytes, 200).await.unwrap_err(), Some(Violation::TooLarge));
        let single = client_frame(true, 1, &[b'a'; 201], true);
        assert_eq!(read_all(single, 200).await.unwrap_err(), Some(Violation::TooLarge));
    }

    #[tokio::test]
    async fn control_frames_are_at_most_125_bytes() {
        let ok = client_frame(true, 8, &[b'a'; 125], true);
        assert!(read_all(ok, 1000).await.is_ok());
        let close = client_frame(true, 8, &[b'a'; 126], true);
        assert_eq!(
            read_all(close, 1000).await.unwrap_err(),
            Some(Violation::ControlTooLarge)
        );
    }
}
