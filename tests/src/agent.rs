//! The agent under test: an external binary started inside the node namespace.
//!
//! The harness does not link the agent; it runs whatever binary the test names (normally
//! `target/<profile>/nldns`, or `$NLDNS_BIN`) through nsenter, so the process under test is
//! exactly the one a node would run. stdout and stderr go to files in the run's work
//! directory, readable while the agent runs and after it dies.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cmd;
use crate::netns::Netns;

/// A running (or exited) agent process.
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    exit: Option<ExitStatus>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl AgentProcess {
    /// Starts `binary args...` inside `netns`, logging to `<log_dir>/agent-<n>.{stdout,stderr}`
    /// (n counts agents of the run, so a restarted agent keeps the old logs). `envs` are
    /// set on top of the test's environment (e.g. RUST_LOG).
    pub fn spawn(
        netns: &Netns,
        binary: &Path,
        args: &[&str],
        log_dir: &Path,
        envs: &[(&str, &str)],
    ) -> Result<AgentProcess> {
        Self::spawn_labeled("agent", netns, binary, args, log_dir, envs)
    }

    /// Like [`AgentProcess::spawn`] for any long-running process (a client loop in a pod,
    /// a second agent...), logging to `<log_dir>/<label>-<n>.{stdout,stderr}`.
    pub fn spawn_labeled(
        label: &str,
        netns: &Netns,
        binary: &Path,
        args: &[&str],
        log_dir: &Path,
        envs: &[(&str, &str)],
    ) -> Result<AgentProcess> {
        Self::spawn_in_cgroup(label, netns, binary, args, log_dir, envs, &[])
    }

    /// Like [`AgentProcess::spawn_labeled`], the process starting inside the cgroup(s)
    /// whose `cgroup.procs` files are `cgroup_procs` (none: the test's own cgroup): a shell
    /// writes its own pid there, then execs nsenter, which execs the program, so the
    /// process is born in the cgroup, no other process is moved, and its pid is still
    /// the child's.
    pub fn spawn_in_cgroup(
        label: &str,
        netns: &Netns,
        binary: &Path,
        args: &[&str],
        log_dir: &Path,
        envs: &[(&str, &str)],
        cgroup_procs: &[PathBuf],
    ) -> Result<AgentProcess> {
        // nsenter would start and then fail to exec: say what is wrong here instead.
        anyhow::ensure!(
            binary.is_file(),
            "{} does not exist (build it, or set NLDNS_BIN)",
            binary.display()
        );
        let n = (0..)
            .find(|n| !log_dir.join(format!("{label}-{n}.stdout")).exists())
            .unwrap_or(0);
        let stdout_path = log_dir.join(format!("{label}-{n}.stdout"));
        let stderr_path = log_dir.join(format!("{label}-{n}.stderr"));
        let stdout = std::fs::File::create(&stdout_path)
            .with_context(|| format!("creating {}", stdout_path.display()))?;
        let stderr = std::fs::File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let program = binary.to_str().context("non-UTF-8 agent path")?;
        // nsenter execs the agent after entering the namespace, so the child's pid is the
        // agent's own pid and signals reach it directly.
        let mut command = if cgroup_procs.is_empty() {
            Command::new("nsenter")
        } else {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg("for p in $0; do echo $$ > \"$p\" || exit 125; done; exec \"$@\"")
                .arg(
                    cgroup_procs
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(" "),
                )
                .arg("nsenter");
            sh
        };
        let child = command
            .args(netns.nsenter_args(program, args))
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {} in {}", binary.display(), netns.name()))?;
        Ok(AgentProcess {
            child,
            exit: None,
            stdout_path,
            stderr_path,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A memory field of `/proc/<pid>/status` in bytes (`VmRSS`: resident now, `VmHWM`:
    /// the peak resident set since the process started); None once the process is gone.
    pub fn memory_bytes(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let kib: u64 = status.lines().find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })?;
        Some(kib * 1024)
    }

    /// Whether the process is still running (an exit is recorded, never lost).
    pub fn is_running(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    /// The exit status, if the process has exited.
    pub fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
            }
        }
        self.exit
    }

    /// Sends `signal` if the process has not been reaped (until then its pid cannot be
    /// reused, so the signal cannot hit a stranger).
    fn signal(&mut self, signal: i32) -> Result<()> {
        anyhow::ensure!(
            self.poll_exit().is_none(),
            "the agent has already exited ({:?})",
            self.exit
        );
        // SAFETY: kill(2) on our own unreaped child.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        anyhow::ensure!(
            rc == 0,
            "kill({}, {signal}): {}",
            self.child.id(),
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// SIGKILL: the crash case (no cleanup code of the agent runs).
    pub fn kill9(&mut self) -> Result<()> {
        self.signal(libc::SIGKILL)
    }

    /// SIGTERM: the graceful shutdown a kubelet asks for.
    pub fn sigterm(&mut self) -> Result<()> {
        self.signal(libc::SIGTERM)
    }

    /// SIGSTOP: a hung agent (alive, attached, but serving nothing).
    pub fn sigstop(&mut self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    pub fn sigcont(&mut self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// Waits at most `timeout` for the process to exit; None if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        cmd::wait_until(timeout, Duration::from_millis(10), || {
            self.poll_exit().is_some()
        });
        self.exit
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// What the agent has printed to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// What the agent has printed to stderr so far (its log, normally).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits at most `timeout` until `needle` appears in stdout or stderr.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> bool {
        cmd::wait_until(timeout, Duration::from_millis(20), || {
            self.stderr().contains(needle) || self.stdout().contains(needle)
        })
    }
}

impl Drop for AgentProcess {
    /// A test that forgets its agent must not leave it running: SIGKILL (which also ends a
    /// stopped process), then reap.
    fn drop(&mut self) {
        // A failing test shows what the agent said: the work directory goes with the node.
        if std::thread::panicking() {
            for (what, text) in [("stdout", self.stdout()), ("stderr", self.stderr())] {
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(60)..];
                eprintln!(
                    "---- agent {} {what} (last {} lines) ----\n{}",
                    self.pid(),
                    tail.len(),
                    tail.join("\n")
                );
            }
        }
        if self.poll_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Where the tests find the agent binary: `$NLDNS_BIN`, else `nldns` in the target directory
/// of the current profile (`$CARGO_TARGET_DIR` or the workspace's `target/`), else the other
/// profile. None if it has not been built.
pub fn agent_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NLDNS_BIN") {
        return Some(PathBuf::from(path));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    let mut target_dirs = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        target_dirs.push(PathBuf::from(dir));
    }
    target_dirs.push(workspace.join("target"));
    let profiles = if cfg!(debug_assertions) {
        ["debug", "release"]
    } else {
        ["release", "debug"]
    };
    for dir in &target_dirs {
        for profile in profiles {
            let candidate = dir.join(profile).join("nldns");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}
