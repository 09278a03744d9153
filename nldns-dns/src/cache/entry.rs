//! One cached answer packed into one heap block: the part of the cache whose layout
//! is measured in bytes per entry (see `examples/cache_memory.rs`), and the only
//! `unsafe` of the cache (a byte view of the words and the `Arc<[u16]>` cast).

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// Where the question name starts in a DNS message (right after the header).
const QUESTION_AT: usize = 12;

/// How an answer was classified when stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    /// NOERROR with answer records.
    Positive,
    /// NXDOMAIN or NODATA, TTL from the SOA (RFC 2308).
    Negative,
    /// SERVFAIL from upstream, or all upstreams failed (RFC 9520 failure caching).
    ServFail,
}

/// An answer as stored: the wire message without OPT, ID zeroed, every record's TTL
/// already clamped to the entry's lifetime so a countdown never overshoots it.
///
/// One heap block (the `Arc`'s) holds all of it as `u16` words, so the TTL offsets
/// are aligned: a header (when it was stored, its lifetime, lengths, kind), the TTL
/// offsets, then as bytes the key's name if stored apart and the wire message. Two
/// blocks (the `Arc` with fields, and a buffer) measured 32 bytes more per entry.
#[repr(transparent)]
pub struct CachedAnswer {
    words: [u16],
}

/// Header words: stored_at (i64 nanoseconds from [`EPOCH`], 4 words), ttl (2),
/// wire length (1), name length | kind << 8 (1), number of TTL offsets (1).
const HEADER: usize = 9;

/// What `stored_at` is counted from (a signed offset: callers may pass earlier
/// instants than the first use).
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// A message longer than this cannot be sent over any DNS transport.
const MAX_WIRE: usize = u16::MAX as usize;

impl std::fmt::Debug for CachedAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedAnswer")
            .field("kind", &self.kind())
            .field("ttl", &self.ttl())
            .field("stored_at", &self.stored_at())
            .field("wire_len", &self.wire().len())
            .field("ttl_offsets", &self.ttl_offsets())
            .finish()
    }
}

impl CachedAnswer {
    /// Packs an answer; `None` when the message or its TTL offsets are too many
    /// bytes for DNS (65535), which no real exchange yields.
    pub fn new(
        wire: &[u8],
        ttl_offsets: &[u16],
        kind: AnswerKind,
        ttl: u32,
        stored_at: Instant,
    ) -> Option<Arc<Self>> {
        Self::pack(ttl_offsets, &[], wire, kind, ttl, stored_at)
    }

    fn pack(
        ttl_offsets: &[u16],
        name: &[u8],
        wire: &[u8],
        kind: AnswerKind,
        ttl: u32,
        stored_at: Instant,
    ) -> Option<Arc<Self>> {
        if wire.len() > MAX_WIRE || ttl_offsets.len() > MAX_WIRE || name.len() > 255 {
            return None;
        }
        let epoch = *EPOCH;
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        let at = if stored_at >= epoch {
            nanos(stored_at - epoch)
        } else {
            -nanos(epoch - stored_at)
        };
        let bytes = name.len() + wire.len();
        let head = HEADER + ttl_offsets.len();
        let mut words = vec![0u16; head + bytes.div_ceil(2)];
        for (i, w) in words[..4].iter_mut().enumerate() {
            *w = (at >> (16 * i)) as u16;
        }
        words[4] = ttl as u16;
        words[5] = (ttl >> 16) as u16;
        words[6] = wire.len() as u16;
        let kind_bits: u16 = match kind {
            AnswerKind::Positive => 0,
            AnswerKind::Negative => 1,
            AnswerKind::ServFail => 2,
        };
        words[7] = name.len() as u16 | kind_bits << 8;
        words[8] = ttl_offsets.len() as u16;
        words[HEADER..head].copy_from_slice(ttl_offsets);
        let tail = as_bytes_mut(&mut words[head..]);
        tail[..name.len()].copy_from_slice(name);
        tail[name.len()..bytes].copy_from_slice(wire);
        let words: Arc<[u16]> = words.into();
        // SAFETY: CachedAnswer is repr(transparent) over [u16], so the pointer (with
        // its length) and the allocation's layout are the same for both types.
        Some(unsafe { Arc::from_raw(Arc::into_raw(words) as *const CachedAnswer) })
    }

