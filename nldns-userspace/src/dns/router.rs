//! Which upstreams answer which names: the cluster zones go to kube-dns-uncached,
//! stub domains to their own servers, everything else to the node's resolvers.
//! Also reads the node's resolv.conf and kube-dns style stub-domain configuration.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

/// Port used when an address in configuration has none.
pub const DNS_PORT: u16 = 53;

/// Where a name goes and how long its answers may be cached.
#[derive(Debug)]
pub struct Route {
    /// Zone in lowercased wire form (b"\0" for the root/default route).
    pub zone: Box<[u8]>,
    pub upstreams: Vec<SocketAddr>,
    /// Cap on positive TTLs for answers from this route.
    pub max_ttl: Duration,
    pub force_tcp: bool,
}

/// Longest-suffix zone matching over lowercased wire-format names.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Arc<Route>>,
    default: Arc<Route>,
    force_tcp_zones: Vec<Box<[u8]>>,
}

/// One routing rule before it becomes a [`Route`].
pub struct ZoneRule {
    pub zone: String,
    pub upstreams: Vec<SocketAddr>,
    pub max_ttl: Duration,
}

impl Router {
    /// `rules` may overlap: the longest zone wins, and for equal zones the first one.
    pub fn new(
        rules: Vec<ZoneRule>,
        default_upstreams: Vec<SocketAddr>,
        default_max_ttl: Duration,
        force_tcp_zones: &[String],
    ) -> anyhow::Result<Self> {
        let force_tcp_zones = force_tcp_zones
            .iter()
            .map(|z| zone_to_wire(z))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let make = |zone: Box<[u8]>, upstreams, max_ttl| {
            let force_tcp = force_tcp_zones.iter().any(|z| is_within(&zone, z));
            Arc::new(Route {
                zone,
                upstreams,
                max_ttl,
                force_tcp,
            })
        };
        let mut routes = Vec::with_capacity(rules.len());
        for rule in rules {
            let zone = zone_to_wire(&rule.zone)?;
            routes.push(make(zone, rule.upstreams, rule.max_ttl));
        }
        let default = make(Box::new([0]), default_upstreams, default_max_ttl);
        Ok(Router {
            routes,
            default,
            force_tcp_zones,
        })
    }

    /// The route for a lowercased wire-format name.
    pub fn route(&self, name: &[u8]) -> Arc<Route> {
        let mut best: Option<&Arc<Route>> = None;
        for route in &self.routes {
            if is_within(name, &route.zone) && best.is_none_or(|b| route.zone.len() > b.zone.len())
            {
                best = Some(route);
            }
        }
        best.unwrap_or(&self.default).clone()
    }

    /// True when queries for `name` must go over TCP even if a route says otherwise
    /// (a force-TCP zone below the route's zone).
    pub fn force_tcp(&self, name: &[u8]) -> bool {
        self.force_tcp_zones.iter().any(|z| is_within(name, z))
    }

    /// Every upstream address of every route, deduplicated.
    pub fn all_upstreams(&self) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> = self
            .routes
            .iter()
            .chain(std::iter::once(&self.default))
            .flat_map(|r| r.upstreams.iter().copied())
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// True when wire name `name` equals `zone` or lies below it (label boundaries only).
pub fn is_within(name: &[u8], zone: &[u8]) -> bool {
    let mut at = 0;
    // Bounded by the name's length: every step consumes at least one byte.
    while at < name.len() {
        if name.get(at..) == Some(zone) {
            return true;
        }
        match name.get(at) {
            Some(0) | None => return false,
            Some(&len) => at += 1 + usize::from(len),
        }
    }
    false
}

/// "Example.COM." or "example.com" -> lowercased wire form; "." -> root.
pub fn zone_to_wire(zone: &str) -> anyhow::Result<Box<[u8]>> {
    let mut wire = Vec::with_capacity(zone.len() + 2);
    for label in zone
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|&l| l <= 63)
            .with_context(|| format!("label too long in zone {zone:?}"))?;
        wire.push(len);
        wire.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    wire.push(0);
    anyhow::ensure!(wire.len() <= 255, "zone name too long: {zone:?}");
    Ok(wire.into())
}

/// "1.2.3.4", "1.2.3.4:5353", "fd00::1", "[fd00::1]:5353" -> socket address.
pub fn parse_server(s: &str) -> anyhow::Result<SocketAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DNS_PORT));
    }
    s.parse::<SocketAddr>()
        .with_context(|| format!("not an IP address or IP:port: {s:?}"))
}

