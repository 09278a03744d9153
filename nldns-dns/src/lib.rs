//! The nldns DNS engine: a node-local caching forwarder with no knowledge of how
//! queries reach it (the agent's eBPF datapath, a plain socket, a test).
//!
//! - [`DnsService::handle`] (`handle.rs`) is the one entry point for a query: it answers
//!   from the cache (synchronously, no task), or returns a [`PendingQuery`] whose
//!   `resolve` goes through the miss path (`miss.rs`: one upstream query per cache key,
//!   coalescing, the in-flight bounds of `inflight.rs`, serve-stale on failure).
//!   `reply.rs` renders what the client gets; `service.rs` holds the service's state
//!   (configuration, cache, the miss path's table) and its upkeep (reload, health).
//!   The files depend one way: inflight <- service <- reply <- miss <- handle.
//! - [`server`] runs UDP (dedicated threads with recvmmsg batches, `udp_loop.rs`) and
//!   TCP listeners over a service; [`accept`] is the bounded accept loop it shares with
//!   the agent's HTTP servers.
//! - [`cache`] stores wire-format answers (`cache/entry.rs` one packed block per
//!   answer, `cache/lru.rs` the slab and its recency list); [`answer`] turns an
//!   upstream reply into a stored answer; [`wire`] is the hand-written hot-path parser
//!   and patcher; [`upstream`] does exchanges and tracks upstream health; [`router`]
//!   maps zones to upstreams; [`config`] is the whole configuration, swapped on reload.
//! - [`kernel_answers`]: the cache's entries published to an [`kernel_answers::AnswerTable`]
//!   a datapath answers hits from itself (the agent's TC responder), and what it
//!   answered read back every second ([`DnsService::sync_kernel_answers`]).
//! - [`metrics`]: the engine's Prometheus metrics; the agent adds its own collectors to
//!   the same registry. [`memory`] gives the heap that misses churned back to the kernel.
//!
//! Wiring, as the agent does it:
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use nldns_dns::{metrics::Metrics, server, DnsConfig, DnsService};
//! use tokio_util::sync::CancellationToken;
//!
//! let mut config = DnsConfig::for_cluster_domain("cluster.local");
//! config.cluster_upstreams = vec!["10.96.0.11:53".parse()?];
//! config.default_upstreams = vec!["192.0.2.53:53".parse()?];
//! let svc = DnsService::new(config, Metrics::new())?;
//! let shutdown = CancellationToken::new();
//! let udp = std::net::UdpSocket::bind("169.254.20.10:53")?;
//! let tcp = tokio::net::TcpListener::bind("169.254.20.10:53").await?;
//! tokio::spawn(server::serve_udp_std(udp, svc.clone(), shutdown.clone(), 1));
//! server::serve_tcp(tcp, svc, shutdown).await?;
//! # Ok(()) }
//! ```
//!
//! No eBPF, no netlink and no build script: this crate builds and tests with stable
//! Rust alone. The `fuzzing` feature exposes the miss path's reply handling without a
//! network, for the fuzz targets only.

pub mod accept;
pub mod answer;
pub mod cache;
pub mod config;
#[cfg(feature = "fuzzing")]
mod fuzz;
mod handle;
mod inflight;
pub mod kernel_answers;
pub mod memory;
pub mod metrics;
mod miss;
mod reply;
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
pub use handle::Handling;
pub use miss::PendingQuery;
pub use service::{DnsService, Protocol, Scratch, HEARTBEAT_NAME};
