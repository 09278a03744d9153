//! nldns TC datapath: program entry points only.
//!
//! `nldns_ingress` runs on the host side of each pod-facing interface, on packets coming
//! FROM pods: a DNS query to an intercepted Service IP (the kube-dns ClusterIP) on port 53
//! gets its destination rewritten to the agent's private intercept endpoint. This happens
//! before netfilter, so kube-proxy's DNAT for the ClusterIP never sees the query.
//!
//! `nldns_egress` runs on the same interfaces toward the pods: a reply whose source is the
//! intercept endpoint gets its source rewritten back to the Service IP it was meant for, so
//! the pod sees ClusterIP:53 answering.
//!
//! Every doubt ends with the packet untouched: the programs never drop. They return
//! `TC_ACT_UNSPEC` (TCX_NEXT), never `TC_ACT_OK`: with TCX, OK would end the chain and
//! skip the CNI's own programs attached after ours; with netlink filters UNSPEC likewise
//! lets the next filter run.
#![no_std]
#![no_main]

mod guard;
mod maps;
mod nat;
mod parse;

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};
use nldns_common::Counter;

#[classifier]
pub fn nldns_ingress(ctx: TcContext) -> i32 {
    let outcome = nat::redirect_query(&ctx);
    maps::count(outcome);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn nldns_egress(ctx: TcContext) -> i32 {
    let outcome = nat::restore_reply(&ctx);
    maps::count(outcome);
    TC_ACT_UNSPEC
}

/// Keeps rustc happy; the verifier guarantees this is never reached.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

// Referenced so every counter variant is part of the object's BTF.
#[allow(dead_code)]
const _COUNTERS: u32 = Counter::COUNT;
