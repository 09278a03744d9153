//! The physical ceiling of answering DNS in TC: a program on the pods' host-side veths
//! (TCX ingress) that sends every UDP query for `ClusterIP:53` straight back to the pod
//! it came from, with the least rewriting a reply needs and no DNS work at all: MACs,
//! IPv4 addresses and ports swapped, the QR bit set (the UDP checksum fixed by
//! difference with `bpf_l4_csum_replace`), then `bpf_redirect_peer` into the pod's end of
//! the pair. The pod gets its own question back as a response (no answer records);
//! dnsperf counts it as a NOERROR response, which is what a ceiling for the
//! kernel-answer path needs.
//!
//! Also [`NopFirst`]: a program that only returns TC_ACT_UNSPEC, attached *first* on a
//! hook, so that bpf_stats can tell the hook's and the stats' own cost for packets a later
//! program redirects (TCX stops at the first verdict other than TC_ACT_UNSPEC, so an
//! appended no-op never sees those).
//!
//! Written as raw instructions and loaded with bpf(2) directly, like `socket_lb.rs`: the
//! ceiling must not share code with what it is the ceiling for. Attached only to
//! interfaces of a simulated node's namespace; closing the links (on drop) detaches it.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use anyhow::{Context, Result};
use nldns_sys::{AttachType, ProgType, Target};

use crate::netns::Netns;
use crate::raw_bpf::{self, ifindex, RETURN_MINUS_1};

/// `BPF_F_BEFORE` (TCX link_create): before the relative program, or first without one.
const BPF_F_BEFORE: u32 = 1 << 3;
/// `bpf_l4_csum_replace` flag: keep a UDP "no checksum" (0) as it is.
const BPF_F_MARK_MANGLED_0: u32 = 1 << 5;
const HELPER_L4_CSUM_REPLACE: u32 = 11;
const HELPER_REDIRECT_PEER: u32 = 155;
const TC_ACT_SHOT: u32 = 2;

/// Offsets in the kernel's `struct __sk_buff`.
const SKB_IFINDEX: i16 = 40;
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;

/// Offsets in an untagged Ethernet + IPv4 (no options) + UDP + DNS frame.
const ETH_TYPE: i16 = 12;
const IP_VHL: i16 = 14;
const IP_FRAG: i16 = 20;
const IP_PROTO: i16 = 23;
const IP_SRC: i16 = 26;
const IP_DST: i16 = 30;
const UDP_SPORT: i16 = 34;
const UDP_DPORT: i16 = 36;
const UDP_CSUM: u32 = 40;
const DNS_FLAGS: i16 = 44;
/// Bytes that must be in the linear part: up to the end of the DNS header.
const FRAME_MIN: u32 = 54;

/// A TC program attached to some interfaces; detached and unloaded on drop.
pub struct TcAttached {
    program: Arc<OwnedFd>,
    links: Vec<OwnedFd>,
}

impl TcAttached {
    /// Loads `insns` as a TC program named `name` and links it (TCX) to `attach_type` of
    /// every interface in `interfaces` of `netns`, first in the chain when `first`.
    fn attach(
        netns: &Netns,
        name: &str,
        insns: &[u64],
        interfaces: &[&str],
        attach_type: AttachType,
        first: bool,
    ) -> Result<TcAttached> {
        let program = Arc::new(
            nldns_sys::prog_load(
                ProgType::BPF_PROG_TYPE_SCHED_CLS,
                AttachType(0),
                name,
                insns,
                c"GPL",
            )
            .with_context(|| format!("BPF_PROG_LOAD {name}"))?,
        );
        let interfaces: Vec<String> = interfaces.iter().map(|s| s.to_string()).collect();
        let flags = if first { BPF_F_BEFORE } else { 0 };
        let inside = program.clone();
        // Interface indexes and TCX links belong to the namespace of the calling thread.
        let links = netns.run_inside(move || -> Result<Vec<OwnedFd>> {
            interfaces
                .iter()
                .map(|ifname| {
                    let index = ifindex(ifname)?;
                    nldns_sys::link_create(
                        inside.as_fd(),
                        Target::Ifindex(index),
                        attach_type,
                        flags,
                    )
                    .with_context(|| format!("BPF_LINK_CREATE on {ifname}"))
                })
                .collect()
        })??;
        Ok(TcAttached { program, links })
    }

    /// run_time_ns and run_cnt from the program fd's fdinfo (kept only while
    /// kernel.bpf_stats_enabled is on).
    pub fn run_stats(&self) -> Result<(u64, u64)> {
        raw_bpf::run_stats(&*self.program)
    }

    /// How many links are attached.
    pub fn links(&self) -> usize {
        self.links.len()
    }
}

