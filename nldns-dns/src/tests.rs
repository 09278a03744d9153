//! Service-level tests against real DNS servers on 127.0.0.1 (see `testing.rs`).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use super::testing::{flip_case, Mode, TestUpstream};
use super::{server, DnsConfig, DnsService, Handling, Protocol, HEARTBEAT_NAME};
use crate::metrics::Metrics;

/// Functional bound for any single wait in these tests (never a performance check).
const PATIENCE: Duration = Duration::from_secs(10);

fn config(default: &[&TestUpstream], cluster: &[&TestUpstream]) -> DnsConfig {
    DnsConfig {
        default_upstreams: default.iter().map(|u| u.addr).collect(),
        cluster_upstreams: cluster.iter().map(|u| u.addr).collect(),
        min_ttl: Duration::ZERO,
        upstream_timeout: Duration::from_millis(300),
        upstream_attempts: 1,
        ..DnsConfig::default()
    }
}

fn service(config: DnsConfig) -> (Arc<DnsService>, Arc<Metrics>) {
    let metrics = Metrics::new();
    (DnsService::new(config, metrics.clone()).unwrap(), metrics)
}

fn query(name: &str, qtype: RecordType, id: u16, edns: Option<(u16, bool)>) -> Vec<u8> {
    let mut msg = Message::query();
    msg.metadata.id = id;
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some((size, dnssec_ok)) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        e.set_dnssec_ok(dnssec_ok);
        msg.set_edns(e);
    }
    msg.to_vec().unwrap()
}

async fn ask(svc: &Arc<DnsService>, q: &[u8], protocol: Protocol) -> Message {
    let reply = tokio::time::timeout(PATIENCE, svc.answer(q, protocol))
        .await
        .expect("answered in time")
        .expect("an answer");
    Message::from_vec(&reply).unwrap()
}

fn ttls(msg: &Message) -> Vec<u32> {
    msg.answers
        .iter()
        .chain(&msg.authorities)
        .map(|r| r.ttl)
        .collect()
}

