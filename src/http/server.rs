//! Serving a router on a listener, hardened against clients that hold connections open:
//!
//! - at most [`ServeOptions::max_connections`] connections at once; a connection past the
//!   limit is closed at once, so the ones already established keep being served;
//! - a request's head must arrive within [`ServeOptions::header_timeout`] (which also ends
//!   a keep-alive connection idle that long): a client that sends half a request and waits
//!   holds its connection for that long at most;
//! - on shutdown, connections finish the request under way and close.
//!
//! WebSocket upgrades leave the HTTP connection (and its limits) once upgraded; the
//! gateway bounds sessions itself.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How a listener serves its connections.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// Connections served at once.
    pub max_connections: usize,
    /// The longest a request's head may take to arrive, and a keep-alive connection may
    /// stay idle.
    pub header_timeout: Duration,
}

impl ServeOptions {
    /// The client listener: many app clients and the gift service.
    pub fn client() -> ServeOptions {
        ServeOptions { max_connections: 50_000, header_timeout: Duration::from_secs(20) }
    }

    /// The admin listener: a few operators and scrapers.
    pub fn admin() -> ServeOptions {
        ServeOptions { max_connections: 256, header_timeout: Duration::from_secs(20) }
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
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let router = router.clone();
                async move { router.oneshot(request.map(axum::body::Body::new)).await }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(options.header_timeout)
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
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop(slot);
        });
    }
    connections.close();
    connections.wait().await;
}

/// Raises this process's open-file limit to its hard limit: every connection holds a file
/// descriptor, and the usual soft limit (1,024) is far below what a node serves. Returns
/// the limit in force.
pub fn raise_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return None;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit = raised;
                }
            }
        }
        Some(limit.rlim_cur)
    }
    #[cfg(not(unix))]
    None
}
