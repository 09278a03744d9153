//! The stateless NAT between `ServiceIP:53` and the intercept endpoint.
//!
//! No per-flow state: each Service IP owns a slot, and slot N is served on intercept port
//! `intercept_base_port + N`. The egress program reads the slot back from the reply's
//! source port. Only replies from the intercept endpoint are rewritten, and that endpoint
//! belongs to nldns alone, so a client talking to the cache on a `--listen` address never
//! sees a rewritten reply.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_csum_diff,
    programs::TcContext,
    EbpfContext,
};
use aya_log_ebpf::debug;
use nldns_common::{
    answers::KERNEL_ANSWERS_OFF, Counter, DatapathConfig, ServiceAddr, MAX_SERVICES,
    POD_SOCKET_PORTS,
};

use crate::{
    answer,
    guard::{self, Destination, SocketKind},
    maps::{self, NLDNS_REVERSE, NLDNS_SERVICES},
    parse::{self, Family, Transport, IPPROTO_UDP},
};

const DNS_PORT: u16 = 53;
const TCP_FLAGS_OFFSET: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const LOG_LEVEL_DEBUG: u8 = 4;

/// Ingress, from a pod: `ServiceIP:53` -> intercept endpoint.
#[inline(always)]
pub fn redirect_query(ctx: &TcContext) -> Counter {
    let Some(config) = maps::config() else {
        return Counter::Passed;
    };
    let pkt = match parse::transport(ctx) {
        Ok(pkt) => pkt,
        Err(counter) => return counter,
    };
    if pkt.dst_port != DNS_PORT {
        return Counter::Passed;
    }
    let service = pkt.dst;
    let Some(slot) = service_slot(&service) else {
        return Counter::Passed;
    };
    if !guard::agent_is_alive(config) {
        return Counter::FailOpenPasses;
    }
    let endpoint = intercept_addr(config, pkt.family);
    let port = config.intercept_base_port.wrapping_add(slot as u16);
    if !agent_socket_takes(ctx, &pkt, &endpoint, port) {
        return Counter::AgentGonePasses;
    }
    if rewrite(
        ctx,
        pkt,
        pkt.dst_addr_offset(),
        &service,
        &endpoint,
        pkt.dst_port_offset(),
        DNS_PORT,
        port,
    )
    .is_err()
    {
        return Counter::RewriteErrors;
    }
    if config.log_level >= LOG_LEVEL_DEBUG {
        debug!(ctx, "redirected query for slot {} to port {}", slot, port);
    }
    Counter::QueriesRedirected
}

/// The slot of an intercepted Service IP.
#[inline(always)]
fn service_slot(service: &ServiceAddr) -> Option<u32> {
    // SAFETY: the value is copied out at once; a concurrent update by the agent can at
    // worst make us use the old or the new slot, both valid.
    let slot = unsafe { NLDNS_SERVICES.get(service) }.map(|s| s.slot)?;
    (slot < MAX_SERVICES).then_some(slot)
}

/// What the answering ingress program does with a packet.
pub enum Answerable {
    /// Not an intercepted query: count this and let it go.
    No(Counter),
    /// A UDP query the kernel may answer (its transport is in the responder's scratch,
    /// see `answer::stash`). If the responder passes, `redirect` says whether it still
    /// needs the redirect (a query to a Service IP) or goes on as it is (a pod socket's
    /// query, already addressed to the intercept endpoint).
    Yes { redirect: bool },
    /// An intercepted query the kernel does not answer (TCP, kernel answers off, the
    /// guard says no): the ordinary redirect decides, and counts, the rest.
    Redirect,
}

/// Sorts a packet for `nldns_answer`: the same guard as a redirect (a live agent, its
/// socket for the port) before anything is answered. Out of line, like the redirect and
/// the responder, so each call chain fits the 512-byte stack.
///
/// Two forms of query are answered: `ServiceIP:53` (the TC path), and a pod socket's
/// query its socket hook already sent to the intercept endpoint's pod-socket port (see
/// `POD_SOCKET_PORTS`), answered from that endpoint (the pod's recvmsg hook shows the
/// Service IP).
#[inline(never)]
pub fn answerable(ctx: &TcContext) -> Answerable {
    let Some(config) = maps::config() else {
        return Answerable::No(Counter::Passed);
    };
    let pkt = match parse::transport(ctx) {
        Ok(pkt) => pkt,
        Err(counter) => return Answerable::No(counter),
    };
    let endpoint = intercept_addr(config, pkt.family);
    let (port, redirect) = if pkt.dst_port == DNS_PORT {
        let Some(slot) = service_slot(&pkt.dst) else {
            return Answerable::No(Counter::Passed);
        };
        (config.intercept_base_port.wrapping_add(slot as u16), true)
    } else {
        let first = config.intercept_base_port.wrapping_add(POD_SOCKET_PORTS);
        if u32::from(pkt.dst_port.wrapping_sub(first)) >= MAX_SERVICES || pkt.dst != endpoint {
            return Answerable::No(Counter::Passed);
        }
        (pkt.dst_port, false)
    };
    let answering = config.kernel_answers != KERNEL_ANSWERS_OFF
        && pkt.proto == IPPROTO_UDP
        && guard::agent_is_alive(config)
        && (answer::socket_seen_lately(port)
            || agent_socket_takes(ctx, &pkt, &endpoint, port) && answer::saw_socket(port));
    match (answering, redirect) {
        (true, _) => {
            answer::stash(&pkt);
            Answerable::Yes { redirect }
        }
        (false, true) => Answerable::Redirect,
        (false, false) => Answerable::No(Counter::Passed),
    }
}

