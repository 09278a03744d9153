//! The DNS service's configuration: where names go, cache lifetimes and bounds,
//! upstream timeouts and limits. Every field is public; `Default` has the values an
//! operator gets without flags. Reading it from flags and files is the agent's job
//! (its `config` module); the engine takes it whole, at start and on reload.

use std::net::SocketAddr;
use std::time::Duration;

use super::cache::CachePolicy;
use super::router::{self, Router, ZoneRule};

/// Configuration of [`super::DnsService`]; `reload` takes a whole new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// The cluster's DNS domain ("cluster.local").
    pub cluster_domain: String,
    /// Zones answered by kube-dns: the cluster domain and the reverse zones.
    pub cluster_zones: Vec<String>,
    /// The kube-dns-uncached Service IP(s).
    pub cluster_upstreams: Vec<SocketAddr>,
    /// Everything outside the cluster and stub zones goes here (node's resolv.conf,
    /// or kube-dns's `upstreamNameservers`).
    pub default_upstreams: Vec<SocketAddr>,
    /// kube-dns's `stubDomains`: zone -> its own servers.
    pub stub_domains: Vec<(String, Vec<SocketAddr>)>,
    /// Names in these zones are always asked over TCP.
    pub force_tcp_zones: Vec<String>,

    /// Cache bound in entries (default 150,000: a busy node's sizing point is 100,000
    /// distinct names held at once, which the agent holds in about 30 MiB of RSS (the
    /// repository's docs/operations.md, "Resources"); the room above it keeps a node at
    /// that point from evicting) ...
    pub max_entries: usize,
    /// ... and in bytes: what each entry really holds on the heap (its answer and
    /// buffer with malloc's overhead, its slot and index), within a few percent.
    pub max_bytes: usize,
    /// Positive TTL cap for the cluster zones: kube-dns's own answers say 30 s, and a
    /// Service change must show within that.
    pub cluster_max_ttl: Duration,
    /// Positive TTL cap for every other zone.
    pub max_ttl: Duration,
    /// Positive TTL floor (as CoreDNS's cache plugin: 5 s), so TTL-0 answers still
    /// absorb bursts. Set to zero to honour TTL 0.
    pub min_ttl: Duration,
    /// Cap on NXDOMAIN/NODATA lifetimes (RFC 2308: min(SOA TTL, SOA MINIMUM)).
    pub negative_max_ttl: Duration,
    /// How long a SERVFAIL (upstream's, or ours after every upstream failed) is
    /// cached: RFC 9520 asks for at least 1 s; 2 s absorbs retry storms while a
    /// broken name recovers quickly.
    pub servfail_ttl: Duration,
    /// Prefetch an entry hit at least this many times ...
    pub prefetch_min_hits: u32,
    /// ... when less than this percentage of its TTL is left (0 disables prefetch).
    pub prefetch_percent: u32,
    /// Serve expired answers for up to this long when upstreams fail (RFC 8767);
    /// zero disables serve-stale.
    pub serve_stale_max: Duration,
    /// TTL given to stale answers (RFC 8767 recommends 30 s).
    pub stale_answer_ttl: u32,
    /// After an upstream failure, serve stale without asking upstream for this long.
    pub stale_recheck: Duration,
    /// With a stale answer at hand, answer it if upstream has not within this time
    /// (RFC 8767's client response timer, 1.8 s).
    pub stale_client_timeout: Duration,

    /// Time allowed for one upstream attempt.
    pub upstream_timeout: Duration,
    /// Attempts per query, moving across upstreams (2 x 2 s stays under glibc's 5 s).
    pub upstream_attempts: usize,
    /// An upstream that timed out or errored is tried last for this long.
    pub upstream_failure_backoff: Duration,
    /// Upstream queries in flight at once; past it, misses get SERVFAIL at once.
    pub max_upstream_in_flight: usize,
    /// Client queries waiting for an upstream answer at once; past it, SERVFAIL.
    pub max_waiting_queries: usize,
    /// Upstream exchanges one client (source IP) may have started and still in
    /// flight; past it, that client's new names get SERVFAIL at once (stale if
    /// cached) and everyone else's still resolve. Joining an exchange already in
    /// flight is not an exchange started.
    pub max_upstream_in_flight_per_source: usize,
    /// Queries one client may have waiting for upstream at once (its own exchanges
    /// and those it joined); past it, SERVFAIL at once for that client.
    pub max_waiting_queries_per_source: usize,
    /// Upstream exchanges the node starts per second at most, whoever asks (the
    /// query rate the upstreams see from this node, apart from TCP and EDNS
    /// retries of an exchange); past it, SERVFAIL at once. 0: unbounded.
    pub max_upstream_qps: u32,
    /// Upstream exchanges one client (source IP) may start per second; past it, that
    /// client's new names get SERVFAIL at once (stale if cached), so no single client
    /// can use up `max_upstream_qps` against a fast upstream. 0: unbounded.
    pub max_upstream_qps_per_source: u32,
    /// TCP client connections at once; more are closed at accept.
    pub max_tcp_connections: usize,
    /// Queries answered concurrently per TCP connection (pipelining depth).
    pub max_tcp_pipeline: usize,
    /// A TCP client connection with no query for this long is closed.
    pub tcp_idle_timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self::for_cluster_domain("cluster.local")
    }
}

