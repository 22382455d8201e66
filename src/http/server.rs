//! Serving a router on a listener, hardened against clients that hold connections open:
//!
//! - at most [`ServeOptions::max_connections`] connections at once; a connection past the
//!   limit is closed at once, so the ones already established keep being served;
//! - a request's head must arrive within [`ServeOptions::header_timeout`] (which also ends
//!   a keep-alive connection idle that long): a client that sends half a request and waits
//!   holds its connection for that long at most;
//! - on shutdown, connections finish the request under way and close;
//! - with TLS, the handshake too must end within the header timeout, and each new
//!   connection uses the certificate in force (reloaded from its files).
//!
//! WebSocket upgrades leave the HTTP connection (and its limits) once upgraded; the
//! gateway bounds sessions itself.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::tls::Reloading;

/// How a listener serves its connections.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Connections served at once.
    pub max_connections: usize,
    /// The longest a request's head (or a TLS handshake) may take to arrive, and a
    /// keep-alive connection may stay idle.
    pub header_timeout: Duration,
    /// HTTPS (and `wss://`) with this certificate; plain HTTP without.
    pub tls: Option<Arc<Reloading>>,
}

impl ServeOptions {
    /// The client listener: many app clients and the gift service.
    pub fn client(tls: Option<Arc<Reloading>>) -> ServeOptions {
        ServeOptions { max_connections: 50_000, header_timeout: Duration::from_secs(20), tls }
    }

    /// The admin listener: a few operators and scrapers.
    pub fn admin(tls: Option<Arc<Reloading>>) -> ServeOptions {
        ServeOptions { max_connections: 256, header_timeout: Duration::from_secs(20), tls }
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets the requests
/// under way finish and returns.
pub async fn serve(listener: TcpListener, router: Router, options: ServeOptions, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let connections = TaskTracker::new();
    let address = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, most likely: wait a moment rather than spin.
                tracing::warn!(?address, %error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(?address, %peer, "connection limit reached: connection closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let shutdown = shutdown.clone();
        let timeout = options.header_timeout;
        let tls = options.tls.as_ref().map(|tls| TlsAcceptor::from(tls.current()));
        connections.spawn(async move {
            match tls {
                None => serve_one(stream, router, timeout, shutdown).await,
                Some(acceptor) => match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve_one(stream, router, timeout, shutdown).await,
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
            drop(slot);
        });
    }
    connections.close();
    connections.wait().await;
}

/// Serves the requests of one connection until it closes or `shutdown`.
async fn serve_one<S>(stream: S, router: Router, header_timeout: Duration, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let router = router.clone();
        async move { router.oneshot(request.map(axum::body::Body::new)).await }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = served {
        tracing::debug!(%error, "connection ended with an error");
    }
}
