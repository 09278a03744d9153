//! Interception at the socket layer (cgroup v2 sock_addr hooks).
//!
//! Two sets of the same hooks, told apart by [`Scope`]:
//! - **Host** (on the node's cgroup root, `--cgroup`): processes in the node's own network
//!   namespace (kubelet, hostNetwork pods, node agents) never cross a pod interface, so
//!   the TC programs never see their queries. Only sockets of the agent's namespace are
//!   touched (netns cookie check).
//! - **Pods** (on the pods' cgroup, `--pod-cgroup`): a dataplane that load-balances
//!   Services inside connect()/sendmsg() (Cilium's kube-proxy replacement, GKE Dataplane
//!   V2, Calico's eBPF mode) turns the ClusterIP into a CoreDNS pod's IP before any
//!   packet exists, so TC never sees the ClusterIP either. Its programs sit on the cgroup
//!   root; the kernel runs a descendant cgroup's programs before its ancestors', so ours
//!   on the pods' cgroup see the ClusterIP first. Sockets of the agent's namespace
//!   (hostNetwork pods) take the host path; sockets of any other namespace (pods) are
//!   sent to the intercept endpoint's pod-socket ports (`POD_SOCKET_PORTS`), whose
//!   replies TC leaves alone.
//!
//! What the hooks do:
//! - connect() and sendmsg() to `ServiceIP:53` get the intercept endpoint as destination,
//!   for UDP (connected or not) and TCP, only while the agent's heartbeat is fresh
//!   (guard.rs). On the host path also only while the agent's socket for the slot exists;
//!   a pod's socket lives in another namespace, where that lookup cannot see the agent's
//!   sockets: there the links themselves are the guard (they die with the agent, and the
//!   agent parks their descriptors so they are released before its sockets).
//! - recvmsg() (UDP source address) and getpeername() (connected sockets) get the intercept
//!   endpoint turned back into `ServiceIP:53`, so applications only ever see the ClusterIP.
//!   No heartbeat check there: the address is the intercept endpoint with a port of this
//!   agent's block, which can only come from an earlier rewrite, so restoring is always
//!   right.
//!
//! No double rewrite with TC, by construction: the destination a hook writes is the
//! intercept address, never a Service IP, and TC only rewrites queries to a Service IP and
//! replies from the first run of intercept ports, never from the pod-socket ports.
//!
//! Every program returns 1 (allow): a socket call is never refused because of nldns.

use aya_ebpf::{
    bindings::bpf_sock_addr, helpers::bpf_get_netns_cookie, programs::SockAddrContext, EbpfContext,
};
use nldns_common::{Counter, DatapathConfig, ServiceAddr, MAX_SERVICES, POD_SOCKET_PORTS};

use crate::{
    guard::{self, Destination, SocketKind},
    maps::{self, NLDNS_REVERSE, NLDNS_SERVICES},
};

/// What the kernel expects from every sock_addr program: carry on with the call.
pub const ALLOW: i32 = 1;

const DNS_PORT: u16 = 53;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

/// Where a set of hooks is attached, which decides the sockets it may touch.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The node's cgroup root: sockets of the agent's network namespace only.
    Host,
    /// The pods' cgroup: pod sockets too.
    Pods,
}

/// Which path one socket takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    /// A socket of the agent's namespace: the intercept ports TC also uses.
    Host,
    /// A pod's socket: the pod-socket ports.
    Pod,
}

impl Path {
    #[inline(always)]
    fn first_port(self, config: &DatapathConfig) -> u16 {
        match self {
            Path::Host => config.intercept_base_port,
            Path::Pod => config.intercept_base_port.wrapping_add(POD_SOCKET_PORTS),
        }
    }

    #[inline(always)]
    fn redirected(self) -> Counter {
        match self {
            Path::Host => Counter::SockRedirected,
            Path::Pod => Counter::PodSockRedirected,
        }
    }

    #[inline(always)]
    fn restored(self) -> Counter {
        match self {
            Path::Host => Counter::SockRestored,
            Path::Pod => Counter::PodSockRestored,
        }
    }

    #[inline(always)]
    fn fail_open(self) -> Counter {
        match self {
            Path::Host => Counter::SockFailOpenPasses,
            Path::Pod => Counter::PodSockFailOpenPasses,
        }
    }
}

/// `user_port` holds the port in network byte order in its low 16 bits.
#[inline(always)]
fn port_field(port: u16) -> u32 {
    u32::from(port.to_be())
}

