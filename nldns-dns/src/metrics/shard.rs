//! Per-query counters without a shared cache line on the hit path.
//!
//! The CoreDNS-compatible series (`coredns_dns_*`, `coredns_cache_hits_total` ...) are
//! counted per query, several counters and two histograms each. Shared atomics would put
//! a locked read-modify-write on a cache line every serving thread writes, for each of
//! them. Instead each UDP serving thread owns a shard: a flat table of counters that only
//! it writes (a plain load and store, no lock prefix) and the scrape sums over all
//! shards. Paths that are not one thread's (TCP connections, the miss path's tasks) write
//! a shared shard of the same layout with `fetch_add`.
//!
//! The table is indexed by small label indices: zone (interned by [`ZoneNames`]),
//! protocol, address family, query type, response code, the answering plugin, and
//! histogram bucket. Label values are bounded, so a client cannot grow the table.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Zones with their own label value; later ones share the last index ("other").
pub const ZONES: usize = 16;
/// Zone index of queries that never reached a zone (unreadable, refused at parse).
pub const ZONE_DROPPED: u8 = 0;

/// Query types CoreDNS labels by name (plugin/metrics/vars); the rest are "other".
pub const TYPES: [(u16, &str); 19] = [
    (1, "A"),
    (28, "AAAA"),
    (5, "CNAME"),
    (48, "DNSKEY"),
    (43, "DS"),
    (15, "MX"),
    (50, "NSEC3"),
    (47, "NSEC"),
    (2, "NS"),
    (12, "PTR"),
    (46, "RRSIG"),
    (6, "SOA"),
    (33, "SRV"),
    (16, "TXT"),
    (65, "HTTPS"),
    (251, "IXFR"),
    (252, "AXFR"),
    (255, "ANY"),
    (0, "other"),
];

/// RCODE names as CoreDNS prints them, by value; "other" for the rest.
pub const RCODES: [&str; 7] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "other",
];

/// Who wrote the answer, CoreDNS's `plugin` label: the cache, the forwarder (an
/// upstream's answer, or its failure), or the server itself (errors at parse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plugin {
    Cache = 0,
    Forward = 1,
    Server = 2,
}
pub const PLUGINS: [&str; 3] = ["cache", "forward", ""];

pub const PROTOS: [&str; 2] = ["udp", "tcp"];
/// CoreDNS's `family` label: 1 for IPv4, 2 for IPv6.
pub const FAMILIES: [&str; 2] = ["1", "2"];

/// CoreDNS's request duration buckets (plugin.TimeBuckets): 0.25 ms doubling to 8.192 s.
pub const TIME_BUCKETS: [f64; 16] = [
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
    2.048, 4.096, 8.192,
];
/// CoreDNS's request and response size buckets (bytes).
pub const SIZE_BUCKETS: [f64; 14] = [
    0.0, 100.0, 200.0, 300.0, 400.0, 511.0, 1023.0, 2047.0, 4095.0, 8291.0, 16e3, 32e3, 48e3, 64e3,
];

const T: usize = TYPES.len();
const R: usize = RCODES.len();
const P: usize = PROTOS.len();
const F: usize = FAMILIES.len();
const PL: usize = PLUGINS.len();
/// Histogram cells: one per bucket plus the overflow, then the sum.
const TB: usize = TIME_BUCKETS.len() + 2;
const SB: usize = SIZE_BUCKETS.len() + 2;

/// Where each series starts in a shard's table.
pub(crate) mod at {
    use super::*;
    pub const REQUESTS: usize = 0; // [zone][proto][family][type]
    pub const DO_REQUESTS: usize = REQUESTS + ZONES * P * F * T; // [zone]
    pub const REQUEST_SIZE: usize = DO_REQUESTS + ZONES; // [zone][proto][bucket]
    pub const RESPONSE_SIZE: usize = REQUEST_SIZE + ZONES * P * SB; // [zone][proto][bucket]
    pub const RESPONSES: usize = RESPONSE_SIZE + ZONES * P * SB; // [zone][rcode][plugin]
    pub const DURATION: usize = RESPONSES + ZONES * R * PL; // [zone][type][bucket], sum in ns
    pub const CACHE_REQUESTS: usize = DURATION + ZONES * T * TB; // [zone]
    pub const CACHE_HITS: usize = CACHE_REQUESTS + ZONES; // [zone][success, denial]
    pub const CACHE_MISSES: usize = CACHE_HITS + ZONES * 2; // [zone]
    pub const SERVED_STALE: usize = CACHE_MISSES + ZONES; // [zone]
    pub const LEN: usize = SERVED_STALE + ZONES;
}

/// Label indices of a query, known once it is parsed and routed.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryLabels {
    pub zone: u8,
    pub proto: u8,
    pub family: u8,
    pub qtype: u8,
}

