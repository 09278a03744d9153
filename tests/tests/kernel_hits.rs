//! Kernel answers on the simulated node: cache hits the TC program answers itself from the
//! map the agent's cache fills (`--kernel-answers`, on by default where the verifier takes
//! the responder). What is asserted is what an operator relies on: a hit never reaches the
//! agent's socket yet is counted like one; its TTL counts down and its last second is the
//! agent's; evicted and reloaded entries leave the kernel; prefetch still sees the hits the
//! kernel answered. Byte-for-byte equality with the agent's answers is the BPF_PROG_TEST_RUN
//! differential test's (nldns-userspace/tests/kernel_answers.rs).
//! They need root; without it they print SKIP (and fail in CI, where root is expected).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use nldns_tests::addresses::*;
use nldns_tests::zones::names;
use nldns_tests::{agent_binary, require_root, AgentProcess, BackendMode, QueryOptions, SimNode};

const V4: IpAddr = IpAddr::V4(KUBE_DNS_V4);
const V6: IpAddr = IpAddr::V6(KUBE_DNS_V6);

fn binary() -> PathBuf {
    agent_binary().expect(
        "build the agent first (cargo build -p nldns-userspace --bin nldns) or set NLDNS_BIN",
    )
}

/// A node whose backends log what reaches them.
fn node(pods: usize, backends: usize) -> SimNode {
    SimNode::builder()
        .pods(pods)
        .backends(backends)
        .backend_mode(BackendMode::KnotBehindProxy)
        .build()
        .unwrap()
}

/// The agent with the harness's flags plus `extra`, intercepting on every pod's veth.
fn start_agent(node: &SimNode, extra: &[&str]) -> AgentProcess {
    let bin = binary();
    let mut agent = node.start_agent(&bin, extra).unwrap();
    node.wait_intercepting(&bin, &mut agent).unwrap();
    let veths: Vec<String> = node
        .pod_indexes()
        .into_iter()
        .map(|i| node.pod_veth(i).unwrap().to_string())
        .collect();
    let attached =
        nldns_tests::cmd::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            let status = node.agent_status(&bin).unwrap();
            veths.iter().all(|veth| {
                status["attachments"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|a| a["interface"] == veth.as_str() && a["direction"] == "ingress")
                })
            })
        });
    assert!(attached, "not attached everywhere:\n{}", agent.stderr());
    agent
}

fn stop_agent(mut agent: AgentProcess) {
    agent.sigterm().unwrap();
    let exit = agent.wait_exit(Duration::from_secs(10));
    assert!(exit.is_some_and(|s| s.success()), "{}", agent.stderr());
}

/// This node's agent's datapath instance, from `nldns status --json`.
fn instance(node: &SimNode) -> serde_json::Value {
    node.agent_instances(&binary()).unwrap().remove(0)
}

fn counter(node: &SimNode, name: &str) -> u64 {
    instance(node)["counters"][name].as_u64().unwrap()
}

fn metric(node: &SimNode, sample: &str) -> u64 {
    node.metric(sample).unwrap_or(0.0) as u64
}

fn query(node: &SimNode, pod: usize, server: IpAddr, name: &str, rtype: RecordType) -> Message {
    let reply = node
        .query(pod, server, name, rtype, &QueryOptions::default())
        .unwrap();
    assert_eq!(
        reply.metadata.response_code,
        ResponseCode::NoError,
        "{reply:?}"
    );
    reply
}

fn address(reply: &Message) -> IpAddr {
    match &reply.answers[0].data {
        RData::A(a) => IpAddr::V4(a.0),
        RData::AAAA(a) => IpAddr::V6(a.0),
        other => panic!("not an address: {other:?}"),
    }
}

fn ttl(reply: &Message) -> u32 {
    reply.answers.iter().map(|r| r.ttl).min().unwrap()
}

