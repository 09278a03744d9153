//! Types shared by the eBPF datapath (`nldns-ebpf`) and the agent (`nldns-userspace`).
//!
//! Everything here is `#[repr(C)]` plain data: the kernel program and the agent read the
//! same bytes out of BPF maps, so a layout change here is a protocol change between the
//! two halves. Both halves are built from the same commit and shipped in one binary, so
//! no versioning is needed beyond keeping the two in step.
#![no_std]

pub mod answers;
pub mod config;
pub mod stats;

pub use config::{
    DatapathConfig, ServiceAddr, ServiceSlot, MAX_SERVICES, POD_SOCKET_PORTS, PORTS_PER_AGENT,
};
pub use stats::Counter;

/// Names of the maps, as the kernel and bpftool show them (at most 15 bytes).
pub mod map_names {
    pub const CONFIG: &str = "NLDNS_CONFIG";
    pub const SERVICES: &str = "NLDNS_SERVICES";
    pub const REVERSE: &str = "NLDNS_REVERSE";
    pub const HEARTBEAT: &str = "NLDNS_HEARTBEAT";
    pub const COUNTERS: &str = "NLDNS_COUNTERS";
    pub const ANSWERS: &str = "NLDNS_ANSWERS";
    pub const ANSWER_HITS: &str = "NLDNS_ANS_HITS";
}

/// Names of the programs, as the kernel and bpftool show them.
pub mod program_names {
    pub const INGRESS: &str = "nldns_ingress";
    pub const EGRESS: &str = "nldns_egress";
    /// The ingress program with the kernel responder (`--kernel-answers`): answers cache
    /// hits from `NLDNS_ANSWERS` itself, and otherwise does exactly what `INGRESS` does.
    /// Attached in its place.
    pub const ANSWERING_INGRESS: &str = "nldns_answer";
    /// cgroup sock_addr programs (host-network interception), at most 15 bytes each.
    pub const CONNECT4: &str = "nldns_connect4";
    pub const CONNECT6: &str = "nldns_connect6";
    pub const SENDMSG4: &str = "nldns_sendmsg4";
    pub const SENDMSG6: &str = "nldns_sendmsg6";
    pub const RECVMSG4: &str = "nldns_recvmsg4";
    pub const RECVMSG6: &str = "nldns_recvmsg6";
    pub const GETPEER4: &str = "nldns_getpeer4";
    pub const GETPEER6: &str = "nldns_getpeer6";
    /// The same hooks for the pods' cgroup (`--pod-cgroup`): they also rewrite sockets of
    /// pod network namespaces, toward the pod-socket ports (see `POD_SOCKET_PORTS`).
    pub const POD_CONNECT4: &str = "nldns_pconnect4";
    pub const POD_CONNECT6: &str = "nldns_pconnect6";
    pub const POD_SENDMSG4: &str = "nldns_psendmsg4";
    pub const POD_SENDMSG6: &str = "nldns_psendmsg6";
    pub const POD_RECVMSG4: &str = "nldns_precvmsg4";
    pub const POD_RECVMSG6: &str = "nldns_precvmsg6";
    pub const POD_GETPEER4: &str = "nldns_pgetpeer4";
    pub const POD_GETPEER6: &str = "nldns_pgetpeer6";
    /// Every program and filter nldns owns starts with this; cleanup matches on it and
    /// on nothing else, so it never touches anyone else's filters.
    pub const PREFIX: &str = "nldns_";
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], contain only integers and byte arrays, and
    // have no implicit padding (checked by the size tests in config.rs), so every bit
    // pattern is a valid value.
    unsafe impl aya::Pod for crate::DatapathConfig {}
    unsafe impl aya::Pod for crate::ServiceAddr {}
    unsafe impl aya::Pod for crate::ServiceSlot {}
    unsafe impl aya::Pod for crate::answers::AnswerKey {}
    unsafe impl aya::Pod for crate::answers::KernelAnswer {}
    unsafe impl aya::Pod for crate::answers::AnswerHits {}
}
