//! The CoreDNS series node-local-dns dashboards and alerts read, with CoreDNS's names,
//! types, label names and buckets (its `metrics`, `cache` and `forward` plugins, and
//! node-cache's setup counter). The per-query ones come from the shards (`shard.rs`),
//! summed at each scrape by [`ShardCollector`]; the rest are ordinary families counted
//! where they happen, off the hot path.
//!
//! Label values as nldns fills them:
//! - `server`: `dns://<address the client asked>` (an intercept socket is named after
//!   its Service IP: `dns://10.96.0.10:53`); empty for the service-wide series (nldns
//!   has one cache and one forwarder for all of them).
//! - `zone` / `zones`: the zone a query was routed by, as node-local-dns's server blocks
//!   name them (`cluster.local.`, `in-addr.arpa.`, `ip6.arpa.`, each stub domain, and
//!   `.` for the rest); `dropped` for queries that never reached one.
//! - `plugin`: `cache` for answers from the cache (stale ones included), `forward` for
//!   upstream answers and the forwarder's failures, empty for errors the server
//!   answered itself (FORMERR, NOTIMP).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::shard::{self, at, layout, Shards, ZoneNames, ZONES};

/// Panics anywhere in the process, counted by the hook [`count_panics`] installs.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// Counts every panic of the process for `coredns_panics_total` (and then runs the
/// previous hook, which prints it). Call once, early.
pub fn count_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        previous(info);
    }));
}

/// `coredns_cache_entries` / `coredns_cache_evictions_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheTypeLabels {
    pub server: String,
    /// "success" or "denial" (NXDOMAIN, NODATA, SERVFAIL).
    pub r#type: &'static str,
    pub zones: String,
}

/// `coredns_cache_prefetch_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheZoneLabels {
    pub server: String,
    pub zones: String,
}

/// `coredns_proxy_request_duration_seconds` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProxyLabels {
    pub server: String,
    pub to: String,
    pub rcode: &'static str,
    pub proxy_name: &'static str,
}

/// `coredns_nodecache_setup_errors_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SetupErrorLabels {
    /// What failed: "interface" (attaching to a pod interface), "socket_hooks",
    /// "configmap" (a config file that did not load on reload).
    pub errortype: &'static str,
}

/// The CoreDNS series counted off the hot path.
pub struct CoreDns {
    pub cache_entries: Family<CacheTypeLabels, Gauge>,
    pub cache_evictions: Family<CacheTypeLabels, Counter>,
    pub cache_prefetch: Family<CacheZoneLabels, Counter>,
    pub proxy_duration: Family<ProxyLabels, Histogram>,
    /// Exchanges started while every upstream of the route was marked down.
    pub healthcheck_broken: Counter,
    /// Queries refused because the upstream in-flight bounds were reached.
    pub max_concurrent_rejects: Counter,
    pub setup_errors: Family<SetupErrorLabels, Counter>,
}

impl CoreDns {
    pub(super) fn register(
        registry: &mut Registry,
        shards: Arc<Shards>,
        zones: Arc<ZoneNames>,
    ) -> Self {
        let cache_entries = Family::<CacheTypeLabels, Gauge>::default();
        registry.register(
            "cache_entries",
            "The number of elements in the cache",
            cache_entries.clone(),
        );
        let cache_evictions = Family::<CacheTypeLabels, Counter>::default();
        registry.register(
            "cache_evictions",
            "The count of cache evictions",
            cache_evictions.clone(),
        );
        let cache_prefetch = Family::<CacheZoneLabels, Counter>::default();
        registry.register(
            "cache_prefetch",
            "The number of times the cache has prefetched a cached item",
            cache_prefetch.clone(),
        );
        let proxy_duration = Family::<ProxyLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(shard::TIME_BUCKETS.iter().copied())
        });
        registry.register(
            "proxy_request_duration_seconds",
            "Histogram of the time each request took",
            proxy_duration.clone(),
        );
        let healthcheck_broken = Counter::default();
        registry.register(
            "forward_healthcheck_broken",
            "Counter of the number of complete failures of the healthchecks",
            healthcheck_broken.clone(),
        );
        let max_concurrent_rejects = Counter::default();
        registry.register(
            "forward_max_concurrent_rejects",
            "Counter of the number of queries rejected because the concurrent queries were at maximum",
            max_concurrent_rejects.clone(),
        );
        let setup_errors = Family::<SetupErrorLabels, Counter>::default();
        registry.register(
            "nodecache_setup_errors",
            "The number of errors during periodic network setup for node-cache",
            setup_errors.clone(),
        );
        registry.register_collector(Box::new(ShardCollector { shards, zones }));
        CoreDns {
            cache_entries,
            cache_evictions,
            cache_prefetch,
            proxy_duration,
            healthcheck_broken,
            max_concurrent_rejects,
            setup_errors,
        }
    }
}

