//! The simulated node: the harness that integration tests, the demo and the benchmarks use
//! to run nldns against real kernel networking, real kube-proxy NAT and real DNS servers,
//! entirely inside network namespaces of their own (the rules are in docs/testing.md).
//!
//! ```no_run
//! use nldns_tests::{agent_binary, require_root, SimNode};
//! if require_root("example") {
//!     let node = SimNode::new(2, 2).unwrap(); // 2 pods, 2 kube-dns backends, iptables kube-proxy
//!     let out = node.dig(0, &["@10.96.0.10", "kube-dns.kube-system.svc.cluster.local", "A"]).unwrap();
//!     assert_eq!(out.answer_data("A"), ["10.96.0.10"]);
//!     if let Some(bin) = agent_binary() {
//!         let args = node.agent_args();
//!         let args: Vec<&str> = args.iter().map(String::as_str).collect();
//!         let mut agent = node.spawn_agent(&bin, &args).unwrap();
//!         let before = node.backend_query_count().unwrap();
//!         // ... query twice, check the backends saw one query ...
//!         agent.sigterm().unwrap();
//!     }
//! } // dropping the node removes every namespace, process, file and cgroup of the run
//! ```
//!
//! What exists for run id `<id>` (6 hex digits): namespaces `nldns-<id>-node`, `-pod<i>`,
//! `-dns<k>`, `-ext`; the work directory `$TMPDIR/nldns-<id>` (configs, zones, logs,
//! resolv.conf); the owner record `/run/nldns-tests/nldns-<id>.owner`; optionally the
//! cgroup `<cgroup2>/nldns-<id>`. Nothing is ever added to the
//! root namespace. Teardown happens on drop, on SIGINT/SIGTERM, and by the sweep at the
//! next build for runs whose process is gone ([`cleanup`]).
//!
//! Modules, one job each: [`node`] (the `SimNode` builder and handles), [`netns`]
//! (namespaces, nsenter, setns threads), [`kube_proxy`] (iptables, nftables and IPVS
//! Service NAT), [`backend`] (knotd), [`zones`] (zone data), [`slow_dns`] (delay/drop proxy in front
//! of knot), [`agent`] (the agent process), [`dig`] and [`dns_client`] (clients), [`perf`]
//! (bounded dnsperf), [`query_loop`] (timed query streams), [`resolver_load`] (multi-pod
//! load with a resolver's one retry), [`burst`] (a paced flood of distinct names), [`raw_bpf`] (bpf(2) without a BPF library), [`http`],
//! [`cgroup`], [`cleanup`], [`run`], [`privilege`], [`kernel`] (dummy and IPVS support, the
//! kernel VMs), [`cmd`], [`addresses`] (the address plan).

pub mod addresses;
pub mod agent;
pub mod backend;
pub mod bounce;
pub mod burst;
pub mod cgroup;
pub mod cleanup;
pub mod cmd;
pub mod dig;
pub mod dns_client;
pub mod http;
pub mod kernel;
pub mod kube_proxy;
pub mod netns;
pub mod node;
pub mod perf;
pub mod privilege;
pub mod prometheus;
pub mod query_loop;
pub mod raw_bpf;
pub mod resolver_load;
pub mod run;
pub mod slow_dns;
pub mod socket_lb;
pub mod zones;

pub use agent::{agent_binary, AgentProcess};
pub use dig::{DigOutput, DigRecord};
pub use dns_client::{QueryOptions, Transport};
pub use kube_proxy::KubeProxyMode;
pub use node::{BackendMode, SimNode, SimNodeBuilder};
pub use perf::{DnsperfOptions, DnsperfReport};
pub use privilege::require_root;
pub use query_loop::{QueryLoop, QueryLoopOptions, QueryLoopReport};
pub use resolver_load::{ResolverLoad, ResolverLoadOptions, ResolverLoadReport};
pub use slow_dns::{Behaviour, SeenQuery};
