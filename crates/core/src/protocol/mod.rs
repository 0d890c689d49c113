//! The v1 wire protocol: what a client may send, what the server answers, and the WebSocket
//! frames those answers travel in.
//!
//! This is the one place where client text becomes a `ClientMessage` and where server messages
//! become bytes. Every outgoing message is encoded into a complete, unmasked WebSocket text frame
//! exactly once, as a [`Bytes`] that every recipient shares (cloning it is a reference count bump).

pub(crate) mod frame_reader;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value};

/// Where a client last was in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Since {
    pub(crate) offset: u64,
    pub(crate) epoch: String,
}

/// Close codes of the contract.
pub(crate) mod close_code {
    /// Normal closure.
    pub(crate) const NORMAL: u16 = 1000;
    /// The server is shutting down (`close()`), or the socket was idle for too long.
    pub(crate) const GOING_AWAY: u16 = 1001;
    /// Protocol error, e.g. an unmasked client frame.
    pub(crate) const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not valid UTF-8 (RFC 6455 7.4.1).
    pub(crate) const INVALID_PAYLOAD: u16 = 1007;
    /// A message larger than `maxPayloadLength`.
    pub(crate) const MESSAGE_TOO_BIG: u16 = 1009;
    /// Something failed inside the server.
    // In the contract's table (docs/security.md, the SDK's CloseCodes); nothing sends it today.
    #[allow(dead_code)]
    pub(crate) const INTERNAL_ERROR: u16 = 1011;
    /// Try again later: a socket opened with `?auth=message` found its user at
    /// `maxConnectionsPerUser`, or the server at `maxVerifying`, when its token came.
    pub(crate) const TRY_AGAIN_LATER: u16 = 1013;
    /// The token expired while the socket was connected.
    pub(crate) const TOKEN_EXPIRED: u16 = 4001;
    /// The session behind the token was revoked (logout).
    pub(crate) const SESSION_REVOKED: u16 = 4003;
    /// A socket opened with `?auth=message` sent no `{ type: "auth" }` first within
    /// `authTimeout`, sent something else first, or sent a token that was refused.
    pub(crate) const UNAUTHORIZED: u16 = 4004;
    /// The client did not read fast enough: its outbound queue passed `maxBackpressure`.
    pub(crate) const SLOW_CONSUMER: u16 = 4008;
    /// The client kept sending past `maxMessagesPerSecond` after being told to slow down.
    pub(crate) const RATE_LIMITED: u16 = 4029;
}

/// Error codes carried by `{ "type": "error", "code" }` replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadJson,
    BadMessage,
    UnknownType,
    UnknownCollection,
    Forbidden,
    RateLimited,
    TooLarge,
    Internal,
}

impl ErrorCode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad-json",
            ErrorCode::BadMessage => "bad-message",
            ErrorCode::UnknownType => "unknown-type",
            ErrorCode::UnknownCollection => "unknown-collection",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate-limited",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::Internal => "internal",
        }
    }

    /// The code a JS handler may choose by throwing an error with a `code` property.
    pub fn parse(code: &str) -> Option<ErrorCode> {
        Some(match code {
            "bad-json" => ErrorCode::BadJson,
            "bad-message" => ErrorCode::BadMessage,
            "unknown-type" => ErrorCode::UnknownType,
            "unknown-collection" => ErrorCode::UnknownCollection,
            "forbidden" => ErrorCode::Forbidden,
            "rate-limited" => ErrorCode::RateLimited,
            "too-large" => ErrorCode::TooLarge,
            "internal" => ErrorCode::Internal,
            _ => return None,
        })
    }
}

/// The `id` a client attached to a request, echoed in the `ack` or `error` reply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RequestId {
    Str(String),
    Num(serde_json::Number),
}

impl RequestId {
    pub(crate) fn to_value(&self) -> Value {
        match self {
            RequestId::Str(s) => Value::String(s.clone()),
            RequestId::Num(n) => Value::Number(n.clone()),
        }
    }
}

