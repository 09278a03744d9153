//! A stand-in for a dataplane that load-balances Services in the socket layer (Cilium's
//! kube-proxy replacement, GKE Dataplane V2, Calico's eBPF mode): cgroup sock_addr
//! programs that translate `ClusterIP:53` into one backend's address in connect() and
//! sendmsg(), and the backend's address back into the ClusterIP in recvmsg(), the way
//! Cilium's `cil_sock4_connect` / `cil_sock4_sendmsg` / `cil_sock4_recvmsg` do. A query
//! they translate never exists as a packet to the ClusterIP, so TC never sees it.
//!
//! Written as raw instructions and loaded with bpf(2) directly (see raw_bpf.rs): the
//! stand-in must not share code with what it stands against. Attached only to cgroups the
//! test created; removed when dropped (legacy attachments are detached, links closed).

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use nldns_sys::{AttachType, ProgType, Target};

/// Offsets in the kernel's `struct bpf_sock_addr`.
const USER_IP4: i16 = 4;
const USER_IP6: i16 = 8;
const USER_PORT: i16 = 24;

/// Which dataplane to look like: the program names decide what nldns reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// `cil_sock4_connect`, ... (the kernel keeps 15 bytes of a name).
    Cilium,
    /// `calico_connect_v4`, ...
    Calico,
}

/// How the stand-in hangs on its cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// A bpf link (always multi), as Cilium does on kernels that have them.
    Link,
    /// BPF_PROG_ATTACH with BPF_F_ALLOW_MULTI.
    LegacyMulti,
    /// BPF_PROG_ATTACH with BPF_F_ALLOW_OVERRIDE: a descendant's program would replace
    /// this one instead of running before it.
    LegacyOverride,
}

/// One translation: the Service's address and the backend it goes to, per family.
#[derive(Clone, Copy, Debug)]
pub struct Translation {
    pub service_v4: Ipv4Addr,
    pub backend_v4: Ipv4Addr,
    pub service_v6: Ipv6Addr,
    pub backend_v6: Ipv6Addr,
}

struct Attached {
    program: OwnedFd,
    attach_type: AttachType,
    /// The link, for [`Attach::Link`]; None for a legacy attachment.
    link: Option<OwnedFd>,
}

/// The stand-in's programs, attached to one cgroup.
pub struct SocketLb {
    cgroup: PathBuf,
    cgroup_dir: File,
    attached: Vec<Attached>,
}

impl SocketLb {
    /// Loads the stand-in's six programs and attaches them to `cgroup`.
    pub fn attach(
        cgroup: &Path,
        flavour: Flavour,
        how: Attach,
        translation: &Translation,
    ) -> Result<SocketLb> {
        let cgroup_dir =
            File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        let mut lb = SocketLb {
            cgroup: cgroup.to_path_buf(),
            cgroup_dir,
            attached: Vec::new(),
        };
        let t = translation;
        let v4 = (words4(t.service_v4), words4(t.backend_v4));
        let v6 = (words6(t.service_v6), words6(t.backend_v6));
        let programs = [
            (
                AttachType::BPF_CGROUP_INET4_CONNECT,
                "connect4",
                translate(USER_IP4, &v4.0, &v4.1),
            ),
            (
                AttachType::BPF_CGROUP_UDP4_SENDMSG,
                "sendmsg4",
                translate(USER_IP4, &v4.0, &v4.1),
            ),
            (
                AttachType::BPF_CGROUP_UDP4_RECVMSG,
                "recvmsg4",
                translate(USER_IP4, &v4.1, &v4.0),
            ),
            (
                AttachType::BPF_CGROUP_INET6_CONNECT,
                "connect6",
                translate(USER_IP6, &v6.0, &v6.1),
            ),
            (
                AttachType::BPF_CGROUP_UDP6_SENDMSG,
                "sendmsg6",
                translate(USER_IP6, &v6.0, &v6.1),
            ),
            (
                AttachType::BPF_CGROUP_UDP6_RECVMSG,
                "recvmsg6",
                translate(USER_IP6, &v6.1, &v6.0),
            ),
        ];
        for (attach_type, hook, insns) in programs {
            let name = program_name(flavour, hook);
            let program = nldns_sys::prog_load(
                ProgType::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
                attach_type,
                &name,
                &insns,
                c"GPL",
            )
            .with_context(|| format!("loading the stand-in's {name}"))?;
            let link = match how {
                Attach::Link => Some(
                    nldns_sys::link_create(
                        program.as_fd(),
                        Target::Fd(lb.cgroup_dir.as_fd()),
                        attach_type,
                        0,
                    )
                    .with_context(|| format!("linking {name} to {}", cgroup.display()))?,
                ),
                Attach::LegacyMulti | Attach::LegacyOverride => {
                    let flags = if how == Attach::LegacyMulti {
                        nldns_sys::BPF_F_ALLOW_MULTI
                    } else {
                        nldns_sys::BPF_F_ALLOW_OVERRIDE
                    };
                    nldns_sys::prog_attach(
                        lb.cgroup_dir.as_fd(),
                        program.as_fd(),
                        attach_type,
                        flags,
                    )
                    .with_context(|| format!("attaching {name} to {}", cgroup.display()))?;
                    None
                }
            };
            lb.attached.push(Attached {
                program,
                attach_type,
                link,
            });
        }
        Ok(lb)
    }

