//! The kernel responder: answers a cache hit from `NLDNS_ANSWERS` in the TC ingress
//! program and sends the reply straight back to the pod, byte for byte what the agent
//! would have sent (see `nldns_common::answers` for the rules it mirrors).
//!
//! Everything is checked before the packet is touched: a query the program cannot answer
//! exactly returns [`Answer::Pass`] with the reason, and the caller goes on with the
//! ordinary redirect to the agent. The reply is built in place: the client's header,
//! question and (optional) OPT are where they were, so the question keeps the client's
//! spelling for free; the header is rewritten, the stored body copied after the
//! question, its TTLs counted down, our OPT appended, addresses, ports and MACs swapped.
//!
//! Checksums are fixed by differences through `bpf_l4_csum_replace`, never recomputed
//! from scratch: the payload's difference is applied without BPF_F_PSEUDO_HDR and the
//! length's with it, which is exactly what a CHECKSUM_PARTIAL skb (veth offload, the
//! field holding only the pseudo-header sum) needs, as well as a full checksum. Address
//! and port swaps leave every sum unchanged.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_REDIRECT, TC_ACT_SHOT},
    btf_maps::PerCpuArray,
    helpers::{bpf_ktime_get_ns, bpf_redirect, bpf_redirect_peer, bpf_skb_change_tail},
    macros::btf_map,
    programs::TcContext,
    EbpfContext,
};
use nldns_common::{
    answers::{
        fold16, AnswerKey, KernelAnswer, ANSWER_BODY_MAX, ANSWER_KEY_CD, ANSWER_KEY_DO,
        ANSWER_NAME_MAX, ANSWER_TTLS_MAX, KERNEL_ANSWERS_EGRESS, KERNEL_ANSWERS_PEER,
    },
    Counter,
};

use crate::{
    maps::{self, NLDNS_ANSWERS, NLDNS_ANS_HITS},
    parse::{self, Family, Transport},
};

const ETH_HLEN: usize = 14;
const UDP_HLEN: usize = 8;
/// Where the UDP header may start at most: beyond this the query goes to the agent.
const MAX_L4: usize = 256;
const DNS_HEADER: usize = 12;
/// Our OPT record: root name, type, class (payload size), TTL (flags), RDLENGTH.
const OPT_LEN: usize = 11;
/// The longest query answered: header, the longest key name, type, class, one OPT.
const QUERY_MAX: usize = DNS_HEADER + ANSWER_NAME_MAX + 4 + OPT_LEN;
/// Room for the query in the scratch: 256, so that any length masked to 1..=256 fits (see
/// `read_query`).
const QUERY_ROOM: usize = 256;

const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
const FLAG_QR_OPCODE: u16 = 0xf800;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_AD: u16 = 0x0020;
const FLAG_CD: u16 = 0x0010;
/// The UDP payload size the agent advertises and never exceeds (`wire::OUR_EDNS_UDP_SIZE`).
const OUR_EDNS_UDP_SIZE: u16 = 1232;
/// Largest answer to a client without EDNS.
const PLAIN_UDP_LIMIT: usize = 512;
const NS_PER_SEC: u64 = 1_000_000_000;

/// Per-CPU room for the query being answered, the key built from it and the answer's
/// plan: more than the 512-byte stack holds beside the rest. The responder's own; the
/// agent never reads it.
#[btf_map]
static NLDNS_ANS_TMP: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// Per-CPU working room (`NLDNS_ANS_TMP`).
#[repr(C)]
pub struct Scratch {
    /// The packet `nat::answerable` found, handed over here (see [`stash`]).
    pkt: Transport,
    query: [u8; QUERY_ROOM],
    key: AnswerKey,
    /// What `build` needs, handed over here rather than on the stack: the three calls'
    /// frames must fit 512 bytes together, counted in 32-byte steps by Linux 6.1.
    plan: Plan,
    /// The intercept port whose agent socket this CPU last found, and when (see
    /// [`socket_seen_lately`]).
    socket_port: u16,
    socket_seen_ns: u64,
}