/// The `nameserver` entries of a resolv.conf, port 53. Zone-scoped IPv6 addresses
/// (fe80::1%eth0) are skipped with a warning: they only make sense on that link.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut servers = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else { continue };
        match addr.parse::<IpAddr>() {
            Ok(ip) => servers.push(SocketAddr::new(ip, DNS_PORT)),
            Err(_) => log::warn!("resolv.conf: ignoring nameserver {addr:?}"),
        }
    }
    servers
}

/// Reads a resolv.conf file; an empty server list is an error (nowhere to forward).
pub fn read_resolv_conf(path: &Path) -> anyhow::Result<Vec<SocketAddr>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let servers = parse_resolv_conf(&text);
    anyhow::ensure!(!servers.is_empty(), "no nameserver in {}", path.display());
    Ok(servers)
}

/// Stub domains and upstream nameservers as kube-dns's ConfigMap has them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KubeDnsConfig {
    pub stub_domains: Vec<(String, Vec<SocketAddr>)>,
    /// Replaces the resolv.conf servers when not empty.
    pub upstream_nameservers: Vec<SocketAddr>,
    /// nldns's own key `cache`: `{"maxEntries": N, "maxBytes": N}`, each optional
    /// (absent: the defaults of [`super::DnsConfig`]).
    pub cache_max_entries: Option<usize>,
    pub cache_max_bytes: Option<usize>,
}

/// Above this many entries the cache's slab indices (u32) could run out; far above
/// any node's need (about 190 bytes of RSS each).
const MAX_CACHE_ENTRIES: u64 = 100_000_000;

