//! A typed client for the admin API of one node.
//!
//! It speaks just enough HTTP/1.1 for the admin API: one request per connection
//! (`Connection: close`), a JSON body, and a response read to its end, in the clear or
//! over TLS (an admin listener started with `--tls-cert`). This keeps the dependencies
//! down to tokio, rustls and serde_json.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stream::Stream;

use crate::api::{
    AbortReply, AddLearnerRequest, AuditList, ClusterStatus, ConfigCheck, ConfigReply, ConfigRequest, ConfigRows,
    ErrorReply, FaultSettings, InitRequest, LeaderReply, LobbyView, MembershipReply, NodeId, NodeRequest, NodeStatus,
    OPERATOR_HEADER, PkEntry, PkList, StateDigests, TransferLeaderRequest,
};

/// The longest a response may be.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;
/// The longest backup file a node may send.
pub const MAX_BACKUP: usize = 4 * 1024 * 1024 * 1024;

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to or talking with {address}: {source}")]
    Io { address: String, source: std::io::Error },
    #[error("no answer from {0} in time")]
    Timeout(String),
    #[error("malformed HTTP response: {0}")]
    Malformed(String),
    #[error("the node answered {status}: {message}")]
    Refused { status: u16, message: String },
}

/// The admin API of one node.
#[derive(Clone, Debug)]
pub struct AdminClient {
    address: String,
    token: String,
    timeout: Duration,
    /// Sent as the operator of every request, for the audit log.
    operator: Option<String>,
    /// HTTPS with this configuration (the CAs it trusts); plain HTTP without.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl AdminClient {
    /// A client for the node whose admin API listens on `address` ("host:port").
    pub fn new(address: impl Into<String>, token: impl Into<String>) -> AdminClient {
        AdminClient {
            address: address.into(),
            token: token.into(),
            timeout: Duration::from_secs(60),
            operator: None,
            tls: None,
        }
    }

    /// The same client, speaking HTTPS with `config` (whose roots must include the CA
    /// that signed the node's certificate).
    pub fn with_tls(mut self, config: Arc<rustls::ClientConfig>) -> AdminClient {
        self.tls = Some(config);
        self
    }

    /// The same client, naming `operator` as the one who acts (the audit log's `who`).
    pub fn with_operator(mut self, operator: impl Into<String>) -> AdminClient {
        // A header holds no line breaks: control characters are left out.
        self.operator = Some(operator.into().chars().filter(|c| !c.is_control()).collect());
        self
    }