/// How long a found agent socket counts as there for kernel answers on this CPU.
///
/// The guard's socket lookup cost about 250 of an answer's ~1,000 ns (BPF_PROG_TEST_RUN);
/// an answer needs no agent, only proof that the agent is alive, so the answering
/// program looks again at most once a millisecond per CPU and port. After a kill -9 a CPU
/// may go on answering from the dead agent's table for up to this long (the answers are
/// the cached ones, still within their deadlines), against the heartbeat's 750 ms for a
/// hung agent. Redirects keep the lookup on every query: a query sent to a closed socket
/// is lost, an answer is not.
const SOCKET_RECHECK_NS: u64 = 1_000_000;

/// True if this CPU found the agent's socket for `port` within [`SOCKET_RECHECK_NS`].
#[inline(always)]
pub fn socket_seen_lately(port: u16) -> bool {
    let Some(scratch) = NLDNS_ANS_TMP.get_ptr(0) else {
        return false;
    };
    // SAFETY: this CPU's entry, read while no other program runs on this CPU.
    let (seen_port, seen_ns) = unsafe { ((*scratch).socket_port, (*scratch).socket_seen_ns) };
    // SAFETY: helper with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    seen_port == port && seen_ns != 0 && now.wrapping_sub(seen_ns) < SOCKET_RECHECK_NS
}

/// Notes that the agent's socket for `port` was just found; returns true.
#[inline(always)]
pub fn saw_socket(port: u16) -> bool {
    if let Some(scratch) = NLDNS_ANS_TMP.get_ptr_mut(0) {
        // SAFETY: this CPU's entry; helper with no arguments.
        unsafe {
            (*scratch).socket_port = port;
            (*scratch).socket_seen_ns = bpf_ktime_get_ns();
        }
    }
    true
}

/// The answer to build (see [`build`]).
struct Plan {
    query: Query,
    /// 0 for IPv4, 1 for IPv6: the hit counter to add to.
    family_index: usize,
    /// `DatapathConfig::kernel_answers`.
    mode: u8,
    /// Whole seconds since the entry was stored.
    elapsed: u32,
    /// Payload bytes of the answer.
    reply_len: usize,
    /// The query's destination and source MACs.
    eth: [u8; 12],
}

/// Hands the sorted packet to [`respond`] without a stack copy in each frame.
#[inline(always)]
pub fn stash(pkt: &Transport) {
    if let Some(scratch) = NLDNS_ANS_TMP.get_ptr_mut(0) {
        // SAFETY: this CPU's entry; a TC program is not preempted on its CPU.
        unsafe { (*scratch).pkt = *pkt };
    }
}

/// What became of a query.
pub enum Answer {
    /// Answered: return this action (the redirect back to the pod).
    Sent(i32),
    /// Not answered, packet untouched: count the reason and go on as without kernel
    /// answers.
    Pass(Counter),
    /// A helper failed after the packet was changed: drop it (the client retries).
    Failed,
}

/// What the query said, once it is known to be answerable.
struct Query {
    id: [u8; 2],
    flags: u16,
    /// Offset in the payload just past the question.
    question_end: usize,
    payload_len: usize,
    /// Whether the client sent an OPT, its payload size and DO bit (0 and false without).
    /// Plain fields, not an Option: LLVM leaves an Option's unused payload undefined, and
    /// spilling whatever register holds it is something the verifier refuses.
    edns: bool,
    udp_size: u16,
    dnssec_ok: bool,
    /// The OPT's bytes as sent (for the checksum difference).
    opt_sum: u32,
}

/// Answers the query [`stash`]ed by `nat::answerable`, if the kernel can. Out of line
/// (a BPF-to-BPF call): see `nldns_answer`.
#[inline(never)]
pub fn respond(ctx: &TcContext) -> Answer {
    match try_respond(ctx) {
        Ok(answer) => answer,
        Err(counter) => Answer::Pass(counter),
    }
}

