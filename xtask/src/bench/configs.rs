//! The configurations compared, each set up inside a fresh simulated node:
//! (a) nldns; (b) node-local-dns's NOTRACK design with unbound; (c) the same with dnsmasq; (d) no cache;
//! (e) nldns with the load generators in kubelet's pod cgroup, where the pods' socket hooks
//! redirect in connect()/sendmsg() and TC only passes the packets; (a) and (e) run with
//! `--kernel-answers off`: the agent answers every hit (the userspace-hit baseline).
//! (f) nldns with kernel answers (the TC responder answers cache hits, back to the pod with
//! bpf_redirect_peer); (g) the same with `--kernel-answers-redirect egress`; (h) the
//! physical ceiling of that path: a raw TC program that bounces every query straight back
//! to the pod without any DNS work (`nldns_tests::bounce`).
//!
//! The NOTRACK design (node-local-dns, and the variant that hijacks the ClusterIP): the ClusterIP bound as a local address of the node
//! (node-local-dns uses a dummy interface; this kernel has no dummy driver, so `lo` of the node
//! namespace), raw-table NOTRACK rules so kube-proxy's DNAT never sees the queries, and a
//! cache listening on the ClusterIP that forwards cluster.local and the reverse zones to
//! kube-dns-uncached and everything else to the node's resolver.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use nldns_tests::addresses::{EXT_RESOLVER_V4, KUBE_DNS_UNCACHED_V4, KUBE_DNS_V4};
use nldns_tests::bounce::{self, TcAttached};
use nldns_tests::{AgentProcess, SimNode};

use super::workload::{PROBE_NAME, WILDCARD_ANSWER};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Config {
    /// (a) nldns, release build, the harness's agent args.
    Nldns,
    /// (b) ClusterIP on lo + NOTRACK + unbound.
    Unbound,
    /// (c) ClusterIP on lo + NOTRACK + dnsmasq.
    Dnsmasq,
    /// (d) kube-proxy NAT straight to the knot backends.
    None,
    /// (e) nldns, the pods in `kubepods.slice`: the pods' socket hooks' path.
    NldnsPodHooks,
    /// (f) nldns with `--kernel-answers on` (bpf_redirect_peer back to the pod).
    NldnsKernel,
    /// (g) nldns with `--kernel-answers on --kernel-answers-redirect egress`.
    NldnsKernelEgress,
    /// (h) the ceiling: a TC program bouncing every query back to the pod, no DNS work.
    Bounce,
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl Config {
    pub fn label(self) -> &'static str {
        match self {
            Config::Nldns => "nldns",
            Config::Unbound => "unbound",
            Config::Dnsmasq => "dnsmasq",
            Config::None => "none",
            Config::NldnsPodHooks => "nldns-pod-hooks",
            Config::NldnsKernel => "nldns-kernel",
            Config::NldnsKernelEgress => "nldns-kernel-egress",
            Config::Bounce => "bounce",
        }
    }

    pub fn letter(self) -> char {
        match self {
            Config::Nldns => 'a',
            Config::Unbound => 'b',
            Config::Dnsmasq => 'c',
            Config::None => 'd',
            Config::NldnsPodHooks => 'e',
            Config::NldnsKernel => 'f',
            Config::NldnsKernelEgress => 'g',
            Config::Bounce => 'h',
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Config::Nldns => "nldns (TC redirect to its intercept endpoint, `--kernel-answers off`: the agent answers every hit; release build, upstream rate bounds off)",
            Config::Unbound => "NOTRACK design: ClusterIP on lo + raw NOTRACK + unbound",
            Config::Dnsmasq => "NOTRACK design: ClusterIP on lo + raw NOTRACK + dnsmasq",
            Config::None => "no cache: kube-proxy DNAT to the knot backends",
            Config::NldnsPodHooks => "nldns, pods in kubelet's pod cgroup: the pods' socket hooks redirect in connect()/sendmsg() (`--kernel-answers off`, release build, upstream rate bounds off)",
            Config::NldnsKernel => "nldns with `--kernel-answers on`: nldns_answer answers cache hits in TC ingress and sends them back with bpf_redirect_peer (release build, upstream rate bounds off)",
            Config::NldnsKernelEgress => "nldns with `--kernel-answers on --kernel-answers-redirect egress`: the same, back through bpf_redirect to the host veth's egress",
            Config::Bounce => "ceiling: a raw TC ingress program on the pods' host veths bounces every UDP query to 10.96.0.10:53 back to the pod (MACs, IPs, ports swapped, QR set, checksum fixed by difference, bpf_redirect_peer); no DNS work, no answer records",
        }
    }

    /// Whether this configuration runs the nldns agent.
    pub fn is_nldns(self) -> bool {
        matches!(
            self,
            Config::Nldns | Config::NldnsPodHooks | Config::NldnsKernel | Config::NldnsKernelEgress
        )
    }

    /// The agent's `--kernel-answers` flags for this configuration.
    pub fn kernel_answer_args(self) -> &'static [&'static str] {
        match self {
            Config::NldnsKernel => &["--kernel-answers", "on"],
            Config::NldnsKernelEgress => &[
                "--kernel-answers",
                "on",
                "--kernel-answers-redirect",
                "egress",
            ],
            _ => &["--kernel-answers", "off"],
        }
    }
}

