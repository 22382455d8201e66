//! Login tokens: how a WebSocket connection proves which user it acts for.
//!
//! The app's login service mints a token when a user signs in; the client
//! presents it when it opens a WebSocket connection; pkd checks it with the
//! same shared secret and from then on lets the connection act only as that
//! user. The token also carries the anchor profile that matchmaking filters on
//! (country, platform, client version), signed, so a client cannot change them.
//!
//! # Format (version 1)
//!
//! A token is seven fields joined by `.`:
//!
//! ```text
//! v1.<user_id>.<expires_at_ms>.<country>.<platform>.<client_version>.<signature>
//! ```
//!
//! | field            | content                                                        |
//! |------------------|----------------------------------------------------------------|
//! | `v1`             | the format version, literally `v1`                             |
//! | `user_id`        | 1 to 64 characters from `A-Z a-z 0-9 _ -`                      |
//! | `expires_at_ms`  | when the token expires, unix time in milliseconds, decimal     |
//! | `country`        | empty, or an ISO 3166-1 alpha-2 code in capitals, e.g. `IN`    |
//! | `platform`       | empty, `android` or `ios`                                      |
//! | `client_version` | empty, or the client's version code, decimal, at most 2^32 - 1 |
//! | `signature`      | see below                                                      |
//!
//! An empty field means "not given". Numbers are plain decimal digits with no
//! sign and no leading zeros (`0` itself is allowed).
//!
//! The signature is HMAC-SHA256, keyed with the shared secret, over the bytes
//! of everything before the last `.` (that is, `v1.<user_id>. ... .<client_version>`),
//! encoded as base64url without padding (43 characters).
//!
//! Examples, signed with the secret `secret` (test vectors for the login
//! service; the unit tests check them): user `42`, expiring at
//! 1700000000000 ms, from India, on Android, client version 207, is
//!
//! ```text
//! v1.42.1700000000000.IN.android.207._Y8OJuGQ52Yz6jw5no4qGFQLpGUydOCBg310ttxhjBg
//! ```
//!
//! and the same user with no profile fields is
//!
//! ```text
//! v1.42.1700000000000....uB61b-l5fOLy_ioODKnLR_ooyD4jJo90b8yQpDxbr4g
//! ```
//!
//! A token is accepted while `now_ms < expires_at_ms`. The secret should be at
//! least 32 random bytes.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The version field of the tokens this module makes and reads.
pub const VERSION: &str = "v1";

/// The longest user id, in bytes.
pub const MAX_USER_ID_LEN: usize = 64;

/// Tokens longer than this are refused before any other work. A valid token is
/// at most about 170 bytes.
const MAX_TOKEN_LEN: usize = 512;

/// Length of the base64url signature field: 32 bytes without padding.
const SIGNATURE_LEN: usize = 43;

type HmacSha256 = Hmac<Sha256>;

/// What a login token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user the connection acts for.
    pub user_id: UserId,
    /// When the token expires, unix time in milliseconds.
    pub expires_at_ms: u64,
    /// The anchor's country, for the country filters of matchmaking.
    pub country: Option<CountryCode>,
    /// The client's platform, for the version filters of matchmaking.
    pub platform: Option<Platform>,
    /// The client's version code, for the version filters of matchmaking.
    pub client_version: Option<u32>,
}

/// A user id as login tokens carry it: 1 to 64 characters from
/// `A-Z a-z 0-9 _ -`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(String);

impl UserId {
    /// Checks and wraps a user id.
    ///
    /// # Errors
    ///
    /// [`ClaimError::BadUserId`] when it is empty, too long, or has a
    /// character outside `A-Z a-z 0-9 _ -`.
    pub fn new(user_id: impl Into<String>) -> Result<Self, ClaimError> {
        let user_id = user_id.into();
        if is_valid_user_id(&user_id) { Ok(Self(user_id)) } else { Err(ClaimError::BadUserId) }
    }

    /// The user id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// An ISO 3166-1 alpha-2 country code in capitals, such as `IN` or `PK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    /// Checks a two-letter country code; small letters are turned into
    /// capitals (`in` becomes `IN`).
    ///
    /// # Errors
    ///
    /// [`ClaimError::BadCountryCode`] unless it is exactly two ASCII letters.
    pub fn new(code: &str) -> Result<Self, ClaimError> {
        match code.as_bytes() {
            [first, second] if first.is_ascii_alphabetic() && second.is_ascii_alphabetic() => {
                Ok(Self([first.to_ascii_uppercase(), second.to_ascii_uppercase()]))
            }
            _ => Err(ClaimError::BadCountryCode),
        }
    }