/// Most collections one `join-collection` may name at once; more is `too-large`.
pub(crate) const MAX_COLLECTIONS_PER_REQUEST: usize = 100;

/// A request from a client, parsed and checked for shape (not yet for permission).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ClientMessage {
    Join {
        id: Option<RequestId>,
        collections: Vec<String>,
        /// Where the client last was, per collection: recover what it missed.
        since: Vec<(String, Since)>,
    },
    Leave {
        id: Option<RequestId>,
        collections: Vec<String>,
    },
    /// `{ "type": "join", "room", "since"? }`: a room that is not a collection's, allowed by
    /// a rule of the `rooms` option.
    JoinRoom {
        id: Option<RequestId>,
        room: String,
        since: Option<Since>,
    },
    LeaveRoom {
        id: Option<RequestId>,
        room: String,
    },
    Ping {
        id: Option<RequestId>,
    },
    /// Who is in a room: a collection's (`collection`) or an app room (`room`).
    Presence {
        id: Option<RequestId>,
        room: String,
        /// The collection's slug for a collection's room, else `None`.
        collection: Option<String>,
    },
    /// A fresh token for the same user, before the current one expires.
    Auth {
        id: Option<RequestId>,
        token: String,
    },
    /// Any other type: routed to a custom handler if one is registered for it.
    Custom {
        id: Option<RequestId>,
        kind: String,
        message: Value,
    },
}

/// Why a client message was refused before it reached any handler.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rejection {
    pub(crate) id: Option<RequestId>,
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl Rejection {
    fn new(id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection {
            id,
            code,
            message: message.into(),
        }
    }
}

/// Parses one text message from a client.
pub(crate) fn parse_client_message(text: &[u8]) -> Result<ClientMessage, Rejection> {
    let value: Value = serde_json::from_slice(text)
        .map_err(|e| Rejection::new(None, ErrorCode::BadJson, format!("invalid JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(Rejection::new(
            None,
            ErrorCode::BadMessage,
            "a message must be a JSON object",
        ));
    };
    let id = match object.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(RequestId::Str(s.clone())),
        Some(Value::Number(n)) => Some(RequestId::Num(n.clone())),
        Some(_) => {
            return Err(Rejection::new(
                None,
                ErrorCode::BadMessage,
                "`id` must be a string or a number",
            ))
        }
    };
    let kind = match object.get("type") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        _ => {
            return Err(Rejection::new(
                id,
                ErrorCode::BadMessage,
                "`type` is required and must be a non-empty string",
            ))
        }
    };
    match kind.as_str() {
        "join-collection" | "subscribe" => {
            let collections = collections_of(&object, &id)?;
            let since = since_of(&object, &collections, &id)?;
            Ok(ClientMessage::Join { id, collections, since })
        }
        "leave-collection" | "unsubscribe" => {
            let collections = collections_of(&object, &id)?;
            Ok(ClientMessage::Leave { id, collections })
        }
        "join" | "leave" => {
            let room = match object.get("room") {
                Some(Value::String(r)) if is_valid_room(r) => r.clone(),
                _ => {
                    return Err(Rejection::new(
                        id,
                        ErrorCode::BadMessage,
                        "`room` must be a room name: 1 to 256 characters, no control characters, not ending in '*'",
                    ))
                }
            };
            // A collection's room is joined as a collection (its list, its read access).
            if let Some(slug) = collection_of_room(&room) {
                let collections = vec![slug.to_string()];
                if kind == "leave" {
                    return Ok(ClientMessage::Leave { id, collections });
                }
                let mut object = object;
                object.insert("collection".into(), Value::String(slug.to_string()));
                let since = since_of(&object, &collections, &id)?;
                return Ok(ClientMessage::Join { id, collections, since });
            }
            if kind == "leave" {
                return Ok(ClientMessage::LeaveRoom { id, room });
            }
            let since = match object.get("since") {
                None | Some(Value::Null) => None,
                Some(_) => since_of(&object, std::slice::from_ref(&room), &id)?
                    .pop()
                    .map(|(_, s)| s),
            };
            Ok(ClientMessage::JoinRoom { id, room, since })
        }
        "ping" => Ok(ClientMessage::Ping { id }),
        "presence" => {
            // `room` names any room (a collection's too); else `collection` names one collection.
            if let Some(room) = object.get("room") {
                let room =
                    match room {
                        Value::String(r) if is_valid_room(r) => r.clone(),
                        _ => return Err(Rejection::new(
                            id,
                            ErrorCode::BadMessage,
                            "`room` must be a room name: 1 to 256 characters, no control characters, not ending in '*'",
                        )),
                    };
                let collection = collection_of_room(&room).map(str::to_string);
                return Ok(ClientMessage::Presence { id, room, collection });
            }
            let mut collections = collections_of(&object, &id)?;
            if collections.len() != 1 {
                return Err(Rejection::new(
                    id,
                    ErrorCode::BadMessage,
                    "`presence` names one collection or one `room`",
                ));
            }
            let collection = collections.remove(0);
            Ok(ClientMessage::Presence {
                id,
                room: collection_room(&collection),
                collection: Some(collection),
            })
        }
        "auth" => match object.get("token") {
            Some(Value::String(t)) if !t.is_empty() => Ok(ClientMessage::Auth { id, token: t.clone() }),
            _ => Err(Rejection::new(
                id,
                ErrorCode::BadMessage,
                "`auth` needs a `token` string",
            )),
        },
        _ => {
            object.remove("id");
            Ok(ClientMessage::Custom {
                id,
                kind,
                message: Value::Object(object),
            })
        }
    }
}

