//! The node-local cache on the simulated node: the real agent (started with the harness's
//! `agent_args()`), the real interception in front of the kube-dns ClusterIP, real knot
//! backends behind kube-proxy's NAT. Pods query 10.96.0.10 / fd00:10:96::a as they would
//! in a cluster; the backends' own logs and counters say what reached them.
//! They need root; without it they print SKIP (and fail in CI, where root is expected).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use nldns_tests::addresses::*;
use nldns_tests::zones::{self, names};
use nldns_tests::{
    agent_binary, dns_client, require_root, AgentProcess, BackendMode, QueryOptions, SimNode,
    Transport,
};

const V4: IpAddr = IpAddr::V4(KUBE_DNS_V4);
const V6: IpAddr = IpAddr::V6(KUBE_DNS_V6);
/// The node-local address of `--listen` in these tests (node-local-dns's classic one).
const LISTEN_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 20, 10);
/// The agent's default `stale_answer_ttl` (RFC 8767 recommends 30 s).
const STALE_TTL: u32 = 30;
/// The agent's default `min_ttl`: a record with a smaller TTL lives this long in the cache.
const MIN_TTL: Duration = Duration::from_secs(5);
/// Extended DNS Error option 15, length 2, info-code 3 "Stale Answer" (RFC 8914).
const EDE_STALE: [u8; 6] = [0, 15, 0, 2, 0, 3];

fn binary() -> PathBuf {
    agent_binary().expect(
        "build the agent first (cargo build -p nldns-userspace --bin nldns) or set NLDNS_BIN",
    )
}

fn node_with(backend_mode: BackendMode, pods: usize, backends: usize) -> SimNode {
    SimNode::builder()
        .pods(pods)
        .backends(backends)
        .backend_mode(backend_mode)
        .build()
        .unwrap()
}

/// `nldns status --json` run inside the node namespace.
fn status(node: &SimNode) -> serde_json::Value {
    let bin = binary();
    let out = node
        .exec_in_node(
            bin.to_str().unwrap(),
            &["status", "--json"],
            Duration::from_secs(10),
        )
        .unwrap();
    assert!(
        out.status.success(),
        "nldns status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A datapath counter of this node's agent, from `nldns status --json`. BPF programs are
/// not per network namespace: `instances` lists every nldns datapath on the machine
/// (other test runs' too), so the one meant is the one attached in this node.
fn datapath_counter(node: &SimNode, name: &str) -> u64 {
    let status = status(node);
    let attached: Vec<&serde_json::Value> = status["attachments"]
        .as_array()
        .map(|a| a.iter().map(|a| &a["program_id"]).collect())
        .unwrap_or_default();
    let ours = status["instances"]
        .as_array()
        .and_then(|instances| {
            instances
                .iter()
                .find(|i| attached.contains(&&i["ingress_program_id"]))
        })
        .unwrap_or_else(|| panic!("no instance attached in this node: {status:#}"));
    ours["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {ours:#}"))
}

/// Starts the agent with the harness's flags plus `extra`, and returns once it is ready
/// (/ready is 200: attached, upstreams answer) and its programs sit on every pod's veth in
/// both directions, so that every query of the test goes through the cache.
fn start_agent(node: &SimNode, extra: &[&str]) -> AgentProcess {
    let mut args = node.agent_args();
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = node
        .spawn_agent_with_env(&binary(), &args, &[("RUST_LOG", "info")])
        .unwrap();
    assert!(
        node.wait_http_ok("/ready", Duration::from_secs(20)),
        "/ready never answered 200; agent log:\n{}",
        agent.stderr()
    );
    let veths: Vec<String> = node
        .pod_indexes()
        .into_iter()
        .map(|i| node.pod_veth(i).unwrap().to_string())
        .collect();
    let attached =
        nldns_tests::cmd::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            let status = status(node);
            let attachments = status["attachments"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            veths.iter().all(|veth| {
                attachments
                    .iter()
                    .filter(|a| a["interface"] == veth.as_str())
                    .count()
                    >= 2
            })
        });
    assert!(
        attached,
        "not attached to every pod veth {veths:?}: {:#}\nagent log:\n{}",
        status(node),
        agent.stderr()
    );
    agent
}

fn stop_agent(mut agent: AgentProcess) {
    agent.sigterm().unwrap();
    let exit = agent.wait_exit(Duration::from_secs(10));
    assert!(
        exit.is_some_and(|s| s.success()),
        "agent exit {exit:?}; log:\n{}",
        agent.stderr()
    );
}

