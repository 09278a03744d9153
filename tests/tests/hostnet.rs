//! Host-network interception: processes in the node's own network namespace (kubelet,
//! hostNetwork pods) that sit in the hooked cgroup get their ClusterIP queries answered by
//! the cache, through the agent's cgroup socket hooks; everything else is untouched, and a
//! dead or hung agent sends them back to kube-dns through kube-proxy.
//!
//! The hooks are attached only to the run's own cgroup (`SimNode::with_cgroup`), never to
//! the machine's root cgroup. Need root; without it they print SKIP (and fail in CI).

use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use nldns_tests::addresses::*;
use nldns_tests::dns_client::build_query;
use nldns_tests::zones::names;
use nldns_tests::{
    agent_binary, cmd, require_root, AgentProcess, BackendMode, QueryOptions, SimNode,
};

const KUBE_DNS: &str = "@10.96.0.10";
const KUBE_DNS6: &str = "@fd00:10:96::a";

fn node() -> SimNode {
    SimNode::builder()
        .pods(1)
        .backends(1)
        .backend_mode(BackendMode::KnotBehindProxy)
        .with_cgroup()
        .build()
        .unwrap()
}

fn bin() -> PathBuf {
    agent_binary().expect("build the agent first (cargo build -p nldns-userspace) or set NLDNS_BIN")
}

/// Starts the agent with the node's usual flags (which include `--cgroup <run cgroup>`)
/// and waits until it is ready and its socket hooks are attached.
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
    assert!(
        agent.wait_for_output("socket hooks on", Duration::from_secs(5)),
        "no socket hooks: {}",
        agent.stderr()
    );
    agent
}

fn datapath_counter(node: &SimNode, name: &str) -> u64 {
    node.datapath_counter(name).unwrap()
}

fn backend_queries(node: &SimNode, name: &str, rtype: &str) -> usize {
    node.backend_queries_for(name, rtype).unwrap()
}

/// dig inside the run's cgroup, answered, with `server` on the SERVER line.
fn dig_in_cgroup(node: &SimNode, server: &str, extra: &[&str]) -> nldns_tests::DigOutput {
    let mut args = vec![server, names::WEB, "A"];
    args.extend_from_slice(extra);
    let out = node.dig_from_node_cgroup(&args).unwrap();
    out.assert_answered_by("A", &[WEB_V4.to_string()], server);
    out
}

