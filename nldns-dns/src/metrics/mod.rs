//! The DNS engine's Prometheus metrics (OpenMetrics text via prometheus-client): its own
//! `nldns_*` series, and beside them the CoreDNS series that node-local-dns dashboards
//! and alerts read (`coredns.rs`), with CoreDNS's names, types, labels and buckets. The
//! per-query ones are counted in per-thread shards (`shard.rs`) and summed at scrape
//! time, so the hit path touches no shared cache line for them. The agent's `/metrics`
//! encodes the registry with the collectors it adds at construction (the datapath's
//! counters, the process's).
//!
//! HELP texts are given without a final period: prometheus-client adds one.

mod coredns;
pub mod shard;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

pub use coredns::{count_panics, CacheTypeLabels, CacheZoneLabels, ProxyLabels, SetupErrorLabels};
pub use shard::{Plugin, QueryLabels, StatsWriter};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of `nldns_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub qtype: &'static str,
    pub rcode: &'static str,
    pub protocol: &'static str,
}

/// Labels of `nldns_cache_hits_total`: which path answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    /// `userspace` (the agent's cache) or `kernel` (the TC responder, see
    /// `kernel_answers`).
    pub path: &'static str,
}

/// Labels of the per-upstream metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

/// Labels of `nldns_upstream_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub upstream: String,
    pub kind: &'static str,
}

/// The miss path's node-wide counts: moved by the engine's `Misses` (they are its
/// bounds' counters) and read at each scrape, so the gauges cost the miss path no write
/// of their own.
#[derive(Debug, Default)]
pub struct MissCounts {
    pub upstream_in_flight: AtomicUsize,
    pub waiting_queries: AtomicUsize,
}

/// What the scrape-time collector reads: the miss path's counts and the UDP serving
/// sockets, whose kernel drop counts are queries shed before the agent saw them.
#[derive(Debug, Default)]
struct ScrapeState {
    misses: Arc<MissCounts>,
    /// Weak: a socket closed at shutdown or reload drops out of the sum.
    udp_sockets: Mutex<Vec<Weak<std::net::UdpSocket>>>,
}

#[derive(Debug)]
struct ScrapeCollector(Arc<ScrapeState>);

impl Collector for ScrapeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = &self.0;
        for (name, help, value) in [
            (
                "upstream_in_flight",
                "Upstream exchanges in flight now (bound: limits.maxUpstreamInFlight)",
                state.misses.upstream_in_flight.load(Ordering::Relaxed),
            ),
            (
                "waiting_queries",
                "Client queries waiting for an upstream answer now (bound: limits.maxWaitingQueries)",
                state.misses.waiting_queries.load(Ordering::Relaxed),
            ),
        ] {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let drops: u64 = {
            let mut sockets = state.udp_sockets.lock().unwrap_or_else(|e| e.into_inner());
            sockets.retain(|s| s.strong_count() > 0);
            sockets
                .iter()
                .filter_map(Weak::upgrade)
                .filter_map(|s| socket_drops(&s))
                .sum()
        };
        let counter = ConstCounter::new(drops);
        counter.encode(encoder.encode_descriptor(
            "udp_receive_drops",
            "Queries the kernel dropped at the serving UDP sockets open now because their receive buffer was full (the agent short of CPU, or flooded)",
            None,
            counter.metric_type(),
        )?)
    }
}

/// The kernel's drop count of a socket (`SO_MEMINFO`'s `SK_MEMINFO_DROPS`: datagrams
/// that did not fit the receive buffer).
fn socket_drops(socket: &std::net::UdpSocket) -> Option<u64> {
    use std::os::fd::AsRawFd;
    const SK_MEMINFO_VARS: usize = 9;
    const SK_MEMINFO_DROPS: usize = 8;
    let mut info = [0u32; SK_MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which we own.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize > SK_MEMINFO_DROPS * 4).then(|| u64::from(info[SK_MEMINFO_DROPS]))
}

