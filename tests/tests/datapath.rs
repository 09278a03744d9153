//! The interception datapath in place: real TC programs attached by the real agent on a
//! simulated node, against kube-proxy's iptables DNAT for the same ClusterIP and knot as
//! kube-dns. Each test proves who answered: the cache (the backend saw no query for the
//! name) or kube-dns through kube-proxy (the backend saw it).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::{Duration, Instant},
};

use hickory_proto::rr::{RData, RecordType};
use nldns_tests::{
    addresses::{KUBE_DNS_UNCACHED_V4, KUBE_DNS_UNCACHED_V6, KUBE_DNS_V4, KUBE_DNS_V6, WEB_V4},
    agent_binary, kernel, require_root, AgentProcess, BackendMode, KubeProxyMode, QueryOptions,
    SimNode,
};
use serde_json::Value;

const WEB: &str = "web.default.svc.cluster.local";

fn bin() -> PathBuf {
    agent_binary().expect("the nldns binary: `cargo build -p nldns-userspace` or set NLDNS_BIN")
}

/// A node whose backends log every question, so "who answered" is per name.
fn node(pods: usize) -> SimNode {
    SimNode::builder()
        .pods(pods)
        .backends(1)
        .backend_mode(BackendMode::KnotBehindProxy)
        .build()
        .expect("simulated node")
}

