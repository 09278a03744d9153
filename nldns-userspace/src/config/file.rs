//! The `--config` file: kube-dns's ConfigMap keys (`stubDomains`, `upstreamNameservers`)
//! plus nldns's own `cache` settings (bounds, TTL caps and floor, prefetch, serve-stale),
//! `limits` (the miss path's bounds) and `forceTcpZones`, read with serde from either
//! one JSON file or a
//! mounted ConfigMap directory (one file per key).
//!
//! Unknown keys are errors, at the top and inside `cache` and `limits`: a typo (`stubDomain`) would
//! otherwise leave the defaults in place without a word. The one exception is
//! kube-dns's `federations`, which a copied kube-dns ConfigMap may still carry: it is
//! accepted and ignored with a warning. An error names the key path and the value at
//! fault; at start it stops the agent, on reload the previous configuration stays.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer};

/// Port used when an address in configuration has none.
pub const DNS_PORT: u16 = 53;

/// Above this many entries the cache's slab indices (u32) could run out; far above
/// any node's need (about 190 bytes of RSS each).
const MAX_CACHE_ENTRIES: usize = 100_000_000;

/// Longest positive cap: a week (RFC 8767 suggests capping TTLs at 7 days).
const MAX_TTL_CAP: u64 = 7 * 24 * 3600;
/// Longest negative cap: a day (RFC 2308 suggests 1 to 3 hours).
const MAX_NEGATIVE_TTL: u64 = 24 * 3600;
/// Highest floor: an hour (a floor keeps answers past their TTL: keep it small).
const MAX_MIN_TTL: u64 = 3600;
/// Longest serve-stale window: a week (RFC 8767 suggests 1 to 3 days).
const MAX_SERVE_STALE: u64 = 7 * 24 * 3600;

/// The file as written. Every value may also be a JSON string holding that JSON, as a
/// ConfigMap writes it (`stubDomains: '{"acme.local": ["1.2.3.4"]}'`); an empty string
/// is the same as an absent key.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    /// Zone -> its own servers. Sorted by zone (the longest zone wins anyway).
    #[serde(default, deserialize_with = "inline_or_string")]
    pub stub_domains: Option<BTreeMap<String, Vec<Server>>>,
    /// Replaces the node's resolv.conf servers when not empty.
    #[serde(default, deserialize_with = "inline_or_string")]
    pub upstream_nameservers: Option<Vec<Server>>,
    #[serde(default, deserialize_with = "inline_or_string")]
    pub cache: Option<CacheSection>,
    /// Names in these zones are asked upstream over TCP only (CoreDNS's `force_tcp`).
    #[serde(default, deserialize_with = "inline_or_string")]
    pub force_tcp_zones: Option<Vec<String>>,
    #[serde(default, deserialize_with = "inline_or_string")]
    pub limits: Option<LimitsSection>,
    /// kube-dns's federation (deprecated there, no meaning here).
    #[serde(default)]
    pub federations: Option<IgnoredAny>,
}

/// `cache`: `{"maxEntries": N, "maxBytes": N, "maxTtl": S, "clusterMaxTtl": S, "minTtl":
/// S, "negativeMaxTtl": S, "prefetch": {..}, "serveStale": {..}}` (S in seconds), each
/// optional (absent: the engine's defaults).
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheSection {
    pub max_entries: Option<usize>,
    pub max_bytes: Option<usize>,
    /// Positive TTL cap outside the cluster zones.
    pub max_ttl: Option<u64>,
    /// Positive TTL cap in the cluster zones (the cluster domain and reverse zones).
    pub cluster_max_ttl: Option<u64>,
    /// Positive TTL floor.
    pub min_ttl: Option<u64>,
    /// NXDOMAIN/NODATA lifetime cap.
    pub negative_max_ttl: Option<u64>,
    pub prefetch: Option<PrefetchSection>,
    pub serve_stale: Option<ServeStaleSection>,
}

