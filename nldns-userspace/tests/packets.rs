//! The TC programs byte by byte, with BPF_PROG_TEST_RUN: a crafted frame in, the verdict
//! and the frame out. No network at all, so every rewrite, every checksum and every
//! malformed case is pinned down exactly. Frames are built and checksums verified with
//! etherparse, independently of the code under test.
//!
//! Needs root (CAP_BPF): in CI a missing privilege fails the test; elsewhere it skips.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::programs::{TestRun, TestRunOptions};
use etherparse::{NetHeaders, PacketBuilder, PacketHeaders, TransportHeader, VlanId};
use nldns::datapath::{
    answers::{AnswerRedirect, KernelAnswersMode},
    endpoint::InterceptEndpoint,
    loader::{Datapath, DatapathSettings},
};
use socket2::Socket;

mod support;

use support::{
    bind_agent_sockets, enter_private_netns, have_privileges, CLIENT_PORT, KUBE_DNS_V4,
    KUBE_DNS_V6, NODE_MAC, POD_MAC, POD_V4, POD_V6,
};

/// TC_ACT_UNSPEC: the programs never drop and always let later programs run.
const TC_ACT_UNSPEC: u32 = u32::MAX;
const PAYLOAD: &[u8] =
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03web\x00\x00\x01\x00\x01";

struct Programs {
    datapath: Datapath,
    endpoint: InterceptEndpoint,
    /// The agent's intercept sockets as the ingress program's socket lookup must find
    /// them (UDP and TCP for slot 0 over IPv4 and slot 1 over IPv6).
    agent_sockets: Vec<Socket>,
}

impl Programs {
    /// Loads the programs, moves this test's thread into a network namespace of its own
    /// (BPF_PROG_TEST_RUN looks sockets up in the caller's namespace; the root namespace
    /// is never touched) and binds the agent's intercept sockets there.
    fn load() -> Programs {
        enter_private_netns();
        let endpoint = InterceptEndpoint::default();
        let mut datapath = Datapath::load(&DatapathSettings {
            service_ips: vec![IpAddr::V4(KUBE_DNS_V4), IpAddr::V6(KUBE_DNS_V6)],
            endpoint,
            heartbeat_max_age: Duration::from_secs(1),
            log_level: 0,
            // No socket hooks: only the TC programs are under test here.
            netns_cookie: 0,
            pod_hooks: false,
            // The plain ingress program; the responder has its own tests
            // (kernel_answers.rs).
            kernel_answers: KernelAnswersMode::Off,
            answer_redirect: AnswerRedirect::Peer,
            answer_entries: 1,
        })
        .expect("datapath loads and passes the verifier");
        datapath.beat().unwrap();
        let agent_sockets = bind_agent_sockets(&endpoint, false);
        Programs {
            datapath,
            endpoint,
            agent_sockets,
        }
    }

    /// What a killed agent leaves: its sockets are gone, its heartbeat is still fresh.
    fn close_agent_sockets(&mut self) {
        self.agent_sockets.clear();
    }

    /// Runs `program` on `frame`; returns the frame as the program left it.
    fn run(&mut self, program: &str, frame: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; frame.len() + 256];
        let prog = self.datapath.program_mut(program).unwrap();
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat: 1,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        assert_eq!(
            result.return_value, TC_ACT_UNSPEC,
            "{program} must never drop"
        );
        out.truncate(result.data_size_out as usize);
        out
    }

    fn ingress(&mut self, frame: &[u8]) -> Vec<u8> {
        self.run("nldns_ingress", frame)
    }

    fn egress(&mut self, frame: &[u8]) -> Vec<u8> {
        self.run("nldns_egress", frame)
    }

    fn counter(&self, name: &str) -> u64 {
        self.datapath
            .counters()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .unwrap()
    }
}

fn build(builder: PacketBuilderStep, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    builder.write(&mut frame, payload).unwrap();
    frame
}

