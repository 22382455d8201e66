//! Node-to-node transport: one TCP connection per pair of nodes, carrying the
//! traffic of every raft group and pkd's own forwarded requests.
//!
//! Frames are a 4-byte big-endian length followed by a postcard-encoded [`Frame`].
//! A connection opens with a challenge: the listener sends a random nonce, the
//! dialer answers with its node id and HMAC-SHA256(cluster secret, nonce ‖ node id).
//! A wrong proof closes the connection before any request is read.
//!
//! Requests carry an id, and replies may come back in any order: the listener
//! handles each request in its own task. A slow group (a large snapshot, a slow
//! disk) therefore never holds up another group's heartbeats on the same
//! connection.
//!
//! The transport knows nothing of openraft: a request is a group id, a kind and
//! opaque bytes. The consensus module encodes raft messages into them.

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// Frames larger than this are refused (a snapshot is the largest thing sent).
pub const MAX_FRAME_BYTES: usize = 256 * 1024 * 1024;
/// Requests waiting for a connection's writer; past this, senders wait.
const OUTBOUND_QUEUE: usize = 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const PROTOCOL_TAG: &[u8] = b"pkd-cluster-v1";

pub type NodeId = u64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Frame {
    /// Listener → dialer: prove you know the secret.
    Challenge {
        nonce: [u8; 32],
    },
    /// Dialer → listener.
    Hello {
        node: NodeId,
        proof: Vec<u8>,
    },
    Request {
        id: u64,
        group: u64,
        kind: u8,
        body: Vec<u8>,
    },
    Reply {
        id: u64,
        result: Result<Vec<u8>, String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot reach node {node} at {addr}: {source}")]
    Unreachable { node: NodeId, addr: SocketAddr, source: std::io::Error },
    #[error("connection to node {0} closed")]
    Closed(NodeId),
    #[error("node {0} did not answer in time")]
    Timeout(NodeId),
    #[error("node {node} refused the request: {message}")]
    Remote { node: NodeId, message: String },
    #[error("cluster handshake failed: {0}")]
    Handshake(String),
    #[error("frame error: {0}")]
    Frame(String),
}

/// What a node does with requests from its peers.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request; the error string travels back to the caller.
    fn handle(
        &self,
        from: NodeId,
        group: u64,
        kind: u8,
        body: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, String>> + Send;
}

fn proof(secret: &[u8], nonce: &[u8; 32], node: NodeId) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(PROTOCOL_TAG);
    mac.update(nonce);
    mac.update(&node.to_be_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn proof_is_valid(secret: &[u8], nonce: &[u8; 32], node: NodeId, offered: &[u8]) -> bool {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(PROTOCOL_TAG);
    mac.update(nonce);
    mac.update(&node.to_be_bytes());
    mac.verify_slice(offered).is_ok()
}

async fn write_frame<W: AsyncWriteExt + Unpin>(writer: &mut W, frame: &Frame) -> Result<(), TransportError> {
    let body = postcard::to_stdvec(frame).map_err(|e| TransportError::Frame(e.to_string()))?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(TransportError::Frame(format!("frame of {} bytes is over the limit", body.len())));
    }
    let mut buffer = Vec::with_capacity(4 + body.len());
    buffer.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buffer.extend_from_slice(&body);
    writer.write_all(&buffer).await.map_err(|e| TransportError::Frame(e.to_string()))
}

async fn read_frame<R: AsyncReadExt + Unpin>(reader: &mut R) -> Result<Frame, TransportError> {
    let mut length = [0u8; 4];
    reader.read_exact(&mut length).await.map_err(|e| TransportError::Frame(e.to_string()))?;
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_FRAME_BYTES {
        return Err(TransportError::Frame(format!("peer announced a frame of {length} bytes")));
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await.map_err(|e| TransportError::Frame(e.to_string()))?;
    postcard::from_bytes(&body).map_err(|e| TransportError::Frame(e.to_string()))
}

/// Accepts peers' connections and serves their requests with `handler`.
/// Runs until dropped; dropping it (or aborting its task) closes every connection it
/// accepted, as a process exit would.
pub async fn serve<H: Handler>(listener: TcpListener, secret: Arc<Vec<u8>>, handler: Arc<H>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "cluster listener accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let secret = secret.clone();
        let handler = handler.clone();
        connections.spawn(async move {
            if let Err(e) = serve_connection(stream, &secret, handler).await {
                tracing::debug!(%addr, error = %e, "cluster connection ended");
            }
        });
    }
}

async fn serve_connection<H: Handler>(stream: TcpStream, secret: &[u8], handler: Arc<H>) -> Result<(), TransportError> {
    stream.set_nodelay(true).ok();
    let (mut reader, mut writer) = stream.into_split();
    let nonce: [u8; 32] = rand::random();
    write_frame(&mut writer, &Frame::Challenge { nonce }).await?;
    let hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut reader))
        .await
        .map_err(|_| TransportError::Handshake("no hello in time".into()))??;
    let from = match hello {
        Frame::Hello { node, proof } if proof_is_valid(secret, &nonce, node, &proof) => node,
        Frame::Hello { node, .. } => {
            tracing::warn!(node, "peer failed the cluster secret check");
            return Err(TransportError::Handshake(format!("node {node} does not know the cluster secret")));
        }
        _ => return Err(TransportError::Handshake("expected hello".into())),
    };
    let (replies, mut outbound) = mpsc::channel::<Frame>(OUTBOUND_QUEUE);
    let writer_task = tokio::spawn(async move {
        while let Some(frame) = outbound.recv().await {
            if write_frame(&mut writer, &frame).await.is_err() {
                break;
            }
        }
    });
    // Handlers die with the connection (dropping the set aborts them).
    let mut in_flight = tokio::task::JoinSet::new();
    let result = loop {
        let frame = tokio::select! {
            frame = read_frame(&mut reader) => frame,
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => continue,
        };
        match frame {
            Ok(Frame::Request { id, group, kind, body }) => {
                let handler = handler.clone();
                let replies = replies.clone();
                in_flight.spawn(async move {
                    let result = handler.handle(from, group, kind, body).await;
                    // The connection may be gone; then the caller retries elsewhere.
                    let _ = replies.send(Frame::Reply { id, result }).await;
                });
            }
            Ok(_) => break Err(TransportError::Frame("unexpected frame from dialer".into())),
            Err(e) => break Err(e),
        }
    };
    writer_task.abort();
    result
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Vec<u8>, String>>>>>;

