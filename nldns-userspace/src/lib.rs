//! The nldns agent as a library: the `nldns` binary is a thin CLI over these modules.
//!
//! The DNS engine (cache, upstreams, servers) is the `nldns-dns` crate; raw bpf(2) calls
//! are the `nldns-sys` crate.
//!
//! - `agent`: `nldns run`, start-up and shutdown as named phases (the fail-open order).
//! - `datapath`: load, configure, attach and inspect the datapath object (TC programs
//!   and cgroup socket hooks) and run its own tasks (kernel side).
//! - `heartbeat`: proves the serving path works, which keeps interception on.
//! - `intercept`: the sockets redirected queries land on.
//! - `http`, `metrics`: /health, /ready, /metrics; `probe`: the same, exact per agent, on
//!   a unix socket, and `nldns probe`.
//! - `cli`, `config`, `status`: flags, configuration, `nldns status` / `cleanup` /
//!   `datapath-log`.

pub mod agent;
pub mod cli;
pub mod config;
pub mod datapath;
pub mod heartbeat;
pub mod http;
pub mod intercept;
pub mod metrics;
pub mod probe;
pub mod shedding;
pub mod status;
