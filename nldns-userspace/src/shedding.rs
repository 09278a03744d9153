//! The agent's limit and shedding counters for `nldns status`: per-source quota rejects,
//! the upstream rate bound, the node-wide overload bounds, the kernel's drops at the
//! serving sockets and the miss path's gauges. They live in the running agent, not in
//! the kernel like the rest of `status`, so they are read from its /metrics: through its
//! probe socket when one is given (exactly this pod's agent, even while a surge upgrade
//! runs two), else from its metrics address (during a surge, either agent may answer).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// Where the agent's /metrics is read.
#[derive(Clone, Debug)]
pub enum MetricsSource {
    ProbeSocket(PathBuf),
    Address(SocketAddr),
}

impl std::fmt::Display for MetricsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsSource::ProbeSocket(path) => write!(f, "probe socket {}", path.display()),
            MetricsSource::Address(addr) => write!(f, "{addr}"),
        }
    }
}

/// The series shown, with what `status` calls them.
const SERIES: [(&str, &str); 7] = [
    (
        "nldns_source_quota_rejects_total",
        "misses shed: client over its per-source quota",
    ),
    (
        "nldns_upstream_rate_limited_total",
        "misses shed: node's upstream rate bound",
    ),
    (
        "nldns_upstream_overload_total",
        "misses shed: node-wide in-flight or waiting bound",
    ),
    (
        "nldns_udp_receive_drops_total",
        "queries dropped by the kernel: socket buffer full",
    ),
    ("nldns_stale_answers_total", "stale answers served"),
    (
        "nldns_upstream_in_flight",
        "upstream exchanges in flight now",
    ),
    (
        "nldns_waiting_queries",
        "client queries waiting for upstream now",
    ),
];

/// What `status` shows (and `status --json` carries as `limits`).
#[derive(Debug, Serialize)]
pub struct Limits {
    /// Where they were read.
    pub source: String,
    /// Series name to value; empty when the agent did not answer.
    pub counters: BTreeMap<String, f64>,
    /// Why nothing could be read (no agent running, another address).
    pub error: Option<String>,
}

/// Reads the counters from the agent at `source`, waiting at most `timeout`.
pub fn read(source: &MetricsSource, timeout: Duration) -> Limits {
    let text = match source {
        MetricsSource::ProbeSocket(path) => UnixStream::connect(path)
            .with_context(|| format!("connecting to {}", path.display()))
            .and_then(|s| {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                get_metrics(s)
            }),
        MetricsSource::Address(addr) => TcpStream::connect_timeout(addr, timeout)
            .with_context(|| format!("connecting to {addr}"))
            .and_then(|s| {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                get_metrics(s)
            }),
    };
    match text {
        Ok(text) => Limits {
            source: source.to_string(),
            counters: parse(&text),
            error: None,
        },
        Err(error) => Limits {
            source: source.to_string(),
            counters: BTreeMap::new(),
            error: Some(format!("{error:#}")),
        },
    }
}

/// `GET /metrics` over `stream` (HTTP/1.0: the agent closes after the answer); the body.
fn get_metrics(mut stream: impl Read + Write) -> Result<String> {
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: nldns\r\n\r\n")?;
    let mut response = Vec::new();
    // The whole exposition is tens of KiB; a bound keeps a wrong peer from feeding us.
    stream.take(4 << 20).read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        bail!("no HTTP answer");
    };
    match head.split_whitespace().nth(1) {
        Some("200") => Ok(body.to_string()),
        code => bail!("/metrics answered {code:?}"),
    }
}

/// The [`SERIES`] found in a Prometheus text exposition (unlabelled samples).
fn parse(text: &str) -> BTreeMap<String, f64> {
    SERIES
        .iter()
        .filter_map(|(name, _)| {
            let value = text.lines().find_map(|line| {
                let value = line.strip_prefix(name)?.strip_prefix(' ')?;
                value.trim().parse::<f64>().ok()
            })?;
            Some((name.to_string(), value))
        })
        .collect()
}

/// The human-readable section of `nldns status`.
pub fn print(limits: &Limits) {
    if let Some(error) = &limits.error {
        println!(
            "limits: no agent answered at {} ({error}); see --probe-socket / --metrics-addr",
            limits.source
        );
        return;
    }
    println!("limits (agent at {}):", limits.source);
    for (name, label) in SERIES {
        if let Some(value) = limits.counters.get(name) {
            println!("  {label:<50} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_limit_series_from_an_exposition() {
        let text = "# HELP nldns_source_quota_rejects Cache misses ...\n\
                    # TYPE nldns_source_quota_rejects counter\n\
                    nldns_source_quota_rejects_total 630400\n\
                    nldns_source_quota_rejects_total_extra 1\n\
                    nldns_upstream_in_flight 12\n\
                    nldns_requests_total{qtype=\"A\",rcode=\"SERVFAIL\",protocol=\"udp\"} 7\n\
                    # EOF\n";
        assert_eq!(
            parse(text),
            BTreeMap::from([
                ("nldns_source_quota_rejects_total".to_string(), 630400.0),
                ("nldns_upstream_in_flight".to_string(), 12.0),
            ])
        );
    }

    #[test]
    fn an_http_answer_other_than_200_is_an_error() {
        // A real socket pair: the far end answers, then closes as the agent does.
        let answer = |text: &'static str| {
            let (ours, mut theirs) = UnixStream::pair().unwrap();
            let server = std::thread::spawn(move || {
                let mut request = [0u8; 256];
                let n = theirs.read(&mut request).unwrap();
                assert!(request[..n].starts_with(b"GET /metrics HTTP/1.0\r\n"));
                theirs.write_all(text.as_bytes()).unwrap();
            });
            let got = get_metrics(ours);
            server.join().unwrap();
            got
        };
        assert_eq!(
            answer("HTTP/1.1 200 OK\r\nx: y\r\n\r\nnldns_waiting_queries 3\n").unwrap(),
            "nldns_waiting_queries 3\n"
        );
        assert!(answer("HTTP/1.1 404 Not Found\r\n\r\nnot found\n").is_err());
        assert!(answer("garbage").is_err());
    }
}
