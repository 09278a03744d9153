//! Tests of the simulated node itself (no agent): the topology answers DNS through
//! kube-proxy's NAT exactly as a real node would, and leaves nothing behind.
//! They need root; without it they print SKIP (and fail in CI, where root is expected).

use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use nldns_tests::addresses::*;
use nldns_tests::zones::{self, names};
use nldns_tests::{
    cleanup, kernel, netns, require_root, run, BackendMode, Behaviour, KubeProxyMode, QueryOptions,
    SimNode,
};

const KUBE_DNS: &str = "@10.96.0.10";
const KUBE_DNS6: &str = "@fd00:10:96::a";

/// Everything a run may have left on the machine, by its id.
fn leftovers(id: &str) -> Vec<String> {
    let mut found: Vec<String> = netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.contains(id))
        .collect();
    let links = nldns_tests::cmd::run("ip", &["-o", "link", "show"]).unwrap();
    found.extend(
        links
            .lines()
            .filter(|l| l.contains(id))
            .map(|l| format!("root-ns link: {l}")),
    );
    if run::owner_path(id).exists() {
        found.push(format!("owner record {}", run::owner_path(id).display()));
    }
    if run::workdir_of(id).exists() {
        found.push(format!("workdir {}", run::workdir_of(id).display()));
    }
    if let Some(mount) = nldns_tests::cgroup::cgroup2_mount() {
        let cg = mount.join(format!("nldns-{id}"));
        if cg.exists() {
            found.push(format!("cgroup {}", cg.display()));
        }
    }
    found
}

