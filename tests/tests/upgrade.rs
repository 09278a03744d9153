//! Zero-downtime upgrade: a second agent starts while the first runs, takes the next block
//! of intercept ports and attaches its programs ahead of the first one's, so it answers;
//! then the first gets SIGTERM (heartbeat cleared, ingress detached, queries in flight
//! drained, egress detached, exit 0). Under a steady load from several pods no query may
//! fail (one resolver retry allowed), in TCX mode and in netlink mode. See docs/upgrade.md.
//! Also: during the overlap each pod's probe reaches its own agent (--probe-socket).

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use nldns_tests::addresses::*;
use nldns_tests::zones::names;
use nldns_tests::{
    agent_binary, require_root, AgentProcess, ResolverLoad, ResolverLoadOptions, SimNode,
};

const SERVICE_IPS: [IpAddr; 2] = [IpAddr::V4(KUBE_DNS_V4), IpAddr::V6(KUBE_DNS_V6)];

/// One datapath instance as `nldns status --json` shows it.
#[derive(Debug, Clone)]
struct Instance {
    ingress_program_id: u64,
    base_port: u64,
    intercepting: bool,
    /// Queries it took: redirected to its agent, or answered by its kernel responder.
    taken: u64,
}

fn instances(node: &SimNode, bin: &Path) -> Vec<Instance> {
    node.agent_instances(bin)
        .expect("nldns status --json")
        .iter()
        .map(|i| Instance {
            ingress_program_id: i["ingress_program_id"].as_u64().unwrap_or(0),
            base_port: i["intercept_base_port"].as_u64().unwrap_or(0),
            intercepting: i["intercepting"] == true,
            taken: ["queries_redirected", "kernel_answers"]
                .iter()
                .map(|c| i["counters"][c].as_u64().unwrap_or(0))
                .sum(),
        })
        .collect()
}

fn instance(node: &SimNode, bin: &Path, program: u64) -> Instance {
    instances(node, bin)
        .into_iter()
        .find(|i| i.ingress_program_id == program)
        .unwrap_or_else(|| panic!("no instance with ingress program {program}"))
}