fn query(node: &SimNode, server: IpAddr, name: &str, rtype: RecordType) -> Message {
    node.query(0, server, name, rtype, &QueryOptions::default())
        .unwrap_or_else(|e| panic!("{name} {rtype} via {server}: {e:#}"))
}

fn addresses(reply: &Message) -> Vec<IpAddr> {
    reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn min_ttl(records: &[hickory_proto::rr::Record]) -> u32 {
    records
        .iter()
        .map(|r| r.ttl)
        .min()
        .expect("at least one record")
}

/// The SOA's TTL in a negative answer (the RFC 2308 lifetime the client sees).
fn soa_ttl(reply: &Message) -> u32 {
    reply
        .authorities
        .iter()
        .find(|r| matches!(r.data, RData::SOA(_)))
        .map(|r| r.ttl)
        .unwrap_or_else(|| panic!("no SOA in the authority section: {reply:?}"))
}

/// The value of one sample line of the agent's /metrics (0 when absent: counters with
/// labels only appear once used).
/// A sample's value; a name without labels sums every series of that name.
fn metric(text: &str, sample: &str) -> u64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(sample)?;
            let rest = match rest.strip_prefix('{') {
                Some(labels) if !sample.contains('{') => labels.split_once("} ")?.1,
                _ => rest.strip_prefix(' ')?,
            };
            rest.trim().parse::<u64>().ok()
        })
        .sum()
}

