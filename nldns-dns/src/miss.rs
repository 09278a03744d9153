//! The miss path: a query the cache cannot answer waits here for one upstream
//! exchange per cache key. Identical misses coalesce onto the query already in flight
//! (a `watch` channel per key in the in-flight map); two bounds keep a flood from
//! growing without limit (`max_upstream_in_flight` exchanges, `max_waiting_queries`
//! clients), and past them a miss is answered at once (stale if the cache has it,
//! SERVFAIL otherwise). The outcome is stored in the cache before waiters see it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use hickory_proto::serialize::binary::BinDecodable;
use tokio::sync::watch;

use crate::answer::{self, TtlPolicy};
use crate::cache::{AnswerKind, CacheKey, CachedAnswer, KEY_CD, KEY_DO};
use crate::config::DnsConfig;
use crate::metrics::{CacheZoneLabels, Plugin, QueryLabels, StatsWriter};
#[cfg(feature = "fuzzing")]
use crate::service::{cache_key, Handling};
use crate::service::{DnsService, Protocol, Tally};
#[cfg(feature = "fuzzing")]
use crate::upstream;
use crate::upstream::{ExchangeOptions, UpstreamError, UpstreamQuery};
#[cfg(feature = "fuzzing")]
use crate::wire;
use crate::wire::{QueryInfo, TtlPatch};

/// The miss path's state, owned by the service.
#[derive(Default)]
pub(crate) struct Misses {
    inflight: Mutex<HashMap<CacheKey, Inflight>>,
    upstream_in_flight: AtomicUsize,
    waiting_queries: AtomicUsize,
}

/// The outcome of one upstream resolution, shared with every coalesced waiter.
#[derive(Clone)]
enum Outcome {
    Answer(Arc<CachedAnswer>),
    /// No usable answer; waiters serve stale if the cache still has it.
    Failed,
}

