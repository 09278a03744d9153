//! The kernel side of the agent: load the datapath object, configure its maps, attach
//! its TC programs to pod-facing interfaces and its socket hooks to a cgroup, run the
//! datapath's own tasks, and inspect or remove what nldns left in the kernel.
//!
//! - TC side: `loader` (the object and its maps), `attach` (TCX or netlink filters),
//!   `inspect` (status and cleanup from the kernel), `conflict` (the classic
//!   node-local-dns), `watcher` and `interfaces` (which interfaces, as they come and go),
//!   `endpoint` (the intercept address's device).
//! - `answers`: kernel answers (the answer table the cache publishes to).
//! - `sockhooks`: the cgroup socket hooks, split the same way.
//! - `interception`: the loaded datapath and its attachments behind one lock;
//!   `tasks`: the loops that keep them attached and drain the programs' log.

pub mod answers;
pub mod attach;
pub mod conflict;
pub mod endpoint;
pub mod inspect;
pub mod interception;
pub mod interfaces;
pub mod loader;
pub mod sockhooks;
pub mod tasks;
pub mod watcher;

pub use attach::{AttachMode, Attachments, Direction};
pub use endpoint::InterceptEndpoint;
pub use interception::Interception;
pub use loader::Datapath;