#[inline(always)]
fn try_respond(ctx: &TcContext) -> Result<Answer, Counter> {
    let config = maps::config().ok_or(Counter::KernelPassQuery)?;
    let scratch = NLDNS_ANS_TMP
        .get_ptr_mut(0)
        .ok_or(Counter::KernelPassQuery)?;
    // SAFETY: this CPU's scratch entry; a TC program is not preempted on its CPU.
    let scratch = unsafe { &mut *scratch };
    // The family byte as stored, read opaquely and masked: it indexes the hit counter,
    // and the verifier must see that index bounded (LLVM would trust the enum's range).
    // SAFETY: a byte-sized enum read as its byte, from this CPU's scratch.
    let family_index = usize::from(
        unsafe { core::ptr::read_volatile((&raw const scratch.pkt.family).cast::<u8>()) } & 1,
    );
    // A VLAN tag in the frame (l3 past the Ethernet header): the pod would have to get it
    // back tagged; that is the agent's. The transport came through the scratch map, so the
    // verifier knows nothing of its offsets any more: l4 is bounded again (IPv4 options,
    // IPv6 extension headers).
    let l4 = scratch.pkt.l4;
    if scratch.pkt.l3 != ETH_HLEN || l4 > MAX_L4 || scratch.pkt.proto != parse::IPPROTO_UDP {
        return Err(Counter::KernelPassQuery);
    }
    let udp = parse::read_bytes::<UDP_HLEN>(ctx, l4).ok_or(Counter::KernelPassQuery)?;
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    // Trailing bytes after the datagram (padding): not a shape we rebuild exactly.
    if l4 + udp_len != ctx.len() as usize || udp_len < UDP_HLEN {
        return Err(Counter::KernelPassQuery);
    }
    let payload_len = udp_len - UDP_HLEN;
    read_query(ctx, l4 + UDP_HLEN, payload_len, scratch)?;
    let query = &scratch.plan.query;
    // SAFETY: the value is read, never written; the agent replaces whole entries with
    // one update, and a concurrent delete keeps the element alive until we are done (RCU).
    // By reference: a by-value key would be a 104-byte copy on the 512-byte stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let entry = unsafe { NLDNS_ANSWERS.get(&scratch.key) }.ok_or(Counter::KernelPassNoEntry)?;
    // SAFETY: helper with no arguments; CLOCK_MONOTONIC, the clock of the agent's Instant.
    let now = unsafe { bpf_ktime_get_ns() };
    if now >= entry.pass_after_ns {
        return Err(Counter::KernelPassExpiring);
    }
    let elapsed = (now.saturating_sub(entry.stored_at_ns) / NS_PER_SEC) as u32;
    let body_len = usize::from(entry.body_len);
    if body_len == 0 || body_len > ANSWER_BODY_MAX || usize::from(entry.ttl_count) > ANSWER_TTLS_MAX
    {
        return Err(Counter::KernelPassNoEntry);
    }
    let opt_len = if query.edns { OPT_LEN } else { 0 };
    let reply_len = query.question_end + body_len + opt_len;
    let limit = if query.edns {
        usize::from(
            query
                .udp_size
                .clamp(PLAIN_UDP_LIMIT as u16, OUR_EDNS_UDP_SIZE),
        )
    } else {
        PLAIN_UDP_LIMIT
    };
    if reply_len > limit {
        return Err(Counter::KernelPassTooLarge);
    }
    let eth = parse::read_bytes::<12>(ctx, 0).ok_or(Counter::KernelPassQuery)?;
    let plan = &mut scratch.plan;
    plan.family_index = family_index;
    plan.mode = config.kernel_answers;
    plan.elapsed = elapsed;
    plan.reply_len = reply_len;
    plan.eth = eth;

    // From here on the packet changes.
    Ok(build(ctx, entry, scratch).unwrap_or(Answer::Failed))
}