/// `cache.prefetch`: `{"enabled": true, "minHits": 5, "percent": 10}`: an entry hit
/// `minHits` times is refreshed when less than `percent` of its TTL is left.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrefetchSection {
    pub enabled: Option<bool>,
    pub min_hits: Option<u32>,
    pub percent: Option<u32>,
}

/// `cache.serveStale`: `{"enabled": true, "maxSeconds": 3600}`: expired answers are
/// served for up to `maxSeconds` past their TTL while every upstream fails (RFC 8767).
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServeStaleSection {
    pub enabled: Option<bool>,
    pub max_seconds: Option<u64>,
}

/// `limits`: the miss path's bounds (docs/operations.md, "Bounds under pressure"),
/// each optional (absent: the engine's defaults).
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsSection {
    pub max_upstream_in_flight: Option<usize>,
    pub max_waiting_queries: Option<usize>,
    pub max_upstream_in_flight_per_source: Option<usize>,
    pub max_waiting_queries_per_source: Option<usize>,
    /// 0: unbounded.
    pub max_upstream_qps: Option<u32>,
    /// 0: unbounded.
    pub max_upstream_qps_per_source: Option<u32>,
}

/// "1.2.3.4", "1.2.3.4:5353", "fd00::1", "[fd00::1]:5353".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Server(pub SocketAddr);

impl<'de> Deserialize<'de> for Server {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_server(&text)
            .map(Server)
            .map_err(serde::de::Error::custom)
    }
}

/// An address with an optional port (53 when absent).
pub fn parse_server(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DNS_PORT));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("not an IP address or IP:port: {s:?}"))
}

