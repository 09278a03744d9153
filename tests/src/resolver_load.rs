//! A steady query load from several pods that judges each query the way a stub resolver
//! would (glibc with `options timeout:1 attempts:2`): a try that gets no usable answer
//! within the timeout is retried once, and the query fails only if both tries fail.
//!
//! The fault and upgrade tests use it: a query in flight at the moment an agent is killed
//! may be lost, but the client's normal retry must then succeed. Both numbers are kept:
//! raw first-try failures (what a client without retries would see) and failures after
//! the retry.
//!
//! Bounded: each pod's thread sends one query per interval and stops on
//! [`ResolverLoad::stop`] or after `max_duration`, whichever comes first.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::dns_client::{self, QueryOptions};
use crate::node::SimNode;

/// What each pod asks, how often and for how long at most.
#[derive(Debug, Clone)]
pub struct ResolverLoadOptions {
    /// Query `i` goes to `servers[i % len]` (port 53)...
    pub servers: Vec<IpAddr>,
    /// ...for `names[i % len]`. Names that exist, so a usable answer is NOERROR with data.
    pub names: Vec<(String, RecordType)>,
    /// The timeout of each try (glibc's `timeout:`).
    pub timeout: Duration,
    pub interval: Duration,
    pub max_duration: Duration,
    pub query: QueryOptions,
}

impl ResolverLoadOptions {
    /// UDP, 1 s per try, one query per pod every 20 ms, at most 60 s.
    pub fn new(servers: Vec<IpAddr>, names: Vec<(String, RecordType)>) -> Self {
        ResolverLoadOptions {
            servers,
            names,
            timeout: Duration::from_secs(1),
            interval: Duration::from_millis(20),
            max_duration: Duration::from_secs(60),
            query: QueryOptions::default(),
        }
    }
}

/// One query as the resolver saw it.
#[derive(Debug, Clone)]
pub struct ResolvedQuery {
    pub pod: usize,
    /// When the first try was sent.
    pub sent: Instant,
    /// None if the first try got a usable answer, else what went wrong.
    pub first_error: Option<String>,
    /// Only when the first try failed: None if the retry got a usable answer.
    pub retry_error: Option<String>,
    /// When the retry was sent, if there was one.
    pub retry_sent: Option<Instant>,
    /// From the first send to the usable answer (or to giving up).
    pub latency: Duration,
    /// How long the first try took: far beyond the timeout means the client itself was
    /// not scheduled in time (a busy machine), not that the answer was late.
    pub first_took: Duration,
}

impl ResolvedQuery {
    pub fn first_try_failed(&self) -> bool {
        self.first_error.is_some()
    }

    /// Both tries failed: an application would have seen this one fail.
    pub fn failed(&self) -> bool {
        self.first_error.is_some() && self.retry_error.is_some()
    }
}

/// Everything the load saw, all pods together, in send order.
#[derive(Debug, Clone, Default)]
pub struct ResolverLoadReport {
    pub queries: Vec<ResolvedQuery>,
}

impl ResolverLoadReport {
    pub fn sent(&self) -> usize {
        self.queries.len()
    }

    /// Queries with a usable answer (after the retry if one was needed).
    pub fn answered(&self) -> usize {
        self.queries.iter().filter(|q| !q.failed()).count()
    }

    pub fn failed(&self) -> Vec<&ResolvedQuery> {
        self.queries.iter().filter(|q| q.failed()).collect()
    }

    pub fn first_try_failures(&self) -> Vec<&ResolvedQuery> {
        self.queries
            .iter()
            .filter(|q| q.first_try_failed())
            .collect()
    }

    /// One line for the test's output.
    pub fn summary(&self) -> String {
        format!(
            "sent {}, answered {}, failed {} (after one retry); raw first-try failures {}",
            self.sent(),
            self.answered(),
            self.failed().len(),
            self.first_try_failures().len(),
        )
    }

    /// The latency at quantile `p` (0..=1) over every query; zero without any.
    pub fn latency_quantile(&self, p: f64) -> Duration {
        quantile(self.queries.iter().map(|q| q.latency).collect(), p)
    }

    /// Prints the summary, the latency quantiles and the errors, under `what`.
    pub fn print(&self, what: &str) {
        println!(
            "{what}: {}; latency p50 {:?} p99 {:?} max {:?}",
            self.summary(),
            self.latency_quantile(0.5),
            self.latency_quantile(0.99),
            self.latency_quantile(1.0),
        );
        for (error, n) in self.error_kinds() {
            println!("  {n:>5} x {error}");
        }
    }

