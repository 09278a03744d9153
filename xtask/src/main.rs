//! The project's tasks, run as `cargo xtask <task>` (alias in .cargo/config.toml).
//!
//! This crate builds with plain stable cargo and none of the eBPF tooling: `setup` is what
//! installs that tooling on a fresh machine, and every other task runs `setup` first.

mod bench;
mod cmd;
mod demo;
mod deploy_checks;
mod fuzz;
mod image;
mod setup;
mod test;
mod vm;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "nldns project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks (idempotent; a quick no-op when all is there).
    Setup,
    /// fmt, clippy, unit tests, then the integration tests as root.
    Test(test::TestArgs),
    /// The agent on a simulated node: cached answers, status, kill -9, restart.
    Demo(demo::DemoArgs),
    /// Build the OCI image archive (static musl binary, no Docker daemon) and check it runs.
    Image,
    /// Run each cargo-fuzz target of fuzz/ for a bounded time; fails on a crash.
    Fuzz(fuzz::FuzzArgs),
    /// Validate deploy/: manifests against the Kubernetes schemas, shellcheck, and the
    /// install/uninstall scripts against a recording kubectl.
    DeployChecks,
    /// Benchmarks on the simulated node: nldns vs the iptables-NOTRACK design (unbound,
    /// dnsmasq) vs no cache; writes bench/results/<date>.md and plots.
    Bench(bench::BenchArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.task {
        Task::Setup => setup::run(&root),
        Task::Test(args) => {
            setup::run(&root)?;
            test::run(&root, &args)
        }
        Task::Demo(args) => {
            setup::run(&root)?;
            demo::run(&root, &args)
        }
        Task::Image => {
            setup::run(&root)?;
            let archive = image::build(&root)?;
            eprintln!("xtask: image archive {}", archive.display());
            Ok(())
        }
        Task::Fuzz(args) => {
            setup::run(&root)?;
            fuzz::run(&root, &args)
        }
        Task::DeployChecks => deploy_checks::run(&root),
        Task::Bench(args) => {
            setup::run(&root)?;
            bench::run(&root, &args)
        }
    }
}

fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}
