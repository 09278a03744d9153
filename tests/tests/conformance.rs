//! Conformance through the interception: the lookups Kubernetes' DNS e2e tests make
//! (Service A/AAAA short and fully qualified, headless Services, SRV, PTR, NXDOMAIN) get
//! the same answers from the kube-dns ClusterIP with nldns intercepting as from a kube-dns
//! backend asked directly, over UDP and TCP, IPv4 and IPv6, on a cache miss and on a hit.
//!
//! Answers are compared as RRsets: owner name, type, class and RDATA, ignoring TTLs (the
//! cache counts them down) and order. The AA flag is not compared: a cache clears it.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use nldns_tests::addresses::*;
use nldns_tests::zones::names;
use nldns_tests::{agent_binary, require_root, QueryOptions, SimNode};

/// The search list kubelet writes for a pod in namespace `default`.
const SEARCH: [&str; 3] = [
    "default.svc.cluster.local",
    "svc.cluster.local",
    "cluster.local",
];
/// kubelet's `options ndots:5`.
const NDOTS: usize = 5;

/// What a reply says, reduced to what must not differ between the cache and kube-dns.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    rcode: String,
    answers: BTreeSet<String>,
    /// The authority section's record types (an NXDOMAIN carries the zone's SOA).
    authority_types: BTreeSet<String>,
}

fn reduce(reply: &Message) -> Answer {
    let rrset = |records: &[hickory_proto::rr::Record]| -> BTreeSet<String> {
        records
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {}",
                    r.name.to_ascii().to_ascii_lowercase(),
                    r.dns_class,
                    r.record_type(),
                    r.data
                )
            })
            .collect()
    };
    Answer {
        rcode: reply.metadata.response_code.to_string(),
        answers: rrset(&reply.answers),
        authority_types: reply
            .authorities
            .iter()
            .map(|r| r.record_type().to_string())
            .collect(),
    }
}

/// The names glibc tries for `name` with the pod's search list and ndots:5, in order,
/// within the cluster zones. glibc would also try a short name as is (`web.`) after the
/// search list; that question leaves the cluster zones, where kube-dns forwards it and the
/// simulated backends (plain authoritative knot) refuse it, so it is not compared.
fn search_expansion(name: &str) -> Vec<String> {
    if name.ends_with('.') {
        return vec![name.to_string()];
    }
    let mut tries: Vec<String> = SEARCH.iter().map(|s| format!("{name}.{s}.")).collect();
    if name.matches('.').count() >= NDOTS {
        tries.insert(0, format!("{name}."));
    }
    tries
}

/// Resolves `name` the way a pod's resolver does: every expansion in order until one is not
/// NXDOMAIN. Returns each step's reduced answer (so the NXDOMAINs along the way are
/// compared too).
fn resolve_via_search(
    node: &SimNode,
    server: IpAddr,
    name: &str,
    rtype: RecordType,
    options: &QueryOptions,
) -> Result<Vec<(String, Answer)>> {
    let mut steps = Vec::new();
    for candidate in search_expansion(name) {
        let reply = node
            .query(0, server, &candidate, rtype, options)
            .with_context(|| format!("{candidate} {rtype} via {server}"))?;
        let nxdomain = reply.metadata.response_code == ResponseCode::NXDomain;
        steps.push((candidate, reduce(&reply)));
        if !nxdomain {
            break;
        }
    }
    Ok(steps)
}

/// Every lookup of the suite: (name as a pod would write it, type).
fn lookups() -> Vec<(String, RecordType)> {
    let mut all = Vec::new();
    // Service A and AAAA, short and qualified, through the search path.
    for name in [
        "web",
        "web.default",
        "web.default.svc",
        names::WEB,
        "kube-dns.kube-system",
        names::KUBE_DNS,
    ] {
        all.push((name.to_string(), RecordType::A));
        all.push((name.to_string(), RecordType::AAAA));
    }
    // Headless Service: every pod's address, and a pod's own name.
    for rtype in [RecordType::A, RecordType::AAAA] {
        all.push(("db.default".to_string(), rtype));
        all.push((names::DB_HEADLESS.to_string(), rtype));
    }
    all.push((
        "db-0.db.default.svc.cluster.local.".to_string(),
        RecordType::A,
    ));
    all.push(("db-1.db".to_string(), RecordType::AAAA));
    // SRV of named ports.
    for name in [
        names::SRV_DNS_UDP,
        names::SRV_DNS_TCP,
        "_http._tcp.web.default.svc.cluster.local.",
    ] {
        all.push((name.to_string(), RecordType::SRV));
    }
    // PTR of Service IPs, both families.
    for ip in [
        IpAddr::V4(KUBE_DNS_V4),
        IpAddr::V6(KUBE_DNS_V6),
        IpAddr::V4(WEB_V4),
        IpAddr::V6(WEB_V6),
    ] {
        all.push((reverse_name(ip), RecordType::PTR));
    }
    // Negative answers: a missing name (through the whole search path), a missing type.
    all.push(("does-not-exist".to_string(), RecordType::A));
    all.push((names::MISSING.to_string(), RecordType::A));
    all.push((names::WEB.to_string(), RecordType::MX));
    all
}

