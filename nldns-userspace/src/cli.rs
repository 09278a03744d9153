//! The command line. Flag names are a contract (DaemonSets and scripts use them): keep
//! them. Every flag can also come from the environment as `NLDNS_<FLAG>`; lists there are
//! comma-separated.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    config::{parse_server, DnsSources},
    datapath::{attach::AttachMode, interfaces::DEFAULT_INTERFACE_GLOBS},
    probe::ProbeKind,
};

#[derive(Parser, Debug)]
#[command(
    name = "nldns",
    version,
    about = "eBPF node-local DNS cache for Kubernetes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as text, or as one JSON object per line for log pipelines (`time`,
    /// `level`, `target`, `message`, `fields`). RUST_LOG filters either.
    #[arg(long, global = true, env = "NLDNS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent: intercept the Service IPs and answer from the node-local cache.
    Run(Box<RunArgs>),
    /// Show what nldns has attached and loaded on this node (works without an agent).
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// A cgroup to inspect for socket hooks besides the cgroup2 root: the agent's
        /// --cgroup.
        #[arg(long, env = "NLDNS_CGROUP")]
        cgroup: Option<String>,
        /// The agent's --pod-cgroup (auto: kubepods.slice or kubepods under --cgroup).
        #[arg(long, env = "NLDNS_POD_CGROUP")]
        pod_cgroup: Option<String>,
        /// The running agent's --probe-socket: its limit counters are read there (exactly
        /// this pod's agent).
        #[arg(long, env = "NLDNS_PROBE_SOCKET")]
        probe_socket: Option<PathBuf>,
        /// Else its --metrics-addr.
        #[arg(long, env = "NLDNS_METRICS_ADDR", default_value = "127.0.0.1:9253")]
        metrics_addr: SocketAddr,
    },
    /// Set the datapath's log level (aya-log) in the running agents, without a restart.
    DatapathLog {
        /// off, error, warn, info, debug (one line per rewrite), trace.
        #[arg(value_parser = parse_level)]
        level: u8,
    },
    /// Ask this pod's agent, through its --probe-socket, whether it is ready or healthy;
    /// exit 0 if so. For exec probes: exact per agent, even during a surge upgrade.
    Probe {
        #[arg(value_enum)]
        kind: ProbeKind,
        /// The agent's --probe-socket.
        #[arg(long, env = "NLDNS_PROBE_SOCKET")]
        probe_socket: PathBuf,
        /// How long to wait for the answer.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Translate a node-local-dns Corefile into the equivalent --config file (JSON on
    /// stdout; notes on stderr). What nldns cannot honour is listed with its line and
    /// fails the import, unless --lenient drops it with a warning.
    ImportCorefile {
        /// The Corefile (the node-local-dns ConfigMap's `Corefile` key).
        file: PathBuf,
        /// Drop what nldns cannot honour, with a warning, instead of failing.
        #[arg(long)]
        lenient: bool,
        /// The cluster domain: its block, in-addr.arpa's and ip6.arpa's are the cluster
        /// zones (forwarded to --upstream); other zones' blocks become stubDomains.
        #[arg(long, default_value = "cluster.local")]
        cluster_domain: String,
    },
    /// Remove filters left by dead or hung agents (legacy netlink mode).
    Cleanup {
        /// Also remove the filters of a live agent.
        #[arg(long)]
        all: bool,
        /// A cgroup to clean of legacy socket hooks besides the cgroup2 root.
        #[arg(long, env = "NLDNS_CGROUP")]
        cgroup: Option<String>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Service IP(s) to intercept: the kube-dns ClusterIP, one per family when dual-stack.
    #[arg(
        long = "service-ip",
        env = "NLDNS_SERVICE_IP",
        value_delimiter = ',',
        required = true
    )]
    pub service_ip: Vec<std::net::IpAddr>,

    /// Where cluster-domain misses go: the kube-dns-uncached Service, IP[:PORT] ([IPv6]:PORT).
    #[arg(long, env = "NLDNS_UPSTREAM", value_delimiter = ',', required = true,
          value_parser = parse_server)]
    pub upstream: Vec<SocketAddr>,

    #[arg(long, env = "NLDNS_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,

    /// The node's resolv.conf: its nameservers answer names outside the cluster zones.
    #[arg(long, env = "NLDNS_RESOLV_CONF", default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,

    /// Comma-separated globs of pod-facing interfaces. lo and nldns0 never match.
    #[arg(long, env = "NLDNS_INTERFACES", default_value = DEFAULT_INTERFACE_GLOBS)]
    pub interfaces: String,

    #[arg(long, env = "NLDNS_ATTACH_MODE", value_enum, default_value = "auto")]
    pub attach_mode: AttachMode,

    /// Extra addresses on which the cache answers clients directly (e.g. 169.254.20.10:53).
    /// Replies on these are never rewritten.
    #[arg(long, env = "NLDNS_LISTEN", value_delimiter = ',')]
    pub listen: Vec<SocketAddr>,

    /// /health and /ready.
    #[arg(long, env = "NLDNS_HEALTH_ADDR", default_value = "127.0.0.1:8080")]
    pub health_addr: SocketAddr,

    /// A unix socket serving /health, /ready and /metrics for this agent alone, asked by
    /// `nldns probe`. Put it in a directory of the pod's own (an emptyDir): during a surge
    /// upgrade two agents share --health-addr, never this socket.
    #[arg(long, env = "NLDNS_PROBE_SOCKET")]
    pub probe_socket: Option<PathBuf>,

    /// /metrics (Prometheus). May equal --health-addr.
    #[arg(long, env = "NLDNS_METRICS_ADDR", default_value = "127.0.0.1:9253")]
    pub metrics_addr: SocketAddr,

    /// JSON config: stubDomains, upstreamNameservers (kube-dns ConfigMap style), cache
    /// settings. Reloaded on change and on SIGHUP, keeping the cache.
    #[arg(long, env = "NLDNS_CONFIG")]
    pub config: Option<PathBuf>,

    /// IPv4 intercept address (nldns's alone; on nldns0, or lo without the dummy driver).
    #[arg(long, env = "NLDNS_INTERCEPT_V4", default_value_t = crate::datapath::endpoint::DEFAULT_INTERCEPT_V4)]
    pub intercept_v4: std::net::Ipv4Addr,

    /// IPv6 intercept address.
    #[arg(long, env = "NLDNS_INTERCEPT_V6", default_value_t = crate::datapath::endpoint::DEFAULT_INTERCEPT_V6)]
    pub intercept_v6: std::net::Ipv6Addr,

    /// First intercept port. If taken (another agent during an upgrade), the next free
    /// block of 16 ports is used.
    #[arg(long, env = "NLDNS_INTERCEPT_PORT", default_value_t = crate::datapath::endpoint::DEFAULT_BASE_PORT)]
    pub intercept_port: u16,

    /// Interception stops this long after the agent last proved it serves (max 1000).
    /// The default stays below 1 s with room for the probe period: a resolver with
    /// `timeout:1` retries 1 s after a query lost with a dead agent, and by then its
    /// netlink filters must pass traffic to kube-dns.
    #[arg(long, env = "NLDNS_HEARTBEAT_MAX_AGE_MS", default_value_t = 750,
          value_parser = clap::value_parser!(u64).range(100..=1000))]
    pub heartbeat_max_age_ms: u64,

    /// How long shutdown waits for queries in flight.
    #[arg(long, env = "NLDNS_DRAIN_TIMEOUT_MS", default_value_t = 2000)]
    pub drain_timeout_ms: u64,

    /// Serving threads per UDP socket (intercept and --listen). Default: one per two
    /// CPUs available (affinity and cgroup CPU quota), at most 4.
    #[arg(long, env = "NLDNS_UDP_THREADS", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub udp_threads: Option<u16>,

    /// cgroup2 directory for the host-network socket hooks (connect/sendmsg/recvmsg/
    /// getpeername): the node's cgroup root. Default: the cgroup2 root from
    /// /proc/self/mounts; `none` turns all socket hooks off (host and pods).
    #[arg(long, env = "NLDNS_CGROUP")]
    pub cgroup: Option<String>,

    /// cgroup2 directory for the pods' socket hooks, which reach a pod's ClusterIP before
    /// a dataplane that load-balances Services in connect() (Cilium, GKE Dataplane V2,
    /// Calico eBPF). `auto` (default): kubepods.slice or kubepods under --cgroup; a
    /// relative PATH is taken under --cgroup; `none`: pods are intercepted by TC only.
    #[arg(long, env = "NLDNS_POD_CGROUP")]
    pub pod_cgroup: Option<String>,

    /// Cache hits answered by the TC program itself, from a map the cache fills, without
    /// the query reaching the agent's socket. `auto` (default): on where the kernel's
    /// verifier accepts the responder, elsewhere a warning and every hit answered by the
    /// agent; `on`: refuse to start without; `off`.
    #[arg(long, env = "NLDNS_KERNEL_ANSWERS", value_enum, default_value = "auto")]
    pub kernel_answers: crate::datapath::answers::KernelAnswersMode,

    /// Cache entries the kernel may answer from at most (the BPF map, 512 bytes an
    /// entry, charged to the agent's memory cgroup). Entries past it are answered by the
    /// agent.
    #[arg(long, env = "NLDNS_KERNEL_ANSWERS_ENTRIES", default_value_t = 16_384,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(nldns_common::answers::ANSWER_ENTRIES_MAX)))]
    pub kernel_answers_entries: u32,

    /// How a kernel answer goes back to the pod: `peer` (bpf_redirect_peer: veth and
    /// netkit pod interfaces, every common CNI) or `egress` (any interface kind).
    #[arg(
        long,
        env = "NLDNS_KERNEL_ANSWERS_REDIRECT",
        value_enum,
        default_value = "peer"
    )]
    pub kernel_answers_redirect: crate::datapath::answers::AnswerRedirect,

    /// Datapath log level through aya-log: off, error, warn, info, debug, trace.
    #[arg(long, env = "NLDNS_DATAPATH_LOG", default_value = "off", value_parser = parse_level)]
    pub datapath_log: u8,
}

