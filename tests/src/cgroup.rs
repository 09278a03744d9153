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

/// Runs `program` in `netns` inside `cgroup` (output whatever the exit code). The shell
/// moves itself into the cgroup, then becomes the command: the command starts inside the
/// cgroup and no other process is moved.
pub fn exec_in(
    netns: &crate::netns::Netns,
    cgroup: &Path,
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<std::process::Output> {
    let procs = cgroup.join("cgroup.procs");
    let mut full: Vec<String> = vec![
        "-c".into(),
        "echo $$ > \"$0\" && exec \"$@\"".into(),
        procs.display().to_string(),
        "nsenter".into(),
    ];
    full.extend(
        netns
            .nsenter_args(program, args)
            .iter()
            .map(|a| a.to_string_lossy().into_owned()),
    );
    cmd::output_with_timeout("sh", &full, None, timeout)
}

/// Creates `path` and any missing parents (a pod cgroup below the run's cgroup).
pub fn create_nested(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating cgroup {}", path.display()))
}

/// The mount point of the cgroup v1 hierarchy holding `controller` (`memory`, `cpu`), on
/// a hybrid host where the resource controllers are v1 and cgroup2 holds none of them.
pub fn v1_mount(controller: &str) -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype, options) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        (fstype == "cgroup" && options.split(',').any(|o| o == controller))
            .then(|| PathBuf::from(target))
    })
}

/// Where a run's cgroups may live: its cgroup2 directory and, on a hybrid host, its
/// directories in the v1 memory and cpu hierarchies ([`AgentCgroup`]).
pub fn run_cgroup_dirs(run_name: &str) -> Vec<PathBuf> {
    let mut mounts: Vec<PathBuf> = cgroup2_mount().into_iter().collect();
    mounts.extend(V1_CONTROLLERS.iter().filter_map(|c| v1_mount(c)));
    mounts.dedup();
    mounts.into_iter().map(|m| m.join(run_name)).collect()
}

/// The v1 hierarchies an [`AgentCgroup`] uses on a hybrid host.
const V1_CONTROLLERS: [&str; 2] = ["memory", "cpu"];

/// Kills the processes of a cgroup and its children and removes them (a cgroup can only
/// be removed empty, and after its children).
pub fn destroy(path: &Path) -> Result<()> {
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                destroy(&entry.path())?;
            }
        }
    }
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

/// The cgroup the agent runs in when a test limits its memory or CPU, as a kubelet does
/// with the DaemonSet's `resources.limits`. On a pure cgroup v2 host it is
/// `<cgroup2>/nldns-<id>/agent` (the run's own cgroup gets the memory and cpu
/// controllers for its children); on a hybrid host, where cgroup2 holds no resource
/// controller, it is `nldns-<id>` in the v1 memory and cpu hierarchies. Removed on drop
/// (and by the run's teardown, which knows both places).
#[derive(Debug)]
pub struct AgentCgroup {
    layout: Layout,
}

#[derive(Debug)]
enum Layout {
    V2(PathBuf),
    V1 { memory: PathBuf, cpu: PathBuf },
}

impl AgentCgroup {
    /// Creates the agent's cgroup for the run whose cgroup2 directory is `run_cgroup`
    /// (`<cgroup2>/nldns-<id>`, made by `SimNodeBuilder::with_cgroup`). An error says
    /// why this host cannot limit memory and CPU.
    pub fn create(run_cgroup: &Path) -> Result<AgentCgroup> {
        let run_name = run_cgroup
            .file_name()
            .context("run cgroup has no name")?
            .to_owned();
        let parent = run_cgroup.parent().context("run cgroup has no parent")?;
        let offered =
            std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
        let has = |c: &str| offered.split_whitespace().any(|o| o == c);
        if has("memory") && has("cpu") {
            std::fs::write(run_cgroup.join("cgroup.subtree_control"), "+memory +cpu")
                .with_context(|| format!("enabling memory and cpu in {}", run_cgroup.display()))?;
            let path = run_cgroup.join("agent");
            std::fs::create_dir(&path)
                .with_context(|| format!("creating cgroup {}", path.display()))?;
            return Ok(AgentCgroup {
                layout: Layout::V2(path),
            });
        }
        let (Some(memory), Some(cpu)) = (v1_mount("memory"), v1_mount("cpu")) else {
            anyhow::bail!(
                "{} does not offer the memory and cpu controllers to its children, and there \
                 is no cgroup v1 memory and cpu hierarchy",
                parent.display()
            );
        };
        let memory = memory.join(&run_name);
        let cpu = cpu.join(&run_name);
        std::fs::create_dir(&memory)
            .with_context(|| format!("creating cgroup {}", memory.display()))?;
        let cgroup = AgentCgroup {
            layout: Layout::V1 {
                memory,
                cpu: cpu.clone(),
            },
        };
        // memory and cpu may share one v1 hierarchy (mounted together).
        if !cpu.exists() {
            std::fs::create_dir(&cpu)
                .with_context(|| format!("creating cgroup {}", cpu.display()))?;
        }
        Ok(cgroup)
    }

