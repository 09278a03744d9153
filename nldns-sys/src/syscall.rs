//! The one bpf(2) wrapper, and taking ownership of the descriptors it returns.

use std::{io, os::fd::OwnedFd};

use crate::types::Cmd;

/// bpf(2): `cmd` with `attr`, the part of `union bpf_attr` that command reads. Returns
/// the syscall's non-negative result (a new descriptor for some commands) or the errno.
///
/// # Safety
/// `attr` must be the layout the kernel expects for `cmd`, and every pointer stored in it
/// must point at a live buffer of the size stated next to it, writable where the kernel
/// writes. The kernel zero-extends a shorter attr, so a prefix of the union is enough.
pub(crate) unsafe fn sys_bpf<T>(cmd: Cmd, attr: &mut T) -> io::Result<i64> {
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
pub(crate) fn owned_fd(rc: i64) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: a descriptor the kernel has just created for us; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(rc as i32) }
}
