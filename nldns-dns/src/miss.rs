//! The miss path: a query the cache cannot answer waits here for one upstream
//! exchange per cache key. Identical misses coalesce onto the query already in flight
//! (a `watch` channel per key in the in-flight map); two bounds keep a flood from
//! growing without limit (`max_upstream_in_flight` exchanges, `max_waiting_queries`
//! clients), and past them a miss is answered at once (stale if the cache has it,
//! SERVFAIL otherwise). The outcome is stored in the cache before waiters see it.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use hickory_proto::serialize::binary::BinDecodable;
use tokio::sync::watch;

use crate::answer::{self, TtlPolicy};
use crate::cache::{AnswerKind, CacheKey, CachedAnswer, KeyRef, KEY_CD, KEY_DO};
use crate::config::DnsConfig;
use crate::inflight::{
    take_slot, Inflight, InflightEntry, Outcome, Shed, Slot, SourceBuckets, SourceCharge,
};
use crate::metrics::{CacheZoneLabels, Plugin, QueryLabels, StatsWriter};
use crate::reply::{Asked, Tally};
use crate::service::{DnsService, Protocol};
use crate::upstream::{ExchangeOptions, UpstreamError, UpstreamQuery};
use crate::wire::{QueryInfo, TtlPatch};

impl DnsService {
    /// A miss that will wait for upstream, holding one of the `max_waiting_queries`
    /// slots and one of its source's `max_waiting_queries_per_source`; `Err` gives
    /// the query's parts back, and says which bound was reached.
    pub(crate) fn start_miss(
        self: &Arc<Self>,
        query: &[u8],
        info: QueryInfo,
        key: CacheKey,
        stale: Option<Arc<CachedAnswer>>,
        counting: Counting,
        client: Option<IpAddr>,
    ) -> Result<PendingQuery, (QueryInfo, Option<Arc<CachedAnswer>>, Shed)> {
        let settings = self.settings();
        let config = &settings.config;
        let source = client.map(|ip| self.misses.hasher.buckets(ip));
        let charge = match source {
            Some(at) => {
                let table = &self.misses.source_waiters;
                if !table.take(at, config.max_waiting_queries_per_source) {
                    return Err((info, stale, Shed::SourceQuota));
                }
                Some(SourceCharge { table, at })
            }
            None => None,
        };
        let Some(slot) = take_slot(
            &self.misses.counts.waiting_queries,
            config.max_waiting_queries,
        ) else {
            return Err((info, stale, Shed::Overload));
        };
        // PendingQuery's Drop releases both.
        std::mem::forget(slot);
        std::mem::forget(charge);
        Ok(PendingQuery {
            svc: self.clone(),
            query: query.to_vec(),
            info,
            key,
            stale,
            counting,
            source,
        })
    }

    /// Counts a miss answered at once because of `shed`.
    pub(crate) fn count_shed(&self, shed: Shed) {
        match shed {
            Shed::Overload => {
                self.metrics.upstream_overload.inc();
                self.metrics.coredns.max_concurrent_rejects.inc();
            }
            Shed::SourceQuota => {
                self.metrics.source_quota_rejects.inc();
            }
            Shed::Rate => {
                self.metrics.upstream_rate_limited.inc();
            }
        }
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
        // Nobody waits for it: the refreshed answer simply replaces the entry. Charged
        // to no client; the node-wide bounds apply.
        if let Err(shed) = self.join_or_start(&key, None) {
            self.count_shed(shed);
        }
    }

