//! The maps shared with the agent. Layouts live in `nldns-common`.

use aya_ebpf::bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC};
use aya_ebpf::{
    btf_maps::{Array, HashMap, PerCpuArray},
    macros::btf_map,
};
use nldns_common::{
    answers::{AnswerHits, AnswerKey, KernelAnswer, ANSWER_ENTRIES_MAX},
    Counter, DatapathConfig, ServiceAddr, ServiceSlot, MAX_SERVICES,
};

/// Single entry: the intercept endpoint and guard settings.
#[btf_map]
pub static NLDNS_CONFIG: Array<DatapathConfig, 1> = Array::new();

/// Service IP (v4-mapped or v6) -> slot. Looked up on every DNS query at ingress.
#[btf_map]
pub static NLDNS_SERVICES: HashMap<ServiceAddr, ServiceSlot, { MAX_SERVICES as usize }> =
    HashMap::new();

/// Slot -> Service IP, for the egress rewrite. All-zero means the slot is unused.
#[btf_map]
pub static NLDNS_REVERSE: Array<ServiceAddr, { MAX_SERVICES as usize }> = Array::new();

/// Single entry: CLOCK_MONOTONIC ns at which the agent last proved it serves.
#[btf_map]
pub static NLDNS_HEARTBEAT: Array<u64, 1> = Array::new();

/// Outcome counters, indexed by `Counter`.
#[btf_map]
pub static NLDNS_COUNTERS: PerCpuArray<u64, { Counter::COUNT as usize }> = PerCpuArray::new();

/// Cache entries the agent lets the kernel answer from (see `answer.rs`). Not
/// preallocated: its memory follows the entries it holds (512 bytes each with the kernel's
/// element header, see `ANSWER_NAME_MAX`).
#[btf_map]
pub static NLDNS_ANSWERS: HashMap<
    AnswerKey,
    KernelAnswer,
    { ANSWER_ENTRIES_MAX as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// What the kernel answered, per entry (`KernelAnswer::hits_slot`). mmap-able: the agent
/// reads it every second without a syscall per entry.
#[btf_map]
pub static NLDNS_ANS_HITS: Array<
    AnswerHits,
    { ANSWER_ENTRIES_MAX as usize },
    { BPF_F_MMAPABLE as usize },
> = Array::new();

#[inline(always)]
pub fn config() -> Option<&'static DatapathConfig> {
    NLDNS_CONFIG.get(0)
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = NLDNS_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot of this CPU; the program is not preempted while it runs on
        // it, so a plain read-modify-write is race-free.
        unsafe { *slot += 1 };
    }
}
