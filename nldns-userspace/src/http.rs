//! The agent's HTTP endpoints: `/health` (liveness), `/ready` (readiness) and
//! `/metrics` (OpenMetrics text). The same server may be bound on several
//! listeners; each serves all three paths.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use nldns_dns::{accept::StreamListener, metrics::Metrics};

/// After shutdown fires, open requests get this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Clients must send their request headers within this time (slowloris guard).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; probes and scrapes need a handful.
const MAX_CONNECTIONS: usize = 64;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the endpoints report.
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
    pub healthy: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// Serves the endpoints until `shutdown` fires, then lets open requests finish
/// (bounded) and returns.
pub async fn serve<L>(
    listener: L,
    state: Arc<HttpState>,
    shutdown: CancellationToken,
) -> io::Result<()>
where
    L: StreamListener,
    L::Stream: AsyncRead + AsyncWrite + Unpin,
{
    nldns_dns::accept::serve_connections(
        listener,
        &shutdown.clone(),
        "http",
        || MAX_CONNECTIONS,
        SHUTDOWN_GRACE,
        |stream, _peer| {
            let state = state.clone();
            let shutdown = shutdown.clone();
            async move {
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(respond(&state, &req)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            log::debug!("http connection: {e}");
                        }
                    }
                    _ = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
                    }
                }
            }
        },
    )
    .await;
    Ok(())
}

fn respond(state: &HttpState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/health" | "/healthz" => probe((state.healthy)()),
        "/ready" | "/readyz" => probe((state.ready)()),
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(state.metrics.encode())));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn probe(ok: bool) -> Response<Full<Bytes>> {
    if ok {
        text(StatusCode::OK, "ok\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ok\n")
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            stream.read_to_string(&mut response),
        )
        .await
        .unwrap()
        .unwrap();
        response
    }

    #[tokio::test]
    async fn health_ready_and_metrics() {
        let ready = Arc::new(AtomicBool::new(false));
        let metrics = Metrics::new();
        metrics.cache_hits.inc();
        let state = Arc::new(HttpState {
            metrics,
            ready: {
                let ready = ready.clone();
                Arc::new(move || ready.load(Ordering::SeqCst))
            },
            healthy: Arc::new(|| true),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, state, shutdown.clone()));

        assert!(get(addr, "/health").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/ready").await.starts_with("HTTP/1.1 503"));
        ready.store(true, Ordering::SeqCst);
        assert!(get(addr, "/ready").await.starts_with("HTTP/1.1 200"));
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("openmetrics-text"));
        assert!(metrics.contains("nldns_cache_hits_total{path=\"userspace\"} 1"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
