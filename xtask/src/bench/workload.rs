//! The three workloads as dnsperf query files (`name type` per line).
//!
//! All names live in zones the simulated node's knot servers answer: the harness's
//! cluster.local zone plus a wildcard `*.bench.svc.cluster.local` (added by [`bench_zone`]),
//! so that any number of distinct names can be asked and answered positively.

use std::fmt;

use clap::ValueEnum;

/// The A record every `<label>.bench.svc.cluster.local` name gets from the wildcard.
pub const WILDCARD_ANSWER: &str = "10.96.7.7";
/// A name the wildcard answers, used to check that a configuration serves.
pub const PROBE_NAME: &str = "probe.bench.svc.cluster.local";

/// The harness's cluster.local zone with a higher serial and the bench wildcard.
pub fn bench_zone() -> String {
    let zone = nldns_tests::zones::cluster_local();
    // The harness writes serial 1; knot reloads a changed file either way, but a higher
    // serial is what a real zone change carries.
    let zone = zone.replacen(" 1 7200 ", " 2 7200 ", 1);
    format!("{zone}*.bench.svc IN A {WILDCARD_ANSWER}\n")
}

/// Which stream of queries a run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// 1000 fixed names, warmed first: every query is a cache hit.
    Hits,
    /// A pod's lookups through its search path (ndots:5), A and AAAA, mostly NXDOMAIN;
    /// about 10% of the queries are for names never asked before.
    Mix,
    /// Every query is for a name never asked before: every query reaches knot.
    Misses,
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Workload::Hits => "hits",
            Workload::Mix => "mix",
            Workload::Misses => "misses",
        })
    }
}

const HIT_NAMES: usize = 1000;
/// One query in this many of the mix is for a name never seen before.
const MIX_UNIQUE_ONE_IN: usize = 10;

/// A pod in namespace `default`: kubelet's search path and options.
const SEARCH: [&str; 3] = [
    "default.svc.cluster.local",
    "svc.cluster.local",
    "cluster.local",
];
const NDOTS: usize = 5;

impl Workload {
    /// What to send once before measuring, so the measured runs see a warm cache.
    pub fn warm_lines(self) -> Option<Vec<String>> {
        match self {
            Workload::Hits => Some(hit_lines()),
            Workload::Mix => Some(fixed_lookups().iter().flat_map(|l| expand(l)).collect()),
            Workload::Misses => None,
        }
    }

    /// About `n` query lines for one run; `tag` makes the run's new names unique across
    /// runs (a name asked in an earlier run would be a hit). The hits workload returns its
    /// fixed set, which dnsperf cycles through.
    pub fn lines(self, tag: u32, n: usize) -> Vec<String> {
        match self {
            Workload::Hits => hit_lines(),
            Workload::Mix => mix_lines(tag, n),
            Workload::Misses => (0..n)
                .map(|i| format!("m{tag}-{i}.bench.svc.cluster.local A"))
                .collect(),
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Workload::Hits => "1000 fixed names (A), cache warmed first: all hits",
            Workload::Mix => {
                "pod lookups through the search path (ndots:5, A+AAAA): mostly NXDOMAIN, \
                 ~90% repeated names (hits once warm), ~10% names never seen before"
            }
            Workload::Misses => {
                "a new name every query (wildcard under bench.svc.cluster.local): all misses, \
                 every query reaches knot"
            }
        }
    }
}

fn hit_lines() -> Vec<String> {
    (0..HIT_NAMES)
        .map(|i| format!("h{i}.bench.svc.cluster.local A"))
        .collect()
}

