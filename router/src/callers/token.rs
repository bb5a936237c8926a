//! The caller's bearer token as the router handles it (pure): read from the request's
//! `authorization` metadata, kept only as its SHA-256 ([`TokenHash`]), and its `exp` claim read
//! without verifying anything (the TokenReview verified the token; `exp` only caps how long the
//! review's answer is reused).
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

/// The `exp` claim (seconds since the Unix epoch) of a JWT, read without verifying the token;
/// `None` when the token is not a JWT with a numeric `exp`.
pub fn expiry(token: &str) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: Option<f64>,
    }
    let payload = token.split('.').nth(1)?;
    // Unpadded base64url per RFC 7515; tolerate padding some issuers add.
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let exp = serde_json::from_slice::<Claims>(&bytes).ok()?.exp?;
    (exp.is_finite() && exp >= 0.0).then_some(exp as u64)
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