    /// How the answer was classified.
    pub fn kind(&self) -> AnswerKind {
        match self.words[7] >> 8 {
            0 => AnswerKind::Positive,
            1 => AnswerKind::Negative,
            _ => AnswerKind::ServFail,
        }
    }

    /// Seconds the answer stays fresh after [`Self::stored_at`].
    pub fn ttl(&self) -> u32 {
        u32::from(self.words[4]) | u32::from(self.words[5]) << 16
    }

    pub fn stored_at(&self) -> Instant {
        let at = (0..4).fold(0u64, |acc, i| acc | u64::from(self.words[i]) << (16 * i)) as i64;
        let epoch = *EPOCH;
        let d = Duration::from_nanos(at.unsigned_abs());
        if at >= 0 {
            epoch + d
        } else {
            epoch.checked_sub(d).unwrap_or(epoch)
        }
    }

    fn name_len(&self) -> usize {
        usize::from(self.words[7] & 0xff)
    }

    /// The stored message (ID zero, no OPT).
    pub fn wire(&self) -> &[u8] {
        let start = self.name_len();
        &self.tail()[start..start + usize::from(self.words[6])]
    }

    /// Where each record's TTL sits in [`Self::wire`].
    pub fn ttl_offsets(&self) -> &[u16] {
        &self.words[HEADER..self.head()]
    }

    fn tail(&self) -> &[u8] {
        as_bytes(&self.words[self.head()..])
    }

    /// Where the bytes start: after the header and the offsets.
    fn head(&self) -> usize {
        HEADER + usize::from(self.words[8])
    }

    /// The key's name as this answer keeps it: apart, or the wire's question name
    /// (slots compare lengths first, so a longer stored name never matches a prefix).
    pub(super) fn key_name(&self, len: usize) -> &[u8] {
        match self.name_len() {
            0 => self
                .wire()
                .get(QUESTION_AT..QUESTION_AT + len)
                .unwrap_or_default(),
            n => &self.tail()[..n],
        }
    }

    /// This answer ready to be stored under `name`: itself when its question already
    /// spells the name, else a copy carrying the name apart.
    pub(super) fn for_key(self: Arc<Self>, name: &[u8]) -> Option<Arc<Self>> {
        let wire = self.wire();
        let qdcount = wire.get(4..6) == Some(&[0, 1]);
        if self.name_len() == 0
            && qdcount
            && wire.get(QUESTION_AT..QUESTION_AT + name.len()) == Some(name)
        {
            return Some(self);
        }
        Self::pack(
            self.ttl_offsets(),
            name,
            wire,
            self.kind(),
            self.ttl(),
            self.stored_at(),
        )
    }

    /// Whole seconds spent in the cache, for the TTL countdown.
    pub fn elapsed_secs(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.stored_at()).as_secs()).unwrap_or(u32::MAX)
    }

    pub fn fresh_until(&self) -> Instant {
        self.stored_at() + Duration::from_secs(u64::from(self.ttl()))
    }

    /// Heap bytes this answer holds: its block with the `Arc`'s counts and malloc's
    /// header and rounding. The cache adds its slot and index to charge an entry.
    pub(super) fn heap_bytes(&self) -> usize {
        const BLOCK_OVERHEAD: usize = 16;
        2 * std::mem::size_of::<usize>() + std::mem::size_of_val(&self.words) + BLOCK_OVERHEAD
    }
}

fn as_bytes(words: &[u16]) -> &[u8] {
    // SAFETY: u8 has no alignment, every byte of a u16 slice is initialized, and the
    // length covers exactly the same memory.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), words.len() * 2) }
}

fn as_bytes_mut(words: &mut [u16]) -> &mut [u8] {
    // SAFETY: as in `as_bytes`; any byte pattern is a valid u16, so writes through
    // the byte view cannot make the words invalid.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 2) }
}