impl DnsConfig {
    /// Defaults, with `domain` as the cluster domain (and first cluster zone).
    pub fn for_cluster_domain(domain: &str) -> Self {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        DnsConfig {
            cluster_zones: vec![domain.clone(), "in-addr.arpa".into(), "ip6.arpa".into()],
            cluster_domain: domain,
            cluster_upstreams: Vec::new(),
            default_upstreams: Vec::new(),
            stub_domains: Vec::new(),
            force_tcp_zones: Vec::new(),
            max_entries: 150_000,
            max_bytes: 64 << 20,
            cluster_max_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(3600),
            min_ttl: Duration::from_secs(5),
            negative_max_ttl: Duration::from_secs(5),
            servfail_ttl: Duration::from_secs(2),
            prefetch_min_hits: 5,
            prefetch_percent: 10,
            serve_stale_max: Duration::from_secs(3600),
            stale_answer_ttl: 30,
            stale_recheck: Duration::from_secs(30),
            stale_client_timeout: Duration::from_millis(1800),
            upstream_timeout: Duration::from_secs(2),
            upstream_attempts: 2,
            upstream_failure_backoff: Duration::from_secs(10),
            max_upstream_in_flight: 1000,
            max_waiting_queries: 10_000,
            max_upstream_in_flight_per_source: 100,
            max_waiting_queries_per_source: 1000,
            max_upstream_qps: 5000,
            max_upstream_qps_per_source: 1000,
            max_tcp_connections: 1000,
            max_tcp_pipeline: 64,
            tcp_idle_timeout: Duration::from_secs(10),
        }
    }

    /// Routing table: stub domains, then cluster zones (longest zone wins anyway).
    pub(crate) fn router(&self, zone_label: &dyn Fn(&str) -> u8) -> anyhow::Result<Router> {
        let mut rules: Vec<ZoneRule> = self
            .stub_domains
            .iter()
            .map(|(zone, servers)| ZoneRule {
                zone: zone.clone(),
                upstreams: servers.clone(),
                max_ttl: if self.is_cluster_zone(zone) {
                    self.cluster_max_ttl
                } else {
                    self.max_ttl
                },
            })
            .collect();
        rules.extend(self.cluster_zones.iter().map(|zone| ZoneRule {
            zone: zone.clone(),
            upstreams: self.cluster_upstreams.clone(),
            max_ttl: self.cluster_max_ttl,
        }));
        Router::new(
            rules,
            self.default_upstreams.clone(),
            self.max_ttl,
            &self.force_tcp_zones,
            zone_label,
        )
    }

    fn is_cluster_zone(&self, zone: &str) -> bool {
        let (Ok(zone), Ok(zones)) = (
            router::zone_to_wire(zone),
            self.cluster_zones
                .iter()
                .map(|z| router::zone_to_wire(z))
                .collect::<anyhow::Result<Vec<_>>>(),
        ) else {
            return false;
        };
        zones.iter().any(|z| router::is_within(&zone, z))
    }

    pub(crate) fn cache_policy(&self) -> CachePolicy {
        CachePolicy {
            max_entries: self.max_entries,
            max_bytes: self.max_bytes,
            prefetch_min_hits: self.prefetch_min_hits,
            prefetch_percent: self.prefetch_percent,
            stale_max: self.serve_stale_max,
            stale_recheck: self.stale_recheck,
        }
    }
}
