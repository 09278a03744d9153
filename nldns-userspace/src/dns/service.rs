//! The caching forwarder: answers from the cache when it can (synchronously, no
//! task spawned), otherwise joins or starts one upstream query per cache key,
//! stores the result, and falls back to stale answers when upstreams fail.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use hickory_proto::serialize::binary::BinDecodable;
use tokio::sync::watch;

use super::answer::{self, TtlPolicy};
use super::cache::{AnswerKind, Cache, CacheKey, CachedAnswer, Lookup, KEY_CD, KEY_DO};
use super::config::DnsConfig;
use super::router::Router;
use super::upstream::{self, ExchangeOptions, Exchanger, UpstreamError, UpstreamQuery};
use super::wire::{self, QueryError, QueryInfo, TtlPatch};
use crate::metrics::Metrics;

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
    fn label(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        }
    }
}

/// What to do with a query after the synchronous part.
pub enum Handled {
    /// Send this answer.
    Reply(Vec<u8>),
    /// Unreadable or not a query: say nothing.
    Drop,
    /// Needs upstream: await [`PendingQuery::resolve`] (in a task) for the answer.
    Resolve(PendingQuery),
}

/// What [`DnsService::handle_into`] did with a query; a reply is in the caller's buffer.
pub enum Handling {
    /// The answer was written to `out`: send it.
    Reply,
    /// Unreadable or not a query: say nothing.
    Drop,
    /// Needs upstream: await [`PendingQuery::resolve`] (in a task) for the answer.
    Resolve(PendingQuery),
}

/// Buffers a serving loop keeps across queries so a hit allocates nothing for them.
#[derive(Default)]
pub struct Scratch {
    /// The lowercased question name of the query being handled.
    name: Vec<u8>,
}

/// The outcome of one upstream resolution, shared with every coalesced waiter.
#[derive(Clone)]
enum Outcome {
    Answer(Arc<CachedAnswer>),
    /// No usable answer; waiters serve stale if the cache still has it.
    Failed,
}

type Inflight = watch::Receiver<Option<Outcome>>;

/// Routing and limits of the current configuration, swapped whole on reload.
struct Settings {
    config: DnsConfig,
    router: Router,
}

/// The node-local caching forwarder.
pub struct DnsService {
    settings: RwLock<Arc<Settings>>,
    cache: Mutex<Cache>,
    inflight: Mutex<HashMap<CacheKey, Inflight>>,
    upstream_in_flight: AtomicUsize,
    waiting_queries: AtomicUsize,
    exchanger: Exchanger,
    metrics: Arc<Metrics>,
}

/// Decrements a counter when dropped (in-flight and waiting bounds).
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn take_slot(counter: &AtomicUsize, limit: usize) -> Option<Slot<'_>> {
    if counter.fetch_add(1, Ordering::AcqRel) >= limit {
        counter.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    Some(Slot(counter))
}

