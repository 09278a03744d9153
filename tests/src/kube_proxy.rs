//! A kube-proxy stand-in: the Service NAT that a real node has, written into the node
//! namespace the way kube-proxy writes it (iptables mode via iptables-nft, nftables mode, or
//! IPVS mode: the ClusterIPs on a `kube-ipvs0` dummy interface and one IPVS virtual
//! service per Service port, which needs a kernel with IPVS and the dummy driver, see
//! [`crate::kernel`]).
//!
//! This is what makes the datapath tests honest: interception must win against the same
//! DNAT that a real node applies to ClusterIP:53.

use std::fmt::Write as _;
use std::net::IpAddr;

use anyhow::{Context, Result};

use crate::addresses::*;
use crate::netns::Netns;

/// Which kube-proxy mode to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeProxyMode {
    /// No Service NAT at all (ClusterIPs lead nowhere).
    None,
    /// iptables mode (iptables-nft / ip6tables-nft).
    Iptables,
    /// nftables mode (`table ip kube-proxy` / `table ip6 kube-proxy`).
    Nftables,
    /// IPVS mode as kube-proxy's ipvs proxier builds it: every ClusterIP on the
    /// `kube-ipvs0` dummy interface (left down, as kube-proxy leaves it; the addresses are
    /// local all the same), a virtual service per ClusterIP:port with round robin and the
    /// endpoints in masquerading (NAT) mode, and `net.ipv4.vs.conntrack=1`.
    Ipvs,
}

/// The dummy interface kube-proxy's IPVS mode binds every ClusterIP to.
pub const IPVS_INTERFACE: &str = "kube-ipvs0";

/// One ClusterIP Service port with its endpoints.
#[derive(Debug, Clone)]
pub struct ServicePort {
    /// `namespace/name:port-name`, as kube-proxy spells it in comments and chain hashes.
    pub name: String,
    pub cluster_ip: IpAddr,
    /// "udp" or "tcp".
    pub protocol: &'static str,
    pub port: u16,
    pub endpoints: Vec<IpAddr>,
    pub target_port: u16,
}

/// kube-dns and kube-dns-uncached (UDP and TCP port 53) of one family, backed by `backends`.
pub fn dns_services(backends: &[IpAddr], ipv6: bool) -> Vec<ServicePort> {
    let family: Vec<IpAddr> = backends
        .iter()
        .copied()
        .filter(|ip| ip.is_ipv6() == ipv6)
        .collect();
    let (cached, uncached) = if ipv6 {
        (IpAddr::V6(KUBE_DNS_V6), IpAddr::V6(KUBE_DNS_UNCACHED_V6))
    } else {
        (IpAddr::V4(KUBE_DNS_V4), IpAddr::V4(KUBE_DNS_UNCACHED_V4))
    };
    let mut ports = Vec::new();
    for (service, ip) in [
        ("kube-system/kube-dns", cached),
        ("kube-system/kube-dns-uncached", uncached),
    ] {
        for (port_name, protocol) in [("dns", "udp"), ("dns-tcp", "tcp")] {
            ports.push(ServicePort {
                name: format!("{service}:{port_name}"),
                cluster_ip: ip,
                protocol,
                port: 53,
                endpoints: family.clone(),
                target_port: 53,
            });
        }
    }
    ports
}

/// Installs the rules of `mode` for `services` (both families mixed) in the node namespace,
/// replacing earlier rules of the same mode.
pub fn install(netns: &Netns, mode: KubeProxyMode, services: &[ServicePort]) -> Result<()> {
    // Replacing, not appending: the jumps from the built-in chains would be duplicated.
    remove(netns, mode)?;
    let (v4, v6): (Vec<ServicePort>, Vec<ServicePort>) = services
        .iter()
        .cloned()
        .partition(|s| s.cluster_ip.is_ipv4());
    match mode {
        KubeProxyMode::None => Ok(()),
        KubeProxyMode::Iptables => {
            netns
                .exec_with_stdin(
                    "iptables-restore",
                    &["--noflush"],
                    iptables_rules(&v4, false).as_bytes(),
                )
                .context("installing kube-proxy iptables rules")?;
            netns
                .exec_with_stdin(
                    "ip6tables-restore",
                    &["--noflush"],
                    iptables_rules(&v6, true).as_bytes(),
                )
                .context("installing kube-proxy ip6tables rules")?;
            Ok(())
        }
        KubeProxyMode::Nftables => {
            let script = format!(
                "{}{}",
                nftables_rules(&v4, false),
                nftables_rules(&v6, true)
            );
            netns
                .exec_with_stdin("nft", &["-f", "-"], script.as_bytes())
                .context("installing kube-proxy nftables rules")?;
            Ok(())
        }
        KubeProxyMode::Ipvs => install_ipvs(netns, services),
    }
}

