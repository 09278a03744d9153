//! `nldns`: the agent binary. Parsing and dispatch only; the work is in the library.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use nldns::{
    agent,
    cli::{Cli, Command},
    probe, status,
};

fn main() -> Result<()> {
    // nldns_datapath is the datapath (aya-log): its level is set in the programs' config map
    // (`--datapath-log`, `nldns datapath-log`), so let everything it emits through.
    env_logger::Builder::from_env(
        env_logger::Env::default()
            .default_filter_or("info,netlink_proto=error,nldns_datapath=trace"),
    )
    .init();
    // coredns_panics_total counts every panic of the process.
    nldns_dns::metrics::count_panics();
    let cli = Cli::parse();
    // A probe runs every few seconds in the container: no runtime, no threads.
    if let Command::Probe {
        kind,
        probe_socket,
        timeout_ms,
    } = &cli.command
    {
        return probe::check(probe_socket, *kind, Duration::from_millis(*timeout_ms));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Run(args) => agent::run(*args).await,
            Command::Status { json, cgroup } => status::print_status(json, cgroup).await,
            Command::Cleanup { all, cgroup } => status::cleanup(all, cgroup).await,
            Command::DatapathLog { level } => status::set_datapath_log(level).await,
            Command::Probe { .. } => unreachable!("handled before the runtime starts"),
        }
    })
}
