//! The agent under resource pressure, as the DaemonSet runs it: inside a cgroup with the
//! chart's memory limit (128 MiB) or a small CPU quota, while pods flood it with names
//! that are never cached and kube-dns is slow.
//!
//! - Memory: two pods flood unique cluster names over both families for
//!   [`MEMORY_FLOOD_FOR`] while kube-dns answers only after 3 s (past the agent's upstream
//!   timeout, so every exchange of the flood is held to its end). The agent must never be
//!   OOM-killed, its peak RSS must stay below [`RSS_BOUND`], and a third pod's cached
//!   names must keep answering.
//! - CPU: the agent's cgroup gets a fifth of a CPU while the flooders send as fast as the
//!   harness paces them. The agent must shed (fast SERVFAILs, counted in /metrics), its
//!   liveness probe (`nldns probe health`, run inside the agent's cgroup as the kubelet's
//!   exec probe is) must never fail three times in a row (the kubelet's restart rule), and
//!   the miss path's gauges must stay within their bounds.
//!
//! Load is bounded in count and time (docs/testing.md, rule 5): each flood socket sends
//! at most 2,000 queries a second in bursts of at most `nldns_tests::burst::FLOOD_BURST_NAMES` names. Latencies
//! and throughput are printed, never asserted.

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use nldns_tests::addresses::*;
use nldns_tests::burst::flood_unique_names;
use nldns_tests::cgroup::AgentCgroup;
use nldns_tests::zones;
use nldns_tests::{
    agent_binary, require_root, AgentProcess, BackendMode, Behaviour, QueryOptions, ResolverLoad,
    ResolverLoadOptions, SimNode,
};

const SERVICE_IPS: [IpAddr; 2] = [IpAddr::V4(KUBE_DNS_V4), IpAddr::V6(KUBE_DNS_V6)];
const FLOODERS: [usize; 2] = [0, 1];
const VICTIM: usize = 2;
/// How long the memory test floods: long enough for every bound to be reached and held
/// (the cache's negative entries expire and are replaced many times over, upstream
/// exchanges time out and restart hundreds of times).
const MEMORY_FLOOD_FOR: Duration = Duration::from_secs(300);
/// The CPU test's flood: enough for the CPU quota to throttle the agent many hundred
/// times (each 100 ms period) and for the liveness probe to run a dozen times.
const CPU_FLOOD_FOR: Duration = Duration::from_secs(60);
/// The DaemonSet's memory limit (deploy/helm values `resources.limits.memory`).
const MEMORY_MAX: u64 = 128 << 20;
/// Peak resident memory the agent may reach under the flood: half the limit, so that a
/// node's page cache of the agent's own files and the kernel's socket buffers (charged to
/// the same cgroup) still fit.
const RSS_BOUND: u64 = 64 << 20;
/// kube-dns's delay: longer than the agent's upstream timeout (2 s).
const UPSTREAM_DELAY: Duration = Duration::from_secs(3);
/// The CPU quota: 20 ms of CPU time per 100 ms.
const CPU_QUOTA: Duration = Duration::from_millis(20);
const CPU_PERIOD: Duration = Duration::from_millis(100);
/// The chart's liveness probe: `timeoutSeconds: 2`, `periodSeconds: 10`,
/// `failureThreshold: 3`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const PROBE_PERIOD: Duration = Duration::from_secs(5);
const PROBE_FAILURE_THRESHOLD: usize = 3;

/// Samples the agent's RSS every 250 ms while `run` runs; returns the largest sample and
/// prints one every 30 s, so a report shows what grew when.
fn sampling_rss<T>(agent: &AgentProcess, run: impl FnOnce() -> T) -> (T, u64) {
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let started = Instant::now();
            let mut peak = 0;
            let mut printed = Duration::ZERO;
            while !done.load(Ordering::Relaxed) {
                let rss = agent.memory_bytes("VmRSS").unwrap_or(0);
                peak = peak.max(rss);
                if started.elapsed() >= printed {
                    println!(
                        "  at {:>3} s: VmRSS {:.1} MiB",
                        printed.as_secs(),
                        rss as f64 / 1048576.0
                    );
                    printed += Duration::from_secs(30);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            peak
        });
        let result = run();
        done.store(true, Ordering::Relaxed);
        (result, sampler.join().unwrap())
    })
}