/// Reads the collection slugs of a join or leave: `collection: "posts"`, `data: "posts"` or
/// `data: ["posts", "pages"]`.
fn collections_of(object: &Map<String, Value>, id: &Option<RequestId>) -> Result<Vec<String>, Rejection> {
    let field = object.get("collection").or_else(|| object.get("data"));
    let names: Vec<&Value> = match field {
        Some(Value::String(_)) => vec![field.unwrap()],
        Some(Value::Array(items)) => items.iter().collect(),
        _ => {
            return Err(Rejection::new(
                id.clone(),
                ErrorCode::BadMessage,
                "name the collection in `collection` (a string) or `data` (a string or an array of strings)",
            ))
        }
    };
    if names.is_empty() {
        return Err(Rejection::new(id.clone(), ErrorCode::BadMessage, "no collection named"));
    }
    if names.len() > MAX_COLLECTIONS_PER_REQUEST {
        return Err(Rejection::new(
            id.clone(),
            ErrorCode::TooLarge,
            format!("at most {MAX_COLLECTIONS_PER_REQUEST} collections per request"),
        ));
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        match name {
            Value::String(s) if is_valid_slug(s) => {
                if !out.contains(s) {
                    out.push(s.clone())
                }
            }
            _ => {
                return Err(Rejection::new(
                    id.clone(),
                    ErrorCode::BadMessage,
                    "a collection slug is 1 to 128 characters of letters, digits, '-' and '_'",
                ))
            }
        }
    }
    Ok(out)
}

