//! `cargo xtask bench`: nldns against node-local-dns's NOTRACK design (ClusterIP on a local interface +
//! iptables NOTRACK + unbound or dnsmasq) and against no cache at all, on the simulated
//! node (docs/testing.md): every packet stays inside the run's namespaces.
//!
//! For each configuration a fresh simulated node is built (2 pods, 2 knot backends,
//! iptables kube-proxy) and, per workload: the highest QPS sustained with < 0.1% loss
//! (stepped dnsperf search), latency percentiles at one fixed offered load, CPU time per
//! 1000 queries; per configuration: RSS after 100k distinct names. For nldns and for no
//! cache, iperf3 between the two pods (the datapath's cost for non-DNS traffic), plus
//! bpf_stats and BPF_PROG_TEST_RUN timings of nldns's programs. Results go to
//! `bench/results/<date>.md` (+ .json and PNG plots).
//!
//! Every run is bounded; the defaults take about 10 minutes on 2 cores, plus about 8 for
//! the hostile-node runs (`hostile.rs`; `--no-hostile` skips them, `--hostile-only` runs
//! only them).
//!
//! Kernel answers (`kernel.rs`): per configuration, on cache hits, p99 at a fixed 20k qps
//! with the machine's CPU per query, p99 at 5000 qps on a busy node, and bpf_stats of the
//! ingress program; ratios against (h), the bounce ceiling. `--kernel-only` runs just that
//! (configurations `--kernel-configs`, hits only, plus the non-DNS cost of nldns_answer
//! against nldns_ingress and the answer map's memory at `--rss-names`), reported in
//! `<date>-kernel.md`; `--no-kernel` leaves it out of the full bench.

mod configs;
mod datapath;
mod hostile;
mod kernel;
mod load;
mod perf;
mod procstat;
mod report;
mod workload;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nldns_tests::SimNode;

use crate::cmd;
use configs::{Config, Running};
use load::{Load, LoadResult, Search, SearchOptions};
use workload::Workload;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Configurations to compare (a: nldns, b: unbound, c: dnsmasq, d: none, e: nldns
    /// with the pods in kubelet's pod cgroup, f: nldns with kernel answers, g: the same
    /// redirected to egress, h: the bounce ceiling).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Config::Nldns, Config::Unbound, Config::Dnsmasq, Config::None, Config::NldnsPodHooks, Config::NldnsKernel, Config::NldnsKernelEgress, Config::Bounce])]
    pub configs: Vec<Config>,
    /// Only the kernel-answer measurements: these configurations, the hits workload, no
    /// hostile-node runs, no profiles, no iperf3 pairs; the report is `<date>-kernel.md`.
    #[arg(long, conflicts_with_all = ["hostile_only", "no_kernel"])]
    pub kernel_only: bool,
    /// Configurations of `--kernel-only`.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Config::Nldns, Config::Unbound, Config::NldnsKernel, Config::NldnsKernelEgress, Config::Bounce])]
    pub kernel_configs: Vec<Config>,
    /// Leave the kernel-answer measurements out.
    #[arg(long)]
    pub no_kernel: bool,
    /// Offered load of the kernel-answer latency and CPU runs (hits).
    #[arg(long, default_value_t = 20_000)]
    pub kernel_qps: u32,
    /// Skip the perf profiles of the kernel-answer runs.
    #[arg(long)]
    pub no_kernel_profile: bool,
    /// Offered load of the busy-node run (hits, two busy loops on the CPUs).
    #[arg(long, default_value_t = 5000)]
    pub busy_qps: u32,
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Workload::Hits, Workload::Mix, Workload::Misses])]
    pub workloads: Vec<Workload>,
    /// Seconds per step of the QPS search.
    #[arg(long, default_value_t = 3)]
    pub step_secs: u64,
    /// Rates tried after the probe in the QPS search.
    #[arg(long, default_value_t = 5)]
    pub max_steps: usize,
    /// -Q of the probe run (a ceiling; the machine saturates far below it).
    #[arg(long, default_value_t = 200_000)]
    pub rate_cap: u32,
    /// Offered load of the latency runs, which every configuration must sustain.
    #[arg(long, default_value_t = 5000)]
    pub latency_qps: u32,
    #[arg(long, default_value_t = 5)]
    pub latency_secs: u64,
    /// Distinct names asked before reading the cache's RSS.
    #[arg(long, default_value_t = 100_000)]
    pub rss_names: usize,
    #[arg(long, default_value_t = 10_000)]
    pub rss_qps: u32,
    /// Rounds over all configurations (a, b, c, d, a, b, ...): on a shared machine the
    /// load drifts, so each figure is the median (QPS, RSS) or the pooled samples
    /// (latency, CPU) of the rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[arg(long, default_value_t = 5)]
    pub iperf_secs: u64,
    /// iperf3 pairs (without nldns, then with) per round, in the same node.
    #[arg(long, default_value_t = 2)]
    pub iperf_pairs: usize,
    /// BPF_PROG_TEST_RUN repeat count for the non-DNS frame.
    #[arg(long, default_value_t = 1_000_000)]
    pub test_run_repeat: u32,
    /// Agent binary (default: build it in release).
    #[arg(long)]
    pub nldns_bin: Option<PathBuf>,
    /// Where the report goes (relative to the workspace root).
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// Skip the matplotlib plots.
    #[arg(long)]
    pub no_plots: bool,
    /// Skip the perf profile of nldns under cache-hit load.
    #[arg(long)]
    pub no_profile: bool,
    /// Only the hostile-node runs (noisy neighbour, memory pressure), reported in
    /// `<date>-hostile.md`.
    #[arg(long, conflicts_with = "no_hostile")]
    pub hostile_only: bool,
    /// Skip the hostile-node runs.
    #[arg(long)]
    pub no_hostile: bool,
    /// Seconds of each phase (idle, flood) of the noisy-neighbour run.
    #[arg(long, default_value_t = 20)]
    pub noisy_secs: u64,
    /// Seconds of the memory-pressure run's flood.
    #[arg(long, default_value_t = 300)]
    pub pressure_secs: u64,
}

