//! One home for the agent's DNS configuration. Three sources land in one typed
//! structure, the engine's [`DnsConfig`], by one function used at start and on every
//! reload:
//! - the command line (`--cluster-domain`, `--upstream`, `--resolv-conf`, `--config`;
//!   clap derive in `cli.rs`, which also gives each flag its `NLDNS_*` variable);
//! - the node's resolv.conf (`resolv.rs`);
//! - the optional `--config` file or mounted ConfigMap (`file.rs`, serde derive):
//!   kube-dns's `stubDomains` and `upstreamNameservers`, so an existing kube-dns
//!   ConfigMap carries over unchanged, nldns's `cache` settings and `forceTcpZones`;
//! - `corefile.rs` is not a source: `nldns import-corefile` translates a node-local-dns
//!   Corefile into such a file once, at migration.
//!
//! The datapath's settings (Service IPs, intercept endpoint, heartbeat age) are not
//! reloadable and go from the flags straight to `datapath::loader::DatapathSettings`;
//! the kernel-facing layout they are written in is `nldns_common::DatapathConfig`.

pub mod corefile;
pub mod file;
pub mod resolv;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nldns_dns::DnsConfig;

pub use file::{parse_server, ConfigFile};

/// Where the DNS configuration comes from (the flags that name it).
#[derive(Debug, Clone, Copy)]
pub struct DnsSources<'a> {
    pub cluster_domain: &'a str,
    /// `--upstream`: the kube-dns-uncached Service.
    pub cluster_upstreams: &'a [SocketAddr],
    pub resolv_conf: &'a Path,
    pub config_file: Option<&'a Path>,
}

/// Builds the DNS configuration; errors name the flag, file or key at fault.
pub fn dns_config(sources: &DnsSources) -> Result<DnsConfig> {
    let domain = sources.cluster_domain.trim_end_matches('.');
    if domain.is_empty() {
        bail!("--cluster-domain is empty");
    }
    let mut config = DnsConfig::for_cluster_domain(domain);
    config.cluster_upstreams = sources.cluster_upstreams.to_vec();
    config.default_upstreams = resolv::read(sources.resolv_conf)
        .with_context(|| format!("--resolv-conf {}", sources.resolv_conf.display()))?;
    if let Some(path) = sources.config_file {
        let file =
            ConfigFile::read(path).with_context(|| format!("--config {}", path.display()))?;
        apply(&mut config, file);
    }
    Ok(config)
}