#[test]
fn kube_dns_answers_through_kube_proxy_nat() {
    if !require_root("kube_dns_answers_through_kube_proxy_nat") {
        return;
    }
    let node = SimNode::new(2, 2).unwrap();
    let before = node.backend_query_count().unwrap();

    for pod in [0, 1] {
        for (server, rtype, want) in [
            (KUBE_DNS, "A", "10.96.0.10"),
            (KUBE_DNS6, "AAAA", "fd00:10:96::a"),
        ] {
            for transport in ["+notcp", "+tcp"] {
                let out = node
                    .dig(pod, &[server, names::KUBE_DNS, rtype, transport])
                    .unwrap();
                assert_eq!(
                    out.status.as_deref(),
                    Some("NOERROR"),
                    "pod {pod} {server} {transport}:\n{}",
                    out.raw
                );
                assert_eq!(out.answer_data(rtype), [want], "{}", out.raw);
                assert_eq!(out.answers[0].ttl, zones::CLUSTER_TTL);
                // The reply comes back from the ClusterIP: kube-proxy's DNAT is undone.
                let server_ip = server.trim_start_matches('@');
                assert!(
                    out.server
                        .as_deref()
                        .unwrap()
                        .starts_with(&format!("{server_ip}#53")),
                    "{}",
                    out.raw
                );
                let expected_transport = if transport == "+tcp" { "TCP" } else { "UDP" };
                assert_eq!(out.transport().as_deref(), Some(expected_transport));
            }
        }
    }
    let after = node.backend_query_count().unwrap();
    assert_eq!(
        after - before,
        8,
        "every query reached a backend exactly once"
    );

    // kube-dns-uncached, the cache's upstream, is NATed too.
    let out = node.dig(0, &["@10.96.0.11", names::WEB, "A"]).unwrap();
    assert_eq!(out.answer_data("A"), [WEB_V4.to_string()]);

    // Reverse lookups, both families.
    let out = node.dig(0, &[KUBE_DNS, "-x", "10.96.0.10"]).unwrap();
    assert_eq!(out.answer_data("PTR"), [names::KUBE_DNS], "{}", out.raw);
    let out = node.dig(1, &[KUBE_DNS6, "-x", "fd00:10:96::a"]).unwrap();
    assert_eq!(out.answer_data("PTR"), [names::KUBE_DNS], "{}", out.raw);

    // SRV for the named ports.
    let out = node.dig(0, &[KUBE_DNS, names::SRV_DNS_UDP, "SRV"]).unwrap();
    assert_eq!(
        out.answer_data("SRV"),
        [format!("0 100 53 {}", names::KUBE_DNS)],
        "{}",
        out.raw
    );
    let out = node
        .dig(0, &[KUBE_DNS, names::SRV_DNS_TCP, "SRV", "+tcp"])
        .unwrap();
    assert_eq!(out.answer_data("SRV").len(), 1, "{}", out.raw);

    // Headless Service: one A per pod.
    let out = node.dig(0, &[KUBE_DNS, names::DB_HEADLESS, "A"]).unwrap();
    assert_eq!(
        out.answer_data("A").len(),
        zones::db_pods().len(),
        "{}",
        out.raw
    );

    // NXDOMAIN carries the SOA whose minimum is the negative TTL.
    let out = node.dig(1, &[KUBE_DNS, names::MISSING, "A"]).unwrap();
    assert_eq!(out.status.as_deref(), Some("NXDOMAIN"), "{}", out.raw);
    assert_eq!(out.authority.len(), 1, "{}", out.raw);
    assert_eq!(out.authority[0].rtype, "SOA");
    assert_eq!(out.authority[0].ttl, zones::NEGATIVE_TTL);

    // NODATA (name exists, type does not) carries the SOA too.
    let out = node
        .dig(1, &[KUBE_DNS, names::KUBE_DNS_UNCACHED, "MX"])
        .unwrap();
    assert_eq!(out.status.as_deref(), Some("NOERROR"));
    assert!(out.answers.is_empty());
    assert_eq!(out.authority[0].rtype, "SOA");

    // Plain knot backends are authoritative only: non-cluster names are refused.
    let out = node.dig(0, &[KUBE_DNS, names::EXT_WWW, "A"]).unwrap();
    assert_eq!(out.status.as_deref(), Some("REFUSED"), "{}", out.raw);

    // The outside resolver answers for example.org, from pods and from the node.
    let out = node.dig(0, &["@10.244.8.10", names::EXT_WWW, "A"]).unwrap();
    assert_eq!(out.answer_data("A"), ["10.244.8.20"], "{}", out.raw);
    let ext_before = node.ext_query_count().unwrap();
    let out = node
        .dig_from_node(&["@fd00:10:244:8::10", names::EXT_MISSING, "AAAA"])
        .unwrap();
    assert_eq!(out.status.as_deref(), Some("NXDOMAIN"), "{}", out.raw);
    assert_eq!(node.ext_query_count().unwrap(), ext_before + 1);

    // kube-proxy's NAT is visible in the node's conntrack table.
    let entries = node.conntrack_dns_entries(IpAddr::V4(KUBE_DNS_V4)).unwrap();
    assert!(
        entries.iter().any(|e| e.contains("src=10.244.9.1")),
        "no DNAT entry: {entries:?}"
    );
    let entries = node.conntrack_dns_entries(IpAddr::V6(KUBE_DNS_V6)).unwrap();
    assert!(!entries.is_empty(), "no IPv6 DNAT entry");

    // A host-network client (the node itself) reaches the ClusterIP through nat OUTPUT.
    let out = node
        .dig_from_node(&[KUBE_DNS, names::KUBE_DNS, "A"])
        .unwrap();
    assert_eq!(out.answer_data("A"), ["10.96.0.10"], "{}", out.raw);
    let out = node
        .dig_from_node(&["@fd00:10:96::b", names::WEB, "AAAA", "+tcp"])
        .unwrap();
    assert_eq!(out.answer_data("AAAA"), [WEB_V6.to_string()], "{}", out.raw);
}