#[test]
fn host_network_queries_in_the_cgroup_are_answered_by_the_cache() {
    if !require_root("host_network_queries_in_the_cgroup_are_answered_by_the_cache") {
        return;
    }
    let node = node();
    let mut agent = start_agent(&node, &[]);

    // The first query fills the cache (one upstream query), the following ones over
    // every transport and family are answered from it.
    dig_in_cgroup(&node, KUBE_DNS, &[]);
    let upstream_after_miss = backend_queries(&node, names::WEB, "A");
    assert!(upstream_after_miss >= 1);
    // A pod's process in the hooked cgroup: the socket hooks leave it alone (its network
    // namespace has no intercept endpoint) and TC redirects it, exactly once.
    let sock_before_pod = datapath_counter(&node, "sock_redirected");
    let tc_before_pod = datapath_counter(&node, "queries_redirected");
    let pod_netns = format!("--net={}", node.pod_netns(0).unwrap().path().display());
    let out = node
        .exec_in_node_cgroup(
            "nsenter",
            &[
                &pod_netns,
                "dig",
                "+tries=1",
                "+time=1",
                KUBE_DNS,
                names::WEB,
                "A",
            ],
            Duration::from_secs(30),
        )
        .unwrap();
    let pod_dig = nldns_tests::dig::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        pod_dig.answer_data("A"),
        [WEB_V4.to_string()],
        "{}",
        pod_dig.raw
    );
    assert_eq!(
        datapath_counter(&node, "sock_redirected"),
        sock_before_pod,
        "socket hooks skip other network namespaces"
    );
    assert_eq!(
        datapath_counter(&node, "queries_redirected"),
        tc_before_pod + 1,
        "TC redirected the pod's query"
    );

    let tc_redirected = datapath_counter(&node, "queries_redirected");
    let tc_rewritten = datapath_counter(&node, "replies_rewritten");
    let sock_redirected = datapath_counter(&node, "sock_redirected");

    for (server, extra) in [
        (KUBE_DNS, &[][..]),
        (KUBE_DNS, &["+tcp"][..]),
        (KUBE_DNS6, &[][..]),
        (KUBE_DNS6, &["+tcp"][..]),
    ] {
        let out = dig_in_cgroup(&node, server, extra);
        let tcp = extra.contains(&"+tcp");
        assert_eq!(
            out.transport().as_deref(),
            Some(if tcp { "TCP" } else { "UDP" }),
            "{}",
            out.raw
        );
    }
    assert_eq!(
        backend_queries(&node, names::WEB, "A"),
        upstream_after_miss,
        "the cache answered: no new upstream query for a cached name"
    );
    assert!(
        datapath_counter(&node, "sock_redirected") >= sock_redirected + 4,
        "each query was redirected by a socket hook"
    );
    // By construction the redirected query carries the intercept address, not the
    // ClusterIP, and never crosses a pod interface: TC rewrote nothing.
    assert_eq!(datapath_counter(&node, "queries_redirected"), tc_redirected);
    assert_eq!(datapath_counter(&node, "replies_rewritten"), tc_rewritten);

    // What applications see: the ClusterIP in getpeername() and as the reply's source,
    // on connected and unconnected UDP, TCP, IPv4, IPv6 and v4-mapped IPv6 sockets.
    let exe = std::env::current_exe().unwrap();
    let exe = exe.to_str().unwrap();
    let out = node
        .exec_in_node_cgroup(
            "env",
            &[
                "NLDNS_SOCK_CHILD=1",
                exe,
                "--exact",
                "socket_views_child_helper",
                "--nocapture",
                "--test-threads=1",
            ],
            Duration::from_secs(60),
        )
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for case in [
        "udp-connected 10.96.0.10:53",
        "udp-unconnected 10.96.0.10:53",
        "tcp 10.96.0.10:53",
        "udp-connected [fd00:10:96::a]:53",
        "udp-unconnected [fd00:10:96::a]:53",
        "tcp [fd00:10:96::a]:53",
        "udp-unconnected [::ffff:10.96.0.10]:53",
        "tcp [::ffff:10.96.0.10]:53",
    ] {
        assert!(stdout.contains(&format!("OK {case}\n")), "{case}: {stdout}");
    }
    assert_eq!(
        backend_queries(&node, names::WEB, "A"),
        upstream_after_miss,
        "the socket-level clients were answered by the cache too"
    );
    assert!(datapath_counter(&node, "sock_restored") > 0);
    println!(
        "socket hooks: redirected {} restored {}; TC redirected {} rewritten {}; upstream \
         queries for {} A: {}",
        datapath_counter(&node, "sock_redirected"),
        datapath_counter(&node, "sock_restored"),
        datapath_counter(&node, "queries_redirected"),
        datapath_counter(&node, "replies_rewritten"),
        names::WEB,
        upstream_after_miss
    );

    // A host process outside the run's cgroup is not affected: kube-proxy's NAT sends
    // each of its queries to the backends.
    for round in 1..=2 {
        let reply = node
            .query_from_node(
                IpAddr::V4(KUBE_DNS_V4),
                names::WEB,
                RecordType::A,
                &QueryOptions::default(),
            )
            .unwrap();
        assert!(!reply.answers.is_empty());
        assert_eq!(
            backend_queries(&node, names::WEB, "A"),
            upstream_after_miss + round,
            "round {round}: outside the cgroup every query reaches a backend"
        );
    }

    // `nldns status` lists the hooks on the cgroup.
    let status = nldns_status(&node);
    let hooks = status["cgroup_attachments"].as_array().unwrap();
    let cgroup = node.cgroup_path().unwrap().display().to_string();
    for hook in [
        "connect4",
        "connect6",
        "sendmsg4",
        "sendmsg6",
        "recvmsg4",
        "recvmsg6",
        "getpeername4",
        "getpeername6",
    ] {
        assert!(
            hooks.iter().any(|h| h["hook"] == hook
                && h["cgroup"] == cgroup.as_str()
                && h["program_id"].as_u64().unwrap_or(0) > 0),
            "{hook} not listed: {status}"
        );
    }
    for conflict in status["socket_lb_conflicts"].as_array().unwrap() {
        assert!(
            !conflict["program_name"]
                .as_str()
                .unwrap()
                .starts_with("nldns_"),
            "our own hooks are no conflict: {status}"
        );
    }
    agent.sigterm().unwrap();
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .expect("clean exit");
    assert!(status.success(), "{}", agent.stderr());
}