impl QueryLabels {
    fn zone(self) -> usize {
        usize::from(self.zone).min(ZONES - 1)
    }
}

/// The index of `qtype` in [`TYPES`] (a match: on the hit path, a jump table instead of
/// a scan of the list; the test below holds the two in step).
pub fn type_index(qtype: u16) -> u8 {
    match qtype {
        1 => 0,
        28 => 1,
        5 => 2,
        48 => 3,
        43 => 4,
        15 => 5,
        50 => 6,
        47 => 7,
        2 => 8,
        12 => 9,
        46 => 10,
        6 => 11,
        33 => 12,
        16 => 13,
        65 => 14,
        251 => 15,
        252 => 16,
        255 => 17,
        _ => 18,
    }
}

fn rcode_index(rcode: u8) -> usize {
    usize::from(rcode).min(R - 1)
}

/// The [`SIZE_BUCKETS`] cell of a message of `size` bytes (the first bound >= size;
/// the last index is the overflow). Integer compares: cheaper than a float search on the
/// hit path, and the test below holds it to the float bounds.
fn size_bucket(size: usize) -> usize {
    const BOUNDS: [usize; 14] = [
        0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16000, 32000, 48000, 64000,
    ];
    if size <= 400 {
        size.div_ceil(100)
    } else {
        BOUNDS[5..]
            .iter()
            .position(|&b| size <= b)
            .map_or(14, |i| i + 5)
    }
}

/// The [`TIME_BUCKETS`] cell of a duration: the bounds are 250 µs doubling, so the cell
/// is the base-2 logarithm of the duration in 250 µs units, rounded up.
fn time_bucket(took: Duration) -> usize {
    // ceil(nanoseconds / 250 µs) in u64 arithmetic (a second is 4000 units exactly).
    let units = took
        .as_secs()
        .saturating_mul(4000)
        .saturating_add(u64::from(took.subsec_nanos()).div_ceil(250_000));
    if units <= 1 {
        return 0;
    }
    // ceil(log2(units)) for units >= 2.
    let log = (u64::BITS - (units - 1).leading_zeros()) as usize;
    log.min(TIME_BUCKETS.len())
}

/// Nanoseconds of `took`, saturating (u64 arithmetic: cheaper than `as_nanos`'s u128).
fn nanos(took: Duration) -> u64 {
    took.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(took.subsec_nanos()))
}

/// One table of counters; see the module doc for who may write it how.
pub(crate) struct Shard {
    pub server: Arc<str>,
    cells: Box<[AtomicU64]>,
    /// Held by a serving thread's writer; a released shard is reused by the next
    /// thread of the same server (a restarted loop keeps its counts).
    in_use: AtomicBool,
    /// Written with `fetch_add` by any thread.
    shared: bool,
}

impl Shard {
    fn new(server: Arc<str>, shared: bool) -> Arc<Self> {
        Arc::new(Shard {
            server,
            cells: (0..at::LEN).map(|_| AtomicU64::new(0)).collect(),
            in_use: AtomicBool::new(shared),
            shared,
        })
    }

    pub fn get(&self, i: usize) -> u64 {
        self.cells[i].load(Ordering::Relaxed)
    }
}

/// The shards of one service's metrics, and the zone names their indices stand for.
#[derive(Default)]
pub(crate) struct Shards {
    all: Mutex<Vec<Arc<Shard>>>,
}

impl Shards {
    /// A shard only the caller writes, for `server`.
    pub fn owned(&self, server: &str) -> StatsWriter {
        let mut all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        let reusable = all.iter().find(|s| {
            !s.shared
                && &*s.server == server
                && s.in_use
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
        });
        let shard = match reusable {
            Some(shard) => shard.clone(),
            None => {
                let shard = Shard::new(server.into(), false);
                shard.in_use.store(true, Ordering::Relaxed);
                all.push(shard.clone());
                shard
            }
        };
        StatsWriter { shard }
    }

    /// The shard every thread may write for `server` (created on first use).
    pub fn shared(&self, server: &str) -> StatsWriter {
        let mut all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        let shard = match all.iter().find(|s| s.shared && &*s.server == server) {
            Some(shard) => shard.clone(),
            None => {
                let shard = Shard::new(server.into(), true);
                all.push(shard.clone());
                shard
            }
        };
        StatsWriter { shard }
    }

    /// Every shard's counters summed per server, for a scrape.
    pub fn totals(&self) -> Vec<(Arc<str>, Vec<u64>)> {
        let all = self.all.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut totals: Vec<(Arc<str>, Vec<u64>)> = Vec::new();
        for shard in all {
            let sum = match totals.iter_mut().find(|(s, _)| *s == shard.server) {
                Some((_, sum)) => sum,
                None => {
                    totals.push((shard.server.clone(), vec![0; at::LEN]));
                    &mut totals.last_mut().expect("just pushed").1
                }
            };
            for (i, v) in sum.iter_mut().enumerate() {
                *v = v.wrapping_add(shard.get(i));
            }
        }
        totals
    }
}

