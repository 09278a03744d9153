//! The cache's side of kernel answers (see `crate::kernel_answers`): which entries are
//! published, in which hit slot, until when, and what the kernel answered through each
//! since it was last looked at.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nldns_common::answers::{
    ones_complement_sum, AnswerHits, AnswerKey, KernelAnswer, ANSWER_BODY_MAX, ANSWER_KEY_CD,
    ANSWER_KEY_DO, ANSWER_NAME_MAX, ANSWER_TTLS_MAX,
};

use super::{AnswerKind, CachedAnswer, KeyRef, KEY_CD, KEY_DO};
use crate::kernel_answers::{monotonic_ns, AnswerTable};
use crate::wire::HEADER_LEN;

/// How long before its end an entry stops being answered by the kernel: the last second
/// of a TTL goes to the agent, which then decides about expiry and serve-stale itself.
pub const END_MARGIN: Duration = Duration::from_secs(1);

/// The moment from which the kernel must pass queries for `answer` to the agent: the
/// last [`END_MARGIN`] of its life, or the start of its prefetch window (`prefetch_percent`
/// of its TTL before the end, 0 = none) so the agent sees the queries that decide a
/// prefetch. `None`: not worth publishing (it would never be answered in the kernel).
pub fn pass_after(answer: &CachedAnswer, prefetch_percent: u32) -> Option<Instant> {
    let end = answer.fresh_until().checked_sub(END_MARGIN)?;
    let mut from = end;
    if prefetch_percent > 0 && answer.kind() != AnswerKind::ServFail {
        let window = Duration::from_secs(u64::from(answer.ttl())) * prefetch_percent / 100;
        if let Some(start) = answer.fresh_until().checked_sub(window) {
            from = from.min(start);
        }
    }
    (from > answer.stored_at()).then_some(from)
}

/// The fixed-size key of a cache key; `None` when the name does not fit.
pub fn answer_key(key: KeyRef) -> Option<AnswerKey> {
    if key.name.is_empty() || key.name.len() > ANSWER_NAME_MAX {
        return None;
    }
    let mut out = AnswerKey::default();
    out.name[..key.name.len()].copy_from_slice(key.name);
    out.qtype = key.qtype;
    out.qclass = key.qclass;
    out.flags = if key.flags & KEY_DO != 0 {
        ANSWER_KEY_DO
    } else {
        0
    } | if key.flags & KEY_CD != 0 {
        ANSWER_KEY_CD
    } else {
        0
    };
    out.name_len = key.name.len() as u8;
    Some(out)
}

/// The kernel entry for a stored answer, counted in hit slot `hits_slot` and answered
/// until `pass_after`; `None` when the kernel could not render it exactly (a body or
/// record count over the entry's fixed size, a question that is not the key's name).
pub fn kernel_entry(
    key: KeyRef,
    answer: &CachedAnswer,
    pass_after: Instant,
    hits_slot: u32,
) -> Option<KernelAnswer> {
    let wire = answer.wire();
    let question_end = HEADER_LEN + key.name.len() + 4;
    // The stored question must be the key's, in one piece: the kernel keeps the client's
    // question and copies only what follows it.
    if wire.get(4..6) != Some(&[0, 1]) || wire.len() < question_end {
        return None;
    }
    let body = &wire[question_end..];
    let offsets = answer.ttl_offsets();
    // An empty body (a bare NXDOMAIN, never cached) is the agent's: the kernel copies at
    // least one byte.
    if body.is_empty() || body.len() > ANSWER_BODY_MAX || offsets.len() > ANSWER_TTLS_MAX {
        return None;
    }
    let mut entry = KernelAnswer {
        stored_at_ns: monotonic_ns(answer.stored_at()),
        pass_after_ns: monotonic_ns(pass_after),
        hits_slot,
        body_sum: ones_complement_sum(body),
        flags: u16::from_be_bytes([wire[2], wire[3]]),
        counts: [6, 8, 10].map(|at| u16::from_be_bytes([wire[at], wire[at + 1]])),
        body_len: body.len() as u16,
        ttl_count: offsets.len() as u16,
        ..KernelAnswer::default()
    };
    for (slot, &at) in entry.ttl_offsets.iter_mut().zip(offsets) {
        let at = usize::from(at).checked_sub(question_end)?;
        if at + 4 > body.len() {
            return None;
        }
        *slot = at as u16;
    }
    entry.body[..body.len()].copy_from_slice(body);
    Some(entry)
}

/// `Slot::kernel` of an entry not in the table (it may be published on its next hit).
pub(super) const UNPUBLISHED: u16 = u16::MAX;

