//! The answer cache: wire-format answers with TTL offsets, bounded in entries and
//! bytes, least-recently-used eviction, TTL countdown, prefetch marks and RFC 8767
//! serve-stale bookkeeping.
//!
//! Keys and values are shaped for a future BPF-map twin (see DESIGN-NOTES, "The
//! cache's hot path"): the key is the lowercased wire name plus fixed-size fields,
//! the value is the answer's wire bytes plus the offsets of its TTL fields.
//!
//! Memory (measured with `examples/cache_memory.rs`): an entry is two heap
//! allocations, the shared [`CachedAnswer`] and its one buffer (TTL offsets and wire
//! message, and the key's name only when the wire's question does not already spell
//! it), plus a slot in a slab and a 4-byte index in a hash table. The LRU order is a
//! list threaded through the slab by index, so it costs no allocation either.
//!
//! Time is passed in (`now`) so the arithmetic is testable without sleeping.

use std::hash::BuildHasher;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use hashbrown::{DefaultHashBuilder, HashTable};

/// Bit in [`CacheKey::flags`]: the client set DO (RFC 3225), so DNSSEC records matter.
pub const KEY_DO: u8 = 1;
/// Bit in [`CacheKey::flags`]: the client set CD (RFC 4035), so validation differs.
pub const KEY_CD: u8 = 2;

/// Where the question name starts in a DNS message (right after the header).
const QUESTION_AT: usize = 12;