/// The per-query series: every shard summed, per server, at scrape time.
struct ShardCollector {
    shards: Arc<Shards>,
    zones: Arc<ZoneNames>,
}

impl std::fmt::Debug for ShardCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShardCollector")
    }
}

/// Histogram cells (per bucket, then overflow, then the sum) as encoder input.
fn histogram(cells: &[u64], bounds: &[f64], sum_scale: f64) -> (f64, u64, Vec<(f64, u64)>) {
    let mut buckets: Vec<(f64, u64)> = bounds.iter().copied().zip(cells.iter().copied()).collect();
    buckets.push((f64::MAX, cells[bounds.len()]));
    let count = cells[..=bounds.len()].iter().sum();
    (cells[bounds.len() + 1] as f64 * sum_scale, count, buckets)
}

impl Collector for ShardCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let totals = self.shards.totals();
        let zone_names: Vec<String> = (0..ZONES).map(|z| self.zones.name(z)).collect();
        let counter = |v: u64| ConstCounter::new(v);

        {
            let mut family = encoder.encode_descriptor(
                "dns_requests",
                "Counter of DNS requests made per zone, protocol and family.",
                None,
                MetricType::Counter,
            )?;
            for (server, sum) in &totals {
                for (z, zone) in zone_names.iter().enumerate() {
                    for (p, proto) in shard::PROTOS.iter().enumerate() {
                        for (f, fam) in shard::FAMILIES.iter().enumerate() {
                            for (t, (_, ty)) in shard::TYPES.iter().enumerate() {
                                let v = sum[layout::requests(z, p, f, t)];
                                if v == 0 {
                                    continue;
                                }
                                let labels = [
                                    ("server", &**server),
                                    ("zone", zone.as_str()),
                                    ("proto", proto),
                                    ("family", fam),
                                    ("type", ty),
                                ];
                                counter(v).encode(family.encode_family(&labels)?)?;
                            }
                        }
                    }
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "dns_do_requests",
                "Counter of DNS requests with DO bit set per zone.",
                None,
                MetricType::Counter,
            )?;
            for (server, sum) in &totals {
                for (z, zone) in zone_names.iter().enumerate() {
                    let v = sum[at::DO_REQUESTS + z];
                    if v > 0 {
                        let labels = [("server", &**server), ("zone", zone.as_str())];
                        counter(v).encode(family.encode_family(&labels)?)?;
                    }
                }
            }
        }
        for (name, help, base) in [
            (
                "dns_request_size_bytes",
                "Size of the EDNS0 UDP buffer in bytes (64K for TCP) per zone and protocol.",
                at::REQUEST_SIZE,
            ),
            (
                "dns_response_size_bytes",
                "Size of the returned response in bytes.",
                at::RESPONSE_SIZE,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (server, sum) in &totals {
                for (z, zone) in zone_names.iter().enumerate() {
                    for (p, proto) in shard::PROTOS.iter().enumerate() {
                        let row = layout::size_row(base, z, p);
                        let cells = &sum[row..row + layout::SIZE_CELLS];
                        let (total, count, buckets) = histogram(cells, &shard::SIZE_BUCKETS, 1.0);
                        if count == 0 {
                            continue;
                        }
                        let labels = [
                            ("server", &**server),
                            ("zone", zone.as_str()),
                            ("proto", proto),
                        ];
                        family
                            .encode_family(&labels)?
                            .encode_histogram::<NoLabelSet>(total, count, &buckets, None)?;
                    }
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "dns_responses",
                "Counter of response status codes.",
                None,
                MetricType::Counter,
            )?;
            for (server, sum) in &totals {
                for (z, zone) in zone_names.iter().enumerate() {
                    for (r, rcode) in shard::RCODES.iter().enumerate() {
                        for (pl, plugin) in shard::PLUGINS.iter().enumerate() {
                            let v = sum[layout::responses(z, r, pl)];
                            if v == 0 {
                                continue;
                            }
                            let labels = [
                                ("server", &**server),
                                ("zone", zone.as_str()),
                                ("rcode", rcode),
                                ("plugin", plugin),
                            ];
                            counter(v).encode(family.encode_family(&labels)?)?;
                        }
                    }
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "dns_request_duration_seconds",
                "Histogram of the time (in seconds) each request took per zone.",
                None,
                MetricType::Histogram,
            )?;
            for (server, sum) in &totals {
                for (z, zone) in zone_names.iter().enumerate() {
                    for (t, (_, ty)) in shard::TYPES.iter().enumerate() {
                        let row = layout::duration_row(z, t);
                        let cells = &sum[row..row + layout::TIME_CELLS];
                        let (total, count, buckets) = histogram(cells, &shard::TIME_BUCKETS, 1e-9);
                        if count == 0 {
                            continue;
                        }
                        let labels = [("server", &**server), ("zone", zone.as_str()), ("type", ty)];
                        family
                            .encode_family(&labels)?
                            .encode_histogram::<NoLabelSet>(total, count, &buckets, None)?;
                    }
                }
            }
        }
        for (name, help, base) in [
            (
                "cache_requests",
                "The count of cache requests.",
                at::CACHE_REQUESTS,
            ),
            (
                "cache_misses",
                "The count of cache misses. Deprecated, derive misses from cache hits/requests counters.",
                at::CACHE_MISSES,
            ),
            (
                "cache_served_stale",
                "The number of requests served from stale cache entries.",
                at::SERVED_STALE,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (server, sum) in &totals {
                for (z, zones) in zone_names.iter().enumerate() {
                    let v = sum[base + z];
                    if v > 0 {
                        let labels = [("server", &**server), ("zones", zones.as_str())];
                        counter(v).encode(family.encode_family(&labels)?)?;
                    }
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "cache_hits",
                "The count of cache hits.",
                None,
                MetricType::Counter,
            )?;
            for (server, sum) in &totals {
                for (z, zones) in zone_names.iter().enumerate() {
                    for (d, ty) in ["success", "denial"].into_iter().enumerate() {
                        let v = sum[at::CACHE_HITS + z * 2 + d];
                        if v > 0 {
                            let labels = [
                                ("server", &**server),
                                ("type", ty),
                                ("zones", zones.as_str()),
                            ];
                            counter(v).encode(family.encode_family(&labels)?)?;
                        }
                    }
                }
            }
        }
        counter(PANICS.load(Ordering::Relaxed)).encode(encoder.encode_descriptor(
            "panics",
            "A metrics that counts the number of panics.",
            None,
            MetricType::Counter,
        )?)?;
        {
            let mut family = encoder.encode_descriptor(
                "build_info",
                "A metric with a constant '1' value labeled by version, revision, and goversion from which nldns was built.",
                None,
                MetricType::Gauge,
            )?;
            let labels = [
                ("version", env!("CARGO_PKG_VERSION")),
                (
                    "revision",
                    option_env!("NLDNS_REVISION").unwrap_or("unknown"),
                ),
                // CoreDNS reports its Go toolchain; nldns has none.
                ("goversion", "none"),
            ];
            ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