fn nldns_status(node: &SimNode) -> serde_json::Value {
    node.agent_status(&bin()).unwrap()
}

/// The child half of the test above, run inside the run's cgroup in the node namespace:
/// talks to the ClusterIPs with plain sockets and prints what the application sees.
/// Does nothing unless the parent test started it.
#[test]
fn socket_views_child_helper() {
    if std::env::var_os("NLDNS_SOCK_CHILD").is_none() {
        return;
    }
    let v4: SocketAddr = "10.96.0.10:53".parse().unwrap();
    let v6: SocketAddr = "[fd00:10:96::a]:53".parse().unwrap();
    let mapped: SocketAddr = "[::ffff:10.96.0.10]:53".parse().unwrap();
    let timeout = Some(Duration::from_secs(2));
    let query = || {
        build_query(names::WEB, RecordType::A, &QueryOptions::default())
            .unwrap()
            .to_vec()
            .unwrap()
    };
    let check_reply = |bytes: &[u8], case: &str| {
        let reply = Message::from_vec(bytes).unwrap();
        assert!(!reply.answers.is_empty(), "{case}: empty reply");
    };
    let any = |server: &SocketAddr| -> SocketAddr {
        if server.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        }
    };

    for server in [v4, v6] {
        // Connected UDP: getpeername shows the ClusterIP.
        let socket = UdpSocket::bind(any(&server)).unwrap();
        socket.set_read_timeout(timeout).unwrap();
        socket.connect(server).unwrap();
        assert_eq!(socket.peer_addr().unwrap(), server);
        socket.send(&query()).unwrap();
        let mut buf = [0u8; 4096];
        let len = socket.recv(&mut buf).unwrap();
        check_reply(&buf[..len], "udp-connected");
        println!("OK udp-connected {server}");
    }
    for server in [v4, v6, mapped] {
        // Unconnected UDP: the reply's source is the ClusterIP.
        let socket = UdpSocket::bind(any(&server)).unwrap();
        socket.set_read_timeout(timeout).unwrap();
        socket.send_to(&query(), server).unwrap();
        let mut buf = [0u8; 4096];
        let (len, from) = socket.recv_from(&mut buf).unwrap();
        assert_eq!(from, server, "reply source");
        check_reply(&buf[..len], "udp-unconnected");
        println!("OK udp-unconnected {server}");
    }
    for server in [v4, v6, mapped] {
        let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(2)).unwrap();
        stream.set_read_timeout(timeout).unwrap();
        assert_eq!(stream.peer_addr().unwrap(), server, "tcp getpeername");
        let q = query();
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        std::io::Write::write_all(&mut stream, &framed).unwrap();
        let mut len = [0u8; 2];
        std::io::Read::read_exact(&mut stream, &mut len).unwrap();
        let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
        std::io::Read::read_exact(&mut stream, &mut body).unwrap();
        check_reply(&body, "tcp");
        println!("OK tcp {server}");
    }
}

#[test]
fn killed_agent_leaves_host_queries_to_kube_proxy() {
    if !require_root("killed_agent_leaves_host_queries_to_kube_proxy") {
        return;
    }
    let node = node();
    let mut agent = start_agent(&node, &[]);
    dig_in_cgroup(&node, KUBE_DNS, &[]);
    dig_in_cgroup(&node, KUBE_DNS, &[]);
    let before = backend_queries(&node, names::WEB, "A");

    agent.kill9().unwrap();
    assert!(agent.wait_exit(Duration::from_secs(5)).is_some());
    // The links died with the process: the very next query goes through kube-proxy.
    for (server, extra) in [(KUBE_DNS, &[][..]), (KUBE_DNS6, &["+tcp"][..])] {
        dig_in_cgroup(&node, server, extra);
    }
    assert_eq!(
        backend_queries(&node, names::WEB, "A"),
        before + 2,
        "both queries reached a backend"
    );
    let status = nldns_status(&node);
    assert_eq!(
        status["cgroup_attachments"].as_array().unwrap().len(),
        0,
        "nothing left on the cgroup: {status}"
    );
    // Links die with their process: cleanup finds nothing of ours on the cgroup.
    let cgroup = node.cgroup_path().unwrap().display().to_string();
    let out = node
        .exec_in_node(
            bin().to_str().unwrap(),
            &["cleanup", "--cgroup", &cgroup],
            Duration::from_secs(20),
        )
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !stdout.contains("hook"), "{stdout}");
}

