//! The caching forwarder's front: parses a client's query, answers it from the cache
//! when it can (synchronously, no task spawned) and renders every answer the client
//! gets; what a miss does is `miss.rs`. Also the upstream health checks behind
//! `/ready`.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::rr::{DNSClass, Name, RecordType};

use crate::cache::Cache;
use crate::config::DnsConfig;
use crate::inflight::Misses;
use crate::kernel_answers::AnswerTable;
use crate::metrics::shard::type_index;
use crate::metrics::{CacheTypeLabels, Metrics, QueryLabels, StatsWriter};
use crate::router::Router;
use crate::upstream::{ExchangeOptions, Exchanger, UpstreamQuery};

/// Name the agent queries through its own intercept path to prove it is alive.
pub const HEARTBEAT_NAME: &str = "nldns-heartbeat.invalid.";

/// Transport a query came in on: decides the size limit and the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Udp,
    Tcp,
}

impl Protocol {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        }
    }
}

/// What a serving loop keeps across queries: buffers, so a hit allocates nothing, and
/// its writer of the per-query metrics. Made by [`DnsService::scratch`] (one serving
/// thread's own) or [`DnsService::shared_scratch`] (any thread).
pub struct Scratch {
    /// The lowercased question name of the query being handled.
    pub(crate) name: Vec<u8>,
    pub(crate) stats: StatsWriter,
    /// For the misses this loop hands to tasks.
    pub(crate) shared: StatsWriter,
    /// CoreDNS's `family` label of this loop's socket (0: IPv4, 1: IPv6).
    pub(crate) family: u8,
    /// Answers given since the last [`Scratch::sent`], waiting for their send time.
    pub(crate) answered: Vec<QueryLabels>,
    /// The source of the query about to be handled: what its misses are charged to
    /// (the per-source quotas). Hashed only on a miss.
    pub(crate) client: Option<IpAddr>,
}

impl Scratch {
    /// Names the source of the next queries given to [`DnsService::handle`] (a
    /// serving loop sets it before each one); `None`: not charged to any client,
    /// only the node-wide bounds apply.
    pub fn set_client(&mut self, client: Option<IpAddr>) {
        self.client = client;
    }

    /// The answers given since the last call were sent now (or are about to be): their
    /// receive-to-send time is counted from `received`, the loop's clock for them.
    pub fn sent(&mut self, received: Instant) {
        if self.answered.is_empty() {
            return;
        }
        let took = received.elapsed();
        for labels in self.answered.drain(..) {
            self.stats.duration(labels, took);
        }
    }
}

/// Routing and limits of the current configuration, swapped whole on reload.
pub(crate) struct Settings {
    pub(crate) config: DnsConfig,
    pub(crate) router: Router,
}

/// The node-local caching forwarder.
pub struct DnsService {
    settings: RwLock<Arc<Settings>>,
    cache: Mutex<Cache>,
    /// The miss path's state (`miss.rs`).
    pub(crate) misses: Misses,
    pub(crate) exchanger: Exchanger,
    pub(crate) metrics: Arc<Metrics>,
    /// Where the kernel's answers are counted, by family (see [`Self::set_answer_table`]).
    kernel_stats: Mutex<Option<[StatsWriter; 2]>>,
}