impl DnsService {
    pub fn new(config: DnsConfig, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Self>> {
        let router = config.router()?;
        Ok(Arc::new(DnsService {
            cache: Mutex::new(Cache::new(config.cache_policy())),
            settings: RwLock::new(Arc::new(Settings { config, router })),
            inflight: Mutex::new(HashMap::new()),
            upstream_in_flight: AtomicUsize::new(0),
            waiting_queries: AtomicUsize::new(0),
            exchanger: Exchanger::new(metrics.clone()),
            metrics,
        }))
    }

    /// Applies new routing and limits; cached answers are kept (an invalid config is
    /// logged and ignored, keeping the old one).
    pub fn reload(&self, config: DnsConfig) {
        let router = match config.router() {
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

    fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn lock_cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update_cache_gauges(&self) {
        let (stats, evicted) = {
            let mut cache = self.lock_cache();
            (cache.stats(), cache.take_new_evictions())
        };
        let gauge = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.metrics.cache_entries.set(gauge(stats.entries));
        self.metrics.cache_bytes.set(gauge(stats.bytes));
        if evicted > 0 {
            self.metrics.cache_evictions.inc_by(evicted);
        }
    }

    /// Answers `query` and waits for upstream if needed. `None`: send nothing.
    pub async fn handle(self: &Arc<Self>, query: &[u8], protocol: Protocol) -> Option<Vec<u8>> {
        match self.handle_now(query, protocol) {
            Handled::Reply(r) => Some(r),
            Handled::Drop => None,
            Handled::Resolve(p) => Some(p.resolve().await),
        }
    }

    /// The synchronous part: parse, heartbeat, cache hit. Never blocks on I/O.
    pub fn handle_now(self: &Arc<Self>, query: &[u8], protocol: Protocol) -> Handled {
        let mut out = Vec::new();
        let handling = self.handle_into(
            query,
            protocol,
            Instant::now(),
            &mut Scratch::default(),
            &mut out,
        );
        match handling {
            Handling::Reply => Handled::Reply(out),
            Handling::Drop => Handled::Drop,
            Handling::Resolve(pending) => Handled::Resolve(pending),
        }
    }

    /// [`Self::handle_now`] for serving loops that keep their buffers: the answer goes
    /// to `out` (cleared first), and `now` is the loop's clock (one read per batch of
    /// datagrams is precise enough for whole-second TTLs).
    pub fn handle_into(
        self: &Arc<Self>,
        query: &[u8],
        protocol: Protocol,
        now: Instant,
        scratch: &mut Scratch,
        out: &mut Vec<u8>,
    ) -> Handling {
        out.clear();
        let name = &mut scratch.name;
        let info = match wire::parse_query(query, name) {
            Ok(info) => info,
            Err(QueryError::Drop) => return Handling::Drop,
            Err(e) => {
                let rcode = match e {
                    QueryError::NotImp => u16::from(wire::RCODE_NOTIMP),
                    QueryError::BadVers => wire::RCODE_BADVERS,
                    _ => u16::from(wire::RCODE_FORMERR),
                };
                *out = wire::synthesize(query, None, rcode, 0);
                self.metrics
                    .count_request(0, wire::rcode(out), protocol.label());
                return Handling::Reply;
            }
        };
        if name.as_slice() == HEARTBEAT_WIRE {
            // Liveness probe: answered locally, not cached, not counted.
            *out = wire::synthesize(query, Some(&info), u16::from(wire::RCODE_NXDOMAIN), 0);
            return Handling::Reply;
        }
        if matches!(info.qtype, 251 | 252) {
            // IXFR/AXFR make no sense through a cache.
            *out = wire::synthesize(query, Some(&info), u16::from(wire::RCODE_NOTIMP), 0);
            self.metrics
                .count_request(info.qtype, wire::RCODE_NOTIMP, protocol.label());
            return Handling::Reply;
        }
        let key = cache_key(name, &info);
        let lookup = self.lock_cache().lookup(&key, now);
        let stale = match lookup {
            Lookup::Fresh { answer, prefetch } => {
                self.metrics.cache_hits.inc();
                if prefetch {
                    self.prefetch(key);
                }
                let ttls = TtlPatch::CountDown(answer.elapsed_secs(now));
                self.render(out, query, &info, &answer, ttls, protocol);
                return Handling::Reply;
            }
            Lookup::Stale {
                answer,
                ask_upstream: false,
            } => {
                self.render_stale(out, query, &info, &answer, protocol);
                return Handling::Reply;
            }
            Lookup::Stale {
                answer,
                ask_upstream: true,
            } => Some(answer),
            Lookup::Miss => {
                self.update_cache_gauges(); // the lookup may have dropped a dead entry
                None
            }
        };
        self.metrics.cache_misses.inc();
        let max_waiting = self.settings().config.max_waiting_queries;
        if take_slot(&self.waiting_queries, max_waiting)
            .map(std::mem::forget)
            .is_none()
        {
            self.metrics.upstream_overload.inc();
            self.fail(out, query, &info, stale.as_deref(), protocol);
            return Handling::Reply;
        }
        Handling::Resolve(PendingQuery {
            svc: self.clone(),
            query: query.to_vec(),
            info,
            key,
            stale,
            protocol,
        })
    }

    /// The stored answer made into the client's answer, TC=1 if it does not fit.
    fn render(
        &self,
        out: &mut Vec<u8>,
        query: &[u8],
        info: &QueryInfo,
        answer: &CachedAnswer,
        ttls: TtlPatch,
        protocol: Protocol,
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
        self.metrics
            .count_request(info.qtype, wire::rcode(out), protocol.label());
    }

    fn render_stale(
        &self,
        out: &mut Vec<u8>,
        query: &[u8],
        info: &QueryInfo,
        answer: &CachedAnswer,
        protocol: Protocol,
    ) {
        self.metrics.stale_answers.inc();
        let ttl = self.settings().config.stale_answer_ttl;
        self.render(out, query, info, answer, TtlPatch::Fixed(ttl), protocol)
    }

    /// Stale if we have it, SERVFAIL otherwise.
    fn fail(
        &self,
        out: &mut Vec<u8>,
        query: &[u8],
        info: &QueryInfo,
        stale: Option<&CachedAnswer>,
        protocol: Protocol,
    ) {
        match stale {
            Some(answer) => self.render_stale(out, query, info, answer, protocol),
            None => {
                *out = wire::synthesize(query, Some(info), u16::from(wire::RCODE_SERVFAIL), 0);
                self.metrics
                    .count_request(info.qtype, wire::RCODE_SERVFAIL, protocol.label());
            }
        }
    }

    /// [`Self::fail`] into a new buffer.
    fn fail_vec(
        &self,
        query: &[u8],
        info: &QueryInfo,
        stale: Option<&CachedAnswer>,
        protocol: Protocol,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        self.fail(&mut out, query, info, stale, protocol);
        out
    }

    /// [`Self::render`] into a new buffer.
    fn render_vec(
        &self,
        query: &[u8],
        info: &QueryInfo,
        answer: &CachedAnswer,
        ttls: TtlPatch,
        protocol: Protocol,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(answer.wire().len() + 11);
        self.render(&mut out, query, info, answer, ttls, protocol);
        out
    }

    fn prefetch(self: &Arc<Self>, key: CacheKey) {
        self.metrics.prefetches.inc();
        // Nobody waits for it: the refreshed answer simply replaces the entry.
        let _ = self.join_or_start(&key);
    }

    /// The shared outcome for `key`: an upstream query already in flight, or a new
    /// one if the in-flight cap allows. `None`: overloaded.
    fn join_or_start(self: &Arc<Self>, key: &CacheKey) -> Option<Inflight> {
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = inflight.get(key) {
            self.metrics.coalesced.inc();
            return Some(rx.clone());
        }
        let limit = self.settings().config.max_upstream_in_flight;
        let Some(slot) = take_slot(&self.upstream_in_flight, limit) else {
            self.metrics.upstream_overload.inc();
            return None;
        };
        // The task owns the slot; forget the borrow and release it there.
        std::mem::forget(slot);
        let (tx, rx) = watch::channel(None);
        inflight.insert(key.clone(), rx.clone());
        drop(inflight);
        let svc = self.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let _slot = Slot(&svc.upstream_in_flight);
            // Removes the map entry even if resolution panicked, so the key is not
            // stuck behind a dead query (its waiters then see a closed channel).
            let _entry = InflightEntry {
                map: &svc.inflight,
                key: &key,
            };
            let outcome = svc.resolve_upstream(&key).await;
            let _ = tx.send(Some(outcome));
        });
        Some(rx)
    }

    /// Asks upstream for `key`, stores what comes back, and says what waiters get.
    async fn resolve_upstream(&self, key: &CacheKey) -> Outcome {
        let settings = self.settings();
        let config = &settings.config;
        let route = settings.router.route(&key.name);
        let Some(question) = upstream_question(key) else {
            return Outcome::Failed;
        };
        let opts = ExchangeOptions {
            timeout: config.upstream_timeout,
            attempts: config.upstream_attempts,
            failure_backoff: config.upstream_failure_backoff,
            force_tcp: route.force_tcp || settings.router.force_tcp(&key.name),
        };
        let policy = TtlPolicy::new(
            config.min_ttl,
            route.max_ttl,
            config.negative_max_ttl,
            config.servfail_ttl,
        );
        let result = self
            .exchanger
            .exchange(&route.upstreams, &question, &opts)
            .await;
        self.store_outcome(key, &question, result, &policy)
    }

    /// What the miss path does with an upstream's reply (or failure): classify it,
    /// store it, note failures for serve-stale, and say what waiters get.
    fn store_outcome(
        &self,
        key: &CacheKey,
        question: &UpstreamQuery,
        result: Result<Message, UpstreamError>,
        policy: &TtlPolicy,
    ) -> Outcome {
        let now = Instant::now();
        let prepared = match result {
            Ok(reply) => answer::prepare(reply, policy, now)
                .map_err(|e| log::warn!("upstream answer for {}: {e}", question.name)),
            Err(e) => {
                log::debug!("resolving {} {}: {e}", question.name, question.qtype);
                Err(())
            }
        };
        let outcome = match prepared {
            Ok(p) if p.answer.kind() != AnswerKind::ServFail => {
                if p.cacheable {
                    self.lock_cache().insert(key.clone(), p.answer.clone());
                }
                Outcome::Answer(p.answer)
            }
            // SERVFAIL / REFUSED / nothing at all: a failure for serve-stale purposes.
            failed => {
                if self.lock_cache().note_upstream_failure(key, now).is_some() {
                    Outcome::Failed
                } else {
                    let servfail = match failed {
                        Ok(p) if p.cacheable => Some(p.answer),
                        Ok(p) => return Outcome::Answer(p.answer), // e.g. REFUSED, passed on
                        Err(()) => {
                            let mut q = Query::query(question.name.clone(), question.qtype);
                            q.set_query_class(question.qclass);
                            answer::servfail(q, policy.servfail_ttl, now).ok()
                        }
                    };
                    match servfail {
                        Some(answer) => {
                            if answer.ttl() > 0 {
                                self.lock_cache().insert(key.clone(), answer.clone());
                            }
                            Outcome::Answer(answer)
                        }
                        None => Outcome::Failed,
                    }
                }
            }
        };
        self.update_cache_gauges();
        outcome
    }

    /// Fuzzing hook, not an API: the miss path's handling of an upstream reply, with no
    /// network. `query` is a client's query and `reply` what an upstream sent back for
    /// it (its own ID is taken as ours). Decodes and matches the reply as the exchange
    /// does, stores it as `resolve_upstream` does, renders the client's answer as a
    /// waiter would, then answers the same query again through [`Self::handle_now`] (a
    /// cache hit when the reply was cached). Returns those answers; empty when the query
    /// is unreadable or the reply would have been ignored.
    #[doc(hidden)]
    pub fn fuzz_upstream_reply(self: &Arc<Self>, query: &[u8], reply: &[u8]) -> Vec<Vec<u8>> {
        let mut name = Vec::with_capacity(64);
        let Ok(info) = wire::parse_query(query, &mut name) else {
            return Vec::new();
        };
        let key = cache_key(&name, &info);
        let Some(question) = upstream_question(&key) else {
            return Vec::new();
        };
        let id = reply
            .first_chunk::<2>()
            .map_or(0, |id| u16::from_be_bytes(*id));
        let Some(decoded) = upstream::decode_reply(reply, id, &question) else {
            return Vec::new();
        };
        let settings = self.settings();
        let config = &settings.config;
        let route = settings.router.route(&key.name);
        let policy = TtlPolicy::new(
            config.min_ttl,
            route.max_ttl,
            config.negative_max_ttl,
            config.servfail_ttl,
        );
        let waiter = match self.store_outcome(&key, &question, Ok(decoded), &policy) {
            Outcome::Answer(answer) => {
                let ttls = TtlPatch::CountDown(answer.elapsed_secs(Instant::now()));
                self.render_vec(query, &info, &answer, ttls, Protocol::Udp)
            }
            Outcome::Failed => {
                let stale = self.lock_cache().peek_servable(&key, Instant::now());
                self.fail_vec(query, &info, stale.as_deref(), Protocol::Udp)
            }
        };
        let mut answers = vec![waiter];
        if let Handled::Reply(hit) = self.handle_now(query, Protocol::Udp) {
            answers.push(hit);
        }
        answers
    }

    /// How long a waiter may wait for an upstream outcome at most: the exchange is
    /// bounded by its own timeouts; this is only a safety net.
    fn wait_bound(config: &DnsConfig) -> Duration {
        let attempts = u32::try_from(config.upstream_attempts.max(1)).unwrap_or(u32::MAX);
        // Each attempt may be UDP then TCP (truncation), twice (EDNS fallback).
        config
            .upstream_timeout
            .saturating_mul(attempts.saturating_mul(4))
            + Duration::from_secs(1)
    }
}

/// Removes a key from the in-flight map when dropped, after the outcome was sent:
/// a query joining in between finds the outcome already in the channel.
struct InflightEntry<'a> {
    map: &'a Mutex<HashMap<CacheKey, Inflight>>,
    key: &'a CacheKey,
}

