//! Attaching the socket hooks to a cgroup, and the network namespace cookie that keeps
//! the host set off the pods' sockets.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result};
use aya::programs::CgroupAttachMode;
use nldns_sys::Target;

use super::{Cgroup, CgroupAttachment, Scope, HOOKS};
use crate::datapath::loader::Datapath;

/// `SO_NETNS_COOKIE` (Linux 5.14); the libc crate does not export it everywhere.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The pods' hook links are parked at or above this descriptor: above the intercept
/// sockets (see intercept.rs), so that a dying agent releases them first.
const POD_LINK_PARK_FLOOR: libc::c_int = 6000;

/// Attaches the host set of [`HOOKS`] of `datapath` to `cgroup`, all or none: a
/// connect() hook without its recvmsg() partner would show applications the intercept
/// endpoint, so on any error the hooks already attached are detached again. The links
/// stay owned by the loaded programs: they go away when the datapath is dropped or the
/// process dies.
pub fn attach(datapath: &mut Datapath, cgroup: &Cgroup) -> Result<Vec<CgroupAttachment>> {
    let mut attached = Vec::new();
    let mut links = Vec::new();
    for hook in HOOKS {
        let program = datapath.sock_program_mut(hook.host_program)?;
        let result = program
            .attach(cgroup.fd(), CgroupAttachMode::Single)
            // aya's error display drops the errno; its Debug form keeps it.
            .map_err(|err| anyhow::anyhow!("{err:?}"))
            .with_context(|| {
                format!(
                    "attaching {} to {}",
                    hook.host_program,
                    cgroup.path.display()
                )
            });
        let link = match result {
            Ok(link) => link,
            Err(err) => {
                for (name, link) in links {
                    if let Ok(program) = datapath.sock_program_mut(name) {
                        let _ = program.detach(link);
                    }
                }
                return Err(err);
            }
        };
        links.push((hook.host_program, link));
        let program_id = program.info().map(|i| i.id()).unwrap_or(0);
        attached.push(attachment(
            cgroup,
            Scope::Host,
            hook.label,
            program_id,
            hook.host_program,
        ));
    }
    Ok(attached)
}

/// The pods' hooks on their cgroup, as link descriptors this agent holds until it exits.
pub struct PodHookLinks {
    pub attachments: Vec<CgroupAttachment>,
    _links: Vec<OwnedFd>,
}

/// Attaches the pods' set of [`HOOKS`] to `cgroup` as bpf links whose descriptors are
/// parked high.
///
/// Why not aya's attach as for the host set: a pod's socket lives in another network
/// namespace, where the programs cannot look up the agent's intercept socket, so after a
/// kill -9 nothing but the links' own lifetime stops them from sending pods to a port
/// nobody reads. A dying process releases its descriptors highest first; parked above the
/// intercept sockets, the links go before the sockets do, and the next pod query meets
/// the dataplane's own programs. A link created here is appended to the cgroup's list
/// (links are always multi), like aya's.
pub fn attach_pods(datapath: &mut Datapath, cgroup: &Cgroup) -> Result<PodHookLinks> {
    let mut attachments = Vec::new();
    let mut links = Vec::new();
    for hook in HOOKS {
        let program = datapath.sock_program_mut(hook.pod_program)?;
        let program_id = program.info().map(|i| i.id()).unwrap_or(0);
        let program_fd = program.fd()?;
        let link = nldns_sys::link_create(
            program_fd.as_fd(),
            Target::Fd(cgroup.fd()),
            hook.attach_type,
            0,
        )
        .with_context(|| {
            format!(
                "attaching {} to {}",
                hook.pod_program,
                cgroup.path.display()
            )
        })?;
        links.push(park(link));
        attachments.push(attachment(
            cgroup,
            Scope::Pods,
            hook.label,
            program_id,
            hook.pod_program,
        ));
    }
    Ok(PodHookLinks {
        attachments,
        _links: links,
    })
}

fn attachment(
    cgroup: &Cgroup,
    scope: Scope,
    hook: &'static str,
    program_id: u32,
    program_name: &str,
) -> CgroupAttachment {
    CgroupAttachment {
        cgroup: cgroup.path.display().to_string(),
        scope,
        hook,
        program_id,
        program_name: program_name.to_string(),
    }
}

/// The same link on a descriptor at or above [`POD_LINK_PARK_FLOOR`], or where it was
/// (with a warning) if the descriptor limit does not allow it.
fn park(link: OwnedFd) -> OwnedFd {
    // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we own; no memory is involved.
    let high = unsafe { libc::fcntl(link.as_raw_fd(), libc::F_DUPFD_CLOEXEC, POD_LINK_PARK_FLOOR) };
    if high < 0 {
        log::warn!(
            "could not park a pod hook link above descriptor {POD_LINK_PARK_FLOOR}: {}; \
             after a kill -9 pods' queries may meet closed intercept sockets for a moment",
            std::io::Error::last_os_error()
        );
        return link;
    }
    // SAFETY: `high` is a fresh descriptor from F_DUPFD_CLOEXEC, owned by nothing else;
    // the original is closed when `link` drops.
    unsafe { OwnedFd::from_raw_fd(high) }
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
