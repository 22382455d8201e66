//! [`GiftClient`]: the app's gift service as pkd sees it, `POST /internal/gifts`
//! (`docs/protocol.md` §8), over one keep-alive HTTP/1.1 connection.
//!
//! The connection is opened on the first request and kept for the next ones, so a
//! request costs one write and one read, not a TCP handshake. Bodies are read by their
//! `Content-Length` or as chunks. If the node closed an idle connection before a request
//! went out, the request is sent once more on a new connection; a gift is identified by
//! its id, so sending it twice counts it once.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::stream::Stream;

/// The route of the gift API.
pub const GIFTS_PATH: &str = "/internal/gifts";
/// The longest body the client reads.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// The longest header line the client reads.
const MAX_LINE: usize = 16 * 1024;

/// Why a gift request failed. An answer the node gave (any HTTP status with a JSON body,
/// 401 and 503 included) is not an error: it is a [`GiftReply`] or a [`BatchReply`].
#[derive(Debug, thiserror::Error)]
pub enum GiftError {
    #[error("talking with {address}: {source}")]
    Io { address: String, source: std::io::Error },
    #[error("no answer from {address} within {limit:?}")]
    Timeout { address: String, limit: Duration },
    #[error("malformed HTTP response from {address}: {message}")]
    Malformed { address: String, message: String },
    #[error("{address} answered HTTP {status} with a body that is not the gift API's: {body}")]
    Unexpected { address: String, status: u16, body: String },
}

/// One gift, as the gift service sends it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gift {
    /// The gift service's transaction id: a retry carries the same one.
    pub id: u64,
    /// The PK; without it, the PK the receiver is in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pk_id: Option<u64>,
    /// The anchor who receives it.
    pub receiver: u64,
    pub sender: u64,
    pub beans: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_profile: Option<SenderProfile>,
}

/// The sender's profile, for the top-gifters list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderProfile {
    pub nickname: String,
    pub headimg: String,
    pub level: u32,
    pub roomlevel: u32,
    pub vip: u32,
    pub sex: u32,
}

/// What a counted gift's answer carries.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GiftResult {
    pub id: u64,
    pub pk_id: Option<u64>,
    /// The id had already been counted (a retry); it counted once.
    pub duplicate: bool,
    /// The receiving side's total after the gift.
    pub side_beans: Option<i64>,
}

/// The answer to one gift.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GiftReply {
    pub http_status: u16,
    pub code: String,
    pub desc: String,
    /// Present when the gift counted (`code` `000000`).
    pub result: Option<GiftResult>,
}

/// One gift's entry in a batch's answer.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GiftEntry {
    pub id: u64,
    pub code: String,
    pub desc: String,
    pub pk_id: Option<u64>,
    #[serde(default)]
    pub duplicate: bool,
    pub side_beans: Option<i64>,
}

/// The answer to a batch: a refusal of the whole request (`code` not `000000`, no
/// entries), or one entry per gift in request order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchReply {
    pub http_status: u16,
    pub code: String,
    pub desc: String,
    pub entries: Vec<GiftEntry>,
}

#[derive(Deserialize)]
struct Envelope {
    code: String,
    #[serde(default)]
    desc: String,
    #[serde(default)]
    result: Value,
}

#[derive(Serialize)]
struct BatchBody<'a> {
    gifts: &'a [Gift],
}

/// An HTTP response: its status, its body, and whether the server closes the connection.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
    pub close: bool,
}

/// The gift API of one node, over one keep-alive connection.
pub struct GiftClient {
    address: String,
    token: String,
    timeout: Duration,
    connection: Option<BufReader<Stream>>,
    /// TLS (HTTPS), trusting the roots of this configuration; in the clear if unset.
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Connections opened so far (a keep-alive client opens one unless the node closes it).
    connections_opened: u64,
}

impl GiftClient {
    /// A client of the node whose client address is `address` ("host:port"), presenting
    /// the gift service's `token`. It connects on the first request.
    pub fn new(address: impl Into<String>, token: impl Into<String>) -> GiftClient {
        GiftClient {
            address: address.into(),
            token: token.into(),
            timeout: Duration::from_secs(30),
            connection: None,
            tls: None,
            connections_opened: 0,
        }
    }

    /// The same client, over TLS (a node started with `--tls-cert`).
    pub fn with_tls(mut self, config: std::sync::Arc<rustls::ClientConfig>) -> GiftClient {
        self.tls = Some(config);
        self
    }

