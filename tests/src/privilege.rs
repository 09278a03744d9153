//! Deciding whether a test that needs root can run here.
//!
//! Outside CI a developer without root gets a visible SKIP line; in CI (env `CI` set) a
//! missing privilege or tool is a broken runner and must fail loudly instead of passing
//! silently with nothing tested.

use std::path::Path;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Tools the simulated node drives; a missing one makes the test impossible.
const REQUIRED_TOOLS: &[&str] = &[
    "ip",
    "nsenter",
    "iptables-restore",
    "ip6tables-restore",
    "knotd",
    "knotc",
    "dig",
];

/// Returns true when `test` can run (root, CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF, tools
/// present). Otherwise: in CI it panics with the reason, elsewhere it prints
/// `SKIP <test>: <reason>` to stderr and returns false.
pub fn require_root(test: &str) -> bool {
    match missing_privilege() {
        None => true,
        Some(reason) => {
            if std::env::var_os("CI").is_some() {
                panic!("{test} needs a privileged runner in CI: {reason}");
            }
            // Straight to the stderr handle: libtest captures eprintln! of passing tests,
            // and a skip must be visible.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIP {test}: {reason}");
            false
        }
    }
}

/// Why the simulated node cannot be built here, or None when it can.
pub fn missing_privilege() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".to_string());
    }
    match effective_capabilities() {
        Some(caps) => {
            for (bit, name) in [
                (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
                (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
                (CAP_BPF, "CAP_BPF"),
            ] {
                if caps & (1u64 << bit) == 0 {
                    return Some(format!("{name} is not in the effective capability set"));
                }
            }
        }
        None => return Some("cannot read CapEff from /proc/self/status".to_string()),
    }
    for tool in REQUIRED_TOOLS {
        if find_in_path(tool).is_none() {
            return Some(format!("the tool `{tool}` is not installed"));
        }
    }
    None
}

fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

fn find_in_path(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // Root's tools live in sbin, which a minimal PATH may lack.
    let extra = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(Path::new);
    std::env::split_paths(&path)
        .chain(extra.iter().map(|p| p.to_path_buf()))
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}
