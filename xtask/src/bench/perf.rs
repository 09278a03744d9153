//! `perf record` around a measured run and a short `perf report` of it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

/// A running `perf record` that stops by itself after its `sleep`.
pub struct Recording {
    child: Child,
    data: PathBuf,
}

impl Recording {
    /// Samples `pid` (with call graphs) or, with None, every CPU, for `secs`.
    pub fn start(data: &Path, pid: Option<u32>, secs: u64) -> Result<Recording> {
        let mut cmd = Command::new("perf");
        cmd.args(["record", "-q", "-F", "999", "-o"]).arg(data);
        match pid {
            Some(pid) => cmd.args(["-g", "-p", &pid.to_string()]),
            None => cmd.arg("-a"),
        };
        let child = cmd
            .args(["--", "sleep", &secs.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf record")?;
        Ok(Recording {
            child,
            data: data.to_path_buf(),
        })
    }

    pub fn finish(mut self) -> Result<()> {
        let status = self.child.wait().context("waiting for perf record")?;
        anyhow::ensure!(
            status.success(),
            "perf record failed ({status}) for {}",
            self.data.display()
        );
        Ok(())
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        // Only a recording that was not finished is still ours to stop.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The first `max` lines of `perf report` (flat, by dso and symbol, entries >= `limit`%,
/// `extra` arguments such as `--comms`) that pass `keep`.
pub fn report(
    data: &Path,
    extra: &[&str],
    limit: f64,
    max: usize,
    keep: impl Fn(&str) -> bool,
) -> Result<String> {
    let out = Command::new("perf")
        .args(["report", "--stdio", "--no-children", "-g", "none"])
        .args([
            "--sort",
            "dso,symbol",
            "--percent-limit",
            &limit.to_string(),
        ])
        .args(extra)
        .arg("-i")
        .arg(data)
        .output()
        .context("perf report")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        // perf pads unused sort columns with "-"; drop the padding.
        .map(|l| l.trim_end_matches([' ', '-']))
        .filter(|l| keep(l))
        .take(max)
        .collect::<Vec<_>>()
        .join("\n"))
}
