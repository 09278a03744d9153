//! `cargo xtask demo`: the agent on a simulated node, step by step, in plain words.
//!
//! The node is the tests' harness (`nldns-tests`): namespaces of its own, knot as kube-dns,
//! kube-proxy's iptables NAT; nothing touches the machine's network namespace. The steps:
//! a pod resolves a Service through the ClusterIP before the agent (kube-proxy to kube-dns)
//! and after (a miss, then a hit that no backend sees); `nldns status`; kill -9 of the agent
//! with DNS still answered at once by kube-dns; a restart and the cache answering again.
//! Any step that does not behave makes the demo exit non-zero.
//!
//! `--keep` leaves the node and the agent running (the run is marked kept, so sweeps leave
//! it alone); `--down` removes kept nodes.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use nldns_tests::addresses::{KUBE_DNS_V4, WEB_V4};
use nldns_tests::zones::names;
use nldns_tests::{cleanup, run, AgentProcess, QueryOptions, SimNode};

use crate::cmd;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Leave the node and the agent running at the end, and print how to use them.
    #[arg(long, conflicts_with = "down")]
    keep: bool,
    /// Remove nodes left by `--keep`, then exit.
    #[arg(long)]
    down: bool,
}

pub fn run(root: &Path, args: &DemoArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the demo creates network namespaces and loads BPF programs: run it as root"
    );
    if args.down {
        return down();
    }
    cmd::run(Command::new("cargo").current_dir(root).args([
        "build",
        "-p",
        "nldns-userspace",
        "--bin",
        "nldns",
    ]))?;
    let bin = target_dir(root).join("debug/nldns");
    ensure!(bin.is_file(), "{} was not built", bin.display());

    step(
        "Bringing up a simulated node: 2 pods, 2 kube-dns backends (knot), kube-proxy iptables NAT",
    );
    let node = SimNode::builder().pods(2).backends(2).build()?;
    print!("{}", indent(&node.describe()));

    let result = demo_steps(&node, &bin);
    let agent = match result {
        Ok(agent) => agent,
        Err(error) => {
            say("FAILED; tearing the node down");
            return Err(error);
        }
    };
    if args.keep {
        keep(node, agent, &bin)
    } else {
        finish(node, agent)
    }
}

/// The demonstration proper; returns the running (restarted) agent.
fn demo_steps(node: &SimNode, bin: &Path) -> Result<AgentProcess> {
    let kube_dns = IpAddr::V4(KUBE_DNS_V4);

    step("(a) Before nldns: pod 0 asks the kube-dns ClusterIP; kube-proxy sends it to a backend");
    let before = lookup(node, kube_dns, names::WEB)?;
    ensure!(
        before.backend_delta == 1,
        "without the agent, the query must reach a backend (it did {} times)",
        before.backend_delta
    );
    before.print("without nldns");

    step("Starting the agent in the node namespace");
    let mut agent = start_agent(node, bin)?;

    step("(a) With nldns: the same question twice, to the same ClusterIP");
    // A name nobody asked yet, so the first query is a miss whatever happened before.
    let miss = lookup(node, kube_dns, names::KUBE_DNS)?;
    miss.print("1st (cache miss)");
    let hit = lookup(node, kube_dns, names::KUBE_DNS)?;
    hit.print("2nd (cache hit)");
    ensure!(
        miss.backend_delta == 1,
        "the miss must go to kube-dns once (it went {} times)",
        miss.backend_delta
    );
    ensure!(
        hit.backend_delta == 0,
        "the hit must not reach kube-dns (backend queries went up by {})",
        hit.backend_delta
    );
    say(&format!(
        "latency: {} on the miss, {} on the hit; backend query count unchanged by the hit ({} -> {})",
        ms(miss.latency),
        ms(hit.latency),
        hit.backend_before,
        hit.backend_before + hit.backend_delta
    ));
    if hit.latency >= miss.latency {
        say("(the hit was not faster this time: the machine is busy; the backend count is the proof)");
    }

    step("(b) nldns status (run inside the node)");
    let status = status_text(node, bin)?;
    print!("{}", indent(&status));
    ensure!(
        status.contains("INTERCEPTING"),
        "status does not show interception"
    );

    step("(c) kill -9 of the agent: DNS must keep answering, through kube-dns, at once");
    agent.kill9()?;
    let killed_at = Instant::now();
    ensure!(
        agent.wait_exit(Duration::from_secs(5)).is_some(),
        "kill -9 did not end the agent"
    );
    let sent_after = killed_at.elapsed();
    let after_kill = lookup(node, kube_dns, names::KUBE_DNS)?;
    after_kill.print("after kill -9");
    say(&format!(
        "sent {} after the kill (once the process was gone), answered in {}; the backend saw it ({} -> {}): TCX links died with the process",
        ms(sent_after),
        ms(after_kill.latency),
        after_kill.backend_before,
        after_kill.backend_before + after_kill.backend_delta
    ));
    ensure!(
        after_kill.backend_delta == 1,
        "after the kill the query must go to kube-dns"
    );
    let status = status_text(node, bin)?;
    print!("{}", indent(&status));

    step("(d) Restart: the cache answers again");
    let agent = start_agent(node, bin)?;
    let miss = lookup(node, kube_dns, names::WEB)?;
    miss.print("1st (new process, empty cache)");
    let hit = lookup(node, kube_dns, names::WEB)?;
    hit.print("2nd (cache hit)");
    ensure!(
        hit.backend_delta == 0,
        "after the restart the hit must not reach kube-dns"
    );
    ensure!(
        hit.answer == [WEB_V4.to_string()],
        "unexpected answer {:?}",
        hit.answer
    );
    Ok(agent)
}

