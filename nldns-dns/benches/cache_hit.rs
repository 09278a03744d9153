//! The cache-hit path, two ways: the hand-written wire path the service uses
//! (parse the query in place, look up, copy the stored bytes and patch ID, question
//! case and TTLs) against full decoding with hickory-proto (decode the query,
//! look up, decode the stored answer, edit, re-encode). Same cache, same answer.
//!
//! Run: `cargo bench -p nldns-dns --bench cache_hit`

use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use nldns_dns::answer::{prepare, TtlPolicy};
use nldns_dns::cache::{Cache, CacheKey, CachePolicy, Lookup};
use nldns_dns::wire::{self, TtlPatch};

const NAME: &str = "kubernetes.default.svc.cluster.local.";

fn client_query() -> Vec<u8> {
    let mut msg = Message::query();
    msg.metadata.id = 0x4242;
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(
        Name::from_ascii("Kubernetes.Default.svc.cluster.local.").unwrap(),
        RecordType::A,
    ));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    msg.set_edns(edns);
    msg.to_vec().unwrap()
}

fn upstream_reply() -> Message {
    let name = Name::from_ascii(NAME).unwrap();
    let mut msg = Message::response(7, OpCode::Query);
    msg.metadata.response_code = ResponseCode::NoError;
    msg.metadata.recursion_available = true;
    msg.add_query(Query::query(name.clone(), RecordType::A));
    for i in 1..=2 {
        msg.add_answer(Record::from_rdata(
            name.clone(),
            30,
            RData::A(A::new(10, 96, 0, i)),
        ));
    }
    msg
}

fn filled_cache() -> (Mutex<Cache>, Instant) {
    let now = Instant::now();
    let policy = TtlPolicy::new(
        Duration::ZERO,
        Duration::from_secs(30),
        Duration::from_secs(5),
        Duration::from_secs(2),
    );
    let prepared = prepare(upstream_reply(), &policy, now).unwrap();
    let mut cache = Cache::new(CachePolicy {
        max_entries: 1000,
        max_bytes: 1 << 20,
        prefetch_min_hits: u32::MAX,
        prefetch_percent: 0,
        stale_max: Duration::from_secs(3600),
        stale_recheck: Duration::from_secs(30),
    });
    let mut name = Vec::new();
    let info = wire::parse_query(&client_query(), &mut name).unwrap();
    cache.insert(
        CacheKey {
            name: name.into(),
            qtype: info.qtype,
            qclass: info.qclass,
            flags: 0,
        },
        prepared.answer,
    );
    (Mutex::new(cache), now)
}

/// What the service does on a hit.
fn wire_path(cache: &Mutex<Cache>, query: &[u8], now: Instant, out: &mut Vec<u8>) {
    let mut name = Vec::with_capacity(64);
    let info = wire::parse_query(query, &mut name).unwrap();
    let key = CacheKey {
        name: name.into(),
        qtype: info.qtype,
        qclass: info.qclass,
        flags: 0,
    };
    let Lookup::Fresh { answer, .. } = cache.lock().unwrap().lookup(&key, now) else {
        panic!("expected a hit")
    };
    let ttls = TtlPatch::CountDown(answer.elapsed_secs(now));
    wire::render_answer(out, answer.wire(), answer.ttl_offsets(), query, &info, ttls);
}

/// The same with hickory-proto decoding and encoding both messages.
fn decode_path(cache: &Mutex<Cache>, query: &[u8], now: Instant) -> Vec<u8> {
    let q = Message::from_vec(query).unwrap();
    let question = q.queries[0].clone();
    let mut name = Vec::with_capacity(64);
    for label in question.name().to_lowercase().iter() {
        name.push(label.len() as u8);
        name.extend_from_slice(label);
    }
    name.push(0);
    let key = CacheKey {
        name: name.into(),
        qtype: u16::from(question.query_type()),
        qclass: u16::from(question.query_class()),
        flags: 0,
    };
    let Lookup::Fresh { answer, .. } = cache.lock().unwrap().lookup(&key, now) else {
        panic!("expected a hit")
    };
    let mut reply = Message::from_vec(answer.wire()).unwrap();
    reply.metadata.id = q.metadata.id;
    reply.metadata.recursion_desired = q.metadata.recursion_desired;
    reply.queries = vec![question];
    let elapsed = answer.elapsed_secs(now);
    for record in reply.answers.iter_mut().chain(reply.authorities.iter_mut()) {
        record.ttl = record.ttl.saturating_sub(elapsed);
    }
    if q.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(wire::OUR_EDNS_UDP_SIZE);
        reply.set_edns(edns);
    }
    reply.to_vec().unwrap()
}

fn bench(c: &mut Criterion) {
    let (cache, now) = filled_cache();
    let query = client_query();
    // Both paths must give the same answer before their speed means anything.
    let mut out = Vec::new();
    wire_path(&cache, &query, now, &mut out);
    let decoded = Message::from_vec(&decode_path(&cache, &query, now)).unwrap();
    assert_eq!(Message::from_vec(&out).unwrap(), decoded);

    let mut group = c.benchmark_group("cache_hit");
    group.bench_function("wire_patch", |b| {
        let mut out = Vec::with_capacity(512);
        b.iter(|| {
            wire_path(&cache, black_box(&query), now, &mut out);
            black_box(&out);
        })
    });
    group.bench_function("full_decode", |b| {
        b.iter(|| black_box(decode_path(&cache, black_box(&query), now)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // Short: the dev machine has 2 shared cores.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = bench
}
criterion_main!(benches);
