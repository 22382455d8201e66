//! RTM tokens in Agora's AccessToken2 format (the "007" tokens).
//!
//! Command 27 hands a co-hosting anchor an RTM token. We make it in the format
//! Agora's RTM service accepts, so that the app can use a real RTM service, and
//! we can also read such tokens back (for tests, and for anyone who runs the
//! RTM side themselves).
//!
//! # Format
//!
//! A token is the text `007` followed by standard base64 (with padding) of the
//! zlib-compressed bytes
//!
//! ```text
//! signature    : string (32 bytes, HMAC-SHA256, see below)
//! signing info : app id        string (32 hex characters)
//!                issued at     u32    (unix seconds)
//!                expire        u32    (seconds after "issued at")
//!                salt          u32
//!                service count u16
//!                services      ... in ascending service type order
//! ```
//!
//! Integers are little-endian. A string is a u16 byte length followed by the
//! bytes. An RTM service (type 2) is
//!
//! ```text
//! service type    u16 (2)
//! privilege count u16
//! privileges      (privilege u16, expire u32) pairs, ascending by privilege
//! user id         string
//! ```
//!
//! and the RTM token carries one privilege, "login" (1), whose value is the
//! same number of seconds as the token's expire.
//!
//! The signature is HMAC-SHA256 over the signing info, keyed with a signing key
//! derived from the app certificate (the certificate's 32 characters as text,
//! not hex-decoded):
//!
//! ```text
//! step      = HMAC-SHA256(key = u32le(issued at), message = certificate)
//! signing   = HMAC-SHA256(key = u32le(salt),      message = step)
//! signature = HMAC-SHA256(key = signing,          message = signing info)
//! ```
//!
//! The signature covers every byte after itself, so a reader that checks the
//! signature over the raw signing info does not need to understand every
//! service in it.
//!
//! The clock and the salt are arguments: this module reads no clock and draws
//! no random numbers, so the same inputs always give the same token.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The version prefix of every AccessToken2 token.
pub const VERSION: &str = "007";

/// The service type of Agora's RTM service inside an AccessToken2 token.
pub const SERVICE_TYPE_RTM: u16 = 2;

/// The service type of Agora's RTC (audio and video) service.
pub const SERVICE_TYPE_RTC: u16 = 1;

/// The RTM privilege that lets the user log in.
pub const PRIVILEGE_LOGIN: u16 = 1;

/// The largest decompressed token we are willing to read. Real tokens are a few
/// hundred bytes; the cap stops a small compressed input from expanding into a
/// large allocation.
const MAX_DECOMPRESSED_LEN: u64 = 64 * 1024;

type HmacSha256 = Hmac<Sha256>;

/// What an RTM token is made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtmTokenRequest<'a> {
    /// The Agora app id: 32 hexadecimal characters.
    pub app_id: &'a str,
    /// The app certificate: 32 hexadecimal characters. Used as text, exactly
    /// as written (case matters).
    pub app_certificate: &'a str,
    /// The RTM user id the token lets log in. Not empty, at most 65535 bytes.
    pub user_id: &'a str,
    /// When the token is issued, in unix seconds.
    pub issued_at: u32,
    /// A number that makes two tokens issued in the same second differ.
    pub salt: u32,
    /// How many seconds after `issued_at` the token stays valid.
    pub expire_seconds: u32,
}

/// The contents of a decoded AccessToken2 token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTokenClaims {
    /// The Agora app id the token was made for.
    pub app_id: String,
    /// When the token was issued, in unix seconds.
    pub issued_at: u32,
    /// How many seconds after `issued_at` the token stays valid.
    pub expire_seconds: u32,
    /// The salt the token was made with.
    pub salt: u32,
    /// The services in the token, in token order. Reading stops at the first
    /// service of a type this module does not know, because its layout (and so
    /// where the next service starts) is unknown; that service is reported as
    /// [`ServiceClaims::Unknown`] and is the last one.
    pub services: Vec<ServiceClaims>,
}

impl AccessTokenClaims {
    /// When the token stops being valid, in unix seconds.
    pub fn expires_at(&self) -> u64 {
        u64::from(self.issued_at) + u64::from(self.expire_seconds)
    }

    /// Whether the token has expired at `now` (unix seconds).
    pub fn is_expired_at(&self, now: u64) -> bool {
        now >= self.expires_at()
    }

    /// The RTM user id and privileges, if the token has an RTM service.
    pub fn rtm(&self) -> Option<(&str, &BTreeMap<u16, u32>)> {
        self.services.iter().find_map(|service| match service {
            ServiceClaims::Rtm { user_id, privileges } => Some((user_id.as_str(), privileges)),
            _ => None,
        })
    }
}

