//! Run-time configuration of the datapath, written by the agent into BPF maps.

/// How many Service IPs (over both families) can be intercepted at once. Each gets its own
/// intercept port (`intercept_base_port + slot`), which is how the egress program knows,
/// without any per-flow state, which Service IP a reply must appear to come from.
pub const MAX_SERVICES: u32 = 16;

/// An agent's intercept ports: two runs of [`MAX_SERVICES`] ports from its base port.
///
/// - `base + slot`: queries the TC ingress program and the host-network socket hooks
///   redirected. The TC egress program turns replies from these ports back into
///   `ServiceIP:53` on their way to a pod.
/// - `base + POD_SOCKET_PORTS + slot`: queries of pod sockets that the pods' own socket
///   hooks redirected in connect()/sendmsg(). Such a socket is connected to (or talks to)
///   the intercept endpoint itself, so the reply must reach the pod unchanged, and the
///   pod's recvmsg()/getpeername() hook shows the application the Service IP. The TC
///   egress program never rewrites replies from these ports: being a separate run of
///   ports is what keeps the NAT stateless and keeps it from rewriting twice.
pub const POD_SOCKET_PORTS: u16 = MAX_SERVICES as u16;

/// Ports one agent's block spans; a second agent (an upgrade) takes the next block.
pub const PORTS_PER_AGENT: u16 = 2 * MAX_SERVICES as u16;

/// An IP address in the 16-byte form the maps use: IPv6 as is, IPv4 as an IPv4-mapped
/// IPv6 address (`::ffff:a.b.c.d`), both in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Eq, Default)]
pub struct ServiceAddr {
    pub octets: [u8; 16],
}

/// Compared as two words: a derived `==` on `[u8; 16]` can become a `bcmp` call, which
/// the bpf target cannot link.
impl PartialEq for ServiceAddr {
    #[inline(always)]
    fn eq(&self, other: &Self) -> bool {
        self.words() == other.words()
    }
}

impl core::hash::Hash for ServiceAddr {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.words().hash(state);
    }
}

impl ServiceAddr {
    #[inline(always)]
    fn words(&self) -> (u64, u64) {
        let o = &self.octets;
        (
            u64::from_ne_bytes([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]]),
            u64::from_ne_bytes([o[8], o[9], o[10], o[11], o[12], o[13], o[14], o[15]]),
        )
    }

    pub const fn from_v4(octets: [u8; 4]) -> Self {
        let mut out = [0u8; 16];
        out[10] = 0xff;
        out[11] = 0xff;
        out[12] = octets[0];
        out[13] = octets[1];
        out[14] = octets[2];
        out[15] = octets[3];
        ServiceAddr { octets: out }
    }

    pub const fn from_v6(octets: [u8; 16]) -> Self {
        ServiceAddr { octets }
    }

    /// The IPv4 address, if this is an IPv4-mapped address.
    #[inline(always)]
    pub fn as_v4(&self) -> Option<[u8; 4]> {
        let o = &self.octets;
        if self.words().0 == 0 && o[8] == 0 && o[9] == 0 && o[10] == 0xff && o[11] == 0xff {
            Some([
                self.octets[12],
                self.octets[13],
                self.octets[14],
                self.octets[15],
            ])
        } else {
            None
        }
    }
}

/// Value of the `NLDNS_SERVICES` hash map (key: [`ServiceAddr`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceSlot {
    /// Index into `NLDNS_REVERSE`; the intercept port is `intercept_base_port + slot`.
    pub slot: u32,
}

/// The single entry of the `NLDNS_CONFIG` array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DatapathConfig {
    /// Intercept endpoint for IPv4 queries, network byte order. Owned by nldns alone:
    /// only replies from this address are ever rewritten.
    pub intercept_v4: [u8; 4],
    /// First intercept port (host byte order); slot N listens on base + N.
    pub intercept_base_port: u16,
    /// 1 once the agent has written a complete configuration; 0 means pass everything.
    pub enabled: u8,
    /// Log level for aya-log messages from the datapath (0 = off .. 5 = trace).
    pub log_level: u8,
    /// Intercept endpoint for IPv6 queries, network byte order.
    pub intercept_v6: [u8; 16],
    /// Redirect only while the agent's heartbeat is younger than this (ns, monotonic).
    pub heartbeat_max_age_ns: u64,
    /// Cookie of the agent's network namespace (SO_NETNS_COOKIE). The cgroup socket hooks
    /// see every process of the cgroup whatever its namespace, but the intercept endpoint
    /// exists only in the agent's: they rewrite only sockets of this namespace. 0 (unknown,
    /// kernels before 5.14) turns the socket hooks off.
    pub netns_cookie: u64,
    /// Kernel answers: `KERNEL_ANSWERS_OFF`, `_PEER` or `_EGRESS` (see `answers`). Read
    /// only by the answering ingress program.
    pub kernel_answers: u8,
    pub _pad: [u8; 7],
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<ServiceAddr>(), 16);
        assert_eq!(size_of::<ServiceSlot>(), 4);
        assert_eq!(size_of::<DatapathConfig>(), 4 + 2 + 1 + 1 + 16 + 8 + 8 + 8);
    }

    #[test]
    fn v4_mapped_round_trip() {
        let a = ServiceAddr::from_v4([10, 96, 0, 10]);
        assert_eq!(a.as_v4(), Some([10, 96, 0, 10]));
        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        assert_eq!(ServiceAddr::from_v6(v6).as_v4(), None);
    }
}