/// Copies the query into the scratch, checks it is one the kernel answers exactly and
/// builds its key there.
#[inline(always)]
fn read_query(
    ctx: &TcContext,
    payload_at: usize,
    payload_len: usize,
    scratch: &mut Scratch,
) -> Result<(), Counter> {
    // The helper's length must be provably 1..=QUERY_ROOM. Checking the payload's length
    // first does not prove it to every verifier (LLVM merges the two-sided check into one
    // compare, and Linux 6.1 loses the lower bound on the register copy the call uses), so
    // the length is masked into 1..=256 with no check before it, and checked after.
    let len = ((payload_len as u32).wrapping_sub(1) & (QUERY_ROOM as u32 - 1)) + 1;
    // SAFETY: the destination is this CPU's scratch, QUERY_ROOM >= `len` bytes long; the
    // helper checks the packet side (the payload is `payload_len` bytes, in the packet).
    let rc = unsafe {
        aya_ebpf::helpers::bpf_skb_load_bytes(
            ctx.as_ptr(),
            payload_at as u32,
            scratch.query.as_mut_ptr().cast(),
            len,
        )
    };
    if rc != 0
        || len as usize != payload_len
        || !(DNS_HEADER + 1 + 4..=QUERY_MAX).contains(&payload_len)
    {
        return Err(Counter::KernelPassQuery);
    }
    let q = &scratch.query;
    let flags = u16::from_be_bytes([q[2], q[3]]);
    // A response, or an opcode other than QUERY.
    if flags & FLAG_QR_OPCODE != 0 {
        return Err(Counter::KernelPassQuery);
    }
    // QDCOUNT 1, ANCOUNT 0, NSCOUNT 0, ARCOUNT 0 or 1 (the OPT, checked below).
    if q[4] != 0 || q[5] != 1 || q[6] | q[7] | q[8] | q[9] | q[10] != 0 || q[11] > 1 {
        return Err(Counter::KernelPassQuery);
    }
    let has_opt = q[11] == 1;
    let found = lowercase_name(&scratch.query, payload_len, &mut scratch.key)?;
    // The length goes through memory and back: from the loop it is one exact value per
    // path (96 of them), and every later use (indexes, then the whole answer) would be
    // verified once per value. Read back it is one unknown byte, verified once.
    // SAFETY: this CPU's scratch entry, written just before.
    let name_len = unsafe {
        core::ptr::write_volatile(&raw mut scratch.key.name_len, found as u8);
        usize::from(core::ptr::read_volatile(&raw const scratch.key.name_len))
    };
    if name_len == 0 || name_len > ANSWER_NAME_MAX {
        return Err(Counter::KernelPassQuery);
    }
    let q = &scratch.query;
    let at = DNS_HEADER + name_len;
    let (Some(&t0), Some(&t1), Some(&c0), Some(&c1)) =
        (q.get(at), q.get(at + 1), q.get(at + 2), q.get(at + 3))
    else {
        return Err(Counter::KernelPassQuery);
    };
    let qtype = u16::from_be_bytes([t0, t1]);
    let qclass = u16::from_be_bytes([c0, c1]);
    // Class IN only; never ANY, AXFR, IXFR or OPT as a question.
    if qclass != CLASS_IN || matches!(qtype, 41 | 251 | 252 | 255) {
        return Err(Counter::KernelPassQuery);
    }
    let question_end = at + 4;
    let mut edns = false;
    let mut udp_size = 0;
    let mut dnssec_ok = false;
    let mut opt_sum = 0;
    if has_opt {
        // Exactly one OPT with no options: 0, type 41, size, ext-rcode, version 0,
        // flags, RDLENGTH 0. Anything else (cookies, ECS, padding...) is the agent's.
        if payload_len != question_end + OPT_LEN {
            return Err(Counter::KernelPassQuery);
        }
        let mut opt = [0u8; OPT_LEN];
        for (i, byte) in opt.iter_mut().enumerate() {
            *byte = *q.get(question_end + i).ok_or(Counter::KernelPassQuery)?;
        }
        let rtype = u16::from_be_bytes([opt[1], opt[2]]);
        if opt[0] != 0 || rtype != TYPE_OPT || opt[6] != 0 || opt[9] != 0 || opt[10] != 0 {
            return Err(Counter::KernelPassQuery);
        }
        edns = true;
        udp_size = u16::from_be_bytes([opt[3], opt[4]]);
        dnssec_ok = opt[7] & 0x80 != 0;
        opt_sum = sum_at(&opt, question_end);
    } else if payload_len != question_end {
        return Err(Counter::KernelPassQuery);
    }
    let key = &mut scratch.key;
    key.qtype = qtype;
    key.qclass = qclass;
    key.flags = if dnssec_ok { ANSWER_KEY_DO } else { 0 }
        | if flags & FLAG_CD != 0 {
            ANSWER_KEY_CD
        } else {
            0
        };
    key._pad = [0; 2];
    scratch.plan.query = Query {
        id: [scratch.query[0], scratch.query[1]],
        flags,
        question_end,
        payload_len,
        edns,
        udp_size,
        dnssec_ok,
        opt_sum,
    };
    Ok(())
}

