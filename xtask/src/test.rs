//! `cargo xtask test`: the one test command (README, .ci/run). Static checks first, then
//! unit tests, then the integration tests that need root, BPF and network namespaces.

use std::{path::Path, process::Command};

use anyhow::Result;
use clap::Args;

use crate::{cmd, deploy_checks, fuzz, image, setup::NIGHTLY, vm};

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
    /// Only the kernel VM part, on this kernel (e.g. `6.1`; repeatable): the project's
    /// integration tests booted in QEMU on Debian's kernel. `--filter` narrows it too.
    #[arg(long)]
    kernel: Vec<String>,
    /// Skip the kernel VM part of a full run.
    #[arg(long)]
    no_vm: bool,
}

pub fn run(root: &Path, args: &TestArgs) -> Result<()> {
    if !args.kernel.is_empty() {
        for name in &args.kernel {
            for kernel in vm::plan_kernel(name)? {
                vm::run(root, kernel, args.filter.as_deref())?;
            }
        }
        return Ok(());
    }
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
        "nldns-sys",
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
    // The verifier-work test records this kernel's numbers for the bench report.
    std::fs::create_dir_all(vm::verifier_dir(root))?;
    integration
        .env("NLDNS_BIN", &bin)
        .env(
            "NLDNS_VERIFIER_STATS",
            vm::verifier_dir(root).join(format!("{}.jsonl", host_kernel_label())),
        )
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
    // The same tests on the kernels of the matrix, in QEMU (docs/testing.md).
    if !args.no_vm {
        for kernel in vm::KERNELS {
            vm::run(root, kernel, None)?;
        }
    }
    deploy_checks::run(root)?;
    // Builds the static image and runs `nldns --version` from inside the unpacked archive.
    image::build(root)?;
    Ok(())
}

/// `<uname -m>-<uname -r>`, the name of this kernel's verifier-work file.
fn host_kernel_label() -> String {
    let field = |flag: &str| {
        cmd::output(Command::new("uname").arg(flag))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "unknown".into())
    };
    format!("{}-{}", field("-m"), field("-r"))
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