/// connect4 / sendmsg4: `ServiceIP:53` -> intercept endpoint.
#[inline(always)]
pub fn redirect4(ctx: &SockAddrContext, scope: Scope) -> Option<Counter> {
    let sa = ctx.sock_addr;
    let (config, kind, path) = applicable(ctx, scope)?;
    // SAFETY: `sa` is the kernel's context pointer; every field is read with its own
    // 4-byte load, the access the verifier allows for these hooks.
    let (ip, port) = unsafe { (read(&(*sa).user_ip4), read(&(*sa).user_port)) };
    if port != port_field(DNS_PORT) {
        return None;
    }
    let service = ServiceAddr::from_v4(ip.to_ne_bytes());
    let slot = service_slot(&service)?;
    if !guard::agent_is_alive(config) {
        return Some(path.fail_open());
    }
    let new_port = path.first_port(config).wrapping_add(slot as u16);
    let endpoint = ServiceAddr::from_v4(config.intercept_v4);
    if path == Path::Host && !agent_socket_takes(ctx, kind, &endpoint, new_port) {
        return Some(Counter::SockAgentGonePasses);
    }
    // SAFETY: as above, 4-byte stores into writable fields of connect4/sendmsg4.
    unsafe {
        write(&mut (*sa).user_ip4, u32::from_ne_bytes(config.intercept_v4));
        write(&mut (*sa).user_port, port_field(new_port));
    }
    Some(path.redirected())
}

/// connect6 / sendmsg6. An AF_INET6 socket may talk IPv4 through a v4-mapped address
/// (`::ffff:10.96.0.10`); the maps key IPv4 services in that form already, and such a
/// socket is sent to the v4-mapped IPv4 intercept address.
#[inline(always)]
pub fn redirect6(ctx: &SockAddrContext, scope: Scope) -> Option<Counter> {
    let sa = ctx.sock_addr;
    let (config, kind, path) = applicable(ctx, scope)?;
    // SAFETY: see redirect4.
    let port = unsafe { read(&(*sa).user_port) };
    if port != port_field(DNS_PORT) {
        return None;
    }
    let service = read_ip6(sa);
    let slot = service_slot(&service)?;
    if !guard::agent_is_alive(config) {
        return Some(path.fail_open());
    }
    let endpoint = if service.as_v4().is_some() {
        ServiceAddr::from_v4(config.intercept_v4)
    } else {
        ServiceAddr::from_v6(config.intercept_v6)
    };
    let new_port = path.first_port(config).wrapping_add(slot as u16);
    // A v4-mapped destination is served by the agent's IPv4 socket: the lookup follows
    // the endpoint's family.
    if path == Path::Host && !agent_socket_takes(ctx, kind, &endpoint, new_port) {
        return Some(Counter::SockAgentGonePasses);
    }
    write_ip6(sa, &endpoint);
    // SAFETY: 4-byte store into a writable field of connect6/sendmsg6.
    unsafe { write(&mut (*sa).user_port, port_field(new_port)) };
    Some(path.redirected())
}

/// recvmsg4 / getpeername4: intercept endpoint -> `ServiceIP:53`.
#[inline(always)]
pub fn restore4(ctx: &SockAddrContext, scope: Scope) -> Option<Counter> {
    let sa = ctx.sock_addr;
    let (config, _, path) = applicable(ctx, scope)?;
    // SAFETY: see redirect4.
    let (ip, port) = unsafe { (read(&(*sa).user_ip4), read(&(*sa).user_port)) };
    if ip.to_ne_bytes() != config.intercept_v4 {
        return None;
    }
    let service = reverse_slot(config, path, port)?;
    let v4 = service.as_v4()?;
    // SAFETY: 4-byte stores into writable fields of recvmsg4/getpeername4.
    unsafe {
        write(&mut (*sa).user_ip4, u32::from_ne_bytes(v4));
        write(&mut (*sa).user_port, port_field(DNS_PORT));
    }
    Some(path.restored())
}

