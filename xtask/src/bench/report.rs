//! The bench report: `<date>.md` (every figure, ratios to (b), targets, the machine),
//! `<date>.json` (the same plus latency CDF points) and PNG plots drawn by matplotlib
//! from that JSON, in a venv under the target directory (created once, idempotently).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use super::configs::{self, Config};
use super::load::{self, MAX_LOSS};
use super::workload::Workload;
use super::{BenchArgs, ConfigResult, WorkloadResult};
use crate::cmd;

/// What the numbers were measured on.
#[derive(Debug, Clone)]
pub struct Machine {
    pub date: String,
    pub nproc: usize,
    pub kernel: String,
    pub cpu: String,
    pub mem: String,
    pub loadavg: String,
    /// Filled in when the runs are over.
    pub loadavg_end: String,
    pub tools: Vec<String>,
}

impl Machine {
    pub fn probe() -> Machine {
        let first_line = |program: &str, args: &[&str]| -> String {
            Command::new(program)
                .args(args)
                .output()
                .ok()
                .map(|o| {
                    let text = format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                    text.lines()
                        .find(|l| !l.trim().is_empty() && !l.contains("Testing Tool"))
                        .unwrap_or("")
                        .trim()
                        .to_string()
                })
                .unwrap_or_default()
        };
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            date: first_line("date", &["-u", "+%Y-%m-%d"]),
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            cpu: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
                .unwrap_or_default(),
            mem: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .unwrap_or("")
                .trim()
                .to_string(),
            loadavg: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
                .to_string(),
            loadavg_end: String::new(),
            tools: vec![
                first_line("unbound", &["-V"]),
                first_line("dnsmasq", &["--version"]),
                first_line("knotd", &["--version"]),
                format!(
                    "dnsperf {}",
                    first_line("dnsperf", &["-h"]).replace("Version ", "")
                ),
                first_line("iperf3", &["--version"]),
            ],
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "{} CPUs ({}), kernel {}, load {}",
            self.nproc, self.cpu, self.kernel, self.loadavg
        )
    }
}

fn ms(seconds: Option<f64>) -> String {
    seconds.map_or("-".into(), |s| format!("{:.3}", s * 1e3))
}

pub(super) fn find(
    results: &[ConfigResult],
    config: Config,
    w: Workload,
) -> Option<&WorkloadResult> {
    results
        .iter()
        .find(|r| r.config == config)?
        .workloads
        .iter()
        .find(|x| x.workload == w)
}

pub(super) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

pub(super) fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.2}x"))
}

/// "met", or "**missed**" and by how much, for a value against a limit that it must reach
/// (`at_least`) or stay under.
pub(super) fn verdict(value: Option<f64>, limit: f64, at_least: bool) -> String {
    match value {
        None => "not measured".into(),
        Some(v) if (at_least && v >= limit) || (!at_least && v <= limit) => "met".into(),
        Some(v) if at_least => format!(
            "**missed**: {:.0}% short of the target",
            (1.0 - v / limit) * 100.0
        ),
        Some(v) => format!(
            "**missed**: {:.0}% over the target",
            (v / limit - 1.0) * 100.0
        ),
    }
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Writes `<out>/<name>.md` and `<out>/<name>.json` (`name`: the date, or the date and a
/// suffix); returns the .md path.
pub fn write(
    out: &Path,
    name: &str,
    machine: &Machine,
    args: &BenchArgs,
    results: &[ConfigResult],
    took: Duration,
) -> Result<PathBuf> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let date = if machine.date.is_empty() {
        "undated".to_string()
    } else {
        machine.date.clone()
    };
    let name = if name.is_empty() { date.as_str() } else { name };
    let md_path = out.join(format!("{name}.md"));
    let json_path = out.join(format!("{name}.json"));
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&to_json(&date, results))?,
    )
    .context("writing the JSON results")?;
    std::fs::write(&md_path, markdown(&date, machine, args, results, took))
        .context("writing the report")?;
    Ok(md_path)
}

