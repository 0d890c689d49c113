//! Client frames to messages: where a socket's incoming bytes are parsed (RFC 6455 5), with
//! every rule a server must enforce checked as soon as the bytes that break it arrive.
//!
//! Why our own reader rather than fastwebsockets' (which still does the handshake): its reader
//! keeps a fixed 8 KB buffer per socket for the socket's whole life, and an idle socket is most
//! of what a real-time server holds. This one keeps nothing while no frame is half-received: the
//! connection reads into a buffer shared by every socket of the thread and hands the bytes over;
//! only the tail of a frame cut by the read is copied into the socket's own [`FrameReader`]. It
//! also checks what fastwebsockets 0.10 lets through (unmasked client frames, messages over the
//! limit when split into fragments), so the limit bounds the memory a client can make us hold.

use crate::protocol::close_code;

/// A complete message (or control frame) from the client. Slices borrow the reader's buffers
/// until the callback returns.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Message<'a> {
    Text(&'a [u8]),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong,
    /// The client's close, with its status code if it sent one.
    Close(Option<u16>),
}

/// A broken rule: the connection fails with [`FrameError::close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// A client frame without the mask bit (RFC 6455 5.1).
    Unmasked,
    /// A message (all its fragments together) larger than `maxPayloadLength`.
    TooLarge,
    /// A control frame with more than 125 payload bytes, or fragmented.
    BadControl,
    /// Reserved bits or opcodes, or fragments out of sequence.
    Protocol(&'static str),
    /// A text message or close reason that is not UTF-8.
    InvalidUtf8,
    /// A close frame with a one-byte payload or a code no endpoint may send.
    BadClose,
}

impl FrameError {
    /// The close code and reason the server answers with.
    pub(crate) fn close(self) -> (u16, &'static str) {
        match self {
            FrameError::Unmasked => (close_code::PROTOCOL_ERROR, "client frames must be masked"),
            FrameError::TooLarge => (close_code::MESSAGE_TOO_BIG, "message exceeds maxPayloadLength"),
            FrameError::BadControl => (
                close_code::PROTOCOL_ERROR,
                "control frames must be whole and at most 125 bytes",
            ),
            FrameError::Protocol(why) => (close_code::PROTOCOL_ERROR, why),
            FrameError::InvalidUtf8 => (close_code::INVALID_PAYLOAD, "text is not valid UTF-8"),
            FrameError::BadClose => (close_code::PROTOCOL_ERROR, "invalid close frame"),
        }
    }
}

/// Close codes a peer may send (RFC 6455 7.4, and the IANA registry's 1012/1013).
pub(crate) fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

/// One socket's parser state. What it holds between frames (a cut frame, a message in
/// fragments, an error) is boxed and freed once empty: most sockets are idle, and this is part
/// of every idle socket's task.
#[derive(Default)]
pub(crate) struct FrameReader {
    /// `None` when there is nothing: no cut frame, no message under way, no error.
    held: Option<Box<Held>>,
    /// `maxPayloadLength` (a `u32`: this is part of every idle socket's task).
    max_message: u32,
    /// The client's close frame has arrived: nothing after it is read.
    closed: bool,
    /// Stop parsing after the first data message (first-message auth): what follows is kept
    /// unparsed for [`FrameReader::into_rest`].
    first_only: bool,
    /// A data message came while `first_only`: nothing more is parsed.
    stopped: bool,
}

/// What a reader holds between two reads.
#[derive(Default)]
struct Held {
    /// Bytes of a frame the last read cut short (empty between frames).
    partial: Vec<u8>,
    /// Payload of the data message being assembled (unmasked).
    message: Vec<u8>,
    /// Opcode of that message (1 text, 2 binary); 0 when none is in progress.
    message_opcode: u8,
    /// How much of `message` is known to be valid UTF-8 (text: checked as fragments arrive).
    utf8_checked: usize,
    failed: Option<FrameError>,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.partial.capacity() == 0
            && self.message.capacity() == 0
            && self.message_opcode == 0
            && self.failed.is_none()
    }

    /// Checks the text received so far: an invalid sequence fails at once (not only at the end
    /// of the message); a code point cut by a fragment boundary waits for the next fragment.
    fn check_utf8(&mut self, fin: bool) -> Result<(), FrameError> {
        match std::str::from_utf8(&self.message[self.utf8_checked..]) {
            Ok(_) => self.utf8_checked = self.message.len(),
            Err(e) if e.error_len().is_some() || fin => return Err(FrameError::InvalidUtf8),
            Err(e) => self.utf8_checked += e.valid_up_to(),
        }
        Ok(())
    }
}

