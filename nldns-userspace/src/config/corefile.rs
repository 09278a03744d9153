//! `nldns import-corefile`: a node-local-dns Corefile (CoreDNS's Caddyfile syntax) read
//! and translated into the equivalent `--config` file.
//!
//! Three kinds of outcome for each directive: a key of the config file (`forward` in a
//! stub zone's block becomes `stubDomains`, `cache` becomes `cache`, `force_tcp`
//! becomes `forceTcpZones`); a note, when the setting belongs to the DaemonSet's flags
//! (`bind`, `health`, `prometheus`, the cluster zones' `forward`) or nldns does the same
//! on its own (`errors`, `loop`, `reload`); an issue, when nldns cannot honour it (`log`,
//! `rewrite`, `hosts`, a port other than 53, ...). Issues name their line; the caller
//! refuses the import unless told to drop them. Where the Corefile sets a lifetime in
//! several blocks that nldns keeps as one value, the smallest wins: answers are never
//! kept longer than the Corefile allowed. The mapping is documented in
//! docs/operations.md, "Migrating a Corefile".

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde_json::{json, Map, Value};

use super::file::{parse_server, DNS_PORT};

/// The cache plugin's default capacity, per block, for each of success and denial.
const COREDNS_CAPACITY: u64 = 9984;
/// The cache plugin's defaults (seconds): success cap, denial cap, floor.
const COREDNS_SUCCESS_TTL: u64 = 3600;
const COREDNS_DENIAL_TTL: u64 = 1800;
const COREDNS_MIN_TTL: u64 = 5;
/// Filled in by node-cache itself at start, so they stay in a deployed ConfigMap.
const PILLAR_CLUSTER_DNS: &str = "__PILLAR__CLUSTER__DNS__";
const PILLAR_UPSTREAM_SERVERS: &str = "__PILLAR__UPSTREAM__SERVERS__";
const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";

/// A Corefile that cannot be read at all (syntax). What it says but nldns cannot do is
/// an [`Issue`] instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("line {line}: unterminated quoted string")]
    UnterminatedQuote { line: usize },
    #[error("line {line}: '}}' closes nothing")]
    UnexpectedClose { line: usize },
    #[error("line {line}: '{{' opened here is never closed")]
    Unclosed { line: usize },
    #[error("line {line}: '{{' without a directive or server address before it")]
    OpenWithoutName { line: usize },
    #[error("line {line}: {text:?} is outside any server block (expected `ZONE[:PORT] {{`)")]
    OutsideBlock { line: usize, text: String },
    #[error("line {line}: blocks nest too deep")]
    TooDeep { line: usize },
}

/// One word of the file, or a brace, with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word {
        text: String,
        line: usize,
        quoted: bool,
    },
    Open(usize),
    Close(usize),
    /// End of a line: ends a directive.
    Newline,
}

fn tokenize(text: &str) -> Result<Vec<Token>, ParseError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => {
                chars.next();
                tokens.push(Token::Newline);
                line += 1;
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            '"' => {
                chars.next();
                let start = line;
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => return Err(ParseError::UnterminatedQuote { line: start }),
                        Some('"') => break,
                        Some('\\') if chars.peek() == Some(&'"') => {
                            chars.next();
                            word.push('"');
                        }
                        Some(c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            word.push(c);
                        }
                    }
                }
                tokens.push(Token::Word {
                    text: word,
                    line: start,
                    quoted: true,
                });
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || c == '"' {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(match word.as_str() {
                    "{" => Token::Open(line),
                    "}" => Token::Close(line),
                    _ => Token::Word {
                        text: word,
                        line,
                        quoted: false,
                    },
                });
            }
        }
    }
    Ok(tokens)
}

/// `name args... [{ sub-directives }]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub line: usize,
    pub block: Vec<Directive>,
}

/// `key [key...] { directives }`; a key is `[scheme://]zone[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerBlock {
    pub keys: Vec<String>,
    pub line: usize,
    pub directives: Vec<Directive>,
}

/// Reads the server blocks; comments and quotes handled, nothing interpreted.
pub fn parse(text: &str) -> Result<Vec<ServerBlock>, ParseError> {
    let tokens = tokenize(text)?;
    let mut pos = 0;
    let mut blocks = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    let mut keys_line = 0;
    while pos < tokens.len() {
        match &tokens[pos] {
            Token::Newline => pos += 1,
            Token::Word { text, line, .. } => {
                if keys.is_empty() {
                    keys_line = *line;
                }
                // "a.example, b.example {" is a list too.
                keys.extend(
                    text.split(',')
                        .filter(|k| !k.is_empty())
                        .map(str::to_string),
                );
                pos += 1;
            }
            Token::Open(line) => {
                if keys.is_empty() {
                    return Err(ParseError::OpenWithoutName { line: *line });
                }
                let (directives, next) = parse_body(&tokens, pos + 1, *line, 0)?;
                blocks.push(ServerBlock {
                    keys: std::mem::take(&mut keys),
                    line: keys_line,
                    directives,
                });
                pos = next;
            }
            Token::Close(line) => return Err(ParseError::UnexpectedClose { line: *line }),
        }
    }
    if let Some(text) = keys.first() {
        return Err(ParseError::OutsideBlock {
            line: keys_line,
            text: text.clone(),
        });
    }
    Ok(blocks)
}

/// Directives up to the `}` matching the `{` at `opened`; returns them and the position
/// after that `}`.
fn parse_body(
    tokens: &[Token],
    mut pos: usize,
    opened: usize,
    depth: usize,
) -> Result<(Vec<Directive>, usize), ParseError> {
    if depth > 8 {
        return Err(ParseError::TooDeep { line: opened });
    }
    let mut directives = Vec::new();
    let mut current: Option<Directive> = None;
    while pos < tokens.len() {
        match &tokens[pos] {
            Token::Newline => {
                directives.extend(current.take());
                pos += 1;
            }
            Token::Word { text, line, .. } => {
                match &mut current {
                    Some(d) => d.args.push(text.clone()),
                    None => {
                        current = Some(Directive {
                            name: text.clone(),
                            args: Vec::new(),
                            line: *line,
                            block: Vec::new(),
                        })
                    }
                }
                pos += 1;
            }
            Token::Open(line) => {
                let Some(mut d) = current.take() else {
                    return Err(ParseError::OpenWithoutName { line: *line });
                };
                let (block, next) = parse_body(tokens, pos + 1, *line, depth + 1)?;
                d.block = block;
                directives.push(d);
                pos = next;
            }
            Token::Close(_) => {
                directives.extend(current.take());
                return Ok((directives, pos + 1));
            }
        }
    }
    Err(ParseError::Unclosed { line: opened })
}

