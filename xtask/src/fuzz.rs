//! `cargo xtask fuzz`: runs every cargo-fuzz target of `fuzz/` for a bounded time and
//! fails on the first crash (panic, timeout or out-of-memory), naming the input that
//! caused it.
//!
//! The targets link the DNS engine (nldns-dns) alone, so they build with stable Rust and
//! none of the eBPF tooling. Sanitizer `none` (which is also what lets them build on
//! stable): the DNS code under test is safe Rust, so the fuzzer hunts panics (bounds,
//! arithmetic overflow with the debug assertions cargo-fuzz turns on, unwraps) and
//! hangs, and AddressSanitizer would only halve the executions per second.
//!
//! Each target reads its committed seeds (`fuzz/seeds/<target>`) and keeps what it
//! learns in `fuzz/corpus/<target>` (not committed); crash inputs land in
//! `fuzz/artifacts/<target>`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use clap::Args;

/// The targets in fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &["query", "upstream_reply"];

#[derive(Args)]
pub struct FuzzArgs {
    /// Seconds each target runs (libFuzzer's -max_total_time).
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Run only this target (repeatable); all of them by default.
    #[arg(long = "target")]
    pub targets: Vec<String>,
}

/// What one bounded run did.
struct Report {
    target: String,
    runs: Option<u64>,
    execs_per_sec: Option<u64>,
}

pub fn run(root: &Path, args: &FuzzArgs) -> Result<()> {
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    for target in &targets {
        if !TARGETS.contains(target) {
            bail!("no fuzz target {target:?}; there are {TARGETS:?}");
        }
    }
    crate::cmd::run(cargo_fuzz(root).args(["build", "-s", "none"]))?;
    let mut reports = Vec::new();
    for target in targets {
        reports.push(run_target(root, target, args.seconds)?);
    }
    for r in &reports {
        let show = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
        eprintln!(
            "xtask fuzz: {:<16} {} runs in {} s, {} exec/s, no crash",
            r.target,
            show(r.runs),
            args.seconds,
            show(r.execs_per_sec)
        );
    }
    Ok(())
}

/// `cargo fuzz` in the repository root (cargo fuzz finds `fuzz/`). The instrumented
/// build always goes to `fuzz/target`, whatever CARGO_TARGET_DIR says: it shares
/// nothing with the workspace's builds (other flags).
fn cargo_fuzz(root: &Path) -> Command {
    let mut command = Command::new("cargo");
    command
        .current_dir(root)
        .env("CARGO_TARGET_DIR", root.join("fuzz/target"))
        .arg("fuzz");
    command
}

fn run_target(root: &Path, target: &str, seconds: u64) -> Result<Report> {
    let corpus = root.join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let seeds = root.join("fuzz/seeds").join(target);
    let mut command = cargo_fuzz(root);
    command
        .args(["run", "-s", "none", target])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // One input taking this long is a hang: the service answers in microseconds.
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    let shown = format!("{command:?}");
    eprintln!("xtask: $ {shown}");
    let mut child = command
        .spawn()
        .with_context(|| format!("could not start {shown}"))?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let mut report = Report {
        target: target.to_string(),
        runs: None,
        execs_per_sec: None,
    };
    let mut last_progress = String::new();
    let mut in_dictionary = false;
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading the fuzzer's output")?;
        // libFuzzer prints a line per new coverage and, at the end, a dictionary of the
        // tokens it found; keep the log short, show the rest (start-up, crash reports,
        // final statistics) as it comes.
        if line.starts_with("###### Recommended dictionary") {
            in_dictionary = true;
            continue;
        }
        if in_dictionary {
            in_dictionary = !line.starts_with("###### End of recommended dictionary");
            continue;
        }
        if line.starts_with('#') {
            last_progress = line;
            continue;
        }
        if line.starts_with("\tNEW_FUNC") {
            continue;
        }
        eprintln!("{line}");
        if let Some(v) = stat(&line, "stat::number_of_executed_units:") {
            report.runs = Some(v);
        }
        if let Some(v) = stat(&line, "stat::average_exec_per_sec:") {
            report.execs_per_sec = Some(v);
        }
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    if !last_progress.is_empty() {
        eprintln!("{last_progress}");
    }
    if !status.success() {
        bail!(
            "fuzz target {target} failed ({status}): the input is in {} (reproduce with \
             `cargo fuzz run -s none {target} <file>`)",
            root.join("fuzz/artifacts").join(target).display()
        );
    }
    Ok(report)
}

fn stat(line: &str, key: &str) -> Option<u64> {
    line.strip_prefix(key)?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_final_stats() {
        assert_eq!(
            stat(
                "stat::average_exec_per_sec:     4321",
                "stat::average_exec_per_sec:"
            ),
            Some(4321)
        );
        assert_eq!(
            stat("#1234 NEW cov: 10", "stat::average_exec_per_sec:"),
            None
        );
    }

    #[test]
    fn targets_match_the_fuzz_crate() {
        let manifest = include_str!("../../fuzz/Cargo.toml");
        for target in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "{target} is not a [[bin]] of fuzz/Cargo.toml"
            );
        }
    }
}