#[test]
fn cached_answers_spare_the_backend_count_down_and_keep_the_clients_case() {
    if !require_root("cached_answers_spare_the_backend_count_down_and_keep_the_clients_case") {
        return;
    }
    let node = node_with(BackendMode::KnotBehindProxy, 2, 2);
    let agent = start_agent(&node, &[]);

    // A miss goes to a backend once; the second pod's query is a hit whose TTL has counted
    // down by the time spent in the cache.
    let cases = [
        (V4, RecordType::A, IpAddr::V4(WEB_V4)),
        (V6, RecordType::AAAA, IpAddr::V6(WEB_V6)),
    ];
    let mut first_ttls = Vec::new();
    for (server, rtype, want) in cases {
        let reply = query(&node, server, names::WEB, rtype);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&reply), [want], "{reply:?}");
        let ttl = min_ttl(&reply.answers);
        assert!(
            (zones::CLUSTER_TTL - 1..=zones::CLUSTER_TTL).contains(&ttl),
            "a fresh answer keeps the backend's TTL, got {ttl}"
        );
        first_ttls.push(ttl);
        assert_eq!(
            node.backend_queries_for(names::WEB, &rtype.to_string())
                .unwrap(),
            1,
            "the miss reached a backend exactly once"
        );
    }
    std::thread::sleep(Duration::from_millis(2200));
    for ((server, rtype, want), first) in cases.into_iter().zip(first_ttls) {
        let reply = node
            .query(1, server, names::WEB, rtype, &QueryOptions::default())
            .unwrap();
        assert_eq!(addresses(&reply), [want], "{reply:?}");
        let ttl = min_ttl(&reply.answers);
        assert!(
            ttl <= first - 2 && ttl + 10 >= first,
            "TTL counts down in the cache: {first} then {ttl} after 2.2 s"
        );
        assert!(!reply.metadata.authoritative, "a cached answer is not AA");
        assert_eq!(
            node.backend_queries_for(names::WEB, &rtype.to_string())
                .unwrap(),
            1,
            "the hit never reached a backend"
        );
    }

    // 0x20: the client's spelling comes back in the question and in the owner names, on the
    // miss and on the hit, while the backend was asked (once) in lowercase.
    let mixed = "KuBe-DnS.kube-system.SVC.cluster.local.";
    for _ in 0..2 {
        let reply = query(&node, V4, mixed, RecordType::A);
        assert_eq!(addresses(&reply), [V4], "{reply:?}");
        assert_eq!(reply.queries[0].name().to_ascii(), mixed);
        assert_eq!(reply.answers[0].name.to_ascii(), mixed);
    }
    assert_eq!(node.backend_queries_for(names::KUBE_DNS, "A").unwrap(), 1);

    // 60 A records do not fit a classic 512-byte UDP answer: TC=1 and no records, then the
    // full answer over TCP, from the cache (the agent asked upstream with EDNS, once).
    let plain = QueryOptions {
        edns_payload: None,
        ..QueryOptions::default()
    };
    let truncated = node
        .query(0, V4, names::BIG, RecordType::A, &plain)
        .unwrap();
    assert!(truncated.metadata.truncation, "{truncated:?}");
    assert!(truncated.answers.is_empty());
    let full = node
        .query(
            0,
            V4,
            names::BIG,
            RecordType::A,
            &QueryOptions {
                edns_payload: None,
                ..QueryOptions::tcp()
            },
        )
        .unwrap();
    assert!(!full.metadata.truncation);
    let mut got = addresses(&full);
    got.sort();
    let want: Vec<IpAddr> = zones::big_rrset().into_iter().map(IpAddr::V4).collect();
    assert_eq!(got, want);
    assert_eq!(node.backend_queries_for(names::BIG, "A").unwrap(), 1);

    // An NXDOMAIN, for the rcode label.
    let missing = query(&node, V4, names::MISSING, RecordType::A);
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);

    // What an operator sees: hits (web A, web AAAA, kube-dns A, big over TCP) and every
    // answered request by type, rcode and transport. The heartbeat is not counted. Hits
    // the kernel answered are read back every second: wait for that.
    std::thread::sleep(Duration::from_millis(1500));
    let (code, text) = node.http_get(node.metrics_addr(), "/metrics").unwrap();
    assert_eq!(code, 200);
    let expected = [
        ("nldns_cache_hits_total", 4),
        // web A x2, kube-dns A x2, big A truncated.
        (
            r#"nldns_requests_total{qtype="A",rcode="NOERROR",protocol="udp"}"#,
            5,
        ),
        (
            r#"nldns_requests_total{qtype="AAAA",rcode="NOERROR",protocol="udp"}"#,
            2,
        ),
        (
            r#"nldns_requests_total{qtype="A",rcode="NOERROR",protocol="tcp"}"#,
            1,
        ),
        (
            r#"nldns_requests_total{qtype="A",rcode="NXDOMAIN",protocol="udp"}"#,
            1,
        ),
    ];
    for (sample, want) in expected {
        assert_eq!(metric(&text, sample), want, "{sample} in:\n{text}");
    }
    assert!(metric(&text, "nldns_cache_misses_total") >= 5, "{text}");
    assert!(metric(&text, "nldns_cache_entries") >= 5, "{text}");

    // The CoreDNS series node-local-dns dashboards read, through a real OpenMetrics
    // parser: the pods asked the ClusterIP, so that is the server; cluster names are in
    // the cluster.local. zone.
    let samples = nldns_tests::prometheus::parse_openmetrics(&text)
        .unwrap_or_else(|e| panic!("{e:#}\n{text}"));
    let coredns = |name: &str, labels: &[(&str, &str)]| {
        nldns_tests::prometheus::value(&samples, name, labels)
    };
    let server = ("server", "dns://10.96.0.10:53");
    let zone = ("zone", "cluster.local.");
    assert_eq!(
        coredns(
            "coredns_dns_requests_total",
            &[
                ("server", "dns://[fd00:10:96::a]:53"),
                zone,
                ("proto", "udp"),
                ("family", "2"),
                ("type", "AAAA")
            ]
        ),
        Some(2.0),
        "the AAAA queries went to the IPv6 ClusterIP: {text}"
    );
    assert_eq!(
        coredns(
            "coredns_dns_requests_total",
            &[
                server,
                zone,
                ("proto", "tcp"),
                ("family", "1"),
                ("type", "A")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        coredns(
            "coredns_dns_responses_total",
            &[server, zone, ("rcode", "NXDOMAIN"), ("plugin", "forward")]
        ),
        Some(1.0)
    );
    let hits: f64 = samples
        .iter()
        .filter(|s| s.name == "coredns_cache_hits_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(hits, 4.0, "the same hits as nldns_cache_hits_total");
    assert!(
        coredns(
            "coredns_dns_request_duration_seconds_count",
            &[server, zone, ("type", "A")]
        )
        .is_some_and(|n| n >= 5.0),
        "{text}"
    );
    for family in [
        "coredns_build_info",
        "coredns_panics_total",
        "coredns_cache_entries",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "nldns_datapath_queries_redirected_total",
    ] {
        assert!(
            samples.iter().any(|s| s.name == family),
            "{family} missing:\n{text}"
        );
    }
    assert_eq!(coredns("coredns_panics_total", &[]), Some(0.0));
    stop_agent(agent);
}

#[test]
fn nxdomain_and_nodata_are_cached_for_the_soa_window() {
    if !require_root("nxdomain_and_nodata_are_cached_for_the_soa_window") {
        return;
    }
    let node = node_with(BackendMode::KnotBehindProxy, 1, 2);
    let agent = start_agent(&node, &[]);

    // NXDOMAIN (the name does not exist) and NODATA (it exists, without MX records): both
    // carry the zone's SOA, whose MINIMUM (5 s, also the agent's cap) is their lifetime.
    let cases = [
        (names::MISSING, RecordType::A, ResponseCode::NXDomain),
        (
            names::KUBE_DNS_UNCACHED,
            RecordType::MX,
            ResponseCode::NoError,
        ),
    ];
    let started = Instant::now();
    let mut first_soa_ttls = Vec::new();
    for (name, rtype, rcode) in cases {
        let reply = query(&node, V4, name, rtype);
        assert_eq!(reply.metadata.response_code, rcode, "{reply:?}");
        assert!(reply.answers.is_empty());
        let ttl = soa_ttl(&reply);
        assert!(ttl <= zones::NEGATIVE_TTL, "SOA TTL {ttl}");
        first_soa_ttls.push(ttl);
    }
    // Within the window, whatever the number of queries, the backends saw one of each.
    let mut asked = 0;
    while started.elapsed() < Duration::from_millis(3500) {
        std::thread::sleep(Duration::from_millis(600));
        for (name, rtype, rcode) in cases {
            let reply = query(&node, V4, name, rtype);
            assert_eq!(reply.metadata.response_code, rcode, "{reply:?}");
            assert!(soa_ttl(&reply) <= zones::NEGATIVE_TTL);
        }
        asked += 1;
    }
    assert!(asked >= 2, "the machine is too slow for this window");
    for ((name, rtype, _), first) in cases.into_iter().zip(&first_soa_ttls) {
        assert_eq!(
            node.backend_queries_for(name, &rtype.to_string()).unwrap(),
            1,
            "{name} {rtype} is cached for the SOA window"
        );
        // The SOA's TTL counts down like any cached TTL.
        let reply = query(&node, V4, name, rtype);
        assert!(
            soa_ttl(&reply) + 3 <= *first,
            "{name}: SOA TTL {first} at first, {} after 3.5 s",
            soa_ttl(&reply)
        );
    }
    // Past the window (5 s from the first answer), the backend is asked again.
    let window = Duration::from_secs(u64::from(zones::NEGATIVE_TTL)) + Duration::from_millis(700);
    std::thread::sleep(window.saturating_sub(started.elapsed()));
    for (name, rtype, rcode) in cases {
        let reply = query(&node, V4, name, rtype);
        assert_eq!(reply.metadata.response_code, rcode, "{reply:?}");
        assert_eq!(
            node.backend_queries_for(name, &rtype.to_string()).unwrap(),
            2,
            "{name} {rtype} expired after the SOA window"
        );
    }
    stop_agent(agent);
}

#[test]
fn stopped_upstreams_get_stale_answers_and_a_fast_servfail() {
    if !require_root("stopped_upstreams_get_stale_answers_and_a_fast_servfail") {
        return;
    }
    // Plain knot: a stopped backend is a closed port, as a dead kube-dns pod would be.
    let mut node = node_with(BackendMode::Knot, 1, 2);
    let agent = start_agent(&node, &[]);
    let web = query(&node, V4, names::WEB, RecordType::A);
    assert_eq!(addresses(&web), [IpAddr::V4(WEB_V4)]);
    let short = query(&node, V4, names::SHORT_TTL, RecordType::A);
    let short_addresses = addresses(&short);
    assert_eq!(short_addresses.len(), 1, "{short:?}");
    let cached_at = Instant::now();

    node.stop_backends().unwrap();

    // Still fresh: answered from the cache as if nothing happened.
    let reply = query(&node, V4, names::WEB, RecordType::A);
    assert_eq!(addresses(&reply), [IpAddr::V4(WEB_V4)]);
    assert!(min_ttl(&reply.answers) <= zones::CLUSTER_TTL);

    // Never cached: SERVFAIL, fast (the closed port is an immediate error, not a timeout).
    for (transport, options) in [
        ("udp", QueryOptions::default()),
        ("tcp", QueryOptions::tcp()),
    ] {
        let name = format!("db-{transport}.default.svc.cluster.local.");
        let asked = Instant::now();
        let reply = node.query(0, V4, &name, RecordType::A, &options).unwrap();
        let took = asked.elapsed();
        eprintln!("SERVFAIL for an uncached name over {transport}: {took:?}");
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert!(
            took < Duration::from_secs(1),
            "SERVFAIL over {transport} took {took:?}; agent log:\n{}",
            agent.stderr()
        );
    }

    // Expired (short-ttl lives MIN_TTL in the cache): served stale with a short TTL and
    // Extended DNS Error 3, without waiting for the client's own timeout.
    std::thread::sleep((MIN_TTL + Duration::from_millis(500)).saturating_sub(cached_at.elapsed()));
    for round in 0..2 {
        let wire =
            dns_client::build_query(names::SHORT_TTL, RecordType::A, &QueryOptions::default())
                .unwrap()
                .to_vec()
                .unwrap();
        let asked = Instant::now();
        let raw = node
            .pod_netns(0)
            .unwrap()
            .run_inside(|| {
                dns_client::exchange(
                    SocketAddr::new(V4, 53),
                    &wire,
                    Transport::Udp,
                    Duration::from_secs(5),
                )
            })
            .unwrap()
            .unwrap();
        let took = asked.elapsed();
        eprintln!("stale answer (round {round}): {took:?}");
        let reply = Message::from_vec(&raw).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&reply), short_addresses, "round {round}");
        let ttl = min_ttl(&reply.answers);
        assert!((1..=STALE_TTL).contains(&ttl), "stale TTL {ttl}");
        assert!(
            raw.windows(EDE_STALE.len()).any(|w| w == EDE_STALE),
            "no EDE 'Stale Answer' in {raw:02x?}"
        );
        assert!(
            took < Duration::from_secs(1),
            "stale answer took {took:?} (round {round})"
        );
    }

    // Readiness follows the upstreams.
    let unready =
        nldns_tests::cmd::wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
            matches!(node.http_get(node.health_addr(), "/ready"), Ok((503, _)))
        });
    assert!(unready, "/ready stays 200 with every backend stopped");
    let (_, text) = node.http_get(node.metrics_addr(), "/metrics").unwrap();
    assert!(metric(&text, "nldns_stale_answers_total") >= 2, "{text}");
    stop_agent(agent);
}

