//! The handshake that opens every node-to-node connection.
//!
//! Every node of a cluster holds the same secret. The dialer sends a random nonce, the
//! acceptor answers with its own nonce and an HMAC-SHA256 over both nonces, and the dialer
//! proves itself the same way; nobody sends the secret, and a replayed handshake fails
//! because the other side's nonce is new. Until both proofs check out, nothing else is read.
//!
//! What an unauthenticated peer can make a node hold is small: handshake frames are at most
//! [`MAX_HANDSHAKE_FRAME`] bytes, read exactly (no read-ahead), and the whole handshake must
//! end within [`HANDSHAKE_TIMEOUT`].

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::wire::{decode, encode};
use super::{NetworkConfig, NodeStream};
use crate::replication::consensus::NodeId;

/// How long a handshake may take.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest handshake frame: a hello carries the cluster's name and a nonce, the others
/// a nonce and a proof.
pub const MAX_HANDSHAKE_FRAME: usize = 1024;

type HmacSha256 = Hmac<Sha256>;
type Nonce = [u8; 32];

#[derive(Debug, Serialize, Deserialize)]
enum Handshake {
    Hello { cluster: String, node: NodeId, nonce: Nonce },
    Welcome { node: NodeId, nonce: Nonce, proof: Vec<u8> },
    Proof { proof: Vec<u8> },
}

/// Dials `address` from `source` (see [`connect`]) and shakes hands as `config`'s node
/// (over TLS first, if the cluster uses it: the peer's certificate must come from the
/// cluster's CA); returns the peer's id.
pub(super) async fn dial(
    config: &NetworkConfig,
    address: &str,
    source: Option<IpAddr>,
) -> io::Result<(NodeId, NodeStream)> {
    let shaking = async {
        let stream = connect(address, source).await?;
        stream.set_nodelay(true)?;
        match &config.tls {
            None => {
                let mut stream = stream;
                let peer = dialer_side(config, &mut stream).await?;
                Ok((peer, NodeStream::Plain(stream)))
            }
            Some(tls) => {
                let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
                let mut stream = TlsConnector::from(tls.client.clone()).connect(name, stream).await?;
                let peer = dialer_side(config, &mut stream).await?;
                Ok((peer, NodeStream::Tls(Box::new(stream.into()))))
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, shaking)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))?
}

/// Connects to `address` from `source`, the address this node's cluster listener is bound
/// to (when it is not a wildcard), so that a peer sees the connection come from the
/// address it knows this node by. Addresses of the other family, or a source that cannot
/// be bound, connect as the system chooses.
async fn connect(address: &str, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(source) = source else { return TcpStream::connect(address).await };
    let mut failed = None;
    for target in tokio::net::lookup_host(address).await? {
        if target.is_ipv4() != source.is_ipv4() {
            continue;
        }
        let socket = if target.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        if socket.bind(SocketAddr::new(source, 0)).is_err() {
            return TcpStream::connect(address).await;
        }
        match socket.connect(target).await {
            Ok(stream) => return Ok(stream),
            Err(error) => failed = Some(error),
        }
    }
    match failed {
        Some(error) => Err(error),
        None => TcpStream::connect(address).await,
    }
}

/// Shakes hands with a peer that dialed this node (over TLS first, if the cluster uses
/// it); returns its id.
pub(super) async fn accept(config: &NetworkConfig, stream: TcpStream) -> io::Result<(NodeId, NodeStream)> {
    stream.set_nodelay(true)?;
    let shaking = async {
        match &config.tls {
            None => {
                let mut stream = stream;
                let peer = acceptor_side(config, &mut stream).await?;
                Ok((peer, NodeStream::Plain(stream)))
            }
            Some(tls) => {
                let mut stream = TlsAcceptor::from(tls.server.current()).accept(stream).await?;
                let peer = acceptor_side(config, &mut stream).await?;
                Ok((peer, NodeStream::Tls(Box::new(stream.into()))))
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, shaking)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))?
}

async fn dialer_side<S: AsyncRead + AsyncWrite + Unpin>(config: &NetworkConfig, stream: &mut S) -> io::Result<NodeId> {
    let mine = nonce()?;
    let hello = Handshake::Hello { cluster: config.cluster.clone(), node: config.node_id, nonce: mine };
    send(stream, &hello).await?;
    let Handshake::Welcome { node, nonce, proof: acceptor_proof } = receive(stream).await? else {
        return Err(refused("expected a welcome"));
    };
    proof(&config.secret, b"acceptor", &mine, &nonce)
        .verify_slice(&acceptor_proof)
        .map_err(|_| refused("the peer does not know the cluster secret"))?;
    let answer =
        Handshake::Proof { proof: proof(&config.secret, b"dialer", &mine, &nonce).finalize().into_bytes().to_vec() };
    send(stream, &answer).await?;
    Ok(node)
}