/// Reads `since`: `{ offset, epoch }` for a join of one collection, or `{ [slug]: { offset, epoch } }`.
fn since_of(
    object: &Map<String, Value>,
    collections: &[String],
    id: &Option<RequestId>,
) -> Result<Vec<(String, Since)>, Rejection> {
    let bad = || {
        Rejection::new(
            id.clone(),
            ErrorCode::BadMessage,
            "`since` is { offset: number, epoch: string }, or { [collection]: { offset, epoch } }",
        )
    };
    let position = |v: &Value| -> Option<Since> {
        Some(Since {
            offset: v.get("offset")?.as_u64()?,
            epoch: v.get("epoch")?.as_str()?.to_string(),
        })
    };
    match object.get("since") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v @ Value::Object(m)) if m.contains_key("offset") => {
            if collections.len() != 1 {
                return Err(bad());
            }
            Ok(vec![(collections[0].clone(), position(v).ok_or_else(bad)?)])
        }
        Some(Value::Object(m)) => m
            .iter()
            .filter(|(slug, _)| collections.contains(slug))
            .map(|(slug, v)| Ok((slug.clone(), position(v).ok_or_else(bad)?)))
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// Payload slugs are kebab- or camel-case identifiers; anything else cannot name a collection.
pub(crate) fn is_valid_slug(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `room` may name a room a client joins or an app event goes to: 1 to 256 bytes, no
/// control characters, and not `*` at the end (that names a pattern, in the options).
pub(crate) fn is_valid_room(room: &str) -> bool {
    !room.is_empty() && room.len() <= 256 && !room.ends_with('*') && !room.chars().any(char::is_control)
}

/// The collection whose room this is, if it is one.
pub(crate) fn collection_of_room(room: &str) -> Option<&str> {
    room.strip_prefix("collection:").filter(|slug| is_valid_slug(slug))
}

/// The room a collection's events go to.
pub(crate) fn collection_room(slug: &str) -> String {
    format!("collection:{slug}")
}

/// Whether `room` is named by `pattern`: a room name, or a prefix ending in `*` (how the
/// options that apply to rooms name them: history, presence, join rules).
pub(crate) fn room_matches(pattern: &str, room: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => pattern == room,
    }
}

/// `{ "type": "ack", "id" }`.
pub(crate) fn ack(id: &RequestId) -> Bytes {
    let mut m = Map::new();
    m.insert("type".into(), Value::String("ack".into()));
    m.insert("id".into(), id.to_value());
    encode_value(&Value::Object(m))
}

/// `{ "type": "ack", "id", ...extra }`.
pub(crate) fn ack_with(id: &RequestId, extra: Map<String, Value>) -> Bytes {
    let mut m = Map::new();
    m.insert("type".into(), Value::String("ack".into()));
    m.insert("id".into(), id.to_value());
    m.extend(extra);
    encode_value(&Value::Object(m))
}

/// `{ "type": "recovery-failed", "room", "collection", "reason" }`: refetch, then go on live
/// (`collection` only for a collection's room).
pub(crate) fn recovery_failed(room: &str, collection: &str, reason: &str) -> Bytes {
    let mut m = Map::new();
    m.insert("type".into(), Value::String("recovery-failed".into()));
    m.insert("room".into(), Value::String(room.into()));
    if !collection.is_empty() {
        m.insert("collection".into(), Value::String(collection.into()));
    }
    m.insert("reason".into(), Value::String(reason.into()));
    encode_value(&Value::Object(m))
}

/// `{ "type": "presence", "id"?, "room", "collection"?, "members" }` (`collection` only for a
/// collection's room).
pub(crate) fn presence(id: Option<&RequestId>, room: &str, collection: Option<&str>, members: Vec<Value>) -> Bytes {
    let mut m = Map::new();
    m.insert("type".into(), Value::String("presence".into()));
    if let Some(id) = id {
        m.insert("id".into(), id.to_value());
    }
    m.insert("room".into(), Value::String(room.into()));
    if let Some(collection) = collection {
        m.insert("collection".into(), Value::String(collection.into()));
    }
    m.insert("members".into(), Value::Array(members));
    encode_value(&Value::Object(m))
}

/// `{ "type": "pong", "id"? }`.
pub(crate) fn pong(id: Option<&RequestId>) -> Bytes {
    let mut m = Map::new();
    m.insert("type".into(), Value::String("pong".into()));
    if let Some(id) = id {
        m.insert("id".into(), id.to_value());
    }
    encode_value(&Value::Object(m))
}

/// `{ "type": "error", "code", "message", "id"? }`.
pub(crate) fn error(code: ErrorCode, message: &str, id: Option<&RequestId>) -> Bytes {
    let mut m = Map::new();
    m.insert("type".into(), Value::String("error".into()));
    m.insert("code".into(), Value::String(code.as_str().into()));
    m.insert("message".into(), Value::String(message.into()));
    if let Some(id) = id {
        m.insert("id".into(), id.to_value());
    }
    encode_value(&Value::Object(m))
}

