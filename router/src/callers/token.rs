//! The caller's bearer token as the router handles it (pure): read from the request's
//! `authorization` metadata, kept only as its SHA-256 ([`TokenHash`]), and its claims read without
//! verifying anything ([`precheck`]).
//!
//! Unverified claims are used for two things only, and neither can let a token in: the
//! [`precheck`] *refuses* a token that cannot be one the API server would accept for the router
//! (not a JWT, not for the router's audience, expired) before any TokenReview is asked for, so
//! junk costs the router a base64 decode and never a place among the reviews in flight; and `exp`
//! caps how long an accepted review's answer is reused. Anyone can forge claims that pass the
//! pre-check: what bounds such tokens is the review lane ([`super::lanes`]), not this.
//!
//! The token itself never goes into a log line, an error message, an audit record or a cache key:
//! nothing here implements Display for it, and [`TokenHash`]'s Debug prints no bytes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;

/// The gRPC metadata key the token comes in (as HTTP's `Authorization` header).
pub const AUTHORIZATION: &str = "authorization";

/// Longest token accepted: Kubernetes tokens are about 1 KiB; nothing larger is sent on to the
/// API server.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// How a caller gets a token, for the messages of refusals.
pub fn how_to_get_a_token(audience: &str) -> String {
    format!(
        "send gRPC metadata `authorization: Bearer <token>` with a token of the caller's \
         ServiceAccount for the audience {audience}: `kubectl create token <serviceaccount> -n \
         <namespace> --audience {audience}`, or in a pod a projected serviceAccountToken volume \
         with `audience: {audience}`"
    )
}

/// Why a request carries no usable token. The messages never contain the header's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the request has no `authorization` metadata")]
    Missing,
    #[error("the request has more than one `authorization` metadata entry")]
    Repeated,
    #[error("the `authorization` metadata is not `Bearer <token>`")]
    NotBearer,
    #[error("the bearer token is {0} bytes long; the router accepts at most {MAX_TOKEN_BYTES}")]
    TooLong(usize),
}

/// The bearer token of a request.
pub fn bearer(metadata: &MetadataMap) -> Result<&str, TokenError> {
    let mut values = metadata.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(TokenError::Missing)?;
    if values.next().is_some() {
        return Err(TokenError::Repeated);
    }
    let value = value.to_str().map_err(|_| TokenError::NotBearer)?;
    let (scheme, token) = value.split_once(' ').ok_or(TokenError::NotBearer)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer")
        || token.is_empty()
        || token.contains(char::is_whitespace)
    {
        return Err(TokenError::NotBearer);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLong(token.len()));
    }
    Ok(token)
}

/// SHA-256 of a token: the only form of it the router keeps.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

/// How far past its `exp` the pre-check still sends a token on: the API server validates
/// ServiceAccount tokens with a leeway of one minute for clock skew (go-jose's default), and the
/// router's clock is not the API server's. Refusing earlier would refuse tokens it accepts.
pub const EXPIRY_LEEWAY_SECS: u64 = 60;

/// Why a token is refused without a TokenReview (UNAUTHENTICATED). The messages never quote the
/// token or its claims (they are the caller's to choose, of any size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unfit {
    #[error(
        "it is not a JSON Web Token (three base64url parts separated by `.`, the second a JSON \
         object of claims)"
    )]
    NotAJwt,
    #[error("its `aud` claim does not name the router's audience")]
    WrongAudience,
    #[error("it has no numeric `exp` claim")]
    NoExpiry,
    #[error("it has expired (its `exp` claim is past)")]
    Expired,
}

/// The claims of a JWT the pre-check looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `aud`: one string or a list of them (RFC 7519 allows both).
    pub audiences: Vec<String>,
    /// `exp`, seconds since the Unix epoch.
    pub expiry: Option<u64>,
}

/// The claims of `token` if it is shaped like a JWT (three non-empty base64url parts, the second
/// a JSON object), without verifying anything.
pub fn claims(token: &str) -> Option<Claims> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Audience {
        One(String),
        Many(Vec<String>),
    }
    #[derive(serde::Deserialize)]
    struct Raw {
        aud: Option<Audience>,
        exp: Option<f64>,
    }
    let mut parts = token.split('.');
    let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
    let base64url = |p: &str| {
        !p.is_empty()
            && p.trim_end_matches('=')
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if parts.next().is_some() || ![header, payload, signature].into_iter().all(base64url) {
        return None;
    }
    // Unpadded base64url per RFC 7515; tolerate padding some issuers add.
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let raw = serde_json::from_slice::<Raw>(&bytes).ok()?;
    Some(Claims {
        audiences: match raw.aud {
            Some(Audience::One(a)) => vec![a],
            Some(Audience::Many(a)) => a,
            None => Vec::new(),
        },
        expiry: raw
            .exp
            .filter(|e| e.is_finite() && *e >= 0.0)
            .map(|e| e as u64),
    })
}

/// The `exp` claim (seconds since the Unix epoch) of a JWT, read without verifying the token;
/// `None` when the token is not a JWT with a numeric `exp`.
pub fn expiry(token: &str) -> Option<u64> {
    claims(token)?.expiry
}

/// The local check every token passes before it may be reviewed (pure; `unix_now` in seconds):
/// a JWT whose unverified `aud` names `audience` and whose `exp` is not past (but for
/// [`EXPIRY_LEEWAY_SECS`]). It only ever refuses: passing it proves nothing. Returns `exp`.
pub fn precheck(token: &str, audience: &str, unix_now: u64) -> Result<u64, Unfit> {
    let claims = claims(token).ok_or(Unfit::NotAJwt)?;
    if !claims.audiences.iter().any(|a| a == audience) {
        return Err(Unfit::WrongAudience);
    }
    let exp = claims.expiry.ok_or(Unfit::NoExpiry)?;
    if exp.saturating_add(EXPIRY_LEEWAY_SECS) <= unix_now {
        return Err(Unfit::Expired);
    }
    Ok(exp)
}