enum PacketBuilderStep {
    Udp(etherparse::PacketBuilderStep<etherparse::UdpHeader>),
    Tcp(etherparse::PacketBuilderStep<etherparse::TcpHeader>),
}

impl PacketBuilderStep {
    fn write(
        self,
        out: &mut Vec<u8>,
        payload: &[u8],
    ) -> Result<(), etherparse::err::packet::BuildWriteError> {
        match self {
            PacketBuilderStep::Udp(b) => b.write(out, payload),
            PacketBuilderStep::Tcp(b) => b.write(out, payload),
        }
    }
}

fn udp4(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(POD_MAC, NODE_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, dport);
    build(PacketBuilderStep::Udp(b), PAYLOAD)
}

fn tcp4(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(POD_MAC, NODE_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1000, 64000)
        .syn();
    build(PacketBuilderStep::Tcp(b), &[])
}

fn udp6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(POD_MAC, NODE_MAC)
        .ipv6(src.octets(), dst.octets(), 64)
        .udp(sport, dport);
    build(PacketBuilderStep::Udp(b), PAYLOAD)
}

fn tcp6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(POD_MAC, NODE_MAC)
        .ipv6(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1000, 64000)
        .ack(5);
    build(PacketBuilderStep::Tcp(b), PAYLOAD)
}

/// Addresses, ports and whether every checksum in `frame` is right.
#[derive(Debug, PartialEq)]
struct Seen {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
}

fn inspect(frame: &[u8]) -> Seen {
    let headers = PacketHeaders::from_ethernet_slice(frame).expect("output frame parses");
    let payload = headers.payload.slice();
    match (headers.net.unwrap(), headers.transport.unwrap()) {
        (NetHeaders::Ipv4(ip, _), transport) => {
            assert_eq!(
                ip.header_checksum,
                ip.calc_header_checksum(),
                "IPv4 header checksum"
            );
            let (sport, dport) = match transport {
                TransportHeader::Udp(udp) => {
                    if udp.checksum != 0 {
                        assert_eq!(
                            udp.checksum,
                            udp.calc_checksum_ipv4(&ip, payload).unwrap(),
                            "UDP checksum"
                        );
                    }
                    (udp.source_port, udp.destination_port)
                }
                TransportHeader::Tcp(tcp) => {
                    assert_eq!(
                        tcp.checksum,
                        tcp.calc_checksum_ipv4(&ip, payload).unwrap(),
                        "TCP checksum"
                    );
                    (tcp.source_port, tcp.destination_port)
                }
                other => panic!("unexpected transport {other:?}"),
            };
            Seen {
                src: Ipv4Addr::from(ip.source).into(),
                dst: Ipv4Addr::from(ip.destination).into(),
                sport,
                dport,
            }
        }
        (NetHeaders::Ipv6(ip, _), transport) => {
            let (sport, dport) = match transport {
                TransportHeader::Udp(udp) => {
                    assert_eq!(
                        udp.checksum,
                        udp.calc_checksum_ipv6(&ip, payload).unwrap(),
                        "UDP checksum"
                    );
                    (udp.source_port, udp.destination_port)
                }
                TransportHeader::Tcp(tcp) => {
                    assert_eq!(
                        tcp.checksum,
                        tcp.calc_checksum_ipv6(&ip, payload).unwrap(),
                        "TCP checksum"
                    );
                    (tcp.source_port, tcp.destination_port)
                }
                other => panic!("unexpected transport {other:?}"),
            };
            Seen {
                src: Ipv6Addr::from(ip.source).into(),
                dst: Ipv6Addr::from(ip.destination).into(),
                sport,
                dport,
            }
        }
        other => panic!("unexpected network header {other:?}"),
    }
}

fn seen(src: impl Into<IpAddr>, sport: u16, dst: impl Into<IpAddr>, dport: u16) -> Seen {
    Seen {
        src: src.into(),
        dst: dst.into(),
        sport,
        dport,
    }
}

