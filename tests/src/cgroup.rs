//! The run's own cgroup under the cgroup2 mount (`<cgroup2>/nldns-<id>`).
//!
//! The agent's cgroup sock_addr programs (host-network interception) must be attached to a
//! cgroup the test created, never to the machine's root cgroup; processes that stand for
//! host-network clients are started inside it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cmd;

/// The first cgroup2 mount point (`/sys/fs/cgroup` on a pure v2 host, often
/// `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(target))
    })
}

/// Creates `<cgroup2>/<name>` and returns its path.
pub fn create(name: &str) -> Result<PathBuf> {
    let mount = cgroup2_mount().context("no cgroup2 mount in /proc/self/mounts")?;
    let path = mount.join(name);
    std::fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
    Ok(path)
}

/// Creates `path` and any missing parents (a pod cgroup below the run's cgroup).
pub fn create_nested(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating cgroup {}", path.display()))
}

/// Moves the process `pid` into the cgroup at `path`.
pub fn enter(path: &Path, pid: u32) -> Result<()> {
    std::fs::write(path.join("cgroup.procs"), pid.to_string())
        .with_context(|| format!("moving {pid} into {}", path.display()))
}

/// Kills the processes of a cgroup and of every cgroup below it, and removes them all,
/// deepest first (a cgroup can only be removed empty and without children).
pub fn destroy(path: &Path) -> Result<()> {
    let children: Vec<PathBuf> = std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    for child in children {
        destroy(&child)?;
    }
    destroy_leaf(path)
}

fn destroy_leaf(path: &Path) -> Result<()> {
    let procs = path.join("cgroup.procs");
    let kill_all = || {
        let text = std::fs::read_to_string(&procs).unwrap_or_default();
        let pids: Vec<i32> = text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        for &pid in &pids {
            if pid != std::process::id() as i32 {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        pids.is_empty()
    };
    let _ = cmd::wait_until(Duration::from_secs(2), Duration::from_millis(20), kill_all);
    let removed = cmd::wait_until(Duration::from_secs(2), Duration::from_millis(20), || {
        std::fs::remove_dir(path).is_ok() || !path.exists()
    });
    anyhow::ensure!(removed, "cgroup {} could not be removed", path.display());
    Ok(())
}