    /// The code as text, in capitals.
    pub fn as_str(&self) -> &str {
        // Both bytes are ASCII capitals, checked in `new`.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The client's platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Platform {
    /// `android`
    Android,
    /// `ios`
    Ios,
}

impl Platform {
    /// The platform as it is written in a token: `android` or `ios`.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Android => "android",
            Platform::Ios => "ios",
        }
    }
}

impl FromStr for Platform {
    type Err = ClaimError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "android" => Ok(Platform::Android),
            "ios" => Ok(Platform::Ios),
            _ => Err(ClaimError::BadPlatform),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Why a claim value was refused when building [`Claims`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// The user id is empty, too long, or has a character outside
    /// `A-Z a-z 0-9 _ -`.
    #[error("a user id must be 1 to 64 characters from A-Z a-z 0-9 _ -")]
    BadUserId,
    /// The country code is not two ASCII letters.
    #[error("a country code must be two letters")]
    BadCountryCode,
    /// The platform is neither `android` nor `ios`.
    #[error("the platform must be \"android\" or \"ios\"")]
    BadPlatform,
}

/// Why a login token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginTokenError {
    /// The token is not of the documented form; the text says which part.
    #[error("malformed login token: {0}")]
    Malformed(&'static str),
    /// The token is of a version this server does not read.
    #[error("unknown login token version")]
    UnknownVersion,
    /// The user id field is empty, too long, or has a character outside
    /// `A-Z a-z 0-9 _ -`.
    #[error("bad user id in login token")]
    BadUserId,
    /// The signature does not match: the token was changed, or signed with
    /// another secret.
    #[error("bad login token signature")]
    BadSignature,
    /// The token was genuine but has expired.
    #[error("login token expired at {expires_at_ms} ms (now {now_ms} ms)")]
    Expired {
        /// When the token expired, unix ms.
        expires_at_ms: u64,
        /// The time it was checked at, unix ms.
        now_ms: u64,
    },
}

/// Makes a login token for `claims`, signed with `secret`.
///
/// The claims were checked when they were built, so this cannot fail.
pub fn mint(secret: &[u8], claims: &Claims) -> String {
    let mut token = signed_part(claims);
    let signature = URL_SAFE_NO_PAD.encode(mac(secret, token.as_bytes()).finalize().into_bytes());
    token.push('.');
    token.push_str(&signature);
    token
}

/// Checks a login token against `secret` at time `now_ms` (unix ms) and
/// returns its claims.
///
/// Safe on any input: a malformed token is an error, never a panic. The
/// signature is compared in constant time.
///
/// # Errors
///
/// [`LoginTokenError::Malformed`] or [`LoginTokenError::UnknownVersion`] when
/// the token is not of the documented form, [`LoginTokenError::BadUserId`]
/// when its user id is not valid, [`LoginTokenError::BadSignature`] when it
/// was not signed with `secret`, [`LoginTokenError::Expired`] when
/// `now_ms >= expires_at_ms`.
pub fn verify(secret: &[u8], token: &str, now_ms: u64) -> Result<Claims, LoginTokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(LoginTokenError::Malformed("too long"));
    }
    let (signed, signature) = token.rsplit_once('.').ok_or(LoginTokenError::Malformed("no signature"))?;

    let claims = parse_signed_part(signed)?;

    if signature.len() != SIGNATURE_LEN {
        return Err(LoginTokenError::Malformed("signature length"));
    }
    let signature =
        URL_SAFE_NO_PAD.decode(signature).map_err(|_| LoginTokenError::Malformed("signature is not base64url"))?;
    mac(secret, signed.as_bytes()).verify_slice(&signature).map_err(|_| LoginTokenError::BadSignature)?;

    if now_ms >= claims.expires_at_ms {
        return Err(LoginTokenError::Expired { expires_at_ms: claims.expires_at_ms, now_ms });
    }
    Ok(claims)
}

