//! Bounds-checked views of Ethernet / VLAN / IPv4 / IPv6 / UDP / TCP headers.
//!
//! Direct packet access (not `bpf_skb_load_bytes`) because this runs on every packet of
//! every pod and the early exit for non-DNS traffic must stay within a few tens of ns.
//! Each reader checks `data_end` first, which is also what the verifier wants to see.

use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use nldns_common::{Counter, ServiceAddr};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const VLAN_HLEN: usize = 4;
/// 802.1ad QinQ: an outer and an inner tag. More than two tags is not seen on pod links.
const MAX_VLAN_TAGS: usize = 2;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
/// Extension headers followed before giving up (and passing the packet).
const MAX_IPV6_EXT_HEADERS: usize = 4;

const IPV4_HLEN_MIN: usize = 20;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;
const TCP_HLEN_MIN: usize = 20;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// A UDP or TCP packet that is a candidate for rewriting: offsets for the rewrite helpers
/// and copies of the fields the decision needs. Fields are copied out of one bounds-checked
/// read each, because the verifier loses track of a check when LLVM re-derives a packet
/// pointer from a variable offset.
#[derive(Clone, Copy)]
pub struct Transport {
    pub family: Family,
    pub l3: usize,
    pub l4: usize,
    pub proto: u8,
    pub src: ServiceAddr,
    pub dst: ServiceAddr,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Transport {
    /// Offset of the transport checksum.
    #[inline(always)]
    pub fn csum_offset(&self) -> usize {
        if self.proto == IPPROTO_UDP {
            self.l4 + 6
        } else {
            self.l4 + 16
        }
    }

    #[inline(always)]
    pub fn src_addr_offset(&self) -> usize {
        match self.family {
            Family::V4 => self.l3 + 12,
            Family::V6 => self.l3 + 8,
        }
    }

    #[inline(always)]
    pub fn dst_addr_offset(&self) -> usize {
        match self.family {
            Family::V4 => self.l3 + 16,
            Family::V6 => self.l3 + 24,
        }
    }

    #[inline(always)]
    pub fn src_port_offset(&self) -> usize {
        self.l4
    }

    #[inline(always)]
    pub fn dst_port_offset(&self) -> usize {
        self.l4 + 2
    }
}

/// Pointer to a `T` at `offset` in the linear packet data, if it is all inside.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// A copy of `N` bytes at `offset`, if they are all inside the linear data.
#[inline(always)]
pub fn read_bytes<const N: usize>(ctx: &TcContext, offset: usize) -> Option<[u8; N]> {
    // SAFETY: ptr_at checked all N bytes; byte arrays have alignment 1.
    ptr_at::<[u8; N]>(ctx, offset).map(|p| unsafe { *p })
}

#[inline(always)]
fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// The quick first look of the answering program: true only for a packet that is
/// certainly neither a query to port 53 nor one to the intercept endpoint's pod-socket
/// ports: an unfragmented IPv4 (without options) or IPv6 (without extension headers) UDP
/// or TCP packet to another port, or IPv4/IPv6 carrying neither. Anything else (VLAN tags,
/// IPv4 options, IPv6 extension headers, fragments, non-IP, short frames) goes to the full
/// parse, which decides and counts as `nldns_ingress` does.
#[inline(always)]
pub fn surely_not_for_us(ctx: &TcContext) -> bool {
    let Some(config) = crate::maps::config() else {
        return false;
    };
    let Some(eth) = read_bytes::<ETH_HLEN>(ctx, 0) else {
        return false;
    };
    let (proto, l4) = match be16(&eth, 12) {
        ETH_P_IP => {
            let Some(ip) = read_bytes::<IPV4_HLEN_MIN>(ctx, ETH_HLEN) else {
                return false;
            };
            // Options (a header longer than 20 bytes) or a fragment: the full parse.
            if ip[0] != 0x45 || be16(&ip, 6) & 0x3fff != 0 {
                return false;
            }
            (ip[9], ETH_HLEN + IPV4_HLEN_MIN)
        }
        ETH_P_IPV6 => {
            let Some(ip) = read_bytes::<IPV6_HLEN>(ctx, ETH_HLEN) else {
                return false;
            };
            (ip[6], ETH_HLEN + IPV6_HLEN)
        }
        _ => return false,
    };
    if proto != IPPROTO_UDP && proto != IPPROTO_TCP {
        // IPv4 carrying neither is passed by the full parse too; IPv6 might be an
        // extension header in front of one.
        return be16(&eth, 12) == ETH_P_IP;
    }
    let Some(ports) = read_bytes::<4>(ctx, l4) else {
        return false;
    };
    let dst_port = be16(&ports, 2);
    let pod_ports = config
        .intercept_base_port
        .wrapping_add(nldns_common::POD_SOCKET_PORTS);
    dst_port != 53 && u32::from(dst_port.wrapping_sub(pod_ports)) >= nldns_common::MAX_SERVICES
}

/// Finds the UDP or TCP header of an unfragmented IPv4/IPv6 packet. `Err` carries the
/// counter that explains why the packet is not a candidate.
#[inline(always)]
pub fn transport(ctx: &TcContext) -> Result<Transport, Counter> {
    let (ethertype, l3) = ethertype_and_l3(ctx)?;
    match ethertype {
        ETH_P_IP => ipv4(ctx, l3),
        ETH_P_IPV6 => ipv6(ctx, l3),
        _ => Err(Counter::Passed),
    }
}

#[inline(always)]
fn ethertype_and_l3(ctx: &TcContext) -> Result<(u16, usize), Counter> {
    let eth = read_bytes::<ETH_HLEN>(ctx, 0).ok_or(Counter::Passed)?;
    let mut ethertype = be16(&eth, 12);
    let mut l3 = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        // Tag: TCI (2 bytes), then the encapsulated ethertype.
        let tag = read_bytes::<VLAN_HLEN>(ctx, l3).ok_or(Counter::ParseErrors)?;
        ethertype = be16(&tag, 2);
        l3 += VLAN_HLEN;
    }
    Ok((ethertype, l3))
}

