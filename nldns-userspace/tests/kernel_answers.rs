//! The kernel responder (`nldns_answer`) against the engine's own renderer, frame by frame,
//! with BPF_PROG_TEST_RUN: for a corpus of cached answers and of queries, the frame the
//! kernel returns must equal, byte for byte, the frame built around the bytes
//! `wire::render_answer` produces for the same entry at the same moment (checked with
//! etherparse, checksums included); every query the kernel must leave to the agent comes
//! out exactly as the plain ingress program (`nldns_ingress`) leaves it.
//!
//! Needs root (CAP_BPF): in CI a missing privilege fails the test; elsewhere it skips.

mod support;

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::programs::{TestRun, TestRunOptions};
use etherparse::{NetHeaders, PacketBuilder, PacketHeaders, TransportHeader, VlanId};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use nldns::datapath::{
    answers::{AnswerRedirect, KernelAnswerMap, KernelAnswersMode},
    endpoint::InterceptEndpoint,
    loader::{Datapath, DatapathSettings},
};
use nldns_dns::answer::{prepare, TtlPolicy};
use nldns_dns::cache::{answer_key, kernel_entry, CachedAnswer, KeyRef};
use nldns_dns::kernel_answers::AnswerTable;
use nldns_dns::wire::{self, TtlPatch};
use socket2::Socket;
use support::{
    bind_agent_sockets, enter_private_netns, have_privileges, CLIENT_PORT, KUBE_DNS_V4,
    KUBE_DNS_V6, NODE_MAC, POD_MAC, POD_V4, POD_V6,
};

const TC_ACT_UNSPEC: u32 = u32::MAX;
const TC_ACT_REDIRECT: u32 = 7;
/// How long before the corpus is built its entries were stored: their TTLs have counted
/// down by several seconds when the cases run.
const AGE: Duration = Duration::from_millis(7_300);

struct Programs {
    /// With kernel answers (the program under test) ...
    answering: Datapath,
    table: Arc<KernelAnswerMap>,
    /// ... and without: what a query the kernel passes must look like.
    plain: Datapath,
    endpoint: InterceptEndpoint,
    _agent_sockets: Vec<Socket>,
}

impl Programs {
    fn load() -> Programs {
        enter_private_netns();
        let endpoint = InterceptEndpoint::default();
        let settings = |kernel_answers| DatapathSettings {
            service_ips: vec![IpAddr::V4(KUBE_DNS_V4), IpAddr::V6(KUBE_DNS_V6)],
            endpoint,
            heartbeat_max_age: Duration::from_secs(5),
            log_level: 0,
            netns_cookie: 0,
            pod_hooks: false,
            kernel_answers,
            answer_redirect: AnswerRedirect::Peer,
            answer_entries: 64,
        };
        let mut answering = Datapath::load(&settings(KernelAnswersMode::On))
            .expect("the answering datapath loads and passes the verifier");
        let mut plain = Datapath::load(&settings(KernelAnswersMode::Off)).unwrap();
        answering.beat().unwrap();
        plain.beat().unwrap();
        let table = answering.answer_table().expect("kernel answers are on");
        Programs {
            answering,
            table,
            plain,
            endpoint,
            _agent_sockets: bind_agent_sockets(&endpoint, true),
        }
    }

    fn run(datapath: &mut Datapath, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 2048];
        let result = datapath
            .program_mut(program)
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat: 1,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn answer(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        Self::run(&mut self.answering, "nldns_answer", frame)
    }

    /// [`Self::answer`] for a query of `answer`'s entry, with the whole seconds the entry
    /// had spent in the cache when the kernel ran: a run that straddles a second's change
    /// (the engine's clock, read before and after) is repeated, so the oracle can be asked
    /// for the same moment. (The 6.1 VM under TCG runs the corpus slowly enough to cross
    /// several seconds.)
    fn answer_aged(&mut self, frame: &[u8], answer: &CachedAnswer) -> (u32, Vec<u8>, u32) {
        loop {
            let before = answer.elapsed_secs(Instant::now());
            let (verdict, out) = self.answer(frame);
            if answer.elapsed_secs(Instant::now()) == before {
                return (verdict, out, before);
            }
        }
    }