fn install_ipvs(netns: &Netns, services: &[ServicePort]) -> Result<()> {
    netns
        .ip(&["link", "add", IPVS_INTERFACE, "type", "dummy"])
        .context("creating kube-ipvs0 (IPVS mode needs the dummy driver)")?;
    let mut bound = Vec::new();
    for service in services {
        if bound.contains(&service.cluster_ip) {
            continue;
        }
        bound.push(service.cluster_ip);
        let mut args = vec![
            "addr".to_string(),
            "add".into(),
            host_prefix(service.cluster_ip),
            "dev".into(),
            IPVS_INTERFACE.into(),
        ];
        if service.cluster_ip.is_ipv6() {
            args.push("nodad".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        netns.ip(&args)?;
    }
    netns
        .sysctl("net/ipv4/vs/conntrack", "1")
        .context("IPVS mode needs the ip_vs module")?;
    netns
        .exec_with_stdin("ipvsadm", &["-R"], ipvs_rules(services).as_bytes())
        .context("installing kube-proxy's IPVS virtual services")?;
    Ok(())
}

/// `ipvsadm -R` input: a virtual service per ClusterIP:port (round robin), its endpoints
/// as real servers in masquerading mode, as kube-proxy's ipvs proxier configures them.
pub fn ipvs_rules(services: &[ServicePort]) -> String {
    let mut text = String::new();
    for service in services {
        let flag = if service.protocol == "tcp" {
            "-t"
        } else {
            "-u"
        };
        let vip = endpoint_addr(service.cluster_ip, service.port);
        let _ = writeln!(text, "-A {flag} {vip} -s rr");
        for endpoint in &service.endpoints {
            let _ = writeln!(
                text,
                "-a {flag} {vip} -r {} -m -w 1",
                endpoint_addr(*endpoint, service.target_port)
            );
        }
    }
    text
}

/// How often IPVS folds its per-CPU counters into the totals `ipvsadm --stats` shows
/// (its rate estimator's timer, 2 s): a count read sooner than this after the traffic may
/// not include it yet.
pub const IPVS_STATS_PERIOD: std::time::Duration = std::time::Duration::from_secs(2);

/// Packets IPVS received per virtual service (`ipvsadm -Ln --stats --exact`), keyed by
/// protocol ("udp"/"tcp"), ClusterIP and port: tells whether a query went through
/// kube-proxy's IPVS or was intercepted before it. Lags by up to [`IPVS_STATS_PERIOD`].
pub fn ipvs_in_packets(
    netns: &Netns,
) -> Result<std::collections::BTreeMap<(String, IpAddr, u16), u64>> {
    let text = netns.exec("ipvsadm", &["-Ln", "--stats", "--exact"])?;
    let mut stats = std::collections::BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(proto), Some(vip)) = (fields.next(), fields.next()) else {
            continue;
        };
        if proto != "UDP" && proto != "TCP" {
            continue;
        }
        let Ok(vip) = vip.parse::<std::net::SocketAddr>() else {
            continue;
        };
        // Conns, then InPkts.
        if let Some(in_pkts) = fields.nth(1).and_then(|v| v.parse().ok()) {
            stats.insert((proto.to_ascii_lowercase(), vip.ip(), vip.port()), in_pkts);
        }
    }
    Ok(stats)
}