/// Something the Corefile asks that nldns cannot do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// A remark on the translation: the same text from several lines is one note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub lines: Vec<usize>,
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.lines.iter().map(usize::to_string).collect();
        match self.lines.len() {
            0 => write!(f, "{}", self.message),
            1 => write!(f, "line {}: {}", lines[0], self.message),
            _ => write!(f, "lines {}: {}", lines.join(", "), self.message),
        }
    }
}

/// The translation: the config file (JSON, keys sorted), notes, and what was dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Import {
    pub config: Value,
    pub notes: Vec<Note>,
    pub issues: Vec<Issue>,
}

/// The cluster domain tells the cluster zone's block from a stub zone's.
pub fn import(text: &str, cluster_domain: &str) -> Result<Import, ParseError> {
    let blocks = parse(text)?;
    let mut t = Translator::new(cluster_domain);
    for block in &blocks {
        t.block(block);
    }
    Ok(t.finish())
}

/// Where a block forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// `forward . /etc/resolv.conf` (or another file): that file's nameservers.
    ResolvConf(String),
    Servers(Vec<SocketAddr>),
    /// `__PILLAR__CLUSTER__DNS__`: node-cache puts the kube-dns-upstream Service here.
    ClusterDnsPillar,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::ResolvConf(path) => write!(f, "{path}"),
            Target::ClusterDnsPillar => write!(f, "{PILLAR_CLUSTER_DNS}"),
            Target::Servers(servers) => {
                let s: Vec<String> = servers.iter().map(|s| server_text(*s)).collect();
                write!(f, "{}", s.join(","))
            }
        }
    }
}

/// "10.0.0.1" for port 53, else "10.0.0.1:5353" / "[fd00::1]:5353".
fn server_text(s: SocketAddr) -> String {
    if s.port() == DNS_PORT {
        s.ip().to_string()
    } else {
        s.to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ZoneKind {
    Cluster,
    Root,
    Stub,
}

/// One block's `cache`, with CoreDNS's defaults filled in.
#[derive(Debug, Clone, Copy)]
struct CachePlan {
    line: usize,
    success_capacity: u64,
    denial_capacity: u64,
    capacity_set: bool,
    success_max: u64,
    denial_max: u64,
    success_min: u64,
    /// Only when written: CoreDNS's default floor (5 s) is not worth a note per block.
    denial_min: Option<u64>,
}

/// A value several blocks set and nldns keeps once: every (value, line) seen.
#[derive(Debug, Default)]
struct Seen(Vec<(u64, usize)>);

impl Seen {
    fn smallest(&self) -> Option<u64> {
        self.0.iter().map(|(v, _)| *v).min()
    }
    fn differ(&self) -> bool {
        self.0.iter().any(|(v, _)| Some(*v) != self.smallest())
    }
    fn lines(&self) -> Vec<usize> {
        self.0.iter().map(|(_, l)| *l).collect()
    }
}

struct Translator {
    cluster_domain: String,
    notes: Vec<Note>,
    issues: Vec<Issue>,
    stub_domains: BTreeMap<String, Vec<SocketAddr>>,
    upstream_nameservers: Option<(Vec<SocketAddr>, usize)>,
    root_resolv: Option<String>,
    root_seen: bool,
    cluster_seen: bool,
    /// (target, line) of each cluster zone's forward.
    cluster_targets: Vec<(Target, usize)>,
    force_tcp: Vec<String>,
    cluster_max: Seen,
    max: Seen,
    negative_max: Seen,
    min: Seen,
    capacity: u64,
    capacity_set: bool,
    prefetch: Option<(u32, u32, usize)>,
    serve_stale: Option<(u64, usize)>,
    blocks_without_cache: Vec<(String, usize)>,
    blocks: usize,
    blocks_prefetching: usize,
    blocks_serving_stale: usize,
}

/// A directive's name and words as written, for messages.
fn written(d: &Directive) -> String {
    let mut s = d.name.clone();
    for a in &d.args {
        s.push(' ');
        s.push_str(a);
    }
    if !d.block.is_empty() {
        s.push_str(" { ... }");
    }
    s
}

/// "cluster.local" from "dns://Cluster.Local.:53"; the port separately.
fn zone_and_port(key: &str) -> Result<(String, Option<u16>), String> {
    let rest = match key.split_once("://") {
        Some(("dns", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "{key:?}: {scheme}:// servers are not served by nldns (plain DNS on port 53 only)"
            ))
        }
        None => key,
    };
    let (zone, port) = match rest.rsplit_once(':') {
        Some((zone, port)) => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("{key:?}: port {port:?} is not a number"))?;
            (zone, Some(port))
        }
        None => (rest, None),
    };
    let zone = if zone.is_empty() { "." } else { zone };
    Ok((normalize_zone(zone), port))
}

fn normalize_zone(zone: &str) -> String {
    let z = zone.trim_end_matches('.').to_ascii_lowercase();
    if z.is_empty() {
        ".".into()
    } else {
        z
    }
}

/// Go's duration syntax as CoreDNS reads it: "90s", "1h", "1h30m", or bare seconds.
fn parse_duration(s: &str) -> Option<u64> {
    if let Ok(n) = s.parse::<u64>() {
        return Some(n);
    }
    let mut total = 0u64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' if chars.peek() == Some(&'s') => return None,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        let n: u64 = num.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        num.clear();
    }
    num.is_empty().then_some(total)
}

impl Translator {
    fn new(cluster_domain: &str) -> Self {
        Translator {
            cluster_domain: normalize_zone(cluster_domain),
            notes: Vec::new(),
            issues: Vec::new(),
            stub_domains: BTreeMap::new(),
            upstream_nameservers: None,
            root_resolv: None,
            root_seen: false,
            cluster_seen: false,
            cluster_targets: Vec::new(),
            force_tcp: Vec::new(),
            cluster_max: Seen::default(),
            max: Seen::default(),
            negative_max: Seen::default(),
            min: Seen::default(),
            capacity: 0,
            capacity_set: false,
            prefetch: None,
            serve_stale: None,
            blocks_without_cache: Vec::new(),
            blocks: 0,
            blocks_prefetching: 0,
            blocks_serving_stale: 0,
        }
    }

