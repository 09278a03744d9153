//! Network namespaces: creating and deleting them, configuring them with `ip`, and running
//! code or commands inside them.
//!
//! Commands run through `nsenter --net=/run/netns/NAME` (not `ip netns exec`, which remounts
//! /sys and hides the cgroup mount). Rust code runs inside a namespace on a dedicated thread
//! that calls setns(2): only that thread moves, and sockets it creates stay in the namespace
//! for their whole life, whoever uses them later.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::cmd;

/// Where `ip netns add` mounts named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A named network namespace (`/run/netns/<name>`). Deleting is explicit (see
/// [`crate::cleanup`]), so that teardown happens in one place and in the right order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace, brings its `lo` up and turns off IPv6 duplicate address
    /// detection in it (addresses must be usable at once, not after a DAD delay).
    pub fn create(name: &str) -> Result<Netns> {
        cmd::run("ip", &["netns", "add", name])
            .with_context(|| format!("creating netns {name}"))?;
        let netns = Netns {
            name: name.to_string(),
        };
        netns.ip(&["link", "set", "lo", "up"])?;
        netns.sysctl("net/ipv6/conf/all/accept_dad", "0")?;
        netns.sysctl("net/ipv6/conf/default/accept_dad", "0")?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for `nsenter --net=` and setns(2).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// `ip -n <name> args...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        cmd::run("ip", &full)
    }

    /// Writes a sysctl of this namespace (`key` as a path under /proc/sys, e.g.
    /// `net/ipv4/ip_forward`). /proc/sys/net shows the namespace of the thread that opens
    /// it, so the write happens on a thread inside the namespace; the root namespace's
    /// sysctls are never touched.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{key}");
        self.run_inside(move || std::fs::write(&path, value))?
            .with_context(|| format!("setting {key}={value} in {}", self.name))
    }

    /// The argument list that runs `program args...` inside this namespace via nsenter.
    pub fn nsenter_args<S: AsRef<OsStr>>(
        &self,
        program: &str,
        args: &[S],
    ) -> Vec<std::ffi::OsString> {
        let mut full: Vec<std::ffi::OsString> = vec![
            format!("--net={}", self.path().display()).into(),
            "--".into(),
            program.into(),
        ];
        full.extend(args.iter().map(|a| a.as_ref().to_os_string()));
        full
    }

    /// Runs a command inside the namespace and returns its output whatever its exit code.
    pub fn exec_output<S: AsRef<OsStr>>(
        &self,
        program: &str,
        args: &[S],
        timeout: Duration,
    ) -> Result<Output> {
        cmd::output_with_timeout("nsenter", &self.nsenter_args(program, args), None, timeout)
    }

    /// Runs a command inside the namespace and fails unless it exits 0.
    pub fn exec<S: AsRef<OsStr>>(&self, program: &str, args: &[S]) -> Result<String> {
        cmd::run("nsenter", &self.nsenter_args(program, args))
    }

    /// Like [`Netns::exec`], feeding `stdin` to the command.
    pub fn exec_with_stdin<S: AsRef<OsStr>>(
        &self,
        program: &str,
        args: &[S],
        stdin: &[u8],
    ) -> Result<String> {
        cmd::run_with_stdin("nsenter", &self.nsenter_args(program, args), Some(stdin))
    }

    /// Runs `f` on a fresh thread that has entered this namespace, and returns its result.
    /// Sockets created by `f` belong to the namespace.
    pub fn run_inside<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = self.open()?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || -> Result<R> {
                    enter(&file)?;
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow!("a thread inside netns {} panicked", self.name))?
        })
    }

    /// Starts a long-lived thread inside the namespace (servers of the harness itself).
    pub fn spawn_inside<F>(&self, thread_name: &str, f: F) -> Result<std::thread::JoinHandle<()>>
    where
        F: FnOnce() + Send + 'static,
    {
        let file = self.open()?;
        let netns = self.name.clone();
        std::thread::Builder::new()
            .name(thread_name.to_string())
            .spawn(move || match enter(&file) {
                Ok(()) => f(),
                Err(error) => eprintln!("cannot enter netns {netns}: {error:#}"),
            })
            .context("spawning a thread")
    }

    fn open(&self) -> Result<File> {
        File::open(self.path()).with_context(|| format!("opening {}", self.path().display()))
    }

    /// Pids of the processes whose network namespace is this one.
    pub fn pids(&self) -> Result<Vec<i32>> {
        pids_in(&self.name)
    }
}

/// Moves the calling thread into the namespace behind `file`.
fn enter(file: &File) -> Result<()> {
    // SAFETY: setns on a valid namespace fd; CLONE_NEWNET only changes this thread's
    // network namespace, which is allowed in a multi-threaded process.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Names of all named network namespaces (`ip netns list`, without the id suffixes).
pub fn list() -> Result<Vec<String>> {
    let text = cmd::run("ip", &["netns", "list"])?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Pids of processes in the named namespace (`ip netns pids`).
pub fn pids_in(name: &str) -> Result<Vec<i32>> {
    let text = cmd::run("ip", &["netns", "pids", name])?;
    Ok(text
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect())
}

/// Kills every process inside the namespace, waits (bounded) for them to go, then deletes
/// it. Deleting a namespace destroys its interfaces, and with them their veth peers.
/// Never kills the calling process, whatever namespace it is in.
pub fn destroy(name: &str) -> Result<()> {
    let own_pid = std::process::id() as i32;
    let kill_all = || -> Result<bool> {
        let pids: Vec<i32> = pids_in(name)?
            .into_iter()
            .filter(|&pid| pid != own_pid)
            .collect();
        for &pid in &pids {
            // SAFETY: plain kill(2) on pids found in the namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        Ok(pids.is_empty())
    };
    // Killed children of this process linger as zombies (still counted) until their owner
    // reaps them; a bounded wait is enough, the namespace can be deleted anyway.
    let _ = cmd::wait_until(Duration::from_secs(2), Duration::from_millis(20), || {
        kill_all().unwrap_or(true)
    });
    match cmd::run("ip", &["netns", "del", name]) {
        Ok(_) => Ok(()),
        // Someone else (a concurrent sweep) deleted it meanwhile: the goal is reached.
        Err(_) if !Path::new(NETNS_DIR).join(name).exists() => Ok(()),
        Err(error) => Err(error).with_context(|| format!("deleting netns {name}")),
    }
}
