//! Reading Secrets the operator writes and the router reads (TLS identities).

use k8s_openapi::api::core::v1::Secret;

/// The value of `key` in `secret`'s data as text; `None` when absent or not UTF-8.
pub fn text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}
