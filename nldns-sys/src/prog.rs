//! One safe function per bpf(2) command: each builds the command's attr from typed
//! arguments and keeps every buffer it points at alive across the call.

use std::{
    ffi::CStr,
    io,
    os::fd::{AsRawFd, BorrowedFd, OwnedFd},
};

use crate::{
    attr,
    syscall::{owned_fd, sys_bpf},
    types::{AttachType, Cmd, ProgType},
};

/// What a hook hangs on: a cgroup directory (or other object) by descriptor, or an
/// interface by index (TCX). The kernel reads both from the same attr field.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    Fd(BorrowedFd<'a>),
    Ifindex(u32),
}

impl Target<'_> {
    fn raw(self) -> u32 {
        match self {
            Target::Fd(fd) => fd.as_raw_fd() as u32,
            Target::Ifindex(index) => index,
        }
    }
}

/// The kernel caps a cgroup hook at 64 programs; TCX chains are far shorter in practice.
const MAX_QUERY_IDS: usize = 64;

/// BPF_PROG_LOAD: `insns` as a program of `prog_type` named `name` (at most 15 bytes,
/// longer names are cut), without a verifier log.
pub fn prog_load(
    prog_type: ProgType,
    expected_attach_type: AttachType,
    name: &str,
    insns: &[u64],
    license: &CStr,
) -> io::Result<OwnedFd> {
    let mut prog_name = [0u8; 16];
    let len = name.len().min(15);
    prog_name[..len].copy_from_slice(&name.as_bytes()[..len]);
    let mut attr = attr::ProgLoad {
        prog_type: prog_type.0,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        expected_attach_type: expected_attach_type.0,
        ..Default::default()
    };
    // SAFETY: ProgLoad is BPF_PROG_LOAD's attr; `insns` (insn_cnt 8-byte instructions)
    // and the NUL-terminated `license` are borrowed for the whole call.
    unsafe { sys_bpf(Cmd::BPF_PROG_LOAD, &mut attr) }.map(owned_fd)
}

/// BPF_PROG_GET_FD_BY_ID: a descriptor for the loaded program `id`.
pub fn prog_get_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = attr::GetFdById {
        prog_id: id,
        ..Default::default()
    };
    // SAFETY: GetFdById is the command's attr and holds no pointers.
    unsafe { sys_bpf(Cmd::BPF_PROG_GET_FD_BY_ID, &mut attr) }.map(owned_fd)
}

/// BPF_PROG_ATTACH: the legacy attachment, which unlike a link outlives its process.
pub fn prog_attach(
    target: BorrowedFd<'_>,
    program: BorrowedFd<'_>,
    attach_type: AttachType,
    flags: u32,
) -> io::Result<()> {
    let mut attr = attr::ProgAttach {
        target_fd: target.as_raw_fd() as u32,
        attach_bpf_fd: program.as_raw_fd() as u32,
        attach_type: attach_type.0,
        attach_flags: flags,
    };
    // SAFETY: ProgAttach is the command's attr and holds no pointers.
    unsafe { sys_bpf(Cmd::BPF_PROG_ATTACH, &mut attr) }.map(drop)
}

/// BPF_PROG_DETACH of a legacy attachment. Links are not touched (ENOENT): they go with
/// the descriptor that holds them.
pub fn prog_detach(
    target: BorrowedFd<'_>,
    program: BorrowedFd<'_>,
    attach_type: AttachType,
) -> io::Result<()> {
    let mut attr = attr::ProgAttach {
        target_fd: target.as_raw_fd() as u32,
        attach_bpf_fd: program.as_raw_fd() as u32,
        attach_type: attach_type.0,
        attach_flags: 0,
    };
    // SAFETY: ProgAttach is the command's attr and holds no pointers.
    unsafe { sys_bpf(Cmd::BPF_PROG_DETACH, &mut attr) }.map(drop)
}

/// BPF_PROG_QUERY: the ids of the programs on `target`'s hook `attach_type`, links and
/// legacy attachments alike (`flags`: e.g. [`crate::BPF_F_QUERY_EFFECTIVE`]), in the
/// order they run.
pub fn prog_query(target: Target<'_>, attach_type: AttachType, flags: u32) -> io::Result<Vec<u32>> {
    prog_query_with_flags(target, attach_type, flags).map(|(_, ids)| ids)
}