    /// The shared outcome for `key`: an upstream query already in flight (joining
    /// costs nothing against any bound), or a new one if the source's quota, the
    /// in-flight cap and the node's upstream rate allow. `Err`: the bound reached.
    fn join_or_start(
        self: &Arc<Self>,
        key: &CacheKey,
        source: Option<SourceBuckets>,
    ) -> Result<Inflight, Shed> {
        let mut inflight = self
            .misses
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = inflight.get(key) {
            self.metrics.coalesced.inc();
            return Ok(rx.clone());
        }
        let settings = self.settings();
        let config = &settings.config;
        let table = &self.misses.source_exchanges;
        let charge = match source {
            Some(at) if !table.take(at, config.max_upstream_in_flight_per_source) => {
                return Err(Shed::SourceQuota);
            }
            Some(at) => Some(SourceCharge { table, at }),
            None => None,
        };
        let limit = config.max_upstream_in_flight;
        let Some(slot) = take_slot(&self.misses.counts.upstream_in_flight, limit) else {
            return Err(Shed::Overload);
        };
        let now = Instant::now();
        // The client's own rate before the node's: a client over its rate must not
        // use up the node's tokens, which everyone shares.
        if let Some(at) = source {
            let limit = config.max_upstream_qps_per_source;
            if !self.misses.source_rate.take(at, limit, now) {
                return Err(Shed::SourceQuota);
            }
        }
        if !self.misses.rate.take(config.max_upstream_qps, now) {
            return Err(Shed::Rate);
        }
        // The task owns the slot and the charge; forget the borrows and release
        // them there.
        std::mem::forget(slot);
        std::mem::forget(charge);
        let (tx, rx) = watch::channel(None);
        inflight.insert(key.clone(), rx.clone());
        drop(inflight);
        let svc = self.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let _slot = Slot(&svc.misses.counts.upstream_in_flight);
            let _charge = source.map(|at| SourceCharge {
                table: &svc.misses.source_exchanges,
                at,
            });
            // Removes the map entry even if resolution panicked, so the key is not
            // stuck behind a dead query (its waiters then see a closed channel).
            let _entry = InflightEntry {
                map: &svc.misses.inflight,
                key: &key,
            };
            let outcome = svc.resolve_upstream(&key).await;
            let _ = tx.send(Some(outcome));
        });
        Ok(rx)
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
    pub(crate) fn store_outcome(
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

/// The question sent upstream for a cache key (lowercased name).
pub(crate) fn upstream_question(key: &CacheKey) -> Option<UpstreamQuery> {
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
    counting: Counting,
    /// The client's buckets, charged one waiter (released on drop).
    source: Option<SourceBuckets>,
}

/// How a pending query's answer travels and is counted: the server's shared shard (the
/// answer is rendered on a runtime task, not on the serving thread that took it), its
/// labels, its transport, and the receive time (for the request duration).
pub(crate) struct Counting {
    pub stats: StatsWriter,
    pub labels: QueryLabels,
    pub protocol: Protocol,
    pub received: Instant,
}

impl Drop for PendingQuery {
    fn drop(&mut self) {
        self.svc
            .misses
            .counts
            .waiting_queries
            .fetch_sub(1, Ordering::AcqRel);
        if let Some(at) = self.source {
            self.svc.misses.source_waiters.release(at);
        }
    }
}

impl PendingQuery {
    /// Waits for the (possibly shared) upstream outcome and renders the answer; the
    /// caller sends it at once (its receive-to-send time is counted here).
    pub async fn resolve(self) -> Vec<u8> {
        let answer = self.outcome().await;
        let counting = &self.counting;
        counting
            .stats
            .duration(counting.labels, counting.received.elapsed());
        answer
    }

    async fn outcome(&self) -> Vec<u8> {
        let svc = &self.svc;
        let settings = svc.settings();
        let tally = Tally {
            stats: &self.counting.stats,
            labels: self.counting.labels,
            protocol: self.counting.protocol,
        };
        let asked = Asked {
            query: &self.query,
            info: &self.info,
        };
        let mut rx = match svc.join_or_start(&self.key, self.source) {
            Ok(rx) => rx,
            Err(shed) => {
                svc.count_shed(shed);
                return svc.fail_vec(asked, self.stale.as_deref(), &tally);
            }
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
                svc.render_vec(asked, &answer, ttls, &tally, Plugin::Forward)
            }
            Outcome::Failed => {
                let stale = self
                    .stale
                    .clone()
                    .or_else(|| svc.lock_cache().peek_servable(&self.key, Instant::now()));
                svc.fail_vec(asked, stale.as_deref(), &tally)
            }
        }
    }
}

/// What identifies the answer to a parsed query (`name`: its lowercased wire name).
pub(crate) fn cache_key<'a>(name: &'a [u8], info: &QueryInfo) -> KeyRef<'a> {
    KeyRef::of_query(name, info)
}