/// Names a typical pod looks up, as its code spells them.
fn fixed_lookups() -> Vec<String> {
    let mut lookups: Vec<String> = [
        "web",
        "web.default",
        "web.default.svc",
        "web.default.svc.cluster.local",
        "kube-dns.kube-system",
        "kube-dns.kube-system.svc.cluster.local",
        "db",
        "db-0.db",
        "www.example.org",
        "example.org",
        "alias.example.org",
        "api.bench.svc.cluster.local",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    lookups.extend((0..50).map(|i| format!("svc{i}.bench.svc.cluster.local")));
    lookups
}

fn mix_lines(tag: u32, n: usize) -> Vec<String> {
    let fixed: Vec<Vec<String>> = fixed_lookups().iter().map(|l| expand(l)).collect();
    let mut lines = Vec::with_capacity(n + 16);
    let (mut unique_lines, mut next_fixed, mut next_unique) = (0usize, 0usize, 0usize);
    while lines.len() < n {
        if unique_lines * MIX_UNIQUE_ONE_IN < lines.len() {
            // Alternate new cluster names and new outside names.
            let name = if next_unique % 2 == 0 {
                format!("u{tag}-{next_unique}.bench.svc.cluster.local")
            } else {
                format!("u{tag}-{next_unique}.example.org")
            };
            next_unique += 1;
            let expanded = expand(&name);
            unique_lines += expanded.len();
            lines.extend(expanded);
        } else {
            // A fixed stride through the pool spreads the lookups without a RNG.
            next_fixed = (next_fixed + 7) % fixed.len();
            lines.extend(fixed[next_fixed].iter().cloned());
        }
    }
    lines
}

/// The queries glibc sends for `name` (getaddrinfo, AF_UNSPEC: A and AAAA per candidate)
/// until a candidate exists.
fn expand(name: &str) -> Vec<String> {
    let mut candidates = Vec::new();
    if let Some(absolute) = name.strip_suffix('.') {
        candidates.push(absolute.to_string());
    } else {
        let searched = SEARCH.iter().map(|domain| format!("{name}.{domain}"));
        if name.matches('.').count() >= NDOTS {
            candidates.push(name.to_string());
            candidates.extend(searched);
        } else {
            candidates.extend(searched);
            candidates.push(name.to_string());
        }
    }
    let mut lines = Vec::new();
    for candidate in candidates {
        lines.push(format!("{candidate} A"));
        lines.push(format!("{candidate} AAAA"));
        if exists(&candidate) {
            break;
        }
    }
    lines
}

/// Whether the simulated node's zones hold `name` (so the search stops there).
fn exists(name: &str) -> bool {
    const NAMES: [&str; 8] = [
        "web.default.svc.cluster.local",
        "kube-dns.kube-system.svc.cluster.local",
        "db.default.svc.cluster.local",
        "db-0.db.default.svc.cluster.local",
        "www.example.org",
        "example.org",
        "alias.example.org",
        "ns.example.org",
    ];
    if NAMES.contains(&name) {
        return true;
    }
    // The wildcard covers exactly one label under bench.svc.cluster.local.
    name.strip_suffix(".bench.svc.cluster.local")
        .is_some_and(|label| !label.is_empty() && !label.contains('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_try_the_search_path_first() {
        assert_eq!(
            expand("web"),
            [
                "web.default.svc.cluster.local A",
                "web.default.svc.cluster.local AAAA"
            ]
        );
        let lines = expand("www.example.org");
        assert_eq!(lines.len(), 8, "{lines:?}");
        assert_eq!(lines[0], "www.example.org.default.svc.cluster.local A");
        assert_eq!(lines[7], "www.example.org AAAA");
    }

    #[test]
    fn mix_is_about_one_tenth_new_names() {
        let lines = mix_lines(1, 20_000);
        let unique = lines.iter().filter(|l| l.starts_with("u1-")).count();
        let share = unique as f64 / lines.len() as f64;
        assert!((0.08..0.13).contains(&share), "{share}");
        let nx = lines
            .iter()
            .filter(|l| !exists(l.split(' ').next().unwrap()))
            .count();
        assert!(nx * 2 > lines.len(), "mostly NXDOMAIN");
    }

    #[test]
    fn zone_gets_the_wildcard() {
        let zone = bench_zone();
        assert!(zone.contains("*.bench.svc IN A 10.96.7.7"));
        assert!(zone.contains(" 2 7200 "));
    }
}