/// The file's keys over the defaults: stub domains; upstream nameservers replace the
/// resolv.conf ones; cache bounds, lifetimes, prefetch and serve-stale; TCP-only zones.
/// The file was validated when read (ranges, zone names).
fn apply(config: &mut DnsConfig, file: ConfigFile) {
    config.stub_domains = file
        .stub_domains
        .unwrap_or_default()
        .into_iter()
        .map(|(zone, servers)| (zone, servers.into_iter().map(|s| s.0).collect()))
        .collect();
    let upstream: Vec<SocketAddr> = file
        .upstream_nameservers
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.0)
        .collect();
    if !upstream.is_empty() {
        config.default_upstreams = upstream;
    }
    if let Some(cache) = file.cache {
        if let Some(n) = cache.max_entries {
            config.max_entries = n;
        }
        if let Some(n) = cache.max_bytes {
            config.max_bytes = n;
        }
        let secs = Duration::from_secs;
        if let Some(s) = cache.max_ttl {
            config.max_ttl = secs(s);
        }
        if let Some(s) = cache.cluster_max_ttl {
            config.cluster_max_ttl = secs(s);
        }
        if let Some(s) = cache.min_ttl {
            config.min_ttl = secs(s);
        }
        if let Some(s) = cache.negative_max_ttl {
            config.negative_max_ttl = secs(s);
        }
        if let Some(p) = cache.prefetch {
            if let Some(n) = p.min_hits {
                config.prefetch_min_hits = n;
            }
            if let Some(n) = p.percent {
                config.prefetch_percent = n;
            }
            if p.enabled == Some(false) {
                config.prefetch_percent = 0;
            }
        }
        if let Some(s) = cache.serve_stale {
            if let Some(n) = s.max_seconds {
                config.serve_stale_max = secs(n);
            }
            if s.enabled == Some(false) {
                config.serve_stale_max = Duration::ZERO;
            }
        }
    }
    if let Some(zones) = file.force_tcp_zones {
        config.force_tcp_zones = zones;
    }
    if let Some(limits) = file.limits {
        let set = |field: &mut usize, value: Option<usize>| {
            if let Some(n) = value {
                *field = n;
            }
        };
        set(
            &mut config.max_upstream_in_flight,
            limits.max_upstream_in_flight,
        );
        set(&mut config.max_waiting_queries, limits.max_waiting_queries);
        set(
            &mut config.max_upstream_in_flight_per_source,
            limits.max_upstream_in_flight_per_source,
        );
        set(
            &mut config.max_waiting_queries_per_source,
            limits.max_waiting_queries_per_source,
        );
        if let Some(n) = limits.max_upstream_qps {
            config.max_upstream_qps = n;
        }
        if let Some(n) = limits.max_upstream_qps_per_source {
            config.max_upstream_qps_per_source = n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_resolv_conf_and_file_make_one_config() {
        let dir = std::env::temp_dir().join(format!("nldns-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let resolv = dir.join("resolv.conf");
        std::fs::write(&resolv, "nameserver 192.0.2.1\n").unwrap();
        let file = dir.join("config.json");
        std::fs::write(
            &file,
            r#"{"stubDomains": {"corp": ["10.1.1.1"]}, "cache": {"maxEntries": 7},
                "limits": {"maxUpstreamInFlightPerSource": 3, "maxUpstreamQps": 0,
                           "maxUpstreamQpsPerSource": 50}}"#,
        )
        .unwrap();
        let upstream: Vec<SocketAddr> = vec!["10.96.0.11:53".parse().unwrap()];
        let mut sources = DnsSources {
            cluster_domain: "Cluster.Local.",
            cluster_upstreams: &upstream,
            resolv_conf: &resolv,
            config_file: Some(&file),
        };
        let config = dns_config(&sources);
        sources.cluster_domain = ".";
        let no_domain = dns_config(&sources);
        std::fs::write(
            &file,
            r#"{"upstreamNameservers": ["9.9.9.9"], "cache": []}"#,
        )
        .unwrap();
        sources.cluster_domain = "cluster.local";
        let bad_file = dns_config(&sources);
        std::fs::remove_dir_all(&dir).unwrap();

        let config = config.unwrap();
        assert_eq!(config.cluster_domain, "cluster.local");
        assert_eq!(config.cluster_upstreams, upstream);
        assert_eq!(
            config.default_upstreams,
            vec!["192.0.2.1:53".parse().unwrap()]
        );
        assert_eq!(
            config.stub_domains,
            vec![("corp".to_string(), vec!["10.1.1.1:53".parse().unwrap()])]
        );
        assert_eq!(config.max_entries, 7);
        assert_eq!(config.max_upstream_in_flight_per_source, 3);
        assert_eq!(config.max_upstream_qps, 0);
        assert_eq!(config.max_upstream_qps_per_source, 50);
        let defaults = DnsConfig::default();
        assert_eq!(
            config.max_waiting_queries_per_source,
            defaults.max_waiting_queries_per_source
        );
        assert!(format!("{:#}", no_domain.unwrap_err()).contains("--cluster-domain"));
        let err = format!("{:#}", bad_file.unwrap_err());
        assert!(err.contains("--config") && err.contains("cache"), "{err}");
    }

    #[test]
    fn cache_lifetimes_prefetch_serve_stale_and_tcp_zones_reach_the_engine() {
        let mut config = DnsConfig::default();
        let file = ConfigFile::from_json(
            r#"{"cache": {"maxTtl": 300, "clusterMaxTtl": 10, "minTtl": 0,
                          "negativeMaxTtl": 30, "prefetch": {"minHits": 2, "percent": 20},
                          "serveStale": {"maxSeconds": 86400}},
                "forceTcpZones": ["cluster.local"]}"#,
        )
        .unwrap();
        apply(&mut config, file);
        assert_eq!(config.max_ttl, Duration::from_secs(300));
        assert_eq!(config.cluster_max_ttl, Duration::from_secs(10));
        assert_eq!(config.min_ttl, Duration::ZERO);
        assert_eq!(config.negative_max_ttl, Duration::from_secs(30));
        assert_eq!((config.prefetch_min_hits, config.prefetch_percent), (2, 20));
        assert_eq!(config.serve_stale_max, Duration::from_secs(86400));
        assert_eq!(config.force_tcp_zones, vec!["cluster.local".to_string()]);

        // Turned off; what is absent keeps the engine's default.
        let mut config = DnsConfig::default();
        let file = ConfigFile::from_json(
            r#"{"cache": {"prefetch": {"enabled": false, "minHits": 3},
                          "serveStale": {"enabled": false}}}"#,
        )
        .unwrap();
        apply(&mut config, file);
        let defaults = DnsConfig::default();
        assert_eq!((config.prefetch_min_hits, config.prefetch_percent), (3, 0));
        assert_eq!(config.serve_stale_max, Duration::ZERO);
        assert_eq!(config.max_ttl, defaults.max_ttl);
        assert_eq!(config.min_ttl, defaults.min_ttl);
        assert_eq!(config.force_tcp_zones, defaults.force_tcp_zones);
    }
}