    fn plain(&mut self, frame: &[u8]) -> Vec<u8> {
        let (verdict, out) = Self::run(&mut self.plain, "nldns_ingress", frame);
        assert_eq!(verdict, TC_ACT_UNSPEC);
        out
    }

    fn counter(&self, name: &str) -> u64 {
        self.answering
            .counters()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .unwrap()
    }

    /// Publishes `answer` for `query`'s key as the cache would, stored `AGE` ago and
    /// answered by the kernel until `until` from now.
    fn publish(&self, query: &[u8], answer: &CachedAnswer, until: Duration) {
        let (key_name, info) = parse(query);
        let key = KeyRef::of_query(&key_name, &info);
        let entry = kernel_entry(key, answer, Instant::now() + until, 3)
            .expect("the corpus fits the kernel's entry");
        self.table
            .publish(&answer_key(key).unwrap(), &entry)
            .unwrap();
    }
}

fn parse(query: &[u8]) -> (Vec<u8>, wire::QueryInfo) {
    let mut name = Vec::new();
    let info = wire::parse_query(query, &mut name).expect("a valid query");
    (name, info)
}

/// A cached answer as the miss path stores it (`answer::prepare` on an upstream reply).
fn cached(
    name: &str,
    qtype: RecordType,
    rcode: ResponseCode,
    records: Vec<Record>,
    authority: Vec<Record>,
) -> Arc<CachedAnswer> {
    let mut msg = Message::new(0, MessageType::Response, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.metadata.recursion_available = true;
    msg.metadata.authentic_data = true;
    msg.metadata.response_code = rcode;
    msg.add_query(Query::query(Name::from_str(name).unwrap(), qtype));
    msg.add_answers(records);
    msg.add_authorities(authority);
    let policy = TtlPolicy {
        min_ttl: 0,
        max_ttl: 3600,
        negative_max_ttl: 3600,
        servfail_ttl: 5,
    };
    prepare(msg, &policy, Instant::now() - AGE)
        .expect("the corpus encodes")
        .answer
}

fn record(name: &str, ttl: u32, data: RData) -> Record {
    Record::from_rdata(Name::from_str(name).unwrap(), ttl, data)
}

fn soa(zone: &str) -> Record {
    record(
        zone,
        300,
        RData::SOA(SOA::new(
            Name::from_str("ns.dns.cluster.local.").unwrap(),
            Name::from_str("hostmaster.cluster.local.").unwrap(),
            1,
            7200,
            1800,
            86400,
            30,
        )),
    )
}

/// The corpus of cached answers: (name as the client spells it, qtype, answer).
fn corpus() -> Vec<(&'static str, RecordType, Arc<CachedAnswer>)> {
    let svc = "web.default.svc.cluster.local.";
    let a = |i: u8| record(svc, 30, RData::A(A::new(10, 0, 0, i)));
    vec![
        (
            "Web.Default.svc.cluster.LOCAL.",
            RecordType::A,
            cached(
                svc,
                RecordType::A,
                ResponseCode::NoError,
                vec![a(1), a(2)],
                vec![],
            ),
        ),
        (
            "web.default.svc.cluster.local.",
            RecordType::AAAA,
            cached(
                svc,
                RecordType::AAAA,
                ResponseCode::NoError,
                vec![record(
                    svc,
                    30,
                    RData::AAAA(AAAA::from_str("fd00::1").unwrap()),
                )],
                vec![],
            ),
        ),
        (
            "_HTTP._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
            cached(
                "_http._tcp.web.default.svc.cluster.local.",
                RecordType::SRV,
                ResponseCode::NoError,
                vec![record(
                    "_http._tcp.web.default.svc.cluster.local.",
                    30,
                    RData::SRV(SRV::new(0, 100, 80, Name::from_str(svc).unwrap())),
                )],
                vec![],
            ),
        ),
        (
            "10.0.96.10.IN-ADDR.arpa.",
            RecordType::PTR,
            cached(
                "10.0.96.10.in-addr.arpa.",
                RecordType::PTR,
                ResponseCode::NoError,
                vec![record(
                    "10.0.96.10.in-addr.arpa.",
                    30,
                    RData::PTR(PTR(Name::from_str(
                        "kube-dns.kube-system.svc.cluster.local.",
                    )
                    .unwrap())),
                )],
                vec![],
            ),
        ),
        (
            "txt.example.com.",
            RecordType::TXT,
            cached(
                "txt.example.com.",
                RecordType::TXT,
                ResponseCode::NoError,
                vec![record(
                    "txt.example.com.",
                    120,
                    RData::TXT(TXT::new(vec!["v=spf1 -all".into(), "x".repeat(60)])),
                )],
                vec![],
            ),
        ),
        (
            "WWW.example.com.",
            RecordType::A,
            cached(
                "www.example.com.",
                RecordType::A,
                ResponseCode::NoError,
                vec![
                    record(
                        "www.example.com.",
                        300,
                        RData::CNAME(CNAME(Name::from_str("edge.example.net.").unwrap())),
                    ),
                    record(
                        "edge.example.net.",
                        60,
                        RData::CNAME(CNAME(Name::from_str("pop1.edge.example.net.").unwrap())),
                    ),
                    record("pop1.edge.example.net.", 20, RData::A(A::new(192, 0, 2, 7))),
                ],
                vec![],
            ),
        ),
        (
            "nope.default.svc.cluster.local.",
            RecordType::A,
            cached(
                "nope.default.svc.cluster.local.",
                RecordType::A,
                ResponseCode::NXDomain,
                vec![],
                vec![soa("cluster.local.")],
            ),
        ),
        (
            "web.default.svc.cluster.local.",
            RecordType::MX,
            cached(
                svc,
                RecordType::MX,
                ResponseCode::NoError,
                vec![],
                vec![soa("cluster.local.")],
            ),
        ),
        (
            // 16 A records: a 256-byte body, the largest the kernel's entry holds; an
            // odd-length name puts it at an odd offset.
            "big.default.svc.cluster.local.",
            RecordType::A,
            cached(
                "big.default.svc.cluster.local.",
                RecordType::A,
                ResponseCode::NoError,
                (1..=16)
                    .map(|i| {
                        record(
                            "big.default.svc.cluster.local.",
                            30,
                            RData::A(A::new(10, 1, 0, i)),
                        )
                    })
                    .collect(),
                vec![],
            ),
        ),
        (
            "even.svc.cluster.local.",
            RecordType::A,
            cached(
                "even.svc.cluster.local.",
                RecordType::A,
                ResponseCode::NoError,
                vec![record(
                    "even.svc.cluster.local.",
                    5,
                    RData::A(A::new(10, 2, 0, 1)),
                )],
                vec![],
            ),
        ),
    ]
}

/// A query in wire form. `opt`: (UDP size, DO).
fn query_bytes(
    id: u16,
    flags: u16,
    name: &str,
    qtype: RecordType,
    opt: Option<(u16, bool)>,
) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&flags.to_be_bytes());
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(opt.is_some())]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&u16::from(qtype).to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    if let Some((size, dnssec_ok)) = opt {
        q.push(0);
        q.extend_from_slice(&41u16.to_be_bytes());
        q.extend_from_slice(&size.to_be_bytes());
        q.extend_from_slice(&[0, 0, if dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    }
    q
}

/// Where a query goes: the Service IP (the TC path) or the intercept endpoint's pod-socket
/// port (a query the pods' socket hooks already redirected).
#[derive(Clone, Copy, Debug)]
enum Form {
    ServiceV4,
    ServiceV6,
    PodSocketV4,
    PodSocketV6,
}

fn frame(form: Form, endpoint: &InterceptEndpoint, payload: &[u8]) -> Vec<u8> {
    let pod_port = endpoint.base_port + nldns_common::POD_SOCKET_PORTS;
    let eth = PacketBuilder::ethernet2(POD_MAC, NODE_MAC);
    let mut out = Vec::new();
    match form {
        Form::ServiceV4 => eth
            .ipv4(POD_V4.octets(), KUBE_DNS_V4.octets(), 64)
            .udp(CLIENT_PORT, 53)
            .write(&mut out, payload),
        Form::ServiceV6 => eth
            .ipv6(POD_V6.octets(), KUBE_DNS_V6.octets(), 64)
            .udp(CLIENT_PORT, 53)
            .write(&mut out, payload),
        Form::PodSocketV4 => eth
            .ipv4(POD_V4.octets(), endpoint.v4.octets(), 64)
            .udp(CLIENT_PORT, pod_port)
            .write(&mut out, payload),
        Form::PodSocketV6 => eth
            .ipv6(POD_V6.octets(), endpoint.v6.octets(), 64)
            .udp(CLIENT_PORT, pod_port + 1)
            .write(&mut out, payload),
    }
    .unwrap();
    out
}

/// The reply frame the agent's path would deliver: the query's frame turned around, with
/// `payload`, checksums computed by etherparse.
fn expected_reply(form: Form, endpoint: &InterceptEndpoint, payload: &[u8]) -> Vec<u8> {
    let pod_port = endpoint.base_port + nldns_common::POD_SOCKET_PORTS;
    let eth = PacketBuilder::ethernet2(NODE_MAC, POD_MAC);
    let mut out = Vec::new();
    match form {
        Form::ServiceV4 => eth
            .ipv4(KUBE_DNS_V4.octets(), POD_V4.octets(), 64)
            .udp(53, CLIENT_PORT)
            .write(&mut out, payload),
        Form::ServiceV6 => eth
            .ipv6(KUBE_DNS_V6.octets(), POD_V6.octets(), 64)
            .udp(53, CLIENT_PORT)
            .write(&mut out, payload),
        Form::PodSocketV4 => eth
            .ipv4(endpoint.v4.octets(), POD_V4.octets(), 64)
            .udp(pod_port, CLIENT_PORT)
            .write(&mut out, payload),
        Form::PodSocketV6 => eth
            .ipv6(endpoint.v6.octets(), POD_V6.octets(), 64)
            .udp(pod_port + 1, CLIENT_PORT)
            .write(&mut out, payload),
    }
    .unwrap();
    out
}

/// Checks every checksum of `frame` independently of the code under test.
fn assert_checksums(frame: &[u8]) {
    let headers = PacketHeaders::from_ethernet_slice(frame).expect("the frame parses");
    let payload = headers.payload.slice();
    match (headers.net.unwrap(), headers.transport.unwrap()) {
        (NetHeaders::Ipv4(ip, _), TransportHeader::Udp(udp)) => {
            assert_eq!(
                ip.header_checksum,
                ip.calc_header_checksum(),
                "IPv4 header checksum"
            );
            if udp.checksum != 0 {
                assert_eq!(
                    udp.checksum,
                    udp.calc_checksum_ipv4(&ip, payload).unwrap(),
                    "UDP checksum"
                );
            }
        }
        (NetHeaders::Ipv6(ip, _), TransportHeader::Udp(udp)) => {
            assert_eq!(
                udp.checksum,
                udp.calc_checksum_ipv6(&ip, payload).unwrap(),
                "UDP checksum"
            );
        }
        other => panic!("not UDP over IP: {other:?}"),
    }
}

/// The engine's answer for `query` from `answer` after `elapsed` seconds in the cache.
fn oracle(query: &[u8], answer: &CachedAnswer, elapsed: u32) -> Vec<u8> {
    let (_, info) = parse(query);
    let mut out = Vec::new();
    wire::render_answer(
        &mut out,
        answer.wire(),
        answer.ttl_offsets(),
        query,
        &info,
        TtlPatch::CountDown(elapsed),
    );
    assert!(out.len() <= info.udp_limit(), "the corpus fits UDP");
    out
}

#[test]
fn kernel_answers_equal_the_agents_byte_for_byte() {
    if !have_privileges("kernel_answers_equal_the_agents_byte_for_byte") {
        return;
    }
    let mut p = Programs::load();
    let ep = p.endpoint;
    // Query variants: RD on or off, AD asked, CD set, with and without EDNS, DO, a tiny
    // and a huge advertised size.
    let variants: [(u16, Option<(u16, bool)>); 6] = [
        (0x0100, None),
        (0x0000, None),
        (0x0120, Some((1232, false))),
        (0x0100, Some((4096, true))),
        (0x0110, Some((512, false))),
        (0x0100, Some((65535, true))),
    ];
    let mut answered = 0;
    for (i, (name, qtype, answer)) in corpus().into_iter().enumerate() {
        for (v, &(flags, opt)) in variants.iter().enumerate() {
            for form in [
                Form::ServiceV4,
                Form::ServiceV6,
                Form::PodSocketV4,
                Form::PodSocketV6,
            ] {
                let id = 0x1000 + (i * 64 + v * 4) as u16;
                let query = query_bytes(id, flags, name, qtype, opt);
                p.publish(&query, &answer, Duration::from_secs(60));
                let (verdict, out, elapsed) = p.answer_aged(&frame(form, &ep, &query), &answer);
                let what = format!("{name} {qtype:?} flags {flags:#06x} opt {opt:?} {form:?}");
                assert_eq!(verdict, TC_ACT_REDIRECT, "{what}: answered and sent back");
                assert!(elapsed >= 7, "{what}: counted down from its age");
                assert_checksums(&out);
                let want = expected_reply(form, &ep, &oracle(&query, &answer, elapsed));
                assert_eq!(out, want, "{what}: the agent's answer, byte for byte");
                answered += 1;
            }
        }
    }
    assert_eq!(p.counter("kernel_answers"), answered);
    assert_eq!(p.counter("kernel_answer_errors"), 0);
}

#[test]
fn an_ipv4_query_without_udp_checksum_gets_an_answer_without_one() {
    if !have_privileges("an_ipv4_query_without_udp_checksum_gets_an_answer_without_one") {
        return;
    }
    let mut p = Programs::load();
    let ep = p.endpoint;
    let (name, qtype, answer) = corpus().remove(0);
    let query = query_bytes(7, 0x0100, name, qtype, Some((1232, false)));
    p.publish(&query, &answer, Duration::from_secs(60));
    let mut frame = frame(Form::ServiceV4, &ep, &query);
    // UDP checksum at 14 (Ethernet) + 20 (IPv4) + 6.
    frame[40..42].copy_from_slice(&[0, 0]);
    let (verdict, out, elapsed) = p.answer_aged(&frame, &answer);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[40..42], &[0, 0], "no checksum in, none out");
    let mut want = expected_reply(Form::ServiceV4, &ep, &oracle(&query, &answer, elapsed));
    want[40..42].copy_from_slice(&[0, 0]);
    assert_eq!(out, want);
}

