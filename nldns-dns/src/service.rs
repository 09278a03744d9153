//! The caching forwarder's front: parses a client's query, answers it from the cache
//! when it can (synchronously, no task spawned) and renders every answer the client
//! gets; what a miss does is `miss.rs`. Also the upstream health checks behind
//! `/ready`.

use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::rr::{DNSClass, Name, RecordType};

use crate::cache::{AnswerKind, Cache, CacheKey, CachedAnswer, Lookup, KEY_CD, KEY_DO};
use crate::config::DnsConfig;
use crate::metrics::shard::{type_index, ZONE_DROPPED};
use crate::metrics::{CacheTypeLabels, Metrics, Plugin, QueryLabels, StatsWriter};
use crate::miss::{Misses, PendingQuery};
use crate::router::Router;
use crate::upstream::{ExchangeOptions, Exchanger, UpstreamQuery};
use crate::wire::{self, QueryError, QueryInfo, TtlPatch};

/// Name the agent queries through its own intercept path to prove it is alive.
pub const HEARTBEAT_NAME: &str = "nldns-heartbeat.invalid.";
const HEARTBEAT_WIRE: &[u8] = b"\x0fnldns-heartbeat\x07invalid\x00";

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

/// What [`DnsService::handle`] did with a query; a reply is in the caller's buffer.
pub enum Handling {
    /// The answer was written to `out`: send it.
    Reply,
    /// Unreadable or not a query: say nothing.
    Drop,
    /// Needs upstream: await [`PendingQuery::resolve`] (in a task) for the answer.
    Resolve(PendingQuery),
}

/// What a serving loop keeps across queries: buffers, so a hit allocates nothing, and
/// its writer of the per-query metrics. Made by [`DnsService::scratch`] (one serving
/// thread's own) or [`DnsService::shared_scratch`] (any thread).
pub struct Scratch {
    /// The lowercased question name of the query being handled.
    name: Vec<u8>,
    stats: StatsWriter,
    /// For the misses this loop hands to tasks.
    shared: StatsWriter,
    /// CoreDNS's `family` label of this loop's socket (0: IPv4, 1: IPv6).
    family: u8,
    /// Answers given since the last [`Scratch::sent`], waiting for their send time.
    answered: Vec<QueryLabels>,
}

impl Scratch {
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

/// Where the answer to one query is counted.
pub(crate) struct Tally<'a> {
    pub stats: &'a StatsWriter,
    pub labels: QueryLabels,
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
}

