//! Dataplanes that load-balance Services in connect()/sendmsg() (Cilium's kube-proxy
//! replacement, GKE Dataplane V2, Calico's eBPF mode): a stand-in's programs on the
//! node's root cgroup translate the ClusterIP to a backend the cache never uses before any
//! packet exists, so TC never sees the ClusterIP. The pods' socket hooks on kubelet's pod
//! cgroup (`kubepods.slice` under the run's cgroup) must see it first, answer from the
//! cache, fail open to the stand-in's path when the agent dies or hangs, and say where
//! they stand in `nldns status`.
//!
//! Everything is attached only to cgroups the test created (the run's cgroup and its
//! children), never to the machine's root cgroup. Need root; without it they print SKIP
//! (and fail in CI).

use std::path::{Path, PathBuf};
use std::time::Duration;

use nldns_tests::addresses::*;
use nldns_tests::socket_lb::{self, Attach, Flavour, SocketLb};
use nldns_tests::zones::names;
use nldns_tests::{agent_binary, cmd, require_root, AgentProcess, BackendMode, DigOutput, SimNode};

const KUBE_DNS: &str = "@10.96.0.10";
const KUBE_DNS6: &str = "@fd00:10:96::a";
/// The backend both kube-dns Services (and so the cache) use.
const CACHE_BACKEND: usize = 0;
/// The backend only the stand-in sends to.
const STANDIN_BACKEND: usize = 1;
/// kubelet's pod cgroups (systemd driver), below the run's cgroup.
const POD_CGROUP: &str = "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-poda.slice";

fn bin() -> PathBuf {
    agent_binary().expect("build the agent first (cargo build -p nldns-userspace) or set NLDNS_BIN")
}

/// A node with the run's cgroup, two backends of which only the first serves the
/// Services, and the stand-in on the run's cgroup (the node's root, as Cilium attaches to
/// the cgroup2 root) sending ClusterIP queries to the second.
fn node_with_standin(flavour: Flavour, how: Attach) -> (SimNode, SocketLb, PathBuf) {
    let node = SimNode::builder()
        .pods(1)
        .backends(2)
        .backend_mode(BackendMode::Knot)
        .with_cgroup()
        .build()
        .unwrap();
    node.set_kube_dns_endpoints(&[CACHE_BACKEND]).unwrap();
    let pod_cgroup = node.child_cgroup(POD_CGROUP).unwrap();
    let translation = socket_lb::translation(
        both(KUBE_DNS_V4, KUBE_DNS_V6),
        both(backend_v4(STANDIN_BACKEND), backend_v6(STANDIN_BACKEND)),
    )
    .unwrap();
    let lb = SocketLb::attach(node.cgroup_path().unwrap(), flavour, how, &translation).unwrap();
    (node, lb, pod_cgroup)
}

fn start_agent(node: &SimNode, extra: &[&str]) -> AgentProcess {
    let mut args = node.agent_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = node
        .spawn_agent_with_env(&bin(), &args, &[("RUST_LOG", "info")])
        .unwrap();
    assert!(
        node.wait_http_ok("/ready", Duration::from_secs(20)),
        "agent not ready: {}",
        agent.stderr()
    );
    agent
}

fn wait_pod_hooks(agent: &AgentProcess) {
    assert!(
        agent.wait_for_output(
            "pod interception in the socket layer",
            Duration::from_secs(10)
        ),
        "no pods' socket hooks: {}",
        agent.stderr()
    );
}

/// Queries answered by each backend so far.
fn counts(node: &SimNode) -> Vec<u64> {
    node.backend_query_counts().unwrap()
}

/// dig from the pod's namespace inside `cgroup`: answered with web's address, and the
/// application sees the ClusterIP it asked on the SERVER line.
fn dig_web(node: &SimNode, cgroup: &Path, server: &str, extra: &[&str]) -> DigOutput {
    let mut args = vec![server, names::WEB, "A"];
    args.extend_from_slice(extra);
    let out = node.dig_in_pod_cgroup(0, cgroup, &args).unwrap();
    out.assert_answered_by("A", &[WEB_V4.to_string()], server);
    out
}

