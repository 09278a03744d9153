//! What both fuzz targets share: a DNS service like the agent's (no network: the targets
//! only drive its synchronous parts) and the properties every answer must have.

use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use nldns_dns::metrics::Metrics;
use nldns_dns::wire::{self, HEADER_LEN};
use nldns_dns::{DnsConfig, DnsService};

/// A service with the agent's defaults, except: no prefetch (it spawns a tokio task, and
/// the fuzz targets run no runtime; the cache-hit path never awaits), and lifetimes long
/// enough that what a target stores stays fresh for the whole run.
pub fn service() -> Arc<DnsService> {
    let mut config = DnsConfig::for_cluster_domain("cluster.local");
    config.cluster_upstreams = vec!["192.0.2.53:53".parse().expect("literal address")];
    config.default_upstreams = vec!["192.0.2.54:53".parse().expect("literal address")];
    config.prefetch_percent = 0;
    let hour = std::time::Duration::from_secs(3600);
    config.cluster_max_ttl = hour;
    config.negative_max_ttl = hour;
    DnsService::new(config, Metrics::new()).expect("default config is valid")
}

/// How a client query derived from fuzz input looks (one selector byte's bits).
#[derive(Debug, Clone, Copy)]
pub struct QueryShape(pub u8);

impl QueryShape {
    fn edns(self) -> bool {
        self.0 & 1 != 0
    }
    fn dnssec_ok(self) -> bool {
        self.0 & 2 != 0
    }
    fn checking_disabled(self) -> bool {
        self.0 & 4 != 0
    }
    /// Randomized case (0x20) in the query name, as some resolvers send.
    fn mixed_case(self) -> bool {
        self.0 & 8 != 0
    }
}

/// A client's query in wire form for `name`/`rtype`/`class`, shaped by `shape`.
pub fn client_query(name: &Name, rtype: RecordType, class: DNSClass, shape: QueryShape) -> Vec<u8> {
    let mut name = name.clone();
    if shape.mixed_case() {
        let text: String = name
            .to_ascii()
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        if let Ok(mixed) = Name::from_ascii(&text) {
            name = mixed;
        }
    }
    let mut msg = Message::new(0xbeef, MessageType::Query, OpCode::Query);
    let mut query = Query::query(name, rtype);
    query.set_query_class(class);
    msg.add_query(query);
    msg.metadata.recursion_desired = true;
    msg.metadata.checking_disabled = shape.checking_disabled();
    if shape.edns() {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        edns.set_dnssec_ok(shape.dnssec_ok());
        msg.set_edns(edns);
    }
    msg.to_vec().unwrap_or_default()
}

/// Properties of any answer the service sends for `query` (over UDP when `udp`):
/// it is a response with the client's ID, it echoes the client's question bytes exactly
/// (0x20), it fits the client's UDP size, and a DNS library can read it.
pub fn check_answer(query: &[u8], answer: &[u8], udp: bool) {
    assert!(answer.len() >= HEADER_LEN, "answer shorter than a header");
    if let Some(id) = query.get(..2) {
        assert_eq!(&answer[..2], id, "answer ID differs from the query's");
    }
    assert_ne!(answer[2] & 0x80, 0, "QR not set in the answer");
    let mut name = Vec::new();
    let Ok(info) = wire::parse_query(query, &mut name) else {
        return; // errors about unreadable queries carry only a header
    };
    assert_eq!(
        answer.get(HEADER_LEN..info.question_end),
        query.get(HEADER_LEN..info.question_end),
        "question not echoed byte for byte"
    );
    if udp {
        assert!(
            answer.len() <= info.udp_limit(),
            "UDP answer of {} bytes exceeds the client's limit {}",
            answer.len(),
            info.udp_limit()
        );
    }
    if let Err(e) = Message::from_vec(answer) {
        panic!("our answer does not decode: {e}\nquery {query:02x?}\nanswer {answer:02x?}");
    }
}