    /// The same client, giving up on a request after `timeout` (the connection is then
    /// dropped: whether the gifts counted is unknown, and a retry with the same ids is safe).
    pub fn with_timeout(mut self, timeout: Duration) -> GiftClient {
        self.timeout = timeout;
        self
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Connections this client has opened so far.
    pub fn connections_opened(&self) -> u64 {
        self.connections_opened
    }

    /// Drops the connection; the next request opens a new one.
    pub fn disconnect(&mut self) {
        self.connection = None;
    }

    /// Sends one gift.
    pub async fn send(&mut self, gift: &Gift) -> Result<GiftReply, GiftError> {
        let body = serde_json::to_vec(gift).map_err(|error| self.malformed(error.to_string()))?;
        let response = self.post(GIFTS_PATH, &body).await?;
        let envelope = self.envelope(&response)?;
        let result = if envelope.result.is_null() {
            None
        } else {
            Some(serde_json::from_value(envelope.result).map_err(|error| self.malformed(format!("result: {error}")))?)
        };
        Ok(GiftReply { http_status: response.status, code: envelope.code, desc: envelope.desc, result })
    }

    /// Sends a batch (at most 1,000 gifts, as the node allows).
    pub async fn send_batch(&mut self, gifts: &[Gift]) -> Result<BatchReply, GiftError> {
        let body = serde_json::to_vec(&BatchBody { gifts }).map_err(|error| self.malformed(error.to_string()))?;
        let response = self.post(GIFTS_PATH, &body).await?;
        let envelope = self.envelope(&response)?;
        let entries = if envelope.result.is_null() {
            Vec::new()
        } else {
            serde_json::from_value(envelope.result).map_err(|error| self.malformed(format!("result: {error}")))?
        };
        Ok(BatchReply { http_status: response.status, code: envelope.code, desc: envelope.desc, entries })
    }

    /// Posts `body` (JSON) to `path` on the kept connection and returns the response.
    pub async fn post(&mut self, path: &str, body: &[u8]) -> Result<HttpResponse, GiftError> {
        let limit = self.timeout;
        match tokio::time::timeout(limit, self.exchange(path, body)).await {
            Ok(Ok(response)) => {
                if response.close {
                    self.connection = None;
                }
                Ok(response)
            }
            Ok(Err(error)) => {
                self.connection = None;
                Err(error)
            }
            Err(_) => {
                self.connection = None;
                Err(GiftError::Timeout { address: self.address.clone(), limit })
            }
        }
    }

    async fn exchange(&mut self, path: &str, body: &[u8]) -> Result<HttpResponse, GiftError> {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            self.address,
            self.token,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        let reused = self.connection.is_some();
        match self.exchange_once(&request).await {
            // A kept connection the node had closed while idle: nothing was answered, so
            // the request goes out again on a fresh connection.
            Err(Failure::Unanswered(_)) if reused => {
                self.connection = None;
                self.exchange_once(&request).await.map_err(|failure| self.failure(failure))
            }
            other => other.map_err(|failure| self.failure(failure)),
        }
    }

    async fn exchange_once(&mut self, request: &[u8]) -> Result<HttpResponse, Failure> {
        if self.connection.is_none() {
            let stream = TcpStream::connect(&self.address).await.map_err(Failure::Unanswered)?;
            stream.set_nodelay(true).map_err(Failure::Unanswered)?;
            let stream = Stream::over(stream, &self.address, self.tls.as_ref()).await.map_err(Failure::Unanswered)?;
            self.connections_opened += 1;
            self.connection = Some(BufReader::new(stream));
        }
        let Some(connection) = self.connection.as_mut() else {
            return Err(Failure::Unanswered(std::io::Error::other("no connection")));
        };
        connection.get_mut().write_all(request).await.map_err(Failure::Unanswered)?;
        read_response(connection).await
    }

    fn envelope(&self, response: &HttpResponse) -> Result<Envelope, GiftError> {
        serde_json::from_slice(&response.body).map_err(|_| GiftError::Unexpected {
            address: self.address.clone(),
            status: response.status,
            body: String::from_utf8_lossy(&response.body).chars().take(200).collect(),
        })
    }

    fn malformed(&self, message: String) -> GiftError {
        GiftError::Malformed { address: self.address.clone(), message }
    }

    fn failure(&self, failure: Failure) -> GiftError {
        match failure {
            Failure::Unanswered(source) | Failure::Io(source) => {
                GiftError::Io { address: self.address.clone(), source }
            }
            Failure::Malformed(message) => self.malformed(message),
        }
    }
}

/// How one exchange failed.
#[derive(Debug)]
enum Failure {
    /// Before any byte of a response arrived (the connection was refused, reset or
    /// closed): safe to send again.
    Unanswered(std::io::Error),
    Io(std::io::Error),
    Malformed(String),
}

/// Reads one HTTP/1.1 response: the status line, the headers, and a body of
/// `Content-Length` bytes, in chunks, or up to the end of the stream.
async fn read_response<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<HttpResponse, Failure> {
    let mut line = Vec::new();
    let read = read_line(reader, &mut line).await.map_err(Failure::Unanswered)?;
    if read == 0 {
        return Err(Failure::Unanswered(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the connection closed before a response",
        )));
    }
    let status_line = String::from_utf8_lossy(&line).trim_end().to_owned();
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or("");
    let status = parts.next().and_then(|code| code.parse::<u16>().ok());
    let Some(status) = status.filter(|_| version.starts_with("HTTP/1.")) else {
        return Err(Failure::Malformed(format!("bad status line {status_line:?}")));
    };
    let (mut length, mut chunked, mut close) = (None, false, version == "HTTP/1.0");
    loop {
        line.clear();
        if read_line(reader, &mut line).await.map_err(Failure::Io)? == 0 {
            return Err(Failure::Malformed("the connection closed inside the headers".to_owned()));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if text.is_empty() {
            break;
        }
        let Some((name, value)) = text.split_once(':') else {
            return Err(Failure::Malformed(format!("bad header {text:?}")));
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            let parsed = value.parse::<usize>().map_err(|_| Failure::Malformed(format!("Content-Length {value:?}")))?;
            length = Some(parsed);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().split(',').any(|coding| coding.trim() == "chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let value = value.to_ascii_lowercase();
            close = value.split(',').any(|option| option.trim() == "close")
                || (close && !value.split(',').any(|option| option.trim() == "keep-alive"));
        }
    }
    let body = if chunked {
        read_chunks(reader).await?
    } else if let Some(length) = length {
        if length > MAX_BODY {
            return Err(Failure::Malformed(format!("a body of {length} bytes")));
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await.map_err(Failure::Io)?;
        body
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else {
        // Neither a length nor chunks: the body runs to the end of the connection.
        close = true;
        let mut body = Vec::new();
        reader.take(MAX_BODY as u64 + 1).read_to_end(&mut body).await.map_err(Failure::Io)?;
        if body.len() > MAX_BODY {
            return Err(Failure::Malformed("a body longer than 16 MiB".to_owned()));
        }
        body
    };
    Ok(HttpResponse { status, body, close })
}

async fn read_chunks<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if read_line(reader, &mut line).await.map_err(Failure::Io)? == 0 {
            return Err(Failure::Malformed("the connection closed inside a chunked body".to_owned()));
        }
        let text = String::from_utf8_lossy(&line);
        let size_text = text.trim_end().split(';').next().unwrap_or("").trim().to_owned();
        let size = usize::from_str_radix(&size_text, 16)
            .map_err(|_| Failure::Malformed(format!("bad chunk size {size_text:?}")))?;
        if size == 0 {
            // Trailers, if any, up to the empty line.
            loop {
                line.clear();
                if read_line(reader, &mut line).await.map_err(Failure::Io)? == 0
                    || line.iter().all(|byte| byte.is_ascii_whitespace())
                {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(Failure::Malformed("a body longer than 16 MiB".to_owned()));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).await.map_err(Failure::Io)?;
        let mut end = [0u8; 2];
        reader.read_exact(&mut end).await.map_err(Failure::Io)?;
        if &end != b"\r\n" {
            return Err(Failure::Malformed("a chunk not followed by CRLF".to_owned()));
        }
    }
}

/// Reads one line (up to and including `\n`) of at most [`MAX_LINE`] bytes.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R, line: &mut Vec<u8>) -> std::io::Result<usize> {
    let read = (&mut *reader).take(MAX_LINE as u64).read_until(b'\n', line).await?;
    if read == MAX_LINE && line.last() != Some(&b'\n') {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "a header line longer than 16 KiB"));
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn parse(bytes: &[u8]) -> Result<HttpResponse, Failure> {
        let mut reader = bytes;
        read_response(&mut reader).await
    }

    #[tokio::test]
    async fn bodies_are_read_by_length_by_chunks_or_to_the_end() {
        let plain = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}trailing").await.expect("plain");
        assert_eq!(plain, HttpResponse { status: 200, body: b"{}".to_vec(), close: false });
        let chunked = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                        3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n";
        let chunked = parse(chunked).await.expect("chunked");
        assert_eq!(chunked, HttpResponse { status: 503, body: b"abcde".to_vec(), close: true });
        let to_the_end = parse(b"HTTP/1.0 200 OK\r\n\r\nall of it").await.expect("to the end");
        assert_eq!(to_the_end, HttpResponse { status: 200, body: b"all of it".to_vec(), close: true });
        assert!(matches!(parse(b"").await, Err(Failure::Unanswered(_))));
        assert!(matches!(parse(b"garbage\r\n\r\n").await, Err(Failure::Malformed(_))));
        assert!(matches!(parse(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{}").await, Err(Failure::Io(_))));
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").await.is_err());
    }

    #[test]
    fn gifts_are_written_as_the_api_reads_them() {
        let gift = Gift { id: 7, pk_id: None, receiver: 2, sender: 3, beans: 10, sender_profile: None };
        assert_eq!(
            serde_json::to_value(&gift).expect("json"),
            serde_json::json!({"id": 7, "receiver": 2, "sender": 3, "beans": 10})
        );
        let profiled = Gift { pk_id: Some(19), sender_profile: Some(SenderProfile::default()), ..gift };
        let value = serde_json::to_value(&profiled).expect("json");
        assert_eq!(value["pkId"], 19);
        assert_eq!(value["senderProfile"]["nickname"], "");
    }

    /// A stand-in gift API on loopback that answers every request on a connection with a
    /// batch answer, and counts the connections it accepted.
    async fn stand_in() -> (String, tokio::sync::watch::Receiver<u32>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let (accepted, watch) = tokio::sync::watch::channel(0u32);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.send_modify(|count| *count += 1);
                tokio::spawn(async move {
                    let mut reader = BufReader::new(stream);
                    loop {
                        let mut length = 0;
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line.trim().is_empty() {
                                break;
                            }
                            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                                length = value.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; length];
                        if reader.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        let request: Value = serde_json::from_slice(&body).unwrap_or_default();
                        let entries: Vec<Value> = request["gifts"]
                            .as_array()
                            .map(|gifts| {
                                gifts
                                    .iter()
                                    .map(|gift| {
                                        serde_json::json!({"id": gift["id"], "code": "000000",
                                    "desc": "Success!", "pkId": 1, "duplicate": false, "sideBeans": gift["beans"]})
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        let answer =
                            serde_json::json!({"code": "000000", "desc": "Success!", "result": entries}).to_string();
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                        if reader.get_mut().write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (address, watch)
    }

    #[tokio::test]
    async fn requests_share_one_kept_connection() {
        let (address, accepted) = stand_in().await;
        let mut client = GiftClient::new(address, "token-0123456789abcdef");
        for id in 1..=20u64 {
            let gifts = [Gift { id, pk_id: None, receiver: 2, sender: 3, beans: id as i64, sender_profile: None }];
            let reply = client.send_batch(&gifts).await.expect("answer");
            assert_eq!(reply.entries.len(), 1);
            assert_eq!(reply.entries[0].side_beans, Some(id as i64));
        }
        assert_eq!(client.connections_opened(), 1);
        assert_eq!(*accepted.borrow(), 1);
        // A connection dropped in between is replaced without the caller seeing it.
        client.disconnect();
        let gifts = [Gift { id: 99, pk_id: None, receiver: 2, sender: 3, beans: 1, sender_profile: None }];
        assert_eq!(client.send_batch(&gifts).await.expect("answer").code, "000000");
        assert_eq!(client.connections_opened(), 2);
    }

    #[tokio::test]
    async fn a_node_that_is_not_there_is_an_io_error() {
        let mut client = GiftClient::new("127.0.0.1:1", "token").with_timeout(Duration::from_secs(2));
        let gift = Gift { id: 1, pk_id: None, receiver: 2, sender: 3, beans: 1, sender_profile: None };
        assert!(matches!(client.send(&gift).await, Err(GiftError::Io { .. })));
    }
}
