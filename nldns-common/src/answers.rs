//! Kernel answers: cache entries the agent publishes so the TC ingress program can answer
//! a hit itself, without the query ever reaching a socket.
//!
//! The userspace cache stays the only source of truth. It writes one [`AnswerKey`] ->
//! [`KernelAnswer`] pair per entry it is willing to let the kernel serve (the
//! `NLDNS_ANSWERS` hash map) and deletes it on eviction, expiry and reload. The kernel
//! renders the same bytes the agent's `wire::render_answer` would: the client's ID, RD
//! bit and question bytes (so its 0x20 case comes back), the stored flags with AA/TC
//! cleared and AD kept only for clients that asked, TTLs counted down by whole seconds
//! since `stored_at_ns`, and an OPT record (the agent's payload size, DO echoed) when
//! and only when the query had one. Everything it cannot do exactly is passed on to the
//! agent, as if kernel answers were off.
//!
//! Sizes are fixed because BPF map values are: an entry's body (everything after the
//! question) is at most [`ANSWER_BODY_MAX`] bytes with at most [`ANSWER_TTLS_MAX`]
//! records; larger answers stay userspace hits. The map is created without
//! preallocation, so its memory follows the entries it holds.

/// Longest question name (wire form, final zero included) the kernel key holds. Longer
/// names are answered by the agent. With the value's size this keeps a map element
/// (the kernel's 48-byte header, key, value, its allocator's 8 bytes) at 504 bytes, inside
/// the allocator's 512-byte class: 128 would put every entry in the 1024-byte one.
/// Kubernetes names, with the search-path expansions of ndots:5, are well within it.
pub const ANSWER_NAME_MAX: usize = 96;
/// Bytes of an answer after its question: answer, authority and additional sections.
pub const ANSWER_BODY_MAX: usize = 256;
/// Records (TTL fields) of an answer the kernel counts down.
pub const ANSWER_TTLS_MAX: usize = 24;
/// Entries the kernel holds at most (and hit counter slots). The agent numbers hit slots
/// in 16 bits with two values reserved, which keeps its cache entry at 32 bytes.
pub const ANSWER_ENTRIES_MAX: u32 = 65_534;

/// [`AnswerKey::flags`] bit: the query had DO set (the cache's `KEY_DO`).
pub const ANSWER_KEY_DO: u8 = 1;
/// [`AnswerKey::flags`] bit: the query had CD set (the cache's `KEY_CD`).
pub const ANSWER_KEY_CD: u8 = 2;

/// Key of `NLDNS_ANSWERS`: the cache key in fixed-size form.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnswerKey {
    /// The question name in wire form, ASCII-lowercased, zero-padded.
    pub name: [u8; ANSWER_NAME_MAX],
    /// Host byte order.
    pub qtype: u16,
    pub qclass: u16,
    /// [`ANSWER_KEY_DO`] | [`ANSWER_KEY_CD`].
    pub flags: u8,
    /// Bytes of `name` in use (final zero included).
    pub name_len: u8,
    pub _pad: [u8; 2],
}

impl Default for AnswerKey {
    fn default() -> Self {
        AnswerKey {
            name: [0; ANSWER_NAME_MAX],
            qtype: 0,
            qclass: 0,
            flags: 0,
            name_len: 0,
            _pad: [0; 2],
        }
    }
}

/// Value of `NLDNS_ANSWERS`: one stored answer, ready to be copied after the client's
/// question.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelAnswer {
    /// When the answer was stored: CLOCK_MONOTONIC ns, the clock of `bpf_ktime_get_ns`.
    /// TTLs are counted down by the whole seconds since.
    pub stored_at_ns: u64,
    /// From this moment the kernel passes the query to the agent: before the entry
    /// expires, and before its prefetch window, so the agent sees the queries that decide
    /// a prefetch and serve-stale.
    pub pass_after_ns: u64,
    /// Index into `NLDNS_ANSWER_HITS`, where the kernel counts what it answered.
    pub hits_slot: u32,
    /// One's-complement sum (folded to 16 bits) of `body` as stored, taken as if the body
    /// started at an even offset; the kernel byte-swaps it when the body does not.
    pub body_sum: u32,
    /// The stored header's flags word (ID and counts aside), host byte order.
    pub flags: u16,
    /// ANCOUNT, NSCOUNT, ARCOUNT of the stored answer (no OPT: the kernel adds its own).
    pub counts: [u16; 3],
    /// Bytes of `body` in use.
    pub body_len: u16,
    /// Entries of `ttl_offsets` in use.
    pub ttl_count: u16,
    /// Offsets of each record's TTL field, from the start of `body`.
    pub ttl_offsets: [u16; ANSWER_TTLS_MAX],
    /// The answer after its question, with the TTLs as stored (clamped to the entry's
    /// lifetime, not yet counted down).
    pub body: [u8; ANSWER_BODY_MAX],
    pub _pad: [u8; 4],
}

impl Default for KernelAnswer {
    fn default() -> Self {
        KernelAnswer {
            stored_at_ns: 0,
            pass_after_ns: 0,
            hits_slot: 0,
            body_sum: 0,
            flags: 0,
            counts: [0; 3],
            body_len: 0,
            ttl_count: 0,
            ttl_offsets: [0; ANSWER_TTLS_MAX],
            body: [0; ANSWER_BODY_MAX],
            _pad: [0; 4],
        }
    }
}

/// Value of `NLDNS_ANSWER_HITS` (an mmap-able array indexed by
/// [`KernelAnswer::hits_slot`]): queries the kernel answered from that entry, by family.
/// The agent reads the deltas every second into the entry's hit count, its LRU recency
/// and the request and hit metrics. 64-bit because the bpf target's atomic add is.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AnswerHits {
    pub v4: u64,
    pub v6: u64,
}

/// [`crate::DatapathConfig::kernel_answers`]: how (and whether) the ingress program sends
/// its answers back to the pod.
pub const KERNEL_ANSWERS_OFF: u8 = 0;
/// `bpf_redirect_peer`: straight into the pod's end of a veth or netkit pair.
pub const KERNEL_ANSWERS_PEER: u8 = 1;
/// `bpf_redirect` to the same interface's egress (any interface kind).
pub const KERNEL_ANSWERS_EGRESS: u8 = 2;

/// The one's-complement sum of `bytes` (a zero byte appended to an odd length), folded to
/// 16 bits: what [`KernelAnswer::body_sum`] holds.
pub fn ones_complement_sum(bytes: &[u8]) -> u32 {
    let mut sum: u32 = 0;
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    fold16(sum)
}

/// End-around carry down to 16 bits.
#[inline(always)]
pub const fn fold16(mut sum: u32) -> u32 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<AnswerKey>(), ANSWER_NAME_MAX + 8);
        assert_eq!(
            size_of::<KernelAnswer>(),
            8 + 8 + 4 + 4 + 2 + 6 + 2 + 2 + 2 * ANSWER_TTLS_MAX + ANSWER_BODY_MAX + 4
        );
        assert_eq!(size_of::<KernelAnswer>() % 8, 0);
        assert_eq!(size_of::<AnswerHits>(), 16);
    }

    #[test]
    fn sum_pads_odd_lengths_with_zero() {
        assert_eq!(ones_complement_sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
        assert_eq!(ones_complement_sum(&[0xff, 0xff, 0x00, 0x01]), 0x0001);
        assert_eq!(ones_complement_sum(&[]), 0);
    }
}
