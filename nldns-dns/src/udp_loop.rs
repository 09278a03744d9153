//! The UDP serving loop: dedicated threads that take datagrams in batches with
//! recvmmsg(2) and send the batch's answers with one sendmmsg(2).
//!
//! Why not a tokio task with `recv_from`/`send_to`: under cache-hit load that cost two
//! system calls per query plus a runtime wake-up whenever the socket ran dry (a fifth of
//! the agent's time in the profile of the 2026-11-26 bench). A thread blocked in
//! recvmmsg is woken by the kernel directly, takes every datagram queued by then in
//! one call, answers the hits inline and sends all answers in one more call. Only
//! queries that need upstream go to the runtime, as tasks.
//!
//! Several threads may serve one socket: the kernel wakes one waiter per datagram
//! (exclusive wait), so they share the load without a reuseport group, and a thread
//! that died or hung leaves the socket served by the others.
//!
//! socket2 has no recvmmsg/sendmmsg, hence the libc calls, here and only here.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

use super::handle::Handling;
use super::service::{DnsService, Protocol};

/// Datagrams taken per recvmmsg call at most.
pub const BATCH: usize = 32;
/// Largest query read; longer datagrams are dropped (a DNS query is a question and an
/// OPT record: real ones are well under 512 bytes).
const MAX_QUERY: usize = 4096;
/// Datagrams still answered after the stop, at most (a `--listen` socket may keep
/// receiving from clients that talk to it directly).
const DRAIN_MAX: usize = 1024;

/// What a serving thread shares with the others and with whoever stops it.
pub struct Shared {
    pub socket: Arc<UdpSocket>,
    pub svc: Arc<DnsService>,
    /// Set before the socket is shut down for reading: answer what is queued, then exit.
    pub stop: AtomicBool,
    /// The runtime and the tracker of the upstream queries' tasks.
    pub runtime: Handle,
    pub tasks: TaskTracker,
}

/// Wakes the threads blocked on the socket and makes them finish: after
/// shutdown(SHUT_RD), a read that would block returns at once (with nothing); the
/// datagrams already queued are still read first. (On an unconnected UDP socket
/// shutdown returns ENOTCONN but still marks the socket and wakes its readers.)
pub fn stop(shared: &Shared) {
    shared.stop.store(true, Ordering::Release);
    // SAFETY: shutdown on a descriptor we own; no memory is involved.
    unsafe { libc::shutdown(shared.socket.as_raw_fd(), libc::SHUT_RD) };
}

/// One serving thread's loop; returns after [`stop`].
pub fn serve(shared: &Shared) {
    // A hit may start background work (a prefetch, a stale entry's refresh) with
    // tokio::spawn: without the runtime's context that panics, killing this thread.
    let _runtime = shared.runtime.enter();
    let mut batch = Batch::new();
    let local = shared.socket.local_addr().ok();
    let server = shared.svc.metrics.server_label(local);
    let ipv6 = local.is_some_and(|a| a.is_ipv6());
    // This thread's own shard of the per-query metrics (see metrics/shard.rs).
    let mut scratch = shared.svc.scratch(&server, ipv6);
    let mut drained = 0usize;
    loop {
        let stopping = shared.stop.load(Ordering::Acquire);
        let received = match batch.receive(&shared.socket, stopping) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The SO_RCVTIMEO fallback expired, or the queue is empty while draining.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if stopping {
                    return;
                }
                continue;
            }
            Err(e) => {
                // e.g. an ICMP error surfacing on the socket: not fatal for a server.
                log::debug!("udp recvmmsg: {e}");
                continue;
            }
        };
        // One clock read per batch: TTLs count whole seconds.
        let now = Instant::now();
        let mut replies = 0;
        for i in 0..received {
            let Some(query) = datagram(&batch.headers, &batch.queries, i) else {
                continue;
            };
            // Read for the reply anyway; the engine hashes it only on a miss.
            let peer = batch.peer(i);
            scratch.set_client(peer.map(|p| p.ip()));
            match shared.svc.handle(
                query,
                Protocol::Udp,
                now,
                &mut scratch,
                &mut batch.replies[i],
            ) {
                Handling::Reply => {
                    batch.to_send[replies] = i;
                    replies += 1;
                }
                Handling::Drop => {}
                Handling::Resolve(pending) => {
                    let Some(peer) = peer else { continue };
                    let socket = shared.socket.clone();
                    shared.tasks.spawn_on(
                        async move {
                            let reply = pending.resolve().await;
                            send_one(&socket, &reply, peer);
                        },
                        &shared.runtime,
                    );
                }
            }
        }
        batch.send(&shared.socket, replies);
        // One more clock read per batch: the hits' receive-to-send time.
        scratch.sent(now);
        if stopping {
            drained += received;
            if received == 0 || drained >= DRAIN_MAX {
                return;
            }
        }
    }
}

/// Datagram `i` of the last receive, unless empty (what a read after the stop returns)
/// or cut short. (Not a method: the caller writes the batch's replies meanwhile.)
fn datagram<'a>(headers: &[libc::mmsghdr], queries: &'a [u8], i: usize) -> Option<&'a [u8]> {
    let header = headers.get(i)?;
    if header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
        return None;
    }
    let len = header.msg_len as usize;
    let start = i * MAX_QUERY;
    queries
        .get(start..start + len.min(MAX_QUERY))
        .filter(|q| !q.is_empty())
}