#[test]
fn native_client_sees_truncation_and_full_tcp_answers() {
    if !require_root("native_client_sees_truncation_and_full_tcp_answers") {
        return;
    }
    let node = SimNode::new(1, 1).unwrap();
    let server = IpAddr::V4(KUBE_DNS_V4);
    let reply = node
        .query(
            0,
            server,
            names::KUBE_DNS,
            RecordType::A,
            &QueryOptions::default(),
        )
        .unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(reply.answers.len(), 1);

    // Without EDNS the 60-record answer does not fit 512 bytes: truncated over UDP...
    let classic = QueryOptions {
        edns_payload: None,
        ..QueryOptions::default()
    };
    let reply = node
        .query(0, server, names::BIG, RecordType::A, &classic)
        .unwrap();
    assert!(reply.metadata.truncation, "expected TC=1");
    // ...and whole over TCP, through the same NAT.
    let reply = node
        .query(0, server, names::BIG, RecordType::A, &QueryOptions::tcp())
        .unwrap();
    assert!(!reply.metadata.truncation);
    assert_eq!(reply.answers.len(), zones::BIG_RRSET_LEN);

    // IPv6 ClusterIP from a host-network client.
    let reply = node
        .query_from_node(
            IpAddr::V6(KUBE_DNS_V6),
            names::MISSING,
            RecordType::AAAA,
            &QueryOptions::default(),
        )
        .unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(reply.authorities.len(), 1);
}

/// kube-dns's own name over UDP and TCP, IPv4 and IPv6, through whatever kube-proxy
/// mode the node has.
fn kube_dns_answers_over_both_families_and_transports(node: &SimNode) {
    for (server, rtype, want) in [
        (KUBE_DNS, "A", "10.96.0.10"),
        (KUBE_DNS6, "AAAA", "fd00:10:96::a"),
    ] {
        for transport in ["+notcp", "+tcp"] {
            let out = node
                .dig(0, &[server, names::KUBE_DNS, rtype, transport])
                .unwrap();
            assert_eq!(
                out.answer_data(rtype),
                [want],
                "{server} {transport}:\n{}",
                out.raw
            );
        }
    }
}

#[test]
fn ipvs_kube_proxy_mode_answers_too() {
    if !require_root("ipvs_kube_proxy_mode_answers_too") {
        return;
    }
    if !kernel::require(
        "ipvs_kube_proxy_mode_answers_too",
        "IPVS",
        kernel::has_ipvs(),
    ) {
        return;
    }
    let node = SimNode::builder()
        .pods(1)
        .backends(2)
        .kube_proxy(KubeProxyMode::Ipvs)
        .build()
        .unwrap();
    kube_dns_answers_over_both_families_and_transports(&node);
    // Locally generated traffic (the agent's upstream queries) goes through IPVS too.
    let out = node
        .dig_from_node(&["@10.96.0.11", names::WEB, "A"])
        .unwrap();
    assert_eq!(out.answer_data("A"), [WEB_V4.to_string()], "{}", out.raw);
    // IPVS did the work, not iptables: no KUBE-SERVICES, virtual services with both
    // backends, the ClusterIPs on a real dummy interface.
    let rules = node.kube_proxy_rules().unwrap();
    assert!(!rules.contains("KUBE-SERVICES"), "{rules}");
    for vip in ["UDP  10.96.0.10:53 rr", "TCP  [fd00:10:96::a]:53 rr"] {
        assert!(rules.contains(vip), "{vip} missing:\n{rules}");
    }
    for backend in ["10.244.9.10:53", "10.244.9.11:53"] {
        assert!(rules.contains(backend), "{backend} missing:\n{rules}");
    }
    let stats = node.ipvs_in_packets().unwrap();
    for (proto, ip) in [
        ("udp", IpAddr::V4(KUBE_DNS_V4)),
        ("tcp", IpAddr::V4(KUBE_DNS_V4)),
        ("udp", IpAddr::V6(KUBE_DNS_V6)),
        ("tcp", IpAddr::V6(KUBE_DNS_V6)),
        ("udp", IpAddr::V4(KUBE_DNS_UNCACHED_V4)),
    ] {
        let seen = stats.get(&(proto.to_string(), ip, 53)).copied();
        assert!(seen >= Some(1), "{proto} {ip}: {seen:?} in {stats:?}");
    }
    let link = node
        .node_netns()
        .ip(&["-d", "link", "show", "kube-ipvs0"])
        .unwrap();
    assert!(link.contains("dummy"), "{link}");
    let addrs = node
        .node_netns()
        .ip(&["addr", "show", "dev", "kube-ipvs0"])
        .unwrap();
    for ip in ["10.96.0.10/32", "10.96.0.11/32", "fd00:10:96::a/128"] {
        assert!(addrs.contains(ip), "{ip} not on kube-ipvs0: {addrs}");
    }

    // Back to iptables mode on the live node: the IPVS state goes with it.
    let mut node = node;
    node.set_kube_proxy_mode(KubeProxyMode::Iptables).unwrap();
    let rules = node.kube_proxy_rules().unwrap();
    assert!(
        rules.contains("KUBE-SERVICES") && !rules.contains("10.96.0.10:53"),
        "{rules}"
    );
    assert!(node
        .node_netns()
        .ip(&["link", "show", "kube-ipvs0"])
        .is_err());
    let out = node.dig(0, &[KUBE_DNS, names::KUBE_DNS, "A"]).unwrap();
    assert_eq!(out.answer_data("A"), ["10.96.0.10"], "{}", out.raw);
}

