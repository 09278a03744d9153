//! The kernel-answer measurements, per configuration, on the hits workload (cache warmed):
//!
//! - hits at a fixed rate (`--kernel-qps`, 20k) with per-query latencies, and the whole
//!   machine's CPU per query over that run (/proc/stat, net of the background measured
//!   in an idle window just before: the kernel path's work is softirq, charged to no
//!   process);
//! - hits at `--busy-qps` (5000) while two busy loops, one pinned to each CPU, compete
//!   with everything else (the busy node);
//! - bpf_stats (kernel.bpf_stats_enabled) of the ingress program on pod 0's veth during
//!   one more fixed-rate hits run, with a no-op program attached *first* on the same hook
//!   for the hook's and the stats' own cost.
//!
//! The datapath counters of the agent (`kernel_answers`, `kernel_pass_*`) are read around
//! the fixed-rate run, so the report can tell how many hits the kernel answered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use nldns_tests::bounce;
use nldns_tests::raw_bpf::BPF_TCX_INGRESS;
use nldns_tests::SimNode;

use super::configs::{Config, Running};
use super::datapath::{self, MapMemory};
use super::load::{self, Load, LoadResult};
use super::procstat;
use super::report;
use super::workload::Workload;
use super::{BenchArgs, ConfigResult};

/// The datapath counters the kernel-answer path moves.
pub const COUNTERS: [&str; 6] = [
    "kernel_answers",
    "kernel_pass_no_entry",
    "kernel_pass_query",
    "kernel_pass_expiring",
    "kernel_pass_too_large",
    "kernel_answer_errors",
];

/// bpf_stats of one program over one hits run.
#[derive(Debug, Clone, Default)]
pub struct BpfRun {
    pub program: String,
    pub run_ns: u64,
    pub runs: u64,
    /// Queries answered in that run by the program itself: the agent's `kernel_answers`
    /// delta for (f)/(g), dnsperf's completed count for (h); 0 for (a).
    pub answered: u64,
    /// Queries dnsperf sent in that run.
    pub sent: u64,
    /// The no-op program first on the same hook.
    pub nop_ns: u64,
    pub nop_runs: u64,
    /// Datapath counter deltas over the run ([`COUNTERS`], nldns only).
    pub counters: Vec<(String, u64)>,
}

impl BpfRun {
    pub fn per_run(&self) -> f64 {
        self.run_ns as f64 / self.runs.max(1) as f64
    }

    pub fn nop_per_run(&self) -> f64 {
        self.nop_ns as f64 / self.nop_runs.max(1) as f64
    }

    /// All of the program's time over the answered queries (an upper bound: the few
    /// packets it only passed are charged to the answers too).
    pub fn per_answered(&self) -> Option<f64> {
        (self.answered > 0).then(|| self.run_ns as f64 / self.answered as f64)
    }

    /// [`Self::per_answered`] net of the hook's and the stats' cost (the no-op's ns per
    /// run, times the program's runs).
    pub fn per_answered_net(&self) -> Option<f64> {
        (self.answered > 0).then(|| {
            (self.run_ns as f64 - self.nop_per_run() * self.runs as f64) / self.answered as f64
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct KernelResult {
    pub fixed: LoadResult,
    /// Machine busy CPU µs per completed query over the fixed-rate run, net of the
    /// background (idle window), and the background itself in CPU-seconds per second.
    pub machine_cpu_us: f64,
    pub background_cpus: f64,
    /// The cache process's own CPU µs per completed query over the same run.
    pub cache_cpu_us: Option<f64>,
    /// dnsperf's CPU µs per completed query over the same run (getrusage of the waited
    /// child): the client, plus the kernel work done in its context (its sendmsg runs the
    /// pod veth's TC ingress and, with kernel answers, the whole answer).
    pub client_cpu_us: f64,
    pub busy: LoadResult,
    pub bpf: Option<BpfRun>,
    /// Datapath counter deltas over the fixed-rate run ([`COUNTERS`]).
    pub counters: Vec<(String, u64)>,
    /// The ingress program's maps after the RSS run (nldns only).
    pub maps: Vec<MapMemory>,
    /// `perf record -a` during one more fixed-rate hits run (first round, (a), (f), (h)):
    /// where the machine's time goes, by symbol.
    pub profile: Option<String>,
}

/// Two (one per CPU) spinning threads until dropped.
struct BusyLoops {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl BusyLoops {
    fn start(cpus: usize, bound: Duration) -> BusyLoops {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..cpus)
            .map(|cpu| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    // SAFETY: a zeroed cpu_set_t with one CPU set, for this thread.
                    unsafe {
                        let mut set: libc::cpu_set_t = std::mem::zeroed();
                        libc::CPU_SET(cpu, &mut set);
                        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                    }
                    // Bounded by itself too, in case the owner never returns.
                    let until = std::time::Instant::now() + bound;
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                        for _ in 0..10_000 {
                            x = std::hint::black_box(
                                x.wrapping_mul(6364136223846793005).wrapping_add(1),
                            );
                        }
                    }
                })
            })
            .collect();
        BusyLoops { stop, threads }
    }
}