fn datapath_counter(node: &SimNode, name: &str) -> u64 {
    node.datapath_counter(name).unwrap()
}

fn status(node: &SimNode) -> serde_json::Value {
    node.agent_status(&bin()).unwrap()
}

/// Without nldns the stand-in's path works (a pod's query reaches the stand-in's backend
/// only); with nldns every transport and family is answered by the cache, the stand-in's
/// backend sees nothing, and a pod cgroup made after the start is covered.
fn cache_answers_before_the_dataplane(flavour: Flavour, how: Attach) {
    let (node, _lb, pods) = node_with_standin(flavour, how);

    let before = counts(&node);
    dig_web(&node, &pods, KUBE_DNS, &[]);
    let after = counts(&node);
    assert_eq!(
        (after[CACHE_BACKEND], after[STANDIN_BACKEND]),
        (before[CACHE_BACKEND], before[STANDIN_BACKEND] + 1),
        "without nldns the stand-in must send the pod's query to its backend"
    );

    let agent = start_agent(&node, &[]);
    wait_pod_hooks(&agent);
    let tc_before = datapath_counter(&node, "queries_redirected");
    // Fill the cache once per family's transport, then every repeat is a hit.
    let transports: [(&str, &[&str]); 4] = [
        (KUBE_DNS, &[]),
        (KUBE_DNS, &["+tcp"]),
        (KUBE_DNS6, &[]),
        (KUBE_DNS6, &["+tcp"]),
    ];
    dig_web(&node, &pods, KUBE_DNS, &[]);
    let warm = counts(&node);
    assert_eq!(warm[STANDIN_BACKEND], after[STANDIN_BACKEND], "{warm:?}");
    for (server, extra) in transports {
        dig_web(&node, &pods, server, extra);
    }
    let hits = counts(&node);
    assert_eq!(
        hits, warm,
        "repeated queries must be cache hits, none reach a backend"
    );
    assert!(datapath_counter(&node, "pod_sock_redirected") >= 5);
    assert!(datapath_counter(&node, "pod_sock_restored") >= 3);
    assert_eq!(
        datapath_counter(&node, "queries_redirected"),
        tc_before,
        "TC must not see (or rewrite) what the socket hooks redirected"
    );
    // A hit in this form (the pod's socket talks to the intercept endpoint) is answered
    // by the kernel too (dig's default EDNS cookie would leave it to the agent), and the
    // application still sees the ClusterIP answering.
    let in_kernel = datapath_counter(&node, "kernel_answers");
    dig_web(&node, &pods, KUBE_DNS, &["+nocookie"]);
    dig_web(&node, &pods, KUBE_DNS6, &["+nocookie"]);
    assert_eq!(datapath_counter(&node, "kernel_answers"), in_kernel + 2);
    assert_eq!(counts(&node), warm);

    // A pod started after the agent: its cgroup inherits the hooks.
    let late = node
        .child_cgroup("kubepods.slice/kubepods-pod-late.slice")
        .unwrap();
    dig_web(&node, &late, KUBE_DNS, &[]);
    dig_web(&node, &late, KUBE_DNS6, &["+tcp"]);
    assert_eq!(
        counts(&node),
        warm,
        "the late pod's queries were cache hits"
    );

    let s = status(&node);
    let order = &s["pod_hooks"];
    assert_eq!(order["attached"], true, "{s:#}");
    assert_eq!(order["runs_first"], true, "{s:#}");
    let prefix = socket_lb::program_name(flavour, "connect4");
    assert!(
        order["after_ours"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["program_name"] == prefix.as_str()),
        "the stand-in runs after ours: {s:#}"
    );
    assert!(
        s["cgroup_attachments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["scope"] == "pods" && a["program_name"] == "nldns_pconnect4"),
        "{s:#}"
    );
    // Every program of the pods' set passed the verifier (it is loaded and attached).
    let loaded = s["cgroup_attachments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] == "pods")
        .count();
    assert_eq!(loaded, 8, "{s:#}");
}

#[test]
fn cilium_standin_pods_are_answered_by_the_cache_first() {
    if !require_root("cilium_standin_pods_are_answered_by_the_cache_first") {
        return;
    }
    cache_answers_before_the_dataplane(Flavour::Cilium, Attach::Link);
}

#[test]
fn calico_standin_pods_are_answered_by_the_cache_first() {
    if !require_root("calico_standin_pods_are_answered_by_the_cache_first") {
        return;
    }
    cache_answers_before_the_dataplane(Flavour::Calico, Attach::LegacyMulti);
}

/// kill -9: the pods' links go with the process (before its sockets), so the very next
/// pod query meets the stand-in and is answered by its backend; a restarted agent
/// intercepts again.
#[test]
fn killed_agent_leaves_pods_to_the_dataplane_at_once() {
    if !require_root("killed_agent_leaves_pods_to_the_dataplane_at_once") {
        return;
    }
    kill_and_restart(Flavour::Cilium, Attach::Link);
}

#[test]
fn killed_agent_leaves_pods_to_calico_at_once() {
    if !require_root("killed_agent_leaves_pods_to_calico_at_once") {
        return;
    }
    kill_and_restart(Flavour::Calico, Attach::LegacyMulti);
}

fn kill_and_restart(flavour: Flavour, how: Attach) {
    let (node, _lb, pods) = node_with_standin(flavour, how);
    let mut agent = start_agent(&node, &[]);
    wait_pod_hooks(&agent);
    dig_web(&node, &pods, KUBE_DNS, &[]);

    for round in 0..3 {
        let before = counts(&node);
        agent.kill9().unwrap();
        assert!(agent.wait_exit(Duration::from_secs(5)).is_some());
        // No retry allowed: one try, answered through the stand-in's path.
        let out = dig_web(&node, &pods, KUBE_DNS, &["+tries=1", "+time=2"]);
        let after = counts(&node);
        assert_eq!(
            after[STANDIN_BACKEND],
            before[STANDIN_BACKEND] + 1,
            "round {round}: the query after kill -9 must take the stand-in's path\n{}",
            out.raw
        );
        let s = status(&node);
        assert_eq!(s["pod_hooks"]["attached"], false, "round {round}: {s:#}");

        agent = start_agent(&node, &[]);
        wait_pod_hooks(&agent);
        dig_web(&node, &pods, KUBE_DNS6, &[]);
        let warm = counts(&node);
        dig_web(&node, &pods, KUBE_DNS6, &[]);
        assert_eq!(
            counts(&node),
            warm,
            "round {round}: the restarted agent answers"
        );
    }
}

/// SIGSTOP (a hung agent): within the heartbeat's max age the pods' hooks pass, and the
/// stand-in answers; after SIGCONT the cache answers again.
#[test]
fn hung_agent_leaves_pods_to_the_dataplane_within_a_second() {
    if !require_root("hung_agent_leaves_pods_to_the_dataplane_within_a_second") {
        return;
    }
    hang_and_resume(Flavour::Cilium, Attach::Link);
}

#[test]
fn hung_agent_leaves_pods_to_calico_within_a_second() {
    if !require_root("hung_agent_leaves_pods_to_calico_within_a_second") {
        return;
    }
    hang_and_resume(Flavour::Calico, Attach::LegacyMulti);
}

fn hang_and_resume(flavour: Flavour, how: Attach) {
    let (node, _lb, pods) = node_with_standin(flavour, how);
    let mut agent = start_agent(&node, &[]);
    wait_pod_hooks(&agent);
    dig_web(&node, &pods, KUBE_DNS, &[]);

    agent.sigstop().unwrap();
    let before = counts(&node);
    // The last heartbeat is at most a quarter of the max age (750 ms) old at SIGSTOP;
    // 1 s of waiting leaves slack for a loaded machine.
    std::thread::sleep(Duration::from_millis(1000));
    dig_web(&node, &pods, KUBE_DNS, &["+tries=1", "+time=2"]);
    assert_eq!(
        counts(&node)[STANDIN_BACKEND],
        before[STANDIN_BACKEND] + 1,
        "1 s after SIGSTOP the query must take the stand-in's path"
    );

    agent.sigcont().unwrap();
    let recovered = cmd::wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
        let before = counts(&node);
        let out = node
            .dig_in_pod_cgroup(0, &pods, &[KUBE_DNS, names::WEB, "A"])
            .unwrap();
        !out.timed_out() && counts(&node) == before
    });
    assert!(recovered, "interception did not resume after SIGCONT");
    // The fail-open passes were counted while the heartbeat was stale.
    let s = status(&node);
    let passes = s["instances"][0]["counters"]["pod_sock_fail_open_passes"]
        .as_u64()
        .unwrap_or(0);
    assert!(passes >= 1, "{s:#}");
    agent.sigterm().unwrap();
    assert!(agent.wait_exit(Duration::from_secs(10)).is_some());
}

