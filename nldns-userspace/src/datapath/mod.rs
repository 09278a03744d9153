//! The kernel side of the agent: load the TC programs, configure their maps, attach them
//! to pod-facing interfaces (and the socket hooks to a cgroup), keep the fail-open heartbeat fresh, and inspect or remove
//! what nldns left in the kernel.

pub mod attach;
pub mod cgroup;
pub mod conflict;
pub mod endpoint;
pub mod inspect;
pub mod interfaces;
pub mod loader;
pub mod watcher;

pub use attach::{AttachMode, Attachments, Direction};
pub use endpoint::InterceptEndpoint;
pub use loader::Datapath;
