//! The simulated node: the harness that integration tests, the demo and the benchmarks use
//! to run nldns against real kernel networking, real kube-proxy NAT and real DNS servers,
//! entirely inside network namespaces of their own (see shared/SIMULATED-NODE.md).
//!
//! ```no_run
//! use nldns_tests::{require_root, SimNode};
//! if require_root("example") {
//!     let node = SimNode::new(2, 2).unwrap();
//!     let out = node.dig(0, &["@10.96.0.10", "kube-dns.kube-system.svc.cluster.local", "A"]).unwrap();
//!     assert_eq!(out.answer_data("A"), ["10.96.0.10"]);
//! } // dropping the node removes every namespace, process, file and cgroup of the run
//! ```

pub mod addresses;
pub mod agent;
pub mod backend;
pub mod cgroup;
pub mod cleanup;
pub mod cmd;
pub mod dig;
pub mod dns_client;
pub mod http;
pub mod kube_proxy;
pub mod netns;
pub mod node;
pub mod perf;
pub mod privilege;
pub mod run;
pub mod slow_dns;
pub mod zones;

pub use agent::{agent_binary, AgentProcess};
pub use dig::{DigOutput, DigRecord};
pub use dns_client::{QueryOptions, Transport};
pub use kube_proxy::KubeProxyMode;
pub use node::{BackendMode, SimNode, SimNodeBuilder};
pub use perf::{DnsperfOptions, DnsperfReport};
pub use privilege::require_root;
pub use slow_dns::{Behaviour, SeenQuery};