impl KubeDnsConfig {
    /// Reads either a directory holding the ConfigMap's keys as files (`stubDomains`,
    /// `upstreamNameservers`, `cache`; a mounted ConfigMap) or one JSON file
    /// `{"stubDomains": {...}, "upstreamNameservers": [...], "cache": {...}}`, where
    /// each value may also be a JSON string holding that JSON (as it is written in the
    /// ConfigMap).
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let mut doc = serde_json::Map::new();
        if path.is_dir() {
            for key in ["stubDomains", "upstreamNameservers", "cache"] {
                let file = path.join(key);
                if file.exists() {
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    doc.insert(key.to_string(), serde_json::Value::String(text));
                }
            }
        } else {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            doc = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
        }
        Self::from_json(&serde_json::Value::Object(doc))
            .with_context(|| format!("in {}", path.display()))
    }

    pub fn from_json(doc: &serde_json::Value) -> anyhow::Result<Self> {
        // ConfigMap values are strings of JSON; accept inline JSON too.
        let unwrap = |v: Option<&serde_json::Value>| -> anyhow::Result<serde_json::Value> {
            match v {
                None => Ok(serde_json::Value::Null),
                Some(serde_json::Value::String(s)) if s.trim().is_empty() => {
                    Ok(serde_json::Value::Null)
                }
                Some(serde_json::Value::String(s)) => Ok(serde_json::from_str(s)?),
                Some(other) => Ok(other.clone()),
            }
        };
        let servers = |v: &serde_json::Value| -> anyhow::Result<Vec<SocketAddr>> {
            v.as_array()
                .context("expected a list of servers")?
                .iter()
                .map(|s| parse_server(s.as_str().context("server must be a string")?))
                .collect()
        };
        let mut config = KubeDnsConfig::default();
        match unwrap(doc.get("stubDomains")).context("stubDomains")? {
            serde_json::Value::Null => {}
            serde_json::Value::Object(map) => {
                for (zone, list) in &map {
                    zone_to_wire(zone)?;
                    let list = servers(list).with_context(|| format!("stubDomains {zone}"))?;
                    config.stub_domains.push((zone.clone(), list));
                }
            }
            _ => anyhow::bail!("stubDomains must map domains to server lists"),
        }
        let upstream = unwrap(doc.get("upstreamNameservers")).context("upstreamNameservers")?;
        if !upstream.is_null() {
            config.upstream_nameservers = servers(&upstream).context("upstreamNameservers")?;
        }
        match unwrap(doc.get("cache")).context("cache")? {
            serde_json::Value::Null => {}
            serde_json::Value::Object(map) => {
                for (key, value) in &map {
                    let n = value
                        .as_u64()
                        .with_context(|| format!("cache.{key} must be a whole number"))?;
                    match key.as_str() {
                        "maxEntries" if n <= MAX_CACHE_ENTRIES => {
                            config.cache_max_entries = Some(n as usize)
                        }
                        "maxEntries" => anyhow::bail!("cache.maxEntries above {MAX_CACHE_ENTRIES}"),
                        "maxBytes" => config.cache_max_bytes = Some(usize::try_from(n)?),
                        // A typo must not silently leave the defaults in place.
                        _ => anyhow::bail!("unknown key cache.{key} (maxEntries, maxBytes)"),
                    }
                }
            }
            _ => anyhow::bail!("cache must be an object: {{\"maxEntries\": N, \"maxBytes\": N}}"),
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Box<[u8]> {
        zone_to_wire(s).unwrap()
    }

    #[test]
    fn zone_matching_is_by_label_and_longest_wins() {
        assert!(is_within(&w("a.svc.cluster.local"), &w("cluster.local")));
        assert!(is_within(&w("cluster.local"), &w("cluster.local")));
        assert!(!is_within(&w("xcluster.local"), &w("cluster.local")));
        assert!(is_within(&w("anything"), &w(".")));
        let a: SocketAddr = "10.0.0.10:53".parse().unwrap();
        let b: SocketAddr = "1.2.3.4:53".parse().unwrap();
        let d: SocketAddr = "8.8.8.8:53".parse().unwrap();
        let router = Router::new(
            vec![
                ZoneRule {
                    zone: "Cluster.Local.".into(),
                    upstreams: vec![a],
                    max_ttl: Duration::from_secs(30),
                },
                ZoneRule {
                    zone: "acme.cluster.local".into(),
                    upstreams: vec![b],
                    max_ttl: Duration::from_secs(3600),
                },
            ],
            vec![d],
            Duration::from_secs(3600),
            &["acme.cluster.local".into()],
        )
        .unwrap();
        let r = router.route(&w("kubernetes.default.svc.cluster.local"));
        assert_eq!(
            (r.upstreams.clone(), r.max_ttl, r.force_tcp),
            (vec![a], Duration::from_secs(30), false)
        );
        let r = router.route(&w("x.acme.cluster.local"));
        assert_eq!((r.upstreams.clone(), r.force_tcp), (vec![b], true));
        assert_eq!(router.route(&w("example.com")).upstreams, vec![d]);
        assert_eq!(router.all_upstreams().len(), 3);
    }

    #[test]
    fn resolv_conf_and_kube_dns_config() {
        let text = "# comment\nsearch cluster.local\nnameserver 10.0.0.2\nnameserver fd00::53\nnameserver fe80::1%eth0\noptions ndots:5\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "10.0.0.2:53".parse().unwrap(),
                "[fd00::53]:53".parse().unwrap()
            ]
        );
        let doc = serde_json::json!({
            "stubDomains": "{\"acme.local\": [\"1.2.3.4\", \"1.2.3.5:5353\"]}",
            "upstreamNameservers": ["8.8.8.8"],
        });
        let config = KubeDnsConfig::from_json(&doc).unwrap();
        assert_eq!(
            config.stub_domains,
            vec![(
                "acme.local".to_string(),
                vec![
                    "1.2.3.4:53".parse().unwrap(),
                    "1.2.3.5:5353".parse().unwrap()
                ]
            )]
        );
        assert_eq!(
            config.upstream_nameservers,
            vec!["8.8.8.8:53".parse().unwrap()]
        );
        assert!(
            KubeDnsConfig::from_json(&serde_json::json!({"stubDomains": {"a": ["nope"]}})).is_err()
        );
        assert_eq!(
            (config.cache_max_entries, config.cache_max_bytes),
            (None, None)
        );
        let config = KubeDnsConfig::from_json(&serde_json::json!({
            "cache": "{\"maxEntries\": 200000, \"maxBytes\": 100000000}",
        }))
        .unwrap();
        assert_eq!(
            (config.cache_max_entries, config.cache_max_bytes),
            (Some(200_000), Some(100_000_000))
        );
        for bad in [
            serde_json::json!({"cache": {"maxEntrys": 5}}),
            serde_json::json!({"cache": {"maxEntries": -1}}),
            serde_json::json!({"cache": {"maxEntries": 1_000_000_000}}),
            serde_json::json!({"cache": 5}),
        ] {
            assert!(KubeDnsConfig::from_json(&bad).is_err(), "{bad}");
        }

        // A mounted ConfigMap: one file per key.
        let dir = std::env::temp_dir().join(format!("nldns-kube-dns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("stubDomains"), r#"{"corp": ["10.1.1.1"]}"#).unwrap();
        std::fs::write(dir.join("upstreamNameservers"), r#"["9.9.9.9:5353"]"#).unwrap();
        let read = KubeDnsConfig::read(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        let read = read.unwrap();
        assert_eq!(
            read.stub_domains,
            vec![("corp".to_string(), vec!["10.1.1.1:53".parse().unwrap()])]
        );
        assert_eq!(
            read.upstream_nameservers,
            vec!["9.9.9.9:5353".parse().unwrap()]
        );
    }
}
