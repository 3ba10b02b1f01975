//! The HTTP/1.1 server under the router's app, with the limits a public
//! endpoint needs.
//!
//! Strategy. hyper's connection builder directly, rather than
//! `axum::serve`, which cannot take a timer and so never times out a client
//! that sends half a request. Each connection gets:
//! - a header read timeout (`header_read_timeout`): the request line and
//!   headers must arrive within it, and an idle keep-alive connection is
//!   closed after it too (hyper starts the same timer while waiting for the
//!   next request);
//! - a body read timeout (`RouterConfig::body_read_timeout`), enforced by
//!   the app's [`read_body`] middleware: a body that has not fully arrived
//!   in time is answered 408;
//! - a place under a cap on open connections (`max_connections`): past it a
//!   new connection is accepted and closed at once, so clients fail fast
//!   instead of waiting in the listen queue.
//!
//! Shutdown is graceful: on the signal the listener stops, and the open
//! connections finish their in-flight responses.

use crate::error::ApiError;
use crate::metrics_names as m;
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Connection limits, with their flags and defaults.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Request line and headers must arrive within this; also the longest a
    /// keep-alive connection may sit idle (`--header-read-timeout-secs`). 30 s.
    pub header_read_timeout: Duration,
    /// Open connections at once (`--max-connections`). 1,024.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits { header_read_timeout: Duration::from_secs(30), max_connections: 1024 }
    }
}

/// Middleware: reads the whole body within `timeout` and at most `limit`
/// bytes, then hands the request on with the buffered body.
pub async fn read_body(timeout: Duration, limit: usize, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => return ApiError::timeout(format!("the request body did not arrive within {} s", timeout.as_secs())).into_response(),
        Ok(Err(_)) => return ApiError::too_large(limit).into_response(),
        Ok(Ok(b)) => b,
    };
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open
/// connections finish.
pub async fn serve(listener: TcpListener, app: axum::Router, limits: HttpLimits, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                // Out of file descriptors and the like: pause, never spin.
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!(m::CONNECTIONS_REFUSED).increment(1);
            tracing::warn!(%peer, "refusing a connection: {} already open", limits.max_connections);
            drop(sock);
            continue;
        };
        let _ = sock.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(sock), svc);
        let conn = graceful.watch(conn);
        metrics::gauge!(m::OPEN_CONNECTIONS).increment(1.0);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            metrics::gauge!(m::OPEN_CONNECTIONS).decrement(1.0);
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