/// `KernelCopies::owners` of a hit slot no entry uses.
const FREE: u32 = u32::MAX;

/// Hit slots of the published entries.
pub(super) struct KernelCopies {
    pub table: Arc<dyn AnswerTable>,
    /// Hit slot -> the cache's slab index of the entry using it ([`FREE`]: none).
    owners: Vec<u32>,
    /// Hit slot -> the counts already accounted for.
    seen: Vec<AnswerHits>,
    /// Hit slot -> when the kernel stops answering from it.
    until: Vec<Option<Instant>>,
    free: Vec<u16>,
}

/// What the kernel answered from one entry since the last sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelHits {
    pub zone: u8,
    pub qtype: u16,
    /// The stored answer's RCODE and whether it is a denial (NXDOMAIN, NODATA).
    pub rcode: u8,
    pub denial: bool,
    pub v4: u64,
    pub v6: u64,
}

impl KernelCopies {
    pub fn new(table: Arc<dyn AnswerTable>) -> Self {
        let capacity = table.capacity();
        // Hit slots are u16 with two values reserved (`Slot::kernel`).
        let capacity = capacity.min(u32::from(u16::MAX - 1));
        KernelCopies {
            table,
            owners: vec![FREE; capacity as usize],
            seen: vec![AnswerHits::default(); capacity as usize],
            until: vec![None; capacity as usize],
            free: (0..capacity as u16).rev().collect(),
        }
    }

    /// A free hit slot for the entry at slab index `owner`, its counts taken as the
    /// baseline (the kernel never resets them).
    pub fn take(&mut self, owner: u32, until: Instant) -> Option<u16> {
        let slot = self.free.pop()?;
        let i = usize::from(slot);
        self.owners[i] = owner;
        self.seen[i] = self.table.hits(u32::from(slot));
        self.until[i] = Some(until);
        Some(slot)
    }

    pub fn release(&mut self, slot: u16) {
        let i = usize::from(slot);
        if self.owners.get(i).is_some_and(|&o| o != FREE) {
            self.owners[i] = FREE;
            self.until[i] = None;
            self.free.push(slot);
        }
    }