fn to_json(date: &str, results: &[ConfigResult]) -> serde_json::Value {
    let configs: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let workloads: Vec<serde_json::Value> = r
                .workloads
                .iter()
                .map(|w| {
                    // 400 points of the CDF, denser in the tail.
                    let cdf: Vec<[f64; 2]> = (0..=400)
                        .map(|i| {
                            let q = 1.0 - 10f64.powf(-4.0 * f64::from(i) / 400.0);
                            [q, load::quantile(&w.latency.latencies, q).unwrap_or(0.0)]
                        })
                        .collect();
                    json!({
                        "workload": w.workload.to_string(),
                        "max_qps": w.search.max_qps,
                        "max_qps_rounds": w.max_qps_rounds,
                        "steps": w.search.steps.iter().map(|s| json!({"offered": s.offered, "achieved": s.achieved, "loss": s.loss})).collect::<Vec<_>>(),
                        "latency_rate": w.latency_rate,
                        "latency_loss": w.latency.loss(),
                        "latency_completed": w.latency.completed,
                        "rcodes": w.latency.rcodes,
                        "p50": w.latency.quantile(0.5),
                        "p99": w.latency.quantile(0.99),
                        "p999": w.latency.quantile(0.999),
                        "cdf": cdf,
                        "cache_cpu_ms_per_1k": w.cache_cpu_ms_per_1k,
                        "knot_cpu_ms_per_1k": w.knot_cpu_ms_per_1k,
                    })
                })
                .collect();
            json!({
                "config": r.config.label(),
                "letter": r.config.letter().to_string(),
                "error": r.error,
                "workloads": workloads,
                "rss": r.rss.as_ref().map(|x| json!({"idle_kib": x.idle_kib, "after_kib": x.after_kib, "names_sent": x.names_sent, "names_answered": x.names_answered})),
                "iperf_pairs": r.datapath.iperf_pairs,
                "bpf_stats_empty_ns": r.datapath.bpf_stats_empty,
                "bpf_stats_ns": r.datapath.bpf_stats.map(|(i, e, ci, ce)| json!({"ingress": i, "egress": e, "ingress_runs": ci, "egress_runs": ce})),
                "test_runs": r.datapath.test_runs.as_ref().map(|t| json!({
                    "ingress_tcp": t.ingress_tcp, "egress_tcp": t.egress_tcp,
                    "ingress_dns_single": t.ingress_dns_single, "egress_dns_single": t.egress_dns_single,
                    "ingress_tcp_single": t.ingress_tcp_single, "egress_tcp_single": t.egress_tcp_single,
                })),
            })
        })
        .collect();
    json!({ "date": date, "configs": configs })
}

