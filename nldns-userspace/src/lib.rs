//! The nldns agent as a library: the `nldns` binary is a thin CLI over these modules.

pub mod dns;
pub mod http;
pub mod metrics;