#[test]
fn hits_are_answered_in_the_kernel_over_ipv4_and_ipv6_and_counted_like_the_agents() {
    if !require_root(
        "hits_are_answered_in_the_kernel_over_ipv4_and_ipv6_and_counted_like_the_agents",
    ) {
        return;
    }
    let node = node(2, 2);
    let agent = start_agent(&node, &[]);
    assert_eq!(instance(&node)["kernel_answers"]["mode"], "peer");

    let userspace_hits = r#"nldns_cache_hits_total{path="userspace"}"#;
    let kernel_hits = r#"nldns_cache_hits_total{path="kernel"}"#;
    let mut answered = 0;
    for (server, rtype, want) in [
        (V4, RecordType::A, IpAddr::V4(WEB_V4)),
        (V6, RecordType::AAAA, IpAddr::V6(WEB_V6)),
    ] {
        // The miss: through the agent to a backend, and published as it is stored.
        assert_eq!(address(&query(&node, 0, server, names::WEB, rtype)), want);
        let first_seen = node
            .backend_queries_for(names::WEB, &rtype.to_string())
            .unwrap();
        assert_eq!(first_seen, 1);
        let redirected = counter(&node, "queries_redirected");
        let in_kernel = counter(&node, "kernel_answers");
        let agent_hits = metric(&node, userspace_hits);
        for pod in [1, 0, 1, 0, 1] {
            let reply = query(&node, pod, server, names::WEB, rtype);
            assert_eq!(address(&reply), want);
            assert!(!reply.metadata.authoritative, "a cached answer is not AA");
        }
        answered += 5;
        assert_eq!(
            counter(&node, "kernel_answers"),
            in_kernel + 5,
            "answered in the kernel"
        );
        assert_eq!(
            counter(&node, "queries_redirected"),
            redirected,
            "none reached the agent"
        );
        assert_eq!(
            metric(&node, userspace_hits),
            agent_hits,
            "the agent answered none"
        );
        assert_eq!(
            node.backend_queries_for(names::WEB, &rtype.to_string())
                .unwrap(),
            1,
            "and no backend saw them"
        );
    }
    assert!(
        instance(&node)["kernel_answers"]["entries"]
            .as_u64()
            .unwrap()
            >= 2
    );
    // The table has BTF: bpftool prints its entries field by field.
    let dump = node
        .exec_in_node(
            "bpftool",
            &["map", "dump", "name", "NLDNS_ANSWERS"],
            Duration::from_secs(10),
        )
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    for field in [
        "\"qtype\"",
        "\"stored_at_ns\"",
        "\"pass_after_ns\"",
        "\"ttl_offsets\"",
    ] {
        assert!(
            dump.contains(field),
            "bpftool map dump without {field}:\n{dump}"
        );
    }
    // Read back within a second into the same hit and request series as the agent's own.
    let counted =
        nldns_tests::cmd::wait_until(Duration::from_secs(3), Duration::from_millis(100), || {
            metric(&node, kernel_hits) == answered
        });
    assert!(
        counted,
        "kernel hits {} of {answered}",
        metric(&node, kernel_hits)
    );
    let coredns_hits = metric(&node, "coredns_cache_hits_total");
    assert!(
        coredns_hits >= answered,
        "coredns_cache_hits_total {coredns_hits}"
    );
    stop_agent(agent);
}

/// `short-ttl` lives the agent's minimum TTL (5 s): the kernel counts its TTL down by the
/// whole seconds since it was stored, leaves the last second to the agent, and after it
/// the name is a miss again.
#[test]
fn the_ttl_counts_down_in_the_kernel_and_the_last_second_is_the_agents() {
    if !require_root("the_ttl_counts_down_in_the_kernel_and_the_last_second_is_the_agents") {
        return;
    }
    let node = node(1, 1);
    let agent = start_agent(&node, &[]);
    let backend = || node.backend_queries_for(names::SHORT_TTL, "A").unwrap();
    let ask = || query(&node, 0, V4, names::SHORT_TTL, RecordType::A);
    // The agent stored the answer between these two instants.
    let stored = Instant::now();
    let first = ttl(&ask());
    let stored_by = Instant::now();
    assert_eq!(first, 5, "clamped to the minimum TTL");
    let at = |ms| {
        if let Some(wait) =
            (stored + Duration::from_millis(ms)).checked_duration_since(Instant::now())
        {
            std::thread::sleep(wait);
        }
    };
    // Counters are read between queries only (a status run takes a while): each delta is
    // exactly that query's.
    let mut in_kernel = counter(&node, "kernel_answers");
    let mut previous = first;
    for ms in [1_400, 2_400, 3_400] {
        at(ms);
        let asked = Instant::now();
        let got = ttl(&ask());
        let answered = Instant::now();
        in_kernel += 1;
        assert_eq!(counter(&node, "kernel_answers"), in_kernel, "at {ms} ms");
        // Whole seconds since it was stored, whenever exactly in those windows.
        let most = first - (asked - stored_by).as_secs() as u32;
        let least = first - (answered - stored).as_secs() as u32;
        assert!(
            got <= previous && (least..=most).contains(&got),
            "TTL {got} at {ms} ms after {previous} (expected {least}..={most})"
        );
        previous = got;
    }
    let expiring = counter(&node, "kernel_pass_expiring");
    at(4_300);
    let got = ttl(&ask());
    assert_eq!(
        counter(&node, "kernel_pass_expiring"),
        expiring + 1,
        "its last second"
    );
    assert!(got <= 1, "the agent's answer, TTL {got}");
    assert_eq!(backend(), 1, "still a hit");
    at(5_600);
    ask();
    assert_eq!(backend(), 2, "expired: asked again");
    stop_agent(agent);
}