impl DnsService {
    pub fn new(config: DnsConfig, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Self>> {
        let router = config.router(&|zone| metrics.zone_index(zone))?;
        Ok(Arc::new(DnsService {
            cache: Mutex::new(Cache::new(config.cache_policy())),
            settings: RwLock::new(Arc::new(Settings { config, router })),
            misses: Misses::default(),
            exchanger: Exchanger::new(metrics.clone()),
            metrics,
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
        self.lock_cache().set_policy(config.cache_policy());
        self.update_cache_gauges();
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(Settings { config, router });
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

    /// Handles `query` and, on a miss, waits for the upstream outcome: [`Self::handle`]
    /// for callers that keep no buffers (tests, tools). `None`: send nothing.
    pub async fn answer(self: &Arc<Self>, query: &[u8], protocol: Protocol) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let now = Instant::now();
        let mut scratch = self.shared_scratch("dns://:53", false);
        match self.handle(query, protocol, now, &mut scratch, &mut out) {
            Handling::Reply => {
                scratch.sent(now);
                Some(out)
            }
            Handling::Drop => None,
            Handling::Resolve(pending) => Some(pending.resolve().await),
        }
    }

    /// The one entry point for a client's query: parse, heartbeat, cache hit, or the
    /// start of a miss. Never blocks on I/O. The answer goes to `out` (cleared first);
    /// `now` is the caller's clock (a serving loop reads it once per batch of
    /// datagrams, precise enough for whole-second TTLs); `scratch` is reused across
    /// queries so a hit allocates nothing.
    pub fn handle(
        self: &Arc<Self>,
        query: &[u8],
        protocol: Protocol,
        now: Instant,
        scratch: &mut Scratch,
        out: &mut Vec<u8>,
    ) -> Handling {
        out.clear();
        let proto = protocol as u8;
        let info = match wire::parse_query(query, &mut scratch.name) {
            Ok(info) => info,
            Err(QueryError::Drop) => return Handling::Drop,
            Err(e) => {
                let rcode = match e {
                    QueryError::NotImp => u16::from(wire::RCODE_NOTIMP),
                    QueryError::BadVers => wire::RCODE_BADVERS,
                    _ => u16::from(wire::RCODE_FORMERR),
                };
                *out = wire::synthesize(query, None, rcode, 0);
                let labels = scratch.labels(ZONE_DROPPED, proto, 0);
                scratch.stats.query(labels, query.len(), false);
                let tally = Tally {
                    stats: &scratch.stats,
                    labels,
                };
                self.count_answer(0, out, protocol, &tally, Plugin::Server);
                scratch.answered.push(labels);
                return Handling::Reply;
            }
        };
        let name = scratch.name.as_slice();
        if name == HEARTBEAT_WIRE {
            // Liveness probe: answered locally, not cached, not counted.
            *out = wire::synthesize(query, Some(&info), u16::from(wire::RCODE_NXDOMAIN), 0);
            return Handling::Reply;
        }
        if matches!(info.qtype, 251 | 252) {
            // IXFR/AXFR make no sense through a cache.
            *out = wire::synthesize(query, Some(&info), u16::from(wire::RCODE_NOTIMP), 0);
            let zone = self.settings().router.route(name).label;
            let labels = scratch.labels(zone, proto, info.qtype);
            scratch.stats.query(labels, query.len(), info.dnssec_ok());
            let tally = Tally {
                stats: &scratch.stats,
                labels,
            };
            self.count_answer(info.qtype, out, protocol, &tally, Plugin::Server);
            scratch.answered.push(labels);
            return Handling::Reply;
        }
        let key = cache_key(name, &info);
        let lookup = self.lock_cache().lookup(&key, now);
        let stale = match lookup {
            Lookup::Fresh {
                answer,
                prefetch,
                zone,
            } => {
                self.metrics.cache_hits.inc();
                let labels = scratch.labels(zone, proto, info.qtype);
                let stats = &scratch.stats;
                stats.query(labels, query.len(), info.dnssec_ok());
                stats.cache_lookup(zone, Some(answer.kind() != AnswerKind::Positive));
                if prefetch {
                    self.prefetch(key, zone);
                }
                let ttls = TtlPatch::CountDown(answer.elapsed_secs(now));
                let tally = Tally { stats, labels };
                self.render(out, query, &info, &answer, ttls, protocol, &tally);
                scratch.answered.push(labels);
                return Handling::Reply;
            }
            Lookup::Stale {
                answer,
                ask_upstream: false,
                zone,
            } => {
                let labels = scratch.labels(zone, proto, info.qtype);
                let stats = &scratch.stats;
                stats.query(labels, query.len(), info.dnssec_ok());
                stats.cache_lookup(zone, Some(answer.kind() != AnswerKind::Positive));
                let tally = Tally { stats, labels };
                self.render_stale(out, query, &info, &answer, protocol, &tally);
                scratch.answered.push(labels);
                return Handling::Reply;
            }
            Lookup::Stale {
                answer,
                ask_upstream: true,
                ..
            } => Some(answer),
            Lookup::Miss => {
                self.update_cache_gauges(); // the lookup may have dropped a dead entry
                None
            }
        };
        self.metrics.cache_misses.inc();
        let zone = self.settings().router.route(name).label;
        let labels = scratch.labels(zone, proto, info.qtype);
        scratch.stats.query(labels, query.len(), info.dnssec_ok());
        scratch.stats.cache_lookup(zone, None);
        let stats = scratch.shared.fork();
        match self.start_miss(query, info, key, stale, protocol, stats, labels, now) {
            Ok(pending) => Handling::Resolve(pending),
            Err((info, stale)) => {
                self.metrics.upstream_overload.inc();
                self.metrics.coredns.max_concurrent_rejects.inc();
                let tally = Tally {
                    stats: &scratch.stats,
                    labels,
                };
                self.fail(out, query, &info, stale.as_deref(), protocol, &tally);
                scratch.answered.push(labels);
                Handling::Reply
            }
        }
    }

    /// Counts an answer about to be sent: nldns's request counter and CoreDNS's
    /// responses and response size.
    pub(crate) fn count_answer(
        &self,
        qtype: u16,
        out: &[u8],
        protocol: Protocol,
        tally: &Tally,
        plugin: Plugin,
    ) {
        let rcode = wire::rcode(out);
        self.metrics.count_request(qtype, rcode, protocol.label());
        tally.stats.answer(tally.labels, rcode, plugin, out.len());
    }

    /// The stored answer made into the client's answer, TC=1 if it does not fit.
    pub(crate) fn render(
        &self,
        out: &mut Vec<u8>,
        query: &[u8],
        info: &QueryInfo,
        answer: &CachedAnswer,
        ttls: TtlPatch,
        protocol: Protocol,
        tally: &Tally,
    ) {
        self.render_by(
            out,
            query,
            info,
            answer,
            ttls,
            protocol,
            tally,
            Plugin::Cache,
        )
    }

    /// [`Self::render`], counted as written by `plugin`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn render_by(
        &self,
        out: &mut Vec<u8>,
        query: &[u8],
        info: &QueryInfo,
        answer: &CachedAnswer,
        ttls: TtlPatch,
        protocol: Protocol,
        tally: &Tally,
        plugin: Plugin,
    ) {
        wire::render_answer(out, answer.wire(), answer.ttl_offsets(), query, info, ttls);
        let limit = match protocol {
            Protocol::Udp => info.udp_limit(),
            Protocol::Tcp => usize::from(u16::MAX),
        };
        if out.len() > limit {
            *out = wire::synthesize(
                query,
                Some(info),
                u16::from(wire::rcode(out)),
                wire::FLAG_TC,
            );
        }
        self.count_answer(info.qtype, out, protocol, tally, plugin);
    }

    pub(crate) fn render_stale(
        &self,
        out: &mut Vec<u8>,
        query: &[u8],
        info: &QueryInfo,
        answer: &CachedAnswer,
        protocol: Protocol,
        tally: &Tally,
    ) {
        self.metrics.stale_answers.inc();
        tally.stats.served_stale(tally.labels.zone);
        let ttl = self.settings().config.stale_answer_ttl;
        self.render(
            out,
            query,
            info,
            answer,
            TtlPatch::Fixed(ttl),
            protocol,
            tally,
        )
    }

    /// Stale if we have it, SERVFAIL otherwise.
    pub(crate) fn fail(
        &self,
        out: &mut Vec<u8>,
        query: &[u8],
        info: &QueryInfo,
        stale: Option<&CachedAnswer>,
        protocol: Protocol,
        tally: &Tally,
    ) {
        match stale {
            Some(answer) => self.render_stale(out, query, info, answer, protocol, tally),
            None => {
                *out = wire::synthesize(query, Some(info), u16::from(wire::RCODE_SERVFAIL), 0);
                self.count_answer(info.qtype, out, protocol, tally, Plugin::Forward);
            }
        }
    }

    /// [`Self::fail`] into a new buffer.
    pub(crate) fn fail_vec(
        &self,
        query: &[u8],
        info: &QueryInfo,
        stale: Option<&CachedAnswer>,
        protocol: Protocol,
        tally: &Tally,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        self.fail(&mut out, query, info, stale, protocol, tally);
        out
    }

    /// [`Self::render`] into a new buffer.
    pub(crate) fn render_vec(
        &self,
        query: &[u8],
        info: &QueryInfo,
        answer: &CachedAnswer,
        ttls: TtlPatch,
        protocol: Protocol,
        tally: &Tally,
        plugin: Plugin,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(answer.wire().len() + 11);
        self.render_by(&mut out, query, info, answer, ttls, protocol, tally, plugin);
        out
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

impl Scratch {
    fn labels(&self, zone: u8, proto: u8, qtype: u16) -> QueryLabels {
        QueryLabels {
            zone,
            proto,
            family: self.family,
            qtype: type_index(qtype),
        }
    }
}

/// What identifies the answer to a parsed query (`name`: its lowercased wire name).
pub(crate) fn cache_key(name: &[u8], info: &QueryInfo) -> CacheKey {
    CacheKey {
        name: name.into(),
        qtype: info.qtype,
        qclass: info.qclass,
        flags: if info.dnssec_ok() { KEY_DO } else { 0 }
            | if info.checking_disabled() { KEY_CD } else { 0 },
    }
}