/// Every metric of the engine, and the registry the agent encodes.
pub struct Metrics {
    registry: Registry,
    /// The per-query CoreDNS series, by serving thread.
    pub(crate) shards: Arc<shard::Shards>,
    pub(crate) zones: Arc<shard::ZoneNames>,
    /// `server` label per listening address (default `dns://ADDR`).
    server_labels: Mutex<HashMap<SocketAddr, String>>,
    /// The CoreDNS series counted off the hot path.
    pub coredns: coredns::CoreDns,
    pub requests: Family<RequestLabels, Counter>,
    /// `requests`' counters by (protocol, qtype, rcode) index, each taken from the
    /// family on first use: the hot path then skips the family's lock and label hash.
    request_counters: Box<[OnceLock<Counter>]>,
    /// Hits the agent answered (`nldns_cache_hits_total{path="userspace"}`).
    pub cache_hits: Counter,
    /// Hits the kernel answered, counted when the agent reads them back (every second).
    pub kernel_cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_entries: Gauge,
    pub cache_bytes: Gauge,
    pub cache_evictions: Counter,
    pub prefetches: Counter,
    pub stale_answers: Counter,
    pub coalesced: Counter,
    /// Queries answered SERVFAIL at once because the upstream in-flight cap was hit.
    pub upstream_overload: Counter,
    /// Misses answered SERVFAIL (or stale) at once because their client was over its
    /// own share of the miss path (`max_*_per_source`).
    pub source_quota_rejects: Counter,
    /// Misses answered SERVFAIL (or stale) at once because the node's upstream query
    /// rate bound (`max_upstream_qps`) was reached.
    pub upstream_rate_limited: Counter,
    pub upstream_latency: Family<UpstreamLabels, Histogram>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    scrape: Arc<ScrapeState>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Self::with_collectors(Vec::new(), Vec::new())
    }

    /// The engine's metrics plus `collectors`, encoded with them under the same
    /// `nldns_` prefix (the agent's datapath counters are one), and `unprefixed` ones
    /// that name themselves (the process's `process_*`).
    pub fn with_collectors(
        collectors: Vec<Box<dyn Collector>>,
        unprefixed: Vec<Box<dyn Collector>>,
    ) -> Arc<Self> {
        let mut root = Registry::default();
        for collector in unprefixed {
            root.register_collector(collector);
        }
        let shards = Arc::new(shard::Shards::default());
        let zones = Arc::new(shard::ZoneNames::default());
        let coredns = coredns::CoreDns::register(
            root.sub_registry_with_prefix("coredns"),
            shards.clone(),
            zones.clone(),
        );
        let registry = root.sub_registry_with_prefix("nldns");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "DNS requests answered, by query type, response code and protocol",
            requests.clone(),
        );
        let hits_by_path = Family::<PathLabels, Counter>::default();
        registry.register(
            "cache_hits",
            "Queries answered from fresh cache entries, by the path that answered (userspace, kernel)",
            hits_by_path.clone(),
        );
        let cache_hits = hits_by_path
            .get_or_create(&PathLabels { path: "userspace" })
            .clone();
        let kernel_cache_hits = hits_by_path
            .get_or_create(&PathLabels { path: "kernel" })
            .clone();
        let cache_misses = Counter::default();
        registry.register(
            "cache_misses",
            "Queries that needed an upstream answer",
            cache_misses.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "cache_entries",
            "Answers in the cache",
            cache_entries.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register(
            "cache_bytes",
            "Bytes charged to the cache's budget",
            cache_bytes.clone(),
        );
        let cache_evictions = Counter::default();
        registry.register(
            "cache_evictions",
            "Cache entries evicted to respect the entry or byte bound",
            cache_evictions.clone(),
        );
        let prefetches = Counter::default();
        registry.register(
            "prefetches",
            "Popular entries refreshed before expiry",
            prefetches.clone(),
        );
        let stale_answers = Counter::default();
        registry.register(
            "stale_answers",
            "Expired answers served because upstreams failed (RFC 8767)",
            stale_answers.clone(),
        );
        let coalesced = Counter::default();
        registry.register(
            "coalesced_queries",
            "Cache misses that joined an identical upstream query already in flight",
            coalesced.clone(),
        );
        let upstream_overload = Counter::default();
        registry.register(
            "upstream_overload",
            "Queries answered SERVFAIL because too many upstream queries were in flight",
            upstream_overload.clone(),
        );
        let source_quota_rejects = Counter::default();
        registry.register(
            "source_quota_rejects",
            "Cache misses answered SERVFAIL or stale at once because their client was over its per-source quota",
            source_quota_rejects.clone(),
        );
        let upstream_rate_limited = Counter::default();
        registry.register(
            "upstream_rate_limited",
            "Cache misses answered SERVFAIL or stale at once because the node's upstream query rate bound was reached",
            upstream_rate_limited.clone(),
        );
        let upstream_latency = Family::<UpstreamLabels, Histogram>::new_with_constructor(|| {
            // 0.5 ms .. ~4 s
            Histogram::new(exponential_buckets(0.0005, 2.0, 14))
        });
        registry.register(
            "upstream_latency_seconds",
            "Time for an upstream to answer, per upstream",
            upstream_latency.clone(),
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failed upstream exchanges, per upstream and kind",
            upstream_errors.clone(),
        );
        let scrape = Arc::new(ScrapeState::default());
        registry.register_collector(Box::new(ScrapeCollector(scrape.clone())));
        for collector in collectors {
            registry.register_collector(collector);
        }
        Arc::new(Metrics {
            registry: root,
            shards,
            zones,
            server_labels: Mutex::new(HashMap::new()),
            coredns,
            requests,
            request_counters: (0..PROTOCOLS.len() * QTYPES.len() * RCODES.len())
                .map(|_| OnceLock::new())
                .collect(),
            cache_hits,
            kernel_cache_hits,
            cache_misses,
            cache_entries,
            cache_bytes,
            cache_evictions,
            prefetches,
            stale_answers,
            coalesced,
            upstream_overload,
            source_quota_rejects,
            upstream_rate_limited,
            upstream_latency,
            upstream_errors,
            scrape,
        })
    }

    /// The miss path's counts, which the service's bounds move and the scrape reads.
    pub(crate) fn miss_counts(&self) -> Arc<MissCounts> {
        self.scrape.misses.clone()
    }

    /// Counts `socket`'s kernel drops in `nldns_udp_receive_drops_total` while it is open.
    pub fn watch_udp_socket(&self, socket: &Arc<std::net::UdpSocket>) {
        self.scrape
            .udp_sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(socket));
    }

    /// Names the `server` label of queries received on `local` (the agent names its
    /// intercept sockets after the Service IP the pods asked: `dns://10.96.0.10:53`).
    pub fn set_server_label(&self, local: SocketAddr, label: impl Into<String>) {
        self.server_labels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(local, label.into());
    }

    /// The `server` label for queries received on `local`.
    pub fn server_label(&self, local: Option<SocketAddr>) -> String {
        let Some(local) = local else {
            return "dns://:53".to_string();
        };
        self.server_labels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&local)
            .cloned()
            .unwrap_or_else(|| format!("dns://{local}"))
    }

    /// A writer of the per-query series that only the calling thread uses.
    pub fn owned_stats(&self, server: &str) -> StatsWriter {
        self.shards.owned(server)
    }

    /// A writer of the per-query series any thread may use (TCP, the miss path).
    pub fn shared_stats(&self, server: &str) -> StatsWriter {
        self.shards.shared(server)
    }

    /// The label index of a zone name ("cluster.local." form).
    pub fn zone_index(&self, zone: &str) -> u8 {
        self.zones.intern(zone)
    }

    /// Everything in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            log::warn!("encoding metrics: {e}");
        }
        out
    }

    /// Counts one answered request (on the hot path: no lock, no allocation once the
    /// label set was seen).
    pub fn count_request(&self, qtype: u16, rcode: u8, protocol: &'static str) {
        self.count_requests(qtype, rcode, protocol, 1);
    }

    /// `n` requests of one kind at once (what the kernel answered, read back).
    pub fn count_requests(&self, qtype: u16, rcode: u8, protocol: &'static str, n: u64) {
        let (p, q, r) = (
            PROTOCOLS.iter().position(|&name| name == protocol),
            qtype_index(qtype),
            rcode_index(rcode),
        );
        let Some(p) = p else {
            self.requests
                .get_or_create(&RequestLabels {
                    qtype: QTYPES[q].1,
                    rcode: RCODES[r],
                    protocol,
                })
                .inc_by(n);
            return;
        };
        let slot = &self.request_counters[(p * QTYPES.len() + q) * RCODES.len() + r];
        slot.get_or_init(|| {
            let labels = RequestLabels {
                qtype: QTYPES[q].1,
                rcode: RCODES[r],
                protocol,
            };
            // A clone shares the family's value.
            self.requests.get_or_create(&labels).clone()
        })
        .inc_by(n);
    }
}