#[test]
fn queries_are_redirected_and_replies_restored_with_valid_checksums() {
    if !have_privileges("queries_are_redirected_and_replies_restored_with_valid_checksums") {
        return;
    }
    let mut p = Programs::load();
    let ep = p.endpoint;
    let v4_port = ep.base_port; // slot 0
    let v6_port = ep.base_port + 1; // slot 1

    // (frame in at ingress, expected after) for each transport and family.
    let cases = [
        (
            udp4(POD_V4, CLIENT_PORT, KUBE_DNS_V4, 53),
            seen(POD_V4, CLIENT_PORT, ep.v4, v4_port),
        ),
        (
            tcp4(POD_V4, CLIENT_PORT, KUBE_DNS_V4, 53),
            seen(POD_V4, CLIENT_PORT, ep.v4, v4_port),
        ),
        (
            udp6(POD_V6, CLIENT_PORT, KUBE_DNS_V6, 53),
            seen(POD_V6, CLIENT_PORT, ep.v6, v6_port),
        ),
        (
            tcp6(POD_V6, CLIENT_PORT, KUBE_DNS_V6, 53),
            seen(POD_V6, CLIENT_PORT, ep.v6, v6_port),
        ),
    ];
    let redirected = p.counter("queries_redirected");
    for (frame, expected) in &cases {
        let out = p.ingress(frame);
        assert_eq!(out.len(), frame.len());
        assert_eq!(&inspect(&out), expected);
        assert_eq!(out[..12], frame[..12], "MAC addresses untouched");
    }
    assert_eq!(
        p.counter("queries_redirected"),
        redirected + cases.len() as u64
    );

    let replies = [
        (
            udp4(ep.v4, v4_port, POD_V4, CLIENT_PORT),
            seen(KUBE_DNS_V4, 53, POD_V4, CLIENT_PORT),
        ),
        (
            tcp4(ep.v4, v4_port, POD_V4, CLIENT_PORT),
            seen(KUBE_DNS_V4, 53, POD_V4, CLIENT_PORT),
        ),
        (
            udp6(ep.v6, v6_port, POD_V6, CLIENT_PORT),
            seen(KUBE_DNS_V6, 53, POD_V6, CLIENT_PORT),
        ),
        (
            tcp6(ep.v6, v6_port, POD_V6, CLIENT_PORT),
            seen(KUBE_DNS_V6, 53, POD_V6, CLIENT_PORT),
        ),
    ];
    let rewritten = p.counter("replies_rewritten");
    for (frame, expected) in &replies {
        assert_eq!(&inspect(&p.egress(frame)), expected);
    }
    assert_eq!(
        p.counter("replies_rewritten"),
        rewritten + replies.len() as u64
    );
}

