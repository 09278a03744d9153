//! A knotd instance serving fixed zones inside one namespace: the kube-dns backends and the
//! "outside" resolver.
//!
//! Each server gets its own directory (config, zone files, run dir with the control socket,
//! log). Query counts come from knot's `mod-stats` module through `knotc stats`, which is
//! how tests prove that a backend did or did not see a query.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::netns::Netns;

/// A zone served by a knot instance: its origin and zone-file text.
#[derive(Debug, Clone)]
pub struct Zone {
    pub origin: String,
    pub text: String,
}

/// One knotd, configured and (after [`KnotServer::start`]) running in its namespace.
#[derive(Debug)]
pub struct KnotServer {
    label: String,
    netns: Netns,
    dir: PathBuf,
    zones: Vec<String>,
    child: Option<Child>,
}

impl KnotServer {
    /// Writes the config and zone files under `dir` for a server listening on `listen`
    /// (UDP and TCP). Does not start it.
    pub fn configure(
        label: &str,
        netns: Netns,
        dir: &Path,
        listen: &[SocketAddr],
        zones: &[Zone],
    ) -> Result<KnotServer> {
        for sub in ["zones", "run", "storage"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        for zone in zones {
            let path = dir.join("zones").join(zone_file_name(&zone.origin));
            std::fs::write(&path, &zone.text)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let config = knot_config(dir, listen, zones);
        std::fs::write(dir.join("knot.conf"), config).context("writing knot.conf")?;
        Ok(KnotServer {
            label: label.to_string(),
            netns,
            dir: dir.to_path_buf(),
            zones: zones.iter().map(|z| z.origin.clone()).collect(),
            child: None,
        })
    }

    /// Starts knotd in the namespace and waits (bounded) until every zone is loaded.
    pub fn start(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening the knot log")?;
        let config = self.dir.join("knot.conf");
        let child = Command::new("nsenter")
            .args(
                self.netns
                    .nsenter_args("knotd", &[std::ffi::OsStr::new("-c"), config.as_os_str()]),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting knotd for {}", self.label))?;
        self.child = Some(child);
        let ready = cmd::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            self.zones_loaded().unwrap_or(false)
        });
        if !ready {
            let exited = !self.is_running();
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            let _ = self.stop();
            bail!(
                "knotd {} not ready within 10s (exited: {exited}); log:\n{log}",
                self.label
            );
        }
        Ok(())
    }

    /// Stops knotd: SIGTERM, then SIGKILL if it is still there after 5 s. Queries then meet
    /// a closed port (ICMP port unreachable, TCP reset), like a dead backend pod.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: the child is not reaped yet, so its pid cannot have been reused.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let exited = cmd::wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// Whether knotd is running (and not yet reaped).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The pid of the running knotd.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("knot.log")
    }

    fn socket_path(&self) -> PathBuf {
        self.dir.join("run").join("knot.sock")
    }

    fn knotc(&self, args: &[&str]) -> Result<String> {
        let socket = self.socket_path();
        let mut full = vec![
            "-s",
            socket.to_str().context("non-UTF-8 socket path")?,
            "-t",
            "5",
        ];
        full.extend_from_slice(args);
        cmd::run("knotc", &full)
    }

    fn zones_loaded(&self) -> Result<bool> {
        let status = self.knotc(&["zone-status"])?;
        let loaded = status
            .lines()
            .filter(|line| {
                line.split("serial: ")
                    .nth(1)
                    .is_some_and(|s| s.starts_with(|c: char| c.is_ascii_digit()))
            })
            .count();
        Ok(loaded == self.zones.len())
    }

    /// All counters of `knotc stats` (e.g. `mod-stats.server-operation[query]`).
    pub fn stats(&self) -> Result<BTreeMap<String, u64>> {
        let text = self
            .knotc(&["stats"])
            .with_context(|| format!("stats of knotd {}", self.label))?;
        Ok(text
            .lines()
            .filter_map(|line| {
                let (key, value) = line.split_once(" = ")?;
                Some((key.trim().to_string(), value.trim().parse().ok()?))
            })
            .collect())
    }

    /// Number of queries this server answered since it started (all transports).
    pub fn query_count(&self) -> Result<u64> {
        Ok(self
            .stats()?
            .get("mod-stats.server-operation[query]")
            .copied()
            .unwrap_or(0))
    }

    /// Replaces a zone's content and makes knot load it (serial bumps are the caller's
    /// business: knot reloads a changed file either way).
    pub fn replace_zone(&self, zone: &Zone) -> Result<()> {
        let path = self.dir.join("zones").join(zone_file_name(&zone.origin));
        std::fs::write(&path, &zone.text).with_context(|| format!("writing {}", path.display()))?;
        self.knotc(&["-b", "zone-reload", &zone.origin])?;
        Ok(())
    }
}

impl Drop for KnotServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn zone_file_name(origin: &str) -> String {
    format!("{}.zone", origin.trim_end_matches('.'))
}

/// knot.conf: one UDP and one TCP worker (the machine has 2 cores shared by everyone),
/// everything under the server's own directory, mod-stats for query counts.
fn knot_config(dir: &Path, listen: &[SocketAddr], zones: &[Zone]) -> String {
    let d = dir.display();
    let listen: Vec<String> = listen
        .iter()
        .map(|a| format!("{}@{}", a.ip(), a.port()))
        .collect();
    let mut config = format!(
        "server:\n    rundir: \"{d}/run\"\n    listen: [ {} ]\n    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n\
         control:\n    listen: \"{d}/run/knot.sock\"\n\
         database:\n    storage: \"{d}/storage\"\n\
         log:\n  - target: stderr\n    any: info\n\
         template:\n  - id: default\n    storage: \"{d}/zones\"\n    global-module: mod-stats\n    journal-content: none\n    zonefile-sync: -1\n\
         zone:\n",
        listen.join(", ")
    );
    for zone in zones {
        let _ = writeln!(
            config,
            "  - domain: {}\n    file: {}",
            zone.origin,
            zone_file_name(&zone.origin)
        );
    }
    config
}