    /// The same client, giving up on a request after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> AdminClient {
        self.timeout = timeout;
        self
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// `GET /admin/status`.
    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        self.call("GET", "/admin/status", None::<&()>).await
    }

    /// `GET /admin/digest`: a digest of each group's replicated state on this node.
    pub async fn digest(&self) -> Result<StateDigests, ClientError> {
        self.call("GET", "/admin/digest", None::<&()>).await
    }

    /// `POST /admin/faults`: injects faults on this node (fault-injection builds only).
    pub async fn set_faults(&self, settings: &FaultSettings) -> Result<FaultSettings, ClientError> {
        self.call("POST", "/admin/faults", Some(settings)).await
    }

    /// `GET /admin/cluster`: every node's report, gathered by this node.
    pub async fn cluster(&self) -> Result<ClusterStatus, ClientError> {
        self.call("GET", "/admin/cluster", None::<&()>).await
    }

    /// `GET /admin/pks`: the running PKs.
    pub async fn pks(&self) -> Result<PkList, ClientError> {
        self.call("GET", "/admin/pks", None::<&()>).await
    }

    /// `GET /admin/pks/{pk}`: one running PK.
    pub async fn pk(&self, pk: u64) -> Result<PkEntry, ClientError> {
        self.call("GET", &format!("/admin/pks/{pk}"), None::<&()>).await
    }

    /// `POST /admin/pks/{pk}/abort`: ends the PK abnormally.
    pub async fn abort_pk(&self, pk: u64) -> Result<AbortReply, ClientError> {
        self.call("POST", &format!("/admin/pks/{pk}/abort"), None::<&()>).await
    }

    /// `GET /admin/lobby`.
    pub async fn lobby(&self) -> Result<LobbyView, ClientError> {
        self.call("GET", "/admin/lobby", None::<&()>).await
    }

    /// `GET /admin/config`: the `t_config` rows.
    pub async fn config_rows(&self) -> Result<ConfigRows, ClientError> {
        self.call("GET", "/admin/config", None::<&()>).await
    }

    /// `POST /admin/config/check`: checks a value without setting it.
    pub async fn check_config(&self, key: &str, value: &str) -> Result<ConfigCheck, ClientError> {
        let request = ConfigRequest { key: key.to_owned(), value: value.to_owned() };
        self.call("POST", "/admin/config/check", Some(&request)).await
    }

    /// `GET /admin/audit?after={after}`: the audit entries after `after` (0: all).
    pub async fn audit(&self, after: u64) -> Result<AuditList, ClientError> {
        self.call("GET", &format!("/admin/audit?after={after}"), None::<&()>).await
    }

    /// `POST /admin/groups/{group}/transfer-leader`.
    pub async fn transfer_leader(&self, group: u64, to: NodeId) -> Result<LeaderReply, ClientError> {
        let path = format!("/admin/groups/{group}/transfer-leader");
        self.call("POST", &path, Some(&TransferLeaderRequest { to })).await
    }

    /// `POST /admin/drain`: drains node `node` and stops it (this node, or another that
    /// this node asks over the cluster's network).
    pub async fn drain(&self, node: NodeId) -> Result<NodeRequest, ClientError> {
        self.call("POST", "/admin/drain", Some(&NodeRequest { node })).await
    }

    /// `POST /admin/balance`: clears every group's leader placement.
    pub async fn balance(&self) -> Result<MembershipReply, ClientError> {
        self.call("POST", "/admin/balance", None::<&()>).await
    }

    /// `POST /admin/init`.
    pub async fn init(&self, request: &InitRequest) -> Result<MembershipReply, ClientError> {
        self.call("POST", "/admin/init", Some(request)).await
    }

    /// `POST /admin/learners`.
    pub async fn add_learner(&self, node: NodeId, addr: impl Into<String>) -> Result<MembershipReply, ClientError> {
        self.call("POST", "/admin/learners", Some(&AddLearnerRequest { node, addr: addr.into() })).await
    }

    /// `POST /admin/promote`.
    pub async fn promote(&self, node: NodeId) -> Result<MembershipReply, ClientError> {
        self.call("POST", "/admin/promote", Some(&NodeRequest { node })).await
    }

    /// `POST /admin/remove`.
    pub async fn remove(&self, node: NodeId) -> Result<MembershipReply, ClientError> {
        self.call("POST", "/admin/remove", Some(&NodeRequest { node })).await
    }

    /// `POST /admin/config`.
    pub async fn set_config(&self, key: &str, value: &str) -> Result<ConfigReply, ClientError> {
        self.call("POST", "/admin/config", Some(&ConfigRequest { key: key.to_owned(), value: value.to_owned() })).await
    }

    /// `GET /admin/backup`: the bytes of a backup file of every group.
    pub async fn backup(&self) -> Result<Vec<u8>, ClientError> {
        self.answered("GET", "/admin/backup", &[], MAX_BACKUP).await
    }

    /// Sends one request and decodes a 2xx answer as `T`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = match body {
            Some(body) => serde_json::to_vec(body).map_err(|error| ClientError::Malformed(error.to_string()))?,
            None => Vec::new(),
        };
        let body = self.answered(method, path, &body, MAX_RESPONSE).await?;
        serde_json::from_slice(&body).map_err(|error| ClientError::Malformed(format!("body: {error}")))
    }

    /// The body of a 2xx answer to one request, within the client's timeout.
    async fn answered(&self, method: &str, path: &str, body: &[u8], limit: usize) -> Result<Vec<u8>, ClientError> {
        let exchange = self.exchange(method, path, body, limit);
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(self.address.clone()))??;
        if !(200..300).contains(&status) {
            return Err(refusal(status, &body));
        }
        Ok(body)
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        limit: usize,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let io = |source| ClientError::Io { address: self.address.clone(), source };
        let stream = TcpStream::connect(&self.address).await.map_err(io)?;
        let stream = Stream::over(stream, &self.address, self.tls.as_ref()).await.map_err(io)?;
        self.over(stream, method, path, body, limit).await
    }

    /// One request and its response over `stream`.
    async fn over<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: S,
        method: &str,
        path: &str,
        body: &[u8],
        limit: usize,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let io = |source| ClientError::Io { address: self.address.clone(), source };
        let operator = match &self.operator {
            Some(operator) => format!("{OPERATOR_HEADER}: {operator}\r\n"),
            None => String::new(),
        };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n{operator}Content-Type: \
             application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.address,
            self.token,
            body.len()
        );
        stream.write_all(head.as_bytes()).await.map_err(io)?;
        stream.write_all(body).await.map_err(io)?;
        stream.flush().await.map_err(io)?;
        let mut response = Vec::new();
        // A TLS peer may close without a close_notify once it has answered: what was read
        // stands if it holds a whole response.
        let read = (&mut stream).take(limit as u64 + 1).read_to_end(&mut response).await;
        if let Err(error) = read
            && (self.tls.is_none() || response.is_empty())
        {
            return Err(io(error));
        }
        if response.len() > limit {
            return Err(ClientError::Malformed("response too long".to_owned()));
        }
        parse_response(&response)
    }
}

/// A refusal's message: the JSON error's, or the body itself.
fn refusal(status: u16, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<ErrorReply>(body)
        .map(|reply| reply.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
    ClientError::Refused { status, message }
}

/// Splits an HTTP/1.1 response into its status and body (plain or chunked).
fn parse_response(response: &[u8]) -> Result<(u16, Vec<u8>), ClientError> {
    let malformed = |what: &str| ClientError::Malformed(what.to_owned());
    let end = response.windows(4).position(|window| window == b"\r\n\r\n").ok_or_else(|| malformed("no header end"))?;
    let head = std::str::from_utf8(&response[..end]).map_err(|_| malformed("header is not UTF-8"))?;
    let body = &response[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| malformed("no status line"))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| malformed("bad status line"))?;
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding") && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked { dechunk(body).ok_or_else(|| malformed("bad chunked body"))? } else { body.to_vec() };
    Ok((status, body))
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|window| window == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_chunked_bodies_are_read() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain).ok(), Some((200, b"{}".to_vec())));
        let chunked =
            b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).ok(), Some((401, b"abcde".to_vec())));
        assert!(parse_response(b"garbage").is_err());
    }
}