/// Writes the question name, lowercased and zero-padded, into `key.name`; returns its
/// length (final zero included). Compression pointers, bad label types and names longer
/// than the key pass.
///
/// The padding is written first, a word at a time, and the walk stops at the name's end:
/// byte by byte to the key's full length was a third of an answer's run time.
#[inline(always)]
fn lowercase_name(
    query: &[u8; QUERY_ROOM],
    payload_len: usize,
    key: &mut AnswerKey,
) -> Result<usize, Counter> {
    let words = key.name.as_mut_ptr().cast::<u64>();
    for w in 0..ANSWER_NAME_MAX / 8 {
        // SAFETY: word `w` of the name's ANSWER_NAME_MAX (a multiple of 8) bytes.
        unsafe { words.add(w).write_unaligned(0) };
    }
    let mut label_left = 0u8;
    for i in 0..ANSWER_NAME_MAX {
        let at = DNS_HEADER + i;
        if at >= payload_len {
            return Err(Counter::KernelPassQuery);
        }
        let c = query[at];
        if label_left == 0 {
            if c == 0 {
                // The final zero is already in the padding.
                return Ok(i + 1);
            }
            if c > 63 {
                return Err(Counter::KernelPassQuery);
            }
            label_left = c;
            key.name[i] = c;
        } else {
            label_left -= 1;
            key.name[i] = if c.wrapping_sub(b'A') < 26 {
                c | 0x20
            } else {
                c
            };
        }
    }
    Err(Counter::KernelPassQuery)
}

