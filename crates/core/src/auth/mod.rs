//! Who is connecting: the credential in the handshake, Payload's token check, and the Origin
//! rule that stops cross-site WebSocket hijacking.
//!
//! Payload signs its tokens with HS256 over the UTF-8 bytes of `sha256(secret).hex()[..32]`, not
//! over the raw secret, so the server derives that key once at start-up.

pub(crate) mod revocations;
pub(crate) mod users;

use std::time::{SystemTime, UNIX_EPOCH};

use hyper::http::{header, HeaderMap};
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;
use std::sync::Arc;

use crate::config::Config;

/// An authenticated user, as the token describes them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct User {
    /// `<collection>:<id>`: sockets with the same key are the same user (one authorize call).
    pub(crate) key: Arc<str>,
    /// The token's claims (`id`, `collection`, `email`, `sid`, ...), handed to JS as the user;
    /// shared, not copied, with every socket structure that needs them.
    pub(crate) claims: Arc<Value>,
    /// When the token expires, in seconds since the Unix epoch.
    pub(crate) expires_at: Option<u64>,
}

impl User {
    /// The session id claim, if the token has one.
    pub(crate) fn sid(&self) -> Option<&str> {
        self.claims.get("sid").and_then(Value::as_str)
    }

    /// Builds a user from verified claims; `None` when the claims name no user.
    pub(crate) fn from_claims(claims: Value) -> Option<User> {
        let id = match claims.get("id")? {
            Value::String(s) if !s.is_empty() => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return None,
        };
        let collection = claims
            .get("collection")
            .and_then(Value::as_str)
            .unwrap_or("users")
            .to_string();
        let expires_at = claims.get("exp").and_then(Value::as_u64);
        Some(User {
            key: Arc::from(format!("{collection}:{id}")),
            claims: Arc::new(claims),
            expires_at,
        })
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
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp"]);
    let data = jsonwebtoken::decode::<Value>(token, key.decoding_key(), &validation).map_err(|e| {
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

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{derive_signing_secret, PayloadKey};
    use hyper::http::request::Parts;
    use jsonwebtoken::{encode, EncodingKey, Header};

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
        assert_eq!(user.claims["email"], "a@b.c");
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