/// The text the signature covers: every field but the signature.
fn signed_part(claims: &Claims) -> String {
    format!(
        "{VERSION}.{}.{}.{}.{}.{}",
        claims.user_id,
        claims.expires_at_ms,
        claims.country.as_ref().map_or("", CountryCode::as_str),
        claims.platform.map_or("", Platform::as_str),
        claims.client_version.map_or_else(String::new, |version| version.to_string()),
    )
}

/// Reads the claims out of the signed part of a token, accepting only the
/// exact text [`signed_part`] writes, so each claim set has one token.
fn parse_signed_part(signed: &str) -> Result<Claims, LoginTokenError> {
    let mut fields = signed.split('.');
    let mut next = |what: &'static str| fields.next().ok_or(LoginTokenError::Malformed(what));

    if next("version")? != VERSION {
        return Err(LoginTokenError::UnknownVersion);
    }
    let user_id = next("user id")?;
    let expires_at_ms = next("expiry")?;
    let country = next("country")?;
    let platform = next("platform")?;
    let client_version = next("client version")?;
    if fields.next().is_some() {
        return Err(LoginTokenError::Malformed("too many fields"));
    }

    let user_id = UserId::new(user_id).map_err(|_| LoginTokenError::BadUserId)?;
    let expires_at_ms = parse_decimal(expires_at_ms).ok_or(LoginTokenError::Malformed("expiry"))?;
    let country = match country {
        "" => None,
        code if code.bytes().all(|byte| byte.is_ascii_uppercase()) => {
            Some(CountryCode::new(code).map_err(|_| LoginTokenError::Malformed("country"))?)
        }
        _ => return Err(LoginTokenError::Malformed("country")),
    };
    let platform = match platform {
        "" => None,
        text => Some(text.parse::<Platform>().map_err(|_| LoginTokenError::Malformed("platform"))?),
    };
    let client_version = match client_version {
        "" => None,
        text => Some(
            parse_decimal(text)
                .and_then(|version| u32::try_from(version).ok())
                .ok_or(LoginTokenError::Malformed("client version"))?,
        ),
    };

    Ok(Claims { user_id, expires_at_ms, country, platform, client_version })
}

/// Parses plain decimal digits with no sign and no leading zeros.
fn parse_decimal(text: &str) -> Option<u64> {
    let canonical =
        !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) && (text == "0" || !text.starts_with('0'));
    if canonical { text.parse().ok() } else { None }
}

