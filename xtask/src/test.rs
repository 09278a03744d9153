//! `cargo xtask test`: the one test command (README, .ci/run). Static checks first, then
//! unit tests, then the integration tests that need root, BPF and network namespaces.

use std::{path::Path, process::Command};

use anyhow::Result;
use clap::Args;

use crate::{cmd, deploy_checks, fuzz, image, setup::NIGHTLY};

#[derive(Args)]
pub struct TestArgs {
    /// Skip fmt and clippy.
    #[arg(long)]
    no_lint: bool,
    /// Only run integration tests whose name contains this filter.
    #[arg(long)]
    filter: Option<String>,
    /// Seconds each fuzz target runs after the unit tests (0: skip fuzzing).
    #[arg(long, default_value_t = 30)]
    fuzz_seconds: u64,
}

pub fn run(root: &Path, args: &TestArgs) -> Result<()> {
    if !args.no_lint {
        lint(root)?;
    }
    let cargo = || {
        let mut c = Command::new("cargo");
        c.current_dir(root);
        c
    };
    cmd::run(cargo().args([
        "test",
        "-p",
        "nldns-common",
        "-p",
        "nldns-dns",
        "-p",
        "nldns-userspace",
        "-p",
        "xtask",
    ]))?;
    if args.fuzz_seconds > 0 {
        fuzz::run(
            root,
            &fuzz::FuzzArgs {
                seconds: args.fuzz_seconds,
                targets: Vec::new(),
            },
        )?;
    }
    // The integration tests drive the real binary; build it first and tell them where.
    cmd::run(cargo().args(["build", "-p", "nldns-userspace", "--bin", "nldns"]))?;
    let bin = root.join("target/debug/nldns");
    let mut integration = cargo();
    integration
        .env("NLDNS_BIN", &bin)
        .args(["test", "-p", "nldns-tests", "--"]);
    // One at a time: several tests time fail-open bounds; two cores are shared.
    integration.arg("--test-threads=1");
    if let Some(filter) = &args.filter {
        integration.arg(filter);
    }
    cmd::run(&mut integration)?;
    if args.filter.is_some() {
        return Ok(());
    }
    deploy_checks::run(root)?;
    // Builds the static image and runs `nldns --version` from inside the unpacked archive.
    image::build(root)?;
    Ok(())
}

fn lint(root: &Path) -> Result<()> {
    cmd::run(
        Command::new("cargo")
            .current_dir(root)
            .args(["fmt", "--all", "--check"]),
    )?;
    cmd::run(Command::new("cargo").current_dir(root).args([
        "clippy",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate only builds for the bpf target with the pinned nightly.
    cmd::run(
        Command::new("rustup")
            .current_dir(root)
            .args(["run", NIGHTLY, "cargo", "clippy", "-p", "nldns-ebpf"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--release", "--", "-D", "warnings"]),
    )
}
