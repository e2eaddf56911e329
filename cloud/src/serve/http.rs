//! The API's HTTP server: our own accept loop over hyper, with TLS, timeouts and a
//! connection cap.
//!
//! ```text
//!  accept ─► slot free? ── no ──► close at once (counted, logged at most once a second)
//!              │ yes (permit held for the connection's life)
//!              ▼
//!   [TLS handshake, within the header timeout]
//!              ▼
//!   hyper HTTP/1.1: each request head must arrive within the header timeout, counted from
//!   the moment the connection waits for it, so the timer also ends idle keep-alive
//!   connections and slowloris clients
//!              ▼
//!   axum router ─► response; on shutdown: graceful (in-flight requests finish)
//!   (whole time: no byte moved for the stall timeout ─► closed, e.g. a client that stopped
//!   reading its answer)
//! ```
//!
//! `axum::serve` has no header timeout and no connection cap, and cannot speak TLS, which is
//! why this loop exists (ARCHITECTURE.md, "The API's security"). Without a cap, each stalled
//! client holds a file descriptor until its timeout; a flood of them would exhaust the
//! process's descriptors (soft limit often 1,024) and every later accept would fail, so the
//! cap sits well below that and the excess is closed right after accept.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::stall::Watched;
use crate::shutdown::Shutdown;

/// How long the loop waits after a failed accept (e.g. out of file descriptors) before the
/// next, so that it does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// How long in-flight requests get to finish on shutdown.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Longest wait for a request head (and, on a keep-alive connection, for the next one).
    pub header_timeout: Duration,
    /// Most connections served at once; more are closed right after accept.
    pub max_connections: usize,
    /// A connection that moves no byte for this long (e.g. a client that stopped reading
    /// its answer) is closed ([`super::stall`]).
    pub stall_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            max_connections: 512,
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, then lets in-flight requests finish (up
/// to a few seconds).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: HttpLimits,
    mut shutdown: Shutdown,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let refused = AtomicU64::new(0);
    let mut last_refusal_log = Instant::now() - Duration::from_secs(1);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed; pausing");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Dropping the stream closes it: the client sees the connection end at once.
            drop(stream);
            let total = refused.fetch_add(1, Ordering::Relaxed) + 1;
            if last_refusal_log.elapsed() >= Duration::from_secs(1) {
                last_refusal_log = Instant::now();
                tracing::warn!(
                    max_connections = limits.max_connections,
                    refused_total = total,
                    "http connection cap reached; closing new connections"
                );
            }
            continue;
        };
        let (router, tls, limits) = (router.clone(), tls.clone(), limits.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => connection(stream, peer, router, &limits, watcher).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await;
                    match handshake {
                        Ok(Ok(tls_stream)) => {
                            connection(tls_stream, peer, router, &limits, watcher).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "tls handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = %peer, "tls handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_s = DRAIN_GRACE.as_secs(),
            "http connections still open after the grace period; closing them"
        );
    }
}

/// Serves one connection (plain or TLS) with hyper's HTTP/1.1.
async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    limits: &HttpLimits,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let (stream, progress) = Watched::new(stream);
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        served = watcher.watch(conn) => if let Err(e) = served {
            tracing::debug!(peer = %peer, error = %e, "http connection ended with an error");
        },
        () = progress.stalled(limits.stall_timeout) => tracing::debug!(peer = %peer,
            stall_s = limits.stall_timeout.as_secs(), "closed an http connection that made no progress"),
    }
}
