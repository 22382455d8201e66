//! Bearer tokens in the `Authorization` header: the WebSocket upgrade (login tokens), the
//! gift API (service token) and the admin API (admin token) all read them the same way.

use axum::http::{HeaderMap, header};
use subtle::ConstantTimeEq;

/// The token of an `Authorization: Bearer <token>` header, if there is one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Whether the request presents exactly `expected`, compared in constant time.
pub fn presents(headers: &HeaderMap, expected: &str) -> bool {
    bearer(headers).is_some_and(|offered| bool::from(offered.as_bytes().ct_eq(expected.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn only_the_exact_bearer_token_is_presented() {
        assert_eq!(bearer(&headers("Bearer abc")), Some("abc"));
        assert!(presents(&headers("Bearer s3cret-token"), "s3cret-token"));
        assert!(!presents(&headers("Bearer s3cret-toke"), "s3cret-token"));
        assert!(!presents(&headers("Basic s3cret-token"), "s3cret-token"));
        assert!(!presents(&HeaderMap::new(), "s3cret-token"));
    }
}