/// The reply to a custom request: an object is sent as it is, with the request's `id` added and
/// its `type` defaulting to the request's; any other value is wrapped as `{ type, id, data }`.
pub(crate) fn custom_reply(kind: &str, id: Option<&RequestId>, value: Value) -> Bytes {
    let mut m = match value {
        Value::Object(m) => m,
        other => {
            let mut m = Map::new();
            m.insert("data".into(), other);
            m
        }
    };
    if !m.contains_key("type") {
        m.insert("type".into(), Value::String(kind.into()));
    }
    if let Some(id) = id {
        m.insert("id".into(), id.to_value());
    }
    encode_value(&Value::Object(m))
}

/// Serializes a value and wraps it in a text frame, once, for every recipient.
pub(crate) fn encode_value(value: &Value) -> Bytes {
    // serde_json cannot fail on a `Value` (keys are strings, numbers are finite).
    let json = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    text_frame(&json)
}

/// A complete server-to-client text frame: FIN, opcode 1, no mask.
pub(crate) fn text_frame(payload: &[u8]) -> Bytes {
    frame(0x1, payload)
}

/// A close frame with a status code and a reason (truncated to fit a control frame).
pub(crate) fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut reason = reason.as_bytes();
    if reason.len() > 123 {
        let mut cut = 123;
        while std::str::from_utf8(&reason[..cut]).is_err() {
            cut -= 1;
        }
        reason = &reason[..cut];
    }
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason);
    frame(0x8, &payload)
}

/// A frame with the given opcode and payload, as a server sends it (unmasked).
pub(crate) fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut buf = BytesMut::with_capacity(len + 10);
    buf.put_u8(0x80 | (opcode & 0x0f));
    if len < 126 {
        buf.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        buf.put_u8(126);
        buf.put_u16(len as u16);
    } else {
        buf.put_u8(127);
        buf.put_u64(len as u64);
    }
    buf.put_slice(payload);
    buf.freeze()
}

/// The payload of a frame made by [`frame`] (unmasked, its length in the header).
pub(crate) fn payload(frame: &[u8]) -> &[u8] {
    let head = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => return &[],
    };
    frame.get(head..).unwrap_or(&[])
}

