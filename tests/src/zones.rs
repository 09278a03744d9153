//! Zone data served by the simulated kube-dns backends and by the "outside" resolver.
//!
//! The cluster.local zone mirrors what CoreDNS's kubernetes plugin answers for a small
//! cluster: Services (normal and headless), SRV records for named ports, PTRs, and a
//! negative-caching SOA minimum kept short so that tests can watch negative answers expire.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::addresses::*;

/// The TTL of positive answers (CoreDNS's default).
pub const CLUSTER_TTL: u32 = 30;
/// The SOA minimum, i.e. the TTL of negative answers (RFC 2308).
pub const NEGATIVE_TTL: u32 = 5;
/// `short-ttl.default.svc.cluster.local` has this TTL, for expiry tests.
pub const SHORT_TTL: u32 = 2;
/// Number of A records of `big.default.svc.cluster.local` (the answer exceeds 512 bytes, so
/// a plain UDP query without EDNS is truncated).
pub const BIG_RRSET_LEN: usize = 60;

/// Names the tests query, spelled once.
pub mod names {
    pub const KUBE_DNS: &str = "kube-dns.kube-system.svc.cluster.local.";
    pub const KUBE_DNS_UNCACHED: &str = "kube-dns-uncached.kube-system.svc.cluster.local.";
    pub const WEB: &str = "web.default.svc.cluster.local.";
    pub const DB_HEADLESS: &str = "db.default.svc.cluster.local.";
    pub const BIG: &str = "big.default.svc.cluster.local.";
    pub const SHORT_TTL: &str = "short-ttl.default.svc.cluster.local.";
    pub const SRV_DNS_UDP: &str = "_dns._udp.kube-dns.kube-system.svc.cluster.local.";
    pub const SRV_DNS_TCP: &str = "_dns-tcp._tcp.kube-dns.kube-system.svc.cluster.local.";
    pub const MISSING: &str = "does-not-exist.default.svc.cluster.local.";
    pub const EXT_WWW: &str = "www.example.org.";
    pub const EXT_MISSING: &str = "does-not-exist.example.org.";
}

/// Names that exist in cluster.local, of several types, so a steady load exercises
/// more than one cache entry.
pub fn steady_names() -> Vec<(String, hickory_proto::rr::RecordType)> {
    use hickory_proto::rr::RecordType;
    vec![
        (names::WEB.into(), RecordType::A),
        (names::KUBE_DNS.into(), RecordType::AAAA),
        (names::DB_HEADLESS.into(), RecordType::A),
        (names::SRV_DNS_UDP.into(), RecordType::SRV),
        (names::WEB.into(), RecordType::AAAA),
    ]
}

/// Pod IPs of the headless Service `db` (pods on another node: data only).
pub fn db_pods() -> Vec<(String, Ipv4Addr, Ipv6Addr)> {
    (0..3u8)
        .map(|i| {
            (
                format!("db-{i}"),
                Ipv4Addr::new(10, 244, 2, 10 + i),
                Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 0x10 + u16::from(i)),
            )
        })
        .collect()
}

/// The A records of `big.default.svc.cluster.local`.
pub fn big_rrset() -> Vec<Ipv4Addr> {
    (0..BIG_RRSET_LEN)
        .map(|i| Ipv4Addr::new(10, 244, 3, 1 + i as u8))
        .collect()
}

fn soa(origin: &str) -> String {
    format!(
        "$ORIGIN {origin}\n$TTL {CLUSTER_TTL}\n\
         @ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 {NEGATIVE_TTL}\n\
         @ IN NS ns.dns.cluster.local.\n"
    )
}

