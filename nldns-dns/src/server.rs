//! UDP and TCP serving loops. Cache hits are answered inline in the receive loop
//! (for UDP, on dedicated threads: `udp_loop`); queries that need upstream run in
//! tracked tasks so shutdown can let them finish.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handle::Handling;
use super::service::{DnsService, Protocol};
use super::udp_loop;

/// After shutdown fires, queries in flight get this long to be answered.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Serves DNS over UDP until `shutdown` fires, then answers the datagrams already
/// queued and the queries in flight (for at most [`SHUTDOWN_GRACE`]) and returns.
pub async fn serve_udp(
    socket: UdpSocket,
    svc: Arc<DnsService>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_udp_std(socket.into_std()?, svc, shutdown, 1).await
}

/// Runs a serving thread's loop until the stop. A panic while answering (a bug: network
/// input must never cause one) costs the batch in hand, not the socket: the loop starts
/// again, so the other slots' sockets and this one keep being served.
fn serve_until_stopped(shared: &udp_loop::Shared) {
    loop {
        let served =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| udp_loop::serve(shared)));
        if served.is_ok() || shared.stop.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        log::error!("a UDP serving thread panicked (a bug; see above); serving on");
    }
}

/// [`serve_udp`] on a std socket, by `threads` serving threads (at least one) that
/// answer cache hits themselves and hand the rest to tasks on the current runtime
/// (see `udp_loop`).
pub async fn serve_udp_std(
    socket: std::net::UdpSocket,
    svc: Arc<DnsService>,
    shutdown: CancellationToken,
    threads: usize,
) -> io::Result<()> {
    socket.set_nonblocking(false)?;
    // A fallback wake-up, should shutdown(SHUT_RD) ever not wake a blocked reader:
    // the threads then still see the stop within this long.
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    let socket = Arc::new(socket);
    svc.metrics().watch_udp_socket(&socket);
    let shared = Arc::new(udp_loop::Shared {
        socket,
        svc,
        stop: AtomicBool::new(false),
        runtime: tokio::runtime::Handle::current(),
        tasks: TaskTracker::new(),
    });
    let mut workers = Vec::new();
    for n in 0..threads.max(1) {
        let shared = shared.clone();
        let worker = std::thread::Builder::new()
            .name(format!("nldns-udp-{n}"))
            .spawn(move || serve_until_stopped(&shared));
        match worker {
            Ok(worker) => workers.push(worker),
            // Fewer threads still serve; none at all is an error.
            Err(e) if !workers.is_empty() => log::warn!("udp serving thread: {e}"),
            Err(e) => return Err(e),
        }
    }
    shutdown.cancelled().await;
    udp_loop::stop(&shared);
    let joined = tokio::task::spawn_blocking(move || {
        for worker in workers {
            let _ = worker.join();
        }
    });
    let tasks = shared.tasks.clone();
    tasks.close();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        let _ = joined.await;
        tasks.wait().await;
    })
    .await;
    if drained.is_err() {
        log::warn!("udp: {} queries still unanswered at shutdown", tasks.len());
    }
    Ok(())
}

/// Serves DNS over TCP until `shutdown` fires: pipelined queries on a connection
/// are answered as each is ready (out of order). Then stops accepting and reading,
/// answers the queries in flight (for at most [`SHUTDOWN_GRACE`]) and returns.
pub async fn serve_tcp(
    listener: TcpListener,
    svc: Arc<DnsService>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let limits = svc.clone();
    crate::accept::serve_connections(
        listener,
        &shutdown.clone(),
        "tcp",
        move || limits.tcp_limits().0,
        SHUTDOWN_GRACE,
        |stream, peer| {
            let (_, pipeline, idle) = svc.tcp_limits();
            serve_connection(stream, peer, svc.clone(), shutdown.clone(), pipeline, idle)
        },
    )
    .await;
    Ok(())
}

/// Reads one length-prefixed DNS message.
async fn read_frame(reader: &mut OwnedReadHalf) -> io::Result<Vec<u8>> {
    let len = reader.read_u16().await?;
    let mut frame = vec![0u8; usize::from(len)];
    reader.read_exact(&mut frame).await?;
    Ok(frame)
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    svc: Arc<DnsService>,
    shutdown: CancellationToken,
    pipeline: usize,
    idle: Duration,
) {
    let local = stream.local_addr().ok();
    let server = svc.metrics.server_label(local);
    let ipv6 = local.is_some_and(|a| a.is_ipv6());
    let (mut reader, mut writer) = stream.into_split();
    let (answers, mut outbox) = mpsc::channel::<Vec<u8>>(pipeline.max(1));
    // One writer, so answers finishing at once never interleave their bytes.
    let write_task = tokio::spawn(async move {
        while let Some(answer) = outbox.recv().await {
            let Ok(len) = u16::try_from(answer.len()) else {
                continue;
            };
            let mut framed = Vec::with_capacity(answer.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&answer);
            // A client that stops reading must not pin the connection forever.
            match tokio::time::timeout(idle, writer.write_all(&framed)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
    });
    let slots = Arc::new(Semaphore::new(pipeline.max(1)));
    let mut pending = JoinSet::new();
    // TCP connections are many and short: they count into the server's shared shard.
    let mut scratch = svc.shared_scratch(&server, ipv6);
    // Every query of the connection is charged to its peer (per-source quotas).
    scratch.set_client(Some(peer.ip()));
    loop {
        let frame = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = tokio::time::timeout(idle, read_frame(&mut reader)) => match r {
                Ok(Ok(frame)) => frame,
                _ => break, // idle, closed by the client, or an I/O error
            },
        };
        // The reply goes to the writer task, so each gets a buffer of its own.
        let mut reply = Vec::new();
        match svc.handle(
            &frame,
            Protocol::Tcp,
            Instant::now(),
            &mut scratch,
            &mut reply,
        ) {
            Handling::Drop => {}
            Handling::Reply => {
                if answers.send(reply).await.is_err() {
                    break;
                }
            }
            Handling::Resolve(query) => {
                // Bounded pipelining: stop reading while `pipeline` queries are open.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let answers = answers.clone();
                pending.spawn(async move {
                    let reply = query.resolve().await;
                    let _ = answers.send(reply).await;
                    drop(slot);
                });
            }
        }
        while pending.try_join_next().is_some() {}
    }
    drop(answers);
    // Queries already read are still answered; each is bounded by its own timeouts.
    while pending.join_next().await.is_some() {}
    let _ = write_task.await;
}