    fn note(&mut self, line: usize, message: impl Into<String>) {
        let message = message.into();
        match self.notes.iter_mut().find(|n| n.message == message) {
            Some(n) => {
                if !n.lines.contains(&line) {
                    n.lines.push(line);
                }
            }
            None => self.notes.push(Note {
                lines: vec![line],
                message,
            }),
        }
    }

    fn issue(&mut self, line: usize, message: impl Into<String>) {
        self.issues.push(Issue {
            line,
            message: message.into(),
        });
    }

    fn kind(&self, zone: &str) -> ZoneKind {
        if zone == "." {
            ZoneKind::Root
        } else if zone == self.cluster_domain || zone == "in-addr.arpa" || zone == "ip6.arpa" {
            ZoneKind::Cluster
        } else {
            ZoneKind::Stub
        }
    }

    /// Placeholders nobody filled in, CoreDNS's `{$VAR}`, `import` and snippets.
    fn unfilled(&mut self, words: &[&str], line: usize) -> bool {
        let mut bad = false;
        for w in words {
            if w.contains("{$") || w.contains("{env.") {
                self.issue(
                    line,
                    format!("{w}: environment placeholders are not expanded by the importer; write the value"),
                );
                bad = true;
            } else if w.contains("__PILLAR__")
                && *w != PILLAR_CLUSTER_DNS
                && *w != PILLAR_UPSTREAM_SERVERS
            {
                self.issue(
                    line,
                    format!("{w}: a template value nobody filled in; substitute it as the node-local-dns manifest's sed commands do"),
                );
                bad = true;
            }
        }
        bad
    }

    fn block(&mut self, block: &ServerBlock) {
        if block.keys.iter().any(|k| k.starts_with('(')) {
            self.issue(
                block.line,
                format!(
                    "snippet {}: snippets and `import` are not expanded; inline them",
                    block.keys[0]
                ),
            );
            return;
        }
        let keys: Vec<&str> = block.keys.iter().map(String::as_str).collect();
        if self.unfilled(&keys, block.line) {
            return;
        }
        let mut zones = Vec::new();
        for key in &block.keys {
            match zone_and_port(key) {
                Ok((zone, port)) => {
                    if let Some(p) = port.filter(|&p| p != DNS_PORT) {
                        self.issue(
                            block.line,
                            format!("{key}: nldns answers on port 53 (the intercepted Service IPs and --listen), not on {p}; block skipped"),
                        );
                        continue;
                    }
                    if nldns_dns::router::zone_to_wire(&zone).is_err() {
                        self.issue(block.line, format!("{key}: not a valid zone name"));
                        continue;
                    }
                    zones.push(zone);
                }
                Err(e) => self.issue(block.line, e),
            }
        }
        if zones.is_empty() {
            return;
        }
        self.blocks += 1;
        let mut forward: Option<(Target, usize)> = None;
        let mut cache: Option<CachePlan> = None;
        let mut force_tcp = false;
        for d in &block.directives {
            let words: Vec<&str> = d.args.iter().map(String::as_str).collect();
            if self.unfilled(&words, d.line) {
                continue;
            }
            match d.name.as_str() {
                "forward" => {
                    if forward.is_some() {
                        self.issue(d.line, "a second `forward` in one block; dropped");
                        continue;
                    }
                    if let Some((target, tcp)) = self.forward(d, &zones) {
                        forward = Some((target, d.line));
                        force_tcp = tcp;
                    }
                }
                "cache" => {
                    if cache.is_some() {
                        self.issue(d.line, "a second `cache` in one block; dropped");
                        continue;
                    }
                    cache = self.cache(d, &zones);
                }
                "errors" => self.note(
                    d.line,
                    "errors: nldns logs upstream failures itself (nothing to set)",
                ),
                "loop" => self.note(
                    d.line,
                    "loop: nldns refuses to intercept when an upstream is one of its own intercepted Service IPs, which is the loop node-local-dns guards against (nothing to set)",
                ),
                "reload" => self.note(
                    d.line,
                    "reload: the --config file is reloaded on change and on SIGHUP, keeping the cache (nothing to set)",
                ),
                "bind" => self.bind(d),
                "health" => {
                    let addr = d.args.first().map_or(":8080", String::as_str);
                    self.note(
                        d.line,
                        format!("health {addr}: a DaemonSet flag, --health-addr {} (serves /health and /ready)", listen_text(addr, 8080)),
                    );
                }
                "ready" => {
                    let addr = d.args.first().map_or(":8181", String::as_str);
                    self.note(
                        d.line,
                        format!("ready {addr}: /ready is served on --health-addr (a DaemonSet flag)"),
                    );
                }
                "prometheus" => {
                    let addr = d.args.first().map_or("127.0.0.1:9153", String::as_str);
                    self.note(
                        d.line,
                        format!("prometheus {addr}: a DaemonSet flag, --metrics-addr {} (CoreDNS's series are served there)", listen_text(addr, 9153)),
                    );
                }
                "log" => self.issue(
                    d.line,
                    format!("{}: nldns has no query log; dropping it loses the per-query lines", written(d)),
                ),
                "import" => self.issue(
                    d.line,
                    format!("{}: imports are not expanded; inline the imported text", written(d)),
                ),
                _ => self.issue(
                    d.line,
                    format!("{}: plugin `{}` has no nldns equivalent", written(d), d.name),
                ),
            }
        }
        for zone in &zones {
            let kind = self.kind(zone);
            if kind == ZoneKind::Cluster && *zone == self.cluster_domain {
                self.cluster_seen = true;
            }
            if kind == ZoneKind::Root {
                self.root_seen = true;
            }
            self.route(zone, kind, forward.as_ref(), block.line);
            if force_tcp {
                let line = forward.as_ref().map_or(block.line, |f| f.1);
                if !self.force_tcp.contains(zone) {
                    self.force_tcp.push(zone.clone());
                }
                self.note(
                    line,
                    "forward ... { force_tcp }: forceTcpZones (nldns asks these zones' upstreams over TCP only)",
                );
            }
            match &cache {
                Some(c) => {
                    let cap = if kind == ZoneKind::Cluster {
                        &mut self.cluster_max
                    } else {
                        &mut self.max
                    };
                    cap.0.push((c.success_max, c.line));
                    self.negative_max.0.push((c.denial_max, c.line));
                    self.min.0.push((c.success_min, c.line));
                    if let Some(m) = c.denial_min.filter(|&m| m != 0) {
                        self.note(
                            c.line,
                            format!("denial ... {m}: nldns has no floor for negative answers; they keep their own TTL (never longer than negativeMaxTtl)"),
                        );
                    }
                }
                None => self.blocks_without_cache.push((zone.clone(), block.line)),
            }
        }
        if let Some(c) = cache {
            self.capacity += c.success_capacity + c.denial_capacity;
            self.capacity_set |= c.capacity_set;
        }
    }