#[test]
fn nftables_kube_proxy_mode_answers_too() {
    if !require_root("nftables_kube_proxy_mode_answers_too") {
        return;
    }
    let node = SimNode::builder()
        .pods(1)
        .backends(2)
        .kube_proxy(KubeProxyMode::Nftables)
        .build()
        .unwrap();
    kube_dns_answers_over_both_families_and_transports(&node);
    let out = node
        .dig_from_node(&["@10.96.0.11", names::WEB, "A"])
        .unwrap();
    assert_eq!(out.answer_data("A"), [WEB_V4.to_string()], "{}", out.raw);
    // No iptables rules in this mode: the NAT is nft's alone.
    let rules = node.kube_proxy_rules().unwrap();
    assert!(!rules.contains("KUBE-SERVICES"), "{rules}");
    assert!(rules.contains("table ip6 kube-proxy"), "{rules}");

    // Migrating to iptables mode (and back) on the live node keeps answers flowing.
    let mut node = node;
    node.set_kube_proxy_mode(KubeProxyMode::Iptables).unwrap();
    let rules = node.kube_proxy_rules().unwrap();
    assert!(
        rules.contains("KUBE-SERVICES") && !rules.contains("kube-proxy"),
        "{rules}"
    );
    assert_eq!(
        rules.matches("-A PREROUTING").count(),
        2,
        "one jump per family: {rules}"
    );
    let out = node
        .dig(0, &[KUBE_DNS6, names::KUBE_DNS, "AAAA", "+tcp"])
        .unwrap();
    assert_eq!(out.answer_data("AAAA"), ["fd00:10:96::a"], "{}", out.raw);
    node.set_kube_proxy_mode(KubeProxyMode::Iptables).unwrap();
    assert_eq!(
        node.kube_proxy_rules()
            .unwrap()
            .matches("-A PREROUTING")
            .count(),
        2,
        "reinstalling does not duplicate"
    );
    node.set_kube_proxy_mode(KubeProxyMode::None).unwrap();
    assert!(!node.kube_proxy_rules().unwrap().contains("KUBE-"));
}