    /// The cgroup the stand-in is attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }
}

impl Drop for SocketLb {
    fn drop(&mut self) {
        for attached in self.attached.drain(..) {
            if attached.link.is_none() {
                let _ = nldns_sys::prog_detach(
                    self.cgroup_dir.as_fd(),
                    attached.program.as_fd(),
                    attached.attach_type,
                );
            }
        }
    }
}

/// The kernel name of the stand-in's program for `hook` (cut at 15 bytes, as the kernel
/// cuts the real ones).
pub fn program_name(flavour: Flavour, hook: &str) -> String {
    let (family, call) = hook.split_at(hook.len() - 1);
    let name = match flavour {
        Flavour::Cilium => format!("cil_sock{call}_{family}"),
        Flavour::Calico => format!("calico_{family}_v{call}"),
    };
    name.chars().take(15).collect()
}

/// The translation of one Service per family used by the tests: `service` -> `backend`.
pub fn translation(service: [IpAddr; 2], backend: [IpAddr; 2]) -> Result<Translation> {
    let v4 = |a: IpAddr| match a {
        IpAddr::V4(v4) => Ok(v4),
        IpAddr::V6(_) => anyhow::bail!("{a} is not IPv4"),
    };
    let v6 = |a: IpAddr| match a {
        IpAddr::V6(v6) => Ok(v6),
        IpAddr::V4(_) => anyhow::bail!("{a} is not IPv6"),
    };
    Ok(Translation {
        service_v4: v4(service[0])?,
        backend_v4: v4(backend[0])?,
        service_v6: v6(service[1])?,
        backend_v6: v6(backend[1])?,
    })
}

/// The address as the program loads it: each 4-byte word of the network-order address
/// read as a little-endian u32 (the BPF targets these tests run on are little-endian).
fn words4(addr: Ipv4Addr) -> Vec<u32> {
    vec![u32::from_le_bytes(addr.octets())]
}

fn words6(addr: Ipv6Addr) -> Vec<u32> {
    addr.octets()
        .chunks(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// `if port == 53 && address == from { address = to } return 1`, over the address's
/// words at `offset` in the context.
fn translate(offset: i16, from: &[u32], to: &[u32]) -> Vec<u64> {
    let port_53 = u32::from(53u16.to_be());
    let mut insns = vec![ldx_w(2, 1, USER_PORT), jne32_imm(2, port_53, 0)];
    let mut exits = vec![1];
    for (i, word) in from.iter().enumerate() {
        insns.push(ldx_w(2, 1, offset + 4 * i as i16));
        exits.push(insns.len());
        insns.push(jne32_imm(2, *word, 0));
    }
    for (i, word) in to.iter().enumerate() {
        insns.push(mov32_imm(2, *word));
        insns.push(stx_w(1, 2, offset + 4 * i as i16));
    }
    let out = insns.len();
    insns.push(mov64_imm(0, 1));
    insns.push(EXIT);
    // Point every "no match" jump at the final `return 1`.
    for at in exits {
        let jump = (out - at - 1) as i16;
        insns[at] = (insns[at] & !(0xffff << 16)) | (u64::from(jump as u16) << 16);
    }
    insns
}

const EXIT: u64 = 0x95;

fn insn(opcode: u8, dst: u8, src: u8, off: i16, imm: u32) -> u64 {
    u64::from(opcode)
        | (u64::from(dst | (src << 4)) << 8)
        | (u64::from(off as u16) << 16)
        | (u64::from(imm) << 32)
}

/// `dst = *(u32 *)(src + off)`.
fn ldx_w(dst: u8, src: u8, off: i16) -> u64 {
    insn(0x61, dst, src, off, 0)
}

/// `*(u32 *)(dst + off) = src`.
fn stx_w(dst: u8, src: u8, off: i16) -> u64 {
    insn(0x63, dst, src, off, 0)
}

/// `w<dst> = imm` (32-bit move, zero-extended).
fn mov32_imm(dst: u8, imm: u32) -> u64 {
    insn(0xb4, dst, 0, 0, imm)
}

fn mov64_imm(dst: u8, imm: u32) -> u64 {
    insn(0xb7, dst, 0, 0, imm)
}

/// `if w<dst> != imm goto +off` (32-bit compare: no sign extension of `imm`).
fn jne32_imm(dst: u8, imm: u32, off: i16) -> u64 {
    insn(0x56, dst, 0, off, imm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_look_like_the_real_ones() {
        assert_eq!(program_name(Flavour::Cilium, "connect4"), "cil_sock4_conne");
        assert_eq!(program_name(Flavour::Cilium, "recvmsg6"), "cil_sock6_recvm");
        assert_eq!(program_name(Flavour::Calico, "connect4"), "calico_connect_");
    }

    #[test]
    fn jumps_land_on_the_final_return() {
        let insns = translate(USER_IP4, &[1], &[2]);
        // ldx port, jne, ldx ip, jne, mov, stx, mov r0, exit
        assert_eq!(insns.len(), 8);
        let off = |i: usize| ((insns[i] >> 16) & 0xffff) as i16;
        assert_eq!(1 + 1 + off(1) as usize, 6);
        assert_eq!(3 + 1 + off(3) as usize, 6);
        assert_eq!(insns[7], EXIT);
    }
}
