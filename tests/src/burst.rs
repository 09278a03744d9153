//! A burst of distinct A queries from one socket, faster than a resolver would send
//! them: the flood of uncached names the fault and hostile-node tests aim at the agent.
//! Bounded (rule 5 of docs/testing.md): the names run out, or `for_at_most` passes.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

use crate::dns_client::{build_query, QueryOptions};

/// What a burst sent and got back.
#[derive(Debug, Default)]
pub struct BurstReport {
    pub sent: usize,
    /// Sends the kernel refused (a full socket buffer, for one).
    pub send_errors: usize,
    /// Rcode and latency of each answered query; unanswered ones are missing.
    pub replies: Vec<(ResponseCode, Duration)>,
}

/// Sends an A query for each of `names` to `server`, 10 every 5 ms (about 2000 a second:
/// as fast as the agent's socket buffer takes them), until the names run out or
/// `for_at_most` passed, while a second thread reads the replies (a reader that waited
/// until the end would overflow its own socket buffer) until `wait` after the last send.
/// Query IDs are the send order, modulo 65536: send fewer names than that.
pub fn burst(
    server: SocketAddr,
    names: impl IntoIterator<Item = String>,
    for_at_most: Duration,
    wait: Duration,
) -> Result<BurstReport> {
    let socket = UdpSocket::bind(if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })?;
    socket.connect(server)?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let sent_at: Mutex<Vec<Instant>> = Mutex::new(Vec::new());
    let sending_done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut replies = Vec::new();
            let mut seen = std::collections::HashSet::new();
            let mut buf = [0u8; 4096];
            let mut deadline = None;
            loop {
                if deadline.is_none() && sending_done.load(Ordering::SeqCst) {
                    deadline = Some(Instant::now() + wait);
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let Ok(len) = socket.recv(&mut buf) else {
                    continue;
                };
                let Ok(reply) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                let id = usize::from(reply.metadata.id);
                let at = sent_at.lock().unwrap().get(id).copied();
                if let Some(at) = at {
                    if seen.insert(id) {
                        replies.push((reply.metadata.response_code, at.elapsed()));
                    }
                }
            }
            replies
        });
        let started = Instant::now();
        let mut report = BurstReport::default();
        let sending = (|| -> Result<()> {
            for name in names {
                if started.elapsed() >= for_at_most {
                    break;
                }
                let mut query = build_query(&name, RecordType::A, &QueryOptions::default())?;
                query.metadata.id = report.sent as u16;
                let wire = query.to_vec()?;
                sent_at.lock().unwrap().push(Instant::now());
                if socket.send(&wire).is_err() {
                    report.send_errors += 1;
                }
                report.sent += 1;
                if report.sent % 10 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            Ok(())
        })();
        sending_done.store(true, Ordering::SeqCst);
        report.replies = reader.join().unwrap();
        sending.map(|()| report)
    })
}

/// What every socket of a [`flood_unique_names`] sent and got back.
#[derive(Debug, Default)]
pub struct FloodTotals {
    pub sent: AtomicU64,
    pub replies: AtomicU64,
    pub servfails: AtomicU64,
    /// SERVFAILs answered within 1 s: shed by a bound, not an upstream timeout.
    pub fast_servfails: AtomicU64,
}

impl FloodTotals {
    pub fn summary(&self) -> String {
        format!(
            "sent {}, replies {}, SERVFAIL {} (within 1 s: {})",
            self.sent.load(Ordering::Relaxed),
            self.replies.load(Ordering::Relaxed),
            self.servfails.load(Ordering::Relaxed),
            self.fast_servfails.load(Ordering::Relaxed),
        )
    }
}

/// Names per burst of a [`flood_unique_names`]: a burst's query IDs are its send order
/// modulo 65,536.
pub const FLOOD_BURST_NAMES: usize = 40_000;
/// How long each burst reads late replies after its last send (past the agent's
/// upstream timeouts); the socket's next burst starts after it.
pub const FLOOD_BURST_WAIT: Duration = Duration::from_secs(3);

/// A random 12-letter DNS label.
pub fn random_label(rng: &mut impl rand::Rng) -> String {
    (0..12)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect()
}

/// Unique random subdomains of `default.svc.cluster.local` from each pod of `pods` to
/// each of `servers` (port 53; one socket and thread per pair), in consecutive
/// [`burst`]s until `duration` has passed: a flood of names no cache has, bounded in
/// time and in rate (each socket at most 2,000 queries a second).
pub fn flood_unique_names(
    node: &crate::SimNode,
    pods: &[usize],
    servers: &[std::net::IpAddr],
    duration: Duration,
) -> Result<FloodTotals> {
    let totals = FloodTotals::default();
    let until = Instant::now() + duration;
    std::thread::scope(|scope| -> Result<()> {
        let mut threads = Vec::new();
        for &pod in pods {
            let netns = node.pod_netns(pod)?;
            for &ip in servers {
                let totals = &totals;
                threads.push(scope.spawn(move || {
                    netns.run_inside(|| -> Result<()> {
                        let mut rng = rand::rng();
                        loop {
                            let left = until.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                return Ok(());
                            }
                            let names = (0..FLOOD_BURST_NAMES).map(|_| {
                                format!("{}.default.svc.cluster.local.", random_label(&mut rng))
                            });
                            let names: Vec<String> = names.collect();
                            let report =
                                burst(SocketAddr::new(ip, 53), names, left, FLOOD_BURST_WAIT)?;
                            totals.add(&report);
                        }
                    })?
                }));
            }
        }
        for thread in threads {
            thread.join().expect("flood thread panicked")?;
        }
        Ok(())
    })?;
    Ok(totals)
}

impl FloodTotals {
    fn add(&self, report: &BurstReport) {
        let servfails = report
            .replies
            .iter()
            .filter(|(rcode, _)| *rcode == ResponseCode::ServFail);
        let (all, fast) = servfails.fold((0u64, 0u64), |(all, fast), (_, latency)| {
            (all + 1, fast + u64::from(*latency < Duration::from_secs(1)))
        });
        self.sent.fetch_add(report.sent as u64, Ordering::Relaxed);
        self.replies
            .fetch_add(report.replies.len() as u64, Ordering::Relaxed);
        self.servfails.fetch_add(all, Ordering::Relaxed);
        self.fast_servfails.fetch_add(fast, Ordering::Relaxed);
    }
}
