//! A DNS proxy in front of a backend's knotd whose behaviour tests change at run time:
//! answer normally, answer late, or never answer.
//!
//! knot has no delay option and this kernel has no netem qdisc, so a slow or black-holed
//! kube-dns is made here. The proxy listens on the backend's public address (UDP and TCP)
//! and forwards each query to knot on the backend's loopback. Every loop is bounded: each
//! forward has a deadline, in-flight queries are capped, and all threads watch a stop flag.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::dns_client::Transport;
use crate::netns::Netns;

/// A query as the backend saw it: the per-name evidence that a cache did (or did not)
/// forward a question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenQuery {
    /// Lowercase, absolute (`web.default.svc.cluster.local.`).
    pub name: String,
    /// The query type as text (`A`, `AAAA`, `SRV`...).
    pub rtype: String,
    pub transport: Transport,
    pub at: Instant,
}

impl SeenQuery {
    fn parse(query: &[u8], transport: Transport) -> Option<SeenQuery> {
        let message = hickory_proto::op::Message::from_vec(query).ok()?;
        let question = message.queries.first()?;
        let mut name = question.name().to_ascii().to_ascii_lowercase();
        if !name.ends_with('.') {
            name.push('.');
        }
        Some(SeenQuery {
            name,
            rtype: question.query_type().to_string(),
            transport,
            at: Instant::now(),
        })
    }
}

/// How the proxy treats each query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Forward at once.
    Normal,
    /// Forward after this delay.
    Delay(Duration),
    /// Swallow the query: the client sees a timeout (a hung or overloaded backend).
    Drop,
}

/// At most this many queries wait in the proxy at once; more are dropped, so a load test
/// against a delayed backend cannot spawn threads without bound.
const MAX_IN_FLIGHT: usize = 256;
/// How long the proxy waits for knot.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// How often idle threads look at the stop flag.
const POLL: Duration = Duration::from_millis(100);
/// A TCP client idle this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Shared {
    behaviour: Mutex<Behaviour>,
    stop: AtomicBool,
    received: AtomicU64,
    log: Mutex<Vec<SeenQuery>>,
    in_flight: AtomicUsize,
    upstream: SocketAddr,
    /// Where names outside `local_zones` go (CoreDNS's `forward . /etc/resolv.conf`).
    forward: Option<SocketAddr>,
    local_zones: Vec<String>,
}