/// A live connection to one peer.
struct Link {
    requests: mpsc::Sender<Frame>,
    pending: Pending,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

/// Dials peers on demand and keeps one connection to each; a broken connection is
/// replaced on the next request.
pub struct Peers {
    me: NodeId,
    secret: Arc<Vec<u8>>,
    next_id: AtomicU64,
    links: tokio::sync::Mutex<HashMap<NodeId, Arc<Link>>>,
}

impl Peers {
    pub fn new(me: NodeId, secret: Arc<Vec<u8>>) -> Peers {
        Peers { me, secret, next_id: AtomicU64::new(1), links: tokio::sync::Mutex::new(HashMap::new()) }
    }

    /// Sends one request to `node` at `addr` and waits up to `timeout` for the reply.
    pub async fn call(
        &self,
        node: NodeId,
        addr: SocketAddr,
        group: u64,
        kind: u8,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let link = self.link(node, addr).await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, reply) = oneshot::channel();
        link.pending.lock().expect("pending map lock").insert(id, answer);
        let request = Frame::Request { id, group, kind, body };
        let sent = tokio::time::timeout(timeout, link.requests.send(request)).await;
        if !matches!(sent, Ok(Ok(()))) {
            link.pending.lock().expect("pending map lock").remove(&id);
            self.forget(node, &link).await;
            return Err(TransportError::Closed(node));
        }
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(Ok(body))) => Ok(body),
            Ok(Ok(Err(message))) => Err(TransportError::Remote { node, message }),
            Ok(Err(_)) => Err(TransportError::Closed(node)),
            Err(_) => {
                link.pending.lock().expect("pending map lock").remove(&id);
                Err(TransportError::Timeout(node))
            }
        }
    }

    async fn forget(&self, node: NodeId, link: &Arc<Link>) {
        let mut links = self.links.lock().await;
        if links.get(&node).is_some_and(|current| Arc::ptr_eq(current, link)) {
            links.remove(&node);
        }
    }

    async fn link(&self, node: NodeId, addr: SocketAddr) -> Result<Arc<Link>, TransportError> {
        let mut links = self.links.lock().await;
        if let Some(link) = links.get(&node)
            && !link.closed.load(Ordering::Acquire)
        {
            return Ok(link.clone());
        }
        let link = Arc::new(self.dial(node, addr).await?);
        links.insert(node, link.clone());
        Ok(link)
    }

    async fn dial(&self, node: NodeId, addr: SocketAddr) -> Result<Link, TransportError> {
        let connect = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr)).await;
        let stream = match connect {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(TransportError::Unreachable { node, addr, source }),
            Err(_) => return Err(TransportError::Timeout(node)),
        };
        stream.set_nodelay(true).ok();
        let (mut reader, mut writer) = stream.into_split();
        let challenge = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut reader))
            .await
            .map_err(|_| TransportError::Handshake("no challenge in time".into()))??;
        let Frame::Challenge { nonce } = challenge else {
            return Err(TransportError::Handshake("expected a challenge".into()));
        };
        write_frame(&mut writer, &Frame::Hello { node: self.me, proof: proof(&self.secret, &nonce, self.me) }).await?;

        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (requests, mut outbound) = mpsc::channel::<Frame>(OUTBOUND_QUEUE);
        let writer_closed = closed.clone();
        tokio::spawn(async move {
            while let Some(frame) = outbound.recv().await {
                if write_frame(&mut writer, &frame).await.is_err() {
                    break;
                }
            }
            writer_closed.store(true, Ordering::Release);
        });
        let reader_pending = pending.clone();
        let reader_closed = closed.clone();
        tokio::spawn(async move {
            while let Ok(frame) = read_frame(&mut reader).await {
                if let Frame::Reply { id, result } = frame
                    && let Some(waiter) = reader_pending.lock().expect("pending map lock").remove(&id)
                {
                    let _ = waiter.send(result);
                }
            }
            reader_closed.store(true, Ordering::Release);
            // Wake everyone still waiting on this connection: it is gone.
            reader_pending.lock().expect("pending map lock").clear();
        });
        Ok(Link { requests, pending, closed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_secret_nonce_and_node() {
        let nonce = [7u8; 32];
        let good = proof(b"secret", &nonce, 3);
        assert!(proof_is_valid(b"secret", &nonce, 3, &good));
        assert!(!proof_is_valid(b"other", &nonce, 3, &good));
        assert!(!proof_is_valid(b"secret", &[8u8; 32], 3, &good));
        assert!(!proof_is_valid(b"secret", &nonce, 4, &good));
    }
}
