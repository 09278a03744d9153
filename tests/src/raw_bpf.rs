//! Raw bpf(2) for the tests and the benchmarks: load a tiny program, attach it the legacy
//! way or as a TCX link, query a hook, open a program by id, run it on a frame. The
//! syscalls are `nldns-sys`'s (the same ones the agent uses where aya has no API): no
//! aya, no libbpf, because xtask (which uses this) must build before `cargo xtask setup`
//! installs the BPF toolchain, and because the tests use it to stand in for other
//! dataplanes' programs, independently of the code under test.
//!
//! The constants are plain `u32`s (the kernel's numbers under the kernel's names) so
//! callers can pass them around without the sys crate's types.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use anyhow::{Context, Result};
pub use nldns_sys::ProgInfo as ProgramInfo;
use nldns_sys::{AttachType, ProgType, Target};

pub const BPF_PROG_TYPE_SCHED_CLS: u32 = ProgType::BPF_PROG_TYPE_SCHED_CLS.0;
pub const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = ProgType::BPF_PROG_TYPE_CGROUP_SOCK_ADDR.0;
pub const BPF_CGROUP_INET4_CONNECT: u32 = AttachType::BPF_CGROUP_INET4_CONNECT.0;
pub const BPF_TCX_INGRESS: u32 = AttachType::BPF_TCX_INGRESS.0;
pub const BPF_TCX_EGRESS: u32 = AttachType::BPF_TCX_EGRESS.0;
pub const BPF_F_ALLOW_MULTI: u32 = nldns_sys::BPF_F_ALLOW_MULTI;

/// `r0 = 1; exit`: allow, for a cgroup sock_addr hook.
pub const RETURN_1: [u64; 2] = [0xb7 | (1 << 32), 0x95];
/// `r0 = -1; exit`: TC_ACT_UNSPEC, for a TC program.
pub const RETURN_MINUS_1: [u64; 2] = [0xb7 | (0xffff_ffff << 32), 0x95];

/// A loaded program's descriptor; the program goes when the last reference does.
pub struct Program(OwnedFd);

impl Program {
    /// Loads `insns` (GPL) as a program of `prog_type` named `name` (at most 15 bytes).
    pub fn load(
        prog_type: u32,
        expected_attach_type: u32,
        name: &str,
        insns: &[u64],
    ) -> Result<Program> {
        anyhow::ensure!(name.len() < 16, "program name {name} is over 15 bytes");
        let fd = nldns_sys::prog_load(
            ProgType(prog_type),
            AttachType(expected_attach_type),
            name,
            insns,
            c"GPL",
        )
        .with_context(|| format!("BPF_PROG_LOAD {name}"))?;
        Ok(Program(fd))
    }

    /// Opens a loaded program by id (BPF_PROG_GET_FD_BY_ID).
    pub fn open(id: u32) -> Result<Program> {
        let fd = nldns_sys::prog_get_fd_by_id(id)
            .with_context(|| format!("BPF_PROG_GET_FD_BY_ID {id}"))?;
        Ok(Program(fd))
    }

    /// Legacy attachment (BPF_PROG_ATTACH) to `target` (e.g. a cgroup directory), which
    /// unlike a link outlives the process.
    pub fn attach_legacy(&self, target: &impl AsFd, attach_type: u32, flags: u32) -> Result<()> {
        nldns_sys::prog_attach(
            target.as_fd(),
            self.0.as_fd(),
            AttachType(attach_type),
            flags,
        )
        .context("BPF_PROG_ATTACH")
    }

    /// A TCX link (appended) on interface `ifindex` of the calling thread's namespace;
    /// closing the returned descriptor detaches it.
    pub fn attach_tcx(&self, ifindex: u32, attach_type: u32) -> Result<OwnedFd> {
        nldns_sys::link_create(
            self.0.as_fd(),
            Target::Ifindex(ifindex),
            AttachType(attach_type),
            0,
        )
        .context("BPF_LINK_CREATE")
    }

    /// Runs the program `repeat` times on `frame` (BPF_PROG_TEST_RUN); returns the verdict
    /// and the mean ns per run as the kernel timed it.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<(u32, u32)> {
        let mut out = vec![0u8; frame.len() + 512];
        let run = nldns_sys::prog_test_run(self.0.as_fd(), frame, &mut out, repeat)
            .context("BPF_PROG_TEST_RUN")?;
        Ok((run.retval, run.duration_ns))
    }

    /// The program's info (BPF_OBJ_GET_INFO_BY_FD), verifier work included.
    pub fn info(&self) -> Result<ProgramInfo> {
        nldns_sys::prog_info(self.0.as_fd()).context("BPF_OBJ_GET_INFO_BY_FD")
    }

    /// run_time_ns and run_cnt from the descriptor's fdinfo (kept only while
    /// kernel.bpf_stats_enabled is on).
    pub fn run_stats(&self) -> Result<(u64, u64)> {
        run_stats(&self.0)
    }
}

/// The ids of the programs attached to interface `ifname`'s TCX hook `attach_type`, in
/// the calling thread's namespace (BPF_PROG_QUERY).
pub fn query_tcx(ifname: &str, attach_type: u32) -> Result<Vec<u32>> {
    let ifindex = ifindex(ifname)?;
    nldns_sys::prog_query(Target::Ifindex(ifindex), AttachType(attach_type), 0)
        .context("BPF_PROG_QUERY")
}

/// The index of interface `ifname` in the calling thread's namespace.
pub fn ifindex(ifname: &str) -> Result<u32> {
    let c = std::ffi::CString::new(ifname)?;
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    anyhow::ensure!(index != 0, "no interface {ifname}");
    Ok(index)
}

/// run_time_ns and run_cnt of the program behind `fd`, from its fdinfo (kept only while
/// kernel.bpf_stats_enabled is on).
pub fn run_stats(fd: &impl AsRawFd) -> Result<(u64, u64)> {
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    Ok((field("run_time_ns:"), field("run_cnt:")))
}