    /// Every published entry, as (hit slot, slab index, answered until).
    pub fn published(&self) -> impl Iterator<Item = (u16, u32, Option<Instant>)> + '_ {
        self.owners
            .iter()
            .enumerate()
            .filter(|(_, &o)| o != FREE)
            .map(|(s, &o)| (s as u16, o, self.until[s]))
    }

    /// New answers through `slot` since the last call: (v4, v6).
    pub fn new_hits(&mut self, slot: u16) -> (u64, u64) {
        let now = self.table.hits(u32::from(slot));
        let seen = std::mem::replace(&mut self.seen[usize::from(slot)], now);
        (now.v4.wrapping_sub(seen.v4), now.v6.wrapping_sub(seen.v6))
    }

    /// Forgets every published entry (the table is cleared by the caller).
    pub fn reset(&mut self) {
        let capacity = self.owners.len() as u16;
        self.owners.fill(FREE);
        self.until.fill(None);
        self.free = (0..capacity).rev().collect();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use nldns_common::answers::{AnswerKey, KernelAnswer};

    use super::*;
    use crate::cache::{Cache, CacheKey, CachePolicy, Lookup};
    use crate::kernel_answers::TableError;

    /// A table in memory: what the cache published, and hit counts the test sets.
    #[derive(Default)]
    struct FakeTable {
        entries: Mutex<HashMap<Vec<u8>, KernelAnswer>>,
        hits: Mutex<HashMap<u32, AnswerHits>>,
    }

    fn name_of(key: &AnswerKey) -> Vec<u8> {
        key.name[..usize::from(key.name_len)].to_vec()
    }

    impl AnswerTable for FakeTable {
        fn publish(&self, key: &AnswerKey, answer: &KernelAnswer) -> Result<(), TableError> {
            self.entries.lock().unwrap().insert(name_of(key), *answer);
            Ok(())
        }
        fn withdraw(&self, key: &AnswerKey) {
            self.entries.lock().unwrap().remove(&name_of(key));
        }
        fn clear(&self) {
            self.entries.lock().unwrap().clear();
        }
        fn hits(&self, slot: u32) -> AnswerHits {
            self.hits
                .lock()
                .unwrap()
                .get(&slot)
                .copied()
                .unwrap_or_default()
        }
        fn capacity(&self) -> u32 {
            8
        }
    }

    impl FakeTable {
        fn published(&self, name: &str) -> Option<KernelAnswer> {
            self.entries.lock().unwrap().get(&wire_name(name)).copied()
        }
        /// The kernel answered `n` more IPv4 queries from `name`'s entry.
        fn answer(&self, name: &str, n: u64) {
            let slot = self.published(name).expect("published").hits_slot;
            self.hits.lock().unwrap().entry(slot).or_default().v4 += n;
        }
    }

    fn wire_name(name: &str) -> Vec<u8> {
        let mut out = vec![name.len() as u8];
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out
    }

    fn key(name: &str) -> CacheKey {
        CacheKey {
            name: wire_name(name).into(),
            qtype: 1,
            qclass: 1,
            flags: 0,
        }
    }

    /// `name` A 10.0.0.1 as the miss path stores it (question, one answer record).
    fn answer(name: &str, kind: AnswerKind, ttl: u32, at: Instant) -> Arc<CachedAnswer> {
        let mut wire = vec![0, 0, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        wire.extend_from_slice(&wire_name(name));
        wire.extend_from_slice(&[0, 1, 0, 1, 0xc0, 12, 0, 1, 0, 1]);
        let ttl_at = wire.len() as u16;
        wire.extend_from_slice(&ttl.to_be_bytes());
        wire.extend_from_slice(&[0, 4, 10, 0, 0, 1]);
        CachedAnswer::new(&wire, &[ttl_at], kind, ttl, at).unwrap()
    }

    fn stored_web(ttl: u32, at: Instant) -> std::sync::Arc<CachedAnswer> {
        // web. A 10.0.0.1, TTL `ttl`; the question at 12, the record's TTL at 12+5+4+6.
        let mut wire = vec![0, 0, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        wire.extend_from_slice(b"\x03web\x00\x00\x01\x00\x01");
        wire.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        wire.extend_from_slice(&ttl.to_be_bytes());
        wire.extend_from_slice(&[0, 4, 10, 0, 0, 1]);
        CachedAnswer::new(&wire, &[27], AnswerKind::Positive, ttl, at).unwrap()
    }

    fn web_key() -> KeyRef<'static> {
        KeyRef {
            name: b"\x03web\x00",
            qtype: 1,
            qclass: 1,
            flags: KEY_DO,
        }
    }

    #[test]
    fn entry_holds_the_body_after_the_question_with_relative_offsets() {
        let t0 = Instant::now();
        let answer = stored_web(30, t0);
        let entry = kernel_entry(web_key(), &answer, t0 + Duration::from_secs(27), 7).unwrap();
        assert_eq!(entry.body_len, 16);
        assert_eq!(&entry.body[..2], &[0xc0, 0x0c]);
        assert_eq!((entry.ttl_count, entry.ttl_offsets[0]), (1, 6));
        assert_eq!(entry.counts, [1, 0, 0]);
        assert_eq!(entry.flags, 0x8180);
        assert_eq!(entry.hits_slot, 7);
        assert_eq!(entry.body_sum, ones_complement_sum(&answer.wire()[21..]));
        assert_eq!(entry.pass_after_ns - entry.stored_at_ns, 27_000_000_000);
        let k = answer_key(web_key()).unwrap();
        assert_eq!(
            (k.name_len, k.flags, &k.name[..5]),
            (5, ANSWER_KEY_DO, &b"\x03web\x00"[..])
        );
        assert!(k.name[5..].iter().all(|&b| b == 0));
    }

    #[test]
    fn pass_after_leaves_the_last_second_and_the_prefetch_window_to_the_agent() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(pass_after(&stored_web(30, t0), 0), Some(at(29)));
        assert_eq!(pass_after(&stored_web(30, t0), 10), Some(at(27)));
        assert_eq!(
            pass_after(&stored_web(1, t0), 0),
            None,
            "nothing left to answer"
        );
    }

    #[test]
    fn what_the_kernel_cannot_render_exactly_stays_in_userspace() {
        let t0 = Instant::now();
        let long = vec![b'a'; ANSWER_NAME_MAX + 1];
        let long_key = KeyRef {
            name: &long,
            ..web_key()
        };
        assert!(answer_key(long_key).is_none());
        let big = CachedAnswer::new(
            &[
                &[0u8, 0, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0][..],
                b"\x03web\x00\x00\x01\x00\x01",
                &[0; ANSWER_BODY_MAX + 1],
            ]
            .concat(),
            &[],
            AnswerKind::Positive,
            30,
            t0,
        )
        .unwrap();
        assert!(kernel_entry(web_key(), &big, t0, 0).is_none());
    }

    fn cache(max_entries: usize) -> (Cache, Arc<FakeTable>) {
        let mut cache = Cache::new(CachePolicy {
            max_entries,
            max_bytes: 1 << 20,
            prefetch_min_hits: 3,
            prefetch_percent: 10,
            stale_max: Duration::from_secs(3600),
            stale_recheck: Duration::from_secs(30),
        });
        let table = Arc::new(FakeTable::default());
        cache.set_answer_table(Some(table.clone()));
        (cache, table)
    }

    #[test]
    fn stored_entries_are_published_until_the_prefetch_window_and_servfail_never() {
        let t0 = Instant::now();
        let (mut cache, table) = cache(10);
        cache.insert(key("a"), answer("a", AnswerKind::Positive, 100, t0), 0);
        let entry = table.published("a").expect("published on store");
        // 10% prefetch window of 100 s: the kernel passes from 90 s on.
        assert_eq!(entry.pass_after_ns - entry.stored_at_ns, 90_000_000_000);
        cache.insert(key("f"), answer("f", AnswerKind::ServFail, 5, t0), 0);
        assert!(table.published("f").is_none(), "SERVFAIL stays the agent's");
        assert_eq!(cache.kernel_entries(), 1);
    }

    #[test]
    fn evicted_and_replaced_entries_leave_the_table() {
        let t0 = Instant::now();
        let (mut cache, table) = cache(1);
        cache.insert(key("a"), answer("a", AnswerKind::Positive, 30, t0), 0);
        let first = table.published("a").unwrap();
        cache.insert(
            key("a"),
            answer("a", AnswerKind::Positive, 30, t0 + Duration::from_secs(5)),
            0,
        );
        let second = table.published("a").unwrap();
        assert_ne!(
            first.stored_at_ns, second.stored_at_ns,
            "replaced by the new answer"
        );
        cache.insert(key("b"), answer("b", AnswerKind::Positive, 30, t0), 0);
        assert!(table.published("a").is_none(), "evicted: withdrawn");
        assert!(table.published("b").is_some());
        assert_eq!(cache.kernel_entries(), 1);
    }

    #[test]
    fn kernel_hits_feed_prefetch_and_recency() {
        let t0 = Instant::now();
        let (mut cache, table) = cache(2);
        cache.insert(key("a"), answer("a", AnswerKind::Positive, 100, t0), 0);
        cache.insert(key("b"), answer("b", AnswerKind::Positive, 100, t0), 0);
        // The kernel answered `a` three times: read back, counted, and `a` is now the
        // most recently used.
        table.answer("a", 3);
        let hits = cache.sync_kernel_hits(t0 + Duration::from_secs(1));
        assert_eq!(hits.len(), 1);
        assert_eq!((hits[0].v4, hits[0].v6, hits[0].qtype), (3, 0, 1));
        assert!(
            cache
                .sync_kernel_hits(t0 + Duration::from_secs(2))
                .is_empty(),
            "counted once"
        );
        cache.insert(key("c"), answer("c", AnswerKind::Positive, 100, t0), 0);
        assert!(
            matches!(cache.lookup(&key("b"), t0), Lookup::Miss),
            "b was the LRU"
        );
        // In the window, one agent hit on top of the kernel's three reaches minHits 3.
        match cache.lookup(&key("a"), t0 + Duration::from_secs(95)) {
            Lookup::Fresh { prefetch, .. } => assert!(prefetch, "kernel hits counted"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn entries_past_their_deadline_and_reloads_empty_the_table() {
        let t0 = Instant::now();
        let (mut cache, table) = cache(10);
        cache.insert(key("a"), answer("a", AnswerKind::Positive, 100, t0), 0);
        cache.insert(key("b"), answer("b", AnswerKind::Positive, 10, t0), 0);
        // b's kernel deadline (9 s) has passed: withdrawn, still cached.
        cache.sync_kernel_hits(t0 + Duration::from_secs(9));
        assert!(table.published("b").is_none());
        assert!(table.published("a").is_some());
        assert!(matches!(
            cache.lookup(&key("b"), t0 + Duration::from_secs(9)),
            Lookup::Fresh { .. }
        ));
        assert!(
            table.published("b").is_none(),
            "not published again past its deadline"
        );
        // A reload empties the table; the next hit publishes again.
        cache.withdraw_kernel_answers();
        assert!(table.published("a").is_none());
        assert_eq!(cache.kernel_entries(), 0);
        assert!(matches!(
            cache.lookup(&key("a"), t0 + Duration::from_secs(10)),
            Lookup::Fresh { .. }
        ));
        assert!(table.published("a").is_some(), "published on its next hit");
    }
}