/// Turns the query into the answer and sends it back. `None`: a helper failed midway.
#[inline(never)]
fn build(ctx: &TcContext, entry: &KernelAnswer, scratch: &Scratch) -> Option<Answer> {
    let pkt = &scratch.pkt;
    let plan = &scratch.plan;
    let query = &plan.query;
    let (family_index, mode, elapsed, reply_len, eth) = (
        plan.family_index,
        plan.mode,
        plan.elapsed,
        plan.reply_len,
        &plan.eth,
    );
    let payload_at = pkt.l4 + UDP_HLEN;
    let body_at = query.question_end;
    let body_len = usize::from(entry.body_len);

    // The header: the client's ID, the stored flags with RD the client's and AA/TC
    // cleared, AD only for clients that show they understand it (RFC 6840 5.8).
    let mut flags = (entry.flags & !(FLAG_RD | FLAG_TC | FLAG_AA)) | (query.flags & FLAG_RD);
    if !query.dnssec_ok && query.flags & FLAG_AD == 0 {
        flags &= !FLAG_AD;
    }
    let arcount = entry.counts[2] + u16::from(query.edns);
    let mut header = [0u8; DNS_HEADER];
    header[0] = query.id[0];
    header[1] = query.id[1];
    header[2..4].copy_from_slice(&flags.to_be_bytes());
    header[4..6].copy_from_slice(&1u16.to_be_bytes());
    header[6..8].copy_from_slice(&entry.counts[0].to_be_bytes());
    header[8..10].copy_from_slice(&entry.counts[1].to_be_bytes());
    header[10..12].copy_from_slice(&arcount.to_be_bytes());

    // The payload's checksum difference (big-endian one's-complement arithmetic): `add`
    // sums what comes in (header, body, OPT, length), `sub` what goes (the old header, OPT
    // and length). The question stays.
    let mut add = sum_at(&header, 0);
    let mut sub = old_header_sum(query) + query.opt_sum;

    // SAFETY: helper on our own context; on success the packet is `reply_len` bytes of
    // payload long, and every later store is within it.
    let new_len = ctx.len() as usize - query.payload_len + reply_len;
    if unsafe { bpf_skb_change_tail(ctx.as_ptr().cast(), new_len as u32, 0) } != 0 {
        // Refused before anything changed (no room could be made): the agent answers.
        return Some(Answer::Pass(Counter::KernelAnswerErrors));
    }
    ctx.store(payload_at, &header, 0).ok()?;
    {
        // try_respond passed entries without a body or with more than the value holds; the
        // length is re-derived as 1..=256 in a form the verifier follows (LLVM turns a
        // two-sided check into one compare the verifier cannot use).
        let len = (u32::from(entry.body_len).wrapping_sub(1) & (ANSWER_BODY_MAX as u32 - 1)) + 1;
        // SAFETY: `len` bytes of the entry's body, all inside the value.
        let rc = unsafe {
            aya_ebpf::helpers::bpf_skb_store_bytes(
                ctx.as_ptr().cast(),
                (payload_at + body_at) as u32,
                entry.body.as_ptr().cast(),
                len,
                0,
            )
        };
        if rc != 0 {
            return None;
        }
    }
    // The TTLs, counted down. The loop body has no data-dependent branch that goes on
    // (only exits): with one, the verifier's paths double per record.
    let mut body_sum = entry.body_sum;
    for i in 0..ANSWER_TTLS_MAX {
        if i >= usize::from(entry.ttl_count) {
            break;
        }
        // Masked first, so the verifier sees the body read bounded.
        let at = usize::from(entry.ttl_offsets[i]) & (ANSWER_BODY_MAX - 1);
        if at > ANSWER_BODY_MAX - 4 || at + 4 > body_len {
            return None;
        }
        let stored = u32::from_be_bytes([
            entry.body[at],
            entry.body[at + 1],
            entry.body[at + 2],
            entry.body[at + 3],
        ]);
        let ttl = saturating_sub(stored, elapsed);
        ctx.store(payload_at + body_at + at, &ttl.to_be_bytes(), 0)
            .ok()?;
        // Offsets here are from the body's start; the body's sum is swapped as a whole
        // below if the body itself sits at an odd offset.
        let odd = at & 1;
        body_sum += at_parity(word_sum(ttl), odd) + (0xffff - at_parity(word_sum(stored), odd));
        body_sum = fold16(body_sum);
    }
    add += at_parity(body_sum, body_at & 1);
    if query.edns {
        let size = OUR_EDNS_UDP_SIZE.to_be_bytes();
        let opt: [u8; OPT_LEN] = [
            0,
            0,
            TYPE_OPT as u8,
            size[0],
            size[1],
            0,
            0,
            if query.dnssec_ok { 0x80 } else { 0 },
            0,
            0,
            0,
        ];
        ctx.store(payload_at + body_at + body_len, &opt, 0).ok()?;
        add += sum_at(&opt, body_at + body_len);
    }

    // Lengths: UDP (in the payload's sum and, separately, the pseudo-header's) and IP.
    let old_udp = (UDP_HLEN + query.payload_len) as u16;
    let new_udp = (UDP_HLEN + reply_len) as u16;
    ctx.store(pkt.l4 + 4, &new_udp.to_be(), 0).ok()?;
    add += u32::from(new_udp);
    sub += u32::from(old_udp);
    match pkt.family {
        Family::V4 => {
            let ip_len = (pkt.l4 - pkt.l3) as u16 + new_udp;
            let old_ip_len = (pkt.l4 - pkt.l3) as u16 + old_udp;
            ctx.store(pkt.l3 + 2, &ip_len.to_be(), 0).ok()?;
            ctx.l3_csum_replace(
                pkt.l3 + 10,
                u64::from(old_ip_len.to_be()),
                u64::from(ip_len.to_be()),
                2,
            )
            .ok()?;
        }
        Family::V6 => {
            let ip_len = (pkt.l4 - pkt.l3 - 40) as u16 + new_udp;
            ctx.store(pkt.l3 + 4, &ip_len.to_be(), 0).ok()?;
        }
    }

    // Back where it came from: swapped MACs, addresses and ports (no sum changes).
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&eth[6..12]);
    swapped[6..].copy_from_slice(&eth[..6]);
    ctx.store(0, &swapped, 0).ok()?;
    match pkt.family {
        Family::V4 => {
            let mut addrs = [0u8; 8];
            addrs[..4].copy_from_slice(&pkt.dst.octets[12..]);
            addrs[4..].copy_from_slice(&pkt.src.octets[12..]);
            ctx.store(pkt.src_addr_offset(), &addrs, 0).ok()?;
        }
        Family::V6 => {
            ctx.store(pkt.src_addr_offset(), &pkt.dst.octets, 0).ok()?;
            ctx.store(pkt.dst_addr_offset(), &pkt.src.octets, 0).ok()?;
        }
    }
    let mut ports = [0u8; 4];
    ports[..2].copy_from_slice(&pkt.dst_port.to_be_bytes());
    ports[2..].copy_from_slice(&pkt.src_port.to_be_bytes());
    ctx.store(pkt.l4, &ports, 0).ok()?;

    // The checksum: the payload's difference as the kernel's own (native-order) sum, then
    // the pseudo-header's length. MARK_MANGLED_0 keeps an IPv4 "no checksum" at 0.
    let csum = pkt.csum_offset();
    let diff = fold16(fold16(add) + (0xffff - fold16(sub)));
    let mangled = u64::from(BPF_F_MARK_MANGLED_0);
    ctx.l4_csum_replace(csum, 0, u64::from((diff as u16).to_be()), mangled)
        .ok()?;
    ctx.l4_csum_replace(
        csum,
        u64::from(old_udp.to_be()),
        u64::from(new_udp.to_be()),
        u64::from(BPF_F_PSEUDO_HDR) | mangled | 2,
    )
    .ok()?;

    count_hit(entry.hits_slot, family_index);
    // SAFETY: the context is an __sk_buff; its ifindex is the interface the query came in
    // on (the host end of the pod's pair). The redirect helpers take plain integers.
    let action = unsafe {
        let ifindex = (*ctx.as_ptr().cast::<aya_ebpf::bindings::__sk_buff>()).ifindex;
        match mode {
            KERNEL_ANSWERS_PEER => bpf_redirect_peer(ifindex, 0),
            KERNEL_ANSWERS_EGRESS => bpf_redirect(ifindex, 0),
            _ => TC_ACT_SHOT as i64,
        }
    };
    if action != i64::from(TC_ACT_REDIRECT) {
        return Some(Answer::Failed);
    }
    Some(Answer::Sent(TC_ACT_REDIRECT))
}