/// Writes one shard: plain load and store when this writer is the shard's only one,
/// `fetch_add` when it is the shared shard.
pub struct StatsWriter {
    shard: Arc<Shard>,
}

impl Drop for StatsWriter {
    fn drop(&mut self) {
        if !self.shard.shared {
            self.shard.in_use.store(false, Ordering::Release);
        }
    }
}

impl std::fmt::Debug for StatsWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StatsWriter({})", self.shard.server)
    }
}

impl StatsWriter {
    #[inline]
    fn add(&self, i: usize, n: u64) {
        let cell = &self.shard.cells[i];
        if self.shard.shared {
            cell.fetch_add(n, Ordering::Relaxed);
        } else {
            // This writer is the shard's only one (`in_use`): no other thread stores,
            // the scrape only loads, so a load and a store lose nothing.
            cell.store(
                cell.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Relaxed,
            );
        }
    }

    /// Another writer of the same shared shard (for a task the query moves to).
    /// Only the shared shard may have several writers.
    pub(crate) fn fork(&self) -> StatsWriter {
        debug_assert!(self.shard.shared, "an owned shard has one writer");
        StatsWriter {
            shard: self.shard.clone(),
        }
    }

    /// The server label this writer counts for.
    pub fn server(&self) -> &str {
        &self.shard.server
    }

    /// A query arrived: requests, its size, the DO bit.
    pub fn query(&self, l: QueryLabels, size: usize, dnssec_ok: bool) {
        let (z, p, f, t) = (
            l.zone(),
            l.proto as usize,
            l.family as usize,
            l.qtype as usize,
        );
        self.add(at::REQUESTS + ((z * P + p) * F + f) * T + t, 1);
        if dnssec_ok {
            self.add(at::DO_REQUESTS + z, 1);
        }
        // CoreDNS's request size is the message's length (req.Len()).
        self.size(at::REQUEST_SIZE, z, p, size);
    }

    fn size(&self, base: usize, z: usize, p: usize, size: usize) {
        let row = base + (z * P + p) * SB;
        self.add(row + size_bucket(size), 1);
        self.add(row + SB - 1, size as u64);
    }

    /// The cache was asked: a hit (positive or negative) or a miss.
    pub fn cache_lookup(&self, zone: u8, hit: Option<bool>) {
        let z = usize::from(zone).min(ZONES - 1);
        self.add(at::CACHE_REQUESTS + z, 1);
        match hit {
            Some(denial) => self.add(at::CACHE_HITS + z * 2 + usize::from(denial), 1),
            None => self.add(at::CACHE_MISSES + z, 1),
        }
    }

    /// `n` queries the kernel answered from one cached entry (read back every second,
    /// see `kernel_answers`): requests, cache hits and responses as for the agent's own
    /// hits. Their request and response sizes are not known here and are not counted;
    /// their durations go in the lowest bucket with no time added (they take well under a
    /// microsecond in the kernel).
    pub fn kernel_answers(&self, l: QueryLabels, n: u64, rcode: u8, denial: bool) {
        let (z, p, f, t) = (
            l.zone(),
            l.proto as usize,
            l.family as usize,
            l.qtype as usize,
        );
        self.add(at::REQUESTS + ((z * P + p) * F + f) * T + t, n);
        self.add(at::CACHE_REQUESTS + z, n);
        self.add(at::CACHE_HITS + z * 2 + usize::from(denial), n);
        self.add(
            at::RESPONSES + (z * R + rcode_index(rcode)) * PL + Plugin::Cache as usize,
            n,
        );
        self.add(at::DURATION + (z * T + t) * TB, n);
    }

    pub fn served_stale(&self, zone: u8) {
        self.add(at::SERVED_STALE + usize::from(zone).min(ZONES - 1), 1);
    }

    /// An answer was sent: its code, who wrote it, its size.
    pub fn answer(&self, l: QueryLabels, rcode: u8, plugin: Plugin, size: usize) {
        let z = l.zone();
        self.add(
            at::RESPONSES + (z * R + rcode_index(rcode)) * PL + plugin as usize,
            1,
        );
        self.size(at::RESPONSE_SIZE, z, l.proto as usize, size);
    }

    /// Receive-to-send time of an answered query.
    pub fn duration(&self, l: QueryLabels, took: Duration) {
        let row = at::DURATION + (l.zone() * T + l.qtype as usize) * TB;
        self.add(row + time_bucket(took), 1);
        self.add(row + TB - 1, nanos(took));
    }
}