/// The `cluster.local` zone file.
pub fn cluster_local() -> String {
    let mut z = soa("cluster.local.");
    let mut add = |line: String| {
        z.push_str(&line);
        z.push('\n');
    };
    add(format!("ns.dns IN A {KUBE_DNS_V4}"));
    add(format!("kube-dns.kube-system.svc IN A {KUBE_DNS_V4}"));
    add(format!("kube-dns.kube-system.svc IN AAAA {KUBE_DNS_V6}"));
    add(format!(
        "kube-dns-uncached.kube-system.svc IN A {KUBE_DNS_UNCACHED_V4}"
    ));
    add(format!(
        "kube-dns-uncached.kube-system.svc IN AAAA {KUBE_DNS_UNCACHED_V6}"
    ));
    add("_dns._udp.kube-dns.kube-system.svc IN SRV 0 100 53 kube-dns.kube-system.svc.cluster.local.".into());
    add("_dns-tcp._tcp.kube-dns.kube-system.svc IN SRV 0 100 53 kube-dns.kube-system.svc.cluster.local.".into());
    add(format!("web.default.svc IN A {WEB_V4}"));
    add(format!("web.default.svc IN AAAA {WEB_V6}"));
    add("_http._tcp.web.default.svc IN SRV 0 100 80 web.default.svc.cluster.local.".into());
    add(format!("short-ttl.default.svc {SHORT_TTL} IN A 10.96.5.6"));
    for (pod, v4, v6) in db_pods() {
        add(format!("db.default.svc IN A {v4}"));
        add(format!("db.default.svc IN AAAA {v6}"));
        // StatefulSet-style per-pod names (hostname.subdomain) and the dashed-IP form.
        add(format!("{pod}.db.default.svc IN A {v4}"));
        add(format!("{pod}.db.default.svc IN AAAA {v6}"));
        add(format!(
            "{}.db.default.svc IN A {v4}",
            v4.to_string().replace('.', "-")
        ));
    }
    for v4 in big_rrset() {
        add(format!("big.default.svc IN A {v4}"));
    }
    z
}

/// The Services that have reverse records.
fn ptr_targets() -> Vec<(IpAddr, &'static str)> {
    vec![
        (IpAddr::V4(KUBE_DNS_V4), names::KUBE_DNS),
        (IpAddr::V6(KUBE_DNS_V6), names::KUBE_DNS),
        (IpAddr::V4(KUBE_DNS_UNCACHED_V4), names::KUBE_DNS_UNCACHED),
        (IpAddr::V6(KUBE_DNS_UNCACHED_V6), names::KUBE_DNS_UNCACHED),
        (IpAddr::V4(WEB_V4), names::WEB),
        (IpAddr::V6(WEB_V6), names::WEB),
    ]
}

/// The IPv4 reverse zone origin.
pub const REVERSE_V4_ZONE: &str = "10.in-addr.arpa.";
/// The IPv6 reverse zone origin: fd00:10:96::/48, the Service range.
pub const REVERSE_V6_ZONE: &str = "6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa.";

/// A reverse zone file with absolute PTR owner names of the given family.
pub fn reverse_zone(origin: &str, v6: bool) -> String {
    let mut z = soa(origin);
    for (ip, target) in ptr_targets() {
        if ip.is_ipv6() == v6 {
            let _ = writeln!(z, "{} IN PTR {target}", reverse_name(ip));
        }
    }
    z
}

/// The address of every `*.new.example.org` name.
pub const NEW_EXT_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 8, 30);

/// The "outside" zone `example.org` (its addresses are data only: inside the sim ranges).
pub fn example_org() -> String {
    let mut z = format!(
        "$ORIGIN example.org.\n$TTL 60\n\
         @ IN SOA ns.example.org. hostmaster.example.org. 1 7200 1800 86400 {NEGATIVE_TTL}\n\
         @ IN NS ns.example.org.\n"
    );
    for line in [
        "ns IN A 10.244.8.10".to_string(),
        "@ IN A 10.244.8.20".to_string(),
        "www IN A 10.244.8.20".to_string(),
        "www IN AAAA fd00:10:244:8::20".to_string(),
        "alias IN CNAME www.example.org.".to_string(),
        // Any number of distinct names that exist, for tests that need fresh misses
        // answered by the outside resolver (`<anything>.new.example.org`).
        format!("*.new IN A {NEW_EXT_V4}"),
    ] {
        z.push_str(&line);
        z.push('\n');
    }
    z
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_rrset_exceeds_a_classic_udp_message() {
        // 60 A records of ~16 bytes each (compressed owner + fixed fields + rdata).
        const { assert!(BIG_RRSET_LEN * 16 > 512) };
        assert!(cluster_local().matches("big.default.svc IN A").count() == BIG_RRSET_LEN);
    }

    #[test]
    fn reverse_zones_hold_their_family_only() {
        assert!(reverse_zone(REVERSE_V4_ZONE, false).contains("10.0.96.10.in-addr.arpa. IN PTR"));
        assert!(!reverse_zone(REVERSE_V4_ZONE, false).contains("ip6.arpa. IN PTR"));
        assert!(reverse_zone(REVERSE_V6_ZONE, true).contains("ip6.arpa. IN PTR kube-dns"));
    }
}