#[test]
fn ipv4_udp_without_checksum_keeps_zero() {
    if !have_privileges("ipv4_udp_without_checksum_keeps_zero") {
        return;
    }
    let mut p = Programs::load();
    let mut frame = udp4(POD_V4, CLIENT_PORT, KUBE_DNS_V4, 53);
    frame[14 + 20 + 6] = 0;
    frame[14 + 20 + 7] = 0;
    let out = p.ingress(&frame);
    assert_eq!(
        &out[14 + 20 + 6..14 + 20 + 8],
        &[0, 0],
        "a zero UDP checksum must stay zero"
    );
    assert_eq!(inspect(&out).dst, IpAddr::V4(p.endpoint.v4));

    let mut reply = udp4(p.endpoint.v4, p.endpoint.base_port, POD_V4, CLIENT_PORT);
    reply[14 + 20 + 6] = 0;
    reply[14 + 20 + 7] = 0;
    let out = p.egress(&reply);
    assert_eq!(&out[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
    assert_eq!(inspect(&out).src, IpAddr::V4(KUBE_DNS_V4));
}

#[test]
fn vlan_tags_ip_options_and_ipv6_extension_headers_are_followed() {
    if !have_privileges("vlan_tags_ip_options_and_ipv6_extension_headers_are_followed") {
        return;
    }
    let mut p = Programs::load();
    let ep = p.endpoint;

    // 802.1Q and QinQ.
    let single = PacketBuilder::ethernet2(POD_MAC, NODE_MAC)
        .single_vlan(VlanId::try_new(100).unwrap())
        .ipv4(POD_V4.octets(), KUBE_DNS_V4.octets(), 64)
        .udp(CLIENT_PORT, 53);
    let double = PacketBuilder::ethernet2(POD_MAC, NODE_MAC)
        .double_vlan(VlanId::try_new(10).unwrap(), VlanId::try_new(20).unwrap())
        .ipv4(POD_V4.octets(), KUBE_DNS_V4.octets(), 64)
        .udp(CLIENT_PORT, 53);
    for frame in [
        build(PacketBuilderStep::Udp(single), PAYLOAD),
        build(PacketBuilderStep::Udp(double), PAYLOAD),
    ] {
        assert_eq!(
            inspect(&p.ingress(&frame)),
            seen(POD_V4, CLIENT_PORT, ep.v4, ep.base_port)
        );
    }

    // IPv4 with 4 bytes of options (NOPs): IHL 6.
    let with_options = ipv4_with_options(&udp4(POD_V4, CLIENT_PORT, KUBE_DNS_V4, 53));
    assert_eq!(
        inspect(&p.ingress(&with_options)),
        seen(POD_V4, CLIENT_PORT, ep.v4, ep.base_port)
    );

    // IPv6 with a hop-by-hop options header before UDP.
    let with_hbh = ipv6_with_hop_by_hop(&udp6(POD_V6, CLIENT_PORT, KUBE_DNS_V6, 53));
    assert_eq!(
        inspect(&p.ingress(&with_hbh)),
        seen(POD_V6, CLIENT_PORT, ep.v6, ep.base_port + 1)
    );
}

#[test]
fn fragments_malformed_and_foreign_packets_pass_byte_for_byte() {
    if !have_privileges("fragments_malformed_and_foreign_packets_pass_byte_for_byte") {
        return;
    }
    let mut p = Programs::load();
    let ep = p.endpoint;
    let query = udp4(POD_V4, CLIENT_PORT, KUBE_DNS_V4, 53);

    let mut more_fragments = query.clone();
    more_fragments[14 + 6] |= 0x20;
    let mut later_fragment = query.clone();
    later_fragment[14 + 7] = 0x10;
    let v6_fragment = ipv6_with_fragment_header(&udp6(POD_V6, CLIENT_PORT, KUBE_DNS_V6, 53));

    let mut lying_total_len = query.clone();
    lying_total_len[14 + 2] = 0x05; // claims far more than the frame holds
    let mut short_total_len = query.clone();
    short_total_len[14 + 3] = 24; // IP header + 4 bytes: less than a UDP header
    short_total_len[14 + 2] = 0;
    let mut bad_ihl = query.clone();
    bad_ihl[14] = 0x43; // IHL 3 (< 5)
    let mut lying_udp_len = query.clone();
    lying_udp_len[14 + 20 + 4] = 0x40;
    let truncated_udp = query[..14 + 20 + 4].to_vec();
    let mut bad_version = query.clone();
    bad_version[14] = 0x65;

    // A frame cut inside (or before) the IPv4 header is refused by BPF_PROG_TEST_RUN itself (EINVAL);
    // tests/tests/datapath.rs sends such frames through a real veth instead.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("IPv4 more-fragments", more_fragments),
        ("IPv4 non-first fragment", later_fragment),
        ("IPv6 fragment header", v6_fragment),
        ("IPv4 total length beyond the frame", lying_total_len),
        ("IPv4 total length below the UDP header", short_total_len),
        ("IPv4 IHL below 5", bad_ihl),
        ("UDP length beyond the IP packet", lying_udp_len),
        ("truncated UDP header", truncated_udp),
        ("IP version 6 in an IPv4 ethertype", bad_version),
        ("not port 53", udp4(POD_V4, CLIENT_PORT, KUBE_DNS_V4, 80)),
        (
            "port 53 to another IP",
            udp4(POD_V4, CLIENT_PORT, Ipv4Addr::new(10, 96, 0, 99), 53),
        ),
        (
            "TCP to another IP",
            tcp4(POD_V4, CLIENT_PORT, Ipv4Addr::new(8, 8, 8, 8), 53),
        ),
    ];
    let before_frag = p.counter("fragments_passed");
    let before_err = p.counter("parse_errors");
    for (what, frame) in &cases {
        assert_eq!(&p.ingress(frame), frame, "ingress changed: {what}");
    }
    assert_eq!(p.counter("fragments_passed"), before_frag + 3);
    assert_eq!(p.counter("parse_errors"), before_err + 6);

    // Egress rewrites only replies from the intercept endpoint's own port block.
    let egress_cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a --listen address answering",
            udp4(Ipv4Addr::new(169, 254, 20, 10), 53, POD_V4, CLIENT_PORT),
        ),
        (
            "intercept address, port outside the block",
            udp4(ep.v4, 53, POD_V4, CLIENT_PORT),
        ),
        (
            "intercept address, unused slot",
            udp4(ep.v4, ep.base_port + 5, POD_V4, CLIENT_PORT),
        ),
        (
            "IPv4 reply on the IPv6 Service's slot",
            udp4(ep.v4, ep.base_port + 1, POD_V4, CLIENT_PORT),
        ),
        (
            "kube-dns itself answering",
            udp4(KUBE_DNS_V4, 53, POD_V4, CLIENT_PORT),
        ),
    ];
    for (what, frame) in &egress_cases {
        assert_eq!(&p.egress(frame), frame, "egress changed: {what}");
    }
}

