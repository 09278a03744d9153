//! A steady stream of queries from one namespace, recorded query by query, for the tests
//! where timing is the point: an agent upgrade that must lose nothing, a hung agent that
//! interception must fail open around, a restart of the backends.
//!
//! The loop runs on a thread inside the namespace, sends one query per interval (each
//! waiting at most its timeout), and stops on [`QueryLoop::stop`] or after its maximum
//! duration, whichever comes first.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::dns_client::{self, QueryOptions};
use crate::netns::Netns;

/// What to send, how often, for how long at most.
#[derive(Debug, Clone)]
pub struct QueryLoopOptions {
    pub server: SocketAddr,
    pub name: String,
    pub rtype: RecordType,
    pub query: QueryOptions,
    pub interval: Duration,
    /// The loop ends by itself after this long, even if nobody stops it.
    pub max_duration: Duration,
}

impl QueryLoopOptions {
    /// UDP queries every 20 ms with a 1 s timeout, for at most 60 s.
    pub fn new(server: SocketAddr, name: &str, rtype: RecordType) -> Self {
        QueryLoopOptions {
            server,
            name: name.to_string(),
            rtype,
            query: QueryOptions {
                timeout: Duration::from_secs(1),
                ..QueryOptions::default()
            },
            interval: Duration::from_millis(20),
            max_duration: Duration::from_secs(60),
        }
    }
}

/// One query of the loop.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When it was sent, from the loop's start.
    pub sent_at: Duration,
    pub latency: Duration,
    /// Ok(rcode) if a reply came, Err(text) otherwise (timeout, refused...).
    pub outcome: std::result::Result<ResponseCode, String>,
    /// The reply's answer count.
    pub answers: usize,
}

impl Attempt {
    /// A reply with the expected kind of content: NOERROR with answers.
    pub fn answered(&self) -> bool {
        matches!(self.outcome, Ok(ResponseCode::NoError)) && self.answers > 0
    }
}

/// What the loop saw.
#[derive(Debug, Clone, Default)]
pub struct QueryLoopReport {
    pub attempts: Vec<Attempt>,
}

impl QueryLoopReport {
    pub fn sent(&self) -> usize {
        self.attempts.len()
    }

    pub fn answered(&self) -> usize {
        self.attempts.iter().filter(|a| a.answered()).count()
    }

    pub fn failures(&self) -> Vec<&Attempt> {
        self.attempts.iter().filter(|a| !a.answered()).collect()
    }

    /// The longest stretch of time with no answered query: from the send time of the last
    /// answered query before a failure run to that of the first answered one after it.
    pub fn longest_outage(&self) -> Duration {
        let mut longest = Duration::ZERO;
        let mut last_ok: Option<Duration> = None;
        let mut in_outage = false;
        for attempt in &self.attempts {
            if attempt.answered() {
                if in_outage {
                    let start = last_ok.unwrap_or(Duration::ZERO);
                    longest = longest.max(attempt.sent_at.saturating_sub(start));
                }
                in_outage = false;
                last_ok = Some(attempt.sent_at);
            } else {
                in_outage = true;
            }
        }
        longest
    }

    /// The largest latency among answered queries.
    pub fn max_latency(&self) -> Duration {
        self.attempts
            .iter()
            .filter(|a| a.answered())
            .map(|a| a.latency)
            .max()
            .unwrap_or_default()
    }
}

/// A running loop.
#[derive(Debug)]
pub struct QueryLoop {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<QueryLoopReport>>,
    thread: Option<JoinHandle<()>>,
}

impl QueryLoop {
    /// Starts the loop inside `netns`.
    pub fn start(netns: &Netns, options: QueryLoopOptions) -> Result<QueryLoop> {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(QueryLoopReport::default()));
        let (s, r) = (stop.clone(), report.clone());
        let thread = netns.spawn_inside("nldns-query-loop", move || run(options, &s, &r))?;
        Ok(QueryLoop {
            stop,
            report,
            thread: Some(thread),
        })
    }

    /// What the loop has seen so far (it keeps running).
    pub fn snapshot(&self) -> QueryLoopReport {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops the loop (waiting for the query in flight) and returns everything it saw.
    pub fn stop(mut self) -> QueryLoopReport {
        self.halt();
        self.snapshot()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for QueryLoop {
    fn drop(&mut self) {
        self.halt();
    }
}

fn run(options: QueryLoopOptions, stop: &AtomicBool, report: &Mutex<QueryLoopReport>) {
    let start = Instant::now();
    let mut next = start;
    while !stop.load(Ordering::Relaxed) && start.elapsed() < options.max_duration {
        let sent_at = start.elapsed();
        let before = Instant::now();
        let result =
            dns_client::query(options.server, &options.name, options.rtype, &options.query);
        let latency = before.elapsed();
        let (outcome, answers) = match result {
            Ok(reply) => (Ok(reply.metadata.response_code), reply.answers.len()),
            Err(error) => (Err(format!("{error:#}")), 0),
        };
        report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .attempts
            .push(Attempt {
                sent_at,
                latency,
                outcome,
                answers,
            });
        pace(&mut next, options.interval);
    }
}

/// Sleeps until `next + interval` and advances `next`. After a slow query the schedule
/// restarts from now: a load generator must not catch up with a burst.
pub(crate) fn pace(next: &mut Instant, interval: Duration) {
    *next += interval;
    let now = Instant::now();
    if *next > now {
        std::thread::sleep(*next - now);
    } else {
        *next = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(ms: u64, ok: bool) -> Attempt {
        Attempt {
            sent_at: Duration::from_millis(ms),
            latency: Duration::from_millis(1),
            outcome: if ok {
                Ok(ResponseCode::NoError)
            } else {
                Err("timed out".into())
            },
            answers: usize::from(ok),
        }
    }

    #[test]
    fn longest_outage_spans_from_last_success_to_next_success() {
        let report = QueryLoopReport {
            attempts: vec![
                attempt(0, true),
                attempt(20, true),
                attempt(40, false),
                attempt(60, false),
                attempt(80, true),
                attempt(100, false),
                attempt(120, true),
            ],
        };
        assert_eq!(report.longest_outage(), Duration::from_millis(60));
        assert_eq!(report.answered(), 4);
        assert_eq!(report.failures().len(), 3);
    }
}