/// One query from pod 0, with what the backends saw.
struct Lookup {
    answer: Vec<String>,
    latency: Duration,
    backend_before: u64,
    backend_delta: u64,
}

impl Lookup {
    fn print(&self, label: &str) {
        say(&format!(
            "{label:<32} answer {:<14} {:>10}   backend queries +{}",
            self.answer.join(","),
            ms(self.latency),
            self.backend_delta
        ));
    }
}

fn lookup(node: &SimNode, server: IpAddr, name: &str) -> Result<Lookup> {
    let backend_before = node.backend_query_count()?;
    let started = Instant::now();
    let reply: Message = node
        .query(0, server, name, RecordType::A, &QueryOptions::default())
        .with_context(|| format!("{name} A via {server}"))?;
    let latency = started.elapsed();
    let answer: Vec<String> = reply
        .answers
        .iter()
        .filter(|r| r.record_type() == RecordType::A)
        .map(|r| r.data.to_string())
        .collect();
    ensure!(!answer.is_empty(), "no A record for {name}: {reply:?}");
    // knot counts a query when it answers; give it a moment to show up in its stats.
    std::thread::sleep(Duration::from_millis(100));
    let backend_after = node.backend_query_count()?;
    Ok(Lookup {
        answer,
        latency,
        backend_before,
        backend_delta: backend_after.saturating_sub(backend_before),
    })
}

fn start_agent(node: &SimNode, bin: &Path) -> Result<AgentProcess> {
    let args = node.agent_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = node.spawn_agent(bin, &args)?;
    let started = Instant::now();
    let ready =
        nldns_tests::cmd::wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
            agent.is_running()
                && node.wait_http_ok("/ready", Duration::ZERO)
                && node
                    .agent_instances(bin)
                    .is_ok_and(|i| i.iter().any(|i| i["intercepting"] == true))
        });
    if !ready {
        bail!("the agent did not become ready:\n{}", agent.stderr());
    }
    say(&format!(
        "agent pid {} intercepting after {} (log: {})",
        agent.pid(),
        ms(started.elapsed()),
        agent.stderr_path().display()
    ));
    Ok(agent)
}

fn status_text(node: &SimNode, bin: &Path) -> Result<String> {
    let out = node.exec_in_node(
        bin.to_str().context("agent path")?,
        &["status"],
        Duration::from_secs(10),
    )?;
    ensure!(
        out.status.success(),
        "nldns status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn finish(node: SimNode, mut agent: AgentProcess) -> Result<()> {
    step("Stopping the agent (SIGTERM) and removing the node");
    agent.sigterm()?;
    let exit = agent.wait_exit(Duration::from_secs(10));
    ensure!(
        exit.is_some_and(|s| s.success()),
        "the agent did not exit cleanly: {exit:?}"
    );
    node.teardown()?;
    say("done: every namespace, process and file of the run is gone");
    Ok(())
}

fn keep(node: SimNode, agent: AgentProcess, bin: &Path) -> Result<()> {
    let pod = node.pod_netns(0)?.path();
    let node_ns = node.node_netns().path();
    let workdir = node.workdir().to_path_buf();
    // The agent runs on after this process: its handle must not kill it on drop.
    let pid = agent.pid();
    std::mem::forget(agent);
    let id = node.keep()?;
    step(&format!("Kept: run {id}, agent pid {pid}"));
    say(&format!(
        "query from a pod:   nsenter --net={} dig @{KUBE_DNS_V4} {}",
        pod.display(),
        names::WEB
    ));
    say(&format!(
        "status in the node: nsenter --net={} {} status",
        node_ns.display(),
        bin.display()
    ));
    say(&format!(
        "agent log:          {}/agent-*.stderr",
        workdir.display()
    ));
    say("remove it:          cargo xtask demo --down");
    Ok(())
}

fn down() -> Result<()> {
    let kept = run::kept_runs();
    if kept.is_empty() {
        say("no kept node");
    }
    for id in kept {
        cleanup::teardown(&id).with_context(|| format!("removing kept run {id}"))?;
        say(&format!("removed kept run {id}"));
    }
    Ok(())
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                root.join(dir)
            }
        })
        .unwrap_or_else(|| root.join("target"))
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn say(text: &str) {
    println!("    {text}");
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    | {l}\n")).collect()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