/// recvmsg6 / getpeername6, including the v4-mapped form of the IPv4 intercept address.
#[inline(always)]
pub fn restore6(ctx: &SockAddrContext, scope: Scope) -> Option<Counter> {
    let sa = ctx.sock_addr;
    let (config, _, path) = applicable(ctx, scope)?;
    // SAFETY: see redirect4.
    let port = unsafe { read(&(*sa).user_port) };
    let source = read_ip6(sa);
    let from_v4_endpoint = source == ServiceAddr::from_v4(config.intercept_v4);
    if !from_v4_endpoint && source != ServiceAddr::from_v6(config.intercept_v6) {
        return None;
    }
    let service = reverse_slot(config, path, port)?;
    // The slot's family must match the endpoint the reply came from.
    if service.as_v4().is_some() != from_v4_endpoint {
        return None;
    }
    write_ip6(sa, &service);
    // SAFETY: 4-byte store into a writable field of recvmsg6/getpeername6.
    unsafe { write(&mut (*sa).user_port, port_field(DNS_PORT)) };
    Some(path.restored())
}

/// The configuration, the socket's kind and its path, if this socket is one the hooks of
/// `scope` may touch at all: configured datapath, a UDP or TCP socket, in the agent's own
/// network namespace (or, for the pods' hooks, in any namespace).
#[inline(always)]
fn applicable(
    ctx: &SockAddrContext,
    scope: Scope,
) -> Option<(&'static DatapathConfig, SocketKind, Path)> {
    let config = maps::config()?;
    if config.enabled == 0 || config.netns_cookie == 0 {
        return None;
    }
    let sa = ctx.sock_addr;
    // SAFETY: see redirect4.
    let protocol = unsafe { read(&(*sa).protocol) };
    let kind = match protocol {
        IPPROTO_UDP => SocketKind::Udp,
        IPPROTO_TCP => SocketKind::Tcp,
        _ => return None,
    };
    // SAFETY: the helper takes the context pointer the kernel gave us.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    match (cookie == config.netns_cookie, scope) {
        (true, _) => Some((config, kind, Path::Host)),
        (false, Scope::Pods) => Some((config, kind, Path::Pod)),
        (false, Scope::Host) => None,
    }
}

/// Whether the agent's socket at `endpoint:port` exists to take this call (see guard.rs).
/// The caller's own address is not known yet in connect()/sendmsg(): a listener or an
/// unconnected UDP socket matches any source.
#[inline(always)]
fn agent_socket_takes(
    ctx: &SockAddrContext,
    kind: SocketKind,
    endpoint: &ServiceAddr,
    port: u16,
) -> bool {
    let unknown_client = ServiceAddr::default();
    let destination = Destination {
        client: &unknown_client,
        client_port: 0,
        endpoint,
        port,
    };
    guard::agent_socket_exists(ctx.as_ptr(), kind, &destination)
}

#[inline(always)]
fn service_slot(service: &ServiceAddr) -> Option<u32> {
    // SAFETY: the value is copied out at once (see nat::redirect_query).
    let slot = unsafe { NLDNS_SERVICES.get(service) }.map(|s| s.slot)?;
    (slot < MAX_SERVICES).then_some(slot)
}

/// The Service IP behind an intercept port of this agent's run of ports for `path`, if
/// the slot is in use.
#[inline(always)]
fn reverse_slot(config: &DatapathConfig, path: Path, port_field_value: u32) -> Option<ServiceAddr> {
    let port = u16::from_be(port_field_value as u16);
    let slot = port.wrapping_sub(path.first_port(config));
    if u32::from(slot) >= MAX_SERVICES {
        return None;
    }
    let service = NLDNS_REVERSE.get(u32::from(slot)).copied()?;
    (service != ServiceAddr::default()).then_some(service)
}

#[inline(always)]
fn read_ip6(sa: *mut bpf_sock_addr) -> ServiceAddr {
    let mut octets = [0u8; 16];
    for i in 0..4 {
        // SAFETY: one 4-byte load per word of user_ip6, network byte order.
        let word = unsafe { read(&(*sa).user_ip6[i]) };
        octets[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    ServiceAddr::from_v6(octets)
}

#[inline(always)]
fn write_ip6(sa: *mut bpf_sock_addr, addr: &ServiceAddr) {
    let o = &addr.octets;
    for i in 0..4 {
        let word = u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]);
        // SAFETY: one 4-byte store per word of user_ip6, writable in these hooks.
        unsafe { write(&mut (*sa).user_ip6[i], word) };
    }
}

/// Volatile, so the compiler keeps one 4-byte context access per field instead of
/// merging neighbours into wider loads the verifier may refuse.
#[inline(always)]
unsafe fn read(field: *const u32) -> u32 {
    unsafe { core::ptr::read_volatile(field) }
}

#[inline(always)]
unsafe fn write(field: *mut u32, value: u32) {
    unsafe { core::ptr::write_volatile(field, value) }
}