#[test]
fn names_outside_the_cluster_go_to_the_node_resolvers() {
    if !require_root("names_outside_the_cluster_go_to_the_node_resolvers") {
        return;
    }
    // The backends' proxy would forward example.org too (like CoreDNS): its log is what
    // tells the two paths apart.
    let node = node_with(BackendMode::KnotBehindProxy, 1, 1);
    let agent = start_agent(&node, &[]);
    let before = node.ext_query_count().unwrap();
    for round in 0..2 {
        let reply = query(&node, V4, names::EXT_WWW, RecordType::A);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(
            addresses(&reply),
            [IpAddr::V4(Ipv4Addr::new(10, 244, 8, 20))],
            "round {round}"
        );
        assert_eq!(
            node.ext_query_count().unwrap() - before,
            1,
            "the resolv.conf resolver answered once; the second query is a hit"
        );
    }
    let reply = query(&node, V6, names::EXT_MISSING, RecordType::AAAA);
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(node.ext_query_count().unwrap() - before, 2);
    for (name, rtype) in [(names::EXT_WWW, "A"), (names::EXT_MISSING, "AAAA")] {
        assert_eq!(
            node.backend_queries_for(name, rtype).unwrap(),
            0,
            "{name} went to kube-dns-uncached"
        );
    }
    stop_agent(agent);
}

