//! Which upstreams answer which names: the cluster zones go to kube-dns-uncached,
//! stub domains to their own servers, everything else to the node's resolvers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

/// Where a name goes and how long its answers may be cached.
#[derive(Debug)]
pub struct Route {
    /// Zone in lowercased wire form (b"\0" for the root/default route).
    pub zone: Box<[u8]>,
    pub upstreams: Vec<SocketAddr>,
    /// Cap on positive TTLs for answers from this route.
    pub max_ttl: Duration,
    pub force_tcp: bool,
    /// The metrics label index of this zone (CoreDNS's `zone`).
    pub label: u8,
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
    /// `zone_label` gives each zone ("cluster.local." form) its metrics label index.
    pub fn new(
        rules: Vec<ZoneRule>,
        default_upstreams: Vec<SocketAddr>,
        default_max_ttl: Duration,
        force_tcp_zones: &[String],
        zone_label: &dyn Fn(&str) -> u8,
    ) -> anyhow::Result<Self> {
        let force_tcp_zones = force_tcp_zones
            .iter()
            .map(|z| zone_to_wire(z))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let make = |zone: Box<[u8]>, label: u8, upstreams, max_ttl| {
            let force_tcp = force_tcp_zones.iter().any(|z| is_within(&zone, z));
            Arc::new(Route {
                zone,
                upstreams,
                max_ttl,
                force_tcp,
                label,
            })
        };
        let mut routes = Vec::with_capacity(rules.len());
        for rule in rules {
            let zone = zone_to_wire(&rule.zone)?;
            let label = zone_label(&zone_text(&rule.zone));
            routes.push(make(zone, label, rule.upstreams, rule.max_ttl));
        }
        let default = make(
            Box::new([0]),
            zone_label("."),
            default_upstreams,
            default_max_ttl,
        );
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

/// "Example.COM" -> "example.com." (how CoreDNS names zones in its metrics).
pub fn zone_text(zone: &str) -> String {
    let zone = zone.trim_end_matches('.').to_ascii_lowercase();
    if zone.is_empty() {
        ".".to_string()
    } else {
        format!("{zone}.")
    }
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
            &|zone| match zone {
                "cluster.local." => 1,
                "acme.cluster.local." => 2,
                "." => 3,
                _ => 9,
            },
        )
        .unwrap();
        let r = router.route(&w("kubernetes.default.svc.cluster.local"));
        assert_eq!(r.label, 1, "zones are labelled in CoreDNS's form");
        assert_eq!(router.route(&w("example.com")).label, 3);
        assert_eq!(
            (r.upstreams.clone(), r.max_ttl, r.force_tcp),
            (vec![a], Duration::from_secs(30), false)
        );
        let r = router.route(&w("x.acme.cluster.local"));
        assert_eq!((r.upstreams.clone(), r.force_tcp), (vec![b], true));
        assert_eq!(router.route(&w("example.com")).upstreams, vec![d]);
        assert_eq!(router.all_upstreams().len(), 3);
    }
}