/// One service inside an AccessToken2 token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceClaims {
    /// RTM (service type 2): privileges (privilege -> expire seconds) and the
    /// user id.
    Rtm {
        /// Privilege number to its expire, in seconds after the issue time.
        privileges: BTreeMap<u16, u32>,
        /// The RTM user id.
        user_id: String,
    },
    /// RTC (service type 1): privileges, the channel name and the user id.
    Rtc {
        /// Privilege number to its expire, in seconds after the issue time.
        privileges: BTreeMap<u16, u32>,
        /// The RTC channel name.
        channel_name: String,
        /// The RTC user id, as text ("" for "any user").
        user_id: String,
    },
    /// A service type this module does not read.
    Unknown {
        /// The service type number.
        service_type: u16,
    },
}

/// Why an RTM token could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtmTokenError {
    /// The app id is not 32 hexadecimal characters.
    #[error("the app id must be 32 hexadecimal characters")]
    BadAppId,
    /// The app certificate is not 32 hexadecimal characters.
    #[error("the app certificate must be 32 hexadecimal characters")]
    BadAppCertificate,
    /// The user id is empty or longer than 65535 bytes.
    #[error("the user id must be between 1 and 65535 bytes long")]
    BadUserId,
    /// The token does not start with "007".
    #[error("the token is not an AccessToken2 (\"007\") token")]
    WrongVersion,
    /// The token is not valid base64, not valid zlib, too large, or its
    /// contents end early.
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    /// The signature does not match the given app certificate.
    #[error("the token's signature does not match the app certificate")]
    BadSignature,
}

/// Builds an RTM login token.
///
/// # Errors
///
/// [`RtmTokenError::BadAppId`], [`RtmTokenError::BadAppCertificate`] or
/// [`RtmTokenError::BadUserId`] when an input is not of the expected form.
pub fn build(request: &RtmTokenRequest<'_>) -> Result<String, RtmTokenError> {
    if !is_32_hex(request.app_id) {
        return Err(RtmTokenError::BadAppId);
    }
    if !is_32_hex(request.app_certificate) {
        return Err(RtmTokenError::BadAppCertificate);
    }
    if request.user_id.is_empty() || request.user_id.len() > usize::from(u16::MAX) {
        return Err(RtmTokenError::BadUserId);
    }

    let mut signing_info = Vec::with_capacity(64 + request.user_id.len());
    put_string(&mut signing_info, request.app_id.as_bytes());
    put_u32(&mut signing_info, request.issued_at);
    put_u32(&mut signing_info, request.expire_seconds);
    put_u32(&mut signing_info, request.salt);
    put_u16(&mut signing_info, 1); // one service
    put_u16(&mut signing_info, SERVICE_TYPE_RTM);
    put_u16(&mut signing_info, 1); // one privilege
    put_u16(&mut signing_info, PRIVILEGE_LOGIN);
    put_u32(&mut signing_info, request.expire_seconds);
    put_string(&mut signing_info, request.user_id.as_bytes());

    let signature = sign(request.app_certificate, request.issued_at, request.salt, &signing_info);

    let mut content = Vec::with_capacity(2 + signature.len() + signing_info.len());
    put_string(&mut content, &signature);
    content.extend_from_slice(&signing_info);

    let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
    let compressed =
        encoder.write_all(&content).and_then(|()| encoder.finish()).expect("compressing into memory cannot fail");

    Ok(format!("{VERSION}{}", STANDARD.encode(compressed)))
}

/// Reads a token and checks its signature with `app_certificate`.
///
/// This does not look at the clock: check [`AccessTokenClaims::is_expired_at`]
/// afterwards. Any input is safe to pass; a malformed one is an error, never a
/// panic.
///
/// # Errors
///
/// [`RtmTokenError::BadAppCertificate`] when the certificate is not 32
/// hexadecimal characters, [`RtmTokenError::WrongVersion`] or
/// [`RtmTokenError::Malformed`] when the token cannot be read,
/// [`RtmTokenError::BadAppId`] when the app id in it is not 32 hexadecimal
/// characters,
/// [`RtmTokenError::BadSignature`] when it was not signed with this
/// certificate.
pub fn verify(token: &str, app_certificate: &str) -> Result<AccessTokenClaims, RtmTokenError> {
    if !is_32_hex(app_certificate) {
        return Err(RtmTokenError::BadAppCertificate);
    }
    let (signature, signing_info) = unpack_envelope(token)?;
    let claims = parse_signing_info(&signing_info)?;

    let key = signing_key(app_certificate, claims.issued_at, claims.salt);
    let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC accepts keys of any length");
    mac.update(&signing_info);
    mac.verify_slice(&signature).map_err(|_| RtmTokenError::BadSignature)?;
    Ok(claims)
}

