//! The answer cache: wire-format answers with TTL offsets, bounded in entries and
//! bytes, least-recently-used eviction, TTL countdown, prefetch marks and RFC 8767
//! serve-stale bookkeeping.
//!
//! Keys and values are shaped for a future BPF-map twin (see DESIGN-NOTES, "The
//! cache's hot path"): the key is the lowercased wire name plus fixed-size fields,
//! the value is the answer's wire bytes plus the offsets of its TTL fields.
//!
//! Time is passed in (`now`) so the arithmetic is testable without sleeping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hashlink::LruCache;

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
#[derive(Debug)]
pub struct CachedAnswer {
    pub wire: Box<[u8]>,
    pub ttl_offsets: Box<[u16]>,
    pub kind: AnswerKind,
    /// Seconds the answer stays fresh after `stored_at`.
    pub ttl: u32,
    pub stored_at: Instant,
}

impl CachedAnswer {
    /// Whole seconds spent in the cache, for the TTL countdown.
    pub fn elapsed_secs(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.stored_at).as_secs()).unwrap_or(u32::MAX)
    }

    fn fresh_until(&self) -> Instant {
        self.stored_at + Duration::from_secs(u64::from(self.ttl))
    }

    /// Bytes charged against the cache's byte budget for this answer and `key`.
    fn charge(&self, key: &CacheKey) -> usize {
        // The fixed part approximates the map slot, the Arc and the boxes' headers.
        const OVERHEAD: usize = 128;
        OVERHEAD + self.wire.len() + self.ttl_offsets.len() * 2 + key.name.len()
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

struct Slot {
    answer: Arc<CachedAnswer>,
    hits: u32,
    /// Looked up since it last reached the eviction end of the LRU list: it gets a
    /// second chance there instead of being relinked on every hit.
    recent: bool,
    prefetch_started: bool,
    /// Set after an upstream failure: until then, stale is served without retrying.
    upstream_retry_at: Option<Instant>,
    charge: usize,
}

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
    map: LruCache<CacheKey, Slot>,
    policy: CachePolicy,
    bytes: usize,
    evictions: u64,
    unreported_evictions: u64,
}

impl Cache {
    pub fn new(policy: CachePolicy) -> Self {
        Cache {
            map: LruCache::new_unbounded(),
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
            entries: self.map.len(),
            bytes: self.bytes,
            evictions: self.evictions,
        }
    }

    pub fn lookup(&mut self, key: &CacheKey, now: Instant) -> Lookup {
        let policy = &self.policy;
        // peek_mut plus a mark, not get_mut: relinking the list on every hit cost more
        // than the hash lookup itself (it writes both neighbours' nodes).
        let Some(slot) = self.map.peek_mut(key) else {
            return Lookup::Miss;
        };
        slot.recent = true;
        let fresh_until = slot.answer.fresh_until();
        if now < fresh_until {
            slot.hits = slot.hits.saturating_add(1);
            let left = fresh_until - now;
            let window =
                Duration::from_secs(u64::from(slot.answer.ttl)) * policy.prefetch_percent / 100;
            let prefetch = policy.prefetch_percent > 0
                && slot.answer.kind != AnswerKind::ServFail
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
        let stale_ok = slot.answer.kind != AnswerKind::ServFail
            && now < fresh_until + policy.stale_max
            && !policy.stale_max.is_zero();
        if stale_ok {
            return Lookup::Stale {
                answer: slot.answer.clone(),
                ask_upstream: slot.upstream_retry_at.is_none_or(|t| now >= t),
            };
        }
        self.remove(key);
        Lookup::Miss
    }

    /// Stores (or replaces) an answer, then evicts least-recently-used entries until
    /// both budgets hold. An answer larger than the whole byte budget is not stored.
    pub fn insert(&mut self, key: CacheKey, answer: Arc<CachedAnswer>) {
        let charge = answer.charge(&key);
        if charge > self.policy.max_bytes || self.policy.max_entries == 0 {
            return;
        }
        let slot = Slot {
            answer,
            hits: 0,
            recent: false,
            prefetch_started: false,
            upstream_retry_at: None,
            charge,
        };
        if let Some(old) = self.map.insert(key, slot) {
            self.bytes -= old.charge;
        }
        self.bytes += charge;
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
                if let Some(slot) = self.map.get_mut(key) {
                    slot.upstream_retry_at = Some(now + recheck);
                }
                Some(answer)
            }
            // A fresh entry (e.g. a failed prefetch): let a later prefetch try again.
            Lookup::Fresh { answer, .. } => {
                if let Some(slot) = self.map.get_mut(key) {
                    slot.prefetch_started = false;
                }
                Some(answer)
            }
            Lookup::Miss => None,
        }
    }

    /// The entry if it can still be served (fresh or stale), without touching
    /// hit counts or recency.
    pub fn peek_servable(&self, key: &CacheKey, now: Instant) -> Option<Arc<CachedAnswer>> {
        let slot = self.map.peek(key)?;
        let answer = &slot.answer;
        let until = answer.fresh_until()
            + if answer.kind == AnswerKind::ServFail {
                Duration::ZERO
            } else {
                self.policy.stale_max
            };
        (now < until).then(|| answer.clone())
    }

    fn remove(&mut self, key: &CacheKey) {
        if let Some(old) = self.map.remove(key) {
            self.bytes -= old.charge;
        }
    }

    /// Evicts from the least-recently-used end; an entry looked up since it was put at
    /// the other end goes back there once, unmarked (the second chance that stands in
    /// for relinking on every hit).
    fn evict_to_fit(&mut self) {
        while self.map.len() > self.policy.max_entries || self.bytes > self.policy.max_bytes {
            match self.map.remove_lru() {
                Some((key, mut slot)) if slot.recent => {
                    slot.recent = false;
                    self.map.insert(key, slot);
                }
                Some((_, old)) => {
                    self.bytes -= old.charge;
                    self.evictions += 1;
                    self.unreported_evictions += 1;
                }
                None => break,
            }
        }
    }
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
        Arc::new(CachedAnswer {
            wire: vec![0; size].into(),
            ttl_offsets: Box::new([]),
            kind,
            ttl,
            stored_at: at,
        })
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
        let one = answer(AnswerKind::Positive, 30, 1000, t0).charge(&key("a"));
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
