//! What the kernel VMs run: the kernels, and which of the project's integration tests run
//! on each (by test binary and exact test name).
//!
//! arm64 runs the same plan but `faults` (`AMD64_ONLY`): its tools come from Debian's
//! arm64 packages (`sysroot.rs`) and its test binaries are static aarch64-musl builds.
//!
//! The TCX tests are left out on purpose: TCX came in Linux 6.6, so on 6.1 the agent's
//! auto mode takes the netlink path, and every datapath test below exercises that path.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    /// Where a foreign architecture's Debian packages are unpacked (`sysroot.rs`).
    pub fn sysroot(self, root: &Path) -> PathBuf {
        root.join("target/vm")
            .join(format!("sysroot-{}", self.name()))
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// `uname -m` in the guest.
    pub fn uname(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
    }

    /// The Debian multiarch triplet (library directories).
    pub fn multiarch(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-linux-gnu",
            Arch::Arm64 => "aarch64-linux-gnu",
        }
    }

    /// The cargo target to build for, None for the host's own. arm64: static musl
    /// binaries linked by rust-lld (no cross gcc, no arm64 libc in the guest for them).
    pub fn cargo_target(self) -> Option<&'static str> {
        match self {
            Arch::Amd64 => None,
            Arch::Arm64 => Some("aarch64-unknown-linux-musl"),
        }
    }

    /// True for the build machine's own architecture: its tools and kernel come from the
    /// host's installed packages; any other from an unpacked sysroot (`sysroot.rs`).
    pub fn is_host(self) -> bool {
        match self {
            Arch::Amd64 => cfg!(target_arch = "x86_64"),
            Arch::Arm64 => cfg!(target_arch = "aarch64"),
        }
    }

    pub fn qemu(self) -> &'static str {
        match self {
            Arch::Amd64 => "qemu-system-x86_64",
            Arch::Arm64 => "qemu-system-aarch64",
        }
    }

    /// TCG: KVM aborts or hangs on these machines (they are VMs themselves).
    pub fn machine_args(self) -> &'static [&'static str] {
        match self {
            Arch::Amd64 => &["-accel", "tcg", "-cpu", "max"],
            // pauth-impdef: QEMU's own pointer-authentication hash instead of QARMA,
            // several times cheaper under TCG.
            Arch::Arm64 => &["-M", "virt", "-accel", "tcg", "-cpu", "max,pauth-impdef=on"],
        }
    }

    pub fn console(self) -> &'static str {
        match self {
            Arch::Amd64 => "ttyS0",
            Arch::Arm64 => "ttyAMA0",
        }
    }

    /// QEMU arguments of the device test results come back on (QEMU's stdout), after the
    /// console's serial port.
    pub fn results_args(self) -> &'static [&'static str] {
        match self {
            Arch::Amd64 => &["-serial", "stdio"],
            // The virt board has one UART (the console): results go over a virtio console.
            Arch::Arm64 => &[
                "-device",
                "virtio-serial-device",
                "-chardev",
                "stdio,id=results",
                "-device",
                "virtconsole,chardev=results",
            ],
        }
    }

    /// That device in the guest.
    pub fn results_device(self) -> &'static str {
        match self {
            Arch::Amd64 => "/dev/ttyS1",
            Arch::Arm64 => "/dev/hvc0",
        }
    }

    /// Modules `/init` loads before it can open the results device.
    pub fn early_modules(self) -> &'static [&'static str] {
        match self {
            Arch::Amd64 => &[],
            Arch::Arm64 => &["virtio_mmio", "virtio_console"],
        }
    }
}

/// A Debian kernel package the tests boot.
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    /// The name `cargo xtask test --kernel` takes.
    pub name: &'static str,
    pub arch: Arch,
    pub package: &'static str,
    /// Its `uname -r`.
    pub release: &'static str,
}

impl Kernel {
    /// Where the package's files are on the host: `/` when it is installed (the host's
    /// architecture), the unpacked sysroot otherwise.
    pub fn files_root(&self, root: &Path) -> PathBuf {
        if self.arch.is_host() {
            PathBuf::from("/")
        } else {
            self.arch.sysroot(root)
        }
    }

