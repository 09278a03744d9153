//! The one entry point for a client's query, [`DnsService::handle`]: parse, heartbeat,
//! cache hit, or the start of a miss (`miss.rs`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::cache::{AnswerKind, CachedAnswer, Lookup};
use crate::metrics::shard::{type_index, ZONE_DROPPED};
use crate::metrics::{Plugin, QueryLabels};
use crate::miss::{cache_key, Counting, PendingQuery};
use crate::reply::{Asked, Tally};
use crate::service::{DnsService, Protocol, Scratch};
use crate::wire::{self, QueryError, TtlPatch};

/// The heartbeat name in wire form: answered locally, never cached or counted.
const HEARTBEAT_WIRE: &[u8] = b"\x0fnldns-heartbeat\x07invalid\x00";

/// What [`DnsService::handle`] did with a query; a reply is in the caller's buffer.
pub enum Handling {
    /// The answer was written to `out`: send it.
    Reply,
    /// Unreadable or not a query: say nothing.
    Drop,
    /// Needs upstream: await [`PendingQuery::resolve`] (in a task) for the answer.
    Resolve(PendingQuery),
}

impl DnsService {
    /// Handles `query` and, on a miss, waits for the upstream outcome: [`Self::handle`]
    /// for callers that keep no buffers (tests, tools). `None`: send nothing.
    pub async fn answer(self: &Arc<Self>, query: &[u8], protocol: Protocol) -> Option<Vec<u8>> {
        self.answer_from(query, protocol, None).await
    }

    /// [`Self::answer`] for a query from `client` (charged to its per-source quotas).
    pub async fn answer_from(
        self: &Arc<Self>,
        query: &[u8],
        protocol: Protocol,
        client: Option<IpAddr>,
    ) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let now = Instant::now();
        let mut scratch = self.shared_scratch("dns://:53", false);
        scratch.set_client(client);
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
                let labels = scratch.count_query(ZONE_DROPPED, protocol, 0, query.len(), false);
                self.count_answer(0, out, &scratch.tally(labels, protocol), Plugin::Server);
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
            let do_bit = info.dnssec_ok();
            let labels = scratch.count_query(zone, protocol, info.qtype, query.len(), do_bit);
            let tally = scratch.tally(labels, protocol);
            self.count_answer(info.qtype, out, &tally, Plugin::Server);
            scratch.answered.push(labels);
            return Handling::Reply;
        }
        let do_bit = info.dnssec_ok();
        let asked = Asked { query, info: &info };
        let key = cache_key(name, &info);
        let lookup = self.lock_cache().lookup_ref(key, now);
        let stale = match lookup {
            Lookup::Fresh {
                answer,
                prefetch,
                zone,
            } => {
                self.metrics.cache_hits.inc();
                let labels = scratch.count_query(zone, protocol, info.qtype, query.len(), do_bit);
                scratch.count_hit(zone, &answer);
                if prefetch {
                    self.prefetch(key.to_owned_key(), zone);
                }
                let ttls = TtlPatch::CountDown(answer.elapsed_secs(now));
                let tally = scratch.tally(labels, protocol);
                self.render(out, asked, &answer, ttls, &tally, Plugin::Cache);
                scratch.answered.push(labels);
                return Handling::Reply;
            }
            Lookup::Stale {
                answer,
                ask_upstream: false,
                zone,
            } => {
                let labels = scratch.count_query(zone, protocol, info.qtype, query.len(), do_bit);
                scratch.count_hit(zone, &answer);
                self.render_stale(out, asked, &answer, &scratch.tally(labels, protocol));
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
        let labels = scratch.count_query(zone, protocol, info.qtype, query.len(), do_bit);
        scratch.stats.cache_lookup(zone, None);
        let counting = Counting {
            stats: scratch.shared.fork(),
            labels,
            protocol,
            received: now,
        };
        let client = scratch.client;
        match self.start_miss(query, info, key.to_owned_key(), stale, counting, client) {
            Ok(pending) => Handling::Resolve(pending),
            Err((info, stale, shed)) => {
                self.count_shed(shed);
                let asked = Asked { query, info: &info };
                self.fail(
                    out,
                    asked,
                    stale.as_deref(),
                    &scratch.tally(labels, protocol),
                );
                scratch.answered.push(labels);
                Handling::Reply
            }
        }
    }
}

impl Scratch {
    /// The labels of a query for `zone`, and its request, size and DO counters.
    fn count_query(
        &self,
        zone: u8,
        protocol: Protocol,
        qtype: u16,
        size: usize,
        dnssec_ok: bool,
    ) -> QueryLabels {
        let labels = QueryLabels {
            zone,
            proto: protocol as u8,
            family: self.family,
            qtype: type_index(qtype),
        };
        self.stats.query(labels, size, dnssec_ok);
        labels
    }

    /// A cache hit (fresh or stale) of `answer` in `zone`: success or denial.
    fn count_hit(&self, zone: u8, answer: &CachedAnswer) {
        let denial = answer.kind() != AnswerKind::Positive;
        self.stats.cache_lookup(zone, Some(denial));
    }

    /// Where an answer to this loop's query is counted.
    fn tally(&self, labels: QueryLabels, protocol: Protocol) -> Tally<'_> {
        Tally {
            stats: &self.stats,
            labels,
            protocol,
        }
    }
}
