//! Collection events: the checks and normalisation applied to what `emitEvent` is given, before
//! it is encoded once and fanned out.
//!
//! The event is read from its JSON text and written out again without building a tree of it:
//! `doc` (nearly all of an event's bytes) is copied as it came, never parsed into values and
//! serialized back. That is most of the cost of an event before fan-out (many rooms, 20,000
//! events: allocations and re-encoding were a sixth of the server's CPU), and it keeps numbers
//! exactly as JS wrote them (a tree turns integers beyond 2^64 into floats).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::Error;
use crate::protocol::{is_valid_slug, value_of};

/// A checked event, ready to encode.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Event {
    /// The room it goes to: `collection:<slug>` for a collection event.
    pub(crate) room: String,
    /// Who it is not for (an app event's `except`).
    pub(crate) except: crate::delivery::rooms::Except,
    /// The socket id it is not for, as the host named it (for the other instances).
    pub(crate) except_socket: Option<String>,
    /// `{ type, collection, id, doc?, user?, timestamp }`, in that key order.
    pub(crate) json: String,
}

impl Event {
    /// The event as a JSON value, for the paths that need one (an authorize rule, a history).
    pub(crate) fn body(&self) -> Value {
        value_of(&self.json)
    }
}

/// The fields of an event as they came (each still JSON text); other keys are skipped.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    collection: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    doc: Option<&'a RawValue>,
    #[serde(borrow)]
    user: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
}

/// The part of `user` an event carries: never an email or anything else.
#[derive(Deserialize)]
struct IncomingUser<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    collection: Option<&'a RawValue>,
}

/// The string a JSON value holds, if it is one.
fn string_of(raw: &RawValue) -> Option<String> {
    raw.get()
        .starts_with('"')
        .then(|| serde_json::from_str(raw.get()).ok())?
}

/// Checks an event (JSON text) and puts it in the contract's shape: `user` is cut down to
/// `{ id, collection }` (never an email), a missing `timestamp` is set to now, other keys are
/// dropped, and `doc` is kept byte for byte.
pub(crate) fn normalize(text: &str) -> Result<Event, Error> {
    let bad = |m: &str| Err(Error::InvalidInput(format!("emitEvent: {m}")));
    if !text.trim_start().starts_with('{') {
        return match serde_json::from_str::<&RawValue>(text) {
            Ok(_) => bad("the event must be an object"),
            Err(e) => bad(&format!("the event is not JSON: {e}")),
        };
    }
    let input: Incoming = match serde_json::from_str(text) {
        Ok(input) => input,
        Err(e) => return bad(&format!("the event is not JSON: {e}")),
    };
    let kind = match input.kind.and_then(string_of).as_deref() {
        Some("create") => "create",
        Some("update") => "update",
        Some("delete") => "delete",
        _ => return bad("`type` must be \"create\", \"update\" or \"delete\""),
    };
    let collection = match input.collection.and_then(string_of) {
        Some(c) if is_valid_slug(&c) => c,
        _ => return bad("`collection` must be a collection slug"),
    };
    let id = match input.id.map(RawValue::get) {
        Some(id) if id.starts_with(|c: char| c == '"' || c == '-' || c.is_ascii_digit()) => id,
        _ => return bad("`id` must be a string or a number"),
    };
    let user = match input.user {
        Some(raw) if raw.get().starts_with('{') => serde_json::from_str::<IncomingUser>(raw.get()).ok(),
        _ => None,
    };
    let timestamp = match input.timestamp {
        Some(t) if t.get().len() > 2 && t.get().starts_with('"') => t.get().to_string(),
        _ => format!("\"{}\"", iso_now()),
    };
    // A slug needs no escaping; every other part is JSON text already.
    let doc_len = input.doc.map_or(0, |d| d.get().len());
    let mut json = String::with_capacity(doc_len + collection.len() + id.len() + timestamp.len() + 96);
    json.push_str("{\"type\":\"");
    json.push_str(kind);
    json.push_str("\",\"collection\":\"");
    json.push_str(&collection);
    json.push_str("\",\"id\":");
    json.push_str(id);
    if let Some(doc) = input.doc {
        json.push_str(",\"doc\":");
        json.push_str(doc.get());
    }
    if let Some(user) = user {
        let parts: Vec<String> = [("id", user.id), ("collection", user.collection)]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| format!("\"{k}\":{}", v.get())))
            .collect();
        if !parts.is_empty() {
            json.push_str(",\"user\":{");
            json.push_str(&parts.join(","));
            json.push('}');
        }
    }
    json.push_str(",\"timestamp\":");
    json.push_str(&timestamp);
    json.push('}');
    Ok(Event {
        room: crate::protocol::collection_room(&collection),
        except: Default::default(),
        except_socket: None,
        json,
    })
}

/// Message types of the protocol itself, which an app event may not take (a client would read
/// it as the server's own reply).
const RESERVED_TYPES: [&str; 6] = ["ack", "error", "pong", "presence", "recovery-failed", "auth"];