#[test]
fn backends_can_be_stopped_restarted_and_repointed() {
    if !require_root("backends_can_be_stopped_restarted_and_repointed") {
        return;
    }
    let mut node = SimNode::new(1, 2).unwrap();
    // A query loop sees the outage and its end.
    let mut options = nldns_tests::QueryLoopOptions::new(
        std::net::SocketAddr::new(IpAddr::V4(KUBE_DNS_V4), 53),
        names::KUBE_DNS,
        RecordType::A,
    );
    options.query.timeout = Duration::from_millis(300);
    let queries = node.query_loop(0, options).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    node.stop_backends().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    node.start_backends().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let report = queries.stop();
    assert!(
        report.failures().len() >= 2,
        "the outage was seen: {report:?}"
    );
    assert!(
        report.attempts.last().unwrap().answered(),
        "answers came back"
    );
    assert!(
        report.longest_outage() >= Duration::from_millis(400),
        "{:?}",
        report.longest_outage()
    );

    node.stop_backends().unwrap();
    let out = node.dig(0, &[KUBE_DNS, names::KUBE_DNS, "A"]).unwrap();
    assert!(
        out.answers.is_empty(),
        "a stopped backend answered:\n{}",
        out.raw
    );
    node.start_backends().unwrap();
    let out = node
        .dig(0, &[KUBE_DNS, names::KUBE_DNS, "A", "+tcp"])
        .unwrap();
    assert_eq!(out.answer_data("A"), ["10.96.0.10"], "{}", out.raw);

    // With only backend 1 as endpoint, backend 0 sees nothing.
    node.set_kube_dns_endpoints(&[1]).unwrap();
    let before = node.backend_query_counts().unwrap();
    for _ in 0..4 {
        // +tcp: a new connection each time, so no stale UDP conntrack entry pins backend 0.
        let out = node.dig(0, &[KUBE_DNS, names::WEB, "A", "+tcp"]).unwrap();
        assert_eq!(out.answer_data("A"), [WEB_V4.to_string()], "{}", out.raw);
    }
    let after = node.backend_query_counts().unwrap();
    assert_eq!(after[0], before[0]);
    assert_eq!(after[1], before[1] + 4);

    // A zone change is served after a reload.
    let changed = zones::cluster_local()
        .replace(" 1 7200 1800 86400", " 2 7200 1800 86400")
        .replace(
            &format!("web.default.svc IN A {WEB_V4}"),
            "web.default.svc IN A 10.96.5.99",
        );
    node.replace_cluster_zone(&changed).unwrap();
    let out = node.dig(0, &[KUBE_DNS, names::WEB, "A", "+tcp"]).unwrap();
    assert_eq!(out.answer_data("A"), ["10.96.5.99"], "{}", out.raw);
}

#[test]
fn slow_backend_delays_and_drops_on_demand() {
    if !require_root("slow_backend_delays_and_drops_on_demand") {
        return;
    }
    let node = SimNode::builder()
        .pods(1)
        .backends(1)
        .backend_mode(BackendMode::KnotBehindProxy)
        .build()
        .unwrap();
    let fast = node.dig(0, &[KUBE_DNS, names::KUBE_DNS, "A"]).unwrap();
    assert_eq!(fast.answer_data("A"), ["10.96.0.10"], "{}", fast.raw);

    node.set_backend_behaviour(Behaviour::Delay(Duration::from_millis(700)))
        .unwrap();
    for transport in ["+notcp", "+tcp"] {
        let started = Instant::now();
        let out = node
            .dig(0, &[KUBE_DNS, names::WEB, "A", "+time=3", transport])
            .unwrap();
        assert_eq!(
            out.answer_data("A"),
            [WEB_V4.to_string()],
            "{transport}:\n{}",
            out.raw
        );
        assert!(
            started.elapsed() >= Duration::from_millis(700),
            "{transport} answered too early"
        );
        assert!(out.query_time_ms.unwrap() >= 650, "{}", out.raw);
    }

    node.set_backend_behaviour(Behaviour::Drop).unwrap();
    let before = node.backend_query_count().unwrap();
    let received = node.backend_proxy_counts().unwrap()[0];
    let out = node.dig(0, &[KUBE_DNS, names::WEB, "A"]).unwrap();
    assert!(out.timed_out(), "a dropping backend answered:\n{}", out.raw);
    assert_eq!(
        node.backend_query_count().unwrap(),
        before,
        "knot must not see dropped queries"
    );
    assert_eq!(node.backend_proxy_counts().unwrap()[0], received + 1);

    // Per-name evidence: the proxy saw each question it was asked.
    assert_eq!(node.backend_queries_for(names::WEB, "A").unwrap(), 3);
    assert_eq!(
        node.backend_queries_for("KUBE-DNS.kube-system.svc.cluster.local", "A")
            .unwrap(),
        1
    );
    assert_eq!(node.backend_queries_for(names::WEB, "AAAA").unwrap(), 0);
    let seen = node.backend_queries().unwrap();
    assert!(seen
        .iter()
        .any(|q| q.transport == nldns_tests::Transport::Tcp));

    node.set_backend_behaviour(Behaviour::Normal).unwrap();
    // Like CoreDNS, the backend forwards non-cluster names to the outside resolver.
    let ext_before = node.ext_query_count().unwrap();
    let out = node.dig(0, &[KUBE_DNS, names::EXT_WWW, "A"]).unwrap();
    assert_eq!(out.answer_data("A"), ["10.244.8.20"], "{}", out.raw);
    assert_eq!(node.ext_query_count().unwrap(), ext_before + 1);
    let out = node.dig(0, &[KUBE_DNS6, names::BIG, "A", "+tcp"]).unwrap();
    assert_eq!(
        out.answer_data("A").len(),
        zones::BIG_RRSET_LEN,
        "{}",
        out.raw
    );
}