fn start_agent(node: &SimNode, bin: &Path, mode: &str) -> AgentProcess {
    let mut args = node.agent_args();
    args.extend(["--attach-mode".to_string(), mode.to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    node.spawn_agent(bin, &args).expect("starting an agent")
}

/// Waits until `n` instances intercept; returns them.
fn wait_instances(node: &SimNode, bin: &Path, n: usize, agent: &AgentProcess) -> Vec<Instance> {
    let mut last = Vec::new();
    let ok =
        nldns_tests::cmd::wait_until(Duration::from_secs(30), Duration::from_millis(20), || {
            last = instances(node, bin);
            last.iter().filter(|i| i.intercepting).count() == n
        });
    assert!(
        ok,
        "expected {n} intercepting instances, saw {last:?}\n{}",
        agent.stderr()
    );
    last
}

fn handover(mode: &str) {
    let bin = agent_binary().expect("build the agent first");
    let node = SimNode::new(3, 2).expect("node");
    let mut old = start_agent(&node, &bin, mode);
    let first = wait_instances(&node, &bin, 1, &old).remove(0);
    assert!(node.wait_http_ok("/ready", Duration::from_secs(20)));

    let mut options = ResolverLoadOptions::new(
        SERVICE_IPS.to_vec(),
        vec![
            (names::WEB.into(), RecordType::A),
            (names::KUBE_DNS.into(), RecordType::AAAA),
            (names::DB_HEADLESS.into(), RecordType::A),
            (names::SRV_DNS_UDP.into(), RecordType::SRV),
        ],
    );
    options.max_duration = Duration::from_secs(60);
    let load = ResolverLoad::start(&node, &node.pod_indexes(), options).expect("load");
    std::thread::sleep(Duration::from_secs(2));

    // The new agent: next port block, programs attached ahead of the old ones.
    let mut new = start_agent(&node, &bin, mode);
    let both = wait_instances(&node, &bin, 2, &new);
    let second = both
        .iter()
        .find(|i| i.ingress_program_id != first.ingress_program_id)
        .expect("the new instance")
        .clone();
    println!(
        "{mode}: old instance prog {} ports {}+, new instance prog {} ports {}+",
        first.ingress_program_id, first.base_port, second.ingress_program_id, second.base_port
    );
    assert_eq!(
        second.base_port,
        first.base_port + 32,
        "the new agent must take the next block (two runs of 16 ports per agent)"
    );

    // Who answers: over 1.5 s of load, the old instance takes nothing, the new one all
    // (redirected to its agent or answered by its kernel responder).
    std::thread::sleep(Duration::from_millis(500));
    let (old_a, new_a) = (
        instance(&node, &bin, first.ingress_program_id).taken,
        instance(&node, &bin, second.ingress_program_id).taken,
    );
    std::thread::sleep(Duration::from_millis(1500));
    let (old_b, new_b) = (
        instance(&node, &bin, first.ingress_program_id).taken,
        instance(&node, &bin, second.ingress_program_id).taken,
    );
    println!(
        "{mode}: with both running, over 1.5 s the old instance took {}, the new one {}",
        old_b - old_a,
        new_b - new_a
    );
    assert_eq!(old_b, old_a, "the old agent still takes queries");
    assert!(new_b > new_a + 50, "the new agent takes no queries");

    // The old agent leaves: SIGTERM, clean exit.
    let stopping = Instant::now();
    old.sigterm().expect("SIGTERM");
    let exit = old.wait_exit(Duration::from_secs(10));
    println!(
        "{mode}: old agent exited {exit:?} after {:?}",
        stopping.elapsed()
    );
    assert!(
        exit.is_some_and(|s| s.success()),
        "old agent: {exit:?}\n{}",
        old.stderr()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(new.is_running(), "{}", new.stderr());
    let left = instances(&node, &bin);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].ingress_program_id, second.ingress_program_id);

    let report = load.stop();
    println!("{mode} upgrade handover: {}", report.summary());
    for (error, n) in report.error_kinds() {
        println!("  {n:>5} x {error}");
    }
    assert!(
        report.sent() > 500,
        "the load did not run: {}",
        report.summary()
    );
    assert!(report.failed().is_empty(), "{}", report.summary());

    new.sigterm().expect("SIGTERM");
    assert!(new
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
    let status = node.agent_status(&bin).unwrap();
    assert_eq!(
        status["attachments"].as_array().map(Vec::len),
        Some(0),
        "{status:#}"
    );
}

#[test]
fn upgrade_handover_tcx_loses_no_query() {
    if !require_root("upgrade_handover_tcx_loses_no_query") {
        return;
    }
    handover("tcx");
}

#[test]
fn upgrade_handover_netlink_loses_no_query() {
    if !require_root("upgrade_handover_netlink_loses_no_query") {
        return;
    }
    handover("netlink");
}

/// `nldns probe` asks the agent behind the given --probe-socket, and no other.
fn probe(node: &SimNode, bin: &Path, kind: &str, socket: &Path) -> Result<(), String> {
    let out = node
        .exec_in_node(
            bin.to_str().expect("UTF-8 agent path"),
            &["probe", kind, "--probe-socket", socket.to_str().unwrap()],
            Duration::from_secs(10),
        )
        .map_err(|e| format!("{e:#}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// During a surge both agents answer the shared health port, so only the per-pod probe
/// socket can tell a broken new agent from its working predecessor (docs/operations.md,
/// Upgrade). Here the new agent's upstream is a closed port: it attaches, but must never
/// look ready, while the old one does.
#[test]
fn surge_probes_reach_exactly_their_own_agent() {
    if !require_root("surge_probes_reach_exactly_their_own_agent") {
        return;
    }
    let bin = agent_binary().expect("build the agent first");
    let node = SimNode::new(1, 1).expect("node");
    let old_socket = node.workdir().join("old-probe.sock");
    let new_socket = node.workdir().join("new-probe.sock");

    let mut args = node.agent_args();
    args.extend(["--probe-socket".into(), old_socket.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut old = node.spawn_agent(&bin, &args).expect("old agent");
    assert!(
        nldns_tests::cmd::wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            probe(&node, &bin, "ready", &old_socket).is_ok()
        }),
        "the old agent never got ready:\n{}",
        old.stderr()
    );

    // The same node, but kube-dns-uncached replaced by a closed port on the node.
    let mut args = node.agent_args();
    let upstreams: Vec<usize> = args
        .iter()
        .enumerate()
        .filter(|(_, a)| *a == "--upstream")
        .map(|(i, _)| i + 1)
        .collect();
    for i in upstreams {
        args[i] = "127.0.0.1:9".into();
    }
    args.extend(["--probe-socket".into(), new_socket.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut new = node.spawn_agent(&bin, &args).expect("new agent");
    wait_instances(&node, &bin, 2, &new);

    // Both processes serve their probes; only the old one is ready, every time.
    assert!(
        nldns_tests::cmd::wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            probe(&node, &bin, "health", &new_socket).is_ok()
                && probe(&node, &bin, "ready", &new_socket).is_err()
        }),
        "the new agent's probes:\n{}",
        new.stderr()
    );
    for _ in 0..5 {
        let not_ready = probe(&node, &bin, "ready", &new_socket).unwrap_err();
        assert!(not_ready.contains("503"), "{not_ready}");
        probe(&node, &bin, "ready", &old_socket).expect("the old agent is ready");
        std::thread::sleep(Duration::from_millis(200));
    }

    // With the old agent gone, the new one is still not ready, and its socket file goes
    // with its clean exit.
    old.sigterm().unwrap();
    assert!(old
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
    assert!(
        !old_socket.exists(),
        "a clean exit removes the probe socket"
    );
    assert!(probe(&node, &bin, "ready", &old_socket).is_err());
    assert!(probe(&node, &bin, "ready", &new_socket).is_err());
    new.sigterm().unwrap();
    assert!(new
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
}