impl Drop for InflightEntry<'_> {
    fn drop(&mut self) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(self.key);
    }
}

/// What identifies the answer to a parsed query (`name`: its lowercased wire name).
fn cache_key(name: &[u8], info: &QueryInfo) -> CacheKey {
    CacheKey {
        name: name.into(),
        qtype: info.qtype,
        qclass: info.qclass,
        flags: if info.dnssec_ok() { KEY_DO } else { 0 }
            | if info.checking_disabled() { KEY_CD } else { 0 },
    }
}

/// The question sent upstream for a cache key (lowercased name).
fn upstream_question(key: &CacheKey) -> Option<UpstreamQuery> {
    let name = Name::from_bytes(&key.name).ok()?;
    Some(UpstreamQuery {
        name,
        qtype: RecordType::from(key.qtype),
        qclass: DNSClass::from(key.qclass),
        dnssec_ok: key.flags & KEY_DO != 0,
        checking_disabled: key.flags & KEY_CD != 0,
    })
}

/// A query that needs upstream; owns one of the `max_waiting_queries` slots.
pub struct PendingQuery {
    svc: Arc<DnsService>,
    query: Vec<u8>,
    info: QueryInfo,
    key: CacheKey,
    stale: Option<Arc<CachedAnswer>>,
    protocol: Protocol,
}