#[test]
fn pods_come_and_go() {
    if !require_root("pods_come_and_go") {
        return;
    }
    let mut node = SimNode::new(1, 1).unwrap();
    let added = node.add_pod().unwrap();
    assert_eq!(added, 1);
    let veth = node.pod_veth(added).unwrap().to_string();
    assert!(veth.starts_with("veth") && veth.len() <= 15);
    let out = node.dig(added, &[KUBE_DNS6, names::KUBE_DNS, "A"]).unwrap();
    assert_eq!(out.answer_data("A"), ["10.96.0.10"], "{}", out.raw);
    // Pods reach each other through the node, both families: nothing listens on port 53
    // of a pod, so the answer is a quick "connection refused", not a timeout.
    for target in ["10.244.1.10", "fd00:10:244:1::10"] {
        let out = node
            .dig(added, &[&format!("@{target}"), names::KUBE_DNS])
            .unwrap();
        assert!(
            out.raw.contains("connection refused"),
            "{target} unreachable from pod 1:\n{}",
            out.raw
        );
    }

    // A long-running process in the new pod sees the pod's addresses.
    let mut client = node
        .spawn_in_pod(
            added,
            std::path::Path::new("/bin/sh"),
            &["-c", "ip -o addr show dev eth0; exec sleep 20"],
        )
        .unwrap();
    assert!(
        client.wait_for_output("fd00:10:244:1::11/64", Duration::from_secs(5)),
        "{}",
        client.stdout()
    );
    assert!(client.stdout().contains("10.244.1.11/24"));
    assert!(client.stdout_path().starts_with(node.workdir()));
    client.kill9().unwrap();
    assert!(client.wait_exit(Duration::from_secs(5)).is_some());
    node.remove_pod(0).unwrap();
    assert_eq!(node.pod_indexes(), [1]);
    assert!(node.dig(0, &[KUBE_DNS, names::KUBE_DNS]).is_err());
    let links = node.node_netns().ip(&["-o", "link"]).unwrap();
    assert!(
        !links.contains(&format!("veth{}p0", node.id())),
        "the removed pod's veth is gone"
    );
    assert!(links.contains(&veth));
}

