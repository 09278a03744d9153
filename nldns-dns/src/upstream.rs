//! Asking upstream servers: one fresh socket (kernel-randomized source port), a
//! random ID and, over UDP, the question's letters in random case (0x20) per attempt,
//! replies accepted only when source, ID and question (case included) all match, UDP
//! falling back to TCP on truncation, attempts moving across servers and skipping
//! those that failed recently.
//!
//! What that leaves a forger who cannot see the queries: the source port (about 28,000
//! ephemeral ports), the ID (65,536) and one bit per letter of the name (a
//! `web.default.svc.cluster.local.` has 26), all to be guessed within the one attempt's
//! timeout. A server that does not echo the case (rare; CoreDNS, knot, unbound and
//! BIND do) costs one timed-out attempt, and is then asked in lowercase for
//! [`CASE_FALLBACK`]. UDP sockets are connected, so the kernel
//! checks the source and reports a closed upstream port (ICMP port unreachable) at
//! once instead of letting the attempt run into its timeout.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::wire::OUR_EDNS_UDP_SIZE;
use crate::metrics::{Metrics, ProxyLabels, UpstreamErrorLabels, UpstreamLabels};

/// The question sent upstream. The name is the lowercased form of the client's.
#[derive(Debug, Clone)]
pub struct UpstreamQuery {
    pub name: Name,
    pub qtype: RecordType,
    pub qclass: DNSClass,
    pub dnssec_ok: bool,
    pub checking_disabled: bool,
}

/// Why no usable answer came back.
#[derive(Debug, Error)]
pub enum UpstreamError {
    #[error("no upstream configured for this name")]
    NoUpstreams,
    #[error("upstream {0} timed out")]
    Timeout(SocketAddr),
    #[error("upstream {0}: {1}")]
    Io(SocketAddr, #[source] io::Error),
    #[error("upstream {0} sent a malformed or mismatched reply")]
    BadReply(SocketAddr),
    #[error("encoding the upstream query: {0}")]
    Encode(String),
    /// Only replies whose question differed from ours in letter case came, until the
    /// timeout: a server that does not echo the case (or a forger who missed it).
    #[error("upstream {0} did not echo the question's letter case (0x20)")]
    CaseMismatch(SocketAddr),
}

impl UpstreamError {
    fn kind(&self) -> &'static str {
        match self {
            UpstreamError::NoUpstreams => "none",
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::Io(..) => "io",
            UpstreamError::BadReply(_) => "bad_reply",
            UpstreamError::Encode(_) => "encode",
            UpstreamError::CaseMismatch(_) => "case_mismatch",
        }
    }
}

/// Per-exchange knobs, taken from the current configuration.
#[derive(Debug, Clone)]
pub struct ExchangeOptions {
    /// Time allowed for one attempt (UDP, or TCP after truncation gets its own).
    pub timeout: Duration,
    /// Attempts in total, spread over the servers in health order.
    pub attempts: usize,
    /// How long a server that timed out or errored is tried last.
    pub failure_backoff: Duration,
    pub force_tcp: bool,
}

/// Remembers which upstreams failed recently; shared by every route and kept
/// across reloads (keyed by address).
#[derive(Default)]
pub struct UpstreamHealth {
    failed_until: Mutex<HashMap<SocketAddr, Instant>>,
    /// Servers that did not echo a 0x20 question, asked in lowercase until then.
    plain_case_until: Mutex<HashMap<SocketAddr, Instant>>,
}

/// How long a server that did not echo the letter case is asked in lowercase.
pub const CASE_FALLBACK: Duration = Duration::from_secs(600);

impl UpstreamHealth {
    fn is_healthy(&self, addr: &SocketAddr, now: Instant) -> bool {
        let map = self.failed_until.lock().unwrap_or_else(|e| e.into_inner());
        map.get(addr).is_none_or(|&until| now >= until)
    }

    fn mark_failed(&self, addr: SocketAddr, backoff: Duration) {
        let mut map = self.failed_until.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(addr, Instant::now() + backoff);
    }

    fn mark_ok(&self, addr: &SocketAddr) {
        let mut map = self.failed_until.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(addr);
    }