#[test]
fn stopped_agent_fails_open_within_a_second_and_recovers() {
    if !require_root("stopped_agent_fails_open_within_a_second_and_recovers") {
        return;
    }
    let node = node();
    // Default heartbeat max age: 1 s.
    let mut agent = start_agent(&node, &[]);
    dig_in_cgroup(&node, KUBE_DNS, &[]);

    agent.sigstop().unwrap();
    let before = backend_queries(&node, names::WEB, "A");
    // The last heartbeat is at most max_age/4 old at SIGSTOP, so by 1 s the hooks pass
    // everything; 0.3 s of slack for a loaded machine.
    std::thread::sleep(Duration::from_millis(1300));
    let asked = Instant::now();
    let out = node
        .dig_from_node_cgroup(&[KUBE_DNS, names::WEB, "A", "+time=2"])
        .unwrap();
    assert_eq!(out.answer_data("A"), [WEB_V4.to_string()], "{}", out.raw);
    assert_eq!(
        backend_queries(&node, names::WEB, "A"),
        before + 1,
        "1.3 s after SIGSTOP the query went through kube-proxy to a backend"
    );
    println!(
        "answer through kube-proxy 1.3 s after SIGSTOP, in {:?}",
        asked.elapsed()
    );

    agent.sigcont().unwrap();
    // Once the heartbeat is fresh again, a cached name no longer reaches a backend.
    let recovered = cmd::wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
        let before = backend_queries(&node, names::WEB, "A");
        let out = node
            .dig_from_node_cgroup(&[KUBE_DNS, names::WEB, "A"])
            .unwrap();
        !out.timed_out() && backend_queries(&node, names::WEB, "A") == before
    });
    assert!(recovered, "interception did not resume after SIGCONT");
    assert!(datapath_counter(&node, "sock_fail_open_passes") > 0);
    agent.sigterm().unwrap();
    assert!(agent.wait_exit(Duration::from_secs(10)).is_some());
}

/// Stand-ins for other dataplanes (and for a leftover of ours): a sock_addr program that
/// only returns 1, loaded under a chosen name and attached the legacy way
/// (BPF_PROG_ATTACH, which unlike a link outlives its process, as older Cilium and Calico
/// releases do).
mod foreign_hook {
    use std::path::Path;

    use nldns_tests::raw_bpf::{
        Program, BPF_CGROUP_INET4_CONNECT, BPF_F_ALLOW_MULTI, BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        RETURN_1,
    };

    /// Loads `r0 = 1; exit` as a connect4 program named `name` (at most 15 bytes).
    pub fn load_allow_all_connect4(name: &str) -> Program {
        Program::load(
            BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            BPF_CGROUP_INET4_CONNECT,
            name,
            &RETURN_1,
        )
        .unwrap()
    }

    /// Legacy multi attachment of `program` to the connect4 hook of `cgroup`.
    pub fn attach_connect4(cgroup: &Path, program: &Program) {
        let dir = std::fs::File::open(cgroup).unwrap();
        program
            .attach_legacy(&dir, BPF_CGROUP_INET4_CONNECT, BPF_F_ALLOW_MULTI)
            .unwrap();
    }
}

