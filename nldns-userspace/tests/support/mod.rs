//! What the BPF_PROG_TEST_RUN tests share: privileges, a private network namespace, the
//! agent's intercept sockets the programs' socket lookup must find, and the addresses.

#![allow(dead_code)] // each test binary uses its own subset

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use nldns::datapath::endpoint::InterceptEndpoint;
use socket2::{Domain, Socket, Type};

pub const KUBE_DNS_V4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const KUBE_DNS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0xa);
pub const POD_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
pub const POD_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 0x10);
pub const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const CLIENT_PORT: u16 = 40000;

pub fn have_privileges(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let reason = "needs root to load BPF programs";
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {reason} (CI runs as root)");
    }
    eprintln!("SKIP {test}: {reason}");
    false
}

/// Unshares the network namespace of the calling thread only: each test runs on its own
/// thread, and the namespace goes away with the thread and its sockets.
pub fn enter_private_netns() {
    // SAFETY: unshare has no memory-safety preconditions; CLONE_NEWNET affects the calling
    // thread alone.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
}

/// The intercept sockets (slot 0 over IPv4, slot 1 over IPv6; with `pod_socket_ports`
/// also the pod-socket ports of both), bound with IP_FREEBIND: the fresh namespace's `lo`
/// is down and holds no intercept address, and the lookup does not need one.
pub fn bind_agent_sockets(endpoint: &InterceptEndpoint, pod_socket_ports: bool) -> Vec<Socket> {
    let mut addrs = vec![
        SocketAddr::new(endpoint.v4.into(), endpoint.base_port),
        SocketAddr::new(endpoint.v6.into(), endpoint.base_port + 1),
    ];
    if pod_socket_ports {
        let first = endpoint.base_port + nldns_common::POD_SOCKET_PORTS;
        addrs.push(SocketAddr::new(endpoint.v4.into(), first));
        addrs.push(SocketAddr::new(endpoint.v6.into(), first + 1));
    }
    let mut sockets = Vec::new();
    for addr in addrs {
        for kind in [Type::DGRAM, Type::STREAM] {
            let socket = Socket::new(Domain::for_address(addr), kind, None).unwrap();
            if addr.is_ipv4() {
                socket.set_freebind_v4(true).unwrap();
            } else {
                socket.set_only_v6(true).unwrap();
                socket.set_freebind_v6(true).unwrap();
            }
            socket.bind(&addr.into()).unwrap();
            if kind == Type::STREAM {
                socket.listen(16).unwrap();
            }
            sockets.push(socket);
        }
    }
    sockets
}
