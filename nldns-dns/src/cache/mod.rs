//! The answer cache: wire-format answers with TTL offsets, bounded in entries and
//! bytes, least-recently-used eviction, TTL countdown, prefetch marks and RFC 8767
//! serve-stale bookkeeping.
//!
//! Keys and values are shaped so a kernel-side twin can mirror them: the key is the
//! lowercased wire name plus fixed-size fields, the value is the answer's wire bytes plus
//! the offsets of its TTL fields. With an answer table set (`kernel_answers`) the cache
//! publishes its entries there, and `kernel.rs` keeps track of which ones.
//!
//! Files: `kernel.rs` the published entries' hit slots and deadlines; `entry.rs` packs
//! one answer into one heap block (the shared
//! [`CachedAnswer`]: header, TTL offsets, the key's name only when the wire's question
//! does not already spell it, the wire message); `lru.rs` is the slab the entries live
//! in, threaded into a least-recently-used list by index; this file is the index by
//! key and the policy (lifetimes, prefetch marks, serve-stale, the bounds). Memory per
//! entry is measured with `examples/cache_memory.rs`.
//!
//! Time is passed in (`now`) so the arithmetic is testable without sleeping.

mod entry;
mod kernel;
mod lru;

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::{DefaultHashBuilder, HashTable};

pub use entry::{AnswerKind, CachedAnswer};
pub use kernel::{answer_key, kernel_entry, pass_after, KernelHits, END_MARGIN};
use kernel::{KernelCopies, UNPUBLISHED};
use lru::LruSlab;

use crate::kernel_answers::AnswerTable;
use crate::wire::QueryInfo;

/// `Slot::kernel` of an entry the kernel cannot render exactly (too large, too many
/// records, a name longer than its key): never tried again.
const NEVER_PUBLISHED: u16 = u16::MAX - 1;

/// Bit in [`CacheKey::flags`]: the client set DO (RFC 3225), so DNSSEC records matter.
pub const KEY_DO: u8 = 1;
/// Bit in [`CacheKey::flags`]: the client set CD (RFC 4035), so validation differs.
pub const KEY_CD: u8 = 2;

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

/// A [`CacheKey`] borrowed from the query being answered: a hit needs no owned key
/// (building one cost an allocation and a free per query, about 140 instructions of
/// the ~2,100 a hit takes, counted with callgrind on the `service/hit` bench).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRef<'a> {
    pub name: &'a [u8],
    pub qtype: u16,
    pub qclass: u16,
    pub flags: u8,
}

impl<'a> KeyRef<'a> {
    /// The key of a client's query: its lowercased question `name` (as `parse_query`
    /// wrote it), type, class, and its DO and CD bits.
    pub fn of_query(name: &'a [u8], info: &QueryInfo) -> Self {
        KeyRef {
            name,
            qtype: info.qtype,
            qclass: info.qclass,
            flags: if info.dnssec_ok() { KEY_DO } else { 0 }
                | if info.checking_disabled() { KEY_CD } else { 0 },
        }
    }

    pub fn to_owned_key(self) -> CacheKey {
        CacheKey {
            name: self.name.into(),
            qtype: self.qtype,
            qclass: self.qclass,
            flags: self.flags,
        }
    }
}

impl CacheKey {
    pub fn borrowed(&self) -> KeyRef<'_> {
        KeyRef {
            name: &self.name,
            qtype: self.qtype,
            qclass: self.qclass,
            flags: self.flags,
        }
    }
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

/// One cached entry in the slab (the LRU links are the slab's).
struct Slot {
    answer: Arc<CachedAnswer>,
    /// Set after an upstream failure, in whole seconds after the answer's
    /// `stored_at` (0: no failure noted): until then, stale is served without
    /// asking upstream. Seconds keep the slot at 40 bytes with its links.
    retry_after: u32,
    /// Hits while fresh, saturating: only compared with the (small) prefetch threshold.
    hits: u16,
    qtype: u16,
    qclass: u16,
    flags: u8,
    name_len: u8,
    prefetch_started: bool,
    /// The metrics label index of the zone the answer was routed by.
    zone: u8,
    /// Its hit slot in the kernel's answer table, or [`UNPUBLISHED`] / [`NEVER_PUBLISHED`].
    kernel: u16,
}

impl Slot {
    fn name(&self) -> &[u8] {
        self.answer.key_name(usize::from(self.name_len))
    }