/// A pod whose socket the pods' socket hooks redirected talks to the intercept endpoint's
/// pod-socket ports directly. TC must leave both directions alone: its query is not to a
/// Service IP, and its reply must reach the pod's socket (connected to the intercept
/// endpoint) from exactly that endpoint, never rewritten to the ClusterIP.
#[test]
fn pod_socket_traffic_is_never_rewritten_by_tc() {
    if !have_privileges("pod_socket_traffic_is_never_rewritten_by_tc") {
        return;
    }
    let mut p = Programs::load();
    let (v4, v6) = (p.endpoint.v4, p.endpoint.v6);
    let pod_ports = p.endpoint.base_port + nldns_common::POD_SOCKET_PORTS;
    let redirected = p.counter("queries_redirected");
    let rewritten = p.counter("replies_rewritten");
    for (slot, query, reply) in [
        (
            0,
            udp4(POD_V4, CLIENT_PORT, v4, pod_ports),
            udp4(v4, pod_ports, POD_V4, CLIENT_PORT),
        ),
        (
            1,
            udp6(POD_V6, CLIENT_PORT, v6, pod_ports + 1),
            udp6(v6, pod_ports + 1, POD_V6, CLIENT_PORT),
        ),
        (
            0,
            tcp4(POD_V4, CLIENT_PORT, v4, pod_ports),
            tcp4(v4, pod_ports, POD_V4, CLIENT_PORT),
        ),
    ] {
        assert_eq!(p.ingress(&query), query, "slot {slot}: query rewritten");
        assert_eq!(p.egress(&reply), reply, "slot {slot}: reply rewritten");
    }
    assert_eq!(p.counter("queries_redirected"), redirected);
    assert_eq!(p.counter("replies_rewritten"), rewritten);
    // The TC run of ports right below is still restored: the boundary is exact.
    let tc_reply = udp4(v4, p.endpoint.base_port, POD_V4, CLIENT_PORT);
    assert_ne!(p.egress(&tc_reply), tc_reply);
}