    pub fn vmlinuz(&self, root: &Path) -> PathBuf {
        self.files_root(root)
            .join(format!("boot/vmlinuz-{}", self.release))
    }

    /// The guest path of its modules (the same inside the guest as in the package).
    pub fn modules_dir(&self) -> PathBuf {
        PathBuf::from(format!("/lib/modules/{}", self.release))
    }

    /// `linux-6.1 arm64`, the label of its result lines.
    pub fn label(&self) -> String {
        format!("linux-{} {}", self.name, self.arch.name())
    }
}

/// Debian 12's kernel (EKS AL2023, GKE COS 109+ and Debian 12 nodes are on 6.1 too), on
/// both architectures the image is built for.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "6.1",
        arch: Arch::Amd64,
        package: "linux-image-6.1.0-47-cloud-amd64-unsigned",
        release: "6.1.0-47-cloud-amd64",
    },
    Kernel {
        name: "6.1",
        arch: Arch::Arm64,
        package: "linux-image-6.1.0-47-cloud-arm64-unsigned",
        release: "6.1.0-47-cloud-arm64",
    },
];

/// Loaded at boot with their dependencies (the rest of kernel/net is in the image too, for
/// on-demand loading): the datapath's (veth, clsact, cls_bpf, dummy), kube-proxy's
/// iptables-nft and nftables modes, and IPVS mode.
pub const MODULES: &[&str] = &[
    "veth",
    "dummy",
    "sch_ingress",
    "cls_bpf",
    "nf_conntrack",
    "nf_nat",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "nft_ct",
    "nft_nat",
    "xt_comment",
    "xt_statistic",
    "xt_conntrack",
    "xt_nat",
    "xt_CT",
    "xt_mark",
    "xt_MASQUERADE",
    "xt_tcpudp",
    "xt_addrtype",
    "ip_vs",
    "ip_vs_rr",
];

/// What the harness and the agent execute, copied with their libraries.
pub const GUEST_TOOLS: &[&str] = &[
    "busybox",
    "sh",
    "dash",
    "cat",
    "sleep",
    "env",
    "true",
    "modprobe",
    "ip",
    "tc",
    "nsenter",
    "iptables",
    "ip6tables",
    "iptables-save",
    "ip6tables-save",
    "iptables-restore",
    "ip6tables-restore",
    "iptables-nft",
    "nft",
    "ipvsadm",
    "knotd",
    "knotc",
    "dig",
    "bpftool",
];

/// One test binary and the tests of it that run in the guest.
#[derive(Debug, Clone)]
pub struct Suite {
    pub package: &'static str,
    /// The test target (file name under tests/).
    pub name: String,
    pub tests: Vec<&'static str>,
}