impl Drop for BusyLoops {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn counters(node: &SimNode, config: Config) -> Vec<(String, u64)> {
    if !config.is_nldns() {
        return Vec::new();
    }
    COUNTERS
        .iter()
        .map(|c| (c.to_string(), node.datapath_counter(c).unwrap_or(0)))
        .collect()
}

fn delta(before: &[(String, u64)], after: &[(String, u64)]) -> Vec<(String, u64)> {
    after
        .iter()
        .map(|(name, a)| {
            let b = before
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, v)| *v);
            (name.clone(), a.saturating_sub(b))
        })
        .collect()
}

fn hits(node: &SimNode, rate: u32, secs: u64, latencies: bool) -> Result<LoadResult> {
    load::dnsperf(
        node,
        &Workload::Hits.lines(0, 0),
        &Load {
            duration: Duration::from_secs(secs),
            rate,
            outstanding: 200,
            latencies,
            once: false,
        },
    )
}

/// The ingress program whose run time is measured: the agent's on pod 0's veth, or the
/// bouncer.
fn ingress_name(config: Config) -> Option<&'static str> {
    match config {
        Config::Nldns | Config::NldnsPodHooks => Some(datapath::INGRESS),
        Config::NldnsKernel | Config::NldnsKernelEgress => Some(datapath::ANSWER),
        _ => None,
    }
}

/// The agent's ingress program id on pod 0's veth (nldns configurations).
pub fn agent_ingress(node: &SimNode, config: Config) -> Result<Option<u32>> {
    match ingress_name(config) {
        Some(name) => Ok(Some(datapath::agent_programs(node, name)?.0)),
        None => Ok(None),
    }
}

/// The kernel-answer maps (`NLDNS_ANS*`) of the agent's ingress program.
pub fn answer_maps(node: &SimNode, config: Config) -> Result<Vec<MapMemory>> {
    let Some(id) = agent_ingress(node, config)? else {
        return Ok(Vec::new());
    };
    Ok(datapath::program_maps(id)?
        .into_iter()
        .filter(|m| m.name.starts_with("NLDNS_ANS"))
        .collect())
}