/// A zeroed C struct.
fn zeroed<T: CStruct>() -> T {
    // SAFETY: only implemented for plain C structs for which all-zero bytes are a valid
    // value (null pointers, zero lengths).
    unsafe { mem::zeroed() }
}

/// The libc structs [`zeroed`] may make.
trait CStruct {}
impl CStruct for libc::sockaddr_storage {}
impl CStruct for libc::mmsghdr {}
impl CStruct for libc::iovec {}

/// An answer from a task (after upstream): never blocks a runtime thread.
fn send_one(socket: &UdpSocket, reply: &[u8], peer: SocketAddr) {
    let sent =
        socket2::SockRef::from(socket).send_to_with_flags(reply, &peer.into(), libc::MSG_DONTWAIT);
    if let Err(e) = sent {
        log::debug!("udp send to {peer}: {e}");
    }
}

/// Buffers of one thread, reused for every batch: nothing is allocated per query once
/// the reply buffers have grown to the answers' size.
struct Batch {
    /// BATCH slots of MAX_QUERY bytes, zero-allocated: pages never written (most of
    /// each slot) cost no memory.
    queries: Box<[u8]>,
    peers: Box<[libc::sockaddr_storage]>,
    headers: Box<[libc::mmsghdr]>,
    iovecs: Box<[libc::iovec]>,
    replies: Vec<Vec<u8>>,
    /// Indexes of the datagrams answered inline, in order.
    to_send: [usize; BATCH],
}

impl Batch {
    fn new() -> Self {
        Batch {
            queries: vec![0u8; BATCH * MAX_QUERY].into_boxed_slice(),
            peers: (0..BATCH).map(|_| zeroed()).collect(),
            headers: (0..BATCH).map(|_| zeroed()).collect(),
            iovecs: (0..BATCH).map(|_| zeroed()).collect(),
            replies: (0..BATCH).map(|_| Vec::with_capacity(512)).collect(),
            to_send: [0; BATCH],
        }
    }

    /// Blocks until at least one datagram is queued, then takes every queued one up to
    /// [`BATCH`]; with `nonblocking`, returns WouldBlock instead of waiting.
    fn receive(&mut self, socket: &UdpSocket, nonblocking: bool) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovecs[i] = libc::iovec {
                iov_base: self.queries[i * MAX_QUERY..].as_mut_ptr().cast(),
                iov_len: MAX_QUERY,
            };
            let header = &mut self.headers[i];
            header.msg_len = 0;
            header.msg_hdr.msg_name = (&raw mut self.peers[i]).cast();
            header.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as u32;
            header.msg_hdr.msg_iov = &raw mut self.iovecs[i];
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_control = std::ptr::null_mut();
            header.msg_hdr.msg_controllen = 0;
            header.msg_hdr.msg_flags = 0;
        }
        let flags = libc::MSG_WAITFORONE | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        // SAFETY: every header points at this batch's own buffers (query, address,
        // iovec), which outlive the call; BATCH headers are valid.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                // c_int in glibc's prototype, c_uint in musl's (the image's static build).
                flags as _,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// The sender of datagram `i`.
    fn peer(&self, i: usize) -> Option<SocketAddr> {
        socket_addr(&self.peers[i])
    }

    /// Sends `replies[to_send[..count]]` to their senders with as few sendmmsg calls as
    /// the kernel allows. An answer that cannot be sent is dropped, as with send_to.
    fn send(&mut self, socket: &UdpSocket, count: usize) {
        for k in 0..count {
            let i = self.to_send[k];
            let reply = &mut self.replies[i];
            self.iovecs[k] = libc::iovec {
                iov_base: reply.as_mut_ptr().cast(),
                iov_len: reply.len(),
            };
            // The receive headers of 0..k were already rewritten (k <= i), so header k
            // takes datagram i's address length before its own is overwritten.
            let namelen = self.headers[i].msg_hdr.msg_namelen;
            let header = &mut self.headers[k];
            header.msg_len = 0;
            header.msg_hdr.msg_name = (&raw mut self.peers[i]).cast();
            header.msg_hdr.msg_namelen = namelen;
            header.msg_hdr.msg_iov = &raw mut self.iovecs[k];
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_control = std::ptr::null_mut();
            header.msg_hdr.msg_controllen = 0;
            header.msg_hdr.msg_flags = 0;
        }
        let mut done = 0;
        while done < count {
            // SAFETY: headers[done..count] point at replies, addresses and iovecs of
            // this batch, alive and unmodified during the call.
            let sent = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    self.headers[done..].as_mut_ptr(),
                    (count - done) as libc::c_uint,
                    0,
                )
            };
            if sent < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The first remaining answer failed (e.g. no route): skip it alone.
                log::debug!("udp sendmmsg: {e}");
                done += 1;
            } else {
                done += sent as usize;
            }
        }
    }
}

/// The IPv4 or IPv6 address in a sockaddr_storage the kernel filled.
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (family AF_INET), which fits in
            // and is no more aligned than sockaddr_storage.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, a sockaddr_in6 for AF_INET6.
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
