//! The accept loop shared by the stream servers (DNS over TCP; HTTP over TCP and over the
//! probe's unix socket): a bounded number of connections, accept errors that back off
//! instead of spinning, and a shutdown that stops accepting, then waits a bounded time
//! for the connections still open.

use std::{
    fmt::Debug,
    future::Future,
    io,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// A listening socket the loop can accept from.
pub trait StreamListener {
    type Stream: Send + 'static;
    type Peer: Debug;
    fn accept_one(&self) -> impl Future<Output = io::Result<(Self::Stream, Self::Peer)>> + Send;
}

impl StreamListener for TcpListener {
    type Stream = TcpStream;
    type Peer = std::net::SocketAddr;
    fn accept_one(&self) -> impl Future<Output = io::Result<(TcpStream, Self::Peer)>> + Send {
        self.accept()
    }
}

impl StreamListener for UnixListener {
    type Stream = UnixStream;
    type Peer = tokio::net::unix::SocketAddr;
    fn accept_one(&self) -> impl Future<Output = io::Result<(UnixStream, Self::Peer)>> + Send {
        self.accept()
    }
}

/// Pause after a failed accept (EMFILE and friends).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts until `shutdown` fires, running `handle` for each connection while fewer than
/// `max_connections()` are open (read at each accept, so a reload can change it); past
/// that, new connections are closed at once. Returns once the open connections finished,
/// or after `grace`.
pub async fn serve_connections<L, F, Fut>(
    listener: L,
    shutdown: &CancellationToken,
    label: &str,
    max_connections: impl Fn() -> usize,
    grace: Duration,
    mut handle: F,
) where
    L: StreamListener,
    F: FnMut(L::Stream, L::Peer) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tasks = TaskTracker::new();
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = listener.accept_one() => r,
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
            log::debug!("{label}: connection limit reached, closing {peer:?}");
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