#[test]
fn what_the_kernel_cannot_answer_exactly_goes_on_as_without_it() {
    if !have_privileges("what_the_kernel_cannot_answer_exactly_goes_on_as_without_it") {
        return;
    }
    let mut p = Programs::load();
    let ep = p.endpoint;
    let (name, qtype, answer) = corpus().remove(0);
    let published = query_bytes(9, 0x0100, name, qtype, Some((1232, false)));
    p.publish(&published, &answer, Duration::from_secs(60));
    let with = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut q = published.clone();
        edit(&mut q);
        q
    };
    let qname_end = 12 + name.len() + 1;
    let long_name = format!("{}.svc.cluster.local.", "a23456789.".repeat(12));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "no entry (other name)",
            query_bytes(
                9,
                0x0100,
                "other.default.svc.cluster.local.",
                qtype,
                Some((1232, false)),
            ),
            "kernel_pass_no_entry",
        ),
        (
            "no entry (DO set: another key)",
            query_bytes(9, 0x0100, name, qtype, Some((1232, true))),
            "kernel_pass_no_entry",
        ),
        (
            "EDNS option (cookie)",
            with(&|q| {
                let n = q.len();
                q[n - 2..].copy_from_slice(&12u16.to_be_bytes());
                q.extend_from_slice(&[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
            }),
            "kernel_pass_query",
        ),
        (
            "EDNS version 1",
            with(&|q| {
                let n = q.len();
                q[n - 5] = 1;
            }),
            "kernel_pass_query",
        ),
        (
            "opcode NOTIFY",
            with(&|q| q[2] |= 4 << 3),
            "kernel_pass_query",
        ),
        ("a response", with(&|q| q[2] |= 0x80), "kernel_pass_query"),
        ("QDCOUNT 2", with(&|q| q[5] = 2), "kernel_pass_query"),
        ("ANCOUNT 1", with(&|q| q[7] = 1), "kernel_pass_query"),
        (
            "class CH",
            with(&|q| q[qname_end + 3] = 3),
            "kernel_pass_query",
        ),
        (
            "ANY",
            with(&|q| q[qname_end + 1] = 255),
            "kernel_pass_query",
        ),
        (
            "AXFR",
            with(&|q| q[qname_end + 1] = 252),
            "kernel_pass_query",
        ),
        (
            "IXFR",
            with(&|q| q[qname_end + 1] = 251),
            "kernel_pass_query",
        ),
        (
            "compression pointer in the question",
            {
                let mut q = published[..12].to_vec();
                q.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
                q
            },
            "kernel_pass_query",
        ),
        (
            "name longer than the key",
            query_bytes(9, 0x0100, &long_name, qtype, None),
            "kernel_pass_query",
        ),
        ("trailing bytes", with(&|q| q.push(0)), "kernel_pass_query"),
        ("truncated", published[..20].to_vec(), "kernel_pass_query"),
    ];
    for (what, query, counter) in cases {
        for form in [Form::ServiceV4, Form::ServiceV6, Form::PodSocketV4] {
            let before = p.counter(counter);
            let frame = frame(form, &ep, &query);
            let (verdict, out) = p.answer(&frame);
            assert_eq!(verdict, TC_ACT_UNSPEC, "{what} {form:?}: not answered");
            let want = match form {
                // A query to the Service IP is redirected to the agent, as without kernel
                // answers; one already addressed to the agent goes on untouched.
                Form::ServiceV4 | Form::ServiceV6 => p.plain(&frame),
                _ => frame.clone(),
            };
            assert_eq!(out, want, "{what} {form:?}: as without kernel answers");
            assert_eq!(
                p.counter(counter),
                before + 1,
                "{what} {form:?}: counted as {counter}"
            );
        }
    }
    // Frames, not queries: a VLAN tag (answered by the agent: the pod would need the tag
    // back) and an IP fragment (never touched, as by the plain program).
    let mut tagged = Vec::new();
    PacketBuilder::ethernet2(POD_MAC, NODE_MAC)
        .single_vlan(VlanId::try_new(7).unwrap())
        .ipv4(POD_V4.octets(), KUBE_DNS_V4.octets(), 64)
        .udp(CLIENT_PORT, 53)
        .write(&mut tagged, &published)
        .unwrap();
    let mut fragment = frame(Form::ServiceV4, &ep, &published);
    fragment[14 + 6] |= 0x20; // more fragments
    for (what, frame, counter) in [
        ("VLAN tag", tagged, "kernel_pass_query"),
        ("IP fragment", fragment, "fragments_passed"),
    ] {
        let before = p.counter(counter);
        let (verdict, out) = p.answer(&frame);
        assert_eq!(verdict, TC_ACT_UNSPEC, "{what}: not answered");
        assert_eq!(out, p.plain(&frame), "{what}: as without kernel answers");
        assert_eq!(
            p.counter(counter),
            before + 1,
            "{what}: counted as {counter}"
        );
    }
    assert_eq!(p.counter("kernel_answers"), 0);
}