    /// The distinct errors of the failed tries, with counts, for failure messages.
    pub fn error_kinds(&self) -> Vec<(String, usize)> {
        let mut kinds: Vec<(String, usize)> = Vec::new();
        for error in self
            .queries
            .iter()
            .flat_map(|q| [q.first_error.as_ref(), q.retry_error.as_ref()])
            .flatten()
        {
            match kinds.iter_mut().find(|(k, _)| k == error) {
                Some((_, n)) => *n += 1,
                None => kinds.push((error.clone(), 1)),
            }
        }
        kinds
    }
}

/// A running load: one thread per pod.
#[derive(Debug)]
pub struct ResolverLoad {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<ResolverLoadReport>>,
    threads: Vec<JoinHandle<()>>,
}

impl ResolverLoad {
    /// Starts one query thread inside each of `pods`.
    pub fn start(node: &SimNode, pods: &[usize], options: ResolverLoadOptions) -> Result<Self> {
        anyhow::ensure!(
            !options.servers.is_empty() && !options.names.is_empty(),
            "a load needs servers and names"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(ResolverLoadReport::default()));
        let mut load = ResolverLoad {
            stop: stop.clone(),
            report: report.clone(),
            threads: Vec::new(),
        };
        for &pod in pods {
            let (stop, report, options) = (stop.clone(), report.clone(), options.clone());
            // Pods start on different names so that they do not move in lockstep.
            let thread = node
                .pod_netns(pod)?
                .spawn_inside("nldns-resolver-load", move || {
                    run(pod, pod, &options, &stop, &report)
                })?;
            load.threads.push(thread);
        }
        Ok(load)
    }

    /// What the load has seen so far (it keeps running).
    pub fn snapshot(&self) -> ResolverLoadReport {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops every thread (each finishes its query in flight) and returns the report.
    pub fn stop(mut self) -> ResolverLoadReport {
        self.halt();
        let mut report = self.snapshot();
        report.queries.sort_by_key(|q| q.sent);
        report
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for ResolverLoad {
    fn drop(&mut self) {
        self.halt();
    }
}

/// One try: Ok if the reply is NOERROR with answers.
fn try_once(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    options: &QueryOptions,
) -> Result<(), String> {
    match dns_client::query(server, name, rtype, options) {
        Ok(reply)
            if reply.metadata.response_code == ResponseCode::NoError
                && !reply.answers.is_empty() =>
        {
            Ok(())
        }
        Ok(reply) => Err(format!(
            "{} with {} answers",
            reply.metadata.response_code,
            reply.answers.len()
        )),
        // Timeouts print their duration; keep the kind, not the query-specific text.
        Err(error) => Err(error.root_cause().to_string()),
    }
}

fn run(
    pod: usize,
    offset: usize,
    options: &ResolverLoadOptions,
    stop: &AtomicBool,
    report: &Mutex<ResolverLoadReport>,
) {
    let start = Instant::now();
    let mut next = start;
    let mut i = offset;
    let query = QueryOptions {
        timeout: options.timeout,
        ..options.query.clone()
    };
    while !stop.load(Ordering::Relaxed) && start.elapsed() < options.max_duration {
        let server = SocketAddr::new(options.servers[i % options.servers.len()], 53);
        let (name, rtype) = &options.names[i % options.names.len()];
        i += 1;
        let sent = Instant::now();
        let first_error = try_once(server, name, *rtype, &query).err();
        let first_took = sent.elapsed();
        // A fast failure (an error reply, a refused port) waits out the rest of the
        // timeout before the retry, as a resolver's retransmission timer would.
        let mut retry_sent = None;
        let retry_error = first_error.as_ref().and_then(|_| {
            let retry_at = sent + options.timeout;
            let now = Instant::now();
            if retry_at > now {
                std::thread::sleep(retry_at - now);
            }
            retry_sent = Some(Instant::now());
            try_once(server, name, *rtype, &query).err()
        });
        let latency = sent.elapsed();
        report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .queries
            .push(ResolvedQuery {
                pod,
                sent,
                first_error,
                retry_error,
                retry_sent,
                latency,
                first_took,
            });
        crate::query_loop::pace(&mut next, options.interval);
    }
}

/// The value at quantile `p` (0..=1) of `latencies` (nearest rank); zero when empty.
pub fn quantile(mut latencies: Vec<Duration>, p: f64) -> Duration {
    if latencies.is_empty() {
        return Duration::ZERO;
    }
    latencies.sort();
    latencies[((latencies.len() as f64 - 1.0) * p).round() as usize]
}