#[inline(always)]
fn ipv4(ctx: &TcContext, l3: usize) -> Result<Transport, Counter> {
    let ip = read_bytes::<IPV4_HLEN_MIN>(ctx, l3).ok_or(Counter::ParseErrors)?;
    if ip[0] >> 4 != 4 {
        return Err(Counter::ParseErrors);
    }
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    if header_len < IPV4_HLEN_MIN {
        return Err(Counter::ParseErrors);
    }
    let proto = ip[9];
    if proto != IPPROTO_UDP && proto != IPPROTO_TCP {
        return Err(Counter::Passed);
    }
    // More-fragments flag or a fragment offset: a piece of a larger datagram. Never
    // rewrite it; reassembly happens later, in the stack, and takes the normal path.
    if be16(&ip, 6) & 0x3fff != 0 {
        return Err(Counter::FragmentsPassed);
    }
    let total_len = usize::from(be16(&ip, 2));
    let l4 = l3 + header_len;
    let (src_port, dst_port) = check_transport(ctx, l3, l4, total_len, proto)?;
    Ok(Transport {
        family: Family::V4,
        l3,
        l4,
        proto,
        src: ServiceAddr::from_v4([ip[12], ip[13], ip[14], ip[15]]),
        dst: ServiceAddr::from_v4([ip[16], ip[17], ip[18], ip[19]]),
        src_port,
        dst_port,
    })
}

#[inline(always)]
fn ipv6(ctx: &TcContext, l3: usize) -> Result<Transport, Counter> {
    let ip = read_bytes::<IPV6_HLEN>(ctx, l3).ok_or(Counter::ParseErrors)?;
    if ip[0] >> 4 != 6 {
        return Err(Counter::ParseErrors);
    }
    let payload_len = usize::from(be16(&ip, 4));
    let mut next = ip[6];
    let mut l4 = l3 + IPV6_HLEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_UDP | IPPROTO_TCP => break,
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let ext = read_bytes::<2>(ctx, l4).ok_or(Counter::ParseErrors)?;
                next = ext[0];
                l4 += (usize::from(ext[1]) + 1) * 8;
            }
            IPV6_FRAGMENT => return Err(Counter::FragmentsPassed),
            _ => return Err(Counter::Passed),
        }
    }
    if next != IPPROTO_UDP && next != IPPROTO_TCP {
        return Err(Counter::Passed);
    }
    let (src_port, dst_port) = check_transport(ctx, l3, l4, IPV6_HLEN + payload_len, next)?;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);
    Ok(Transport {
        family: Family::V6,
        l3,
        l4,
        proto: next,
        src: ServiceAddr::from_v6(src),
        dst: ServiceAddr::from_v6(dst),
        src_port,
        dst_port,
    })
}

/// The IP header's length must cover the transport header, and the packet must hold what
/// the IP header claims: a packet with a lying length is passed, never rewritten.
/// Returns the ports.
#[inline(always)]
fn check_transport(
    ctx: &TcContext,
    l3: usize,
    l4: usize,
    ip_total_len: usize,
    proto: u8,
) -> Result<(u16, u16), Counter> {
    let min_l4 = if proto == IPPROTO_UDP {
        UDP_HLEN
    } else {
        TCP_HLEN_MIN
    };
    if l4 - l3 + min_l4 > ip_total_len {
        return Err(Counter::ParseErrors);
    }
    if l3 + ip_total_len > ctx.len() as usize {
        return Err(Counter::ParseErrors);
    }
    // The ports and (UDP) length are read from the linear data; the rewrite helpers
    // reach the checksum by offset and fail cleanly if it is out of reach.
    let header = read_bytes::<UDP_HLEN>(ctx, l4).ok_or(Counter::ParseErrors)?;
    if proto == IPPROTO_UDP {
        let udp_len = usize::from(be16(&header, 4));
        if udp_len < UDP_HLEN || l4 - l3 + udp_len > ip_total_len {
            return Err(Counter::ParseErrors);
        }
    }
    Ok((be16(&header, 0), be16(&header, 2)))
}