/// The cgroup for the agent, or None (printed SKIP outside CI, a failure in CI) when this
/// host cannot limit memory and CPU.
fn agent_cgroup(test: &str, node: &SimNode) -> Option<AgentCgroup> {
    let run_cgroup = node.cgroup_path().expect("built with_cgroup");
    match AgentCgroup::create(run_cgroup) {
        Ok(cgroup) => Some(cgroup),
        Err(error) => {
            if std::env::var_os("CI").is_some() {
                panic!("{test} needs memory and cpu cgroups in CI: {error:#}");
            }
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIP {test}: {error:#}");
            None
        }
    }
}

fn pressure_node() -> SimNode {
    SimNode::builder()
        .pods(3)
        .backends(2)
        .backend_mode(BackendMode::KnotBehindProxy)
        .with_cgroup()
        .build()
        .unwrap()
}

/// Asks every steady name over both families from the victim and asserts an answer.
fn assert_victim_cached(node: &SimNode, when: &str) {
    for (name, rtype) in zones::steady_names() {
        for server in SERVICE_IPS {
            let reply = node
                .query(VICTIM, server, &name, rtype, &QueryOptions::default())
                .unwrap_or_else(|e| panic!("{when}: {name} {rtype} via {server}: {e:#}"));
            assert!(
                reply.metadata.response_code == ResponseCode::NoError && !reply.answers.is_empty(),
                "{when}: {name} {rtype} via {server}: {reply:?}"
            );
        }
    }
}

fn victim_load(duration: Duration) -> ResolverLoadOptions {
    let mut options = ResolverLoadOptions::new(SERVICE_IPS.to_vec(), zones::steady_names());
    options.max_duration = duration + Duration::from_secs(10);
    options
}

fn stop_agent(agent: &mut AgentProcess) {
    agent.sigterm().unwrap();
    assert!(agent
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
}

#[test]
fn memory_limited_agent_survives_a_flood_of_unique_names_against_a_slow_upstream() {
    let test = "memory_limited_agent_survives_a_flood_of_unique_names_against_a_slow_upstream";
    if !require_root(test) {
        return;
    }
    let bin = agent_binary().expect("build the agent first");
    let node = pressure_node();
    let Some(cgroup) = agent_cgroup(test, &node) else {
        return;
    };
    cgroup.set_memory_max(MEMORY_MAX).unwrap();
    let mut agent = node.start_agent_in(&cgroup, &bin, &[]).unwrap();
    node.wait_intercepting(&bin, &mut agent).unwrap();
    let pid = agent.pid();
    let rss_idle = agent.memory_bytes("VmRSS").unwrap();
    assert_victim_cached(&node, "before the flood");
    node.set_backend_behaviour(Behaviour::Delay(UPSTREAM_DELAY))
        .unwrap();

    let victim = ResolverLoad::start(&node, &[VICTIM], victim_load(MEMORY_FLOOD_FOR)).unwrap();
    println!(
        "agent {pid} in {}, memory.max {} MiB; flood {MEMORY_FLOOD_FOR:?}",
        cgroup.describe(),
        MEMORY_MAX >> 20
    );
    let (totals, rss_sampled) = sampling_rss(&agent, || {
        flood_unique_names(&node, &FLOODERS, &SERVICE_IPS, MEMORY_FLOOD_FOR).unwrap()
    });
    let victim_report = victim.stop();
    let alive = agent.is_running();
    let oom_kills = cgroup.oom_kills().unwrap();
    let hwm = agent.memory_bytes("VmHWM").unwrap_or(0);
    let cgroup_peak = cgroup.memory_peak();
    let mib = |b: u64| b as f64 / 1048576.0;
    println!("flood: {}", totals.summary());
    victim_report.print(&format!("pod {VICTIM} cached names during the flood"));
    println!(
        "agent RSS idle {:.1} MiB, largest sample {:.1} MiB, VmHWM {:.1} MiB; cgroup peak {}; \
         oom_kill {oom_kills}; cache {:?} entries, {:?} bytes; quota rejects {:?}, overload {:?}",
        mib(rss_idle),
        mib(rss_sampled),
        mib(hwm),
        cgroup_peak.map_or("n/a".into(), |p| format!("{:.1} MiB", mib(p))),
        node.metric("nldns_cache_entries"),
        node.metric("nldns_cache_bytes"),
        node.metric("nldns_source_quota_rejects_total"),
        node.metric("nldns_upstream_overload_total"),
    );

    assert!(alive, "the agent died: {}", agent.stderr());
    assert_eq!(oom_kills, 0, "the agent's cgroup saw OOM kills");
    let sent = totals.sent.load(Ordering::Relaxed);
    assert!(
        sent >= 100_000,
        "the flood did not run: sent {sent} queries"
    );
    let peak = hwm.max(rss_sampled);
    assert!(
        peak < RSS_BOUND,
        "peak RSS {:.1} MiB, bound {:.1} MiB",
        mib(peak),
        mib(RSS_BOUND)
    );
    // The victim's own counts: its cached names answered throughout, within a resolver's
    // one retry.
    assert!(victim_report.sent() > 1000, "{}", victim_report.summary());
    assert!(
        victim_report.failed().len() * 100 <= victim_report.sent(),
        "cached names during the flood: {}",
        victim_report.summary()
    );
    assert_victim_cached(&node, "after the flood");
    node.set_backend_behaviour(Behaviour::Normal).unwrap();
    stop_agent(&mut agent);
}

/// Runs `nldns probe health` inside `cgroup` (where the kubelet's exec probe runs: in the
/// agent's container) every `PROBE_PERIOD` until `stop`; returns each probe's outcome
/// (success within `PROBE_TIMEOUT`) and duration.
fn probing(
    bin: &Path,
    socket: &Path,
    cgroup: &AgentCgroup,
    stop: &AtomicBool,
) -> Vec<(bool, Duration)> {
    let procs: Vec<String> = cgroup
        .procs_files()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let mut results = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let out = nldns_tests::cmd::output_with_timeout(
            "sh",
            &[
                "-c".to_string(),
                "for p in $0; do echo $$ > \"$p\" || exit 125; done; exec \"$@\"".to_string(),
                procs.join(" "),
                bin.display().to_string(),
                "probe".into(),
                "health".into(),
                "--probe-socket".into(),
                socket.display().to_string(),
            ],
            None,
            PROBE_TIMEOUT,
        );
        let took = started.elapsed();
        let ok = out.is_ok_and(|o| o.status.success()) && took <= PROBE_TIMEOUT;
        results.push((ok, took));
        let wait = PROBE_PERIOD.saturating_sub(took);
        let until = Instant::now() + wait;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    results
}

#[test]
fn cpu_starved_agent_sheds_and_keeps_passing_its_liveness_probe() {
    let test = "cpu_starved_agent_sheds_and_keeps_passing_its_liveness_probe";
    if !require_root(test) {
        return;
    }
    let bin = agent_binary().expect("build the agent first");
    let node = pressure_node();
    let Some(cgroup) = agent_cgroup(test, &node) else {
        return;
    };
    cgroup.set_cpu_max(CPU_QUOTA, CPU_PERIOD).unwrap();
    let probe_socket = node.workdir().join("probe.sock");
    let probe_arg = probe_socket.display().to_string();
    let mut agent = node
        .start_agent_in(&cgroup, &bin, &["--probe-socket", &probe_arg])
        .unwrap();
    node.wait_intercepting(&bin, &mut agent).unwrap();
    assert_victim_cached(&node, "before the flood");
    node.set_backend_behaviour(Behaviour::Delay(UPSTREAM_DELAY))
        .unwrap();
    let throttled_before = cgroup.cpu_throttled();
    let shed_names = [
        "nldns_source_quota_rejects_total",
        "nldns_upstream_overload_total",
        "nldns_upstream_rate_limited_total",
        "nldns_udp_receive_drops_total",
    ];
    let shed_before: Vec<f64> = shed_names
        .iter()
        .map(|n| node.metric(n).unwrap_or(0.0))
        .collect();

    let victim = ResolverLoad::start(&node, &[VICTIM], victim_load(CPU_FLOOD_FOR)).unwrap();
    let stop = AtomicBool::new(false);
    let gauges = Arc::new(std::sync::Mutex::new((0.0f64, 0.0f64, 0usize)));
    let (probes, totals) = std::thread::scope(|scope| {
        let probes = scope.spawn(|| probing(&bin, &probe_socket, &cgroup, &stop));
        let sampler = scope.spawn(|| {
            // The miss path's gauges, scraped like Prometheus does (a scrape may time out
            // while the agent is starved; those are skipped).
            while !stop.load(Ordering::Relaxed) {
                let in_flight = node.metric("nldns_upstream_in_flight");
                let waiting = node.metric("nldns_waiting_queries");
                let mut g = gauges.lock().unwrap();
                if let (Some(i), Some(w)) = (in_flight, waiting) {
                    g.0 = g.0.max(i);
                    g.1 = g.1.max(w);
                    g.2 += 1;
                }
                drop(g);
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        let totals = flood_unique_names(&node, &FLOODERS, &SERVICE_IPS, CPU_FLOOD_FOR);
        stop.store(true, Ordering::Relaxed);
        sampler.join().unwrap();
        (probes.join().unwrap(), totals.unwrap())
    });
    let victim_report = victim.stop();
    let alive = agent.is_running();
    let throttled_after = cgroup.cpu_throttled();
    let shed: Vec<f64> = shed_names
        .iter()
        .zip(&shed_before)
        .map(|(n, before)| node.metric(n).unwrap_or(0.0) - before)
        .collect();
    let (max_in_flight, max_waiting, scrapes) = *gauges.lock().unwrap();
    // `nldns status` shows the same sheds, read from the agent.
    let status = node.agent_status(&bin).unwrap();
    let limits = &status["limits"];
    println!("nldns status --json limits: {limits}");

    println!("flood: {}", totals.summary());
    victim_report.print(&format!("pod {VICTIM} cached names during the flood"));
    for (name, value) in shed_names.iter().zip(&shed) {
        println!("  {name} +{value}");
    }
    println!(
        "cpu.stat throttled before {throttled_before:?}, after {throttled_after:?}; \
         gauges over {scrapes} scrapes: upstream in flight max {max_in_flight}, waiting max {max_waiting}"
    );
    let slowest = probes.iter().map(|(_, t)| *t).max();
    println!(
        "liveness probes: {} run, {} failed, slowest {slowest:?}",
        probes.len(),
        probes.iter().filter(|(ok, _)| !ok).count()
    );

    assert!(alive, "the agent died: {}", agent.stderr());
    let throttled = match (throttled_before, throttled_after) {
        (Some((before, _)), Some((after, _))) => after - before,
        _ => 0,
    };
    assert!(throttled > 0, "the CPU quota never throttled the agent");
    assert!(
        probes.len() >= 5,
        "only {} liveness probes ran",
        probes.len()
    );
    let mut consecutive = 0;
    for (ok, took) in &probes {
        consecutive = if *ok { 0 } else { consecutive + 1 };
        assert!(
            consecutive < PROBE_FAILURE_THRESHOLD,
            "{PROBE_FAILURE_THRESHOLD} liveness probes failed in a row (the last took {took:?}): \
             the kubelet would restart the agent; probes {probes:?}"
        );
    }
    // Shedding: flood queries answered SERVFAIL at once, and the answered sheds counted.
    let fast = totals.fast_servfails.load(Ordering::Relaxed);
    let sent = totals.sent.load(Ordering::Relaxed);
    assert!(sent >= 20_000, "the flood did not run: sent {sent}");
    assert!(fast > 0, "no flood query got a fast SERVFAIL");
    let counted: f64 = shed[..3].iter().sum();
    assert!(
        counted >= fast as f64 / 2.0,
        "{fast} fast SERVFAILs but the shed counters rose by {counted}"
    );
    assert!(limits["error"].is_null(), "status: {limits}");
    assert!(
        limits["counters"]["nldns_source_quota_rejects_total"]
            .as_f64()
            .is_some_and(|v| v >= shed[0]),
        "status: {limits}"
    );
    // The miss path's queues stay within their bounds (the engine's defaults).
    assert!(scrapes > 0, "no scrape of the gauges succeeded");
    assert!(
        max_in_flight <= 1000.0,
        "upstream in flight {max_in_flight}"
    );
    assert!(max_waiting <= 10_000.0, "waiting queries {max_waiting}");
    assert_victim_cached(&node, "after the flood");
    node.set_backend_behaviour(Behaviour::Normal).unwrap();
    stop_agent(&mut agent);
}