/// Removes the rules of `mode` from the node namespace. In iptables mode this empties the
/// whole nat table and kube-proxy's chains of the filter table: the node namespace belongs
/// to the run, and nothing but kube-proxy's stand-in writes NAT rules there.
pub fn remove(netns: &Netns, mode: KubeProxyMode) -> Result<()> {
    match mode {
        KubeProxyMode::None => Ok(()),
        KubeProxyMode::Iptables => {
            for tool in ["iptables", "ip6tables"] {
                netns.exec(tool, &["-w", "5", "-t", "nat", "-F"])?;
                netns.exec(tool, &["-w", "5", "-t", "nat", "-X"])?;
                // The filter chain may not exist yet (first install): ignore failures.
                let _ = netns.exec(
                    tool,
                    &[
                        "-w",
                        "5",
                        "-t",
                        "filter",
                        "-D",
                        "FORWARD",
                        "-m",
                        "comment",
                        "--comment",
                        "kubernetes forwarding rules",
                        "-j",
                        "KUBE-FORWARD",
                    ],
                );
                let _ = netns.exec(tool, &["-w", "5", "-t", "filter", "-F", "KUBE-FORWARD"]);
                let _ = netns.exec(tool, &["-w", "5", "-t", "filter", "-X", "KUBE-FORWARD"]);
            }
            Ok(())
        }
        KubeProxyMode::Nftables => {
            for family in ["ip", "ip6"] {
                // `add` then `delete` succeeds whether or not the table existed.
                let script =
                    format!("table {family} kube-proxy {{}}\ndelete table {family} kube-proxy\n");
                netns.exec_with_stdin("nft", &["-f", "-"], script.as_bytes())?;
            }
            Ok(())
        }
        KubeProxyMode::Ipvs => {
            // Absent on a first install; deleting the interface drops its ClusterIPs.
            let _ = netns.exec("ipvsadm", &["-C"]);
            let _ = netns.ip(&["link", "del", IPVS_INTERFACE]);
            Ok(())
        }
    }
}

/// The kube-proxy rules currently in the node namespace, as `iptables-save` /
/// `ip6tables-save` / `nft list ruleset` print them (for failure messages and the demo).
pub fn dump(netns: &Netns) -> Result<String> {
    let mut text = String::new();
    for (tool, args) in [
        ("iptables-save", &[][..]),
        ("ip6tables-save", &[][..]),
        ("nft", &["list", "ruleset"][..]),
    ] {
        let _ = writeln!(text, "# {tool} {}", args.join(" "));
        text.push_str(&netns.exec(tool, args)?);
    }
    // IPVS exists only where the kernel has it.
    if let Ok(ipvs) = netns.exec("ipvsadm", &["-Ln"]) {
        let _ = writeln!(text, "# ipvsadm -Ln");
        text.push_str(&ipvs);
    }
    Ok(text)
}

/// kube-proxy names chains by a hash of the service port (and endpoint); any stable hash
/// makes the same shape. FNV-1a, printed in base32 like kube-proxy's 16 characters.
fn chain_hash(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    for seed in [0xcbf2_9ce4_8422_2325u64, 0x6c62_272e_07bb_0142u64] {
        let mut hash = seed;
        for byte in text.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for i in 0..8 {
            out.push(ALPHABET[((hash >> (i * 5)) & 31) as usize] as char);
        }
    }
    out
}

fn host_prefix(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}/32"),
        IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