    /// Whether `addr` is asked with its question in random case (0x20).
    fn echoes_case(&self, addr: &SocketAddr, now: Instant) -> bool {
        let map = self
            .plain_case_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.get(addr).is_none_or(|&until| now >= until)
    }

    fn mark_case_mismatch(&self, addr: SocketAddr) {
        let mut map = self
            .plain_case_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.insert(addr, Instant::now() + CASE_FALLBACK);
    }

    /// True when at least one of `servers` has not failed recently.
    pub fn any_healthy(&self, servers: &[SocketAddr]) -> bool {
        let now = Instant::now();
        servers.iter().any(|s| self.is_healthy(s, now))
    }

    /// Drops state for servers no longer configured, so the table stays bounded.
    pub fn retain(&self, servers: &[SocketAddr]) {
        let mut map = self.failed_until.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|addr, _| servers.contains(addr));
        let mut map = self
            .plain_case_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.retain(|addr, _| servers.contains(addr));
    }
}

/// Sends queries upstream and records health and metrics.
pub struct Exchanger {
    pub health: UpstreamHealth,
    metrics: Arc<Metrics>,
}

impl Exchanger {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Exchanger {
            health: UpstreamHealth::default(),
            metrics,
        }
    }

    /// Asks `servers` until one gives a usable answer or the attempts run out.
    /// SERVFAIL and REFUSED are answers, but another server is asked if one is left.
    pub async fn exchange(
        &self,
        servers: &[SocketAddr],
        query: &UpstreamQuery,
        opts: &ExchangeOptions,
    ) -> Result<Message, UpstreamError> {
        let order = self.order(servers);
        if order.is_empty() {
            return Err(UpstreamError::NoUpstreams);
        }
        let mut last_error = UpstreamError::NoUpstreams;
        let mut last_answer = None;
        for attempt in 0..opts.attempts.max(1) {
            let server = order[attempt % order.len()];
            let started = Instant::now();
            match self.exchange_one(server, query, opts).await {
                Ok(reply) => {
                    self.health.mark_ok(&server);
                    self.metrics
                        .upstream_latency
                        .get_or_create(&UpstreamLabels {
                            upstream: server.to_string(),
                        })
                        .observe(started.elapsed().as_secs_f64());
                    let code = reply.metadata.response_code;
                    self.metrics
                        .coredns
                        .proxy_duration
                        .get_or_create(&ProxyLabels {
                            server: String::new(),
                            to: server.to_string(),
                            rcode: rcode_name(u16::from(code)),
                            proxy_name: "forward",
                        })
                        .observe(started.elapsed().as_secs_f64());
                    if code != ResponseCode::ServFail && code != ResponseCode::Refused {
                        return Ok(reply);
                    }
                    self.count_error(
                        server,
                        if code == ResponseCode::Refused {
                            "refused"
                        } else {
                            "servfail"
                        },
                    );
                    last_answer = Some(reply);
                    if attempt + 1 >= order.len() {
                        break; // every server said so already
                    }
                }
                Err(e @ UpstreamError::CaseMismatch(_)) => {
                    // The server answers, in its own case: not down, just asked plainly
                    // from now on (the next attempt already).
                    log::info!("{e}; asking it in lowercase for {CASE_FALLBACK:?}");
                    self.count_error(server, e.kind());
                    self.health.mark_case_mismatch(server);
                    last_error = e;
                }
                Err(e) => {
                    log::debug!("{e}");
                    self.count_error(server, e.kind());
                    self.health.mark_failed(server, opts.failure_backoff);
                    last_error = e;
                }
            }
        }
        last_answer.ok_or(last_error)
    }

    fn count_error(&self, server: SocketAddr, kind: &'static str) {
        self.metrics
            .upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                upstream: server.to_string(),
                kind,
            })
            .inc();
    }

    /// Servers starting at a random one (spreads load), recently failed ones last.
    fn order(&self, servers: &[SocketAddr]) -> Vec<SocketAddr> {
        if servers.is_empty() {
            return Vec::new();
        }
        let mut order = servers.to_vec();
        order.rotate_left(rand::random_range(0..servers.len()));
        let now = Instant::now();
        // Stable: keeps the rotation within each group.
        order.sort_by_key(|s| !self.health.is_healthy(s, now));
        if !self.health.is_healthy(&order[0], now) {
            // Every upstream of the route is marked down: asked anyway, in turn.
            self.metrics.coredns.healthcheck_broken.inc();
        }
        order
    }

    async fn exchange_one(
        &self,
        server: SocketAddr,
        query: &UpstreamQuery,
        opts: &ExchangeOptions,
    ) -> Result<Message, UpstreamError> {
        let case = if self.health.echoes_case(&server, Instant::now()) {
            Case::Random
        } else {
            Case::Lower
        };
        let reply = exchange_transport(server, query, opts, true, case).await?;
        if reply.metadata.response_code == ResponseCode::FormErr && reply.edns.is_none() {
            // RFC 6891 section 7: a server without EDNS answers FORMERR; ask plainly.
            log::debug!("{server} does not support EDNS, retrying without");
            return exchange_transport(server, query, opts, false, case).await;
        }
        Ok(reply)
    }
}