/// Protocol labels with a counter table.
const PROTOCOLS: [&str; 2] = ["udp", "tcp"];

/// Common type mnemonics; every other type is "other" (the last entry), so clients
/// cannot blow up the label cardinality.
const QTYPES: [(u16, &str); 16] = [
    (1, "A"),
    (2, "NS"),
    (5, "CNAME"),
    (6, "SOA"),
    (12, "PTR"),
    (15, "MX"),
    (16, "TXT"),
    (28, "AAAA"),
    (33, "SRV"),
    (35, "NAPTR"),
    (43, "DS"),
    (48, "DNSKEY"),
    (64, "SVCB"),
    (65, "HTTPS"),
    (255, "ANY"),
    (0, "other"),
];

fn qtype_index(qtype: u16) -> usize {
    QTYPES[..QTYPES.len() - 1]
        .iter()
        .position(|&(t, _)| t == qtype)
        .unwrap_or(QTYPES.len() - 1)
}

/// RCODE names by value; "other" (the last) for every other value.
const RCODES: [&str; 7] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "other",
];

fn rcode_index(rcode: u8) -> usize {
    usize::from(rcode).min(RCODES.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_registry_and_added_collectors() {
        #[derive(Debug)]
        struct Fixed;
        impl Collector for Fixed {
            fn encode(
                &self,
                mut encoder: prometheus_client::encoding::DescriptorEncoder,
            ) -> Result<(), std::fmt::Error> {
                use prometheus_client::encoding::EncodeMetric;
                let counter = prometheus_client::metrics::counter::ConstCounter::new(7u64);
                let metric = encoder.encode_descriptor(
                    "datapath_redirected",
                    "Test counter.",
                    None,
                    counter.metric_type(),
                )?;
                counter.encode(metric)
            }
        }
        let metrics = Metrics::with_collectors(vec![Box::new(Fixed)], Vec::new());
        metrics.count_request(28, 3, "udp");
        metrics.cache_hits.inc();
        metrics
            .upstream_latency
            .get_or_create(&UpstreamLabels {
                upstream: "10.0.0.10:53".into(),
            })
            .observe(0.003);
        let text = metrics.encode();
        assert!(
            text.contains(
                "nldns_requests_total{qtype=\"AAAA\",rcode=\"NXDOMAIN\",protocol=\"udp\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("nldns_cache_hits_total{path=\"userspace\"} 1"),
            "{text}"
        );
        assert!(text.contains("nldns_datapath_redirected_total 7"), "{text}");
        assert!(
            text.contains("nldns_upstream_latency_seconds_bucket"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    /// Datagrams the kernel could not queue at a watched socket are counted, from the
    /// kernel's own count: a socket nobody reads, with the smallest receive buffer.
    #[test]
    fn udp_receive_drops_come_from_the_kernel() {
        let metrics = Metrics::new();
        let socket = Arc::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
        socket2::SockRef::from(&*socket)
            .set_recv_buffer_size(1)
            .unwrap();
        metrics.watch_udp_socket(&socket);
        let drops = |m: &Metrics| {
            m.encode().lines().find_map(|l| {
                l.strip_prefix("nldns_udp_receive_drops_total ")?
                    .parse::<u64>()
                    .ok()
            })
        };
        assert_eq!(drops(&metrics), Some(0));
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            sender
                .send_to(&[0u8; 512], socket.local_addr().unwrap())
                .unwrap();
        }
        let dropped = drops(&metrics).unwrap();
        assert!(dropped > 100, "dropped {dropped} of 200");
        // A closed socket leaves the sum.
        drop(socket);
        assert_eq!(drops(&metrics), Some(0));
    }
}