#[test]
fn entries_at_their_end_or_due_for_prefetch_go_to_the_agent() {
    if !have_privileges("entries_at_their_end_or_due_for_prefetch_go_to_the_agent") {
        return;
    }
    let mut p = Programs::load();
    let ep = p.endpoint;
    let (name, qtype, answer) = corpus().remove(0);
    let query = query_bytes(11, 0x0100, name, qtype, None);
    let frame = frame(Form::ServiceV4, &ep, &query);
    p.publish(&query, &answer, Duration::from_secs(60));
    assert_eq!(p.answer(&frame).0, TC_ACT_REDIRECT);
    // The cache's deadline for the kernel has passed: the agent decides now.
    p.publish(&query, &answer, Duration::ZERO);
    let (verdict, out) = p.answer(&frame);
    assert_eq!(verdict, TC_ACT_UNSPEC);
    assert_eq!(out, p.plain(&frame));
    assert_eq!(p.counter("kernel_pass_expiring"), 1);
    // Withdrawn: a miss for the kernel.
    let (key_name, info) = parse(&query);
    p.table
        .withdraw(&answer_key(KeyRef::of_query(&key_name, &info)).unwrap());
    assert_eq!(p.answer(&frame).0, TC_ACT_UNSPEC);
    assert_eq!(p.counter("kernel_pass_no_entry"), 1);
}

