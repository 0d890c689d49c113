//! Who is connecting: the credential in the handshake, Payload's token check, and the Origin
//! rule that stops cross-site WebSocket hijacking.
//!
//! Payload signs its tokens with HS256 over the UTF-8 bytes of `sha256(secret).hex()[..32]`, not
//! over the raw secret, so the server derives that key once at start-up.

pub(crate) mod claims;
pub(crate) mod revocations;
pub(crate) mod users;

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::Mac as _;
use hyper::http::{header, HeaderMap};
use jsonwebtoken::Algorithm;

pub(crate) use self::claims::Claims;
use crate::config::{Config, PayloadKey};

/// An authenticated user, as the token describes them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct User {
    /// `<collection>:<id>`: sockets with the same key are the same user (one authorize call).
    pub(crate) key: Arc<str>,
    /// The token's claims (`id`, `collection`, `email`, `sid`, ...), handed to JS as the user;
    /// shared, not copied, with every socket structure that needs them.
    pub(crate) claims: Arc<Claims>,
}

impl User {
    /// When the token expires, in seconds since the Unix epoch (its `exp`).
    pub(crate) fn expires_at(&self) -> Option<u64> {
        self.claims.expires_at()
    }

    /// When the token was issued, in seconds since the Unix epoch (its `iat`, if any).
    pub(crate) fn issued_at(&self) -> Option<u64> {
        self.claims.issued_at()
    }

    /// The session id claim, if the token has one.
    pub(crate) fn sid(&self) -> Option<&str> {
        self.claims.sid()
    }

    /// A user of these claims; `None` when they name no user.
    pub(crate) fn of(claims: Claims) -> Option<User> {
        Some(User {
            key: claims.user_key()?.clone(),
            claims: Arc::new(claims),
        })
    }
}

/// `<collection>:<id>`, written on the stack so that the `Arc` is the key's one allocation
/// (copying the parts, a `format!` and its copy into the `Arc` were four).
pub(crate) fn user_key(collection: &str, id: &dyn fmt::Display) -> Arc<str> {
    let mut key = StackStr::default();
    if write!(key, "{collection}:{id}").is_ok() {
        if let Ok(key) = std::str::from_utf8(&key.buf[..key.len]) {
            return Arc::from(key);
        }
    }
    Arc::from(format!("{collection}:{id}"))
}

/// A string on the stack, long enough for any usual user key; writing more fails.
struct StackStr {
    buf: [u8; 128],
    len: usize,
}

impl Default for StackStr {
    fn default() -> StackStr {
        StackStr { buf: [0; 128], len: 0 }
    }
}

impl fmt::Write for StackStr {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Where the credential came from; cookies are subject to the Origin rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Header,
    Query,
    Cookie,
}

/// Why a handshake is refused: an HTTP status and the JSON body of the contract.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Refusal {
    pub(crate) status: u16,
    pub(crate) error: &'static str,
    pub(crate) reason: String,
}

impl Refusal {
    pub(crate) fn unauthorized(reason: impl Into<String>) -> Refusal {
        Refusal {
            status: 401,
            error: "unauthorized",
            reason: reason.into(),
        }
    }

    fn forbidden_origin(reason: impl Into<String>) -> Refusal {
        Refusal {
            status: 403,
            error: "forbidden-origin",
            reason: reason.into(),
        }
    }

    pub(crate) fn body(&self) -> String {
        serde_json::json!({ "error": self.error, "reason": self.reason }).to_string()
    }
}

/// Finds the credential: `Authorization: JWT|Bearer`, then `?token=`, then the `payload-token`
/// cookie. The first one found wins; an empty value, `null` or `undefined` is no credential
/// (a browser snippet that reads a token it does not have sends `?token=null`), so the next one
/// can still be used.
pub(crate) fn find_credential_in(headers: &HeaderMap, uri: &hyper::Uri) -> Option<(String, Source)> {
    if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let value = value.trim();
        for scheme in ["JWT ", "Bearer ", "jwt ", "bearer "] {
            if let Some(token) = value.strip_prefix(scheme) {
                let token = token.trim();
                if is_given(token) {
                    return Some((token.to_string(), Source::Header));
                }
            }
        }
    }
    if let Some(query) = uri.query() {
        for pair in query.split('&') {
            if let Some(raw) = pair.strip_prefix("token=") {
                // A JWT has nothing to escape: the decode (a UTF-8 check) only when it is escaped.
                let token = if raw.contains('%') {
                    percent_encoding::percent_decode_str(raw)
                        .decode_utf8_lossy()
                        .into_owned()
                } else {
                    raw.to_string()
                };
                if is_given(&token) {
                    return Some((token, Source::Query));
                }
            }
        }
    }
    cookie(headers, "payload-token").map(|t| (t, Source::Cookie))
}

/// Whether a credential's value is one: not empty, and not what JS writes for a missing value.
fn is_given(token: &str) -> bool {
    !matches!(token.trim(), "" | "null" | "undefined")
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    for value in headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            let pair = pair.trim();
            if let Some((k, v)) = pair.split_once('=') {
                if k.trim() == name && is_given(v.trim().trim_matches('"')) {
                    return Some(v.trim().trim_matches('"').to_string());
                }
            }
        }
    }
    None
}

/// The host part of `scheme://host[:port]`, lowercased; `None` if it is not such a URL.
fn origin_host(origin: &str) -> Option<String> {
    let rest = origin.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    host_without_port(authority)
}