impl DnsService {
    pub fn new(config: DnsConfig, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Self>> {
        let router = config.router(&|zone| metrics.zone_index(zone))?;
        Ok(Arc::new(DnsService {
            cache: Mutex::new(Cache::new(config.cache_policy())),
            settings: RwLock::new(Arc::new(Settings { config, router })),
            misses: Misses {
                counts: metrics.miss_counts(),
                ..Misses::default()
            },
            exchanger: Exchanger::new(metrics.clone()),
            metrics,
            kernel_stats: Mutex::new(None),
        }))
    }

    /// Applies new routing and limits; cached answers are kept (an invalid config is
    /// logged and ignored, keeping the old one).
    pub fn reload(&self, config: DnsConfig) {
        let router = match config.router(&|zone| self.metrics.zone_index(zone)) {
            Ok(r) => r,
            Err(e) => {
                log::error!("DNS config rejected, keeping the previous one: {e:#}");
                return;
            }
        };
        self.exchanger.health.retain(&router.all_upstreams());
        {
            let mut cache = self.lock_cache();
            cache.set_policy(config.cache_policy());
            // Routing or lifetimes may differ now: the kernel answers again only what the
            // cache serves (and republishes) under the new configuration.
            cache.withdraw_kernel_answers();
        }
        self.update_cache_gauges();
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(Settings { config, router });
    }

    /// Lets a datapath answer cache hits itself from `table` (see `kernel_answers`), its
    /// answers counted as the servers `v4_server`'s and `v6_server`'s; `None` stops it.
    /// Call [`Self::sync_kernel_answers`] every second from then on.
    pub fn set_answer_table(
        &self,
        table: Option<Arc<dyn AnswerTable>>,
        v4_server: &str,
        v6_server: &str,
    ) {
        let on = table.is_some();
        self.lock_cache().set_answer_table(table);
        *self.kernel_stats.lock().unwrap_or_else(|e| e.into_inner()) = on.then(|| {
            [
                self.metrics.shared_stats(v4_server),
                self.metrics.shared_stats(v6_server),
            ]
        });
    }

    /// Reads back what the kernel answered since the last call into the cache (hit
    /// counts for prefetch, LRU recency) and the metrics; withdraws entries the kernel
    /// stopped answering.
    pub fn sync_kernel_answers(&self) {
        let answered = self.lock_cache().sync_kernel_hits(Instant::now());
        let stats = self.kernel_stats.lock().unwrap_or_else(|e| e.into_inner());
        let Some(stats) = stats.as_ref() else {
            return;
        };
        for hits in answered {
            let total = hits.v4 + hits.v6;
            self.metrics.kernel_cache_hits.inc_by(total);
            self.metrics
                .count_requests(hits.qtype, hits.rcode, Protocol::Udp.label(), total);
            for (family, n) in [(0, hits.v4), (1, hits.v6)] {
                if n == 0 {
                    continue;
                }
                let labels = QueryLabels {
                    zone: hits.zone,
                    proto: Protocol::Udp as u8,
                    family,
                    qtype: type_index(hits.qtype),
                };
                stats[usize::from(family)].kernel_answers(labels, n, hits.rcode, hits.denial);
            }
        }
    }

    /// Entries the kernel may answer from now.
    pub fn kernel_answer_entries(&self) -> usize {
        self.lock_cache().kernel_entries()
    }

    /// True when some cluster upstream (or, without any, some default upstream) has
    /// not failed recently: what `/ready` reports.
    pub fn upstream_reachable(&self) -> bool {
        let settings = self.settings();
        let config = &settings.config;
        if !config.cluster_upstreams.is_empty() {
            return self.exchanger.health.any_healthy(&config.cluster_upstreams);
        }
        self.exchanger.health.any_healthy(&config.default_upstreams)
    }

    /// Asks each cluster upstream (or, without any, each default upstream) for the
    /// cluster domain's SOA (the root's for default upstreams) and records who
    /// answered: any DNS reply, even an error code, shows the server is alive. Call
    /// it periodically so `upstream_reachable` does not depend on client traffic.
    pub async fn check_upstreams(&self) -> bool {
        let settings = self.settings();
        let c = &settings.config;
        let (servers, zone) = if c.cluster_upstreams.is_empty() {
            (&c.default_upstreams, ".".to_string())
        } else {
            (&c.cluster_upstreams, format!("{}.", c.cluster_domain))
        };
        let Ok(name) = Name::from_ascii(&zone) else {
            return false;
        };
        let question = UpstreamQuery {
            name,
            qtype: RecordType::SOA,
            qclass: DNSClass::IN,
            dnssec_ok: false,
            checking_disabled: false,
        };
        let opts = ExchangeOptions {
            timeout: c.upstream_timeout,
            attempts: 1,
            failure_backoff: c.upstream_failure_backoff,
            force_tcp: false,
        };
        let probes = servers.iter().map(|server| {
            self.exchanger
                .exchange(std::slice::from_ref(server), &question, &opts)
        });
        futures::future::join_all(probes).await;
        self.upstream_reachable()
    }

    /// (max connections, pipelining depth, idle timeout) for the TCP server.
    pub fn tcp_limits(&self) -> (usize, usize, Duration) {
        let settings = self.settings();
        let c = &settings.config;
        (
            c.max_tcp_connections,
            c.max_tcp_pipeline,
            c.tcp_idle_timeout,
        )
    }

    pub(crate) fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn lock_cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The metrics this service counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A scratch for one serving thread, counting as `server` (see
    /// [`Metrics::server_label`]); IPv6 when `ipv6`.
    pub fn scratch(&self, server: &str, ipv6: bool) -> Scratch {
        self.make_scratch(self.metrics.owned_stats(server), server, ipv6)
    }

    /// A scratch any thread may use at once with others (TCP connections, tools).
    pub fn shared_scratch(&self, server: &str, ipv6: bool) -> Scratch {
        self.make_scratch(self.metrics.shared_stats(server), server, ipv6)
    }

    fn make_scratch(&self, stats: StatsWriter, server: &str, ipv6: bool) -> Scratch {
        Scratch {
            name: Vec::new(),
            stats,
            shared: self.metrics.shared_stats(server),
            family: u8::from(ipv6),
            answered: Vec::new(),
            client: None,
        }
    }

    pub(crate) fn update_cache_gauges(&self) {
        let (stats, (evicted, denial_evicted)) = {
            let mut cache = self.lock_cache();
            (cache.stats(), cache.take_new_evictions())
        };
        let gauge = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.metrics.cache_entries.set(gauge(stats.entries));
        self.metrics.cache_bytes.set(gauge(stats.bytes));
        let coredns = &self.metrics.coredns;
        for (ty, entries, evictions) in [
            (
                "success",
                stats.entries - stats.denials,
                evicted - denial_evicted,
            ),
            ("denial", stats.denials, denial_evicted),
        ] {
            let labels = cache_type_labels(ty);
            coredns
                .cache_entries
                .get_or_create(&labels)
                .set(gauge(entries));
            if evictions > 0 {
                coredns
                    .cache_evictions
                    .get_or_create(&labels)
                    .inc_by(evictions);
            }
        }
        if evicted > 0 {
            self.metrics.cache_evictions.inc_by(evicted);
        }
    }
}

/// Service-wide cache series: one cache for every server and zone.
fn cache_type_labels(ty: &'static str) -> CacheTypeLabels {
    CacheTypeLabels {
        server: String::new(),
        r#type: ty,
        zones: ".".to_string(),
    }
}