/// A dataplane program on an ancestor attached with BPF_F_ALLOW_OVERRIDE would be
/// replaced for every pod by a program on the pods' cgroup: the agent must not attach
/// there, must say so, and pods keep the dataplane's path (today's behaviour).
#[test]
fn override_attached_dataplane_is_never_replaced() {
    if !require_root("override_attached_dataplane_is_never_replaced") {
        return;
    }
    let (node, _lb, pods) = node_with_standin(Flavour::Cilium, Attach::LegacyOverride);
    let agent = start_agent(&node, &[]);
    assert!(
        agent.wait_for_output("no pods' socket hooks on", Duration::from_secs(10)),
        "{}",
        agent.stderr()
    );
    assert!(
        agent.stderr().contains("BPF_F_ALLOW_MULTI"),
        "{}",
        agent.stderr()
    );
    let before = counts(&node);
    dig_web(&node, &pods, KUBE_DNS, &[]);
    assert_eq!(
        counts(&node)[STANDIN_BACKEND],
        before[STANDIN_BACKEND] + 1,
        "the dataplane's program must still translate the pods' queries"
    );
    let s = status(&node);
    assert_eq!(s["pod_hooks"]["attached"], false, "{s:#}");
    assert!(
        s["pod_hooks"]["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["reason"].as_str().unwrap().contains("BPF_F_ALLOW_MULTI")),
        "{s:#}"
    );
    // The text form says why.
    let cgroup = node.cgroup_path().unwrap().display().to_string();
    let out = node
        .exec_in_node(
            bin().to_str().unwrap(),
            &["status", "--cgroup", &cgroup],
            Duration::from_secs(20),
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        text.contains("pods' socket hooks on") && text.contains("not attached"),
        "{text}"
    );
}

/// A surge upgrade with the stand-in present: the old agent's hooks run first until it
/// stops beating, then the new one's; a pod querying all along sees no failure.
#[test]
fn surge_upgrade_with_a_socket_lb_dataplane_loses_no_query() {
    if !require_root("surge_upgrade_with_a_socket_lb_dataplane_loses_no_query") {
        return;
    }
    surge_upgrade(Flavour::Cilium, Attach::Link);
}

#[test]
fn surge_upgrade_with_calico_loses_no_query() {
    if !require_root("surge_upgrade_with_calico_loses_no_query") {
        return;
    }
    surge_upgrade(Flavour::Calico, Attach::LegacyMulti);
}

fn surge_upgrade(flavour: Flavour, how: Attach) {
    let (node, _lb, pods) = node_with_standin(flavour, how);
    let mut old = start_agent(&node, &[]);
    wait_pod_hooks(&old);

    // A pod's resolver with its normal retry (2 tries, 1 s), one query after the other
    // for 15 s: before, during and after the handover.
    let script = "sent=0; ok=0; end=$(( $(date +%s) + 15 )); \
        while [ $(date +%s) -lt $end ]; do sent=$((sent+1)); \
        if dig +tries=2 +time=1 +short @10.96.0.10 web.default.svc.cluster.local A \
           | grep -qx 10.96.5.5; then ok=$((ok+1)); fi; done; echo sent=$sent ok=$ok";
    let load = {
        let pods = pods.clone();
        let node_ref = &node;
        std::thread::scope(|scope| {
            let load = scope.spawn(move || {
                node_ref
                    .exec_in_pod_cgroup(0, &pods, "sh", &["-c", script], Duration::from_secs(240))
                    .unwrap()
            });
            std::thread::sleep(Duration::from_secs(2));
            let new = start_agent(&node, &[]);
            wait_pod_hooks(&new);
            std::thread::sleep(Duration::from_secs(1));
            old.sigterm().unwrap();
            let exit = old.wait_exit(Duration::from_secs(10));
            assert!(exit.is_some_and(|s| s.success()), "old agent: {exit:?}");
            let joined = load.join().unwrap();
            (joined, new)
        })
    };
    let (output, mut new) = load;
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("surge with a socket-LB dataplane: {stdout}");
    let field = |key: &str| -> u64 {
        stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (sent, ok) = (field("sent="), field("ok="));
    assert!(sent > 100, "the load did not run: {stdout}");
    assert_eq!(
        ok,
        sent,
        "failed queries: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let s = status(&node);
    assert_eq!(s["pod_hooks"]["runs_first"], true, "{s:#}");
    new.sigterm().unwrap();
    assert!(new.wait_exit(Duration::from_secs(10)).is_some());
}

/// A dataplane program attached below the pods' cgroup runs before nldns's for the pods
/// there: the agent cannot be first for them and says so (start-up and status); those
/// pods keep the dataplane's path, every other pod is answered by the cache.
#[test]
fn dataplane_below_the_pods_cgroup_is_reported_not_first() {
    if !require_root("dataplane_below_the_pods_cgroup_is_reported_not_first") {
        return;
    }
    let node = SimNode::builder()
        .pods(1)
        .backends(2)
        .backend_mode(BackendMode::Knot)
        .with_cgroup()
        .build()
        .unwrap();
    node.set_kube_dns_endpoints(&[CACHE_BACKEND]).unwrap();
    let other_pod = node.child_cgroup(POD_CGROUP).unwrap();
    let grabbed_pod = node
        .child_cgroup("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podb.slice")
        .unwrap();
    let translation = socket_lb::translation(
        both(KUBE_DNS_V4, KUBE_DNS_V6),
        both(backend_v4(STANDIN_BACKEND), backend_v6(STANDIN_BACKEND)),
    )
    .unwrap();
    let _lb = SocketLb::attach(&grabbed_pod, Flavour::Calico, Attach::Link, &translation).unwrap();

    let agent = start_agent(&node, &[]);
    wait_pod_hooks(&agent);
    assert!(
        agent.wait_for_output("below the pods' cgroup", Duration::from_secs(5)),
        "{}",
        agent.stderr()
    );
    let s = status(&node);
    let order = &s["pod_hooks"];
    assert_eq!(
        (order["attached"].as_bool(), order["runs_first"].as_bool()),
        (Some(true), Some(false)),
        "{s:#}"
    );
    assert!(
        order["problems"].as_array().unwrap().iter().any(|p| {
            p["program"]["cgroup"] == grabbed_pod.display().to_string().as_str()
                && p["reason"]
                    .as_str()
                    .unwrap()
                    .contains("below the pods' cgroup")
        }),
        "{s:#}"
    );

    let before = counts(&node);
    dig_web(&node, &grabbed_pod, KUBE_DNS, &[]);
    assert_eq!(
        counts(&node)[STANDIN_BACKEND],
        before[STANDIN_BACKEND] + 1,
        "the pod below keeps the dataplane's path"
    );
    dig_web(&node, &other_pod, KUBE_DNS, &[]);
    let warm = counts(&node);
    dig_web(&node, &other_pod, KUBE_DNS, &[]);
    assert_eq!(
        counts(&node),
        warm,
        "every other pod is answered by the cache"
    );
}