/// node-local-dns's raw-table rules, as its ClusterIP-hijacking variant writes them (with
/// our ClusterIP).
pub fn notrack_rules() -> Vec<Vec<String>> {
    let ip = format!("{KUBE_DNS_V4}/32");
    let mut rules = Vec::new();
    for proto in ["udp", "tcp"] {
        rules.push(vec![
            "PREROUTING",
            "-d",
            &ip,
            "-p",
            proto,
            "-m",
            proto,
            "--dport",
            "53",
            "-j",
            "NOTRACK",
        ]);
    }
    for proto in ["udp", "tcp"] {
        rules.push(vec![
            "OUTPUT", "-s", &ip, "-p", proto, "-m", proto, "--sport", "53", "-j", "NOTRACK",
        ]);
    }
    rules
        .into_iter()
        .map(|r| r.into_iter().map(str::to_string).collect())
        .collect()
}

/// A configuration serving in a node; dropping it stops the cache process (and detaches
/// the bouncer).
pub struct Running {
    /// The cache process (None for (d) and (h)).
    pub cache: Option<AgentProcess>,
    /// (h)'s program on the pods' veths.
    pub bounce: Option<TcAttached>,
}

impl Running {
    pub fn cache_pid(&self) -> Option<u32> {
        self.cache.as_ref().map(AgentProcess::pid)
    }
}

/// Starts `config` in `node` and checks that pod 0 gets answers through the ClusterIP.
pub fn start(config: Config, node: &SimNode, nldns_bin: &Path) -> Result<Running> {
    let cache = match config {
        Config::Nldns | Config::NldnsPodHooks | Config::NldnsKernel | Config::NldnsKernelEgress => {
            // The upstream rate bounds are an operator's protection that unbound and
            // dnsmasq do not have: off, so the misses workload measures the miss path
            // and not the bound (the hostile-node runs measure the bounds).
            let limits = node.workdir().join("nldns-bench.json");
            std::fs::write(
                &limits,
                r#"{"limits": {"maxUpstreamQps": 0, "maxUpstreamQpsPerSource": 0}}"#,
            )
            .context("writing the bench's --config")?;
            let mut args = node.agent_args();
            args.extend(["--config".to_string(), limits.display().to_string()]);
            args.extend(config.kernel_answer_args().iter().map(|a| a.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let agent = node.spawn_agent(nldns_bin, &args)?;
            if !node.wait_http_ok("/ready", Duration::from_secs(30)) {
                bail!("nldns not ready within 30 s; log:\n{}", agent.stderr());
            }
            Some(agent)
        }
        Config::Unbound | Config::Dnsmasq => {
            notrack_interception(node)?;
            let (program, args) = if config == Config::Unbound {
                let conf = node.workdir().join("unbound.conf");
                std::fs::write(&conf, unbound_conf(node.workdir()))
                    .context("writing unbound.conf")?;
                (
                    "/usr/sbin/unbound",
                    vec!["-d".to_string(), "-c".into(), conf.display().to_string()],
                )
            } else {
                ("/usr/sbin/dnsmasq", dnsmasq_args(node.workdir()))
            };
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Some(AgentProcess::spawn_labeled(
                config.label(),
                node.node_netns(),
                Path::new(program),
                &args,
                node.workdir(),
                &[],
            )?)
        }
        Config::None | Config::Bounce => None,
    };
    let mut running = Running {
        cache,
        bounce: None,
    };
    if config == Config::Bounce {
        let veths: Vec<&str> = node
            .pod_indexes()
            .into_iter()
            .map(|i| node.pod_veth(i))
            .collect::<Result<_>>()?;
        running.bounce = Some(bounce::attach_bounce(
            node.node_netns(),
            &veths,
            KUBE_DNS_V4,
        )?);
        // The pod gets its own question back as a response: NOERROR, no answer.
        let bounced = nldns_tests::cmd::wait_until(
            Duration::from_secs(5),
            Duration::from_millis(100),
            || {
                node.dig(
                    0,
                    &[
                        &format!("@{KUBE_DNS_V4}"),
                        "+noedns",
                        "+tries=1",
                        PROBE_NAME,
                        "A",
                    ],
                )
                .is_ok_and(|out| {
                    out.status.as_deref() == Some("NOERROR") && out.answer_data("A").is_empty()
                })
            },
        );
        if !bounced {
            bail!("bounce: pod 0 gets no bounced response from {KUBE_DNS_V4}");
        }
        return Ok(running);
    }
    let answered =
        nldns_tests::cmd::wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
            node.dig(0, &[&format!("@{KUBE_DNS_V4}"), PROBE_NAME, "A"])
                .is_ok_and(|out| out.answer_data("A") == [WILDCARD_ANSWER])
        });
    if !answered {
        let log = running
            .cache
            .as_mut()
            .map(|c| format!("{}{}", c.stdout(), c.stderr()))
            .unwrap_or_default();
        bail!("{config}: pod 0 gets no answer through {KUBE_DNS_V4}; cache log:\n{log}");
    }
    Ok(running)
}

