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
//! This file is the seam only (the table, the clock); turning a cached answer into a
//! kernel entry, and when it is published, is the cache's (`cache/kernel.rs`). The entry
//! layout and the rendering rules are `nldns_common::answers`; what the kernel renders
//! must equal `wire::render_answer` for the same query at the same moment, which the
//! agent's BPF_PROG_TEST_RUN tests check byte for byte.

use std::sync::LazyLock;
use std::time::Instant;

use nldns_common::answers::{AnswerHits, AnswerKey, KernelAnswer};
use thiserror::Error;

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
    use std::time::Duration;

    use super::*;

    #[test]
    fn monotonic_ns_follows_instants() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(monotonic_ns(later) - monotonic_ns(t0), 1_500_000_000);
        assert!(monotonic_ns(Instant::now()).abs_diff(clock_ns()) < 50_000_000);
    }
}