impl RunArgs {
    /// The flags the DNS configuration is built from (see `config`).
    pub fn dns_sources(&self) -> DnsSources<'_> {
        DnsSources {
            cluster_domain: &self.cluster_domain,
            cluster_upstreams: &self.upstream,
            resolv_conf: &self.resolv_conf,
            config_file: self.config.as_deref(),
        }
    }
}

fn parse_level(s: &str) -> Result<u8, String> {
    match s.to_ascii_lowercase().as_str() {
        "off" => Ok(0),
        "error" => Ok(1),
        "warn" => Ok(2),
        "info" => Ok(3),
        "debug" => Ok(4),
        "trace" => Ok(5),
        _ => Err(format!(
            "{s:?} is not one of off, error, warn, info, debug, trace"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_forms_default_to_port_53() {
        assert_eq!(
            parse_server("10.96.0.11").unwrap(),
            "10.96.0.11:53".parse().unwrap()
        );
        assert_eq!(
            parse_server("10.96.0.11:5353").unwrap(),
            "10.96.0.11:5353".parse().unwrap()
        );
        assert_eq!(
            parse_server("fd00::b").unwrap(),
            "[fd00::b]:53".parse().unwrap()
        );
        assert_eq!(
            parse_server("[fd00::b]:54").unwrap(),
            "[fd00::b]:54".parse().unwrap()
        );
        assert!(parse_server("kube-dns").unwrap_err().contains("kube-dns"));
    }

    #[test]
    fn run_flags_parse_and_bad_flags_are_named() {
        let cli = Cli::try_parse_from([
            "nldns",
            "run",
            "--service-ip",
            "10.96.0.10",
            "--service-ip",
            "fd00:10:96::a",
            "--upstream",
            "10.96.0.11",
            "--attach-mode",
            "netlink",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.service_ip.len(), 2);
        assert_eq!(args.attach_mode, AttachMode::Netlink);

        let err = Cli::try_parse_from([
            "nldns",
            "run",
            "--service-ip",
            "10.96.0.10",
            "--upstream",
            "10.96.0.11",
            "--heartbeat-max-age-ms",
            "5000",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("--heartbeat-max-age-ms"), "{err}");
    }

    #[test]
    fn import_corefile_takes_a_file_and_options() {
        let cli =
            Cli::try_parse_from(["nldns", "import-corefile", "Corefile", "--lenient"]).unwrap();
        let Command::ImportCorefile {
            file,
            lenient,
            cluster_domain,
        } = cli.command
        else {
            panic!("not import-corefile")
        };
        assert_eq!(file, PathBuf::from("Corefile"));
        assert!(lenient);
        assert_eq!(cluster_domain, "cluster.local");
        assert!(Cli::try_parse_from(["nldns", "import-corefile"]).is_err());
    }
}