#[test]
fn agent_runs_inside_the_node_namespace_and_obeys_signals() {
    if !require_root("agent_runs_inside_the_node_namespace_and_obeys_signals") {
        return;
    }
    let node = SimNode::new(1, 1).unwrap();
    // A stand-in agent: prints what it sees, then waits (bounded) for signals.
    let script = "ip -o link; echo READY; exec sleep 30";
    let mut agent = node
        .spawn_agent(std::path::Path::new("/bin/sh"), &["-c", script])
        .unwrap();
    assert!(
        agent.wait_for_output("READY", Duration::from_secs(5)),
        "stderr: {}",
        agent.stderr()
    );
    assert!(
        agent.stdout().contains(node.pod_veth(0).unwrap()),
        "the agent sees the pod veth: {}",
        agent.stdout()
    );
    assert!(agent.is_running());
    agent.sigstop().unwrap();
    agent.sigcont().unwrap();
    assert!(agent.is_running());
    agent.sigterm().unwrap();
    let status = agent
        .wait_exit(Duration::from_secs(5))
        .expect("sleep dies of SIGTERM");
    assert!(!status.success());
    assert!(
        agent.sigterm().is_err(),
        "no signal after the exit was reaped"
    );

    let mut agent = node
        .spawn_agent(std::path::Path::new("/bin/sleep"), &["30"])
        .unwrap();
    agent.kill9().unwrap();
    assert!(agent.wait_exit(Duration::from_secs(5)).is_some());

    let missing = node.spawn_agent(std::path::Path::new("/nonexistent/nldns"), &["run"]);
    assert!(missing.unwrap_err().to_string().contains("NLDNS_BIN"));

    let args = node.agent_args();
    assert_eq!(args[0], "run");
    assert!(args.iter().any(|a| a == "10.96.0.10"));
    assert!(args.iter().any(|a| a.ends_with("resolv.conf")));
    let map = node.describe();
    assert!(
        map.contains(&format!("nldns-{}-pod0", node.id())) && map.contains("10.244.1.10"),
        "{map}"
    );
    let resolv = std::fs::read_to_string(node.resolv_conf()).unwrap();
    assert!(resolv.contains("nameserver 10.244.8.10"));
}

#[test]
fn drop_leaves_nothing_behind() {
    if !require_root("drop_leaves_nothing_behind") {
        return;
    }
    let node = SimNode::builder()
        .pods(2)
        .backends(2)
        .with_cgroup()
        .build()
        .unwrap();
    let id = node.id().to_string();
    assert!(node.cgroup_path().unwrap().is_dir());
    let names = netns::list().unwrap();
    for what in ["node", "pod0", "pod1", "dns0", "dns1", "ext"] {
        assert!(
            names.contains(&format!("nldns-{id}-{what}")),
            "missing {what}"
        );
    }
    // Nothing in the root namespace, even while the node lives.
    let links = nldns_tests::cmd::run("ip", &["-o", "link", "show"]).unwrap();
    assert!(
        !links.contains(&id),
        "a link of the run is in the root namespace:\n{links}"
    );
    drop(node);
    assert_eq!(leftovers(&id), Vec::<String>::new());
}

#[test]
fn sweep_removes_leftovers_of_dead_runs_only() {
    if !require_root("sweep_removes_leftovers_of_dead_runs_only") {
        return;
    }
    let live = SimNode::new(0, 1).unwrap();
    // Fake a crashed run: a namespace with a process in it and an owner record whose
    // process is gone.
    let dead_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let workdir = run::workdir_of(&dead_id);
    std::fs::create_dir(&workdir).unwrap();
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    std::fs::write(run::owner_path(&dead_id), format!("{gone_pid} 1\n")).unwrap();
    let leftover = netns::Netns::create(&format!("nldns-{dead_id}-node")).unwrap();
    let mut orphan = Command::new("nsenter")
        .args(leftover.nsenter_args("sleep", &["30"]))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    let swept = cleanup::sweep();
    assert!(swept.contains(&dead_id), "swept {swept:?}");
    assert!(
        !swept.contains(&live.id().to_string()),
        "a live run must survive the sweep"
    );
    assert!(orphan.wait().is_ok());
    assert_eq!(leftovers(&dead_id), Vec::<String>::new());
    assert!(netns::list()
        .unwrap()
        .contains(&format!("nldns-{}-node", live.id())));
}

/// The child half of `a_leaked_node_is_torn_down_at_exit`: builds a node that is never
/// dropped and returns. Does nothing unless the parent test started it.
#[test]
fn leak_child_helper() {
    if std::env::var_os("NLDNS_LEAK_CHILD").is_none() {
        return;
    }
    let node = SimNode::new(1, 1).unwrap();
    println!("READY {}", node.id());
    std::mem::forget(node);
}

