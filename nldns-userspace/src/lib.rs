//! The nldns agent as a library: the `nldns` binary is a thin CLI over these modules.
//!
//! - `datapath`: load, configure, attach and inspect the TC programs (kernel side).
//! - `dns`: the cache, upstream forwarding and the UDP/TCP servers.
//! - `heartbeat`: proves the serving path works, which keeps interception on.
//! - `intercept`: the sockets redirected queries land on.
//! - `agent`: `nldns run`, the start-up and shutdown order.
//! - `http`, `metrics`: /health, /ready, /metrics; `probe`: the same, exact per agent, on
//!   a unix socket, and `nldns probe`.
//! - `memory`: returns malloc's free pages to the kernel.
//! - `cli`, `config`, `status`: flags, config file, `nldns status` / `cleanup`.

pub mod agent;
pub mod cli;
pub mod config;
pub mod datapath;
pub mod heartbeat;
pub mod http;
pub mod intercept;
pub mod metrics;
pub mod probe;
pub mod status;
