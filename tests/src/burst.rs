//! A burst of distinct A queries from one socket, faster than a resolver would send
//! them: the flood of uncached names the fault and hostile-node tests aim at the agent.
//! Bounded (rule 5 of docs/testing.md): the names run out, or `for_at_most` passes.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
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
