//! Collection events: the checks and normalisation applied to what `emitEvent` is given, before
//! it is encoded once and fanned out.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::error::Error;
use crate::protocol::is_valid_slug;

/// A checked event, ready to encode.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub collection: String,
    /// `{ type, collection, id, doc?, user?, timestamp }`, in that key order.
    pub body: Value,
}

/// Checks an event and puts it in the contract's shape: `user` is cut down to `{ id, collection }`
/// (never an email), and a missing `timestamp` is set to now.
pub fn normalize(input: Value) -> Result<Event, Error> {
    let bad = |m: &str| Err(Error::InvalidInput(format!("emitEvent: {m}")));
    let Value::Object(mut input) = input else {
        return bad("the event must be an object");
    };
    let kind = match input.remove("type") {
        Some(Value::String(t)) if matches!(t.as_str(), "create" | "update" | "delete") => t,
        _ => return bad("`type` must be \"create\", \"update\" or \"delete\""),
    };
    let collection = match input.remove("collection") {
        Some(Value::String(c)) if is_valid_slug(&c) => c,
        _ => return bad("`collection` must be a collection slug"),
    };
    let id = match input.remove("id") {
        Some(v @ (Value::String(_) | Value::Number(_))) => v,
        _ => return bad("`id` must be a string or a number"),
    };
    let mut body = Map::new();
    body.insert("type".into(), Value::String(kind));
    body.insert("collection".into(), Value::String(collection.clone()));
    body.insert("id".into(), id);
    match input.remove("doc") {
        None | Some(Value::Null) => {}
        Some(doc) => {
            body.insert("doc".into(), doc);
        }
    }
    if let Some(Value::Object(user)) = input.remove("user") {
        let mut u = Map::new();
        if let Some(id) = user.get("id") {
            u.insert("id".into(), id.clone());
        }
        if let Some(c) = user.get("collection") {
            u.insert("collection".into(), c.clone());
        }
        if !u.is_empty() {
            body.insert("user".into(), Value::Object(u));
        }
    }
    let timestamp = match input.remove("timestamp") {
        Some(Value::String(t)) if !t.is_empty() => t,
        _ => iso_now(),
    };
    body.insert("timestamp".into(), Value::String(timestamp));
    Ok(Event {
        collection,
        body: Value::Object(body),
    })
}

/// The current time as ISO 8601 in UTC with milliseconds, like JS's `toISOString()`.
pub fn iso_now() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    iso_from_millis(now.as_millis() as i64)
}

pub fn iso_from_millis(ms: i64) -> String {
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
        let e = normalize(json!({
            "timestamp": "t", "doc": {"title": "x"}, "id": 5, "collection": "posts", "type": "update",
            "user": {"id": 1, "collection": "users", "email": "secret@example.com"}
        }))
        .unwrap();
        assert_eq!(e.collection, "posts");
        assert_eq!(
            serde_json::to_string(&e.body).unwrap(),
            r#"{"type":"update","collection":"posts","id":5,"doc":{"title":"x"},"user":{"id":1,"collection":"users"},"timestamp":"t"}"#
        );
        let e = normalize(json!({"type": "delete", "collection": "posts", "id": "a"})).unwrap();
        assert!(e.body["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(e.body.get("doc").is_none());
    }

    #[test]
    fn bad_events_are_refused() {
        for bad in [
            json!(1),
            json!({"type": "upsert", "collection": "posts", "id": 1}),
            json!({"type": "create", "collection": "no slug", "id": 1}),
            json!({"type": "create", "collection": "posts"}),
            json!({"type": "create", "collection": "posts", "id": {"a": 1}}),
        ] {
            assert!(normalize(bad.clone()).is_err(), "{bad}");
        }
    }
}