/// Replaces every occurrence of `token` in `text` (an API server's or client's message about it)
/// and bounds the length: what the router says back or logs never carries the token.
pub fn scrub(text: &str, token: &str) -> String {
    const MAX: usize = 300;
    let text = if token.is_empty() {
        text.to_string()
    } else {
        text.replace(token, "<token>")
    };
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn with(values: &[&str]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for v in values {
            m.append(AUTHORIZATION, v.parse().expect("ascii"));
        }
        m
    }

    /// A JWT-shaped token with these claims (header and signature are not looked at).
    pub(crate) fn jwt(claims: serde_json::Value) -> String {
        format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    #[test]
    fn the_token_is_read_from_a_bearer_authorization_only() {
        assert_eq!(bearer(&with(&["Bearer abc.def"])), Ok("abc.def"));
        assert_eq!(bearer(&with(&["bearer abc"])), Ok("abc"));
        assert_eq!(bearer(&with(&[])), Err(TokenError::Missing));
        assert_eq!(
            bearer(&with(&["Bearer a", "Bearer b"])),
            Err(TokenError::Repeated)
        );
        for bad in [
            "Basic dXNlcjpwdw==",
            "Bearer",
            "Bearer ",
            "abc",
            "Bearer a b",
        ] {
            assert_eq!(bearer(&with(&[bad])), Err(TokenError::NotBearer), "{bad}");
        }
        let long = format!("Bearer {}", "x".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(
            bearer(&with(&[&long])),
            Err(TokenError::TooLong(MAX_TOKEN_BYTES + 1))
        );
    }

    #[test]
    fn the_hash_shows_nothing_of_the_token() {
        let h = TokenHash::of("secret-token");
        assert_eq!(h, TokenHash::of("secret-token"));
        assert_ne!(h, TokenHash::of("secret-token2"));
        assert_eq!(format!("{h:?}"), "TokenHash(..)");
    }

    #[test]
    fn exp_is_read_from_a_jwt_payload_when_there_is_one() {
        assert_eq!(
            expiry(&jwt(
                serde_json::json!({"exp": 1_900_000_000, "aud": ["airlock-router"]})
            )),
            Some(1_900_000_000)
        );
        assert_eq!(expiry(&jwt(serde_json::json!({"sub": "x"}))), None);
        assert_eq!(expiry(&jwt(serde_json::json!({"exp": "soon"}))), None);
        assert_eq!(expiry("opaque-token"), None);
        assert_eq!(expiry("a.%%%.c"), None);
    }

    /// Issue: every junk token used to be reviewed by the API server (and wait for a place among
    /// the reviews in flight). Only what could be a token for the router is reviewed now.
    #[test]
    fn the_precheck_refuses_what_cannot_be_a_token_for_the_router() {
        let aud = "airlock-router";
        let now = 1_800_000_000;
        let good = |claims| precheck(&jwt(claims), aud, now);
        assert_eq!(
            good(serde_json::json!({"aud": [aud, "other"], "exp": now + 600})),
            Ok(now + 600)
        );
        assert_eq!(
            good(serde_json::json!({"aud": aud, "exp": now + 1})),
            Ok(now + 1),
            "aud may be one string"
        );
        assert_eq!(
            good(serde_json::json!({"aud": aud, "exp": now - 30})),
            Ok(now - 30),
            "within the API server's leeway"
        );
        assert_eq!(
            good(serde_json::json!({"aud": aud, "exp": now - EXPIRY_LEEWAY_SECS})),
            Err(Unfit::Expired)
        );
        assert_eq!(
            good(serde_json::json!({"aud": ["api"], "exp": now + 600})),
            Err(Unfit::WrongAudience)
        );
        assert_eq!(
            good(serde_json::json!({"exp": now + 600})),
            Err(Unfit::WrongAudience),
            "no aud: the API server's own audience"
        );
        assert_eq!(good(serde_json::json!({"aud": aud})), Err(Unfit::NoExpiry));
        assert_eq!(
            good(serde_json::json!({"aud": aud, "exp": "soon"})),
            Err(Unfit::NotAJwt)
        );
        let payload = URL_SAFE_NO_PAD.encode(format!(r#"{{"aud":"{aud}","exp":{}}}"#, now + 9));
        for junk in [
            "junk".to_string(),
            "a.b".to_string(),
            format!("eyJhbGciOiJub25lIn0.{payload}."),
            format!("eyJ.{payload}.c2ln.extra"),
            format!("ey%J.{payload}.c2ln"),
            "eyJhbGciOiJub25lIn0.e30.c2ln".to_string(),
            "eyJhbGciOiJub25lIn0.bm90IGpzb24.c2ln".to_string(),
        ] {
            assert!(precheck(&junk, aud, now).is_err(), "{junk}");
        }
        assert_eq!(
            precheck(&format!("eyJhbGciOiJub25lIn0.{payload}.c2ln"), aud, now),
            Ok(now + 9)
        );
    }

    #[test]
    fn messages_about_a_token_never_carry_it() {
        assert_eq!(
            scrub("token abc.def is invalid: abc.def", "abc.def"),
            "token <token> is invalid: <token>"
        );
        let long = scrub(&"x".repeat(1000), "tok");
        assert_eq!(long.chars().count(), 301);
    }
}
