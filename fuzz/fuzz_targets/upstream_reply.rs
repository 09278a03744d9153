//! Upstream replies: whatever bytes come back from an upstream for a query go through
//! the miss path exactly as the agent runs it (decode, match to our question, classify,
//! clamp TTLs, re-encode, find TTL offsets, cache), and the client's answers (the
//! waiter's and the following cache hit's) must be well-formed.
//!
//! Input: one selector byte shaping the client's query (EDNS, DO, CD, 0x20 case), then
//! the reply. The client's question is the reply's own first question, so most decodable
//! replies match and reach the cache.

#![no_main]

use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;
use nldns_fuzz::{check_answer, client_query, service, QueryShape};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, reply)) = data.split_first() else {
        return;
    };
    let Ok(decoded) = Message::from_vec(reply) else {
        return;
    };
    let Some(question) = decoded.queries.first() else {
        return;
    };
    let query = client_query(
        question.name(),
        question.query_type(),
        question.query_class(),
        QueryShape(selector),
    );
    let svc = service();
    for answer in svc.fuzz_upstream_reply(&query, reply) {
        check_answer(&query, &answer, true);
    }
});
