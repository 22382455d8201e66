//! The node-to-node transport over real loopback sockets.

use pkd::transport::{Handler, Peers, TransportError, serve};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Echoes requests; group 9 answers slowly, kind 255 fails.
struct Echo;

impl Handler for Echo {
    async fn handle(&self, from: u64, group: u64, kind: u8, body: Vec<u8>) -> Result<Vec<u8>, String> {
        if group == 9 {
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        if kind == 255 {
            return Err(format!("kind {kind} refused"));
        }
        let mut reply = format!("from={from} group={group} kind={kind} ").into_bytes();
        reply.extend(body);
        Ok(reply)
    }
}

async fn start(secret: &str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(serve(listener, Arc::new(secret.as_bytes().to_vec()), Arc::new(Echo)));
    (addr, task)
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn requests_are_answered_and_errors_travel_back() {
    let (addr, _server) = start("s3cret").await;
    let peers = Peers::new(1, Arc::new(b"s3cret".to_vec()));
    let reply = peers.call(2, addr, 4, 7, b"hello".to_vec(), WAIT).await.unwrap();
    assert_eq!(reply, b"from=1 group=4 kind=7 hello");
    let err = peers.call(2, addr, 4, 255, Vec::new(), WAIT).await.unwrap_err();
    assert!(matches!(err, TransportError::Remote { node: 2, ref message } if message == "kind 255 refused"), "{err}");
}

#[tokio::test]
async fn a_slow_group_does_not_hold_up_another_on_the_same_connection() {
    let (addr, _server) = start("s3cret").await;
    let peers = Arc::new(Peers::new(1, Arc::new(b"s3cret".to_vec())));
    // Warm the connection so both requests share it.
    peers.call(2, addr, 0, 0, Vec::new(), WAIT).await.unwrap();
    let slow_peers = peers.clone();
    let slow = tokio::spawn(async move { slow_peers.call(2, addr, 9, 1, Vec::new(), WAIT).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fast = peers.call(2, addr, 1, 1, Vec::new(), WAIT).await.unwrap();
    assert_eq!(fast, b"from=1 group=1 kind=1 ");
    assert!(!slow.is_finished(), "the fast reply must overtake the slow one");
    assert_eq!(slow.await.unwrap().unwrap(), b"from=1 group=9 kind=1 ");
}

#[tokio::test]
async fn a_wrong_secret_is_refused_before_any_request_is_served() {
    let (addr, _server) = start("s3cret").await;
    let intruder = Peers::new(1, Arc::new(b"guess".to_vec()));
    let err = intruder.call(2, addr, 0, 0, b"x".to_vec(), Duration::from_secs(2)).await.unwrap_err();
    assert!(matches!(err, TransportError::Closed(2) | TransportError::Timeout(2)), "{err}");
}

#[tokio::test]
async fn a_restarted_peer_is_dialled_again() {
    let (addr, server) = start("s3cret").await;
    let peers = Peers::new(1, Arc::new(b"s3cret".to_vec()));
    peers.call(2, addr, 0, 0, Vec::new(), WAIT).await.unwrap();
    server.abort();
    let _ = server.await;
    // Stopping the server closed its connections: the next call must dial again.
    let err = peers.call(2, addr, 3, 3, Vec::new(), Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(err, TransportError::Closed(2) | TransportError::Unreachable { .. }), "{err}");
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => break listener,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let _server = tokio::spawn(serve(listener, Arc::new(b"s3cret".to_vec()), Arc::new(Echo)));
    let started = Instant::now();
    let reply = loop {
        match peers.call(2, addr, 3, 3, Vec::new(), Duration::from_secs(1)).await {
            Ok(reply) => break reply,
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                tracing::debug!("retrying after {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("never reconnected: {e}"),
        }
    };
    assert_eq!(reply, b"from=1 group=3 kind=3 ");
}

#[tokio::test]
async fn an_unreachable_peer_is_reported() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let peers = Peers::new(1, Arc::new(b"s3cret".to_vec()));
    let err = peers.call(5, addr, 0, 0, Vec::new(), WAIT).await.unwrap_err();
    assert!(matches!(err, TransportError::Unreachable { node: 5, .. }), "{err}");
}