    fn key(&self) -> KeyRef<'_> {
        KeyRef {
            name: self.name(),
            qtype: self.qtype,
            qclass: self.qclass,
            flags: self.flags,
        }
    }

    fn matches(&self, key: KeyRef) -> bool {
        usize::from(self.name_len) == key.name.len()
            && self.qtype == key.qtype
            && self.qclass == key.qclass
            && self.flags == key.flags
            && self.name() == key.name
    }
}

/// Bytes charged against the cache's byte budget: what an entry really holds (its
/// slab slot, its index, and the answer's heap block).
fn charge(answer: &CachedAnswer) -> usize {
    const INDEX: usize = 8; // a u32 and a control byte, at hashbrown's load factor
    LruSlab::<Slot>::SLOT_BYTES + INDEX + answer.heap_bytes()
}

/// Result of a lookup.
#[derive(Debug)]
pub enum Lookup {
    /// Still fresh; `prefetch` asks the caller to refresh it in the background (the
    /// mark is set, so only one caller is asked).
    Fresh {
        answer: Arc<CachedAnswer>,
        prefetch: bool,
        zone: u8,
    },
    /// Expired but within the serve-stale bound. `ask_upstream` is false while the
    /// failure recheck timer runs: answer stale straight away.
    Stale {
        answer: Arc<CachedAnswer>,
        ask_upstream: bool,
        zone: u8,
    },
    Miss,
}

/// Counters the cache reports; the caller turns them into metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: usize,
    /// Of `entries`, the negative ones (NXDOMAIN, NODATA, SERVFAIL): CoreDNS's "denial".
    pub denials: usize,
    pub bytes: usize,
    pub evictions: u64,
}

/// The cache itself; not synchronized (the service wraps it in a mutex held only
/// for a hash lookup or an insert).
pub struct Cache {
    /// Slab indices, hashed by key.
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    /// The entries, in recency order.
    slots: LruSlab<Slot>,
    policy: CachePolicy,
    bytes: usize,
    evictions: u64,
    unreported_evictions: u64,
    unreported_denial_evictions: u64,
    denials: usize,
    /// The kernel's copy, when a datapath answers hits itself (see `kernel_answers`).
    kernel: Option<KernelCopies>,
}

/// CoreDNS's "denial" cache type: everything but a positive answer.
fn is_denial(answer: &CachedAnswer) -> bool {
    answer.kind() != AnswerKind::Positive
}

impl Cache {
    pub fn new(policy: CachePolicy) -> Self {
        Cache {
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            slots: LruSlab::default(),
            policy,
            bytes: 0,
            evictions: 0,
            unreported_evictions: 0,
            unreported_denial_evictions: 0,
            denials: 0,
            kernel: None,
        }
    }

    /// Publishes entries to `table` from now on (`None`: stops). Entries already cached
    /// are published on their next hit.
    pub fn set_answer_table(&mut self, table: Option<Arc<dyn AnswerTable>>) {
        self.withdraw_kernel_answers();
        self.kernel = table.map(|t| {
            t.clear();
            KernelCopies::new(t)
        });
    }

    /// Empties the kernel's table (a reload: routing or lifetimes may have changed);
    /// entries are published again on their next hit, under the new policy.
    pub fn withdraw_kernel_answers(&mut self) {
        let Some(copies) = self.kernel.as_mut() else {
            return;
        };
        for (_, at, _) in copies.published() {
            if let Some(slot) = self.slots.get_mut(at) {
                slot.kernel = UNPUBLISHED;
            }
        }
        copies.reset();
        copies.table.clear();
    }

    /// Reads back what the kernel answered since the last call: each entry's count goes
    /// into its hits (prefetch) and its recency (LRU), and the counts are returned for the
    /// metrics. Entries past the moment the kernel stops answering them are withdrawn.
    /// Call it every second: that is how stale this knowledge gets.
    pub fn sync_kernel_hits(&mut self, now: Instant) -> Vec<KernelHits> {
        let Some(copies) = self.kernel.as_mut() else {
            return Vec::new();
        };
        let mut answered = Vec::new();
        let mut touched = Vec::new();
        let mut ended = Vec::new();
        let published: Vec<_> = copies.published().collect();
        for (hit_slot, at, until) in published {
            let (v4, v6) = copies.new_hits(hit_slot);
            let Some(slot) = self.slots.get_mut(at) else {
                continue;
            };
            if slot.kernel != hit_slot {
                continue;
            }
            let n = v4.saturating_add(v6);
            if n > 0 {
                slot.hits = slot
                    .hits
                    .saturating_add(u16::try_from(n).unwrap_or(u16::MAX));
                answered.push(KernelHits {
                    zone: slot.zone,
                    qtype: slot.qtype,
                    rcode: crate::wire::rcode(slot.answer.wire()),
                    denial: is_denial(&slot.answer),
                    v4,
                    v6,
                });
                touched.push(at);
            }
            if until.is_some_and(|u| now >= u) {
                ended.push(at);
            }
        }
        for at in touched {
            self.slots.touch(at);
        }
        for at in ended {
            self.unpublish(at);
        }
        answered
    }

