//! The hostile-node runs of the bench, nldns only, each on a fresh simulated node:
//!
//! - noisy neighbour: a victim pod's cached names as fast as one resolver thread asks
//!   them (at most 1,000 a second), first with the node quiet, then in the same node
//!   while another pod floods unique cluster names at kube-dns that never answers; the
//!   latency percentiles of both phases, so the ratio is measured in one run;
//! - memory pressure: the agent in a cgroup with the DaemonSet's 128 MiB `memory.max`,
//!   two pods flooding unique names over both families against a kube-dns 3 s slow; peak
//!   RSS (sampled VmRSS and the kernel's VmHWM), the cgroup's peak and OOM kills.
//!
//! The loads are the integration tests' (`tests/tests/hostile.rs`, `pressure.rs`), here
//! with the figures kept; they are bounded in time and rate like those.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nldns_tests::addresses::{KUBE_DNS_V4, KUBE_DNS_V6};
use nldns_tests::burst::{flood_unique_names, FloodTotals};
use nldns_tests::cgroup::AgentCgroup;
use nldns_tests::{
    zones, AgentProcess, BackendMode, Behaviour, QueryOptions, ResolverLoad, ResolverLoadOptions,
    ResolverLoadReport, SimNode,
};

use super::BenchArgs;

const SERVICE_IPS: [IpAddr; 2] = [IpAddr::V4(KUBE_DNS_V4), IpAddr::V6(KUBE_DNS_V6)];
const MEMORY_MAX: u64 = 128 << 20;
const SLOW_UPSTREAM: Duration = Duration::from_secs(3);

#[derive(Debug)]
pub struct NoisyResult {
    pub idle: ResolverLoadReport,
    pub flood: ResolverLoadReport,
    pub flood_totals: FloodTotals,
    pub quota_rejects: f64,
}

#[derive(Debug)]
pub struct MemoryResult {
    pub cgroup: Option<String>,
    pub idle_rss: u64,
    pub peak_sampled: u64,
    pub hwm: u64,
    pub cgroup_peak: Option<u64>,
    pub oom_kills: Option<u64>,
    pub alive: bool,
    /// (seconds into the flood, VmRSS) every 30 s.
    pub timeline: Vec<(u64, u64)>,
    pub flood_totals: FloodTotals,
    pub victim: ResolverLoadReport,
    pub cache_entries: Option<f64>,
    pub cache_bytes: Option<f64>,
}

fn warm(node: &SimNode, pod: usize) -> Result<()> {
    for (name, rtype) in zones::steady_names() {
        for server in SERVICE_IPS {
            let reply = node.query(pod, server, &name, rtype, &QueryOptions::default())?;
            anyhow::ensure!(
                !reply.answers.is_empty(),
                "warming {name} {rtype}: {reply:?}"
            );
        }
    }
    Ok(())
}

fn cached_load(node: &SimNode, pod: usize, duration: Duration) -> Result<ResolverLoad> {
    let mut options = ResolverLoadOptions::new(SERVICE_IPS.to_vec(), zones::steady_names());
    options.interval = Duration::from_millis(1);
    options.max_duration = duration;
    ResolverLoad::start(node, &[pod], options)
}

fn stop(mut agent: AgentProcess) -> Result<()> {
    agent.sigterm()?;
    agent
        .wait_exit(Duration::from_secs(10))
        .context("nldns did not exit within 10 s of SIGTERM")?;
    Ok(())
}

pub fn noisy_neighbour(bin: &Path, args: &BenchArgs) -> Result<NoisyResult> {
    const FLOODER: usize = 0;
    const VICTIM: usize = 1;
    let phase = Duration::from_secs(args.noisy_secs);
    let node = SimNode::builder()
        .pods(2)
        .backends(2)
        .backend_mode(BackendMode::KnotBehindProxy)
        .build()?;
    let mut agent = node.start_agent(bin, &[])?;
    node.wait_intercepting(bin, &mut agent)?;
    warm(&node, VICTIM)?;
    eprintln!("bench:   noisy neighbour: idle {phase:?}");
    let idle = cached_load(&node, VICTIM, phase)?;
    std::thread::sleep(phase);
    let idle = idle.stop();
    node.set_backend_behaviour(Behaviour::Drop)?;
    let rejects_before = node
        .metric("nldns_source_quota_rejects_total")
        .unwrap_or(0.0);
    eprintln!("bench:   noisy neighbour: flood {phase:?}");
    let flood = cached_load(&node, VICTIM, phase + Duration::from_secs(5))?;
    let flood_totals = flood_unique_names(&node, &[FLOODER], &SERVICE_IPS, phase)?;
    let flood = flood.stop();
    let quota_rejects = node
        .metric("nldns_source_quota_rejects_total")
        .unwrap_or(0.0)
        - rejects_before;
    node.set_backend_behaviour(Behaviour::Normal)?;
    stop(agent)?;
    node.teardown()?;
    Ok(NoisyResult {
        idle,
        flood,
        flood_totals,
        quota_rejects,
    })
}

