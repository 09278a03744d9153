//! The miss path's shared state, owned by the service: the in-flight table (one upstream
//! exchange per cache key, its outcome shared by every waiter through a `watch`
//! channel), the two counters that bound it node-wide, the per-source tables that
//! share those bounds between clients, and the node-wide upstream rate bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use crate::cache::{CacheKey, CachedAnswer};
use crate::metrics::MissCounts;

/// The miss path's state, owned by the service.
#[derive(Default)]
pub(crate) struct Misses {
    pub inflight: Mutex<HashMap<CacheKey, Inflight>>,
    /// The node-wide bounds' counters, shared with the metrics (gauges read at scrape).
    pub counts: Arc<MissCounts>,
    /// Upstream exchanges each source started and that are still in flight.
    pub source_exchanges: SourceTable,
    /// Waiting queries each source holds (its own exchanges and coalesced ones).
    pub source_waiters: SourceTable,
    pub hasher: SourceHasher,
    pub rate: RateLimit,
    /// Upstream exchanges each source started in the current second.
    pub source_rate: SourceRate,
}

/// The outcome of one upstream resolution, shared with every coalesced waiter.
#[derive(Clone)]
pub(crate) enum Outcome {
    Answer(Arc<CachedAnswer>),
    /// No usable answer; waiters serve stale if the cache still has it.
    Failed,
}

pub(crate) type Inflight = watch::Receiver<Option<Outcome>>;

/// Decrements a counter when dropped (in-flight and waiting bounds).
pub(crate) struct Slot<'a>(pub &'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) fn take_slot(counter: &AtomicUsize, limit: usize) -> Option<Slot<'_>> {
    if counter.fetch_add(1, Ordering::AcqRel) >= limit {
        counter.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    Some(Slot(counter))
}

/// Removes a key from the in-flight map when dropped, after the outcome was sent:
/// a query joining in between finds the outcome already in the channel.
pub(crate) struct InflightEntry<'a> {
    pub map: &'a Mutex<HashMap<CacheKey, Inflight>>,
    pub key: &'a CacheKey,
}

impl Drop for InflightEntry<'_> {
    fn drop(&mut self) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(self.key);
    }
}

/// Buckets per row of the per-source tables (a power of two).
const SOURCE_BUCKETS: usize = 4096;
const SOURCE_BITS: u32 = SOURCE_BUCKETS.trailing_zeros();

/// Where a client's charges go: one bucket in each of the two rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SourceBuckets([u16; 2]);

/// Per-source bounds on what the miss path holds for a client: a count-min table of
/// two rows of hashed buckets (fixed memory: 2 x 4,096 atomics per table, nothing
/// allocated per query). A client is charged in its bucket of each row, and its
/// count is the smaller of the two: never below what it really holds, so a client
/// can never pass its quota; a neighbour is wrongly limited only if some heavier
/// client shares both of its buckets (two independent, per-process random hashes).
pub(crate) struct SourceTable {
    rows: [Box<[AtomicU32]>; 2],
}

impl Default for SourceTable {
    fn default() -> Self {
        let row = || (0..SOURCE_BUCKETS).map(|_| AtomicU32::new(0)).collect();
        SourceTable {
            rows: [row(), row()],
        }
    }
}