#[test]
fn stale_heartbeat_passes_queries_untouched() {
    if !have_privileges("stale_heartbeat_passes_queries_untouched") {
        return;
    }
    let mut p = Programs::load();
    let query = udp4(POD_V4, CLIENT_PORT, KUBE_DNS_V4, 53);
    p.datapath.stop_beating().unwrap();
    let before = p.counter("fail_open_passes");
    assert_eq!(p.ingress(&query), query);
    assert_eq!(p.counter("fail_open_passes"), before + 1);

    p.datapath.beat().unwrap();
    assert_ne!(
        p.ingress(&query),
        query,
        "a fresh heartbeat redirects again"
    );

    // Older than the 1 s bound: the agent is presumed dead or hung.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(p.ingress(&query), query);
}

#[test]
fn queries_pass_untouched_once_the_agent_sockets_are_gone() {
    if !have_privileges("queries_pass_untouched_once_the_agent_sockets_are_gone") {
        return;
    }
    let mut p = Programs::load();
    let ep = p.endpoint;
    let queries = [
        udp4(POD_V4, CLIENT_PORT, KUBE_DNS_V4, 53),
        tcp4(POD_V4, CLIENT_PORT, KUBE_DNS_V4, 53),
        udp6(POD_V6, CLIENT_PORT, KUBE_DNS_V6, 53),
    ];
    for query in &queries {
        assert_ne!(
            &p.ingress(query),
            query,
            "redirected while the agent listens"
        );
    }

    // A killed agent: sockets closed at once, heartbeat still fresh.
    p.close_agent_sockets();
    let before = p.counter("agent_gone_passes");
    for query in &queries {
        assert_eq!(&p.ingress(query), query, "passed once the agent is gone");
    }
    assert_eq!(
        p.counter("agent_gone_passes"),
        before + queries.len() as u64
    );
    // A segment of an established connection (no SYN) is not looked up: it belongs to
    // that connection whatever happens.
    let established = tcp6(POD_V6, CLIENT_PORT, KUBE_DNS_V6, 53);
    assert_eq!(
        inspect(&p.ingress(&established)),
        seen(POD_V6, CLIENT_PORT, ep.v6, ep.base_port + 1)
    );

    // A restarted agent binding the same ports takes queries again.
    p.agent_sockets = bind_agent_sockets(&ep, false);
    assert_eq!(
        inspect(&p.ingress(&queries[0])),
        seen(POD_V4, CLIENT_PORT, ep.v4, ep.base_port)
    );
}

/// Inserts 4 bytes of NOP options into an Ethernet/IPv4 frame and fixes lengths and the
/// header checksum (the transport checksum does not cover IP options).
fn ipv4_with_options(frame: &[u8]) -> Vec<u8> {
    let mut out = frame[..14 + 20].to_vec();
    out.extend_from_slice(&[1, 1, 1, 1]);
    out.extend_from_slice(&frame[14 + 20..]);
    out[14] = 0x46;
    let total = u16::from_be_bytes([out[16], out[17]]) + 4;
    out[16..18].copy_from_slice(&total.to_be_bytes());
    let (ip, _) = etherparse::Ipv4Header::from_slice(&out[14..]).unwrap();
    out[24..26].copy_from_slice(&ip.calc_header_checksum().to_be_bytes());
    out
}

/// Inserts an 8-byte hop-by-hop header (PadN) after the IPv6 header.
fn ipv6_with_hop_by_hop(frame: &[u8]) -> Vec<u8> {
    ipv6_with_extension(frame, 0, [17, 0, 1, 4, 0, 0, 0, 0])
}

/// Inserts a fragment header (offset 0, more fragments) after the IPv6 header.
fn ipv6_with_fragment_header(frame: &[u8]) -> Vec<u8> {
    ipv6_with_extension(frame, 44, [17, 0, 0, 1, 0, 0, 0, 7])
}

fn ipv6_with_extension(frame: &[u8], kind: u8, header: [u8; 8]) -> Vec<u8> {
    let mut out = frame[..14 + 40].to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&frame[14 + 40..]);
    out[14 + 6] = kind;
    let payload = u16::from_be_bytes([out[18], out[19]]) + 8;
    out[18..20].copy_from_slice(&payload.to_be_bytes());
    out
}