/// The letter case of the question sent over UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    /// 0x20: each letter upper or lower at random, and the reply must echo it.
    Random,
    /// As the cache keys it: for servers that do not echo the case. TCP always asks
    /// this way (no off-path forger can inject into a connection it cannot see).
    Lower,
}

/// One exchange with `server`: UDP then TCP on truncation, or TCP only if forced.
async fn exchange_transport(
    server: SocketAddr,
    query: &UpstreamQuery,
    opts: &ExchangeOptions,
    edns: bool,
    case: Case,
) -> Result<Message, UpstreamError> {
    if opts.force_tcp {
        return exchange_tcp(server, query, opts.timeout, edns).await;
    }
    let reply = exchange_udp(server, query, opts.timeout, edns, case).await?;
    if reply.metadata.truncation {
        log::debug!("truncated UDP answer from {server}, retrying over TCP");
        return exchange_tcp(server, query, opts.timeout, edns).await;
    }
    Ok(reply)
}

fn encode_query(query: &UpstreamQuery, id: u16, with_edns: bool) -> Result<Vec<u8>, UpstreamError> {
    let mut msg = Message::query();
    msg.metadata.id = id;
    msg.metadata.recursion_desired = true;
    msg.metadata.checking_disabled = query.checking_disabled;
    let mut q = Query::query(query.name.clone(), query.qtype);
    q.set_query_class(query.qclass);
    msg.add_query(q);
    if with_edns {
        let mut edns = Edns::new();
        edns.set_max_payload(OUR_EDNS_UDP_SIZE);
        edns.set_dnssec_ok(query.dnssec_ok);
        msg.set_edns(edns);
    }
    msg.to_vec()
        .map_err(|e| UpstreamError::Encode(e.to_string()))
}

/// Decodes an upstream's reply; None unless it answers exactly our question with our
/// ID (anything else is ignored: it may be a spoofing attempt or a late reply).
pub(crate) fn decode_reply(packet: &[u8], id: u16, query: &UpstreamQuery) -> Option<Message> {
    Message::from_vec(packet)
        .ok()
        .filter(|reply| reply_matches(reply, id, query))
}

/// How a reply's question compares with the one sent, letter case included.
#[derive(Debug, PartialEq, Eq)]
enum CaseCheck {
    Echoed,
    Differs,
}

fn case_check(reply: &Message, asked: &Name) -> CaseCheck {
    match reply.queries.first() {
        Some(q) if q.name().eq_case(asked) => CaseCheck::Echoed,
        _ => CaseCheck::Differs,
    }
}

/// `name` with each ASCII letter in random case (0x20); other bytes as they are.
fn randomize_case(name: &Name) -> Name {
    let labels: Vec<Vec<u8>> = name
        .iter()
        .map(|label| {
            label
                .iter()
                .map(|&b| {
                    if b.is_ascii_alphabetic() && rand::random::<bool>() {
                        b ^ 0x20
                    } else {
                        b
                    }
                })
                .collect()
        })
        .collect();
    match Name::from_labels(labels) {
        Ok(mut mixed) => {
            mixed.set_fqdn(name.is_fqdn());
            mixed
        }
        Err(_) => name.clone(),
    }
}