    /// Entries in the kernel's table now.
    pub fn kernel_entries(&self) -> usize {
        self.kernel.as_ref().map_or(0, |k| k.published().count())
    }

    /// Offers the entry at `at` to the kernel's table, once per entry.
    fn publish(&mut self, at: u32, now: Instant) {
        let Some(copies) = self.kernel.as_mut() else {
            return;
        };
        let Some(slot) = self.slots.get(at) else {
            return;
        };
        if slot.kernel != UNPUBLISHED || slot.answer.kind() == AnswerKind::ServFail {
            return;
        }
        let Some(until) = pass_after(&slot.answer, self.policy.prefetch_percent) else {
            return;
        };
        if until <= now {
            return;
        }
        let key = slot.key();
        let mut outcome = NEVER_PUBLISHED;
        if let Some(table_key) = answer_key(key) {
            match copies.take(at, until) {
                None => outcome = UNPUBLISHED, // full: try again on a later hit
                Some(hit_slot) => match kernel_entry(key, &slot.answer, until, u32::from(hit_slot))
                {
                    None => copies.release(hit_slot),
                    Some(entry) => match copies.table.publish(&table_key, &entry) {
                        Ok(()) => outcome = hit_slot,
                        Err(e) => {
                            log::debug!("kernel answer not published: {e}");
                            copies.release(hit_slot);
                            outcome = UNPUBLISHED;
                        }
                    },
                },
            }
        }
        if let Some(slot) = self.slots.get_mut(at) {
            slot.kernel = outcome;
        }
    }

    /// Takes the entry at `at` out of the kernel's table (it stays cached).
    fn unpublish(&mut self, at: u32) {
        let Some(slot) = self.slots.get_mut(at) else {
            return;
        };
        let hit_slot = std::mem::replace(&mut slot.kernel, UNPUBLISHED);
        if hit_slot < NEVER_PUBLISHED {
            Self::withdraw(&mut self.kernel, slot, hit_slot);
        }
    }

    fn withdraw(kernel: &mut Option<KernelCopies>, slot: &Slot, hit_slot: u16) {
        if let Some(copies) = kernel.as_mut() {
            if let Some(key) = answer_key(slot.key()) {
                copies.table.withdraw(&key);
            }
            copies.release(hit_slot);
        }
    }

    /// Applies new limits, evicting at once if they shrank; entries are kept.
    pub fn set_policy(&mut self, policy: CachePolicy) {
        self.policy = policy;
        self.evict_to_fit();
    }