fn markdown(
    date: &str,
    machine: &Machine,
    args: &BenchArgs,
    results: &[ConfigResult],
    took: Duration,
) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "# nldns benchmark, {date}\n");
    let _ = writeln!(
        w,
        "Produced by `cargo xtask bench` on the simulated node (docs/testing.md): \
         every packet stayed inside the run's network namespaces. Took {:.0?}.\n",
        took
    );
    let _ = writeln!(w, "## Machine\n");
    let _ = writeln!(w, "- nproc: {}", machine.nproc);
    let _ = writeln!(w, "- kernel: {}", machine.kernel);
    let _ = writeln!(w, "- CPU: {}", machine.cpu);
    let _ = writeln!(w, "- memory: {}", machine.mem);
    let _ = writeln!(
        w,
        "- load average at start: {}, at the end: {} (the machine is shared: other jobs \
         ran alongside, so expect noise of several percent between runs)",
        machine.loadavg, machine.loadavg_end
    );
    let _ = writeln!(w, "- tools: {}\n", machine.tools.join("; "));

    let _ = writeln!(w, "## Configurations\n");
    for r in results {
        let _ = writeln!(
            w,
            "- ({}) **{}**: {}{}",
            r.config.letter(),
            r.config,
            r.config.description(),
            r.error
                .as_ref()
                .map(|e| format!(" — **failed**: `{e}`"))
                .unwrap_or_default()
        );
    }
    let rules: Vec<String> = configs::notrack_rules()
        .iter()
        .map(|r| format!("-A {}", r.join(" ")))
        .collect();
    let _ = writeln!(
        w,
        "\n(b) and (c) put 10.96.0.10/32 on `lo` of the node namespace (no dummy driver in \
         this kernel) and add node-local-dns's raw-table rules:\n\n```\n{}\n```\n\n\
         unbound: 2 threads, no validation, msg/rrset caches 64m/128m; dnsmasq: cache-size \
         150000, dns-forward-max 1000; both forward cluster.local and the reverse zones to \
         kube-dns-uncached (10.96.0.11) and the rest to the outside resolver. nldns runs with \
         the harness's agent flags and its defaults (cache bound: 150,000 entries, 64 MiB). \
         All use the same two knot kube-dns backends (1 UDP worker each).\n",
        rules.join("\n")
    );
    let _ = writeln!(w, "## Workloads\n");
    for wl in &args.workloads {
        let _ = writeln!(w, "- **{wl}**: {}", wl.description());
    }
    let _ = writeln!(
        w,
        "\nIn (d) the mix's outside names (example.org) get REFUSED: the kube-dns backends \
         are plain knot, authoritative for the cluster zones only (CoreDNS would forward \
         them). The caches forward them to the outside resolver."
    );
    let _ = writeln!(
        w,
        "\ndnsperf 2.10 runs in pod 0 (one thread, 16 client ports) against 10.96.0.10. The \
         QPS search: a probe at -Q {} with 500 queries in flight, then rates at falling \
         fractions of what the probe completed ({} s each, at most {} steps, plus one \
         refining step) until less than {}% is lost (1 s timeout). Latency: one run at a \
         fixed {} qps for {} s with per-query latencies (`dnsperf -v`). CPU: utime+stime \
         from /proc/<pid>/stat of the cache process (all threads) and of every knot \
         process, over that run; softirq work (TC programs, netfilter, routing) is not \
         charged to any of them. dnsperf shares the 2 CPUs with the cache: every figure \
         here is for a 2-CPU machine running both ends.\n",
        args.rate_cap,
        args.step_secs,
        args.max_steps,
        MAX_LOSS * 100.0,
        args.latency_qps,
        args.latency_secs
    );

    // Headline.
    let base = Config::Unbound;
    headline_ratios(
        w,
        results,
        args,
        (Config::Nldns, base),
        "Headline: nldns (a) relative to the NOTRACK design (b)",
    );
    headline_ratios(
        w,
        results,
        args,
        (Config::NldnsPodHooks, Config::Nldns),
        "The pods' socket-hook path (e) relative to the TC path (a)",
    );

    let _ = writeln!(
        w,
        "\n## Highest QPS sustained with < {}% loss\n\nMedian of {} rounds (lowest-highest \
         round in brackets).\n",
        MAX_LOSS * 100.0,
        args.rounds
    );
    let _ = write!(w, "| configuration |");
    for wl in &args.workloads {
        let _ = write!(w, " {wl} | ratio to (b) |");
    }
    let _ = writeln!(w);
    let _ = writeln!(w, "|---|{}", "---|---|".repeat(args.workloads.len()));
    for r in results {
        let _ = write!(w, "| ({}) {} |", r.config.letter(), r.config);
        for &wl in &args.workloads {
            let found = find(results, r.config, wl);
            let x = found.map(|x| x.search.max_qps);
            let b = find(results, base, wl).map(|x| x.search.max_qps);
            // The median, and the spread of the rounds behind it.
            let spread = found
                .filter(|f| f.max_qps_rounds.len() > 1)
                .map(|f| {
                    let lo = f.max_qps_rounds.iter().copied().fold(f64::MAX, f64::min);
                    let hi = f.max_qps_rounds.iter().copied().fold(0.0, f64::max);
                    format!(" ({lo:.0}-{hi:.0})")
                })
                .unwrap_or_default();
            let _ = write!(
                w,
                " {}{spread} | {} |",
                x.map_or("-".into(), |v| format!("{v:.0}")),
                fmt_ratio(ratio(x, b))
            );
        }
        let _ = writeln!(w);
    }

    let _ = writeln!(w, "\n## Latency at {} qps offered (ms)\n", args.latency_qps);
    let _ = writeln!(
        w,
        "| configuration | workload | p50 | p99 | p99.9 | p99 ratio to (b) | completed | lost | response codes (first round) |"
    );
    let _ = writeln!(w, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in results {
        for x in &r.workloads {
            let b = find(results, base, x.workload).and_then(|b| b.latency.quantile(0.99));
            let flag = if x.latency.loss() >= MAX_LOSS {
                " (not sustained)"
            } else {
                ""
            };
            let _ = writeln!(
                w,
                "| ({}) {} | {} | {} | {} | {} | {} | {} | {:.3}%{flag} | {} |",
                r.config.letter(),
                r.config,
                x.workload,
                ms(x.latency.quantile(0.5)),
                ms(x.latency.quantile(0.99)),
                ms(x.latency.quantile(0.999)),
                fmt_ratio(ratio(x.latency.quantile(0.99), b)),
                x.latency.completed,
                x.latency.loss() * 100.0,
                x.latency.rcodes
            );
        }
    }

    let _ = writeln!(
        w,
        "\n## CPU time per 1000 queries (ms), during the {} qps run\n",
        args.latency_qps
    );
    let _ = writeln!(
        w,
        "| configuration | workload | cache process | knot (backends + outside) |"
    );
    let _ = writeln!(w, "| --- | --- | --- | --- |");
    for r in results {
        for x in &r.workloads {
            let _ = writeln!(
                w,
                "| ({}) {} | {} | {} | {:.1} |",
                r.config.letter(),
                r.config,
                x.workload,
                x.cache_cpu_ms_per_1k
                    .map_or("- (no cache)".into(), |v| format!("{v:.1}")),
                x.knot_cpu_ms_per_1k
            );
        }
    }

    let _ = writeln!(
        w,
        "\n## RSS after {} distinct names (VmRSS of the cache process)\n",
        args.rss_names
    );
    let _ = writeln!(
        w,
        "| configuration | idle | after | names answered | ratio to (b) |"
    );
    let _ = writeln!(w, "| --- | --- | --- | --- | --- |");
    let b_rss = results
        .iter()
        .find(|r| r.config == base)
        .and_then(|r| r.rss.as_ref())
        .map(|x| x.after_kib as f64);
    for r in results {
        if let Some(x) = &r.rss {
            let _ = writeln!(
                w,
                "| ({}) {} | {:.1} MiB | {:.1} MiB | {} / {} | {} |",
                r.config.letter(),
                r.config,
                x.idle_kib as f64 / 1024.0,
                x.after_kib as f64 / 1024.0,
                x.names_answered,
                x.names_sent,
                fmt_ratio(ratio(Some(x.after_kib as f64), b_rss))
            );
        }
    }
    let _ = writeln!(
        w,
        "\nAll three were sized to hold every name: nldns's default cache bound is 150,000 \
         entries (the `cache.maxEntries` key of `--config` changes it), unbound's and \
         dnsmasq's are set above."
    );

    // Datapath.
    let with = results.iter().find(|r| r.config == Config::Nldns);
    let pairs: Vec<(f64, f64)> = with.map_or(Vec::new(), |r| r.datapath.iperf_pairs.clone());
    let _ = writeln!(w, "\n## Datapath overhead on non-DNS traffic\n");
    let _ = writeln!(
        w,
        "iperf3 TCP, pod 0 -> pod 1 through the node, {} s per run, alternating without \
         nldns and with an agent attached, in the same node ({} pairs per round):\n",
        args.iperf_secs, args.iperf_pairs
    );
    let _ = writeln!(w, "| pair | without (Gbit/s) | with (Gbit/s) | change |");
    let _ = writeln!(w, "| --- | --- | --- | --- |");
    for (i, (without, with)) in pairs.iter().enumerate() {
        let _ = writeln!(
            w,
            "| {} | {without:.2} | {with:.2} | {:+.1}% |",
            i + 1,
            (with / without - 1.0) * 100.0
        );
    }
    let pair_changes: Vec<f64> = pairs
        .iter()
        .map(|(without, with)| (with / without - 1.0) * 100.0)
        .collect();
    let change = (!pair_changes.is_empty()).then(|| super::median(&pair_changes));
    let means = (
        mean(&pairs.iter().map(|p| p.0).collect::<Vec<_>>()),
        mean(&pairs.iter().map(|p| p.1).collect::<Vec<_>>()),
    );
    let _ = writeln!(
        w,
        "\nMedian change of the pairs: {}; means {} without, {} with.\n",
        change.map_or("-".into(), |c| format!("{c:+.1}%")),
        means.0.map_or("-".into(), |g| format!("{g:.2} Gbit/s")),
        means.1.map_or("-".into(), |g| format!("{g:.2} Gbit/s")),
    );
    let stats = with.and_then(|r| r.datapath.bpf_stats);
    let empty = with.and_then(|r| r.datapath.bpf_stats_empty);
    if let Some((i, e, ci, ce)) = stats {
        let _ = writeln!(
            w,
            "bpf_stats during one more iperf3 run (kernel.bpf_stats_enabled=1 only for that \
             run, then restored): nldns_ingress {i:.1} ns/run over {ci} runs, nldns_egress \
             {e:.1} ns/run over {ce} runs. A program that only returns TC_ACT_UNSPEC, \
             attached to the same hooks of both pods' veths for the same run, took {} ns/run: \
             that much is the TCX hook and the stats' own clock reads. A packet from one pod \
             to another passes one ingress and one egress program: {:.1} ns per non-DNS \
             packet as measured, {} net of the empty program's cost. (Runs are per skb; with \
             GRO/TSO on veth an skb may carry several segments.) Throughput of that run: {}.\n",
            empty.map_or("-".into(), |x| format!("{x:.1}")),
            i + e,
            empty.map_or("-".into(), |x| format!("{:.1} ns", i + e - 2.0 * x)),
            with.and_then(|r| r.datapath.bpf_stats_gbps)
                .map_or("-".into(), |g| format!("{g:.2} Gbit/s"))
        );
    }
    if let Some(t) = with.and_then(|r| r.datapath.test_runs.as_ref()) {
        let _ = writeln!(
            w,
            "BPF_PROG_TEST_RUN on the loaded programs (ns per run, as the kernel timed it):\n\n\
             | frame | nldns_ingress | nldns_egress |\n| --- | --- | --- |\n\
             | TCP segment, repeat={} in one call | {} | {} |\n\
             | TCP segment, one run per call (x20000) | {:.1} | {:.1} |\n\
             | DNS query to 10.96.0.10:53 (ingress) / reply from the intercept endpoint (egress), one run per call (x20000) | {:.1} | {:.1} |\n\n\
             One run per call is needed for DNS frames because the kernel repeats a run on \
             the same, already rewritten buffer; its figures include the kernel's timer \
             overhead, which the TCP row of the same kind shows. Verdicts: {}.\n",
            args.test_run_repeat,
            t.ingress_tcp,
            t.egress_tcp,
            t.ingress_tcp_single,
            t.egress_tcp_single,
            t.ingress_dns_single,
            t.egress_dns_single,
            t.verdicts
        );
    }

    if let Some(profile) = with.and_then(|r| r.datapath.profile.as_ref()) {
        let _ = writeln!(
            w,
            "Where the datapath's time goes: `perf record -a` during one more iperf3 run with \
             nldns attached, `perf report --comms iperf3` (the iperf3 processes' samples, \
             where the veth softirq work runs): the top entries (>= 1%), then the nldns \
             programs' own lines (`bpf_prog_<tag>_nldns_*`):\n\n\
             ```\n{profile}\n```\n"
        );
    }

    // Targets.
    let _ = writeln!(w, "## Targets\n");
    let hits_a = find(results, Config::Nldns, Workload::Hits);
    let hits_b = find(results, base, Workload::Hits);
    let qps_ratio = ratio(
        hits_a.map(|x| x.search.max_qps),
        hits_b.map(|x| x.search.max_qps),
    );
    let _ = writeln!(
        w,
        "- cache-hit QPS >= 2x (b): {} ({})",
        fmt_ratio(qps_ratio),
        verdict(qps_ratio, 2.0, true)
    );
    let p99_ratio = ratio(
        hits_a.and_then(|x| x.latency.quantile(0.99)),
        hits_b.and_then(|x| x.latency.quantile(0.99)),
    );
    let _ = writeln!(
        w,
        "- cache-hit p99 <= 0.5x (b): {} ({})",
        fmt_ratio(p99_ratio),
        verdict(p99_ratio, 0.5, false)
    );
    let per_packet = stats.map(|(i, e, _, _)| i + e - 2.0 * empty.unwrap_or(0.0));
    let _ = writeln!(
        w,
        "- <= 30 ns per non-DNS packet (bpf_stats, ingress + egress, net of the empty \
         program): {} ({}; as measured: {})",
        per_packet.map_or("-".into(), |p| format!("{p:.1} ns")),
        verdict(per_packet, 30.0, false),
        stats.map_or("-".into(), |(i, e, _, _)| format!(
            "ingress {i:.1} + egress {e:.1} ns"
        ))
    );
    let spread = (!pair_changes.is_empty()).then(|| {
        let lo = pair_changes.iter().copied().fold(f64::MAX, f64::min);
        let hi = pair_changes.iter().copied().fold(f64::MIN, f64::max);
        format!("; pairs ranged {lo:+.1}% to {hi:+.1}%")
    });
    let share = with.and_then(|r| r.datapath.programs_share);
    let _ = writeln!(
        w,
        "- throughput within 2% (median of the pairs): {} ({}{}{})",
        change.map_or("-".into(), |c| format!("{c:+.1}%")),
        verdict(change.map(f64::abs), 2.0, false),
        spread.unwrap_or_default(),
        share
            .map(|p| format!(
                "; the nldns programs took {p:.2}% of the iperf3 processes' CPU samples"
            ))
            .unwrap_or_default()
    );
    let rss_a = with
        .and_then(|r| r.rss.as_ref())
        .map(|x| x.after_kib as f64 / 1024.0);
    let _ = writeln!(
        w,
        "- RSS <= 32 MiB at {} names: {} ({})",
        args.rss_names,
        rss_a.map_or("-".into(), |m| format!("{m:.1} MiB")),
        verdict(rss_a, 32.0, false)
    );

    if let Some(profile) = with.and_then(|r| r.profile.as_ref()) {
        let _ = writeln!(
            w,
            "\n## Where nldns's time goes under cache hits\n\n`perf record -F 999 -g -p <agent>` \
             while pod 0 sends hits at (a)'s highest sustained rate; `perf report --no-children \
             --sort dso,symbol`, entries >= 1%:\n\n```\n{profile}\n```"
        );
    }

    let _ = writeln!(w, "\n## Search steps\n");
    let _ = writeln!(
        w,
        "| configuration | workload | offered -> completed qps (loss) |"
    );
    let _ = writeln!(w, "| --- | --- | --- |");
    for r in results {
        for x in &r.workloads {
            let steps: Vec<String> = x
                .search
                .steps
                .iter()
                .map(|s| {
                    format!(
                        "{} -> {:.0} ({:.2}%)",
                        s.offered,
                        s.achieved,
                        s.loss * 100.0
                    )
                })
                .collect();
            let _ = writeln!(
                w,
                "| ({}) {} | {} | {} |",
                r.config.letter(),
                r.config,
                x.workload,
                steps.join("; ")
            );
        }
    }
    let _ = writeln!(
        w,
        "\nThe first step of each row is the probe (unbounded rate, 500 in flight); its loss \
         is expected. Plots: `{date}-qps.png`, `{date}-latency-cdf.png`."
    );
    s
}