/// The reply to a 0x20 question written back in the cache's own (lowercased) case:
/// its question, and every record owned by the question's name (a server that does
/// not compress would otherwise hand the random case on to every client).
fn restore_case(mut reply: Message, query: &UpstreamQuery) -> Message {
    for q in reply.queries.iter_mut() {
        q.set_name(query.name.clone());
    }
    for record in reply
        .answers
        .iter_mut()
        .chain(reply.authorities.iter_mut())
        .chain(reply.additionals.iter_mut())
    {
        if record.name == query.name {
            record.name = query.name.clone();
        }
    }
    reply
}

/// True when `reply` answers exactly our question with our ID.
fn reply_matches(reply: &Message, id: u16, query: &UpstreamQuery) -> bool {
    reply.metadata.id == id
        && reply.metadata.message_type == MessageType::Response
        && reply.queries.len() == 1
        && reply.queries.first().is_some_and(|q| {
            // hickory's Name equality ignores ASCII case, as DNS does.
            q.name() == &query.name
                && q.query_type() == query.qtype
                && q.query_class() == query.qclass
        })
}

async fn exchange_udp(
    server: SocketAddr,
    query: &UpstreamQuery,
    timeout: Duration,
    edns: bool,
    case: Case,
) -> Result<Message, UpstreamError> {
    let id: u16 = rand::random();
    let asked = match case {
        Case::Random => UpstreamQuery {
            name: randomize_case(&query.name),
            ..query.clone()
        },
        Case::Lower => query.clone(),
    };
    let bytes = encode_query(&asked, id, edns)?;
    // A new socket per query: the kernel picks a random ephemeral source port.
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| UpstreamError::Io(server, e))?;
    // Connected: the kernel drops datagrams from any other source, and reports the
    // ICMP port unreachable of a dead upstream (a stopped kube-dns pod) as
    // ECONNREFUSED at once, where an unconnected socket would wait for the timeout.
    socket
        .connect(server)
        .await
        .map_err(|e| UpstreamError::Io(server, e))?;
    socket
        .send(&bytes)
        .await
        .map_err(|e| UpstreamError::Io(server, e))?;
    let deadline = tokio::time::Instant::now() + timeout;
    // Room for any datagram, but never zeroed or touched beyond what arrives: a
    // zeroed 64 KiB per query in flight made every one of them resident, and the
    // heap grown for them stayed pinned by cache entries allocated in between.
    let mut buf = Vec::with_capacity(65535);
    let mut case_differed = false;
    // Bounded by the deadline: anything that does not match is ignored (it may be
    // a spoofing attempt) and we keep waiting for the real reply.
    loop {
        buf.clear();
        let len = match tokio::time::timeout_at(deadline, socket.recv_buf(&mut buf)).await {
            Err(_) if case_differed => return Err(UpstreamError::CaseMismatch(server)),
            Err(_) => return Err(UpstreamError::Timeout(server)),
            Ok(Err(e)) => return Err(UpstreamError::Io(server, e)),
            Ok(Ok(len)) => len,
        };
        let Some(packet) = buf.get(..len) else {
            continue;
        };
        match decode_reply(packet, id, &asked) {
            Some(reply) if case == Case::Lower => return Ok(reply),
            Some(reply) if case_check(&reply, &asked.name) == CaseCheck::Echoed => {
                return Ok(restore_case(reply, query));
            }
            Some(_) => {
                log::debug!("ignoring a reply from {server} in another letter case");
                case_differed = true;
            }
            None => log::debug!("ignoring mismatched or malformed reply from {server}"),
        }
    }
}

async fn exchange_tcp(
    server: SocketAddr,
    query: &UpstreamQuery,
    timeout: Duration,
    edns: bool,
) -> Result<Message, UpstreamError> {
    let id: u16 = rand::random();
    let bytes = encode_query(query, id, edns)?;
    let exchange = async {
        let mut stream = TcpStream::connect(server).await?;
        let len = u16::try_from(bytes.len()).map_err(|_| io::Error::other("query too long"))?;
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&bytes);
        stream.write_all(&framed).await?;
        let len = stream.read_u16().await?;
        let mut reply = vec![0u8; usize::from(len)];
        stream.read_exact(&mut reply).await?;
        Ok::<_, io::Error>(reply)
    };
    let reply = match tokio::time::timeout(timeout, exchange).await {
        Err(_) => return Err(UpstreamError::Timeout(server)),
        Ok(Err(e)) => return Err(UpstreamError::Io(server, e)),
        Ok(Ok(reply)) => reply,
    };
    decode_reply(&reply, id, query).ok_or(UpstreamError::BadReply(server))
}

