//! A verified token's claims, read once for what the server needs and kept as signed.
//!
//! The server reads a few claims itself (`id` and `collection` for the user's key, `exp`,
//! `iat`, `sid`, and `aud` to refuse it); the rest is for the host's rules and handlers, which
//! see the claims as a JSON object. Building that object is a dozen allocations and a hash per
//! member, most of a handshake's token check, and most sockets never meet a rule or a handler
//! that asks for it. So the claims are kept as their JSON text, scanned once without building
//! anything, and parsed into the object the first time something asks (once per user: a user's
//! sockets share their claims, see [`crate::auth::users`]).

use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// serde_json's key for a raw value: an object that starts with it is read as the JSON in its
/// string (see [`Claims::parse`]).
const RAW_VALUE_KEY: &str = "$serde_json::private::RawValue";

/// A token's claims: the JSON object's text, and what the server reads of it.
pub(crate) struct Claims {
    json: Box<str>,
    read: Read,
    /// The claims as JS sees them, parsed the first time one asks.
    value: OnceLock<Arc<Value>>,
}

/// What the server reads of the claims, taken out once.
struct Read {
    /// The user's key, `<collection>:<id>` (`None`: the claims name no user).
    key: Option<Arc<str>>,
    exp: Option<u64>,
    iat: Option<u64>,
    sid: Sid,
    /// Whether `aud` names an audience (a string, or a list of strings).
    audience: bool,
}

/// Where the `sid` claim is: in the text as it is (no escapes: nearly always), or unescaped.
enum Sid {
    None,
    At(u32, u32),
    Own(Box<str>),
}

impl Claims {
    /// Reads claims (the token's decoded middle part); `None` when they are not one JSON
    /// object, exactly when serde_json would not read them as a map of claims.
    pub(crate) fn parse(json: String) -> Option<Claims> {
        // An object whose first key is serde_json's raw-value key is read as the JSON in its
        // string, by the parse into a value (never by the scan): claims that hold the key
        // anywhere are parsed now, so that what is accepted is what that parse accepts.
        if json.contains(RAW_VALUE_KEY) {
            let map: Map<String, Value> = serde_json::from_str(&json).ok()?;
            return Some(Claims::from_map(json.into_boxed_str(), map));
        }
        let read = {
            let mut de = serde_json::Deserializer::from_str(&json);
            let found = Scan.deserialize(&mut de).ok()?;
            de.end().ok()?;
            found.read(&json)
        };
        Some(Claims {
            json: json.into_boxed_str(),
            read,
            value: OnceLock::new(),
        })
    }

    /// Claims from their value.
    #[cfg(test)]
    pub(crate) fn from_value(value: Value) -> Option<Claims> {
        let Value::Object(map) = value else { return None };
        let json = serde_json::to_string(&map).ok()?;
        Some(Claims::from_map(json.into_boxed_str(), map))
    }

    /// Claims already parsed into `map` (its value is kept).
    fn from_map(json: Box<str>, map: Map<String, Value>) -> Claims {
        let claim = |name: &str| map.get(name).cloned().map(Claim::Value);
        let found = Found {
            id: claim("id"),
            collection: claim("collection"),
            exp: claim("exp"),
            iat: claim("iat"),
            sid: claim("sid"),
            aud: claim("aud"),
        };
        Claims {
            read: found.read(&json),
            json,
            value: OnceLock::from(Arc::new(Value::Object(map))),
        }
    }

    /// `<collection>:<id>` (`collection` defaults to `users`); `None` without an `id` that is a
    /// number or a non-empty string.
    pub(crate) fn user_key(&self) -> Option<&Arc<str>> {
        self.read.key.as_ref()
    }

    /// `exp`, when it is an integer (seconds since the epoch).
    pub(crate) fn expires_at(&self) -> Option<u64> {
        self.read.exp
    }

    /// `iat`, when it is an integer.
    pub(crate) fn issued_at(&self) -> Option<u64> {
        self.read.iat
    }

    /// `sid`, when it is a string.
    pub(crate) fn sid(&self) -> Option<&str> {
        match &self.read.sid {
            Sid::None => None,
            Sid::At(start, end) => self.json.get(*start as usize..*end as usize),
            Sid::Own(s) => Some(s),
        }
    }

    /// Whether `aud` names an audience.
    pub(crate) fn has_audience(&self) -> bool {
        self.read.audience
    }

    /// The claims' JSON text, as signed.
    pub(crate) fn json(&self) -> &str {
        &self.json
    }

    /// The claims as the host sees them: parsed on the first call, then shared.
    pub(crate) fn value(&self) -> &Arc<Value> {
        self.value.get_or_init(|| {
            // The scan accepted exactly what this parse accepts (see `parse`).
            let map: Map<String, Value> = serde_json::from_str(&self.json).unwrap_or_default();
            Arc::new(Value::Object(map))
        })
    }
}

