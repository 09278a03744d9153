//! Raw bpf(2), for what aya 0.14 does not expose (querying and detaching cgroup hooks)
//! and for the tests and benchmarks, which stand in for other dataplanes' programs
//! without a BPF library and must build before the BPF toolchain is installed.
//!
//! The layout follows aya's `sys` module: one `bpf()` wrapper ([`sys_bpf`]), the parts of
//! `union bpf_attr` each command reads as `#[repr(C)]` structs ([`attr`]), and one safe
//! function per command ([`prog`]) that builds its attr from typed arguments. The only
//! `unsafe` is the syscall itself and taking ownership of the descriptors it returns.
//!
//! The numbers are the kernel's ABI (`include/uapi/linux/bpf.h`) and are named as the
//! kernel names them ([`AttachType::BPF_CGROUP_INET4_CONNECT`], ...).

mod attr;
pub mod prog;

use std::{io, os::fd::OwnedFd};

pub use prog::{
    link_create, prog_attach, prog_detach, prog_get_fd_by_id, prog_load, prog_query, prog_test_run,
    Target, TestRun,
};

/// `enum bpf_cmd`: the commands this crate issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
#[allow(non_camel_case_types)]
pub enum Cmd {
    BPF_PROG_LOAD = 5,
    BPF_PROG_ATTACH = 8,
    BPF_PROG_DETACH = 9,
    BPF_PROG_TEST_RUN = 10,
    BPF_PROG_GET_FD_BY_ID = 13,
    BPF_PROG_QUERY = 16,
    BPF_LINK_CREATE = 28,
}

/// `enum bpf_prog_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProgType(pub u32);

impl ProgType {
    pub const BPF_PROG_TYPE_SCHED_CLS: ProgType = ProgType(3);
    pub const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: ProgType = ProgType(18);
}

/// `enum bpf_attach_type`: where a program runs. A newtype rather than an enum so any
/// value the kernel reports can be held; the hooks nldns uses are named here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttachType(pub u32);

impl AttachType {
    /// No expected attach type (program types that do not need one, e.g. TC).
    pub const NONE: AttachType = AttachType(0);
    pub const BPF_CGROUP_INET4_CONNECT: AttachType = AttachType(10);
    pub const BPF_CGROUP_INET6_CONNECT: AttachType = AttachType(11);
    pub const BPF_CGROUP_UDP4_SENDMSG: AttachType = AttachType(14);
    pub const BPF_CGROUP_UDP6_SENDMSG: AttachType = AttachType(15);
    pub const BPF_CGROUP_UDP4_RECVMSG: AttachType = AttachType(19);
    pub const BPF_CGROUP_UDP6_RECVMSG: AttachType = AttachType(20);
    pub const BPF_CGROUP_INET4_GETPEERNAME: AttachType = AttachType(29);
    pub const BPF_CGROUP_INET6_GETPEERNAME: AttachType = AttachType(30);
    pub const BPF_TCX_INGRESS: AttachType = AttachType(46);
    pub const BPF_TCX_EGRESS: AttachType = AttachType(47);
}

/// `BPF_F_ALLOW_MULTI` (BPF_PROG_ATTACH): run alongside the hook's other programs.
pub const BPF_F_ALLOW_MULTI: u32 = 2;
/// `BPF_F_QUERY_EFFECTIVE` (BPF_PROG_QUERY): include programs inherited from ancestors.
pub const BPF_F_QUERY_EFFECTIVE: u32 = 1;

/// bpf(2): `cmd` with `attr`, the part of `union bpf_attr` that command reads. Returns
/// the syscall's non-negative result (a new descriptor for some commands) or the errno.
///
/// # Safety
/// `attr` must be the layout the kernel expects for `cmd`, and every pointer stored in it
/// must point at a live buffer of the size stated next to it, writable where the kernel
/// writes. The kernel zero-extends a shorter attr, so a prefix of the union is enough.
unsafe fn sys_bpf<T>(cmd: Cmd, attr: &mut T) -> io::Result<i64> {
    // SAFETY: the caller vouches for `attr` and its pointers; its size is passed along so
    // the kernel reads no further.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as u32 as libc::c_long,
            attr as *mut T,
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// Takes ownership of a descriptor bpf(2) just returned.
fn owned_fd(rc: i64) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: a descriptor the kernel has just created for us; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(rc as i32) }
}