async fn acceptor_side<S: AsyncRead + AsyncWrite + Unpin>(
    config: &NetworkConfig,
    stream: &mut S,
) -> io::Result<NodeId> {
    let Handshake::Hello { cluster, node, nonce: theirs } = receive(stream).await? else {
        return Err(refused("expected a hello"));
    };
    if cluster != config.cluster {
        return Err(refused(format!("peer is in cluster {cluster:?}")));
    }
    if node >= config.node_id {
        return Err(refused(format!("node {node} must wait for node {} to dial it", config.node_id)));
    }
    let mine = nonce()?;
    let welcome = Handshake::Welcome {
        node: config.node_id,
        nonce: mine,
        proof: proof(&config.secret, b"acceptor", &theirs, &mine).finalize().into_bytes().to_vec(),
    };
    send(stream, &welcome).await?;
    let Handshake::Proof { proof: dialer_proof } = receive(stream).await? else {
        return Err(refused("expected a proof"));
    };
    proof(&config.secret, b"dialer", &theirs, &mine)
        .verify_slice(&dialer_proof)
        .map_err(|_| refused("the peer does not know the cluster secret"))?;
    Ok(node)
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, message: &Handshake) -> io::Result<()> {
    let bytes = encode(message)?;
    let length = u32::try_from(bytes.len()).map_err(io::Error::other)?;
    stream.write_all(&length.to_be_bytes()).await?;
    stream.write_all(&bytes).await?;
    stream.flush().await
}

/// Reads exactly one handshake frame: nothing after it is taken from the socket.
async fn receive<T: DeserializeOwned, S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<T> {
    let length = stream.read_u32().await? as usize;
    if length > MAX_HANDSHAKE_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("handshake frame of {length} bytes announced, over {MAX_HANDSHAKE_FRAME}"),
        ));
    }
    let mut bytes = vec![0; length];
    stream.read_exact(&mut bytes).await?;
    decode(&bytes)
}

fn nonce() -> io::Result<Nonce> {
    let mut nonce = [0; 32];
    getrandom::fill(&mut nonce).map_err(|error| io::Error::other(error.to_string()))?;
    Ok(nonce)
}

/// HMAC over the role and both nonces: the two sides' proofs differ, and both are new
/// for every connection.
fn proof(secret: &[u8], role: &[u8], dialer: &Nonce, acceptor: &Nonce) -> HmacSha256 {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(role);
    mac.update(dialer);
    mac.update(acceptor);
    mac
}

fn refused(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, message.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tokio::net::TcpListener;

    fn config(node_id: NodeId, secret: &[u8]) -> NetworkConfig {
        NetworkConfig::new(node_id, "test", secret, BTreeMap::new())
    }

    async fn pair(
        dialer_secret: &[u8],
        acceptor_secret: &[u8],
    ) -> io::Result<(io::Result<NodeId>, io::Result<NodeId>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let acceptor = config(2, acceptor_secret);
        let dialer = config(1, dialer_secret);
        let accepting = tokio::spawn(async move {
            let (stream, _) = listener.accept().await?;
            accept(&acceptor, stream).await.map(|(peer, _)| peer)
        });
        let dialed = dial(&dialer, &address.to_string(), None).await.map(|(peer, _)| peer);
        let accepted = accepting.await.map_err(io::Error::other)?;
        Ok((dialed, accepted))
    }

    #[tokio::test]
    async fn nodes_with_the_same_secret_shake_hands() -> io::Result<()> {
        let (dialed, accepted) = pair(b"s3cret", b"s3cret").await?;
        assert_eq!(dialed?, 2);
        assert_eq!(accepted?, 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_on_both_sides() -> io::Result<()> {
        let (dialed, accepted) = pair(b"guess", b"s3cret").await?;
        assert_eq!(dialed.map_err(|error| error.kind()), Err(io::ErrorKind::PermissionDenied));
        assert!(accepted.is_err());
        Ok(())
    }

    #[tokio::test]
    async fn a_node_dials_from_the_address_it_listens_on() -> io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let from_three = connect(&address, Some("127.0.0.3".parse().unwrap())).await?;
        let (_, seen) = listener.accept().await?;
        assert_eq!(seen.ip().to_string(), "127.0.0.3");
        assert_eq!(from_three.local_addr()?.ip().to_string(), "127.0.0.3");
        // Another family than the target's: the system picks.
        let _unbound = connect(&address, Some("::1".parse().unwrap())).await?;
        let (_, seen) = listener.accept().await?;
        assert_eq!(seen.ip().to_string(), "127.0.0.1");
        Ok(())
    }

    #[tokio::test]
    async fn an_oversized_handshake_frame_is_refused_before_it_is_read() -> io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let accepting = tokio::spawn(async move {
            let (stream, _) = listener.accept().await?;
            accept(&config(2, b"s3cret"), stream).await.map(|(peer, _)| peer)
        });
        let mut stream = TcpStream::connect(address).await?;
        // Announces 64 MiB; the acceptor must refuse at once, without waiting for the bytes.
        stream.write_all(&(64u32 << 20).to_be_bytes()).await?;
        let refused = tokio::time::timeout(Duration::from_secs(1), accepting).await.map_err(io::Error::other)?;
        let error = refused.map_err(io::Error::other)?.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        Ok(())
    }
}