    /// The zone's traffic: the cluster zones to --upstream, `.` to the default upstreams,
    /// other zones to stubDomains.
    fn route(
        &mut self,
        zone: &str,
        kind: ZoneKind,
        forward: Option<&(Target, usize)>,
        line: usize,
    ) {
        let Some((target, fline)) = forward else {
            self.issue(
                line,
                format!("zone {zone} has no `forward`: nldns forwards every zone it does not cache, so its names would reach {}", match kind {
                    ZoneKind::Cluster => "--upstream",
                    _ => "the default upstreams",
                }),
            );
            return;
        };
        let fline = *fline;
        match kind {
            ZoneKind::Cluster => {
                self.cluster_targets.push((target.clone(), fline));
            }
            ZoneKind::Root => match target {
                Target::Servers(servers) => {
                    self.upstream_nameservers = Some((servers.clone(), fline));
                    self.note(fline, "forward . IP...: upstreamNameservers (replace the node's resolv.conf servers)");
                }
                Target::ResolvConf(path) => {
                    self.root_resolv = Some(path.clone());
                    if path == DEFAULT_RESOLV_CONF {
                        self.note(fline, "forward . /etc/resolv.conf: nldns's default (the node's resolv.conf servers); no key");
                    } else {
                        self.note(fline, format!("forward . {path}: a DaemonSet flag, --resolv-conf {path} (mounted into the pod); no key"));
                    }
                }
                Target::ClusterDnsPillar => {
                    self.issue(fline, format!("forward . {PILLAR_CLUSTER_DNS} in the `.` block: nldns sends names outside the cluster zones to the node's resolv.conf or upstreamNameservers, not to kube-dns"));
                }
            },
            ZoneKind::Stub => match target {
                Target::Servers(servers) => {
                    self.stub_domains.insert(zone.to_string(), servers.clone());
                    self.note(fline, "forward in a zone's own block: stubDomains");
                }
                Target::ResolvConf(path) => {
                    self.note(fline, format!("zone {zone} forwards to {path}: names outside the cluster zones go to the node's resolv.conf servers anyway unless upstreamNameservers is set; no stub domain"));
                    if self.upstream_nameservers.is_some() {
                        self.issue(fline, format!("zone {zone} forwards to {path} while `.` forwards to IPs: nldns has no per-zone resolv.conf"));
                    }
                }
                Target::ClusterDnsPillar => {
                    self.issue(fline, format!("zone {zone} forwards to {PILLAR_CLUSTER_DNS}: write the kube-dns-upstream ClusterIP to make it a stub domain"));
                }
            },
        }
    }

    /// `forward FROM TO... [{ options }]`: the target, and whether force_tcp is on.
    fn forward(&mut self, d: &Directive, zones: &[String]) -> Option<(Target, bool)> {
        let Some((from, to)) = d.args.split_first() else {
            self.issue(d.line, "forward without FROM and TO");
            return None;
        };
        let from = normalize_zone(from);
        if from != "." && !zones.contains(&from) {
            self.issue(
                d.line,
                format!("forward {from} ... in the block of {}: forwarding part of a block's zone is not supported (give {from} its own block)", zones.join(" ")),
            );
            return None;
        }
        if to.is_empty() {
            self.issue(d.line, "forward without a TO address");
            return None;
        }
        let target = if to.len() == 1 && to[0] == PILLAR_CLUSTER_DNS {
            Target::ClusterDnsPillar
        } else if to.len() == 1 && to[0] == PILLAR_UPSTREAM_SERVERS {
            self.note(
                d.line,
                format!("{PILLAR_UPSTREAM_SERVERS}: node-cache puts the node's resolv.conf servers here"),
            );
            Target::ResolvConf(DEFAULT_RESOLV_CONF.into())
        } else if to.len() == 1 && to[0].starts_with('/') {
            Target::ResolvConf(to[0].clone())
        } else {
            let mut servers = Vec::new();
            for t in to {
                let addr = t.strip_prefix("dns://").unwrap_or(t);
                if addr.contains("://") {
                    self.issue(d.line, format!("forward to {t}: nldns forwards over plain DNS only (no DNS-over-TLS/HTTPS)"));
                    return None;
                }
                match parse_server(addr) {
                    Ok(s) => servers.push(s),
                    Err(e) => {
                        self.issue(d.line, format!("forward: {e}"));
                        return None;
                    }
                }
            }
            Target::Servers(servers)
        };
        let mut force_tcp = false;
        for o in &d.block {
            match o.name.as_str() {
                "force_tcp" => force_tcp = true,
                "prefer_udp" => self.note(o.line, "prefer_udp: nldns asks over UDP and retries over TCP when truncated (nothing to set)"),
                "policy" if o.args.first().is_some_and(|p| p == "random" || p == "round_robin") => self.note(
                    o.line,
                    format!("policy {}: nldns starts at a random upstream and moves on after a failure (nothing to set)", o.args[0]),
                ),
                "policy" => self.note(
                    o.line,
                    format!("{}: nldns starts at a random upstream, not the first; failed upstreams are tried last for 10 s", written(o)),
                ),
                "max_fails" | "health_check" | "expire" | "failfast_all_unhealthy_upstreams" => self.note(
                    o.line,
                    format!("{}: nldns tracks upstream health per query (a failed upstream is tried last for 10 s); no key", written(o)),
                ),
                "max_concurrent" => self.note(
                    o.line,
                    format!("{}: nldns bounds upstream queries in flight at 1000 per agent; no key", written(o)),
                ),
                _ => self.issue(
                    o.line,
                    format!("forward option {}: not supported by nldns", written(o)),
                ),
            }
        }
        Some((target, force_tcp))
    }

