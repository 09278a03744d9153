//! What the kernel under the tests offers, and whether a test may do without it.
//!
//! Some node setups need kernel parts this project's build machines lack (the `dummy`
//! driver, IPVS): tests of them run on the machine when it has them, and always inside the
//! kernel VMs of `cargo xtask test` (docs/testing.md), which set `NLDNS_TEST_KERNEL_VM=1`.
//! There a missing part is a broken VM image and fails the test; elsewhere the test prints
//! a SKIP line naming the VM run that covers it.

use std::path::Path;

use crate::netns::Netns;

/// Set (to 1) by the kernel VMs' init for every test binary they run.
pub const VM_ENV: &str = "NLDNS_TEST_KERNEL_VM";

/// Whether the tests run inside one of `cargo xtask test`'s kernel VMs.
pub fn in_kernel_vm() -> bool {
    std::env::var(VM_ENV).is_ok_and(|v| v == "1")
}

/// Whether the kernel can make `dummy` interfaces: tries one in `netns` (a namespace of
/// the test's own) and removes it again.
pub fn has_dummy(netns: &Netns) -> bool {
    let probe = "nldnsprobe0";
    if netns.ip(&["link", "add", probe, "type", "dummy"]).is_err() {
        return false;
    }
    let _ = netns.ip(&["link", "del", probe]);
    true
}

/// Whether IPVS is loaded (`/proc/net/ip_vs` exists once the `ip_vs` module is in). The
/// VM loads it at boot; the tests never load modules themselves.
pub fn has_ipvs() -> bool {
    Path::new("/proc/net/ip_vs").exists()
}

/// `uname -r` of the running kernel.
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Returns true when the kernel has `feature`. Otherwise: inside a kernel VM it panics
/// (the VM must have it), elsewhere it prints `SKIP <test>: ...` to stderr and returns
/// false.
pub fn require(test: &str, feature: &str, present: bool) -> bool {
    if present {
        return true;
    }
    if in_kernel_vm() {
        panic!(
            "{test}: the test VM's kernel {} must have {feature}",
            release()
        );
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIP {test}: kernel {} has no {feature}; `cargo xtask test --kernel 6.1` runs it",
        release()
    );
    false
}