fn host_without_port(authority: &str) -> Option<String> {
    let authority = authority.rsplit('@').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Decides who a handshake belongs to: `Ok(None)` is an anonymous client, `Err` a refusal.
pub(crate) fn authenticate_in(config: &Config, headers: &HeaderMap, uri: &hyper::Uri) -> Result<Option<User>, Refusal> {
    check_origin(config, headers)?;
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let Some((token, source)) = find_credential_in(headers, uri) else {
        return if config.allow_anonymous {
            Ok(None)
        } else {
            Err(Refusal::unauthorized(
                "no token: send `Authorization: JWT <token>`, `?token=<token>` or the payload-token cookie",
            ))
        };
    };
    if source == Source::Cookie {
        // Browsers send cookies to every port of a host from pages of any site, so a cookie
        // proves nothing of the page that opened the socket: it is accepted from the server's
        // own host, or from an origin `allowedOrigins` names. Not under `*`, which would let
        // any site open a socket as the user (cross-site WebSocket hijacking).
        let vouched = match (&config.allowed_origins, origin) {
            (Some(allowed), Some(o)) => allowed.iter().any(|a| a != "*" && a.eq_ignore_ascii_case(o)),
            // No Origin: not a browser, so no page of another site is behind it.
            (Some(_), None) => true,
            (None, _) => false,
        };
        let server_host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .and_then(host_without_port);
        let same = match (origin.and_then(origin_host), server_host) {
            (Some(o), Some(h)) => o == h,
            _ => false,
        };
        if !vouched && !same {
            return Err(Refusal::forbidden_origin(
                "the payload-token cookie is accepted only from the server's own host or an origin listed in allowedOrigins (not \"*\"); or send the token in a header or ?token=",
            ));
        }
    }
    verify_token(config, &token).map(Some)
}

/// The `allowedOrigins` rule: a browser page of an origin not listed is refused.
pub(crate) fn check_origin(config: &Config, headers: &HeaderMap) -> Result<(), Refusal> {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if let (Some(allowed), Some(origin)) = (&config.allowed_origins, origin) {
        let ok = allowed.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin));
        if !ok {
            return Err(Refusal::forbidden_origin(format!(
                "origin {origin} is not in allowedOrigins"
            )));
        }
    }
    Ok(())
}

/// Whether the upgrade asks to authenticate in its first message (`?auth=message`); `Err` for
/// another `auth=` value, which is a client's mistake better named than ignored.
pub(crate) fn auth_in_message(uri: &hyper::Uri) -> Result<bool, Refusal> {
    let Some(query) = uri.query() else { return Ok(false) };
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("auth=") {
            return match value {
                "message" => Ok(true),
                _ => Err(Refusal {
                    status: 400,
                    error: "bad-request",
                    reason: "`auth` must be \"message\" (send { type: \"auth\", token } first)".into(),
                }),
            };
        }
    }
    Ok(false)
}

/// Checks a Payload token's signature and expiry.
pub(crate) fn verify_token(config: &Config, token: &str) -> Result<User, Refusal> {
    let Some(key) = &config.key else {
        return Err(Refusal::unauthorized(
            "the server has no secret configured and cannot verify tokens",
        ));
    };
    verify_token_at(key, token, now_secs())
}

/// The headers Payload writes (`jose`: `{"alg":"HS256","typ":"JWT"}`, and since 3.90
/// `{"alg":"HS256","authVersion":1,"typ":"JWT"}`) and the one jsonwebtoken writes
/// (`{"typ":"JWT","alg":"HS256"}`), base64url-encoded: they name HS256, so a token with one of
/// them needs no header parse. Any other header is parsed by jsonwebtoken.
const HS256_HEADERS: [&str; 3] = [
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9",
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9",
    "eyJhbGciOiJIUzI1NiIsImF1dGhWZXJzaW9uIjoxLCJ0eXAiOiJKV1QifQ",
];

/// base64url without padding, as JWTs write their parts (padding, or stray bits in the last
/// character, is malformed).
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// [`verify_token`] at `now` (seconds since the Unix epoch).
///
/// The header is jsonwebtoken's to parse when it is not one of [`HS256_HEADERS`]; the
/// signature is HMAC-SHA256 from the key's prepared state, compared in constant time; the
/// claims are decoded only after the signature is verified, and held to a few explicit rules
/// rather than to every quirk of `jsonwebtoken::decode` (only the holder of the secret can sign
/// a token, so the rules need to be right, not to mirror a parser): an integer `exp` that has
/// not passed, and no audience.
fn verify_token_at(key: &PayloadKey, token: &str, now: u64) -> Result<User, Refusal> {
    let malformed = || Refusal::unauthorized("malformed token");
    let (message, signature) = token.rsplit_once('.').ok_or_else(malformed)?;
    // Exactly three parts: header, claims, signature.
    let (header, claims) = message.split_once('.').ok_or_else(malformed)?;
    if claims.contains('.') {
        return Err(malformed());
    }
    if !HS256_HEADERS.contains(&header) {
        let header = jsonwebtoken::decode_header(token).map_err(|_| malformed())?;
        if header.alg != Algorithm::HS256 {
            return Err(Refusal::unauthorized("token algorithm is not HS256"));
        }
    }
    let bad_signature = || Refusal::unauthorized("invalid token signature");
    // An HS256 signature is 32 bytes (43 characters); a longer one is decoded only to tell a
    // malformed one from a wrong one.
    let mut sig = [0u8; 48];
    let sig = if signature.len() <= 64 {
        let n = B64.decode_slice(signature, &mut sig).map_err(|_| malformed())?;
        &sig[..n]
    } else {
        B64.decode(signature).map_err(|_| malformed())?;
        return Err(bad_signature());
    };
    let mut mac = key.mac().clone();
    mac.update(message.as_bytes());
    mac.verify_slice(sig).map_err(|_| bad_signature())?;
    // The signature is verified: the claims are the signer's, safe to decode.
    let claims = Claims::parse(decode_claims(claims).ok_or_else(malformed)?).ok_or_else(malformed)?;
    // An integer, so that every accepted token has the second its socket is closed at
    // (`User::expires_at`); a float, a string or a negative number is no expiry.
    let Some(exp) = claims.expires_at() else {
        return Err(Refusal::unauthorized("token has no exp claim"));
    };
    if exp < now {
        return Err(Refusal::unauthorized("token expired"));
    }
    // An audience names who the token is for, and the server is none of them (Payload sets
    // none): refused as jsonwebtoken's validation refused it, a malformed token.
    if claims.has_audience() {
        return Err(malformed());
    }
    User::of(claims).ok_or_else(|| Refusal::unauthorized("token names no user"))
}