/// A running proxy; [`SlowProxy::stop`] (or drop) ends its threads.
#[derive(Debug)]
pub struct SlowProxy {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl SlowProxy {
    /// Binds UDP and TCP on every `listen` address inside `netns` and forwards to
    /// `upstream` (knot, inside the same namespace) the names under `local_zones`
    /// (absolute, e.g. `cluster.local.`); other names go to `forward` when given, like
    /// CoreDNS forwards non-cluster names to the node's resolvers, else to knot too.
    pub fn start(
        netns: &Netns,
        listen: &[SocketAddr],
        upstream: SocketAddr,
        local_zones: &[&str],
        forward: Option<SocketAddr>,
    ) -> Result<SlowProxy> {
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(Behaviour::Normal),
            stop: AtomicBool::new(false),
            received: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            upstream,
            forward,
            local_zones: local_zones.iter().map(|z| z.to_ascii_lowercase()).collect(),
        });
        let mut proxy = SlowProxy {
            shared: shared.clone(),
            threads: Vec::new(),
        };
        for &addr in listen {
            // Bind inside the namespace first, so a bind error is reported here.
            let (udp, tcp) = netns.run_inside(move || -> Result<(UdpSocket, TcpListener)> {
                let udp = UdpSocket::bind(addr).with_context(|| format!("binding UDP {addr}"))?;
                let tcp = TcpListener::bind(addr).with_context(|| format!("binding TCP {addr}"))?;
                Ok((udp, tcp))
            })??;
            udp.set_read_timeout(Some(POLL))?;
            tcp.set_nonblocking(true)?;
            // The serving threads run inside the namespace too: the sockets they open to
            // knot must reach the backend's loopback.
            let s = shared.clone();
            proxy
                .threads
                .push(netns.spawn_inside("slow-dns-udp", move || serve_udp(udp, s))?);
            let s = shared.clone();
            proxy
                .threads
                .push(netns.spawn_inside("slow-dns-tcp", move || serve_tcp(tcp, s))?);
        }
        Ok(proxy)
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self
            .shared
            .behaviour
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = behaviour;
    }

    /// Queries received so far (answered or not).
    pub fn received(&self) -> u64 {
        self.shared.received.load(Ordering::Relaxed)
    }

    /// Every query received so far, in arrival order.
    pub fn seen(&self) -> Vec<SeenQuery> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops the listeners and waits for them (in-flight forwards end at their deadline).
    pub fn stop(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

impl Shared {
    /// Counts and logs the query, then decides: None to drop it, Some(delay) to forward it.
    /// Returns the delay and where to forward.
    fn admit(&self, query: &[u8], transport: Transport) -> Option<(Duration, SocketAddr)> {
        self.received.fetch_add(1, Ordering::Relaxed);
        let mut target = self.upstream;
        if let Some(seen) = SeenQuery::parse(query, transport) {
            let local = self
                .local_zones
                .iter()
                .any(|zone| seen.name == *zone || seen.name.ends_with(&format!(".{zone}")));
            if let (false, Some(forward)) = (local, self.forward) {
                target = forward;
            }
            self.log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(seen);
        }
        let delay = match *self.behaviour.lock().unwrap_or_else(|e| e.into_inner()) {
            Behaviour::Normal => Duration::ZERO,
            Behaviour::Delay(delay) => delay,
            Behaviour::Drop => return None,
        };
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some((delay, target))
    }

    fn done(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Sleeps `delay` in small steps so a stop is not held up by a long delay.
    fn sleep(&self, delay: Duration) -> bool {
        let end = Instant::now() + delay;
        while Instant::now() < end {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(POLL.min(end.saturating_duration_since(Instant::now())));
        }
        true
    }
}

fn serve_udp(socket: UdpSocket, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65535];
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok((len, client)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Some((delay, target)) = shared.admit(&buf[..len], Transport::Udp) else {
            continue;
        };
        let (Ok(reply_socket), query) = (socket.try_clone(), buf[..len].to_vec()) else {
            shared.done();
            continue;
        };
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("slow-dns-fwd".into())
            .spawn(move || {
                if s.sleep(delay) {
                    if let Ok(reply) = forward_udp(&query, target) {
                        let _ = reply_socket.send_to(&reply, client);
                    }
                }
                s.done();
            });
        if spawned.is_err() {
            shared.done();
        }
    }
}

fn forward_udp(query: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local)?;
    socket.set_read_timeout(Some(UPSTREAM_TIMEOUT))?;
    socket.connect(upstream)?;
    socket.send(query)?;
    let mut buf = vec![0u8; 65535];
    let len = socket.recv(&mut buf)?;
    buf.truncate(len);
    Ok(buf)
}

fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let s = shared.clone();
                let _ = std::thread::Builder::new()
                    .name("slow-dns-conn".into())
                    .spawn(move || serve_tcp_client(stream, s));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Serves one TCP client: frames are read as they arrive (a read timeout never loses
/// bytes), each complete query is forwarded over TCP to knot, so large answers stay whole.
fn serve_tcp_client(mut stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(POLL));
    let mut pending = Vec::new();
    let mut last_activity = Instant::now();
    let mut chunk = [0u8; 4096];
    while !shared.stop.load(Ordering::Relaxed) && last_activity.elapsed() < TCP_IDLE {
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => {
                pending.extend_from_slice(&chunk[..n]);
                last_activity = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        }
        while pending.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([pending[0], pending[1]]));
            if pending.len() < 2 + len {
                break;
            }
            let query: Vec<u8> = pending.drain(..2 + len).skip(2).collect();
            let Some((delay, target)) = shared.admit(&query, Transport::Tcp) else {
                continue;
            };
            let reply = if shared.sleep(delay) {
                forward_tcp(&query, target).ok()
            } else {
                None
            };
            shared.done();
            if let Some(reply) = reply {
                let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&reply);
                if stream.write_all(&framed).is_err() {
                    return;
                }
            }
        }
    }
}

fn forward_tcp(query: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&upstream, UPSTREAM_TIMEOUT)?;
    stream.set_read_timeout(Some(UPSTREAM_TIMEOUT))?;
    stream.set_write_timeout(Some(UPSTREAM_TIMEOUT))?;
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    stream.write_all(&framed)?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply)?;
    Ok(reply)
}
