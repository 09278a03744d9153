//! Minimal raw bpf(2) for the tests and the benchmarks: load a tiny program, attach it
//! the legacy way or as a TCX link, query a hook, open a program by id, run it on a frame.
//! Raw, because xtask must build before `cargo xtask setup` (no aya, no libbpf), and
//! because the tests use it to stand in for other dataplanes' programs, independently of
//! the code under test. The attr structs are the parts of `union bpf_attr` each command
//! reads (include/uapi/linux/bpf.h).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Context, Result};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_CREATE: libc::c_long = 28;

pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
pub const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
pub const BPF_CGROUP_INET4_CONNECT: u32 = 10;
pub const BPF_TCX_INGRESS: u32 = 46;
pub const BPF_TCX_EGRESS: u32 = 47;
pub const BPF_F_ALLOW_MULTI: u32 = 2;

/// `r0 = 1; exit`: allow, for a cgroup sock_addr hook.
pub const RETURN_1: [u64; 2] = [0xb7 | (1 << 32), 0x95];
/// `r0 = -1; exit`: TC_ACT_UNSPEC, for a TC program.
pub const RETURN_MINUS_1: [u64; 2] = [0xb7 | (0xffff_ffff << 32), 0x95];

/// bpf(2) with a `#[repr(C)]` attr; returns the fd (or value) or the OS error.
fn bpf<T>(cmd: libc::c_long, attr: &mut T, what: &str) -> Result<i32> {
    // SAFETY: `attr` is a live repr(C) struct matching the command's part of bpf_attr, and
    // the pointers inside it (if any) point at live buffers of the sizes they state.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 {
        bail!("{what}: {}", std::io::Error::last_os_error());
    }
    Ok(rc as i32)
}

/// Takes ownership of a descriptor bpf(2) just returned.
fn owned(fd: i32) -> OwnedFd {
    // SAFETY: a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    _pad: u32,
    expected_revision: u64,
}

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// What BPF_OBJ_GET_INFO_BY_FD tells about a loaded program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramInfo {
    pub id: u32,
    pub name: String,
    /// Instructions the verifier processed to accept the program: its `insn_processed`,
    /// the N of the log's final "processed N insns" line (kernels from 5.16 on; 0 before).
    pub verified_insns: u32,
    /// The program's size after the verifier's rewrites, in 8-byte instructions.
    pub xlated_insns: u32,
    /// The JIT's output, in bytes.
    pub jited_bytes: u32,
}

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
        let license = b"GPL\0";
        let mut prog_name = [0u8; 16];
        prog_name[..name.len()].copy_from_slice(name.as_bytes());
        let mut attr = ProgLoadAttr {
            prog_type,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name,
            expected_attach_type,
            ..Default::default()
        };
        let fd = bpf(BPF_PROG_LOAD, &mut attr, &format!("BPF_PROG_LOAD {name}"))?;
        Ok(Program(owned(fd)))
    }

    /// Opens a loaded program by id (BPF_PROG_GET_FD_BY_ID).
    pub fn open(id: u32) -> Result<Program> {
        let mut attr = GetFdAttr {
            prog_id: id,
            ..Default::default()
        };
        let fd = bpf(
            BPF_PROG_GET_FD_BY_ID,
            &mut attr,
            &format!("BPF_PROG_GET_FD_BY_ID {id}"),
        )?;
        Ok(Program(owned(fd)))
    }

    /// Legacy attachment (BPF_PROG_ATTACH) to `target` (e.g. a cgroup directory), which
    /// unlike a link outlives the process.
    pub fn attach_legacy(&self, target: &impl AsRawFd, attach_type: u32, flags: u32) -> Result<()> {
        let mut attr = ProgAttachAttr {
            target_fd: target.as_raw_fd() as u32,
            attach_bpf_fd: self.0.as_raw_fd() as u32,
            attach_type,
            attach_flags: flags,
        };
        bpf(BPF_PROG_ATTACH, &mut attr, "BPF_PROG_ATTACH")?;
        Ok(())
    }

    /// A TCX link (appended) on interface `ifindex` of the calling thread's namespace;
    /// closing the returned descriptor detaches it.
    pub fn attach_tcx(&self, ifindex: u32, attach_type: u32) -> Result<OwnedFd> {
        let mut attr = LinkCreateAttr {
            prog_fd: self.0.as_raw_fd() as u32,
            target_ifindex: ifindex,
            attach_type,
            ..Default::default()
        };
        Ok(owned(bpf(BPF_LINK_CREATE, &mut attr, "BPF_LINK_CREATE")?))
    }

    /// Runs the program `repeat` times on `frame` (BPF_PROG_TEST_RUN); returns the verdict
    /// and the mean ns per run as the kernel timed it.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<(u32, u32)> {
        let mut out = vec![0u8; frame.len() + 512];
        let mut attr = TestRunAttr {
            prog_fd: self.0.as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_size_out: out.len() as u32,
            data_in: frame.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat,
            ..Default::default()
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr, "BPF_PROG_TEST_RUN")?;
        Ok((attr.retval, attr.duration))
    }

    /// The program's info (BPF_OBJ_GET_INFO_BY_FD), verifier work included.
    pub fn info(&self) -> Result<ProgramInfo> {
        // struct bpf_prog_info up to and including verified_insns (offset 216), zero
        // filled: the kernel writes only the fields it knows.
        let mut buf = [0u8; 232];
        let mut attr = InfoAttr {
            bpf_fd: self.0.as_raw_fd() as u32,
            info_len: buf.len() as u32,
            info: buf.as_mut_ptr() as u64,
        };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr, "BPF_OBJ_GET_INFO_BY_FD")?;
        let u32_at = |off: usize| u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap());
        let name = &buf[64..80];
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        Ok(ProgramInfo {
            id: u32_at(4),
            name: String::from_utf8_lossy(&name[..end]).into_owned(),
            verified_insns: u32_at(216),
            xlated_insns: u32_at(20) / 8,
            jited_bytes: u32_at(16),
        })
    }

    /// run_time_ns and run_cnt from the descriptor's fdinfo (kept only while
    /// kernel.bpf_stats_enabled is on).
    pub fn run_stats(&self) -> Result<(u64, u64)> {
        let path = format!("/proc/self/fdinfo/{}", self.0.as_raw_fd());
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |key: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        Ok((field("run_time_ns:"), field("run_cnt:")))
    }
}

/// The ids of the programs attached to interface `ifname`'s TCX hook `attach_type`, in
/// the calling thread's namespace (BPF_PROG_QUERY).
pub fn query_tcx(ifname: &str, attach_type: u32) -> Result<Vec<u32>> {
    let ifindex = ifindex(ifname)?;
    let mut ids = vec![0u32; 64];
    let mut attr = QueryAttr {
        target_ifindex: ifindex,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr, "BPF_PROG_QUERY")?;
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}

/// The index of interface `ifname` in the calling thread's namespace.
pub fn ifindex(ifname: &str) -> Result<u32> {
    let c = std::ffi::CString::new(ifname)?;
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    anyhow::ensure!(index != 0, "no interface {ifname}");
    Ok(index)
}