/// An evicted entry leaves the kernel with the cache; a reload empties the kernel's
/// table and the agent publishes again what it serves under the new configuration.
#[test]
fn eviction_and_reload_take_answers_out_of_the_kernel() {
    if !require_root("eviction_and_reload_take_answers_out_of_the_kernel") {
        return;
    }
    let node = node(1, 2);
    let config = node.workdir().join("nldns-config.json");
    std::fs::write(&config, r#"{"cache": {"maxEntries": 1}}"#).unwrap();
    let agent = start_agent(&node, &["--config", config.to_str().unwrap()]);
    let backend = |name| node.backend_queries_for(name, "A").unwrap();

    query(&node, 0, V4, names::WEB, RecordType::A);
    let in_kernel = counter(&node, "kernel_answers");
    query(&node, 0, V4, names::WEB, RecordType::A);
    assert_eq!(counter(&node, "kernel_answers"), in_kernel + 1);
    // A second name evicts the first (one entry): the kernel must not answer it any more.
    query(&node, 0, V4, names::KUBE_DNS, RecordType::A);
    let no_entry = counter(&node, "kernel_pass_no_entry");
    query(&node, 0, V4, names::WEB, RecordType::A);
    assert_eq!(counter(&node, "kernel_pass_no_entry"), no_entry + 1);
    assert_eq!(backend(names::WEB), 2, "evicted, so asked again");

    // Reload (a changed file): the table is emptied; the cache still holds WEB, so the
    // next query is the agent's hit, which publishes it again for the one after.
    std::fs::write(&config, r#"{"cache": {"maxEntries": 10}}"#).unwrap();
    let emptied =
        nldns_tests::cmd::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            instance(&node)["kernel_answers"]["entries"] == 0
        });
    assert!(emptied, "reload left {}", instance(&node)["kernel_answers"]);
    let no_entry = counter(&node, "kernel_pass_no_entry");
    query(&node, 0, V4, names::WEB, RecordType::A);
    assert_eq!(
        counter(&node, "kernel_pass_no_entry"),
        no_entry + 1,
        "the agent's, after the reload"
    );
    let in_kernel = counter(&node, "kernel_answers");
    query(&node, 0, V4, names::WEB, RecordType::A);
    assert_eq!(
        counter(&node, "kernel_answers"),
        in_kernel + 1,
        "published again"
    );
    assert_eq!(backend(names::WEB), 2, "all from the cache");
    stop_agent(agent);
}

/// Prefetch needs the hits of the entry's life, and here the kernel answered all of them
/// but the last: the agent must have read them back. `clusterMaxTtl` 10 s: the entry's prefetch
/// window (its last 10%) starts after 9 s.
#[test]
fn prefetch_refreshes_a_name_the_kernel_answered() {
    if !require_root("prefetch_refreshes_a_name_the_kernel_answered") {
        return;
    }
    let node = node(1, 1);
    let config = node.workdir().join("nldns-config.json");
    std::fs::write(
        &config,
        r#"{"cache": {"clusterMaxTtl": 10, "prefetch": {"enabled": true, "minHits": 5, "percent": 10}}}"#,
    )
    .unwrap();
    let agent = start_agent(&node, &["--config", config.to_str().unwrap()]);
    let backend = || node.backend_queries_for(names::WEB, "A").unwrap();
    let stored = Instant::now();
    query(&node, 0, V4, names::WEB, RecordType::A);
    let in_kernel = counter(&node, "kernel_answers");
    for _ in 0..6 {
        query(&node, 0, V4, names::WEB, RecordType::A);
    }
    assert_eq!(
        counter(&node, "kernel_answers"),
        in_kernel + 6,
        "hits in the kernel"
    );
    assert_eq!(backend(), 1);
    std::thread::sleep(
        (stored + Duration::from_millis(9_300)).saturating_duration_since(Instant::now()),
    );
    // In the window the kernel passes: the agent sees 7 hits (6 read back) and refreshes.
    query(&node, 0, V4, names::WEB, RecordType::A);
    let refreshed =
        nldns_tests::cmd::wait_until(Duration::from_secs(2), Duration::from_millis(50), || {
            backend() == 2
        });
    assert!(refreshed, "prefetched: backend saw {} queries", backend());
    assert_eq!(
        metric(&node, "nldns_prefetches_total"),
        1,
        "a prefetch, not a miss"
    );
    std::thread::sleep(
        (stored + Duration::from_millis(11_000)).saturating_duration_since(Instant::now()),
    );
    query(&node, 0, V4, names::WEB, RecordType::A);
    assert_eq!(
        backend(),
        2,
        "the refreshed entry answers past the old one's end"
    );
    stop_agent(agent);
}

/// With `--kernel-answers off` the plain ingress program is attached and every hit is
/// the agent's, as before kernel answers existed.
#[test]
fn kernel_answers_off_attaches_the_plain_program() {
    if !require_root("kernel_answers_off_attaches_the_plain_program") {
        return;
    }
    let node = node(1, 1);
    let agent = start_agent(&node, &["--kernel-answers", "off"]);
    let status = node.agent_status(&binary()).unwrap();
    let ingress: Vec<&serde_json::Value> = status["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["direction"] == "ingress")
        .map(|a| &a["program_name"])
        .collect();
    assert!(ingress.iter().all(|p| *p == "nldns_ingress"), "{ingress:?}");
    assert_eq!(instance(&node)["kernel_answers"]["mode"], "off");
    query(&node, 0, V4, names::WEB, RecordType::A);
    query(&node, 0, V4, names::WEB, RecordType::A);
    assert_eq!(counter(&node, "kernel_answers"), 0);
    assert_eq!(
        metric(&node, r#"nldns_cache_hits_total{path="userspace"}"#),
        1
    );
    stop_agent(agent);
}