/// A datapath counter summed over this node's instances.
fn datapath_counter(node: &SimNode, bin: &Path, name: &str) -> Result<u64> {
    Ok(node
        .agent_instances(bin)?
        .iter()
        .filter_map(|i| i["counters"][name].as_u64())
        .sum())
}

/// Queries the datapath took: redirected to the agent, or answered in the kernel.
fn taken(node: &SimNode, bin: &Path) -> Result<u64> {
    Ok(datapath_counter(node, bin, "queries_redirected")?
        + datapath_counter(node, bin, "kernel_answers")?)
}

#[test]
fn kubernetes_dns_lookups_answer_the_same_through_nldns() {
    if !require_root("kubernetes_dns_lookups_answer_the_same_through_nldns") {
        return;
    }
    lookups_answer_the_same("auto");
}

/// The same with every hit answered by the agent, as before kernel answers.
#[test]
fn kubernetes_dns_lookups_answer_the_same_with_kernel_answers_off() {
    if !require_root("kubernetes_dns_lookups_answer_the_same_with_kernel_answers_off") {
        return;
    }
    lookups_answer_the_same("off");
}

fn lookups_answer_the_same(kernel_answers: &str) {
    let bin = agent_binary().expect("build the agent first (cargo build -p nldns-userspace)");
    let node = SimNode::new(1, 2).expect("node");
    let mut args = node.agent_args();
    args.extend(["--kernel-answers".to_string(), kernel_answers.to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _agent = node.spawn_agent(&bin, &args).expect("agent");
    assert!(
        node.wait_http_ok("/ready", Duration::from_secs(20)),
        "agent not ready"
    );
    let redirected_before = taken(&node, &bin).expect("status");
    let kernel_before = datapath_counter(&node, &bin, "kernel_answers").expect("status");

    let mut compared = 0;
    let mut mismatches = Vec::new();
    for (transport, options) in [
        ("udp", QueryOptions::default()),
        ("tcp", QueryOptions::tcp()),
    ] {
        for (service, backend) in [
            (IpAddr::V4(KUBE_DNS_V4), IpAddr::V4(backend_v4(0))),
            (IpAddr::V6(KUBE_DNS_V6), IpAddr::V6(backend_v6(1))),
        ] {
            for (name, rtype) in lookups() {
                let direct = resolve_via_search(&node, backend, &name, rtype, &options)
                    .expect("direct query");
                // Twice through the ClusterIP: a miss (or a hit from an earlier pass),
                // then surely a hit.
                for pass in ["first", "second"] {
                    let through = resolve_via_search(&node, service, &name, rtype, &options)
                        .expect("query through nldns");
                    compared += 1;
                    if through != direct {
                        mismatches.push(format!(
                            "{name} {rtype} {transport} via {service} ({pass} pass):\n  nldns:   {through:?}\n  backend: {direct:?}"
                        ));
                    }
                }
            }
        }
    }
    let redirected_after = taken(&node, &bin).expect("status");
    let in_kernel =
        datapath_counter(&node, &bin, "kernel_answers").expect("status") - kernel_before;
    println!(
        "conformance (kernel answers {kernel_answers}): {compared} lookups compared, {} mismatches; datapath took {} queries, {in_kernel} answered in the kernel",
        mismatches.len(),
        redirected_after - redirected_before
    );
    if kernel_answers == "off" {
        assert_eq!(
            in_kernel, 0,
            "kernel answers off, yet answered in the kernel"
        );
    } else {
        assert!(in_kernel > 0, "no lookup was answered in the kernel");
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    // Each lookup above sent at least one query to the ClusterIP; the datapath must have
    // taken them, redirected or answered (TCP counts per segment, so at least as many as
    // lookups).
    assert!(
        redirected_after - redirected_before >= compared as u64,
        "the queries did not go through the interception: {redirected_before} -> {redirected_after}"
    );
}

#[test]
fn search_expansion_follows_glibc_with_ndots_5() {
    assert_eq!(
        search_expansion("web"),
        [
            "web.default.svc.cluster.local.",
            "web.svc.cluster.local.",
            "web.cluster.local.",
        ]
    );
    assert_eq!(search_expansion("a.b.c.d.e.f")[0], "a.b.c.d.e.f.");
    assert_eq!(
        search_expansion("web.default.svc.cluster.local."),
        ["web.default.svc.cluster.local."]
    );
}
