//! Fail-open guard: interception only while the agent proves it is alive and serving.
//!
//! Two checks, for two ways an agent stops serving:
//! - A hung agent keeps its sockets but stops answering. The agent's serving path
//!   refreshes a heartbeat timestamp; past `heartbeat_max_age_ns` queries go their normal
//!   way, to kube-dns through kube-proxy, exactly as if nldns were not installed.
//! - A dead agent (kill -9, OOM kill, crash) loses its sockets at once, while its heartbeat
//!   still looks fresh for up to the max age and its netlink filters (kernels before 6.6)
//!   outlive it; even TCX links go only when the dying process's descriptors are closed,
//!   which happens after its sockets (bound first, lower descriptors). So a query or a new
//!   TCP connection is redirected only if a socket is there to take it: one socket lookup
//!   per DNS query, nothing for other traffic. Without it a query in the first ~750 ms
//!   after a kill was sent into a closed port, and a resolver's retry a second later could
//!   land in the next such window (seen in the kill/restart cycle tests).

use aya_ebpf::{
    bindings::{bpf_sock_tuple, BPF_F_CURRENT_NETNS},
    cty::c_void,
    helpers::{bpf_ktime_get_ns, bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release},
};
use nldns_common::{DatapathConfig, ServiceAddr};

use crate::maps::NLDNS_HEARTBEAT;

#[inline(always)]
pub fn agent_is_alive(config: &DatapathConfig) -> bool {
    if config.enabled == 0 {
        return false;
    }
    let Some(&beat) = NLDNS_HEARTBEAT.get(0) else {
        return false;
    };
    if beat == 0 {
        return false;
    }
    // SAFETY: helper with no arguments; same clock as the agent's CLOCK_MONOTONIC.
    let now = unsafe { bpf_ktime_get_ns() };
    // A heartbeat from "the future" (written between our read of the clock and the map on
    // another CPU) is fresh.
    now.saturating_sub(beat) <= config.heartbeat_max_age_ns
}

/// Which socket table to look in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    Udp,
    Tcp,
}

/// Where a redirected query would go: the intercept endpoint and port, plus the client's
/// address and port (needed to match a connected socket; unbound sources are zero).
pub struct Destination<'a> {
    pub client: &'a ServiceAddr,
    pub client_port: u16,
    pub endpoint: &'a ServiceAddr,
    pub port: u16,
}

/// True if a socket in the caller's network namespace would receive `destination`: the
/// agent's intercept socket (or, for TCP, its listener) still exists.
///
/// `ctx` is the program's context pointer (an `__sk_buff` for TC, a `bpf_sock_addr` for
/// the socket hooks); the kernel picks the namespace from it.
#[inline(always)]
pub fn agent_socket_exists(ctx: *mut c_void, kind: SocketKind, destination: &Destination) -> bool {
    let (mut tuple, size) = sock_tuple(destination);
    // BPF_F_CURRENT_NETNS is -1: "the namespace of the context", as an unsigned argument.
    let netns = BPF_F_CURRENT_NETNS as i64 as u64;
    // SAFETY: `tuple` lives on our stack and `size` is the size of the union member we
    // filled; `ctx` is the context the kernel passed to this program.
    let socket = unsafe {
        match kind {
            SocketKind::Udp => bpf_sk_lookup_udp(ctx, &mut tuple, size, netns, 0),
            SocketKind::Tcp => bpf_sk_lookup_tcp(ctx, &mut tuple, size, netns, 0),
        }
    };
    if socket.is_null() {
        return false;
    }
    // SAFETY: a non-null result of a lookup holds a reference the verifier insists we
    // release, exactly once.
    unsafe { bpf_sk_release(socket.cast()) };
    true
}

#[inline(always)]
fn sock_tuple(destination: &Destination) -> (bpf_sock_tuple, u32) {
    // SAFETY: bpf_sock_tuple is plain old data (a union of two address/port structs);
    // all-zero is a valid value, and the lookup needs the unused bytes initialised.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let client_port = destination.client_port.to_be();
    let port = destination.port.to_be();
    match (destination.endpoint.as_v4(), destination.client.as_v4()) {
        (Some(endpoint), client) => {
            // SAFETY: writing the ipv4 member of a zeroed union.
            let v4 = unsafe { &mut tuple.__bindgen_anon_1.ipv4 };
            v4.saddr = u32::from_ne_bytes(client.unwrap_or([0; 4]));
            v4.daddr = u32::from_ne_bytes(endpoint);
            v4.sport = client_port;
            v4.dport = port;
            let size = core::mem::size_of_val(v4) as u32;
            (tuple, size)
        }
        (None, _) => {
            // SAFETY: writing the ipv6 member of a zeroed union.
            let v6 = unsafe { &mut tuple.__bindgen_anon_1.ipv6 };
            v6.saddr = words(&destination.client.octets);
            v6.daddr = words(&destination.endpoint.octets);
            v6.sport = client_port;
            v6.dport = port;
            let size = core::mem::size_of_val(v6) as u32;
            (tuple, size)
        }
    }
}

#[inline(always)]
fn words(octets: &[u8; 16]) -> [u32; 4] {
    let mut words = [0u32; 4];
    for (i, word) in words.iter_mut().enumerate() {
        *word = u32::from_ne_bytes([
            octets[i * 4],
            octets[i * 4 + 1],
            octets[i * 4 + 2],
            octets[i * 4 + 3],
        ]);
    }
    words
}