impl PartialEq for Claims {
    /// Equal as JSON values (not as text): claims are compared by what they say.
    fn eq(&self, other: &Claims) -> bool {
        self.json == other.json || self.value() == other.value()
    }
}

impl fmt::Debug for Claims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.json)
    }
}

/// A claim the server reads: a string as it is in the text, or any other value as serde_json
/// reads one (so an odd claim decides as it did when the claims were a parsed map).
enum Claim<'a> {
    Text(&'a str),
    Value(Value),
}

impl Claim<'_> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Claim::Text(s) => Some(s),
            Claim::Value(v) => v.as_str(),
        }
    }

    fn as_u64(&self) -> Option<u64> {
        match self {
            Claim::Text(_) => None,
            Claim::Value(v) => v.as_u64(),
        }
    }

    /// An `aud` naming an audience: a string, or a list of strings.
    fn is_audience(&self) -> bool {
        match self {
            Claim::Text(_) => true,
            Claim::Value(Value::String(_)) => true,
            Claim::Value(Value::Array(names)) => names.iter().all(Value::is_string),
            Claim::Value(_) => false,
        }
    }
}

impl<'de> Deserialize<'de> for Claim<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ClaimVisitor)
    }
}

struct ClaimVisitor;

impl<'de> Visitor<'de> for ClaimVisitor {
    type Value = Claim<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Claim<'de>, E> {
        Ok(Claim::Text(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Claim<'de>, E> {
        Ok(Claim::Value(Value::String(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Claim<'de>, E> {
        Ok(Claim::Value(Value::String(v)))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Claim<'de>, E> {
        Ok(Claim::Value(Value::Bool(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Claim<'de>, E> {
        Ok(Claim::Value(Value::from(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Claim<'de>, E> {
        Ok(Claim::Value(Value::from(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Claim<'de>, E> {
        Ok(Claim::Value(Value::from(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Claim<'de>, E> {
        Ok(Claim::Value(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Claim<'de>, A::Error> {
        Value::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(Claim::Value)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Claim<'de>, A::Error> {
        Value::deserialize(de::value::MapAccessDeserializer::new(map)).map(Claim::Value)
    }
}

/// What the scan found (the last of a claim given twice, as a parsed map keeps).
#[derive(Default)]
struct Found<'a> {
    id: Option<Claim<'a>>,
    collection: Option<Claim<'a>>,
    exp: Option<Claim<'a>>,
    iat: Option<Claim<'a>>,
    sid: Option<Claim<'a>>,
    aud: Option<Claim<'a>>,
}

impl Found<'_> {
    /// What the server keeps of these claims; a `sid` still in `text` (the claims' text, which
    /// the scan borrowed from) is kept as its place there.
    fn read(self, text: &str) -> Read {
        let key = self.key();
        let sid = match self.sid {
            Some(Claim::Text(s)) => {
                let start = s.as_ptr() as usize - text.as_ptr() as usize;
                Sid::At(start as u32, (start + s.len()) as u32)
            }
            Some(Claim::Value(Value::String(s))) => Sid::Own(s.into_boxed_str()),
            _ => Sid::None,
        };
        Read {
            key,
            exp: self.exp.as_ref().and_then(Claim::as_u64),
            iat: self.iat.as_ref().and_then(Claim::as_u64),
            sid,
            audience: self.aud.as_ref().is_some_and(Claim::is_audience),
        }
    }

    fn key(&self) -> Option<Arc<str>> {
        let collection = self.collection.as_ref().and_then(Claim::as_str).unwrap_or("users");
        match self.id.as_ref()? {
            Claim::Text(id) if !id.is_empty() => Some(super::user_key(collection, id)),
            Claim::Value(Value::String(id)) if !id.is_empty() => Some(super::user_key(collection, id)),
            Claim::Value(Value::Number(n)) => Some(super::user_key(collection, n)),
            _ => None,
        }
    }
}

/// Reads the claims object, keeping the claims the server reads and skipping the others.
struct Scan;

impl<'de> DeserializeSeed<'de> for Scan {
    type Value = Found<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Found<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Scan {
    type Value = Found<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of claims")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found<'de>, A::Error> {
        let mut found = Found::default();
        while let Some(name) = map.next_key::<Name>()? {
            let slot = match name {
                Name::Id => &mut found.id,
                Name::Collection => &mut found.collection,
                Name::Exp => &mut found.exp,
                Name::Iat => &mut found.iat,
                Name::Sid => &mut found.sid,
                Name::Aud => &mut found.aud,
                Name::Other => {
                    map.next_value::<Skip>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value::<Claim>()?);
        }
        Ok(found)
    }
}

/// A claim's name, unescaped, as far as the scan cares.
enum Name {
    Id,
    Collection,
    Exp,
    Iat,
    Sid,
    Aud,
    Other,
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl Visitor<'_> for NameVisitor {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a claim name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Name, E> {
                Ok(match v {
                    "id" => Name::Id,
                    "collection" => Name::Collection,
                    "exp" => Name::Exp,
                    "iat" => Name::Iat,
                    "sid" => Name::Sid,
                    "aud" => Name::Aud,
                    _ => Name::Other,
                })
            }
        }
        d.deserialize_str(NameVisitor)
    }
}

/// A value the scan does not keep, read as a value is (numbers in range, nesting within
/// serde_json's limit) but building nothing: `IgnoredAny` alone would accept what the parse
/// into a value refuses.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Key, exp, iat, sid, audience and value, as read.
    type Seen = Option<(Option<String>, Option<u64>, Option<u64>, Option<String>, bool, Value)>;

    /// What the claims said when they were parsed into a map first.
    fn by_the_map(text: &str) -> Seen {
        let map: Map<String, Value> = serde_json::from_str(text).ok()?;
        let claims = Claims::from_value(Value::Object(map.clone()))?;
        let sid = map.get("sid").and_then(Value::as_str).map(str::to_string);
        Some((
            claims.user_key().map(|k| k.to_string()),
            claims.expires_at(),
            claims.issued_at(),
            sid,
            claims.has_audience(),
            Value::Object(map),
        ))
    }

    fn scanned(text: &str) -> Seen {
        let claims = Claims::parse(text.to_string())?;
        Some((
            claims.user_key().map(|k| k.to_string()),
            claims.expires_at(),
            claims.issued_at(),
            claims.sid().map(str::to_string),
            claims.has_audience(),
            (**claims.value()).clone(),
        ))
    }

    /// The scan reads every claim as a parse into a map reads it, accepts exactly the texts
    /// that parse accepts, and the value it parses later is the map.
    #[test]
    fn the_scan_reads_what_a_parse_reads() {
        let deep = |n: usize| format!(r#"{{"id":1,"x":{}{}}}"#, "[".repeat(n), "]".repeat(n));
        let texts: Vec<String> = [
            r#"{"id":"u1","collection":"users","email":"a@b.c","sid":"s-1","iat":5,"exp":10}"#,
            r#"{"id":7,"exp":10,"sid":"a\"b","collection":"ad\u006dins"}"#,
            r#"{"i\u0064":"x","s\u0069d":"s","exp":1}"#,
            r#"{"id":"","exp":1}"#,
            r#"{"id":7.5,"exp":1.5,"iat":-3}"#,
            r#"{"id":1e3,"exp":18446744073709551615,"iat":18446744073709551616}"#,
            r#"{"id":1,"exp":1,"exp":2,"sid":"a","sid":5}"#,
            r#"{"id":1,"aud":"x"}"#,
            r#"{"id":1,"aud":["x","y"]}"#,
            r#"{"id":1,"aud":["x",1]}"#,
            r#"{"id":1,"aud":[]}"#,
            r#"{"id":{"a":1},"collection":[1],"exp":{"b":[2]}}"#,
            r#"{"id":1,"other":{"nested":[1,2,{"k":"v\n"}],"n":null,"t":true}}"#,
            r#"{"id":1,"big":1e400}"#,
            r#"{"id":1,"bad":"\ud800"}"#,
            r#"{"id":1,"bad key \ud800":1}"#,
            r#"{"id":1,"x":{"$serde_json::private::RawValue":"{"}}"#,
            r#"{"id":1,"x":{"$serde_json::private::RawValue":"[1]"}}"#,
            r#"{"$serde_json::private::RawValue":"{\"id\":7}"}"#,
            r#"{"id":1} x"#,
            r#"[1,2]"#,
            r#""claims""#,
            r#"{"id":1,}"#,
            r#"{}"#,
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([deep(100), deep(127), deep(128), deep(200)])
        .collect();
        for text in &texts {
            assert_eq!(scanned(text), by_the_map(text), "{text}");
        }
    }

    #[test]
    fn the_value_is_parsed_once_and_only_when_asked() {
        let claims = Claims::parse(r#"{"id":1,"sid":"s","exp":9}"#.to_string()).unwrap();
        assert!(claims.value.get().is_none(), "nothing parsed by the check");
        assert_eq!(claims.sid(), Some("s"));
        let first = claims.value().clone();
        assert!(Arc::ptr_eq(&first, claims.value()));
    }
}