/// The old header's sum: the client's 12 bytes as they were (ID, flags, and the counts
/// read_query allowed: 1, 0, 0, 0 or 1).
#[inline(always)]
fn old_header_sum(query: &Query) -> u32 {
    let id = u32::from(u16::from_be_bytes(query.id));
    let arcount = u32::from(query.edns);
    fold16(id + u32::from(query.flags) + 1 + arcount)
}

/// Adds one to the entry's counter for the family (`family_index` 0: IPv4, 1: IPv6).
#[inline(always)]
fn count_hit(slot: u32, family_index: usize) {
    let Some(hits) = NLDNS_ANS_HITS.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: a valid element of the array map. Other CPUs add to it at the same time,
    // so the add is atomic: the bpf target has no `AtomicU64::fetch_add`, but the
    // intrinsic with its result unused is the kernel's BPF_XADD (lock add).
    unsafe {
        let counter = (&raw mut (*hits).v4).add(family_index & 1);
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            counter, 1,
        );
    }
}

/// The one's-complement sum of `bytes` placed at offset `at` of the payload, folded:
/// bytes at odd offsets are the low halves of their 16-bit words.
#[inline(always)]
fn sum_at<const N: usize>(bytes: &[u8; N], at: usize) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < N {
        let hi = u32::from(bytes[i]);
        let lo = if i + 1 < N {
            u32::from(bytes[i + 1])
        } else {
            0
        };
        sum += (hi << 8) | lo;
        i += 2;
    }
    at_parity(fold16(sum), at & 1)
}

/// A folded sum taken at an even offset, moved to an offset of parity `odd` (0 or 1):
/// byte-swapped when odd. Branch-free (see the TTL loop).
#[inline(always)]
fn at_parity(sum: u32, odd: usize) -> u32 {
    let swapped = ((sum & 0xff) << 8) | ((sum >> 8) & 0xff);
    let pick = 0u32.wrapping_sub((odd & 1) as u32);
    (sum & !pick) | (swapped & pick)
}

/// The folded sum of a 32-bit field's two 16-bit words.
#[inline(always)]
fn word_sum(v: u32) -> u32 {
    fold16((v >> 16) + (v & 0xffff))
}

/// `a - b`, 0 when `b` is larger, without a branch (the bpf target has no conditional
/// move: a comparison is a jump).
#[inline(always)]
fn saturating_sub(a: u32, b: u32) -> u32 {
    let diff = i64::from(a) - i64::from(b);
    (diff & !(diff >> 63)) as u32
}