type Inflight = watch::Receiver<Option<Outcome>>;

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
    /// A miss that will wait for upstream, holding one of the `max_waiting_queries`
    /// slots; `Err` gives the query's parts back when that bound is reached.
    pub(crate) fn start_miss(
        self: &Arc<Self>,
        query: &[u8],
        info: QueryInfo,
        key: CacheKey,
        stale: Option<Arc<CachedAnswer>>,
        protocol: Protocol,
        stats: StatsWriter,
        labels: QueryLabels,
        received: Instant,
    ) -> Result<PendingQuery, (QueryInfo, Option<Arc<CachedAnswer>>)> {
        let max_waiting = self.settings().config.max_waiting_queries;
        let Some(slot) = take_slot(&self.misses.waiting_queries, max_waiting) else {
            return Err((info, stale));
        };
        // PendingQuery's Drop releases it.
        std::mem::forget(slot);
        Ok(PendingQuery {
            svc: self.clone(),
            query: query.to_vec(),
            info,
            key,
            stale,
            protocol,
            stats,
            labels,
            received,
        })
    }

    pub(crate) fn prefetch(self: &Arc<Self>, key: CacheKey, zone: u8) {
        self.metrics.prefetches.inc();
        self.metrics
            .coredns
            .cache_prefetch
            .get_or_create(&CacheZoneLabels {
                server: String::new(),
                zones: self.metrics.zones.name(usize::from(zone)),
            })
            .inc();
        // Nobody waits for it: the refreshed answer simply replaces the entry.
        let _ = self.join_or_start(&key);
    }

    /// The shared outcome for `key`: an upstream query already in flight, or a new
    /// one if the in-flight cap allows. `None`: overloaded.
    fn join_or_start(self: &Arc<Self>, key: &CacheKey) -> Option<Inflight> {
        let mut inflight = self
            .misses
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = inflight.get(key) {
            self.metrics.coalesced.inc();
            return Some(rx.clone());
        }
        let limit = self.settings().config.max_upstream_in_flight;
        let Some(slot) = take_slot(&self.misses.upstream_in_flight, limit) else {
            self.metrics.upstream_overload.inc();
            self.metrics.coredns.max_concurrent_rejects.inc();
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
            let _slot = Slot(&svc.misses.upstream_in_flight);
            // Removes the map entry even if resolution panicked, so the key is not
            // stuck behind a dead query (its waiters then see a closed channel).
            let _entry = InflightEntry {
                map: &svc.misses.inflight,
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
        self.store_outcome(key, &question, result, &policy, route.label)
    }

    /// What the miss path does with an upstream's reply (or failure): classify it,
    /// store it, note failures for serve-stale, and say what waiters get.
    fn store_outcome(
        &self,
        key: &CacheKey,
        question: &UpstreamQuery,
        result: Result<Message, UpstreamError>,
        policy: &TtlPolicy,
        zone: u8,
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
                    self.lock_cache()
                        .insert(key.clone(), p.answer.clone(), zone);
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
                                self.lock_cache().insert(key.clone(), answer.clone(), zone);
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

    /// For the fuzz targets only (feature `fuzzing`): the miss path's handling of an upstream reply, with no
    /// network. `query` is a client's query and `reply` what an upstream sent back for
    /// it (its own ID is taken as ours). Decodes and matches the reply as the exchange
    /// does, stores it as `resolve_upstream` does, renders the client's answer as a
    /// waiter would, then answers the same query again through [`Self::handle`] (a
    /// cache hit when the reply was cached). Returns those answers; empty when the query
    /// is unreadable or the reply would have been ignored.
    #[cfg(feature = "fuzzing")]
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
        let mut scratch = self.shared_scratch("fuzz", false);
        let stats = self.metrics.shared_stats("fuzz");
        let tally = Tally {
            stats: &stats,
            labels: QueryLabels::default(),
        };
        let outcome = self.store_outcome(&key, &question, Ok(decoded), &policy, route.label);
        let waiter = match outcome {
            Outcome::Answer(answer) => {
                let ttls = TtlPatch::CountDown(answer.elapsed_secs(Instant::now()));
                self.render_vec(
                    query,
                    &info,
                    &answer,
                    ttls,
                    Protocol::Udp,
                    &tally,
                    Plugin::Forward,
                )
            }
            Outcome::Failed => {
                let stale = self.lock_cache().peek_servable(&key, Instant::now());
                self.fail_vec(query, &info, stale.as_deref(), Protocol::Udp, &tally)
            }
        };
        let mut answers = vec![waiter];
        let mut hit = Vec::new();
        if let Handling::Reply =
            self.handle(query, Protocol::Udp, Instant::now(), &mut scratch, &mut hit)
        {
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
    /// Where its answer is counted (the server's shared shard), by what labels, and
    /// since when (the receive time, for the request duration).
    stats: StatsWriter,
    labels: QueryLabels,
    received: Instant,
}

impl Drop for PendingQuery {
    fn drop(&mut self) {
        self.svc
            .misses
            .waiting_queries
            .fetch_sub(1, Ordering::AcqRel);
    }
}

impl PendingQuery {
    /// Waits for the (possibly shared) upstream outcome and renders the answer; the
    /// caller sends it at once (its receive-to-send time is counted here).
    pub async fn resolve(self) -> Vec<u8> {
        let answer = self.outcome().await;
        self.stats.duration(self.labels, self.received.elapsed());
        answer
    }

    async fn outcome(&self) -> Vec<u8> {
        let svc = &self.svc;
        let settings = svc.settings();
        let tally = Tally {
            stats: &self.stats,
            labels: self.labels,
        };
        let Some(mut rx) = svc.join_or_start(&self.key) else {
            return svc.fail_vec(
                &self.query,
                &self.info,
                self.stale.as_deref(),
                self.protocol,
                &tally,
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
                svc.render_vec(
                    &self.query,
                    &self.info,
                    &answer,
                    ttls,
                    self.protocol,
                    &tally,
                    Plugin::Forward,
                )
            }
            Outcome::Failed => {
                let stale = self
                    .stale
                    .clone()
                    .or_else(|| svc.lock_cache().peek_servable(&self.key, Instant::now()));
                svc.fail_vec(
                    &self.query,
                    &self.info,
                    stale.as_deref(),
                    self.protocol,
                    &tally,
                )
            }
        }
    }
}
