//! The simulated node: a node namespace with forwarding on, pods and kube-dns backends
//! behind veths, an "outside" resolver as the node's uplink, kube-proxy's Service NAT, and
//! the agent under test running inside the node namespace.
//!
//! Topology (names for run id `abc123`; nothing of it exists in the root namespace):
//!
//! ```text
//!  nldns-abc123-pod<i>  eth0 10.244.1.(10+i)/24 ---- veth<id>p<i> ┐
//!  nldns-abc123-dns<k>  eth0 10.244.9.(10+k)/24 ---- nd<id>k<k>   ├ nldns-abc123-node
//!  nldns-abc123-ext     eth0 10.244.8.10/24     ---- nd<id>x      ┘ (default route -> ext)
//! ```
//!
//! Every leaf namespace routes everything via its gateway on the node (`.1`), which the node
//! holds as a /32 (/128) on each leaf's veth end, with a host route back to the leaf; leaf
//! addresses have no prefix route, so pods reach each other through the node. The node's
//! only default route leads to the ext namespace, which forwards nothing: no packet can
//! leave the simulated node.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;

use crate::addresses::*;
use crate::agent::AgentProcess;
use crate::backend::{KnotServer, Zone};
use crate::dig::{self, DigOutput};
use crate::dns_client::{self, QueryOptions};
use crate::kube_proxy::{self, KubeProxyMode};
use crate::netns::Netns;
use crate::perf::{self, DnsperfOptions, DnsperfReport};
use crate::query_loop::{QueryLoop, QueryLoopOptions};
use crate::run::Run;
use crate::slow_dns::{Behaviour, SeenQuery, SlowProxy};
use crate::{cgroup, cleanup, zones};

/// The ports of the agent's health (/health, /ready) and metrics endpoints in
/// [`SimNode::agent_args`], the agent's defaults (the node namespace's loopback is private
/// to the run, so fixed ports never collide).
pub const AGENT_HEALTH_PORT: u16 = 8080;
pub const AGENT_METRICS_PORT: u16 = 9253;
/// The port knot listens on behind a [`SlowProxy`] (inside the backend's namespace).
const KNOT_BEHIND_PROXY_PORT: u16 = 5300;

/// How the kube-dns backends answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendMode {
    /// knotd listens on the backend address directly. It is authoritative only: names
    /// outside cluster.local and the reverse zones get REFUSED.
    Knot,
    /// A harness proxy listens on the backend address and forwards to knotd on the backend's
    /// loopback, with a behaviour tests can change at run time (delay, drop): knot has no
    /// delay option and the kernel has no netem. Like CoreDNS, it forwards names outside
    /// the cluster zones to the outside resolver (plain knot REFUSES them), and it logs
    /// every question ([`SimNode::backend_queries`]).
    KnotBehindProxy,
}

/// Options of a [`SimNode`]; start from [`SimNode::builder`].
#[derive(Debug, Clone)]
pub struct SimNodeBuilder {
    pods: usize,
    backends: usize,
    kube_proxy: KubeProxyMode,
    backend_mode: BackendMode,
    cgroup: bool,
}

impl Default for SimNodeBuilder {
    fn default() -> Self {
        SimNodeBuilder {
            pods: 2,
            backends: 2,
            kube_proxy: KubeProxyMode::Iptables,
            backend_mode: BackendMode::Knot,
            cgroup: false,
        }
    }
}

impl SimNodeBuilder {
    /// Number of pods at start (more can be added with [`SimNode::add_pod`]).
    pub fn pods(mut self, n: usize) -> Self {
        self.pods = n;
        self
    }
    /// Number of kube-dns backends (at least 1).
    pub fn backends(mut self, n: usize) -> Self {
        self.backends = n;
        self
    }
    pub fn kube_proxy(mut self, mode: KubeProxyMode) -> Self {
        self.kube_proxy = mode;
        self
    }
    pub fn backend_mode(mut self, mode: BackendMode) -> Self {
        self.backend_mode = mode;
        self
    }
    /// Also create the run's cgroup under the cgroup2 mount ([`SimNode::cgroup_path`]).
    pub fn with_cgroup(mut self) -> Self {
        self.cgroup = true;
        self
    }

    /// Sweeps leftovers of dead runs, then builds the node. On any error everything built
    /// so far is torn down before the error is returned.
    pub fn build(self) -> Result<SimNode> {
        anyhow::ensure!(
            self.backends >= 1,
            "a node needs at least one kube-dns backend"
        );
        anyhow::ensure!(
            self.pods <= 240 && self.backends <= 240,
            "the address plan has 240 hosts per subnet"
        );
        cleanup::sweep();
        let run = Run::create()?;
        cleanup::register(run.id());
        let node_netns = match Netns::create(&run.name("node")) {
            Ok(netns) => netns,
            Err(error) => {
                let _ = cleanup::teardown(run.id());
                cleanup::unregister(run.id());
                return Err(error);
            }
        };
        let resolv_conf = run.workdir().join("resolv.conf");
        // From here on, dropping `node` tears everything down.
        let mut node = SimNode {
            run,
            node: node_netns,
            pods: Vec::new(),
            backends: Vec::new(),
            ext: None,
            kube_proxy: self.kube_proxy,
            cgroup: None,
            pod_cgroups: HashMap::new(),
            resolv_conf,
        };
        node.setup_node()?;
        node.setup_ext()?;
        for k in 0..self.backends {
            node.add_backend(k, self.backend_mode)?;
        }
        node.install_kube_proxy()?;
        for _ in 0..self.pods {
            node.add_pod()?;
        }
        if self.cgroup {
            node.cgroup = Some(cgroup::create(&format!(
                "{}{}",
                crate::run::PREFIX,
                node.run.id()
            ))?);
        }
        Ok(node)
    }
}

