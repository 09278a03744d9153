//! Client queries: arbitrary bytes into `DnsService::handle`, the synchronous part of
//! every query (parse, heartbeat, cache lookup, answer rendering, error replies), over
//! UDP and TCP, against a cache that holds a positive answer, a negative one and one too
//! large for classic UDP. Must never panic; every answer must be well-formed.
//!
//! The service is built once per process: a lookup changes only hit counts and recency,
//! never what an answer says, and the entries live an hour (see `service`).

#![no_main]

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use nldns_dns::{DnsService, Handling, Protocol};
use nldns_fuzz::{check_answer, client_query, service, QueryShape};

/// An upstream's reply to `name A`: `answers` A records, or NXDOMAIN with the zone's SOA.
fn reply(name: &Name, answers: u8) -> Vec<u8> {
    let mut msg = Message::new(0x1234, MessageType::Response, OpCode::Query);
    msg.add_query(Query::query(name.clone(), RecordType::A));
    msg.metadata.recursion_available = true;
    if answers == 0 {
        msg.metadata.response_code = ResponseCode::NXDomain;
        let zone = Name::from_ascii("cluster.local.").expect("literal name");
        let soa = SOA::new(zone.clone(), zone.clone(), 1, 7200, 1800, 86400, 3600);
        msg.add_authority(Record::from_rdata(zone, 3600, RData::SOA(soa)));
    }
    for i in 0..answers {
        let a = RData::A(A::new(10, 0, 0, i));
        msg.add_answer(Record::from_rdata(name.clone(), 3600, a));
    }
    msg.to_vec().expect("encodable reply")
}

/// A service whose cache holds `a.cluster.local` (2 A), `big.cluster.local` (60 A) and
/// `nx.cluster.local` (NXDOMAIN), stored through the real miss path.
fn filled_service() -> Arc<DnsService> {
    let svc = service();
    for (name, answers) in [("a", 2), ("big", 60), ("nx", 0)] {
        let name = Name::from_ascii(format!("{name}.cluster.local.")).expect("literal name");
        let query = client_query(&name, RecordType::A, DNSClass::IN, QueryShape(1));
        let stored = svc.fuzz_upstream_reply(&query, &reply(&name, answers));
        assert_eq!(stored.len(), 2, "prefill of {name} was not cached");
    }
    svc
}

static SERVICE: OnceLock<Arc<DnsService>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let svc = SERVICE.get_or_init(filled_service);
    let mut answer = Vec::new();
    let mut scratch = svc.shared_scratch("fuzz", false);
    for protocol in [Protocol::Udp, Protocol::Tcp] {
        let now = std::time::Instant::now();
        match svc.handle(data, protocol, now, &mut scratch, &mut answer) {
            Handling::Reply => check_answer(data, &answer, protocol == Protocol::Udp),
            // A miss: the upstream part is the other target's business.
            Handling::Resolve(_) | Handling::Drop => {}
        }
    }
});