pub fn memory_pressure(bin: &Path, args: &BenchArgs) -> Result<MemoryResult> {
    const FLOODERS: [usize; 2] = [0, 1];
    const VICTIM: usize = 2;
    let duration = Duration::from_secs(args.pressure_secs);
    let node = SimNode::builder()
        .pods(3)
        .backends(2)
        .backend_mode(BackendMode::KnotBehindProxy)
        .with_cgroup()
        .build()?;
    // Without memory and cpu controllers the figures are still worth having (RSS), only
    // without the limit.
    let cgroup = match AgentCgroup::create(node.cgroup_path().context("with_cgroup")?) {
        Ok(cgroup) => {
            cgroup.set_memory_max(MEMORY_MAX)?;
            Some(cgroup)
        }
        Err(error) => {
            eprintln!("bench: memory pressure without memory.max: {error:#}");
            None
        }
    };
    let mut agent = match &cgroup {
        Some(cgroup) => node.start_agent_in(cgroup, bin, &[])?,
        None => node.start_agent(bin, &[])?,
    };
    node.wait_intercepting(bin, &mut agent)?;
    warm(&node, VICTIM)?;
    let idle_rss = agent.memory_bytes("VmRSS").context("VmRSS")?;
    node.set_backend_behaviour(Behaviour::Delay(SLOW_UPSTREAM))?;
    let mut victim = ResolverLoadOptions::new(SERVICE_IPS.to_vec(), zones::steady_names());
    victim.max_duration = duration + Duration::from_secs(10);
    let victim = ResolverLoad::start(&node, &[VICTIM], victim)?;
    eprintln!("bench:   memory pressure: flood {duration:?}");
    let done = AtomicBool::new(false);
    let (flood_totals, (peak_sampled, timeline)) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let started = Instant::now();
            let (mut peak, mut timeline, mut next) = (0, Vec::new(), Duration::ZERO);
            while !done.load(Ordering::Relaxed) {
                let rss = agent.memory_bytes("VmRSS").unwrap_or(0);
                peak = peak.max(rss);
                if started.elapsed() >= next {
                    timeline.push((next.as_secs(), rss));
                    next += Duration::from_secs(30);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            (peak, timeline)
        });
        let totals = flood_unique_names(&node, &FLOODERS, &SERVICE_IPS, duration);
        done.store(true, Ordering::Relaxed);
        (totals, sampler.join().expect("sampler"))
    });
    let flood_totals = flood_totals?;
    let victim = victim.stop();
    let result = MemoryResult {
        cgroup: cgroup.as_ref().map(AgentCgroup::describe),
        idle_rss,
        peak_sampled,
        hwm: agent.memory_bytes("VmHWM").unwrap_or(0),
        cgroup_peak: cgroup.as_ref().and_then(AgentCgroup::memory_peak),
        oom_kills: cgroup.as_ref().and_then(|c| c.oom_kills().ok()),
        alive: agent.is_running(),
        timeline,
        flood_totals,
        victim,
        cache_entries: node.metric("nldns_cache_entries"),
        cache_bytes: node.metric("nldns_cache_bytes"),
    };
    node.set_backend_behaviour(Behaviour::Normal)?;
    if result.alive {
        stop(agent)?;
    }
    drop(cgroup);
    node.teardown()?;
    Ok(result)
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1048576.0)
}

