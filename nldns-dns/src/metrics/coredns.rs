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

/// One series' label pairs.
type Labels<'a> = Vec<(&'static str, &'a str)>;

/// A counter family from its series; zero series are left out, as CoreDNS leaves out
/// label sets it never saw.
fn counters<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels<'a>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        if v > 0 {
            ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// A histogram family from its series' shard cells (per bucket of `bounds`, the
/// overflow, the sum in units of `sum_scale`); series with no observation are left out.
fn histograms<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    bounds: &[f64],
    sum_scale: f64,
    series: impl IntoIterator<Item = (Labels<'a>, &'a [u64])>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, cells) in series {
        let (total, count, buckets) = histogram(cells, bounds, sum_scale);
        if count > 0 {
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(total, count, &buckets, None)?;
        }
    }
    Ok(())
}

impl Collector for ShardCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let totals = self.shards.totals();
        let zone_names: Vec<String> = (0..ZONES).map(|z| self.zones.name(z)).collect();
        let mut requests = Vec::new();
        let mut do_requests = Vec::new();
        let mut request_sizes = Vec::new();
        let mut response_sizes = Vec::new();
        let mut responses = Vec::new();
        let mut durations = Vec::new();
        let (mut cache_requests, mut cache_misses, mut served_stale, mut cache_hits) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // Every series of every (server, zone), each family's in its own list.
        let server_zones = totals.iter().flat_map(|(server, sum)| {
            let zones = zone_names.iter().enumerate();
            zones.map(move |(z, zone)| (&**server, sum.as_slice(), z, zone.as_str()))
        });
        for (server, sum, z, zone) in server_zones {
            for (p, proto) in shard::PROTOS.iter().enumerate() {
                for (f, family) in shard::FAMILIES.iter().enumerate() {
                    for (t, (_, ty)) in shard::TYPES.iter().enumerate() {
                        let labels = vec![
                            ("server", server),
                            ("zone", zone),
                            ("proto", *proto),
                            ("family", *family),
                            ("type", *ty),
                        ];
                        requests.push((labels, sum[layout::requests(z, p, f, t)]));
                    }
                }
                for (base, sizes) in [
                    (at::REQUEST_SIZE, &mut request_sizes),
                    (at::RESPONSE_SIZE, &mut response_sizes),
                ] {
                    let row = layout::size_row(base, z, p);
                    let labels = vec![("server", server), ("zone", zone), ("proto", *proto)];
                    sizes.push((labels, &sum[row..row + layout::SIZE_CELLS]));
                }
            }
            do_requests.push((
                vec![("server", server), ("zone", zone)],
                sum[at::DO_REQUESTS + z],
            ));
            for (r, rcode) in shard::RCODES.iter().enumerate() {
                for (pl, plugin) in shard::PLUGINS.iter().enumerate() {
                    let labels = vec![
                        ("server", server),
                        ("zone", zone),
                        ("rcode", *rcode),
                        ("plugin", *plugin),
                    ];
                    responses.push((labels, sum[layout::responses(z, r, pl)]));
                }
            }
            for (t, (_, ty)) in shard::TYPES.iter().enumerate() {
                let row = layout::duration_row(z, t);
                let labels = vec![("server", server), ("zone", zone), ("type", *ty)];
                durations.push((labels, &sum[row..row + layout::TIME_CELLS]));
            }
            let cache = || vec![("server", server), ("zones", zone)];
            cache_requests.push((cache(), sum[at::CACHE_REQUESTS + z]));
            cache_misses.push((cache(), sum[at::CACHE_MISSES + z]));
            served_stale.push((cache(), sum[at::SERVED_STALE + z]));
            for (d, ty) in ["success", "denial"].into_iter().enumerate() {
                let labels = vec![("server", server), ("type", ty), ("zones", zone)];
                cache_hits.push((labels, sum[at::CACHE_HITS + z * 2 + d]));
            }
        }
        let e = &mut encoder;
        counters(
            e,
            "dns_requests",
            "Counter of DNS requests made per zone, protocol and family.",
            requests,
        )?;
        counters(
            e,
            "dns_do_requests",
            "Counter of DNS requests with DO bit set per zone.",
            do_requests,
        )?;
        histograms(
            e,
            "dns_request_size_bytes",
            "Size of the EDNS0 UDP buffer in bytes (64K for TCP) per zone and protocol.",
            &shard::SIZE_BUCKETS,
            1.0,
            request_sizes,
        )?;
        histograms(
            e,
            "dns_response_size_bytes",
            "Size of the returned response in bytes.",
            &shard::SIZE_BUCKETS,
            1.0,
            response_sizes,
        )?;
        counters(
            e,
            "dns_responses",
            "Counter of response status codes.",
            responses,
        )?;
        histograms(
            e,
            "dns_request_duration_seconds",
            "Histogram of the time (in seconds) each request took per zone.",
            &shard::TIME_BUCKETS,
            1e-9,
            durations,
        )?;
        counters(
            e,
            "cache_requests",
            "The count of cache requests.",
            cache_requests,
        )?;
        counters(
            e,
            "cache_misses",
            "The count of cache misses. Deprecated, derive misses from cache hits/requests counters.",
            cache_misses,
        )?;
        counters(
            e,
            "cache_served_stale",
            "The number of requests served from stale cache entries.",
            served_stale,
        )?;
        counters(e, "cache_hits", "The count of cache hits.", cache_hits)?;
        ConstCounter::new(PANICS.load(Ordering::Relaxed)).encode(encoder.encode_descriptor(
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