/// Reads a token without checking its signature. For diagnostics only: the
/// claims of an unverified token must not be trusted.
///
/// # Errors
///
/// [`RtmTokenError::WrongVersion`] or [`RtmTokenError::Malformed`] when the
/// token cannot be read, [`RtmTokenError::BadAppId`] when the app id in it is
/// not 32 hexadecimal characters.
pub fn decode_unverified(token: &str) -> Result<AccessTokenClaims, RtmTokenError> {
    let (_signature, signing_info) = unpack_envelope(token)?;
    parse_signing_info(&signing_info)
}

/// Splits a token into its signature and its signing info (the bytes the
/// signature covers).
fn unpack_envelope(token: &str) -> Result<(Vec<u8>, Vec<u8>), RtmTokenError> {
    let body = token.strip_prefix(VERSION).ok_or(RtmTokenError::WrongVersion)?;
    let compressed = STANDARD.decode(body).map_err(|_| RtmTokenError::Malformed("not base64"))?;

    let mut content = Vec::new();
    ZlibDecoder::new(compressed.as_slice())
        .take(MAX_DECOMPRESSED_LEN + 1)
        .read_to_end(&mut content)
        .map_err(|_| RtmTokenError::Malformed("not zlib"))?;
    if content.len() as u64 > MAX_DECOMPRESSED_LEN {
        return Err(RtmTokenError::Malformed("too large"));
    }

    let mut reader = Reader::new(&content);
    let signature = reader.string()?.to_vec();
    let signing_info = reader.rest().to_vec();
    Ok((signature, signing_info))
}

/// Reads the claims out of the signing info.
fn parse_signing_info(signing_info: &[u8]) -> Result<AccessTokenClaims, RtmTokenError> {
    let mut reader = Reader::new(signing_info);
    let app_id = reader.text()?;
    if !is_32_hex(&app_id) {
        return Err(RtmTokenError::BadAppId);
    }
    let issued_at = reader.u32()?;
    let expire_seconds = reader.u32()?;
    let salt = reader.u32()?;
    let service_count = reader.u16()?;

    let mut services = Vec::new();
    for _ in 0..service_count {
        let service_type = reader.u16()?;
        let service = match service_type {
            SERVICE_TYPE_RTM => {
                let privileges = reader.privileges()?;
                let user_id = reader.text()?;
                ServiceClaims::Rtm { privileges, user_id }
            }
            SERVICE_TYPE_RTC => {
                let privileges = reader.privileges()?;
                let channel_name = reader.text()?;
                let user_id = reader.text()?;
                ServiceClaims::Rtc { privileges, channel_name, user_id }
            }
            other => {
                services.push(ServiceClaims::Unknown { service_type: other });
                break;
            }
        };
        services.push(service);
    }

    Ok(AccessTokenClaims { app_id, issued_at, expire_seconds, salt, services })
}

/// The signing key: the app certificate run through HMAC with the issue time,
/// then with the salt.
fn signing_key(app_certificate: &str, issued_at: u32, salt: u32) -> [u8; 32] {
    let step = hmac_sha256(&issued_at.to_le_bytes(), app_certificate.as_bytes());
    hmac_sha256(&salt.to_le_bytes(), &step)
}

/// The signature over `signing_info`.
fn sign(app_certificate: &str, issued_at: u32, salt: u32, signing_info: &[u8]) -> [u8; 32] {
    let key = signing_key(app_certificate, issued_at, salt);
    hmac_sha256(&key, signing_info)
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

fn is_32_hex(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|byte| byte.is_ascii_hexdigit())
}

fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// Writes a length-prefixed string. Callers check that it fits a u16.
fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    let length = u16::try_from(bytes.len()).expect("caller checked the length");
    put_u16(out, length);
    out.extend_from_slice(bytes);
}

/// A bounds-checked little-endian reader over a byte slice.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], RtmTokenError> {
        if self.bytes.len() < count {
            return Err(RtmTokenError::Malformed("ends early"));
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, RtmTokenError> {
        let bytes = self.take(2)?;
        Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&mut self) -> Result<u32, RtmTokenError> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn string(&mut self) -> Result<&'a [u8], RtmTokenError> {
        let length = self.u16()?;
        self.take(usize::from(length))
    }

    fn text(&mut self) -> Result<String, RtmTokenError> {
        let bytes = self.string()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| RtmTokenError::Malformed("not UTF-8"))
    }

    fn privileges(&mut self) -> Result<BTreeMap<u16, u32>, RtmTokenError> {
        let count = self.u16()?;
        let mut privileges = BTreeMap::new();
        for _ in 0..count {
            let privilege = self.u16()?;
            let expire = self.u32()?;
            privileges.insert(privilege, expire);
        }
        Ok(privileges)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
}