const PLAN: &[(&str, &str, &[&str])] = &[
    (
        "nldns-userspace",
        "packets",
        &[
            "queries_are_redirected_and_replies_restored_with_valid_checksums",
            "ipv4_udp_without_checksum_keeps_zero",
            "vlan_tags_ip_options_and_ipv6_extension_headers_are_followed",
            "fragments_malformed_and_foreign_packets_pass_byte_for_byte",
            "stale_heartbeat_passes_queries_untouched",
            "queries_pass_untouched_once_the_agent_sockets_are_gone",
        ],
    ),
    (
        "nldns-userspace",
        "kernel_answers",
        &[
            "kernel_answers_equal_the_agents_byte_for_byte",
            "an_ipv4_query_without_udp_checksum_gets_an_answer_without_one",
            "what_the_kernel_cannot_answer_exactly_goes_on_as_without_it",
            "entries_at_their_end_or_due_for_prefetch_go_to_the_agent",
            "answers_are_counted_per_entry_and_family",
            "non_dns_frames_pass_untouched",
        ],
    ),
    (
        "nldns-tests",
        "harness",
        &[
            "kube_dns_answers_through_kube_proxy_nat",
            "ipvs_kube_proxy_mode_answers_too",
        ],
    ),
    (
        "nldns-tests",
        "datapath",
        &[
            "pods_are_answered_by_the_cache_over_udp_and_tcp_on_ipv4_and_ipv6",
            "interception_wins_against_kube_proxy_in_ipvs_mode",
            "interception_wins_against_kube_proxy_in_nftables_mode_too",
            "the_intercept_endpoint_is_on_the_nldns0_dummy_where_the_kernel_has_one",
            "kill9_in_netlink_mode_falls_back_at_once_and_leftovers_are_removed",
            "a_hung_agent_fails_open_within_a_second_and_recovers_on_sigcont",
            "sigterm_detaches_drains_and_exits_zero",
            "an_interface_added_while_the_agent_runs_is_covered",
            "malformed_frames_on_a_live_interface_break_nothing",
            "classic_node_local_dns_on_the_same_ip_is_refused",
        ],
    ),
    ("nldns-tests", "faults", &["kill_restart_cycles_netlink"]),
    (
        "nldns-tests",
        "hostnet",
        &[
            "every_program_passes_the_verifier_and_its_work_is_recorded",
            "host_network_queries_in_the_cgroup_are_answered_by_the_cache",
            "killed_agent_leaves_host_queries_to_kube_proxy",
            "stopped_agent_fails_open_within_a_second_and_recovers",
        ],
    ),
    (
        "nldns-tests",
        "socketlb",
        &[
            "cilium_standin_pods_are_answered_by_the_cache_first",
            "killed_agent_leaves_pods_to_the_dataplane_at_once",
            "override_attached_dataplane_is_never_replaced",
        ],
    ),
];

/// What arm64 leaves out: TCG emulates arm64 on these amd64 machines, and the budget of
/// both VM parts is 20 minutes of CI. `faults` (20 kill -9/restart cycles under load,
/// three minutes) is covered on arm64 by the datapath's kill -9 test; everything else of
/// the plan runs on both (the JIT and the verifier differ per architecture).
const AMD64_ONLY: &[&str] = &["kill_restart_cycles_netlink"];

/// The suites for `kernel`, keeping only tests whose name contains `filter` (or one of
/// its comma-separated parts).
pub fn suites(kernel: &Kernel, filter: Option<&str>) -> Vec<Suite> {
    PLAN.iter()
        .filter_map(|(package, name, tests)| {
            let tests: Vec<&'static str> = tests
                .iter()
                .copied()
                .filter(|t| kernel.arch == Arch::Amd64 || !AMD64_ONLY.contains(t))
                .filter(|t| filter.is_none_or(|f| f.split(',').any(|f| t.contains(f))))
                .collect();
            (!tests.is_empty()).then(|| Suite {
                package,
                name: name.to_string(),
                tests,
            })
        })
        .collect()
}

/// The kernels `--kernel NAME` names: `6.1` is every architecture's 6.1, `6.1-arm64`
/// one of them.
pub fn find(name: &str) -> Vec<&'static Kernel> {
    KERNELS
        .iter()
        .filter(|k| k.name == name || format!("{}-{}", k.name, k.arch.name()) == name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm64_runs_the_plan_but_faults_and_names_pick_kernels() {
        for t in AMD64_ONLY {
            assert!(
                PLAN.iter().any(|(_, _, tests)| tests.contains(t)),
                "{t} is left out of arm64 but not in the plan"
            );
        }
        assert_eq!(find("6.1").len(), 2);
        assert_eq!(find("6.1-arm64")[0].arch, Arch::Arm64);
        assert_eq!(find("6.1-amd64")[0].arch, Arch::Amd64);
        assert!(find("5.15").is_empty());
        let count = |k: &Kernel| -> usize { suites(k, None).iter().map(|s| s.tests.len()).sum() };
        let (amd64, arm64) = (find("6.1-amd64")[0], find("6.1-arm64")[0]);
        assert_eq!(count(arm64) + AMD64_ONLY.len(), count(amd64));
        assert!(suites(arm64, None).iter().all(|s| s.name != "faults"));
        assert!(suites(arm64, None).iter().any(|s| s.name == "packets"));
        // --filter narrows within the architecture's plan.
        assert!(suites(arm64, Some("kill_restart")).is_empty());
        assert_eq!(suites(amd64, Some("kill_restart")).len(), 1);
    }
}
