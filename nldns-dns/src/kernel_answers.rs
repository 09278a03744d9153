//! The kernel's copy of cache entries: what the engine publishes so a datapath can answer
//! hits without the query reaching a socket (the agent's TC responder), and how a cached
//! answer becomes such an entry.
//!
//! The engine knows nothing of BPF: it talks to an [`AnswerTable`] (the agent's is the
//! `NLDNS_ANSWERS` map; tests use their own) and keeps the userspace cache the only source
//! of truth. The cache publishes an entry when it stores it or serves it while unpublished,
//! withdraws it on eviction, expiry and replacement, clears the table on reload, and every
//! second reads back what the kernel answered (`Cache::sync_kernel_hits`): the hit counts
//! prefetch needs, LRU recency, and the metrics.
//!
//! The entry layout and the rendering rules are `nldns_common::answers`; what is rendered
//! must equal `wire::render_answer` for the same query at the same moment, which the
//! agent's BPF_PROG_TEST_RUN tests check byte for byte.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use nldns_common::answers::{
    ones_complement_sum, AnswerHits, AnswerKey, KernelAnswer, ANSWER_BODY_MAX, ANSWER_KEY_CD,
    ANSWER_KEY_DO, ANSWER_NAME_MAX, ANSWER_TTLS_MAX,
};
use thiserror::Error;

use crate::cache::{AnswerKind, CachedAnswer, KeyRef, KEY_CD, KEY_DO};
use crate::wire::HEADER_LEN;

/// Where published entries go.
pub trait AnswerTable: Send + Sync {
    /// Writes (or replaces) one entry.
    fn publish(&self, key: &AnswerKey, answer: &KernelAnswer) -> Result<(), TableError>;
    /// Removes one entry; absent is fine.
    fn withdraw(&self, key: &AnswerKey);
    /// Removes every entry.
    fn clear(&self);
    /// The running counts of what the kernel answered through hit slot `slot`.
    fn hits(&self, slot: u32) -> AnswerHits;
    /// Hit slots (and entries) the table has room for.
    fn capacity(&self) -> u32;
}

#[derive(Debug, Error)]
pub enum TableError {
    #[error("the kernel answer table is full")]
    Full,
    #[error("the kernel refused the entry: {0}")]
    Refused(String),
}

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

/// CLOCK_MONOTONIC (the clock of `bpf_ktime_get_ns`) in ns at `t`.
///
/// `Instant` reads the same clock on Linux but does not expose it; both are read back to
/// back once and `t` is placed by its distance from that pair. They agree to within the
/// gap between the two reads (tens of ns, vDSO), so the kernel's whole-second countdown
/// can tick that much apart from the agent's, once a second per entry.
pub fn monotonic_ns(t: Instant) -> u64 {
    static ORIGIN: LazyLock<(Instant, u64)> = LazyLock::new(|| (Instant::now(), clock_ns()));
    let (at, ns) = *ORIGIN;
    if t >= at {
        ns.saturating_add(u64::try_from((t - at).as_nanos()).unwrap_or(u64::MAX))
    } else {
        ns.saturating_sub(u64::try_from((at - t).as_nanos()).unwrap_or(u64::MAX))
    }
}

fn clock_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid pointer we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(ttl: u32, at: Instant) -> std::sync::Arc<CachedAnswer> {
        // web. A 10.0.0.1, TTL `ttl`; the question at 12, the record's TTL at 12+5+4+6.
        let mut wire = vec![0, 0, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        wire.extend_from_slice(b"\x03web\x00\x00\x01\x00\x01");
        wire.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        wire.extend_from_slice(&ttl.to_be_bytes());
        wire.extend_from_slice(&[0, 4, 10, 0, 0, 1]);
        CachedAnswer::new(&wire, &[27], AnswerKind::Positive, ttl, at).unwrap()
    }

    fn key() -> KeyRef<'static> {
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
        let answer = stored(30, t0);
        let entry = kernel_entry(key(), &answer, t0 + Duration::from_secs(27), 7).unwrap();
        assert_eq!(entry.body_len, 16);
        assert_eq!(&entry.body[..2], &[0xc0, 0x0c]);
        assert_eq!((entry.ttl_count, entry.ttl_offsets[0]), (1, 6));
        assert_eq!(entry.counts, [1, 0, 0]);
        assert_eq!(entry.flags, 0x8180);
        assert_eq!(entry.hits_slot, 7);
        assert_eq!(entry.body_sum, ones_complement_sum(&answer.wire()[21..]));
        assert_eq!(entry.pass_after_ns - entry.stored_at_ns, 27_000_000_000);
        let k = answer_key(key()).unwrap();
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
        assert_eq!(pass_after(&stored(30, t0), 0), Some(at(29)));
        assert_eq!(pass_after(&stored(30, t0), 10), Some(at(27)));
        assert_eq!(
            pass_after(&stored(1, t0), 0),
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
            ..key()
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
        assert!(kernel_entry(key(), &big, t0, 0).is_none());
    }

    #[test]
    fn monotonic_ns_follows_instants() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(monotonic_ns(later) - monotonic_ns(t0), 1_500_000_000);
        assert!(monotonic_ns(Instant::now()).abs_diff(clock_ns()) < 50_000_000);
    }
}
