//! The accept loop shared by the TCP servers (DNS over TCP, HTTP): a bounded number of
//! connections, accept errors that back off instead of spinning, and a shutdown that
//! stops accepting, then waits a bounded time for the connections still open.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Pause after a failed accept (EMFILE and friends).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts until `shutdown` fires, running `handle` for each connection while fewer than
/// `max_connections()` are open (read at each accept, so a reload can change it); past
/// that, new connections are closed at once. Returns once the open connections finished,
/// or after `grace`.
pub async fn serve_connections<F, Fut>(
    listener: TcpListener,
    shutdown: &CancellationToken,
    label: &str,
    max_connections: impl Fn() -> usize,
    grace: Duration,
    mut handle: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tasks = TaskTracker::new();
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(got) => got,
            Err(e) => {
                log::warn!("{label} accept: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if open.fetch_add(1, Ordering::AcqRel) >= max_connections() {
            open.fetch_sub(1, Ordering::AcqRel);
            log::debug!("{label}: connection limit reached, closing {peer}");
            continue;
        }
        let connection = handle(stream, peer);
        let open = open.clone();
        tasks.spawn(async move {
            connection.await;
            open.fetch_sub(1, Ordering::AcqRel);
        });
    }
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        log::warn!(
            "{label}: {} connections still busy at shutdown",
            tasks.len()
        );
    }
}