/// Per configuration and workload.
#[derive(Debug, Clone)]
pub struct WorkloadResult {
    pub workload: Workload,
    /// Steps of every round; max_qps is the median of the rounds' (in `max_qps_rounds`).
    pub search: Search,
    pub max_qps_rounds: Vec<f64>,
    /// The fixed-load run, latencies recorded.
    pub latency: LoadResult,
    pub latency_rate: u32,
    /// CPU ms per 1000 completed queries during the fixed-load run: the cache process
    /// (None for no cache) and the knot servers (kube-dns backends + outside resolver).
    pub cache_cpu_ms_per_1k: Option<f64>,
    pub knot_cpu_ms_per_1k: f64,
}

#[derive(Debug, Clone, Default)]
pub struct RssResult {
    pub idle_kib: u64,
    /// Median over the rounds (each round's value in `rounds_after_kib`).
    pub after_kib: u64,
    pub rounds_after_kib: Vec<u64>,
    pub names_sent: u64,
    pub names_answered: u64,
}

#[derive(Debug, Clone, Default)]
pub struct DatapathResult {
    /// (without nldns, with nldns) Gbit/s, alternating in the same node.
    pub iperf_pairs: Vec<(f64, f64)>,
    /// ns per run from bpf_stats during one iperf3 run: (ingress, egress, ingress runs,
    /// egress runs).
    pub bpf_stats: Option<(f64, f64, u64, u64)>,
    /// ns per run of a program that only returns TC_ACT_UNSPEC, attached to the same
    /// hooks during the same run: what bpf_stats and the TC hook cost by themselves.
    pub bpf_stats_empty: Option<f64>,
    pub bpf_stats_gbps: Option<f64>,
    pub test_runs: Option<datapath::TestRuns>,
    /// System-wide perf report during an iperf3 run with nldns attached ...
    pub profile: Option<String>,
    /// ... and the nldns programs' share (%) of the iperf3 processes' samples in it.
    pub programs_share: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct ConfigResult {
    pub config: Config,
    pub workloads: Vec<WorkloadResult>,
    pub rss: Option<RssResult>,
    pub datapath: DatapathResult,
    /// perf report of the cache under cache-hit load at its maximum rate.
    pub profile: Option<String>,
    /// The kernel-answer measurements (hits).
    pub kernel: Option<kernel::KernelResult>,
    pub error: Option<String>,
}

pub fn run(root: &Path, args: &BenchArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the bench builds network namespaces and loads BPF programs: run it as root");
    }
    datapath::restore_stale_bpf_stats();
    let started = Instant::now();
    let bin = match &args.nldns_bin {
        Some(bin) => bin.clone(),
        None => build_release(root)?,
    };
    let mut machine = report::Machine::probe();
    eprintln!("bench: {}", machine.summary());
    let kernel_args;
    let args = if args.kernel_only {
        let mut a = args.clone();
        a.configs = args.kernel_configs.clone();
        a.workloads = vec![Workload::Hits];
        a.no_hostile = true;
        a.no_profile = true;
        a.iperf_pairs = 0;
        kernel_args = a;
        &kernel_args
    } else {
        args
    };
    if args.hostile_only {
        let section = hostile_runs(&bin, args);
        let out = root.join(&args.out);
        std::fs::create_dir_all(&out)?;
        let md = out.join(format!("{}-hostile.md", machine.date));
        let text = format!(
            "# nldns bench {}: hostile-node runs\n\nMachine: {}\n{section}",
            machine.date,
            machine.summary()
        );
        std::fs::write(&md, text)?;
        eprintln!("bench: wrote {} in {:.0?}", md.display(), started.elapsed());
        return Ok(());
    }
    let mut rounds: Vec<Vec<ConfigResult>> = Vec::new();
    for round in 0..args.rounds.max(1) {
        let mut results = Vec::new();
        for &config in &args.configs {
            eprintln!(
                "bench: round {} ({}) {config} [{:.0?} so far]",
                round + 1,
                config.letter(),
                started.elapsed()
            );
            let result = match bench_config(config, &bin, args, round == 0) {
                Ok(result) => result,
                Err(error) => {
                    eprintln!("bench: {config} failed: {error:#}");
                    ConfigResult {
                        config,
                        workloads: Vec::new(),
                        rss: None,
                        datapath: DatapathResult::default(),
                        profile: None,
                        kernel: None,
                        error: Some(format!("{error:#}")),
                    }
                }
            };
            results.push(result);
        }
        rounds.push(results);
    }
    let results = merge_rounds(rounds);
    machine.loadavg_end = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string();
    let out = root.join(&args.out);
    let name = if args.kernel_only {
        format!("{}-kernel", machine.date)
    } else {
        machine.date.clone()
    };
    let md = report::write(&out, &name, &machine, args, &results, started.elapsed())?;
    // Verifier work per program and kernel, as the last `cargo xtask test` recorded it.
    {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new().append(true).open(&md)?;
        if !args.no_kernel {
            file.write_all(kernel::markdown(args, &results).as_bytes())?;
        }
        file.write_all(crate::vm::verifier::markdown(root).as_bytes())?;
        if !args.no_hostile {
            file.write_all(hostile_runs(&bin, args).as_bytes())?;
        }
    }
    if !args.no_plots {
        if let Err(error) = report::plot(root, &out, &md) {
            eprintln!("bench: plots failed: {error:#}");
        }
    }
    eprintln!("bench: wrote {} in {:.0?}", md.display(), started.elapsed());
    Ok(())
}