#[test]
fn no_open_resolver_and_listen_addresses_answer_directly() {
    if !require_root("no_open_resolver_and_listen_addresses_answer_directly") {
        return;
    }
    let node = node_with(BackendMode::Knot, 1, 1);
    // No dummy driver on these kernels: the node-local address sits on the node's lo.
    node.node_netns()
        .ip(&["addr", "add", &format!("{LISTEN_V4}/32"), "dev", "lo"])
        .unwrap();
    let listen = format!("{LISTEN_V4}:53");
    let agent = start_agent(&node, &["--listen", &listen]);

    // The node's own addresses that pods can reach are not DNS servers.
    let short = QueryOptions {
        timeout: Duration::from_secs(1),
        ..QueryOptions::default()
    };
    let short_tcp = QueryOptions {
        timeout: Duration::from_secs(1),
        ..QueryOptions::tcp()
    };
    for server in [
        IpAddr::V4(POD_GATEWAY_V4),
        IpAddr::V6(POD_GATEWAY_V6),
        IpAddr::V4(EXT_GATEWAY_V4),
    ] {
        for options in [&short, &short_tcp] {
            let result = node.query(0, server, names::WEB, RecordType::A, options);
            assert!(
                result.is_err(),
                "{server} ({:?}) answered: {result:?}",
                options.transport
            );
        }
    }

    // The --listen address answers directly: the reply's source is 169.254.20.10 (the
    // client's socket is connected to it) and the datapath rewrote nothing.
    let rewritten = datapath_counter(&node, "replies_rewritten");
    let redirected = datapath_counter(&node, "queries_redirected");
    for options in [QueryOptions::default(), QueryOptions::tcp()] {
        let reply = node
            .query(
                0,
                IpAddr::V4(LISTEN_V4),
                names::WEB,
                RecordType::A,
                &options,
            )
            .unwrap();
        assert_eq!(addresses(&reply), [IpAddr::V4(WEB_V4)]);
    }
    assert_eq!(datapath_counter(&node, "replies_rewritten"), rewritten);
    assert_eq!(datapath_counter(&node, "queries_redirected"), redirected);

    // The same name through the ClusterIP comes from the cache the --listen query filled:
    // the --listen miss published it, so the kernel answers it (kernel answers are on by
    // default) and nothing is rewritten either way.
    let before = node.backend_query_count().unwrap();
    let kernel = datapath_counter(&node, "kernel_answers");
    let reply = query(&node, V4, names::WEB, RecordType::A);
    assert_eq!(addresses(&reply), [IpAddr::V4(WEB_V4)]);
    assert_eq!(datapath_counter(&node, "kernel_answers"), kernel + 1);
    assert_eq!(datapath_counter(&node, "replies_rewritten"), rewritten);
    assert_eq!(datapath_counter(&node, "queries_redirected"), redirected);
    // A TCP query is always the agent's: rewritten both ways, every segment (the counters
    // work).
    let reply = node
        .query(0, V4, names::WEB, RecordType::A, &QueryOptions::tcp())
        .unwrap();
    assert_eq!(addresses(&reply), [IpAddr::V4(WEB_V4)]);
    assert!(datapath_counter(&node, "replies_rewritten") > rewritten);
    assert!(datapath_counter(&node, "queries_redirected") > redirected);
    // The agent's own upstream probe (every 10 s) may add an SOA query, never more.
    assert!(node.backend_query_count().unwrap() - before <= 1);
    stop_agent(agent);
}

