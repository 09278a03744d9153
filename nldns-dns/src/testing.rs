//! A real DNS server for tests: UDP and TCP on one 127.0.0.1 ephemeral port, built
//! with hickory-proto, whose behaviour (delay, failure, truncation, spoofed
//! replies) can be switched at run time, counting the queries it receives.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

/// What the server does with a query.
#[derive(Debug, Clone)]
pub enum Mode {
    /// NOERROR with `records` A records 10.0.0.1, 10.0.0.2, ... with `ttl`.
    Answer {
        ttl: u32,
        records: u8,
    },
    /// NXDOMAIN with an SOA (TTL `soa_ttl`, MINIMUM `minimum`).
    NxDomain {
        soa_ttl: u32,
        minimum: u32,
    },
    ServFail,
    /// Never answers.
    Silent,
    /// Over UDP: an empty TC=1 reply; over TCP: like `Answer`.
    TruncateUdp {
        ttl: u32,
        records: u8,
    },
    /// FORMERR (without OPT) to queries with EDNS, like `Answer` to plain ones.
    NoEdns {
        ttl: u32,
    },
    /// Over UDP, first replies with a wrong ID, then a wrong question, then from
    /// another source port, then with the right ID and source but the question's
    /// letters in another case (all carrying 6.6.6.6), then correctly (10.0.0.1)
    /// unless `then_answer` is false.
    Spoof {
        then_answer: bool,
    },
    /// Like `Answer` with one record, but the reply's question and record are in
    /// lowercase whatever the query's letter case: a server that does not echo 0x20.
    LowercaseQuestion {
        ttl: u32,
    },
}

/// A test upstream; stops when dropped.
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub udp_queries: Arc<AtomicUsize>,
    pub tcp_queries: Arc<AtomicUsize>,
    mode: Arc<Mutex<Mode>>,
    /// Delay before answering names whose first label starts with "slow".
    slow_delay: Arc<Mutex<Duration>>,
    /// Delay before answering any query.
    delay: Arc<Mutex<Duration>>,
    last_query: Arc<Mutex<Option<Message>>>,
    stop: CancellationToken,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Clone)]
struct Shared {
    mode: Arc<Mutex<Mode>>,
    delay: Arc<Mutex<Duration>>,
    slow_delay: Arc<Mutex<Duration>>,
    last_query: Arc<Mutex<Option<Message>>>,
}

impl TestUpstream {
    pub async fn start(mode: Mode) -> TestUpstream {
        // UDP and TCP on the same port: retry a few times if TCP's is taken.
        let mut bound = None;
        for _ in 0..20 {
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let addr = udp.local_addr().unwrap();
            if let Ok(tcp) = TcpListener::bind(addr).await {
                bound = Some((udp, tcp, addr));
                break;
            }
        }
        let (udp, tcp, addr) = bound.expect("no free port pair on 127.0.0.1");
        let upstream = TestUpstream {
            addr,
            udp_queries: Arc::default(),
            tcp_queries: Arc::default(),
            mode: Arc::new(Mutex::new(mode)),
            slow_delay: Arc::new(Mutex::new(Duration::ZERO)),
            delay: Arc::new(Mutex::new(Duration::ZERO)),
            last_query: Arc::default(),
            stop: CancellationToken::new(),
        };
        let shared = Shared {
            mode: upstream.mode.clone(),
            delay: upstream.delay.clone(),
            slow_delay: upstream.slow_delay.clone(),
            last_query: upstream.last_query.clone(),
        };
        tokio::spawn(serve_udp(
            Arc::new(udp),
            shared.clone(),
            upstream.udp_queries.clone(),
            upstream.stop.clone(),
        ));
        tokio::spawn(serve_tcp(
            tcp,
            shared,
            upstream.tcp_queries.clone(),
            upstream.stop.clone(),
        ));
        upstream
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    pub fn set_slow_delay(&self, delay: Duration) {
        *self.slow_delay.lock().unwrap() = delay;
    }

    pub fn queries(&self) -> usize {
        self.udp_queries.load(Ordering::SeqCst) + self.tcp_queries.load(Ordering::SeqCst)
    }

    pub fn last_query(&self) -> Option<Message> {
        self.last_query.lock().unwrap().clone()
    }
}

impl Shared {
    /// The reply to `query` (None: stay silent), after the configured delay.
    async fn reply(&self, query: &Message, tcp: bool) -> Option<Message> {
        *self.last_query.lock().unwrap() = Some(query.clone());
        let slow = query.queries.first().is_some_and(|q| {
            q.name()
                .iter()
                .next()
                .is_some_and(|l| l.to_ascii_lowercase().starts_with(b"slow"))
        });
        let mut delay = *self.delay.lock().unwrap();
        if slow {
            delay += *self.slow_delay.lock().unwrap();
        }
        tokio::time::sleep(delay).await;
        let mode = self.mode.lock().unwrap().clone();
        let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
        reply.metadata.recursion_desired = query.metadata.recursion_desired;
        reply.metadata.recursion_available = true;
        reply.metadata.authoritative = true;
        reply.add_queries(query.queries.iter().cloned());
        if let Some(edns) = &query.edns {
            let mut ours = Edns::new();
            ours.set_max_payload(1232);
            ours.set_dnssec_ok(edns.flags().dnssec_ok);
            reply.set_edns(ours);
        }
        let name = query.queries.first()?.name().clone();
        if let Mode::NoEdns { ttl } = mode {
            reply.edns = None;
            if query.edns.is_some() {
                reply.metadata.response_code = ResponseCode::FormErr;
            } else {
                reply.add_answer(Record::from_rdata(name, ttl, RData::A(A::new(10, 0, 0, 1))));
            }
            return Some(reply);
        }
        match mode {
            Mode::Silent => return None,
            Mode::ServFail => reply.metadata.response_code = ResponseCode::ServFail,
            Mode::NxDomain { soa_ttl, minimum } => {
                reply.metadata.response_code = ResponseCode::NXDomain;
                let zone = Name::from_ascii("example.").unwrap();
                let soa = SOA::new(zone.clone(), zone.clone(), 1, 60, 60, 600, minimum);
                reply.add_authority(Record::from_rdata(zone, soa_ttl, RData::SOA(soa)));
            }
            Mode::TruncateUdp { .. } if !tcp => reply.metadata.truncation = true,
            Mode::Answer { ttl, records } | Mode::TruncateUdp { ttl, records } => {
                for i in 0..records {
                    let a = A::new(10, 0, 0, i.wrapping_add(1));
                    reply.add_answer(Record::from_rdata(name.clone(), ttl, RData::A(a)));
                }
            }
            Mode::NoEdns { .. } => {}
            Mode::Spoof { .. } => {
                reply.add_answer(Record::from_rdata(name, 60, RData::A(A::new(10, 0, 0, 1))));
            }
            Mode::LowercaseQuestion { ttl } => {
                let lower = name.to_lowercase();
                for q in reply.queries.iter_mut() {
                    q.set_name(lower.clone());
                }
                reply.add_answer(Record::from_rdata(
                    lower,
                    ttl,
                    RData::A(A::new(10, 0, 0, 1)),
                ));
            }
        }
        Some(reply)
    }
}

async fn serve_udp(
    socket: Arc<UdpSocket>,
    shared: Shared,
    count: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (len, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
        };
        let Ok(query) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        count.fetch_add(1, Ordering::SeqCst);
        let (socket, shared) = (socket.clone(), shared.clone());
        tokio::spawn(async move {
            let Some(reply) = shared.reply(&query, false).await else {
                return;
            };
            let spoof = matches!(*shared.mode.lock().unwrap(), Mode::Spoof { .. });
            if spoof {
                send_spoofed(&socket, &reply, peer).await;
                if matches!(
                    *shared.mode.lock().unwrap(),
                    Mode::Spoof { then_answer: false }
                ) {
                    return;
                }
            }
            let _ = socket.send_to(&reply.to_vec().unwrap(), peer).await;
        });
    }
}

