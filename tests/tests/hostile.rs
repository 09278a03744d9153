//! A hostile neighbour on the node: one pod floods the kube-dns ClusterIP
//! with random subdomains of cluster.local (a "water torture" attack: every query a
//! miss) while kube-dns never answers, and another pod on the same node must keep its
//! DNS: its cached names from the cache, its new names from the upstream that still
//! answers (the node's resolv.conf resolver, for `*.new.example.org`).
//!
//! The kube-dns backends' proxy can only be made silent for every name at once, so the
//! victim's new names are names outside the cluster zones, which the agent asks the
//! node's resolvers for. They still share the node-wide bounds of the miss path
//! (`limits.maxUpstreamInFlight`, 1000 exchanges) with the flood: without the per-source
//! quota (`limits.maxUpstreamInFlightPerSource`, 100) the flood fills those bounds and
//! the victim's new names get SERVFAIL.
//!
//! Bounded: the flood runs 10 s (at most 20,000 queries per address family, paced by the
//! harness's `burst`), the victim's loads at most 16 s. Success ratios come from the
//! victim's own counts; latencies are printed, never asserted.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use nldns_tests::addresses::*;
use nldns_tests::burst::{burst, BurstReport};
use nldns_tests::resolver_load::quantile;
use nldns_tests::zones;
use nldns_tests::{
    agent_binary, require_root, BackendMode, Behaviour, QueryOptions, ResolverLoad,
    ResolverLoadOptions, SimNode,
};
use rand::Rng;

const SERVICE_IPS: [IpAddr; 2] = [IpAddr::V4(KUBE_DNS_V4), IpAddr::V6(KUBE_DNS_V6)];
const FLOODER: usize = 0;
const VICTIM: usize = 1;
const BYSTANDER: usize = 2;
const FLOOD_FOR: Duration = Duration::from_secs(10);
/// Per address family: 10 queries every 5 ms at most, so 20,000 in 10 s at most.
const FLOOD_MAX: usize = 20_000;
/// How long the flood's reader waits for late replies after the last send: past the
/// agent's upstream timeouts (2 s per upstream family).
const FLOOD_WAIT: Duration = Duration::from_secs(5);