fn victim_row(out: &mut String, phase: &str, r: &ResolverLoadReport) {
    let sent = r.sent().max(1);
    let _ = writeln!(
        out,
        "| {phase} | {} | {:.2}% | {:.3}% | {} | {} | {} |",
        r.sent(),
        100.0 * (sent - r.first_try_failures().len()) as f64 / sent as f64,
        100.0 * r.failed().len() as f64 / sent as f64,
        ms(r.latency_quantile(0.5)),
        ms(r.latency_quantile(0.99)),
        ms(r.latency_quantile(1.0)),
    );
}

/// The markdown section of both runs (either may have failed).
pub fn markdown(
    args: &BenchArgs,
    noisy: &Result<NoisyResult>,
    memory: &Result<MemoryResult>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n## Hostile node\n");
    let _ = writeln!(
        out,
        "### Noisy neighbour (same node, idle phase then flood phase, {} s each)\n",
        args.noisy_secs
    );
    match noisy {
        Ok(n) => {
            let _ = writeln!(
                out,
                "Pod 1 asks its cached names (5 names, both families) from one resolver \
                 thread, 1 ms apart (at most 1,000 a second), 1 s timeout and one retry. In \
                 the flood phase kube-dns drops every query and pod 0 floods unique \
                 `*.default.svc.cluster.local` names over both families: {}; \
                 `nldns_source_quota_rejects_total` +{}.\n",
                n.flood_totals.summary(),
                n.quota_rejects
            );
            let _ = writeln!(
                out,
                "| phase | queries | first-try success | failed after retry | p50 ms | p99 ms | max ms |"
            );
            let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
            victim_row(&mut out, "idle", &n.idle);
            victim_row(&mut out, "flood", &n.flood);
            let idle_p99 = n.idle.latency_quantile(0.99).as_secs_f64();
            let flood_p99 = n.flood.latency_quantile(0.99).as_secs_f64();
            if idle_p99 > 0.0 {
                let _ = writeln!(
                    out,
                    "\np99 during the flood / idle p99: **{:.2}x** (target: at most 2x)",
                    flood_p99 / idle_p99
                );
            }
        }
        Err(error) => {
            let _ = writeln!(out, "failed: {error:#}");
        }
    }
    let _ = writeln!(
        out,
        "\n### Memory pressure ({} s flood, kube-dns 3 s slow)\n",
        args.pressure_secs
    );
    match memory {
        Ok(m) => {
            let _ = writeln!(
                out,
                "Agent in {}; pods 0 and 1 flood unique names over both families ({}); pod 2 \
                 asks its cached names every 20 ms.\n",
                m.cgroup.as_deref().map_or(
                    "no cgroup (this host offers no memory controller)".into(),
                    |c| { format!("{c} with memory.max {} MiB", MEMORY_MAX >> 20) }
                ),
                m.flood_totals.summary()
            );
            let _ = writeln!(out, "| figure | value |");
            let _ = writeln!(out, "| --- | ---: |");
            let rows = [
                ("RSS idle (MiB)", mib(m.idle_rss)),
                ("peak RSS, sampled every 250 ms (MiB)", mib(m.peak_sampled)),
                ("peak RSS, VmHWM (MiB)", mib(m.hwm)),
                (
                    "cgroup peak charge (MiB)",
                    m.cgroup_peak.map_or("n/a".into(), mib),
                ),
                (
                    "OOM kills",
                    m.oom_kills.map_or("n/a".into(), |k| k.to_string()),
                ),
                ("agent alive after", m.alive.to_string()),
                (
                    "cache entries / bytes after",
                    format!(
                        "{} / {}",
                        m.cache_entries.unwrap_or(0.0),
                        m.cache_bytes.unwrap_or(0.0)
                    ),
                ),
                (
                    "victim's cached names: failed after retry",
                    format!("{} of {}", m.victim.failed().len(), m.victim.sent()),
                ),
            ];
            for (what, value) in rows {
                let _ = writeln!(out, "| {what} | {value} |");
            }
            let timeline: Vec<String> = m
                .timeline
                .iter()
                .map(|(s, rss)| format!("{s} s: {}", mib(*rss)))
                .collect();
            let _ = writeln!(out, "\nVmRSS (MiB) every 30 s: {}", timeline.join(", "));
        }
        Err(error) => {
            let _ = writeln!(out, "failed: {error:#}");
        }
    }
    out
}
