//! The node-local caching DNS forwarder.
//!
//! - [`DnsService`] answers a query from the cache or forwards it (cluster zones to
//!   kube-dns-uncached, stub domains to their servers, the rest to the node's
//!   resolvers), coalescing identical misses, prefetching popular entries and
//!   serving stale answers when upstreams fail.
//! - [`server`] runs the UDP and TCP listeners over a service.
//!
//! Layout: `wire` (hot-path parsing and patching, hand-written), `cache` (storage,
//! eviction, TTLs), `answer` (upstream reply -> stored answer), `upstream`
//! (exchanges and health), `router` (zones, resolv.conf, kube-dns config),
//! `config`, `service`, `server`.

pub mod answer;
pub mod cache;
pub mod config;
pub mod router;
pub mod server;
pub mod service;
pub mod upstream;
pub mod wire;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

pub use config::DnsConfig;
pub use router::KubeDnsConfig;
pub use service::{DnsService, Handled, PendingQuery, Protocol, HEARTBEAT_NAME};