/// The `cache` key of `--config` bounds the cache: with room for one entry, a second name
/// evicts the first (least recently used), which then goes to a backend again.
#[test]
fn the_config_files_cache_bound_evicts_the_least_recently_used() {
    if !require_root("the_config_files_cache_bound_evicts_the_least_recently_used") {
        return;
    }
    let node = node_with(BackendMode::KnotBehindProxy, 1, 2);
    let config = node.workdir().join("nldns-config.json");
    std::fs::write(&config, r#"{"cache": {"maxEntries": 1}}"#).unwrap();
    let agent = start_agent(&node, &["--config", config.to_str().unwrap()]);
    let backend = |name| node.backend_queries_for(name, "A").unwrap();

    for _ in 0..2 {
        assert_eq!(
            addresses(&query(&node, V4, names::WEB, RecordType::A)),
            [IpAddr::V4(WEB_V4)]
        );
    }
    assert_eq!(backend(names::WEB), 1, "held while it is the only entry");
    query(&node, V4, names::KUBE_DNS, RecordType::A);
    assert_eq!(
        addresses(&query(&node, V4, names::WEB, RecordType::A)),
        [IpAddr::V4(WEB_V4)]
    );
    assert_eq!(
        backend(names::WEB),
        2,
        "evicted by the second name, so asked again"
    );

    let (_, text) = node.http_get(node.metrics_addr(), "/metrics").unwrap();
    assert_eq!(metric(&text, "nldns_cache_entries"), 1, "{text}");
    assert!(metric(&text, "nldns_cache_evictions_total") >= 2, "{text}");
    stop_agent(agent);
}
