//! A small DNS client (hickory-proto for the wire format, std sockets for transport).
//!
//! Called directly it queries from the calling thread's namespace; [`crate::node::SimNode`]
//! runs it on a thread inside a pod's namespace. The UDP socket is connected to the server,
//! so, like a real stub resolver, it only accepts a reply whose source is the address it
//! queried: an intercepted reply that comes back from the wrong address is a timeout.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

/// How the query travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Options of one query; the defaults match a typical stub resolver (RD set, EDNS 1232).
#[derive(Debug, Clone)]
pub struct QueryOptions {
    pub transport: Transport,
    pub timeout: Duration,
    pub recursion_desired: bool,
    /// EDNS UDP payload size, or None for a query without OPT record (classic 512 bytes).
    pub edns_payload: Option<u16>,
    pub dnssec_ok: bool,
    pub checking_disabled: bool,
}

impl Default for QueryOptions {
    fn default() -> Self {
        QueryOptions {
            transport: Transport::Udp,
            timeout: Duration::from_secs(2),
            recursion_desired: true,
            edns_payload: Some(1232),
            dnssec_ok: false,
            checking_disabled: false,
        }
    }
}

impl QueryOptions {
    pub fn tcp() -> Self {
        QueryOptions {
            transport: Transport::Tcp,
            ..Self::default()
        }
    }
}

/// Builds a query message for `name` (absolute or relative, read as absolute).
pub fn build_query(name: &str, rtype: RecordType, options: &QueryOptions) -> Result<Message> {
    let mut fqdn = Name::from_ascii(name).with_context(|| format!("bad name {name}"))?;
    fqdn.set_fqdn(true);
    let mut message = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    message.add_query(Query::query(fqdn, rtype));
    message.metadata.recursion_desired = options.recursion_desired;
    message.metadata.checking_disabled = options.checking_disabled;
    if let Some(payload) = options.edns_payload {
        let mut edns = Edns::new();
        edns.set_max_payload(payload);
        edns.set_dnssec_ok(options.dnssec_ok);
        message.set_edns(edns);
    }
    Ok(message)
}

/// Sends one query and returns the parsed reply.
pub fn query(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    options: &QueryOptions,
) -> Result<Message> {
    let message = build_query(name, rtype, options)?;
    let wire = message.to_vec().context("encoding the query")?;
    let reply = exchange(server, &wire, options.transport, options.timeout)?;
    Message::from_vec(&reply).map_err(|e| anyhow::anyhow!("decoding the reply from {server}: {e}"))
}

/// Sends raw query bytes and returns the raw reply with the same ID. For tests that craft
/// or inspect bytes themselves.
pub fn exchange(
    server: SocketAddr,
    query: &[u8],
    transport: Transport,
    timeout: Duration,
) -> Result<Vec<u8>> {
    anyhow::ensure!(query.len() >= 12, "a DNS message has a 12-byte header");
    match transport {
        Transport::Udp => exchange_udp(server, query, timeout),
        Transport::Tcp => exchange_tcp(server, query, timeout),
    }
    .with_context(|| format!("{transport:?} query to {server}"))
}

fn exchange_udp(server: SocketAddr, query: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    let local: SocketAddr = match server.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).context("binding a UDP socket")?;
    socket
        .connect(server)
        .context("connecting the UDP socket")?;
    socket.send(query).context("sending")?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65535];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("timed out after {timeout:?}");
        }
        socket.set_read_timeout(Some(left))?;
        match socket.recv(&mut buf) {
            // A reply to another query (a late one, or a forged one) is skipped.
            Ok(len) if len >= 2 && buf[..2] == query[..2] => return Ok(buf[..len].to_vec()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                bail!("timed out after {timeout:?}")
            }
            Err(e) => return Err(e).context("receiving"),
        }
    }
}

fn exchange_tcp(server: SocketAddr, query: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&server, timeout).context("connecting")?;
    let len = u16::try_from(query.len()).context("query too long for TCP framing")?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(&framed).context("sending")?;
    let mut read_exact = |buf: &mut [u8]| -> Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        anyhow::ensure!(!left.is_zero(), "timed out after {timeout:?}");
        stream.set_read_timeout(Some(left))?;
        stream.read_exact(buf).context("receiving")
    };
    let mut len_buf = [0u8; 2];
    read_exact(&mut len_buf)?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len_buf))];
    read_exact(&mut reply)?;
    anyhow::ensure!(
        reply.len() >= 2 && reply[..2] == query[..2],
        "reply ID does not match"
    );
    Ok(reply)
}
