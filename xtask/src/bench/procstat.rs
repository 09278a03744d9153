//! CPU time and resident memory of processes, from /proc.

use anyhow::{Context, Result};

/// utime + stime of `pid` (all its threads), in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = text.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((utime + stime) as f64 / ticks)
}

/// The summed CPU seconds of `pids` (processes that vanished count as 0).
pub fn cpu_seconds_of(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&p| cpu_seconds(p).ok()).sum()
}

/// VmRSS of `pid`, KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// CPU seconds the whole machine spent busy (user, nice, system, irq, softirq, steal: every
/// field of /proc/stat's `cpu` line but idle and iowait, guest time being inside user), all
/// CPUs summed.
pub fn machine_busy_seconds() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    anyhow::ensure!(fields.len() >= 8, "short cpu line in /proc/stat");
    // user nice system idle iowait irq softirq steal
    let busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7];
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(busy as f64 / ticks)
}

/// utime + stime of every child this process has waited for (getrusage RUSAGE_CHILDREN),
/// seconds: around one blocking command, that command's CPU (dnsperf's, through nsenter).
/// With tick accounting (no IRQ_TIME_ACCOUNTING) the softirq work done in a task's context,
/// such as a veth TC program run from its sendmsg, is charged to it.
pub fn children_cpu_seconds() -> f64 {
    // SAFETY: a zeroed rusage for the kernel to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to that rusage.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_process() {
        let pid = std::process::id();
        assert!(super::cpu_seconds(pid).unwrap() >= 0.0);
        assert!(super::rss_kib(pid).unwrap() > 0);
        assert!(super::machine_busy_seconds().unwrap() > 0.0);
    }
}
