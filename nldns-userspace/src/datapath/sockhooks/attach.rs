//! Attaching the socket hooks to a cgroup, and the network namespace cookie that keeps
//! them off the pods' sockets.

use std::os::fd::AsRawFd;

use anyhow::{Context, Result};
use aya::programs::CgroupAttachMode;

use super::{Cgroup, CgroupAttachment, HOOKS};
use crate::datapath::loader::Datapath;

/// `SO_NETNS_COOKIE` (Linux 5.14); the libc crate does not export it everywhere.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Attaches every hook of [`HOOKS`] of `datapath` to `cgroup`. The links stay owned by
/// the loaded programs: they go away when the datapath is dropped or the process dies.
pub fn attach(datapath: &mut Datapath, cgroup: &Cgroup) -> Result<Vec<CgroupAttachment>> {
    let mut attached = Vec::new();
    for hook in HOOKS {
        let program = datapath.sock_program_mut(hook.program)?;
        program
            .attach(cgroup.fd(), CgroupAttachMode::Single)
            // aya's error display drops the errno; its Debug form keeps it.
            .map_err(|err| anyhow::anyhow!("{err:?}"))
            .with_context(|| format!("attaching {} to {}", hook.program, cgroup.path.display()))?;
        let program_id = program.info().map(|i| i.id()).unwrap_or(0);
        attached.push(CgroupAttachment {
            cgroup: cgroup.path.display().to_string(),
            hook: hook.label,
            program_id,
            program_name: hook.program.to_string(),
        });
    }
    Ok(attached)
}

/// The cookie of this process's network namespace, or None where the kernel cannot tell
/// (before 5.14): the socket hooks then stay off, because without it they could not keep
/// their hands off sockets of other namespaces.
pub fn netns_cookie() -> Option<u64> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).ok()?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0 && cookie != 0).then_some(cookie)
}