fn status(node: &SimNode) -> Value {
    let out = node
        .exec_in_node(
            bin().to_str().unwrap(),
            &["status", "--json"],
            Duration::from_secs(10),
        )
        .expect("nldns status");
    assert!(
        out.status.success(),
        "nldns status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

/// (interface, direction, mode, program id) of every attachment.
fn attachments(status: &Value) -> Vec<(String, String, String, u64)> {
    status["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["interface"].as_str().unwrap().to_string(),
                a["direction"].as_str().unwrap().to_string(),
                a["mode"].as_str().unwrap().to_string(),
                a["program_id"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn counter(status: &Value, name: &str) -> u64 {
    status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["counters"][name].as_u64().unwrap_or(0))
        .sum()
}

fn intercepting(status: &Value) -> bool {
    status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["intercepting"].as_bool() == Some(true))
}

/// Polls `check` until true or `timeout`; returns how long it took.
fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn start_agent(node: &SimNode, extra: &[&str]) -> AgentProcess {
    let mut args = node.agent_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = node.spawn_agent(&bin(), &args).expect("agent starts");
    let veths: Vec<String> = node
        .pod_indexes()
        .into_iter()
        .map(|i| node.pod_veth(i).unwrap().to_string())
        .collect();
    wait_for(
        "the agent to attach to every pod interface",
        Duration::from_secs(20),
        || {
            assert!(agent.is_running(), "agent exited:\n{}", agent.stderr());
            let s = status(node);
            let attached = attachments(&s);
            intercepting(&s)
                && veths.iter().all(|v| {
                    attached.iter().any(|a| &a.0 == v && a.1 == "ingress")
                        && attached.iter().any(|a| &a.0 == v && a.1 == "egress")
                })
        },
    );
    agent
}

/// One query from pod `pod` to `server`, answered within the client's first try.
fn ask(
    node: &SimNode,
    pod: usize,
    server: IpAddr,
    name: &str,
    rtype: RecordType,
    tcp: bool,
) -> Vec<RData> {
    let options = if tcp {
        QueryOptions::tcp()
    } else {
        QueryOptions::default()
    };
    let options = QueryOptions {
        timeout: Duration::from_secs(1),
        ..options
    };
    let reply = node
        .query(pod, server, name, rtype, &options)
        .unwrap_or_else(|e| panic!("{name} {rtype} via {server} (tcp: {tcp}): {e:#}"));
    reply.answers.iter().map(|r| r.data.clone()).collect()
}

fn web_a(node: &SimNode, pod: usize) {
    let answers = ask(node, pod, KUBE_DNS_V4.into(), WEB, RecordType::A, false);
    assert!(
        answers
            .iter()
            .any(|r| matches!(r, RData::A(a) if a.0 == WEB_V4)),
        "web A answers: {answers:?}"
    );
}

fn backend_saw(node: &SimNode, name: &str, rtype: &str) -> usize {
    node.backend_queries_for(name, rtype)
        .expect("backend query log")
}

#[test]
fn tcx_attachment_passes_the_verifier_and_sigkill_leaves_nothing() {
    if !require_root("tcx_attachment_passes_the_verifier_and_sigkill_leaves_nothing") {
        return;
    }
    let node = node(1);
    let mut agent = start_agent(&node, &[]);
    let veth = node.pod_veth(0).unwrap().to_string();
    let attached: Vec<_> = attachments(&status(&node))
        .into_iter()
        .filter(|a| a.0 == veth)
        .collect();
    assert_eq!(
        attached.len(),
        2,
        "ingress and egress on {veth}: {attached:?}"
    );
    assert!(
        attached.iter().all(|a| a.2 == "tcx"),
        "TCX on this kernel: {attached:?}"
    );
    let program_ids: Vec<u64> = attached.iter().map(|a| a.3).collect();

    agent.kill9().unwrap();
    agent
        .wait_exit(Duration::from_secs(5))
        .expect("killed agent is reaped");
    wait_for(
        "the kernel to drop the links and programs",
        Duration::from_secs(5),
        || {
            let s = status(&node);
            attachments(&s).is_empty()
                && s["instances"].as_array().unwrap().is_empty()
                && program_ids.iter().all(|id| {
                    !std::process::Command::new("bpftool")
                        .args(["prog", "show", "id", &id.to_string()])
                        .output()
                        .map(|o| o.status.success())
                        .unwrap_or(false)
                })
        },
    );
}

#[test]
fn pods_are_answered_by_the_cache_over_udp_and_tcp_on_ipv4_and_ipv6() {
    if !require_root("pods_are_answered_by_the_cache_over_udp_and_tcp_on_ipv4_and_ipv6") {
        return;
    }
    let node = node(1);
    // Without nldns, every query goes through kube-proxy to the backend.
    web_a(&node, 0);
    web_a(&node, 0);
    assert_eq!(
        backend_saw(&node, WEB, "A"),
        2,
        "kube-proxy path is uncached"
    );

    let _agent = start_agent(&node, &[]);
    let before = status(&node);
    for server in [IpAddr::from(KUBE_DNS_V4), IpAddr::from(KUBE_DNS_V6)] {
        for tcp in [false, true] {
            for rtype in [RecordType::A, RecordType::AAAA] {
                let answers = ask(&node, 0, server, WEB, rtype, tcp);
                assert_eq!(
                    answers.len(),
                    1,
                    "{rtype} via {server} tcp={tcp}: {answers:?}"
                );
            }
        }
    }
    // One miss per record type; the other seven answers came from the cache.
    assert_eq!(backend_saw(&node, WEB, "A"), 3);
    assert_eq!(backend_saw(&node, WEB, "AAAA"), 1);
    let after = status(&node);
    let redirected = counter(&after, "queries_redirected") - counter(&before, "queries_redirected");
    let rewritten = counter(&after, "replies_rewritten") - counter(&before, "replies_rewritten");
    // UDP: one packet each way; TCP: every segment of the connection.
    assert!(redirected >= 8, "queries redirected: {redirected}");
    assert!(rewritten >= 8, "replies rewritten: {rewritten}");
}

#[test]
fn kill9_in_tcx_mode_falls_back_to_kube_dns_at_once() {
    if !require_root("kill9_in_tcx_mode_falls_back_to_kube_dns_at_once") {
        return;
    }
    let node = node(1);
    let mut agent = start_agent(&node, &[]);
    web_a(&node, 0);
    web_a(&node, 0);
    assert_eq!(backend_saw(&node, WEB, "A"), 1);

    agent.kill9().unwrap();
    agent.wait_exit(Duration::from_secs(5)).unwrap();
    // The very next query, first try, is answered by kube-dns through the NAT.
    web_a(&node, 0);
    assert_eq!(backend_saw(&node, WEB, "A"), 2);
    assert!(
        attachments(&status(&node)).is_empty(),
        "nothing left attached"
    );
}

#[test]
fn kill9_in_netlink_mode_falls_back_at_once_and_leftovers_are_removed() {
    if !require_root("kill9_in_netlink_mode_falls_back_at_once_and_leftovers_are_removed") {
        return;
    }
    let node = node(1);
    let veth = node.pod_veth(0).unwrap().to_string();
    let mut agent = start_agent(&node, &["--attach-mode", "netlink"]);
    web_a(&node, 0);
    agent.kill9().unwrap();
    agent.wait_exit(Duration::from_secs(5)).unwrap();

    // Netlink filters outlive their process (that is the legacy kernels' problem), and
    // the dead agent's heartbeat is still fresh...
    let left = status(&node);
    assert!(
        attachments(&left)
            .iter()
            .any(|a| a.0 == veth && a.2 == "netlink"),
        "{left}"
    );
    // ...but its intercept socket is gone, so the very next query, first try, goes to
    // kube-dns through the NAT.
    let seen = backend_saw(&node, WEB, "A");
    web_a(&node, 0);
    assert_eq!(
        backend_saw(&node, WEB, "A"),
        seen + 1,
        "answered by kube-dns"
    );
    let after = status(&node);
    assert!(!intercepting(&after), "{after}");
    // While the dead agent's heartbeat is fresh, the socket check is what passed the
    // query. On a slow machine (the TCG kernel VMs) the heartbeat may have gone stale
    // before the query came, and then either check may have passed it first.
    let ours = node.agent_instances(&bin()).unwrap();
    assert_eq!(ours.len(), 1, "the dead agent's instance: {after}");
    let stale = ours[0]["heartbeat_age_ms"].as_u64() > ours[0]["heartbeat_max_age_ms"].as_u64();
    let gone = counter(&after, "agent_gone_passes");
    if stale {
        assert!(gone + counter(&after, "fail_open_passes") >= 1, "{after}");
    } else {
        assert!(gone >= 1, "{after}");
    }

    // A restart removes the dead agent's filters before attaching its own. (A status
    // taken while the new agent starts may still list the dead filters next to the new
    // agent's sockets, which sit on the same ports: wait for the new programs.)
    let dead: Vec<u64> = attachments(&status(&node))
        .into_iter()
        .filter(|a| a.0 == veth)
        .map(|a| a.3)
        .collect();
    let mut agent = start_agent(&node, &["--attach-mode", "netlink"]);
    let mut on_veth = Vec::new();
    wait_for(
        "the new agent's own filters",
        Duration::from_secs(20),
        || {
            on_veth = attachments(&status(&node))
                .into_iter()
                .filter(|a| a.0 == veth)
                .collect();
            on_veth.len() == 2 && on_veth.iter().all(|a| !dead.contains(&a.3))
        },
    );
    assert_eq!(
        on_veth.len(),
        2,
        "exactly the new agent's filters: {on_veth:?}"
    );
    assert!(
        on_veth.iter().all(|a| !dead.contains(&a.3)),
        "the dead agent's filters {dead:?} are gone: {on_veth:?}"
    );
    agent.kill9().unwrap();
    agent.wait_exit(Duration::from_secs(5)).unwrap();

    // `nldns cleanup` removes what a dead agent left, at once: no socket, not alive.
    let out = node
        .exec_in_node(
            bin().to_str().unwrap(),
            &["cleanup"],
            Duration::from_secs(10),
        )
        .unwrap();
    assert!(out.status.success());
    assert!(attachments(&status(&node)).is_empty());
}

#[test]
fn a_hung_agent_fails_open_within_a_second_and_recovers_on_sigcont() {
    if !require_root("a_hung_agent_fails_open_within_a_second_and_recovers_on_sigcont") {
        return;
    }
    let node = node(1);
    let mut agent = start_agent(&node, &[]);
    web_a(&node, 0);
    assert_eq!(backend_saw(&node, WEB, "A"), 1);

    agent.sigstop().unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    web_a(&node, 0);
    assert_eq!(
        backend_saw(&node, WEB, "A"),
        2,
        "a stopped agent's node falls back to kube-dns"
    );

    agent.sigcont().unwrap();
    wait_for("interception to resume", Duration::from_secs(5), || {
        intercepting(&status(&node))
    });
    web_a(&node, 0);
    assert_eq!(
        backend_saw(&node, WEB, "A"),
        2,
        "answered from the cache again"
    );
}

#[test]
fn an_interface_added_while_the_agent_runs_is_covered() {
    if !require_root("an_interface_added_while_the_agent_runs_is_covered") {
        return;
    }
    let mut node = node(1);
    let _agent = start_agent(&node, &[]);
    web_a(&node, 0);
    let pod = node.add_pod().unwrap();
    let veth = node.pod_veth(pod).unwrap().to_string();
    let took = wait_for(
        "the new pod interface to be attached",
        Duration::from_secs(5),
        || {
            attachments(&status(&node))
                .iter()
                .filter(|a| a.0 == veth)
                .count()
                == 2
        },
    );
    eprintln!("new interface {veth} covered after {took:?} (including status polling)");
    web_a(&node, pod);
    assert_eq!(
        backend_saw(&node, WEB, "A"),
        1,
        "the new pod is answered from the cache"
    );
}

#[test]
fn sigterm_detaches_drains_and_exits_zero() {
    if !require_root("sigterm_detaches_drains_and_exits_zero") {
        return;
    }
    let node = node(1);
    let mut agent = start_agent(&node, &[]);
    web_a(&node, 0);
    agent.sigterm().unwrap();
    let exit = agent
        .wait_exit(Duration::from_secs(10))
        .expect("agent exits on SIGTERM");
    assert!(exit.success(), "exit status {exit:?}\n{}", agent.stderr());
    assert!(attachments(&status(&node)).is_empty());
    web_a(&node, 0);
    assert_eq!(backend_saw(&node, WEB, "A"), 2);
}

#[test]
fn malformed_frames_on_a_live_interface_break_nothing() {
    if !require_root("malformed_frames_on_a_live_interface_break_nothing") {
        return;
    }
    let node = node(1);
    let mut agent = start_agent(&node, &[]);
    let before = status(&node);
    let sent = node
        .pod_netns(0)
        .unwrap()
        .run_inside(raw::send_malformed_frames)
        .unwrap()
        .expect("raw frames sent from the pod");
    assert!(sent >= 6);
    std::thread::sleep(Duration::from_millis(200));
    assert!(agent.is_running(), "agent died:\n{}", agent.stderr());
    let after = status(&node);
    assert!(counter(&after, "parse_errors") > counter(&before, "parse_errors"));
    assert!(counter(&after, "fragments_passed") > counter(&before, "fragments_passed"));
    assert_eq!(counter(&after, "rewrite_errors"), 0);
    web_a(&node, 0);
    web_a(&node, 0);
    assert_eq!(
        backend_saw(&node, WEB, "A"),
        1,
        "still intercepting and caching"
    );
}

#[test]
fn classic_node_local_dns_on_the_same_ip_is_refused() {
    if !require_root("classic_node_local_dns_on_the_same_ip_is_refused") {
        return;
    }
    let node = node(1);
    let run = |args: &[&str]| {
        node.exec_in_node(args[0], &args[1..], Duration::from_secs(10))
            .unwrap()
    };
    let mut args = node.agent_args();
    args.insert(0, bin().display().to_string());
    let agent_args: Vec<&str> = args.iter().map(String::as_str).collect();

    // NOTRACK rules for the ClusterIP, as node-local-dns adds them.
    let rule = [
        "-t",
        "raw",
        "-A",
        "PREROUTING",
        "-d",
        "10.96.0.10/32",
        "-p",
        "udp",
        "--dport",
        "53",
        "-j",
        "NOTRACK",
    ];
    assert!(run(&[&["iptables"][..], &rule].concat()).status.success());
    let out = run(&agent_args);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NOTRACK"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let delete: Vec<&str> = rule
        .iter()
        .map(|a| if *a == "-A" { "-D" } else { a })
        .collect();
    assert!(run(&[&["iptables"][..], &delete].concat()).status.success());

    // The ClusterIP on a `nodelocaldns` interface: a dummy, as node-local-dns makes it,
    // where the kernel has the driver (always in the kernel VMs), else a veth.
    let dummy = kernel::has_dummy(node.node_netns());
    if kernel::in_kernel_vm() {
        assert!(dummy, "the test VM's kernel must have the dummy driver");
    }
    let link: &[&str] = if dummy {
        &["ip", "link", "add", "nodelocaldns", "type", "dummy"]
    } else {
        &[
            "ip",
            "link",
            "add",
            "nodelocaldns",
            "type",
            "veth",
            "peer",
            "name",
            "nldnsconflict",
        ]
    };
    assert!(run(link).status.success());
    if dummy {
        let shown = node
            .node_netns()
            .ip(&["-d", "link", "show", "nodelocaldns"])
            .unwrap();
        assert!(shown.contains("dummy"), "{shown}");
    }
    assert!(
        run(&["ip", "addr", "add", "10.96.0.10/32", "dev", "nodelocaldns"])
            .status
            .success()
    );
    let out = run(&agent_args);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("node-local-dns"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Crafted frames sent with an AF_PACKET socket from a pod's eth0, so they reach the
/// node's ingress program exactly as written.
mod raw {
    use std::io;

    const ETH_P_ALL: u16 = 0x0003;

    pub fn send_malformed_frames() -> io::Result<usize> {
        let frames = frames();
        // SAFETY: plain socket(2)/if_nametoindex(3)/sendto(2)/close(2) calls with valid,
        // correctly sized arguments; the fd is closed before returning.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from(ETH_P_ALL.to_be()),
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let ifindex = libc::if_nametoindex(c"eth0".as_ptr());
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            let mut sent = 0;
            for frame in &frames {
                let n = libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                if n == frame.len() as isize {
                    sent += 1;
                }
            }
            libc::close(fd);
            Ok(sent)
        }
    }

    /// IPv4/UDP to 10.96.0.10:53 from the pod, then variants of it broken on purpose.
    fn frames() -> Vec<Vec<u8>> {
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0, 10, 244, 1, 10, 10, 96, 0, 10,
        ];
        let udp_payload =
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03web\x00\x00\x01\x00\x01";
        let udp_len = 8 + udp_payload.len();
        let total = 20 + udp_len;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        let mut packet = ip.clone();
        packet.extend_from_slice(&40000u16.to_be_bytes());
        packet.extend_from_slice(&53u16.to_be_bytes());
        packet.extend_from_slice(&(udp_len as u16).to_be_bytes());
        packet.extend_from_slice(&[0, 0]);
        packet.extend_from_slice(udp_payload);
        let ether = |payload: &[u8]| {
            // Broadcast destination: the node end accepts it whatever its MAC is.
            let mut f = vec![0xff; 6];
            f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x10]);
            f.extend_from_slice(&[0x08, 0x00]);
            f.extend_from_slice(payload);
            f
        };
        let mut fragment = packet.clone();
        fragment[6] = 0x20;
        let mut lying_length = packet.clone();
        lying_length[2] = 0x05;
        let mut bad_ihl = packet.clone();
        bad_ihl[0] = 0x42;
        let mut lying_udp = packet.clone();
        lying_udp[24] = 0x40;
        vec![
            ether(&packet[..10]),
            ether(&packet[..24]),
            ether(&fragment),
            ether(&lying_length),
            ether(&bad_ihl),
            ether(&lying_udp),
            ether(&[]),
        ]
    }
}

#[test]
fn datapath_debug_logging_is_switched_at_run_time() {
    if !require_root("datapath_debug_logging_is_switched_at_run_time") {
        return;
    }
    let node = node(1);
    let agent = start_agent(&node, &[]);
    web_a(&node, 0);
    assert!(
        !agent.stderr().contains("redirected query"),
        "logging is off by default"
    );
    let out = node
        .exec_in_node(
            bin().to_str().unwrap(),
            &["datapath-log", "debug"],
            Duration::from_secs(10),
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Over TCP: a UDP query for the cached name would be answered in the kernel, with
    // nothing redirected to log.
    let answers = ask(&node, 0, KUBE_DNS_V4.into(), WEB, RecordType::A, true);
    assert!(!answers.is_empty());
    assert!(
        agent.wait_for_output("redirected query", Duration::from_secs(5)),
        "debug lines from the datapath after `nldns datapath-log debug`:\n{}",
        agent.stderr()
    );
}

#[test]
fn interception_wins_against_kube_proxy_in_nftables_mode_too() {
    if !require_root("interception_wins_against_kube_proxy_in_nftables_mode_too") {
        return;
    }
    let node = SimNode::builder()
        .pods(1)
        .backends(1)
        .backend_mode(BackendMode::KnotBehindProxy)
        .kube_proxy(KubeProxyMode::Nftables)
        .build()
        .expect("simulated node with nftables kube-proxy");
    web_a(&node, 0);
    assert_eq!(
        backend_saw(&node, WEB, "A"),
        1,
        "nftables NAT reaches the backend"
    );
    let _agent = start_agent(&node, &[]);
    for tcp in [false, true] {
        for server in [IpAddr::from(KUBE_DNS_V4), IpAddr::from(KUBE_DNS_V6)] {
            ask(&node, 0, server, WEB, RecordType::A, tcp);
        }
    }
    assert_eq!(backend_saw(&node, WEB, "A"), 2, "one miss, then the cache");
}

/// IPVS's packet counters: kube-dns (cached) over both families and transports, and
/// kube-dns-uncached (the agent's upstream), likewise.
fn ipvs_packets(node: &SimNode) -> (u64, u64) {
    let stats = node.ipvs_in_packets().unwrap();
    // Both transports of both families of one Service.
    let service = |v4: Ipv4Addr, v6: Ipv6Addr| -> u64 {
        let mut packets = 0;
        for proto in ["udp", "tcp"] {
            for ip in [IpAddr::from(v4), IpAddr::from(v6)] {
                packets += stats
                    .get(&(proto.to_string(), ip, 53))
                    .copied()
                    .unwrap_or_else(|| panic!("no {proto} {ip}: {stats:?}"));
            }
        }
        packets
    };
    (
        service(KUBE_DNS_V4, KUBE_DNS_V6),
        service(KUBE_DNS_UNCACHED_V4, KUBE_DNS_UNCACHED_V6),
    )
}

#[test]
fn interception_wins_against_kube_proxy_in_ipvs_mode() {
    let test = "interception_wins_against_kube_proxy_in_ipvs_mode";
    if !require_root(test) || !kernel::require(test, "IPVS", kernel::has_ipvs()) {
        return;
    }
    let node = SimNode::builder()
        .pods(1)
        .backends(1)
        .backend_mode(BackendMode::KnotBehindProxy)
        .kube_proxy(KubeProxyMode::Ipvs)
        .build()
        .expect("simulated node with IPVS kube-proxy");
    web_a(&node, 0);
    assert_eq!(backend_saw(&node, WEB, "A"), 1, "IPVS reaches the backend");
    let (through_ipvs, _) = ipvs_packets(&node);
    assert!(through_ipvs >= 1, "the query went through IPVS");

    // kube-ipvs0 holds the ClusterIP: that is kube-proxy, not node-local-dns, and the
    // agent must start (and take netlink attach on a kernel without TCX).
    let mut agent = start_agent(&node, &[]);
    let (_, uncached_before) = ipvs_packets(&node);
    for tcp in [false, true] {
        for server in [IpAddr::from(KUBE_DNS_V4), IpAddr::from(KUBE_DNS_V6)] {
            for rtype in [RecordType::A, RecordType::AAAA] {
                let answers = ask(&node, 0, server, WEB, rtype, tcp);
                assert_eq!(answers.len(), 1, "{rtype} via {server} tcp={tcp}");
            }
        }
    }
    assert_eq!(backend_saw(&node, WEB, "A"), 2, "one miss, then the cache");
    assert_eq!(
        backend_saw(&node, WEB, "AAAA"),
        1,
        "one miss, then the cache"
    );
    // Not one of the pod's packets to the ClusterIP reached IPVS: the TC program took
    // them before the local input path. The misses went upstream to kube-dns-uncached,
    // through IPVS, as the agent's own traffic.
    let (cached, uncached) = ipvs_packets(&node);
    assert_eq!(cached, through_ipvs, "{}", node.kube_proxy_rules().unwrap());
    assert!(
        uncached > uncached_before,
        "the misses went upstream through IPVS"
    );

    // kill -9: the next query, first try, goes through IPVS to kube-dns again.
    agent.kill9().unwrap();
    agent.wait_exit(Duration::from_secs(5)).unwrap();
    web_a(&node, 0);
    assert_eq!(backend_saw(&node, WEB, "A"), 3, "answered by kube-dns");
    assert!(ipvs_packets(&node).0 > through_ipvs);
    let out = node
        .exec_in_node(
            bin().to_str().unwrap(),
            &["cleanup"],
            Duration::from_secs(10),
        )
        .unwrap();
    assert!(out.status.success());
    assert!(attachments(&status(&node)).is_empty());
}

/// `ip -j addr show` of one interface in the node: its addresses as `ip/prefix`.
fn addresses_on(node: &SimNode, interface: &str) -> Vec<String> {
    let text = node
        .node_netns()
        .ip(&["-j", "addr", "show", "dev", interface])
        .unwrap_or_default();
    let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    parsed
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|link| link["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| {
            format!(
                "{}/{}",
                a["local"].as_str().unwrap_or_default(),
                a["prefixlen"]
            )
        })
        .collect()
}

#[test]
fn the_intercept_endpoint_is_on_the_nldns0_dummy_where_the_kernel_has_one() {
    let test = "the_intercept_endpoint_is_on_the_nldns0_dummy_where_the_kernel_has_one";
    if !require_root(test) {
        return;
    }
    let node = node(1);
    let dummy = kernel::has_dummy(node.node_netns());
    if kernel::in_kernel_vm() {
        assert!(dummy, "the test VM's kernel must have the dummy driver");
    }
    let _agent = start_agent(&node, &[]);
    let endpoint = ["169.254.53.53/32", "fd6e:6c64:6e73::53/128"];
    let (holder, other) = if dummy {
        ("nldns0", "lo")
    } else {
        ("lo", "nldns0")
    };
    let on_holder = addresses_on(&node, holder);
    let on_other = addresses_on(&node, other);
    for ip in endpoint {
        assert!(
            on_holder.contains(&ip.to_string()),
            "{ip} on {holder}: {on_holder:?}"
        );
        assert!(
            !on_other.contains(&ip.to_string()),
            "{ip} on {other}: {on_other:?}"
        );
    }
    if dummy {
        let link = node
            .node_netns()
            .ip(&["-d", "link", "show", "nldns0"])
            .unwrap();
        assert!(link.contains("dummy") && link.contains(",UP"), "{link}");
        // nldns0 is the agent's own: never a pod-facing interface with programs on it.
        assert!(
            attachments(&status(&node)).iter().all(|a| a.0 != "nldns0"),
            "no programs on nldns0"
        );
    } else {
        assert!(node.node_netns().ip(&["link", "show", "nldns0"]).is_err());
    }
    // Redirected queries land there and are answered (the second from the cache).
    web_a(&node, 0);
    web_a(&node, 0);
    assert_eq!(backend_saw(&node, WEB, "A"), 1, "answered through {holder}");
}
