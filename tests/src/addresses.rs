//! The simulated node's address plan (docs/testing.md). These addresses exist only inside the test
//! namespaces; nothing here is ever configured in the machine's root namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// kube-dns Service ClusterIP, the address the agent intercepts.
pub const KUBE_DNS_V4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const KUBE_DNS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0xa);
/// kube-dns-uncached Service ClusterIP, the cache's upstream.
pub const KUBE_DNS_UNCACHED_V4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
pub const KUBE_DNS_UNCACHED_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0xb);
/// A normal Service of the cluster.local zone (data only: nothing listens there).
pub const WEB_V4: Ipv4Addr = Ipv4Addr::new(10, 96, 5, 5);
pub const WEB_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0x5, 0x5);

/// The pod CIDR and the node-side gateway of every pod.
pub const POD_CIDR_V4: &str = "10.244.1.0/24";
pub const POD_CIDR_V6: &str = "fd00:10:244:1::/64";
pub const POD_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 1);

/// The kube-dns backends' subnet and gateway.
pub const BACKEND_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 9, 1);
pub const BACKEND_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 9, 0, 0, 0, 1);

/// The "outside" resolver (stands in for the node's resolvers) and the node's end of the
/// link to it, which is also the node's uplink (its default route).
pub const EXT_RESOLVER_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 8, 10);
pub const EXT_RESOLVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 8, 0, 0, 0, 0x10);
pub const EXT_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 8, 1);
pub const EXT_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 8, 0, 0, 0, 1);

/// The whole cluster range, used by kube-proxy's "masquerade off-cluster sources" rule.
pub const CLUSTER_CIDR_V4: &str = "10.244.0.0/16";
pub const CLUSTER_CIDR_V6: &str = "fd00:10:244::/48";

/// Pod `index` gets host number 10 + index (so at most 240 pods).
pub fn pod_v4(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, host_number(index))
}
pub fn pod_v6(index: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, v6_host(index))
}

/// kube-dns backend `index` gets host number 10 + index.
pub fn backend_v4(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 9, host_number(index))
}
pub fn backend_v6(index: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x244, 9, 0, 0, 0, v6_host(index))
}

/// The IPv6 host part reads like the IPv4 one (pod 0 is 10.244.1.10 and fd00:10:244:1::10),
/// so the decimal digits are reused as hex digits.
fn v6_host(index: usize) -> u16 {
    u16::from_str_radix(&host_number(index).to_string(), 16).expect("decimal digits are hex digits")
}

/// Both families of an address pair, in the order tests usually want them.
pub fn both(v4: Ipv4Addr, v6: Ipv6Addr) -> [IpAddr; 2] {
    [IpAddr::V4(v4), IpAddr::V6(v6)]
}

fn host_number(index: usize) -> u8 {
    assert!(
        index < 240,
        "the address plan has room for 240 hosts per subnet"
    );
    10 + index as u8
}

/// The reverse-lookup name of an address (`10.0.96.10.in-addr.arpa.`, nibbles for IPv6).
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut name = String::new();
            for byte in v6.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            name.push_str("ip6.arpa.");
            name
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_name(IpAddr::V4(KUBE_DNS_V4)),
            "10.0.96.10.in-addr.arpa."
        );
        assert_eq!(
            reverse_name(IpAddr::V6(KUBE_DNS_V6)),
            "a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa."
        );
    }

    #[test]
    fn pod_addresses() {
        assert_eq!(pod_v4(0).to_string(), "10.244.1.10");
        assert_eq!(pod_v6(3).to_string(), "fd00:10:244:1::13");
        assert_eq!(backend_v6(1).to_string(), "fd00:10:244:9::11");
    }
}