/// The sum of a counter's samples (all label sets) in the agent's /metrics.
fn counter(node: &SimNode, name: &str) -> f64 {
    let (_, text) = node.http_get(node.metrics_addr(), "/metrics").unwrap();
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn random_label(rng: &mut impl Rng) -> String {
    (0..12)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect()
}

/// Distinct random subdomains of cluster.local to `server` for `FLOOD_FOR` (at most
/// `FLOOD_MAX`), as fast as the burst paces them, replies read until `FLOOD_WAIT` after.
fn flood(server: SocketAddr) -> anyhow::Result<BurstReport> {
    let mut rng = rand::rng();
    let names = std::iter::repeat_with(move || {
        format!("{}.default.svc.cluster.local.", random_label(&mut rng))
    })
    .take(FLOOD_MAX);
    burst(server, names, FLOOD_FOR, FLOOD_WAIT)
}

#[test]
fn noisy_neighbour_flood_of_misses_leaves_other_pods_dns_working() {
    if !require_root("noisy_neighbour_flood_of_misses_leaves_other_pods_dns_working") {
        return;
    }
    let bin = agent_binary().expect("build the agent first");
    let node = SimNode::builder()
        .pods(3)
        .backends(2)
        .backend_mode(BackendMode::KnotBehindProxy)
        .build()
        .unwrap();
    let mut agent = node.start_agent(&bin, &[]).unwrap();
    node.wait_intercepting(&bin, &mut agent).unwrap();

    // Warm the victim's cached names over both families, and check that a new name of
    // the outside zone resolves before the attack.
    for (name, rtype) in zones::steady_names() {
        for server in SERVICE_IPS {
            let reply = node
                .query(VICTIM, server, &name, rtype, &QueryOptions::default())
                .unwrap();
            assert!(!reply.answers.is_empty(), "{name} {rtype}: {reply:?}");
        }
    }
    let reply = node
        .query(
            VICTIM,
            SERVICE_IPS[0],
            "warm-up.new.example.org.",
            RecordType::A,
            &QueryOptions::default(),
        )
        .unwrap();
    assert!(!reply.answers.is_empty(), "{reply:?}");

    let rejects_before = counter(&node, "nldns_source_quota_rejects_total");
    // kube-dns stops answering: every flood query holds an upstream exchange until the
    // agent's upstream timeout.
    node.set_backend_behaviour(Behaviour::Drop).unwrap();

    // The victim: cached names as fast as one resolver thread asks them (up to 1000 a
    // second), and new names (each asked once) at 50 a second.
    let mut cached = ResolverLoadOptions::new(SERVICE_IPS.to_vec(), zones::steady_names());
    cached.interval = Duration::from_millis(1);
    cached.max_duration = FLOOD_FOR + FLOOD_WAIT + Duration::from_secs(1);
    let cached_load = ResolverLoad::start(&node, &[VICTIM], cached).unwrap();
    let mut rng = rand::rng();
    let new_names: Vec<(String, RecordType)> = (0..1000)
        .map(|i| {
            (
                format!("b{i}-{}.new.example.org.", random_label(&mut rng)),
                RecordType::A,
            )
        })
        .collect();
    let mut new = ResolverLoadOptions::new(SERVICE_IPS.to_vec(), new_names);
    new.max_duration = FLOOD_FOR + FLOOD_WAIT + Duration::from_secs(1);
    let new_load = ResolverLoad::start(&node, &[VICTIM], new).unwrap();
    // A third pod with cached names at the usual pace, for the record.
    let mut bystander = ResolverLoadOptions::new(SERVICE_IPS.to_vec(), zones::steady_names());
    bystander.max_duration = FLOOD_FOR + FLOOD_WAIT + Duration::from_secs(1);
    let bystander_load = ResolverLoad::start(&node, &[BYSTANDER], bystander).unwrap();

    // The flooder: both families at once (two source addresses, two quotas).
    let flood_started = Instant::now();
    let floods: Vec<BurstReport> = node
        .pod_netns(FLOODER)
        .unwrap()
        .run_inside(|| {
            std::thread::scope(|scope| {
                let threads: Vec<_> = SERVICE_IPS
                    .iter()
                    .map(|ip| scope.spawn(move || flood(SocketAddr::new(*ip, 53)).unwrap()))
                    .collect();
                threads
                    .into_iter()
                    .map(|t| t.join().unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .unwrap();
    let flood_took = flood_started.elapsed();
    let cached_report = cached_load.stop();
    let new_report = new_load.stop();
    let bystander_report = bystander_load.stop();
    let agent_running = agent.is_running();
    let rejects = counter(&node, "nldns_source_quota_rejects_total") - rejects_before;
    let overload = counter(&node, "nldns_upstream_overload_total");

    let sent: usize = floods.iter().map(|f| f.sent).sum();
    let replies: usize = floods.iter().map(|f| f.replies.len()).sum();
    let servfails: Vec<Duration> = floods
        .iter()
        .flat_map(|f| &f.replies)
        .filter(|(rcode, _)| *rcode == ResponseCode::ServFail)
        .map(|(_, latency)| *latency)
        .collect();
    // Faster than the agent's upstream timeout (2 s): refused by the quota, not timed out.
    let fast_servfails = servfails
        .iter()
        .filter(|l| **l < Duration::from_secs(1))
        .count();
    println!(
        "flood from pod {FLOODER} ({flood_took:?} with the reply wait): sent {sent}, replies {replies}, \
         SERVFAIL {} (faster than 1 s: {fast_servfails}; p50 {:?}, p99 {:?}); \
         nldns_source_quota_rejects_total +{rejects}, nldns_upstream_overload_total {overload}",
        servfails.len(),
        quantile(servfails.clone(), 0.5),
        quantile(servfails.clone(), 0.99),
    );
    cached_report.print(&format!("pod {VICTIM} cached names (first try)"));
    new_report.print(&format!("pod {VICTIM} new names"));
    bystander_report.print(&format!("pod {BYSTANDER} cached names"));

    assert!(agent_running, "the agent died: {}", agent.stderr());
    // The victim's own counts.
    let cached_sent = cached_report.sent();
    let cached_first_failures = cached_report.first_try_failures().len();
    assert!(cached_sent > 1000, "{}", cached_report.summary());
    assert!(
        cached_first_failures * 1000 <= cached_sent,
        "cached names: {} (needed 99.9% first-try success)",
        cached_report.summary()
    );
    let new_sent = new_report.sent();
    let new_failed = new_report.failed().len();
    assert!(
        new_failed * 100 <= new_sent,
        "new names: {} (needed 99% success within one retry)",
        new_report.summary()
    );
    assert!(new_sent >= 200, "{}", new_report.summary());

    assert!(sent > 10_000, "the flood did not run: sent {sent}");
    // Almost every flood query is refused at once by the flooder's quota.
    assert!(
        fast_servfails * 2 >= sent,
        "only {fast_servfails} of {sent} flood queries got a fast SERVFAIL"
    );
    assert!(
        rejects >= fast_servfails as f64 / 2.0,
        "nldns_source_quota_rejects_total rose by {rejects}, fast SERVFAILs {fast_servfails}"
    );
    node.set_backend_behaviour(Behaviour::Normal).unwrap();
    agent.sigterm().unwrap();
    assert!(agent
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
}