fn endpoint_addr(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// iptables-restore input in kube-proxy's iptables-mode layout: nat PREROUTING/OUTPUT jump
/// to KUBE-SERVICES; per service port a KUBE-SVC chain that picks an endpoint with
/// `-m statistic --mode random`; per endpoint a KUBE-SEP chain that DNATs; masquerade
/// marking for hairpin and off-cluster sources; the filter rules of KUBE-FORWARD.
pub fn iptables_rules(services: &[ServicePort], ipv6: bool) -> String {
    let cluster_cidr = if ipv6 {
        CLUSTER_CIDR_V6
    } else {
        CLUSTER_CIDR_V4
    };
    let mut chains = vec![
        "KUBE-SERVICES".to_string(),
        "KUBE-MARK-MASQ".into(),
        "KUBE-POSTROUTING".into(),
    ];
    let mut rules = String::new();
    let mut r = |line: String| {
        rules.push_str(&line);
        rules.push('\n');
    };
    r("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into());
    r("-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into());
    r(
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
            .into(),
    );
    r("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000".into());
    r("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN".into());
    r("-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0".into());
    r("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully".into());
    for service in services {
        let svc_chain = format!(
            "KUBE-SVC-{}",
            chain_hash(&format!("{}{}", service.name, service.protocol))
        );
        chains.push(svc_chain.clone());
        let (name, proto, ip, port) = (
            &service.name,
            service.protocol,
            host_prefix(service.cluster_ip),
            service.port,
        );
        r(format!(
            "-A KUBE-SERVICES -d {ip} -p {proto} -m comment --comment \"{name} cluster IP\" -m {proto} --dport {port} -j {svc_chain}"
        ));
        // Traffic from outside the cluster CIDR (the node itself) is masqueraded.
        r(format!(
            "-A {svc_chain} ! -s {cluster_cidr} -d {ip} -p {proto} -m comment --comment \"{name} cluster IP\" -m {proto} --dport {port} -j KUBE-MARK-MASQ"
        ));
        let count = service.endpoints.len();
        for (index, endpoint) in service.endpoints.iter().enumerate() {
            let target = endpoint_addr(*endpoint, service.target_port);
            let sep_chain = format!("KUBE-SEP-{}", chain_hash(&format!("{name}{proto}{target}")));
            chains.push(sep_chain.clone());
            // Endpoint i of n is taken with probability 1/(n-i), the last one always.
            let pick = if index + 1 < count {
                format!(
                    " -m statistic --mode random --probability {:.10}",
                    1.0 / (count - index) as f64
                )
            } else {
                String::new()
            };
            r(format!(
                "-A {svc_chain} -m comment --comment \"{name} -> {target}\"{pick} -j {sep_chain}"
            ));
            r(format!(
                "-A {sep_chain} -s {} -m comment --comment \"{name}\" -j KUBE-MARK-MASQ",
                host_prefix(*endpoint)
            ));
            r(format!(
                "-A {sep_chain} -p {proto} -m comment --comment \"{name}\" -m {proto} -j DNAT --to-destination {target}"
            ));
        }
    }
    let mut text = String::from("*nat\n");
    for chain in &chains {
        let _ = writeln!(text, ":{chain} - [0:0]");
    }
    text.push_str(&rules);
    text.push_str("COMMIT\n");
    // kube-proxy's filter rules: conntrack-INVALID packets are dropped in FORWARD, which a
    // datapath that rewrites packets must not trip over.
    text.push_str(
        "*filter\n:KUBE-FORWARD - [0:0]\n\
         -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n",
    );
    text
}

/// nft input in kube-proxy's nftables-mode layout: a `kube-proxy` table per family with
/// dstnat hooks jumping to `services`, a verdict map from ClusterIP . protocol . port to a
/// per-service-port chain, `numgen random` picking an endpoint chain that DNATs.
pub fn nftables_rules(services: &[ServicePort], ipv6: bool) -> String {
    let (family, addr) = if ipv6 { ("ip6", "ip6") } else { ("ip", "ip") };
    let cluster_cidr = if ipv6 {
        CLUSTER_CIDR_V6
    } else {
        CLUSTER_CIDR_V4
    };
    let addr_type = if ipv6 { "ipv6_addr" } else { "ipv4_addr" };
    let mut t = String::new();
    let _ = writeln!(t, "table {family} kube-proxy {{");
    // The map comes first: the services chain refers to it.
    let _ = writeln!(
        t,
        "  map service-ips {{\n    type {addr_type} . inet_proto . inet_service : verdict\n  }}"
    );
    let mut chain = |name: &str, lines: &[String]| {
        let _ = writeln!(t, "  chain {name} {{");
        for line in lines {
            let _ = writeln!(t, "    {line}");
        }
        let _ = writeln!(t, "  }}");
    };
    chain(
        "mark-for-masquerade",
        &["meta mark set meta mark | 0x4000".into()],
    );
    chain(
        "masquerading",
        &[
            "meta mark & 0x4000 == 0 return".into(),
            "meta mark set meta mark ^ 0x4000".into(),
            "masquerade fully-random".into(),
        ],
    );
    chain(
        "services",
        &[format!(
            "{addr} daddr . meta l4proto . th dport vmap @service-ips"
        )],
    );
    chain(
        "nat-prerouting",
        &[
            "type nat hook prerouting priority dstnat; policy accept;".into(),
            "jump services".into(),
        ],
    );
    chain(
        "nat-output",
        &[
            "type nat hook output priority -100; policy accept;".into(),
            "jump services".into(),
        ],
    );
    chain(
        "nat-postrouting",
        &[
            "type nat hook postrouting priority srcnat; policy accept;".into(),
            "jump masquerading".into(),
        ],
    );
    // kube-proxy drops conntrack-INVALID packets in forward, like its iptables mode.
    chain(
        "filter-forward",
        &[
            "type filter hook forward priority -110; policy accept;".into(),
            "ct state invalid drop".into(),
        ],
    );
    let mut map_elements = Vec::new();
    for service in services {
        let hash = chain_hash(&format!("{}{}", service.name, service.protocol));
        let svc_chain = format!(
            "service-{}-{}",
            &hash[..8],
            nft_port_name(&service.name, service.protocol)
        );
        let (proto, ip, port) = (service.protocol, service.cluster_ip, service.port);
        map_elements.push(format!("{ip} . {proto} . {port} : goto {svc_chain}"));
        let mut endpoint_chains = Vec::new();
        for endpoint in &service.endpoints {
            let target = endpoint_addr(*endpoint, service.target_port);
            let ep_hash = chain_hash(&format!("{}{target}", service.name));
            // Chain names cannot hold ':' (nor quotes in this nft); kube-proxy writes the
            // endpoint as `<ip>/<port>` with an IPv6 address's ':' spelled '.'.
            let ep_chain = format!(
                "endpoint-{}-{}__{}/{}",
                &ep_hash[..8],
                nft_port_name(&service.name, proto),
                endpoint.to_string().replace(':', "."),
                service.target_port
            );
            chain(
                &ep_chain,
                &[
                    format!("{addr} saddr {endpoint} jump mark-for-masquerade"),
                    format!("meta l4proto {proto} dnat to {target}"),
                ],
            );
            endpoint_chains.push(ep_chain);
        }
        let mut lines = vec![format!(
            "{addr} daddr {ip} {proto} dport {port} {addr} saddr != {cluster_cidr} jump mark-for-masquerade"
        )];
        if endpoint_chains.is_empty() {
            lines.push("reject".into());
        } else {
            let vmap: Vec<String> = endpoint_chains
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{i} : goto {c}"))
                .collect();
            lines.push(format!(
                "numgen random mod {} vmap {{ {} }}",
                endpoint_chains.len(),
                vmap.join(", ")
            ));
        }
        chain(&svc_chain, &lines);
    }
    let _ = writeln!(
        t,
        "  map service-ips {{\n    type {addr_type} . inet_proto . inet_service : verdict\n  }}"
    );
    let _ = writeln!(t, "}}");
    if !map_elements.is_empty() {
        let _ = writeln!(
            t,
            "add element {family} kube-proxy service-ips {{ {} }}",
            map_elements.join(", ")
        );
    }
    t
}

/// `namespace/name/protocol/port-name`, as kube-proxy's nftables mode spells a service port
/// in chain names.
fn nft_port_name(name: &str, protocol: &str) -> String {
    let (service, port) = name.split_once(':').unwrap_or((name, ""));
    format!("{service}/{protocol}/{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_rules_spread_endpoints_like_kube_proxy() {
        let backends = [
            IpAddr::V4(backend_v4(0)),
            IpAddr::V4(backend_v4(1)),
            IpAddr::V4(backend_v4(2)),
        ];
        let rules = iptables_rules(&dns_services(&backends, false), false);
        assert!(rules.contains(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
        ));
        assert!(rules.contains("-d 10.96.0.10/32 -p udp"));
        assert!(rules.contains("-d 10.96.0.11/32 -p tcp"));
        assert!(rules.contains("--probability 0.3333333333"));
        assert!(rules.contains("--probability 0.5000000000"));
        assert!(rules.contains("DNAT --to-destination 10.244.9.12:53"));
        assert_eq!(chain_hash("a").len(), 16);
        assert_ne!(chain_hash("a"), chain_hash("b"));
    }

    #[test]
    fn nftables_rules_map_cluster_ips() {
        let backends = [IpAddr::V6(backend_v6(0))];
        let rules = nftables_rules(&dns_services(&backends, true), true);
        assert!(rules.contains("fd00:10:96::a . udp . 53"));
        assert!(rules.contains("dnat to [fd00:10:244:9::10]:53"));
    }
}