#[test]
fn answers_are_counted_per_entry_and_family() {
    if !have_privileges("answers_are_counted_per_entry_and_family") {
        return;
    }
    let mut p = Programs::load();
    let ep = p.endpoint;
    let (name, qtype, answer) = corpus().remove(0);
    let query = query_bytes(12, 0x0100, name, qtype, None);
    p.publish(&query, &answer, Duration::from_secs(60));
    let before = p.table.hits(3);
    for form in [
        Form::ServiceV4,
        Form::ServiceV4,
        Form::ServiceV6,
        Form::PodSocketV6,
        Form::PodSocketV4,
    ] {
        assert_eq!(p.answer(&frame(form, &ep, &query)).0, TC_ACT_REDIRECT);
    }
    let after = p.table.hits(3);
    assert_eq!((after.v4 - before.v4, after.v6 - before.v6), (3, 2));
}

/// What is not DNS for nldns leaves the answering program untouched and counted as
/// passed, as it leaves nldns_ingress: most of it at the program's first look.
#[test]
fn non_dns_frames_pass_untouched() {
    if !have_privileges("non_dns_frames_pass_untouched") {
        return;
    }
    let mut p = Programs::load();
    let eth = || PacketBuilder::ethernet2(POD_MAC, NODE_MAC);
    let mut frames: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut push = |what, build: &dyn Fn(&mut Vec<u8>)| {
        let mut out = Vec::new();
        build(&mut out);
        frames.push((what, out));
    };
    push("TCP to :80", &|out| {
        eth()
            .ipv4(POD_V4.octets(), [10, 244, 2, 3], 64)
            .tcp(CLIENT_PORT, 80, 1, 64000)
            .write(out, b"GET /")
            .unwrap()
    });
    push("UDP to :123", &|out| {
        eth()
            .ipv4(POD_V4.octets(), [10, 244, 2, 3], 64)
            .udp(CLIENT_PORT, 123)
            .write(out, &[0; 48])
            .unwrap()
    });
    push("IPv6 TCP to :443", &|out| {
        eth()
            .ipv6(POD_V6.octets(), KUBE_DNS_V6.octets(), 64)
            .tcp(CLIENT_PORT, 443, 1, 64000)
            .write(out, b"x")
            .unwrap()
    });
    push("UDP :53 to another address", &|out| {
        eth()
            .ipv4(POD_V4.octets(), [8, 8, 8, 8], 64)
            .udp(CLIENT_PORT, 53)
            .write(
                out,
                &query_bytes(1, 0x0100, "example.com.", RecordType::A, None),
            )
            .unwrap()
    });
    push("ICMP", &|out| {
        eth()
            .ipv4(POD_V4.octets(), [10, 244, 2, 3], 64)
            .icmpv4_echo_request(1, 1)
            .write(out, b"ping")
            .unwrap()
    });
    let passed = p.counter("passed");
    for (what, frame) in &frames {
        let (verdict, out) = p.answer(frame);
        assert_eq!(verdict, TC_ACT_UNSPEC, "{what}");
        assert_eq!(&out, frame, "{what}: untouched");
    }
    assert_eq!(p.counter("passed"), passed + frames.len() as u64);
    assert_eq!(p.counter("kernel_answers"), 0);
}