/// Draws `<date>-qps.png` and `<date>-latency-cdf.png` next to the report.
pub fn plot(root: &Path, out: &Path, md: &Path) -> Result<()> {
    let venv = super::target_dir(root).join("bench-venv");
    let python = venv.join("bin").join("python3");
    if !python.is_file() {
        cmd::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    let has_matplotlib = Command::new(&python)
        .args(["-c", "import matplotlib"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_matplotlib {
        cmd::run(Command::new(&python).args(["-m", "pip", "install", "-q", "matplotlib"]))?;
    }
    let script = venv.join("nldns-bench-plot.py");
    std::fs::write(&script, include_str!("plot.py")).context("writing the plot script")?;
    let json = md.with_extension("json");
    cmd::run(Command::new(&python).arg(&script).arg(&json).arg(out))
}

/// A section of ratios `pair.0 / pair.1` per workload (QPS, latency quantiles, CPU per
/// query), skipped when either configuration was not run.
fn headline_ratios(
    w: &mut String,
    results: &[ConfigResult],
    args: &BenchArgs,
    pair: (Config, Config),
    title: &str,
) {
    let (a_config, b_config) = pair;
    if !results.iter().any(|r| r.config == a_config)
        || !results.iter().any(|r| r.config == b_config)
    {
        return;
    }
    let (la, lb) = (a_config.letter(), b_config.letter());
    let _ = writeln!(w, "## {title}\n");
    let _ = writeln!(
        w,
        "| workload | QPS ({la})/({lb}) | p50 ({la})/({lb}) | p99 ({la})/({lb}) | p99.9 ({la})/({lb}) | cache CPU per query ({la})/({lb}) |"
    );
    let _ = writeln!(w, "| --- | --- | --- | --- | --- | --- |");
    for &wl in &args.workloads {
        let (a, b) = (find(results, a_config, wl), find(results, b_config, wl));
        let q = |x: Option<&WorkloadResult>, p: f64| x.and_then(|x| x.latency.quantile(p));
        let _ = writeln!(
            w,
            "| {wl} | {} | {} | {} | {} | {} |",
            fmt_ratio(ratio(
                a.map(|x| x.search.max_qps),
                b.map(|x| x.search.max_qps)
            )),
            fmt_ratio(ratio(q(a, 0.5), q(b, 0.5))),
            fmt_ratio(ratio(q(a, 0.99), q(b, 0.99))),
            fmt_ratio(ratio(q(a, 0.999), q(b, 0.999))),
            fmt_ratio(ratio(
                a.and_then(|x| x.cache_cpu_ms_per_1k),
                b.and_then(|x| x.cache_cpu_ms_per_1k)
            )),
        );
    }
}