#[test]
fn socket_lb_of_other_dataplanes_is_reported_and_leftovers_are_cleaned() {
    if !require_root("socket_lb_of_other_dataplanes_is_reported_and_leftovers_are_cleaned") {
        return;
    }
    let node = node();
    let cgroup = node.cgroup_path().unwrap().to_path_buf();
    // Cilium's socket LB program as the kernel names it (15 bytes of cil_sock4_connect),
    // and a leftover of ours attached the legacy way.
    let cilium = foreign_hook::load_allow_all_connect4("cil_sock4_conne");
    foreign_hook::attach_connect4(&cgroup, &cilium);
    let leftover = foreign_hook::load_allow_all_connect4("nldns_connect4");
    foreign_hook::attach_connect4(&cgroup, &leftover);

    let status = nldns_status(&node);
    let conflicts = status["socket_lb_conflicts"].as_array().unwrap();
    assert!(
        conflicts
            .iter()
            .any(|c| c["program_name"] == "cil_sock4_conne"
                && c["hook"] == "connect4"
                && c["dataplane"].as_str().unwrap().starts_with("cilium")),
        "{status}"
    );
    assert!(
        status["cgroup_attachments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["program_name"] == "nldns_connect4" && a["hook"] == "connect4"),
        "{status}"
    );

    let path = cgroup.display().to_string();
    let out = node
        .exec_in_node(
            bin().to_str().unwrap(),
            &["cleanup", "--cgroup", &path],
            Duration::from_secs(20),
        )
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("removed connect4 hook nldns_connect4"),
        "{stdout}"
    );
    let status = nldns_status(&node);
    assert_eq!(
        status["cgroup_attachments"].as_array().unwrap().len(),
        0,
        "{status}"
    );
    assert!(
        !status["socket_lb_conflicts"].as_array().unwrap().is_empty(),
        "cleanup never touches other dataplanes' programs: {status}"
    );

    // The agent says so at start-up, and still works for this cgroup: the stand-in only
    // allows, it does not rewrite.
    let agent = start_agent(&node, &[]);
    assert!(
        agent.wait_for_output("likely cilium", Duration::from_secs(5)),
        "{}",
        agent.stderr()
    );
    dig_in_cgroup(&node, KUBE_DNS, &[]);

    // The text form an operator reads.
    let out = node
        .exec_in_node(
            bin().to_str().unwrap(),
            &["status", "--cgroup", &path],
            Duration::from_secs(20),
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        text.contains("WARNING: connect4 program cil_sock4_conne")
            && text.contains("likely cilium")
            && text
                .lines()
                .any(|l| l.contains("getpeername6") && l.contains(&path)),
        "{text}"
    );
}

/// The kernel's complexity limit (BPF_COMPLEXITY_LIMIT_INSNS): a program whose
/// verification processes more instructions is rejected.
const VERIFIER_LIMIT: u32 = 1_000_000;

#[test]
fn every_program_passes_the_verifier_and_its_work_is_recorded() {
    if !require_root("every_program_passes_the_verifier_and_its_work_is_recorded") {
        return;
    }
    let node = node();
    let _agent = start_agent(&node, &[]);
    let status = nldns_status(&node);
    // The TC programs on the pod's interface and every cgroup socket hook.
    let mut programs: Vec<(String, u64)> = Vec::new();
    for attachment in status["attachments"].as_array().unwrap() {
        programs.push((
            format!("tc-{}", attachment["direction"].as_str().unwrap()),
            attachment["program_id"].as_u64().unwrap(),
        ));
    }
    for hook in status["cgroup_attachments"].as_array().unwrap() {
        programs.push((
            format!("cgroup-{}", hook["hook"].as_str().unwrap()),
            hook["program_id"].as_u64().unwrap(),
        ));
    }
    programs.sort();
    programs.dedup();
    assert!(
        programs.iter().any(|p| p.0 == "tc-ingress") && programs.iter().any(|p| p.0 == "tc-egress"),
        "{status}"
    );
    assert!(programs.len() >= 10, "TC and 8 socket hooks: {programs:?}");
    let release = nldns_tests::kernel::release();
    let arch = std::env::consts::ARCH;
    let mut lines = String::new();
    for (hook, id) in &programs {
        let info = nldns_tests::raw_bpf::Program::open(*id as u32)
            .and_then(|p| p.info())
            .unwrap_or_else(|e| panic!("program {id} ({hook}): {e:#}"));
        assert_eq!(u64::from(info.id), *id);
        // Half the limit: growth shows up here long before a kernel rejects a program.
        assert!(
            info.verified_insns > 0 && info.verified_insns < VERIFIER_LIMIT / 2,
            "{hook} {}: the verifier processed {} insns (limit {VERIFIER_LIMIT})",
            info.name,
            info.verified_insns
        );
        eprintln!(
            "verifier: {hook} {} processed {} insns ({} after rewrites, {} bytes JITed)",
            info.name, info.verified_insns, info.xlated_insns, info.jited_bytes
        );
        lines.push_str(
            &serde_json::json!({
                "kernel": release,
                "arch": arch,
                "hook": hook,
                "program": info.name,
                "verified_insns": info.verified_insns,
                "xlated_insns": info.xlated_insns,
                "jited_bytes": info.jited_bytes,
            })
            .to_string(),
        );
        lines.push('\n');
    }
    // `cargo xtask test` (and the kernel VMs) collect this for the bench report.
    if let Some(path) = std::env::var_os("NLDNS_VERIFIER_STATS") {
        std::fs::write(&path, lines).unwrap();
    }
}