fn is_valid_user_id(user_id: &str) -> bool {
    (1..=MAX_USER_ID_LEN).contains(&user_id.len())
        && user_id.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

fn mac(secret: &[u8], message: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(message);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a test secret of at least thirty-two bytes";

    fn claims() -> Claims {
        Claims {
            user_id: UserId::new("anchor_42").unwrap(),
            expires_at_ms: 1_700_000_000_000,
            country: Some(CountryCode::new("in").unwrap()),
            platform: Some(Platform::Android),
            client_version: Some(207),
        }
    }

    #[test]
    fn round_trip_with_profile() {
        let token = mint(SECRET, &claims());
        assert!(token.starts_with("v1.anchor_42.1700000000000.IN.android.207."));
        assert_eq!(token.rsplit('.').next().unwrap().len(), SIGNATURE_LEN);
        assert_eq!(verify(SECRET, &token, 1_699_999_999_999), Ok(claims()));
    }

    #[test]
    fn round_trip_without_profile() {
        let claims = Claims { country: None, platform: None, client_version: None, ..claims() };
        let token = mint(SECRET, &claims);
        assert!(token.starts_with("v1.anchor_42.1700000000000....")); // four dots: three empty fields
        assert_eq!(verify(SECRET, &token, 0), Ok(claims));
    }

    /// The examples in the module documentation, computed independently with
    /// Python's `hmac` and `base64` modules.
    #[test]
    fn documented_examples() {
        let with_profile = Claims {
            user_id: UserId::new("42").unwrap(),
            expires_at_ms: 1_700_000_000_000,
            country: Some(CountryCode::new("IN").unwrap()),
            platform: Some(Platform::Android),
            client_version: Some(207),
        };
        let without_profile = Claims { country: None, platform: None, client_version: None, ..with_profile.clone() };
        for (claims, token) in [
            (with_profile, "v1.42.1700000000000.IN.android.207._Y8OJuGQ52Yz6jw5no4qGFQLpGUydOCBg310ttxhjBg"),
            (without_profile, "v1.42.1700000000000....uB61b-l5fOLy_ioODKnLR_ooyD4jJo90b8yQpDxbr4g"),
        ] {
            assert_eq!(mint(b"secret", &claims), token);
            assert_eq!(verify(b"secret", token, 0), Ok(claims));
        }
    }

    #[test]
    fn expired_at_and_after_the_expiry() {
        let token = mint(SECRET, &claims());
        for now_ms in [1_700_000_000_000, u64::MAX] {
            assert_eq!(
                verify(SECRET, &token, now_ms),
                Err(LoginTokenError::Expired { expires_at_ms: 1_700_000_000_000, now_ms })
            );
        }
    }

    #[test]
    fn other_secret_is_a_bad_signature() {
        let token = mint(SECRET, &claims());
        assert_eq!(verify(b"another secret", &token, 0), Err(LoginTokenError::BadSignature));
    }

    #[test]
    fn changed_claims_are_a_bad_signature() {
        let token = mint(SECRET, &claims());
        for (from, to) in [
            (".IN.", ".PK."),
            (".android.", ".ios."),
            (".207.", ".999."),
            ("anchor_42", "anchor_43"),
            (".1700000000000.", ".1800000000000."),
            (".IN.android.207.", "...."),
        ] {
            let forged = token.replace(from, to);
            assert_ne!(forged, token);
            assert_eq!(verify(SECRET, &forged, 0), Err(LoginTokenError::BadSignature), "{forged}");
        }
    }

    #[test]
    fn malformed_tokens() {
        let signature = "A".repeat(SIGNATURE_LEN);
        let cases: &[(&str, LoginTokenError)] = &[
            ("", LoginTokenError::Malformed("no signature")),
            ("v1", LoginTokenError::Malformed("no signature")),
            ("v2.a.1....x", LoginTokenError::UnknownVersion),
            ("v1.a.1...x", LoginTokenError::Malformed("client version")),
            ("v1.a.1.....x", LoginTokenError::Malformed("too many fields")),
            ("v1..1....x", LoginTokenError::BadUserId),
            ("v1.a b.1....x", LoginTokenError::BadUserId),
            ("v1.a.01....x", LoginTokenError::Malformed("expiry")),
            ("v1.a.+1....x", LoginTokenError::Malformed("expiry")),
            ("v1.a.99999999999999999999....x", LoginTokenError::Malformed("expiry")),
            ("v1.a.1.in...x", LoginTokenError::Malformed("country")),
            ("v1.a.1.IND...x", LoginTokenError::Malformed("country")),
            ("v1.a.1..web..x", LoginTokenError::Malformed("platform")),
            ("v1.a.1...4294967296.x", LoginTokenError::Malformed("client version")),
            ("v1.a.1...007.x", LoginTokenError::Malformed("client version")),
            ("v1.a.1....x", LoginTokenError::Malformed("signature length")),
        ];
        for (token, error) in cases {
            assert_eq!(verify(SECRET, token, 0).as_ref(), Err(error), "{token:?}");
        }
        let not_base64 = format!("v1.a.1....{}", "*".repeat(SIGNATURE_LEN));
        assert_eq!(verify(SECRET, &not_base64, 0), Err(LoginTokenError::Malformed("signature is not base64url")));
        let wrong = format!("v1.a.1....{signature}");
        assert_eq!(verify(SECRET, &wrong, 0), Err(LoginTokenError::BadSignature));
        let long = format!("v1.{}", "a".repeat(MAX_TOKEN_LEN));
        assert_eq!(verify(SECRET, &long, 0), Err(LoginTokenError::Malformed("too long")));
    }

    #[test]
    fn claim_constructors() {
        assert_eq!(UserId::new(""), Err(ClaimError::BadUserId));
        assert_eq!(UserId::new("a".repeat(65)), Err(ClaimError::BadUserId));
        assert_eq!(UserId::new("a.b"), Err(ClaimError::BadUserId));
        assert!(UserId::new("a".repeat(64)).is_ok());
        assert_eq!(CountryCode::new("pk").unwrap().as_str(), "PK");
        assert_eq!(CountryCode::new("P1"), Err(ClaimError::BadCountryCode));
        assert_eq!(CountryCode::new("ÉÉ"), Err(ClaimError::BadCountryCode));
        assert_eq!("ios".parse::<Platform>(), Ok(Platform::Ios));
        assert_eq!("iOS".parse::<Platform>(), Err(ClaimError::BadPlatform));
    }
}