/// The runs above, in a node where `config` serves and the hits workload ran.
pub fn measure(
    node: &SimNode,
    config: Config,
    running: &Running,
    args: &BenchArgs,
    extras: bool,
) -> Result<KernelResult> {
    let secs = args.latency_secs;
    // Warm again: the 30 s TTL of the cluster zone may have run out since the search.
    if let Some(lines) = Workload::Hits.warm_lines() {
        load::dnsperf(
            node,
            &lines,
            &Load {
                duration: Duration::from_secs(3),
                rate: 5000,
                outstanding: 100,
                latencies: false,
                once: true,
            },
        )?;
    }
    let (fixed, machine_cpu_us, background_cpus, cache_cpu_us, counters_delta, client_cpu_us) =
        fixed_run(node, config, running, args.kernel_qps, secs)?;
    eprintln!(
        "bench:     kernel: {} qps p99 {:.3} ms, machine {:.1} µs/query, counters {:?}",
        args.kernel_qps,
        fixed.quantile(0.99).unwrap_or(0.0) * 1e3,
        machine_cpu_us,
        counters_delta
    );
    let busy = {
        let _loops = BusyLoops::start(2, Duration::from_secs(secs + 40));
        hits(node, args.busy_qps, secs, true)?
    };
    eprintln!(
        "bench:     busy node: {} qps p99 {:.3} ms, loss {:.3}%",
        args.busy_qps,
        busy.quantile(0.99).unwrap_or(0.0) * 1e3,
        busy.loss() * 100.0
    );
    let bpf = match bpf_run(node, config, running, args) {
        Ok(b) => b,
        Err(error) => {
            eprintln!("bench:     bpf_stats run failed: {error:#}");
            None
        }
    };
    let profile = if extras
        && !args.no_kernel_profile
        && matches!(config, Config::Nldns | Config::NldnsKernel | Config::Bounce)
    {
        match profile(node, args) {
            Ok(p) => Some(p),
            Err(error) => {
                eprintln!("bench:     kernel profile failed: {error:#}");
                None
            }
        }
    } else {
        None
    };
    Ok(KernelResult {
        profile,
        fixed,
        machine_cpu_us,
        background_cpus,
        cache_cpu_us,
        client_cpu_us,
        busy,
        bpf,
        counters: counters_delta,
        maps: Vec::new(),
    })
}

/// `perf record -a -g` (every CPU) during a fixed-rate hits run: the top symbols, flat,
/// and the same by call chain caller for the BPF programs' helpers.
fn profile(node: &SimNode, args: &BenchArgs) -> Result<String> {
    let data = node.workdir().join("perf-kernel.data");
    let secs = args.latency_secs.max(2);
    let perf = super::perf::Recording::start(&data, None, secs)?;
    let run = hits(node, args.kernel_qps, secs, false);
    perf.finish()?;
    run?;
    // Other jobs share the machine (seen: QEMU guests of other sessions): only the samples
    // of dnsperf (whose sendmsg runs the veth's TC ingress, and with bpf_redirect_peer the
    // whole answer, in its own context) and of the softirq threads.
    let comms = ["--comms", "dnsperf,ksoftirqd/0,ksoftirqd/1"];
    let top = super::perf::report(&data, &comms, 0.7, 45, |_| true)?;
    let bpf = super::perf::report(&data, &comms, 0.0, 25, |l| {
        [
            "bpf",
            "htab",
            "jhash",
            "csum",
            "skb_store",
            "skb_change",
            "memcpy",
            "memcmp",
        ]
        .iter()
        .any(|k| l.contains(k))
    })?;
    Ok(format!("{top}\n...\n{bpf}"))
}

/// What [`fixed_run`] measured: the run, machine CPU µs per query, background CPUs,
/// cache CPU µs per query, counter deltas, client CPU µs per query.
type Fixed = (LoadResult, f64, f64, Option<f64>, Vec<(String, u64)>, f64);

/// Hits at `rate` with latencies; machine CPU per query net of a 2 s idle window's rate,
/// the cache's CPU per query, the datapath counters' deltas.
fn fixed_run(
    node: &SimNode,
    config: Config,
    running: &Running,
    rate: u32,
    secs: u64,
) -> Result<Fixed> {
    let idle_window = Duration::from_secs(2);
    let m0 = procstat::machine_busy_seconds()?;
    let t0 = std::time::Instant::now();
    std::thread::sleep(idle_window);
    let background = (procstat::machine_busy_seconds()? - m0) / t0.elapsed().as_secs_f64();
    let before = counters(node, config);
    let cache_pid = running.cache_pid();
    let c0 = cache_pid.map(procstat::cpu_seconds).transpose()?;
    let m0 = procstat::machine_busy_seconds()?;
    let k0 = procstat::children_cpu_seconds();
    let t0 = std::time::Instant::now();
    let run = hits(node, rate, secs, true)?;
    let wall = t0.elapsed().as_secs_f64();
    let k1 = procstat::children_cpu_seconds();
    let m1 = procstat::machine_busy_seconds()?;
    let c1 = cache_pid.map(procstat::cpu_seconds).transpose()?;
    let after = counters(node, config);
    let n = run.completed.max(1) as f64;
    // dnsperf's start-up and exit are inside `wall`; the background is charged for all of it.
    let machine = ((m1 - m0) - background * wall).max(0.0) * 1e6 / n;
    let cache = c0.zip(c1).map(|(a, b)| (b - a) * 1e6 / n);
    let client = (k1 - k0) * 1e6 / n;
    Ok((
        run,
        machine,
        background,
        cache,
        delta(&before, &after),
        client,
    ))
}