/// What identifies a cached answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// Question name in wire form, ASCII-lowercased.
    pub name: Box<[u8]>,
    pub qtype: u16,
    pub qclass: u16,
    /// [`KEY_DO`] | [`KEY_CD`].
    pub flags: u8,
}

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
    fn key_name(&self, len: usize) -> &[u8] {
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
    fn for_key(self: Arc<Self>, name: &[u8]) -> Option<Arc<Self>> {
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

    fn fresh_until(&self) -> Instant {
        self.stored_at() + Duration::from_secs(u64::from(self.ttl()))
    }

    /// Bytes charged against the cache's byte budget: what the entry really holds
    /// (its slab slot, its index, and the answer's heap block with the `Arc`'s
    /// counts and malloc's header and rounding).
    fn charge(&self) -> usize {
        const BLOCK_OVERHEAD: usize = 16;
        const INDEX: usize = 8; // a u32 and a control byte, at hashbrown's load factor
        std::mem::size_of::<Slot>()
            + INDEX
            + 2 * std::mem::size_of::<usize>()
            + std::mem::size_of_val(&self.words)
            + BLOCK_OVERHEAD
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

/// Cache limits and lifetimes that `lookup`/`insert` need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePolicy {
    pub max_entries: usize,
    pub max_bytes: usize,
    /// Prefetch an entry hit at least this many times ...
    pub prefetch_min_hits: u32,
    /// ... once less than this percentage of its TTL is left. 0 disables prefetch.
    pub prefetch_percent: u32,
    /// How long past expiry an answer may still be served when upstreams fail.
    /// Zero disables serve-stale.
    pub stale_max: Duration,
    /// After an upstream failure, serve stale without asking upstream for this long
    /// (RFC 8767's failure recheck timer).
    pub stale_recheck: Duration,
}

/// One cached entry in the slab, linked into the LRU list by slab index.
struct Slot {
    answer: Arc<CachedAnswer>,
    /// Set after an upstream failure, in whole seconds after the answer's
    /// `stored_at` (0: no failure noted): until then, stale is served without
    /// asking upstream. Seconds keep the slot at 32 bytes.
    retry_after: u32,
    hits: u32,
    /// Neighbours in recency order ([`NIL`] at either end): `prev` is less recent.
    prev: u32,
    next: u32,
    qtype: u16,
    qclass: u16,
    flags: u8,
    name_len: u8,
    prefetch_started: bool,
}

impl Slot {
    fn name(&self) -> &[u8] {
        self.answer.key_name(usize::from(self.name_len))
    }

    fn matches(&self, key: &CacheKey) -> bool {
        usize::from(self.name_len) == key.name.len()
            && self.qtype == key.qtype
            && self.qclass == key.qclass
            && self.flags == key.flags
            && self.name() == &key.name[..]
    }
}

/// End of the LRU list / no slot.
const NIL: u32 = u32::MAX;

/// Result of a lookup.
#[derive(Debug)]
pub enum Lookup {
    /// Still fresh; `prefetch` asks the caller to refresh it in the background (the
    /// mark is set, so only one caller is asked).
    Fresh {
        answer: Arc<CachedAnswer>,
        prefetch: bool,
    },
    /// Expired but within the serve-stale bound. `ask_upstream` is false while the
    /// failure recheck timer runs: answer stale straight away.
    Stale {
        answer: Arc<CachedAnswer>,
        ask_upstream: bool,
    },
    Miss,
}

/// Counters the cache reports; the caller turns them into metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: usize,
    pub bytes: usize,
    pub evictions: u64,
}

/// The cache itself; not synchronized (the service wraps it in a mutex held only
/// for a hash lookup or an insert).
pub struct Cache {
    /// Slab indices, hashed by key.
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    /// Entries; `None` slots are listed in `free` for reuse.
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// Least and most recently used ends of the LRU list.
    lru: u32,
    mru: u32,
    len: usize,
    policy: CachePolicy,
    bytes: usize,
    evictions: u64,
    unreported_evictions: u64,
}

impl Cache {
    pub fn new(policy: CachePolicy) -> Self {
        Cache {
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            slots: Vec::new(),
            free: Vec::new(),
            lru: NIL,
            mru: NIL,
            len: 0,
            policy,
            bytes: 0,
            evictions: 0,
            unreported_evictions: 0,
        }
    }

    /// Applies new limits, evicting at once if they shrank; entries are kept.
    pub fn set_policy(&mut self, policy: CachePolicy) {
        self.policy = policy;
        self.evict_to_fit();
    }

    /// Evictions since the last call (for a metrics counter that must not double
    /// count when several callers report at once).
    pub fn take_new_evictions(&mut self) -> u64 {
        std::mem::take(&mut self.unreported_evictions)
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.len,
            bytes: self.bytes,
            evictions: self.evictions,
        }
    }

    pub fn lookup(&mut self, key: &CacheKey, now: Instant) -> Lookup {
        let Some(at) = self.find(key) else {
            return Lookup::Miss;
        };
        self.touch(at);
        let policy = &self.policy;
        let slot = self.slots[at as usize]
            .as_mut()
            .expect("indexed slots are occupied");
        let fresh_until = slot.answer.fresh_until();
        if now < fresh_until {
            slot.hits = slot.hits.saturating_add(1);
            let left = fresh_until - now;
            let window =
                Duration::from_secs(u64::from(slot.answer.ttl())) * policy.prefetch_percent / 100;
            let prefetch = policy.prefetch_percent > 0
                && slot.answer.kind() != AnswerKind::ServFail
                && !slot.prefetch_started
                && slot.hits >= policy.prefetch_min_hits
                && left < window;
            if prefetch {
                slot.prefetch_started = true;
            }
            return Lookup::Fresh {
                answer: slot.answer.clone(),
                prefetch,
            };
        }
        let stale_ok = slot.answer.kind() != AnswerKind::ServFail
            && now < fresh_until + policy.stale_max
            && !policy.stale_max.is_zero();
        if stale_ok {
            return Lookup::Stale {
                answer: slot.answer.clone(),
                ask_upstream: slot.retry_after == 0
                    || now
                        >= slot.answer.stored_at()
                            + Duration::from_secs(u64::from(slot.retry_after)),
            };
        }
        self.remove_at(at);
        Lookup::Miss
    }

    /// Stores (or replaces) an answer, then evicts least-recently-used entries until
    /// both budgets hold. An answer larger than the whole byte budget is not stored.
    pub fn insert(&mut self, key: CacheKey, answer: Arc<CachedAnswer>) {
        if self.policy.max_entries == 0 || key.name.len() > 255 {
            return;
        }
        let Some(answer) = answer.for_key(&key.name) else {
            return;
        };
        if answer.charge() > self.policy.max_bytes {
            return;
        }
        if let Some(at) = self.find(&key) {
            self.remove_at(at);
        }
        let slot = Slot {
            answer,
            retry_after: 0,
            hits: 0,
            prev: NIL,
            next: NIL,
            qtype: key.qtype,
            qclass: key.qclass,
            flags: key.flags,
            name_len: key.name.len() as u8,
            prefetch_started: false,
        };
        self.bytes += slot.answer.charge();
        let at = match self.free.pop() {
            Some(at) => {
                self.slots[at as usize] = Some(slot);
                at
            }
            None => {
                // Indices are u32 (NIL reserved); max_entries far below that keeps
                // the slab from ever reaching it, but refuse rather than wrap.
                let Ok(at) = u32::try_from(self.slots.len()) else {
                    self.bytes -= slot.answer.charge();
                    return;
                };
                if at == NIL {
                    self.bytes -= slot.answer.charge();
                    return;
                }
                self.slots.push(Some(slot));
                at
            }
        };
        let hash = self.hash_key(&key.name, key.qtype, key.qclass, key.flags);
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(hash, at, |&i| {
            let s = slots[i as usize]
                .as_ref()
                .expect("indexed slots are occupied");
            hash_parts(hasher, s.name(), s.qtype, s.qclass, s.flags)
        });
        self.len += 1;
        self.link_mru(at);
        self.evict_to_fit();
    }

    /// Records an upstream failure for a stale entry: serve it without asking
    /// upstream again until the recheck timer runs out. Returns the entry when it is
    /// still within the stale bound.
    pub fn note_upstream_failure(
        &mut self,
        key: &CacheKey,
        now: Instant,
    ) -> Option<Arc<CachedAnswer>> {
        let recheck = self.policy.stale_recheck;
        match self.lookup(key, now) {
            Lookup::Stale { answer, .. } => {
                if let Some(at) = self.find(key) {
                    let slot = self.slot_mut(at);
                    // Rounded up, so upstream is never asked before the timer ran out.
                    let wait = (now + recheck).saturating_duration_since(slot.answer.stored_at());
                    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                    slot.retry_after = u32::try_from(secs).unwrap_or(u32::MAX).max(1);
                }
                Some(answer)
            }
            // A fresh entry (e.g. a failed prefetch): let a later prefetch try again.
            Lookup::Fresh { answer, .. } => {
                if let Some(at) = self.find(key) {
                    self.slot_mut(at).prefetch_started = false;
                }
                Some(answer)
            }
            Lookup::Miss => None,
        }
    }

    /// The entry if it can still be served (fresh or stale), without touching
    /// hit counts or recency.
    pub fn peek_servable(&self, key: &CacheKey, now: Instant) -> Option<Arc<CachedAnswer>> {
        let at = self.find(key)?;
        let answer = &self.slots[at as usize].as_ref()?.answer;
        let until = answer.fresh_until()
            + if answer.kind() == AnswerKind::ServFail {
                Duration::ZERO
            } else {
                self.policy.stale_max
            };
        (now < until).then(|| answer.clone())
    }

    fn hash_key(&self, name: &[u8], qtype: u16, qclass: u16, flags: u8) -> u64 {
        hash_parts(&self.hasher, name, qtype, qclass, flags)
    }

    fn find(&self, key: &CacheKey) -> Option<u32> {
        let hash = self.hash_key(&key.name, key.qtype, key.qclass, key.flags);
        self.index
            .find(hash, |&i| {
                self.slots[i as usize]
                    .as_ref()
                    .is_some_and(|s| s.matches(key))
            })
            .copied()
    }

    fn slot(&self, at: u32) -> &Slot {
        self.slots[at as usize]
            .as_ref()
            .expect("linked slots are occupied")
    }

    fn slot_mut(&mut self, at: u32) -> &mut Slot {
        self.slots[at as usize]
            .as_mut()
            .expect("linked slots are occupied")
    }

    fn unlink(&mut self, at: u32) {
        let (prev, next) = {
            let s = self.slot(at);
            (s.prev, s.next)
        };
        match prev {
            NIL => self.lru = next,
            p => self.slot_mut(p).next = next,
        }
        match next {
            NIL => self.mru = prev,
            n => self.slot_mut(n).prev = prev,
        }
    }

    fn link_mru(&mut self, at: u32) {
        let old = self.mru;
        {
            let s = self.slot_mut(at);
            s.prev = old;
            s.next = NIL;
        }
        match old {
            NIL => self.lru = at,
            o => self.slot_mut(o).next = at,
        }
        self.mru = at;
    }

    /// Makes `at` the most recently used.
    fn touch(&mut self, at: u32) {
        if self.mru != at {
            self.unlink(at);
            self.link_mru(at);
        }
    }

    fn remove_at(&mut self, at: u32) {
        self.unlink(at);
        let slot = self.slots[at as usize]
            .take()
            .expect("linked slots are occupied");
        let hash = self.hash_key(slot.name(), slot.qtype, slot.qclass, slot.flags);
        if let Ok(entry) = self.index.find_entry(hash, |&i| i == at) {
            entry.remove();
        }
        self.bytes -= slot.answer.charge();
        self.len -= 1;
        self.free.push(at);
        if self.len == 0 {
            // Let an emptied cache give its slab back.
            self.slots = Vec::new();
            self.free = Vec::new();
        }
    }

    fn evict_to_fit(&mut self) {
        while self.len > self.policy.max_entries || self.bytes > self.policy.max_bytes {
            if self.lru == NIL {
                break;
            }
            self.remove_at(self.lru);
            self.evictions += 1;
            self.unreported_evictions += 1;
        }
    }
}