/// The claims part decoded into a string of exactly its length (the claims keep it); `None`
/// when it is not base64url or not UTF-8.
fn decode_claims(part: &str) -> Option<String> {
    let len = part.len() / 4 * 3 + [0, 0, 1, 2][part.len() % 4];
    let mut bytes = vec![0u8; len];
    let n = B64.decode_slice(part, &mut bytes).ok()?;
    bytes.truncate(n);
    String::from_utf8(bytes).ok()
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
impl User {
    /// Builds a user from verified claims; `None` when the claims name no user.
    pub(crate) fn from_claims(claims: serde_json::Value) -> Option<User> {
        User::of(Claims::from_value(claims)?)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{derive_signing_secret, PayloadKey};
    use hyper::http::request::Parts;
    use jsonwebtoken::{encode, DecodingKey, EncodingKey, Header, Validation};
    use serde_json::Value;

    /// [`find_credential_in`] over a request's parts.
    fn find_credential(parts: &Parts) -> Option<(String, Source)> {
        find_credential_in(&parts.headers, &parts.uri)
    }

    /// [`authenticate_in`] over a request's parts.
    fn authenticate(config: &Config, parts: &Parts) -> Result<Option<User>, Refusal> {
        authenticate_in(config, &parts.headers, &parts.uri)
    }

    pub(crate) const SECRET: &str = "test-secret-please-change";

    pub(crate) fn token_with(key: &str, claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(key.as_bytes()),
        )
        .unwrap()
    }

    pub(crate) fn payload_token(id: u64, exp_in: i64) -> String {
        let exp = now_secs() as i64 + exp_in;
        token_with(
            &derive_signing_secret(SECRET),
            serde_json::json!({"id": id, "collection": "users", "email": "a@b.c", "sid": "s1", "exp": exp}),
        )
    }

    fn config() -> Config {
        Config {
            key: Some(PayloadKey::from_payload_secret(SECRET)),
            ..Config::default()
        }
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = hyper::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn derived_key_matches_payload() {
        // sha256("secret") = 2bb80d53...; Payload keeps the first 32 hex characters.
        assert_eq!(derive_signing_secret("secret"), "2bb80d537b1da3e38bd30361aa855686");
    }

    #[test]
    fn credentials_are_found_in_order() {
        let t = payload_token(1, 60);
        for (uri, headers, source) in [
            ("/", vec![("authorization", format!("JWT {t}"))], Source::Header),
            ("/", vec![("authorization", format!("Bearer {t}"))], Source::Header),
            (&*format!("/?a=1&token={t}"), vec![], Source::Query),
            ("/", vec![("cookie", format!("x=1; payload-token={t}"))], Source::Cookie),
        ] {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_eq!(find_credential(&parts(uri, &h)), Some((t.clone(), source)));
        }
        assert_eq!(find_credential(&parts("/", &[])), None);
    }

    #[test]
    fn good_token_gives_the_user() {
        let t = payload_token(42, 60);
        let user = authenticate(&config(), &parts("/", &[("authorization", &format!("JWT {t}"))]))
            .unwrap()
            .unwrap();
        assert_eq!(&*user.key, "users:42");
        assert_eq!(user.claims.value()["email"], "a@b.c");
    }

    /// `verify_token` as it was: `jsonwebtoken::decode::<Value>` with an HS256 validation of no
    /// leeway and `exp` required: the reference [`verify_token_at`] agrees with except in the
    /// shapes of [`DIFFERENCES`].
    fn reference(key: &DecodingKey, token: &str) -> Result<User, Refusal> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<Value>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            Refusal::unauthorized(match e.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::InvalidSignature => "invalid token signature",
                ErrorKind::InvalidAlgorithm => "token algorithm is not HS256",
                ErrorKind::MissingRequiredClaim(_) => "token has no exp claim",
                _ => "malformed token",
            })
        })?;
        User::from_claims(data.claims).ok_or_else(|| Refusal::unauthorized("token names no user"))
    }

    /// base64url without padding, as JWTs write their parts.
    fn b64(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token of exactly these base64url parts, signed with HS256 under `key`.
    fn sign_parts(key: &str, header: &str, claims: &str) -> String {
        let message = format!("{header}.{claims}");
        let key = EncodingKey::from_secret(key.as_bytes());
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{message}.{signature}")
    }

    /// A token of this header and these claims (JSON text), signed with Payload's key.
    fn raw_token(header: &str, claims: &str) -> String {
        sign_parts(
            &derive_signing_secret(SECRET),
            &b64(header.as_bytes()),
            &b64(claims.as_bytes()),
        )
    }

    const JOSE_HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    /// A token and its verdicts: by [`verify_token_at`], then by [`reference`].
    type Judged = (String, Result<User, Refusal>, Result<User, Refusal>);

    /// The token `case` makes for a second, judged by [`verify_token_at`] and [`reference`] in
    /// the same second (retried if the clock ticked meanwhile); with that second.
    fn judged(case: &dyn Fn(u64) -> String) -> (u64, Judged) {
        let key = PayloadKey::from_payload_secret(SECRET);
        loop {
            let now = now_secs();
            let token = case(now);
            let new = verify_token_at(&key, &token, now);
            let old = reference(
                &DecodingKey::from_secret(derive_signing_secret(SECRET).as_bytes()),
                &token,
            );
            if now_secs() == now {
                if let Ok(user) = &new {
                    assert!(user.expires_at().is_some(), "an accepted token has an expiry: {token}");
                }
                return (now, (token, new, old));
            }
        }
    }

    /// What a verdict says: the user's key, or the refusal's reason.
    fn verdict(r: &Result<User, Refusal>) -> Result<&str, &str> {
        match r {
            Ok(user) => Ok(&user.key),
            Err(refusal) => {
                assert_eq!((refusal.status, refusal.error), (401, "unauthorized"));
                Err(&refusal.reason)
            }
        }
    }

    const MALFORMED: Result<&str, &str> = Err("malformed token");
    const NO_EXP: Result<&str, &str> = Err("token has no exp claim");
    const EXPIRED: Result<&str, &str> = Err("token expired");
    const BAD_SIGNATURE: Result<&str, &str> = Err("invalid token signature");
    const NOT_HS256: Result<&str, &str> = Err("token algorithm is not HS256");
    const NO_USER: Result<&str, &str> = Err("token names no user");

    /// The cases of [`token_check_decides_each_case`] on which the check decides
    /// otherwise than jsonwebtoken's `decode`, on purpose, and why. Their shapes are the ones
    /// [`differs_from_decode`] names for the sweep.
    const DIFFERENCES: &[(&str, &str)] = &[
        // An expiry the socket is closed at.
        ("exp as float, future", FLOAT_EXP),
        ("exp as float, now + 0.4", FLOAT_EXP),
        ("exp as float, past", FLOAT_EXP),
        ("exp [1]", COMPOSITE_EXP),
        ("exp {..}", COMPOSITE_EXP),
        // What the server does not read is not checked.
        ("nbf [1]", UNREAD),
        ("sub []", UNREAD),
        ("sub {}", UNREAD),
        ("exp twice", TWICE),
        ("aud twice", TWICE),
        // Claims are an object, read as serde_json reads one.
        ("claims of five, exp first", ARRAY),
        ("claims of five, past exp", ARRAY),
        ("claims of five, no exp", ARRAY),
        ("raw value claims and more", RAW_VALUE),
        ("raw value claims not JSON", RAW_VALUE),
        ("raw value aud", RAW_VALUE),
        ("raw value aud list", RAW_VALUE),
        ("raw value exp", RAW_VALUE),
    ];
    const FLOAT_EXP: &str =
        "float exp: refused, so that every accepted token has an integer expiry the socket is closed at";
    const COMPOSITE_EXP: &str = "exp an array or object: no exp, like any exp but an integer (decode: malformed)";
    const UNREAD: &str = "nbf, sub an array or object: ignored, the server reads neither (decode: malformed)";
    const TWICE: &str = "a claim twice: the last counts, as in any JSON object serde_json reads (decode: malformed)";
    const ARRAY: &str = "claims an array: malformed (decode read five elements as exp, nbf, sub, iss, aud)";
    const RAW_VALUE: &str = "serde_json's raw-value key: read as serde_json reads a map of claims (under a claim, \
        the JSON in its string; at the top, a claim), not as decode's Value and claims struct did";

    /// Every decision of the token check, pinned, and held against jsonwebtoken's `decode`: the
    /// same except in the [`DIFFERENCES`].
    #[test]
    fn token_check_decides_each_case() {
        type Case = (
            &'static str,
            Box<dyn Fn(u64) -> String>,
            Result<&'static str, &'static str>,
        );
        // Payload's claims with `extra` (JSON members) after them.
        let with = |extra: &'static str| -> Box<dyn Fn(u64) -> String> {
            Box::new(move |now| {
                let exp = now + 60;
                let extra = extra.replace("NOW", &now.to_string());
                raw_token(
                    JOSE_HEADER,
                    &format!(r#"{{"id":7,"collection":"users","email":"a@b.c","sid":"s1","exp":{exp}{extra}}}"#),
                )
            })
        };
        // Claims exactly as given (NOW is the second of the check).
        let claims = |text: &'static str| -> Box<dyn Fn(u64) -> String> {
            Box::new(move |now| raw_token(JOSE_HEADER, &text.replace("NOW", &now.to_string())))
        };
        // Payload's claims under this header.
        let header = |text: &'static str| -> Box<dyn Fn(u64) -> String> {
            Box::new(move |now| raw_token(text, &format!(r#"{{"id":7,"exp":{}}}"#, now + 60)))
        };
        // A good token, changed.
        let good = |change: fn(String) -> String| -> Box<dyn Fn(u64) -> String> {
            Box::new(move |now| change(raw_token(JOSE_HEADER, &format!(r#"{{"id":7,"exp":{}}}"#, now + 60))))
        };
        // Parts signed as they are, whatever they are.
        let parts = |header: &'static str, claims: &'static str| -> Box<dyn Fn(u64) -> String> {
            Box::new(move |_| sign_parts(&derive_signing_secret(SECRET), header, claims))
        };
        let hs256 = b64(JOSE_HEADER.as_bytes()).leak() as &str;
        let cases: Vec<Case> = vec![
            ("good", with(""), Ok("users:7")),
            (
                "the test helper's token",
                Box::new(|_| payload_token(7, 60)),
                Ok("users:7"),
            ),
            // exp
            ("no exp", claims(r#"{"id":7}"#), NO_EXP),
            ("exp null", claims(r#"{"id":7,"exp":null}"#), NO_EXP),
            ("exp as string", claims(r#"{"id":7,"exp":"99999999999"}"#), NO_EXP),
            ("exp negative", claims(r#"{"id":7,"exp":-1}"#), NO_EXP),
            (
                "exp as float, future",
                claims(r#"{"id":7,"exp":99999999999.0}"#),
                NO_EXP,
            ),
            ("exp as float, now + 0.4", claims(r#"{"id":7,"exp":NOW.4}"#), NO_EXP),
            ("exp as float, past", claims(r#"{"id":7,"exp":1.5}"#), NO_EXP),
            ("exp as float, beyond u64", claims(r#"{"id":7,"exp":1e20}"#), NO_EXP),
            (
                "exp beyond u64",
                claims(r#"{"id":7,"exp":18446744073709551616}"#),
                NO_EXP,
            ),
            (
                "exp u64::MAX",
                claims(r#"{"id":7,"exp":18446744073709551615}"#),
                Ok("users:7"),
            ),
            ("exp now", claims(r#"{"id":7,"exp":NOW}"#), Ok("users:7")),
            (
                "exp a second ago",
                Box::new(|now| raw_token(JOSE_HEADER, &format!(r#"{{"id":7,"exp":{}}}"#, now - 1))),
                EXPIRED,
            ),
            ("exp 0", claims(r#"{"id":7,"exp":0}"#), EXPIRED),
            ("exp true", claims(r#"{"id":7,"exp":true}"#), NO_EXP),
            ("exp []", claims(r#"{"id":7,"exp":[]}"#), NO_EXP),
            ("exp {}", claims(r#"{"id":7,"exp":{}}"#), NO_EXP),
            ("exp [1]", claims(r#"{"id":7,"exp":[99999999999]}"#), NO_EXP),
            ("exp {..}", claims(r#"{"id":7,"exp":{"a":99999999999}}"#), NO_EXP),
            ("exp twice", with(r#","exp":99999999999"#), Ok("users:7")),
            // Other claims jsonwebtoken reads.
            ("nbf in the future", with(r#","nbf":99999999999"#), Ok("users:7")),
            ("nbf [1]", with(r#","nbf":[1]"#), Ok("users:7")),
            ("aud present", with(r#","aud":"payload""#), MALFORMED),
            ("aud list", with(r#","aud":["payload"]"#), MALFORMED),
            ("aud []", with(r#","aud":[]"#), MALFORMED),
            ("aud not strings", with(r#","aud":["payload",1]"#), Ok("users:7")),
            ("aud number", with(r#","aud":5"#), Ok("users:7")),
            ("aud null", with(r#","aud":null"#), Ok("users:7")),
            ("aud twice", with(r#","aud":5,"aud":6"#), Ok("users:7")),
            ("iss present", with(r#","iss":"payload""#), Ok("users:7")),
            ("iss object", with(r#","iss":{"a":[1]}"#), Ok("users:7")),
            ("sub present", with(r#","sub":"7""#), Ok("users:7")),
            ("sub number", with(r#","sub":7"#), Ok("users:7")),
            ("sub []", with(r#","sub":[]"#), Ok("users:7")),
            ("sub {}", with(r#","sub":{}"#), Ok("users:7")),
            // Header.
            (
                "jsonwebtoken's header",
                header(r#"{"typ":"JWT","alg":"HS256"}"#),
                Ok("users:7"),
            ),
            ("alg HS384", header(r#"{"alg":"HS384","typ":"JWT"}"#), NOT_HS256),
            ("alg RS256", header(r#"{"alg":"RS256","typ":"JWT"}"#), NOT_HS256),
            ("alg none", header(r#"{"alg":"none","typ":"JWT"}"#), MALFORMED),
            ("no alg", header(r#"{"typ":"JWT"}"#), MALFORMED),
            ("alg twice", header(r#"{"alg":"HS256","alg":"HS256"}"#), MALFORMED),
            ("typ missing", header(r#"{"alg":"HS256"}"#), Ok("users:7")),
            ("typ other", header(r#"{"alg":"HS256","typ":"other"}"#), Ok("users:7")),
            ("typ number", header(r#"{"alg":"HS256","typ":5}"#), MALFORMED),
            ("crit", header(r#"{"alg":"HS256","crit":["exp"]}"#), Ok("users:7")),
            (
                "unknown header field",
                header(r#"{"alg":"HS256","b64":false}"#),
                Ok("users:7"),
            ),
            ("kid number", header(r#"{"alg":"HS256","kid":5}"#), MALFORMED),
            ("header not an object", header(r#"["HS256"]"#), MALFORMED),
            // Signature and shape.
            (
                "signed with another key",
                Box::new(|now| {
                    let c = format!(r#"{{"id":7,"exp":{}}}"#, now + 60);
                    sign_parts(
                        "wrong-key-wrong-key-wrong-key-00",
                        &b64(JOSE_HEADER.as_bytes()),
                        &b64(c.as_bytes()),
                    )
                }),
                BAD_SIGNATURE,
            ),
            (
                "signed with the raw secret",
                Box::new(|now| token_with(SECRET, serde_json::json!({"id": 7, "exp": now + 60}))),
                BAD_SIGNATURE,
            ),
            (
                "signature cut to 40 characters",
                good(|t| t[..t.len() - 3].to_string()),
                BAD_SIGNATURE,
            ),
            (
                "signature empty",
                good(|t| format!("{}.", t.rsplit_once('.').unwrap().0)),
                BAD_SIGNATURE,
            ),
            (
                "claims changed after signing",
                good(|t| {
                    let (h, rest) = t.split_once('.').unwrap();
                    let s = rest.rsplit_once('.').unwrap().1;
                    format!("{h}.{}.{s}", b64(br#"{"id":8,"exp":99999999999}"#))
                }),
                BAD_SIGNATURE,
            ),
            (
                "2 parts",
                good(|t| t.rsplit_once('.').unwrap().0.to_string()),
                MALFORMED,
            ),
            ("4 parts", good(|t| format!("{t}.x")), MALFORMED),
            (
                "4 parts, signed",
                parts(
                    hs256,
                    "eyJpZCI6NywiZXhwIjo5OTk5OTk5OTk5OX0.eyJpZCI6NywiZXhwIjo5OTk5OTk5OTk5OX0",
                ),
                MALFORMED,
            ),
            ("1 part", Box::new(|_| "garbage".into()), MALFORMED),
            ("empty", Box::new(|_| String::new()), MALFORMED),
            ("bad base64 in header", good(|t| format!("!{t}")), MALFORMED),
            (
                "padded header",
                parts("eyJhbGciOiJIUzI1NiJ9==", "eyJpZCI6NywiZXhwIjo5OTk5OTk5OTk5OX0"),
                MALFORMED,
            ),
            (
                "bad base64 in signature",
                good(|t| format!("{}.!!!!", t.rsplit_once('.').unwrap().0)),
                MALFORMED,
            ),
            (
                "bad base64 in claims, changed after signing",
                good(|t| t.replacen('.', ".!", 1)),
                BAD_SIGNATURE,
            ),
            (
                "bad base64 in claims, signed",
                parts(hs256, "!eyJpZCI6NywiZXhwIjo5OTk5OTk5OTk5OX0"),
                MALFORMED,
            ),
            (
                "padded claims, signed",
                parts(hs256, "eyJpZCI6NywiZXhwIjo5OTk5OTk5OTk5OX0="),
                MALFORMED,
            ),
            ("claims not JSON", claims("{id:7}"), MALFORMED),
            (
                "claims not UTF-8",
                Box::new(|_| {
                    sign_parts(
                        &derive_signing_secret(SECRET),
                        &b64(JOSE_HEADER.as_bytes()),
                        &b64(b"{\"id\":\"\xff\",\"exp\":99999999999}"),
                    )
                }),
                MALFORMED,
            ),
            (
                "claims with trailing text",
                claims(r#"{"id":7,"exp":99999999999} x"#),
                MALFORMED,
            ),
            // Claims that are not an object.
            ("claims a number", claims("99999999999"), MALFORMED),
            ("claims a string", claims(r#""x""#), MALFORMED),
            ("claims null", claims("null"), MALFORMED),
            ("claims []", claims("[]"), MALFORMED),
            ("claims [exp]", claims("[99999999999]"), MALFORMED),
            (
                "claims of five, exp first",
                claims("[99999999999,null,null,null,null]"),
                MALFORMED,
            ),
            ("claims of five, past exp", claims("[1,null,null,null,null]"), MALFORMED),
            (
                "claims of five, no exp",
                claims(r#"["x",null,null,null,null]"#),
                MALFORMED,
            ),
            (
                "claims of five, aud last",
                claims(r#"[99999999999,null,null,null,"a"]"#),
                MALFORMED,
            ),
            (
                "claims of five, sub []",
                claims("[99999999999,null,[],null,null]"),
                MALFORMED,
            ),
            (
                "claims of six",
                claims("[99999999999,null,null,null,null,null]"),
                MALFORMED,
            ),
            // Who the user is.
            ("id number", claims(r#"{"id":7,"exp":99999999999}"#), Ok("users:7")),
            ("id negative", claims(r#"{"id":-7,"exp":99999999999}"#), Ok("users:-7")),
            ("id float", claims(r#"{"id":7.5,"exp":99999999999}"#), Ok("users:7.5")),
            (
                "id string",
                claims(r#"{"id":"6630a1","exp":99999999999}"#),
                Ok("users:6630a1"),
            ),
            ("id empty", claims(r#"{"id":"","exp":99999999999}"#), NO_USER),
            ("id null", claims(r#"{"id":null,"exp":99999999999}"#), NO_USER),
            ("id object", claims(r#"{"id":{},"exp":99999999999}"#), NO_USER),
            ("id missing", claims(r#"{"exp":99999999999}"#), NO_USER),
            (
                "id twice, the last wins",
                claims(r#"{"id":7,"id":8,"exp":99999999999}"#),
                Ok("users:8"),
            ),
            (
                "collection missing",
                claims(r#"{"id":7,"exp":99999999999}"#),
                Ok("users:7"),
            ),
            (
                "collection",
                claims(r#"{"id":7,"collection":"admins","exp":99999999999}"#),
                Ok("admins:7"),
            ),
            (
                "collection number",
                claims(r#"{"id":7,"collection":5,"exp":99999999999}"#),
                Ok("users:7"),
            ),
            // serde_json reads {"$serde_json::private::RawValue": "<json>"} as the JSON in the
            // string; jsonwebtoken's claims struct as an object.
            (
                "raw value claims",
                claims(r#"{"$serde_json::private::RawValue":"{\"id\":7,\"exp\":99999999999}"}"#),
                NO_EXP,
            ),
            (
                "raw value claims and more",
                claims(r#"{"$serde_json::private::RawValue":"{}","id":7,"exp":99999999999}"#),
                Ok("users:7"),
            ),
            (
                "raw value claims not JSON",
                claims(r#"{"$serde_json::private::RawValue":"{"}"#),
                NO_EXP,
            ),
            (
                "raw value key later",
                claims(r#"{"id":7,"$serde_json::private::RawValue":"{","exp":99999999999}"#),
                Ok("users:7"),
            ),
            (
                "raw value aud",
                with(r#","aud":{"$serde_json::private::RawValue":"\"payload\""}"#),
                MALFORMED,
            ),
            (
                "raw value aud list",
                with(r#","aud":[{"$serde_json::private::RawValue":"\"payload\""}]"#),
                MALFORMED,
            ),
            (
                "raw value exp",
                claims(r#"{"id":7,"exp":{"$serde_json::private::RawValue":"99999999999"}}"#),
                Ok("users:7"),
            ),
            ("escaped exp key", claims(r#"{"id":7,"e\u0078p":1}"#), EXPIRED),
        ];
        for (name, case, expected) in &cases {
            let (_, (token, new, old)) = judged(case);
            assert_eq!(verdict(&new), *expected, "{name}: {token}");
            if DIFFERENCES.iter().any(|(d, _)| d == name) {
                assert_ne!(verdict(&new), verdict(&old), "{name} is listed as differing: {token}");
            } else {
                assert_eq!(new, old, "{name}: {token}");
            }
        }
        for (name, _) in DIFFERENCES {
            assert!(cases.iter().any(|(c, ..)| c == name), "{name} is no case");
        }
    }

    /// The check's verdict by its rules, restated: Payload's claims (`id` 7, `exp` a minute
    /// ahead) with the spec claim `claim` set to `value`.
    fn by_the_rules(claim: &str, value: &Value, now: u64) -> Result<&'static str, &'static str> {
        let names = |a: &Vec<Value>| a.iter().all(Value::is_string);
        match claim {
            "exp" => match value.as_u64() {
                None => NO_EXP,
                Some(exp) if exp < now => EXPIRED,
                Some(_) => Ok("users:7"),
            },
            "aud" if value.is_string() || value.as_array().is_some_and(names) => MALFORMED,
            _ => Ok("users:7"),
        }
    }

    /// Whether `claim` of this value (JSON text) is of a shape on which the check deliberately
    /// decides otherwise than jsonwebtoken's `decode` (the [`DIFFERENCES`] say why): an `exp`
    /// float; an `exp`, `nbf` or `sub` written as an array or object; an `aud` holding
    /// serde_json's raw-value key.
    fn differs_from_decode(claim: &str, text: &str) -> bool {
        let composite = text.starts_with(['[', '{']);
        match claim {
            "exp" => composite || serde_json::from_str::<Value>(text).unwrap().is_f64(),
            "nbf" | "sub" => composite,
            "aud" => text.contains("$serde_json::private::RawValue"),
            _ => false,
        }
    }

    /// Every value of every claim jsonwebtoken or the user reads, each alone, twice, and as the
    /// elements of a claims array: the check decides by its rules, and as jsonwebtoken's
    /// `decode` did except in the shapes of [`differs_from_decode`], a claim twice (the last
    /// counts) and a claims array (malformed; `decode` refused it too, for other reasons).
    #[test]
    fn token_check_on_every_claim_value() {
        let values = [
            "null",
            "true",
            "0",
            "-0",
            "5",
            "-5",
            "1.5",
            "-1.5",
            "NOW",
            "NOW-1",
            "NOW+1",
            "NOW.4",
            "NOW-1.5",
            "NOW-1.4",
            "1e3",
            "1e20",
            "18446744073709551615",
            "18446744073709551616",
            "\"\"",
            "\"x\"",
            "\"NOW+9\"",
            "[]",
            "[ ]",
            "[1]",
            "[\"a\"]",
            "[\"a\",\"b\"]",
            "[\"a\",1]",
            "[[]]",
            "{}",
            "{ }",
            "{\"a\":1}",
            "{\"$serde_json::private::RawValue\":\"5\"}",
            "{\"$serde_json::private::RawValue\":\"\\\"x\\\"\"}",
            "[{\"$serde_json::private::RawValue\":\"\\\"x\\\"\"}]",
            "{\"$serde_json::private::RawValue\":\"[]\"}",
        ];
        let fill = |text: &str, now: u64| {
            text.replace("NOW+9", &(now + 9).to_string())
                .replace("NOW+1", &(now + 1).to_string())
                .replace("NOW-1", &(now - 1).to_string())
                .replace("NOW", &now.to_string())
        };
        for claim in ["exp", "nbf", "sub", "iss", "aud", "id", "collection"] {
            for value in values {
                let case = |now: u64| {
                    let base = format!(r#""id":7,"collection":"users","exp":{}"#, now + 60);
                    // The claim replaces its namesake, or joins the others.
                    let base: Vec<_> = base
                        .split(',')
                        .filter(|m| !m.starts_with(&format!("\"{claim}\"")))
                        .collect();
                    raw_token(
                        JOSE_HEADER,
                        &format!(r#"{{{},"{claim}":{}}}"#, base.join(","), fill(value, now)),
                    )
                };
                let (now, (token, new, old)) = judged(&case);
                if let Some(spec) = ["exp", "nbf", "sub", "iss", "aud"].iter().find(|c| **c == claim) {
                    let value = serde_json::from_str(&fill(value, now)).unwrap();
                    assert_eq!(verdict(&new), by_the_rules(spec, &value, now), "{claim}: {token}");
                }
                if !differs_from_decode(claim, &fill(value, now)) {
                    assert_eq!(new, old, "{claim}: {value}: {token}");
                }
            }
            let twice = |now: u64| {
                raw_token(
                    JOSE_HEADER,
                    &format!(r#"{{"id":7,"exp":{},"{claim}":5,"{claim}":6}}"#, now + 60),
                )
            };
            let (now, (token, new, old)) = judged(&twice);
            if matches!(claim, "id" | "collection") {
                assert_eq!(new, old, "{claim} twice: {token}");
            } else {
                assert_eq!(
                    verdict(&new),
                    by_the_rules(claim, &Value::from(6), now),
                    "{claim} twice: {token}"
                );
            }
        }
        // jsonwebtoken read a claims array as exp, nbf, sub, iss, aud; the check reads none.
        for position in 0..5 {
            for value in values {
                let case = |now: u64| {
                    let mut elements: [String; 5] = [
                        (now + 60).to_string(),
                        "null".into(),
                        "null".into(),
                        "null".into(),
                        "null".into(),
                    ];
                    elements[position] = fill(value, now);
                    raw_token(JOSE_HEADER, &format!("[{}]", elements.join(",")))
                };
                let (_, (token, new, old)) = judged(&case);
                assert_eq!(verdict(&new), MALFORMED, "element {position}: {value}: {token}");
                assert!(old.is_err(), "element {position}: {value}: {token}");
            }
        }
    }

    #[test]
    fn the_fast_headers_are_hs256_headers() {
        for header in HS256_HEADERS {
            let token = format!("{header}.e30.");
            assert_eq!(jsonwebtoken::decode_header(&token).unwrap().alg, Algorithm::HS256);
        }
        assert_eq!(HS256_HEADERS[0], b64(JOSE_HEADER.as_bytes()));
        assert_eq!(
            HS256_HEADERS[1],
            payload_token(1, 60).split('.').next().unwrap(),
            "jsonwebtoken's own header"
        );
        assert_eq!(
            HS256_HEADERS[2],
            b64(br#"{"alg":"HS256","authVersion":1,"typ":"JWT"}"#),
            "Payload 3.90's (jwtSign's protected header, in its order)"
        );
    }

    #[test]
    fn user_keys_of_any_length() {
        let long = "c".repeat(200);
        for (collection, id) in [
            ("users", serde_json::json!(7)),
            (&*long, serde_json::json!("x")),
            ("users", serde_json::json!("é".repeat(70))),
        ] {
            let user = User::from_claims(serde_json::json!({"id": id, "collection": collection})).unwrap();
            let id = match &id {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert_eq!(&*user.key, format!("{collection}:{id}"));
        }
    }

    #[test]
    fn bad_tokens_are_401() {
        let exp = now_secs() + 60;
        let claims = serde_json::json!({"id": 1, "collection": "users", "exp": exp});
        let cases = [
            "garbage".to_string(),
            token_with("wrong-key-wrong-key-wrong-key-00", claims.clone()),
            token_with(SECRET, claims.clone()), // the raw secret, not the derived key
            payload_token(1, -10),
            token_with(&derive_signing_secret(SECRET), serde_json::json!({"id": 1})), // no exp
            token_with(&derive_signing_secret(SECRET), serde_json::json!({"exp": exp})), // no id
        ];
        for t in cases {
            let r = authenticate(&config(), &parts("/", &[("authorization", &format!("JWT {t}"))]));
            assert_eq!(r.unwrap_err().status, 401, "{t}");
        }
        let missing = authenticate(&config(), &parts("/", &[])).unwrap_err();
        assert_eq!(missing.status, 401);
        assert_eq!(missing.error, "unauthorized");
    }

    #[test]
    fn anonymous_only_when_allowed() {
        let mut c = config();
        c.allow_anonymous = true;
        assert_eq!(authenticate(&c, &parts("/", &[])), Ok(None));
        // A bad token is still refused, even when anonymous clients are allowed.
        assert!(authenticate(&c, &parts("/?token=garbage", &[])).is_err());
    }

    #[test]
    fn cookies_need_the_servers_own_origin() {
        let t = payload_token(1, 60);
        let cookie = format!("payload-token={t}");
        let foreign = authenticate(
            &config(),
            &parts(
                "/",
                &[
                    ("cookie", &cookie),
                    ("host", "localhost:3002"),
                    ("origin", "https://evil.example"),
                ],
            ),
        );
        assert_eq!(foreign.unwrap_err().status, 403);
        let none = authenticate(
            &config(),
            &parts("/", &[("cookie", &cookie), ("host", "localhost:3002")]),
        );
        assert_eq!(none.unwrap_err().status, 403);
        let same = authenticate(
            &config(),
            &parts(
                "/",
                &[
                    ("cookie", &cookie),
                    ("host", "localhost:3002"),
                    ("origin", "http://localhost:3000"),
                ],
            ),
        );
        assert!(same.unwrap().is_some());
        // Header tokens work from any origin.
        let header = authenticate(
            &config(),
            &parts(
                "/",
                &[
                    ("authorization", &format!("JWT {t}")),
                    ("origin", "https://other.example"),
                ],
            ),
        );
        assert!(header.unwrap().is_some());
    }

    #[test]
    fn allowed_origins_are_enforced() {
        let mut c = config();
        c.allowed_origins = Some(vec!["https://app.example".into()]);
        let t = payload_token(1, 60);
        let q = format!("/?token={t}");
        assert_eq!(
            authenticate(&c, &parts(&q, &[("origin", "https://evil.example")]))
                .unwrap_err()
                .error,
            "forbidden-origin"
        );
        assert!(authenticate(&c, &parts(&q, &[("origin", "https://app.example")])).is_ok());
        let cookie = format!("payload-token={t}");
        assert!(authenticate(
            &c,
            &parts("/", &[("cookie", &cookie), ("origin", "https://app.example")])
        )
        .is_ok());
    }

    #[test]
    fn null_undefined_and_empty_are_no_credential() {
        let t = payload_token(1, 60);
        let cookie = format!("payload-token={t}");
        for query in ["/?token=null", "/?token=undefined", "/?token=", "/?token=%20"] {
            let p = parts(
                query,
                &[
                    ("cookie", &cookie),
                    ("host", "localhost:3002"),
                    ("origin", "http://localhost:3000"),
                ],
            );
            assert_eq!(find_credential(&p).map(|(_, s)| s), Some(Source::Cookie), "{query}");
            assert!(authenticate(&config(), &p).unwrap().is_some(), "{query}");
        }
        let p = parts("/", &[("authorization", "Bearer null")]);
        assert_eq!(find_credential(&p), None);
        let p = parts("/", &[("cookie", "payload-token=undefined")]);
        assert_eq!(find_credential(&p), None);
    }

    #[test]
    fn a_wildcard_origin_never_vouches_for_a_cookie() {
        let mut c = config();
        c.allowed_origins = Some(vec!["*".into()]);
        let t = payload_token(1, 60);
        let cookie = format!("payload-token={t}");
        let from = |origin: &str| {
            authenticate(
                &c,
                &parts(
                    "/",
                    &[("cookie", &cookie), ("host", "app.example:3002"), ("origin", origin)],
                ),
            )
        };
        // Any site may connect with a token it holds, but a cookie only from the server's host.
        let foreign = from("https://evil.example").unwrap_err();
        assert_eq!((foreign.status, foreign.error), (403, "forbidden-origin"));
        assert!(foreign.reason.contains("allowedOrigins"), "{}", foreign.reason);
        assert!(from("https://app.example").unwrap().is_some());
        let header = authenticate(
            &c,
            &parts(
                "/",
                &[
                    ("authorization", &format!("JWT {t}")),
                    ("origin", "https://evil.example"),
                ],
            ),
        );
        assert!(header.unwrap().is_some());
    }
}