impl ConfigFile {
    /// Reads a directory holding the keys as files (a mounted ConfigMap; kubelet's
    /// `..data` links and other dot-files are skipped) or one JSON file.
    pub fn read(path: &Path) -> Result<Self> {
        if path.is_dir() {
            let mut doc = serde_json::Map::new();
            let entries =
                std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?;
            for entry in entries {
                let entry = entry.with_context(|| format!("reading {}", path.display()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') || !entry.path().is_file() {
                    continue;
                }
                let text = std::fs::read_to_string(entry.path())
                    .with_context(|| format!("reading {}", entry.path().display()))?;
                doc.insert(name, serde_json::Value::String(text));
            }
            Self::from_value(serde_json::Value::Object(doc))
                .with_context(|| format!("in {}", path.display()))
        } else {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Self::from_json(&text).with_context(|| format!("in {}", path.display()))
        }
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let mut de = serde_json::Deserializer::from_str(text);
        let file: Self = serde_path_to_error::deserialize(&mut de).map_err(describe)?;
        file.validated()
    }

    fn from_value(doc: serde_json::Value) -> Result<Self> {
        let file: Self = serde_path_to_error::deserialize(doc).map_err(describe)?;
        file.validated()
    }

    fn validated(self) -> Result<Self> {
        if let Some(zones) = &self.stub_domains {
            for zone in zones.keys() {
                nldns_dns::router::zone_to_wire(zone)
                    .with_context(|| format!("stubDomains: zone {zone:?}"))?;
            }
        }
        for zone in self.force_tcp_zones.iter().flatten() {
            nldns_dns::router::zone_to_wire(zone)
                .with_context(|| format!("forceTcpZones: zone {zone:?}"))?;
        }
        if let Some(cache) = &self.cache {
            cache.validate()?;
        }
        if let Some(l) = &self.limits {
            // Zero would refuse every miss: surely a mistake.
            for (key, value) in [
                ("maxUpstreamInFlight", l.max_upstream_in_flight),
                ("maxWaitingQueries", l.max_waiting_queries),
                (
                    "maxUpstreamInFlightPerSource",
                    l.max_upstream_in_flight_per_source,
                ),
                (
                    "maxWaitingQueriesPerSource",
                    l.max_waiting_queries_per_source,
                ),
            ] {
                if value == Some(0) {
                    bail!("limits: {key}: 0 would answer every cache miss SERVFAIL");
                }
            }
        }
        if self.federations.is_some() {
            log::warn!("config: kube-dns's federations key has no meaning for nldns; ignored");
        }
        Ok(self)
    }
}

impl CacheSection {
    /// Ranges, and the floor below both caps (a missing one counts as its default).
    fn validate(&self) -> Result<()> {
        if let Some(n) = self.max_entries {
            if n > MAX_CACHE_ENTRIES {
                bail!("cache: maxEntries: {n} is above {MAX_CACHE_ENTRIES}");
            }
        }
        let within = |key: &str, value: Option<u64>, low: u64, high: u64| -> Result<()> {
            match value {
                Some(v) if v < low || v > high => {
                    bail!("cache: {key}: {v} is outside {low}..={high} (seconds)")
                }
                _ => Ok(()),
            }
        };
        within("maxTtl", self.max_ttl, 1, MAX_TTL_CAP)?;
        within("clusterMaxTtl", self.cluster_max_ttl, 1, MAX_TTL_CAP)?;
        within("minTtl", self.min_ttl, 0, MAX_MIN_TTL)?;
        within("negativeMaxTtl", self.negative_max_ttl, 0, MAX_NEGATIVE_TTL)?;
        let defaults = nldns_dns::DnsConfig::default();
        let min = self.min_ttl.unwrap_or(defaults.min_ttl.as_secs());
        for (key, cap) in [
            ("maxTtl", self.max_ttl.unwrap_or(defaults.max_ttl.as_secs())),
            (
                "clusterMaxTtl",
                self.cluster_max_ttl
                    .unwrap_or(defaults.cluster_max_ttl.as_secs()),
            ),
        ] {
            if min > cap {
                bail!("cache: minTtl: {min} is above {key} ({cap}); a floor above the cap has no meaning");
            }
        }
        if let Some(p) = &self.prefetch {
            if let Some(n) = p.min_hits {
                if n == 0 || n > 1_000_000 {
                    bail!("cache: prefetch: minHits: {n} is outside 1..=1000000");
                }
            }
            if let Some(n) = p.percent {
                if n == 0 || n > 100 {
                    bail!(
                        "cache: prefetch: percent: {n} is outside 1..=100 (to turn prefetch off, \
                         say \"enabled\": false)"
                    );
                }
            }
        }
        if let Some(s) = &self.serve_stale {
            if let Some(n) = s.max_seconds {
                if n == 0 || n > MAX_SERVE_STALE {
                    bail!(
                        "cache: serveStale: maxSeconds: {n} is outside 1..={MAX_SERVE_STALE} (to \
                         turn serve-stale off, say \"enabled\": false)"
                    );
                }
            }
        }
        Ok(())
    }
}

/// "cache: maxEntries: invalid value ..." (the key path, then the error; a value given
/// as a string of JSON adds its own path after its key).
fn describe<E: fmt::Display>(err: serde_path_to_error::Error<E>) -> anyhow::Error {
    let path = err.path().to_string();
    let inner = err.into_inner();
    if path == "." {
        anyhow::anyhow!("{inner}")
    } else {
        anyhow::anyhow!("{path}: {inner}")
    }
}

/// A value given inline or as a string of JSON (a ConfigMap's form).
fn inline_or_string<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    use serde::de::Error;
    let value = serde_json::Value::deserialize(d)?;
    let value = match value {
        serde_json::Value::String(text) if text.trim().is_empty() => return Ok(None),
        serde_json::Value::String(text) => {
            let mut de = serde_json::Deserializer::from_str(&text);
            return serde_path_to_error::deserialize(&mut de)
                .map(Some)
                .map_err(|e| D::Error::custom(describe(e)));
        }
        serde_json::Value::Null => return Ok(None),
        other => other,
    };
    serde_path_to_error::deserialize(value)
        .map(Some)
        .map_err(|e| D::Error::custom(describe(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Server {
        Server(s.parse().unwrap())
    }

    #[test]
    fn configmap_strings_and_inline_json_read_alike() {
        let file = ConfigFile::from_json(
            r#"{"stubDomains": "{\"acme.local\": [\"1.2.3.4\", \"1.2.3.5:5353\"]}",
                "upstreamNameservers": ["8.8.8.8"]}"#,
        )
        .unwrap();
        assert_eq!(
            file.stub_domains.unwrap()["acme.local"],
            vec![addr("1.2.3.4:53"), addr("1.2.3.5:5353")]
        );
        assert_eq!(file.upstream_nameservers, Some(vec![addr("8.8.8.8:53")]));
        assert_eq!(file.cache, None);
        let file = ConfigFile::from_json(
            r#"{"cache": "{\"maxEntries\": 200000, \"maxBytes\": 100000000}"}"#,
        )
        .unwrap();
        assert_eq!(
            file.cache,
            Some(CacheSection {
                max_entries: Some(200_000),
                max_bytes: Some(100_000_000),
                ..Default::default()
            })
        );
        let empty = ConfigFile::from_json(r#"{"stubDomains": "", "federations": {"a": "b"}}"#);
        assert_eq!(empty.unwrap().stub_domains, None);
    }

    #[test]
    fn cache_lifetimes_prefetch_serve_stale_and_tcp_zones_read() {
        let file = ConfigFile::from_json(
            r#"{"cache": {"maxTtl": 300, "clusterMaxTtl": 10, "minTtl": 0,
                          "negativeMaxTtl": 30,
                          "prefetch": {"enabled": true, "minHits": 2, "percent": 20},
                          "serveStale": {"maxSeconds": 86400}},
                "forceTcpZones": "[\"cluster.local\", \"in-addr.arpa\"]"}"#,
        )
        .unwrap();
        assert_eq!(
            file.cache,
            Some(CacheSection {
                max_ttl: Some(300),
                cluster_max_ttl: Some(10),
                min_ttl: Some(0),
                negative_max_ttl: Some(30),
                prefetch: Some(PrefetchSection {
                    enabled: Some(true),
                    min_hits: Some(2),
                    percent: Some(20)
                }),
                serve_stale: Some(ServeStaleSection {
                    enabled: None,
                    max_seconds: Some(86400)
                }),
                ..Default::default()
            })
        );
        assert_eq!(
            file.force_tcp_zones,
            Some(vec![
                "cluster.local".to_string(),
                "in-addr.arpa".to_string()
            ])
        );
        // Edges are accepted.
        for ok in [
            r#"{"cache": {"maxTtl": 604800, "minTtl": 3600, "clusterMaxTtl": 3600}}"#,
            r#"{"cache": {"maxTtl": 5, "clusterMaxTtl": 5, "negativeMaxTtl": 0}}"#,
            r#"{"cache": {"prefetch": {"enabled": false}, "serveStale": {"enabled": false}}}"#,
            r#"{"forceTcpZones": ["."]}"#,
        ] {
            ConfigFile::from_json(ok).unwrap_or_else(|e| panic!("{ok}: {e:#}"));
        }
    }

    #[test]
    fn errors_name_the_key_at_fault() {
        for (bad, says) in [
            (r#"{"stubDomains": {"a": ["nope"]}}"#, "stubDomains: a[0]"),
            (r#"{"stubDomains": "{\"a\": [\"nope\"]}"}"#, "nope"),
            (r#"{"cache": {"maxEntrys": 5}}"#, "maxEntrys"),
            (r#"{"cache": {"maxEntries": -1}}"#, "cache: maxEntries"),
            (
                r#"{"cache": {"maxEntries": 1000000000}}"#,
                "cache: maxEntries",
            ),
            (r#"{"cache": 5}"#, "cache"),
            (r#"{"cache": {"maxTtl": 0}}"#, "cache: maxTtl: 0 is outside"),
            (r#"{"cache": {"maxTtl": 604801}}"#, "cache: maxTtl"),
            (
                r#"{"cache": {"maxTtl": "30s"}}"#,
                "cache: maxTtl: invalid type",
            ),
            (r#"{"cache": {"clusterMaxTtl": 0}}"#, "cache: clusterMaxTtl"),
            (r#"{"cache": {"minTtl": 3601}}"#, "cache: minTtl"),
            (r#"{"cache": {"minTtl": 60}}"#, "above clusterMaxTtl (30)"),
            (
                r#"{"cache": {"minTtl": 20, "maxTtl": 10, "clusterMaxTtl": 30}}"#,
                "above maxTtl (10)",
            ),
            (
                r#"{"cache": {"negativeMaxTtl": 86401}}"#,
                "cache: negativeMaxTtl",
            ),
            (
                r#"{"cache": {"negativeMaxTtl": -1}}"#,
                "cache: negativeMaxTtl: invalid value",
            ),
            (
                r#"{"cache": {"prefetch": {"minHits": 0}}}"#,
                "prefetch: minHits",
            ),
            (
                r#"{"cache": {"prefetch": {"percent": 101}}}"#,
                "prefetch: percent",
            ),
            (
                r#"{"cache": {"prefetch": {"percent": 0}}}"#,
                "\"enabled\": false",
            ),
            (r#"{"cache": {"prefetch": {"amount": 5}}}"#, "amount"),
            (
                r#"{"cache": {"serveStale": {"maxSeconds": 0}}}"#,
                "serveStale: maxSeconds",
            ),
            (
                r#"{"cache": {"serveStale": {"maxSeconds": 604801}}}"#,
                "serveStale: maxSeconds",
            ),
            (
                r#"{"cache": {"serveStale": {"duration": "1h"}}}"#,
                "duration",
            ),
            (r#"{"forceTcpZones": "corp"}"#, "forceTcpZones"),
            (r#"{"limits": {"maxUpstreamQPS": 5}}"#, "maxUpstreamQPS"),
            (
                r#"{"limits": {"maxUpstreamQps": -1}}"#,
                "limits: maxUpstreamQps",
            ),
            (
                r#"{"limits": {"maxWaitingQueriesPerSource": 0}}"#,
                "limits: maxWaitingQueriesPerSource",
            ),
            (r#"{"stubDomain": {}}"#, "stubDomain"),
            (r#"{"upstreamNameservers": "nope"}"#, "upstreamNameservers"),
        ] {
            let err = format!("{:#}", ConfigFile::from_json(bad).unwrap_err());
            assert!(err.contains(says), "{bad}: {err}");
        }
        let long_label = format!(r#"{{"forceTcpZones": ["{}.corp"]}}"#, "a".repeat(64));
        let err = format!("{:#}", ConfigFile::from_json(&long_label).unwrap_err());
        assert!(err.contains("forceTcpZones: zone"), "{err}");
    }

    #[test]
    fn a_mounted_configmap_is_one_file_per_key() {
        let dir = std::env::temp_dir().join(format!("nldns-config-dir-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("..2026_12_01")).unwrap();
        std::fs::write(dir.join("stubDomains"), r#"{"corp": ["10.1.1.1"]}"#).unwrap();
        std::fs::write(dir.join("upstreamNameservers"), r#"["9.9.9.9:5353"]"#).unwrap();
        std::fs::write(dir.join("..data"), "kubelet's link").unwrap();
        let read = ConfigFile::read(&dir);
        std::fs::write(dir.join("stubDomainz"), "{}").unwrap();
        let typo = ConfigFile::read(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        let read = read.unwrap();
        assert_eq!(
            read.stub_domains.unwrap()["corp"],
            vec![addr("10.1.1.1:53")]
        );
        assert_eq!(read.upstream_nameservers, Some(vec![addr("9.9.9.9:5353")]));
        let err = format!("{:#}", typo.unwrap_err());
        assert!(err.contains("stubDomainz"), "{err}");
    }
}