#[test]
fn a_leaked_node_is_torn_down_at_exit() {
    if !require_root("a_leaked_node_is_torn_down_at_exit") {
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "leak_child_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("NLDNS_LEAK_CHILD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The child's output is small: it fits the pipe while we poll for the exit.
    let exited =
        nldns_tests::cmd::wait_until(Duration::from_secs(60), Duration::from_millis(20), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
    if !exited {
        let _ = child.kill();
    }
    let output = child.wait_with_output().unwrap();
    assert!(exited, "the child did not exit by itself");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let id = stdout
        .split_once("READY ")
        .map(|(_, rest)| rest.split_whitespace().next().unwrap().to_string())
        .unwrap_or_else(|| panic!("the child never built its node: {stdout}"));
    assert!(output.status.success());
    assert_eq!(leftovers(&id), Vec::<String>::new());
}

/// The child half of `sigint_tears_the_run_down`: builds a node, says so, and waits for the
/// signal (bounded). Does nothing unless the parent test started it.
#[test]
fn sigint_child_helper() {
    if std::env::var_os("NLDNS_SIGINT_CHILD").is_none() {
        return;
    }
    let node = SimNode::new(1, 1).unwrap();
    println!("READY {}", node.id());
    std::thread::sleep(Duration::from_secs(30));
}

#[test]
fn sigint_tears_the_run_down() {
    if !require_root("sigint_tears_the_run_down") {
        return;
    }
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigint_child_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("NLDNS_SIGINT_CHILD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some((_, id)) = line.split_once("READY ") {
                let _ = tx.send(id.trim().to_string());
            }
        }
    });
    let id = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(id) => id,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child never built its node");
        }
    };
    assert!(netns::list().unwrap().contains(&format!("nldns-{id}-node")));
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child did not exit after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
    assert_eq!(leftovers(&id), Vec::<String>::new());
}

#[test]
fn bounded_dnsperf_through_kube_proxy() {
    if !require_root("bounded_dnsperf_through_kube_proxy") {
        return;
    }
    let node = SimNode::new(1, 2).unwrap();
    let mut options = nldns_tests::DnsperfOptions::new(
        IpAddr::V4(KUBE_DNS_V4),
        &[
            (names::KUBE_DNS, "A"),
            (names::WEB, "AAAA"),
            (names::MISSING, "A"),
        ],
    );
    options.duration = Duration::from_secs(2);
    options.max_qps = 300;
    options.clients = 16;
    let started = Instant::now();
    let report = node.dnsperf(0, &options).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "dnsperf stops by itself"
    );
    assert!(report.completed > 100, "{}", report.raw);
    assert!(
        report.sent <= 2 * 300 + 50,
        "the rate limit holds: {}",
        report.raw
    );
    assert!(report.response_codes.contains("NOERROR"), "{}", report.raw);
    // kube-proxy's random endpoint choice spreads the load over both backends. Conntrack
    // pins each client's flow (one UDP socket each) to one endpoint, hence 16 clients: all
    // on one backend has odds of 2^-15.
    let per_backend = node.backend_query_counts().unwrap();
    assert!(per_backend.iter().all(|&n| n > 0), "{per_backend:?}");
    // Every completed query reached a backend; a lost one may have reached it too.
    let seen = node.backend_query_count().unwrap();
    assert!(
        seen >= report.completed && seen <= report.sent,
        "{seen} backend queries: {}",
        report.raw
    );
}

#[test]
fn host_network_clients_run_in_the_run_cgroup() {
    if !require_root("host_network_clients_run_in_the_run_cgroup") {
        return;
    }
    let node = SimNode::builder()
        .pods(0)
        .backends(1)
        .with_cgroup()
        .build()
        .unwrap();
    let out = node
        .exec_in_node_cgroup("cat", &["/proc/self/cgroup"], Duration::from_secs(5))
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("0::/") && l.ends_with(&format!("nldns-{}", node.id()))),
        "{text}"
    );
    let out = node
        .dig_from_node_cgroup(&[KUBE_DNS, names::KUBE_DNS, "A"])
        .unwrap();
    assert_eq!(out.answer_data("A"), ["10.96.0.10"], "{}", out.raw);
}