impl Drop for TcAttached {
    fn drop(&mut self) {
        // Closing a TCX link's fd detaches it; the program goes with the last fd.
        self.links.clear();
    }
}

/// The bouncer on the TCX ingress of `interfaces` (the node ends of pod veths) in `node`.
pub fn attach_bounce(node: &Netns, interfaces: &[&str], service: Ipv4Addr) -> Result<TcAttached> {
    TcAttached::attach(
        node,
        "nldns_bounce",
        &bounce_program(service),
        interfaces,
        AttachType::BPF_TCX_INGRESS,
        false,
    )
}

/// A program that returns TC_ACT_UNSPEC, first on the TCX `attach_type` hook of
/// `interfaces`.
pub fn attach_nop_first(node: &Netns, interfaces: &[&str], attach_type: u32) -> Result<TcAttached> {
    TcAttached::attach(
        node,
        "nldns_nop_first",
        &RETURN_MINUS_1,
        interfaces,
        AttachType(attach_type),
        true,
    )
}

/// The bouncer's instructions. r6 = ctx, r2 = data, r3 = data_end; every check that fails
/// jumps to the final `return TC_ACT_UNSPEC`.
pub fn bounce_program(service: Ipv4Addr) -> Vec<u64> {
    // The address as a little-endian load of its network-order bytes.
    let service = u32::from_le_bytes(service.octets());
    let mut p = Asm::default();
    p.push(mov64_reg(6, 1));
    p.push(ldx(W, 2, 6, SKB_DATA));
    p.push(ldx(W, 3, 6, SKB_DATA_END));
    p.push(mov64_reg(4, 2));
    p.push(add64_imm(4, FRAME_MIN));
    p.jump_to_pass(jgt_reg(4, 3));
    // IPv4 (0x0800 read little-endian), no options, UDP, not a fragment.
    p.push(ldx(H, 4, 2, ETH_TYPE));
    p.jump_to_pass(jne_imm(4, 0x0008));
    p.push(ldx(B, 4, 2, IP_VHL));
    p.jump_to_pass(jne_imm(4, 0x45));
    p.push(ldx(B, 4, 2, IP_PROTO));
    p.jump_to_pass(jne_imm(4, 17));
    p.push(ldx(H, 4, 2, IP_FRAG));
    // MF and the offset (0x3fff in network order, 0xff3f read little-endian).
    p.push(and64_imm(4, 0xff3f));
    p.jump_to_pass(jne_imm(4, 0));
    p.push(ldx(W, 4, 2, IP_DST));
    p.jump_to_pass(jne32_imm(4, service));
    p.push(ldx(H, 4, 2, UDP_DPORT));
    p.jump_to_pass(jne_imm(4, u32::from(53u16.to_be())));
    // Swap the MACs (6 bytes each: a word and a half-word).
    for (size, at) in [(W, 0i16), (H, 4)] {
        p.push(ldx(size, 4, 2, at));
        p.push(ldx(size, 5, 2, at + 6));
        p.push(stx(size, 2, 5, at));
        p.push(stx(size, 2, 4, at + 6));
    }
    // Swap the addresses and the ports: sums unchanged (IP header, UDP pseudo-header).
    for (size, a, b) in [(W, IP_SRC, IP_DST), (H, UDP_SPORT, UDP_DPORT)] {
        p.push(ldx(size, 4, 2, a));
        p.push(ldx(size, 5, 2, b));
        p.push(stx(size, 2, 5, a));
        p.push(stx(size, 2, 4, b));
    }
    // QR: the high bit of the first flags byte, which is the low byte of a little-endian
    // load. r7 = old flags, r8 = new, both as the raw 16-bit words the helper takes.
    p.push(ldx(H, 7, 2, DNS_FLAGS));
    p.push(mov64_reg(8, 7));
    p.push(or64_imm(8, 0x80));
    p.push(stx(H, 2, 8, DNS_FLAGS));
    // bpf_l4_csum_replace(skb, udp csum, old, new, 2 | MARK_MANGLED_0); packet pointers
    // are invalid after it, none is used again.
    p.push(mov64_reg(1, 6));
    p.push(mov64_imm(2, UDP_CSUM));
    p.push(mov64_reg(3, 7));
    p.push(mov64_reg(4, 8));
    p.push(mov64_imm(5, 2 | BPF_F_MARK_MANGLED_0));
    p.push(call(HELPER_L4_CSUM_REPLACE));
    // A failed fix: drop (the client retries).
    p.push(jeq_imm(0, 0, 2));
    p.push(mov64_imm(0, TC_ACT_SHOT));
    p.push(EXIT);
    // bpf_redirect_peer(skb->ifindex, 0): into the pod's end of the pair.
    p.push(ldx(W, 1, 6, SKB_IFINDEX));
    p.push(mov64_imm(2, 0));
    p.push(call(HELPER_REDIRECT_PEER));
    p.push(EXIT);
    p.finish()
}