impl SourceTable {
    /// Charges one to `at` unless its count is already `limit` or more. Concurrent
    /// charges of one client may each pass the check: the bound holds within the
    /// number of threads charging at the same instant. True: charged; the caller
    /// owes a [`Self::release`].
    pub fn take(&self, at: SourceBuckets, limit: usize) -> bool {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        let [a, b] = self.cells(at);
        let held = a
            .fetch_add(1, Ordering::AcqRel)
            .min(b.fetch_add(1, Ordering::AcqRel));
        if held >= limit {
            a.fetch_sub(1, Ordering::AcqRel);
            b.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// What `at` holds (the count-min estimate).
    #[cfg(test)]
    pub fn held(&self, at: SourceBuckets) -> u32 {
        let [a, b] = self.cells(at);
        a.load(Ordering::Acquire).min(b.load(Ordering::Acquire))
    }

    fn cells(&self, at: SourceBuckets) -> [&AtomicU32; 2] {
        [
            &self.rows[0][usize::from(at.0[0])],
            &self.rows[1][usize::from(at.0[1])],
        ]
    }

    /// Gives back one charge taken by [`Self::take`].
    pub fn release(&self, at: SourceBuckets) {
        for cell in self.cells(at) {
            cell.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Per-source bound on upstream exchanges started per second: the same two rows of
/// hashed buckets as [`SourceTable`], each cell a counter of the current one-second
/// window (the window's number in the high half of the word, the count in the low
/// half), so nothing is allocated per client or per query and a quiet client is
/// limited wrongly only if heavier clients share both of its buckets. Fixed windows:
/// a client may start up to twice its rate across a window boundary, never more.
pub(crate) struct SourceRate {
    rows: [Box<[AtomicU64]>; 2],
    epoch: Instant,
}

impl Default for SourceRate {
    fn default() -> Self {
        let row = || (0..SOURCE_BUCKETS).map(|_| AtomicU64::new(0)).collect();
        SourceRate {
            rows: [row(), row()],
            epoch: Instant::now(),
        }
    }
}

impl SourceRate {
    /// Counts one exchange for `at` in the second of `now`; false when the client has
    /// already started `limit` in that second (0: unbounded). Refused tries are counted
    /// too: a client far over its rate stays refused, and the count saturates.
    pub fn take(&self, at: SourceBuckets, limit: u32, now: Instant) -> bool {
        if limit == 0 {
            return true;
        }
        // Window numbers wrap after 136 years of uptime; one starting at 1 keeps a
        // zeroed cell (window 0) from ever looking current.
        let window = now.saturating_duration_since(self.epoch).as_secs() as u32 + 1;
        let mut counts = [0u32; 2];
        for (i, count) in counts.iter_mut().enumerate() {
            let cell = &self.rows[i][usize::from(at.0[i])];
            let mut current = cell.load(Ordering::Acquire);
            loop {
                let (w, c) = ((current >> 32) as u32, current as u32);
                let next_count = if w == window { c.saturating_add(1) } else { 1 };
                let next = u64::from(window) << 32 | u64::from(next_count);
                match cell.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => {
                        *count = next_count;
                        break;
                    }
                    Err(seen) => current = seen,
                }
            }
        }
        counts[0].min(counts[1]) <= limit
    }
}

/// A charge in a [`SourceTable`], released when dropped.
pub(crate) struct SourceCharge<'a> {
    pub table: &'a SourceTable,
    pub at: SourceBuckets,
}

impl Drop for SourceCharge<'_> {
    fn drop(&mut self) {
        self.table.release(self.at);
    }
}

/// Why a miss was answered at once instead of asking upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shed {
    /// A node-wide bound (`max_upstream_in_flight`, `max_waiting_queries`).
    Overload,
    /// The client's own share (`max_*_per_source`).
    SourceQuota,
    /// The node-wide upstream query rate (`max_upstream_qps`).
    Rate,
}

/// Maps client addresses to their buckets with two keyed hashes, keyed per process
/// so no client can pick addresses that collide with a neighbour's on purpose.
pub(crate) struct SourceHasher {
    keys: [u64; 2],
}

impl Default for SourceHasher {
    fn default() -> Self {
        SourceHasher {
            keys: [rand::random::<u64>() | 1, rand::random::<u64>() | 1],
        }
    }
}

impl SourceHasher {
    pub fn buckets(&self, ip: IpAddr) -> SourceBuckets {
        let word = match ip {
            IpAddr::V4(v4) => u64::from(u32::from(v4)) | 1 << 32,
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                // The low half (the interface ID) varies most; mix the prefix in.
                (bits as u64) ^ ((bits >> 64) as u64).rotate_left(29)
            }
        };
        let index = |key: u64| {
            let x = (word ^ key).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let x = (x ^ (x >> 31)).wrapping_mul(key);
            // SOURCE_BITS < 16, so the shifted value fits.
            (x >> (64 - SOURCE_BITS)) as u16
        };
        SourceBuckets([index(self.keys[0]), index(self.keys[1])])
    }
}

/// The node-wide bound on upstream exchanges started per second: a token bucket
/// holding at most one second's worth. `rate` 0: unbounded.
pub(crate) struct RateLimit {
    state: Mutex<RateState>,
}

struct RateState {
    tokens: f64,
    last: Instant,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            state: Mutex::new(RateState {
                tokens: f64::INFINITY,
                last: Instant::now(),
            }),
        }
    }
}

impl RateLimit {
    /// Takes one token if there is one at `rate` per second.
    pub fn take(&self, rate: u32, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let rate = f64::from(rate);
        let refill = now.saturating_duration_since(s.last).as_secs_f64() * rate;
        s.tokens = (s.tokens + refill).min(rate);
        s.last = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn source_rate_counts_per_second_and_per_client() {
        let rate = SourceRate::default();
        let hasher = SourceHasher::default();
        let a = hasher.buckets("10.244.1.1".parse().unwrap());
        let b = hasher.buckets("10.244.1.2".parse().unwrap());
        let t0 = rate.epoch;
        assert!(rate.take(a, 2, t0));
        assert!(rate.take(a, 2, t0 + Duration::from_millis(500)));
        assert!(!rate.take(a, 2, t0 + Duration::from_millis(900)));
        // Another client has its own count (unless both its buckets collide with a's,
        // which two random 4,096-bucket hashes make a one in 16 million chance).
        assert!(rate.take(b, 2, t0 + Duration::from_millis(900)));
        // The next second starts a new window.
        assert!(rate.take(a, 2, t0 + Duration::from_secs(1)));
        assert!(rate.take(a, 0, t0), "0: unbounded");
    }
}
