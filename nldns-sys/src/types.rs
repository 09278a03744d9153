//! The kernel's numbers for commands, program types, attach types and flags, under the
//! kernel's names (`include/uapi/linux/bpf.h`).

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
    BPF_OBJ_GET_INFO_BY_FD = 15,
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
/// A program attached with this flag is replaced, not joined, by a descendant's.
pub const BPF_F_ALLOW_OVERRIDE: u32 = 1;
/// `BPF_F_QUERY_EFFECTIVE` (BPF_PROG_QUERY): include programs inherited from ancestors.
pub const BPF_F_QUERY_EFFECTIVE: u32 = 1;