/// Instructions with forward jumps to one shared "pass" exit at the end.
#[derive(Default)]
struct Asm {
    insns: Vec<u64>,
    to_pass: Vec<usize>,
}

impl Asm {
    fn push(&mut self, insn: u64) {
        self.insns.push(insn);
    }

    fn jump_to_pass(&mut self, jump: u64) {
        self.to_pass.push(self.insns.len());
        self.insns.push(jump);
    }

    /// Appends `return TC_ACT_UNSPEC` and points every pass jump at it.
    fn finish(mut self) -> Vec<u64> {
        let pass = self.insns.len();
        self.insns.extend_from_slice(&RETURN_MINUS_1);
        for at in self.to_pass {
            let off = (pass - at - 1) as i16;
            self.insns[at] = (self.insns[at] & !(0xffff << 16)) | (u64::from(off as u16) << 16);
        }
        self.insns
    }
}

const EXIT: u64 = 0x95;
/// BPF_W, BPF_H, BPF_B size bits of a load or store.
const W: u8 = 0x00;
const H: u8 = 0x08;
const B: u8 = 0x10;

fn insn(opcode: u8, dst: u8, src: u8, off: i16, imm: u32) -> u64 {
    u64::from(opcode)
        | (u64::from(dst | (src << 4)) << 8)
        | (u64::from(off as u16) << 16)
        | (u64::from(imm) << 32)
}

/// `dst = *(size *)(src + off)` (BPF_LDX | BPF_MEM).
fn ldx(size: u8, dst: u8, src: u8, off: i16) -> u64 {
    insn(0x61 | size, dst, src, off, 0)
}

/// `*(size *)(dst + off) = src` (BPF_STX | BPF_MEM).
fn stx(size: u8, dst: u8, src: u8, off: i16) -> u64 {
    insn(0x63 | size, dst, src, off, 0)
}

fn mov64_reg(dst: u8, src: u8) -> u64 {
    insn(0xbf, dst, src, 0, 0)
}

fn mov64_imm(dst: u8, imm: u32) -> u64 {
    insn(0xb7, dst, 0, 0, imm)
}

fn add64_imm(dst: u8, imm: u32) -> u64 {
    insn(0x07, dst, 0, 0, imm)
}

fn and64_imm(dst: u8, imm: u32) -> u64 {
    insn(0x57, dst, 0, 0, imm)
}

fn or64_imm(dst: u8, imm: u32) -> u64 {
    insn(0x47, dst, 0, 0, imm)
}

/// `if dst > src goto +off` (unsigned, 64-bit; the pass target is filled in later).
fn jgt_reg(dst: u8, src: u8) -> u64 {
    insn(0x2d, dst, src, 0, 0)
}

/// `if dst != imm goto +off` (64-bit; `imm` small and positive here).
fn jne_imm(dst: u8, imm: u32) -> u64 {
    insn(0x55, dst, 0, 0, imm)
}

/// `if w<dst> != imm goto +off` (32-bit: no sign extension of `imm`).
fn jne32_imm(dst: u8, imm: u32) -> u64 {
    insn(0x56, dst, 0, 0, imm)
}

fn jeq_imm(dst: u8, imm: u32, off: i16) -> u64 {
    insn(0x15, dst, 0, off, imm)
}

fn call(helper: u32) -> u64 {
    insn(0x85, 0, 0, 0, helper)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_jumps_land_on_the_final_return() {
        let insns = bounce_program(Ipv4Addr::new(10, 96, 0, 10));
        let pass = insns.len() - 2;
        assert_eq!(insns[pass], RETURN_MINUS_1[0]);
        assert_eq!(insns[pass + 1], EXIT);
        let mut jumps = 0;
        for (i, insn) in insns.iter().enumerate() {
            let opcode = (insn & 0xff) as u8;
            // The conditional jumps to the pass exit (jgt reg, jne imm, jne32 imm).
            if matches!(opcode, 0x2d | 0x55 | 0x56) {
                let off = ((insn >> 16) & 0xffff) as i16;
                assert_eq!(i + 1 + off as usize, pass, "jump at {i}");
                jumps += 1;
            }
        }
        assert_eq!(jumps, 7);
    }

    #[test]
    fn service_word_is_the_network_order_bytes() {
        let insns = bounce_program(Ipv4Addr::new(10, 96, 0, 10));
        let word = u32::from_le_bytes([10, 96, 0, 10]);
        assert!(insns
            .iter()
            .any(|i| (i & 0xff) == 0x56 && (i >> 32) as u32 == word));
    }
}