/// A pod: its namespace and the node end of its veth.
#[derive(Debug)]
pub struct Pod {
    pub index: usize,
    pub netns: Netns,
    /// The node end of the veth, matching the agent's default `veth*` glob.
    pub veth: String,
}

#[derive(Debug)]
struct Backend {
    netns: Netns,
    knot: KnotServer,
    proxy: Option<SlowProxy>,
}

/// A simulated node; dropping it tears everything down.
#[derive(Debug)]
pub struct SimNode {
    run: Run,
    node: Netns,
    /// Indexed by pod number; a removed pod leaves None so indexes stay stable.
    pods: Vec<Option<Pod>>,
    backends: Vec<Backend>,
    ext: Option<(Netns, KnotServer)>,
    kube_proxy: KubeProxyMode,
    cgroup: Option<PathBuf>,
    /// Pods whose load generators run inside a cgroup ([`SimNode::place_pod_in_cgroup`]).
    pod_cgroups: HashMap<usize, PathBuf>,
    resolv_conf: PathBuf,
}

impl SimNode {
    pub fn builder() -> SimNodeBuilder {
        SimNodeBuilder::default()
    }

    /// A node with `pods` pods, `backends` knot backends and iptables-mode kube-proxy.
    pub fn new(pods: usize, backends: usize) -> Result<SimNode> {
        SimNode::builder().pods(pods).backends(backends).build()
    }

    fn setup_node(&mut self) -> Result<()> {
        self.node.sysctl("net/ipv4/ip_forward", "1")?;
        self.node.sysctl("net/ipv6/conf/all/forwarding", "1")?;
        std::fs::write(
            &self.resolv_conf,
            format!("nameserver {EXT_RESOLVER_V4}\nnameserver {EXT_RESOLVER_V6}\noptions timeout:1 attempts:2\n"),
        )
        .context("writing resolv.conf")
    }