fn hash_parts(hasher: &DefaultHashBuilder, name: &[u8], qtype: u16, qclass: u16, flags: u8) -> u64 {
    hasher.hash_one((name, qtype, qclass, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CachePolicy {
        CachePolicy {
            max_entries: 100,
            max_bytes: 1 << 20,
            prefetch_min_hits: 3,
            prefetch_percent: 10,
            stale_max: Duration::from_secs(3600),
            stale_recheck: Duration::from_secs(30),
        }
    }

    fn key(name: &str) -> CacheKey {
        CacheKey {
            name: name.as_bytes().into(),
            qtype: 1,
            qclass: 1,
            flags: 0,
        }
    }

    fn answer(kind: AnswerKind, ttl: u32, size: usize, at: Instant) -> Arc<CachedAnswer> {
        CachedAnswer::new(&vec![0; size], &[], kind, ttl, at).unwrap()
    }

    #[test]
    fn entries_stay_small() {
        // What examples/cache_memory.rs measured rests on these sizes (64-bit).
        assert_eq!(std::mem::size_of::<Slot>(), 40);
        assert_eq!(std::mem::size_of::<Option<Slot>>(), 40);
        // The answer's block: a 9-word header, one TTL offset, the wire (odd lengths
        // round up to a whole word).
        let t0 = Instant::now();
        let a = CachedAnswer::new(&[7; 65], &[30], AnswerKind::Negative, 42, t0).unwrap();
        assert_eq!(std::mem::size_of_val(&*a), 2 * (9 + 1 + 33));
        assert_eq!(
            (a.kind(), a.ttl(), a.stored_at(), a.wire(), a.ttl_offsets()),
            (AnswerKind::Negative, 42, t0, &[7u8; 65][..], &[30u16][..])
        );
        let early = t0 - Duration::from_secs(5);
        let b = CachedAnswer::new(&[], &[], AnswerKind::ServFail, u32::MAX, early).unwrap();
        assert_eq!(
            (b.kind(), b.ttl(), b.stored_at()),
            (AnswerKind::ServFail, u32::MAX, early)
        );
    }

    #[test]
    fn fresh_then_stale_then_gone() {
        let t0 = Instant::now();
        let mut cache = Cache::new(policy());
        cache.insert(key("a"), answer(AnswerKind::Positive, 30, 50, t0));
        let at = |s| t0 + Duration::from_secs(s);
        match cache.lookup(&key("a"), at(29)) {
            Lookup::Fresh { answer, .. } => assert_eq!(answer.elapsed_secs(at(29)), 29),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            cache.lookup(&key("a"), at(30)),
            Lookup::Stale {
                ask_upstream: true,
                ..
            }
        ));
        assert!(cache.note_upstream_failure(&key("a"), at(31)).is_some());
        assert!(matches!(
            cache.lookup(&key("a"), at(40)),
            Lookup::Stale {
                ask_upstream: false,
                ..
            }
        ));
        assert!(matches!(
            cache.lookup(&key("a"), at(61)),
            Lookup::Stale {
                ask_upstream: true,
                ..
            }
        ));
        assert!(matches!(
            cache.lookup(&key("a"), at(30 + 3600)),
            Lookup::Miss
        ));
        assert_eq!(cache.stats().entries, 0);
        assert_eq!(cache.stats().bytes, 0);
    }

    #[test]
    fn servfail_is_never_stale() {
        let t0 = Instant::now();
        let mut cache = Cache::new(policy());
        cache.insert(key("a"), answer(AnswerKind::ServFail, 2, 20, t0));
        assert!(matches!(
            cache.lookup(&key("a"), t0 + Duration::from_secs(1)),
            Lookup::Fresh { .. }
        ));
        assert!(matches!(
            cache.lookup(&key("a"), t0 + Duration::from_secs(2)),
            Lookup::Miss
        ));
    }

    #[test]
    fn prefetch_marks_popular_entries_once_near_expiry() {
        let t0 = Instant::now();
        let mut cache = Cache::new(policy());
        cache.insert(key("a"), answer(AnswerKind::Positive, 100, 50, t0));
        let prefetch = |c: &mut Cache, s| match c.lookup(&key("a"), t0 + Duration::from_secs(s)) {
            Lookup::Fresh { prefetch, .. } => prefetch,
            other => panic!("{other:?}"),
        };
        assert!(!prefetch(&mut cache, 1));
        assert!(!prefetch(&mut cache, 2));
        assert!(!prefetch(&mut cache, 50), "popular but far from expiry");
        assert!(prefetch(&mut cache, 91), "popular and < 10% left");
        assert!(!prefetch(&mut cache, 92), "only one prefetch per entry");
    }

    #[test]
    fn evicts_least_recently_used_by_entries() {
        let t0 = Instant::now();
        let mut cache = Cache::new(CachePolicy {
            max_entries: 2,
            ..policy()
        });
        cache.insert(key("a"), answer(AnswerKind::Positive, 30, 10, t0));
        cache.insert(key("b"), answer(AnswerKind::Positive, 30, 10, t0));
        let _ = cache.lookup(&key("a"), t0); // a is now the most recent
        cache.insert(key("c"), answer(AnswerKind::Positive, 30, 10, t0));
        assert!(matches!(cache.lookup(&key("b"), t0), Lookup::Miss));
        assert!(matches!(cache.lookup(&key("a"), t0), Lookup::Fresh { .. }));
        assert!(matches!(cache.lookup(&key("c"), t0), Lookup::Fresh { .. }));
        assert_eq!(cache.stats().evictions, 1);
        assert_eq!(cache.stats().entries, 2);
    }

    #[test]
    fn evicts_by_bytes_and_accounts_exactly() {
        let t0 = Instant::now();
        // What one such entry is charged, stored under a name of the same length.
        let one = {
            let mut scratch = Cache::new(policy());
            scratch.insert(key("z"), answer(AnswerKind::Positive, 30, 1000, t0));
            scratch.stats().bytes
        };
        let mut cache = Cache::new(CachePolicy {
            max_bytes: one * 3,
            ..policy()
        });
        for name in ["a", "b", "c", "d", "e"] {
            cache.insert(key(name), answer(AnswerKind::Positive, 30, 1000, t0));
        }
        assert_eq!(cache.stats().entries, 3);
        assert_eq!(cache.stats().bytes, one * 3);
        assert_eq!(cache.stats().evictions, 2);
        // Replacing an entry re-charges it instead of adding.
        cache.insert(key("e"), answer(AnswerKind::Positive, 30, 1000, t0));
        assert_eq!(cache.stats().bytes, one * 3);
        // Larger than the whole budget: not stored, nothing evicted for it.
        cache.insert(key("big"), answer(AnswerKind::Positive, 30, one * 4, t0));
        assert_eq!(cache.stats().entries, 3);
        // Shrinking the limits evicts at once.
        cache.set_policy(CachePolicy {
            max_entries: 1,
            ..policy()
        });
        assert_eq!(cache.stats().entries, 1);
        assert_eq!(cache.stats().bytes, one);
    }
}
