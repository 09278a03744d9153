//! nldns datapath (TC programs and cgroup socket hooks): program entry points only.
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
//! `nldns_connect4/6`, `nldns_sendmsg4/6`, `nldns_recvmsg4/6` and `nldns_getpeer4/6` are
//! cgroup sock_addr hooks for host-network processes, and `nldns_pconnect4` ... the same
//! for the pods' cgroup, where a socket-level load balancer would otherwise translate the
//! ClusterIP first (see sock.rs); they always allow the call (return 1).
//!
//! `nldns_answer` is `nldns_ingress` plus the kernel responder: a cache hit the agent
//! published in `NLDNS_ANSWERS` is answered in place and redirected back to the pod.
//!
//! Every doubt ends with the packet untouched: the programs never drop (the one
//! exception: an answer a helper refused halfway, counted as `kernel_answer_errors`). They return
//! `TC_ACT_UNSPEC` (TCX_NEXT), never `TC_ACT_OK`: with TCX, OK would end the chain and
//! skip the CNI's own programs attached after ours; with netlink filters UNSPEC likewise
//! lets the next filter run.
#![no_std]
#![no_main]
// The kernel responder's per-entry hit counter needs an atomic add (answer.rs).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod answer;
mod guard;
mod maps;
mod nat;
mod parse;
mod sock;

use answer::Answer;
use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext},
};
use nat::Answerable;
use nldns_common::Counter;
use sock::Scope;

#[classifier]
pub fn nldns_ingress(ctx: TcContext) -> i32 {
    let outcome = nat::redirect_query(&ctx);
    maps::count(outcome);
    TC_ACT_UNSPEC
}

/// `nldns_ingress` with the kernel responder (answer.rs), attached in its place when
/// kernel answers are on. A separate program so an agent on a kernel whose verifier
/// refuses the responder still loads the plain one. Sorting, answering and redirecting
/// are three calls, not one inlined body: each chain must fit the 512-byte stack.
#[classifier]
pub fn nldns_answer(ctx: TcContext) -> i32 {
    // Most packets are not DNS at all: leave them at the first look, inline, before the
    // call (an out-of-line call costed every packet ~40 ns more than nldns_ingress).
    if parse::surely_not_for_us(&ctx) {
        maps::count(Counter::Passed);
        return TC_ACT_UNSPEC;
    }
    match nat::answerable(&ctx) {
        Answerable::No(counter) => {
            maps::count(counter);
            TC_ACT_UNSPEC
        }
        Answerable::Yes { redirect } => match answer::respond(&ctx) {
            Answer::Sent(action) => {
                maps::count(Counter::KernelAnswers);
                action
            }
            Answer::Failed => {
                maps::count(Counter::KernelAnswerErrors);
                TC_ACT_SHOT
            }
            Answer::Pass(reason) => {
                maps::count(reason);
                if redirect {
                    redirect_query(&ctx)
                } else {
                    TC_ACT_UNSPEC
                }
            }
        },
        Answerable::Redirect => redirect_query(&ctx),
    }
}

#[inline(never)]
fn redirect_query(ctx: &TcContext) -> i32 {
    maps::count(nat::redirect_query(ctx));
    TC_ACT_UNSPEC
}

#[classifier]
pub fn nldns_egress(ctx: TcContext) -> i32 {
    let outcome = nat::restore_reply(&ctx);
    maps::count(outcome);
    TC_ACT_UNSPEC
}

#[cgroup_sock_addr(connect4)]
pub fn nldns_connect4(ctx: SockAddrContext) -> i32 {
    count_some(sock::redirect4(&ctx, Scope::Host));
    sock::ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn nldns_connect6(ctx: SockAddrContext) -> i32 {
    count_some(sock::redirect6(&ctx, Scope::Host));
    sock::ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub fn nldns_sendmsg4(ctx: SockAddrContext) -> i32 {
    count_some(sock::redirect4(&ctx, Scope::Host));
    sock::ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn nldns_sendmsg6(ctx: SockAddrContext) -> i32 {
    count_some(sock::redirect6(&ctx, Scope::Host));
    sock::ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn nldns_recvmsg4(ctx: SockAddrContext) -> i32 {
    count_some(sock::restore4(&ctx, Scope::Host));
    sock::ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn nldns_recvmsg6(ctx: SockAddrContext) -> i32 {
    count_some(sock::restore6(&ctx, Scope::Host));
    sock::ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn nldns_getpeer4(ctx: SockAddrContext) -> i32 {
    count_some(sock::restore4(&ctx, Scope::Host));
    sock::ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn nldns_getpeer6(ctx: SockAddrContext) -> i32 {
    count_some(sock::restore6(&ctx, Scope::Host));
    sock::ALLOW
}

// The pods' set (attached on `--pod-cgroup`), see sock.rs.

#[cgroup_sock_addr(connect4)]
pub fn nldns_pconnect4(ctx: SockAddrContext) -> i32 {
    count_some(sock::redirect4(&ctx, Scope::Pods));
    sock::ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn nldns_pconnect6(ctx: SockAddrContext) -> i32 {
    count_some(sock::redirect6(&ctx, Scope::Pods));
    sock::ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub fn nldns_psendmsg4(ctx: SockAddrContext) -> i32 {
    count_some(sock::redirect4(&ctx, Scope::Pods));
    sock::ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn nldns_psendmsg6(ctx: SockAddrContext) -> i32 {
    count_some(sock::redirect6(&ctx, Scope::Pods));
    sock::ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn nldns_precvmsg4(ctx: SockAddrContext) -> i32 {
    count_some(sock::restore4(&ctx, Scope::Pods));
    sock::ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn nldns_precvmsg6(ctx: SockAddrContext) -> i32 {
    count_some(sock::restore6(&ctx, Scope::Pods));
    sock::ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn nldns_pgetpeer4(ctx: SockAddrContext) -> i32 {
    count_some(sock::restore4(&ctx, Scope::Pods));
    sock::ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn nldns_pgetpeer6(ctx: SockAddrContext) -> i32 {
    count_some(sock::restore6(&ctx, Scope::Pods));
    sock::ALLOW
}

/// Socket hooks count only what concerns a Service IP or the intercept endpoint: every
/// other socket call of the node would drown the counters.
#[inline(always)]
fn count_some(outcome: Option<Counter>) {
    if let Some(counter) = outcome {
        maps::count(counter);
    }
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