/// Checks an application event (`publish(room, message)`): a JSON object with a non-empty
/// string `type` that is not one of the protocol's own. Returns it with `room` set (the server
/// sets `room`, `offset` and `epoch`: whatever the message said of them is dropped).
pub(crate) fn normalize_app(room: &str, text: &str) -> Result<Event, Error> {
    let bad = |m: &str| Err(Error::InvalidInput(format!("publish: {m}")));
    if !crate::protocol::is_valid_room(room) {
        return bad("the room is 1 to 256 characters, none of them a control character");
    }
    let mut message = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return bad("the message must be an object"),
        Err(e) => return bad(&format!("the message is not JSON: {e}")),
    };
    match message.get("type") {
        Some(Value::String(t)) if !t.is_empty() && !RESERVED_TYPES.contains(&t.as_str()) => {}
        Some(Value::String(t)) if !t.is_empty() => {
            return bad(&format!(
                "`type` {t:?} is the protocol's own; name app events otherwise"
            ))
        }
        _ => return bad("the message needs a `type` (a non-empty string)"),
    }
    message.remove("offset");
    message.remove("epoch");
    message.insert("room".into(), Value::String(room.to_string()));
    Ok(Event {
        room: room.to_string(),
        except: Default::default(),
        except_socket: None,
        json: Value::Object(message).to_string(),
    })
}

/// The current time as ISO 8601 in UTC with milliseconds, like JS's `toISOString()`.
pub(crate) fn iso_now() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    iso_from_millis(now.as_millis() as i64)
}

pub(crate) fn iso_from_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn iso_dates_match_js() {
        assert_eq!(iso_from_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_from_millis(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso_from_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn events_are_normalized() {
        let e = normalize(
            &json!({
                "timestamp": "t", "doc": {"title": "x"}, "id": 5, "collection": "posts", "type": "update",
                "user": {"id": 1, "collection": "users", "email": "secret@example.com"}, "extra": [1, 2]
            })
            .to_string(),
        )
        .unwrap();
        assert_eq!(e.room, "collection:posts");
        assert_eq!(
            e.json,
            r#"{"type":"update","collection":"posts","id":5,"doc":{"title":"x"},"user":{"id":1,"collection":"users"},"timestamp":"t"}"#
        );
        assert_eq!(e.body()["doc"]["title"], "x");
        let e =
            normalize(r#"{"type": "delete", "collection": "posts", "id": "a", "doc": null, "timestamp": ""}"#).unwrap();
        let body = e.body();
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(body.get("doc").is_none());
        assert_eq!(body["id"], "a");
    }

    #[test]
    fn the_doc_is_kept_byte_for_byte() {
        // Escapes, a number no float can hold, nesting, and white space as JS's
        // JSON.stringify(doc, null, 2) would leave it.
        let doc = r#"{ "t\u00e9\"x": [1.50, 123456789012345678901234567890, {"a": null}], "s": "\ud83d\ude00" }"#;
        let text = format!(
            r#" {{"type":"create","collection":"posts","id":-7,"doc":{doc},"user":{{"email":"x"}},"timestamp":7}}"#
        );
        let e = normalize(&text).unwrap();
        let doc_at = e.json.find(r#""doc":"#).unwrap() + 6;
        assert_eq!(&e.json[doc_at..doc_at + doc.len()], doc);
        let body = e.body();
        assert_eq!(body["id"], -7);
        // A user with neither id nor collection, and a timestamp that is not a string: left out,
        // and set to now.
        assert!(body.get("user").is_none());
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(body["doc"]["s"], "\u{1F600}");
    }

    #[test]
    fn bad_events_are_refused() {
        for bad in [
            "1",
            "[]",
            "{",
            "not json",
            r#"{"type": "upsert", "collection": "posts", "id": 1}"#,
            r#"{"type": 1, "collection": "posts", "id": 1}"#,
            r#"{"type": "create", "collection": "no slug", "id": 1}"#,
            r#"{"type": "create", "collection": "posts"}"#,
            r#"{"type": "create", "collection": "posts", "id": null}"#,
            r#"{"type": "create", "collection": "posts", "id": {"a": 1}}"#,
            r#"{"type": "create", "collection": "posts", "id": true}"#,
            r#"{"type": "create", "collection": "posts", "id": 1, "doc": {"a": }}"#,
        ] {
            let refused = normalize(bad);
            assert!(matches!(refused, Err(Error::InvalidInput(_))), "{bad}: {refused:?}");
        }
        let Err(Error::InvalidInput(m)) = normalize("[1]") else {
            panic!()
        };
        assert_eq!(m, "emitEvent: the event must be an object");
        let Err(Error::InvalidInput(m)) = normalize("{") else {
            panic!()
        };
        assert!(m.starts_with("emitEvent: the event is not JSON"), "{m}");
    }

    #[test]
    fn app_events_get_their_room_and_lose_what_the_server_sets() {
        let e = normalize_app(
            "ops:1",
            r#"{"type":"step","i":1,"room":"other","offset":9,"epoch":"x"}"#,
        )
        .unwrap();
        assert_eq!(e.room, "ops:1");
        let v: Value = serde_json::from_str(&e.json).unwrap();
        assert_eq!(v, serde_json::json!({ "type": "step", "i": 1, "room": "ops:1" }));
        for (room, text) in [
            ("ops:1", r#"[1]"#),
            ("ops:1", r#"{"i":1}"#),
            ("ops:1", r#"{"type":""}"#),
            ("ops:1", r#"{"type":"error"}"#),
            ("ops:1", r#"{"type":"ack"}"#),
            ("ops:*", r#"{"type":"x"}"#),
            ("", r#"{"type":"x"}"#),
            ("a\nb", r#"{"type":"x"}"#),
        ] {
            assert!(normalize_app(room, text).is_err(), "{room} {text}");
        }
    }
}