    /// The "outside" resolver, which is also the node's uplink.
    fn setup_ext(&mut self) -> Result<()> {
        let netns = Netns::create(&self.run.name("ext"))?;
        let veth = format!("nd{}x", self.run.id());
        link_leaf(
            &self.node,
            &netns,
            &veth,
            (EXT_RESOLVER_V4, EXT_RESOLVER_V6),
            (EXT_GATEWAY_V4, EXT_GATEWAY_V6),
        )?;
        self.node.ip(&[
            "route",
            "add",
            "default",
            "via",
            &EXT_RESOLVER_V4.to_string(),
            "dev",
            &veth,
        ])?;
        self.node.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &EXT_RESOLVER_V6.to_string(),
            "dev",
            &veth,
        ])?;
        let listen = [
            SocketAddr::new(EXT_RESOLVER_V4.into(), 53),
            SocketAddr::new(EXT_RESOLVER_V6.into(), 53),
        ];
        let zones = [Zone {
            origin: "example.org.".into(),
            text: zones::example_org(),
        }];
        let mut knot = KnotServer::configure(
            "ext",
            netns.clone(),
            &self.run.workdir().join("ext"),
            &listen,
            &zones,
        )?;
        knot.start()?;
        self.ext = Some((netns, knot));
        Ok(())
    }

    fn add_backend(&mut self, k: usize, mode: BackendMode) -> Result<()> {
        let netns = Netns::create(&self.run.name(&format!("dns{k}")))?;
        let veth = format!("nd{}k{k}", self.run.id());
        let (v4, v6) = (backend_v4(k), backend_v6(k));
        link_leaf(
            &self.node,
            &netns,
            &veth,
            (v4, v6),
            (BACKEND_GATEWAY_V4, BACKEND_GATEWAY_V6),
        )?;
        let public = [
            SocketAddr::new(v4.into(), 53),
            SocketAddr::new(v6.into(), 53),
        ];
        let knot_listen = match mode {
            BackendMode::Knot => public.to_vec(),
            BackendMode::KnotBehindProxy => vec![
                SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), KNOT_BEHIND_PROXY_PORT),
                SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), KNOT_BEHIND_PROXY_PORT),
            ],
        };
        let zones = [
            Zone {
                origin: "cluster.local.".into(),
                text: zones::cluster_local(),
            },
            Zone {
                origin: zones::REVERSE_V4_ZONE.into(),
                text: zones::reverse_zone(zones::REVERSE_V4_ZONE, false),
            },
            Zone {
                origin: zones::REVERSE_V6_ZONE.into(),
                text: zones::reverse_zone(zones::REVERSE_V6_ZONE, true),
            },
        ];
        let label = format!("dns{k}");
        let mut knot = KnotServer::configure(
            &label,
            netns.clone(),
            &self.run.workdir().join(&label),
            &knot_listen,
            &zones,
        )?;
        knot.start()?;
        let proxy = match mode {
            BackendMode::Knot => None,
            BackendMode::KnotBehindProxy => Some(SlowProxy::start(
                &netns,
                &public,
                knot_listen[0],
                &[
                    "cluster.local.",
                    zones::REVERSE_V4_ZONE,
                    zones::REVERSE_V6_ZONE,
                ],
                Some(SocketAddr::new(EXT_RESOLVER_V4.into(), 53)),
            )?),
        };
        self.backends.push(Backend { netns, knot, proxy });
        Ok(())
    }

    /// (Re)writes kube-proxy's rules for kube-dns and kube-dns-uncached with every backend
    /// as an endpoint.
    pub fn install_kube_proxy(&self) -> Result<()> {
        let all: Vec<usize> = (0..self.backends.len()).collect();
        self.set_kube_dns_endpoints(&all)
    }

    /// Rewrites kube-proxy's rules with only the given backends as endpoints, as kube-proxy
    /// does when endpoints become ready or go away. Replaces the nat PREROUTING, OUTPUT and
    /// POSTROUTING chains (iptables mode) or the `kube-proxy` tables (nftables mode).
    pub fn set_kube_dns_endpoints(&self, backends: &[usize]) -> Result<()> {
        let mut endpoints = Vec::new();
        for &k in backends {
            anyhow::ensure!(k < self.backends.len(), "no backend {k}");
            endpoints.push(IpAddr::V4(backend_v4(k)));
            endpoints.push(IpAddr::V6(backend_v6(k)));
        }
        let mut services = kube_proxy::dns_services(&endpoints, false);
        services.extend(kube_proxy::dns_services(&endpoints, true));
        kube_proxy::install(&self.node, self.kube_proxy, &services)
    }

    /// Switches kube-proxy's mode (iptables <-> nftables <-> none) on the running node, as
    /// when a cluster migrates: the old rules go, the new ones come with every backend.
    pub fn set_kube_proxy_mode(&mut self, mode: KubeProxyMode) -> Result<()> {
        kube_proxy::remove(&self.node, self.kube_proxy)?;
        self.kube_proxy = mode;
        self.install_kube_proxy()
    }

    /// Packets IPVS received per virtual service `(protocol, ClusterIP, port)` (IPVS mode
    /// only), read after IPVS's counters have caught up with everything sent before the
    /// call (so it takes a little over 2 s).
    pub fn ipvs_in_packets(
        &self,
    ) -> Result<std::collections::BTreeMap<(String, IpAddr, u16), u64>> {
        std::thread::sleep(kube_proxy::IPVS_STATS_PERIOD + Duration::from_millis(500));
        kube_proxy::ipvs_in_packets(&self.node)
    }

    /// The NAT rules of the node namespace (iptables-save, ip6tables-save, nft list ruleset).
    pub fn kube_proxy_rules(&self) -> Result<String> {
        kube_proxy::dump(&self.node)
    }

    /// Adds a pod (possibly while the agent runs) and returns its index.
    pub fn add_pod(&mut self) -> Result<usize> {
        let index = self.pods.len();
        let netns = Netns::create(&self.run.name(&format!("pod{index}")))?;
        let veth = format!("veth{}p{index}", self.run.id());
        link_leaf(
            &self.node,
            &netns,
            &veth,
            (pod_v4(index), pod_v6(index)),
            (POD_GATEWAY_V4, POD_GATEWAY_V6),
        )?;
        self.pods.push(Some(Pod { index, netns, veth }));
        Ok(index)
    }

    /// Deletes a pod's namespace (and so its veth), as when a pod goes away.
    pub fn remove_pod(&mut self, index: usize) -> Result<()> {
        let pod = self
            .pods
            .get_mut(index)
            .and_then(Option::take)
            .with_context(|| format!("no pod {index}"))?;
        // Deleting the veth first makes its disappearance synchronous (like a CNI DEL);
        // a deleted namespace frees its interfaces later, from a kernel work queue.
        self.node.ip(&["link", "del", &pod.veth])?;
        crate::netns::destroy(pod.netns.name())
    }

    pub fn id(&self) -> &str {
        self.run.id()
    }

    /// The run's work directory (configs, zone files, logs, resolv.conf).
    pub fn workdir(&self) -> &Path {
        self.run.workdir()
    }

    pub fn node_netns(&self) -> &Netns {
        &self.node
    }

    pub fn pod(&self, index: usize) -> Result<&Pod> {
        self.pods
            .get(index)
            .and_then(Option::as_ref)
            .with_context(|| format!("no pod {index}"))
    }

    pub fn pod_netns(&self, index: usize) -> Result<&Netns> {
        Ok(&self.pod(index)?.netns)
    }

    /// The node end of pod `index`'s veth.
    pub fn pod_veth(&self, index: usize) -> Result<&str> {
        Ok(&self.pod(index)?.veth)
    }

    /// Indexes of the pods that exist.
    pub fn pod_indexes(&self) -> Vec<usize> {
        self.pods.iter().flatten().map(|p| p.index).collect()
    }

    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }

    pub fn backend_netns(&self, k: usize) -> Result<&Netns> {
        Ok(&self.backend(k)?.netns)
    }

    pub fn ext_netns(&self) -> &Netns {
        &self.ext.as_ref().expect("ext is built with the node").0
    }

    /// The resolv.conf naming the "outside" resolver, for the agent's `--resolv-conf`.
    pub fn resolv_conf(&self) -> &Path {
        &self.resolv_conf
    }

    /// The run's cgroup, if built [`SimNodeBuilder::with_cgroup`].
    pub fn cgroup_path(&self) -> Option<&Path> {
        self.cgroup.as_deref()
    }

    pub fn kube_proxy_mode(&self) -> KubeProxyMode {
        self.kube_proxy
    }

    fn backend(&self, k: usize) -> Result<&Backend> {
        self.backends
            .get(k)
            .with_context(|| format!("no backend {k}"))
    }

    /// dig from pod `index` (bounded: `+tries=1 +time=1` unless `args` override them).
    pub fn dig(&self, index: usize, args: &[&str]) -> Result<DigOutput> {
        dig::dig(self.pod_netns(index)?, args)
    }

    /// dig from the node namespace itself (a host-network client).
    pub fn dig_from_node(&self, args: &[&str]) -> Result<DigOutput> {
        dig::dig(&self.node, args)
    }

    /// A native query from pod `index`.
    pub fn query(
        &self,
        index: usize,
        server: IpAddr,
        name: &str,
        rtype: RecordType,
        options: &QueryOptions,
    ) -> Result<Message> {
        query_in(self.pod_netns(index)?, server, name, rtype, options)
    }

    /// A native query from the node namespace (a host-network client).
    pub fn query_from_node(
        &self,
        server: IpAddr,
        name: &str,
        rtype: RecordType,
        options: &QueryOptions,
    ) -> Result<Message> {
        query_in(&self.node, server, name, rtype, options)
    }

    /// Starts a steady query loop from pod `index` (see [`crate::query_loop`]).
    pub fn query_loop(&self, index: usize, options: QueryLoopOptions) -> Result<QueryLoop> {
        QueryLoop::start(self.pod_netns(index)?, options)
    }

    /// Starts a long-running process in pod `index` (a client of the cache, a load
    /// generator...), logging to `pod<index>-<n>.{stdout,stderr}` in the work directory.
    /// The handle kills it on drop; the node's teardown would anyway.
    pub fn spawn_in_pod(
        &self,
        index: usize,
        program: &Path,
        args: &[&str],
    ) -> Result<AgentProcess> {
        AgentProcess::spawn_labeled(
            &format!("pod{index}"),
            self.pod_netns(index)?,
            program,
            args,
            self.run.workdir(),
            &[],
        )
    }

    /// Runs a command in pod `index` (output whatever the exit code).
    pub fn exec_in_pod(
        &self,
        index: usize,
        program: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Output> {
        self.pod_netns(index)?.exec_output(program, args, timeout)
    }

    /// Runs a command in the node namespace (output whatever the exit code).
    pub fn exec_in_node(&self, program: &str, args: &[&str], timeout: Duration) -> Result<Output> {
        self.node.exec_output(program, args, timeout)
    }

    /// Queries answered by each backend's knot since it (re)started.
    pub fn backend_query_counts(&self) -> Result<Vec<u64>> {
        self.backends.iter().map(|b| b.knot.query_count()).collect()
    }

    /// Queries answered by all backends together since they (re)started. Compare two
    /// readings to prove that a cached name caused no backend query.
    pub fn backend_query_count(&self) -> Result<u64> {
        Ok(self.backend_query_counts()?.iter().sum())
    }

    /// Queries answered by the outside resolver since it started.
    pub fn ext_query_count(&self) -> Result<u64> {
        self.ext
            .as_ref()
            .expect("ext is built with the node")
            .1
            .query_count()
    }

    /// Stops every backend's knotd (queries then meet closed ports).
    pub fn stop_backends(&mut self) -> Result<()> {
        (0..self.backends.len()).try_for_each(|k| self.stop_backend(k))
    }

    /// Restarts every stopped backend and waits until its zones are loaded.
    pub fn start_backends(&mut self) -> Result<()> {
        (0..self.backends.len()).try_for_each(|k| self.start_backend(k))
    }

    pub fn stop_backend(&mut self, k: usize) -> Result<()> {
        self.backends
            .get_mut(k)
            .with_context(|| format!("no backend {k}"))?
            .knot
            .stop()
    }

    pub fn start_backend(&mut self, k: usize) -> Result<()> {
        self.backends
            .get_mut(k)
            .with_context(|| format!("no backend {k}"))?
            .knot
            .start()
    }

    /// Stops or restarts the outside resolver.
    pub fn stop_ext(&mut self) -> Result<()> {
        self.ext
            .as_mut()
            .expect("ext is built with the node")
            .1
            .stop()
    }
    pub fn start_ext(&mut self) -> Result<()> {
        self.ext
            .as_mut()
            .expect("ext is built with the node")
            .1
            .start()
    }

    /// Sets how every backend's proxy treats queries (needs
    /// [`BackendMode::KnotBehindProxy`]).
    pub fn set_backend_behaviour(&self, behaviour: Behaviour) -> Result<()> {
        for (k, backend) in self.backends.iter().enumerate() {
            let proxy = backend.proxy.as_ref().with_context(|| {
                format!("backend {k} has no proxy: build with BackendMode::KnotBehindProxy")
            })?;
            proxy.set_behaviour(behaviour);
        }
        Ok(())
    }

    /// Queries that reached each backend's proxy (including dropped ones).
    pub fn backend_proxy_counts(&self) -> Result<Vec<u64>> {
        self.backends
            .iter()
            .enumerate()
            .map(|(k, b)| {
                b.proxy
                    .as_ref()
                    .map(SlowProxy::received)
                    .with_context(|| format!("backend {k} has no proxy"))
            })
            .collect()
    }

    /// Every query the backends' proxies received, in arrival order per backend (needs
    /// [`BackendMode::KnotBehindProxy`]). This is per-name evidence: knot's own counters
    /// only count.
    pub fn backend_queries(&self) -> Result<Vec<SeenQuery>> {
        let mut all = Vec::new();
        for (k, backend) in self.backends.iter().enumerate() {
            let proxy = backend
                .proxy
                .as_ref()
                .with_context(|| format!("backend {k} has no proxy"))?;
            all.extend(proxy.seen());
        }
        all.sort_by_key(|q| q.at);
        Ok(all)
    }

    /// How many queries for `name` (absolute or not, any case) and `rtype` (e.g. "A") the
    /// backends received (needs [`BackendMode::KnotBehindProxy`]).
    pub fn backend_queries_for(&self, name: &str, rtype: &str) -> Result<usize> {
        let mut wanted = name.to_ascii_lowercase();
        if !wanted.ends_with('.') {
            wanted.push('.');
        }
        Ok(self
            .backend_queries()?
            .iter()
            .filter(|q| q.name == wanted && q.rtype.eq_ignore_ascii_case(rtype))
            .count())
    }

    /// Runs a bounded dnsperf from pod `index` (see [`crate::perf`]).
    pub fn dnsperf(&self, index: usize, options: &DnsperfOptions) -> Result<DnsperfReport> {
        let cgroup = self.pod_cgroups.get(&index).map(PathBuf::as_path);
        perf::run_in(self.pod_netns(index)?, cgroup, self.run.workdir(), options)
    }

    /// From now on [`SimNode::dnsperf`] from pod `index` runs inside
    /// `<run cgroup>/<relative>` (created), e.g. `kubepods.slice/pod0`.
    pub fn place_pod_in_cgroup(&mut self, index: usize, relative: &str) -> Result<PathBuf> {
        let path = self.child_cgroup(relative)?;
        self.pod_cgroups.insert(index, path.clone());
        Ok(path)
    }

    /// The sum of a series' samples (all label sets) in the running agent's /metrics;
    /// None if the scrape failed or the series is absent.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = self.http_get(self.metrics_addr(), "/metrics").ok()?;
        let values: Vec<f64> = text
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// `nldns_datapath_<name>_total` from the running agent's /metrics.
    pub fn datapath_counter(&self, name: &str) -> Result<u64> {
        let series = format!("nldns_datapath_{name}_total");
        self.metric(&series)
            .map(|v| v as u64)
            .with_context(|| format!("no {series} in the agent's /metrics"))
    }

    /// Runs a command in the node namespace inside the run's cgroup (a host-network client
    /// that the agent's cgroup programs see). Needs [`SimNodeBuilder::with_cgroup`].
    pub fn exec_in_node_cgroup(
        &self,
        program: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Output> {
        let cgroup = self
            .cgroup
            .as_ref()
            .context("build the node with_cgroup() first")?;
        cgroup::exec_in(&self.node, cgroup, program, args, timeout)
    }

    /// dig from the node namespace, inside the run's cgroup.
    pub fn dig_from_node_cgroup(&self, args: &[&str]) -> Result<DigOutput> {
        let cgroup = self
            .cgroup
            .as_ref()
            .context("build the node with_cgroup() first")?;
        dig_in_cgroup(&self.node, cgroup, args)
    }

    /// `<run cgroup>/<relative>`, created with its parents: kubelet's pod cgroups
    /// (`kubepods.slice/...`) for the pods' socket hooks. The node's teardown removes it.
    pub fn child_cgroup(&self, relative: &str) -> Result<PathBuf> {
        let root = self
            .cgroup
            .as_ref()
            .context("build the node with_cgroup() first")?;
        let path = root.join(relative);
        cgroup::create_nested(&path)?;
        Ok(path)
    }

    /// Runs a command in pod `index`'s namespace inside `cgroup` (a pod process as
    /// kubelet would place it).
    pub fn exec_in_pod_cgroup(
        &self,
        index: usize,
        cgroup: &Path,
        program: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Output> {
        cgroup::exec_in(self.pod_netns(index)?, cgroup, program, args, timeout)
    }

    /// dig from pod `index`, inside `cgroup`.
    pub fn dig_in_pod_cgroup(
        &self,
        index: usize,
        cgroup: &Path,
        args: &[&str],
    ) -> Result<DigOutput> {
        dig_in_cgroup(self.pod_netns(index)?, cgroup, args)
    }

    /// Replaces the cluster.local zone on every backend (e.g. to change an answer and
    /// watch the cache pick it up after the TTL). Bump the SOA serial in `text`.
    pub fn replace_cluster_zone(&self, text: &str) -> Result<()> {
        let zone = Zone {
            origin: "cluster.local.".into(),
            text: text.to_string(),
        };
        self.backends
            .iter()
            .try_for_each(|b| b.knot.replace_zone(&zone))
    }

    /// The flags the agent usually runs with in this node.
    pub fn agent_args(&self) -> Vec<String> {
        vec![
            "run".into(),
            "--service-ip".into(),
            KUBE_DNS_V4.to_string(),
            "--service-ip".into(),
            KUBE_DNS_V6.to_string(),
            "--upstream".into(),
            KUBE_DNS_UNCACHED_V4.to_string(),
            "--upstream".into(),
            KUBE_DNS_UNCACHED_V6.to_string(),
            "--resolv-conf".into(),
            self.resolv_conf.display().to_string(),
            "--health-addr".into(),
            self.health_addr().to_string(),
            "--metrics-addr".into(),
            self.metrics_addr().to_string(),
            // The agent's default is the machine's cgroup2 root, which a test must never
            // touch: the run's own cgroup, or no socket hooks at all.
            "--cgroup".into(),
            self.cgroup
                .as_ref()
                .map_or_else(|| "none".to_string(), |p| p.display().to_string()),
        ]
    }

    /// The agent's health address in [`SimNode::agent_args`] (inside the node namespace).
    pub fn health_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], AGENT_HEALTH_PORT))
    }

    /// The agent's metrics address in [`SimNode::agent_args`] (inside the node namespace).
    pub fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], AGENT_METRICS_PORT))
    }

    /// Starts the agent inside the node namespace; its stdout/stderr go to files in the
    /// work directory.
    pub fn spawn_agent(&self, binary: &Path, args: &[&str]) -> Result<AgentProcess> {
        self.spawn_agent_with_env(binary, args, &[])
    }

    /// [`SimNode::spawn_agent`] with the node's own arguments ([`SimNode::agent_args`])
    /// followed by `extra`.
    pub fn start_agent(&self, binary: &Path, extra: &[&str]) -> Result<AgentProcess> {
        let mut args = self.agent_args();
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn_agent(binary, &args)
    }

    /// [`SimNode::start_agent`] with the agent born inside `cgroup` (limits on its memory
    /// or CPU, as a kubelet sets them).
    pub fn start_agent_in(
        &self,
        cgroup: &cgroup::AgentCgroup,
        binary: &Path,
        extra: &[&str],
    ) -> Result<AgentProcess> {
        let mut args = self.agent_args();
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        AgentProcess::spawn_in_cgroup(
            "agent",
            &self.node,
            binary,
            &args,
            self.run.workdir(),
            &[],
            &cgroup.procs_files(),
        )
    }

    /// Waits (at most 30 s) until `agent` intercepts: /ready, and its datapath instance
    /// reports a fresh heartbeat and its socket. Returns how long that took; an error
    /// with the agent's log if it did not come.
    pub fn wait_intercepting(&self, binary: &Path, agent: &mut AgentProcess) -> Result<Duration> {
        let started = std::time::Instant::now();
        let ok = crate::cmd::wait_until(Duration::from_secs(30), Duration::from_millis(20), || {
            agent.is_running()
                && self.wait_http_ok("/ready", Duration::ZERO)
                && self
                    .agent_instances(binary)
                    .is_ok_and(|i| i.iter().any(|i| i["intercepting"] == true))
        });
        if !ok {
            bail!("the agent did not start intercepting:\n{}", agent.stderr());
        }
        Ok(started.elapsed())
    }

    /// [`SimNode::spawn_agent`] with extra environment variables (e.g. RUST_LOG).
    pub fn spawn_agent_with_env(
        &self,
        binary: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<AgentProcess> {
        AgentProcess::spawn(&self.node, binary, args, self.run.workdir(), envs)
    }

    /// `<binary> status --json` inside the node namespace, parsed: the attachments and every
    /// loaded datapath instance (one per agent process) with its counters.
    /// `<binary> status --json` in the node, with `--cgroup <run cgroup>` when the node
    /// has one (the agent's `--cgroup`, so its socket hooks are listed).
    pub fn agent_status(&self, binary: &Path) -> Result<serde_json::Value> {
        let program = binary.to_str().context("non-UTF-8 agent path")?;
        let mut args = vec!["status".to_string(), "--json".to_string()];
        if let Some(cgroup) = &self.cgroup {
            args.extend(["--cgroup".to_string(), cgroup.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.exec_in_node(program, &args, Duration::from_secs(20))?;
        anyhow::ensure!(
            out.status.success(),
            "nldns status --json: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).context("parsing nldns status --json")
    }

    /// The datapath instances of `<binary> status --json` whose ingress program is attached
    /// in this node. BPF programs are machine-wide, so `status` also lists the agents of
    /// other network namespaces (other test runs); attachments are per namespace.
    pub fn agent_instances(&self, binary: &Path) -> Result<Vec<serde_json::Value>> {
        let status = self.agent_status(binary)?;
        let attached: Vec<u64> = status["attachments"]
            .as_array()
            .context("attachments")?
            .iter()
            .filter(|a| a["direction"] == "ingress")
            .filter_map(|a| a["program_id"].as_u64())
            .collect();
        Ok(status["instances"]
            .as_array()
            .context("instances")?
            .iter()
            .filter(|i| {
                i["ingress_program_id"]
                    .as_u64()
                    .is_some_and(|id| attached.contains(&id))
            })
            .cloned()
            .collect())
    }

    /// A plain HTTP/1.0 GET from inside the node namespace (the agent's health and metrics
    /// endpoints listen on the node's loopback). Returns the status code and body.
    pub fn http_get(&self, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
        let path = path.to_string();
        self.node
            .run_inside(move || crate::http::get(addr, &path, Duration::from_secs(2)))?
    }

    /// A human-readable map of the node (names, addresses, files), for the demo and for
    /// failure messages.
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let mut text = String::new();
        let _ = writeln!(
            text,
            "simulated node, run {} (work dir {})",
            self.id(),
            self.workdir().display()
        );
        let _ = writeln!(
            text,
            "  node netns   {}  (kube-proxy: {:?})",
            self.node.name(),
            self.kube_proxy
        );
        for pod in self.pods.iter().flatten() {
            let _ = writeln!(
                text,
                "  pod {:<3}      {}  {} / {}  via {}",
                pod.index,
                pod.netns.name(),
                pod_v4(pod.index),
                pod_v6(pod.index),
                pod.veth
            );
        }
        for (k, backend) in self.backends.iter().enumerate() {
            let mode = if backend.proxy.is_some() {
                "knot behind proxy"
            } else {
                "knot"
            };
            let _ = writeln!(
                text,
                "  kube-dns {k}   {}  {} / {}  ({mode})",
                backend.netns.name(),
                backend_v4(k),
                backend_v6(k)
            );
        }
        let _ = writeln!(
            text,
            "  outside      {}  {EXT_RESOLVER_V4} / {EXT_RESOLVER_V6}  (example.org)",
            self.ext_netns().name()
        );
        let _ = writeln!(text, "  ClusterIPs   kube-dns {KUBE_DNS_V4} / {KUBE_DNS_V6}, uncached {KUBE_DNS_UNCACHED_V4} / {KUBE_DNS_UNCACHED_V6}");
        let _ = writeln!(text, "  resolv.conf  {}", self.resolv_conf.display());
        if let Some(cgroup) = &self.cgroup {
            let _ = writeln!(text, "  cgroup       {}", cgroup.display());
        }
        let _ = writeln!(
            text,
            "  try: nsenter --net={} dig @{KUBE_DNS_V4} {}",
            self.pods
                .iter()
                .flatten()
                .next()
                .map_or(self.node.path(), |p| p.netns.path())
                .display(),
            zones::names::KUBE_DNS
        );
        text
    }

    /// Polls `GET path` on the agent's health address until it answers 200, at most
    /// `timeout`. Returns whether it did.
    pub fn wait_http_ok(&self, path: &str, timeout: Duration) -> bool {
        let addr = self.health_addr();
        crate::cmd::wait_until(timeout, Duration::from_millis(50), || {
            matches!(self.http_get(addr, path), Ok((200, _)))
        })
    }

    /// The node namespace's conntrack table, one entry per line as the kernel prints it
    /// (`/proc/net/nf_conntrack` of that namespace). Tells whether traffic was NATed by
    /// kube-proxy or bypassed netfilter.
    pub fn conntrack_entries(&self) -> Result<Vec<String>> {
        // /proc/self/net would follow the process's main thread; thread-self follows the
        // thread that entered the namespace.
        let text = self
            .node
            .run_inside(|| std::fs::read_to_string("/proc/thread-self/net/nf_conntrack"))?
            .context("reading the node's conntrack table")?;
        Ok(text.lines().map(str::to_string).collect())
    }

    /// Conntrack entries of the node namespace that involve `ip` (as source or destination)
    /// and port 53.
    pub fn conntrack_dns_entries(&self, ip: IpAddr) -> Result<Vec<String>> {
        // The kernel prints IPv6 addresses in full; compare parsed addresses, not text.
        Ok(self
            .conntrack_entries()?
            .into_iter()
            .filter(|line| {
                line.split_whitespace().any(|field| {
                    field.split_once('=').is_some_and(|(k, v)| {
                        (k == "src" || k == "dst") && v.parse::<IpAddr>().ok() == Some(ip)
                    })
                }) && (line.contains("dport=53 ") || line.contains("sport=53 "))
            })
            .collect())
    }

    /// Leaves the node up after this process exits (the demo's `--keep`): its owner record
    /// is marked kept so sweeps skip it, and nothing is torn down on drop or exit. Its
    /// processes (knotd, an agent whose handle was forgotten) keep running. Remove it with
    /// [`cleanup::teardown`] of [`crate::run::kept_runs`]. Returns the run id.
    pub fn keep(self) -> Result<String> {
        let id = self.run.id().to_string();
        crate::run::mark_kept(&id)?;
        cleanup::unregister(&id);
        // Dropping would tear the node down (and kill knotd through its handles).
        std::mem::forget(self);
        Ok(id)
    }

    /// Tears everything down now (drop does the same, ignoring errors).
    pub fn teardown(mut self) -> Result<()> {
        self.teardown_inner()
    }

    fn teardown_inner(&mut self) -> Result<()> {
        // Stop our own children first so they are reaped, not left as zombies.
        for backend in &mut self.backends {
            if let Some(proxy) = backend.proxy.take() {
                proxy.stop();
            }
            let _ = backend.knot.stop();
        }
        if let Some((_, knot)) = &mut self.ext {
            let _ = knot.stop();
        }
        let result = cleanup::teardown(self.run.id());
        cleanup::unregister(self.run.id());
        result
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        if let Err(error) = self.teardown_inner() {
            eprintln!("nldns-tests: tearing down run {}: {error:#}", self.run.id());
        }
    }
}

/// Connects a leaf namespace to the node: a veth created directly in both namespaces (never
/// in the root one), the leaf's address in its /24 (/64) with a default route via the
/// gateway, the gateway as a /32 (/128) on the node end, and a host route back.
///
/// The leaf's addresses carry `noprefixroute`: no connected /24 (/64) route, so traffic to
/// a neighbour (another pod) goes through the node like everything else, as on a routed
/// CNI, instead of asking for a neighbour that is not on the link.
fn link_leaf(
    node: &Netns,
    leaf: &Netns,
    node_if: &str,
    (leaf_v4, leaf_v6): (std::net::Ipv4Addr, std::net::Ipv6Addr),
    (gw_v4, gw_v6): (std::net::Ipv4Addr, std::net::Ipv6Addr),
) -> Result<()> {
    if node_if.len() > 15 {
        bail!("interface name {node_if} is longer than 15 characters");
    }
    node.ip(&[
        "link",
        "add",
        node_if,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        leaf.name(),
    ])?;
    let (leaf_v4, leaf_v6, gw_v4, gw_v6) = (
        leaf_v4.to_string(),
        leaf_v6.to_string(),
        gw_v4.to_string(),
        gw_v6.to_string(),
    );
    leaf.ip(&[
        "addr",
        "add",
        &format!("{leaf_v4}/24"),
        "dev",
        "eth0",
        "noprefixroute",
    ])?;
    leaf.ip(&[
        "addr",
        "add",
        &format!("{leaf_v6}/64"),
        "dev",
        "eth0",
        "nodad",
        "noprefixroute",
    ])?;
    leaf.ip(&["link", "set", "eth0", "up"])?;
    leaf.ip(&[
        "route", "add", "default", "via", &gw_v4, "dev", "eth0", "onlink",
    ])?;
    leaf.ip(&[
        "-6", "route", "add", "default", "via", &gw_v6, "dev", "eth0", "onlink",
    ])?;
    node.ip(&["addr", "add", &format!("{gw_v4}/32"), "dev", node_if])?;
    node.ip(&[
        "addr",
        "add",
        &format!("{gw_v6}/128"),
        "dev",
        node_if,
        "nodad",
    ])?;
    node.ip(&["link", "set", node_if, "up"])?;
    node.ip(&["route", "add", &format!("{leaf_v4}/32"), "dev", node_if])?;
    node.ip(&[
        "-6",
        "route",
        "add",
        &format!("{leaf_v6}/128"),
        "dev",
        node_if,
    ])?;
    Ok(())
}

/// A native query on a thread inside `netns`.
fn query_in(
    netns: &Netns,
    server: IpAddr,
    name: &str,
    rtype: RecordType,
    options: &QueryOptions,
) -> Result<Message> {
    let server = SocketAddr::new(server, 53);
    netns.run_inside(|| dns_client::query(server, name, rtype, options))?
}

/// dig (bounded like [`dig::dig`]) in `netns` inside `cgroup`.
fn dig_in_cgroup(netns: &Netns, cgroup: &Path, args: &[&str]) -> Result<DigOutput> {
    dig::require_server(args)?;
    let mut full: Vec<&str> = dig::BOUNDED_DEFAULTS.to_vec();
    full.extend_from_slice(args);
    let output = cgroup::exec_in(netns, cgroup, "dig", &full, Duration::from_secs(60))?;
    let mut parsed = dig::parse(&String::from_utf8_lossy(&output.stdout));
    parsed.exit_code = output.status.code().unwrap_or(-1);
    parsed.stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    Ok(parsed)
}