fn bpf_run(
    node: &SimNode,
    config: Config,
    running: &Running,
    args: &BenchArgs,
) -> Result<Option<BpfRun>> {
    let agent = agent_ingress(node, config)?;
    if agent.is_none() && running.bounce.is_none() {
        return Ok(None);
    }
    let veth = node.pod_veth(0)?;
    let nop = bounce::attach_nop_first(node.node_netns(), &[veth], BPF_TCX_INGRESS)?;
    let _stats = datapath::BpfStats::enable()?;
    let read = || -> Result<(u64, u64)> {
        match (agent, &running.bounce) {
            (Some(id), _) => datapath::run_stats(id),
            (None, Some(b)) => b.run_stats(),
            (None, None) => unreachable!(),
        }
    };
    let before = counters(node, config);
    let (t0, c0) = read()?;
    let (n0, k0) = nop.run_stats()?;
    let run = hits(node, args.kernel_qps, args.latency_secs, false)?;
    let (t1, c1) = read()?;
    let (n1, k1) = nop.run_stats()?;
    let after = counters(node, config);
    let counters = delta(&before, &after);
    let answered = match config {
        Config::Bounce => run.completed,
        _ => counters
            .iter()
            .find(|(n, _)| n == "kernel_answers")
            .map_or(0, |(_, v)| *v),
    };
    let b = BpfRun {
        program: match config {
            Config::Bounce => "nldns_bounce".into(),
            _ => ingress_name(config).context("an ingress program")?.into(),
        },
        run_ns: t1 - t0,
        runs: c1 - c0,
        answered,
        sent: run.sent,
        nop_ns: n1 - n0,
        nop_runs: k1 - k0,
        counters,
    };
    eprintln!(
        "bench:     bpf_stats {}: {:.1} ns/run over {} runs, {} answered of {} sent, no-op {:.1} ns/run",
        b.program,
        b.per_run(),
        b.runs,
        b.answered,
        b.sent,
        b.nop_per_run()
    );
    Ok(Some(b))
}

/// Pools `b` (a later round) into `a`: latency samples and counts, mean CPU figures,
/// summed bpf_stats and counters.
pub fn merge(a: &mut KernelResult, b: KernelResult) {
    fn pool(a: &mut LoadResult, b: LoadResult) {
        a.sent += b.sent;
        a.completed += b.completed;
        a.lost += b.lost;
        a.latencies.extend(b.latencies);
        a.latencies.sort_by(f64::total_cmp);
    }
    pool(&mut a.fixed, b.fixed);
    pool(&mut a.busy, b.busy);
    a.machine_cpu_us = (a.machine_cpu_us + b.machine_cpu_us) / 2.0;
    a.background_cpus = (a.background_cpus + b.background_cpus) / 2.0;
    a.cache_cpu_us = a
        .cache_cpu_us
        .zip(b.cache_cpu_us)
        .map(|(x, y)| (x + y) / 2.0);
    match (&mut a.bpf, b.bpf) {
        (Some(x), Some(y)) => {
            x.run_ns += y.run_ns;
            x.runs += y.runs;
            x.answered += y.answered;
            x.sent += y.sent;
            x.nop_ns += y.nop_ns;
            x.nop_runs += y.nop_runs;
            for (name, v) in y.counters {
                match x.counters.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, c)) => *c += v,
                    None => x.counters.push((name, v)),
                }
            }
        }
        (x @ None, Some(y)) => *x = Some(y),
        _ => {}
    }
    for (name, v) in b.counters {
        match a.counters.iter_mut().find(|(n, _)| *n == name) {
            Some((_, x)) => *x += v,
            None => a.counters.push((name, v)),
        }
    }
    if a.maps.is_empty() {
        a.maps = b.maps;
    }
    if a.profile.is_none() {
        a.profile = b.profile;
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{:.3}", s * 1e3))
}