/// Layout helpers for the encoder.
pub(crate) mod layout {
    use super::*;
    pub fn requests(z: usize, p: usize, f: usize, t: usize) -> usize {
        at::REQUESTS + ((z * P + p) * F + f) * T + t
    }
    pub fn size_row(base: usize, z: usize, p: usize) -> usize {
        base + (z * P + p) * SB
    }
    pub fn responses(z: usize, r: usize, pl: usize) -> usize {
        at::RESPONSES + (z * R + r) * PL + pl
    }
    pub fn duration_row(z: usize, t: usize) -> usize {
        at::DURATION + (z * T + t) * TB
    }
    pub const TIME_CELLS: usize = TB;
    pub const SIZE_CELLS: usize = SB;
}

/// Zone names by index, append-only so an index keeps its name across reloads; index 0
/// is "dropped" (CoreDNS's name for queries that never reached a zone).
pub(crate) struct ZoneNames {
    names: Mutex<Vec<String>>,
}

impl Default for ZoneNames {
    fn default() -> Self {
        ZoneNames {
            names: Mutex::new(vec!["dropped".to_string()]),
        }
    }
}

impl ZoneNames {
    /// The index of `zone` ("cluster.local." form), interned on first use; past
    /// [`ZONES`] - 1 names, the last index ("other") is shared.
    pub fn intern(&self, zone: &str) -> u8 {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = names.iter().position(|n| n == zone) {
            return i as u8;
        }
        if names.len() < ZONES - 1 {
            names.push(zone.to_string());
            return (names.len() - 1) as u8;
        }
        (ZONES - 1) as u8
    }

    pub fn name(&self, i: usize) -> String {
        let names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        names.get(i).cloned().unwrap_or_else(|| "other".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_writers_sum_with_the_shared_one_and_shards_are_reused() {
        let shards = Shards::default();
        let l = QueryLabels {
            zone: 1,
            proto: 0,
            family: 1,
            qtype: type_index(28),
        };
        let a = shards.owned("dns://10.96.0.10:53");
        let shared = shards.shared("dns://10.96.0.10:53");
        a.query(l, 40, true);
        shared.query(l, 40, false);
        drop(a);
        // A restarted loop takes the released shard back: counts are kept, not doubled.
        let b = shards.owned("dns://10.96.0.10:53");
        b.query(l, 600, false);
        let totals = shards.totals();
        assert_eq!(totals.len(), 1);
        let sum = &totals[0].1;
        assert_eq!(sum[layout::requests(1, 0, 1, 1)], 3);
        assert_eq!(sum[at::DO_REQUESTS + 1], 1);
        let row = layout::size_row(at::REQUEST_SIZE, 1, 0);
        assert_eq!(sum[row + 1], 2, "40 bytes fall in the 100 bucket");
        assert_eq!(sum[row + 6], 1, "600 bytes fall in the 1023 bucket");
        assert_eq!(sum[row + SB - 1], 680, "the sum");
        assert_eq!(shards.all.lock().unwrap().len(), 2, "one owned, one shared");
    }

    #[test]
    fn fast_bucket_and_type_lookups_agree_with_the_tables() {
        let float_bucket = |bounds: &[f64], v: f64| bounds.partition_point(|&b| b < v);
        for size in (0..70_000)
            .step_by(7)
            .chain([0, 1, 100, 101, 511, 512, 64000, 64001])
        {
            assert_eq!(
                size_bucket(size),
                float_bucket(&SIZE_BUCKETS, size as f64),
                "{size} bytes"
            );
        }
        for ns in (0..20_000_000_000u64).step_by(3_333_331).chain([
            0,
            1,
            250_000,
            250_001,
            500_000,
            8_192_000_000,
            8_192_000_001,
        ]) {
            let took = Duration::from_nanos(ns);
            assert_eq!(
                time_bucket(took),
                float_bucket(&TIME_BUCKETS, took.as_secs_f64()),
                "{ns} ns"
            );
        }
        for (i, &(t, _)) in TYPES.iter().enumerate() {
            if t != 0 {
                assert_eq!(usize::from(type_index(t)), i, "type {t}");
            }
        }
        assert_eq!(usize::from(type_index(99)), T - 1);
    }

    #[test]
    fn zone_names_are_stable_and_bounded() {
        let zones = ZoneNames::default();
        assert_eq!(zones.intern("cluster.local."), 1);
        assert_eq!(zones.intern("."), 2);
        assert_eq!(zones.intern("cluster.local."), 1);
        for i in 0..40 {
            assert!(usize::from(zones.intern(&format!("z{i}."))) < ZONES);
        }
        assert_eq!(zones.name(ZONES - 1), "other");
        assert_eq!(zones.name(0), "dropped");
    }
}
