//! dnsperf against addresses inside the simulated node, for benchmarks and load tests.
//!
//! Rule 5 of docs/testing.md: a load generator is bounded in time and rate and stops by
//! itself. [`DnsperfOptions`] always passes a time limit (`-l`, at most
//! [`MAX_DURATION`]) and a rate limit (`-Q`), and the process is killed if it overruns.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::dns_client::Transport;
use crate::netns::Netns;

/// The longest run the harness allows.
pub const MAX_DURATION: Duration = Duration::from_secs(120);

/// One dnsperf run.
#[derive(Debug, Clone)]
pub struct DnsperfOptions {
    pub server: IpAddr,
    /// (name, type) pairs; dnsperf cycles through them.
    pub queries: Vec<(String, String)>,
    pub duration: Duration,
    pub max_qps: u32,
    pub clients: u32,
    pub transport: Transport,
}

impl DnsperfOptions {
    /// 5 s at most 2000 queries per second, 4 clients, UDP.
    pub fn new(server: IpAddr, queries: &[(&str, &str)]) -> Self {
        DnsperfOptions {
            server,
            queries: queries
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect(),
            duration: Duration::from_secs(5),
            max_qps: 2000,
            clients: 4,
            transport: Transport::Udp,
        }
    }
}

/// What dnsperf reported.
#[derive(Debug, Clone, Default)]
pub struct DnsperfReport {
    pub sent: u64,
    pub completed: u64,
    pub lost: u64,
    pub qps: f64,
    pub avg_latency_s: f64,
    pub max_latency_s: f64,
    /// e.g. "NOERROR 1000 (100.00%)".
    pub response_codes: String,
    pub raw: String,
}

/// Runs dnsperf inside `netns`, writing its query file under `workdir`.
pub fn run(netns: &Netns, workdir: &Path, options: &DnsperfOptions) -> Result<DnsperfReport> {
    run_in(netns, None, workdir, options)
}

/// [`run`], with dnsperf started inside `cgroup` if given (a pod process as kubelet
/// places it, which the pods' socket hooks see).
pub fn run_in(
    netns: &Netns,
    cgroup: Option<&Path>,
    workdir: &Path,
    options: &DnsperfOptions,
) -> Result<DnsperfReport> {
    anyhow::ensure!(
        !options.queries.is_empty(),
        "dnsperf needs at least one query"
    );
    anyhow::ensure!(
        options.duration <= MAX_DURATION,
        "dnsperf runs are capped at {MAX_DURATION:?}"
    );
    anyhow::ensure!(options.max_qps > 0, "dnsperf needs a rate limit");
    let mut data = String::new();
    for (name, rtype) in &options.queries {
        let _ = writeln!(data, "{name} {rtype}");
    }
    let file = workdir.join(format!("dnsperf-{}.txt", rand::random::<u32>()));
    std::fs::write(&file, data).context("writing the dnsperf query file")?;
    let seconds = options.duration.as_secs().max(1).to_string();
    let args = [
        "-s".to_string(),
        options.server.to_string(),
        "-d".into(),
        file.display().to_string(),
        "-l".into(),
        seconds,
        "-Q".into(),
        options.max_qps.to_string(),
        "-c".into(),
        options.clients.to_string(),
        "-t".into(),
        "2".into(),
        "-m".into(),
        if options.transport == Transport::Tcp {
            "tcp"
        } else {
            "udp"
        }
        .into(),
    ];
    let timeout = options.duration + Duration::from_secs(30);
    let output = match cgroup {
        None => netns.exec_output("dnsperf", &args, timeout),
        Some(cgroup) => {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            crate::cgroup::exec_in(netns, cgroup, "dnsperf", &args, timeout)
        }
    };
    let _ = std::fs::remove_file(&file);
    let output = output?;
    let raw = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(
        output.status.success(),
        "dnsperf failed ({}): {}{raw}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(parse(&raw))
}

/// Parses dnsperf's "Statistics:" block.
pub fn parse(raw: &str) -> DnsperfReport {
    let mut report = DnsperfReport {
        raw: raw.to_string(),
        ..Default::default()
    };
    let first_number = |text: &str| -> Option<f64> { text.split_whitespace().next()?.parse().ok() };
    for line in raw.lines().map(str::trim) {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Queries sent" => report.sent = first_number(value).unwrap_or(0.0) as u64,
            "Queries completed" => report.completed = first_number(value).unwrap_or(0.0) as u64,
            "Queries lost" => report.lost = first_number(value).unwrap_or(0.0) as u64,
            "Queries per second" => report.qps = first_number(value).unwrap_or(0.0),
            "Response codes" => report.response_codes = value.to_string(),
            "Average Latency (s)" => {
                report.avg_latency_s = first_number(value).unwrap_or(0.0);
                report.max_latency_s = value
                    .split("max ")
                    .nth(1)
                    .and_then(|rest| rest.trim_end_matches(')').parse().ok())
                    .unwrap_or(0.0);
            }
            _ => {}
        }
    }
    report
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_statistics() {
        let raw = "Statistics:\n\n  Queries sent:         1000\n  Queries completed:    998 (99.80%)\n  \
                   Queries lost:         2 (0.20%)\n\n  Response codes:       NOERROR 998 (100.00%)\n  \
                   Run time (s):         1.000\n  Queries per second:   997.9\n\n  \
                   Average Latency (s):  0.000123 (min 0.000045, max 0.001234)\n";
        let report = super::parse(raw);
        assert_eq!((report.sent, report.completed, report.lost), (1000, 998, 2));
        assert!((report.qps - 997.9).abs() < 1e-9);
        assert!((report.avg_latency_s - 0.000123).abs() < 1e-12);
        assert!((report.max_latency_s - 0.001234).abs() < 1e-12);
        assert!(report.response_codes.starts_with("NOERROR 998"));
    }
}