/// The ClusterIP on the node's lo and node-local-dns's NOTRACK rules, all in the node namespace.
fn notrack_interception(node: &SimNode) -> Result<()> {
    let netns = node.node_netns();
    netns.ip(&["addr", "add", &format!("{KUBE_DNS_V4}/32"), "dev", "lo"])?;
    for rule in notrack_rules() {
        let mut args = vec!["-w", "5", "-t", "raw", "-A"];
        args.extend(rule.iter().map(String::as_str));
        netns
            .exec("iptables", &args)
            .context("adding a NOTRACK rule")?;
    }
    Ok(())
}

/// unbound as a forwarding cache on the ClusterIP: no validation (a node cache in front of
/// kube-dns does none), two threads (the machine has two cores), caches big enough for the
/// 100k-name RSS run.
fn unbound_conf(workdir: &Path) -> String {
    let d = workdir.display();
    let mut conf = format!(
        "server:\n  interface: {KUBE_DNS_V4}\n  port: 53\n  do-ip6: no\n  access-control: 0.0.0.0/0 allow\n  \
         username: \"\"\n  chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"{d}/unbound.pid\"\n  \
         use-syslog: no\n  logfile: \"\"\n  verbosity: 0\n  num-threads: 2\n  so-reuseport: yes\n  \
         msg-cache-size: 64m\n  rrset-cache-size: 128m\n  module-config: \"iterator\"\n  \
         do-not-query-localhost: no\n  local-zone: \"10.in-addr.arpa.\" nodefault\n  \
         local-zone: \"d.f.ip6.arpa.\" nodefault\n"
    );
    for zone in [
        "cluster.local.",
        nldns_tests::zones::REVERSE_V4_ZONE,
        nldns_tests::zones::REVERSE_V6_ZONE,
    ] {
        conf.push_str(&format!(
            "forward-zone:\n  name: \"{zone}\"\n  forward-addr: {KUBE_DNS_UNCACHED_V4}\n"
        ));
    }
    conf.push_str(&format!(
        "forward-zone:\n  name: \".\"\n  forward-addr: {EXT_RESOLVER_V4}\n"
    ));
    conf
}

/// dnsmasq as the same forwarding cache. 1000 concurrent forwards (its default of 150
/// drops misses under load long before the upstream is busy; nldns allows 1000).
fn dnsmasq_args(workdir: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "-k".into(),
        "--conf-file=/dev/null".into(),
        "--user=root".into(),
        format!("--pid-file={}/dnsmasq.pid", workdir.display()),
        format!("--listen-address={KUBE_DNS_V4}"),
        "--bind-interfaces".into(),
        "--port=53".into(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        "--cache-size=150000".into(),
        "--dns-forward-max=1000".into(),
        format!("--server={EXT_RESOLVER_V4}"),
    ];
    for zone in ["cluster.local", "in-addr.arpa", "ip6.arpa"] {
        args.push(format!("--server=/{zone}/{KUBE_DNS_UNCACHED_V4}"));
    }
    args
}