/// Three replies a resolver must reject, all answering 6.6.6.6.
async fn send_spoofed(socket: &UdpSocket, reply: &Message, peer: SocketAddr) {
    let mut bad = reply.clone();
    bad.answers.clear();
    let name = reply.queries[0].name().clone();
    bad.add_answer(Record::from_rdata(name, 60, RData::A(A::new(6, 6, 6, 6))));
    let mut wrong_id = bad.clone();
    wrong_id.metadata.id = wrong_id.metadata.id.wrapping_add(1);
    let _ = socket.send_to(&wrong_id.to_vec().unwrap(), peer).await;
    let mut wrong_question = bad.clone();
    wrong_question.queries[0].set_name(Name::from_ascii("evil.example.").unwrap());
    let _ = socket
        .send_to(&wrong_question.to_vec().unwrap(), peer)
        .await;
    let other = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let _ = other.send_to(&bad.to_vec().unwrap(), peer).await;
    // Everything right but the letter case: what 0x20 rejects (the name flipped
    // wholesale, so it differs from any random mix with at least one letter).
    let mut wrong_case = bad.clone();
    wrong_case.queries[0].set_name(flip_case(reply.queries[0].name()));
    let _ = socket.send_to(&wrong_case.to_vec().unwrap(), peer).await;
    // Give the spoofed datagrams a head start over the real one.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// `name` with every ASCII letter in the other case: differs from any casing of it
/// that has a letter, in every letter.
pub fn flip_case(name: &Name) -> Name {
    let text: String = name
        .to_ascii()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    Name::from_ascii(&text).unwrap_or_else(|_| name.clone())
}

async fn serve_tcp(
    listener: TcpListener,
    shared: Shared,
    count: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    loop {
        let (mut stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
        };
        let (shared, count, stop) = (shared.clone(), count.clone(), stop.clone());
        tokio::spawn(async move {
            let exchange = async {
                let len = stream.read_u16().await.ok()?;
                let mut buf = vec![0u8; usize::from(len)];
                stream.read_exact(&mut buf).await.ok()?;
                let query = Message::from_vec(&buf).ok()?;
                count.fetch_add(1, Ordering::SeqCst);
                let reply = shared.reply(&query, true).await?.to_vec().ok()?;
                stream
                    .write_all(&(reply.len() as u16).to_be_bytes())
                    .await
                    .ok()?;
                stream.write_all(&reply).await.ok()
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = exchange => {}
            }
        });
    }
}