/// An event's JSON, written from parsed parts when the event came in (so always valid), read
/// as a value; `Null` if it somehow is not.
pub(crate) fn value_of(json: &str) -> Value {
    serde_json::from_str(json).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frames_payload_is_found_whatever_its_length() {
        for len in [0, 125, 126, 65_535, 65_536] {
            let body = vec![b'x'; len];
            assert_eq!(payload(&text_frame(&body)), &body[..]);
        }
    }

    fn payload_of(frame: &Bytes) -> Value {
        let (start, len) = match frame[1] {
            126 => (4, u16::from_be_bytes([frame[2], frame[3]]) as usize),
            127 => (10, u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize),
            n => (2, n as usize),
        };
        assert_eq!(frame.len(), start + len);
        serde_json::from_slice(&frame[start..]).unwrap()
    }

    #[test]
    fn join_accepts_every_form() {
        let forms = [
            r#"{"type":"join-collection","collection":"posts"}"#,
            r#"{"type":"subscribe","data":"posts"}"#,
            r#"{"type":"join-collection","data":["posts"]}"#,
        ];
        for f in forms {
            assert_eq!(
                parse_client_message(f.as_bytes()).unwrap(),
                ClientMessage::Join {
                    id: None,
                    collections: vec!["posts".into()],
                    since: vec![],
                },
                "{f}"
            );
        }
        let many = parse_client_message(br#"{"type":"unsubscribe","data":["a","b","a"],"id":7}"#).unwrap();
        assert_eq!(
            many,
            ClientMessage::Leave {
                id: Some(RequestId::Num(7.into())),
                collections: vec!["a".into(), "b".into()]
            }
        );
    }

    #[test]
    fn bad_input_gets_the_right_code() {
        let cases: &[(&str, ErrorCode)] = &[
            ("{not json", ErrorCode::BadJson),
            ("", ErrorCode::BadJson),
            ("[1,2]", ErrorCode::BadMessage),
            ("\"ping\"", ErrorCode::BadMessage),
            (r#"{"id":1}"#, ErrorCode::BadMessage),
            (r#"{"type":5}"#, ErrorCode::BadMessage),
            (r#"{"type":""}"#, ErrorCode::BadMessage),
            (r#"{"type":"ping","id":{"x":1}}"#, ErrorCode::BadMessage),
            (r#"{"type":"join-collection"}"#, ErrorCode::BadMessage),
            (r#"{"type":"join-collection","data":[]}"#, ErrorCode::BadMessage),
            (r#"{"type":"join-collection","data":[1]}"#, ErrorCode::BadMessage),
            (
                r#"{"type":"join-collection","collection":"a b"}"#,
                ErrorCode::BadMessage,
            ),
        ];
        for (input, code) in cases {
            let err = parse_client_message(input.as_bytes()).unwrap_err();
            assert_eq!(err.code, *code, "{input}");
        }
        let list: Vec<String> = (0..=MAX_COLLECTIONS_PER_REQUEST).map(|i| format!("c{i}")).collect();
        let msg = serde_json::json!({"type": "subscribe", "data": list, "id": "x"}).to_string();
        let err = parse_client_message(msg.as_bytes()).unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
        assert_eq!(err.id, Some(RequestId::Str("x".into())));
    }

    #[test]
    fn since_is_read_for_one_or_many_collections() {
        let one = parse_client_message(br#"{"type":"subscribe","data":"posts","since":{"offset":4,"epoch":"e"}}"#);
        let ClientMessage::Join { since, .. } = one.unwrap() else {
            panic!()
        };
        assert_eq!(
            since,
            vec![(
                "posts".to_string(),
                Since {
                    offset: 4,
                    epoch: "e".into()
                }
            )]
        );
        let many = parse_client_message(
            br#"{"type":"subscribe","data":["a","b"],"since":{"b":{"offset":1,"epoch":"x"},"zz":{"offset":1,"epoch":"x"}}}"#,
        );
        let ClientMessage::Join { since, .. } = many.unwrap() else {
            panic!()
        };
        assert_eq!(
            since,
            vec![(
                "b".to_string(),
                Since {
                    offset: 1,
                    epoch: "x".into()
                }
            )]
        );
        for bad in [
            r#"{"type":"subscribe","data":["a","b"],"since":{"offset":1,"epoch":"x"}}"#,
            r#"{"type":"subscribe","data":"a","since":{"offset":-1,"epoch":"x"}}"#,
            r#"{"type":"subscribe","data":"a","since":5}"#,
        ] {
            assert_eq!(
                parse_client_message(bad.as_bytes()).unwrap_err().code,
                ErrorCode::BadMessage,
                "{bad}"
            );
        }
    }

    #[test]
    fn the_id_survives_a_rejection_after_it_is_read() {
        let err = parse_client_message(br#"{"type":"subscribe","id":"r1"}"#).unwrap_err();
        assert_eq!(err.id, Some(RequestId::Str("r1".into())));
    }

    #[test]
    fn custom_messages_keep_their_fields_but_not_the_id() {
        let m = parse_client_message(br#"{"type":"chat","id":"q","text":"hi"}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Custom {
                id: Some(RequestId::Str("q".into())),
                kind: "chat".into(),
                message: serde_json::json!({"type":"chat","text":"hi"})
            }
        );
    }

    #[test]
    fn frames_have_the_right_length_encoding() {
        for n in [0usize, 125, 126, 65535, 65536, 100_000] {
            let f = text_frame(&vec![b'a'; n]);
            assert_eq!(f[0], 0x81);
            let header = if n < 126 {
                2
            } else if n <= 65535 {
                4
            } else {
                10
            };
            assert_eq!(f.len(), header + n);
        }
    }

    #[test]
    fn replies_have_the_contract_shape() {
        let id = RequestId::Str("a".into());
        assert_eq!(payload_of(&ack(&id)), serde_json::json!({"type":"ack","id":"a"}));
        assert_eq!(payload_of(&pong(None)), serde_json::json!({"type":"pong"}));
        assert_eq!(
            payload_of(&error(ErrorCode::UnknownType, "nope", Some(&id))),
            serde_json::json!({"type":"error","code":"unknown-type","message":"nope","id":"a"})
        );
        assert_eq!(
            payload_of(&custom_reply("sum", Some(&id), serde_json::json!(3))),
            serde_json::json!({"data":3,"type":"sum","id":"a"})
        );
        assert_eq!(
            payload_of(&custom_reply("sum", None, serde_json::json!({"type":"result","v":1}))),
            serde_json::json!({"type":"result","v":1})
        );
    }

    #[test]
    fn close_frames_carry_code_and_a_short_reason() {
        let f = close_frame(4008, &"x".repeat(500));
        assert_eq!(f[0], 0x88);
        assert_eq!(f[1] as usize, 125);
        assert_eq!(u16::from_be_bytes([f[2], f[3]]), 4008);
    }

    #[test]
    fn join_and_leave_name_a_room_and_a_collections_room_is_a_collection_join() {
        let parse = |t: &str| parse_client_message(t.as_bytes());
        assert_eq!(
            parse(r#"{"type":"join","room":"role:admin","id":1}"#).unwrap(),
            ClientMessage::JoinRoom {
                id: Some(RequestId::Num(1.into())),
                room: "role:admin".into(),
                since: None
            }
        );
        assert!(matches!(
            parse(r#"{"type":"join","room":"feed:x","since":{"offset":3,"epoch":"e"}}"#).unwrap(),
            ClientMessage::JoinRoom {
                since: Some(Since { offset: 3, .. }),
                ..
            }
        ));
        assert_eq!(
            parse(r#"{"type":"leave","room":"admins"}"#).unwrap(),
            ClientMessage::LeaveRoom {
                id: None,
                room: "admins".into()
            }
        );
        assert!(matches!(
            parse(r#"{"type":"join","room":"collection:posts"}"#).unwrap(),
            ClientMessage::Join { collections, .. } if collections == ["posts"]
        ));
        for bad in [
            r#"{"type":"join"}"#,
            r#"{"type":"join","room":""}"#,
            r#"{"type":"join","room":"orders:*"}"#,
            r#"{"type":"leave","room":7}"#,
        ] {
            assert_eq!(parse(bad).unwrap_err().code, ErrorCode::BadMessage, "{bad}");
        }
    }

    #[test]
    fn presence_names_a_collection_or_a_room() {
        let parse = |t: &str| parse_client_message(t.as_bytes());
        let asked = |room: &str, collection: Option<&str>| ClientMessage::Presence {
            id: None,
            room: room.into(),
            collection: collection.map(String::from),
        };
        assert_eq!(
            parse(r#"{"type":"presence","collection":"posts"}"#).unwrap(),
            asked("collection:posts", Some("posts"))
        );
        assert_eq!(
            parse(r#"{"type":"presence","room":"collection:posts"}"#).unwrap(),
            asked("collection:posts", Some("posts"))
        );
        assert_eq!(
            parse(r#"{"type":"presence","room":"role:admin"}"#).unwrap(),
            asked("role:admin", None)
        );
        for bad in [
            r#"{"type":"presence"}"#,
            r#"{"type":"presence","room":"chat:*"}"#,
            r#"{"type":"presence","room":5}"#,
            r#"{"type":"presence","data":["posts","pages"]}"#,
        ] {
            assert_eq!(parse(bad).unwrap_err().code, ErrorCode::BadMessage, "{bad}");
        }
        let reply = payload_of(&presence(None, "role:admin", None, Vec::new()));
        assert_eq!(
            reply,
            serde_json::json!({"type": "presence", "room": "role:admin", "members": []}),
            "no collection for an app room"
        );
    }
}