/// Egress, toward a pod: intercept endpoint -> `ServiceIP:53`.
#[inline(always)]
pub fn restore_reply(ctx: &TcContext) -> Counter {
    let Some(config) = maps::config() else {
        return Counter::Passed;
    };
    // Deliberately no heartbeat check here: a reply already on its way to a pod must still
    // look like it comes from the Service IP, or the pod drops it.
    let pkt = match parse::transport(ctx) {
        Ok(pkt) => pkt,
        Err(counter) => return counter,
    };
    let src_port = pkt.src_port;
    let slot = src_port.wrapping_sub(config.intercept_base_port);
    if u32::from(slot) >= MAX_SERVICES {
        return Counter::Passed;
    }
    let endpoint = intercept_addr(config, pkt.family);
    if pkt.src != endpoint {
        return Counter::Passed;
    }
    let Some(service) = NLDNS_REVERSE.get(u32::from(slot)).copied() else {
        return Counter::Passed;
    };
    // An unused slot, or one of the other family: not ours to answer for.
    if service == ServiceAddr::default()
        || (service.as_v4().is_some()) != (pkt.family == Family::V4)
    {
        return Counter::Passed;
    }
    if rewrite(
        ctx,
        pkt,
        pkt.src_addr_offset(),
        &endpoint,
        &service,
        pkt.src_port_offset(),
        src_port,
        DNS_PORT,
    )
    .is_err()
    {
        return Counter::RewriteErrors;
    }
    if config.log_level >= LOG_LEVEL_DEBUG {
        debug!(ctx, "restored reply from slot {}", slot);
    }
    Counter::RepliesRewritten
}

/// Whether the agent's socket for this slot is there to take the packet (see guard.rs).
/// For TCP only a connection's opening SYN is checked: later segments belong to a
/// connection that exists (or gets reset) either way, and need no lookup.
#[inline(always)]
fn agent_socket_takes(ctx: &TcContext, pkt: &Transport, endpoint: &ServiceAddr, port: u16) -> bool {
    let kind = if pkt.proto == IPPROTO_UDP {
        SocketKind::Udp
    } else {
        // Flags out of the linear data: look up anyway, the safe side.
        if let Some([flags]) = parse::read_bytes::<1>(ctx, pkt.l4 + TCP_FLAGS_OFFSET) {
            if flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
                return true;
            }
        }
        SocketKind::Tcp
    };
    let destination = Destination {
        client: &pkt.src,
        client_port: pkt.src_port,
        endpoint,
        port,
    };
    guard::agent_socket_exists(ctx.as_ptr(), kind, &destination)
}

#[inline(always)]
fn intercept_addr(config: &DatapathConfig, family: Family) -> ServiceAddr {
    match family {
        Family::V4 => ServiceAddr::from_v4(config.intercept_v4),
        Family::V6 => ServiceAddr::from_v6(config.intercept_v6),
    }
}

/// Replaces one address and one port, fixing the IPv4 header checksum and the transport
/// checksum incrementally. The kernel helpers also handle CHECKSUM_PARTIAL skbs (veth
/// offload), where the field holds only the pseudo-header sum.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    pkt: Transport,
    addr_offset: usize,
    old_addr: &ServiceAddr,
    new_addr: &ServiceAddr,
    port_offset: usize,
    old_port: u16,
    new_port: u16,
) -> Result<(), i64> {
    let csum = pkt.csum_offset();
    // IPv4 UDP may carry no checksum (0): MARK_MANGLED_0 leaves it 0, and writes 0xffff
    // where a real checksum would come out as 0.
    let udp_flags = if pkt.proto == IPPROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    match pkt.family {
        Family::V4 => {
            let old = u32::from_ne_bytes(v4_octets(old_addr));
            let new = u32::from_ne_bytes(v4_octets(new_addr));
            ctx.store(addr_offset, &new, 0)?;
            ctx.l3_csum_replace(pkt.l3 + 10, u64::from(old), u64::from(new), 4)?;
            ctx.l4_csum_replace(
                csum,
                u64::from(old),
                u64::from(new),
                u64::from(BPF_F_PSEUDO_HDR) | udp_flags | 4,
            )?;
        }
        Family::V6 => {
            let mut old = old_addr.octets;
            let mut new = new_addr.octets;
            // SAFETY: both buffers are 16 bytes on our stack, as the sizes say.
            let diff = unsafe {
                bpf_csum_diff(old.as_mut_ptr().cast(), 16, new.as_mut_ptr().cast(), 16, 0)
            };
            if diff < 0 {
                return Err(diff);
            }
            ctx.store(addr_offset, &new, 0)?;
            // Size 0: `to` is a precomputed checksum difference.
            ctx.l4_csum_replace(csum, 0, diff as u64, u64::from(BPF_F_PSEUDO_HDR))?;
        }
    }
    let old_port = old_port.to_be();
    let new_port = new_port.to_be();
    ctx.store(port_offset, &new_port, 0)?;
    ctx.l4_csum_replace(
        csum,
        u64::from(old_port),
        u64::from(new_port),
        udp_flags | 2,
    )?;
    Ok(())
}

#[inline(always)]
fn v4_octets(addr: &ServiceAddr) -> [u8; 4] {
    [
        addr.octets[12],
        addr.octets[13],
        addr.octets[14],
        addr.octets[15],
    ]
}