impl Drop for PendingQuery {
    fn drop(&mut self) {
        self.svc.waiting_queries.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PendingQuery {
    /// Waits for the (possibly shared) upstream outcome and renders the answer.
    pub async fn resolve(self) -> Vec<u8> {
        let svc = &self.svc;
        let settings = svc.settings();
        let Some(mut rx) = svc.join_or_start(&self.key) else {
            return svc.fail_vec(
                &self.query,
                &self.info,
                self.stale.as_deref(),
                self.protocol,
            );
        };
        // With a stale answer at hand, the client waits only `stale_client_timeout`
        // (the upstream query goes on and refreshes the cache).
        let bound = match self.stale {
            Some(_) => settings.config.stale_client_timeout,
            None => DnsService::wait_bound(&settings.config),
        };
        let outcome = match tokio::time::timeout(bound, rx.wait_for(Option::is_some)).await {
            Ok(Ok(outcome)) => outcome.clone().unwrap_or(Outcome::Failed),
            _ => Outcome::Failed,
        };
        match outcome {
            Outcome::Answer(answer) => {
                let ttls = TtlPatch::CountDown(answer.elapsed_secs(Instant::now()));
                svc.render_vec(&self.query, &self.info, &answer, ttls, self.protocol)
            }
            Outcome::Failed => {
                let stale = self
                    .stale
                    .clone()
                    .or_else(|| svc.lock_cache().peek_servable(&self.key, Instant::now()));
                svc.fail_vec(&self.query, &self.info, stale.as_deref(), self.protocol)
            }
        }
    }
}
