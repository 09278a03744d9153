//! The node-local caching DNS forwarder.
//!
//! - [`DnsService`] answers a query from the cache or forwards it (cluster zones to
//!   kube-dns-uncached, stub domains to their servers, the rest to the node's
//!   resolvers), coalescing identical misses, prefetching popular entries and
//!   serving stale answers when upstreams fail.
//! - [`server`] runs the UDP and TCP listeners over a service.
//!
//! Wiring, as the agent does it:
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use std::path::Path;
//! use nldns::dns::{server, DnsConfig, DnsService, KubeDnsConfig};
//! use nldns::metrics::Metrics;
//! use tokio_util::sync::CancellationToken;
//!
//! let mut config = DnsConfig::for_cluster_domain("cluster.local");
//! config.cluster_upstreams = vec!["10.96.0.11:53".parse()?];
//! config.default_upstreams = DnsConfig::read_resolv_conf(Path::new("/etc/resolv.conf"))?;
//! config.apply_kube_dns_config(KubeDnsConfig::read(Path::new("/etc/kube-dns"))?);
//! let svc = DnsService::new(config, Metrics::new())?;
//! let shutdown = CancellationToken::new();
//! let udp = tokio::net::UdpSocket::bind("169.254.20.10:53").await?;
//! let tcp = tokio::net::TcpListener::bind("169.254.20.10:53").await?;
//! tokio::spawn(server::serve_udp(udp, svc.clone(), shutdown.clone()));
//! server::serve_tcp(tcp, svc, shutdown).await?;
//! # Ok(()) }
//! ```
//!
//! Layout: `wire` (hot-path parsing and patching, hand-written), `cache` (storage,
//! eviction, TTLs), `answer` (upstream reply -> stored answer), `upstream`
//! (exchanges and health), `router` (zones, resolv.conf, kube-dns config),
//! `config`, `service`, `server`, `udp_loop` (the UDP serving threads, recvmmsg batches).

pub mod answer;
pub mod cache;
pub mod config;
pub mod router;
pub mod server;
pub mod service;
mod udp_loop;
pub mod upstream;
pub mod wire;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

pub use config::DnsConfig;
pub use router::KubeDnsConfig;
pub use service::{DnsService, Handled, Handling, PendingQuery, Protocol, Scratch, HEARTBEAT_NAME};
