//! For the fuzz targets only (feature `fuzzing`): the miss path's handling of an
//! upstream reply, without a network. Not API.

use std::sync::Arc;
use std::time::Instant;

use crate::answer::TtlPolicy;
use crate::handle::Handling;
use crate::inflight::Outcome;
use crate::metrics::{Plugin, QueryLabels};
use crate::miss::{cache_key, upstream_question};
use crate::reply::{Asked, Tally};
use crate::service::{DnsService, Protocol};
use crate::upstream;
use crate::wire::{self, TtlPatch};

impl DnsService {
    /// The miss path's handling of an upstream reply, with no
    /// network. `query` is a client's query and `reply` what an upstream sent back for
    /// it (its own ID is taken as ours). Decodes and matches the reply as the exchange
    /// does, stores it as `resolve_upstream` does, renders the client's answer as a
    /// waiter would, then answers the same query again through [`Self::handle`] (a
    /// cache hit when the reply was cached). Returns those answers; empty when the query
    /// is unreadable or the reply would have been ignored.
    pub fn fuzz_upstream_reply(self: &Arc<Self>, query: &[u8], reply: &[u8]) -> Vec<Vec<u8>> {
        let mut name = Vec::with_capacity(64);
        let Ok(info) = wire::parse_query(query, &mut name) else {
            return Vec::new();
        };
        let key = cache_key(&name, &info).to_owned_key();
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
            protocol: Protocol::Udp,
        };
        let asked = Asked { query, info: &info };
        let outcome = self.store_outcome(&key, &question, Ok(decoded), &policy, route.label);
        let waiter = match outcome {
            Outcome::Answer(answer) => {
                let ttls = TtlPatch::CountDown(answer.elapsed_secs(Instant::now()));
                self.render_vec(asked, &answer, ttls, &tally, Plugin::Forward)
            }
            Outcome::Failed => {
                let stale = self.lock_cache().peek_servable(&key, Instant::now());
                self.fail_vec(asked, stale.as_deref(), &tally)
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
}