fn addresses(msg: &Message) -> Vec<String> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn hit_counts_ttl_down_and_echoes_id_and_case() {
    let up = TestUpstream::start(Mode::Answer {
        ttl: 300,
        records: 1,
    })
    .await;
    let (svc, metrics) = service(config(&[&up], &[]));
    let first = ask(
        &svc,
        &query("www.example.com.", RecordType::A, 1, None),
        Protocol::Udp,
    )
    .await;
    assert_eq!(first.metadata.response_code, ResponseCode::NoError);
    assert_eq!(ttls(&first), vec![300]);
    assert_eq!(first.edns, None, "no OPT for a client that sent none");
    assert!(
        !first.metadata.authoritative,
        "a cache is not authoritative"
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let q = query("WwW.ExAmple.CoM.", RecordType::A, 0xbeef, None);
    let second = ask(&svc, &q, Protocol::Udp).await;
    assert_eq!(up.queries(), 1, "served from the cache");
    assert_eq!(second.metadata.id, 0xbeef);
    let t = ttls(&second)[0];
    assert!((290..300).contains(&t), "TTL counted down: {t}");
    // 0x20: the question comes back byte for byte as the client wrote it.
    let raw = svc.answer(&q, Protocol::Udp).await.unwrap();
    let end = q.len();
    assert_eq!(&raw[12..end], &q[12..end]);
    assert_eq!(second.answers[0].name.to_ascii(), "WwW.ExAmple.CoM.");
    assert_eq!(metrics.cache_hits.get(), 2);
    assert_eq!(metrics.cache_misses.get(), 1);
}

#[tokio::test]
async fn cluster_zone_answers_capped_at_30s() {
    let cluster = TestUpstream::start(Mode::Answer {
        ttl: 300,
        records: 1,
    })
    .await;
    let other = TestUpstream::start(Mode::Answer {
        ttl: 300,
        records: 1,
    })
    .await;
    let (svc, _) = service(config(&[&other], &[&cluster]));
    let a = ask(
        &svc,
        &query(
            "kubernetes.default.svc.cluster.local.",
            RecordType::A,
            1,
            None,
        ),
        Protocol::Udp,
    )
    .await;
    assert_eq!(ttls(&a), vec![30]);
    let p = ask(
        &svc,
        &query("1.0.96.10.in-addr.arpa.", RecordType::PTR, 2, None),
        Protocol::Udp,
    )
    .await;
    assert_eq!(ttls(&p), vec![30]);
    assert_eq!((cluster.queries(), other.queries()), (2, 0));
    let e = ask(
        &svc,
        &query("example.org.", RecordType::A, 3, None),
        Protocol::Udp,
    )
    .await;
    assert_eq!(ttls(&e), vec![300]);
    assert_eq!(other.queries(), 1);
}

#[tokio::test]
async fn stub_domains_route_to_their_servers() {
    let stub = TestUpstream::start(Mode::Answer {
        ttl: 60,
        records: 1,
    })
    .await;
    let other = TestUpstream::start(Mode::Answer {
        ttl: 60,
        records: 1,
    })
    .await;
    let mut cfg = config(&[&other], &[]);
    cfg.stub_domains = vec![("acme.local".into(), vec![stub.addr])];
    let (svc, _) = service(cfg);
    ask(
        &svc,
        &query("db.ACME.local.", RecordType::A, 1, None),
        Protocol::Udp,
    )
    .await;
    assert_eq!((stub.queries(), other.queries()), (1, 0));
}

#[tokio::test]
async fn negative_answers_cached_from_soa() {
    let up = TestUpstream::start(Mode::NxDomain {
        soa_ttl: 60,
        minimum: 3,
    })
    .await;
    let (svc, _) = service(config(&[&up], &[]));
    let q = query("nope.example.com.", RecordType::A, 1, None);
    let a = ask(&svc, &q, Protocol::Udp).await;
    assert_eq!(a.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(ttls(&a), vec![3], "min(SOA TTL, MINIMUM)");
    let b = ask(&svc, &q, Protocol::Udp).await;
    assert_eq!(b.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(up.queries(), 1);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    ask(&svc, &q, Protocol::Udp).await;
    assert_eq!(up.queries(), 2, "expired after 3 s");
}

#[tokio::test]
async fn servfail_cached_briefly() {
    let up = TestUpstream::start(Mode::ServFail).await;
    let mut cfg = config(&[&up], &[]);
    cfg.servfail_ttl = Duration::from_secs(1);
    let (svc, _) = service(cfg);
    let q = query("broken.example.com.", RecordType::A, 1, None);
    for _ in 0..3 {
        let a = ask(&svc, &q, Protocol::Udp).await;
        assert_eq!(a.metadata.response_code, ResponseCode::ServFail);
    }
    assert_eq!(up.queries(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ask(&svc, &q, Protocol::Udp).await;
    assert_eq!(up.queries(), 2);
}

#[tokio::test]
async fn total_upstream_failure_is_servfail_and_cached() {
    let up = TestUpstream::start(Mode::Silent).await;
    let (svc, metrics) = service(config(&[&up], &[]));
    let q = query("down.example.com.", RecordType::A, 1, None);
    let a = ask(&svc, &q, Protocol::Udp).await;
    assert_eq!(a.metadata.response_code, ResponseCode::ServFail);
    ask(&svc, &q, Protocol::Udp).await;
    assert_eq!(up.queries(), 1, "failure cached");
    assert!(metrics.encode().contains("kind=\"timeout\""));
    assert!(!svc.upstream_reachable());
}

#[tokio::test]
async fn closed_upstream_port_fails_fast() {
    // A port nobody listens on: the kernel answers with ICMP port unreachable, as for
    // a stopped kube-dns pod. That is a failure now, not after the upstream timeout.
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let (svc, metrics) = service(DnsConfig {
        default_upstreams: vec![addr],
        upstream_timeout: Duration::from_secs(5),
        upstream_attempts: 2,
        ..DnsConfig::default()
    });
    let q = query("closed.example.com.", RecordType::A, 1, None);
    let started = Instant::now();
    let a = ask(&svc, &q, Protocol::Udp).await;
    assert_eq!(a.metadata.response_code, ResponseCode::ServFail);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "SERVFAIL took {:?}: the refused port was not noticed",
        started.elapsed()
    );
    assert!(metrics.encode().contains("kind=\"io\""));
}

#[tokio::test]
async fn concurrent_identical_misses_coalesce() {
    let up = TestUpstream::start(Mode::Answer {
        ttl: 60,
        records: 1,
    })
    .await;
    up.set_delay(Duration::from_millis(1000));
    let mut cfg = config(&[&up], &[]);
    cfg.upstream_timeout = Duration::from_secs(5);
    let (svc, metrics) = service(cfg);
    let mut handles = Vec::new();
    for i in 0..20u16 {
        let svc = svc.clone();
        handles.push(tokio::spawn(async move {
            let name = if i % 2 == 0 {
                "same.example.com."
            } else {
                "SAME.example.com."
            };
            ask(&svc, &query(name, RecordType::A, i, None), Protocol::Udp).await
        }));
    }
    for (i, h) in handles.into_iter().enumerate() {
        let a = h.await.unwrap();
        assert_eq!(a.metadata.id, i as u16);
        assert_eq!(addresses(&a), vec!["10.0.0.1"]);
    }
    assert_eq!(up.queries(), 1);
    assert_eq!(metrics.coalesced.get(), 19);
}

#[tokio::test]
async fn serves_stale_when_upstream_fails() {
    let up = TestUpstream::start(Mode::Answer { ttl: 1, records: 1 }).await;
    let (svc, metrics) = service(config(&[&up], &[]));
    let q = query("stale.example.com.", RecordType::A, 1, None);
    ask(&svc, &q, Protocol::Udp).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Timeout: the stale answer, TTL 30.
    up.set_mode(Mode::Silent);
    let a = ask(&svc, &q, Protocol::Udp).await;
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&a), vec!["10.0.0.1"]);
    assert_eq!(ttls(&a), vec![30]);
    assert_eq!(up.queries(), 2);
    // Within the recheck window, stale again without asking upstream; an EDNS
    // client is told it is stale (Extended DNS Error 3).
    let with_edns = query("stale.example.com.", RecordType::A, 1, Some((1232, false)));
    let raw = svc.answer(&with_edns, Protocol::Udp).await.unwrap();
    assert!(
        raw.ends_with(&[0, 6, 0, 15, 0, 2, 0, 3]),
        "EDE option at the end: {raw:?}"
    );
    assert!(Message::from_vec(&raw).unwrap().edns.is_some());
    let b = ask(&svc, &q, Protocol::Udp).await;
    assert_eq!(ttls(&b), vec![30]);
    assert_eq!(up.queries(), 2);
    assert_eq!(metrics.stale_answers.get(), 3);
}

#[tokio::test]
async fn serves_stale_on_upstream_servfail_and_slow_upstream() {
    let up = TestUpstream::start(Mode::Answer { ttl: 1, records: 1 }).await;
    let mut cfg = config(&[&up], &[]);
    cfg.stale_recheck = Duration::ZERO;
    cfg.stale_client_timeout = Duration::from_millis(100);
    cfg.upstream_timeout = Duration::from_secs(3);
    let (svc, _) = service(cfg);
    let q = query("stale2.example.com.", RecordType::A, 1, None);
    ask(&svc, &q, Protocol::Udp).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    up.set_mode(Mode::ServFail);
    let a = ask(&svc, &q, Protocol::Udp).await;
    assert_eq!(
        (a.metadata.response_code, ttls(&a)),
        (ResponseCode::NoError, vec![30])
    );
    // Slow upstream: the client gets stale after stale_client_timeout; the query
    // goes on and refreshes the cache.
    up.set_mode(Mode::Answer {
        ttl: 100,
        records: 1,
    });
    up.set_delay(Duration::from_millis(500));
    let b = ask(&svc, &q, Protocol::Udp).await;
    assert_eq!(ttls(&b), vec![30]);
    let mut refreshed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if ttls(&ask(&svc, &q, Protocol::Udp).await)[0] > 90 {
            refreshed = true;
            break;
        }
    }
    assert!(refreshed, "the upstream answer replaced the stale one");
}

#[tokio::test]
async fn large_answers_truncate_for_udp_clients() {
    let up = TestUpstream::start(Mode::Answer {
        ttl: 60,
        records: 40,
    })
    .await;
    let (svc, _) = service(config(&[&up], &[]));
    let plain = ask(
        &svc,
        &query("big.example.com.", RecordType::A, 1, None),
        Protocol::Udp,
    )
    .await;
    assert!(plain.metadata.truncation);
    assert!(plain.answers.is_empty());
    assert_eq!(plain.queries.len(), 1, "question kept");
    let edns = ask(
        &svc,
        &query("big.example.com.", RecordType::A, 2, Some((4096, false))),
        Protocol::Udp,
    )
    .await;
    assert!(!edns.metadata.truncation);
    assert_eq!(edns.answers.len(), 40);
    assert_eq!(
        edns.edns.as_ref().map(|e| e.max_payload()),
        Some(1232),
        "our OPT"
    );
    let tcp = ask(
        &svc,
        &query("big.example.com.", RecordType::A, 3, None),
        Protocol::Tcp,
    )
    .await;
    assert_eq!(tcp.answers.len(), 40);
    assert_eq!(up.queries(), 1, "one cache entry serves all three");

    // Above our own EDNS size (1232) even an EDNS client that offers 4096 gets TC=1.
    up.set_mode(Mode::Answer {
        ttl: 60,
        records: 100,
    });
    let q = query("huge.example.com.", RecordType::A, 4, Some((4096, false)));
    let udp = ask(&svc, &q, Protocol::Udp).await;
    assert!(udp.metadata.truncation && udp.answers.is_empty());
    assert!(udp.edns.is_some(), "TC answer still carries our OPT");
    assert_eq!(ask(&svc, &q, Protocol::Tcp).await.answers.len(), 100);
}

#[tokio::test]
async fn truncated_upstream_reply_is_retried_over_tcp() {
    let up = TestUpstream::start(Mode::TruncateUdp {
        ttl: 60,
        records: 3,
    })
    .await;
    let (svc, _) = service(config(&[&up], &[]));
    let a = ask(
        &svc,
        &query("tc.example.com.", RecordType::A, 1, None),
        Protocol::Udp,
    )
    .await;
    assert_eq!(a.answers.len(), 3);
    assert_eq!(up.udp_queries.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(up.tcp_queries.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn force_tcp_zones_use_tcp_only() {
    let up = TestUpstream::start(Mode::Answer {
        ttl: 60,
        records: 1,
    })
    .await;
    let mut cfg = config(&[&up], &[]);
    cfg.force_tcp_zones = vec!["example.com".into()];
    let (svc, _) = service(cfg);
    ask(
        &svc,
        &query("a.example.com.", RecordType::A, 1, None),
        Protocol::Udp,
    )
    .await;
    ask(
        &svc,
        &query("a.example.net.", RecordType::A, 1, None),
        Protocol::Udp,
    )
    .await;
    assert_eq!(up.udp_queries.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(up.tcp_queries.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn mismatched_replies_are_ignored() {
    let up = TestUpstream::start(Mode::Spoof { then_answer: true }).await;
    let mut cfg = config(&[&up], &[]);
    cfg.upstream_timeout = Duration::from_secs(3);
    let (svc, _) = service(cfg);
    let a = ask(
        &svc,
        &query("spoof.example.com.", RecordType::A, 1, None),
        Protocol::Udp,
    )
    .await;
    assert_eq!(
        addresses(&a),
        vec!["10.0.0.1"],
        "wrong ID, question and source were all ignored"
    );

    up.set_mode(Mode::Spoof { then_answer: false });
    let b = ask(
        &svc,
        &query("spoof2.example.com.", RecordType::A, 1, None),
        Protocol::Udp,
    )
    .await;
    assert_eq!(
        b.metadata.response_code,
        ResponseCode::ServFail,
        "only forgeries: timeout"
    );
}

#[tokio::test]
async fn in_flight_cap_answers_servfail_at_once() {
    let up = TestUpstream::start(Mode::Answer {
        ttl: 60,
        records: 1,
    })
    .await;
    up.set_delay(Duration::from_millis(1500));
    let mut cfg = config(&[&up], &[]);
    cfg.max_upstream_in_flight = 2;
    cfg.upstream_timeout = Duration::from_secs(5);
    let (svc, metrics) = service(cfg);
    let mut handles = Vec::new();
    for i in 0..5 {
        let svc = svc.clone();
        handles.push(tokio::spawn(async move {
            let q = query(&format!("n{i}.example.com."), RecordType::A, 1, None);
            ask(&svc, &q, Protocol::Udp).await.metadata.response_code
        }));
        // Let each query reach the upstream stage in order.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut codes = Vec::new();
    for h in handles {
        codes.push(h.await.unwrap());
    }
    assert_eq!(
        codes
            .iter()
            .filter(|c| **c == ResponseCode::NoError)
            .count(),
        2
    );
    assert_eq!(
        codes
            .iter()
            .filter(|c| **c == ResponseCode::ServFail)
            .count(),
        3
    );
    assert_eq!(up.queries(), 2);
    assert_eq!(metrics.upstream_overload.get(), 3);
}

#[tokio::test]
async fn unhealthy_upstream_is_skipped() {
    let dead = TestUpstream::start(Mode::Silent).await;
    let good = TestUpstream::start(Mode::Answer {
        ttl: 60,
        records: 1,
    })
    .await;
    let mut cfg = config(&[&dead, &good], &[]);
    cfg.upstream_attempts = 2;
    cfg.upstream_timeout = Duration::from_millis(200);
    let (svc, _) = service(cfg);
    for i in 0..6 {
        let a = ask(
            &svc,
            &query(&format!("h{i}.example.com."), RecordType::A, 1, None),
            Protocol::Udp,
        )
        .await;
        assert_eq!(addresses(&a), vec!["10.0.0.1"]);
    }
    assert!(
        dead.queries() <= 1,
        "asked once at most, then skipped: {}",
        dead.queries()
    );
    assert_eq!(good.queries(), 6);
    assert!(svc.upstream_reachable());
}

#[tokio::test]
async fn edns_and_dnssec_ok_are_forwarded_and_keyed() {
    let up = TestUpstream::start(Mode::Answer {
        ttl: 60,
        records: 1,
    })
    .await;
    let (svc, _) = service(config(&[&up], &[]));
    let a = ask(
        &svc,
        &query("do.example.com.", RecordType::A, 1, Some((1232, true))),
        Protocol::Udp,
    )
    .await;
    let sent = up.last_query().unwrap();
    assert!(
        sent.edns.as_ref().unwrap().flags().dnssec_ok,
        "DO forwarded"
    );
    assert_ne!(sent.metadata.id, 1, "our own random ID upstream");
    assert!(a.edns.as_ref().unwrap().flags().dnssec_ok, "DO echoed");
    // Without DO: a different cache entry, no OPT in the answer.
    let b = ask(
        &svc,
        &query("do.example.com.", RecordType::A, 2, None),
        Protocol::Udp,
    )
    .await;
    assert!(b.edns.is_none());
    assert!(!up.last_query().unwrap().edns.unwrap().flags().dnssec_ok);
    assert_eq!(up.queries(), 2);
}

#[tokio::test]
async fn heartbeat_and_malformed_queries_are_answered_locally() {
    let (svc, metrics) = service(DnsConfig::default());
    let hb = ask(
        &svc,
        &query(HEARTBEAT_NAME, RecordType::A, 9, None),
        Protocol::Udp,
    )
    .await;
    assert_eq!(
        (hb.metadata.id, hb.metadata.response_code),
        (9, ResponseCode::NXDomain)
    );
    assert!(
        !metrics.encode().contains("nldns_requests_total{"),
        "heartbeat not counted"
    );

    // Header readable, question not: FORMERR with the client's ID.
    let mut bad = query("x.example.", RecordType::A, 7, None);
    bad.truncate(15);
    let f = svc.answer(&bad, Protocol::Udp).await.unwrap();
    assert_eq!(&f[..2], &[0, 7]);
    assert_eq!(f[3] & 0xf, 1);
    // Not even a header: dropped.
    assert!(svc.answer(&[1, 2, 3], Protocol::Udp).await.is_none());
}

#[tokio::test]
async fn prefetch_refreshes_popular_entries_before_expiry() {
    let up = TestUpstream::start(Mode::Answer { ttl: 3, records: 1 }).await;
    let mut cfg = config(&[&up], &[]);
    cfg.prefetch_min_hits = 2;
    cfg.prefetch_percent = 90; // window: the last 2.7 s of 3
    let (svc, metrics) = service(cfg);
    let q = query("hot.example.com.", RecordType::A, 1, None);
    ask(&svc, &q, Protocol::Udp).await;
    ask(&svc, &q, Protocol::Udp).await; // 1st hit: not popular yet
    up.set_mode(Mode::Answer { ttl: 3, records: 2 }); // tells the refreshed entry apart
    tokio::time::sleep(Duration::from_millis(400)).await;
    let a = ask(&svc, &q, Protocol::Udp).await; // 2nd hit inside the window: prefetch
    assert_eq!(a.answers.len(), 1, "answered from the cache at once");
    let mut refreshed = false;
    for _ in 0..100 {
        if ask(&svc, &q, Protocol::Udp).await.answers.len() == 2 {
            refreshed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refreshed, "the prefetched answer replaced the entry");
    assert_eq!(up.queries(), 2, "no miss: the entry never expired");
    assert_eq!(metrics.prefetches.get(), 1);
}

#[tokio::test]
async fn reload_keeps_the_cache() {
    let up = TestUpstream::start(Mode::Answer {
        ttl: 60,
        records: 1,
    })
    .await;
    let other = TestUpstream::start(Mode::Answer {
        ttl: 60,
        records: 1,
    })
    .await;
    let (svc, _) = service(config(&[&up], &[]));
    let q = query("keep.example.com.", RecordType::A, 1, None);
    ask(&svc, &q, Protocol::Udp).await;
    svc.reload(config(&[&other], &[]));
    ask(&svc, &q, Protocol::Udp).await;
    ask(
        &svc,
        &query("new.example.com.", RecordType::A, 1, None),
        Protocol::Udp,
    )
    .await;
    assert_eq!((up.queries(), other.queries()), (1, 1));
}

async fn read_tcp_answer(stream: &mut TcpStream) -> Message {
    let len = stream.read_u16().await.unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

#[tokio::test]
async fn udp_and_tcp_servers_answer_pipelined_out_of_order_and_stop() {
    let up = TestUpstream::start(Mode::Answer {
        ttl: 60,
        records: 1,
    })
    .await;
    up.set_slow_delay(Duration::from_millis(1000));
    let mut cfg = config(&[&up], &[]);
    cfg.upstream_timeout = Duration::from_secs(5);
    let (svc, _) = service(cfg);
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (udp_addr, tcp_addr): (SocketAddr, SocketAddr) =
        (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let udp_server = tokio::spawn(server::serve_udp(udp, svc.clone(), shutdown.clone()));
    let tcp_server = tokio::spawn(server::serve_tcp(tcp, svc.clone(), shutdown.clone()));

    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client
        .send_to(&query("u.example.com.", RecordType::A, 42, None), udp_addr)
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(PATIENCE, client.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let a = Message::from_vec(&buf[..len]).unwrap();
    assert_eq!(
        (a.metadata.id, addresses(&a)),
        (42, vec!["10.0.0.1".to_string()])
    );

    // Two queries in one write: the slow one first; the fast one must not wait.
    let mut stream = TcpStream::connect(tcp_addr).await.unwrap();
    let mut pipelined = Vec::new();
    for (name, id) in [("slow.example.com.", 1u16), ("fast.example.com.", 2)] {
        let q = query(name, RecordType::A, id, None);
        pipelined.extend_from_slice(&(q.len() as u16).to_be_bytes());
        pipelined.extend_from_slice(&q);
    }
    stream.write_all(&pipelined).await.unwrap();
    let first = tokio::time::timeout(PATIENCE, read_tcp_answer(&mut stream))
        .await
        .unwrap();
    let second = tokio::time::timeout(PATIENCE, read_tcp_answer(&mut stream))
        .await
        .unwrap();
    assert_eq!(
        (first.metadata.id, second.metadata.id),
        (2, 1),
        "answered as ready"
    );

    // A query in flight at shutdown is still answered, then both servers return.
    let q = query("slow2.example.com.", RecordType::A, 3, None);
    stream
        .write_all(&(q.len() as u16).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&q).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.cancel();
    let last = tokio::time::timeout(PATIENCE, read_tcp_answer(&mut stream))
        .await
        .unwrap();
    assert_eq!(last.metadata.id, 3);
    tokio::time::timeout(PATIENCE, udp_server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    tokio::time::timeout(PATIENCE, tcp_server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// UDP serving threads on a loopback socket; returns their address, the stop and the
/// server's task.
fn start_udp_threads(
    svc: Arc<DnsService>,
    threads: usize,
) -> (
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = udp.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(server::serve_udp_std(udp, svc, shutdown.clone(), threads));
    (addr, shutdown, server)
}

/// Waits for a stopped server's task: it must end, cleanly, within PATIENCE.
async fn server_ended(server: tokio::task::JoinHandle<std::io::Result<()>>) {
    tokio::time::timeout(PATIENCE, server)
        .await
        .expect("the server ends after the stop")
        .unwrap()
        .unwrap();
}

/// A hit answered on a serving thread can start a prefetch (a runtime task): the thread
/// must survive it and keep answering.
#[tokio::test]
async fn udp_threads_start_prefetches_and_keep_serving() {
    let up = TestUpstream::start(Mode::Answer { ttl: 3, records: 1 }).await;
    let mut cfg = config(&[&up], &[]);
    cfg.prefetch_min_hits = 1;
    cfg.prefetch_percent = 100;
    let (svc, metrics) = service(cfg);
    // One thread: if it died, nothing would answer any more.
    let (addr, shutdown, server) = start_udp_threads(svc, 1);
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = vec![0u8; 4096];
    for id in 0..4u16 {
        let q = query("hot.example.com.", RecordType::A, id, None);
        client.send_to(&q, addr).await.unwrap();
        let (len, _) = tokio::time::timeout(PATIENCE, client.recv_from(&mut buf))
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(Message::from_vec(&buf[..len]).unwrap().metadata.id, id);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metrics.prefetches.get() >= 1, "a hit started a prefetch");
    shutdown.cancel();
    server_ended(server).await;
}

#[tokio::test]
async fn udp_threads_answer_bursts_drop_junk_and_drain_at_stop() {
    let up = TestUpstream::start(Mode::Answer {
        ttl: 60,
        records: 1,
    })
    .await;
    let (svc, _) = service(config(&[&up], &[]));
    let (addr, shutdown, server) = start_udp_threads(svc, 2);

    // Several clients at once, each a burst without waiting: batches mix misses (first
    // sight of a name, answered by tasks) and hits (answered by the serving threads).
    let mut clients = Vec::new();
    for c in 0..4u16 {
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for n in 0..25u16 {
            let q = query(
                &format!("n{}.example.com.", n % 5),
                RecordType::A,
                c * 100 + n,
                None,
            );
            client.send_to(&q, addr).await.unwrap();
        }
        clients.push(client);
    }
    let mut buf = vec![0u8; 4096];
    for (c, client) in clients.iter().enumerate() {
        let mut ids = Vec::new();
        for _ in 0..25 {
            let (len, _) = tokio::time::timeout(PATIENCE, client.recv_from(&mut buf))
                .await
                .expect("every query of the burst answered")
                .unwrap();
            let a = Message::from_vec(&buf[..len]).unwrap();
            assert_eq!(addresses(&a), vec!["10.0.0.1".to_string()]);
            ids.push(a.metadata.id);
        }
        ids.sort_unstable();
        let expected: Vec<u16> = (0..25).map(|n| c as u16 * 100 + n).collect();
        assert_eq!(ids, expected, "client {c}");
    }

    // An empty datagram and one longer than any query are dropped; the next is answered.
    let client = &clients[0];
    client.send_to(&[], addr).await.unwrap();
    client.send_to(&vec![0u8; 8000], addr).await.unwrap();
    client
        .send_to(&query("n1.example.com.", RecordType::A, 7, None), addr)
        .await
        .unwrap();
    let (len, _) = tokio::time::timeout(PATIENCE, client.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Message::from_vec(&buf[..len]).unwrap().metadata.id, 7);

    // Datagrams queued when the stop comes are still answered, then the server returns.
    for id in 0..10u16 {
        client
            .send_to(
                &query("n2.example.com.", RecordType::A, 500 + id, None),
                addr,
            )
            .await
            .unwrap();
    }
    shutdown.cancel();
    for _ in 0..10 {
        let (len, _) = tokio::time::timeout(PATIENCE, client.recv_from(&mut buf))
            .await
            .expect("queued queries answered after the stop")
            .unwrap();
        assert!(Message::from_vec(&buf[..len]).unwrap().metadata.id >= 500);
    }
    server_ended(server).await;
}

#[tokio::test]
async fn upstream_check_tracks_reachability() {
    let up = TestUpstream::start(Mode::ServFail).await;
    let (svc, _) = service(config(&[], &[&up]));
    assert!(
        svc.check_upstreams().await,
        "an error reply still shows it is alive"
    );
    assert_eq!(
        // In random letter case (0x20), like every UDP question.
        up.last_query().unwrap().queries[0]
            .name()
            .to_ascii()
            .to_ascii_lowercase(),
        "cluster.local."
    );
    up.set_mode(Mode::Silent);
    assert!(!svc.check_upstreams().await);
    assert!(!svc.upstream_reachable());
    up.set_mode(Mode::Answer { ttl: 1, records: 1 });
    assert!(svc.check_upstreams().await);
}

#[tokio::test]
async fn upstream_without_edns_is_asked_again_plainly() {
    let up = TestUpstream::start(Mode::NoEdns { ttl: 60 }).await;
    let (svc, _) = service(config(&[&up], &[]));
    let a = ask(
        &svc,
        &query("old.example.com.", RecordType::A, 1, Some((1232, false))),
        Protocol::Udp,
    )
    .await;
    assert_eq!(addresses(&a), vec!["10.0.0.1"]);
    assert!(a.edns.is_some(), "the client still gets our OPT");
    assert_eq!(up.queries(), 2);
}

#[tokio::test]
async fn waiting_queries_are_bounded_during_an_outage() {
    let up = TestUpstream::start(Mode::Silent).await;
    let mut cfg = config(&[&up], &[]);
    cfg.max_waiting_queries = 3;
    cfg.upstream_timeout = Duration::from_secs(2);
    let (svc, metrics) = service(cfg);
    let q = query("outage.example.com.", RecordType::A, 1, None);
    // Three waiters park on the one upstream query; the fourth is refused at once.
    let mut parked = Vec::new();
    let handle = |q: &[u8], out: &mut Vec<u8>| {
        svc.handle(
            q,
            Protocol::Udp,
            Instant::now(),
            &mut svc.shared_scratch("test", false),
            out,
        )
    };
    let mut out = Vec::new();
    for _ in 0..3 {
        match handle(&q, &mut out) {
            Handling::Resolve(p) => parked.push(tokio::spawn(p.resolve())),
            _ => panic!("expected to wait for upstream"),
        }
    }
    let fourth = match handle(&q, &mut out) {
        Handling::Reply => Message::from_vec(&out).unwrap(),
        _ => panic!("expected an immediate answer"),
    };
    assert_eq!(fourth.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(metrics.upstream_overload.get(), 1);
    // The scrape shows the bounds' counts as they are: three waiters, one exchange
    // (started once the first waiter's task runs).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = metrics.encode();
    assert_eq!(
        series_value(&text, "nldns_waiting_queries"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        series_value(&text, "nldns_upstream_in_flight"),
        Some(1.0),
        "{text}"
    );
    for p in parked {
        let r = Message::from_vec(&p.await.unwrap()).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    }
    let text = metrics.encode();
    assert_eq!(
        series_value(&text, "nldns_waiting_queries"),
        Some(0.0),
        "{text}"
    );
    // Slots are released once answered.
    assert!(matches!(
        handle(
            &query("after.example.com.", RecordType::A, 1, None),
            &mut out
        ),
        Handling::Resolve(_)
    ));
}

/// The value of the exposition line that starts with `series` (labels included).
fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The CoreDNS series count what a serving thread did, with CoreDNS's names and labels:
/// two misses (the second with DO set, another cache key) answered by the forwarder, a
/// hit answered by the cache, one FORMERR answered by the server itself.
#[tokio::test]
async fn coredns_series_count_udp_tcp_hits_misses_and_errors() {
    let up = TestUpstream::start(Mode::Answer {
        ttl: 300,
        records: 1,
    })
    .await;
    let mut cfg = config(&[&up], &[]);
    cfg.prefetch_percent = 0;
    let (svc, metrics) = service(cfg);
    let (addr, shutdown, server) = start_udp_threads(svc.clone(), 1);
    metrics.set_server_label(addr, "dns://10.96.0.10:53");
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = vec![0u8; 4096];
    for (id, q) in [
        (1, query("www.example.com.", RecordType::A, 1, None)),
        (
            2,
            query("www.example.com.", RecordType::A, 2, Some((1232, true))),
        ),
        (3, query("www.example.com.", RecordType::A, 3, None)),
    ] {
        client.send_to(&q, addr).await.unwrap();
        let (len, _) = tokio::time::timeout(PATIENCE, client.recv_from(&mut buf))
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(Message::from_vec(&buf[..len]).unwrap().metadata.id, id);
    }
    // A FORMERR: a header claiming a question that is not there.
    let mut bad = query("x.example.com.", RecordType::A, 4, None);
    bad.truncate(14);
    client.send_to(&bad, addr).await.unwrap();
    tokio::time::timeout(PATIENCE, client.recv_from(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    shutdown.cancel();
    server_ended(server).await;
    let text = metrics.encode();
    let s = r#"server="dns://10.96.0.10:53""#;
    let value = |series: String| series_value(&text, &series);
    assert_eq!(
        value(format!(
            r#"coredns_dns_requests_total{{{s},zone=".",proto="udp",family="1",type="A"}}"#
        )),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(format!(r#"coredns_dns_do_requests_total{{{s},zone="."}}"#)),
        Some(1.0)
    );
    assert_eq!(
        value(format!(
            r#"coredns_dns_responses_total{{{s},zone=".",rcode="NOERROR",plugin="forward"}}"#
        )),
        Some(2.0),
        "the misses were answered by the forwarder: {text}"
    );
    assert_eq!(
        value(format!(
            r#"coredns_dns_responses_total{{{s},zone=".",rcode="NOERROR",plugin="cache"}}"#
        )),
        Some(1.0)
    );
    assert_eq!(
        value(format!(
            r#"coredns_dns_responses_total{{{s},zone="dropped",rcode="FORMERR",plugin=""}}"#
        )),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(format!(
            r#"coredns_cache_hits_total{{{s},type="success",zones="."}}"#
        )),
        Some(1.0)
    );
    assert_eq!(
        value(format!(r#"coredns_cache_misses_total{{{s},zones="."}}"#)),
        Some(2.0)
    );
    assert_eq!(
        value(format!(r#"coredns_cache_requests_total{{{s},zones="."}}"#)),
        Some(3.0)
    );
    // Every answered query has a duration, CoreDNS's buckets, and a size.
    assert_eq!(
        value(format!(
            r#"coredns_dns_request_duration_seconds_count{{{s},zone=".",type="A"}}"#
        )),
        Some(3.0),
        "{text}"
    );
    let bucket = |le: &str| {
        format!(r#"coredns_dns_request_duration_seconds_bucket{{le="{le}",{s},zone=".",type="A"}}"#)
    };
    assert!(value(bucket("0.00025")).is_some(), "{text}");
    assert_eq!(value(bucket("+Inf")), Some(3.0), "{text}");
    assert_eq!(
        value(format!(
            r#"coredns_dns_response_size_bytes_count{{{s},zone=".",proto="udp"}}"#
        )),
        Some(3.0)
    );
    assert_eq!(
        value(r#"coredns_cache_entries{server="",type="success",zones="."}"#.into()),
        Some(2.0)
    );
    assert!(text.contains("coredns_build_info{version="), "{text}");
    assert!(
        text.contains(r#"coredns_proxy_request_duration_seconds_count{server="",to="127.0.0.1:"#)
    );
    assert!(
        !text.contains(".."),
        "no HELP text ends in two periods: {text}"
    );
}

/// A pod flooding new names of a zone whose upstream never answers ("water torture")
/// holds at most its own share of the miss path: its extra misses get SERVFAIL at
/// once, and another pod's new names still resolve.
#[tokio::test]
async fn flooding_client_cannot_starve_another_clients_new_names() {
    let silent = TestUpstream::start(Mode::Silent).await;
    let good = TestUpstream::start(Mode::Answer {
        ttl: 60,
        records: 1,
    })
    .await;
    let mut cfg = config(&[&good], &[]);
    cfg.stub_domains = vec![("tortured.test".into(), vec![silent.addr])];
    // The silent upstream's exchanges outlive the test: an answer means "at once".
    cfg.upstream_timeout = Duration::from_secs(60);
    cfg.max_upstream_in_flight = 20;
    cfg.max_waiting_queries = 40;
    cfg.max_upstream_in_flight_per_source = 5;
    cfg.max_waiting_queries_per_source = 10;
    let (svc, metrics) = service(cfg);
    let flooder: IpAddr = "10.244.1.7".parse().unwrap();
    let victim: IpAddr = "10.244.1.8".parse().unwrap();
    let flood_q = |i: usize| query(&format!("r{i}.tortured.test."), RecordType::A, 7, None);

    // The flooder's first misses take its 5 exchanges and wait on them.
    let mut hanging = Vec::new();
    for i in 0..5 {
        let svc = svc.clone();
        let q = flood_q(i);
        hanging.push(tokio::spawn(async move {
            svc.answer_from(&q, Protocol::Udp, Some(flooder)).await
        }));
    }
    let at = svc.misses.hasher.buckets(flooder);
    let waited = Instant::now();
    while svc.misses.source_exchanges.held(at) < 5 && waited.elapsed() < PATIENCE {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(svc.misses.source_exchanges.held(at), 5);

    // Every further new name of the flooder is answered at once: SERVFAIL, counted.
    let flood = 500;
    for i in 5..5 + flood {
        let reply = tokio::time::timeout(
            PATIENCE,
            svc.answer_from(&flood_q(i), Protocol::Udp, Some(flooder)),
        )
        .await
        .expect("a flooder over its quota is answered at once")
        .expect("an answer");
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    }
    assert_eq!(metrics.source_quota_rejects.get(), flood as u64);

    // Meanwhile the other pod's new names resolve, every one of them.
    for i in 0..100 {
        let q = query(&format!("n{i}.example.com."), RecordType::A, 9, None);
        let reply =
            tokio::time::timeout(PATIENCE, svc.answer_from(&q, Protocol::Udp, Some(victim)))
                .await
                .expect("answered in time")
                .expect("an answer");
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "name {i}"
        );
        assert_eq!(addresses(&reply), vec!["10.0.0.1"]);
    }
    assert_eq!(good.queries(), 100);

    // The bounds held: the silent upstream saw only the flooder's 5 exchanges.
    assert_eq!(
        svc.misses.counts.upstream_in_flight.load(Ordering::Acquire),
        5,
        "only the flooder's own exchanges are left in flight"
    );
    let waited = Instant::now();
    while silent.queries() < 5 && waited.elapsed() < PATIENCE {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(silent.queries(), 5);
    assert_eq!(metrics.upstream_overload.get(), 0);
    for h in hanging {
        h.abort();
    }
}

/// Joining an exchange already in flight starts nothing, but still holds one of the
/// client's waiters: past `max_waiting_queries_per_source` the client gets SERVFAIL at
/// once, another client can still join, and every charge is given back.
#[tokio::test]
async fn coalesced_waiters_count_against_their_own_client() {
    let silent = TestUpstream::start(Mode::Silent).await;
    let mut cfg = config(&[&silent], &[]);
    cfg.upstream_timeout = Duration::from_secs(60);
    cfg.max_upstream_in_flight_per_source = 1;
    cfg.max_waiting_queries_per_source = 4;
    let (svc, metrics) = service(cfg);
    let a: IpAddr = "10.244.2.1".parse().unwrap();
    let b: IpAddr = "fd00::2:2".parse().unwrap();
    let q = query("same.example.com.", RecordType::A, 3, None);
    let mut scratch = svc.shared_scratch("dns://:53", false);
    let mut out = Vec::new();
    let mut pending = Vec::new();
    let (mut waiting, mut refused) = (0, 0);
    for client in [a; 10].into_iter().chain([b; 2]) {
        scratch.set_client(Some(client));
        match svc.handle(&q, Protocol::Udp, Instant::now(), &mut scratch, &mut out) {
            Handling::Resolve(p) => {
                waiting += 1;
                pending.push(tokio::spawn(p.resolve()));
            }
            Handling::Reply => {
                refused += 1;
                let reply = Message::from_vec(&out).unwrap();
                assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
            }
            Handling::Drop => panic!("a valid query"),
        }
    }
    // a: 4 waiters, 6 refused at once; b: both of its waiters.
    assert_eq!((waiting, refused), (6, 6));
    assert_eq!(metrics.source_quota_rejects.get(), 6);
    let waited = Instant::now();
    while silent.queries() < 1 && waited.elapsed() < PATIENCE {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // One exchange for all of them.
    assert_eq!(silent.queries(), 1);
    assert_eq!(
        svc.misses.counts.upstream_in_flight.load(Ordering::Acquire),
        1
    );
    for p in pending {
        p.abort();
        let _ = p.await;
    }
    // Aborted waiters gave their charges back; the exchange still holds a's.
    let (at_a, at_b) = (svc.misses.hasher.buckets(a), svc.misses.hasher.buckets(b));
    assert_eq!(svc.misses.source_waiters.held(at_a), 0);
    assert_eq!(svc.misses.source_waiters.held(at_b), 0);
    assert_eq!(svc.misses.counts.waiting_queries.load(Ordering::Acquire), 0);
    assert!(svc.misses.source_exchanges.held(at_a) <= 1);
}

/// The node-wide upstream rate bound: exchanges started beyond it get SERVFAIL at
/// once, counted; the upstream never sees more than the bound allows.
#[tokio::test]
async fn upstream_query_rate_is_bounded() {
    let up = TestUpstream::start(Mode::Answer {
        ttl: 60,
        records: 1,
    })
    .await;
    let mut cfg = config(&[&up], &[]);
    cfg.max_upstream_qps = 2;
    let (svc, metrics) = service(cfg);
    let started = Instant::now();
    let total: u32 = 20;
    let mut answered: u32 = 0;
    for i in 0..total {
        // A different client each time: no per-source quota is involved.
        let client = IpAddr::from([10, 244, 3, i as u8]);
        let q = query(&format!("q{i}.example.com."), RecordType::A, 1, None);
        let reply =
            tokio::time::timeout(PATIENCE, svc.answer_from(&q, Protocol::Udp, Some(client)))
                .await
                .expect("answered in time")
                .expect("an answer");
        let reply = Message::from_vec(&reply).unwrap();
        match reply.metadata.response_code {
            ResponseCode::NoError => answered += 1,
            code => assert_eq!(code, ResponseCode::ServFail),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // A burst of one second's worth, then `max_upstream_qps` per second.
    let allowed = 2.0 + 2.0 * elapsed;
    assert!(f64::from(answered) <= allowed, "{answered} > {allowed}");
    assert!(answered >= 2);
    assert_eq!(up.queries(), answered as usize);
    assert_eq!(
        metrics.upstream_rate_limited.get(),
        u64::from(total - answered)
    );
}

/// The per-source rate bound: one client asking new names of a fast upstream gets
/// SERVFAIL at once past its own rate (counted as a quota reject), while another
/// client's new names, in the same second, still resolve.
#[tokio::test]
async fn one_client_cannot_use_up_the_upstream_rate() {
    let up = TestUpstream::start(Mode::Answer {
        ttl: 60,
        records: 1,
    })
    .await;
    let mut cfg = config(&[&up], &[]);
    cfg.max_upstream_qps = 0;
    cfg.max_upstream_qps_per_source = 3;
    let (svc, metrics) = service(cfg);
    let flooder: IpAddr = "10.244.4.1".parse().unwrap();
    let other: IpAddr = "10.244.4.2".parse().unwrap();
    let ask_as = |client: IpAddr, name: String| {
        let svc = svc.clone();
        async move {
            let q = query(&name, RecordType::A, 1, None);
            let reply =
                tokio::time::timeout(PATIENCE, svc.answer_from(&q, Protocol::Udp, Some(client)))
                    .await
                    .expect("answered in time")
                    .expect("an answer");
            Message::from_vec(&reply).unwrap().metadata.response_code
        }
    };
    let started = Instant::now();
    let total: u32 = 30;
    let mut answered: u32 = 0;
    for i in 0..total {
        match ask_as(flooder, format!("r{i}.example.com.")).await {
            ResponseCode::NoError => answered += 1,
            code => assert_eq!(code, ResponseCode::ServFail),
        }
    }
    for i in 0..3 {
        let code = ask_as(other, format!("o{i}.example.com.")).await;
        assert_eq!(code, ResponseCode::NoError, "the other client's name {i}");
    }
    // Fixed one-second windows: 3 in each window the flood touched.
    let windows = started.elapsed().as_secs_f64().ceil() + 1.0;
    assert!(answered >= 3);
    assert!(
        f64::from(answered) <= 3.0 * windows,
        "{answered} in {windows} windows"
    );
    assert_eq!(
        metrics.source_quota_rejects.get(),
        u64::from(total - answered)
    );
    assert_eq!(up.queries(), (answered + 3) as usize);
}

/// Forged replies during a burst of misses: the "upstream" here is the test's own
/// socket, so it knows every exchange's source port and ID; from another socket it
/// fires forgeries at exactly those ports (random IDs, and the true ID too, all
/// answering 6.6.6.6) before the real answers; and from the upstream's own socket
/// (right source, right port, right ID) with the question's letters in the other case.
/// None may be taken: the exchange sockets are connected (the kernel drops datagrams
/// from any other source), and the ID and the question, letter case included (0x20),
/// must match.
#[tokio::test]
async fn forged_replies_to_the_exchange_ports_are_never_cached() {
    let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let forger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = DnsConfig {
        default_upstreams: vec![upstream.local_addr().unwrap()],
        min_ttl: Duration::ZERO,
        upstream_timeout: Duration::from_secs(30),
        upstream_attempts: 1,
        ..DnsConfig::default()
    };
    cfg.max_upstream_qps = 0;
    let (svc, _) = service(cfg);
    // Five bursts of 40 misses, 5,000 forgeries at each exchange: 1,000,000 in all,
    // in bursts short enough for the clients' patience on a loaded machine.
    const BURSTS: usize = 5;
    const ROUNDS: usize = 5_000;
    let mut forged = 0usize;
    for burst in 0..BURSTS {
        let names = 40;
        let mut clients = Vec::new();
        for i in 0..names {
            let svc = svc.clone();
            let q = query(
                &format!("f{burst}-{i}.example.com."),
                RecordType::A,
                5,
                None,
            );
            clients.push(tokio::spawn(
                async move { ask(&svc, &q, Protocol::Udp).await },
            ));
        }
        // The burst's upstream queries: who asked (port) and with which ID.
        let mut asked = Vec::new();
        let mut buf = vec![0u8; 65535];
        while asked.len() < names {
            let (len, peer) = tokio::time::timeout(PATIENCE, upstream.recv_from(&mut buf))
                .await
                .expect("the misses reach upstream")
                .unwrap();
            asked.push((Message::from_vec(&buf[..len]).unwrap(), peer));
        }
        let reply_to = |q: &Message, id: u16, addr: [u8; 4]| {
            let mut r = Message::response(id, q.metadata.op_code);
            r.metadata.recursion_desired = true;
            r.metadata.recursion_available = true;
            r.add_query(q.queries[0].clone());
            r.add_answer(hickory_proto::rr::Record::from_rdata(
                q.queries[0].name().clone(),
                60,
                RData::A(std::net::Ipv4Addr::from(addr).into()),
            ));
            r.to_vec().unwrap()
        };
        let wrong_case_from_upstream = |q: &Message| {
            let mut asked = q.clone();
            asked.queries[0].set_name(flip_case(q.queries[0].name()));
            let mut r = Message::response(q.metadata.id, q.metadata.op_code);
            r.metadata.recursion_desired = true;
            r.metadata.recursion_available = true;
            r.add_query(asked.queries[0].clone());
            r.add_answer(hickory_proto::rr::Record::from_rdata(
                asked.queries[0].name().clone(),
                60,
                RData::A(std::net::Ipv4Addr::new(6, 6, 6, 6).into()),
            ));
            r.to_vec().unwrap()
        };
        for round in 0..ROUNDS {
            for (q, port) in &asked {
                if round % 1000 == 1 {
                    // Source, port and ID right, letter case wrong: 0x20 alone stops it.
                    upstream
                        .send_to(&wrong_case_from_upstream(q), port)
                        .await
                        .unwrap();
                    forged += 1;
                    continue;
                }
                // Every 100th carries the true ID: the source check alone must stop it.
                let id = if round % 100 == 0 {
                    q.metadata.id
                } else {
                    rand::random()
                };
                forger
                    .send_to(&reply_to(q, id, [6, 6, 6, 6]), port)
                    .await
                    .unwrap();
                forged += 1;
            }
            if round % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(forged, (burst + 1) * names * ROUNDS);
        for (q, port) in &asked {
            let real = reply_to(q, q.metadata.id, [10, 0, 0, 1]);
            upstream.send_to(&real, port).await.unwrap();
        }
        for client in clients {
            assert_eq!(addresses(&client.await.unwrap()), vec!["10.0.0.1"]);
        }
        // And the cache holds the real answers only.
        let mut cached_forgeries = 0;
        for i in 0..names {
            let q = query(
                &format!("f{burst}-{i}.example.com."),
                RecordType::A,
                6,
                None,
            );
            let got = addresses(&ask(&svc, &q, Protocol::Udp).await);
            cached_forgeries += usize::from(got != vec!["10.0.0.1"]);
        }
        assert_eq!(cached_forgeries, 0, "of {forged} forged replies");
    }
    assert_eq!(forged, 1_000_000);
}