fn ns(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.0}"))
}

/// The kernel-answer section of the report.
pub fn markdown(args: &BenchArgs, results: &[ConfigResult]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let w = &mut s;
    let k = |c: Config| -> Option<&KernelResult> {
        results.iter().find(|r| r.config == c)?.kernel.as_ref()
    };
    let hit_qps = |c: Config| report::find(results, c, Workload::Hits).map(|x| x.search.max_qps);
    let p99 = |c: Config| k(c).and_then(|x| x.fixed.quantile(0.99));
    let busy99 = |c: Config| k(c).and_then(|x| x.busy.quantile(0.99));
    let cpu = |c: Config| k(c).map(|x| x.machine_cpu_us);
    let node_cpu = |c: Config| k(c).map(|x| x.client_cpu_us + x.cache_cpu_us.unwrap_or(0.0));
    let (h, b) = (Config::Bounce, Config::Unbound);
    let _ = writeln!(
        w,
        "\n## Kernel answers: cache hits against the bounce ceiling (h)\n"
    );
    let _ = writeln!(
        w,
        "Hits workload (1000 names, warmed again before these runs). Fixed rate: {} qps for {} s \
         with per-query latencies. Node CPU: dnsperf's CPU (getrusage of the waited child) plus \
         the cache process's (/proc/<pid>/stat), per completed query; this kernel counts CPU \
         by ticks without IRQ_TIME_ACCOUNTING, so softirq work done in a task's context (the \
         pod veth's TC ingress runs in dnsperf's sendmsg, and with bpf_redirect_peer the \
         whole kernel answer and the pod's receive) is charged to that task; the knot \
         servers do nothing on hits. Machine CPU: every CPU's busy time in /proc/stat (user, \
         nice, system, irq, softirq, steal) over that run, minus the background measured in \
         a 2 s idle window just before, per completed query: it would include softirq work \
         charged to no process of ours, but other jobs on the machine (other sessions' tests \
         and QEMU guests) make it noisy. Busy node: {} qps for {} s while two \
         threads spin, one pinned to each CPU. QPS: the search above (median of the rounds). \
         Latency samples of all rounds are pooled.\n",
        args.kernel_qps, args.latency_secs, args.busy_qps, args.latency_secs
    );
    let _ = writeln!(
        w,
        "| configuration | hit QPS | QPS / (h) | p50 @{k} | p99 @{k} | p99 / (h) | p99 / (b) | loss @{k} | node CPU µs/query (dnsperf + cache) | node CPU / (b) | cache process | machine CPU µs/query (/proc/stat) | machine / (b) | busy p99 @{bq} | busy / (h) | busy loss |",
        k = args.kernel_qps,
        bq = args.busy_qps
    );
    let _ = writeln!(
        w,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in results {
        let Some(x) = &r.kernel else { continue };
        let c = r.config;
        let _ = writeln!(
            w,
            "| ({}) {} | {} | {} | {} | {} | {} | {} | {:.3}% | {:.1} | {} | {} | {:.1} | {} | {} | {} | {:.3}% |",
            c.letter(),
            c,
            hit_qps(c).map_or("-".into(), |q| format!("{q:.0}")),
            report::fmt_ratio(report::ratio(hit_qps(c), hit_qps(h))),
            ms(x.fixed.quantile(0.5)),
            ms(x.fixed.quantile(0.99)),
            report::fmt_ratio(report::ratio(p99(c), p99(h))),
            report::fmt_ratio(report::ratio(p99(c), p99(b))),
            x.fixed.loss() * 100.0,
            node_cpu(c).unwrap_or(0.0),
            report::fmt_ratio(report::ratio(node_cpu(c), node_cpu(b))),
            x.cache_cpu_us.map_or("-".into(), |v| format!("{v:.1}")),
            x.machine_cpu_us,
            report::fmt_ratio(report::ratio(cpu(c), cpu(b))),
            ms(x.busy.quantile(0.99)),
            report::fmt_ratio(report::ratio(busy99(c), busy99(h))),
            x.busy.loss() * 100.0,
        );
    }
    let background: Vec<String> = results
        .iter()
        .filter_map(|r| {
            Some(format!(
                "({}) {:.2}",
                r.config.letter(),
                r.kernel.as_ref()?.background_cpus
            ))
        })
        .collect();
    let _ = writeln!(
        w,
        "\nBackground CPUs busy in the idle windows (subtracted): {}.\n",
        background.join(", ")
    );

    // Counters.
    let with_counters: Vec<&ConfigResult> = results
        .iter()
        .filter(|r| r.kernel.as_ref().is_some_and(|k| !k.counters.is_empty()))
        .collect();
    if !with_counters.is_empty() {
        let _ = writeln!(
            w,
            "Datapath counters over the fixed-rate runs (deltas, all rounds; `nldns_datapath_<name>_total`):\n"
        );
        let _ = writeln!(
            w,
            "| configuration | completed | {} |",
            COUNTERS.join(" | ")
        );
        let _ = writeln!(w, "|---|---|{}", "---|".repeat(COUNTERS.len()));
        for r in with_counters {
            let x = r.kernel.as_ref().expect("filtered");
            let values: Vec<String> = COUNTERS
                .iter()
                .map(|c| {
                    x.counters
                        .iter()
                        .find(|(n, _)| n == c)
                        .map_or("-".into(), |(_, v)| v.to_string())
                })
                .collect();
            let _ = writeln!(
                w,
                "| ({}) {} | {} | {} |",
                r.config.letter(),
                r.config,
                x.fixed.completed,
                values.join(" | ")
            );
        }
    }

    // bpf_stats.
    let _ = writeln!(
        w,
        "\nbpf_stats (kernel.bpf_stats_enabled=1 only for one more {} qps hits run of {} s, then \
         restored) of the ingress program on pod 0's host veth. run_cnt counts every packet \
         the hook saw from pod 0 (queries, and the few ARP/ND and other packets), not only the \
         answered queries: \"per answered\" charges all the program's time to the answered \
         queries (an upper bound); \"net\" also takes off the hook's and the stats' own cost, \
         measured by a no-op program attached first on the same hook for the same run (first, \
         because TCX stops at a redirect and an appended program would never see the answered \
         queries).\n",
        args.kernel_qps, args.latency_secs
    );
    let _ = writeln!(
        w,
        "| configuration | program | ns/run | runs | queries sent | answered by it | ns per answered | net of the no-op | no-op ns/run | other counters moved |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|");
    for r in results {
        let Some(bpf) = r.kernel.as_ref().and_then(|k| k.bpf.as_ref()) else {
            continue;
        };
        let moved: Vec<String> = bpf
            .counters
            .iter()
            .filter(|(n, v)| *v > 0 && n != "kernel_answers")
            .map(|(n, v)| format!("{n} {v}"))
            .collect();
        let _ = writeln!(
            w,
            "| ({}) {} | {} | {:.1} | {} | {} | {} | {} | {} | {:.1} | {} |",
            r.config.letter(),
            r.config,
            bpf.program,
            bpf.per_run(),
            bpf.runs,
            bpf.sent,
            bpf.answered,
            ns(bpf.per_answered()),
            ns(bpf.per_answered_net()),
            bpf.nop_per_run(),
            if moved.is_empty() {
                "-".to_string()
            } else {
                moved.join(", ")
            }
        );
    }

    // Non-DNS cost: nldns_answer (f) against nldns_ingress (a).
    let dp = |c: Config| results.iter().find(|r| r.config == c).map(|r| &r.datapath);
    let (da, df) = (dp(Config::Nldns), dp(Config::NldnsKernel));
    let net = |d: Option<&super::DatapathResult>| {
        let d = d?;
        let (i, e, _, _) = d.bpf_stats?;
        Some((i, e, d.bpf_stats_empty?))
    };
    let (na, nf) = (net(da), net(df));
    if na.is_some() || nf.is_some() {
        let _ = writeln!(
            w,
            "\nNon-DNS packets: bpf_stats during one iperf3 run (TCP pod 0 -> pod 1) per \
             configuration, and BPF_PROG_TEST_RUN of the ingress program on crafted frames \
             (ns per run as the kernel timed it):\n"
        );
        let _ = writeln!(
            w,
            "| measure | (a) nldns_ingress | (f) nldns_answer | (f) - (a) |\n|---|---|---|---|"
        );
        let row = |w: &mut String, what: &str, a: Option<f64>, f: Option<f64>| {
            let _ = writeln!(
                w,
                "| {what} | {} | {} | {} |",
                a.map_or("-".into(), |v| format!("{v:.1}")),
                f.map_or("-".into(), |v| format!("{v:.1}")),
                a.zip(f)
                    .map_or("-".into(), |(a, f)| format!("{:+.1}", f - a))
            );
        };
        row(
            w,
            "iperf3: ingress ns/run",
            na.map(|x| x.0),
            nf.map(|x| x.0),
        );
        row(
            w,
            "iperf3: egress (nldns_egress) ns/run",
            na.map(|x| x.1),
            nf.map(|x| x.1),
        );
        row(
            w,
            "iperf3: empty program ns/run (same hooks)",
            na.map(|x| x.2),
            nf.map(|x| x.2),
        );
        row(
            w,
            "iperf3: ingress + egress net of 2x empty, per non-DNS packet",
            na.map(|x| x.0 + x.1 - 2.0 * x.2),
            nf.map(|x| x.0 + x.1 - 2.0 * x.2),
        );
        row(
            w,
            "iperf3: ingress net of empty",
            na.map(|x| x.0 - x.2),
            nf.map(|x| x.0 - x.2),
        );
        let t = |d: Option<&super::DatapathResult>| d.and_then(|d| d.test_runs.clone());
        let (ta, tf) = (t(da), t(df));
        row(
            w,
            &format!("TEST_RUN TCP segment, repeat={}", args.test_run_repeat),
            ta.as_ref().map(|t| f64::from(t.ingress_tcp)),
            tf.as_ref().map(|t| f64::from(t.ingress_tcp)),
        );
        row(
            w,
            "TEST_RUN TCP segment, one run per call",
            ta.as_ref().map(|t| t.ingress_tcp_single),
            tf.as_ref().map(|t| t.ingress_tcp_single),
        );
        row(
            w,
            "TEST_RUN query for an uncached name, one run per call",
            ta.as_ref().map(|t| t.ingress_dns_single),
            tf.as_ref().map(|t| t.ingress_dns_single),
        );
        row(
            w,
            "TEST_RUN query for a cached hit name, one run per call",
            ta.as_ref().map(|t| t.ingress_hit_single),
            tf.as_ref().map(|t| t.ingress_hit_single),
        );
        let gbps = |d: Option<&super::DatapathResult>| d.and_then(|d| d.bpf_stats_gbps);
        row(w, "iperf3 Gbit/s of that run", gbps(da), gbps(df));
        for (c, t) in [("a", &ta), ("f", &tf)] {
            if let Some(t) = t {
                let _ = writeln!(w, "\nVerdicts ({c}): {}.", t.verdicts);
            }
        }
    }

    // Memory.
    let _ = writeln!(
        w,
        "\n## Memory at {} names with kernel answers\n\nVmRSS of the agent after {} distinct \
         names (with kernel answers this run comes after the hits runs, see above), and the \
         kernel-answer maps of its ingress program (`bpftool map show`: `bytes_memlock` is \
         what the kernel charges for the map now; NLDNS_ANSWERS is not preallocated, so it \
         grows with its entries up to max_entries).\n",
        args.rss_names, args.rss_names
    );
    let _ = writeln!(
        w,
        "| configuration | RSS idle | RSS after | map | type | max_entries | bytes_memlock |\n|---|---|---|---|---|---|---|"
    );
    for r in results.iter().filter(|r| r.config.is_nldns()) {
        let rss = r.rss.as_ref();
        let maps = r.kernel.as_ref().map_or(&[][..], |k| &k.maps[..]);
        let rss_cols = format!(
            "{} | {}",
            rss.map_or("-".into(), |x| format!(
                "{:.1} MiB",
                x.idle_kib as f64 / 1024.0
            )),
            rss.map_or("-".into(), |x| format!(
                "{:.1} MiB",
                x.after_kib as f64 / 1024.0
            ))
        );
        if maps.is_empty() {
            let _ = writeln!(
                w,
                "| ({}) {} | {rss_cols} | - | - | - | - |",
                r.config.letter(),
                r.config
            );
        }
        for m in maps {
            let _ = writeln!(
                w,
                "| ({}) {} | {rss_cols} | {} | {} | {} | {:.2} MiB |",
                r.config.letter(),
                r.config,
                m.name,
                m.kind,
                m.max_entries,
                m.bytes_memlock as f64 / 1048576.0
            );
        }
    }

    for r in results {
        if let Some(p) = r.kernel.as_ref().and_then(|k| k.profile.as_ref()) {
            let _ = writeln!(
                w,
                "\n### Where the time goes: ({}) {} under {} qps of hits\n\n`perf record -a -F 999` \
                 (every CPU) during one more {} s run; `perf report --no-children --sort \
                 dso,symbol --comms dnsperf,ksoftirqd/0,ksoftirqd/1` (dnsperf's own context \
                 runs the pod veth's TC ingress, and with bpf_redirect_peer the whole kernel \
                 answer), entries >= 0.7%, then the BPF-related lines (programs, map and \
                 checksum helpers):\n\n```\n{p}\n```",
                r.config.letter(),
                r.config,
                args.kernel_qps,
                args.latency_secs.max(2)
            );
        }
    }

    // Targets.
    let _ = writeln!(w, "\n## Kernel-answer targets\n");
    for c in [Config::NldnsKernel, Config::NldnsKernelEgress] {
        if !results.iter().any(|r| r.config == c) {
            continue;
        }
        let l = c.letter();
        let qps = report::ratio(hit_qps(c), hit_qps(h));
        let p_h = report::ratio(p99(c), p99(h));
        let p_b = report::ratio(p99(c), p99(b));
        let cpu_b = report::ratio(cpu(c), cpu(b));
        let busy = report::ratio(busy99(c), busy99(h));
        let bpf = k(c)
            .and_then(|x| x.bpf.as_ref())
            .and_then(BpfRun::per_answered_net);
        let _ = writeln!(w, "({l}) {c}:\n");
        let _ = writeln!(
            w,
            "- hit QPS >= 0.85x (h): {} ({})",
            report::fmt_ratio(qps),
            report::verdict(qps, 0.85, true)
        );
        let _ = writeln!(
            w,
            "- p99 at {} qps <= 1.5x (h): {} ({})",
            args.kernel_qps,
            report::fmt_ratio(p_h),
            report::verdict(p_h, 1.5, false)
        );
        let _ = writeln!(
            w,
            "- p99 at {} qps <= 0.2x (b): {} ({})",
            args.kernel_qps,
            report::fmt_ratio(p_b),
            report::verdict(p_b, 0.2, false)
        );
        let node_b = report::ratio(node_cpu(c), node_cpu(b));
        let _ = writeln!(
            w,
            "- CPU per query <= 0.6x (b), node CPU (dnsperf + cache process): {} ({}); machine \
             CPU (/proc/stat net of the background): {} ({})",
            report::fmt_ratio(node_b),
            report::verdict(node_b, 0.6, false),
            report::fmt_ratio(cpu_b),
            report::verdict(cpu_b, 0.6, false)
        );
        let _ = writeln!(
            w,
            "- busy-node p99 at {} qps <= 1.2x (h): {} ({})",
            args.busy_qps,
            report::fmt_ratio(busy),
            report::verdict(busy, 1.2, false)
        );
        let _ = writeln!(
            w,
            "- BPF run time per answered query <= 400 ns (net of the no-op): {} ({})\n",
            bpf.map_or("-".into(), |v| format!("{v:.0} ns")),
            report::verdict(bpf, 400.0, false)
        );
    }
    if let Some(x) = nf {
        let per = x.0 + x.1 - 2.0 * x.2;
        let _ = writeln!(
            w,
            "- non-DNS packet with nldns_answer <= 30 ns (iperf3 bpf_stats, ingress + egress net \
             of the empty program): {per:.1} ns ({}){}",
            report::verdict(Some(per), 30.0, false),
            na.map(|a| format!("; nldns_ingress in (a): {:.1} ns", a.0 + a.1 - 2.0 * a.2))
                .unwrap_or_default()
        );
    }
    s
}