/// RCODE names as CoreDNS's `rcode` label prints them.
fn rcode_name(rcode: u16) -> &'static str {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Mode, TestUpstream};

    fn question(name: &str) -> UpstreamQuery {
        UpstreamQuery {
            name: Name::from_ascii(name).unwrap(),
            qtype: RecordType::A,
            qclass: DNSClass::IN,
            dnssec_ok: false,
            checking_disabled: false,
        }
    }

    fn options(attempts: usize) -> ExchangeOptions {
        ExchangeOptions {
            timeout: Duration::from_millis(400),
            attempts,
            failure_backoff: Duration::from_secs(5),
            force_tcp: false,
        }
    }

    #[test]
    fn random_case_keeps_the_name_and_varies_only_letters() {
        let name = Name::from_ascii("web-1.default.svc.cluster.local.").unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..64 {
            let mixed = randomize_case(&name);
            assert_eq!(mixed, name, "equal ignoring case");
            assert!(mixed.is_fqdn());
            let text = mixed.to_ascii();
            assert!(text.contains("-1."), "digits and hyphens untouched: {text}");
            seen.insert(text);
        }
        // 25 letters: 64 draws all alike would be a broken generator.
        assert!(seen.len() > 32, "{seen:?}");
        let digits = Name::from_ascii("1.2.3.4.").unwrap();
        assert!(randomize_case(&digits).eq_case(&digits));
    }

    #[tokio::test]
    async fn questions_go_in_random_case_and_replies_come_back_lowercased() {
        let up = TestUpstream::start(Mode::Answer {
            ttl: 60,
            records: 1,
        })
        .await;
        let exchanger = Exchanger::new(Metrics::new());
        let query = question("case.default.svc.cluster.local.");
        let mut casings = std::collections::HashSet::new();
        for _ in 0..8 {
            let reply = exchanger
                .exchange(&[up.addr], &query, &options(1))
                .await
                .unwrap();
            assert!(reply.queries[0].name().eq_case(&query.name));
            assert!(reply.answers.iter().all(|r| r.name.eq_case(&query.name)));
            casings.insert(up.last_query().unwrap().queries[0].name().to_ascii());
        }
        assert!(
            casings.len() > 1,
            "the upstream saw one casing only: {casings:?}"
        );
    }

    #[tokio::test]
    async fn a_reply_in_another_case_is_a_forgery_even_with_the_right_id() {
        // Wrong ID, wrong question, wrong source, wrong case (all 6.6.6.6), then real.
        let up = TestUpstream::start(Mode::Spoof { then_answer: true }).await;
        let exchanger = Exchanger::new(Metrics::new());
        let reply = exchanger
            .exchange(&[up.addr], &question("forged.example."), &options(1))
            .await
            .unwrap();
        let addresses: Vec<String> = reply.answers.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(addresses, ["10.0.0.1"]);
    }

    #[tokio::test]
    async fn a_server_that_does_not_echo_the_case_is_asked_in_lowercase() {
        let up = TestUpstream::start(Mode::LowercaseQuestion { ttl: 60 }).await;
        let exchanger = Exchanger::new(Metrics::new());
        let query = question("lower.example.");
        // The first attempt meets a reply in the wrong case and times out; the second,
        // in lowercase, is answered.
        let reply = exchanger
            .exchange(&[up.addr], &query, &options(2))
            .await
            .unwrap();
        assert_eq!(reply.answers.len(), 1);
        assert_eq!(up.udp_queries.load(std::sync::atomic::Ordering::SeqCst), 2);
        // From then on one attempt, in lowercase.
        exchanger
            .exchange(&[up.addr], &query, &options(1))
            .await
            .unwrap();
        assert_eq!(up.udp_queries.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert!(up.last_query().unwrap().queries[0]
            .name()
            .eq_case(&query.name));
        assert!(exchanger.health.any_healthy(&[up.addr]), "not marked down");
    }
}
