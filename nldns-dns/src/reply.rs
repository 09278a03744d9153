//! What the client gets: an answer rendered from a stored one (TTLs counted down, the
//! client's ID, question case and EDNS, truncation to what it can receive), a stale
//! answer, or SERVFAIL; and where each is counted.

use crate::cache::CachedAnswer;
use crate::metrics::{Plugin, QueryLabels, StatsWriter};
use crate::service::{DnsService, Protocol};
use crate::wire::{self, QueryInfo, TtlPatch};

/// The client's query: its bytes and what parsing them found.
#[derive(Clone, Copy)]
pub(crate) struct Asked<'a> {
    pub query: &'a [u8],
    pub info: &'a QueryInfo,
}

/// How the answer to one query travels (its size limit) and where it is counted.
pub(crate) struct Tally<'a> {
    pub stats: &'a StatsWriter,
    pub labels: QueryLabels,
    pub protocol: Protocol,
}

impl DnsService {
    /// Counts an answer about to be sent: nldns's request counter and CoreDNS's
    /// responses and response size, as written by `plugin`.
    pub(crate) fn count_answer(&self, qtype: u16, out: &[u8], tally: &Tally, plugin: Plugin) {
        let rcode = wire::rcode(out);
        self.metrics
            .count_request(qtype, rcode, tally.protocol.label());
        tally.stats.answer(tally.labels, rcode, plugin, out.len());
    }

    /// The stored answer made into the client's answer, TC=1 if it does not fit.
    pub(crate) fn render(
        &self,
        out: &mut Vec<u8>,
        asked: Asked,
        answer: &CachedAnswer,
        ttls: TtlPatch,
        tally: &Tally,
        plugin: Plugin,
    ) {
        let Asked { query, info } = asked;
        wire::render_answer(out, answer.wire(), answer.ttl_offsets(), query, info, ttls);
        let limit = match tally.protocol {
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
        self.count_answer(info.qtype, out, tally, plugin);
    }

    /// An expired answer served because upstreams failed (RFC 8767), with its fixed TTL.
    pub(crate) fn render_stale(
        &self,
        out: &mut Vec<u8>,
        asked: Asked,
        answer: &CachedAnswer,
        tally: &Tally,
    ) {
        self.metrics.stale_answers.inc();
        tally.stats.served_stale(tally.labels.zone);
        let ttl = self.settings().config.stale_answer_ttl;
        let ttls = TtlPatch::Fixed(ttl);
        self.render(out, asked, answer, ttls, tally, Plugin::Cache)
    }

    /// Stale if we have it, SERVFAIL otherwise.
    pub(crate) fn fail(
        &self,
        out: &mut Vec<u8>,
        asked: Asked,
        stale: Option<&CachedAnswer>,
        tally: &Tally,
    ) {
        match stale {
            Some(answer) => self.render_stale(out, asked, answer, tally),
            None => {
                let servfail = u16::from(wire::RCODE_SERVFAIL);
                *out = wire::synthesize(asked.query, Some(asked.info), servfail, 0);
                self.count_answer(asked.info.qtype, out, tally, Plugin::Forward);
            }
        }
    }

    /// [`Self::fail`] into a new buffer.
    pub(crate) fn fail_vec(
        &self,
        asked: Asked,
        stale: Option<&CachedAnswer>,
        tally: &Tally,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        self.fail(&mut out, asked, stale, tally);
        out
    }

    /// [`Self::render`] into a new buffer.
    pub(crate) fn render_vec(
        &self,
        asked: Asked,
        answer: &CachedAnswer,
        ttls: TtlPatch,
        tally: &Tally,
        plugin: Plugin,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(answer.wire().len() + 11);
        self.render(&mut out, asked, answer, ttls, tally, plugin);
        out
    }
}