    /// `cache [TTL] [ZONES...] [{ success|denial|prefetch|serve_stale ... }]`.
    fn cache(&mut self, d: &Directive, zones: &[String]) -> Option<CachePlan> {
        let mut plan = CachePlan {
            line: d.line,
            success_capacity: COREDNS_CAPACITY,
            denial_capacity: COREDNS_CAPACITY,
            capacity_set: false,
            success_max: COREDNS_SUCCESS_TTL,
            denial_max: COREDNS_DENIAL_TTL,
            success_min: COREDNS_MIN_TTL,
            denial_min: None,
        };
        let mut args = d.args.iter();
        if let Some(first) = d.args.first() {
            if let Ok(ttl) = first.parse::<u64>() {
                plan.success_max = ttl;
                plan.denial_max = ttl;
                args.next();
            }
        }
        for z in args {
            if !zones.contains(&normalize_zone(z)) {
                self.issue(
                    d.line,
                    format!("cache ... {z}: caching only part of a block's zones is not supported"),
                );
            }
        }
        let number = |t: &mut Self, o: &Directive, i: usize| -> Option<u64> {
            let s = o.args.get(i)?;
            match s.parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    t.issue(o.line, format!("{}: {s:?} is not a number", written(o)));
                    None
                }
            }
        };
        for o in &d.block {
            match o.name.as_str() {
                "success" | "denial" => {
                    let capacity = number(self, o, 0);
                    let ttl = number(self, o, 1);
                    let min = number(self, o, 2);
                    if capacity.is_none() {
                        self.issue(o.line, format!("{}: CAPACITY missing", written(o)));
                        continue;
                    }
                    let success = o.name == "success";
                    let (cap, max) = if success {
                        (&mut plan.success_capacity, &mut plan.success_max)
                    } else {
                        (&mut plan.denial_capacity, &mut plan.denial_max)
                    };
                    if let Some(c) = capacity {
                        plan.capacity_set |= c != COREDNS_CAPACITY;
                        *cap = c;
                    }
                    if let Some(t) = ttl {
                        *max = t;
                    }
                    match (success, min) {
                        (true, Some(m)) => plan.success_min = m,
                        (false, Some(m)) => plan.denial_min = Some(m),
                        _ => {}
                    }
                }
                "prefetch" => {
                    let Some(hits) = number(self, o, 0) else {
                        self.issue(o.line, "prefetch without AMOUNT");
                        continue;
                    };
                    let mut percent = 10;
                    for a in &o.args[1..] {
                        if let Some(p) = a.strip_suffix('%') {
                            match p.parse::<u32>() {
                                Ok(p) if (1..=100).contains(&p) => percent = p,
                                _ => self.issue(
                                    o.line,
                                    format!("prefetch: {a:?} is not a percentage in 1%..100%"),
                                ),
                            }
                        } else if parse_duration(a) != Some(60) {
                            self.note(o.line, format!("prefetch ... {a}: nldns counts an entry's hits over its whole lifetime, not per {a}"));
                        }
                    }
                    let hits = u32::try_from(hits).unwrap_or(u32::MAX).clamp(1, 1_000_000);
                    match self.prefetch {
                        Some((h, p, _)) if (h, p) != (hits, percent) => self.note(
                            o.line,
                            "prefetch differs between blocks: nldns prefetches in every zone alike; the first block's values are kept",
                        ),
                        Some(_) => {}
                        None => self.prefetch = Some((hits, percent, o.line)),
                    }
                    self.blocks_prefetching += 1;
                }
                "serve_stale" => {
                    let secs = match o.args.first() {
                        None => 3600,
                        Some(a) => match parse_duration(a) {
                            Some(s) if s > 0 => s,
                            _ => {
                                self.issue(o.line, format!("serve_stale {a}: not a duration nldns can use (1s up to 168h)"));
                                continue;
                            }
                        },
                    };
                    if o.args.get(1).is_none_or(|m| m == "immediate") {
                        self.note(o.line, "serve_stale (immediate): nldns serves a stale answer only when upstreams fail or have not answered within 1.8 s (RFC 8767), as CoreDNS's `verify` mode does");
                    }
                    match self.serve_stale {
                        Some((s, _)) if s != secs => {
                            self.note(o.line, "serve_stale differs between blocks: nldns keeps one window for every zone; the shortest is kept");
                            self.serve_stale = Some((s.min(secs), o.line));
                        }
                        Some(_) => {}
                        None => self.serve_stale = Some((secs, o.line)),
                    }
                    self.blocks_serving_stale += 1;
                }
                _ => self.issue(
                    o.line,
                    format!("cache option {}: not supported by nldns", written(o)),
                ),
            }
        }
        Some(plan)
    }

    fn bind(&mut self, d: &Directive) {
        let (mut listen, mut service) = (Vec::new(), Vec::new());
        for a in &d.args {
            match a.parse::<IpAddr>() {
                Ok(ip) if is_link_local(ip) => {
                    listen.push(SocketAddr::new(ip, DNS_PORT).to_string())
                }
                Ok(ip) => service.push(ip.to_string()),
                Err(_) => {
                    self.note(d.line, format!("bind {a}: nldns does not bind interfaces; it intercepts --service-ip and serves --listen addresses"));
                }
            }
        }
        if !service.is_empty() {
            self.note(
                d.line,
                format!("bind {}: nldns intercepts the kube-dns Service IP instead of binding it: the DaemonSet's --service-ip {}", service.join(" "), service.join(",")),
            );
        }
        if !listen.is_empty() {
            self.note(
                d.line,
                format!("bind {}: for pods whose kubelet --cluster-dns points at it, the DaemonSet's --listen {}", listen.iter().map(|l| l.trim_end_matches(":53")).collect::<Vec<_>>().join(" "), listen.join(",")),
            );
        }
    }

    fn finish(mut self) -> Import {
        let mut config = Map::new();
        // --upstream: one target for all cluster zones.
        if let Some((first, line)) = self.cluster_targets.first().cloned() {
            let differ: Vec<usize> = self
                .cluster_targets
                .iter()
                .filter(|(t, _)| *t != first)
                .map(|(_, l)| *l)
                .collect();
            for l in differ {
                self.issue(l, format!("the cluster zones forward to different servers; nldns sends all of {}, in-addr.arpa and ip6.arpa to --upstream ({first} kept)", self.cluster_domain));
            }
            let lines: Vec<usize> = self.cluster_targets.iter().map(|(_, l)| *l).collect();
            let message = match &first {
                Target::ClusterDnsPillar => format!("forward . {PILLAR_CLUSTER_DNS} in the cluster zones: the DaemonSet's --upstream, the kube-dns-upstream Service's ClusterIP"),
                Target::Servers(_) => format!("forward . {first} in the cluster zones: the DaemonSet's --upstream {first}"),
                Target::ResolvConf(path) => {
                    self.issue(line, format!("the cluster zones forward to {path}: nldns sends them to --upstream (the kube-dns-upstream Service) only"));
                    String::new()
                }
            };
            if !message.is_empty() {
                for l in lines {
                    self.note(l, message.clone());
                }
            }
        }
        if !self.cluster_seen {
            self.notes.push(Note {
                lines: vec![],
                message: format!("no server block for the cluster domain {}: if the cluster domain is another, run again with --cluster-domain (and set the DaemonSet's --cluster-domain)", self.cluster_domain),
            });
        } else if self.cluster_domain != "cluster.local" {
            self.notes.push(Note {
                lines: vec![],
                message: format!(
                    "cluster domain {}: the DaemonSet's --cluster-domain {}",
                    self.cluster_domain, self.cluster_domain
                ),
            });
        }
        if !self.root_seen {
            self.notes.push(Note {
                lines: vec![],
                message: "no `.` block: CoreDNS refuses names outside its zones; nldns forwards them to the node's resolv.conf servers".into(),
            });
        }
        for (zone, line) in std::mem::take(&mut self.blocks_without_cache) {
            self.note(
                line,
                format!(
                    "zone {zone} has no `cache`: nldns caches every zone (within the caps below)"
                ),
            );
        }
        if !self.stub_domains.is_empty() {
            let stubs: Map<String, Value> = self
                .stub_domains
                .iter()
                .map(|(z, s)| {
                    (
                        z.clone(),
                        json!(s.iter().map(|s| server_text(*s)).collect::<Vec<_>>()),
                    )
                })
                .collect();
            config.insert("stubDomains".into(), Value::Object(stubs));
        }
        if let Some((servers, _)) = &self.upstream_nameservers {
            config.insert(
                "upstreamNameservers".into(),
                json!(servers.iter().map(|s| server_text(*s)).collect::<Vec<_>>()),
            );
        }
        if !self.force_tcp.is_empty() {
            config.insert("forceTcpZones".into(), json!(self.force_tcp));
        }
        let mut cache = Map::new();
        self.lifetime(
            &mut cache,
            "clusterMaxTtl",
            1,
            |t| &t.cluster_max,
            "the cluster zones' success TTL",
        );
        self.lifetime(
            &mut cache,
            "maxTtl",
            1,
            |t| &t.max,
            "the success TTL outside the cluster zones",
        );
        self.lifetime(
            &mut cache,
            "negativeMaxTtl",
            0,
            |t| &t.negative_max,
            "the denial TTL",
        );
        self.lifetime(&mut cache, "minTtl", 0, |t| &t.min, "the success MINTTL");
        // A floor above a cap would be refused by the config file: the cap wins, as
        // CoreDNS's own cap does.
        if let Some(min) = cache.get("minTtl").and_then(Value::as_u64) {
            let caps = ["maxTtl", "clusterMaxTtl"].map(|k| cache.get(k).and_then(Value::as_u64));
            let lowest = caps.iter().flatten().min().copied();
            if let Some(cap) = lowest.filter(|&c| c < min) {
                cache.insert("minTtl".into(), json!(cap));
                self.note(
                    0,
                    format!(
                        "minTtl lowered from {min} to {cap}: a floor above a cap has no meaning"
                    ),
                );
            }
        }
        if self.capacity_set {
            cache.insert("maxEntries".into(), json!(self.capacity));
            self.note(0, format!("cache capacities: maxEntries {} (success plus denial capacity of every block: nldns keeps one cache)", self.capacity));
        } else if self.capacity > 0 {
            self.note(0, "cache capacities are CoreDNS's defaults: nldns's own bound applies (150,000 entries, 64 MiB; see \"Resources\" before raising it)");
        }
        match self.prefetch {
            Some((hits, percent, line)) => {
                cache.insert("prefetch".into(), json!({"enabled": true, "minHits": hits, "percent": percent}));
                if self.blocks_prefetching < self.blocks {
                    self.note(line, "prefetch is set in some blocks only: nldns prefetches in every zone");
                }
            }
            None => self.note(0, "no prefetch: nldns prefetches popular entries by default (5 hits, 10% of the TTL left); \"cache\": {\"prefetch\": {\"enabled\": false}} turns that off"),
        }
        match self.serve_stale {
            Some((secs, line)) => {
                cache.insert("serveStale".into(), json!({"enabled": true, "maxSeconds": secs.min(7 * 24 * 3600)}));
                if self.blocks_serving_stale < self.blocks {
                    self.note(line, "serve_stale is set in some blocks only: nldns serves stale in every zone");
                }
            }
            None => self.note(0, "no serve_stale: nldns serves expired answers for up to 1 h while every upstream fails (RFC 8767) by default; \"cache\": {\"serveStale\": {\"enabled\": false}} turns that off"),
        }
        if !cache.is_empty() {
            config.insert("cache".into(), Value::Object(cache));
        }
        for n in &mut self.notes {
            n.lines.retain(|&l| l != 0);
        }
        self.issues.sort_by_key(|i| i.line);
        Import {
            config: Value::Object(config),
            notes: self.notes,
            issues: self.issues,
        }
    }

    /// One lifetime key from the blocks that set it: the smallest, with a note when
    /// they differ; clamped into the config file's range.
    fn lifetime(
        &mut self,
        cache: &mut Map<String, Value>,
        key: &str,
        low: u64,
        seen: fn(&Self) -> &Seen,
        what: &str,
    ) {
        let s = seen(self);
        let Some(v) = s.smallest() else { return };
        let (differ, lines) = (s.differ(), s.lines());
        let high = match key {
            "negativeMaxTtl" => 24 * 3600,
            "minTtl" => 3600,
            _ => 7 * 24 * 3600,
        };
        let clamped = v.clamp(low, high);
        if differ {
            for l in &lines {
                self.note(*l, format!("{what} differs between blocks: nldns keeps one value ({key}); the smallest, {v} s, is kept"));
            }
        }
        if clamped != v {
            self.note(
                lines[0],
                format!("{key} {v} is outside {low}..={high}: {clamped} used"),
            );
        }
        cache.insert(key.into(), json!(clamped));
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// `:9253` -> `0.0.0.0:9253`; a host without a port gets `default_port`.
fn listen_text(addr: &str, default_port: u16) -> String {
    if let Some(port) = addr.strip_prefix(':') {
        return format!("0.0.0.0:{port}");
    }
    match parse_server(addr) {
        Ok(s) if addr.parse::<IpAddr>().is_ok() => {
            SocketAddr::new(s.ip(), default_port).to_string()
        }
        Ok(s) => s.to_string(),
        Err(_) => addr.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{apply, ConfigFile};
    use nldns_dns::DnsConfig;

    const TEMPLATE: &str = include_str!("testdata/nodelocaldns.Corefile");
    const CUSTOMISED: &str = include_str!("testdata/customised.Corefile");
    const UNSUPPORTED: &str = include_str!("testdata/unsupported.Corefile");

    /// The printed config loads as --config and lands in the engine's configuration.
    fn engine_config(import: &Import) -> DnsConfig {
        let text = serde_json::to_string(&import.config).unwrap();
        let file = ConfigFile::from_json(&text).unwrap_or_else(|e| panic!("{text}: {e:#}"));
        let mut config = DnsConfig::default();
        apply(&mut config, file);
        config
    }

    fn has_note(import: &Import, lines: &[usize], text: &str) -> bool {
        import
            .notes
            .iter()
            .any(|n| n.lines == lines && n.message.contains(text))
    }

    #[test]
    fn the_upstream_template_imports_cleanly() {
        // As deployed: node-cache fills these two pillars itself at start ...
        let import = import(TEMPLATE, "cluster.local").unwrap();
        assert_eq!(import.issues, vec![], "{:#?}", import.notes);
        assert_eq!(
            import.config,
            json!({
                "cache": {"clusterMaxTtl": 30, "maxTtl": 30, "minTtl": 5, "negativeMaxTtl": 5},
                "forceTcpZones": ["cluster.local", "in-addr.arpa", "ip6.arpa"],
            })
        );
        let config = engine_config(&import);
        assert_eq!(config.max_ttl, std::time::Duration::from_secs(30));
        assert_eq!(config.force_tcp_zones.len(), 3);
        assert!(has_note(
            &import,
            &[10, 22, 33],
            "--upstream, the kube-dns-upstream"
        ));
        assert!(has_note(
            &import,
            &[9, 21, 32, 43],
            "--service-ip 10.96.0.10"
        ));
        assert!(has_note(
            &import,
            &[9, 21, 32, 43],
            "--listen 169.254.20.10:53"
        ));
        assert!(has_note(&import, &[14], "--health-addr 169.254.20.10:8080"));
        assert!(has_note(
            &import,
            &[13, 25, 36, 45],
            "--metrics-addr 0.0.0.0:9253"
        ));
        assert!(has_note(&import, &[44], "nldns's default"));
        assert!(has_note(&import, &[], "no serve_stale"));

        // ... or with every value written out.
        let filled = TEMPLATE
            .replace(PILLAR_CLUSTER_DNS, "10.96.0.11")
            .replace(PILLAR_UPSTREAM_SERVERS, "/etc/resolv.conf");
        let filled = super::import(&filled, "cluster.local").unwrap();
        assert_eq!(filled.issues, vec![]);
        assert_eq!(filled.config, import.config);
        assert!(has_note(&filled, &[10, 22, 33], "--upstream 10.96.0.11"));
    }

    #[test]
    fn customisations_map_onto_keys() {
        let import = import(CUSTOMISED, "cluster.local").unwrap();
        assert_eq!(import.issues, vec![]);
        assert_eq!(
            import.config,
            json!({
                "cache": {
                    "clusterMaxTtl": 30,
                    // The stub zones' 120 s is below the `.` block's 300 s.
                    "maxTtl": 120,
                    "minTtl": 5,
                    "negativeMaxTtl": 5,
                    // 30000 + 9984 (cluster.local), 2 x 9984 for each other block.
                    "maxEntries": 30000 + 9984 + 4 * 9984 + 2 * 9984 + 20000 + 9984,
                    "prefetch": {"enabled": true, "minHits": 10, "percent": 20},
                    "serveStale": {"enabled": true, "maxSeconds": 86400},
                },
                "forceTcpZones": ["cluster.local", "in-addr.arpa", "ip6.arpa"],
                "stubDomains": {
                    "acme.internal": ["10.20.0.53", "10.20.0.54:5353"],
                    "corp.example.com": ["10.20.0.53", "10.20.0.54:5353"],
                },
                "upstreamNameservers": ["8.8.8.8", "1.1.1.1"],
            })
        );
        let config = engine_config(&import);
        assert_eq!(config.default_upstreams.len(), 2);
        assert_eq!(config.stub_domains.len(), 2);
        assert_eq!(config.max_entries, 129_872);
        assert_eq!(
            (config.prefetch_min_hits, config.prefetch_percent),
            (10, 20)
        );
        assert!(has_note(&import, &[44, 52], "the smallest, 120 s"));
        assert!(has_note(&import, &[62], "policy sequential"));
        assert!(has_note(&import, &[8], "some blocks only"));
    }

    #[test]
    fn what_cannot_be_honoured_is_named_with_its_line() {
        let import = import(UNSUPPORTED, "cluster.local").unwrap();
        let found: Vec<(usize, &str)> = import
            .issues
            .iter()
            .map(|i| (i.line, i.message.as_str()))
            .collect();
        for (line, text) in [
            (3, "no query log"),
            (5, "plugin `rewrite`"),
            (6, "__PILLAR__LOCAL__DNS__"),
            (13, "not on 5353"),
            (17, "{$VPN_DNS}"),
            (21, "keepttl"),
            (23, "plugin `hosts`"),
            (26, "tls://1.1.1.1"),
        ] {
            assert!(
                found.iter().any(|(l, m)| *l == line && m.contains(text)),
                "line {line} {text:?} not in {found:#?}"
            );
        }
        // Lenient: what is left still loads.
        let config = engine_config(&import);
        assert_eq!(
            config.cluster_zones,
            DnsConfig::default().cluster_zones,
            "the flags, not the file, name the cluster zones"
        );
        assert!(config.stub_domains.is_empty());
    }

    #[test]
    fn more_forms_of_forward_cache_and_keys() {
        let text = r#"
            # a comment { with braces }
            Cluster.Local.:53 in-addr.arpa ip6.arpa {
                forward . 10.96.0.11:53 [fd00:10:96::b]:53
                cache 15
            }
            dns://corp.example {
                forward corp.example 10.1.1.1
                cache { success 100 600 0 }
            }
            .:53 {
                forward . /run/systemd/resolve/resolv.conf { force_tcp }
                cache
            }
        "#;
        let import = import(text, "cluster.local").unwrap();
        assert_eq!(import.issues, vec![]);
        assert_eq!(
            import.config,
            json!({
                "cache": {"clusterMaxTtl": 15, "maxTtl": 600, "minTtl": 0, "negativeMaxTtl": 15,
                          "maxEntries": 2 * 9984 + 100 + 9984 + 2 * 9984},
                "forceTcpZones": ["."],
                "stubDomains": {"corp.example": ["10.1.1.1"]},
            })
        );
        assert!(has_note(
            &import,
            &[4],
            "--upstream 10.96.0.11,fd00:10:96::b"
        ));
        assert!(has_note(&import, &[12], "--resolv-conf /run/systemd"));
        // 600 s comes from the stub block alone; `cache` with no TTL is 3600 s.
        assert!(has_note(&import, &[9, 13], "the smallest, 600 s"));
    }

    #[test]
    fn cluster_zones_that_disagree_or_part_forwards_are_issues() {
        let text = "cluster.local {\n forward . 10.96.0.11\n}\nin-addr.arpa {\n forward . 10.96.0.12\n}\n\
                    . {\n forward corp 10.0.0.1\n forward . 8.8.8.8\n forward . 9.9.9.9\n cache 30 corp\n log\n}\n";
        let import = import(text, "cluster.local").unwrap();
        let lines: Vec<usize> = import.issues.iter().map(|i| i.line).collect();
        assert_eq!(lines, vec![5, 8, 10, 11, 12], "{:#?}", import.issues);
        assert!(import.issues[0].message.contains("different servers"));
        assert!(import.issues[1].message.contains("part of a block's zone"));
        assert!(import.issues[2].message.contains("second `forward`"));
        assert!(import.issues[3].message.contains("part of a block's zones"));
        // The first whole-zone forward stands.
        assert_eq!(import.config["upstreamNameservers"], json!(["8.8.8.8"]));
    }

    #[test]
    fn another_cluster_domain_is_a_flag() {
        let text =
            "corp.k8s:53 {\n forward . 10.96.0.11\n}\n.:53 {\n forward . /etc/resolv.conf\n}\n";
        let default = import(text, "cluster.local").unwrap();
        assert_eq!(
            default.config,
            json!({"stubDomains": {"corp.k8s": ["10.96.0.11"]}})
        );
        assert!(has_note(&default, &[], "--cluster-domain"));
        let named = import(text, "corp.k8s.").unwrap();
        assert_eq!(named.config, json!({}));
        assert!(has_note(&named, &[], "--cluster-domain corp.k8s"));
    }

    #[test]
    fn syntax_errors_carry_their_line() {
        for (text, err) in [
            (
                ".:53 {\n forward . \"8.8.8.8\n}\n",
                ParseError::UnterminatedQuote { line: 2 },
            ),
            (".:53 {\n cache {\n}\n", ParseError::Unclosed { line: 1 }),
            (".:53 {\n}\n}\n", ParseError::UnexpectedClose { line: 3 }),
            ("{\n}\n", ParseError::OpenWithoutName { line: 1 }),
            (
                ".:53 {\n}\nerrors\n",
                ParseError::OutsideBlock {
                    line: 3,
                    text: "errors".into(),
                },
            ),
        ] {
            assert_eq!(import(text, "cluster.local").unwrap_err(), err, "{text}");
        }
        assert!(ParseError::Unclosed { line: 7 }
            .to_string()
            .contains("line 7"));
        let deep = format!(".:53 {{\n{}", "a {\n".repeat(20));
        assert_eq!(parse(&deep).unwrap_err(), ParseError::TooDeep { line: 10 });
    }

    #[test]
    fn parser_keeps_words_lines_and_sub_blocks() {
        let blocks = parse(
            "a.example, b.example:53 {\n  x \"two words\" y # note\n  z {\n    w 1\n  }\n}\n",
        )
        .unwrap();
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].keys, vec!["a.example", "b.example:53"]);
        let d = &blocks[0].directives;
        assert_eq!((d[0].name.as_str(), d[0].line), ("x", 2));
        assert_eq!(d[0].args, vec!["two words", "y"]);
        assert_eq!(d[1].block[0].args, vec!["1"]);
        assert_eq!(d[1].block[0].line, 4);
    }

    #[test]
    fn durations_and_addresses() {
        assert_eq!(parse_duration("1h30m"), Some(5400));
        assert_eq!(parse_duration("90s"), Some(90));
        assert_eq!(parse_duration("86400"), Some(86400));
        assert_eq!(parse_duration("10ms"), None);
        assert_eq!(parse_duration("1.5h"), None);
        assert_eq!(parse_duration("h"), None);
        assert_eq!(listen_text(":9253", 9153), "0.0.0.0:9253");
        assert_eq!(listen_text("169.254.20.10", 8080), "169.254.20.10:8080");
        assert_eq!(zone_and_port(".:53").unwrap(), (".".into(), Some(53)));
        assert_eq!(zone_and_port(":53").unwrap(), (".".into(), Some(53)));
        assert!(zone_and_port("tls://.:853").unwrap_err().contains("tls://"));
        assert!(is_link_local("fe80::1".parse().unwrap()));
        assert!(!is_link_local("10.96.0.10".parse().unwrap()));
    }
}
