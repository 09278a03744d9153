//! The intercept sockets: where the datapath delivers redirected queries.
//!
//! One UDP socket and one TCP listener per Service IP slot, on the intercept endpoint,
//! on the first free block of ports (an older agent still running during an upgrade holds
//! the first). With the pods' socket hooks on, a second run of the same sockets on the
//! pod-socket ports (`nldns_common::POD_SOCKET_PORTS`): pods whose sockets those hooks
//! redirected talk to these, and their replies are never rewritten by TC.
//!
//! Their descriptors are parked at the top of the descriptor table, because the datapath
//! redirects a query only while the socket that would take it exists (nldns-ebpf
//! guard.rs), and what matters after a kill -9 is which goes first: the sockets or the
//! attachments. A dying process releases its descriptors highest first (the kernel runs
//! the exit's deferred closes newest first), and each TCX link takes a few ms to release,
//! so with the sockets opened first (lowest) they outlived the links by tens of ms
//! (measured: 40-55 ms with 3 pod interfaces, more with more pods), and queries sent then
//! went to sockets nobody would read. Parked on top, they close first and queries go to
//! kube-dns from the moment the agent dies.

use std::{
    io,
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    os::fd::{AsRawFd, FromRawFd},
};

use anyhow::{Context, Result};
use nldns_common::{POD_SOCKET_PORTS, PORTS_PER_AGENT};
use socket2::{Domain, Protocol, Socket, Type};

use crate::datapath::endpoint::InterceptEndpoint;

/// How many blocks of intercept ports to try when the first is taken.
const PORT_BLOCKS: u16 = 8;

/// Intercept descriptors go at or above this number. Low enough for a small descriptor
/// table (the kernel sizes it to the highest descriptor), high enough that the agent's
/// other descriptors (links, maps, connections) stay below.
const PARK_FLOOR: libc::c_int = 4000;
/// The soft RLIMIT_NOFILE the agent raises itself to (within the hard limit) to park.
const PARK_NOFILE: libc::rlim_t = 8192;

pub struct InterceptSockets {
    pub endpoint: InterceptEndpoint,
    /// In slot order: the TC run of ports, then (with the pods' hooks) the pod-socket run.
    pub udp: Vec<UdpSocket>,
    pub tcp: Vec<TcpListener>,
}

/// Which runs of intercept ports to bind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runs {
    /// TC and the host-network hooks.
    Tc,
    /// Those and the pods' socket hooks.
    TcAndPodSockets,
}

/// Binds UDP and TCP for each Service IP's slot, on the first free block of ports.
pub fn bind(
    requested: &InterceptEndpoint,
    service_ips: &[IpAddr],
    runs: Runs,
) -> Result<InterceptSockets> {
    let parking = make_room_to_park();
    let mut last_err = None;
    for block in 0..PORT_BLOCKS {
        let Some(base) = requested.base_port.checked_add(block * PORTS_PER_AGENT) else {
            break;
        };
        if base.checked_add(PORTS_PER_AGENT).is_none() {
            break;
        }
        let endpoint = InterceptEndpoint {
            base_port: base,
            ..*requested
        };
        match bind_block(&endpoint, service_ips, runs, parking) {
            Ok((udp, tcp)) => return Ok(InterceptSockets { endpoint, udp, tcp }),
            Err(err) if err.kind() == io::ErrorKind::AddrInUse => last_err = Some(err),
            Err(err) => {
                return Err(err).with_context(|| format!("binding intercept port block {base}"))
            }
        }
    }
    Err(last_err
        .map(anyhow::Error::from)
        .unwrap_or_else(|| anyhow::anyhow!("no port")))
    .context("every intercept port block is taken")
}

fn bind_block(
    endpoint: &InterceptEndpoint,
    service_ips: &[IpAddr],
    runs: Runs,
    parking: bool,
) -> io::Result<(Vec<UdpSocket>, Vec<TcpListener>)> {
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    let run_offsets: &[u16] = match runs {
        Runs::Tc => &[0],
        Runs::TcAndPodSockets => &[0, POD_SOCKET_PORTS],
    };
    let slots = run_offsets.iter().flat_map(|offset| {
        service_ips
            .iter()
            .enumerate()
            .map(move |(slot, service)| (offset + slot as u16, service))
    });
    for (port_offset, service) in slots {
        let ip: IpAddr = match service {
            IpAddr::V4(_) => endpoint.v4.into(),
            IpAddr::V6(_) => endpoint.v6.into(),
        };
        let addr = SocketAddr::new(ip, endpoint.base_port + port_offset);
        let domain = Domain::for_address(addr);
        let u = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            u.set_only_v6(true)?;
        }
        u.bind(&addr.into())?;
        udp.push(park(u, parking).into());
        let t = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        if addr.is_ipv6() {
            t.set_only_v6(true)?;
        }
        // TIME_WAIT from a previous run must not block a restart.
        t.set_reuse_address(true)?;
        t.bind(&addr.into())?;
        t.listen(1024)?;
        tcp.push(park(t, parking).into());
    }
    Ok((udp, tcp))
}

/// Raises the soft descriptor limit if needed so descriptors can be parked at
/// PARK_FLOOR. False (and a warning) if the hard limit does not allow it.
fn make_room_to_park() -> bool {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit to the valid pointer we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return false;
    }
    if limit.rlim_cur >= PARK_NOFILE {
        return true;
    }
    if limit.rlim_max < PARK_NOFILE {
        log::warn!(
            "RLIMIT_NOFILE hard limit {} is below {PARK_NOFILE}: intercept sockets stay at low \
             descriptors, so after a kill -9 a few queries may reach them before they close",
            limit.rlim_max
        );
        return false;
    }
    limit.rlim_cur = PARK_NOFILE;
    // SAFETY: setrlimit reads one rlimit from the valid pointer we pass.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 }
}

/// Moves `socket` to the lowest free descriptor at or above PARK_FLOOR. On failure the
/// socket stays where it is: it still works, only the order at death is lost.
fn park(socket: Socket, parking: bool) -> Socket {
    if !parking {
        return socket;
    }
    // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we own; no memory is involved.
    let high = unsafe { libc::fcntl(socket.as_raw_fd(), libc::F_DUPFD_CLOEXEC, PARK_FLOOR) };
    if high < 0 {
        log::warn!(
            "could not park an intercept socket above descriptor {PARK_FLOOR}: {}",
            io::Error::last_os_error()
        );
        return socket;
    }
    drop(socket);
    // SAFETY: `high` is a fresh descriptor from F_DUPFD_CLOEXEC, owned by nothing else.
    unsafe { Socket::from_raw_fd(high) }
}