/// The noisy-neighbour and memory-pressure runs, as a markdown section.
fn hostile_runs(bin: &Path, args: &BenchArgs) -> String {
    eprintln!("bench: hostile node: noisy neighbour");
    let noisy = hostile::noisy_neighbour(bin, args);
    if let Err(error) = &noisy {
        eprintln!("bench: noisy neighbour failed: {error:#}");
    }
    eprintln!("bench: hostile node: memory pressure");
    let memory = hostile::memory_pressure(bin, args);
    if let Err(error) = &memory {
        eprintln!("bench: memory pressure failed: {error:#}");
    }
    hostile::markdown(args, &noisy, &memory)
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

fn build_release(root: &Path) -> Result<PathBuf> {
    cmd::run(Command::new(env!("CARGO")).current_dir(root).args([
        "build",
        "--release",
        "-p",
        "nldns-userspace",
        "--bin",
        "nldns",
    ]))?;
    let bin = target_dir(root).join("release").join("nldns");
    anyhow::ensure!(bin.is_file(), "{} was not built", bin.display());
    Ok(bin)
}

/// One configuration in a fresh node. `extras`: also the one-off measurements (test runs,
/// bpf_stats, profiles), done in the first round only.
fn bench_config(
    config: Config,
    bin: &Path,
    args: &BenchArgs,
    extras: bool,
) -> Result<ConfigResult> {
    let node = if config == Config::NldnsPodHooks {
        // The run's cgroup with kubelet's pod cgroup under it: the agent finds
        // `kubepods.slice` there (`--pod-cgroup auto`) and dnsperf runs inside it.
        let mut node = SimNode::builder()
            .pods(2)
            .backends(2)
            .with_cgroup()
            .build()?;
        for pod in 0..2 {
            node.place_pod_in_cgroup(pod, &format!("kubepods.slice/kubepods-pod{pod}.slice"))?;
        }
        node
    } else {
        SimNode::builder().pods(2).backends(2).build()?
    };
    node.replace_cluster_zone(&workload::bench_zone())?;
    let iperf_pairs = if config == Config::Nldns && args.iperf_pairs > 0 {
        iperf_pairs(&node, bin, args)?
    } else {
        Vec::new()
    };
    let running = configs::start(config, &node, bin)?;
    let knot_pids = knot_pids(&node)?;
    let mut result = ConfigResult {
        config,
        workloads: Vec::new(),
        rss: None,
        datapath: DatapathResult {
            iperf_pairs,
            ..Default::default()
        },
        profile: None,
        kernel: None,
        error: None,
    };
    // RSS first, on a cache that has seen nothing else; with kernel answers last: 100k
    // names are more than the answer table holds (`--kernel-answers-entries`, 16,384 by
    // default), and the hits must not find it full of them.
    let kernel_answers = matches!(config, Config::NldnsKernel | Config::NldnsKernelEgress);
    if let Some(pid) = running.cache_pid().filter(|_| !kernel_answers) {
        result.rss = Some(rss_run(&node, pid, args)?);
    }
    let mut tag = 0u32;
    for &w in &args.workloads {
        // The bouncer answers nothing: only the hits workload (a ceiling) means anything.
        if config == Config::Bounce && w != Workload::Hits {
            continue;
        }
        eprintln!("bench:   {config} / {w}");
        result.workloads.push(bench_workload(
            &node, &running, &knot_pids, w, args, &mut tag,
        )?);
    }
    if !args.no_kernel && args.workloads.contains(&Workload::Hits) {
        eprintln!("bench:   {config} / kernel-answer runs");
        match kernel::measure(&node, config, &running, args, extras) {
            Ok(k) => result.kernel = Some(k),
            Err(error) => {
                eprintln!("bench: kernel-answer runs failed: {error:#}");
                result.error = Some(format!("kernel-answer runs failed: {error:#}"));
            }
        }
    }
    match config {
        Config::Nldns | Config::NldnsKernel if extras => {
            let ingress = if config == Config::Nldns {
                datapath::INGRESS
            } else {
                datapath::ANSWER
            };
            // A failure here must not throw away the DNS figures measured above.
            if let Err(error) = datapath_extras(&node, args, ingress, &mut result.datapath) {
                eprintln!("bench: datapath measurements failed: {error:#}");
                result.error = Some(format!("datapath measurements failed: {error:#}"));
            }
            if !args.no_profile && config == Config::Nldns {
                match datapath_profile(&node, args) {
                    Ok((text, share)) => {
                        result.datapath.profile = Some(text);
                        result.datapath.programs_share = Some(share);
                    }
                    Err(error) => eprintln!("bench: datapath profile failed: {error:#}"),
                }
                let pid = running.cache_pid().context("nldns has a pid")?;
                match profile(&node, pid, &result, args) {
                    Ok(text) => result.profile = Some(text),
                    Err(error) => eprintln!("bench: perf profile failed: {error:#}"),
                }
            }
        }
        _ => {}
    }
    if let Some(pid) = running.cache_pid().filter(|_| kernel_answers) {
        result.rss = Some(rss_run(&node, pid, args)?);
    }
    if config.is_nldns() {
        match kernel::answer_maps(&node, config) {
            Ok(maps) => {
                if let Some(k) = &mut result.kernel {
                    k.maps = maps;
                }
            }
            Err(error) => eprintln!("bench: answer maps: {error:#}"),
        }
    }
    drop(running);
    node.teardown()?;
    Ok(result)
}

/// BPF_PROG_TEST_RUN timings and bpf_stats (with the empty-program baseline) of the
/// agent's programs.
fn datapath_extras(
    node: &SimNode,
    args: &BenchArgs,
    ingress_name: &str,
    dp: &mut DatapathResult,
) -> Result<()> {
    let (ingress, egress) = datapath::agent_programs(node, ingress_name)?;
    dp.test_runs = Some(datapath::test_runs(
        node,
        ingress,
        egress,
        args.test_run_repeat,
    )?);
    {
        let empty = datapath::EmptyProgram::attach(node, &[node.pod_veth(0)?, node.pod_veth(1)?])?;
        let _stats = datapath::BpfStats::enable()?;
        let (ti0, ci0) = datapath::run_stats(ingress)?;
        let (te0, ce0) = datapath::run_stats(egress)?;
        let (tx0, cx0) = empty.run_stats()?;
        dp.bpf_stats_gbps = Some(datapath::iperf(node, args.iperf_secs)?);
        let (ti1, ci1) = datapath::run_stats(ingress)?;
        let (te1, ce1) = datapath::run_stats(egress)?;
        let (tx1, cx1) = empty.run_stats()?;
        let per = |t: u64, c: u64| if c == 0 { 0.0 } else { t as f64 / c as f64 };
        dp.bpf_stats = Some((
            per(ti1 - ti0, ci1 - ci0),
            per(te1 - te0, ce1 - ce0),
            ci1 - ci0,
            ce1 - ce0,
        ));
        dp.bpf_stats_empty = Some(per(tx1 - tx0, cx1 - cx0));
    }
    Ok(())
}

/// Pids of the knot servers: both kube-dns backends and the outside resolver.
fn knot_pids(node: &SimNode) -> Result<Vec<u32>> {
    let mut pids = Vec::new();
    for k in 0..node.backend_count() {
        pids.extend(node.backend_netns(k)?.pids()?);
    }
    pids.extend(node.ext_netns().pids()?);
    Ok(pids.into_iter().map(|p| p as u32).collect())
}

fn rss_run(node: &SimNode, pid: u32, args: &BenchArgs) -> Result<RssResult> {
    let idle_kib = procstat::rss_kib(pid)?;
    let lines: Vec<String> = (0..args.rss_names)
        .map(|i| format!("r{i}.bench.svc.cluster.local A"))
        .collect();
    let secs = (args.rss_names as u64).div_ceil(u64::from(args.rss_qps.max(1))) + 2;
    let r = load::dnsperf(
        node,
        &lines,
        &Load {
            duration: Duration::from_secs(secs.min(nldns_tests::perf::MAX_DURATION.as_secs())),
            rate: args.rss_qps,
            outstanding: 200,
            latencies: false,
            once: true,
        },
    )?;
    let after_kib = procstat::rss_kib(pid)?;
    Ok(RssResult {
        idle_kib,
        after_kib,
        rounds_after_kib: vec![after_kib],
        names_sent: r.sent,
        names_answered: r.completed,
    })
}

fn bench_workload(
    node: &SimNode,
    running: &Running,
    knot_pids: &[u32],
    w: Workload,
    args: &BenchArgs,
    tag: &mut u32,
) -> Result<WorkloadResult> {
    if let Some(lines) = w.warm_lines() {
        let rate = 5000u32;
        let secs = (lines.len() as u64).div_ceil(u64::from(rate)) + 2;
        load::dnsperf(
            node,
            &lines,
            &Load {
                duration: Duration::from_secs(secs),
                rate,
                outstanding: 100,
                latencies: false,
                once: true,
            },
        )?;
    }
    let search = load::search(
        node,
        w,
        &SearchOptions {
            step: Duration::from_secs(args.step_secs),
            rate_cap: args.rate_cap,
            max_steps: args.max_steps,
        },
        tag,
    )?;
    eprintln!(
        "bench:     max {:.0} qps ({} steps)",
        search.max_qps,
        search.steps.len()
    );
    *tag += 1;
    let n = (args.latency_qps as usize) * (args.latency_secs as usize) * 11 / 10;
    let lines = w.lines(*tag, n.max(1000));
    let cache_pid = running.cache_pid();
    let cache0 = cache_pid.map(procstat::cpu_seconds).transpose()?;
    let knot0 = procstat::cpu_seconds_of(knot_pids);
    let latency = load::dnsperf(
        node,
        &lines,
        &Load {
            duration: Duration::from_secs(args.latency_secs),
            rate: args.latency_qps,
            outstanding: 200,
            latencies: true,
            once: false,
        },
    )?;
    let cache1 = cache_pid.map(procstat::cpu_seconds).transpose()?;
    let knot1 = procstat::cpu_seconds_of(knot_pids);
    let per_1k = |seconds: f64| seconds * 1000.0 * 1000.0 / latency.completed.max(1) as f64;
    eprintln!(
        "bench:     at {} qps: p50 {:.3} ms, p99 {:.3} ms, loss {:.4}%",
        args.latency_qps,
        latency.quantile(0.5).unwrap_or(0.0) * 1e3,
        latency.quantile(0.99).unwrap_or(0.0) * 1e3,
        latency.loss() * 100.0
    );
    Ok(WorkloadResult {
        workload: w,
        max_qps_rounds: vec![search.max_qps],
        search,
        latency_rate: args.latency_qps,
        cache_cpu_ms_per_1k: cache0.zip(cache1).map(|(a, b)| per_1k(b - a)),
        knot_cpu_ms_per_1k: per_1k(knot1 - knot0),
        latency,
    })
}

/// iperf3 without nldns, then with it (an agent started for the run and stopped after),
/// `iperf_pairs` times in this node: alternating in one node keeps the machine's drifting
/// load and the topology out of the comparison.
fn iperf_pairs(node: &SimNode, bin: &Path, args: &BenchArgs) -> Result<Vec<(f64, f64)>> {
    let mut pairs = Vec::new();
    for _ in 0..args.iperf_pairs {
        let without = datapath::iperf(node, args.iperf_secs)?;
        let agent_args = node.agent_args();
        let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
        let mut agent = node.spawn_agent(bin, &agent_args)?;
        if !node.wait_http_ok("/ready", Duration::from_secs(30)) {
            bail!("nldns not ready within 30 s; log:\n{}", agent.stderr());
        }
        let with = datapath::iperf(node, args.iperf_secs)?;
        agent.sigterm()?;
        if agent.wait_exit(Duration::from_secs(10)).is_none() {
            bail!("nldns did not exit within 10 s of SIGTERM");
        }
        eprintln!("bench:   iperf3 without {without:.2}, with {with:.2} Gbit/s");
        pairs.push((without, with));
    }
    Ok(pairs)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One result per configuration from all rounds: median QPS and RSS, pooled latency
/// samples, mean CPU per 1000 queries, every iperf3 pair, the first round's extras.
fn merge_rounds(rounds: Vec<Vec<ConfigResult>>) -> Vec<ConfigResult> {
    let mut merged: Vec<ConfigResult> = Vec::new();
    for result in rounds.into_iter().flatten() {
        let Some(into) = merged.iter_mut().find(|m| m.config == result.config) else {
            merged.push(result);
            continue;
        };
        if into.error.is_none() {
            into.error = result.error;
        }
        for w in result.workloads {
            match into.workloads.iter_mut().find(|x| x.workload == w.workload) {
                None => into.workloads.push(w),
                Some(x) => {
                    x.max_qps_rounds.extend(w.max_qps_rounds);
                    x.search.steps.extend(w.search.steps);
                    x.latency.sent += w.latency.sent;
                    x.latency.completed += w.latency.completed;
                    x.latency.lost += w.latency.lost;
                    x.latency.latencies.extend(w.latency.latencies);
                    x.latency.latencies.sort_by(f64::total_cmp);
                    let n = x.max_qps_rounds.len() as f64;
                    let avg = |a: f64, b: f64| a + (b - a) / n;
                    x.cache_cpu_ms_per_1k = x
                        .cache_cpu_ms_per_1k
                        .zip(w.cache_cpu_ms_per_1k)
                        .map(|(a, b)| avg(a, b));
                    x.knot_cpu_ms_per_1k = avg(x.knot_cpu_ms_per_1k, w.knot_cpu_ms_per_1k);
                }
            }
        }
        into.datapath
            .iperf_pairs
            .extend(result.datapath.iperf_pairs);
        match (&mut into.kernel, result.kernel) {
            (Some(a), Some(b)) => kernel::merge(a, b),
            (into_kernel @ None, Some(b)) => *into_kernel = Some(b),
            _ => {}
        }
        match (&mut into.rss, result.rss) {
            (Some(a), Some(b)) => a.rounds_after_kib.push(b.after_kib),
            (into_rss @ None, Some(b)) => *into_rss = Some(b),
            _ => {}
        }
    }
    for m in &mut merged {
        for w in &mut m.workloads {
            w.search.max_qps = median(&w.max_qps_rounds);
        }
        if let Some(rss) = &mut m.rss {
            let kib: Vec<f64> = rss.rounds_after_kib.iter().map(|&k| k as f64).collect();
            rss.after_kib = median(&kib) as u64;
        }
    }
    merged
}

/// perf record of the agent while pod 0 sends cache hits at (a)'s highest sustained rate.
fn profile(node: &SimNode, pid: u32, result: &ConfigResult, args: &BenchArgs) -> Result<String> {
    let rate = result
        .workloads
        .iter()
        .find(|w| w.workload == Workload::Hits)
        .map(|w| w.search.max_qps as u32)
        .unwrap_or(args.rate_cap)
        .max(1000);
    let data = node.workdir().join("perf-agent.data");
    let secs = args.step_secs.max(2);
    let perf = perf::Recording::start(&data, Some(pid), secs)?;
    let lines = Workload::Hits.lines(0, 0);
    let run = load::dnsperf(
        node,
        &lines,
        &Load {
            duration: Duration::from_secs(secs),
            rate,
            outstanding: 200,
            latencies: false,
            once: false,
        },
    );
    perf.finish()?;
    run?;
    perf::report(&data, &[], 1.0, 40, |_| true)
}

/// System-wide perf record during one iperf3 run with nldns attached: the share of the
/// nldns programs (JITed, in kallsyms as bpf_prog_<tag>_nldns_*) in the iperf3 processes'
/// samples, where their softirq work is charged.
fn datapath_profile(node: &SimNode, args: &BenchArgs) -> Result<(String, f64)> {
    let data = node.workdir().join("perf-datapath.data");
    let perf = perf::Recording::start(&data, None, args.iperf_secs)?;
    let run = datapath::iperf(node, args.iperf_secs);
    perf.finish()?;
    run?;
    // The programs run in the softirq of the iperf3 processes' packets: only their samples
    // count (other jobs share the machine), as a share of those samples.
    let comms = ["--comms", "iperf3"];
    let top = perf::report(&data, &comms, 1.0, 20, |_| true)?;
    let ours = perf::report(&data, &comms, 0.0, 10, |l| l.contains("nldns"))?;
    let share = ours
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .next()?
                .strip_suffix('%')?
                .parse::<f64>()
                .ok()
        })
        .sum();
    Ok((format!("{top}\n...\n{ours}"), share))
}
