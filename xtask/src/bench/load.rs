//! dnsperf runs from pod 0 to the kube-dns ClusterIP, and the stepped search for the
//! highest rate a configuration sustains.
//!
//! Every run is bounded (docs/testing.md, rule 5): `-l` seconds, `-Q` queries per
//! second, and a kill deadline.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result};
use nldns_tests::addresses::KUBE_DNS_V4;
use nldns_tests::SimNode;

use super::workload::Workload;

/// "Sustained" means less than this share of queries lost.
pub const MAX_LOSS: f64 = 0.001;
/// Source ports dnsperf spreads its queries over (kube-proxy pins each flow to one
/// backend, so (d) needs several to use both).
const CLIENTS: &str = "16";

/// One dnsperf run.
#[derive(Debug, Clone)]
pub struct Load {
    pub duration: Duration,
    /// Offered queries per second (dnsperf -Q).
    pub rate: u32,
    /// Queries in flight at most (dnsperf -q).
    pub outstanding: u32,
    /// Record every query's latency (dnsperf -v); costs dnsperf some speed.
    pub latencies: bool,
    /// Stop after one pass through the file (dnsperf -n 1).
    pub once: bool,
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    pub sent: u64,
    pub completed: u64,
    pub lost: u64,
    /// Completed queries per second.
    pub qps: f64,
    pub rcodes: String,
    /// Seconds, sorted, when [`Load::latencies`] was set.
    pub latencies: Vec<f64>,
}

impl LoadResult {
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            1.0
        } else {
            self.lost as f64 / self.sent as f64
        }
    }

    /// The `q` quantile (0..=1) of the recorded latencies, in seconds.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        quantile(&self.latencies, q)
    }
}

pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Runs dnsperf in pod 0 with `lines` as its query file.
pub fn dnsperf(node: &SimNode, lines: &[String], load: &Load) -> Result<LoadResult> {
    anyhow::ensure!(!lines.is_empty(), "dnsperf needs queries");
    anyhow::ensure!(
        load.duration <= nldns_tests::perf::MAX_DURATION,
        "runs are capped at {:?}",
        nldns_tests::perf::MAX_DURATION
    );
    let mut data = String::with_capacity(lines.len() * 40);
    for line in lines {
        let _ = writeln!(data, "{line}");
    }
    let file = node.workdir().join("bench-queries.txt");
    std::fs::write(&file, data).context("writing the dnsperf query file")?;
    let mut args: Vec<String> = [
        "-s",
        &KUBE_DNS_V4.to_string(),
        "-d",
        &file.display().to_string(),
        "-l",
        &load.duration.as_secs().max(1).to_string(),
        "-Q",
        &load.rate.max(1).to_string(),
        "-q",
        &load.outstanding.to_string(),
        "-c",
        CLIENTS,
        "-t",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if load.once {
        args.extend(["-n".into(), "1".into()]);
    }
    if load.latencies {
        args.push("-v".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = node.exec_in_pod(0, "dnsperf", &args, load.duration + Duration::from_secs(30));
    let _ = std::fs::remove_file(&file);
    let output = output?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "dnsperf failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report = nldns_tests::perf::parse(&stdout);
    let mut latencies: Vec<f64> = if load.latencies {
        parse_latencies(&stdout)
    } else {
        Vec::new()
    };
    latencies.sort_by(f64::total_cmp);
    Ok(LoadResult {
        sent: report.sent,
        completed: report.completed,
        lost: report.lost,
        qps: report.qps,
        rcodes: report.response_codes,
        latencies,
    })
}

/// dnsperf -v prints `> RCODE name type latency` per answered query.
fn parse_latencies(stdout: &str) -> Vec<f64> {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("> "))
        .filter_map(|rest| rest.split_whitespace().nth(3)?.parse().ok())
        .collect()
}

/// One rate tried by [`search`].
#[derive(Debug, Clone)]
pub struct Step {
    pub offered: u32,
    pub achieved: f64,
    pub loss: f64,
}

/// The outcome of a stepped search.
#[derive(Debug, Clone, Default)]
pub struct Search {
    /// Completed QPS of the highest passing step (0 if none passed).
    pub max_qps: f64,
    pub steps: Vec<Step>,
}

/// Search bounds.
#[derive(Debug, Clone)]
pub struct SearchOptions {
    pub step: Duration,
    /// The unbounded probe's -Q (a ceiling, never reached on this machine).
    pub rate_cap: u32,
    /// Rates tried at most after the probe.
    pub max_steps: usize,
}

/// Finds the highest rate sustained with less than [`MAX_LOSS`] lost: a probe at the cap
/// with many queries in flight shows what the configuration completes at best; then rates
/// at falling fractions of that are tried until one passes, and one step between it and
/// the failed one above refines it. Bounded: 1 + `max_steps` runs of `step` each.
pub fn search(
    node: &SimNode,
    workload: Workload,
    options: &SearchOptions,
    tag: &mut u32,
) -> Result<Search> {
    let secs = options.step.as_secs().max(1) as usize;
    let mut run = |rate: u32, outstanding: u32| -> Result<LoadResult> {
        *tag += 1;
        // Enough fresh names for the run at the rate tried (plus slack), capped.
        let n = (rate as usize).min(80_000) * secs * 11 / 10;
        let lines = workload.lines(*tag, n.max(1000));
        dnsperf(
            node,
            &lines,
            &Load {
                duration: options.step,
                rate,
                outstanding,
                latencies: false,
                once: false,
            },
        )
    };
    let probe = run(options.rate_cap, 500)?;
    let mut result = Search::default();
    result.steps.push(Step {
        offered: options.rate_cap,
        achieved: probe.qps,
        loss: probe.loss(),
    });
    let base = probe.qps.max(100.0);
    let mut failed_above: Option<f64> = None;
    let mut fraction = 1.0;
    for _ in 0..options.max_steps {
        let rate = (base * fraction) as u32;
        let r = run(rate, 200)?;
        let pass = r.loss() < MAX_LOSS;
        result.steps.push(Step {
            offered: rate,
            achieved: r.qps,
            loss: r.loss(),
        });
        if pass {
            result.max_qps = result.max_qps.max(r.qps);
            match failed_above {
                // Refine once between the passing and the failing fraction.
                Some(above) if above - fraction > 0.06 => {
                    let mid = (above + fraction) / 2.0;
                    let rate = (base * mid) as u32;
                    let r = run(rate, 200)?;
                    result.steps.push(Step {
                        offered: rate,
                        achieved: r.qps,
                        loss: r.loss(),
                    });
                    if r.loss() < MAX_LOSS {
                        result.max_qps = result.max_qps.max(r.qps);
                    }
                }
                _ => {}
            }
            break;
        }
        failed_above = Some(fraction);
        fraction *= if fraction > 0.75 { 0.85 } else { 0.75 };
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    #[test]
    fn latencies_from_verbose_output() {
        let out =
            "[Status] x\n> NOERROR a.test A 0.000120\n> NXDOMAIN b.test AAAA 0.002\n> T c.test A\n";
        assert_eq!(super::parse_latencies(out), [0.000120, 0.002]);
    }

    #[test]
    fn quantiles() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(super::quantile(&v, 0.5), Some(500.0));
        assert_eq!(super::quantile(&v, 0.99), Some(990.0));
        assert_eq!(super::quantile(&v, 0.999), Some(999.0));
        assert_eq!(super::quantile(&[], 0.5), None);
    }
}