    /// The `cgroup.procs` files a process is written to, to run inside this cgroup.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V2(path) => vec![path.join("cgroup.procs")],
            Layout::V1 { memory, cpu } if memory == cpu => vec![memory.join("cgroup.procs")],
            Layout::V1 { memory, cpu } => {
                vec![memory.join("cgroup.procs"), cpu.join("cgroup.procs")]
            }
        }
    }

    /// A hard memory limit (`memory.max`; v1: `memory.limit_in_bytes`): past it the
    /// kernel reclaims, then OOM-kills inside this cgroup.
    pub fn set_memory_max(&self, bytes: u64) -> Result<()> {
        let (path, file) = match &self.layout {
            Layout::V2(path) => (path, "memory.max"),
            Layout::V1 { memory, .. } => (memory, "memory.limit_in_bytes"),
        };
        write(&path.join(file), &bytes.to_string())
    }

    /// A CPU bandwidth limit: `quota` of CPU time per `period` (`cpu.max`; v1:
    /// `cpu.cfs_quota_us` and `cpu.cfs_period_us`).
    pub fn set_cpu_max(&self, quota: Duration, period: Duration) -> Result<()> {
        let (quota, period) = (quota.as_micros(), period.as_micros());
        match &self.layout {
            Layout::V2(path) => write(&path.join("cpu.max"), &format!("{quota} {period}")),
            Layout::V1 { cpu, .. } => {
                write(&cpu.join("cpu.cfs_period_us"), &period.to_string())?;
                write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())
            }
        }
    }

    /// OOM kills inside this cgroup so far (`memory.events` / v1 `memory.oom_control`,
    /// the `oom_kill` line).
    pub fn oom_kills(&self) -> Result<u64> {
        let file = match &self.layout {
            Layout::V2(path) => path.join("memory.events"),
            Layout::V1 { memory, .. } => memory.join("memory.oom_control"),
        };
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no oom_kill line in {}", file.display()))
    }

    /// The cgroup's peak memory charge (process memory, page cache of its files, kernel
    /// memory such as socket buffers): `memory.peak` / v1 `memory.max_usage_in_bytes`.
    pub fn memory_peak(&self) -> Option<u64> {
        let file = match &self.layout {
            Layout::V2(path) => path.join("memory.peak"),
            Layout::V1 { memory, .. } => memory.join("memory.max_usage_in_bytes"),
        };
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// Times the CPU limit held the cgroup back, and for how long in all (`cpu.stat`'s
    /// `nr_throttled` and `throttled_usec`; v1 `throttled_time` is in nanoseconds).
    pub fn cpu_throttled(&self) -> Option<(u64, Duration)> {
        let path = match &self.layout {
            Layout::V2(path) => path,
            Layout::V1 { cpu, .. } => cpu,
        };
        let text = std::fs::read_to_string(path.join("cpu.stat")).ok()?;
        let field = |name: &str| {
            text.lines().find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        };
        let count = field("nr_throttled")?;
        let time = match &self.layout {
            Layout::V2(_) => Duration::from_micros(field("throttled_usec")?),
            Layout::V1 { .. } => Duration::from_nanos(field("throttled_time")?),
        };
        Some((count, time))
    }

    /// Where the cgroup is, for reports.
    pub fn describe(&self) -> String {
        match &self.layout {
            Layout::V2(path) => format!("{} (cgroup v2)", path.display()),
            Layout::V1 { memory, cpu } => {
                format!("{} and {} (cgroup v1)", memory.display(), cpu.display())
            }
        }
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value} to {}", path.display()))
}

impl Drop for AgentCgroup {
    fn drop(&mut self) {
        let paths = match &self.layout {
            Layout::V2(path) => vec![path.clone()],
            Layout::V1 { memory, cpu } => vec![memory.clone(), cpu.clone()],
        };
        for path in paths.iter().filter(|p| p.exists()) {
            if let Err(error) = destroy(path) {
                eprintln!("nldns-tests: {error:#}");
            }
        }
    }
}
