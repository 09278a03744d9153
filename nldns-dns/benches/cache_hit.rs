//! The cache-hit path, two ways: the hand-written wire path the service uses
//! (parse the query in place, look up, copy the stored bytes and patch ID, question
//! case and TTLs) against full decoding with hickory-proto (decode the query,
//! look up, decode the stored answer, edit, re-encode). Same cache, same answer.
//!
//! `service/hit` is the whole hit path the UDP serving threads run: `DnsService::handle`
//! with a serving thread's scratch (metrics included), then the per-batch send-time
//! bookkeeping, for one query.
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
use nldns_dns::metrics::Metrics;
use nldns_dns::wire::{self, TtlPatch};
use nldns_dns::{DnsConfig, DnsService, Handling, Protocol};

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
        0,
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

/// A service whose cache holds NAME, filled through the real miss path from a DNS
/// responder on 127.0.0.1 (a thread answering every query with `upstream_reply`).
fn filled_service(runtime: &tokio::runtime::Runtime) -> std::sync::Arc<DnsService> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let upstream = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut reply = upstream_reply();
            reply.metadata.id = query.metadata.id;
            let _ = socket.send_to(&reply.to_vec().unwrap(), peer);
        }
    });
    let mut config = DnsConfig::for_cluster_domain("cluster.local");
    config.cluster_upstreams = vec![upstream];
    config.prefetch_percent = 0;
    let svc = DnsService::new(config, Metrics::new()).unwrap();
    let reply = runtime
        .block_on(svc.answer(&client_query(), Protocol::Udp))
        .unwrap();
    assert_eq!(Message::from_vec(&reply).unwrap().answers.len(), 2);
    svc
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

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let svc = filled_service(&runtime);
    let mut group = c.benchmark_group("service");
    group.bench_function("hit", |b| {
        let mut scratch = svc.scratch("dns://10.96.0.10:53", false);
        let mut out = Vec::with_capacity(512);
        b.iter(|| {
            let now = Instant::now();
            let handled = svc.handle(
                black_box(&query),
                Protocol::Udp,
                now,
                &mut scratch,
                &mut out,
            );
            assert!(matches!(handled, Handling::Reply));
            scratch.sent(now);
            black_box(&out);
        })
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