    /// Evictions since the last call (for a metrics counter that must not double
    /// count when several callers report at once).
    /// (all, denial) evictions since the last call.
    pub fn take_new_evictions(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.unreported_evictions),
            std::mem::take(&mut self.unreported_denial_evictions),
        )
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.slots.len(),
            denials: self.denials,
            bytes: self.bytes,
            evictions: self.evictions,
        }
    }

    pub fn lookup(&mut self, key: &CacheKey, now: Instant) -> Lookup {
        self.lookup_ref(key.borrowed(), now)
    }

    /// [`Self::lookup`] with a borrowed key (the hit path's).
    pub fn lookup_ref(&mut self, key: KeyRef, now: Instant) -> Lookup {
        let Some(at) = self.find(key) else {
            return Lookup::Miss;
        };
        self.slots.touch(at);
        let policy = &self.policy;
        let slot = self.slots.get_mut(at).expect("indexed slots are occupied");
        let fresh_until = slot.answer.fresh_until();
        if now < fresh_until {
            slot.hits = slot.hits.saturating_add(1);
            let left = fresh_until - now;
            let window =
                Duration::from_secs(u64::from(slot.answer.ttl())) * policy.prefetch_percent / 100;
            let prefetch = policy.prefetch_percent > 0
                && slot.answer.kind() != AnswerKind::ServFail
                && !slot.prefetch_started
                && u32::from(slot.hits) >= policy.prefetch_min_hits
                && left < window;
            if prefetch {
                slot.prefetch_started = true;
            }
            let lookup = Lookup::Fresh {
                answer: slot.answer.clone(),
                prefetch,
                zone: slot.zone,
            };
            if slot.kernel == UNPUBLISHED && self.kernel.is_some() {
                self.publish(at, now);
            }
            return lookup;
        }
        let stale_ok = slot.answer.kind() != AnswerKind::ServFail
            && now < fresh_until + policy.stale_max
            && !policy.stale_max.is_zero();
        if stale_ok {
            return Lookup::Stale {
                zone: slot.zone,
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
    /// `zone` is the metrics label index of the route the answer came by.
    pub fn insert(&mut self, key: CacheKey, answer: Arc<CachedAnswer>, zone: u8) {
        if self.policy.max_entries == 0 || key.name.len() > 255 {
            return;
        }
        let Some(answer) = answer.for_key(&key.name) else {
            return;
        };
        if charge(&answer) > self.policy.max_bytes {
            return;
        }
        if let Some(at) = self.find(key.borrowed()) {
            self.remove_at(at);
        }
        // The new answer was stored just now: its time is the clock for the sweep.
        self.drop_dead_oldest(answer.stored_at());
        let slot = Slot {
            answer,
            retry_after: 0,
            hits: 0,
            qtype: key.qtype,
            qclass: key.qclass,
            flags: key.flags,
            name_len: key.name.len() as u8,
            prefetch_started: false,
            zone,
            kernel: UNPUBLISHED,
        };
        let charged = charge(&slot.answer);
        let denial = is_denial(&slot.answer);
        // Indices are u32; max_entries far below that keeps the slab from ever
        // running out, but refuse rather than wrap.
        let Ok(at) = self.slots.insert(slot) else {
            return;
        };
        self.bytes += charged;
        self.denials += usize::from(denial);
        let hash = self.hash_key(&key.name, key.qtype, key.qclass, key.flags);
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(hash, at, |&i| {
            let s = slots.get(i).expect("indexed slots are occupied");
            hash_parts(hasher, s.name(), s.qtype, s.qclass, s.flags)
        });
        if self.kernel.is_some() {
            let stored_at = self.slots.get(at).map(|s| s.answer.stored_at());
            if let Some(now) = stored_at {
                self.publish(at, now);
            }
        }
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
                if let Some(at) = self.find(key.borrowed()) {
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
                if let Some(at) = self.find(key.borrowed()) {
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
        let at = self.find(key.borrowed())?;
        let answer = &self.slots.get(at)?.answer;
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

    fn find(&self, key: KeyRef) -> Option<u32> {
        let hash = self.hash_key(key.name, key.qtype, key.qclass, key.flags);
        self.index
            .find(hash, |&i| self.slots.get(i).is_some_and(|s| s.matches(key)))
            .copied()
    }

    fn slot_mut(&mut self, at: u32) -> &mut Slot {
        self.slots.get_mut(at).expect("indexed slots are occupied")
    }

    fn remove_at(&mut self, at: u32) {
        let Some(slot) = self.slots.remove(at) else {
            return;
        };
        let hash = self.hash_key(slot.name(), slot.qtype, slot.qclass, slot.flags);
        if let Ok(entry) = self.index.find_entry(hash, |&i| i == at) {
            entry.remove();
        }
        self.bytes -= charge(&slot.answer);
        self.denials -= usize::from(is_denial(&slot.answer));
        if slot.kernel < NEVER_PUBLISHED {
            Self::withdraw(&mut self.kernel, &slot, slot.kernel);
        }
    }

    /// Removes up to [`DEAD_SWEEP`] entries from the least-recently-used end that can
    /// never be served again (a SERVFAIL past its TTL, anything past the stale window).
    /// A lookup drops the dead entry it finds, but a flood of unique names leaves
    /// entries nobody asks for again; without this sweep they stay until the entry
    /// bound pushes them out, so every long flood against a failing upstream would end
    /// with the cache at its bound, full of dead SERVFAILs. Entries arrive at the LRU end
    /// in the order they were stored, so the dead ones are found there first; the sweep
    /// stops at the first live entry, costing one check per insert when nothing is dead.
    fn drop_dead_oldest(&mut self, now: Instant) {
        for _ in 0..DEAD_SWEEP {
            let Some(oldest) = self.slots.oldest() else {
                return;
            };
            let Some(slot) = self.slots.get(oldest) else {
                return;
            };
            let answer = &slot.answer;
            let servable_until = answer.fresh_until()
                + if answer.kind() == AnswerKind::ServFail {
                    Duration::ZERO
                } else {
                    self.policy.stale_max
                };
            if now < servable_until {
                return;
            }
            self.remove_at(oldest);
        }
    }

    fn evict_to_fit(&mut self) {
        while self.slots.len() > self.policy.max_entries || self.bytes > self.policy.max_bytes {
            let Some(oldest) = self.slots.oldest() else {
                break;
            };
            if self.slots.get(oldest).is_some_and(|s| is_denial(&s.answer)) {
                self.unreported_denial_evictions += 1;
            }
            self.remove_at(oldest);
            self.evictions += 1;
            self.unreported_evictions += 1;
        }
    }
}

/// Dead entries removed per insert at most: more than one, so the sweep outpaces the
/// inserts that leave dead entries behind and catches up after a live entry that blocked
/// it expires.
const DEAD_SWEEP: usize = 2;

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
        assert_eq!(std::mem::size_of::<Slot>(), 32);
        assert_eq!(LruSlab::<Slot>::SLOT_BYTES, 40, "a slot with its LRU links");
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
        cache.insert(key("a"), answer(AnswerKind::Positive, 30, 50, t0), 0);
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
        cache.insert(key("a"), answer(AnswerKind::ServFail, 2, 20, t0), 0);
        assert!(matches!(
            cache.lookup(&key("a"), t0 + Duration::from_secs(1)),
            Lookup::Fresh { .. }
        ));
        assert!(matches!(
            cache.lookup(&key("a"), t0 + Duration::from_secs(2)),
            Lookup::Miss
        ));
    }

    /// A flood of unique names whose upstream fails leaves SERVFAILs nobody asks for
    /// again: later inserts sweep the dead ones from the LRU end, so the cache holds
    /// about what is still servable, not its entry bound.
    #[test]
    fn inserts_sweep_dead_entries_nobody_asks_for() {
        let t0 = Instant::now();
        let mut cache = Cache::new(policy());
        let at = |s| t0 + Duration::from_secs(s);
        // Two a second, each a SERVFAIL for 5 s, for 40 s: 80 names, never looked up.
        for i in 0..80u64 {
            let name = format!("dead{i}");
            cache.insert(
                key(&name),
                answer(AnswerKind::ServFail, 5, 20, at(i / 2)),
                0,
            );
        }
        // What is left: the SERVFAILs of the last 5 s (plus at most one second's worth
        // the sweep has not reached yet), not all 80.
        let entries = cache.stats().entries;
        assert!((10..=12).contains(&entries), "{entries} entries left");
        // A live entry at the LRU end stops the sweep: nothing servable is dropped.
        let mut cache = Cache::new(policy());
        cache.insert(key("live"), answer(AnswerKind::Positive, 3600, 20, t0), 0);
        for i in 0..20u64 {
            let name = format!("dead{i}");
            cache.insert(key(&name), answer(AnswerKind::ServFail, 1, 20, at(i)), 0);
        }
        assert!(matches!(
            cache.lookup(&key("live"), at(20)),
            Lookup::Fresh { .. }
        ));
    }

    #[test]
    fn prefetch_marks_popular_entries_once_near_expiry() {
        let t0 = Instant::now();
        let mut cache = Cache::new(policy());
        cache.insert(key("a"), answer(AnswerKind::Positive, 100, 50, t0), 0);
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
        cache.insert(key("a"), answer(AnswerKind::Positive, 30, 10, t0), 0);
        cache.insert(key("b"), answer(AnswerKind::Positive, 30, 10, t0), 0);
        let _ = cache.lookup(&key("a"), t0); // a is now the most recent
        cache.insert(key("c"), answer(AnswerKind::Positive, 30, 10, t0), 0);
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
            scratch.insert(key("z"), answer(AnswerKind::Positive, 30, 1000, t0), 0);
            scratch.stats().bytes
        };
        let mut cache = Cache::new(CachePolicy {
            max_bytes: one * 3,
            ..policy()
        });
        for name in ["a", "b", "c", "d", "e"] {
            cache.insert(key(name), answer(AnswerKind::Positive, 30, 1000, t0), 0);
        }
        assert_eq!(cache.stats().entries, 3);
        assert_eq!(cache.stats().bytes, one * 3);
        assert_eq!(cache.stats().evictions, 2);
        // Replacing an entry re-charges it instead of adding.
        cache.insert(key("e"), answer(AnswerKind::Positive, 30, 1000, t0), 0);
        assert_eq!(cache.stats().bytes, one * 3);
        // Larger than the whole budget: not stored, nothing evicted for it.
        cache.insert(key("big"), answer(AnswerKind::Positive, 30, one * 4, t0), 0);
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