/// A frame header, once all of it (with the mask key) has arrived.
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Header bytes (2 to 14).
    len: usize,
    payload: usize,
}

impl FrameReader {
    pub(crate) fn new(max_message: usize) -> FrameReader {
        FrameReader {
            max_message: clamp(max_message),
            ..FrameReader::default()
        }
    }

    /// A reader that stops after the first data message, for a socket that must authenticate
    /// with it before anything else is acted on.
    pub(crate) fn first_message_only(max_message: usize) -> FrameReader {
        FrameReader {
            max_message: clamp(max_message),
            first_only: true,
            ..FrameReader::default()
        }
    }

    /// The bytes after the first data message, unparsed (they start at a frame boundary), to be
    /// fed to the socket's next reader.
    pub(crate) fn into_rest(self) -> Vec<u8> {
        self.held.map(|h| h.partial).unwrap_or_default()
    }

    /// Bytes this reader holds (for memory accounting and tests).
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.held
            .as_ref()
            .map_or(0, |h| h.partial.capacity() + h.message.capacity())
    }

    fn held(&mut self) -> &mut Held {
        self.held.get_or_insert_with(Box::default)
    }

    /// Parses `input` (the next bytes of the stream), calling `on` for each complete message in
    /// order. After an error the reader stays failed: the connection must close.
    pub(crate) fn feed(&mut self, input: &[u8], on: &mut dyn FnMut(Message<'_>)) -> Result<(), FrameError> {
        if let Some(e) = self.held.as_ref().and_then(|h| h.failed) {
            return Err(e);
        }
        // After a stop, the caller takes the rest with `into_rest` and feeds no more.
        if self.closed || self.stopped {
            return Ok(());
        }
        let result = match self.held.as_mut().map(|h| std::mem::take(&mut h.partial)) {
            Some(mut partial) if !partial.is_empty() => {
                partial.extend_from_slice(input);
                let used = self.parse(&partial, on);
                if let Ok(used) = used {
                    partial.drain(..used);
                }
                self.held().partial = partial;
                used.map(|_| ())
            }
            // The common case: parse straight from the caller's buffer, keep only a cut tail.
            _ => {
                let used = self.parse(input, on);
                if let Ok(used) = used {
                    if used < input.len() {
                        self.held().partial.extend_from_slice(&input[used..]);
                    }
                }
                used.map(|_| ())
            }
        };
        if let Err(e) = result {
            self.held = Some(Box::new(Held {
                failed: Some(e),
                ..Held::default()
            }));
            return result;
        }
        // Emptied buffers are freed: an idle socket holds none (most sockets are idle, and a
        // client message is rare enough that allocating for the next one costs nothing).
        if let Some(held) = &mut self.held {
            if self.closed || held.partial.is_empty() {
                held.partial = Vec::new();
            }
            if held.is_empty() {
                self.held = None;
            }
        }
        result
    }

    /// Parses whole frames from `data`; returns how many bytes they took.
    fn parse(&mut self, data: &[u8], on: &mut dyn FnMut(Message<'_>)) -> Result<usize, FrameError> {
        let mut at = 0;
        while !self.closed && !self.stopped {
            let Some(header) = self.header(&data[at..])? else { break };
            let end = at + header.len + header.payload;
            if data.len() < end {
                break;
            }
            self.frame(&header, &data[at + header.len..end], on)?;
            at = end;
        }
        Ok(at)
    }

    /// Reads and checks a frame header; `None` until all of it has arrived. Every rule that the
    /// header alone can break is checked here, before any payload is buffered.
    fn header(&self, b: &[u8]) -> Result<Option<Header>, FrameError> {
        if b.len() < 2 {
            return Ok(None);
        }
        let (fin, rsv, opcode) = (b[0] & 0x80 != 0, b[0] & 0x70, b[0] & 0x0f);
        if rsv != 0 {
            return Err(FrameError::Protocol("reserved bits set without an extension"));
        }
        if b[1] & 0x80 == 0 {
            return Err(FrameError::Unmasked);
        }
        let short = (b[1] & 0x7f) as usize;
        let extra = match short {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let control = opcode >= 0x8;
        match opcode {
            0x0..=0x2 | 0x8..=0xa => {}
            _ => return Err(FrameError::Protocol("reserved opcode")),
        }
        if control && (!fin || short > 125) {
            return Err(FrameError::BadControl);
        }
        let (message_opcode, message_len) = self
            .held
            .as_ref()
            .map_or((0, 0), |h| (h.message_opcode, h.message.len()));
        match (opcode, message_opcode) {
            (0x0, 0) => return Err(FrameError::Protocol("continuation frame without a message")),
            (0x1 | 0x2, op) if op != 0 => return Err(FrameError::Protocol("new message before the last one ended")),
            _ => {}
        }
        let len = 2 + extra + 4;
        if b.len() < 2 + extra {
            return Ok(None);
        }
        let payload = match extra {
            0 => short as u64,
            2 => u16::from_be_bytes([b[2], b[3]]) as u64,
            _ => u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")),
        };
        if !control {
            let so_far = if opcode == 0 { message_len as u64 } else { 0 };
            if so_far.saturating_add(payload) > u64::from(self.max_message) {
                return Err(FrameError::TooLarge);
            }
        }
        if b.len() < len {
            return Ok(None);
        }
        Ok(Some(Header {
            fin,
            opcode,
            mask: b[len - 4..len].try_into().expect("4 bytes"),
            len,
            payload: payload as usize,
        }))
    }

    /// Acts on one whole frame.
    fn frame(&mut self, h: &Header, masked: &[u8], on: &mut dyn FnMut(Message<'_>)) -> Result<(), FrameError> {
        match h.opcode {
            0x8..=0xa => {
                let mut buf = [0u8; 125];
                let payload = &mut buf[..masked.len()];
                unmask_into(payload, masked, h.mask);
                match h.opcode {
                    0x8 => {
                        self.closed = true;
                        on(Message::Close(close_payload(payload)?));
                    }
                    0x9 => on(Message::Ping(payload)),
                    _ => on(Message::Pong),
                }
            }
            _ => {
                let held = self.held.get_or_insert_with(Box::default);
                if h.opcode != 0 {
                    held.message_opcode = h.opcode;
                    held.utf8_checked = 0;
                }
                let start = held.message.len();
                held.message.resize(start + masked.len(), 0);
                unmask_into(&mut held.message[start..], masked, h.mask);
                if held.message_opcode == 0x1 {
                    held.check_utf8(h.fin)?;
                }
                if h.fin {
                    let message = &held.message[..];
                    on(if held.message_opcode == 0x1 {
                        Message::Text(message)
                    } else {
                        Message::Binary(message)
                    });
                    held.message_opcode = 0;
                    held.message = Vec::new();
                    self.stopped = self.first_only;
                }
            }
        }
        Ok(())
    }
}

/// A message size limit as the reader keeps it; past 4 GB is no limit a server could honour.
fn clamp(max_message: usize) -> u32 {
    u32::try_from(max_message).unwrap_or(u32::MAX)
}

/// The status code of a close payload, after checking it.
fn close_payload(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(FrameError::BadClose),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !close_code_allowed(code) {
                return Err(FrameError::BadClose);
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(FrameError::InvalidUtf8);
            }
            Ok(Some(code))
        }
    }
}

/// Copies `masked` into `out`, removing the client's mask.
fn unmask_into(out: &mut [u8], masked: &[u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut out_chunks = out.chunks_exact_mut(4);
    let mut in_chunks = masked.chunks_exact(4);
    for (o, i) in (&mut out_chunks).zip(&mut in_chunks) {
        let v = u32::from_ne_bytes(i.try_into().expect("4 bytes")) ^ word;
        o.copy_from_slice(&v.to_ne_bytes());
    }
    for (k, (o, i)) in out_chunks
        .into_remainder()
        .iter_mut()
        .zip(in_chunks.remainder())
        .enumerate()
    {
        *o = i ^ mask[k];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        if masked {
            f.extend_from_slice(&mask);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        f
    }

    #[derive(Debug, PartialEq)]
    enum Got {
        Text(Vec<u8>),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong,
        Close(Option<u16>),
    }

    /// Feeds `bytes` in pieces of `step` bytes; what came out, and the error if any.
    fn run(bytes: &[u8], step: usize, max: usize) -> (Vec<Got>, Option<FrameError>, FrameReader) {
        let mut r = FrameReader::new(max);
        let mut got = Vec::new();
        let mut on = |m: Message<'_>| {
            got.push(match m {
                Message::Text(t) => Got::Text(t.to_vec()),
                Message::Binary(b) => Got::Binary(b.to_vec()),
                Message::Ping(p) => Got::Ping(p.to_vec()),
                Message::Pong => Got::Pong,
                Message::Close(c) => Got::Close(c),
            })
        };
        for chunk in bytes.chunks(step) {
            if let Err(e) = r.feed(chunk, &mut on) {
                return (got, Some(e), r);
            }
        }
        (got, None, r)
    }

    #[test]
    fn first_message_only_stops_there_and_keeps_the_rest_unparsed() {
        let mut r = FrameReader::first_message_only(1024);
        let ping = client_frame(true, 0x9, b"p", true);
        let auth = client_frame(true, 0x1, br#"{"type":"auth"}"#, true);
        let next = client_frame(true, 0x1, b"next", true);
        let mut input = [ping, auth].concat();
        // The next message's frame, cut by the read.
        input.extend_from_slice(&next[..3]);
        let mut got = Vec::new();
        r.feed(&input, &mut |m| got.push(format!("{m:?}"))).unwrap();
        assert_eq!(got.len(), 2, "the ping and the first message only: {got:?}");
        assert!(got[1].starts_with("Text"));
        assert_eq!(r.into_rest(), next[..3].to_vec());
    }

    #[test]
    fn messages_come_out_whole_whatever_the_read_sizes() {
        let mut bytes = client_frame(true, 1, b"hello", true);
        bytes.extend(client_frame(true, 2, &vec![7; 70_000], true));
        bytes.extend(client_frame(false, 1, "h\u{e9}l".as_bytes(), true));
        bytes.extend(client_frame(true, 9, b"in between", true));
        bytes.extend(client_frame(true, 0, b"lo", true));
        bytes.extend(client_frame(true, 10, b"", true));
        bytes.extend(client_frame(true, 8, &[0x03, 0xe8, b'o', b'k'], true));
        let expect = vec![
            Got::Text(b"hello".to_vec()),
            Got::Binary(vec![7; 70_000]),
            Got::Ping(b"in between".to_vec()),
            Got::Text("h\u{e9}llo".as_bytes().to_vec()),
            Got::Pong,
            Got::Close(Some(1000)),
        ];
        for step in [1, 2, 3, 7, 13, 4096, bytes.len()] {
            let (got, err, r) = run(&bytes, step, 100_000);
            assert_eq!(err, None, "step {step}");
            assert_eq!(got, expect, "step {step}");
            // Nothing is kept once the stream is between frames.
            assert!(r.buffered() == 0, "step {step}: {} bytes kept", r.buffered());
        }
    }

    #[test]
    fn an_unmasked_frame_fails_with_1002() {
        let mut bytes = client_frame(true, 1, b"ok", true);
        bytes.extend(client_frame(true, 1, b"not masked", false));
        let (got, err, _) = run(&bytes, 5, 1000);
        assert_eq!(got, vec![Got::Text(b"ok".to_vec())]);
        assert_eq!(err, Some(FrameError::Unmasked));
        assert_eq!(FrameError::Unmasked.close().0, 1002);
    }

    #[test]
    fn too_large_counts_fragments_and_fails_before_the_payload_arrives() {
        let mut bytes = client_frame(false, 1, &[b'a'; 60], true);
        bytes.extend(client_frame(true, 9, b"ping in between", true));
        bytes.extend(client_frame(false, 0, &[b'a'; 60], true));
        assert_eq!(run(&bytes, 1, 200).1, None);
        bytes.extend(client_frame(true, 0, &[b'a'; 100], true));
        assert_eq!(run(&bytes, 1, 200).1, Some(FrameError::TooLarge));
        // A header that declares 1 GB fails on its own: nothing is buffered for it.
        let header = [0x81, 0xff, 0, 0, 0, 0, 0x40, 0, 0, 0];
        assert_eq!(run(&header, 10, 1 << 20).1, Some(FrameError::TooLarge));
        assert_eq!(FrameError::TooLarge.close().0, 1009);
    }

    #[test]
    fn control_frames_are_whole_and_small() {
        assert_eq!(run(&client_frame(true, 9, &[b'a'; 125], true), 9, 1000).1, None);
        assert_eq!(
            run(&client_frame(true, 9, &[b'a'; 126], true), 9, 1000).1,
            Some(FrameError::BadControl)
        );
        assert_eq!(
            run(&client_frame(false, 9, b"x", true), 9, 1000).1,
            Some(FrameError::BadControl)
        );
    }

    #[test]
    fn fragments_must_follow_their_message() {
        let lone = client_frame(true, 0, b"x", true);
        assert!(matches!(run(&lone, 9, 1000).1, Some(FrameError::Protocol(_))));
        let mut two = client_frame(false, 1, b"x", true);
        two.extend(client_frame(true, 1, b"y", true));
        assert!(matches!(run(&two, 9, 1000).1, Some(FrameError::Protocol(_))));
        let mut rsv = client_frame(true, 1, b"x", true);
        rsv[0] |= 0x40;
        assert!(matches!(run(&rsv, 9, 1000).1, Some(FrameError::Protocol(_))));
        let reserved = client_frame(true, 3, b"x", true);
        assert!(matches!(run(&reserved, 9, 1000).1, Some(FrameError::Protocol(_))));
    }

    #[test]
    fn invalid_utf8_fails_as_soon_as_it_arrives() {
        // A code point split over two fragments is fine.
        let e_acute = "\u{e9}".as_bytes();
        let mut split = client_frame(false, 1, &e_acute[..1], true);
        split.extend(client_frame(true, 0, &e_acute[1..], true));
        assert_eq!(run(&split, 3, 1000).0, vec![Got::Text(e_acute.to_vec())]);
        // An impossible byte fails in the first fragment, before the message ends.
        let bad = client_frame(false, 1, &[b'a', 0xff], true);
        assert_eq!(run(&bad, 3, 1000).1, Some(FrameError::InvalidUtf8));
        // A code point cut by the end of the message fails.
        let cut = client_frame(true, 1, &e_acute[..1], true);
        assert_eq!(run(&cut, 3, 1000).1, Some(FrameError::InvalidUtf8));
        assert_eq!(FrameError::InvalidUtf8.close().0, 1007);
    }

    #[test]
    fn close_frames_are_checked() {
        assert_eq!(
            run(&client_frame(true, 8, b"", true), 9, 1000).0,
            vec![Got::Close(None)]
        );
        assert_eq!(
            run(&client_frame(true, 8, b"\x03", true), 9, 1000).1,
            Some(FrameError::BadClose)
        );
        for bad in [999u16, 1004, 1005, 1006, 1014, 1015, 2000, 5000] {
            let f = client_frame(true, 8, &bad.to_be_bytes(), true);
            assert_eq!(run(&f, 9, 1000).1, Some(FrameError::BadClose), "code {bad}");
        }
        for good in [1000u16, 1001, 1003, 1007, 1011, 1013, 3000, 4999] {
            let f = client_frame(true, 8, &good.to_be_bytes(), true);
            assert_eq!(run(&f, 9, 1000).0, vec![Got::Close(Some(good))], "code {good}");
        }
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.push(0xff);
        assert_eq!(
            run(&client_frame(true, 8, &bad_reason, true), 9, 1000).1,
            Some(FrameError::InvalidUtf8)
        );
    }

    #[test]
    fn a_big_message_does_not_stay_buffered() {
        let mut bytes = client_frame(false, 2, &vec![1; 50_000], true);
        bytes.extend(client_frame(true, 0, &vec![2; 50_000], true));
        let (got, err, r) = run(&bytes, 1000, 1 << 20);
        assert_eq!(err, None);
        assert_eq!(got.len(), 1);
        assert_eq!(r.buffered(), 0);
    }
}