/// [`prog_query`] with the hook's attach flags on `target` itself (for a cgroup:
/// [`crate::BPF_F_ALLOW_MULTI`], BPF_F_ALLOW_OVERRIDE or 0), which decide whether a
/// descendant's programs run before these or replace them.
pub fn prog_query_with_flags(
    target: Target<'_>,
    attach_type: AttachType,
    flags: u32,
) -> io::Result<(u32, Vec<u32>)> {
    let mut ids = vec![0u32; MAX_QUERY_IDS];
    let mut attr = attr::ProgQuery {
        target: target.raw(),
        attach_type: attach_type.0,
        query_flags: flags,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    // SAFETY: ProgQuery is the command's attr; the kernel writes at most prog_cnt ids
    // into `ids`, which holds that many and lives across the call.
    unsafe { sys_bpf(Cmd::BPF_PROG_QUERY, &mut attr) }?;
    ids.truncate((attr.prog_cnt as usize).min(MAX_QUERY_IDS));
    Ok((attr.attach_flags, ids))
}

/// BPF_LINK_CREATE (appended to the hook's chain); closing the returned descriptor
/// detaches the program.
pub fn link_create(
    program: BorrowedFd<'_>,
    target: Target<'_>,
    attach_type: AttachType,
    flags: u32,
) -> io::Result<OwnedFd> {
    let mut attr = attr::LinkCreate {
        prog_fd: program.as_raw_fd() as u32,
        target: target.raw(),
        attach_type: attach_type.0,
        flags,
        ..Default::default()
    };
    // SAFETY: LinkCreate is the command's attr and holds no pointers.
    unsafe { sys_bpf(Cmd::BPF_LINK_CREATE, &mut attr) }.map(owned_fd)
}

/// What BPF_PROG_TEST_RUN reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestRun {
    /// The program's return value (its verdict).
    pub retval: u32,
    /// Mean ns per run, as the kernel timed it.
    pub duration_ns: u32,
    /// Bytes of the output frame written to `data_out`.
    pub data_size_out: u32,
}

/// BPF_PROG_TEST_RUN: runs `program` `repeat` times on `data_in`; the frame as the last
/// run left it goes to `data_out`.
pub fn prog_test_run(
    program: BorrowedFd<'_>,
    data_in: &[u8],
    data_out: &mut [u8],
    repeat: u32,
) -> io::Result<TestRun> {
    let mut attr = attr::TestRun {
        prog_fd: program.as_raw_fd() as u32,
        data_size_in: data_in.len() as u32,
        data_size_out: data_out.len() as u32,
        data_in: data_in.as_ptr() as u64,
        data_out: data_out.as_mut_ptr() as u64,
        repeat,
        ..Default::default()
    };
    // SAFETY: TestRun is the command's attr; the kernel reads data_size_in bytes of
    // `data_in` and writes at most data_size_out bytes into `data_out`, both borrowed for
    // the call.
    unsafe { sys_bpf(Cmd::BPF_PROG_TEST_RUN, &mut attr) }?;
    Ok(TestRun {
        retval: attr.retval,
        duration_ns: attr.duration,
        data_size_out: attr.data_size_out,
    })
}

/// What BPF_OBJ_GET_INFO_BY_FD tells about a loaded program (the fields nldns reads of
/// `struct bpf_prog_info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgInfo {
    pub id: u32,
    pub name: String,
    /// Instructions the verifier processed to accept the program (the N of the log's
    /// final "processed N insns" line; kernels from 5.16 on, 0 before).
    pub verified_insns: u32,
    /// The program's size after the verifier's rewrites, in 8-byte instructions.
    pub xlated_insns: u32,
    /// The JIT's output, in bytes.
    pub jited_bytes: u32,
}

/// BPF_OBJ_GET_INFO_BY_FD for a program.
pub fn prog_info(program: BorrowedFd<'_>) -> io::Result<ProgInfo> {
    // struct bpf_prog_info up to and including verified_insns (offset 216), zero filled:
    // the kernel writes only the fields it knows.
    let mut buf = [0u8; 232];
    let mut attr = attr::InfoByFd {
        bpf_fd: program.as_raw_fd() as u32,
        info_len: buf.len() as u32,
        info: buf.as_mut_ptr() as u64,
    };
    // SAFETY: InfoByFd is the command's attr; the kernel writes at most info_len bytes
    // into `buf`, borrowed for the call.
    unsafe { sys_bpf(Cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    let u32_at =
        |off: usize| u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]);
    let name = &buf[64..80];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(ProgInfo {
        id: u32_at(4),
        name: String::from_utf8_lossy(&name[..end]).into_owned(),
        verified_insns: u32_at(216),
        xlated_insns: u32_at(20) / 8,
        jited_bytes: u32_at(16),
    })
}
